#!/usr/bin/env bash
# Benchmark of the idle memory of the bindery daemon, run by hand as root:
#
#   bash benches/idle_rss.sh
#   BINDERY_BIN=/path/to/bindery CALLS=200 bash benches/idle_rss.sh
#
# Starts the daemon in node mode on a temp socket, waits until `bindery csi
# probe` says ready, sleeps 2 s and prints VmRSS/VmHWM from /proc/PID/status;
# then makes CALLS (default 100) client calls, alternating NodeGetCapabilities
# and Probe, and prints them again. Also prints the binary's size and `file`.
#
# Environment:
#   BINDERY_BIN  the bindery binary (default: the static musl release build)
#   CALLS        number of client calls after the idle measurement, 1..10000
#
# Runs in private mount + PID namespaces (the script re-executes itself under
# `unshare`); temp files live in /tmp/bindery-bench-* and are removed on exit,
# also on failure or Ctrl-C. Needs root and util-linux.
# (unshare ignores SIGTERM while it waits: stop a run with Ctrl-C, or send
# SIGTERM to the inner bash, the one whose parent is unshare.)
set -euo pipefail

# shellcheck source=benches/namespace.sh
source "$(dirname "$(readlink -f "$0")")/namespace.sh" "$0" "$@"

B=${BINDERY_BIN:-/var/cache/bindery/target/x86_64-unknown-linux-musl/release/bindery}
CALLS=${CALLS:-100}
case $CALLS in '' | *[!0-9]*) echo "CALLS must be a number" >&2; exit 64 ;; esac
if [ "$CALLS" -lt 1 ] || [ "$CALLS" -gt 10000 ]; then echo "CALLS must be 1..10000" >&2; exit 64; fi
[ -x "$B" ] || { echo "bindery binary not found: $B (set BINDERY_BIN)" >&2; exit 1; }

W=$(mktemp -d /tmp/bindery-bench-XXXXXX)
DAEMON=""
SOCK="unix://$W/csi.sock"
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ -n "$DAEMON" ]; then
    kill -TERM "$DAEMON" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DAEMON" 2>/dev/null
    wait "$DAEMON" 2>/dev/null
  fi
  if [ "$rc" -ne 0 ] && [ -f "$W/daemon.log" ]; then
    echo "idle_rss.sh: failed (exit $rc); daemon log:" >&2
    tail -n 20 "$W/daemon.log" >&2
  fi
  unmount_below "$W"
  remove_workdir "$W"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

csi() { "$B" csi "$@" --endpoint "$SOCK"; }
kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.2f", k / 1024}'; }
show() {
  local rss hwm
  rss=$(kb "$DAEMON" VmRSS)
  hwm=$(kb "$DAEMON" VmHWM)
  printf '%-34s VmRSS %6s kB (%s MiB)   VmHWM %6s kB (%s MiB)   threads %s\n' \
    "$1" "$rss" "$(mib "$rss")" "$hwm" "$(mib "$hwm")" "$(kb "$DAEMON" Threads)"
}

size=$(stat -c %s "$B")
echo "binary: $B"
echo "size:   $size bytes ($(mib $((size / 1024))) MiB)"
echo "file:   $(file -b "$B")"
echo "version: $("$B" --version)"
echo

mkdir -p "$W/kubelet"
RUST_LOG=info "$B" --endpoint "$SOCK" --node-id bench --kubelet-dir "$W/kubelet" \
  --state-dir "$W/state" 2>"$W/daemon.log" &
DAEMON=$!
ready=no
for _ in $(seq 200); do
  if csi probe 2>/dev/null | grep -q 'value: true'; then ready=yes; break; fi
  kill -0 "$DAEMON" 2>/dev/null || break
  sleep 0.05
done
[ $ready = yes ] || { echo "daemon did not become ready" >&2; exit 1; }
echo "daemon pid $DAEMON (node mode, default flags: 4 gRPC threads, 4 workers) is ready"
show "right after ready:"
sleep 2
show "idle, 2 s after ready:"
IDLE_RSS=$(kb "$DAEMON" VmRSS)

t0=${EPOCHREALTIME//[.,]/}
for i in $(seq "$CALLS"); do
  if [ $((i % 2)) = 1 ]; then csi node-capabilities >/dev/null; else csi probe >/dev/null; fi
done
t1=${EPOCHREALTIME//[.,]/}
show "after $CALLS calls:"
sleep 2
show "2 s later:"
AFTER_RSS=$(kb "$DAEMON" VmRSS)
echo "($CALLS calls alternating node-capabilities / probe, $(((t1 - t0) / CALLS / 1000)) ms per call incl. starting the client)"

kill -TERM "$DAEMON"
rc=0
wait "$DAEMON" || rc=$?
DAEMON=""
echo "daemon stopped: exit $rc, socket removed: $([ -e "$W/csi.sock" ] && echo no || echo yes)"
echo
echo "goal: idle VmRSS <= 8 MB (8192 kB)"
verdict() { if [ "$1" -le 8192 ]; then echo MET; else echo "NOT MET"; fi; }
echo "measured: idle VmRSS $IDLE_RSS kB ($(mib "$IDLE_RSS") MiB) -> $(verdict "$IDLE_RSS");" \
  "after $CALLS calls $AFTER_RSS kB ($(mib "$AFTER_RSS") MiB) -> $(verdict "$AFTER_RSS")"

#!/usr/bin/env bash
# Ephemeral cache volumes, by hand, as root:
#
#   bash benches/ephemeral.sh                      # this build only
#   BASELINE_BIN=/path/to/older/bindery bash benches/ephemeral.sh
#
# Builds from before cache `namespaces` existed get a declaration without
# it; set BASELINE_NAMESPACES=1 for a baseline that requires it.
#
# Two figures per binary, side by side in one run:
#   1. memory: RSS of the daemon after WARM (default 300) publish+unpublish
#      cycles of an inline cache volume, and after CYCLES (default 15000);
#      goal: within 2 MiB (memory does not grow per volume ever seen);
#   2. throughput: CLIENTS (default 16) concurrent clients doing
#      publish+unpublish cycles of their own ephemeral volumes for DURATION
#      seconds (default 20); cycles per second, and the ratio to BASELINE_BIN;
#      and the daemon's own time per NodePublishVolume / NodeUnpublishVolume
#      in that phase (p50 and p99 of its "ok in" log lines, ms).
# Every call is one `bindery csi` process, as a kubelet's call is one gRPC
# call; the client's start-up cost is the same for both binaries.
#
# Runs in private mount + PID namespaces; temp files in /tmp/bindery-bench-*
# are removed on exit.
set -euo pipefail

# shellcheck source=benches/namespace.sh
source "$(dirname "$(readlink -f "$0")")/namespace.sh" "$0" "$@"

B=${BINDERY_BIN:-/var/cache/bindery/target/x86_64-unknown-linux-musl/release/bindery}
BASE=${BASELINE_BIN:-}
WARM=${WARM:-300}
CYCLES=${CYCLES:-15000}
CLIENTS=${CLIENTS:-16}
SECONDS_RUN=${DURATION:-20}
for v in WARM CYCLES CLIENTS SECONDS_RUN; do
  case ${!v} in '' | *[!0-9]*) echo "$v must be a number" >&2; exit 64 ;; esac
done
[ -x "$B" ] || { echo "bindery binary not found: $B (set BINDERY_BIN)" >&2; exit 1; }

W=$(mktemp -d /tmp/bindery-bench-XXXXXX)
DAEMON=""
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [ -n "$DAEMON" ] && { kill -KILL "$DAEMON" 2>/dev/null; wait "$DAEMON" 2>/dev/null; }
  unmount_below "$W"
  remove_workdir "$W"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$W/src/tree"
echo one >"$W/src/tree/one"
printf '[cache tiny]\nsource = dir:%s\nstrategy = copy\nnamespaces = *\n' "$W/src/tree" >"$W/caches.conf"
# Older builds know no `namespaces` key (and let every namespace in).
printf '[cache tiny]\nsource = dir:%s\nstrategy = copy\n' "$W/src/tree" >"$W/caches-baseline.conf"

kb() { awk '$1 == "VmRSS:" {print $2}' "/proc/$1/status"; }

# start BIN NAME: a daemon on its own dirs; sets DAEMON and SOCK.
start() {
  local bin=$1 name=$2
  mkdir -p "$W/$name/kubelet"
  SOCK="unix://$W/$name/csi.sock"
  RUST_LOG=info "$bin" --endpoint "$SOCK" --node-id bench --kubelet-dir "$W/$name/kubelet" \
    --state-dir "$W/$name/state" --cache-config "$W/$CONF" --watchdog-interval 0 \
    >/dev/null 2>"$W/$name/daemon.log" &
  DAEMON=$!
  for _ in $(seq 200); do
    "$bin" csi probe --endpoint "$SOCK" 2>/dev/null | grep -q "value: true" && return 0
    sleep 0.05
  done
  echo "$name: daemon did not become ready" >&2
  tail "$W/$name/daemon.log" >&2
  exit 1
}

stop() { kill -TERM "$DAEMON"; wait "$DAEMON" || true; DAEMON=""; }

# cycles BIN NAME CLIENT FROM TO: publish+unpublish volumes FROM..TO-1.
cycles() {
  local bin=$1 name=$2 c=$3 i t
  for ((i = $4; i < $5; i++)); do
    t="$W/$name/kubelet/pods/c$c-$i/volumes/kubernetes.io~csi/v/mount"
    "$bin" csi node-publish --endpoint "$SOCK" --volume-id "csi-$c-$i" --target-path "$t" \
      --param cache=tiny --param csi.storage.k8s.io/ephemeral=true >/dev/null
    "$bin" csi node-unpublish --endpoint "$SOCK" --volume-id "csi-$c-$i" --target-path "$t" >/dev/null
    rm -rf "$W/$name/kubelet/pods/c$c-$i"
  done
}

# p50 and p99 (ms) of the daemon's METHOD "ok in" lines after line FROM of LOG.
latency() {
  tail -n +"$(($3 + 1))" "$2" | grep -F "$1 volume=" | sed -n 's/.* ok in \([0-9.]*\)ms$/\1/p' | sort -n |
    awk '{a[NR] = $1} END {if (NR == 0) {print "- -"; exit} i = int(NR * 0.99); if (i < 1) i = 1; printf "%.1f %.1f\n", a[int((NR + 1) / 2)], a[i]}'
}

# measure BIN NAME: prints "rss_warm rss_end cycles_per_second pub_p50 pub_p99 unpub_p50 unpub_p99".
measure() {
  local bin=$1 name=$2 warm end n start_ns end_ns pids=()
  start "$bin" "$name"
  cycles "$bin" "$name" 0 0 "$WARM"
  warm=$(kb "$DAEMON")
  cycles "$bin" "$name" 0 "$WARM" "$CYCLES"
  end=$(kb "$DAEMON")
  lines=$(wc -l <"$W/$name/daemon.log")
  start_ns=$(date +%s%N)
  for c in $(seq 1 "$CLIENTS"); do
    (
      n=0
      while [ $(( ($(date +%s%N) - start_ns) / 1000000000 )) -lt "$SECONDS_RUN" ]; do
        cycles "$bin" "$name" "$c" "$n" $((n + 1))
        n=$((n + 1))
      done
      echo "$n" >"$W/$name/client-$c"
    ) &
    pids+=($!)
  done
  wait "${pids[@]}"
  end_ns=$(date +%s%N)
  n=$(cat "$W/$name"/client-* | awk '{s += $1} END {print s}')
  stop
  awk -v w="$warm" -v e="$end" -v n="$n" -v t=$((end_ns - start_ns)) \
    -v pub="$(latency NodePublishVolume "$W/$name/daemon.log" "$lines")" \
    -v unpub="$(latency NodeUnpublishVolume "$W/$name/daemon.log" "$lines")" \
    'BEGIN {printf "%d %d %.1f %s %s\n", w, e, n / (t / 1e9), pub, unpub}'
}

printf '%-10s %14s %16s %10s %20s %18s %18s\n' binary "RSS@$WARM" "RSS@$CYCLES" "growth" \
  "cycles/s ($CLIENTS clients)" "publish p50/p99" "unpublish p50/p99"
CONF=caches.conf
read -r w e r p50 p99 u50 u99 < <(measure "$B" this)
printf '%-10s %11d kB %13d kB %7d kB %20s %15s ms %15s ms\n' this "$w" "$e" $((e - w)) "$r" "$p50/$p99" "$u50/$u99"
if [ -n "$BASE" ]; then
  CONF=caches-baseline.conf
  [ "${BASELINE_NAMESPACES:-0}" = 1 ] && CONF=caches.conf
  read -r bw be br bp50 bp99 bu50 bu99 < <(measure "$BASE" baseline)
  printf '%-10s %11d kB %13d kB %7d kB %20s %15s ms %15s ms\n' baseline "$bw" "$be" $((be - bw)) "$br" \
    "$bp50/$bp99" "$bu50/$bu99"
  awk -v a="$r" -v b="$br" 'BEGIN {printf "throughput this/baseline: %.2fx\n", a / b}'
fi
awk -v g=$((e - w)) 'BEGIN {exit !(g <= 2048)}' && echo "memory: PASS (growth <= 2 MiB)" \
  || echo "memory: MISS (growth > 2 MiB)"

#!/usr/bin/env bash
# Ephemeral cache volumes, by hand, as root:
#
#   bash benches/ephemeral.sh                      # this build only
#   BASELINE_BIN=/path/to/older/bindery bash benches/ephemeral.sh
#
# Builds from before cache `namespaces` existed get a declaration without
# it; set BASELINE_NAMESPACES=1 for a baseline that requires it.
#
# Three figures per binary, side by side in one run:
#   1. memory: RSS of the daemon after WARM (default 300) publish+unpublish
#      cycles of an inline cache volume, and after CYCLES (default 15000);
#      goal: within 2 MiB (memory does not grow per volume ever seen);
#   2. throughput, a process per call: CLIENTS (default 16) concurrent
#      clients doing publish+unpublish cycles of their own ephemeral volumes
#      for DURATION seconds (default 20), every call one `bindery csi`
#      process (a kubelet's call is one gRPC call); cycles per second, and
#      the ratio to BASELINE_BIN. On a small machine this measures mostly
#      the start of the client processes;
#   3. throughput of the driver: the same CLIENTS, each one thread with its
#      own connection (benches/cycles.rs), doing PER_CLIENT (default 100)
#      cycles: cycles per second, the ratio to BASELINE_BIN, the p50/p99 of
#      each call as the client sees it and as the daemon logs it ("ok in").
#
# CYCLES_CLIENT: the built benches/cycles.rs (default: built here with
# cargo-zigbuild, as .ci/setup sets it up).
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
PER_CLIENT=${PER_CLIENT:-100}
for v in WARM CYCLES CLIENTS SECONDS_RUN PER_CLIENT; do
  case ${!v} in '' | *[!0-9]*) echo "$v must be a number" >&2; exit 64 ;; esac
done
[ -x "$B" ] || { echo "bindery binary not found: $B (set BINDERY_BIN)" >&2; exit 1; }
CLIENT=${CYCLES_CLIENT:-}
if [ -z "$CLIENT" ]; then
  echo "building the throughput client (benches/cycles.rs)" >&2
  CLIENT=$(
    cd "$(dirname "$(readlink -f "$0")")/.."
    # shellcheck source=.ci/setup
    source .ci/setup >&2
    cargo-zigbuild build --release --target "$BINDERY_TARGET" --bench cycles --message-format=json |
      python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cycles" and m.get("executable"):
        print(m["executable"])'
  )
fi
[ -x "$CLIENT" ] || { echo "throughput client not found: '$CLIENT' (set CYCLES_CLIENT)" >&2; exit 1; }

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

# measure BIN NAME: prints "rss_warm rss_end cycles_per_second" (a process
# per call), then "cycles_per_second pub_p50 pub_p99 unpub_p50 unpub_p99
# daemon_pub_p50 daemon_pub_p99 daemon_unpub_p50 daemon_unpub_p99" (the
# driver's throughput).
measure() {
  local bin=$1 name=$2 warm end n start_ns end_ns lines out pids=()
  start "$bin" "$name"
  cycles "$bin" "$name" 0 0 "$WARM"
  warm=$(kb "$DAEMON")
  cycles "$bin" "$name" 0 "$WARM" "$CYCLES"
  end=$(kb "$DAEMON")
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
  lines=$(wc -l <"$W/$name/daemon.log")
  out=$("$CLIENT" "$SOCK" "$W/$name/kubelet" tiny "$CLIENTS" "$PER_CLIENT" drv)
  echo "$name: $out" >&2
  stop
  awk -v w="$warm" -v e="$end" -v n="$n" -v t=$((end_ns - start_ns)) \
    'BEGIN {printf "%d %d %.1f\n", w, e, n / (t / 1e9)}'
  echo "$out" | sed -n 's/.*: \([0-9.]*\) cycles\/s; publish p50 \([0-9.]*\) ms p99 \([0-9.]*\) ms; unpublish p50 \([0-9.]*\) ms p99 \([0-9.]*\) ms$/\1 \2 \3 \4 \5/p' |
    tr '\n' ' '
  echo "$(latency NodePublishVolume "$W/$name/daemon.log" "$lines") $(latency NodeUnpublishVolume "$W/$name/daemon.log" "$lines")"
}

report() {
  local name=$1
  { read -r w e r; read -r dr p50 p99 u50 u99 dp50 dp99 du50 du99; } < <(measure "$2" "$name")
  printf '%-10s %11d kB %13d kB %7d kB %14s %14s %12s ms %12s ms %12s ms %12s ms\n' "$name" \
    "$w" "$e" $((e - w)) "$r" "$dr" "$p50/$p99" "$u50/$u99" "$dp50/$dp99" "$du50/$du99"
  eval "${name}_r=\$r ${name}_dr=\$dr ${name}_growth=\$((e - w))"
}

printf '%-10s %14s %16s %10s %14s %14s %15s %15s %15s %15s\n' binary "RSS@$WARM" "RSS@$CYCLES" growth \
  "cycles/s proc" "cycles/s drv" "publish p50/99" "unpubl. p50/99" "daemon pub" "daemon unpub"
CONF=caches.conf
report this "$B"
if [ -n "$BASE" ]; then
  CONF=caches-baseline.conf
  [ "${BASELINE_NAMESPACES:-0}" = 1 ] && CONF=caches.conf
  report baseline "$BASE"
  awk -v a="$this_r" -v b="$baseline_r" -v c="$this_dr" -v d="$baseline_dr" \
    'BEGIN {printf "throughput this/baseline: %.2fx (a process per call), %.2fx (the driver)\n", a / b, c / d}'
fi
echo "($CLIENTS clients; proc: a \`bindery csi\` process per call for ${SECONDS_RUN} s; drv: one connection"
echo " per client, $PER_CLIENT cycles each; p50/p99 in ms as the client sees them, then as the daemon logs them)"
awk -v g="$this_growth" 'BEGIN {exit !(g <= 2048)}' && echo "memory: PASS (growth <= 2 MiB)" \
  || echo "memory: MISS (growth > 2 MiB)"

#!/usr/bin/env bash
# Benchmark of per-call cost as a node fills up, run by hand as root:
#
#   bash benches/scale.sh                  # 10, 100 and 1,000 staged volumes
#   bash benches/scale.sh 10 50            # other sizes (ascending, 1..2000)
#
# The daemon stages S3 volumes (one real s3fs each, against `rclone serve s3`
# on 127.0.0.1) and publishes each to PUBS pods (bind mounts, default 5), up
# to each size in turn. At each size it then runs SAMPLES rounds (default 20)
# of one more volume's life: NodeStageVolume, NodePublishVolume,
# NodeGetVolumeStats, NodeUnpublishVolume, NodeUnstageVolume, and prints the
# daemon's own time per call (its "ok in" log lines: median and p90), with
# the ratio of each median to the first size's: flat per-call cost is a
# ratio near 1. Alongside: mounts in the table, the daemon's threads and RSS,
# and how long a health pass over every volume took.
#
# Environment:
#   PUBS         publications per staged volume (default 5)
#   SAMPLES      measured rounds per size (default 20)
#   PARALLEL     concurrent client calls while filling up (default 4)
#   BINDERY_BIN  the bindery binary (default: the static musl release build)
#
# Everything runs in private mount + PID namespaces (see namespace.sh);
# temp files live in /tmp/bindery-scale-*, removed on exit, also on failure.
# 1,000 s3fs processes take about 8 GB of memory.
set -euo pipefail

# shellcheck source=benches/namespace.sh
source "$(dirname "$(readlink -f "$0")")/namespace.sh" "$0" "$@"

SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(10 100 1000)
PUBS=${PUBS:-5}
SAMPLES=${SAMPLES:-20}
PARALLEL=${PARALLEL:-4}
B=${BINDERY_BIN:-/var/cache/bindery/target/x86_64-unknown-linux-musl/release/bindery}
prev=0
for n in "${SIZES[@]}"; do
  case $n in '' | *[!0-9]*) echo "sizes must be numbers, got '$n'" >&2; exit 64 ;; esac
  if [ "$n" -le "$prev" ] || [ "$n" -gt 2000 ]; then
    echo "sizes must ascend, within 1..2000: ${SIZES[*]}" >&2
    exit 64
  fi
  prev=$n
done
for v in PUBS SAMPLES PARALLEL; do
  case ${!v} in '' | *[!0-9]* | 0) echo "$v must be a positive number" >&2; exit 64 ;; esac
done
[ -x "$B" ] || { echo "bindery binary not found: $B (set BINDERY_BIN)" >&2; exit 1; }
need_tools s3fs rclone python3 xargs

W=$(mktemp -d /tmp/bindery-scale-XXXXXX)
DAEMON=""
SERVER=""
AKID=scale-access-key
SECRET=scale-secret-$RANDOM$RANDOM$RANDOM
BUCKET=scale-bucket
SOCK="unix://$W/csi.sock"
export B SOCK W BUCKET PUBS
staging() { echo "$W/kubelet/plugins/kubernetes.io/csi/bindery.csi.dev/v$1/globalmount"; }
target() { echo "$W/kubelet/pods/pod-$1-$2/volumes/kubernetes.io~csi/data/mount"; }
export -f staging target
csi() { "$B" csi "$@" --endpoint "$SOCK"; }
say() { printf '\n== %s\n' "$*"; }

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ]; then
    echo "scale.sh: failed (exit $rc); cleaning up" >&2
    [ -f "$W/daemon.log" ] && { echo "--- daemon log (tail)" >&2; tail -n 20 "$W/daemon.log" | sed "s/$SECRET/***/g" >&2; }
  fi
  if [ -n "$DAEMON" ]; then kill -TERM "$DAEMON" 2>/dev/null; wait "$DAEMON" 2>/dev/null; fi
  unmount_below "$W"
  pkill -KILL -x s3fs 2>/dev/null
  if [ -n "$SERVER" ]; then kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; fi
  remove_workdir "$W"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -------------------------------------------------------------- S3 server --
mkdir -p "$W/s3/$BUCKET" "$W/kubelet"
start_s3_server "$W/s3" "$AKID" "$SECRET"
(umask 077 && printf 'accessKeyID=%s\nsecretAccessKey=%s\nendpoint=http://127.0.0.1:%s\n' \
  "$AKID" "$SECRET" "$PORT" >"$W/secrets")

RUST_LOG=info,bindery::rpc=debug,bindery::node::health=debug "$B" --endpoint "$SOCK" \
  --node-id scale --kubelet-dir "$W/kubelet" --state-dir "$W/state" 2>"$W/daemon.log" &
DAEMON=$!
for _ in $(seq 200); do csi probe 2>/dev/null | grep -q 'value: true' && break; sleep 0.05; done
csi probe 2>/dev/null | grep -q 'value: true' || { echo "daemon not ready" >&2; exit 1; }
echo "bindery scale benchmark: sizes ${SIZES[*]}, $PUBS pods per volume, $SAMPLES rounds per size"
echo "binary: $B; s3fs: $(s3fs --version 2>/dev/null | head -n 1)"

# A client call, retried while it answers ABORTED (exit 10), as the kubelet does.
call() {
  local rc
  for _ in $(seq 50); do
    rc=0
    "$B" csi "$@" --endpoint "$SOCK" >/dev/null || rc=$?
    [ "$rc" = 10 ] || return "$rc"
    sleep 0.1
  done
  return "$rc"
}
# One volume's stage and its PUBS publications (run by xargs, in parallel).
fill() {
  local i=$1 p
  call node-stage --volume-id "$BUCKET/v$i" --staging-path "$(staging "$i")" \
    --access-mode multi-node-multi-writer --param mounter=s3fs --secrets-file "$W/secrets" || exit 255
  for p in $(seq "$PUBS"); do
    call node-publish --volume-id "$BUCKET/v$i" --staging-path "$(staging "$i")" \
      --target-path "$(target "$i" "$p")" --access-mode multi-node-multi-writer || exit 255
  done
}
export -f call fill

# One measured round: the life of volume "m$1".
round() {
  local v="$BUCKET/m$1" s t
  s="$W/kubelet/plugins/kubernetes.io/csi/bindery.csi.dev/m$1/globalmount"
  t="$W/kubelet/pods/probe-$1/volumes/kubernetes.io~csi/data/mount"
  call node-stage --volume-id "$v" --staging-path "$s" --access-mode multi-node-multi-writer \
    --param mounter=s3fs --secrets-file "$W/secrets"
  call node-publish --volume-id "$v" --staging-path "$s" --target-path "$t" \
    --access-mode multi-node-multi-writer
  call node-stats --volume-id "$v" --target-path "$t"
  call node-unpublish --volume-id "$v" --target-path "$t"
  call node-unstage --volume-id "$v" --staging-path "$s"
}

: >"$W/results.txt"
have=0
for n in "${SIZES[@]}"; do
  say "$n staged volumes, $((n * PUBS)) publications"
  t0=$(date +%s)
  seq $((have + 1)) "$n" | xargs -P "$PARALLEL" -I{} bash -c 'fill {}'
  have=$n
  echo "filled in $(($(date +%s) - t0)) s"
  waited=$(wc -l <"$W/daemon.log")
  passes=$(grep -c "health pass done" "$W/daemon.log" || true)
  for _ in $(seq 600); do
    [ "$(grep -c "health pass done" "$W/daemon.log" || true)" -ge $((passes + 2)) ] && break
    sleep 0.1
  done
  start=$(wc -l <"$W/daemon.log")
  for r in $(seq "$SAMPLES"); do round "$n-$r"; done
  mounts=$(wc -l </proc/self/mountinfo)
  threads=$(ls "/proc/$DAEMON/task" | wc -l)
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$DAEMON/status")
  mounters=$(pgrep -c -x s3fs || true)
  echo "$n $mounts $threads $rss $mounters $start $waited" >>"$W/results.txt"
  echo "mounts $mounts, daemon threads $threads, daemon RSS $((rss / 1024)) MiB, s3fs processes $mounters"
done

say "results (daemon time per call, ms: median / p90; ratio of medians to the first size)"
W="$W" python3 - <<'PY'
import os, re, statistics

w = os.environ["W"]
log = open(f"{w}/daemon.log", encoding="utf-8", errors="replace").read().splitlines()
rows = [l.split() for l in open(f"{w}/results.txt")]
unit = {"ns": 1e-6, "µs": 1e-3, "μs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
calls = ["NodeStageVolume", "NodePublishVolume", "NodeGetVolumeStats", "NodeUnpublishVolume", "NodeUnstageVolume"]
pat = re.compile(r"\b(" + "|".join(calls) + r")\b.* ok in ([0-9.]+)(ns|µs|μs|us|ms|s)\b")
passpat = re.compile(r"health pass done.* in ([0-9.]+)(ns|µs|μs|us|ms|s)\b")
ends = [int(r[6]) for r in rows[1:]] + [len(log)]
table, first = [], None
for row, end in zip(rows, ends):
    n, mounts, threads, rss, mounters, start, waited = row
    got = {c: [] for c in calls}
    passes = []
    for k in range(int(waited), end):
        line = log[k]
        m = pat.search(line) if k >= int(start) else None
        if m and ("/m" in line or m.group(1) == "NodeGetVolumeStats"):
            got[m.group(1)].append(float(m.group(2)) * unit[m.group(3)])
        m = passpat.search(line)
        if m:
            passes.append(float(m.group(1)) * unit[m.group(2)])
    med = {c: statistics.median(v) if v else float("nan") for c, v in got.items()}
    p90 = {c: sorted(v)[int(0.9 * (len(v) - 1))] if v else float("nan") for c, v in got.items()}
    first = first or med
    table.append((n, mounts, threads, int(rss) // 1024, mounters, med, p90, passes))
short = {"NodeStageVolume": "stage", "NodePublishVolume": "publish", "NodeGetVolumeStats": "stats",
         "NodeUnpublishVolume": "unpublish", "NodeUnstageVolume": "unstage"}
print(f"{'volumes':>7} {'mounts':>6} {'threads':>7} {'RSS MiB':>7} {'s3fs':>5}  " +
      "  ".join(f"{short[c]:>22}" for c in calls) + f"  {'health pass ms':>14}")
for n, mounts, threads, rss, mounters, med, p90, passes in table:
    cells = [f"{med[c]:7.2f}/{p90[c]:7.2f} {med[c] / first[c]:5.2f}x" for c in calls]
    hp = f"{statistics.median(passes):14.1f}" if passes else f"{'-':>14}"
    print(f"{n:>7} {mounts:>6} {threads:>7} {rss:>7} {mounters:>5}  " + "  ".join(f"{x:>22}" for x in cells) + f"  {hp}")
PY

echo "heals started during the run (healthy volumes need none): $(grep -c "needs healing" "$W/daemon.log" || true)"

say "teardown"
for i in $(seq "$have"); do
  for p in $(seq "$PUBS"); do echo "$i $p"; done
done | xargs -P "$PARALLEL" -n 2 bash -c \
  'call node-unpublish --volume-id "$BUCKET/v$0" --target-path "$(target "$0" "$1")" || exit 255'
seq "$have" | xargs -P "$PARALLEL" -I{} bash -c \
  'call node-unstage --volume-id "$BUCKET/v{}" --staging-path "$(staging {})" || exit 255'
for _ in $(seq 100); do [ "$(pgrep -c -x s3fs || true)" = 0 ] && break; sleep 0.1; done
left=$(mounts_under "$W/kubelet/")
echo "left: $left mounts under \$W/kubelet, $(pgrep -c -x s3fs || true) s3fs processes"
[ "$left" = 0 ] && [ "$(pgrep -c -x s3fs || true)" = 0 ] || { echo "bindery did not clean up" >&2; exit 1; }

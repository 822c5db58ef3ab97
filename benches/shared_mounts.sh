#!/usr/bin/env bash
# Benchmark of shared FUSE mounts, run by hand as root:
#
#   bash benches/shared_mounts.sh [N]                 # N pods, default 50 (or $N)
#   MOUNTER=rclone bash benches/shared_mounts.sh 20   # rclone instead of s3fs
#
# N pods publish ONE S3 volume, two ways:
#   a) bindery: the daemon stages the volume once (one mounter) and bind-mounts
#      it into every pod target (`bindery csi node-publish`, one after another);
#   b) one process per pod, the way today's S3 CSI drivers do it: a mounter of
#      the same kind with the same options as bindery's per target.
# It prints mounter processes, their total RSS and publish latency (p50/p99 of
# pods 2..N and pod 1; bindery both as the daemon logs it and as the wall time
# of the client call) side by side with ratios, then tears everything down and
# checks that nothing is left.
#
# Environment:
#   N            pods (the first argument wins), 2..500, default 50
#   MOUNTER      s3fs (default) or rclone; used by bindery AND by the baseline
#   BINDERY_BIN  the bindery binary (default: the static musl release build)
#
# Everything runs in private mount + PID namespaces (the script re-executes
# itself under `unshare`), the S3 server is `rclone serve s3` on 127.0.0.1,
# temp files live in /tmp/bindery-bench-*; all of it is removed on exit, also
# on failure or Ctrl-C. Needs root, s3fs, rclone, python3, util-linux.
# (unshare ignores SIGTERM while it waits: stop a run with Ctrl-C, or send
# SIGTERM to the inner bash, the one whose parent is unshare.)
set -euo pipefail

# shellcheck source=benches/namespace.sh
source "$(dirname "$(readlink -f "$0")")/namespace.sh" "$0" "$@"

# ---------------------------------------------------------------- settings --
N=${1:-${N:-50}}
MOUNTER=${MOUNTER:-s3fs}
B=${BINDERY_BIN:-/var/cache/bindery/target/x86_64-unknown-linux-musl/release/bindery}
case $N in '' | *[!0-9]*) echo "N must be a number, got '$N'" >&2; exit 64 ;; esac
if [ "$N" -lt 2 ] || [ "$N" -gt 500 ]; then echo "N must be 2..500, got $N" >&2; exit 64; fi
case $MOUNTER in s3fs | rclone) ;; *) echo "MOUNTER must be s3fs or rclone" >&2; exit 64 ;; esac
[ -x "$B" ] || { echo "bindery binary not found: $B (set BINDERY_BIN)" >&2; exit 1; }
need_tools s3fs rclone python3 awk
RCLONE=$(command -v rclone)

W=$(mktemp -d /tmp/bindery-bench-XXXXXX)
DAEMON=""
SERVER=""
BASE_PIDS=()
AKID=bench-access-key
SECRET=bench-secret-$RANDOM$RANDOM$RANDOM
BUCKET=bench-bucket
PREFIX=shared
VOL="$BUCKET/$PREFIX"
SOCK="unix://$W/csi.sock"
STAGE="$W/kubelet/plugins/kubernetes.io/csi/bindery.csi.dev/0bench0/globalmount"
target() { echo "$W/kubelet/pods/pod-$1/volumes/kubernetes.io~csi/data/mount"; }
mask() { sed "s/$SECRET/***/g"; }
say() { printf '\n== %s\n' "$*"; }

# ------------------------------------------------------------------ helpers --
# PIDs of live s3fs / `rclone mount` processes whose command line contains $1.
mounter_pids() {
  local d comm cmd
  for d in /proc/[0-9]*; do
    comm=""
    read -r comm <"$d/comm" 2>/dev/null || continue
    case $comm in s3fs | rclone) ;; *) continue ;; esac
    cmd=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) || continue
    [[ $cmd == *"$1"* ]] || continue
    [[ $comm == rclone && $cmd != *" mount "* ]] && continue
    echo "${d#/proc/}"
  done
}
# Sum of VmRSS (kB) of the given PIDs.
rss_kb() {
  local total=0 pid kb
  for pid in "$@"; do
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
is_mounted() { awk -v p="$1" '$5 == p {f = 1} END {exit !f}' /proc/self/mountinfo; }
count_mounters() { mounter_pids "$1" | wc -l; }
# Microseconds since the epoch, without forking.
now_us() { local t=${EPOCHREALTIME//[.,]/}; echo "$t"; }
csi() { "$B" csi "$@" --endpoint "$SOCK"; }

# Stop PID: SIGTERM, up to $2 tenths of a second, then SIGKILL.
stop_pid() {
  local pid=$1 tenths=${2:-50}
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq "$tenths"); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? pid m
  set +e
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ]; then
    echo "shared_mounts.sh: failed (exit $rc); cleaning up" >&2
    [ -f "$W/daemon.log" ] && { echo "--- daemon log (tail)" >&2; tail -n 25 "$W/daemon.log" | mask >&2; }
    for m in "$W"/mounter-*.log; do
      [ -s "$m" ] && { echo "--- $m (tail)" >&2; tail -n 5 "$m" | mask >&2; }
    done
  fi
  # Bindery first (it unmounts what it mounted), then whatever is left.
  [ -n "$DAEMON" ] && stop_pid "$DAEMON" 100
  unmount_below "$W"
  for pid in $(mounter_pids "$W/") "${BASE_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  [ -n "$SERVER" ] && stop_pid "$SERVER" 20
  wait 2>/dev/null
  remove_workdir "$W"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -------------------------------------------------------------- S3 server --
mkdir -p "$W/s3/$BUCKET/$PREFIX" "$W/kubelet" "$W/base"
echo "hello from the bench" >"$W/s3/$BUCKET/$PREFIX/hello.txt"
start_s3_server "$W/s3" "$AKID" "$SECRET"
URL="http://127.0.0.1:$PORT"

echo "bindery benchmark: $N pods, one S3 volume, mounter $MOUNTER"
echo "binary:  $B"
echo "s3fs:    $(s3fs --version 2>/dev/null | head -n 1)"
echo "rclone:  $("$RCLONE" version 2>/dev/null | head -n 1) ($RCLONE)"
echo "S3:      rclone serve s3 on 127.0.0.1:$PORT; work dir $W"

# ======================================================= a) bindery way ====
say "a) bindery: one stage, $N bind publishes"
RUST_LOG=info "$B" --endpoint "$SOCK" --node-id bench --kubelet-dir "$W/kubelet" \
  --state-dir "$W/state" --unstage-grace 10 2>"$W/daemon.log" &
DAEMON=$!
ready=no
for _ in $(seq 200); do
  if csi probe 2>/dev/null | grep -q 'value: true'; then ready=yes; break; fi
  sleep 0.05
done
[ $ready = yes ] || { echo "daemon not ready" >&2; exit 1; }

(umask 077 && printf 'accessKeyID=%s\nsecretAccessKey=%s\nendpoint=%s\n' "$AKID" "$SECRET" "$URL" >"$W/secrets")
t0=$(now_us)
csi node-stage --volume-id "$VOL" --staging-path "$STAGE" --access-mode multi-node-multi-writer \
  --param mounter="$MOUNTER" --secrets-file "$W/secrets" >/dev/null
STAGE_US=$(($(now_us) - t0))
echo "staged $VOL at \$W/${STAGE#"$W"/} in $((STAGE_US / 1000)) ms (client wall)"

: >"$W/bindery_client.txt"
ABORTED=0
for i in $(seq "$N"); do
  T=$(target "$i")
  for attempt in $(seq 20); do
    t0=$(now_us)
    rc=0
    csi node-publish --volume-id "$VOL" --staging-path "$STAGE" --target-path "$T" \
      --access-mode multi-node-multi-writer >/dev/null 2>"$W/publish.err" || rc=$?
    t1=$(now_us)
    [ "$rc" = 0 ] && break
    if [ "$rc" = 10 ] && [ "$attempt" -lt 20 ]; then # ABORTED: the CO retries
      ABORTED=$((ABORTED + 1))
      echo "  pod $i: ABORTED ($(cat "$W/publish.err")); retrying" >&2
      sleep 0.1
      continue
    fi
    echo "publish of pod $i failed with exit $rc: $(cat "$W/publish.err")" >&2
    exit 1
  done
  echo "$i $((t1 - t0))" >>"$W/bindery_client.txt"
done

# Every pod reads through its own target (the same thing the baseline does).
for i in $(seq "$N"); do
  got=$(cat "$(target "$i")/hello.txt")
  [ "$got" = "hello from the bench" ] || { echo "pod $i read '$got'" >&2; exit 1; }
done
mapfile -t BPIDS < <(mounter_pids "$STAGE")
B_PROCS=${#BPIDS[@]}
B_RSS=$(rss_kb "${BPIDS[@]}")
D_RSS=$(status_kb "$DAEMON" VmRSS)
D_HWM=$(status_kb "$DAEMON" VmHWM)
B_BINDS=$(mounts_under "$W/kubelet/pods/")
echo "published $N pods (ABORTED retries: $ABORTED); every pod read hello.txt through its bind"
echo "mounter processes with the staging path in their command line: $B_PROCS (pids ${BPIDS[*]})"
echo "bind mounts under \$W/kubelet/pods: $B_BINDS"

say "a) bindery: unpublish $N pods, unstage"
for i in $(seq "$N"); do
  csi node-unpublish --volume-id "$VOL" --target-path "$(target "$i")" >/dev/null
done
t0=$(now_us)
csi node-unstage --volume-id "$VOL" --staging-path "$STAGE" >/dev/null
echo "unstaged in $((($(now_us) - t0) / 1000)) ms"
left_procs=$(count_mounters "$STAGE")
left_mounts=$(mounts_under "$W/kubelet/")
left_targets=$(find "$W/kubelet/pods" -name mount 2>/dev/null | wc -l)
echo "left: $left_procs mounter processes, $left_mounts mounts under \$W/kubelet, $left_targets target dirs"
if [ "$left_procs" != 0 ] || [ "$left_mounts" != 0 ] || [ "$left_targets" != 0 ]; then
  echo "bindery did not clean up" >&2
  exit 1
fi

# ============================================== b) one mounter per pod ====
say "b) one $MOUNTER process per pod: $N mounts"
: >"$W/perpod.txt"
for i in $(seq "$N"); do
  T="$W/base/pods/pod-$i/mount"
  mkdir -p "$T"
  if [ "$MOUNTER" = s3fs ]; then
    P="$W/base/passwd-$i"
    (umask 077 && echo "$AKID:$SECRET" >"$P")
    t0=$(now_us)
    s3fs "$BUCKET:/$PREFIX" "$T" -f -o allow_other -o use_path_request_style \
      -o "url=$URL" -o "passwd_file=$P" >"$W/mounter-$i.log" 2>&1 &
  else
    t0=$(now_us)
    RCLONE_CONFIG=/dev/null RCLONE_S3_PROVIDER=Other RCLONE_S3_ENDPOINT="$URL" \
      RCLONE_S3_ACCESS_KEY_ID="$AKID" RCLONE_S3_SECRET_ACCESS_KEY="$SECRET" \
      "$RCLONE" mount ":s3:$BUCKET/$PREFIX" "$T" --allow-other --vfs-cache-mode writes \
      --vfs-write-back 1s --cache-dir "$W/base/cache-$i" >"$W/mounter-$i.log" 2>&1 &
  fi
  BASE_PIDS+=("$!")
  mounted=no
  deadline=$((t0 + 30000000)) # 30 s, like bindery's --mount-timeout
  for _ in $(seq 100000); do
    if is_mounted "$T"; then mounted=yes; break; fi
    [ "$(now_us)" -lt "$deadline" ] || break
    sleep 0.002
  done
  t1=$(now_us)
  [ $mounted = yes ] || { echo "per-pod $MOUNTER $i did not mount within 30 s" >&2; exit 1; }
  echo "$i $((t1 - t0))" >>"$W/perpod.txt"
done
for i in $(seq "$N"); do
  got=$(cat "$W/base/pods/pod-$i/mount/hello.txt")
  [ "$got" = "hello from the bench" ] || { echo "per-pod $i read '$got'" >&2; exit 1; }
done
mapfile -t PPIDS < <(mounter_pids "$W/base/pods/")
P_PROCS=${#PPIDS[@]}
P_RSS=$(rss_kb "${PPIDS[@]}")
echo "mounted $N pods; every pod read hello.txt through its own mount"
echo "mounter processes: $P_PROCS"

say "b) unmount the per-pod mounts, stop their processes"
for i in $(seq "$N"); do umount "$W/base/pods/pod-$i/mount" 2>/dev/null || umount -l "$W/base/pods/pod-$i/mount"; done
for _ in $(seq 100); do [ -z "$(mounter_pids "$W/base/pods/")" ] && break; sleep 0.1; done
for pid in $(mounter_pids "$W/base/pods/"); do stop_pid "$pid" 20; done
wait "${BASE_PIDS[@]}" 2>/dev/null || true
BASE_PIDS=()
left_procs=$(count_mounters "$W/base/pods/")
left_mounts=$(mounts_under "$W/base/")
echo "left: $left_procs mounter processes, $left_mounts mounts"
if [ "$left_procs" != 0 ] || [ "$left_mounts" != 0 ]; then
  echo "per-pod cleanup failed" >&2
  exit 1
fi

# ================================================================ report ====
say "stop the daemon"
kill -TERM "$DAEMON"
drc=0
wait "$DAEMON" || drc=$?
DAEMON=""
echo "daemon exit status $drc; socket removed: $([ -e "$W/csi.sock" ] && echo no || echo yes)"
if grep -q "$SECRET" "$W/daemon.log"; then echo "secret found in the daemon log!" >&2; exit 1; fi

say "results: $N pods, one volume, mounter $MOUNTER"
N="$N" MOUNTER="$MOUNTER" STAGE_US="$STAGE_US" ABORTED="$ABORTED" \
  B_PROCS="$B_PROCS" B_RSS="$B_RSS" P_PROCS="$P_PROCS" P_RSS="$P_RSS" \
  D_RSS="$D_RSS" D_HWM="$D_HWM" W="$W" python3 - <<'PY'
import math, os, re

env = os.environ
n, w = int(env["N"]), env["W"]
unit = {"ns": 1e-3, "µs": 1.0, "μs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}
dur = r"([0-9.]+)(ns|µs|μs|us|ms|s)\b"

server, stage_log, unpub = {}, None, []
with open(f"{w}/daemon.log", encoding="utf-8", errors="replace") as f:
    for line in f:
        m = re.search(r'NodePublishVolume volume="[^"]*" path="[^"]*/pods/pod-(\d+)/[^"]*" ok in ' + dur, line)
        if m:
            server[int(m.group(1))] = float(m.group(2)) * unit[m.group(3)]
            continue
        m = re.search(r"NodeUnpublishVolume volume=.* ok in " + dur, line)
        if m:
            unpub.append(float(m.group(1)) * unit[m.group(2)])
            continue
        m = re.search(r"NodeStageVolume volume=.* ok in " + dur, line)
        if m:
            stage_log = float(m.group(1)) * unit[m.group(2)]

def load(name):
    with open(f"{w}/{name}") as f:
        return {int(a): float(b) for a, b in (l.split() for l in f if l.strip())}

client, perpod = load("bindery_client.txt"), load("perpod.txt")
missing = [i for i in range(1, n + 1) if i not in server]
if missing:
    raise SystemExit(f"no 'NodePublishVolume ... ok in' log line for pods {missing}")

def pct(vals, p):  # nearest rank
    v = sorted(vals)
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)]

def rest(d):
    return [d[i] for i in range(2, n + 1)]

ms = lambda us: f"{us / 1000:.3f}"
mb = lambda kb: f"{kb / 1024:.1f}"
ratio = lambda a, b: f"{a / b:.1f}x" if b else "-"

bp, pp = int(env["B_PROCS"]), int(env["P_PROCS"])
brss, prss = int(env["B_RSS"]), int(env["P_RSS"])
drss, dhwm = int(env["D_RSS"]), int(env["D_HWM"])
rows = [
    ("mounter processes", str(bp), str(pp), ratio(pp, bp)),
    ("mounter RSS total (MiB)", mb(brss), mb(prss), ratio(prss, brss)),
    ("  + bindery daemon RSS (MiB)", f"{mb(brss + drss)}", mb(prss), ratio(prss, brss + drss)),
]
for label, d in (("daemon log", server), ("client wall", client)):
    r2 = rest(d)
    rows += [
        (f"pods 2..N p50 (ms, {label})", ms(pct(r2, 50)), ms(pct(rest(perpod), 50)),
         ratio(pct(rest(perpod), 50), pct(r2, 50))),
        (f"pods 2..N p99 (ms, {label})", ms(pct(r2, 99)), ms(pct(rest(perpod), 99)),
         ratio(pct(rest(perpod), 99), pct(r2, 99))),
        (f"pod 1 (ms, {label})", ms(d[1]), ms(perpod[1]), ratio(perpod[1], d[1])),
    ]
stage_us = float(env["STAGE_US"])
rows.append(("pod 1 incl. stage (ms, client wall)", ms(stage_us + client[1]), ms(perpod[1]),
             ratio(perpod[1], stage_us + client[1])))

head = ("", "bindery", "one-per-pod", "per-pod/bindery")
width = max(len(r[0]) for r in rows)
print(f"{head[0]:<{width}}  {head[1]:>10}  {head[2]:>12}  {head[3]:>16}")
for r in rows:
    print(f"{r[0]:<{width}}  {r[1]:>10}  {r[2]:>12}  {r[3]:>16}")
print()
print(f"bindery daemon: VmRSS {mb(drss)} MiB, VmHWM {mb(dhwm)} MiB (after {n} publishes)")
if stage_log is not None:
    print(f"bindery NodeStageVolume: {ms(stage_log)} ms (daemon log), {ms(stage_us)} ms (client wall)")
if unpub:
    print(f"bindery NodeUnpublishVolume p50/p99: {ms(pct(unpub, 50))} / {ms(pct(unpub, 99))} ms (daemon log)")
print(f"pod 2..N means (ms): daemon log {ms(sum(rest(server)) / (n - 1))}, client wall "
      f"{ms(sum(rest(client)) / (n - 1))}, one-per-pod {ms(sum(rest(perpod)) / (n - 1))}")
k = min(10, (n - 1) // 2)
if k:
    first, last = [server[i] for i in range(2, 2 + k)], [server[i] for i in range(n - k + 1, n + 1)]
    print(f"trend (daemon log): mean of pods 2..{1 + k} {ms(sum(first) / k)} ms, "
          f"of pods {n - k + 1}..{n} {ms(sum(last) / k)} ms")
print(f"ABORTED publish retries: {env['ABORTED']}")
print("(p50/p99: nearest rank over pods 2..N; RSS: sum of VmRSS; client wall includes starting `bindery csi`;")
print(" per-pod time: start the mounter until its mount is in /proc/self/mountinfo)")
print()
p50s, p50c = pct(rest(server), 50), pct(rest(client), 50)
print("goal: 1 process; pods 2..N p50 <= 5 ms")
ok = bp == 1 and p50s <= 5000
print(f"measured: {bp} process(es); pods 2..N p50 = {ms(p50s)} ms (daemon log), {ms(p50c)} ms "
      f"(client wall) -> {'MET' if ok else 'NOT MET'}")
PY

say "clean"
echo "mounts under $W: $(mounts_under "$W/"); s3fs/rclone mount processes: $(count_mounters "$W/")"

#!/usr/bin/env bash
# Benchmark of warm cache volumes, run by hand as root:
#
#   bash benches/cache_volumes.sh                          # 100k files, 10k dirs (~1.4 GiB)
#   FILES=20000 DIRS=2000 bash benches/cache_volumes.sh    # a quick run (~0.3 GiB)
#   FSES="tmpfs xfs" REPS=5 bash benches/cache_volumes.sh
#   FSES=btrfs FILES=10000 DIRS=1000 REPS=5 bash benches/cache_volumes.sh
#
# Generates a node_modules-shaped tree, then for every filesystem under test
# (the root filesystem under $ROOT_DIR, a tmpfs, an XFS image with reflink=1, a
# btrfs image and an ext4 image on loop devices) starts the real daemon with its --kubelet-dir and --state-dir
# on that filesystem and the tree declared as cache `nm` (the daemon builds the
# golden copy there), and measures, REPS times each:
#   - NodePublishVolume with every strategy (read-only hardlink — the only
#     hardlink publish a cache allows without fs-verity or
#     trust_tenants_with_shared_inodes —, reflink where the filesystem has
#     it, snapshot on btrfs, copy, overlay): as the daemon logs it ("ok in …";
#     also the engine's own "… by STRATEGY in …" population time) and as the
#     wall time of `bindery csi node-publish`;
#   - NodeUnpublishVolume the same two ways, also of an overlay volume whose
#     whole tree was listed and stat'ed first ("overlay after a walk", as a pod
#     using its dependencies would leave it), and the time from the return of
#     the unpublish call (the pod's tree has been renamed into the trash by
#     then) until <kubelet-dir>/plugins/bindery.csi.dev/trash is empty again,
#     polled every few ms (background deletion; the daemon's own
#     "trash: removed … in" debug lines are shown beside it);
#   - baselines on the same golden tree and filesystem: the syscall floor
#     (benches/floor.rs: one thread of fd-relative mkdirat/linkat; also run
#     with FLOOR_THREADS threads), `cp -al`, `cp -a --reflink=always` (where
#     reflink works), `cp -a`, `cp -a` followed by `sync -f` (a copy publish
#     is on disk when it returns: the daemon calls syncfs before recording it
#     Populated), and `rm -rf` of each of those copies; on btrfs
#     `btrfs subvolume snapshot` and `btrfs subvolume delete` of the golden
#     subvolume (where the golden versions are read-only subvolumes, linkat
#     out of them is EXDEV: no hardlink publish, floor or `cp -al` there).
# It prints, per filesystem, a table of medians (bindery | baseline | ratio,
# and the ratio of the fastest runs) with the goals of the cache volumes and PASS/MISS
# for each, then the raw values. The daemon runs with RUST_LOG=info,bindery=debug.
# A publish is checked against the golden tree once per strategy (same
# entries, same file sizes and link targets), untimed.
#
# Environment:
#   FILES, DIRS    regular files and directories of the tree (default 100000, 10000)
#   SYMLINKS       symlinks (default FILES/500, at least 10)
#   SEED           tree generator seed (default 1); the tree is deterministic
#   SRC_TREE       use this existing directory as the cache source instead of
#                  generating one (it is never modified or deleted)
#   FSES           filesystems, any of: root tmpfs xfs btrfs ext4 (default: root tmpfs
#                  xfs btrfs; ext4 is a loop image like xfs, away from the root disk's noise)
#   REPS           repetitions (default 3); tables show medians
#   ROOT_DIR       where the root-filesystem run and all temp files live (default /var/tmp)
#   WORKERS        the daemon's --workers (population threads, default 4)
#   FLOOR_THREADS  threads of the parallel floor run (default: nproc, at least 2)
#                  (the floor is built with rustc for the host, not with cargo)
#   XFS_SIZE, TMPFS_SIZE  sizes in GiB (default: 3 x the tree + 2; btrfs and ext4 as XFS)
#   BINDERY_BIN    the bindery binary (default: the static musl release build)
#   LOG_DIR        if set, the daemon logs and the raw results are copied there
#
# Everything runs in private mount + PID namespaces (the script re-executes
# itself under `unshare`); the daemon's periodic watchdog/upkeep is off
# (--watchdog-interval=0) so its tamper checks never run during a measurement.
# Temp files live in $ROOT_DIR/bindery-cachebench.*; mounts, the loop device,
# the daemon and the temp files are removed on exit, also on failure or Ctrl-C.
# Needs root, rustc (builds benches/floor.rs), python3, xfsprogs, util-linux,
# coreutils, btrfs-progs, e2fsprogs. No network.
set -euo pipefail

# shellcheck source=benches/namespace.sh
source "$(dirname "$(readlink -f "$0")")/namespace.sh" "$0" "$@"

# ---------------------------------------------------------------- settings --
HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
B=${BINDERY_BIN:-/var/cache/bindery/target/x86_64-unknown-linux-musl/release/bindery}
FILES=${FILES:-100000}
DIRS=${DIRS:-10000}
SYMLINKS=${SYMLINKS:-$((FILES / 500 < 10 ? 10 : FILES / 500))}
SEED=${SEED:-1}
SRC_TREE=${SRC_TREE:-}
FSES=${FSES:-root tmpfs xfs btrfs}
REPS=${REPS:-3}
ROOT_DIR=${ROOT_DIR:-/var/tmp}
WORKERS=${WORKERS:-4}
NPROC=$(nproc)
FLOOR_THREADS=${FLOOR_THREADS:-$((NPROC < 2 ? 2 : NPROC))}
XFS_SIZE=${XFS_SIZE:-}
TMPFS_SIZE=${TMPFS_SIZE:-}

num() { case $2 in '' | *[!0-9]*) echo "$1 must be a whole number, got '$2'" >&2; exit 64 ;; esac; }
for v in FILES DIRS SYMLINKS SEED REPS WORKERS FLOOR_THREADS; do num "$v" "${!v}"; done
[ -z "$XFS_SIZE" ] || num XFS_SIZE "$XFS_SIZE"
[ -z "$TMPFS_SIZE" ] || num TMPFS_SIZE "$TMPFS_SIZE"
if [ "$FILES" -lt 10 ] || [ "$DIRS" -lt 10 ] || [ "$DIRS" -gt "$FILES" ]; then
  echo "need FILES >= DIRS >= 10 (got FILES=$FILES DIRS=$DIRS)" >&2; exit 64
fi
if [ "$REPS" -lt 1 ] || [ "$REPS" -gt 50 ]; then echo "REPS must be 1..50" >&2; exit 64; fi
for fs in $FSES; do
  case $fs in root | tmpfs | xfs | btrfs | ext4) ;; *) echo "FSES: unknown filesystem '$fs' (root tmpfs xfs btrfs ext4)" >&2; exit 64 ;; esac
done
[ -x "$B" ] || { echo "bindery binary not found: $B (set BINDERY_BIN)" >&2; exit 1; }
[ -z "$SRC_TREE" ] || [ -d "$SRC_TREE" ] || { echo "SRC_TREE $SRC_TREE is not a directory" >&2; exit 64; }
need_tools rustc python3 awk cp rm find sort cmp mkfs.xfs mkfs.btrfs mkfs.ext4 btrfs losetup mount umount sync
mkdir -p "$ROOT_DIR"

W=$(mktemp -d "$ROOT_DIR/bindery-cachebench.XXXXXX")
DAEMON=""
LOG=""
RESULTS="$W/results.tsv"
say() { printf '\n== %s\n' "$*"; }
now_us() { local t=${EPOCHREALTIME//[.,]/}; echo "$t"; }
is_mount() { awk -v p="$1" '$5 == p {f = 1} END {exit !f}' /proc/self/mountinfo; }

stop_daemon() {
  [ -n "$DAEMON" ] || return 0
  kill -TERM "$DAEMON" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$DAEMON" 2>/dev/null || true
  wait "$DAEMON" 2>/dev/null || true
  DAEMON=""
}

cleanup() {
  local rc=$? m dev
  set +e
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ]; then
    echo "cache_volumes.sh: failed (exit $rc); cleaning up" >&2
    [ -n "$LOG" ] && [ -f "$LOG" ] && { echo "--- daemon log (tail): $LOG" >&2; tail -n 30 "$LOG" >&2; }
  fi
  stop_daemon
  # Deepest first: overlays inside a kubelet dir, then the tmpfs and XFS mounts.
  for _ in 1 2 3; do
    [ "$(mounts_under "$W/")" = 0 ] && break
    awk -v p="$W/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | tac |
      while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  done
  # mount -o loop sets autoclear; detach explicitly in case it did not happen.
  for img in "$W/xfs.img" "$W/btrfs.img" "$W/ext4.img"; do
    [ -e "$img" ] || continue
    for dev in $(losetup -n -O NAME -j "$img" 2>/dev/null); do losetup -d "$dev" 2>/dev/null; done
  done
  remove_workdir "$W"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Record one measurement: FS KEY REP MICROSECONDS
rec() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }
# Rust Debug durations ("412.3ms", "850.0µs", "1.2s", "12ns") after the last
# " in " of each input line, as microseconds (one per line).
dur_us() {
  awk '{
    s = $0; sub(/.* in /, "", s); sub(/[ )(,].*$/, "", s)
    if (!match(s, /^[0-9.]+/)) next
    n = substr(s, 1, RLENGTH) + 0; u = substr(s, RLENGTH + 1)
    if (u ~ /^ms/) n *= 1000; else if (u ~ /^ns/) n /= 1000; else if (u ~ /^s/) n *= 1000000
    printf "%.1f\n", n
  }'
}
# The daemon's logged duration of METHOD on volume VOL (its last "ok in" line).
logged_us() {
  local line
  line=$(grep -F "$1 volume=\"$2\" " "$LOG" | tail -n 1)
  case $line in
    *" ok in "*) printf '%s\n' "$line" | dur_us ;;
    *) echo "no '$1 volume=\"$2\" … ok in' line in the daemon log: ${line:-none}" >&2; return 1 ;;
  esac
}
ms() { awk -v u="$1" 'BEGIN {printf "%.1f ms", u / 1000}'; }
# Flush dirty data of earlier steps so it is not written back during the next measurement.
settle() { sync; }
# Entries of a tree for comparisons: type, relative path, file size, link target.
listing() {
  (cd "$1" && find . -mindepth 1 \( -type f -printf 'f %P %s\n' \) -o \( -type d -printf 'd %P\n' \) \
    -o \( -type l -printf 'l %P -> %l\n' \) -o -printf '? %P\n') | LC_ALL=C sort
}
# Run a command and print its wall time in microseconds; its output goes to $W/cmd.out.
timed() {
  local t0 t1
  t0=$(now_us)
  "$@" >"$W/cmd.out" 2>&1 || { echo "failed: $*" >&2; cat "$W/cmd.out" >&2; return 1; }
  t1=$(now_us)
  echo $((t1 - t0))
}

# A private copy: a rebuild of the binary during the run changes nothing here.
cp "$B" "$W/bindery"
echo "binary: $B ($(stat -c '%y' "$B" | cut -d. -f1)), copied to $W/bindery" >"$W/header.txt"
B="$W/bindery"

# ------------------------------------------------------------- floor build --
say "build the syscall floor (benches/floor.rs)"
rustc -C opt-level=3 -C codegen-units=1 --edition 2021 -o "$W/floor" "$HERE/floor.rs"
FLOOR="$W/floor"
echo "built $FLOOR with $(rustc --version)"

# ---------------------------------------------------------------- the tree --
if [ -n "$SRC_TREE" ]; then
  SRC=$(readlink -f "$SRC_TREE")
  say "source tree: $SRC (given)"
else
  SRC="$W/src/node_modules"
  say "generate the tree: $FILES files, $DIRS dirs, $SYMLINKS symlinks (seed $SEED) in $SRC"
  mkdir -p "$W/src"
  t0=$(now_us)
  python3 - "$SRC" "$FILES" "$DIRS" "$SYMLINKS" "$SEED" <<'PY'
import math, os, random, sys

root, nfiles, ndirs, nlinks, seed = sys.argv[1], *map(int, sys.argv[2:])
rnd = random.Random(seed)
os.mkdir(root)

# Directories: scopes (@scope), top-level packages, and directories inside
# packages (lib, dist/esm, nested node_modules, ...); .bin holds the symlinks.
dirs = []                      # relative paths, every directory but the root
pkg_dirs = []                  # per package: its directories (root first)
children = {"": set()}
def mkdir(parent, name):
    base, k = name, 1
    while name in children[parent]:
        k += 1
        name = f"{base}{k}"
    rel = f"{parent}/{name}" if parent else name
    os.mkdir(os.path.join(root, rel))
    children[parent].add(name)
    children[rel] = set()
    dirs.append(rel)
    return rel

mkdir("", ".bin")
budget = ndirs - 1
npkg = max(1, budget // 6)
nscopes = min(npkg // 25, budget - npkg)
scopes = [mkdir("", f"@scope-{i}") for i in range(nscopes)]
words = ["react", "lodash", "babel", "core", "util", "parser", "types", "plugin", "loader",
         "webpack", "eslint", "config", "runtime", "helper", "string", "array", "stream",
         "glob", "path", "fs", "json", "yaml", "color", "chalk", "debug", "semver", "minimatch"]
for i in range(npkg):
    parent = rnd.choice(scopes) if scopes and rnd.random() < 0.15 else ""
    name = f"{rnd.choice(words)}-{rnd.choice(words)}-{i}"
    pkg_dirs.append([mkdir(parent, name)])
subnames = ["lib", "dist", "src", "esm", "cjs", "types", "utils", "internal", "helpers", "build",
            "locale", "test", "es", "umd", "modules", "bin", "node_modules", "compat", "fp"]
left = ndirs - len(dirs)
for _ in range(left):
    # Skewed: a few packages are big (think @babel, typescript, lodash).
    p = pkg_dirs[int(len(pkg_dirs) * rnd.random() ** 2.5)]
    parent = rnd.choice(p)
    if parent.count("/") > 9:
        parent = p[0]
    p.append(mkdir(parent, rnd.choice(subnames)))
assert len(dirs) == ndirs, (len(dirs), ndirs)

# Files: package.json and README.md per package, the rest spread over the
# packages' directories with skewed weights. Sizes: log-normal around 1.5 KB
# (sigma 2.2), redrawn until within 100 B .. 1 MB: median ~1.5 KB, mean ~15 KB.
def size():
    while True:
        s = int(rnd.lognormvariate(math.log(1500), 2.2))
        if 100 <= s <= 1_000_000:
            return s

blob = rnd.randbytes(2 * 1024 * 1024)
files, total, sizes = [], 0, []
counter = {}
def write(rel_dir, name, nbytes, mode):
    global total
    rel = f"{rel_dir}/{name}"
    fd = os.open(os.path.join(root, rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    off = rnd.randrange(0, len(blob) - nbytes)
    os.write(fd, blob[off:off + nbytes])
    os.fchmod(fd, mode)
    os.close(fd)
    files.append(rel)
    sizes.append(nbytes)
    total += nbytes

meta = 0
for p in pkg_dirs:
    for name in ("package.json", "README.md"):
        if meta < nfiles // 4:
            write(p[0], name, rnd.randint(300, 4000), 0o644)
            meta += 1
inner = [d for p in pkg_dirs for d in p]
weights = [rnd.paretovariate(1.3) for _ in inner]
exts = [".js"] * 8 + [".d.ts", ".d.ts", ".js.map", ".mjs", ".cjs", ".json", ".ts", ".md"]
for d in rnd.choices(inner, weights=weights, k=nfiles - meta):
    k = counter.get(d, 0)
    counter[d] = k + 1
    is_bin = d.endswith("/bin")
    mode = 0o755 if is_bin or rnd.random() < 0.03 else 0o644
    write(d, f"{'cli' if is_bin else 'm'}{k}{rnd.choice(exts)}", size(), mode)

# Symlinks: most in .bin (../pkg/bin/cli.js, as npm makes them), some inside
# packages, one dangling.
links = 0
for i in range(nlinks):
    if i == nlinks - 1:
        os.symlink("does/not/exist", os.path.join(root, ".bin", "dangling"))
    elif i % 5:
        target = rnd.choice(files)
        os.symlink("../" + target, os.path.join(root, ".bin", f"cmd-{i}"))
    else:
        p = rnd.choice(pkg_dirs)
        own = [f for f in files if f.startswith(p[0] + "/")] or files
        target = rnd.choice(own)
        rel = os.path.relpath(target, p[0])
        os.symlink(rel, os.path.join(root, p[0], f"link-{i}.js"))
    links += 1

sizes.sort()
q = lambda f: sizes[min(len(sizes) - 1, int(f * len(sizes)))]
print(f"tree: {len(files)} files, {len(dirs)} dirs (+ root), {links} symlinks, "
      f"{total} bytes ({total / 2**30:.2f} GiB); file sizes p50 {q(0.5)} B, p90 {q(0.9)} B, "
      f"p99 {q(0.99)} B, max {sizes[-1]} B, mean {total // len(files)} B")
PY
  echo "generated in $(ms $(($(now_us) - t0)))"
fi
TREE_BYTES=$(find "$SRC" -type f -printf '%s\n' | awk '{s += $1} END {printf "%d", s}')
TREE_FILES=$(find "$SRC" -type f | wc -l)
TREE_DIRS=$(find "$SRC" -mindepth 1 -type d | wc -l)
TREE_LINKS=$(find "$SRC" -type l | wc -l)
GIB=$(((TREE_BYTES + (1 << 30) - 1) >> 30))
XFS_SIZE=${XFS_SIZE:-$((3 * GIB + 2))}
TMPFS_SIZE=${TMPFS_SIZE:-$((3 * GIB + 2))}

{
  echo "machine: $NPROC CPUs, $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2 / 1048576}' /proc/meminfo), kernel $(uname -r)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  cat "$W/header.txt"
  echo "tree: $TREE_FILES files, $TREE_DIRS dirs, $TREE_LINKS symlinks, $TREE_BYTES bytes ($(awk -v b="$TREE_BYTES" 'BEGIN {printf "%.2f GiB", b / 2^30}'))"
  echo "daemon: --workers $WORKERS --watchdog-interval 0; $REPS repetitions; floor also with $FLOOR_THREADS threads"
} >"$W/header2.txt"
mv "$W/header2.txt" "$W/header.txt"
cat "$W/header.txt"

# ------------------------------------------------------------ one filesystem --
# Poll until the daemon's trash dir is empty (or missing).
trash_empty() {
  local e
  shopt -s nullglob dotglob
  e=("$TRASH"/*)
  shopt -u nullglob dotglob
  [ "${#e[@]}" = 0 ]
}
wait_trash() {
  local deadline=$(($(now_us) + 900000000))
  until trash_empty; do
    [ "$(now_us)" -lt "$deadline" ] || { echo "trash not emptied within 900 s: $(ls -A "$TRASH")" >&2; return 1; }
    kill -0 "$DAEMON" 2>/dev/null || { echo "the daemon exited while deleting" >&2; return 1; }
    # Not `read -t` on a fifo: bash 5.2 can crash when a signal interrupts it.
    sleep 0.002
  done
}
csi() { "$B" csi "$@" --endpoint "unix://$SOCK" --timeout 1800; }

start_daemon() {
  local conf="$W/$FS.caches.conf" t0 strategies="auto, hardlink, reflink, copy, overlay"
  # On btrfs a cache that names hardlink keeps plain directories, which cannot be snapshotted.
  [ "$FS" != btrfs ] || strategies="auto, reflink, snapshot, copy, overlay"
  printf '[cache nm]\nsource = dir:%s\nnamespaces = *\nstrategies = %s\n' "$SRC" "$strategies" >"$conf"
  mkdir -p "$KUB" "$STATE"
  LOG="$W/$FS.daemon.log"
  t0=$(now_us)
  # In its own session: a Ctrl-C of the benchmark reaches the script (which
  # stops the daemon in its cleanup), never the daemon in the middle of a step.
  RUST_LOG=info,bindery=debug setsid "$B" --endpoint "unix://$SOCK" --node-id bench \
    --kubelet-dir "$KUB" --state-dir "$STATE" --cache-config "$conf" \
    --workers "$WORKERS" --watchdog-interval 0 </dev/null >>"$LOG" 2>&1 &
  DAEMON=$!
  # Probe is ready once state is recovered; the golden copy is built in the
  # background, and its log line says when it is there.
  until [ -S "$SOCK" ] && csi probe 2>/dev/null | grep -q 'value: true' &&
    grep -qF 'built version' "$LOG"; do
    kill -0 "$DAEMON" 2>/dev/null || { DAEMON=""; echo "the daemon exited" >&2; return 1; }
    [ $(($(now_us) - t0)) -lt 1800000000 ] || { echo "daemon not ready within 1800 s" >&2; return 1; }
    sleep 0.2
  done
  echo "daemon ready (golden copy built) after $(ms $(($(now_us) - t0)))"
  grep -F 'built version' "$LOG" | sed 's/^/  log: /'
  rec "$FS" build.log 1 "$(grep -F 'built version' "$LOG" | tail -n 1 | sed 's/ (.*//' | dur_us)"
  # The golden store lives on the pods' mount, beside the trash.
  GOLDEN=$(find "$KUB/plugins/bindery.csi.dev/golden/nm" -mindepth 1 -maxdepth 1 -type d -name '[0-9]*' | sort | tail -n 1)
  [ -n "$GOLDEN" ] || { echo "no golden version under $KUB/plugins/bindery.csi.dev/golden/nm" >&2; return 1; }
  listing "$GOLDEN" >"$W/$FS.golden.lst"
  listing "$SRC" | cmp -s - "$W/$FS.golden.lst" || { echo "golden copy differs from the source" >&2; return 1; }
}

# One bindery publish + unpublish + background deletion. LABEL is the strategy,
# or overlay+walk: an overlay volume whose every entry is listed and stat'ed
# (as a pod using the whole tree would) before it is unpublished.
bindery_run() {
  local label=$1 r=$2 s=${1%+walk} vol target t0 t1 t2 lines pub pubwall pop unpub del walk=no ro=()
  [ "$label" = "$s" ] || walk=yes
  # Hardlink shares the golden inodes: allowed here for read-only publishes only.
  [ "$s" != hardlink ] || ro=(--readonly)
  vol="$FS-${label/+/-}-$r"
  target="$KUB/pods/$vol/volumes/kubernetes.io~csi/cache/mount"
  settle
  t0=$(now_us)
  csi node-publish --volume-id "$vol" --target-path "$target" --param cache=nm "${ro[@]}" \
    --param "strategy=$s" --param csi.storage.k8s.io/ephemeral=true >"$W/cmd.out" 2>&1 ||
    { echo "publish $vol failed: $(cat "$W/cmd.out")" >&2; return 1; }
  t1=$(now_us)
  pub=$(logged_us NodePublishVolume "$vol")
  rec "$FS" "pub.log.$label" "$r" "$pub"
  pubwall=$((t1 - t0))
  rec "$FS" "pub.wall.$label" "$r" "$pubwall"
  pop=""
  if [ "$s" = overlay ]; then
    is_mount "$target" || { echo "$vol: no overlay mounted at the target" >&2; return 1; }
  else
    # The engine's own line: "... into TARGET by STRATEGY in 4.5ms" (population
    # only), or "snapshot of GOLDEN at TARGET in 1.2ms".
    if [ "$s" = snapshot ]; then
      pop=$(grep -F "at $target in" "$LOG" | tail -n 1 | dur_us)
    else
      pop=$(grep -F "into $target by $s in" "$LOG" | tail -n 1 | dur_us)
    fi
    [ -n "$pop" ] || { echo "$vol: no 'into … by $s in' line in the log" >&2; return 1; }
    rec "$FS" "pub.pop.$label" "$r" "$pop"
  fi
  # Compare with the golden tree (untimed): once per fill strategy, every time
  # with +walk; plain overlay volumes stay untouched.
  if [ "$walk" = yes ] || { [ "$r" = 1 ] && [ "$s" != overlay ]; }; then
    listing "$target" | cmp -s - "$W/$FS.golden.lst" ||
      { echo "$vol: the published tree differs from the golden copy" >&2; return 1; }
  fi
  settle
  lines=$(wc -l <"$LOG")
  t0=$(now_us)
  csi node-unpublish --volume-id "$vol" --target-path "$target" >"$W/cmd.out" 2>&1 ||
    { echo "unpublish $vol failed: $(cat "$W/cmd.out")" >&2; return 1; }
  t1=$(now_us)
  wait_trash
  t2=$(now_us)
  unpub=$(logged_us NodeUnpublishVolume "$vol")
  rec "$FS" "unpub.log.$label" "$r" "$unpub"
  rec "$FS" "unpub.wall.$label" "$r" $((t1 - t0))
  rec "$FS" "del.$label" "$r" $((t2 - t1))
  del=$(tail -n +"$((lines + 1))" "$LOG" | grep -F 'trash: removed' | dur_us | awk '{s += $1} END {printf "%.1f", s}')
  rec "$FS" "del.log.$label" "$r" "$del"
  [ ! -e "$target" ] || { echo "$vol: target still exists after unpublish" >&2; return 1; }
  [ "$(mounts_under "$KUB/")" = 0 ] || { echo "$vol: mounts left under the kubelet dir" >&2; return 1; }
  printf '  %-12s publish %10s (log; populate %10s) %10s (wall) | unpublish %8s (log) %8s (wall) | deleted after %s (log: %s)\n' \
    "$label" "$(ms "$pub")" "${pop:+$(ms "$pop")}" "$(ms "$pubwall")" "$(ms "$unpub")" "$(ms $((t1 - t0)))" \
    "$(ms $((t2 - t1)))" "$(ms "$del")"
}

# A baseline copy: KEY DST CMD...; then `rm -rf` of the copy, timed as rm.KEY.
baseline() {
  local key=$1 dst=$2 r=$3 us rmus
  shift 3
  settle
  us=$(timed "$@")
  rec "$FS" "base.$key" "$r" "$us"
  if [ "$r" = 1 ]; then
    listing "$dst" | cmp -s - "$W/$FS.golden.lst" || { echo "baseline $key: copy differs from the golden tree" >&2; return 1; }
  fi
  settle
  rmus=$(timed rm -rf "$dst")
  rec "$FS" "rm.$key" "$r" "$rmus"
  printf '  %-22s %11s | rm -rf of the copy %11s\n' "$key" "$(ms "$us")" "$(ms "$rmus")"
}

run_fs() {
  FS=$1
  local base r s strategies fstype
  case $FS in
    root)
      base="$W/root"
      mkdir -p "$base"
      ;;
    tmpfs)
      base="$W/tmpfs"
      mkdir -p "$base"
      mount -t tmpfs -o "size=${TMPFS_SIZE}g" bindery-bench "$base"
      ;;
    xfs)
      base="$W/xfs"
      mkdir -p "$base"
      truncate -s "${XFS_SIZE}G" "$W/xfs.img"
      mkfs.xfs -q -m reflink=1 "$W/xfs.img"
      mount -o loop "$W/xfs.img" "$base"
      ;;
    btrfs)
      base="$W/btrfs"
      mkdir -p "$base"
      truncate -s "${XFS_SIZE}G" "$W/btrfs.img"
      mkfs.btrfs -q "$W/btrfs.img" >/dev/null
      mount -o loop "$W/btrfs.img" "$base"
      ;;
    ext4)
      base="$W/ext4"
      mkdir -p "$base"
      truncate -s "${XFS_SIZE}G" "$W/ext4.img"
      mkfs.ext4 -q "$W/ext4.img"
      mount -o loop "$W/ext4.img" "$base"
      ;;
  esac
  fstype=$(findmnt -n -o FSTYPE,SOURCE -T "$base" | awk '{print $1 " on " $2}')
  say "filesystem $FS: $base ($fstype)"
  echo "$FS	$fstype	$base" >>"$W/fses.tsv"
  KUB="$base/kubelet"
  STATE="$base/state"
  SOCK="$W/$FS.sock"
  TRASH="$KUB/plugins/bindery.csi.dev/trash"
  # On btrfs the cache is declared for snapshot and without hardlink (start_daemon).
  strategies=""
  [ "$FS" = btrfs ] || strategies="hardlink"
  echo probe >"$base/.reflink-probe"
  if cp --reflink=always "$base/.reflink-probe" "$base/.reflink-probe2" 2>/dev/null; then
    strategies+=" reflink"
    echo "$FS" >>"$W/reflink.txt"
  fi
  rm -f "$base/.reflink-probe" "$base/.reflink-probe2"
  [ "$FS" != btrfs ] || strategies+=" snapshot"
  strategies+=" copy overlay overlay+walk"
  start_daemon
  for r in $(seq "$REPS"); do
    echo "-- repetition $r/$REPS"
    for s in $strategies; do bindery_run "$s" "$r"; done
    if [ "$FS" = btrfs ]; then
      settle
      us=$(timed btrfs subvolume snapshot "$GOLDEN" "$base/snap")
      rec "$FS" base.snap "$r" "$us"
      [ "$r" != 1 ] || listing "$base/snap" | cmp -s - "$W/$FS.golden.lst" ||
        { echo "btrfs snapshot differs from the golden tree" >&2; return 1; }
      settle
      rmus=$(timed btrfs subvolume delete "$base/snap")
      rec "$FS" rm.snap "$r" "$rmus"
      printf '  %-22s %11s | btrfs subvolume delete %11s\n' "btrfs snapshot" "$(ms "$us")" "$(ms "$rmus")"
      baseline cpreflink "$base/cpreflink" "$r" cp -a --reflink=always "$GOLDEN" "$base/cpreflink"
      baseline cpa "$base/cpa" "$r" cp -a "$GOLDEN" "$base/cpa"
      baseline cpasync "$base/cpasync" "$r" sh -c 'cp -a "$1" "$2" && sync -f "$2"' sh "$GOLDEN" "$base/cpasync"
      continue
    fi
    settle
    us=$(timed "$FLOOR" "$GOLDEN" "$base/floor1")
    rec "$FS" base.floor "$r" "$us"
    rec "$FS" base.floor.self "$r" "$(sed -n 's/.* in \([0-9.]*\) s$/\1/p' "$W/cmd.out" | awk '{printf "%.1f", $1 * 1e6}')"
    [ "$r" != 1 ] || listing "$base/floor1" | cmp -s - "$W/$FS.golden.lst" ||
      { echo "floor: copy differs from the golden tree" >&2; return 1; }
    printf '  %-22s %11s (%s)\n' "floor" "$(ms "$us")" "$(cat "$W/cmd.out")"
    rm -rf "$base/floor1"
    settle
    us=$(timed "$FLOOR" "$GOLDEN" "$base/floorN" "$FLOOR_THREADS")
    rec "$FS" base.floorN "$r" "$us"
    printf '  %-22s %11s\n' "floor, $FLOOR_THREADS threads" "$(ms "$us")"
    rm -rf "$base/floorN"
    baseline cpal "$base/cpal" "$r" cp -al "$GOLDEN" "$base/cpal"
    if [[ $strategies == *reflink* ]]; then
      baseline cpreflink "$base/cpreflink" "$r" cp -a --reflink=always "$GOLDEN" "$base/cpreflink"
    fi
    baseline cpa "$base/cpa" "$r" cp -a "$GOLDEN" "$base/cpa"
    baseline cpasync "$base/cpasync" "$r" sh -c 'cp -a "$1" "$2" && sync -f "$2"' sh "$GOLDEN" "$base/cpasync"
  done
  stop_daemon
  grep -E ' (WARN|ERROR) ' "$LOG" | sed 's/^/  daemon log: /' | head -n 20 || true
  if [ -n "${LOG_DIR:-}" ]; then
    mkdir -p "$LOG_DIR"
    cp "$LOG" "$LOG_DIR/$FS.daemon.log"
  fi
  if [ "$FS" != root ]; then
    umount "$base"
    rm -f "$W/$FS.img"
  else
    rm -rf --one-file-system "$base"
  fi
}

for fs in $FSES; do run_fs "$fs"; done

# ================================================================ report ====
say "results (medians of $REPS; bindery = the daemon's log line, wall = \`bindery csi\` call)"
cat "$W/header.txt"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$RESULTS" "$W/fses.tsv" "$FLOOR_THREADS" <<'PY'
import statistics, sys
from collections import defaultdict

results, fses, floor_threads = sys.argv[1], sys.argv[2], sys.argv[3]
vals = defaultdict(list)
with open(results) as f:
    for line in f:
        fs, key, rep, us = line.rstrip("\n").split("\t")
        vals[(fs, key)].append(float(us))
with open(fses) as f:
    order = [l.rstrip("\n").split("\t") for l in f]

def t(us):
    if us is None:
        return "-"
    return f"{us / 1e6:.3f} s" if us >= 1e6 else f"{us / 1e3:.1f} ms"

for fs, fstype, base in order:
    def get(key, how=statistics.median):
        v = vals.get((fs, key))
        return how(v) if v else None
    rows = []
    def row(what, key, wall_key=None, base_name="-", base_key=None, goal="(info)", limit=None, base_factor=1.0):
        b, bmin = get(key), get(key, min)
        bl, blmin = (get(base_key), get(base_key, min)) if base_key else (None, None)
        r = f"{b / bl:.2f}x" if b is not None and bl else "-"
        rmin = f"{bmin / blmin:.2f}x" if bmin is not None and blmin else "-"
        verdict = ""
        if limit is not None and b is not None:
            # limit: absolute microseconds (no baseline) or a ratio to the baseline
            ok = b <= limit if base_key is None else (bl is not None and b <= limit * bl)
            verdict = "PASS" if ok else "MISS"
        rows.append((what, t(b), t(get(wall_key)) if wall_key else "", base_name,
                     t(bl) if base_key else "", r, rmin, goal, verdict))
    have = lambda s: (fs, f"pub.log.{s}") in vals
    if have("snapshot"):
        row("publish snapshot", "pub.log.snapshot", "pub.wall.snapshot", goal="<= 5 ms", limit=5000)
        row("publish snapshot", "pub.log.snapshot", None, "btrfs subvolume snapshot", "base.snap")
        row("  snapshot only", "pub.pop.snapshot", None, "btrfs subvolume snapshot", "base.snap")
        row("publish snapshot", "pub.log.snapshot", None, "cp -a --reflink=always", "base.cpreflink")
    if have("hardlink"):
        row("publish ro hardlink", "pub.log.hardlink", "pub.wall.hardlink", "floor, 1 thread", "base.floor",
            "<= 1.10x floor", 1.10)
        row("  population only", "pub.pop.hardlink", None, "floor, 1 thread", "base.floor")
        row("publish ro hardlink", "pub.log.hardlink", None, f"floor, {floor_threads} threads", "base.floorN")
        row("publish ro hardlink", "pub.log.hardlink", None, "cp -al", "base.cpal")
    if have("reflink") and have("hardlink"):
        row("publish reflink", "pub.log.reflink", "pub.wall.reflink", "bindery hardlink", "pub.log.hardlink",
            "<= 1.50x hardlink", 1.50)
        row("  population only", "pub.pop.reflink", None, "bindery hardlink", "pub.pop.hardlink")
    if have("reflink"):
        row("publish reflink", "pub.log.reflink", "pub.wall.reflink", "cp -a --reflink=always", "base.cpreflink")
    # A copy publish is on disk when it returns (syncfs): its baseline is a
    # durable cp -a; plain cp -a leaves the data in the page cache.
    row("publish copy", "pub.log.copy", "pub.wall.copy", "cp -a; sync -f", "base.cpasync",
        "<= 0.60x cp -a; sync", 0.60)
    row("publish copy", "pub.log.copy", None, "cp -a (not on disk)", "base.cpa")
    row("  population only", "pub.pop.copy", None, "cp -a (not on disk)", "base.cpa")
    row("publish overlay", "pub.log.overlay", "pub.wall.overlay", goal="<= 5 ms", limit=5000)
    fills = [s for s in ("hardlink", "reflink", "snapshot", "copy") if have(s)]
    for s in fills + ["overlay", "overlay+walk"]:
        what = "unpublish overlay after a walk" if s == "overlay+walk" else f"unpublish {s}"
        row(what, f"unpub.log.{s}", f"unpub.wall.{s}", goal="<= 5 ms", limit=5000)
    like = {"hardlink": ("cpal", "cp -al"), "reflink": ("cpreflink", "cp --reflink"), "copy": ("cpa", "cp -a")}
    if have("snapshot"):
        row("deletion snapshot", "del.snapshot", None, "btrfs subvolume delete", "rm.snap")
        row("  trash thread's own log", "del.log.snapshot", None, "btrfs subvolume delete", "rm.snap")
    for s in [f for f in fills if f in like]:
        key, name = like[s]
        row(f"deletion {s}", f"del.{s}", None, f"rm -rf of the {name} copy", f"rm.{key}",
            "<= 0.80x rm -rf", 0.80)
        row("  trash thread's own log", f"del.log.{s}", None, f"rm -rf of the {name} copy", f"rm.{key}")
    for s in ("overlay", "overlay+walk"):
        row(f"deletion {s}", f"del.{s}")
    print()
    print(f"--- {fs}: {fstype}  [{base}]  golden build (daemon log): {t(get('build.log'))}")
    head = ("", "bindery", "wall", "baseline", "", "ratio", "of mins", "goal", "")
    w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    def fmt(r):
        return (f"{r[0]:<{w[0]}} | {r[1]:>{w[1]}} | {r[2]:>{w[2]}} | {r[3]:<{w[3]}} {r[4]:>{w[4]}}"
                f" | {r[5]:>{w[5]}} {r[6]:>{w[6]}} | {r[7]:<{w[7]}} {r[8]}").rstrip()
    print(fmt(head))
    print("-" * max(len(fmt(r)) for r in rows))
    for r in rows:
        print(fmt(r))

print("""
bindery: the daemon's own duration, median of the repetitions ("NodePublishVolume/NodeUnpublishVolume
  ... ok in" log lines; "population only": the engine's "... into TARGET by STRATEGY in" line).
  deletion: from the return of the unpublish call (the tree is in the trash by then) until the trash
  dir is empty again, polled every few ms; below it the trash thread's "trash: removed ... in" lines.
wall: the `bindery csi` client call, including its process start and connection.
baseline: wall time of the command (floor = benches/floor.rs); ratio: bindery / baseline (medians);
  of mins: the same with the fastest repetition of each, less sensitive to other load.
goal: the figure each row names; PASS/MISS judges the median.""")
print("raw values per repetition (ms):")
for fs, _, _ in order:
    for k in sorted({k for (f, k) in vals if f == fs}):
        print(f"  {fs:<6} {k:<24} " + "  ".join(f"{v / 1e3:.1f}" for v in vals[(fs, k)]))
PY
[ -z "${LOG_DIR:-}" ] || { cp "$RESULTS" "$LOG_DIR/results.tsv"; echo "daemon logs and results.tsv copied to $LOG_DIR"; }
say "clean"
echo "mounts under $W: $(mounts_under "$W/"); loop devices on its images: $(for i in xfs btrfs ext4; do losetup -n -O NAME -j "$W/$i.img" 2>/dev/null; done | wc -l)"

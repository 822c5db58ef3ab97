#!/usr/bin/env bash
# What one file costs, by hand, as root:
#
#   bash benches/reflink_floor.sh              # XFS (reflink=1), FILES=8000
#   FS=btrfs FILES=20000 bash benches/reflink_floor.sh
#
# The floor under a reflink publish against a hardlink publish, on one
# filesystem image on a loop device: per file, on one thread, side by side in
# one run (median of REPS):
#   linkat                          what a hardlink publish does per file
#   openat(O_CREAT|O_EXCL)          the least a reflink publish does: a new inode
#   open + O_CREAT + ioctl(FICLONE) a reflink of the file, nothing else
# and the ratio of each to linkat. No ownership, no timestamps: bindery's
# reflink publish also sets the mode and times of each new file.
# The files are FILES regular files of random sizes (mean 13 kB, seed 1),
# their data synced before each measurement.
#
# Runs in private mount + PID namespaces; the image lives in
# /var/tmp/bindery-floor-* and is removed on exit. Needs root, python3,
# util-linux and mkfs.xfs (or mkfs.btrfs).
set -euo pipefail

# shellcheck source=benches/namespace.sh
source "$(dirname "$(readlink -f "$0")")/namespace.sh" "$0" "$@"

FS=${FS:-xfs}
FILES=${FILES:-8000}
REPS=${REPS:-3}
for v in FILES REPS; do
  case ${!v} in '' | *[!0-9]* | 0) echo "$v must be a positive number" >&2; exit 64 ;; esac
done
case $FS in
  xfs) need_tools python3 mkfs.xfs losetup mount umount ;;
  btrfs) need_tools python3 mkfs.btrfs losetup mount umount ;;
  *) echo "FS must be xfs or btrfs (filesystems with FICLONE)" >&2; exit 64 ;;
esac

W=$(mktemp -d /var/tmp/bindery-floor-XXXXXX)
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  unmount_below "$W"
  remove_workdir "$W"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

truncate -s 4G "$W/fs.img"
if [ "$FS" = xfs ]; then mkfs.xfs -q -m reflink=1 "$W/fs.img"; else mkfs.btrfs -q "$W/fs.img" >/dev/null; fi
mkdir "$W/mnt"
mount -o loop "$W/fs.img" "$W/mnt"
echo "$FS on $(findmnt -n -o SOURCE "$W/mnt"), $FILES files, $REPS repetitions"

python3 - "$W/mnt" "$FILES" "$REPS" <<'PY'
import fcntl, os, random, statistics, sys, time

root, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
FICLONE = 0x40049409  # _IOW(0x94, 9, int)
src = os.path.join(root, "src")
os.mkdir(src)
rnd = random.Random(1)
for i in range(n):
    with open(os.path.join(src, f"f{i}"), "wb") as f:
        f.write(os.urandom(int(rnd.expovariate(1 / 13000))))
os.sync()

def link(i, dst):
    os.link(f"{src}/f{i}", f"{dst}/f{i}")

def create(i, dst):
    os.close(os.open(f"{dst}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

def clone(i, dst):
    a = os.open(f"{src}/f{i}", os.O_RDONLY)
    b = os.open(f"{dst}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.ioctl(b, FICLONE, a)
    os.close(a)
    os.close(b)

runs = {"linkat": link, "openat(O_CREAT)": create, "open + create + FICLONE": clone}
per_file = {k: [] for k in runs}
for r in range(reps):
    for name, fn in runs.items():
        dst = os.path.join(root, f"{r}-{len(per_file[name])}-{fn.__name__}")
        os.mkdir(dst)
        os.sync()
        t = time.perf_counter()
        for i in range(n):
            fn(i, dst)
        per_file[name].append((time.perf_counter() - t) / n * 1e6)
base = statistics.median(per_file["linkat"])
print(f"{'per file, one thread':<26} {'median':>10} {'ratio to linkat':>16}")
for name, v in per_file.items():
    m = statistics.median(v)
    print(f"{name:<26} {m:8.1f} us {m / base:15.2f}x")
PY

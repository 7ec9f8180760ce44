#!/usr/bin/env bash
# Cross-builds captiond for aarch64-unknown-linux-gnu (Raspberry Pi 4/5 on a 64-bit OS) on a
# Debian bookworm x86-64 machine, installing what it needs the first time.
#
# Route: rustup's toolchain here has no aarch64 standard library, so this build alone uses
# Debian's rustc-web (>= 1.91, the workspace's rust-version for tract 0.23; 1.96 in bookworm as of
# 2026-11) with its arm64 std
# (libstd-rust-web-dev:arm64, multiarch), gcc-aarch64-linux-gnu as linker and C compiler
# (ring, from rustls), and the arm64 libc headers for bindgen (nokhwa's V4L2 bindings).
# A separate target dir keeps rustup's host build cache untouched (CARGO_TARGET_DIR_AARCH64
# moves it; scripts/test.sh keeps it in ~/.cache/caption/target-aarch64).
#
#   scripts/build-aarch64.sh            # -> target-aarch64/aarch64-unknown-linux-gnu/release/captiond
#   scripts/build-aarch64.sh --no-default-features --features daemon   # without the V4L2 camera
#
# The binary's default bundle (`captiond caption` without --bundle) is the packaged one,
# /usr/share/captiond/models/flickr8k-lite1-attention-f16.
#
# The binary needs glibc >= 2.34 (Raspberry Pi OS bookworm or later); the script prints the
# highest GLIBC_ symbol version the binary references.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_AARCH64:-$PWD/target-aarch64}"

scripts/ensure-system-deps.sh --pi

# Debian's rustc for this build only (host build scripts and the aarch64 crates alike).
export RUSTC=/usr/bin/rustc
# scripts/test.sh lints the x86 build through rustup's clippy-driver; it cannot drive
# Debian's compiler.
unset RUSTC_WORKSPACE_WRAPPER
# The binary's default bundle is where the .deb installs it (scripts/package-deb.sh).
export CAPTIOND_DEFAULT_BUNDLE=/usr/share/captiond/models/flickr8k-lite1-attention-f16
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# bindgen parses the V4L2 headers as aarch64 sees them.
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=/usr/aarch64-linux-gnu -I/usr/aarch64-linux-gnu/include"

"$RUSTC" --version >&2
if [[ "${1:-}" == --package-args ]]; then
  # Another target than captiond, e.g. `--package-args -p caption-runtime --example
  # encode_repeat` (scripts/arm-insn-count.sh).
  shift
  cargo build --locked --release --target "$TARGET" "$@"
  exit 0
fi
cargo build --locked --release --target "$TARGET" -p caption-edge --bin captiond "$@"

BIN="$CARGO_TARGET_DIR/$TARGET/release/captiond"
file "$BIN" 2>/dev/null || true
floor=$(aarch64-linux-gnu-objdump -T "$BIN" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
echo "build-aarch64: $BIN ($(du -h "$BIN" | cut -f1)), needs glibc >= ${floor#GLIBC_}" >&2
echo "$BIN"

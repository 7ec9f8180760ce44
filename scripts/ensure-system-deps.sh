#!/usr/bin/env bash
# Installs the Debian packages the build and tests need, only when something is missing,
# in one apt-get call. Needs root (or sudo) the first time on a fresh machine; a no-op
# afterwards.
#
#   scripts/ensure-system-deps.sh          the x86-64 build and tests
#   scripts/ensure-system-deps.sh --pi     also the Raspberry Pi cross-build and its checks
#                                          (scripts/build-aarch64.sh, scripts/check-aarch64.sh)
#                                          and headless Chromium for the status page test
#                                          (the whole test suite, scripts/test.sh)
set -euo pipefail
missing=()
command -v g++ >/dev/null || missing+=(g++)               # torch-sys compiles its C++ shim
command -v pkg-config >/dev/null || missing+=(pkg-config)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)  # libtorch cache venv
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || missing+=(libclang-dev)  # nokhwa's V4L2 bindings (bindgen)
command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)  # MQTT tests
command -v mosquitto_sub >/dev/null || missing+=(mosquitto-clients)  # the README's subscriber
command -v openssl >/dev/null || missing+=(openssl)       # the TLS test makes its own CA
command -v make >/dev/null || missing+=(make)             # AFL++ for the fuzz targets (scripts/fuzz.sh)
foreign_arch=""
if [[ "${1:-}" == "--pi" ]]; then
  TARGET=aarch64-unknown-linux-gnu
  # Debian's rustc with its arm64 std (rustup's toolchain here has none), the cross linker
  # and C compiler (ring), arm64 libc and V4L2 headers (bindgen), qemu-user for the
  # emulated comparison, file/systemd for the package checks.
  command -v /usr/bin/rustc >/dev/null || missing+=(rustc-web)
  [[ -d /usr/lib/rustlib/$TARGET/lib ]] || { missing+=(libstd-rust-web-dev:arm64); foreign_arch=arm64; }
  command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
  [[ -f /usr/aarch64-linux-gnu/include/stdio.h ]] || missing+=(libc6-dev-arm64-cross)
  [[ -f /usr/aarch64-linux-gnu/include/linux/videodev2.h ]] || missing+=(linux-libc-dev-arm64-cross)
  command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
  command -v file >/dev/null || missing+=(file)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  # edge/tests/http.rs opens the status page in it (81 MB download; 14 s to install here).
  command -v chromium >/dev/null || missing+=(chromium)
fi
if ((${#missing[@]})); then
  echo "ensure-system-deps: installing ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) == 0 ]] || SUDO=sudo
  if [[ -n $foreign_arch ]] && ! dpkg --print-foreign-architectures | grep -qx "$foreign_arch"; then
    $SUDO dpkg --add-architecture "$foreign_arch"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || {
  echo "ensure-system-deps: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
}

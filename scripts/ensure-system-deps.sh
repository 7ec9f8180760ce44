#!/usr/bin/env bash
# Installs the Debian packages the build and tests need, only when something is missing.
# Needs root (or sudo) the first time on a fresh machine; a no-op afterwards.
set -euo pipefail
missing=()
command -v g++ >/dev/null || missing+=(g++)               # torch-sys compiles its C++ shim
command -v pkg-config >/dev/null || missing+=(pkg-config)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)  # libtorch cache venv
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || missing+=(libclang-dev)  # nokhwa's V4L2 bindings (bindgen)
command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)  # MQTT tests
command -v openssl >/dev/null || missing+=(openssl)       # the TLS test makes its own CA
if ((${#missing[@]})); then
  echo "ensure-system-deps: installing ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || {
  echo "ensure-system-deps: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
}

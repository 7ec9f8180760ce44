#!/usr/bin/env bash
# Builds the Raspberry Pi package: target-aarch64/debian/captiond_<version>-1_arm64.deb with
# the cross-built captiond (scripts/build-aarch64.sh), the default model bundle, the
# service config /etc/captiond/captiond.toml, a sysusers.d entry for the `captiond` user
# and the hardened unit captiond.service (all from edge/debian/ and
# [package.metadata.deb] in edge/Cargo.toml). Prints the .deb's path as the last line.
#
# On the Pi:  sudo apt install ./captiond_0.1.0-1_arm64.deb && sudo systemctl enable --now captiond
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-cargo-deb.sh >/dev/null
CACHE="${CAPTION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/caption}"
export PATH="$CACHE/tools/bin:$PATH"

scripts/build-aarch64.sh >&2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_AARCH64:-$PWD/target-aarch64}"
cargo deb -p caption-edge --target aarch64-unknown-linux-gnu --no-build \
  --output "$CARGO_TARGET_DIR/debian/" | tail -1

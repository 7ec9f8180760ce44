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

CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
  echo "package-deb: installing cargo-deb $CARGO_DEB_VERSION" >&2
  cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"
fi

scripts/build-aarch64.sh >&2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_AARCH64:-$PWD/target-aarch64}"
cargo deb -p caption-edge --target aarch64-unknown-linux-gnu --no-build \
  --output "$CARGO_TARGET_DIR/debian/" | tail -1

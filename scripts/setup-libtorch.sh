#!/usr/bin/env bash
# Installs the pinned libtorch (from the PyPI `torch` wheel) into a cache venv and
# prints the LIBTORCH path on its last line. Idempotent: a second run downloads nothing.
#
#   scripts/setup-libtorch.sh          CPU use (libtorch from the wheel, CUDA runtime only)
#   scripts/setup-libtorch.sh --cuda   CUDA workstation: the wheel with its full dependency set
#                                      (cuDNN, cuBLAS, NCCL, ...) so tch finds the GPU
set -euo pipefail

TORCH_VERSION=2.11.0
CACHE="${CAPTION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/caption}"
MODE=cpu
if [[ "${1:-}" == "--cuda" ]]; then MODE=cuda; fi
VENV="$CACHE/torch-$TORCH_VERSION-$MODE"
STAMP="$VENV/.caption-complete"

if [[ ! -f "$STAMP" ]]; then
  echo "setup-libtorch: installing torch==$TORCH_VERSION ($MODE) into $VENV" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  if [[ "$MODE" == cuda ]]; then
    "$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION"
  else
    # No CPU-only torch wheel exists on PyPI; the CUDA wheel's libtorch runs on CPU once
    # the two CUDA libraries it links against are present.
    "$VENV/bin/pip" install --quiet --no-deps "torch==$TORCH_VERSION" \
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  fi
  touch "$STAMP"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# .cargo/config.toml reads LIBTORCH from this link, so plain `cargo build` works afterwards.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ln -sfn "$SITE/torch" "$REPO/.libtorch"
echo "$SITE/torch"

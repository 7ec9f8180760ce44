#!/usr/bin/env bash
# The training pipeline, set-up included, on the real Flickr8k.
#   1. prepare  — the tutorial's text figures
#   2. extract  — EfficientNet-Lite0 features of every image (reused when already done)
#   3. train    — the merge model on `standard` text (words seen >= 5 times)
#   4. evaluate — BLEU on the test split, beam 3, both protocols
#   5. export   — the int8 bundle (verified in tract, BLEU of the bundle in its manifest)
#   FLICKR8K_DIR  the Flickr8k folder (default: ../shared/flickr8k beside the repo)
#   RUNS          output folder (default: runs/)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-system-deps.sh
scripts/setup-libtorch.sh >/dev/null
WEIGHTS=$(scripts/setup-weights.sh)
cargo build --release -p caption-trainer
T=target/release/caption-train
DATA="${FLICKR8K_DIR:-../shared/flickr8k}"
RUNS="${RUNS:-runs}"
mkdir -p "$RUNS"
$T prepare --data "$DATA" --out "$RUNS/prepare-standard" --text standard
$T extract --data "$DATA" --encoder efficientnet-lite0 --weights "$WEIGHTS" --out "$RUNS/features-lite0.safetensors"
$T train --features "$RUNS/features-lite0.safetensors" --data "$DATA" --out "$RUNS/lite0-standard" \
  --text standard --min-count 5
$T evaluate --run "$RUNS/lite0-standard" --features "$RUNS/features-lite0.safetensors" --data "$DATA" --beam 3
BEST=$(for f in "$RUNS"/lite0-standard/model-ep*.safetensors; do echo "${f##*val_loss} $f"; done | sort -n | head -1 | cut -d' ' -f2)
$T export --checkpoint "$BEST" --features-encoder efficientnet-lite0 --weights "$WEIGHTS" \
  --data "$DATA" --quantize int8 --f32-out "$RUNS/bundle-lite0-f32" --out "$RUNS/bundle-lite0-int8" --evaluate --force

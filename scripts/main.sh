#!/usr/bin/env bash
# The main job, set-up included: the trainer pipeline on the real Flickr8k.
#   1. prepare  — the tutorial's text figures
#   2. extract  — EfficientNet-Lite0 features of every image (reused when already done)
#   3. train    — the merge model on `standard` text (words seen >= 5 times)
#   4. evaluate — BLEU on the test split, beam 3, both protocols
# (The edge daemon replaces this as the main job when it lands — coming.)
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

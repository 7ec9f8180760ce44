#!/usr/bin/env bash
# The main job, set-up included. Until the edge daemon lands (coming), this prepares the
# Flickr8k text exactly as the original tutorial does and prints its figures.
#   FLICKR8K_DIR  the Flickr8k folder (default: ../shared/flickr8k beside the repo)
#   OUT           where descriptions.txt and vocab.json go (default: runs/prepare-original)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-system-deps.sh
scripts/setup-libtorch.sh >/dev/null
cargo build --release -p caption-trainer
DATA="${FLICKR8K_DIR:-../shared/flickr8k}"
OUT="${OUT:-runs/prepare-original}"
target/release/caption-train prepare --data "$DATA" --out "$OUT" --text original

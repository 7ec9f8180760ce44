#!/usr/bin/env bash
# The training pipeline, set-up included, on the real Flickr8k.
#   1. prepare  — the tutorial's text figures
#   2. extract  — the encoder's features of every image (reused when already done)
#   3. train    — the caption model on `standard` text (words seen >= 5 times)
#   4. evaluate — BLEU and CIDEr-D on the test split, beam 3
#   5. export   — the bundle, verified against the tch model in tract
#   MODEL         merge (default: the tutorial's model, pooled features, int8 bundle with
#                 BLEU in its manifest) or attention (soft attention on spatial features:
#                 the default bundle's recipe: float16 weights, the beam search's length
#                 penalty chosen on the dev split)
#   ENCODER       efficientnet-lite0 (default), efficientnet-lite1 or efficientnet-lite2;
#                 MODEL=attention ENCODER=efficientnet-lite1 rebuilds the default bundle
#   FLICKR8K_DIR  the Flickr8k folder (default: ../shared/flickr8k beside the repo)
#   RUNS          output folder (default: runs/)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${MODEL:-merge}"
ENCODER="${ENCODER:-efficientnet-lite0}"
case $MODEL in
  merge) layout=pooled; spatial=() ;;
  attention) layout=spatial; spatial=(--spatial) ;;
  *) echo "MODEL must be merge or attention, got $MODEL" >&2; exit 2 ;;
esac
scripts/ensure-system-deps.sh
scripts/setup-libtorch.sh >/dev/null
WEIGHTS=$(scripts/setup-weights.sh "$ENCODER")
cargo build --release -p caption-trainer
T=target/release/caption-train
DATA="${FLICKR8K_DIR:-../shared/flickr8k}"
RUNS="${RUNS:-runs}"
name="${ENCODER#efficientnet-}-$MODEL"
features="$RUNS/features-${ENCODER#efficientnet-}-$layout.safetensors"
mkdir -p "$RUNS"
$T prepare --data "$DATA" --out "$RUNS/prepare-standard" --text standard
$T extract --data "$DATA" --encoder "$ENCODER" --weights "$WEIGHTS" --out "$features" "${spatial[@]}"
$T train --model "$MODEL" --features "$features" --data "$DATA" --out "$RUNS/$name" \
  --text standard --min-count 5
$T evaluate --run "$RUNS/$name" --features "$features" --data "$DATA" --beam 3
BEST=$(for f in "$RUNS/$name"/model-ep*.safetensors; do echo "${f##*val_loss} $f"; done | sort -n | head -1 | cut -d' ' -f2)
if [[ $MODEL == merge ]]; then
  $T export --checkpoint "$BEST" --features-encoder "$ENCODER" --weights "$WEIGHTS" \
    --data "$DATA" --quantize int8 --f32-out "$RUNS/bundle-$name-f32" --out "$RUNS/bundle-$name-int8" --evaluate --force
else
  # As the default bundle was made: the beam ranking's length penalty chosen on the dev
  # split (best BLEU-4 of 0, 0.5, 1), the export verified on every test image with its
  # decoder stored as float16, then the encoder's weights stored as float16 too.
  best_p=0 best_bleu=-1
  for p in 0 0.5 1.0; do
    bleu=$($T evaluate --run "$RUNS/$name" --features "$features" --data "$DATA" --split dev \
      --beam 3 --length-penalty "$p" | python3 -c 'import json, sys; print(json.load(sys.stdin)["coco_protocol"]["bleu4"])')
    echo "dev BLEU-4 with length penalty $p: $bleu"
    if python3 -c "import sys; sys.exit(not $bleu > $best_bleu)"; then best_p=$p best_bleu=$bleu; fi
  done
  $T export --checkpoint "$BEST" --features-encoder "$ENCODER" --weights "$WEIGHTS" \
    --data "$DATA" --decoder-storage f16 --verify-split test --verify-images 1000 \
    --length-penalty "$best_p" --model-id "flickr8k-$name-f32" --out "$RUNS/bundle-$name-f16dec" --force
  $T float-bundle --from "$RUNS/bundle-$name-f16dec" --weights "$WEIGHTS" --storage f16 \
    --model-id "flickr8k-$name-f16" --out "$RUNS/bundle-$name-f16" --force
fi

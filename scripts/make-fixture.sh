#!/usr/bin/env bash
# Rebuilds fixtures/flickr8k: a small subset of the real Flickr8k in the official layout,
# committed so tests run anywhere. Test split: the 16 images of
# ../shared/reference/efficientnet-lite0 (parity tests use them); train and dev: the first
# images of their split files. Also keeps the token file's one id without an image file
# (2258277193_586949ec62.jpg.1), which loaders must report rather than fail on.
set -euo pipefail
SRC="${1:-$(dirname "$0")/../../shared/flickr8k}"
REF="${2:-$(dirname "$0")/../../shared/reference/efficientnet-lite0/reference.json}"
DST="$(dirname "$0")/../fixtures/flickr8k"
TRAIN_N=48
DEV_N=16
rm -rf "$DST"
mkdir -p "$DST/Flickr8k_text" "$DST/Flicker8k_Dataset"
T="$SRC/Flickr8k_text"
head -n "$TRAIN_N" "$T/Flickr_8k.trainImages.txt" > "$DST/Flickr8k_text/Flickr_8k.trainImages.txt"
head -n "$DEV_N" "$T/Flickr_8k.devImages.txt" > "$DST/Flickr8k_text/Flickr_8k.devImages.txt"
python3 -c 'import json,sys; print("\n".join(i + ".jpg" for i in json.load(open(sys.argv[1]))["images"]))' "$REF" \
  > "$DST/Flickr8k_text/Flickr_8k.testImages.txt"
cat "$DST"/Flickr8k_text/Flickr_8k.*Images.txt > /tmp/fixture-names.txt
# Token lines of the chosen images, in the token file's order, plus the image-less id.
awk -F'\t' 'NR==FNR { want[$1]=1; next } { split($1, a, "#"); if ((a[1] in want) || a[1] ~ /\.jpg\.1$/) print }' \
  /tmp/fixture-names.txt "$T/Flickr8k.token.txt" > "$DST/Flickr8k_text/Flickr8k.token.txt"
while read -r name; do cp "$SRC/Flicker8k_Dataset/$name" "$DST/Flicker8k_Dataset/"; done < /tmp/fixture-names.txt
chmod -R u+w "$DST"
echo "fixture: $(ls "$DST/Flicker8k_Dataset" | wc -l) images, $(wc -l < "$DST/Flickr8k_text/Flickr8k.token.txt") caption lines"

#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser that reads user- or network-supplied bytes in
# the edge's path, with AFL++ through cargo-afl (stable Rust). Each target (fuzz/src/bin)
# runs for RUNS executions (default 20,000) or SECONDS_PER_TARGET seconds, whichever comes
# first (CI's smoke run: 20,000 runs or 15 s; a real campaign: e.g. RUNS=100000000
# SECONDS_PER_TARGET=3600), starting from seeds made of real project
# files (bundle manifests and vocabularies, configs, Flickr8k text and images, a
# concatenated MJPEG stream). Exits non-zero, listing the inputs, if any target crashed.
#
#   scripts/fuzz.sh [target ...]         default: all targets
#
# Findings stay in $CAPTION_CACHE/fuzz/<target>/ (crashes/, queue/); turn each crash into
# a regression test beside the code it broke.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${CAPTION_CACHE:-$HOME/.cache/caption}
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo afl --version >/dev/null 2>&1; then
  cargo install cargo-afl --locked --version 0.18.2 --root "$cache/tools" >&2
  export PATH="$cache/tools/bin:$PATH"
fi
# AFL++'s runtime for this rustc, built once (needs make and a C compiler).
if ! out=$(cargo afl config --build 2>&1) && ! grep -q "already built" <<<"$out"; then
  echo "$out" >&2
  echo "fuzz: building AFL++ failed (scripts/ensure-system-deps.sh installs make and g++)" >&2
  exit 1
fi
export CARGO_TARGET_DIR="$cache/target-fuzz"
unset RUSTC_WORKSPACE_WRAPPER
targets=("$@")
((${#targets[@]})) || targets=(manifest vocab flickr8k_text image command config mjpeg pth safetensors)
cargo afl build --release --locked --manifest-path fuzz/Cargo.toml >&2
[[ -z ${FUZZ_BUILD_ONLY:-} ]] || exit 0
seeds="$cache/fuzz-seeds"
rm -rf "$seeds"
mkdir -p "$seeds"/{manifest,vocab,flickr8k_text,image,command,config,mjpeg,pth,safetensors}
for m in models/*/manifest.toml; do cp "$m" "$seeds/manifest/$(basename "$(dirname "$m")").toml"; done
# vocabularies are large: seed with the head of one and a small valid one.
head -c 3000 models/flickr8k-lite0-f16/vocab.json >"$seeds/vocab/head.json"
cp models/flickr8k-lite0-f16/vocab.json "$seeds/vocab/full.json"
head -n 20 fixtures/flickr8k/Flickr8k_text/Flickr8k.token.txt >"$seeds/flickr8k_text/token.txt"
head -n 20 fixtures/flickr8k/Flickr8k_text/Flickr_8k.testImages.txt >"$seeds/flickr8k_text/split.txt"
printf '1000268201_693b08cb0e\ta child in a pink dress\n' >"$seeds/flickr8k_text/captions.tsv"
for f in $(ls fixtures/flickr8k/Flicker8k_Dataset/*.jpg | head -n 3); do cp "$f" "$seeds/image/"; done
python3 - "$seeds/image/small.png" <<'PY'
import struct, sys, zlib
w = h = 4
raw = b"".join(b"\x00" + b"".join(bytes([x * 60, y * 60, 128]) for x in range(w)) for y in range(h))
chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PY
printf 'caption_now' >"$seeds/command/now"
printf '{"interval_ms": 2500}' >"$seeds/command/interval"
cp edge/captiond.example.toml examples/demo.toml "$seeds/config/"
cp edge/debian/captiond.toml "$seeds/config/packaged.toml"
# MJPEG: the first byte sets the chunk size; then two small real frames back to back.
small=$(ls -S fixtures/flickr8k/Flicker8k_Dataset/*.jpg | tail -n 2)
{ printf '\x07'; cat $small; } >"$seeds/mjpeg/two-frames"
# Checkpoints written by real PyTorch (scripts/golden/torch_checkpoints.py), both formats.
cp weights/tests/data/checkpoints/small-{zip,legacy}.pth "$seeds/pth/"
cp weights/tests/data/checkpoints/small-expected.safetensors "$seeds/safetensors/"
{ printf '\x00garbage\xff\xd8\xff\xe1\x00\x04ab'; head -c 200 $(echo "$small" | head -n 1); } >"$seeds/mjpeg/cut"

export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_QUIET=1
crashed=()
summary=()
for t in "${targets[@]}"; do
  out="$cache/fuzz/$t"
  rm -rf "$out"
  mkdir -p "$out"
  started=$SECONDS
  limit=(-E "${RUNS:-20000}")
  [[ -n ${SECONDS_PER_TARGET:-} ]] && limit+=(-V "$SECONDS_PER_TARGET")
  cargo afl fuzz "${limit[@]}" -i "$seeds/$t" -o "$out" -- "$CARGO_TARGET_DIR/release/$t" \
    >"$out/afl.log" 2>&1 || { tail -n 20 "$out/afl.log" >&2; crashed+=("$t (afl-fuzz failed)"); continue; }
  stats="$out/default/fuzzer_stats"
  execs=$(awk -F': *' '/^execs_done/ {print $2}' "$stats")
  paths=$(awk -F': *' '/^corpus_count/ {print $2}' "$stats")
  crashes=$(awk -F': *' '/^saved_crashes/ {print $2}' "$stats")
  summary+=("$(printf '%-14s %9s runs %6s s  corpus %5s  crashes %s' "$t" "$execs" $((SECONDS - started)) "$paths" "$crashes")")
  ((crashes == 0)) || crashed+=("$t: $(ls "$out"/default/crashes/id:* | head -n 3 | tr '\n' ' ')")
done
printf '%s\n' "== fuzz summary (AFL++ via cargo-afl)" "${summary[@]}"
if ((${#crashed[@]})); then
  printf 'fuzz: crashes in %s\n' "${crashed[@]}" >&2
  exit 1
fi

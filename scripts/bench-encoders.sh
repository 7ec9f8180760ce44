#!/usr/bin/env bash
# The encoder benchmark: tract (`captiond bench`) and onnxruntime (scripts/bench-onnxruntime.sh)
# on the very same ONNX graphs, interleaved round by round, one thread each; prints per
# variant the median over rounds of each round's median encoder latency and the ratio
# tract / onnxruntime.
#
#   scripts/bench-encoders.sh
#
# Variants: the default bundle (models/flickr8k-lite0-f16: float16-stored weights, f32
# compute), and the int8 bundle (models/flickr8k-lite0-int8) run as int8 and dequantised
# to f32; `captiond encoder-graph` writes each graph as the engine runs it, so that
# onnxruntime runs the very graph tract runs. ROUNDS (default 5) rounds; each round is one
# `captiond bench` pass over the example images (8 encoder runs per variant after a
# warm-up) and RUNS (default 8) onnxruntime runs per graph. Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
default=models/flickr8k-lite0-f16
int8=models/flickr8k-lite0-int8
rounds=${ROUNDS:-5}
cargo build --release --locked -p caption-edge --bin captiond >&2
captiond=${CARGO_TARGET_DIR:-target}/release/captiond
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$captiond" encoder-graph --bundle "$default" --precision f32 --out "$work/default-f32.onnx"
"$captiond" encoder-graph --bundle "$int8" --precision int8 --out "$work/int8-int8.onnx"
"$captiond" encoder-graph --bundle "$int8" --precision f32 --out "$work/int8-f32.onnx"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at start; $(nproc) CPUs" >&2
for ((r = 1; r <= rounds; r++)); do
  "$captiond" bench --bundle "$default" --precision f32 --threads 1 \
    --images examples/images --rounds 1 2>/dev/null | tail -1 >"$work/tract-default.$r.json"
  "$captiond" bench --bundle "$int8" --precision int8 --precision f32 --threads 1 \
    --images examples/images --rounds 1 2>/dev/null | tail -1 >"$work/tract-int8.$r.json"
  THREADS=1 RUNS=${RUNS:-8} scripts/bench-onnxruntime.sh "$work"/{default-f32,int8-int8,int8-f32}.onnx |
    grep '^{' >"$work/ort.$r.json"
  echo "round $r/$rounds done" >&2
done
python3 - "$work" "$rounds" <<'PY'
import json, os, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
names = ["default-f32", "int8-int8", "int8-f32"]
tract = {n: [] for n in names}
ort = {n: [] for n in names}
for r in range(1, rounds + 1):
    for b in json.load(open(f"{work}/tract-default.{r}.json")):
        tract["default-f32"].append(b["encoder_ms"]["median"])
    for b in json.load(open(f"{work}/tract-int8.{r}.json")):
        tract["int8-" + b["precision"]["precision"]].append(b["encoder_ms"]["median"])
    for line in open(f"{work}/ort.{r}.json"):
        row = json.loads(line)
        ort[os.path.basename(row["bundle"])[:-5]].append(row["median_ms"])
labels = {"default-f32": "default bundle (f16 weights), f32",
          "int8-int8": "int8 bundle, int8", "int8-f32": "int8 bundle, dequantised f32"}
print(f"{'variant':<36} {'tract ms':>9} {'onnxruntime ms':>15} {'tract/ort':>10}   (median of {rounds} round medians, 1 thread)")
for n in names:
    t, o = statistics.median(tract[n]), statistics.median(ort[n])
    print(f"{labels[n]:<36} {t:>9.1f} {o:>15.1f} {t / o:>9.2f}x")
    print(json.dumps({"variant": n, "tract_ms": t, "onnxruntime_ms": o, "ratio": t / o,
                      "tract_rounds": tract[n], "onnxruntime_rounds": ort[n]}))
PY

#!/usr/bin/env bash
# Reference latency of bundle encoders in onnxruntime, to compare with tract
# (`captiond bench`). A measurement aid only: onnxruntime is never part of the product.
# It lives in a scratch venv (~/.cache/caption/ort-venv, `CAPTION_CACHE` moves it).
#
#   scripts/bench-onnxruntime.sh <bundle dir | encoder .onnx file>...
#
# For each bundle's encoder.onnx (or ONNX file): median / min encoder latency over `RUNS`
# (default 10) single-image runs after 2 warm-up runs, with 1 intra-op thread and with the
# default thread count (`THREADS="1"` keeps only the first). The input is one
# preprocessed-size image of uniform noise: latency does not depend on the pixel values.
# scripts/bench-encoders.sh runs this interleaved with `captiond bench` on the same graphs.
set -euo pipefail
venv="${CAPTION_CACHE:-$HOME/.cache/caption}/ort-venv"
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import onnxruntime' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet onnxruntime==1.23.2 numpy
fi
"$venv/bin/python" - "$@" <<'EOF'
import json, os, statistics, sys, time
import numpy as np
import onnxruntime as ort

runs = int(os.environ.get("RUNS", "10"))
print(f"onnxruntime {ort.__version__}, {os.cpu_count()} CPUs, {runs} runs per row")
print(f"{'bundle':<40} {'threads':>7} {'median ms':>10} {'min ms':>9}")
thread_counts = [int(t) for t in os.environ.get("THREADS", "1 0").split()]
for bundle in sys.argv[1:]:
    graph = bundle if bundle.endswith(".onnx") else os.path.join(bundle, "encoder.onnx")
    for threads in thread_counts:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        s = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        size = s.get_inputs()[0].shape[-1]
        x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
        for _ in range(2):
            s.run(None, {name: x})
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            s.run(None, {name: x})
            times.append((time.perf_counter() - t) * 1e3)
        label = "1" if threads == 1 else "default"
        med, lo = statistics.median(times), min(times)
        print(f"{os.path.basename(bundle.rstrip('/')):<40} {label:>7} {med:>10.1f} {lo:>9.1f}")
        print(json.dumps({"bundle": bundle, "threads": label, "median_ms": med, "min_ms": lo}))
EOF

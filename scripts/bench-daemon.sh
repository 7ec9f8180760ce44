#!/usr/bin/env bash
# Throughput of the whole daemon, as a user runs it: `captiond run` over a folder of
# Flickr8k images (directory source, interval 0, the embedded broker on a free port), for
# each THREADS value; prints captions/s between the first and the last caption event
# (loading excluded) and the per-stage medians from the events.
#
#   scripts/bench-daemon.sh [N images, default 100]      THREADS="1 2" (default), ROUNDS=3
#
# CAPTIOND (default: the release build) picks the binary, e.g. to compare two builds.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100}
data=${FLICKR8K:-../shared/flickr8k}/Flicker8k_Dataset
[[ -d $data ]] || { echo "bench-daemon: no Flickr8k images at $data" >&2; exit 1; }
if [[ -z ${CAPTIOND:-} ]]; then
  cargo build --release --locked -p caption-edge --bin captiond >&2
  CAPTIOND=${CARGO_TARGET_DIR:-target}/release/captiond
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/images"
mapfile -t files < <(find "$data" -maxdepth 1 -name '*.jpg' | sort)
for f in "${files[@]:0:n}"; do ln -s "$(realpath "$f")" "$work/images/"; done
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at start; $(nproc) CPUs; $n images" >&2
for ((r = 1; r <= ${ROUNDS:-3}; r++)); do
  for t in ${THREADS:-1 2}; do
    cat >"$work/c.toml" <<TOML
log_level = "warn"
[model]
threads = $t
[source]
kind = "directory"
path = "$work/images"
interval_ms = 0
[mqtt]
stats_interval_s = 0
[mqtt.home_assistant]
discovery = false
[embedded_broker]
listen = "127.0.0.1:$port"
TOML
    "$CAPTIOND" run --config "$work/c.toml" 2>"$work/err" |
      python3 -c 'import sys, time
for line in sys.stdin:
    print(f"{time.monotonic():.6f}\t{line}", end="")' >"$work/events.$t.$r" ||
      { cat "$work/err" >&2; exit 1; }
  done
done
python3 - "$work" "${THREADS:-1 2}" "${ROUNDS:-3}" <<'PY'
import json, statistics, sys
work, threads, rounds = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
print(f"{'threads':>7} {'captions/s':>11} {'decode ms':>10} {'encoder ms':>11} {'decoder ms':>11}   (median over {rounds} rounds; stages: median per caption)")
for t in threads:
    rates, dec, enc, dco = [], [], [], []
    for r in range(1, rounds + 1):
        rows = [l.split("\t", 1) for l in open(f"{work}/events.{t}.{r}")]
        times = [float(a) for a, _ in rows]
        events = [json.loads(b) for _, b in rows]
        rates.append((len(times) - 1) / (times[-1] - times[0]))
        dec += [e["latency_ms"]["decode"] for e in events]
        enc += [e["latency_ms"]["encoder"] for e in events]
        dco += [e["latency_ms"]["decoder"] for e in events]
    m = statistics.median
    print(f"{t:>7} {m(rates):>11.1f} {m(dec):>10.1f} {m(enc):>11.1f} {m(dco):>11.1f}")
    print(json.dumps({"threads": int(t), "captions_per_s": m(rates), "rounds": rates,
                      "decode_ms": m(dec), "encoder_ms": m(enc), "decoder_ms": m(dco)}))
PY

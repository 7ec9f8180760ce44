#!/usr/bin/env bash
# POST /api/caption throughput and latency of a release `captiond run` with `[http]` on
# (default bundle, default threads, an idle watched folder so only requests caption), for
# 1 and 4 concurrent clients posting Flickr8k test images; then the daemon's peak RSS
# (VmHWM) with the server on.
#
#   scripts/bench-http.sh [requests per client count, default 100]     CLIENTS="1 4"
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100}
data=${FLICKR8K:-../shared/flickr8k}/Flicker8k_Dataset
[[ -d $data ]] || { echo "bench-http: no Flickr8k images at $data" >&2; exit 1; }
if [[ -z ${CAPTIOND:-} ]]; then
  cargo build --release --locked -p caption-edge --bin captiond >&2
  CAPTIOND=${CARGO_TARGET_DIR:-target}/release/captiond
fi
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http=$(free_port)
mqtt=$(free_port)
mkdir "$work/watched"
cat >"$work/c.toml" <<TOML
log_level = "warn"
[source]
path = "$work/watched"
watch = true
[mqtt]
stats_interval_s = 0
[embedded_broker]
listen = "127.0.0.1:$mqtt"
[http]
listen = "127.0.0.1:$http"
TOML
"$CAPTIOND" run --config "$work/c.toml" >"$work/out" 2>"$work/err" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $http))" 2>/dev/null && break
  sleep 0.1
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at start; $(nproc) CPUs" >&2
python3 - "$http" "$n" "$data" "${CLIENTS:-1 4}" <<'PY'
import http.client, json, os, statistics, sys, threading, time
port, n, data, clients = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], [int(c) for c in sys.argv[4].split()]
images = sorted(f for f in os.listdir(data) if f.endswith(".jpg"))
bodies = [open(os.path.join(data, f), "rb").read() for f in images[: max(clients) * n]]

def post(body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t = time.perf_counter()
    c.request("POST", "/api/caption", body, {"Content-Type": "image/jpeg"})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status, (time.perf_counter() - t) * 1e3

for body in bodies[:5]:  # warm-up
    post(body)
print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'median ms':>10} {'p90 ms':>8} {'non-200':>8}")
for k in clients:
    results = []
    lock = threading.Lock()
    def worker(i):
        for j in range(n):
            r = post(bodies[(i * n + j) % len(bodies)])
            with lock:
                results.append(r)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(k)]
    t = time.perf_counter()
    for th in threads: th.start()
    for th in threads: th.join()
    wall = time.perf_counter() - t
    lat = sorted(ms for s, ms in results if s == 200)
    bad = sum(1 for s, _ in results if s != 200)
    p90 = lat[int(0.9 * (len(lat) - 1))]
    print(f"{k:>7} {len(results):>8} {len(results) / wall:>7.1f} {statistics.median(lat):>10.1f} {p90:>8.1f} {bad:>8}")
    print(json.dumps({"clients": k, "requests": len(results), "requests_per_s": len(results) / wall,
                      "median_ms": statistics.median(lat), "p90_ms": p90, "non_200": bad}))
PY
echo "peak RSS (VmHWM) of captiond with the HTTP server on: $(awk '/VmHWM/ {print $2, $3}' /proc/$pid/status)"

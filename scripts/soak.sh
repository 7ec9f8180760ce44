#!/usr/bin/env bash
# Soak benchmark (not a test): `captiond run` over FRAMES (default 10,000) frames of a
# looping MJPEG stream on stdin (Flickr8k images), publishing to a real mosquitto that is
# restarted every RESTART_EVERY (default 1,000) captions, with a persistent QoS 1
# subscriber (mosquitto_sub). Prints frames/s, the daemon's RSS at 1k / 5k / 10k captions
# (it must stay flat), its peak RSS, and events produced (captiond's stdout) vs delivered
# (distinct ids the subscriber got; they must be equal) and duplicates.
#
#   scripts/soak.sh            FRAMES=10000 RESTART_EVERY=1000 CAPTIOND=<binary>
set -euo pipefail
cd "$(dirname "$0")/.."
data=${FLICKR8K:-../shared/flickr8k}/Flicker8k_Dataset
[[ -d $data ]] || { echo "soak: no Flickr8k images at $data" >&2; exit 1; }
scripts/ensure-system-deps.sh
if [[ -z ${CAPTIOND:-} ]]; then
  cargo build --release --locked -p caption-edge --bin captiond >&2
  CAPTIOND=${CARGO_TARGET_DIR:-target}/release/captiond
fi
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at start; $(nproc) CPUs" >&2
python3 - "$CAPTIOND" "$mosquitto" "$data" "${FRAMES:-10000}" "${RESTART_EVERY:-1000}" <<'PY'
import json, os, signal, socket, subprocess, sys, tempfile, threading, time

captiond, mosquitto, data, frames, restart_every = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
work = tempfile.mkdtemp(prefix="soak-")
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
conf = os.path.join(work, "mosquitto.conf")
with open(conf, "w") as f:
    f.write(f"user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {work}/\nmax_queued_messages 1000000\n")

def start_broker():
    p = subprocess.Popen([mosquitto, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return p
        except OSError:
            time.sleep(0.02)
    raise SystemExit("soak: mosquitto did not start")

broker = start_broker()
topic = "captiond/soak/main/caption"
received = os.path.join(work, "received.jsonl")
sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-c",
                        "-i", "soak-subscriber", "-t", topic],
                       stdout=open(received, "w"), stderr=subprocess.DEVNULL)
time.sleep(0.5)
cfg = os.path.join(work, "captiond.toml")
with open(cfg, "w") as f:
    f.write('device_id = "soak"\nlog_level = "warn"\n[source]\nkind = "stdin"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nreconnect_min_ms = 200\n'
            'reconnect_max_ms = 1000\nshutdown_timeout_s = 120\nqueue_capacity = 100000\n'
            'stats_interval_s = 0\n')
daemon = subprocess.Popen([captiond, "run", "--config", cfg], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=open(os.path.join(work, "stderr.log"), "w"))
images = sorted(os.path.join(data, f) for f in os.listdir(data) if f.endswith(".jpg"))[:500]
jpegs = [open(p, "rb").read() for p in images]

produced = []
lock = threading.Condition()
rss = {}
restarts = 0

def rss_kb(field):
    for line in open(f"/proc/{daemon.pid}/status"):
        if line.startswith(field):
            return int(line.split()[1])

def restart():
    global broker, restarts
    broker.send_signal(signal.SIGTERM); broker.wait()
    broker = start_broker()
    restarts += 1

def read_events():
    for line in daemon.stdout:
        e = json.loads(line)
        with lock:
            produced.append(e["id"])
            n = len(produced)
            lock.notify_all()
        if n in (1000, 5000, 10000) or n == frames:
            rss[n] = rss_kb("VmRSS:")
        if n % restart_every == 0 and n < frames:
            threading.Thread(target=restart).start()

reader = threading.Thread(target=read_events); reader.start()
started = time.time()
written = 0
# Paced like a camera that never outruns the model: at most 2 frames ahead of the captions,
# so the stdin reader drops none and every frame written becomes an event.
while True:
    with lock:
        while written - len(produced) >= 2:
            lock.wait(timeout=5)
        if len(produced) >= frames or written >= frames:
            break
    daemon.stdin.write(jpegs[written % len(jpegs)]); daemon.stdin.flush()
    written += 1
with lock:
    while len(produced) < frames:
        if not lock.wait(timeout=60):
            break
elapsed = time.time() - started
peak = rss_kb("VmHWM:")
daemon.stdin.close()
daemon.wait(timeout=180)
reader.join()
deadline = time.time() + 120
while time.time() < deadline:
    got = [json.loads(l)["id"] for l in open(received) if l.strip()]
    if len(set(got)) >= len(produced):
        break
    time.sleep(1)
sub.terminate(); broker.terminate()
ids = set(got)
print(f"frames written {written}, captions produced {len(produced)} in {elapsed:.0f} s: {len(produced) / elapsed:.1f} frames/s")
print("RSS at " + ", ".join(f"{k} captions: {v / 1024:.1f} MB" for k, v in sorted(rss.items())) + f"; peak {peak / 1024:.1f} MB")
print(f"broker restarts {restarts}; events produced {len(produced)}, delivered {len(ids & set(produced))} distinct "
      f"({len(set(produced) - ids)} missing), {len(got) - len(ids)} duplicates")
print(json.dumps({"frames": written, "produced": len(produced), "seconds": elapsed,
                  "frames_per_s": len(produced) / elapsed, "rss_kb": rss, "peak_rss_kb": peak,
                  "restarts": restarts, "delivered": len(ids & set(produced)),
                  "missing": len(set(produced) - ids), "duplicates": len(got) - len(ids)}))
PY

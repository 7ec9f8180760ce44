#!/usr/bin/env bash
# The main job, set-up included: captiond on its embedded defaults. It captions the images
# in examples/images with the committed default bundle (models/flickr8k-lite1-attention-f16), keeps
# watching the folder for new images, and publishes over MQTT on an embedded broker at
# 127.0.0.1:1883. Subscribe from another terminal:
#   mosquitto_sub -h 127.0.0.1 -p 1883 -t 'captiond/#' -v
# Stop with Ctrl-C (the queue is flushed and `offline` published).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-system-deps.sh
cargo build --release -p caption-edge --bin captiond
exec target/release/captiond run --config examples/demo.toml "$@"

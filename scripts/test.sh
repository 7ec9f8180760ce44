#!/usr/bin/env bash
# The whole test suite, set-up included: system packages, pinned libtorch, format and lint
# checks, every test of the workspace, then the Raspberry Pi checks. `.ci/run` runs
# exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-system-deps.sh
scripts/setup-libtorch.sh >/dev/null
scripts/setup-weights.sh >/dev/null
# One intra-op thread keeps libtorch steady (and fast) on small CI machines.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# The Raspberry Pi build: aarch64 cross-build, qemu A72/A76 run against the x86 build, .deb.
scripts/check-aarch64.sh

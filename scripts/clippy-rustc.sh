#!/usr/bin/env bash
# RUSTC_WORKSPACE_WRAPPER for scripts/test.sh: compiles the workspace's own crates through
# clippy-driver with warnings denied, so one build both lints (what `cargo clippy
# --all-targets -- -D warnings` checks) and produces the test binaries. `cargo clippy`
# would type-check every dependency a second time in check mode, a build of its own;
# through this wrapper the dependencies are compiled once, by plain rustc, for both.
# Cargo calls it as `clippy-rustc.sh <rustc> <args>`; clippy-driver skips the rustc path.
exec clippy-driver "$@" -D warnings

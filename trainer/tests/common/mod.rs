//! Helpers shared by the integration tests that run the real `caption-train` binary.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The EfficientNet-Lite0 weights linked by scripts/setup-weights.sh.
pub fn lite0_weights() -> PathBuf {
    workspace().join(".weights/efficientnet-lite0-57934424.pth")
}

/// Run `caption-train` with one libtorch thread (steady on small machines).
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_caption-train"))
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("caption-train starts")
}

/// The JSON object on the last stdout line of a successful run.
pub fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap()
}

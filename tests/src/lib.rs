//! End-to-end tests across the Caption crates and real processes live in `tests/tests/`.
//! This library only holds helpers those tests share.

use std::path::PathBuf;

/// The workspace root (where `Cargo.toml` with `[workspace]` lives).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

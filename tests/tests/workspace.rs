//! Workspace-level contracts that no single crate can check for itself.

use std::process::Command;

use caption_tests::workspace_root;

/// The edge build must never pull in libtorch (DESIGN.md: caption-edge must not depend on tch).
#[test]
fn edge_does_not_depend_on_libtorch() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "tree",
            "--offline",
            "-p",
            "caption-edge",
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .output()
        .expect("cargo tree runs");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tree.contains("caption-proto"), "unexpected tree:\n{tree}");
    for crate_name in ["tch ", "torch-sys "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(crate_name)),
            "caption-edge depends on {crate_name}:\n{tree}"
        );
    }
}

/// The same for caption-proto, which both halves share.
#[test]
fn proto_depends_on_neither_tch_nor_tract() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "tree",
            "--offline",
            "-p",
            "caption-proto",
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success());
    let tree = String::from_utf8_lossy(&out.stdout);
    for crate_name in ["tch ", "torch-sys ", "tract"] {
        assert!(
            !tree.lines().any(|l| l.starts_with(crate_name)),
            "caption-proto depends on {crate_name}:\n{tree}"
        );
    }
}

//! Workspace-level contracts that no single crate can check for itself.

use std::process::Command;

use caption_tests::workspace_root;

/// Crate names (with versions) in the normal and build dependency tree of a package.
fn dependency_tree(package: &str, extra: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "tree",
            "--offline",
            "-p",
            package,
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .args(extra)
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_free_of(package: &str, forbidden: &[&str]) {
    assert_free_of_with(package, &[], forbidden)
}

fn assert_free_of_with(package: &str, cargo_args: &[&str], forbidden: &[&str]) {
    let tree = dependency_tree(package, cargo_args);
    assert!(tree.contains(package), "unexpected tree:\n{tree}");
    for name in forbidden {
        assert!(
            !tree.lines().any(|l| l.starts_with(name)),
            "{package} depends on {name}:\n{tree}"
        );
    }
}

/// The edge build must never pull in libtorch (DESIGN.md: caption-edge must not depend on tch).
#[test]
fn edge_does_not_depend_on_libtorch() {
    assert_free_of("caption-edge", &["tch ", "torch-sys "]);
}

/// caption-proto, which both halves share, depends on neither inference backend.
#[test]
fn proto_depends_on_neither_tch_nor_tract() {
    assert_free_of("caption-proto", &["tch ", "torch-sys ", "tract"]);
}

/// The trainer verifies bundles through caption-runtime, never through the edge daemon:
/// no camera, MQTT client or broker in its build.
#[test]
fn trainer_does_not_depend_on_the_edge() {
    assert_free_of(
        "caption-trainer",
        &["caption-edge ", "nokhwa ", "rumqttc ", "rumqttd "],
    );
}

/// The runtime is tract and the bundle contract only.
#[test]
fn runtime_depends_on_neither_libtorch_nor_the_daemon() {
    assert_free_of(
        "caption-runtime",
        &[
            "tch ",
            "torch-sys ",
            "nokhwa ",
            "rumqttc ",
            "rumqttd ",
            "caption-edge ",
        ],
    );
}

/// The weights reader is pure Rust: the trainer reads ImageNet weights with it, and the
/// fuzz targets build it instrumented without libtorch.
#[test]
fn weights_reader_is_pure_rust() {
    assert_free_of("caption-weights", &["tch ", "torch-sys ", "tract"]);
}

/// Without its `daemon` feature the edge crate is its pure core: no inference, MQTT or
/// HTTP server (what keeps the fuzz targets' instrumented build in minutes).
#[test]
fn edge_core_has_no_runtime_network_or_camera() {
    assert_free_of_with(
        "caption-edge",
        &["--no-default-features"],
        &[
            "tract",
            "caption-runtime ",
            "rumqttc ",
            "rumqttd ",
            "axum ",
            "tokio ",
            "nokhwa ",
        ],
    );
}

//! The `captiond` binary starts and reports its version.

use std::process::Command;

#[test]
fn version_is_printed() {
    let out = Command::new(env!("CARGO_BIN_EXE_captiond"))
        .arg("--version")
        .output()
        .expect("captiond starts");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("captiond "), "{text}");
}

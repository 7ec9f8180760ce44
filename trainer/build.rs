//! Embed libtorch's library folder as an rpath so `caption-train` (and every test binary
//! of this crate) runs without LD_LIBRARY_PATH. torch-sys publishes the folder as
//! `DEP_TCH_LIBTORCH_LIB` to crates that depend on it directly.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        // The canonical path, so the binary does not depend on the repo's `.libtorch` link.
        let dir = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.into());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
}

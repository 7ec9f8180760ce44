//! Runs a bundle's encoder N times on one image, nothing else: the ARM cost proxy
//! (scripts/arm-insn-count.sh) counts guest instructions under qemu for N = 1 and N = 3,
//! and the difference / 2 is the encoder's cost per image, free of loading and decoding.
//!
//! `encode_repeat <bundle dir> <image> <N> [auto|int8|f32]` (default auto); it prints the
//! precision the engine ran and why, so the script can report what `auto` picks per CPU.

use std::path::PathBuf;

use anyhow::{Context, Result};
use caption_runtime::{Engine, EngineOptions, Precision};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (bundle, image, n, precision) = match args.as_slice() {
        [b, i, n] => (b, i, n, Precision::Auto),
        [b, i, n, p] => (b, i, n, p.parse::<Precision>()?),
        _ => anyhow::bail!("usage: encode_repeat <bundle dir> <image> <N> [auto|int8|f32]"),
    };
    let n: usize = n
        .parse()
        .with_context(|| format!("N must be a count, got {n:?}"))?;
    let options = EngineOptions {
        precision,
        threads: 1,
    };
    let engine = Engine::load_with(&PathBuf::from(bundle), &options)?;
    let choice = engine.precision();
    println!("precision {} ({})", choice.precision, choice.reason);
    let pixels = engine.preprocessing().from_file(&PathBuf::from(image))?;
    let mut checksum = 0.0f64;
    for _ in 0..n {
        let features = engine.encode(&pixels)?;
        checksum += features.iter().map(|&v| v as f64).sum::<f64>();
    }
    println!("{} encoder runs, feature sum {checksum:.6}", n);
    Ok(())
}

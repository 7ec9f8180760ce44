//! Runs a bundle's encoder, or its decoder, N times on one image, nothing else: the ARM
//! cost proxy (scripts/arm-insn-count.sh) counts guest instructions under qemu for N = 1
//! and N = 2, and the difference is the cost of one run, free of loading and decoding
//! the JPEG.
//!
//! `encode_repeat <bundle dir> <image> <N> [auto|int8|f32] [encoder|decoder:<beam>]`
//! (defaults auto, encoder). `decoder:<beam>` encodes the image once, then captions its
//! features N times with that beam (1: greedy), so the difference is one caption's decoder
//! steps (for an attention bundle including its `init.onnx`). It prints the precision the
//! engine ran and why, so the script can report what `auto` picks per CPU.

use std::path::PathBuf;

use anyhow::{Context, Result};
use caption_runtime::{Engine, EngineOptions, Precision};

enum Stage {
    Encoder,
    Decoder { beam: usize },
}

fn parse_stage(s: &str) -> Result<Stage> {
    if s == "encoder" {
        return Ok(Stage::Encoder);
    }
    let beam = s
        .strip_prefix("decoder:")
        .and_then(|b| b.parse::<usize>().ok())
        .filter(|&b| b >= 1)
        .with_context(|| format!("stage must be `encoder` or `decoder:<beam ≥ 1>`, got {s:?}"))?;
    Ok(Stage::Decoder { beam })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: encode_repeat <bundle dir> <image> <N> [auto|int8|f32] [encoder|decoder:<beam>]";
    let (bundle, image, n, precision, stage) = match args.as_slice() {
        [b, i, n] => (b, i, n, Precision::Auto, Stage::Encoder),
        [b, i, n, p] => (b, i, n, p.parse::<Precision>()?, Stage::Encoder),
        [b, i, n, p, s] => (b, i, n, p.parse::<Precision>()?, parse_stage(s)?),
        _ => anyhow::bail!(usage),
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
    match stage {
        Stage::Encoder => {
            let mut checksum = 0.0f64;
            for _ in 0..n {
                let features = engine.encode(&pixels)?;
                checksum += features.iter().map(|&v| v as f64).sum::<f64>();
            }
            println!("{n} encoder runs, feature sum {checksum:.6}");
        }
        Stage::Decoder { beam } => {
            let features = engine.encode(&pixels)?;
            let mut last = String::new();
            for _ in 0..n {
                let captions = engine.decode(&features, beam)?;
                last = captions
                    .into_iter()
                    .next()
                    .map(|c| c.text)
                    .unwrap_or_default();
            }
            println!("{n} captions (beam {beam}), last: {last}");
        }
    }
    Ok(())
}

//! `captiond bench`: per-stage latency of one or more bundles (each in one or more
//! precisions and thread counts) on a folder of images, run in one process and interleaved
//! round by round, so the variants are compared fairly.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::engine::{Engine, EngineError, EngineOptions};
use crate::precision::PrecisionChoice;

/// min / median / p90 of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Summary {
    pub min: f64,
    pub median: f64,
    pub p90: f64,
    pub mean: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Summary {
        if values.is_empty() {
            return Summary {
                min: 0.0,
                median: 0.0,
                p90: 0.0,
                mean: 0.0,
            };
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Summary {
            min: v[0],
            median: at(0.5),
            p90: at(0.9),
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BundleBench {
    pub bundle: PathBuf,
    pub model_id: String,
    /// The precision the encoder ran in, and why.
    pub precision: PrecisionChoice,
    pub threads: usize,
    pub load_ms: f64,
    /// Size of the bundle's files in bytes.
    pub bytes: u64,
    pub captions: usize,
    pub preprocess_ms: Summary,
    pub encoder_ms: Summary,
    pub decoder_ms: Summary,
    pub total_ms: Summary,
    pub captions_per_second: f64,
}

/// Image files of a folder (jpg, jpeg, png), sorted by name.
pub fn image_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")
                })
        })
        .collect();
    files.sort();
    Ok(files)
}

fn bundle_bytes(engine: &Engine) -> u64 {
    engine
        .manifest()
        .files
        .keys()
        .filter_map(|f| std::fs::metadata(engine.bundle.dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// Caption every image `rounds` times with each variant (a bundle with its engine
/// options; after one warm-up caption), interleaving the variants per round.
pub fn bench(
    variants: &[(PathBuf, EngineOptions)],
    images: &[PathBuf],
    beam: usize,
    rounds: usize,
) -> Result<Vec<BundleBench>, EngineError> {
    let mut engines = Vec::new();
    let mut load_ms = Vec::new();
    for (bundle, options) in variants {
        let t = Instant::now();
        engines.push(Engine::load_with(bundle, options)?);
        load_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut samples: Vec<[Vec<f64>; 4]> = vec![Default::default(); engines.len()];
    let mut wall = vec![0.0; engines.len()];
    for engine in &engines {
        if let Some(first) = images.first() {
            engine.caption_file(first, beam)?;
        }
    }
    for _ in 0..rounds.max(1) {
        for (e, engine) in engines.iter().enumerate() {
            for path in images {
                let t = Instant::now();
                let (_, times) = engine.caption_file(path, beam)?;
                let total = t.elapsed().as_secs_f64();
                wall[e] += total;
                let s = &mut samples[e];
                s[0].push(times.preprocess.as_secs_f64() * 1e3);
                s[1].push(times.encoder.as_secs_f64() * 1e3);
                s[2].push(times.decoder.as_secs_f64() * 1e3);
                s[3].push(total * 1e3);
            }
        }
    }
    Ok(engines
        .iter()
        .enumerate()
        .map(|(e, engine)| BundleBench {
            bundle: engine.bundle.dir.clone(),
            model_id: engine.manifest().model_id.clone(),
            precision: engine.precision().clone(),
            threads: engine.threads(),
            load_ms: load_ms[e],
            bytes: bundle_bytes(engine),
            captions: samples[e][3].len(),
            preprocess_ms: Summary::of(&samples[e][0]),
            encoder_ms: Summary::of(&samples[e][1]),
            decoder_ms: Summary::of(&samples[e][2]),
            total_ms: Summary::of(&samples[e][3]),
            captions_per_second: samples[e][3].len() as f64 / wall[e].max(1e-9),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_picks_order_statistics() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.median, 6.0);
        assert_eq!(s.p90, 10.0);
        assert!((s.mean - 6.0).abs() < 1e-12);
    }
}

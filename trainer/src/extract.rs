//! `caption-train extract`: image features for every Flickr8k image, cached in one
//! safetensors file.
//!
//! Output: an f32 tensor `features` `[N, D]` (the pooled feature vectors), or with
//! `--spatial` a float16 tensor `[N, R, C]`: the last convolutional feature map as R
//! regions of C channels (Lite0 at 224×224: 7×7 = 49 regions × 1,280); metadata (all
//! strings): `format` (`caption-features/1`), `layout` (`pooled` or `spatial`), `grid`
//! (`[H, W]` of the map, spatial only), `ids` (JSON array of image ids in row order), `encoder`,
//! `preprocessing` (JSON), `weights_file`, `weights_sha256` (`random-init` when random),
//! `random_init`, `seed`, `skipped` (JSON array of `{id, path, problem}`), `fingerprint`
//! (hash of everything above that decides the rows; a re-run with the same fingerprint
//! reuses the file).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use caption_proto::dataset::Flickr8k;
use caption_proto::preprocess::PreprocessError;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

use crate::encoders::{EncoderKind, TchEncoder};
use crate::weights::WeightsError;

pub const FEATURES_FORMAT: &str = "caption-features/1";
/// Seed of `--random-init` weights.
pub const RANDOM_INIT_SEED: i64 = 20_240_601;

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(transparent)]
    Dataset(#[from] caption_proto::DatasetError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{0} (stopped by --strict)")]
    Strict(PreprocessError),
    #[error("--random-init is allowed only for vgg16 (tests and benchmarks), not {0}")]
    RandomInitNotAllowed(EncoderKind),
    #[error("give exactly one of --weights <file> or --random-init")]
    WeightsChoice,
    #[error("no image could be read from {0}")]
    NoImages(PathBuf),
    #[error("cannot hash {path}: {source}")]
    Hash {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {problem}")]
    Write { path: PathBuf, problem: String },
}

#[derive(Debug, Clone)]
pub struct ExtractOptions {
    pub data: PathBuf,
    pub encoder: EncoderKind,
    pub weights: Option<PathBuf>,
    pub random_init: bool,
    pub out: PathBuf,
    pub batch_size: usize,
    pub device: Device,
    pub strict: bool,
    /// Only the first N images of the token file (benchmarks, tests).
    pub limit: Option<usize>,
    /// JPEG decoding threads running alongside the network.
    pub workers: usize,
    pub progress: bool,
    /// Keep the last convolutional feature map (float16 regions) instead of the vector.
    pub spatial: bool,
}

/// What one row of a features file holds.
pub const LAYOUT_POOLED: &str = "pooled";
pub const LAYOUT_SPATIAL: &str = "spatial";

/// An image left out, with why.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Skipped {
    pub id: String,
    pub path: String,
    pub problem: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExtractSummary {
    pub out: PathBuf,
    pub encoder: String,
    /// `pooled` or `spatial`.
    pub layout: &'static str,
    pub rows: usize,
    /// Channels per row (pooled) or per region (spatial).
    pub feature_dim: usize,
    /// Regions per image (spatial only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regions: Option<usize>,
    /// Size of the written file.
    pub bytes: u64,
    pub skipped: Vec<Skipped>,
    /// True when an existing file with the same fingerprint was reused.
    pub reused: bool,
    pub seconds: f64,
    pub images_per_second: f64,
    pub device: String,
}

fn sha256_file(path: &Path) -> Result<String, ExtractError> {
    caption_proto::manifest::sha256_file(path).map_err(|source| ExtractError::Hash {
        path: path.to_owned(),
        source,
    })
}

/// The JSON header of a safetensors file, if it is one.
fn read_header(path: &Path) -> Option<serde_json::Value> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len) as usize;
    if n > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; n];
    file.read_exact(&mut header).ok()?;
    serde_json::from_slice(&header).ok()
}

/// Metadata of an existing features file, if it is one.
pub fn read_metadata(path: &Path) -> Option<HashMap<String, String>> {
    serde_json::from_value(read_header(path)?.get("__metadata__")?.clone()).ok()
}

/// The shape of the `features` tensor of a features file, from its header.
pub fn read_header_shape(path: &Path) -> Option<Vec<usize>> {
    serde_json::from_value(read_header(path)?.get("features")?.get("shape")?.clone()).ok()
}

/// Run the extraction (or reuse a finished file with the same fingerprint).
pub fn extract(opts: &ExtractOptions) -> Result<ExtractSummary, ExtractError> {
    let started = Instant::now();
    if opts.weights.is_some() == opts.random_init {
        return Err(ExtractError::WeightsChoice);
    }
    if opts.random_init && opts.encoder != EncoderKind::Vgg16 {
        return Err(ExtractError::RandomInitNotAllowed(opts.encoder));
    }
    let spec = opts.encoder.spec();
    let data = Flickr8k::load(&opts.data)?;
    let mut images: Vec<_> = data.images.iter().collect();
    if let Some(limit) = opts.limit {
        images.truncate(limit);
    }
    let weights_sha256 = match &opts.weights {
        Some(path) => sha256_file(path)?,
        None => "random-init".to_owned(),
    };
    let preprocessing = serde_json::to_string(&spec.preprocessing).expect("serialisable");
    let candidates: Vec<&str> = images.iter().map(|i| i.file_name.as_str()).collect();
    let layout = if opts.spatial {
        LAYOUT_SPATIAL
    } else {
        LAYOUT_POOLED
    };
    let feature_dim = if opts.spatial {
        spec.spatial_channels()
    } else {
        spec.feature_dim
    };
    let fingerprint = {
        let mut h = Sha256::new();
        for part in [
            FEATURES_FORMAT,
            layout,
            opts.encoder.name(),
            &weights_sha256,
            &preprocessing,
            &RANDOM_INIT_SEED.to_string(),
            &candidates.join("\n"),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        format!("{:x}", h.finalize())
    };
    // Reuse a finished file with the same inputs, unless its metadata is unreadable or
    // --strict meets a file that skipped images (then redo, and stop at the bad image).
    let reusable = read_metadata(&opts.out)
        .filter(|meta| meta.get("fingerprint") == Some(&fingerprint))
        .and_then(|meta| {
            let ids: Vec<String> = serde_json::from_str(meta.get("ids")?).ok()?;
            let skipped: Vec<Skipped> = serde_json::from_str(meta.get("skipped")?).ok()?;
            Some((ids, skipped))
        })
        .filter(|(_, skipped)| !opts.strict || skipped.is_empty());
    if let Some((ids, skipped)) = reusable {
        let regions = read_header_shape(&opts.out).and_then(|s| (s.len() == 3).then(|| s[1]));
        return Ok(ExtractSummary {
            out: opts.out.clone(),
            encoder: opts.encoder.name().into(),
            layout,
            rows: ids.len(),
            feature_dim,
            regions,
            bytes: file_size(&opts.out),
            skipped,
            reused: true,
            seconds: started.elapsed().as_secs_f64(),
            images_per_second: 0.0,
            device: format!("{:?}", opts.device),
        });
    }

    let encoder = match &opts.weights {
        Some(path) => TchEncoder::from_file(spec.clone(), path, opts.device)?,
        None => TchEncoder::random(spec.clone(), RANDOM_INIT_SEED, opts.device),
    };
    let pre = spec.preprocessing.clone();
    let side = pre.size as i64;
    let paths: Vec<PathBuf> = images.iter().map(|i| data.image_path(i)).collect();
    let bar = if opts.progress {
        indicatif::ProgressBar::new(paths.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} extract {pos}/{len} [{elapsed_precise}<{eta_precise}] {per_sec} {msg}",
        )
        .expect("valid template"),
    );

    let mut ids = Vec::with_capacity(paths.len());
    let mut skipped = Vec::new();
    // Little-endian f32 (pooled) or f16 (spatial) values, row after row.
    let mut rows: Vec<u8> = Vec::new();
    let mut regions: Option<usize> = None;
    let mut grid: Option<[i64; 2]> = None;
    let next = AtomicUsize::new(0);
    let result: Result<(), ExtractError> = std::thread::scope(|scope| {
        let (tx, rx) =
            mpsc::sync_channel::<(usize, Result<Vec<f32>, PreprocessError>)>(opts.batch_size * 2);
        for _ in 0..opts.workers.max(1) {
            let tx = tx.clone();
            let (next, paths, pre) = (&next, &paths, &pre);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= paths.len() {
                    break;
                }
                // A closed channel means the consumer stopped (--strict): end quietly.
                if tx.send((i, pre.from_file(&paths[i]))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut pending = BTreeMap::new();
        let mut expected = 0;
        let mut batch: Vec<f32> = Vec::with_capacity(opts.batch_size * (3 * side * side) as usize);
        let mut batch_ids: Vec<String> = Vec::new();
        let mut flush = |batch: &mut Vec<f32>, batch_ids: &mut Vec<String>, rows: &mut Vec<u8>| {
            if batch_ids.is_empty() {
                return;
            }
            let n = batch_ids.len() as i64;
            let input = Tensor::from_slice(batch).reshape([n, 3, side, side]);
            if opts.spatial {
                let map = encoder.spatial_map(&input).to_device(Device::Cpu);
                let size = map.size();
                grid = Some([size[2], size[3]]);
                regions = Some((size[2] * size[3]) as usize);
                // [N, C, H, W] -> [N, H*W, C]: one row of channels per region.
                let map = map.flatten(2, -1).transpose(1, 2).contiguous();
                let flat: Vec<f32> = Vec::<f32>::try_from(&map.flatten(0, -1)).expect("f32 map");
                rows.extend(
                    flat.iter()
                        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes()),
                );
            } else {
                let out = encoder.features(&input).to_device(Device::Cpu).contiguous();
                let flat: Vec<f32> =
                    Vec::<f32>::try_from(&out.flatten(0, -1)).expect("f32 features");
                rows.extend(flat.iter().flat_map(|v| v.to_le_bytes()));
            }
            ids.append(batch_ids);
            batch.clear();
        };
        for (i, decoded) in rx {
            pending.insert(i, decoded);
            while let Some(decoded) = pending.remove(&expected) {
                let image = images[expected];
                match decoded {
                    Ok(pixels) => {
                        batch.extend(pixels);
                        batch_ids.push(image.id.clone());
                    }
                    Err(e) => {
                        if opts.strict {
                            return Err(ExtractError::Strict(e));
                        }
                        bar.suspend(|| eprintln!("warning: skipping {e}"));
                        skipped.push(Skipped {
                            id: image.id.clone(),
                            path: paths[expected].display().to_string(),
                            problem: e.to_string(),
                        });
                    }
                }
                expected += 1;
                bar.inc(1);
                if batch_ids.len() == opts.batch_size {
                    flush(&mut batch, &mut batch_ids, &mut rows);
                }
            }
        }
        flush(&mut batch, &mut batch_ids, &mut rows);
        Ok(())
    });
    result?;
    bar.finish_and_clear();
    if ids.is_empty() {
        return Err(ExtractError::NoImages(opts.data.clone()));
    }

    let mut metadata = HashMap::new();
    metadata.insert("format".to_owned(), FEATURES_FORMAT.to_owned());
    metadata.insert("layout".to_owned(), layout.to_owned());
    if let Some(g) = grid {
        metadata.insert("grid".to_owned(), format!("[{}, {}]", g[0], g[1]));
    }
    metadata.insert("ids".to_owned(), serde_json::to_string(&ids).expect("json"));
    metadata.insert("encoder".to_owned(), opts.encoder.name().to_owned());
    metadata.insert("preprocessing".to_owned(), preprocessing);
    metadata.insert(
        "weights_file".to_owned(),
        opts.weights
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );
    metadata.insert("weights_sha256".to_owned(), weights_sha256);
    metadata.insert("random_init".to_owned(), opts.random_init.to_string());
    metadata.insert("seed".to_owned(), RANDOM_INIT_SEED.to_string());
    metadata.insert(
        "skipped".to_owned(),
        serde_json::to_string(&skipped).expect("json"),
    );
    metadata.insert("fingerprint".to_owned(), fingerprint);
    let (dtype, shape) = match regions {
        Some(r) => (safetensors::Dtype::F16, vec![ids.len(), r, feature_dim]),
        None => (safetensors::Dtype::F32, vec![ids.len(), feature_dim]),
    };
    write_features(&opts.out, &rows, dtype, shape, metadata)?;

    let seconds = started.elapsed().as_secs_f64();
    Ok(ExtractSummary {
        out: opts.out.clone(),
        encoder: opts.encoder.name().into(),
        layout,
        rows: ids.len(),
        feature_dim,
        regions,
        bytes: file_size(&opts.out),
        images_per_second: (ids.len() + skipped.len()) as f64 / seconds,
        skipped,
        reused: false,
        seconds,
        device: format!("{:?}", opts.device),
    })
}

/// Write through `<out>.partial` and a rename, so an interrupted run never leaves a file
/// that looks complete.
fn write_features(
    out: &Path,
    bytes: &[u8],
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    metadata: HashMap<String, String>,
) -> Result<(), ExtractError> {
    let write_err = |problem: String| ExtractError::Write {
        path: out.to_owned(),
        problem,
    };
    let view = safetensors::tensor::TensorView::new(dtype, shape, bytes)
        .map_err(|e| write_err(e.to_string()))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| write_err(e.to_string()))?;
    }
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    safetensors::serialize_to_file([("features", view)], &Some(metadata), &partial)
        .map_err(|e| write_err(e.to_string()))?;
    std::fs::rename(&partial, out).map_err(|e| write_err(e.to_string()))
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

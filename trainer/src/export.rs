//! `caption-train export`: a checkpoint and its encoder → a verified model bundle.
//!
//! The bundle is written beside its destination (`<out>.partial`), loaded back through
//! `caption_runtime::Engine` (the code `captiond` runs), compared with the tch model on
//! held-aside images, and only then renamed into place. An int8 export first builds and
//! verifies the f32 bundle, calibrates activation ranges by running the f32 encoder graph
//! in tract over training images, and compares the int8 bundle with both.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use caption_proto::dataset::{self, Flickr8k, Split};
use caption_proto::manifest::{
    self, DecoderKind, DecoderSection, EncoderSection, Manifest, Provenance, Quantization, Scheme,
    Storage, VocabularySection, BUNDLE_FORMAT_VERSION, MANIFEST_FILE,
};
use caption_proto::search::{SearchConfig, StepDecoder};
use caption_proto::text::strip_special;
use caption_proto::vocab::Vocabulary;
use caption_runtime::engine::{Engine, EngineError, EngineOptions};
use caption_runtime::Precision;
use tch::{Device, Kind, Tensor};
use tract_onnx::prelude::{Framework, InferenceModelExt, IntoRunnable};

use crate::encoders::{EncoderKind, TchEncoder};
use crate::evaluate::{decode_trained, AttentionDecoder, TchDecoder};
use crate::onnx::{self, FcScheme, OnnxError, WeightStorage};
use crate::train::{self, CheckpointInfo, TrainError, TrainModel};

/// File names inside a bundle (the bundle contract).
pub use caption_proto::manifest::{DECODER_FILE, ENCODER_FILE, INIT_FILE, VOCAB_FILE};

/// The f32 parity an export must reach, or it fails.
pub const MIN_F32_COSINE: f64 = 0.9999;
pub const MAX_F32_LOGPROB_DIFF: f64 = 1e-4;
/// The same bound for a float bundle whose decoder weights are stored as float16
/// (`--decoder-storage f16`): rounding each weight to 11 significant bits moves the
/// log-probabilities by up to 2.5e-3 (the Lite0 attention model on the 1,000 test images,
/// with every greedy caption unchanged), so the gate is 1e-2, not the f32 1e-4; the
/// greedy-caption agreement is reported beside it.
pub const MAX_F16_DECODER_LOGPROB_DIFF: f64 = 1e-2;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Manifest(#[from] caption_proto::manifest::ManifestError),
    #[error(transparent)]
    Dataset(#[from] caption_proto::DatasetError),
    #[error(transparent)]
    Vocab(#[from] caption_proto::vocab::VocabError),
    #[error(transparent)]
    Image(#[from] caption_proto::preprocess::PreprocessError),
    #[error(transparent)]
    Evaluate(#[from] caption_runtime::evaluate::EvaluateError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: field `{field}` is {found}, but {expected}")]
    Mismatch {
        path: PathBuf,
        field: &'static str,
        found: String,
        expected: String,
    },
    #[error("calibration in tract failed")]
    Calibration(#[source] caption_runtime::engine::Cause),
    #[error("split {split} has only {found} usable images; {wanted} are needed for {purpose}")]
    TooFewImages {
        split: Split,
        found: usize,
        wanted: usize,
        purpose: &'static str,
    },
    #[error(
        "the f32 bundle does not reproduce the tch model: {problem} \
         (the bundle is left in {} for inspection)", dir.display()
    )]
    Parity { problem: String, dir: PathBuf },
    #[error("{0} exists; pass --force to replace it")]
    Exists(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `--quantize`: the encoder's storage in the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Quantize {
    /// f32 graph.
    None,
    /// Static int8 encoder convolutions (calibrated on train images).
    Int8,
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The checkpoint's `.safetensors` (or its `.json`).
    pub checkpoint: PathBuf,
    pub encoder: EncoderKind,
    /// Encoder weights; `None` uses random weights from `seed` (tests, benchmarks).
    pub weights: Option<PathBuf>,
    pub seed: i64,
    pub out: PathBuf,
    pub quantize: Quantize,
    pub fc: FcScheme,
    /// Depthwise convolutions as int8 (`QLinearConv`) or kept f32.
    pub int8_depthwise: bool,
    /// `None`: f32 for f32 bundles, f16 storage for int8 bundles.
    pub decoder_storage: Option<WeightStorage>,
    /// Flickr8k root: calibration (train split) and verification images.
    pub data: PathBuf,
    pub calibration_images: usize,
    pub verify_split: Split,
    pub verify_images: usize,
    /// Keep the intermediate f32 bundle of an int8 export here.
    pub f32_out: Option<PathBuf>,
    pub model_id: Option<String>,
    /// Score the bundle on this split with this beam width and record it in the manifest.
    pub evaluate: Option<(Split, usize)>,
    /// Beam ranking recorded in the manifest (`decoder.length_penalty`).
    pub length_penalty: f32,
    pub force: bool,
    /// The command line, for the manifest's provenance.
    pub command: String,
}

/// The verification of one bundle against the tch model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    pub images: usize,
    pub feature_cosine_min: f64,
    pub feature_cosine_mean: f64,
    /// Max |Δ log p| of the decoder stepping the tch model's greedy paths with the tch
    /// model's features (decoder alone).
    pub logprob_max_abs_diff: f64,
    /// Fraction of images whose greedy caption (image → bundle) equals the tch caption.
    pub caption_agreement: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    pub bundle: PathBuf,
    pub model_id: String,
    pub f32: Verification,
    pub int8: Option<Verification>,
    /// The int8 bundle run with its weights dequantised to f32 (`--precision f32`).
    pub dequantized: Option<Verification>,
    /// int8 vs f32 bundle greedy captions.
    pub int8_f32_caption_agreement: Option<f64>,
    pub sizes: BTreeMap<String, u64>,
    pub evaluation: Option<caption_runtime::evaluate::BundleEvaluation>,
}

/// Images of `split` that have captions and an image file, in split order.
fn split_images(data: &Flickr8k, split: Split) -> Vec<(String, PathBuf)> {
    let files: HashMap<&str, PathBuf> = data
        .images
        .iter()
        .map(|i| (i.id.as_str(), data.image_path(i)))
        .collect();
    let descriptions = data.clean_descriptions(caption_proto::TextRules::Standard);
    dataset::select(&descriptions, data.split_ids(split))
        .into_iter()
        .filter_map(|(id, _)| {
            let path = files.get(id.as_str())?;
            path.is_file().then(|| (id.clone(), path.clone()))
        })
        .collect()
}

/// `n` items spread evenly over `items` (all when `n >= len`).
fn spread<T: Clone>(items: &[T], n: usize) -> Vec<T> {
    if n >= items.len() {
        return items.to_vec();
    }
    (0..n).map(|i| items[i * items.len() / n].clone()).collect()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))
        .expect("f32 tensor")
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    if aa == 0.0 && bb == 0.0 {
        1.0
    } else {
        ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
    }
}

/// What the tch model says about the verification images.
struct Reference {
    pixels: Vec<Vec<f32>>,
    /// Per image: the feature vector, or the regions `[R, C]` flattened.
    features: Vec<f32>,
    /// The features' tensor shape (`[N, D]` or `[N, R, C]`).
    shape: Vec<i64>,
    /// Greedy token paths.
    tokens: Vec<Vec<u32>>,
    captions: Vec<String>,
}

fn reference(
    encoder: &TchEncoder,
    model: &TrainModel,
    vocab: &Vocabulary,
    search: &SearchConfig,
    paths: &[PathBuf],
) -> Result<Reference, ExportError> {
    let pre = &encoder.spec.preprocessing;
    let side = pre.size as i64;
    let mut pixels = Vec::with_capacity(paths.len());
    for p in paths {
        pixels.push(pre.from_file(p)?);
    }
    let mut features = Vec::new();
    let mut shape = Vec::new();
    for chunk in pixels.chunks(8) {
        let flat: Vec<f32> = chunk.concat();
        let batch = Tensor::from_slice(&flat).reshape([chunk.len() as i64, 3, side, side]);
        // The merge model reads vectors, the attention model regions `[N, R, C]`.
        let out = match model {
            TrainModel::Merge(_) => encoder.features(&batch),
            TrainModel::Attention(_) => encoder.spatial(&batch),
        };
        shape = out.size();
        features.extend(to_vec(&out));
    }
    shape[0] = paths.len() as i64;
    let ft = Tensor::from_slice(&features).reshape(shape.as_slice());
    let hyps = decode_trained(model, &ft, search, 100);
    let captions = hyps
        .iter()
        .map(|h| strip_special(vocab.decode(&h.tokens)).join(" "))
        .collect();
    Ok(Reference {
        pixels,
        features,
        shape: ft.size(),
        tokens: hyps.into_iter().map(|h| h.tokens).collect(),
        captions,
    })
}

/// Encode the reference images through a bundle and caption them greedily.
fn bundle_outputs(engine: &Engine, r: &Reference) -> Result<(Vec<f32>, Vec<String>), ExportError> {
    let mut features = Vec::with_capacity(r.features.len());
    for p in &r.pixels {
        features.extend(engine.encode(p)?);
    }
    let captions = engine
        .decode(&features, 1)?
        .into_iter()
        .map(|c| c.text)
        .collect();
    Ok((features, captions))
}

fn verify(
    engine: &Engine,
    model: &TrainModel,
    r: &Reference,
    search: &SearchConfig,
) -> Result<(Verification, Vec<String>), ExportError> {
    let n = r.pixels.len();
    let d = engine.feature_len();
    let (features, captions) = bundle_outputs(engine, r)?;
    let cosines: Vec<f64> = (0..n)
        .map(|i| {
            cosine(
                &r.features[i * d..(i + 1) * d],
                &features[i * d..(i + 1) * d],
            )
        })
        .collect();
    // Decoder alone: both step the tch greedy paths from the tch features.
    let ft = Tensor::from_slice(&r.features).reshape(r.shape.as_slice());
    let max_diff = match model {
        TrainModel::Merge(m) => step_diff(&mut TchDecoder::new(m, &ft), engine, r, search)?,
        TrainModel::Attention(m) => {
            step_diff(&mut AttentionDecoder::new(m, &ft), engine, r, search)?
        }
    };
    let agree = captions
        .iter()
        .zip(&r.captions)
        .filter(|(a, b)| a == b)
        .count();
    Ok((
        Verification {
            images: n,
            feature_cosine_min: cosines.iter().copied().fold(f64::INFINITY, f64::min),
            feature_cosine_mean: cosines.iter().sum::<f64>() / n.max(1) as f64,
            logprob_max_abs_diff: max_diff,
            caption_agreement: agree as f64 / n.max(1) as f64,
        },
        captions,
    ))
}

/// Max |Δ log p| between the tch decoder and the bundle's, both stepping the tch model's
/// greedy paths from the tch features.
fn step_diff<D: StepDecoder<Error = std::convert::Infallible>>(
    tch_dec: &mut D,
    engine: &Engine,
    r: &Reference,
    search: &SearchConfig,
) -> Result<f64, ExportError> {
    let n = r.pixels.len();
    let mut tract_dec = engine.step_decoder(&r.features);
    let rows: Vec<usize> = (0..n).collect();
    let steps = r.tokens.iter().map(Vec::len).max().unwrap_or(0);
    let never = |e: std::convert::Infallible| -> ExportError { match e {} };
    let mut s_tch = tch_dec.start(&rows).map_err(never)?;
    let mut s_tract = tract_dec.start(&rows)?;
    let v = engine.manifest().decoder.vocab_size;
    let mut max_diff = 0.0f64;
    for t in 0..steps {
        let words: Vec<u32> = r
            .tokens
            .iter()
            .map(|tok| match t {
                0 => search.start,
                _ => tok.get(t - 1).copied().unwrap_or(0),
            })
            .collect();
        let (a, next_tch) = tch_dec.step(&s_tch, &rows, &words).map_err(never)?;
        let (b, next_tract) = tract_dec.step(&s_tract, &rows, &words)?;
        for (i, tok) in r.tokens.iter().enumerate() {
            if t < tok.len() {
                for (x, y) in a[i * v..(i + 1) * v].iter().zip(&b[i * v..(i + 1) * v]) {
                    max_diff = max_diff.max((x - y).abs() as f64);
                }
            }
        }
        s_tch = next_tch;
        s_tract = next_tract;
    }
    Ok(max_diff)
}

/// Observed `(min, max)` of each calibration point of the f32 encoder graph, running it in
/// tract over the given images.
pub fn calibrate(
    graph: &onnx::EncoderGraph,
    pre: &caption_proto::preprocess::Preprocessing,
    images: &[PathBuf],
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<(f32, f32)>, ExportError> {
    let err = |e: tract_onnx::prelude::TractError| ExportError::Calibration(e.into());
    let mut model = tract_onnx::onnx()
        .model_for_proto_model(&graph.model)
        .map_err(err)?;
    let points: Vec<&str> = graph
        .calibration_points
        .iter()
        .map(String::as_str)
        .collect();
    model.select_outputs_by_name(&points).map_err(err)?;
    let plan = model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(err)?;
    let mut ranges = vec![(f32::INFINITY, f32::NEG_INFINITY); points.len()];
    let s = pre.size as usize;
    for (i, path) in images.iter().enumerate() {
        let pixels = pre.from_file(path)?;
        let input =
            tract_onnx::prelude::tract_ndarray::Array4::from_shape_vec((1, 3, s, s), pixels)
                .map_err(|e| ExportError::Calibration(e.into()))?;
        let outputs = plan
            .run(std::iter::once(tract_onnx::prelude::Tensor::from(input).into()).collect())
            .map_err(err)?;
        for (range, out) in ranges.iter_mut().zip(outputs.iter()) {
            let view = out.to_plain_array_view::<f32>().map_err(err)?;
            for &v in view.iter() {
                range.0 = range.0.min(v);
                range.1 = range.1.max(v);
            }
        }
        progress(i + 1, images.len());
    }
    Ok(ranges)
}

/// The decoder graph and, for attention, its initial-state graph, as ONNX bytes.
fn decoder_graphs(
    model: &TrainModel,
    regions: Option<usize>,
    storage: WeightStorage,
) -> (Vec<u8>, Option<Vec<u8>>) {
    match (model, regions) {
        (TrainModel::Attention(m), Some(r)) => {
            let p = m.params();
            (
                onnx::encode(&onnx::attention_step(&p, r, storage)),
                Some(onnx::encode(&onnx::attention_init(&p, r, storage))),
            )
        }
        (TrainModel::Merge(m), _) => (
            onnx::encode(&onnx::decoder(&m.decoder_params(), storage)),
            None,
        ),
        (TrainModel::Attention(_), None) => unreachable!("regions are set for attention"),
    }
}

struct BundleFiles<'a> {
    encoder: &'a [u8],
    decoder: &'a [u8],
    /// Attention bundles: the initial-state graph.
    init: Option<&'a [u8]>,
    vocab: &'a str,
}

fn write_bundle(
    dir: &Path,
    files: &BundleFiles<'_>,
    manifest: &mut Manifest,
) -> Result<(), ExportError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for (name, bytes) in [
        (ENCODER_FILE, files.encoder),
        (DECODER_FILE, files.decoder),
        (VOCAB_FILE, files.vocab.as_bytes()),
    ]
    .into_iter()
    .chain(files.init.map(|b| (INIT_FILE, b)))
    {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(io(&path))?;
        let sum = manifest::sha256_file(&path).map_err(io(&path))?;
        manifest.files.insert(name.to_owned(), sum);
    }
    write_manifest(dir, manifest)
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), ExportError> {
    let path = dir.join(MANIFEST_FILE);
    std::fs::write(&path, manifest.to_toml()).map_err(io(&path))
}

fn record(metrics: &mut BTreeMap<String, f64>, prefix: &str, v: &Verification) {
    metrics.insert(format!("{prefix}_verify_images"), v.images as f64);
    metrics.insert(format!("{prefix}_feature_cosine_min"), v.feature_cosine_min);
    metrics.insert(
        format!("{prefix}_feature_cosine_mean"),
        v.feature_cosine_mean,
    );
    metrics.insert(
        format!("{prefix}_logprob_max_abs_diff"),
        v.logprob_max_abs_diff,
    );
    metrics.insert(format!("{prefix}_caption_agreement"), v.caption_agreement);
}

fn file_sizes(dir: &Path) -> Result<BTreeMap<String, u64>, ExportError> {
    let mut sizes = BTreeMap::new();
    for name in [
        ENCODER_FILE,
        DECODER_FILE,
        VOCAB_FILE,
        MANIFEST_FILE,
        INIT_FILE,
    ] {
        let path = dir.join(name);
        if name == INIT_FILE && !path.exists() {
            continue;
        }
        let len = std::fs::metadata(&path).map_err(io(&path))?.len();
        sizes.insert(name.to_owned(), len);
    }
    Ok(sizes)
}

fn replace_dir(from: &Path, to: &Path) -> Result<(), ExportError> {
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(io(to))?;
    }
    std::fs::rename(from, to).map_err(io(to))
}

fn partial(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// The encoder's layers with BatchNorm folded, as the ONNX writer takes them.
fn folded_layers(encoder: &TchEncoder) -> Result<Vec<onnx::Layer>, ExportError> {
    folded(encoder, &encoder.spec.features)
}

/// `ops` (the whole encoder, or its [`crate::encoders::EncoderSpec::spatial_ops`]) folded,
/// as the ONNX writer takes them.
pub fn folded(
    encoder: &TchEncoder,
    ops: &[crate::encoders::Op],
) -> Result<Vec<onnx::Layer>, ExportError> {
    let params: HashMap<String, Vec<f32>> = encoder
        .named_parameters()
        .iter()
        .map(|(k, t)| (k.clone(), to_vec(t)))
        .collect();
    Ok(onnx::fold(ops, &params)?)
}

/// A copy of the bundle `bundle` whose encoder is the float graph of the encoder weights
/// `weights` (BatchNorm folded, as an `--quantize none` export writes it; weights stored
/// as `storage`, compute f32), with the same decoder and vocabulary and fresh checksums.
/// The encoder is the pretrained ImageNet network, so no training checkpoint is needed:
/// this turns an int8 bundle into the float bundle it was quantized from (the f32
/// reference its paths are measured against, or the f16-stored default bundle).
pub fn float_bundle(
    bundle: &Path,
    weights: &Path,
    storage: WeightStorage,
    model_id: &str,
    out: &Path,
) -> Result<(), ExportError> {
    let source = Manifest::load_bundle(bundle)?;
    let m = &source.manifest;
    let kind: EncoderKind =
        m.encoder
            .name
            .parse()
            .map_err(|e: crate::encoders::UnknownEncoder| ExportError::Mismatch {
                path: bundle.join(MANIFEST_FILE),
                field: "encoder.name",
                found: m.encoder.name.clone(),
                expected: e.to_string(),
            })?;
    let spec = kind.spec();
    let encoder = TchEncoder::from_file(spec.clone(), weights, Device::Cpu)?;
    let graph = match (m.decoder.kind, m.encoder.regions) {
        (DecoderKind::Attention, Some(regions)) => {
            let layers = folded(&encoder, spec.spatial_ops())?;
            onnx::encoder_spatial(&spec, &layers, storage, regions)
        }
        _ => onnx::encoder_float(&spec, &folded_layers(&encoder)?, storage),
    };
    let graph = onnx::encode(&graph.model);
    let read = |name: &str| {
        let path = bundle.join(name);
        std::fs::read(&path).map_err(io(&path))
    };
    let decoder = read(&m.decoder.file)?;
    let init = m.decoder.init_file.as_deref().map(read).transpose()?;
    let vocab = String::from_utf8_lossy(&read(&m.vocabulary.file)?).into_owned();
    let mut manifest = m.clone();
    manifest.model_id = model_id.to_owned();
    manifest.encoder.file = ENCODER_FILE.into();
    manifest.decoder.file = DECODER_FILE.into();
    manifest.decoder.init_file = init.as_ref().map(|_| INIT_FILE.into());
    manifest.vocabulary.file = VOCAB_FILE.into();
    manifest.files.clear();
    manifest.metrics.clear();
    manifest.quantization =
        Quantization::float(storage.into(), manifest.quantization.decoder_storage);
    manifest.provenance.encoder_weights = weights.display().to_string();
    manifest.provenance.float_bundle_of = Some(format!("{} ({})", m.model_id, bundle.display()));
    write_bundle(
        out,
        &BundleFiles {
            encoder: &graph,
            decoder: &decoder,
            init: init.as_deref(),
            vocab: &vocab,
        },
        &mut manifest,
    )
}

/// Export, verify and (optionally) evaluate a bundle. `log` receives progress lines.
pub fn export(
    opts: &ExportOptions,
    mut log: impl FnMut(&str),
) -> Result<ExportReport, ExportError> {
    if opts.out.exists() && !opts.force {
        return Err(ExportError::Exists(opts.out.clone()));
    }
    let json = opts.checkpoint.with_extension("json");
    let weights_path = opts.checkpoint.with_extension("safetensors");
    let info: CheckpointInfo = train::load_info(&json)?;
    let spec = opts.encoder.spec();
    if info.encoder != spec.kind {
        return Err(ExportError::Mismatch {
            path: json,
            field: "encoder",
            found: info.encoder.name().into(),
            expected: format!("--features-encoder is {}", spec.kind.name()),
        });
    }
    let attention = info.attention.is_some();
    let channels = if attention {
        spec.spatial_channels()
    } else {
        spec.feature_dim
    };
    if info.model.feature_dim != channels {
        return Err(ExportError::Mismatch {
            path: json,
            field: "model.feature_dim",
            found: info.model.feature_dim.to_string(),
            expected: format!("{} gives {channels}-d features", spec.kind.name()),
        });
    }
    let (_vs, model) = train::load_trained(&weights_path, &info, Device::Cpu)?;
    let vocab = info.vocab.clone();
    let (Some(start), Some(end)) = (vocab.start_index(), vocab.end_index()) else {
        return Err(ExportError::Mismatch {
            path: json,
            field: "vocab",
            found: "a vocabulary without startseq/endseq".into(),
            expected: "both are needed to decode".into(),
        });
    };
    let search = SearchConfig {
        beam: 1,
        max_length: info.max_length,
        length_penalty: 0.0,
        start,
        end,
    };
    let encoder = match &opts.weights {
        Some(path) => TchEncoder::from_file(spec.clone(), path, Device::Cpu)?,
        None => TchEncoder::random(spec.clone(), opts.seed, Device::Cpu),
    };
    let layers = if attention {
        folded(&encoder, spec.spatial_ops())?
    } else {
        folded_layers(&encoder)?
    };

    let data = Flickr8k::load(&opts.data)?;
    let verify_pool = split_images(&data, opts.verify_split);
    if verify_pool.is_empty() {
        return Err(ExportError::TooFewImages {
            split: opts.verify_split,
            found: 0,
            wanted: opts.verify_images.max(1),
            purpose: "verification",
        });
    }
    let verify_paths: Vec<PathBuf> = verify_pool
        .iter()
        .take(opts.verify_images.max(1))
        .map(|(_, p)| p.clone())
        .collect();
    log(&format!(
        "tch reference on {} {} images",
        verify_paths.len(),
        opts.verify_split
    ));
    let r = reference(&encoder, &model, &vocab, &search, &verify_paths)?;

    let model_id = opts.model_id.clone().unwrap_or_else(|| {
        let q = match opts.quantize {
            Quantize::None => "f32",
            Quantize::Int8 => "int8",
        };
        let short = match spec.kind {
            EncoderKind::Vgg16 => "vgg16",
            EncoderKind::EfficientNetLite0 => "lite0",
            EncoderKind::EfficientNetLite1 => "lite1",
            EncoderKind::EfficientNetLite2 => "lite2",
        };
        let kind = if attention { "-attention" } else { "" };
        format!("flickr8k-{short}{kind}-{q}")
    });
    let provenance = Provenance {
        exporter: format!("caption-train {}", env!("CARGO_PKG_VERSION")),
        data: "Flickr8k (Flickr8k_text, Flicker8k_Dataset)".to_owned(),
        encoder_weights: match &opts.weights {
            Some(p) => p.display().to_string(),
            None => format!("random (seed {})", opts.seed),
        },
        export_command: Some(opts.command.clone()),
        checkpoint: Some(opts.checkpoint.display().to_string()),
        epoch: Some(info.epoch as u64),
        train_loss: Some(info.train_loss),
        val_loss: Some(info.val_loss),
        features_file: Some(info.features_file.clone()),
        verify_split: None,
        float_bundle_of: None,
        // Plain numbers, strings and booleans: they always make a table.
        training_options: toml::Table::try_from(&info.options).ok(),
    };
    // An attention bundle's encoder gives the regions of the map the model attends over.
    let regions = attention.then(|| r.shape[1] as usize);
    let base_manifest = |id: &str, storage: WeightStorage| Manifest {
        format_version: BUNDLE_FORMAT_VERSION,
        model_id: id.to_owned(),
        encoder: EncoderSection {
            name: spec.kind.name().to_owned(),
            file: ENCODER_FILE.to_owned(),
            feature_dim: channels,
            regions,
            preprocessing: spec.preprocessing.clone(),
        },
        decoder: DecoderSection {
            kind: if attention {
                DecoderKind::Attention
            } else {
                DecoderKind::Merge
            },
            file: DECODER_FILE.to_owned(),
            init_file: attention.then(|| INIT_FILE.to_owned()),
            vocab_size: info.model.vocab_size,
            embed_dim: info.model.embed_dim,
            hidden: info.model.hidden,
            max_length: info.max_length,
            length_penalty: opts.length_penalty,
        },
        vocabulary: VocabularySection {
            file: VOCAB_FILE.to_owned(),
            text_rules: vocab.text_rules(),
        },
        files: BTreeMap::new(),
        quantization: Quantization::float(Storage::F32, storage.into()),
        provenance: provenance.clone(),
        metrics: BTreeMap::new(),
    };
    let vocab_json = vocab.to_json();

    // The f32 bundle, always built and verified first.
    log("building the f32 graphs");
    let f32_storage = match opts.quantize {
        Quantize::None => opts.decoder_storage.unwrap_or(WeightStorage::F32),
        Quantize::Int8 => WeightStorage::F32,
    };
    let f32_graph = match regions {
        Some(regions) => onnx::encoder_spatial(&spec, &layers, WeightStorage::F32, regions),
        None => onnx::encoder_f32(&spec, &layers),
    };
    let (f32_decoder, init) = decoder_graphs(&model, regions, f32_storage);
    let f32_encoder = onnx::encode(&f32_graph.model);
    let f32_dir = match (opts.quantize, &opts.f32_out) {
        (Quantize::None, _) => partial(&opts.out, ".partial"),
        (Quantize::Int8, Some(dir)) => dir.clone(),
        (Quantize::Int8, None) => partial(&opts.out, ".f32.partial"),
    };
    let f32_id = match opts.quantize {
        Quantize::None => model_id.clone(),
        Quantize::Int8 => model_id.replace("int8", "f32"),
    };
    let mut f32_manifest = base_manifest(&f32_id, f32_storage);
    write_bundle(
        &f32_dir,
        &BundleFiles {
            encoder: &f32_encoder,
            decoder: &f32_decoder,
            init: init.as_deref(),
            vocab: &vocab_json,
        },
        &mut f32_manifest,
    )?;
    log("verifying the f32 bundle in tract");
    let f32_engine = Engine::load(&f32_dir)?;
    let (f32_check, f32_captions) = verify(&f32_engine, &model, &r, &search)?;
    log(&format!(
        "f32: feature cosine min {:.7}, log-prob max |diff| {:.2e}, caption agreement {:.4}",
        f32_check.feature_cosine_min, f32_check.logprob_max_abs_diff, f32_check.caption_agreement
    ));
    let max_logprob_diff = match f32_storage {
        WeightStorage::F32 => MAX_F32_LOGPROB_DIFF,
        WeightStorage::F16 => MAX_F16_DECODER_LOGPROB_DIFF,
    };
    if f32_check.feature_cosine_min < MIN_F32_COSINE
        || f32_check.logprob_max_abs_diff > max_logprob_diff
    {
        return Err(ExportError::Parity {
            problem: format!(
                "feature cosine min {:.7} (must be >= {MIN_F32_COSINE}), log-prob max |diff| {:.3e} (must be <= {max_logprob_diff:e} for a {} decoder)",
                f32_check.feature_cosine_min, f32_check.logprob_max_abs_diff, f32_storage.name()
            ),
            dir: f32_dir,
        });
    }
    record(&mut f32_manifest.metrics, "f32", &f32_check);
    f32_manifest.provenance.verify_split = Some(opts.verify_split.to_string());

    let (final_dir, mut final_manifest, int8, agreement) = match opts.quantize {
        Quantize::None => {
            write_manifest(&f32_dir, &f32_manifest)?;
            (f32_dir.clone(), f32_manifest, None, None)
        }
        Quantize::Int8 => {
            write_manifest(&f32_dir, &f32_manifest)?;
            let train_pool = split_images(&data, Split::Train);
            if train_pool.is_empty() {
                return Err(ExportError::TooFewImages {
                    split: Split::Train,
                    found: 0,
                    wanted: opts.calibration_images.max(1),
                    purpose: "calibration",
                });
            }
            let calib: Vec<PathBuf> = spread(&train_pool, opts.calibration_images.max(1))
                .into_iter()
                .map(|(_, p)| p)
                .collect();
            log(&format!("calibrating on {} train images", calib.len()));
            let mut last = 0;
            let ranges = calibrate(&f32_graph, &spec.preprocessing, &calib, |done, total| {
                if done * 10 / total > last {
                    last = done * 10 / total;
                    eprintln!("  calibration {done}/{total}");
                }
            })?;
            let int8_graph = onnx::encoder_int8(
                &spec,
                &layers,
                &ranges,
                opts.fc,
                opts.int8_depthwise,
                regions,
            )?;
            let storage = opts.decoder_storage.unwrap_or(WeightStorage::F16);
            let int8_encoder = onnx::encode(&int8_graph.model);
            let (int8_decoder, int8_init) = decoder_graphs(&model, regions, storage);
            let dir = partial(&opts.out, ".partial");
            let mut m = base_manifest(&model_id, storage);
            m.quantization = Quantization {
                scheme: Scheme::Int8Static,
                encoder_storage: Storage::Int8,
                decoder_storage: storage.into(),
                calibration_images: Some(calib.len() as u64),
                encoder_int8_layers: Some(int8_graph.int8_layers as u64),
                encoder_f32_layers: Some(int8_graph.f32_layers as u64),
                encoder_depthwise: Some(if opts.int8_depthwise {
                    Storage::Int8
                } else {
                    Storage::F32
                }),
                encoder_fully_connected: Some(opts.fc.name().to_owned()),
            };
            write_bundle(
                &dir,
                &BundleFiles {
                    encoder: &int8_encoder,
                    decoder: &int8_decoder,
                    init: int8_init.as_deref(),
                    vocab: &vocab_json,
                },
                &mut m,
            )?;
            log("verifying the int8 bundle in tract, as int8 and dequantised to f32");
            let path = |precision| EngineOptions {
                precision,
                threads: 1,
            };
            let engine = Engine::load_with(&dir, &path(Precision::Int8))?;
            let (check, captions) = verify(&engine, &model, &r, &search)?;
            let deq_engine = Engine::load_with(&dir, &path(Precision::F32))?;
            let (deq_check, _) = verify(&deq_engine, &model, &r, &search)?;
            log(&format!(
                "int8 dequantised to f32: feature cosine min {:.6}, caption agreement with tch {:.4}",
                deq_check.feature_cosine_min, deq_check.caption_agreement
            ));

            let agree = captions
                .iter()
                .zip(&f32_captions)
                .filter(|(a, b)| a == b)
                .count() as f64
                / captions.len().max(1) as f64;
            log(&format!(
                "int8: feature cosine min {:.5} mean {:.5}, decoder log-prob max |diff| {:.2e}, \
                 caption agreement with tch {:.4}, with the f32 bundle {:.4}",
                check.feature_cosine_min,
                check.feature_cosine_mean,
                check.logprob_max_abs_diff,
                check.caption_agreement,
                agree
            ));
            record(&mut m.metrics, "f32", &f32_check);
            record(&mut m.metrics, "int8", &check);
            record(&mut m.metrics, "dequantized", &deq_check);
            m.metrics.insert("int8_f32_caption_agreement".into(), agree);
            m.provenance.verify_split = Some(opts.verify_split.to_string());
            write_manifest(&dir, &m)?;
            if opts.f32_out.is_none() {
                std::fs::remove_dir_all(&f32_dir).map_err(io(&f32_dir))?;
            }
            (dir, m, Some((check, deq_check)), Some(agree))
        }
    };
    let (int8, dequantized) = match int8 {
        Some((a, b)) => (Some(a), Some(b)),
        None => (None, None),
    };

    let evaluation = match opts.evaluate {
        None => None,
        Some((split, beam)) => {
            log(&format!("evaluating the bundle on {split} (beam {beam})"));
            let engine = Engine::load(&final_dir)?;
            let (report, _) =
                caption_runtime::evaluate::evaluate(&engine, &data, split, beam, |_, _| {})?;
            let m = &mut final_manifest.metrics;
            let s = split.to_string();
            for (name, scores) in [
                ("coco", &report.coco_protocol),
                ("original", &report.original_protocol),
            ] {
                for (i, v) in [scores.bleu1, scores.bleu2, scores.bleu3, scores.bleu4]
                    .into_iter()
                    .enumerate()
                {
                    m.insert(format!("{s}_{name}_bleu{}", i + 1), v);
                }
            }
            m.insert(format!("{s}_coco_cider_d"), report.coco_cider_d);
            m.insert(
                format!("{s}_distinct_captions"),
                report.distinct_captions as f64,
            );
            m.insert(format!("{s}_bleu_beam"), beam as f64);
            m.insert(format!("{s}_bleu_images"), report.images as f64);
            write_manifest(&final_dir, &final_manifest)?;
            Some(report)
        }
    };
    // Checksums are unchanged: the manifest is not one of its own files.
    Manifest::load_bundle(&final_dir)?;
    let sizes = file_sizes(&final_dir)?;
    replace_dir(&final_dir, &opts.out)?;
    Ok(ExportReport {
        bundle: opts.out.clone(),
        model_id,
        f32: f32_check,
        int8,
        dequantized,
        int8_f32_caption_agreement: agreement,
        sizes,
        evaluation,
    })
}

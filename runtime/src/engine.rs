//! The inference engine: a model bundle loaded into optimized tract plans, encoding
//! preprocessed images and decoding captions with the shared search of `caption-proto`.
//!
//! This is the one inference path of the edge: `captiond run`, `caption`, `bench` and
//! `evaluate` use it, and so does the trainer's export to verify a bundle. Graph tensors
//! are bound by the names of the bundle contract (`caption_proto::manifest`), not by
//! position; the encoder runs in the precision [`crate::precision`] chooses for this CPU.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caption_proto::manifest::{
    Bundle, DecoderKind, Manifest, ManifestError, ATTENTION_INIT_INPUTS, ATTENTION_INIT_OUTPUTS,
    ATTENTION_STEP_INPUTS, ATTENTION_STEP_OUTPUTS, DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_INPUT,
    ENCODER_OUTPUT,
};
use caption_proto::preprocess::{PreprocessError, Preprocessing};
use caption_proto::search::{beam_search, greedy, Hypothesis, SearchConfig, StepDecoder};
use caption_proto::text::strip_special;
use prost::Message;
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use crate::dequantize::{self, DequantizeError};
use crate::precision::{self, CpuFeatures, Precision, PrecisionChoice};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path}: cannot load the ONNX graph")]
    Load { path: PathBuf, source: Cause },
    #[error("{path}: cannot make the f32 graph of the int8 encoder: {source}")]
    Dequantize {
        path: PathBuf,
        source: DequantizeError,
    },
    #[error("{path}: cannot widen its float16 weights to f32: {source}")]
    Widen {
        path: PathBuf,
        source: DequantizeError,
    },
    #[error("`threads` must be at least 1")]
    Threads,
    #[error("{path}: {what}, but the manifest field `{field}` says {expected}")]
    Shape {
        path: PathBuf,
        what: String,
        field: String,
        expected: String,
    },
    #[error("running {graph}")]
    Run { graph: &'static str, source: Cause },
    #[error(transparent)]
    Image(#[from] PreprocessError),
    #[error("the vocabulary of this bundle has no {0} token")]
    MissingToken(&'static str),
    #[error("this bundle's decoder is not an attention decoder (manifest `decoder.kind`): it has no attention maps")]
    NotAttention,
}

/// What tract (or the file system, or protobuf) reported, kept as the error's source.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

type Plan = Arc<TypedSimplePlan>;

/// How to run a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// The encoder's precision; `Auto` picks the fastest verified one for this CPU.
    pub precision: Precision,
    /// Threads for tract's matrix kernels (1: the calling thread only).
    pub threads: usize,
}

/// The CPUs this process may run on (1 where the system cannot say): the default number
/// of kernel threads.
pub fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Default for EngineOptions {
    /// `auto` precision on all cores.
    fn default() -> Self {
        EngineOptions {
            precision: Precision::Auto,
            threads: all_cores(),
        }
    }
}

/// A loaded bundle with its two plans.
pub struct Engine {
    pub bundle: Bundle,
    encoder: Plan,
    decoder: Plan,
    /// Attention bundles: the initial-state graph (merge bundles start from zeros).
    init: Option<Plan>,
    /// Attention bundles: floats of one image's attention keys (regions × attention size).
    keys_len: usize,
    start: u32,
    end: u32,
    precision: PrecisionChoice,
    threads: usize,
    executor: Executor,
}

/// A decoded caption with its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    /// Words without special tokens, joined by spaces.
    pub text: String,
    pub hypothesis: Hypothesis,
}

/// Time spent in each stage of one captioning call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    pub preprocess: Duration,
    pub encoder: Duration,
    pub decoder: Duration,
}

fn load_error(path: &Path, e: impl Into<Cause>) -> EngineError {
    EngineError::Load {
        path: path.to_owned(),
        source: e.into(),
    }
}

fn run_error(graph: &'static str, e: impl Into<Cause>) -> EngineError {
    EngineError::Run {
        graph,
        source: e.into(),
    }
}

/// A dimension's value when it is a known integer.
fn known(dim: &TDim) -> Option<i64> {
    dim.to_i64().ok()
}

/// Check that `fact`'s shape is `[batch, expected...]` with a symbolic (or any) batch.
fn check_shape(
    path: &Path,
    what: &str,
    fact: &TypedFact,
    expected: &[(usize, &str)],
) -> Result<(), EngineError> {
    let dims: Vec<TDim> = fact.shape.iter().cloned().collect();
    if dims.len() != expected.len() + 1 {
        return Err(EngineError::Shape {
            path: path.to_owned(),
            what: format!("{what} has rank {} (shape {:?})", dims.len(), dims),
            field: expected.first().map(|e| e.1).unwrap_or("").to_owned(),
            expected: format!("rank {}", expected.len() + 1),
        });
    }
    for (dim, (value, field)) in dims[1..].iter().zip(expected) {
        if known(dim) != Some(*value as i64) {
            return Err(EngineError::Shape {
                path: path.to_owned(),
                what: format!("{what} has shape {dims:?}"),
                field: (*field).to_owned(),
                expected: value.to_string(),
            });
        }
    }
    Ok(())
}

fn read_proto(path: &Path) -> Result<tract_onnx::pb::ModelProto, EngineError> {
    let bytes = std::fs::read(path).map_err(|e| load_error(path, e))?;
    tract_onnx::pb::ModelProto::decode(bytes.as_slice()).map_err(|e| load_error(path, e))
}

/// A decoder-side graph (step or initial state) as the engine runs it: float16-stored
/// weights widened to f32 constants ([`dequantize::widen_f16_constants`]).
fn read_decoder_proto(path: &Path) -> Result<tract_onnx::pb::ModelProto, EngineError> {
    let proto = read_proto(path)?;
    if !dequantize::has_f16_constants(&proto) {
        return Ok(proto);
    }
    dequantize::widen_f16_constants(&proto).map_err(|source| EngineError::Widen {
        path: path.to_owned(),
        source,
    })
}

/// The encoder graph of a bundle as the engine runs it at `precision` (`Int8`: as stored;
/// `F32`: dequantised when stored as int8), as ONNX bytes: for running the very same graph
/// in another runtime (scripts/bench-encoders.sh).
pub fn encoder_graph(bundle: &Bundle, precision: Precision) -> Result<Vec<u8>, EngineError> {
    let path = bundle.encoder_path();
    let proto = read_proto(&path)?;
    if precision == Precision::F32 && dequantize::is_int8(&proto) {
        let f32 = dequantize::dequantize(&proto)
            .map_err(|source| EngineError::Dequantize { path, source })?;
        return Ok(f32.encode_to_vec());
    }
    Ok(proto.encode_to_vec())
}

/// A graph with its inputs and outputs bound by name, typed.
fn load_typed(
    path: &Path,
    proto: &tract_onnx::pb::ModelProto,
    inputs: &[&str],
    outputs: &[&str],
) -> Result<TypedModel, EngineError> {
    let mut model = tract_onnx::onnx()
        .model_for_proto_model(proto)
        .map_err(|e| load_error(path, e))?;
    model
        .set_input_names(inputs)
        .map_err(|e| load_error(path, format!("binding inputs {inputs:?}: {e:#}")))?;
    model
        .select_outputs_by_name(outputs)
        .map_err(|e| load_error(path, format!("binding outputs {outputs:?}: {e:#}")))?;
    model.into_typed().map_err(|e| load_error(path, e))
}

fn optimize(model: TypedModel, path: &Path) -> Result<Plan, EngineError> {
    model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(|e| load_error(path, e))
}

impl Engine {
    /// Load and check a bundle directory with the default [`EngineOptions`].
    pub fn load(dir: &Path) -> Result<Engine, EngineError> {
        Engine::load_with(dir, &EngineOptions::default())
    }

    /// Load and check a bundle directory, choose the encoder's precision, then build the
    /// optimized plans.
    pub fn load_with(dir: &Path, options: &EngineOptions) -> Result<Engine, EngineError> {
        if options.threads == 0 {
            return Err(EngineError::Threads);
        }
        let bundle = Manifest::load_bundle(dir)?;
        let m = &bundle.manifest;
        let size = m.encoder.preprocessing.size as usize;

        let enc_path = bundle.encoder_path();
        let mut proto = read_proto(&enc_path)?;
        let choice = precision::choose(
            options.precision,
            &CpuFeatures::detect(),
            dequantize::is_int8(&proto),
        );
        if choice.precision == Precision::F32 && dequantize::is_int8(&proto) {
            proto = dequantize::dequantize(&proto).map_err(|source| EngineError::Dequantize {
                path: enc_path.clone(),
                source,
            })?;
        }
        let encoder = load_typed(&enc_path, &proto, &[ENCODER_INPUT], &[ENCODER_OUTPUT])?;
        let fact = |model: &TypedModel, outlet: OutletId| {
            model
                .outlet_fact(outlet)
                .cloned()
                .map_err(|e| load_error(&enc_path, e))
        };
        check_shape(
            &enc_path,
            "the image input",
            &fact(&encoder, encoder.inputs[0])?,
            &[
                (3, "encoder.preprocessing.channels"),
                (size, "encoder.preprocessing.size"),
                (size, "encoder.preprocessing.size"),
            ],
        )?;
        // A merge bundle's encoder gives a vector per image, an attention bundle's the
        // regions of its last feature map.
        let attention = m.decoder.kind == DecoderKind::Attention;
        let regions = m.encoder.regions.unwrap_or(0);
        let feature_shape: Vec<(usize, &str)> = if attention {
            vec![
                (regions, "encoder.regions"),
                (m.encoder.feature_dim, "encoder.feature_dim"),
            ]
        } else {
            vec![(m.encoder.feature_dim, "encoder.feature_dim")]
        };
        check_shape(
            &enc_path,
            "the feature output",
            &fact(&encoder, encoder.outputs[0])?,
            &feature_shape,
        )?;

        let dec_path = bundle.decoder_path();
        let (inputs, outputs): (&[&str], &[&str]) = if attention {
            (&ATTENTION_STEP_INPUTS, &ATTENTION_STEP_OUTPUTS)
        } else {
            (&DECODER_INPUTS, &DECODER_OUTPUTS)
        };
        let decoder = load_typed(&dec_path, &read_decoder_proto(&dec_path)?, inputs, outputs)?;
        let dfact = |outlet: OutletId| {
            decoder
                .outlet_fact(outlet)
                .cloned()
                .map_err(|e| load_error(&dec_path, e))
        };
        let hidden = m.decoder.hidden;
        check_shape(
            &dec_path,
            &format!("input `{}`", inputs[0]),
            &dfact(decoder.inputs[0])?,
            &feature_shape,
        )?;
        // The attention step also takes the keys (input 1) before the words.
        let words_at = if attention { 2 } else { 1 };
        check_shape(
            &dec_path,
            "input `words`",
            &dfact(decoder.inputs[words_at])?,
            &[],
        )?;
        for (i, name) in [(1, "h"), (2, "c")] {
            check_shape(
                &dec_path,
                &format!("input `{name}`"),
                &dfact(decoder.inputs[words_at + i])?,
                &[(hidden, "decoder.hidden")],
            )?;
            check_shape(
                &dec_path,
                &format!("output `{name}`"),
                &dfact(decoder.outputs[i])?,
                &[(hidden, "decoder.hidden")],
            )?;
        }
        check_shape(
            &dec_path,
            "output `log_probs`",
            &dfact(decoder.outputs[0])?,
            &[(m.decoder.vocab_size, "decoder.vocab_size")],
        )?;

        let init = match bundle.init_path() {
            Some(init_path) if attention => {
                let init = load_typed(
                    &init_path,
                    &read_decoder_proto(&init_path)?,
                    &ATTENTION_INIT_INPUTS,
                    &ATTENTION_INIT_OUTPUTS,
                )?;
                let ifact = |i: usize| {
                    init.outlet_fact(init.outputs[i])
                        .cloned()
                        .map_err(|e| load_error(&init_path, e))
                };
                for (i, name) in [(0, "h"), (1, "c")] {
                    check_shape(
                        &init_path,
                        &format!("output `{name}`"),
                        &ifact(i)?,
                        &[(hidden, "decoder.hidden")],
                    )?;
                }
                // The keys' width is the model's attention size, which the manifest does
                // not name: the step graph must take what the initial-state graph gives.
                let keys = ifact(2)?;
                let width = keys
                    .shape
                    .get(2)
                    .and_then(known)
                    .ok_or_else(|| EngineError::Shape {
                        path: init_path.clone(),
                        what: format!("output `keys` has shape {:?}", keys.shape),
                        field: "decoder.init_file".into(),
                        expected: format!("[batch, {regions}, attention size]"),
                    })? as usize;
                let keys_shape = [(regions, "encoder.regions"), (width, "init.onnx `keys`")];
                check_shape(&init_path, "output `keys`", &keys, &keys_shape)?;
                check_shape(
                    &dec_path,
                    "input `keys`",
                    &dfact(decoder.inputs[1])?,
                    &keys_shape,
                )?;
                Some((optimize(init, &init_path)?, regions * width))
            }
            // The manifest check requires `decoder.init_file` of an attention bundle.
            _ => None,
        };
        let (init, keys_len) = match init {
            Some((plan, len)) => (Some(plan), len),
            None => (None, 0),
        };
        let start = bundle
            .vocabulary
            .start_index()
            .ok_or(EngineError::MissingToken("start"))?;
        let end = bundle
            .vocabulary
            .end_index()
            .ok_or(EngineError::MissingToken("end"))?;
        // The daemon encodes one frame at a time; a fixed batch of 1 also lets tract plan
        // the int8 convolutions (its quantized im2col does not take a symbolic batch).
        let encoder = match encoder.symbols.get("batch") {
            Some(batch) => encoder
                .set_symbols(&SymbolValues::default().with(&batch, 1).to_dim_map())
                .map_err(|e| load_error(&enc_path, e))?,
            None => encoder,
        };
        let executor = if options.threads == 1 {
            Executor::SingleThread
        } else {
            Executor::multithread_with_name(options.threads, "caption-tract")
        };
        Ok(Engine {
            encoder: optimize(encoder, &enc_path)?,
            decoder: optimize(decoder, &dec_path)?,
            init,
            keys_len,
            bundle,
            start,
            end,
            precision: choice,
            threads: options.threads,
            executor,
        })
    }

    /// The precision the encoder runs in, and why it was chosen.
    pub fn precision(&self) -> &PrecisionChoice {
        &self.precision
    }

    /// Threads tract's kernels use.
    pub fn threads(&self) -> usize {
        self.threads
    }

    fn run(
        &self,
        plan: &Plan,
        graph: &'static str,
        inputs: TVec<TValue>,
    ) -> Result<TVec<TValue>, EngineError> {
        multithread_tract_scope(self.executor.clone(), || plan.run(inputs))
            .map_err(|e| run_error(graph, e))
    }

    pub fn manifest(&self) -> &Manifest {
        &self.bundle.manifest
    }

    pub fn preprocessing(&self) -> &Preprocessing {
        &self.bundle.manifest.encoder.preprocessing
    }

    pub fn feature_dim(&self) -> usize {
        self.bundle.manifest.encoder.feature_dim
    }

    /// Values per image that [`Engine::encode`] returns: the feature vector's length, or
    /// regions × channels for an attention bundle.
    pub fn feature_len(&self) -> usize {
        let e = &self.bundle.manifest.encoder;
        match self.init {
            Some(_) => e.regions.unwrap_or(1) * e.feature_dim,
            None => e.feature_dim,
        }
    }

    /// The bundle's decoder kind.
    pub fn decoder_kind(&self) -> DecoderKind {
        self.bundle.manifest.decoder.kind
    }

    /// The search settings of this bundle for a beam width.
    pub fn search_config(&self, beam: usize) -> SearchConfig {
        SearchConfig {
            beam: beam.max(1),
            max_length: self.bundle.manifest.decoder.max_length,
            length_penalty: self.bundle.manifest.decoder.length_penalty,
            start: self.start,
            end: self.end,
        }
    }

    /// The feature vector (or the flattened regions `[R, C]` of an attention bundle) of one
    /// preprocessed image `[3, S, S]` (the encoder plan is built for a batch of 1, see
    /// [`Engine::load`]).
    pub fn encode(&self, pixels: &[f32]) -> Result<Vec<f32>, EngineError> {
        let s = self.preprocessing().size as usize;
        let input = tract_ndarray::Array4::from_shape_vec((1, 3, s, s), pixels.to_vec())
            .map_err(|e| run_error("encoder", e))?;
        let out = self.run(&self.encoder, "encoder", tvec!(Tensor::from(input).into()))?;
        let view = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| run_error("encoder", e))?;
        Ok(view.iter().copied().collect())
    }

    /// A step decoder over the features `[n * feature_len]` of `n` images.
    pub fn step_decoder<'a>(&'a self, features: &'a [f32]) -> TractDecoder<'a> {
        TractDecoder {
            engine: self,
            features,
            keys: vec![None; features.len() / self.feature_len().max(1)],
        }
    }

    /// Decode captions for `n` images' features with greedy (`beam <= 1`) or beam search.
    pub fn decode(&self, features: &[f32], beam: usize) -> Result<Vec<Caption>, EngineError> {
        let n = features.len() / self.feature_len();
        let config = self.search_config(beam);
        let mut decoder = self.step_decoder(features);
        let images: Vec<usize> = (0..n).collect();
        let hyps = if config.beam <= 1 {
            greedy(&mut decoder, &images, &config)?
        } else {
            beam_search(&mut decoder, &images, &config)?
        };
        Ok(hyps
            .into_iter()
            .map(|hypothesis| Caption {
                text: self.text(&hypothesis),
                hypothesis,
            })
            .collect())
    }

    /// An attention bundle's weights over the regions for each of `tokens`, replaying the
    /// path that generated them from one image's `features` (what [`Engine::encode`]
    /// returns). A merge bundle has none: an error.
    pub fn attention_maps(
        &self,
        features: &[f32],
        tokens: &[u32],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        if self.init.is_none() {
            return Err(EngineError::NotAttention);
        }
        let mut decoder = self.step_decoder(features);
        let (mut h, mut c) = decoder.start(&[0])?;
        let mut word = self.start;
        let mut maps = Vec::with_capacity(tokens.len());
        for &token in tokens {
            let (_, (h2, c2), alpha) = decoder.run_step_with_attention(&[0], &[word], &h, &c)?;
            maps.push(alpha);
            (h, c, word) = (h2, c2, token);
        }
        Ok(maps)
    }

    /// The caption text of a hypothesis: its words without special tokens.
    pub fn text(&self, h: &Hypothesis) -> String {
        strip_special(self.bundle.vocabulary.decode(&h.tokens)).join(" ")
    }

    /// Caption one image file, timing each stage.
    pub fn caption_file(
        &self,
        path: &Path,
        beam: usize,
    ) -> Result<(Caption, StageTimes), EngineError> {
        self.caption_file_with_features(path, beam)
            .map(|(caption, times, _)| (caption, times))
    }

    /// [`Engine::caption_file`], also returning the image's feature vector (for comparing
    /// builds, e.g. aarch64 against x86-64).
    pub fn caption_file_with_features(
        &self,
        path: &Path,
        beam: usize,
    ) -> Result<(Caption, StageTimes, Vec<f32>), EngineError> {
        let t0 = Instant::now();
        let pixels = self.preprocessing().from_file(path)?;
        self.caption_pixels_with_features(&pixels, beam, t0.elapsed())
    }

    /// Caption one preprocessed image `[3, S, S]`; `preprocess` is the time already spent.
    pub fn caption_pixels(
        &self,
        pixels: &[f32],
        beam: usize,
        preprocess: Duration,
    ) -> Result<(Caption, StageTimes), EngineError> {
        self.caption_pixels_with_features(pixels, beam, preprocess)
            .map(|(caption, times, _)| (caption, times))
    }

    fn caption_pixels_with_features(
        &self,
        pixels: &[f32],
        beam: usize,
        preprocess: Duration,
    ) -> Result<(Caption, StageTimes, Vec<f32>), EngineError> {
        let t1 = Instant::now();
        let features = self.encode(pixels)?;
        let t2 = Instant::now();
        let caption = self
            .decode(&features, beam)?
            .pop()
            .expect("one caption per image");
        let times = StageTimes {
            preprocess,
            encoder: t2 - t1,
            decoder: t2.elapsed(),
        };
        Ok((caption, times, features))
    }
}

/// LSTM `(h, c)`, each `[rows * hidden]`.
pub type LstmState = (Vec<f32>, Vec<f32>);

/// The bundle's decoder graph as a [`StepDecoder`]; the state is `(h, c)`, each
/// `[rows * hidden]`.
pub struct TractDecoder<'a> {
    engine: &'a Engine,
    features: &'a [f32],
    /// Attention bundles: each image's attention keys, from the initial-state graph.
    keys: Vec<Option<Vec<f32>>>,
}

impl TractDecoder<'_> {
    fn hidden(&self) -> usize {
        self.engine.bundle.manifest.decoder.hidden
    }

    /// The features of rows `images`: `[rows, D]`, or `[rows, R, C]` for attention.
    fn features_of(&self, images: &[usize]) -> Result<Tensor, EngineError> {
        let len = self.engine.feature_len();
        let mut feats = Vec::with_capacity(images.len() * len);
        for &i in images {
            feats.extend_from_slice(&self.features[i * len..(i + 1) * len]);
        }
        let e = &self.engine.bundle.manifest.encoder;
        let shape = match self.engine.init {
            Some(_) => vec![images.len(), e.regions.unwrap_or(1), e.feature_dim],
            None => vec![images.len(), e.feature_dim],
        };
        tract_ndarray::ArrayD::from_shape_vec(shape, feats)
            .map(Tensor::from)
            .map_err(|e| run_error("decoder", e))
    }

    /// The attention keys of rows `images`, `[rows, R, A]`, as [`StepDecoder::start`] got
    /// them from the initial-state graph.
    fn keys_of(&self, images: &[usize]) -> Result<Tensor, EngineError> {
        let len = self.engine.keys_len;
        let mut keys = Vec::with_capacity(images.len() * len);
        for &i in images {
            let k = self.keys.get(i).and_then(Option::as_ref).ok_or_else(|| {
                run_error(
                    "decoder",
                    format!("image {i} has no attention keys: start its caption first"),
                )
            })?;
            keys.extend_from_slice(k);
        }
        let regions = self.engine.bundle.manifest.encoder.regions.unwrap_or(1);
        tract_ndarray::ArrayD::from_shape_vec(vec![images.len(), regions, len / regions], keys)
            .map(Tensor::from)
            .map_err(|e| run_error("decoder", e))
    }

    /// One raw step: log-probabilities `[rows, V]` and the new state.
    pub fn run_step(
        &self,
        images: &[usize],
        words: &[u32],
        h: &[f32],
        c: &[f32],
    ) -> Result<(Vec<f32>, LstmState), EngineError> {
        self.run_step_with_attention(images, words, h, c)
            .map(|(logp, state, _)| (logp, state))
    }

    /// [`TractDecoder::run_step`], also returning an attention bundle's weights
    /// `[rows, R]` (empty for a merge bundle).
    pub fn run_step_with_attention(
        &self,
        images: &[usize],
        words: &[u32],
        h: &[f32],
        c: &[f32],
    ) -> Result<(Vec<f32>, LstmState, Vec<f32>), EngineError> {
        let hidden = self.hidden();
        let rows = images.len();
        let arr2 = |data: Vec<f32>, cols: usize| {
            tract_ndarray::Array2::from_shape_vec((rows, cols), data)
                .map(Tensor::from)
                .map_err(|e| run_error("decoder", e))
        };
        let words: Vec<i64> = words.iter().map(|&w| w as i64).collect();
        let words = tract_ndarray::Array1::from_vec(words);
        let mut inputs = tvec!(self.features_of(images)?.into());
        if self.engine.init.is_some() {
            inputs.push(self.keys_of(images)?.into());
        }
        inputs.extend([
            Tensor::from(words).into(),
            arr2(h.to_vec(), hidden)?.into(),
            arr2(c.to_vec(), hidden)?.into(),
        ]);
        let out = self.engine.run(&self.engine.decoder, "decoder", inputs)?;
        let flat = |i: usize| -> Result<Vec<f32>, EngineError> {
            Ok(out[i]
                .to_plain_array_view::<f32>()
                .map_err(|e| run_error("decoder", e))?
                .iter()
                .copied()
                .collect())
        };
        let attention = match out.len() {
            4 => flat(3)?,
            _ => Vec::new(),
        };
        Ok((flat(0)?, (flat(1)?, flat(2)?), attention))
    }
}

impl StepDecoder for TractDecoder<'_> {
    type State = LstmState;
    type Error = EngineError;

    fn vocab_size(&self) -> usize {
        self.engine.bundle.manifest.decoder.vocab_size
    }

    fn start(&mut self, images: &[usize]) -> Result<Self::State, Self::Error> {
        let Some(init) = &self.engine.init else {
            let zeros = vec![0.0; images.len() * self.hidden()];
            return Ok((zeros.clone(), zeros));
        };
        let out = self.engine.run(
            init,
            "initial state",
            tvec!(self.features_of(images)?.into()),
        )?;
        let flat = |i: usize| -> Result<Vec<f32>, EngineError> {
            Ok(out[i]
                .to_plain_array_view::<f32>()
                .map_err(|e| run_error("initial state", e))?
                .iter()
                .copied()
                .collect())
        };
        let keys = flat(2)?;
        let len = self.engine.keys_len;
        for (row, &image) in images.iter().enumerate() {
            if let Some(slot) = self.keys.get_mut(image) {
                *slot = Some(keys[row * len..(row + 1) * len].to_vec());
            }
        }
        Ok((flat(0)?, flat(1)?))
    }

    fn step(
        &mut self,
        state: &Self::State,
        images: &[usize],
        words: &[u32],
    ) -> Result<(Vec<f32>, Self::State), Self::Error> {
        self.run_step(images, words, &state.0, &state.1)
    }

    fn select(&mut self, state: &Self::State, rows: &[usize]) -> Result<Self::State, Self::Error> {
        let hd = self.hidden();
        let pick = |v: &[f32]| -> Vec<f32> {
            rows.iter()
                .flat_map(|&r| v[r * hd..(r + 1) * hd].iter().copied())
                .collect()
        };
        Ok((pick(&state.0), pick(&state.1)))
    }
}

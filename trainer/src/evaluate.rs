//! Decoding with the shared search, BLEU under both protocols, and captions for new images.

use std::path::{Path, PathBuf};
use std::time::Instant;

use caption_proto::dataset::{self, Flickr8k, Split};
use caption_proto::evaluation::{score, Scores};
use caption_proto::search::{beam_search, greedy, Hypothesis, SearchConfig, StepDecoder};
use caption_proto::text::{strip_special, TextRules};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::attention::{AttentionModel, Regions};
use crate::model::MergeModel;
use crate::train::{CheckpointInfo, FeatureTable, TrainError, TrainModel};

/// The merge model as a [`StepDecoder`] over a fixed set of images' features.
pub struct TchDecoder<'a> {
    model: &'a MergeModel,
    /// Image branch output `[images, H]`, computed once.
    image: Tensor,
}

impl<'a> TchDecoder<'a> {
    pub fn new(model: &'a MergeModel, features: &Tensor) -> TchDecoder<'a> {
        let image = tch::no_grad(|| model.image_branch(&features.to_device(model.device()), false));
        TchDecoder { model, image }
    }
}

fn index(rows: &[usize], device: Device) -> Tensor {
    let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    Tensor::from_slice(&rows).to_device(device)
}

impl StepDecoder for TchDecoder<'_> {
    type State = Option<(Tensor, Tensor)>;
    type Error = std::convert::Infallible;

    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }

    fn start(&mut self, _images: &[usize]) -> Result<Self::State, Self::Error> {
        Ok(None)
    }

    fn step(
        &mut self,
        state: &Self::State,
        images: &[usize],
        words: &[u32],
    ) -> Result<(Vec<f32>, Self::State), Self::Error> {
        let device = self.model.device();
        let image = self.image.index_select(0, &index(images, device));
        let words: Vec<i64> = words.iter().map(|&w| w as i64).collect();
        let words = Tensor::from_slice(&words).to_device(device);
        let (logp, h, c) = tch::no_grad(|| {
            self.model
                .step(&image, &words, state.as_ref().map(|(h, c)| (h, c)))
        });
        let flat = Vec::<f32>::try_from(
            &logp
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .flatten(0, -1),
        )
        .expect("f32 log-probabilities");
        Ok((flat, Some((h, c))))
    }

    fn select(&mut self, state: &Self::State, rows: &[usize]) -> Result<Self::State, Self::Error> {
        Ok(state.as_ref().map(|(h, c)| {
            let idx = index(rows, h.device());
            (h.index_select(1, &idx), c.index_select(1, &idx))
        }))
    }
}

/// The attention model as a [`StepDecoder`] over a fixed set of images' regions: the
/// regions' projection is computed once, and each step attends over its rows' regions.
pub struct AttentionDecoder<'a> {
    model: &'a AttentionModel,
    regions: Regions,
}

impl<'a> AttentionDecoder<'a> {
    /// `regions`: `[images, R, C]` (float16 or f32).
    pub fn new(model: &'a AttentionModel, regions: &Tensor) -> AttentionDecoder<'a> {
        let regions = tch::no_grad(|| model.regions(regions));
        AttentionDecoder { model, regions }
    }
}

impl StepDecoder for AttentionDecoder<'_> {
    type State = (Tensor, Tensor);
    type Error = std::convert::Infallible;

    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }

    fn start(&mut self, images: &[usize]) -> Result<Self::State, Self::Error> {
        let device = self.regions.regions.device();
        let r = self.regions.select(&index(images, device));
        Ok(tch::no_grad(|| self.model.initial_state(&r)))
    }

    fn step(
        &mut self,
        state: &Self::State,
        images: &[usize],
        words: &[u32],
    ) -> Result<(Vec<f32>, Self::State), Self::Error> {
        let device = self.regions.regions.device();
        let r = self.regions.select(&index(images, device));
        let words: Vec<i64> = words.iter().map(|&w| w as i64).collect();
        let words = Tensor::from_slice(&words).to_device(device);
        let (logp, h, c, _alpha) = tch::no_grad(|| self.model.step(&r, &words, &state.0, &state.1));
        let flat = Vec::<f32>::try_from(&logp.to_device(Device::Cpu).flatten(0, -1))
            .expect("f32 log-probabilities");
        Ok((flat, (h, c)))
    }

    fn select(&mut self, state: &Self::State, rows: &[usize]) -> Result<Self::State, Self::Error> {
        let idx = index(rows, state.0.device());
        Ok((state.0.index_select(0, &idx), state.1.index_select(0, &idx)))
    }
}

/// Greedy or beam search over every image, `chunk` images at a time; `decoder` makes the
/// step decoder of images `start..start + len`.
fn decode_chunks<D: StepDecoder<Error = std::convert::Infallible>>(
    n: usize,
    config: &SearchConfig,
    chunk: usize,
    mut decoder: impl FnMut(usize, usize) -> D,
) -> Vec<Hypothesis> {
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let mut decoder = decoder(start, len);
        let images: Vec<usize> = (0..len).collect();
        let result = if config.beam <= 1 {
            greedy(&mut decoder, &images, config)
        } else {
            beam_search(&mut decoder, &images, config)
        };
        match result {
            Ok(h) => out.extend(h),
            Err(never) => match never {},
        }
        start += len;
    }
    out
}

/// Decode captions for a trained model of either kind: `features` are pooled vectors
/// `[N, D]` (merge) or regions `[N, R, C]` (attention).
pub fn decode_trained(
    model: &TrainModel,
    features: &Tensor,
    config: &SearchConfig,
    chunk: usize,
) -> Vec<Hypothesis> {
    match model {
        TrainModel::Merge(m) => decode_all(m, features, config, chunk),
        TrainModel::Attention(m) => {
            let n = features.size()[0] as usize;
            decode_chunks(n, config, chunk, |start, len| {
                AttentionDecoder::new(m, &features.narrow(0, start as i64, len as i64))
            })
        }
    }
}

/// Decode captions for every row of `features` `[N, D]`, in chunks of `chunk` images.
pub fn decode_all(
    model: &MergeModel,
    features: &Tensor,
    config: &SearchConfig,
    chunk: usize,
) -> Vec<Hypothesis> {
    let n = features.size()[0] as usize;
    decode_chunks(n, config, chunk, |start, len| {
        TchDecoder::new(model, &features.narrow(0, start as i64, len as i64))
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct EvaluationReport {
    pub split: String,
    pub images: usize,
    pub checkpoint: String,
    pub model_text_rules: TextRules,
    pub decoding: serde_json::Value,
    /// startseq/endseq kept in references and hypotheses, `original` references, NLTK
    /// weights (1), (.5,.5), (.3,.3,.3), (.25,.25,.25,.25): the tutorial's evaluation.
    pub original_protocol: Scores,
    /// Fair only for a model trained on `original` text.
    pub original_protocol_fair: bool,
    /// `standard` references and hypotheses, special tokens stripped, coco-caption BLEU.
    pub coco_protocol: Scores,
    /// The same with NLTK `corpus_bleu` (uniform cumulative weights).
    pub coco_protocol_nltk: Scores,
    /// CIDEr-D (pycocoevalcap's `Cider`) on the coco protocol's tokens.
    pub coco_cider_d: f64,
    /// Different captions among the split's images.
    pub distinct_captions: usize,
    /// Fair only for a model trained on `standard` text.
    pub coco_protocol_fair: bool,
    pub decode_seconds: f64,
    pub images_per_second: f64,
}

pub struct EvaluateInputs<'a> {
    pub data: &'a Flickr8k,
    pub table: &'a FeatureTable,
    pub model: &'a TrainModel,
    pub info: &'a CheckpointInfo,
    pub checkpoint: &'a Path,
    pub split: Split,
    pub search: SearchConfig,
}

/// Decode a split and score it; returns the report and `(id, caption)` predictions.
pub fn evaluate(
    inputs: &EvaluateInputs<'_>,
) -> Result<(EvaluationReport, Vec<(String, String)>), TrainError> {
    let vocab = &inputs.info.vocab;
    let descriptions = inputs.data.clean_descriptions(TextRules::Original);
    let ids: Vec<String> = dataset::select(&descriptions, inputs.data.split_ids(inputs.split))
        .into_iter()
        .map(|(id, _)| id.clone())
        .filter(|id| inputs.table.rows.contains_key(id))
        .collect();
    if ids.is_empty() {
        return Err(TrainError::EmptySplit(inputs.split));
    }
    let rows: Vec<i64> = ids.iter().map(|id| inputs.table.rows[id]).collect();
    let features = inputs
        .table
        .features
        .index_select(0, &Tensor::from_slice(&rows));
    let started = Instant::now();
    let hyps = decode_trained(inputs.model, &features, &inputs.search, 100);
    let decode_seconds = started.elapsed().as_secs_f64();
    let words: Vec<Vec<String>> = hyps
        .iter()
        .map(|h| {
            vocab
                .decode(&h.tokens)
                .into_iter()
                .map(str::to_owned)
                .collect()
        })
        .collect();
    let scores = score(inputs.data, &ids, &words)?;
    let predictions = ids
        .iter()
        .zip(&words)
        .map(|(id, w)| {
            (
                id.clone(),
                strip_special(w.iter().map(String::as_str)).join(" "),
            )
        })
        .collect();
    let rules = inputs.info.options.text_rules;
    Ok((
        EvaluationReport {
            split: inputs.split.to_string(),
            images: ids.len(),
            checkpoint: inputs.checkpoint.display().to_string(),
            model_text_rules: rules,
            decoding: serde_json::json!({
                "beam": inputs.search.beam,
                "length_penalty": inputs.search.length_penalty,
                "max_length": inputs.search.max_length,
                "search": if inputs.search.beam <= 1 { "greedy" } else { "beam" },
            }),
            original_protocol: scores.original,
            original_protocol_fair: rules == TextRules::Original,
            coco_protocol: scores.coco,
            coco_protocol_nltk: scores.coco_nltk,
            coco_cider_d: scores.cider_d,
            distinct_captions: scores.distinct_captions,
            coco_protocol_fair: rules == TextRules::Standard,
            decode_seconds,
            images_per_second: ids.len() as f64 / decode_seconds,
        },
        predictions,
    ))
}

/// Where `evaluate` writes its outputs inside a run directory.
pub fn output_paths(run_dir: &Path, split: Split, beam: usize) -> (PathBuf, PathBuf) {
    let stem = format!("eval-{split}-beam{beam}");
    (
        run_dir.join(format!("{stem}.predictions.tsv")),
        run_dir.join(format!("{stem}.json")),
    )
}

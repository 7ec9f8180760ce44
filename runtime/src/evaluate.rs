//! BLEU of a bundle on a Flickr8k split, through the engine the daemon runs
//! (`captiond evaluate`, and the trainer's `export --evaluate`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use caption_proto::dataset::{self, Flickr8k, Split};
use caption_proto::evaluation::{score, Scores};
use caption_proto::text::TextRules;
use serde::Serialize;

use crate::engine::{Engine, EngineError};
use crate::precision::PrecisionChoice;

#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("split {0} has no images with captions")]
    EmptySplit(Split),
    #[error(transparent)]
    Score(#[from] caption_proto::evaluation::ScoreError),
}

#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    /// Wall-clock seconds of each stage summed over all images.
    pub preprocess_s: f64,
    pub encoder_s: f64,
    pub decoder_s: f64,
    pub total_s: f64,
    pub images_per_second: f64,
    /// Encoder milliseconds per image.
    pub encoder_ms_per_image: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BundleEvaluation {
    pub bundle: PathBuf,
    pub model_id: String,
    /// The precision the encoder ran in, and why; and the kernels' threads.
    pub precision: PrecisionChoice,
    pub threads: usize,
    pub split: String,
    pub images: usize,
    pub beam: usize,
    /// The bundle's `decoder.length_penalty` the beam search ranked with.
    pub length_penalty: f32,
    pub model_text_rules: TextRules,
    /// The tutorial's protocol (see `caption-train evaluate`); fair only for `original` text.
    pub original_protocol: Scores,
    /// coco-caption BLEU on `standard` text, special tokens stripped.
    pub coco_protocol: Scores,
    pub coco_protocol_nltk: Scores,
    /// CIDEr-D (pycocoevalcap's `Cider`) on the coco protocol's tokens.
    pub coco_cider_d: f64,
    /// Different captions among the split's images.
    pub distinct_captions: usize,
    pub timings: Timings,
}

/// Caption every image of `split` and score the captions. `progress` is called after each
/// encoded image with `(done, total)`. Returns the report and `(image id, caption)` pairs in
/// split order.
pub fn evaluate(
    engine: &Engine,
    data: &Flickr8k,
    split: Split,
    beam: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<(BundleEvaluation, Vec<(String, String)>), EvaluateError> {
    let descriptions = data.clean_descriptions(TextRules::Standard);
    let ids: Vec<String> = dataset::select(&descriptions, data.split_ids(split))
        .into_iter()
        .map(|(id, _)| id.clone())
        .collect();
    if ids.is_empty() {
        return Err(EvaluateError::EmptySplit(split));
    }
    let files: std::collections::HashMap<&str, PathBuf> = data
        .images
        .iter()
        .map(|image| (image.id.as_str(), data.image_path(image)))
        .collect();
    let paths: Vec<&PathBuf> = ids.iter().map(|id| &files[id.as_str()]).collect();
    let started = Instant::now();
    let (mut pre_s, mut enc_s) = (0.0, 0.0);
    let d = engine.feature_len();
    let mut features = Vec::with_capacity(ids.len() * d);
    for (i, path) in paths.iter().enumerate() {
        let t0 = Instant::now();
        let pixels = engine
            .preprocessing()
            .from_file(path)
            .map_err(EngineError::from)?;
        let t1 = Instant::now();
        features.extend(engine.encode(&pixels)?);
        pre_s += (t1 - t0).as_secs_f64();
        enc_s += t1.elapsed().as_secs_f64();
        progress(i + 1, ids.len());
    }
    let t2 = Instant::now();
    let mut captions = Vec::with_capacity(ids.len());
    // All images of a chunk decode together: one batched decoder call per step.
    for chunk in features.chunks(100 * d) {
        captions.extend(engine.decode(chunk, beam)?);
    }
    let dec_s = t2.elapsed().as_secs_f64();
    let total_s = started.elapsed().as_secs_f64();
    let words: Vec<Vec<String>> = captions
        .iter()
        .map(|c| {
            engine
                .bundle
                .vocabulary
                .decode(&c.hypothesis.tokens)
                .into_iter()
                .map(str::to_owned)
                .collect()
        })
        .collect();
    let scores = score(data, &ids, &words)?;
    let predictions = ids
        .iter()
        .cloned()
        .zip(captions.into_iter().map(|c| c.text))
        .collect();
    let m = engine.manifest();
    Ok((
        BundleEvaluation {
            bundle: engine.bundle.dir.clone(),
            model_id: m.model_id.clone(),
            precision: engine.precision().clone(),
            threads: engine.threads(),
            split: split.to_string(),
            images: ids.len(),
            beam: beam.max(1),
            length_penalty: m.decoder.length_penalty,
            model_text_rules: m.vocabulary.text_rules,
            original_protocol: scores.original,
            coco_protocol: scores.coco,
            coco_protocol_nltk: scores.coco_nltk,
            coco_cider_d: scores.cider_d,
            distinct_captions: scores.distinct_captions,
            timings: Timings {
                preprocess_s: pre_s,
                encoder_s: enc_s,
                decoder_s: dec_s,
                total_s,
                images_per_second: ids.len() as f64 / total_s,
                encoder_ms_per_image: enc_s * 1000.0 / ids.len() as f64,
            },
        },
        predictions,
    ))
}

/// Write `image_id<TAB>caption` lines.
pub fn write_predictions(path: &Path, predictions: &[(String, String)]) -> std::io::Result<()> {
    let mut text = String::new();
    for (id, caption) in predictions {
        text.push_str(id);
        text.push('\t');
        text.push_str(caption);
        text.push('\n');
    }
    std::fs::write(path, text)
}

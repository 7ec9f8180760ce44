//! `caption-train caption`: image files through a run's best checkpoint (merge or
//! attention) and its encoder
//! in libtorch, each as the event `captiond` publishes (camera `file`, `image` naming the
//! file), so that both halves print one schema.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use caption_proto::mqtt::{CaptionEvent, Origin, StageLatency, FILE_CAMERA};
use caption_proto::preprocess::{PreprocessError, Preprocessing};
use caption_proto::search::SearchConfig;
use caption_proto::vocab::Vocabulary;
use tch::{nn, Device, Tensor};

use crate::encoders::TchEncoder;
use crate::train::{self, TrainError, TrainModel};
use crate::weights::WeightsError;

#[derive(Debug, thiserror::Error)]
pub enum CaptionError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Image(#[from] PreprocessError),
    #[error("checkpoint {0}: its vocabulary lacks startseq/endseq")]
    NoStartEnd(String),
    #[error("--attention needs an attention checkpoint (train --model attention); this run's is a merge model")]
    NotAttention,
    #[error(transparent)]
    Map(#[from] caption_proto::attention_map::AttentionMapError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Beam search settings shared by `evaluate` and `caption`.
pub fn search_config(
    vocab: &Vocabulary,
    max_length: usize,
    beam: usize,
    length_penalty: f32,
) -> Option<SearchConfig> {
    Some(SearchConfig {
        beam,
        max_length,
        length_penalty,
        start: vocab.start_index()?,
        end: vocab.end_index()?,
    })
}

/// A run's best checkpoint with its encoder, ready to caption files.
pub struct CheckpointCaptioner {
    _vs: nn::VarStore,
    model: TrainModel,
    vocab: Vocabulary,
    encoder: TchEncoder,
    preprocessing: Preprocessing,
    search: SearchConfig,
    /// The checkpoint's file stem (`model-ep003-loss…`): the events' `model_id`.
    model_id: String,
    run_id: u64,
}

impl CheckpointCaptioner {
    /// The best checkpoint of `run` and the encoder it was trained on, from `weights`.
    pub fn load(
        run: &Path,
        weights: &Path,
        device: Device,
        beam: usize,
        length_penalty: f32,
    ) -> Result<CheckpointCaptioner, CaptionError> {
        let (checkpoint, info) = train::best_checkpoint(run)?;
        let (vs, model) = train::load_trained(&checkpoint, &info, device)?;
        let spec = info.encoder.spec();
        let preprocessing = spec.preprocessing.clone();
        let encoder = TchEncoder::from_file(spec, weights, device)?;
        let search = search_config(&info.vocab, info.max_length, beam, length_penalty)
            .ok_or_else(|| CaptionError::NoStartEnd(checkpoint.display().to_string()))?;
        let model_id = checkpoint
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        Ok(CheckpointCaptioner {
            _vs: vs,
            model,
            vocab: info.vocab,
            encoder,
            preprocessing,
            search,
            model_id,
            run_id: caption_proto::mqtt::new_run_id(),
        })
    }

    /// An attention checkpoint's caption of one image file as words, and the picture of
    /// where it looked for each (the image, then one panel per word).
    pub fn attention_picture(
        &self,
        path: &Path,
    ) -> Result<(Vec<String>, image::RgbImage), CaptionError> {
        let TrainModel::Attention(m) = &self.model else {
            return Err(CaptionError::NotAttention);
        };
        let bytes = std::fs::read(path).map_err(|source| CaptionError::Read {
            path: path.to_owned(),
            source,
        })?;
        let rgb = self
            .preprocessing
            .resize(caption_proto::preprocess::decode_rgb(&bytes, path)?);
        let side = self.preprocessing.size as i64;
        let input =
            Tensor::from_slice(&self.preprocessing.normalize(&rgb)).reshape([1, 3, side, side]);
        let map = self.encoder.spatial_map(&input);
        let grid = (map.size()[2] as u32, map.size()[3] as u32);
        let regions = map.flatten(2, -1).transpose(1, 2).contiguous();
        let hyp = crate::evaluate::decode_trained(&self.model, &regions, &self.search, 1).remove(0);
        // Replay the chosen path, collecting each step's attention weights.
        let r = tch::no_grad(|| m.regions(&regions));
        let (mut h, mut c) = tch::no_grad(|| m.initial_state(&r));
        let mut word = self.search.start as i64;
        let (mut words, mut maps) = (Vec::new(), Vec::new());
        for &token in &hyp.tokens {
            let (_, h2, c2, alpha) =
                tch::no_grad(|| m.step(&r, &Tensor::from_slice(&[word]), &h, &c));
            if token != self.search.end {
                if let Some(w) = self.vocab.word(token) {
                    words.push(w.to_owned());
                    maps.push(Vec::<f32>::try_from(alpha.flatten(0, -1)).expect("f32 weights"));
                }
            }
            (h, c, word) = (h2, c2, token as i64);
        }
        let picture = caption_proto::attention_map::attention_picture(&rgb, grid, &maps)?;
        Ok((words, picture))
    }

    /// Caption one image file; `sequence` numbers the files of one call.
    pub fn caption_file(&self, path: &Path, sequence: u64) -> Result<CaptionEvent, CaptionError> {
        let captured_at = SystemTime::now();
        let t0 = Instant::now();
        let pixels = self.preprocessing.from_file(path)?;
        let side = self.preprocessing.size as i64;
        let input = Tensor::from_slice(&pixels).reshape([1, 3, side, side]);
        let t1 = Instant::now();
        // The merge model reads the pooled vector, the attention model the regions.
        let features = match self.model {
            TrainModel::Merge(_) => self.encoder.features(&input),
            TrainModel::Attention(_) => self.encoder.spatial(&input),
        };
        let t2 = Instant::now();
        let hyp =
            crate::evaluate::decode_trained(&self.model, &features, &self.search, 1).remove(0);
        let words = caption_proto::text::strip_special(self.vocab.decode(&hyp.tokens)).join(" ");
        let origin = Origin {
            camera: FILE_CAMERA.into(),
            run_id: self.run_id,
            sequence,
            captured_at,
            image: Some(path.display().to_string()),
        };
        let latency = StageLatency::from_stages(Duration::ZERO, t1 - t0, t2 - t1, t2.elapsed());
        Ok(CaptionEvent::new(
            origin,
            words,
            hyp.mean_log_prob() as f64,
            self.model_id.clone(),
            latency,
        ))
    }
}

//! `caption-train train`: fit the merge model on whole captions with teacher forcing,
//! keep the checkpoint with the best dev loss.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use caption_proto::dataset::{self, Flickr8k, Split};
use caption_proto::text::{wrap, TextRules};
use caption_proto::vocab::Vocabulary;
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::attention::{AttentionConfig, AttentionModel};
use crate::model::{MergeModel, ModelConfig};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Dataset(#[from] caption_proto::DatasetError),
    #[error("features file {path}: {problem}")]
    Features { path: PathBuf, problem: String },
    #[error("checkpoint {path}: {problem}")]
    Checkpoint { path: PathBuf, problem: String },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path} is not a caption-train checkpoint description")]
    CheckpointJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Prepare(#[from] crate::prepare::PrepareError),
    #[error(transparent)]
    Vocab(#[from] caption_proto::vocab::VocabError),
    #[error(transparent)]
    Score(#[from] caption_proto::evaluation::ScoreError),
    #[error("the {0} split has no caption with image features")]
    EmptySplit(Split),
}

/// Image features loaded from an `extract` output: pooled vectors `[N, D]` (f32) or
/// spatial regions `[N, R, C]` (float16, converted per batch).
pub struct FeatureTable {
    pub features: Tensor,
    /// `extract --spatial` output.
    pub spatial: bool,
    pub rows: HashMap<String, i64>,
    pub encoder: crate::encoders::EncoderKind,
    pub path: PathBuf,
}

impl FeatureTable {
    pub fn load(path: &Path) -> Result<FeatureTable, TrainError> {
        let err = |problem: String| TrainError::Features {
            path: path.to_owned(),
            problem,
        };
        let meta = crate::extract::read_metadata(path)
            .ok_or_else(|| err("not a caption-train extract output (no metadata)".into()))?;
        let spatial =
            meta.get("layout").map(String::as_str) == Some(crate::extract::LAYOUT_SPATIAL);
        let ids: Vec<String> = serde_json::from_str(
            meta.get("ids")
                .ok_or_else(|| err("metadata field `ids` missing".into()))?,
        )
        .map_err(|e| err(format!("metadata field `ids`: {e}")))?;
        let tensors = Tensor::read_safetensors(path).map_err(|e| err(e.to_string()))?;
        let features = tensors
            .into_iter()
            .find(|(n, _)| n == "features")
            .map(|(_, t)| t)
            .ok_or_else(|| err("tensor `features` missing".into()))?;
        let rank = if spatial { 3 } else { 2 };
        if features.size().len() != rank || features.size()[0] != ids.len() as i64 {
            return Err(err(format!(
                "tensor `features` is {:?} but `ids` lists {} images ({} layout)",
                features.size(),
                ids.len(),
                if spatial { "spatial" } else { "pooled" }
            )));
        }
        Ok(FeatureTable {
            rows: ids
                .into_iter()
                .enumerate()
                .map(|(i, id)| (id, i as i64))
                .collect(),
            // Spatial files stay float16 in memory (1 GB for Flickr8k, not 2).
            features: if spatial {
                features
            } else {
                features.to_kind(Kind::Float)
            },
            spatial,
            encoder: meta
                .get("encoder")
                .ok_or_else(|| err("metadata field `encoder` missing".into()))?
                .parse()
                .map_err(|e| err(format!("metadata field `encoder`: {e}")))?,
            path: path.to_owned(),
        })
    }

    /// Channels per vector (pooled) or per region (spatial).
    pub fn dim(&self) -> usize {
        *self.features.size().last().unwrap_or(&0) as usize
    }
}

/// Encoded captions of one split: (feature row, token ids with start and end).
pub struct CaptionSet {
    pub items: Vec<(i64, Vec<u32>)>,
}

impl CaptionSet {
    /// `descriptions` are the cleaned captions of every image (`Flickr8k::clean_descriptions`).
    pub fn build(
        data: &Flickr8k,
        descriptions: &[(String, Vec<String>)],
        split: Split,
        vocab: &Vocabulary,
        table: &FeatureTable,
    ) -> Result<CaptionSet, TrainError> {
        let mut items = Vec::new();
        for (id, captions) in dataset::select(descriptions, data.split_ids(split)) {
            let Some(&row) = table.rows.get(id) else {
                continue;
            };
            for c in captions {
                let tokens = vocab.encode(&wrap(c));
                if tokens.len() >= 2 {
                    items.push((row, tokens));
                }
            }
        }
        if items.is_empty() {
            return Err(TrainError::EmptySplit(split));
        }
        Ok(CaptionSet { items })
    }

    /// One epoch's batches: a seeded shuffle, then captions of similar length grouped
    /// within windows of 50 batches (less LSTM padding), then the batches shuffled. Every
    /// caption appears exactly once, so the epoch's mean loss is unchanged.
    pub fn batches(&self, batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        shuffle(&mut order, seed);
        let mut batches = Vec::new();
        for window in order.chunks_mut(batch_size * 50) {
            window.sort_by_key(|&i| self.items[i].1.len());
            batches.extend(window.chunks(batch_size).map(<[usize]>::to_vec));
        }
        let mut batch_order: Vec<usize> = (0..batches.len()).collect();
        shuffle(&mut batch_order, seed.rotate_left(17) ^ 0xA5A5);
        batch_order
            .into_iter()
            .map(|i| std::mem::take(&mut batches[i]))
            .collect()
    }

    /// Input-output pairs (real target tokens).
    pub fn pairs(&self) -> usize {
        self.items.iter().map(|(_, t)| t.len() - 1).sum()
    }

    /// Right-padded (rows, inputs, targets) for the captions at `indices`.
    pub fn batch(&self, indices: &[usize], device: Device) -> (Tensor, Tensor, Tensor) {
        let t = indices
            .iter()
            .map(|&i| self.items[i].1.len() - 1)
            .max()
            .unwrap_or(0);
        let mut inputs = vec![0i64; indices.len() * t];
        let mut targets = vec![0i64; indices.len() * t];
        let mut rows = Vec::with_capacity(indices.len());
        for (b, &i) in indices.iter().enumerate() {
            let (row, tokens) = &self.items[i];
            rows.push(*row);
            for (j, w) in tokens.windows(2).enumerate() {
                inputs[b * t + j] = w[0] as i64;
                targets[b * t + j] = w[1] as i64;
            }
        }
        let shape = [indices.len() as i64, t as i64];
        (
            Tensor::from_slice(&rows).to_device(device),
            Tensor::from_slice(&inputs).reshape(shape).to_device(device),
            Tensor::from_slice(&targets)
                .reshape(shape)
                .to_device(device),
        )
    }
}

/// Which caption model `train` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// The tutorial's merge model on pooled features.
    #[default]
    Merge,
    /// Show, Attend and Tell soft attention on spatial features (`extract --spatial`).
    Attention,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Absent in checkpoints written before attention existed: merge.
    #[serde(default)]
    pub model: ModelKind,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub patience: usize,
    pub seed: i64,
    pub text_rules: TextRules,
    pub min_count: u64,
}

/// Everything needed to rebuild a model from a checkpoint (`<name>.json` beside `<name>.safetensors`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub format: String,
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    /// The merge model's sizes; for an attention checkpoint the sizes it shares
    /// (feature, vocabulary, embedding, hidden, dropout), the rest in `attention`.
    pub model: ModelConfig,
    /// The attention model's sizes (attention checkpoints only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<AttentionConfig>,
    pub max_length: usize,
    /// The encoder the training features came from.
    pub encoder: crate::encoders::EncoderKind,
    pub features_file: String,
    pub options: TrainOptions,
    /// The vocabulary, in the form `vocab.json` holds it.
    pub vocab: Vocabulary,
}

pub const CHECKPOINT_FORMAT: &str = "caption-checkpoint/1";

/// The tutorial's checkpoint name: `model-ep002-loss3.245-val_loss3.612`.
pub fn checkpoint_name(epoch: usize, train_loss: f64, val_loss: f64) -> String {
    format!("model-ep{epoch:03}-loss{train_loss:.3}-val_loss{val_loss:.3}")
}

/// The model being trained.
pub enum TrainModel {
    Merge(MergeModel),
    Attention(AttentionModel),
}

impl TrainModel {
    /// (what the optimiser minimises, mean cross-entropy over real targets, their count).
    pub fn losses(
        &self,
        features: &Tensor,
        inputs: &Tensor,
        targets: &Tensor,
        train: bool,
    ) -> (Tensor, Tensor, i64) {
        match self {
            TrainModel::Merge(m) => {
                let (loss, n) = m.loss(features, inputs, targets, train);
                (loss.shallow_clone(), loss, n)
            }
            TrainModel::Attention(m) => {
                let l = m.loss(features, inputs, targets, train);
                (l.total(), l.cross_entropy, l.count)
            }
        }
    }

    pub fn parameter_count(&self) -> usize {
        match self {
            TrainModel::Merge(m) => m.parameter_count(),
            TrainModel::Attention(m) => m.parameter_count(),
        }
    }
}

/// Mean cross-entropy over every real target token of a set (no dropout).
pub fn evaluate_loss(
    model: &TrainModel,
    set: &CaptionSet,
    table: &FeatureTable,
    batch_size: usize,
    device: Device,
) -> f64 {
    tch::no_grad(|| {
        let (mut total, mut count) = (0.0, 0i64);
        // Similar lengths together: less padding for the LSTM, same mean over tokens.
        let mut order: Vec<usize> = (0..set.items.len()).collect();
        order.sort_by_key(|&i| set.items[i].1.len());
        for chunk in order.chunks(batch_size) {
            let (rows, inputs, targets) = set.batch(chunk, device);
            let feats = table
                .features
                .index_select(0, &rows.to_device(Device::Cpu))
                .to_device(device);
            let (_, loss, n) = model.losses(&feats, &inputs, &targets, false);
            total += loss.double_value(&[]) * n as f64;
            count += n;
        }
        total / count.max(1) as f64
    })
}

/// One line of `metrics.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub seconds: f64,
    pub improved: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub best_checkpoint: Option<String>,
    pub best_epoch: usize,
    pub best_val_loss: f64,
    pub epochs: Vec<EpochMetrics>,
    pub train_pairs: usize,
    pub dev_pairs: usize,
    pub vocab_size: usize,
    pub parameters: usize,
    pub total_seconds: f64,
    pub device: String,
}

/// Shuffle with a seeded xorshift (deterministic across runs and platforms).
fn shuffle(order: &mut [usize], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Write {
        path: path.to_owned(),
        source,
    }
}

/// The best checkpoint of a run directory (lowest val loss in its `.json` files).
pub fn best_checkpoint(run_dir: &Path) -> Result<(PathBuf, CheckpointInfo), TrainError> {
    let err = |problem: String| TrainError::Checkpoint {
        path: run_dir.to_owned(),
        problem,
    };
    let entries = std::fs::read_dir(run_dir).map_err(|source| TrainError::Read {
        path: run_dir.to_owned(),
        source,
    })?;
    let mut best: Option<(PathBuf, CheckpointInfo)> = None;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with("model-ep") && name.ends_with(".json")) {
            continue;
        }
        let info = load_info(&path)?;
        if best
            .as_ref()
            .is_none_or(|(_, b)| info.val_loss < b.val_loss)
        {
            best = Some((path.with_extension("safetensors"), info));
        }
    }
    best.ok_or_else(|| err("no checkpoint (model-ep*.json) in this run directory".into()))
}

pub fn load_info(json: &Path) -> Result<CheckpointInfo, TrainError> {
    let err = |problem: String| TrainError::Checkpoint {
        path: json.to_owned(),
        problem,
    };
    let text = std::fs::read_to_string(json).map_err(|source| TrainError::Read {
        path: json.to_owned(),
        source,
    })?;
    let info: CheckpointInfo =
        serde_json::from_str(&text).map_err(|source| TrainError::CheckpointJson {
            path: json.to_owned(),
            source,
        })?;
    if info.format != CHECKPOINT_FORMAT {
        return Err(err(format!(
            "field `format` is {:?}, expected {CHECKPOINT_FORMAT:?}",
            info.format
        )));
    }
    Ok(info)
}

/// Build the model of a checkpoint of either kind and load its weights.
pub fn load_trained(
    weights: &Path,
    info: &CheckpointInfo,
    device: Device,
) -> Result<(nn::VarStore, TrainModel), TrainError> {
    let Some(config) = &info.attention else {
        let (vs, model) = load_model(weights, info, device)?;
        return Ok((vs, TrainModel::Merge(model)));
    };
    let mut vs = nn::VarStore::new(device);
    let model = AttentionModel::new(&vs.root(), config.clone());
    vs.load(weights).map_err(|e| TrainError::Checkpoint {
        path: weights.to_owned(),
        problem: e.to_string(),
    })?;
    Ok((vs, TrainModel::Attention(model)))
}

/// Build the merge model of a checkpoint and load its weights.
pub fn load_model(
    weights: &Path,
    info: &CheckpointInfo,
    device: Device,
) -> Result<(nn::VarStore, MergeModel), TrainError> {
    if info.attention.is_some() {
        return Err(TrainError::Checkpoint {
            path: weights.to_owned(),
            problem: "an attention checkpoint, not a merge one (load_trained loads either)".into(),
        });
    }
    let mut vs = nn::VarStore::new(device);
    let model = MergeModel::new(&vs.root(), info.model.clone());
    vs.load(weights).map_err(|e| TrainError::Checkpoint {
        path: weights.to_owned(),
        problem: e.to_string(),
    })?;
    Ok((vs, model))
}

pub struct TrainInputs<'a> {
    pub data: &'a Flickr8k,
    pub table: &'a FeatureTable,
    pub run_dir: &'a Path,
    pub device: Device,
    pub progress: bool,
    /// Continue from this checkpoint (weights and epoch count).
    pub resume: Option<PathBuf>,
}

pub fn train(inputs: &TrainInputs<'_>, opts: &TrainOptions) -> Result<TrainSummary, TrainError> {
    let started = Instant::now();
    let prepared = crate::prepare::prepare(inputs.data, opts.text_rules, opts.min_count)?;
    let vocab = prepared.vocabulary;
    let max_length = prepared.summary.max_length;
    let descriptions = inputs.data.clean_descriptions(opts.text_rules);
    let train_set = CaptionSet::build(
        inputs.data,
        &descriptions,
        Split::Train,
        &vocab,
        inputs.table,
    )?;
    let dev_set = CaptionSet::build(inputs.data, &descriptions, Split::Dev, &vocab, inputs.table)?;
    std::fs::create_dir_all(inputs.run_dir).map_err(write_err(inputs.run_dir))?;
    vocab.save(&inputs.run_dir.join("vocab.json"))?;

    match (opts.model, inputs.table.spatial) {
        (ModelKind::Merge, true) => {
            return Err(TrainError::Features {
                path: inputs.table.path.clone(),
                problem: "holds spatial features (extract --spatial), but the merge model \
                          trains on pooled feature vectors: extract again without --spatial, \
                          or train --model attention"
                    .into(),
            })
        }
        (ModelKind::Attention, false) => {
            return Err(TrainError::Features {
                path: inputs.table.path.clone(),
                problem: "holds pooled feature vectors, but --model attention attends over \
                          regions: extract with --spatial"
                    .into(),
            })
        }
        _ => {}
    }
    tch::manual_seed(opts.seed);
    let mut vs = nn::VarStore::new(inputs.device);
    let (config, attention, model) = match opts.model {
        ModelKind::Merge => {
            let config = ModelConfig::tutorial(inputs.table.dim(), vocab.size());
            let model = MergeModel::new(&vs.root(), config.clone());
            (config, None, TrainModel::Merge(model))
        }
        ModelKind::Attention => {
            let a = AttentionConfig::standard(inputs.table.dim(), vocab.size());
            let shared = ModelConfig {
                feature_dim: a.feature_dim,
                vocab_size: a.vocab_size,
                embed_dim: a.embed_dim,
                hidden: a.hidden,
                dropout: a.dropout,
            };
            let model = AttentionModel::new(&vs.root(), a.clone());
            (shared, Some(a), TrainModel::Attention(model))
        }
    };
    let mut start_epoch = 1;
    let mut best_val = f64::INFINITY;
    let mut best_epoch = 0;
    let mut best_name = None;
    if let Some(resume) = &inputs.resume {
        let info = load_info(&resume.with_extension("json"))?;
        vs.load(resume.with_extension("safetensors"))
            .map_err(|e| TrainError::Checkpoint {
                path: resume.clone(),
                problem: e.to_string(),
            })?;
        start_epoch = info.epoch + 1;
        best_val = info.val_loss;
        best_epoch = info.epoch;
        best_name = resume.file_stem().map(|s| s.to_string_lossy().into_owned());
    }
    let mut opt = nn::Adam {
        beta1: 0.9,
        beta2: 0.999,
        wd: 0.0,
        eps: 1e-7,
        amsgrad: false,
    }
    .build(&vs, opts.learning_rate)?;

    let metrics_path = inputs.run_dir.join("metrics.csv");
    let mut metrics_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(write_err(&metrics_path))?;
    if metrics_file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        writeln!(metrics_file, "epoch,train_loss,val_loss,seconds,improved")
            .map_err(write_err(&metrics_path))?;
    }

    let mut epochs = Vec::new();
    let mut stale = 0;
    let features_cpu = &inputs.table.features;
    let features_dev = features_cpu.to_device(inputs.device);
    for epoch in start_epoch..=opts.epochs {
        let epoch_start = Instant::now();
        let batches = train_set.batches(opts.batch_size, opts.seed as u64 ^ (epoch as u64) << 32);
        let bar = if inputs.progress {
            indicatif::ProgressBar::new(train_set.items.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "epoch {epoch}/{} {{bar:30}} {{pos}}/{{len}} captions [{{elapsed_precise}}<{{eta_precise}}] {{msg}}",
                opts.epochs
            ))
            .expect("valid template"),
        );
        let (mut total, mut count) = (0.0f64, 0i64);
        for chunk in &batches {
            let (rows, inputs_t, targets) = train_set.batch(chunk, inputs.device);
            let feats = features_dev.index_select(0, &rows);
            let (objective, loss, n) = model.losses(&feats, &inputs_t, &targets, true);
            opt.backward_step(&objective);
            total += loss.double_value(&[]) * n as f64;
            count += n;
            bar.inc(chunk.len() as u64);
            bar.set_message(format!("loss {:.4}", total / count as f64));
        }
        bar.finish_and_clear();
        let train_loss = total / count.max(1) as f64;
        let val_loss = evaluate_loss(&model, &dev_set, inputs.table, 256, inputs.device);
        let improved = val_loss < best_val;
        let seconds = epoch_start.elapsed().as_secs_f64();
        if improved {
            best_val = val_loss;
            best_epoch = epoch;
            stale = 0;
            let name = checkpoint_name(epoch, train_loss, val_loss);
            let weights = inputs.run_dir.join(format!("{name}.safetensors"));
            vs.save(&weights)?;
            let info = CheckpointInfo {
                format: CHECKPOINT_FORMAT.into(),
                epoch,
                train_loss,
                val_loss,
                model: config.clone(),
                attention: attention.clone(),
                max_length,
                encoder: inputs.table.encoder,
                features_file: inputs.table.path.display().to_string(),
                options: opts.clone(),
                vocab: vocab.clone(),
            };
            let json = inputs.run_dir.join(format!("{name}.json"));
            std::fs::write(&json, serde_json::to_string_pretty(&info).expect("json"))
                .map_err(write_err(&json))?;
            best_name = Some(name);
        } else {
            stale += 1;
        }
        writeln!(
            metrics_file,
            "{epoch},{train_loss},{val_loss},{seconds:.3},{improved}"
        )
        .map_err(write_err(&metrics_path))?;
        if inputs.progress {
            eprintln!(
                "epoch {epoch}: loss {train_loss:.4} val_loss {val_loss:.4} ({seconds:.1}s){}",
                if improved { " *" } else { "" }
            );
        }
        // The plot is a convenience: failing to draw it must not stop training.
        if let Ok(csv) = std::fs::read_to_string(&metrics_path) {
            let png = inputs.run_dir.join("loss.png");
            if let Err(e) = crate::plot::write_loss_plot(&png, &crate::plot::read_metrics(&csv)) {
                eprintln!("warning: cannot draw {}: {e}", png.display());
            }
        }
        epochs.push(EpochMetrics {
            epoch,
            train_loss,
            val_loss,
            seconds,
            improved,
        });
        if stale >= opts.patience {
            break;
        }
    }
    Ok(TrainSummary {
        run_dir: inputs.run_dir.to_owned(),
        best_checkpoint: best_name,
        best_epoch,
        best_val_loss: best_val,
        epochs,
        train_pairs: train_set.pairs(),
        dev_pairs: dev_set.pairs(),
        vocab_size: vocab.size(),
        parameters: model.parameter_count(),
        total_seconds: started.elapsed().as_secs_f64(),
        device: format!("{:?}", inputs.device),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_caption_once_and_depend_only_on_the_seed() {
        let items = (0..1000)
            .map(|i| (i as i64, vec![1u32; 2 + (i * 7919) % 30]))
            .collect();
        let set = CaptionSet { items };
        let a = set.batches(16, 42);
        let mut seen: Vec<usize> = a.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        assert!(a.iter().all(|b| b.len() <= 16));
        assert_eq!(a, set.batches(16, 42));
        assert_ne!(a, set.batches(16, 43));
    }

    #[test]
    fn checkpoint_names_follow_the_tutorial() {
        assert_eq!(
            checkpoint_name(2, 3.2451, 3.6119),
            "model-ep002-loss3.245-val_loss3.612"
        );
    }
}

//! The merge caption model (the tutorial's `define_model`) in tch.
//!
//! image features -> Dropout -> Linear(D, H) -> ReLU ─┐
//! words -> Embedding(V, E, padding 0) -> Dropout -> LSTM(H) ─ add -> Linear(H, H) -> ReLU -> Linear(H, V)
//!
//! The LSTM sees only words, so one decoding step with carried state equals re-running it
//! over the whole prefix; training runs whole right-padded captions (teacher forcing) and
//! scores only real target tokens, which is the tutorial's per-pair loss.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// Model sizes. The defaults are the tutorial's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub feature_dim: usize,
    pub vocab_size: usize,
    pub embed_dim: usize,
    pub hidden: usize,
    pub dropout: f64,
}

impl ModelConfig {
    pub fn tutorial(feature_dim: usize, vocab_size: usize) -> ModelConfig {
        ModelConfig {
            feature_dim,
            vocab_size,
            embed_dim: 256,
            hidden: 256,
            dropout: 0.5,
        }
    }
}

pub struct MergeModel {
    pub config: ModelConfig,
    fe: nn::Linear,
    embed: nn::Embedding,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    /// Keras' LSTM has one bias vector; libtorch's kernel takes two, so the second is a
    /// constant zero outside the VarStore (the parameter count stays the tutorial's).
    b_hh: Tensor,
    dec: nn::Linear,
    out: nn::Linear,
}

impl MergeModel {
    pub fn new(vs: &nn::Path, config: ModelConfig) -> MergeModel {
        let (d, v, e, h) = (
            config.feature_dim as i64,
            config.vocab_size as i64,
            config.embed_dim as i64,
            config.hidden as i64,
        );
        let fe = nn::linear(vs / "fe", d, h, Default::default());
        let embed = nn::embedding(
            vs / "embed",
            v,
            e,
            nn::EmbeddingConfig {
                padding_idx: 0,
                ..Default::default()
            },
        );
        let lstm = vs / "lstm";
        let bound = 1.0 / (h as f64).sqrt();
        let uniform = nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let w_ih = lstm.var("weight_ih", &[4 * h, e], uniform);
        let w_hh = lstm.var("weight_hh", &[4 * h, h], uniform);
        let b_ih = lstm.var("bias", &[4 * h], nn::Init::Const(0.0));
        let b_hh = Tensor::zeros([4 * h], (Kind::Float, vs.device()));
        let dec = nn::linear(vs / "dec", h, h, Default::default());
        let out = nn::linear(vs / "out", h, v, Default::default());
        MergeModel {
            config,
            fe,
            embed,
            w_ih,
            w_hh,
            b_ih,
            b_hh,
            dec,
            out,
        }
    }

    fn lstm_params(&self) -> [&Tensor; 4] {
        [&self.w_ih, &self.w_hh, &self.b_ih, &self.b_hh]
    }

    /// Image branch: `[B, D]` -> `[B, H]`.
    pub fn image_branch(&self, features: &Tensor, train: bool) -> Tensor {
        self.fe
            .forward(&features.dropout(self.config.dropout, train))
            .relu()
    }

    /// LSTM over `[B, T]` word ids from zero state: outputs `[B, T, H]` and final (h, c).
    fn words_branch(
        &self,
        words: &Tensor,
        state: Option<(&Tensor, &Tensor)>,
        train: bool,
    ) -> (Tensor, Tensor, Tensor) {
        let x = self
            .embed
            .forward(words)
            .dropout(self.config.dropout, train);
        let b = words.size()[0];
        let h = self.config.hidden as i64;
        let zeros;
        let hx: [&Tensor; 2] = match state {
            Some((h0, c0)) => [h0, c0],
            None => {
                zeros = Tensor::zeros([1, b, h], (Kind::Float, words.device()));
                [&zeros, &zeros]
            }
        };
        x.lstm(&hx, &self.lstm_params(), true, 1, 0.0, train, false, true)
    }

    /// The decoder head on merged states `[.., H]` -> logits `[.., V]`.
    fn head(&self, merged: &Tensor) -> Tensor {
        self.out.forward(&self.dec.forward(merged).relu())
    }

    /// Mean cross-entropy over the real target tokens (targets != 0) of a right-padded
    /// batch, and their count. `inputs` are the captions without their last token,
    /// `targets` without their first.
    pub fn loss(
        &self,
        features: &Tensor,
        inputs: &Tensor,
        targets: &Tensor,
        train: bool,
    ) -> (Tensor, i64) {
        let image = self.image_branch(features, train);
        let (seq, _, _) = self.words_branch(inputs, None, train);
        let merged = seq + image.unsqueeze(1);
        let mask = targets.ne(0);
        let count = mask.sum(Kind::Int64).int64_value(&[]);
        // Only real positions reach the (large) output layer.
        let h = self.config.hidden as i64;
        let real = merged.masked_select(&mask.unsqueeze(-1)).reshape([-1, h]);
        let logits = self.head(&real);
        let loss = logits.cross_entropy_for_logits(&targets.masked_select(&mask));
        (loss, count)
    }

    /// Next-word log-probabilities after the whole prefix `[B, T]` (no padding), re-running
    /// the LSTM from scratch: the tutorial's way, used to check [`MergeModel::step`].
    pub fn prefix_log_probs(&self, features: &Tensor, prefix: &Tensor) -> Tensor {
        let image = self.image_branch(features, false);
        let (seq, _, _) = self.words_branch(prefix, None, false);
        let last = seq.select(1, -1);
        self.head(&(last + image)).log_softmax(-1, Kind::Float)
    }

    /// One decoding step: previous words `[R]`, state (h, c) each `[1, R, H]` (None for
    /// zero) -> log-probabilities `[R, V]` and the new state.
    pub fn step(
        &self,
        image: &Tensor,
        words: &Tensor,
        state: Option<(&Tensor, &Tensor)>,
    ) -> (Tensor, Tensor, Tensor) {
        let (seq, h, c) = self.words_branch(&words.unsqueeze(1), state, false);
        let logp = self
            .head(&(seq.squeeze_dim(1) + image))
            .log_softmax(-1, Kind::Float);
        (logp, h, c)
    }

    /// Trainable parameters, as the tutorial's Keras summary counts them.
    pub fn parameter_count(&self) -> usize {
        let c = &self.config;
        let (d, v, e, h) = (c.feature_dim, c.vocab_size, c.embed_dim, c.hidden);
        (d * h + h) + v * e + (4 * h * (e + h) + 4 * h) + (h * h + h) + (h * v + v)
    }

    /// A Keras-style summary: layers, output shapes, parameter counts.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let (d, v, e, h) = (c.feature_dim, c.vocab_size, c.embed_dim, c.hidden);
        let rows: [(&str, String, usize); 10] = [
            ("input_features (Input)", format!("(None, {d})"), 0),
            ("input_words (Input)", "(None, T)".into(), 0),
            ("dropout_features (Dropout)", format!("(None, {d})"), 0),
            ("embedding (Embedding)", format!("(None, T, {e})"), v * e),
            ("fe (Dense, relu)", format!("(None, {h})"), d * h + h),
            ("dropout_words (Dropout)", format!("(None, T, {e})"), 0),
            (
                "lstm (LSTM)",
                format!("(None, {h})"),
                4 * h * (e + h) + 4 * h,
            ),
            ("add (Add)", format!("(None, {h})"), 0),
            ("dec (Dense, relu)", format!("(None, {h})"), h * h + h),
            ("out (Dense, softmax)", format!("(None, {v})"), h * v + v),
        ];
        let mut s = format!(
            "{:<30}{:<20}{:>10}\n{}\n",
            "Layer (type)",
            "Output Shape",
            "Param #",
            "=".repeat(60)
        );
        for (name, shape, params) in rows {
            s.push_str(&format!("{name:<30}{shape:<20}{params:>10}\n"));
        }
        s.push_str(&format!(
            "{}\nTotal params: {}\n",
            "=".repeat(60),
            self.parameter_count()
        ));
        s
    }

    /// The parameters as the ONNX decoder graph takes them.
    pub fn decoder_params(&self) -> crate::onnx::DecoderParams {
        let v = |t: &Tensor| -> Vec<f32> {
            Vec::<f32>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))
                .expect("f32 parameters")
        };
        let c = &self.config;
        crate::onnx::DecoderParams {
            feature_dim: c.feature_dim,
            vocab_size: c.vocab_size,
            embed_dim: c.embed_dim,
            hidden: c.hidden,
            fe_w: v(&self.fe.ws),
            fe_b: v(self.fe.bs.as_ref().expect("fe has a bias")),
            embed: v(&self.embed.ws),
            w_ih: v(&self.w_ih),
            w_hh: v(&self.w_hh),
            b_ih: v(&(&self.b_ih + &self.b_hh)),
            dec_w: v(&self.dec.ws),
            dec_b: v(self.dec.bs.as_ref().expect("dec has a bias")),
            out_w: v(&self.out.ws),
            out_b: v(self.out.bs.as_ref().expect("out has a bias")),
        }
    }

    pub fn device(&self) -> Device {
        self.w_ih.device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (nn::VarStore, MergeModel) {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let config = ModelConfig {
            feature_dim: 8,
            vocab_size: 12,
            embed_dim: 6,
            hidden: 5,
            dropout: 0.5,
        };
        let model = MergeModel::new(&vs.root(), config);
        (vs, model)
    }

    /// The whole-caption masked loss equals the tutorial's mean over (image, prefix) ->
    /// next-word pairs, each pair re-run from scratch.
    #[test]
    fn whole_sequence_loss_equals_the_per_pair_loss() {
        let (_vs, model) = tiny();
        let captions: [&[i64]; 3] = [&[1, 4, 5, 2], &[1, 7, 3, 9, 8, 2], &[1, 2]];
        let features = Tensor::randn([3, 8], (Kind::Float, Device::Cpu));
        let t = 5;
        let mut inputs = vec![0i64; 3 * t];
        let mut targets = vec![0i64; 3 * t];
        for (b, c) in captions.iter().enumerate() {
            for j in 0..c.len() - 1 {
                inputs[b * t + j] = c[j];
                targets[b * t + j] = c[j + 1];
            }
        }
        let inputs = Tensor::from_slice(&inputs).reshape([3, t as i64]);
        let targets = Tensor::from_slice(&targets).reshape([3, t as i64]);
        let (loss, count) = model.loss(&features, &inputs, &targets, false);
        let (mut sum, mut pairs) = (0.0, 0);
        for (b, c) in captions.iter().enumerate() {
            for i in 1..c.len() {
                let prefix = Tensor::from_slice(&c[..i]).unsqueeze(0);
                let logp = model.prefix_log_probs(&features.narrow(0, b as i64, 1), &prefix);
                sum -= logp.double_value(&[0, c[i]]);
                pairs += 1;
            }
        }
        assert_eq!(count, pairs);
        let per_pair = sum / pairs as f64;
        let whole = loss.double_value(&[]);
        assert!((whole - per_pair).abs() < 1e-5, "{whole} vs {per_pair}");
    }

    /// Stepping the LSTM word by word with carried state equals re-running the prefix.
    #[test]
    fn stepping_equals_rerunning_the_prefix() {
        let (_vs, model) = tiny();
        let features = Tensor::randn([1, 8], (Kind::Float, Device::Cpu));
        let words = [1i64, 6, 3, 10];
        let image = model.image_branch(&features, false);
        let mut state: Option<(Tensor, Tensor)> = None;
        for i in 0..words.len() {
            let (logp, h, c) = model.step(
                &image,
                &Tensor::from_slice(&words[i..=i]),
                state.as_ref().map(|(h, c)| (h, c)),
            );
            let want =
                model.prefix_log_probs(&features, &Tensor::from_slice(&words[..=i]).unsqueeze(0));
            let diff = (&logp - &want).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "step {i}: {diff}");
            state = Some((h, c));
        }
    }

    #[test]
    fn save_and_load_give_identical_outputs() {
        let (vs, model) = tiny();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        vs.save(&path).unwrap();
        let mut vs2 = nn::VarStore::new(Device::Cpu);
        tch::manual_seed(99);
        let model2 = MergeModel::new(&vs2.root(), model.config.clone());
        vs2.load(&path).unwrap();
        let features = Tensor::randn([2, 8], (Kind::Float, Device::Cpu));
        let prefix = Tensor::from_slice(&[1i64, 4, 7, 1, 3, 3]).reshape([2, 3]);
        let a = model.prefix_log_probs(&features, &prefix);
        let b = model2.prefix_log_probs(&features, &prefix);
        assert_eq!((&a - &b).abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn parameter_count_matches_the_tutorial_and_the_var_store() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = MergeModel::new(&vs.root(), ModelConfig::tutorial(4096, 7579));
        assert_eq!(model.parameter_count(), 5_527_963);
        let stored: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(stored as usize, 5_527_963);
        assert!(model.summary().contains("Total params: 5527963"));
    }
}

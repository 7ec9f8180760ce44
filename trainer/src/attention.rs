//! The soft-attention captioner of "Show, Attend and Tell" (Xu et al. 2015) in tch.
//!
//! regions `[B, R, C]` (the encoder's last feature map, `extract --spatial`)
//! - initial state: `h0 = tanh(init_h(mean regions))`, `c0 = tanh(init_c(mean regions))`;
//! - at every step, additive attention over the regions:
//!   `e = full_att(tanh(enc_att(regions) + dec_att(h)))`, `α = softmax(e)` over the R regions,
//!   context `z = β · Σ α_i regions_i` with the gating scalar `β = sigmoid(f_beta(h))`
//!   (one gate per channel, as the paper's Section 4.2.1 and most reimplementations);
//! - `(h, c) = LSTMCell([embed(word); z], (h, c))`; next-word logits `out(dropout(h))`.
//!
//! Training adds the doubly stochastic regulariser `λ · mean_i (1 − Σ_t α_ti)²` (over the
//! regions and the captions; steps past a caption's end are left out), which pushes the
//! model to look at every region over the whole caption.
//!
//! [`AttentionModel::step`] is the one-step decoder: (regions, previous word, h, c) →
//! (log-probabilities, h, c, α); the whole-caption [`AttentionModel::loss`] runs the very
//! same step, so the two cannot drift apart (a test recomputes the loss step by step).

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Model sizes and training weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionConfig {
    /// Channels per region (`C`).
    pub feature_dim: usize,
    pub vocab_size: usize,
    pub embed_dim: usize,
    pub hidden: usize,
    /// Size of the additive attention's hidden layer.
    pub attention_dim: usize,
    /// Dropout before the output layer.
    pub dropout: f64,
    /// λ of the doubly stochastic regulariser.
    pub alpha_c: f64,
}

impl AttentionConfig {
    /// Sizes for a CPU-trainable model on Flickr8k.
    pub fn standard(feature_dim: usize, vocab_size: usize) -> AttentionConfig {
        AttentionConfig {
            feature_dim,
            vocab_size,
            embed_dim: 256,
            hidden: 512,
            attention_dim: 256,
            dropout: 0.5,
            alpha_c: 1.0,
        }
    }
}

/// One caption batch's losses.
pub struct AttentionLoss {
    /// Mean cross-entropy over the real target tokens (what checkpoints are chosen by).
    pub cross_entropy: Tensor,
    /// The doubly stochastic regulariser, already weighted by λ.
    pub regulariser: Tensor,
    /// Real target tokens.
    pub count: i64,
}

impl AttentionLoss {
    /// What the optimiser minimises.
    pub fn total(&self) -> Tensor {
        &self.cross_entropy + &self.regulariser
    }
}

/// Regions with their attention keys (`enc_att(regions)`), computed once per caption.
pub struct Regions {
    pub regions: Tensor,
    pub keys: Tensor,
}

impl Regions {
    /// The rows `index` (a 1-D int64 tensor; rows may repeat), e.g. one per beam.
    pub fn select(&self, index: &Tensor) -> Regions {
        Regions {
            regions: self.regions.index_select(0, index),
            keys: self.keys.index_select(0, index),
        }
    }
}

pub struct AttentionModel {
    pub config: AttentionConfig,
    init_h: nn::Linear,
    init_c: nn::Linear,
    enc_att: nn::Linear,
    dec_att: nn::Linear,
    full_att: nn::Linear,
    f_beta: nn::Linear,
    embed: nn::Embedding,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    out: nn::Linear,
}

impl AttentionModel {
    pub fn new(vs: &nn::Path, config: AttentionConfig) -> AttentionModel {
        let c = &config;
        let (d, v, e, h, a) = (
            c.feature_dim as i64,
            c.vocab_size as i64,
            c.embed_dim as i64,
            c.hidden as i64,
            c.attention_dim as i64,
        );
        let lin = |name: &str, i, o| nn::linear(vs / name, i, o, Default::default());
        let lstm = vs / "lstm";
        let bound = 1.0 / (h as f64).sqrt();
        let uniform = nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        AttentionModel {
            init_h: lin("init_h", d, h),
            init_c: lin("init_c", d, h),
            enc_att: lin("enc_att", d, a),
            dec_att: lin("dec_att", h, a),
            full_att: lin("full_att", a, 1),
            f_beta: lin("f_beta", h, d),
            embed: nn::embedding(
                vs / "embed",
                v,
                e,
                nn::EmbeddingConfig {
                    padding_idx: 0,
                    ..Default::default()
                },
            ),
            w_ih: lstm.var("weight_ih", &[4 * h, e + d], uniform),
            w_hh: lstm.var("weight_hh", &[4 * h, h], uniform),
            b_ih: lstm.var("bias_ih", &[4 * h], uniform),
            b_hh: lstm.var("bias_hh", &[4 * h], uniform),
            out: lin("out", h, v),
            config,
        }
    }

    /// `[B, R, C]` regions (any float kind) → the per-caption attention inputs.
    pub fn regions(&self, regions: &Tensor) -> Regions {
        let regions = regions.to_kind(Kind::Float);
        let keys = self.enc_att.forward(&regions);
        Regions { regions, keys }
    }

    /// The initial LSTM state from the mean region.
    pub fn initial_state(&self, r: &Regions) -> (Tensor, Tensor) {
        let mean = r.regions.mean_dim(1, false, Kind::Float);
        (
            self.init_h.forward(&mean).tanh(),
            self.init_c.forward(&mean).tanh(),
        )
    }

    /// One decoding step: previous words `[B]`, state (h, c) `[B, H]` → logits `[B, V]`,
    /// the new state and the attention weights `[B, R]`.
    fn step_logits(
        &self,
        r: &Regions,
        words: &Tensor,
        h: &Tensor,
        c: &Tensor,
        train: bool,
    ) -> (Tensor, Tensor, Tensor, Tensor) {
        let scores = self
            .full_att
            .forward(&(&r.keys + self.dec_att.forward(h).unsqueeze(1)).tanh())
            .squeeze_dim(2);
        let alpha = scores.softmax(1, Kind::Float);
        let context = (&r.regions * alpha.unsqueeze(2)).sum_dim_intlist(1, false, Kind::Float);
        let gate = self.f_beta.forward(h).sigmoid();
        let x = Tensor::cat(&[self.embed.forward(words), gate * context], 1);
        let (h, c) = x.lstm_cell(
            &[h, c],
            &self.w_ih,
            &self.w_hh,
            Some(&self.b_ih),
            Some(&self.b_hh),
        );
        let logits = self.out.forward(&h.dropout(self.config.dropout, train));
        (logits, h, c, alpha)
    }

    /// One decoding step (inference): log-probabilities `[B, V]`, new (h, c), α `[B, R]`.
    pub fn step(
        &self,
        r: &Regions,
        words: &Tensor,
        h: &Tensor,
        c: &Tensor,
    ) -> (Tensor, Tensor, Tensor, Tensor) {
        let (logits, h, c, alpha) = self.step_logits(r, words, h, c, false);
        (logits.log_softmax(-1, Kind::Float), h, c, alpha)
    }

    /// Teacher-forced losses of a right-padded batch: `inputs` are the captions without
    /// their last token, `targets` without their first (0 = padding).
    pub fn loss(
        &self,
        regions: &Tensor,
        inputs: &Tensor,
        targets: &Tensor,
        train: bool,
    ) -> AttentionLoss {
        let r = self.regions(regions);
        let (mut h, mut c) = self.initial_state(&r);
        let steps = inputs.size()[1];
        let mask = targets.ne(0);
        let mut logits = Vec::with_capacity(steps as usize);
        let mut attention = Tensor::zeros_like(&r.regions.select(2, 0));
        for t in 0..steps {
            let (l, h2, c2, alpha) = self.step_logits(&r, &inputs.select(1, t), &h, &c, train);
            let real = mask.select(1, t).unsqueeze(1).to_kind(Kind::Float);
            attention += alpha * real;
            logits.push(l);
            (h, c) = (h2, c2);
        }
        let logits = Tensor::stack(&logits, 1);
        let count = mask.sum(Kind::Int64).int64_value(&[]);
        let v = self.config.vocab_size as i64;
        let cross_entropy = logits
            .masked_select(&mask.unsqueeze(-1))
            .reshape([-1, v])
            .cross_entropy_for_logits(&targets.masked_select(&mask));
        let regulariser = (-attention + 1.0).square().mean(Kind::Float) * self.config.alpha_c;
        AttentionLoss {
            cross_entropy,
            regulariser,
            count,
        }
    }

    /// The weights as plain f32 arrays, for the ONNX writer ([`crate::onnx::attention_step`]).
    pub fn params(&self) -> crate::onnx::AttentionParams {
        let v = |t: &Tensor| -> Vec<f32> {
            Vec::<f32>::try_from(
                t.to_device(tch::Device::Cpu)
                    .to_kind(Kind::Float)
                    .flatten(0, -1),
            )
            .expect("f32 parameters")
        };
        let b = |l: &nn::Linear| v(l.bs.as_ref().expect("linear layers have a bias"));
        crate::onnx::AttentionParams {
            config: self.config.clone(),
            init_h: (v(&self.init_h.ws), b(&self.init_h)),
            init_c: (v(&self.init_c.ws), b(&self.init_c)),
            enc_att: (v(&self.enc_att.ws), b(&self.enc_att)),
            dec_att: (v(&self.dec_att.ws), b(&self.dec_att)),
            full_att: (v(&self.full_att.ws), b(&self.full_att)),
            f_beta: (v(&self.f_beta.ws), b(&self.f_beta)),
            embed: v(&self.embed.ws),
            w_ih: v(&self.w_ih),
            w_hh: v(&self.w_hh),
            bias: v(&(&self.b_ih + &self.b_hh)),
            out: (v(&self.out.ws), b(&self.out)),
        }
    }

    /// Trainable parameters.
    pub fn parameter_count(&self) -> usize {
        let c = &self.config;
        let (d, v, e, h, a) = (
            c.feature_dim,
            c.vocab_size,
            c.embed_dim,
            c.hidden,
            c.attention_dim,
        );
        2 * (d * h + h)
            + (d * a + a)
            + (h * a + a)
            + (a + 1)
            + (h * d + d)
            + v * e
            + (4 * h * (e + d) + 4 * h * h + 8 * h)
            + (h * v + v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn tiny() -> (nn::VarStore, AttentionModel) {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let config = AttentionConfig {
            feature_dim: 12,
            vocab_size: 20,
            embed_dim: 8,
            hidden: 16,
            attention_dim: 10,
            dropout: 0.5,
            alpha_c: 1.0,
        };
        let model = AttentionModel::new(&vs.root(), config);
        (vs, model)
    }

    /// Right-padded captions of different lengths (start = 1, end = 2).
    fn batch() -> (Tensor, Tensor, Tensor) {
        let captions: [&[i64]; 3] = [&[1, 5, 6, 7, 2], &[1, 9, 2], &[1, 3, 4, 10, 11, 12, 2]];
        let t = captions.iter().map(|c| c.len() - 1).max().unwrap();
        let (mut inputs, mut targets) = (vec![0i64; 3 * t], vec![0i64; 3 * t]);
        for (b, c) in captions.iter().enumerate() {
            for (j, w) in c.windows(2).enumerate() {
                inputs[b * t + j] = w[0];
                targets[b * t + j] = w[1];
            }
        }
        let regions = Tensor::randn([3, 5, 12], (Kind::Float, Device::Cpu));
        (
            regions,
            Tensor::from_slice(&inputs).reshape([3, t as i64]),
            Tensor::from_slice(&targets).reshape([3, t as i64]),
        )
    }

    #[test]
    fn attention_weights_sum_to_one_over_the_regions() {
        let (_vs, m) = tiny();
        let (regions, inputs, _) = batch();
        let r = m.regions(&regions);
        let (h, c) = m.initial_state(&r);
        let (logp, _, _, alpha) = m.step(&r, &inputs.select(1, 0), &h, &c);
        assert_eq!(alpha.size(), [3, 5]);
        let sums = alpha.sum_dim_intlist(1, false, Kind::Float);
        let worst = (sums - 1.0).abs().max().double_value(&[]);
        assert!(worst < 1e-6, "{worst}");
        assert!(alpha.min().double_value(&[]) > 0.0);
        let probs = logp.exp().sum_dim_intlist(1, false, Kind::Float);
        assert!((probs - 1.0).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn the_whole_caption_loss_equals_the_step_by_step_loss() {
        let (_vs, m) = tiny();
        let (regions, inputs, targets) = batch();
        let loss = m.loss(&regions, &inputs, &targets, false);
        // Recompute with inference steps, one caption at a time, no padding at all.
        let (mut nll, mut n) = (0.0, 0);
        let mut reg = 0.0;
        for b in 0..3 {
            let r = m.regions(&regions.narrow(0, b, 1));
            let (mut h, mut c) = m.initial_state(&r);
            let mut seen = Tensor::zeros([1, 5], (Kind::Float, Device::Cpu));
            for t in 0..inputs.size()[1] {
                let target = targets.int64_value(&[b, t]);
                if target == 0 {
                    break;
                }
                let (logp, h2, c2, alpha) =
                    m.step(&r, &inputs.narrow(0, b, 1).select(1, t), &h, &c);
                nll -= logp.double_value(&[0, target]);
                n += 1;
                seen += alpha;
                (h, c) = (h2, c2);
            }
            reg += (-seen + 1.0).square().sum(Kind::Float).double_value(&[]);
        }
        assert_eq!(loss.count, n);
        let ce = loss.cross_entropy.double_value(&[]);
        assert!(
            (ce - nll / n as f64).abs() < 1e-5,
            "{ce} vs {}",
            nll / n as f64
        );
        let want_reg = reg / (3.0 * 5.0);
        let got_reg = loss.regulariser.double_value(&[]);
        assert!((got_reg - want_reg).abs() < 1e-5, "{got_reg} vs {want_reg}");
    }

    #[test]
    fn a_few_adam_steps_lower_the_loss() {
        use tch::nn::OptimizerConfig;
        let (vs, m) = tiny();
        let (regions, inputs, targets) = batch();
        let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
        let first = m
            .loss(&regions, &inputs, &targets, false)
            .cross_entropy
            .double_value(&[]);
        for _ in 0..40 {
            let loss = m.loss(&regions, &inputs, &targets, true);
            opt.backward_step(&loss.total());
        }
        let last = m
            .loss(&regions, &inputs, &targets, false)
            .cross_entropy
            .double_value(&[]);
        assert!(last < 0.5 * first, "loss {first} -> {last}");
        let counted: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(counted as usize, m.parameter_count());
    }
}

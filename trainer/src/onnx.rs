//! The ONNX writer: `ModelProto`s built with `tract_onnx::pb` and encoded with `prost`.
//!
//! Written by hand because no maintained Rust crate writes ONNX; the graphs are small and
//! come straight from the layer lists in [`crate::encoders`] (the same ones that build
//! the tch modules) and from the merge model's parameters, so nothing is described twice.
//!
//! Encoder graphs are emitted by one walk over the (BatchNorm-folded) layers in two
//! modes: `f32`, which also names the tensors whose ranges calibration needs, and `int8`,
//! which consumes those ranges in the same order: `QLinearConv` with per-output-channel
//! int8 weights and activations. A ReLU or ReLU6 after a convolution is folded into
//! the int8 output range (zero point 0, top at the calibrated maximum, at most 6), so
//! the integer kernel's saturation applies it.

use std::collections::HashMap;

use prost::Message;
use tract_onnx::pb::{
    self, attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
};

use crate::encoders::{EncoderSpec, Op};

/// ONNX opset the graphs use (Clip with min/max inputs, Split with a `split` input).
pub const OPSET: i64 = 13;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("parameter {0:?} is missing")]
    MissingParameter(String),
    #[error("unsupported layer order in the encoder description: {0}")]
    Layout(String),
    #[error("calibration gave {got} ranges; the graph needs {want}")]
    Calibration { got: usize, want: usize },
}

/// A graph dimension: fixed or the symbolic batch.
#[derive(Debug, Clone, Copy)]
pub enum Dim {
    Batch,
    Fixed(usize),
}

/// Builds one graph; every node has one output unless made with [`GraphBuilder::node_n`].
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
    counter: usize,
}

fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Batch => tensor_shape_proto::dimension::Value::DimParam("batch".into()),
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
            }),
        })
        .collect();
    pb::ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

pub fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

impl GraphBuilder {
    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    fn init_raw(&mut self, hint: &str, dims: &[usize], elem: DataType, raw: Vec<u8>) -> String {
        let name = self.fresh(hint);
        self.initializers.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: elem as i32,
            raw_data: raw,
            ..Default::default()
        });
        name
    }

    pub fn f32s(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init_raw(hint, dims, DataType::Float, raw)
    }

    /// Stored as float16 and cast to float32 by the graph (halves the file; tract folds
    /// the cast into the constant at load time, so inference still runs in f32).
    pub fn f16s_as_f32(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> String {
        let raw = data
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let stored = self.init_raw(hint, dims, DataType::Float16, raw);
        self.node(
            "Cast",
            &[&stored],
            vec![attr_int("to", DataType::Float as i64)],
        )
    }

    pub fn i64s(&mut self, hint: &str, dims: &[usize], data: &[i64]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init_raw(hint, dims, DataType::Int64, raw)
    }

    pub fn i32s(&mut self, hint: &str, dims: &[usize], data: &[i32]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init_raw(hint, dims, DataType::Int32, raw)
    }

    pub fn i8s(&mut self, hint: &str, dims: &[usize], data: &[i8]) -> String {
        let raw = data.iter().map(|&v| v as u8).collect();
        self.init_raw(hint, dims, DataType::Int8, raw)
    }

    /// A node with `outputs` outputs; returns their names.
    pub fn node_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
        outputs: usize,
    ) -> Vec<String> {
        let names: Vec<String> = (0..outputs)
            .map(|_| self.fresh(&op.to_lowercase()))
            .collect();
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: names.clone(),
            name: names[0].clone(),
            op_type: op.to_owned(),
            attribute: attrs,
            ..Default::default()
        });
        names
    }

    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> String {
        self.node_n(op, inputs, attrs, 1).remove(0)
    }

    pub fn input(&mut self, name: &str, elem: DataType, dims: &[Dim]) {
        self.inputs.push(value_info(name, elem, dims));
    }

    /// Declare graph output `name`, produced as tensor `from`.
    pub fn output(&mut self, name: &str, from: &str, elem: DataType, dims: &[Dim]) {
        self.nodes.push(pb::NodeProto {
            input: vec![from.to_owned()],
            output: vec![name.to_owned()],
            name: format!("{name}_identity"),
            op_type: "Identity".into(),
            ..Default::default()
        });
        self.outputs.push(value_info(name, elem, dims));
    }

    pub fn finish(self, graph_name: &str, doc: &str) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: 7,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "caption-train".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.to_owned(),
            graph: Some(pb::GraphProto {
                node: self.nodes,
                name: graph_name.to_owned(),
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Serialise a model to ONNX bytes.
pub fn encode(model: &pb::ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Activation applied after a convolution or linear layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    None,
    Relu,
    Relu6,
}

/// An encoder layer after folding BatchNorm into the convolution before it and the
/// activation into the layer it follows.
#[derive(Debug, Clone)]
pub enum Layer {
    Conv {
        name: String,
        w: Vec<f32>,
        b: Vec<f32>,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        pads: [usize; 4],
        groups: usize,
        act: Act,
    },
    Linear {
        name: String,
        w: Vec<f32>,
        b: Vec<f32>,
        cin: usize,
        cout: usize,
        act: Act,
    },
    MaxPool {
        kernel: usize,
        stride: usize,
    },
    GlobalAvgPool,
    Flatten,
    Residual(Vec<Layer>),
}

fn param<'a>(params: &'a HashMap<String, Vec<f32>>, name: &str) -> Result<&'a [f32], OnnxError> {
    params
        .get(name)
        .map(Vec::as_slice)
        .ok_or_else(|| OnnxError::MissingParameter(name.to_owned()))
}

fn take_act(ops: &[Op], i: &mut usize) -> Act {
    match ops.get(*i) {
        Some(Op::Relu) => {
            *i += 1;
            Act::Relu
        }
        Some(Op::Relu6) => {
            *i += 1;
            Act::Relu6
        }
        _ => Act::None,
    }
}

/// Fold an encoder description into [`Layer`]s: `Conv → BatchNorm → act` becomes one
/// convolution with adjusted weights and bias.
pub fn fold(ops: &[Op], params: &HashMap<String, Vec<f32>>) -> Result<Vec<Layer>, OnnxError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        let op = &ops[i];
        i += 1;
        match op {
            Op::Conv2d {
                name,
                cin,
                cout,
                kernel,
                stride,
                pads,
                groups,
                bias,
            } => {
                let mut w = param(params, &format!("{name}.weight"))?.to_vec();
                let mut b = if *bias {
                    param(params, &format!("{name}.bias"))?.to_vec()
                } else {
                    vec![0.0; *cout]
                };
                if let Some(Op::BatchNorm { name: bn, eps, .. }) = ops.get(i) {
                    i += 1;
                    let p = |s: &str| param(params, &format!("{bn}.{s}"));
                    let (gamma, beta, mean, var) = (
                        p("weight")?,
                        p("bias")?,
                        p("running_mean")?,
                        p("running_var")?,
                    );
                    let per = w.len() / cout;
                    for c in 0..*cout {
                        let k = gamma[c] / (var[c] + *eps as f32).sqrt();
                        for v in &mut w[c * per..(c + 1) * per] {
                            *v *= k;
                        }
                        b[c] = (b[c] - mean[c]) * k + beta[c];
                    }
                }
                let act = take_act(ops, &mut i);
                out.push(Layer::Conv {
                    name: name.clone(),
                    w,
                    b,
                    cin: *cin,
                    cout: *cout,
                    kernel: *kernel,
                    stride: *stride,
                    pads: *pads,
                    groups: *groups,
                    act,
                });
            }
            Op::Linear { name, cin, cout } => {
                let w = param(params, &format!("{name}.weight"))?.to_vec();
                let b = param(params, &format!("{name}.bias"))?.to_vec();
                let act = take_act(ops, &mut i);
                out.push(Layer::Linear {
                    name: name.clone(),
                    w,
                    b,
                    cin: *cin,
                    cout: *cout,
                    act,
                });
            }
            Op::MaxPool2d { kernel, stride } => out.push(Layer::MaxPool {
                kernel: *kernel,
                stride: *stride,
            }),
            Op::GlobalAvgPool => out.push(Layer::GlobalAvgPool),
            Op::Flatten => out.push(Layer::Flatten),
            Op::Residual(body) => out.push(Layer::Residual(fold(body, params)?)),
            Op::BatchNorm { name, .. } => {
                return Err(OnnxError::Layout(format!(
                    "BatchNorm {name} does not follow a convolution"
                )))
            }
            Op::Relu | Op::Relu6 => {
                return Err(OnnxError::Layout(
                    "an activation that follows neither a convolution nor a linear layer".into(),
                ))
            }
        }
    }
    Ok(out)
}

/// How the encoder's fully connected layers are stored in an int8 graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FcScheme {
    /// Float `Gemm` on dequantized input.
    F32,
    /// int8 weights as a 1x1 `QLinearConv` over `[N, C, 1, 1]`.
    #[value(name = "int8-conv1x1")]
    Int8Conv1x1,
}

/// How the depthwise convolutions of an int8 encoder are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DepthwiseScheme {
    F32,
    Int8,
}

impl FcScheme {
    pub fn name(self) -> &'static str {
        match self {
            FcScheme::F32 => "f32",
            FcScheme::Int8Conv1x1 => "int8-conv1x1",
        }
    }
}

impl std::str::FromStr for FcScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(FcScheme::F32),
            "int8-conv1x1" => Ok(FcScheme::Int8Conv1x1),
            other => Err(format!(
                "unknown fully connected scheme {other:?}: expected \"f32\" or \"int8-conv1x1\""
            )),
        }
    }
}

/// int8 affine quantization of a tensor: `real = scale * (q - zero_point)`. Activations
/// are int8 (not int8) because tract's `QLinearConv` wants input and weights of one type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i8,
}

/// int8 parameters covering `[lo, hi]` (widened to include 0, as ONNX requires that 0 is
/// exactly representable); after a ReLU the range starts at 0 (zero point -128), after
/// ReLU6 it ends at 6 at most, so saturation applies the activation.
pub fn qparams(lo: f32, hi: f32, act: Act) -> QParams {
    let (mut lo, mut hi) = (lo.min(0.0), hi.max(0.0));
    match act {
        Act::None => {}
        Act::Relu => lo = 0.0,
        Act::Relu6 => {
            lo = 0.0;
            hi = hi.min(6.0);
        }
    }
    if hi - lo < 1e-6 {
        hi = lo + 1e-6;
    }
    let scale = (hi - lo) / 255.0;
    let zero_point = (-128.0 - lo / scale).round().clamp(-128.0, 127.0) as i8;
    QParams { scale, zero_point }
}

/// Symmetric per-output-channel int8 weights: `(q, scales)`.
pub fn quantize_weights(w: &[f32], cout: usize) -> (Vec<i8>, Vec<f32>) {
    let per = w.len() / cout;
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(cout);
    for c in 0..cout {
        let row = &w[c * per..(c + 1) * per];
        let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        scales.push(s);
        q.extend(
            row.iter()
                .map(|v| (v / s).round().clamp(-127.0, 127.0) as i8),
        );
    }
    (q, scales)
}

/// A tensor of the graph being emitted.
#[derive(Debug, Clone)]
struct Value {
    name: String,
    /// Set when the tensor is int8.
    quant: Option<QParams>,
    /// For a float tensor of an int8 graph: how to quantize it when an int8 layer reads it
    /// (quantizing lazily keeps float paths, e.g. residual sums, in float).
    pending: Option<QParams>,
}

impl Value {
    fn float(name: String) -> Value {
        Value {
            name,
            quant: None,
            pending: None,
        }
    }
}

enum Mode<'a> {
    F32 {
        points: Vec<String>,
        storage: WeightStorage,
    },
    Int8 {
        ranges: &'a [(f32, f32)],
        fc: FcScheme,
        /// Depthwise (grouped) convolutions as int8 too, or kept in f32.
        depthwise: bool,
    },
}

struct Emitter<'a> {
    g: GraphBuilder,
    mode: Mode<'a>,
    next_point: usize,
    /// Counts of int8 and f32 layers, for the manifest.
    int8_layers: usize,
    f32_layers: usize,
}

impl Emitter<'_> {
    /// A calibration point: in f32 mode remember the tensor; in int8 mode return its range.
    fn point(&mut self, name: &str) -> (f32, f32) {
        self.next_point += 1;
        match &mut self.mode {
            Mode::F32 { points, .. } => {
                points.push(name.to_owned());
                (0.0, 0.0)
            }
            Mode::Int8 { ranges, .. } => ranges[self.next_point - 1],
        }
    }

    fn dequant(&mut self, v: &Value) -> String {
        match v.quant {
            None => v.name.clone(),
            Some(q) => {
                let s = self.g.f32s("scale", &[], &[q.scale]);
                let z = self.g.i8s("zp", &[], &[q.zero_point]);
                self.g.node("DequantizeLinear", &[&v.name, &s, &z], vec![])
            }
        }
    }

    fn quant(&mut self, name: &str, q: QParams) -> Value {
        let s = self.g.f32s("scale", &[], &[q.scale]);
        let z = self.g.i8s("zp", &[], &[q.zero_point]);
        Value {
            name: self.g.node("QuantizeLinear", &[name, &s, &z], vec![]),
            quant: Some(q),
            pending: None,
        }
    }

    /// `x` as int8: as it is, or quantized with its pending parameters.
    fn ensure_quant(&mut self, x: &Value) -> Value {
        match (x.quant, x.pending) {
            (Some(_), _) => x.clone(),
            (None, Some(q)) => self.quant(&x.name, q),
            (None, None) => unreachable!("every float tensor an int8 layer reads is calibrated"),
        }
    }

    fn act_f32(&mut self, x: String, act: Act) -> String {
        match act {
            Act::None => x,
            Act::Relu => self.g.node("Relu", &[&x], vec![]),
            Act::Relu6 => {
                let lo = self.g.f32s("min", &[], &[0.0]);
                let hi = self.g.f32s("max", &[], &[6.0]);
                self.g.node("Clip", &[&x, &lo, &hi], vec![])
            }
        }
    }

    /// A float layer's weights: float16-stored in an f32 graph that asks for it (tract
    /// folds the cast at load, so compute stays f32), else f32.
    fn weights(&mut self, dims: &[usize], w: &[f32]) -> String {
        match self.mode {
            Mode::F32 {
                storage: WeightStorage::F16,
                ..
            } => self.g.f16s_as_f32("w", dims, w),
            _ => self.g.f32s("w", dims, w),
        }
    }

    fn int8_mode(&self) -> Option<FcScheme> {
        match self.mode {
            Mode::Int8 { fc, .. } => Some(fc),
            Mode::F32 { .. } => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn qconv(
        &mut self,
        x: &Value,
        w: &[f32],
        b: &[f32],
        wdims: &[usize],
        attrs: Vec<pb::AttributeProto>,
        act: Act,
        range: (f32, f32),
    ) -> Value {
        let x = self.ensure_quant(x);
        let xq = x.quant.expect("quantized above");
        let cout = wdims[0];
        let (wq, ws) = quantize_weights(w, cout);
        let yq = qparams(range.0, range.1, act);
        let bias: Vec<i32> = b
            .iter()
            .zip(&ws)
            .map(|(b, s)| (b / (xq.scale * s)).round() as i32)
            .collect();
        let g = &mut self.g;
        let xs = g.f32s("x_scale", &[], &[xq.scale]);
        let xz = g.i8s("x_zp", &[], &[xq.zero_point]);
        let wn = g.i8s("w", wdims, &wq);
        let wsn = g.f32s("w_scale", &[cout], &ws);
        // Symmetric weights: one scalar zero point (tract broadcasts a per-channel scale but
        // not a per-channel zero point).
        let wz = g.i8s("w_zp", &[], &[0]);
        let ys = g.f32s("y_scale", &[], &[yq.scale]);
        let yz = g.i8s("y_zp", &[], &[yq.zero_point]);
        let bn = g.i32s("bias", &[cout], &bias);
        self.int8_layers += 1;
        Value {
            name: self.g.node(
                "QLinearConv",
                &[&x.name, &xs, &xz, &wn, &wsn, &wz, &ys, &yz, &bn],
                attrs,
            ),
            quant: Some(yq),
            pending: None,
        }
    }

    fn layers(&mut self, layers: &[Layer], mut x: Value) -> Value {
        for layer in layers {
            x = match layer {
                Layer::Conv {
                    w,
                    b,
                    cin,
                    cout,
                    kernel,
                    stride,
                    pads,
                    groups,
                    act,
                    ..
                } => {
                    let [t, l, bo, r] = *pads;
                    let attrs = vec![
                        attr_ints("kernel_shape", &[*kernel as i64; 2]),
                        attr_ints("strides", &[*stride as i64; 2]),
                        attr_ints("pads", &[t as i64, l as i64, bo as i64, r as i64]),
                        attr_int("group", *groups as i64),
                    ];
                    let wdims = [*cout, cin / groups, *kernel, *kernel];
                    let int8 = match self.mode {
                        Mode::Int8 { depthwise, .. } => *groups == 1 || depthwise,
                        Mode::F32 { .. } => false,
                    };
                    if int8 {
                        let range = self.point("");
                        self.qconv(&x, w, b, &wdims, attrs, *act, range)
                    } else {
                        let input = self.dequant(&x);
                        let wn = self.weights(&wdims, w);
                        let bn = self.g.f32s("b", &[*cout], b);
                        let y = self.g.node("Conv", &[&input, &wn, &bn], attrs);
                        let y = self.act_f32(y, *act);
                        let range = self.point(&y);
                        self.f32_layers += 1;
                        Value {
                            name: y,
                            quant: None,
                            pending: self.int8_mode().map(|_| qparams(range.0, range.1, *act)),
                        }
                    }
                }
                Layer::Linear {
                    w,
                    b,
                    cin,
                    cout,
                    act,
                    ..
                } => match self.int8_mode() {
                    Some(FcScheme::Int8Conv1x1) => {
                        let range = self.point("");
                        let x = self.ensure_quant(&x);
                        let shape = self.g.i64s("shape", &[4], &[0, *cin as i64, 1, 1]);
                        let x4 = Value {
                            name: self.g.node("Reshape", &[&x.name, &shape], vec![]),
                            quant: x.quant,
                            pending: None,
                        };
                        let attrs = vec![attr_ints("kernel_shape", &[1, 1])];
                        let y = self.qconv(&x4, w, b, &[*cout, *cin, 1, 1], attrs, *act, range);
                        Value {
                            name: self
                                .g
                                .node("Flatten", &[&y.name], vec![attr_int("axis", 1)]),
                            quant: y.quant,
                            pending: None,
                        }
                    }
                    mode => {
                        let input = self.dequant(&x);
                        let wn = self.weights(&[*cout, *cin], w);
                        let bn = self.g.f32s("b", &[*cout], b);
                        let y =
                            self.g
                                .node("Gemm", &[&input, &wn, &bn], vec![attr_int("transB", 1)]);
                        let y = self.act_f32(y, *act);
                        let range = self.point(&y);
                        self.f32_layers += 1;
                        Value {
                            name: y,
                            quant: None,
                            pending: mode.map(|_| qparams(range.0, range.1, *act)),
                        }
                    }
                },
                Layer::MaxPool { kernel, stride } => {
                    // Max commutes with a monotonic affine map: int8 pooling is exact.
                    let attrs = vec![
                        attr_ints("kernel_shape", &[*kernel as i64; 2]),
                        attr_ints("strides", &[*stride as i64; 2]),
                    ];
                    Value {
                        name: self.g.node("MaxPool", &[&x.name], attrs),
                        ..x
                    }
                }
                Layer::GlobalAvgPool => {
                    let input = self.dequant(&x);
                    let pooled = self.g.node("GlobalAveragePool", &[&input], vec![]);
                    Value::float(
                        self.g
                            .node("Flatten", &[&pooled], vec![attr_int("axis", 1)]),
                    )
                }
                Layer::Flatten => Value {
                    name: self
                        .g
                        .node("Flatten", &[&x.name], vec![attr_int("axis", 1)]),
                    ..x
                },
                Layer::Residual(body) => {
                    let y = self.layers(body, x.clone());
                    let a = self.dequant(&x);
                    let b = self.dequant(&y);
                    let sum = self.g.node("Add", &[&a, &b], vec![]);
                    let range = self.point(&sum);
                    let int8 = self.int8_mode().is_some();
                    Value {
                        name: sum,
                        quant: None,
                        pending: int8.then(|| qparams(range.0, range.1, Act::None)),
                    }
                }
            };
        }
        x
    }
}

/// Name of the encoder graph's input and output (the bundle contract).
pub use caption_proto::manifest::{ENCODER_INPUT, ENCODER_OUTPUT};

/// An encoder graph and, for f32 graphs, the tensors calibration must observe (the graph
/// input, then every layer output in emission order).
pub struct EncoderGraph {
    pub model: pb::ModelProto,
    pub calibration_points: Vec<String>,
    pub int8_layers: usize,
    pub f32_layers: usize,
}

/// `regions`: write the last feature map as `[N, regions, C]` (attention bundles) instead
/// of the feature vector (the layers then end before the pooling).
fn emit_encoder(
    spec: &EncoderSpec,
    layers: &[Layer],
    mode: Mode<'_>,
    regions: Option<usize>,
) -> EncoderGraph {
    let s = spec.preprocessing.size as usize;
    let mut e = Emitter {
        g: GraphBuilder::default(),
        mode,
        next_point: 0,
        int8_layers: 0,
        f32_layers: 0,
    };
    let dims = [Dim::Batch, Dim::Fixed(3), Dim::Fixed(s), Dim::Fixed(s)];
    e.g.input(ENCODER_INPUT, DataType::Float, &dims);
    let range = e.point(ENCODER_INPUT);
    let x = Value {
        name: ENCODER_INPUT.into(),
        quant: None,
        pending: e.int8_mode().map(|_| qparams(range.0, range.1, Act::None)),
    };
    let y = e.layers(layers, x);
    let y = e.dequant(&y);
    let (y, out_dims, out_doc) = match regions {
        None => (
            y,
            vec![Dim::Batch, Dim::Fixed(spec.feature_dim)],
            format!("features [N,{}]", spec.feature_dim),
        ),
        Some(r) => {
            // [N, C, H, W] -> [N, C, H*W] -> [N, H*W, C]: one row of channels per region.
            let c = spec.spatial_channels();
            let shape = e.g.i64s("regions_shape", &[3], &[0, c as i64, -1]);
            let flat = e.g.node("Reshape", &[&y, &shape], vec![]);
            let t =
                e.g.node("Transpose", &[&flat], vec![attr_ints("perm", &[0, 2, 1])]);
            (
                t,
                vec![Dim::Batch, Dim::Fixed(r), Dim::Fixed(c)],
                format!("regions [N,{r},{c}]"),
            )
        }
    };
    e.g.output(ENCODER_OUTPUT, &y, DataType::Float, &out_dims);
    let (points, precision) = match e.mode {
        Mode::F32 {
            points,
            storage: WeightStorage::F32,
        } => (points, "f32"),
        Mode::F32 {
            points,
            storage: WeightStorage::F16,
        } => (points, "f16 weights, f32 compute"),
        Mode::Int8 { .. } => (Vec::new(), "int8"),
    };
    EncoderGraph {
        model: e.g.finish(
            &format!("{}-encoder", spec.kind.name()),
            &format!(
                "{} image encoder ({precision}): normalised image [N,3,{s},{s}] -> {out_doc}",
                spec.kind.name(),
            ),
        ),
        calibration_points: points,
        int8_layers: e.int8_layers,
        f32_layers: e.f32_layers,
    }
}

/// The float32 encoder graph.
pub fn encoder_f32(spec: &EncoderSpec, layers: &[Layer]) -> EncoderGraph {
    encoder_float(spec, layers, WeightStorage::F32)
}

/// The float encoder graph with its weights stored as `storage` (compute is f32).
pub fn encoder_float(spec: &EncoderSpec, layers: &[Layer], storage: WeightStorage) -> EncoderGraph {
    emit_encoder(
        spec,
        layers,
        Mode::F32 {
            points: Vec::new(),
            storage,
        },
        None,
    )
}

/// The float encoder graph up to the last feature map, as `regions` rows of channels
/// (`layers` folded from [`EncoderSpec::spatial_ops`]): an attention bundle's encoder.
pub fn encoder_spatial(
    spec: &EncoderSpec,
    layers: &[Layer],
    storage: WeightStorage,
    regions: usize,
) -> EncoderGraph {
    emit_encoder(
        spec,
        layers,
        Mode::F32 {
            points: Vec::new(),
            storage,
        },
        Some(regions),
    )
}

/// The int8 encoder graph; `ranges[i]` is the observed `(min, max)` of the float graph's
/// `calibration_points[i]` (that of [`encoder_f32`], or of [`encoder_spatial`] when
/// `regions` is set: an attention bundle's encoder).
pub fn encoder_int8(
    spec: &EncoderSpec,
    layers: &[Layer],
    ranges: &[(f32, f32)],
    fc: FcScheme,
    depthwise: bool,
    regions: Option<usize>,
) -> Result<EncoderGraph, OnnxError> {
    let want = emit_encoder(
        spec,
        layers,
        Mode::F32 {
            points: Vec::new(),
            storage: WeightStorage::F32,
        },
        regions,
    )
    .calibration_points
    .len();
    if ranges.len() != want {
        return Err(OnnxError::Calibration {
            got: ranges.len(),
            want,
        });
    }
    Ok(emit_encoder(
        spec,
        layers,
        Mode::Int8 {
            ranges,
            fc,
            depthwise,
        },
        regions,
    ))
}

/// The merge model's parameters, as the decoder graph needs them (row-major, torch
/// layouts: linear weights `[out, in]`, LSTM gates in torch order i, f, g, o).
pub struct DecoderParams {
    pub feature_dim: usize,
    pub vocab_size: usize,
    pub embed_dim: usize,
    pub hidden: usize,
    pub fe_w: Vec<f32>,
    pub fe_b: Vec<f32>,
    pub embed: Vec<f32>,
    pub w_ih: Vec<f32>,
    pub w_hh: Vec<f32>,
    pub b_ih: Vec<f32>,
    pub dec_w: Vec<f32>,
    pub dec_b: Vec<f32>,
    pub out_w: Vec<f32>,
    pub out_b: Vec<f32>,
}

/// How weight matrices are stored in a float graph (decoder; f32 encoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightStorage {
    F32,
    /// float16 storage, float32 compute.
    F16,
}

impl WeightStorage {
    pub fn name(self) -> &'static str {
        match self {
            WeightStorage::F32 => "f32",
            WeightStorage::F16 => "f16",
        }
    }
}

impl From<WeightStorage> for caption_proto::manifest::Storage {
    fn from(s: WeightStorage) -> Self {
        match s {
            WeightStorage::F32 => caption_proto::manifest::Storage::F32,
            WeightStorage::F16 => caption_proto::manifest::Storage::F16,
        }
    }
}

/// One LSTM cell step on input `x` with state `[h, c]` and weights `[w_ih, bias, w_hh]`
/// (PyTorch layouts, gates i, f, g, o; `bias` = `b_ih + b_hh`): returns (h, c).
fn lstm_cell(
    g: &mut GraphBuilder,
    x: &str,
    [in_h, in_c]: [&str; 2],
    [w_ih, bias, w_hh]: [&str; 3],
    hidden: usize,
) -> (String, String) {
    let trans_b = || vec![attr_int("transB", 1)];
    let gx = g.node("Gemm", &[x, w_ih, bias], trans_b());
    let gh = g.node("Gemm", &[in_h, w_hh], trans_b());
    let gates = g.node("Add", &[&gx, &gh], vec![]);
    let split = g.i64s("split", &[4], &[hidden as i64; 4]);
    let parts = g.node_n("Split", &[&gates, &split], vec![attr_int("axis", 1)], 4);
    let i = g.node("Sigmoid", &[&parts[0]], vec![]);
    let f = g.node("Sigmoid", &[&parts[1]], vec![]);
    let gg = g.node("Tanh", &[&parts[2]], vec![]);
    let o = g.node("Sigmoid", &[&parts[3]], vec![]);
    let fc = g.node("Mul", &[&f, in_c], vec![]);
    let ig = g.node("Mul", &[&i, &gg], vec![]);
    let c_new = g.node("Add", &[&fc, &ig], vec![]);
    let tc = g.node("Tanh", &[&c_new], vec![]);
    (g.node("Mul", &[&o, &tc], vec![]), c_new)
}

/// Names of the decoder graph's inputs and outputs (the bundle contract).
pub use caption_proto::manifest::{DECODER_INPUTS, DECODER_OUTPUTS};

/// One decoding step: (features `[N,D]`, previous words `[N]` int64, h `[N,H]`, c `[N,H]`)
/// → (log-probabilities `[N,V]`, h, c). The same arithmetic as
/// [`crate::model::MergeModel::step`].
pub fn decoder(p: &DecoderParams, storage: WeightStorage) -> pb::ModelProto {
    let (d, v, e, h) = (p.feature_dim, p.vocab_size, p.embed_dim, p.hidden);
    let mut g = GraphBuilder::default();
    let [in_features, in_words, in_h, in_c] = DECODER_INPUTS;
    g.input(in_features, DataType::Float, &[Dim::Batch, Dim::Fixed(d)]);
    g.input(in_words, DataType::Int64, &[Dim::Batch]);
    g.input(in_h, DataType::Float, &[Dim::Batch, Dim::Fixed(h)]);
    g.input(in_c, DataType::Float, &[Dim::Batch, Dim::Fixed(h)]);
    let weight = |g: &mut GraphBuilder, hint: &str, dims: &[usize], data: &[f32]| match storage {
        WeightStorage::F32 => g.f32s(hint, dims, data),
        WeightStorage::F16 => g.f16s_as_f32(hint, dims, data),
    };
    let trans_b = || vec![attr_int("transB", 1)];
    // Image branch.
    let fe_w = weight(&mut g, "fe_w", &[h, d], &p.fe_w);
    let fe_b = g.f32s("fe_b", &[h], &p.fe_b);
    let fe = g.node("Gemm", &[in_features, &fe_w, &fe_b], trans_b());
    let fe = g.node("Relu", &[&fe], vec![]);
    // Word branch: one LSTM step.
    let table = weight(&mut g, "embed", &[v, e], &p.embed);
    let x = g.node("Gather", &[&table, in_words], vec![attr_int("axis", 0)]);
    let w_ih = weight(&mut g, "w_ih", &[4 * h, e], &p.w_ih);
    let b_ih = g.f32s("b_ih", &[4 * h], &p.b_ih);
    let w_hh = weight(&mut g, "w_hh", &[4 * h, h], &p.w_hh);
    let (h_new, c_new) = lstm_cell(&mut g, &x, [in_h, in_c], [&w_ih, &b_ih, &w_hh], h);
    // Merge and decode.
    let merged = g.node("Add", &[&fe, &h_new], vec![]);
    let dec_w = weight(&mut g, "dec_w", &[h, h], &p.dec_w);
    let dec_b = g.f32s("dec_b", &[h], &p.dec_b);
    let dh = g.node("Gemm", &[&merged, &dec_w, &dec_b], trans_b());
    let dh = g.node("Relu", &[&dh], vec![]);
    let out_w = weight(&mut g, "out_w", &[v, h], &p.out_w);
    let out_b = g.f32s("out_b", &[v], &p.out_b);
    let logits = g.node("Gemm", &[&dh, &out_w, &out_b], trans_b());
    let logp = g.node("LogSoftmax", &[&logits], vec![attr_int("axis", 1)]);
    let bh = [Dim::Batch, Dim::Fixed(h)];
    let [out_log_probs, out_h, out_c] = DECODER_OUTPUTS;
    g.output(
        out_log_probs,
        &logp,
        DataType::Float,
        &[Dim::Batch, Dim::Fixed(v)],
    );
    g.output(out_h, &h_new, DataType::Float, &bh);
    g.output(out_c, &c_new, DataType::Float, &bh);
    let precision = match storage {
        WeightStorage::F32 => "f32",
        WeightStorage::F16 => "f16 weights, f32 compute",
    };
    g.finish(
        "merge-decoder-step",
        &format!("merge caption model, one decoding step ({precision})"),
    )
}

/// The attention model's weights (row-major, PyTorch layouts: Linear weights `[out, in]`),
/// from [`crate::attention::AttentionModel::params`].
pub struct AttentionParams {
    pub config: crate::attention::AttentionConfig,
    /// (weight, bias) of each linear layer.
    pub init_h: (Vec<f32>, Vec<f32>),
    pub init_c: (Vec<f32>, Vec<f32>),
    pub enc_att: (Vec<f32>, Vec<f32>),
    pub dec_att: (Vec<f32>, Vec<f32>),
    pub full_att: (Vec<f32>, Vec<f32>),
    pub f_beta: (Vec<f32>, Vec<f32>),
    pub embed: Vec<f32>,
    pub w_ih: Vec<f32>,
    pub w_hh: Vec<f32>,
    /// `b_ih + b_hh`.
    pub bias: Vec<f32>,
    pub out: (Vec<f32>, Vec<f32>),
}

/// The attention decoder's inputs and outputs (by name; the edge binds them so).
pub use caption_proto::manifest::{
    ATTENTION_INIT_INPUTS, ATTENTION_INIT_OUTPUTS, ATTENTION_STEP_INPUTS, ATTENTION_STEP_OUTPUTS,
};

fn linear_weights(
    g: &mut GraphBuilder,
    storage: WeightStorage,
    hint: &str,
    (w, b): &(Vec<f32>, Vec<f32>),
    cin: usize,
) -> (String, String) {
    let cout = b.len();
    let w = match storage {
        WeightStorage::F32 => g.f32s(hint, &[cout, cin], w),
        WeightStorage::F16 => g.f16s_as_f32(hint, &[cout, cin], w),
    };
    (w, g.f32s(&format!("{hint}_b"), &[cout], b))
}

/// `x @ w.T + b` for `x` `[N, in]`.
fn gemm(g: &mut GraphBuilder, x: &str, (w, b): &(String, String)) -> String {
    g.node("Gemm", &[x, w, b], vec![attr_int("transB", 1)])
}

/// The attention decoder's start: regions `[N, R, C]` → (h, c) `[N, H]`, each
/// `tanh(Linear(mean region))`, and the attention keys `enc_att(regions)` `[N, R, A]`. The
/// same arithmetic as [`crate::attention::AttentionModel::initial_state`] and
/// [`crate::attention::AttentionModel::regions`].
pub fn attention_init(
    p: &AttentionParams,
    regions: usize,
    storage: WeightStorage,
) -> pb::ModelProto {
    let (c, h) = (p.config.feature_dim, p.config.hidden);
    let mut g = GraphBuilder::default();
    let [in_regions] = ATTENTION_INIT_INPUTS;
    g.input(
        in_regions,
        DataType::Float,
        &[Dim::Batch, Dim::Fixed(regions), Dim::Fixed(c)],
    );
    let mean = g.node(
        "ReduceMean",
        &[in_regions],
        vec![attr_ints("axes", &[1]), attr_int("keepdims", 0)],
    );
    let init_h = linear_weights(&mut g, storage, "init_h", &p.init_h, c);
    let init_c = linear_weights(&mut g, storage, "init_c", &p.init_c, c);
    let h0 = gemm(&mut g, &mean, &init_h);
    let h0 = g.node("Tanh", &[&h0], vec![]);
    let c0 = gemm(&mut g, &mean, &init_c);
    let c0 = g.node("Tanh", &[&c0], vec![]);
    let keys = attention_keys(&mut g, p, in_regions, storage);
    let bh = [Dim::Batch, Dim::Fixed(h)];
    let [out_h, out_c, out_keys] = ATTENTION_INIT_OUTPUTS;
    g.output(out_h, &h0, DataType::Float, &bh);
    g.output(out_c, &c0, DataType::Float, &bh);
    let a = p.config.attention_dim;
    g.output(
        out_keys,
        &keys,
        DataType::Float,
        &[Dim::Batch, Dim::Fixed(regions), Dim::Fixed(a)],
    );
    g.finish(
        "attention-init",
        "soft-attention caption model: initial state",
    )
}

/// The regions' attention keys `enc_att(regions)` `[N, R, A]`: the weight stored
/// transposed, `[C, A]`, for a plain MatMul over the regions.
fn attention_keys(
    g: &mut GraphBuilder,
    p: &AttentionParams,
    regions: &str,
    storage: WeightStorage,
) -> String {
    let (c, a) = (p.config.feature_dim, p.config.attention_dim);
    let enc_t: Vec<f32> = (0..c * a)
        .map(|k| p.enc_att.0[(k % a) * c + k / a])
        .collect();
    let enc_w = match storage {
        WeightStorage::F32 => g.f32s("enc_att", &[c, a], &enc_t),
        WeightStorage::F16 => g.f16s_as_f32("enc_att", &[c, a], &enc_t),
    };
    let enc_b = g.f32s("enc_att_b", &[a], &p.enc_att.1);
    let keys = g.node("MatMul", &[regions, &enc_w], vec![]);
    g.node("Add", &[&keys, &enc_b], vec![])
}

/// One attention decoding step: (regions `[N, R, C]`, their keys `[N, R, A]` from
/// [`attention_init`], previous words `[N]` int64, h, c `[N, H]`) → (log-probabilities
/// `[N, V]`, h, c, attention weights `[N, R]`). The same arithmetic as
/// [`crate::attention::AttentionModel::step`].
pub fn attention_step(
    p: &AttentionParams,
    regions: usize,
    storage: WeightStorage,
) -> pb::ModelProto {
    let cfg = &p.config;
    let (c, v, e, h, a) = (
        cfg.feature_dim,
        cfg.vocab_size,
        cfg.embed_dim,
        cfg.hidden,
        cfg.attention_dim,
    );
    let mut g = GraphBuilder::default();
    let [in_regions, in_keys, in_words, in_h, in_c] = ATTENTION_STEP_INPUTS;
    g.input(
        in_regions,
        DataType::Float,
        &[Dim::Batch, Dim::Fixed(regions), Dim::Fixed(c)],
    );
    g.input(
        in_keys,
        DataType::Float,
        &[Dim::Batch, Dim::Fixed(regions), Dim::Fixed(a)],
    );
    g.input(in_words, DataType::Int64, &[Dim::Batch]);
    g.input(in_h, DataType::Float, &[Dim::Batch, Dim::Fixed(h)]);
    g.input(in_c, DataType::Float, &[Dim::Batch, Dim::Fixed(h)]);
    let weight = |g: &mut GraphBuilder, hint: &str, dims: &[usize], data: &[f32]| match storage {
        WeightStorage::F32 => g.f32s(hint, dims, data),
        WeightStorage::F16 => g.f16s_as_f32(hint, dims, data),
    };
    let axis1 = g.i64s("axis1", &[1], &[1]);
    let axis2 = g.i64s("axis2", &[1], &[2]);
    // Additive attention: e = full_att(tanh(keys + dec_att(h))), keys = enc_att(regions).
    let dec_att = linear_weights(&mut g, storage, "dec_att", &p.dec_att, h);
    let dh = gemm(&mut g, in_h, &dec_att);
    let dh = g.node("Unsqueeze", &[&dh, &axis1], vec![]);
    let t = g.node("Add", &[in_keys, &dh], vec![]);
    let t = g.node("Tanh", &[&t], vec![]);
    let full_w = g.f32s("full_att", &[a, 1], &p.full_att.0);
    let full_b = g.f32s("full_att_b", &[1], &p.full_att.1);
    let scores = g.node("MatMul", &[&t, &full_w], vec![]);
    let scores = g.node("Add", &[&scores, &full_b], vec![]);
    let scores = g.node("Squeeze", &[&scores, &axis2], vec![]);
    let alpha = g.node("Softmax", &[&scores], vec![attr_int("axis", 1)]);
    // Context: Σ α_i regions_i, gated by β = sigmoid(f_beta(h)).
    let a3 = g.node("Unsqueeze", &[&alpha, &axis1], vec![]);
    let context = g.node("MatMul", &[&a3, in_regions], vec![]);
    let context = g.node("Squeeze", &[&context, &axis1], vec![]);
    let f_beta = linear_weights(&mut g, storage, "f_beta", &p.f_beta, h);
    let gate = gemm(&mut g, in_h, &f_beta);
    let gate = g.node("Sigmoid", &[&gate], vec![]);
    let z = g.node("Mul", &[&gate, &context], vec![]);
    // LSTM cell on [embedding; context] (gates i, f, g, o as PyTorch orders them).
    let table = weight(&mut g, "embed", &[v, e], &p.embed);
    let x = g.node("Gather", &[&table, in_words], vec![attr_int("axis", 0)]);
    let x = g.node("Concat", &[&x, &z], vec![attr_int("axis", 1)]);
    let w_ih = weight(&mut g, "w_ih", &[4 * h, e + c], &p.w_ih);
    let bias = g.f32s("lstm_b", &[4 * h], &p.bias);
    let w_hh = weight(&mut g, "w_hh", &[4 * h, h], &p.w_hh);
    let (h_new, c_new) = lstm_cell(&mut g, &x, [in_h, in_c], [&w_ih, &bias, &w_hh], h);
    let out = linear_weights(&mut g, storage, "out", &p.out, h);
    let logits = gemm(&mut g, &h_new, &out);
    let logp = g.node("LogSoftmax", &[&logits], vec![attr_int("axis", 1)]);
    let bh = [Dim::Batch, Dim::Fixed(h)];
    let [out_log_probs, out_h, out_c, out_alpha] = ATTENTION_STEP_OUTPUTS;
    g.output(
        out_log_probs,
        &logp,
        DataType::Float,
        &[Dim::Batch, Dim::Fixed(v)],
    );
    g.output(out_h, &h_new, DataType::Float, &bh);
    g.output(out_c, &c_new, DataType::Float, &bh);
    g.output(
        out_alpha,
        &alpha,
        DataType::Float,
        &[Dim::Batch, Dim::Fixed(regions)],
    );
    g.finish(
        "attention-decoder-step",
        "soft-attention caption model, one decoding step",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qparams_fold_activations_into_the_range() {
        let q = qparams(-3.0, 9.0, Act::Relu6);
        assert_eq!(q.zero_point, -128);
        assert!((q.scale - 6.0 / 255.0).abs() < 1e-9);
        let q = qparams(-1.0, 3.0, Act::None);
        assert!((q.scale - 4.0 / 255.0).abs() < 1e-9);
        assert_eq!(q.zero_point, -64);
        // 0 stays representable even for an all-positive range.
        let q = qparams(2.0, 4.0, Act::None);
        assert_eq!(q.zero_point, -128);
    }

    #[test]
    fn weights_quantize_per_output_channel() {
        let w = [0.5, -1.0, 0.25, 0.01, 0.02, -0.04];
        let (q, s) = quantize_weights(&w, 2);
        assert_eq!(&q[..3], &[64, -127, 32]);
        assert_eq!(q[5], -127);
        assert!((s[0] - 1.0 / 127.0).abs() < 1e-9 && (s[1] - 0.04 / 127.0).abs() < 1e-9);
        for (i, (&qv, &wv)) in q.iter().zip(&w).enumerate() {
            let err = (qv as f32 * s[i / 3] - wv).abs();
            assert!(err <= s[i / 3] / 2.0 + 1e-7);
        }
    }
}

//! The f32 form of an int8 encoder graph, made at load time.
//!
//! A bundle stores its encoder once, as int8 (`QLinearConv` with per-output-channel int8
//! weights, `QuantizeLinear`/`DequantizeLinear` around float paths). On CPUs where tract's
//! f32 kernels beat its int8 ones ([`crate::precision`]), the engine runs this rewrite of
//! the same graph instead:
//!
//! - `QLinearConv(x, xs, xz, w, ws, wz, ys, yz, B)` becomes `Conv(x, (w - wz) * ws,
//!   B * xs * ws)` followed by `Clip` to the int8 output's range `[(-128 - yz) * ys,
//!   (127 - yz) * ys]`: that saturation is how the int8 graph applies ReLU/ReLU6 and the
//!   calibrated activation ceiling, so the f32 graph keeps it;
//! - `QuantizeLinear(x, s, z)` becomes `Clip` to the same int8 range, `DequantizeLinear`
//!   an `Identity`.
//!
//! What is dropped is only the rounding of activations to 8 bits: the weights are the
//! int8 weights, so one downloaded bundle gives both paths. Written over the ONNX protobuf
//! (tract's `pb`) because tract has no pass that turns its quantized operators back into
//! float ones.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::{self, tensor_proto::DataType};

#[derive(Debug, thiserror::Error)]
pub enum DequantizeError {
    #[error("the model has no graph")]
    NoGraph,
    #[error("node `{node}` ({op}): input {index} `{name}` is not an initializer")]
    NotConstant {
        node: String,
        op: String,
        index: usize,
        name: String,
    },
    #[error("tensor `{name}`: expected {expected}, found data type {found} with {values} values")]
    Tensor {
        name: String,
        expected: &'static str,
        found: i32,
        values: usize,
    },
    #[error("node `{node}` ({op}): {problem}")]
    Node {
        node: String,
        op: String,
        problem: String,
    },
}

/// Whether the graph holds int8 operators (so that [`dequantize`] has work to do).
pub fn is_int8(model: &pb::ModelProto) -> bool {
    model.graph.as_ref().is_some_and(|g| {
        g.node
            .iter()
            .any(|n| matches!(n.op_type.as_str(), "QLinearConv" | "QuantizeLinear"))
    })
}

fn tensor_f32s(t: &pb::TensorProto) -> Result<Vec<f32>, DequantizeError> {
    let bad = |values| DequantizeError::Tensor {
        name: t.name.clone(),
        expected: "float32",
        found: t.data_type,
        values,
    };
    if t.data_type != DataType::Float as i32 {
        return Err(bad(0));
    }
    if !t.raw_data.is_empty() {
        if !t.raw_data.len().is_multiple_of(4) {
            return Err(bad(t.raw_data.len()));
        }
        return Ok(t
            .raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect());
    }
    Ok(t.float_data.clone())
}

fn tensor_i8s(t: &pb::TensorProto) -> Result<Vec<i8>, DequantizeError> {
    if t.data_type != DataType::Int8 as i32 {
        return Err(DequantizeError::Tensor {
            name: t.name.clone(),
            expected: "int8",
            found: t.data_type,
            values: 0,
        });
    }
    if !t.raw_data.is_empty() {
        return Ok(t.raw_data.iter().map(|&b| b as i8).collect());
    }
    // ONNX stores int8 values widened in int32_data when raw_data is not used.
    Ok(t.int32_data.iter().map(|&v| v as i8).collect())
}

fn tensor_i32s(t: &pb::TensorProto) -> Result<Vec<i32>, DequantizeError> {
    if t.data_type != DataType::Int32 as i32 {
        return Err(DequantizeError::Tensor {
            name: t.name.clone(),
            expected: "int32",
            found: t.data_type,
            values: 0,
        });
    }
    if !t.raw_data.is_empty() {
        return Ok(t
            .raw_data
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect());
    }
    Ok(t.int32_data.clone())
}

fn scalar<T: Copy>(
    name: &str,
    values: Vec<T>,
    expected: &'static str,
) -> Result<T, DequantizeError> {
    match values.as_slice() {
        [v] => Ok(*v),
        _ => Err(DequantizeError::Tensor {
            name: name.to_owned(),
            expected,
            found: -1,
            values: values.len(),
        }),
    }
}

/// The real range an int8 tensor with this scale and zero point can hold.
fn int8_range(scale: f32, zero_point: i8) -> (f32, f32) {
    (
        (-128.0 - zero_point as f32) * scale,
        (127.0 - zero_point as f32) * scale,
    )
}

struct Rewriter<'a> {
    inits: HashMap<&'a str, &'a pb::TensorProto>,
    nodes: Vec<pb::NodeProto>,
    new_inits: Vec<pb::TensorProto>,
    counter: usize,
}

impl<'a> Rewriter<'a> {
    fn constant(
        &self,
        node: &pb::NodeProto,
        index: usize,
    ) -> Result<&'a pb::TensorProto, DequantizeError> {
        let name = node.input.get(index).map(String::as_str).unwrap_or("");
        self.inits
            .get(name)
            .copied()
            .ok_or_else(|| DequantizeError::NotConstant {
                node: node.name.clone(),
                op: node.op_type.clone(),
                index,
                name: name.to_owned(),
            })
    }

    fn f32_init(&mut self, hint: &str, dims: Vec<i64>, data: &[f32]) -> String {
        self.counter += 1;
        let name = format!("dequantized_{hint}_{}", self.counter);
        self.new_inits.push(pb::TensorProto {
            name: name.clone(),
            dims,
            data_type: DataType::Float as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    fn push(
        &mut self,
        op: &str,
        name: String,
        inputs: Vec<String>,
        output: String,
        attribute: Vec<pb::AttributeProto>,
    ) {
        self.nodes.push(pb::NodeProto {
            input: inputs,
            output: vec![output],
            name,
            op_type: op.to_owned(),
            attribute,
            ..Default::default()
        });
    }

    /// `Clip(x, lo, hi)` into `output`.
    fn clip(&mut self, node_name: &str, x: String, (lo, hi): (f32, f32), output: String) {
        let lo = self.f32_init("min", vec![], &[lo]);
        let hi = self.f32_init("max", vec![], &[hi]);
        self.push(
            "Clip",
            format!("{node_name}_clip"),
            vec![x, lo, hi],
            output,
            vec![],
        );
    }

    fn quantize_linear(&mut self, node: &pb::NodeProto) -> Result<(), DequantizeError> {
        let s = self.constant(node, 1)?;
        let z = self.constant(node, 2)?;
        let range = int8_range(
            scalar(&s.name, tensor_f32s(s)?, "one scale")?,
            scalar(&z.name, tensor_i8s(z)?, "one zero point")?,
        );
        self.clip(
            &node.name,
            node.input[0].clone(),
            range,
            node.output[0].clone(),
        );
        Ok(())
    }

    fn qlinear_conv(&mut self, node: &pb::NodeProto) -> Result<(), DequantizeError> {
        let fail = |problem: String| DequantizeError::Node {
            node: node.name.clone(),
            op: node.op_type.clone(),
            problem,
        };
        if node.input.len() < 8 {
            return Err(fail(format!(
                "expected 8 or 9 inputs, found {}",
                node.input.len()
            )));
        }
        let xs = self.constant(node, 1)?;
        let xs = scalar(&xs.name, tensor_f32s(xs)?, "one input scale")?;
        let w = self.constant(node, 3)?;
        let w_dims = w.dims.clone();
        let w_q = tensor_i8s(w)?;
        let ws = tensor_f32s(self.constant(node, 4)?)?;
        let wz = tensor_i8s(self.constant(node, 5)?)?;
        let ys = self.constant(node, 6)?;
        let ys = scalar(&ys.name, tensor_f32s(ys)?, "one output scale")?;
        let yz = self.constant(node, 7)?;
        let yz = scalar(&yz.name, tensor_i8s(yz)?, "one output zero point")?;
        let cout = *w_dims
            .first()
            .ok_or_else(|| fail("weights without dimensions".into()))? as usize;
        if cout == 0 || !w_q.len().is_multiple_of(cout) {
            return Err(fail(format!(
                "{} weights do not split into {cout} output channels",
                w_q.len()
            )));
        }
        let per = w_q.len() / cout;
        let channel = |v: &[f32], what: &str, c: usize| -> Result<f32, DequantizeError> {
            match v.len() {
                1 => Ok(v[0]),
                n if n == cout => Ok(v[c]),
                n => Err(fail(format!("{n} {what}s for {cout} output channels"))),
            }
        };
        let wz: Vec<f32> = wz.iter().map(|&z| z as f32).collect();
        let mut w_f = Vec::with_capacity(w_q.len());
        let mut scales = Vec::with_capacity(cout);
        for c in 0..cout {
            let (s, z) = (
                channel(&ws, "weight scale", c)?,
                channel(&wz, "weight zero point", c)?,
            );
            scales.push(s);
            w_f.extend(
                w_q[c * per..(c + 1) * per]
                    .iter()
                    .map(|&q| (q as f32 - z) * s),
            );
        }
        let mut inputs = vec![node.input[0].clone(), self.f32_init("w", w_dims, &w_f)];
        if let Some(b) = node.input.get(8).filter(|b| !b.is_empty()) {
            let t = self.inits.get(b.as_str()).copied().ok_or_else(|| {
                DequantizeError::NotConstant {
                    node: node.name.clone(),
                    op: node.op_type.clone(),
                    index: 8,
                    name: b.clone(),
                }
            })?;
            let bias = tensor_i32s(t)?;
            if bias.len() != cout {
                return Err(fail(format!(
                    "{} biases for {cout} output channels",
                    bias.len()
                )));
            }
            let b_f: Vec<f32> = bias
                .iter()
                .zip(&scales)
                .map(|(&b, &s)| b as f32 * xs * s)
                .collect();
            inputs.push(self.f32_init("b", vec![cout as i64], &b_f));
        }
        let conv_out = format!("{}_f32", node.output[0]);
        self.push(
            "Conv",
            node.name.clone(),
            inputs,
            conv_out.clone(),
            node.attribute.clone(),
        );
        self.clip(
            &node.name,
            conv_out,
            int8_range(ys, yz),
            node.output[0].clone(),
        );
        Ok(())
    }
}

/// The initializers of `graph` that `nodes` still read, then `added`.
fn kept_initializers(
    graph: &pb::GraphProto,
    nodes: &[pb::NodeProto],
    added: Vec<pb::TensorProto>,
) -> Vec<pb::TensorProto> {
    let used: HashSet<&str> = nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let mut kept: Vec<pb::TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| used.contains(t.name.as_str()))
        .cloned()
        .collect();
    kept.extend(added);
    kept
}

/// The f32 graph of an int8 encoder graph (see the module docs). Inputs, outputs and every
/// float tensor keep their names.
pub fn dequantize(model: &pb::ModelProto) -> Result<pb::ModelProto, DequantizeError> {
    let graph = model.graph.as_ref().ok_or(DequantizeError::NoGraph)?;
    let mut r = Rewriter {
        inits: graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect(),
        nodes: Vec::with_capacity(graph.node.len() * 2),
        new_inits: Vec::new(),
        counter: 0,
    };
    for node in &graph.node {
        match node.op_type.as_str() {
            "QLinearConv" => r.qlinear_conv(node)?,
            "QuantizeLinear" => r.quantize_linear(node)?,
            "DequantizeLinear" => r.push(
                "Identity",
                node.name.clone(),
                vec![node.input[0].clone()],
                node.output[0].clone(),
                vec![],
            ),
            _ => r.nodes.push(node.clone()),
        }
    }
    // The int8 weights and their quantization parameters are gone.
    let initializer = kept_initializers(graph, &r.nodes, r.new_inits);
    let mut out = model.clone();
    out.graph = Some(pb::GraphProto {
        node: r.nodes,
        initializer,
        // Intermediate int8 type annotations no longer hold; tract infers the rest.
        value_info: Vec::new(),
        ..graph.clone()
    });
    out.doc_string = format!(
        "{} [int8 weights dequantised to f32 at load]",
        model.doc_string
    );
    Ok(out)
}

/// Whether the graph stores float16 weights behind `Cast` nodes (the exporter's
/// "f16 storage, f32 compute").
pub fn has_f16_constants(model: &pb::ModelProto) -> bool {
    model.graph.as_ref().is_some_and(|g| {
        g.initializer
            .iter()
            .any(|t| t.data_type == DataType::Float16 as i32)
    })
}

fn tensor_f16s_as_f32(t: &pb::TensorProto) -> Result<Vec<f32>, DequantizeError> {
    let values: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()
    } else {
        // ONNX keeps float16 values in `int32_data`, one per element, as their bits.
        t.int32_data
            .iter()
            .map(|&bits| half::f16::from_bits(bits as u16).to_f32())
            .collect()
    };
    let want: i64 = t.dims.iter().product();
    if values.len() as i64 != want {
        return Err(DequantizeError::Tensor {
            name: t.name.clone(),
            expected: "float16 values for its shape",
            found: t.data_type,
            values: values.len(),
        });
    }
    Ok(values)
}

/// The graph with every `Cast(float16 initializer → float)` replaced by the float
/// initializer it computes (same name as the Cast's output), so the weights are f32 in
/// memory and the arithmetic is exactly the stored graph's. Why at load: tract 0.23.9
/// does not fold these casts in the attention step graph and runs it 3× slower (decoder
/// 69 ms against 23 ms per caption, `captiond bench`), while the file keeps the halved size.
pub fn widen_f16_constants(model: &pb::ModelProto) -> Result<pb::ModelProto, DequantizeError> {
    let graph = model.graph.as_ref().ok_or(DequantizeError::NoGraph)?;
    let f16: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| t.data_type == DataType::Float16 as i32)
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut widened = Vec::new();
    for node in &graph.node {
        let to_float = node
            .attribute
            .iter()
            .any(|a| a.name == "to" && a.i == DataType::Float as i64);
        match (node.op_type.as_str(), node.input.as_slice()) {
            ("Cast", [input]) if to_float && f16.contains_key(input.as_str()) => {
                let t = f16[input.as_str()];
                let values = tensor_f16s_as_f32(t)?;
                widened.push(pb::TensorProto {
                    name: node.output[0].clone(),
                    dims: t.dims.clone(),
                    data_type: DataType::Float as i32,
                    raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    ..Default::default()
                });
            }
            _ => nodes.push(node.clone()),
        }
    }
    let initializer = kept_initializers(graph, &nodes, widened);
    let mut out = model.clone();
    out.graph = Some(pb::GraphProto {
        node: nodes,
        initializer,
        ..graph.clone()
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `y = x + Cast(w)` with `w` stored as float16 (raw bytes).
    fn f16_graph(w: &[f32]) -> pb::ModelProto {
        let raw = w
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let value = |name: &str| pb::ValueInfoProto {
            name: name.into(),
            ..Default::default()
        };
        let node = |op: &str, inputs: &[&str], output: &str, attribute| pb::NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        };
        let to_float = pb::AttributeProto {
            name: "to".into(),
            i: DataType::Float as i64,
            r#type: pb::attribute_proto::AttributeType::Int as i32,
            ..Default::default()
        };
        pb::ModelProto {
            graph: Some(pb::GraphProto {
                node: vec![
                    node("Cast", &["w16"], "w", vec![to_float]),
                    node("Add", &["x", "w"], "y", vec![]),
                ],
                initializer: vec![pb::TensorProto {
                    name: "w16".into(),
                    dims: vec![w.len() as i64],
                    data_type: DataType::Float16 as i32,
                    raw_data: raw,
                    ..Default::default()
                }],
                input: vec![value("x")],
                output: vec![value("y")],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn float16_weights_are_widened_to_the_same_values() {
        let w = [0.1f32, -2.5, 1e-3, 65504.0];
        let model = f16_graph(&w);
        assert!(has_f16_constants(&model));
        let wide = widen_f16_constants(&model).unwrap();
        assert!(!has_f16_constants(&wide));
        let g = wide.graph.unwrap();
        assert_eq!(g.node.len(), 1, "the Cast is gone");
        assert_eq!(g.node[0].op_type, "Add");
        assert_eq!(g.initializer.len(), 1);
        let t = &g.initializer[0];
        assert_eq!(
            (t.name.as_str(), t.data_type),
            ("w", DataType::Float as i32)
        );
        let got = tensor_f32s(t).unwrap();
        let want: Vec<f32> = w.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        assert_eq!(got, want);
        // A float16 tensor whose data does not fill its shape is an error, not a guess.
        let mut bad = f16_graph(&w);
        bad.graph.as_mut().unwrap().initializer[0]
            .raw_data
            .truncate(4);
        let err = widen_f16_constants(&bad).unwrap_err().to_string();
        assert!(err.contains("w16"), "{err}");
    }

    #[test]
    fn int8_ranges_cover_what_the_integer_can_hold() {
        // After a ReLU the exporter puts zero at -128: the range starts at exactly 0.
        let (lo, hi) = int8_range(0.02, -128);
        assert_eq!(lo, 0.0);
        assert!((hi - 255.0 * 0.02).abs() < 1e-6);
        let (lo, hi) = int8_range(0.5, 0);
        assert_eq!((lo, hi), (-64.0, 63.5));
    }
}

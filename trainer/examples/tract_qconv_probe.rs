//! Probe: one 96→24 1x1 convolution at 112x112 (an EfficientNet-Lite0 projection) as f32
//! `Conv` and as int8 `QLinearConv` variants, plus Quantize/DequantizeLinear, timed in tract
//! on this machine. Run: `cargo run --release -p caption-trainer --example tract_qconv_probe`.

use caption_trainer::onnx::*;
use std::time::Instant;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::prelude::*;

fn time(name: &str, model: tract_onnx::pb::ModelProto, input: Tensor) {
    let m = tract_onnx::onnx()
        .model_for_proto_model(&model)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    m.run(tvec!(input.clone().into())).unwrap();
    let t = Instant::now();
    for _ in 0..10 {
        m.run(tvec!(input.clone().into())).unwrap();
    }
    println!("{name}: {:.2} ms", t.elapsed().as_secs_f64() * 100.0);
}

fn main() {
    let (ci, co, hw) = (96usize, 24usize, 112usize);
    let w: Vec<f32> = (0..ci * co)
        .map(|i| ((i * 7919 % 255) as f32 - 127.0) / 300.0)
        .collect();
    // f32 conv
    let mut g = GraphBuilder::default();
    g.input(
        "x",
        DataType::Float,
        &[
            Dim::Fixed(1),
            Dim::Fixed(ci),
            Dim::Fixed(hw),
            Dim::Fixed(hw),
        ],
    );
    let wn = g.f32s("w", &[co, ci, 1, 1], &w);
    let y = g.node(
        "Conv",
        &["x", &wn],
        vec![attr_ints("kernel_shape", &[1, 1])],
    );
    g.output(
        "y",
        &y,
        DataType::Float,
        &[
            Dim::Fixed(1),
            Dim::Fixed(co),
            Dim::Fixed(hw),
            Dim::Fixed(hw),
        ],
    );
    let xf = Tensor::from(tract_ndarray::Array4::<f32>::from_shape_fn(
        (1, ci, hw, hw),
        |(_, c, h, w)| ((c + h + w) % 7) as f32 / 7.0,
    ));
    time("f32 conv1x1", g.finish("a", ""), xf.clone());
    // qlinearconv i8
    let mut g = GraphBuilder::default();
    g.input(
        "x",
        DataType::Int8,
        &[
            Dim::Fixed(1),
            Dim::Fixed(ci),
            Dim::Fixed(hw),
            Dim::Fixed(hw),
        ],
    );
    let (wq, ws) = quantize_weights(&w, co);
    let xs = g.f32s("xs", &[], &[0.01]);
    let xz = g.i8s("xz", &[], &[-128]);
    let wn = g.i8s("w", &[co, ci, 1, 1], &wq);
    let wsn = g.f32s("ws", &[co], &ws);
    let wz = g.i8s("wz", &[], &[0]);
    let ys = g.f32s("ys", &[], &[0.02]);
    let yz = g.i8s("yz", &[], &[0]);
    let b = g.i32s("b", &[co], &vec![0; co]);
    let y = g.node(
        "QLinearConv",
        &["x", &xs, &xz, &wn, &wsn, &wz, &ys, &yz, &b],
        vec![attr_ints("kernel_shape", &[1, 1])],
    );
    g.output(
        "y",
        &y,
        DataType::Int8,
        &[
            Dim::Fixed(1),
            Dim::Fixed(co),
            Dim::Fixed(hw),
            Dim::Fixed(hw),
        ],
    );
    let xi = Tensor::from(tract_ndarray::Array4::<i8>::from_shape_fn(
        (1, ci, hw, hw),
        |(_, c, h, w)| ((c + h + w) % 200) as i8,
    ));
    time("i8 qlinearconv1x1", g.finish("b", ""), xi.clone());
    for (label, xzv, per_tensor) in [
        ("xz0 per-channel", 0i8, false),
        ("xz0 per-tensor", 0, true),
        ("xz-128 per-tensor", -128, true),
    ] {
        let mut g = GraphBuilder::default();
        g.input(
            "x",
            DataType::Int8,
            &[
                Dim::Fixed(1),
                Dim::Fixed(ci),
                Dim::Fixed(hw),
                Dim::Fixed(hw),
            ],
        );
        let xs = g.f32s("xs", &[], &[0.01]);
        let xz = g.i8s("xz", &[], &[xzv]);
        let wn = g.i8s("w", &[co, ci, 1, 1], &wq);
        let wsn = if per_tensor {
            g.f32s("ws", &[], &ws[..1])
        } else {
            g.f32s("ws", &[co], &ws)
        };
        let wz = g.i8s("wz", &[], &[0]);
        let ys = g.f32s("ys", &[], &[0.02]);
        let yz = g.i8s("yz", &[], &[0]);
        let b = g.i32s("b", &[co], &vec![0; co]);
        let y = g.node(
            "QLinearConv",
            &["x", &xs, &xz, &wn, &wsn, &wz, &ys, &yz, &b],
            vec![attr_ints("kernel_shape", &[1, 1])],
        );
        g.output(
            "y",
            &y,
            DataType::Int8,
            &[
                Dim::Fixed(1),
                Dim::Fixed(co),
                Dim::Fixed(hw),
                Dim::Fixed(hw),
            ],
        );
        time(label, g.finish("b", ""), xi.clone());
    }
    // quantize linear
    let mut g = GraphBuilder::default();
    g.input(
        "x",
        DataType::Float,
        &[
            Dim::Fixed(1),
            Dim::Fixed(ci),
            Dim::Fixed(hw),
            Dim::Fixed(hw),
        ],
    );
    let s = g.f32s("s", &[], &[0.01]);
    let z = g.i8s("z", &[], &[0]);
    let y = g.node("QuantizeLinear", &["x", &s, &z], vec![]);
    g.output(
        "y",
        &y,
        DataType::Int8,
        &[
            Dim::Fixed(1),
            Dim::Fixed(ci),
            Dim::Fixed(hw),
            Dim::Fixed(hw),
        ],
    );
    time("quantize", g.finish("c", ""), xf.clone());
    let mut g = GraphBuilder::default();
    g.input(
        "x",
        DataType::Int8,
        &[
            Dim::Fixed(1),
            Dim::Fixed(ci),
            Dim::Fixed(hw),
            Dim::Fixed(hw),
        ],
    );
    let s = g.f32s("s", &[], &[0.01]);
    let z = g.i8s("z", &[], &[0]);
    let y = g.node("DequantizeLinear", &["x", &s, &z], vec![]);
    g.output(
        "y",
        &y,
        DataType::Float,
        &[
            Dim::Fixed(1),
            Dim::Fixed(ci),
            Dim::Fixed(hw),
            Dim::Fixed(hw),
        ],
    );
    time("dequantize", g.finish("d", ""), xi);
}

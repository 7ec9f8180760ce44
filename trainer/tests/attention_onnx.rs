//! The attention decoder's ONNX graphs (initial state, one step), run by tract, against
//! the tch model they were written from: five decoding steps of three images.

use caption_trainer::attention::{AttentionConfig, AttentionModel};
use caption_trainer::onnx::{self, WeightStorage};
use tch::{nn, Device, Kind, Tensor};
use tract_onnx::prelude::*;

const REGIONS: usize = 49;

fn plan(model: &tract_onnx::pb::ModelProto) -> std::sync::Arc<TypedSimplePlan> {
    let bytes = onnx::encode(model);
    tract_onnx::onnx()
        .model_for_read(&mut bytes.as_slice())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap()
}

fn to_tract(t: &Tensor) -> TValue {
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let data = Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap();
    tract_ndarray::ArrayD::from_shape_vec(shape, data)
        .unwrap()
        .into_tvalue()
}

fn from_tract(v: &TValue) -> Tensor {
    let shape: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
    Tensor::from_slice(v.to_plain_array_view::<f32>().unwrap().as_slice().unwrap()).reshape(shape)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn run(storage: WeightStorage, tolerance: f64) {
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let config = AttentionConfig {
        feature_dim: 40,
        vocab_size: 60,
        embed_dim: 16,
        hidden: 32,
        attention_dim: 24,
        dropout: 0.5,
        alpha_c: 1.0,
    };
    let m = AttentionModel::new(&vs.root(), config);
    let params = m.params();
    let init = plan(&onnx::attention_init(&params, REGIONS, storage));
    let step = plan(&onnx::attention_step(&params, REGIONS, storage));
    // Non-negative like ReLU6 feature maps.
    let regions = Tensor::rand([3, REGIONS as i64, 40], (Kind::Float, Device::Cpu)) * 6.0;
    let r = m.regions(&regions);
    let (mut h, mut c) = tch::no_grad(|| m.initial_state(&r));
    let out = init.run(tvec![to_tract(&regions)]).unwrap();
    assert!(max_diff(&from_tract(&out[0]), &h) <= tolerance, "initial h");
    assert!(max_diff(&from_tract(&out[1]), &c) <= tolerance, "initial c");
    let keys = out[2].clone();
    assert!(max_diff(&from_tract(&keys), &r.keys) <= tolerance, "keys");
    let mut words = Tensor::from_slice(&[1i64, 1, 1]);
    for t in 0..5 {
        let (logp, h2, c2, alpha) = tch::no_grad(|| m.step(&r, &words, &h, &c));
        let words_tract = tract_ndarray::Array1::from_vec(Vec::<i64>::try_from(&words).unwrap())
            .into_dyn()
            .into_tvalue();
        let got = step
            .run(tvec![
                to_tract(&regions),
                keys.clone(),
                words_tract,
                to_tract(&h),
                to_tract(&c)
            ])
            .unwrap();
        let names = ["log_probs", "h", "c", "attention"];
        for (k, want) in [&logp, &h2, &c2, &alpha].into_iter().enumerate() {
            let d = max_diff(&from_tract(&got[k]), want);
            assert!(d <= tolerance, "step {t}: {} max |diff| {d:e}", names[k]);
        }
        let sums = from_tract(&got[3]).sum_dim_intlist(1, false, Kind::Float);
        assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-5);
        words = logp.argmax(1, false);
        (h, c) = (h2, c2);
    }
}

#[test]
fn the_f32_graphs_reproduce_the_tch_model() {
    run(WeightStorage::F32, 1e-4);
}

#[test]
fn the_f16_stored_graphs_stay_close() {
    run(WeightStorage::F16, 2e-2);
}

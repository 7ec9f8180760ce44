//! The engine on the committed default bundle: both precisions it may run, threads, and
//! tensors bound by name.

use std::path::{Path, PathBuf};

use caption_proto::manifest::{sha256_file, Manifest, DECODER_FILE, MANIFEST_FILE};
use caption_runtime::{Engine, EngineOptions, Precision};
use prost::Message;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bundle() -> PathBuf {
    root().join("models/flickr8k-lite0-int8")
}

fn example_images() -> Vec<PathBuf> {
    let mut images: Vec<PathBuf> = std::fs::read_dir(root().join("examples/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    images.sort();
    assert!(images.len() >= 8, "the 8 example images");
    images
}

fn load(precision: Precision, threads: usize) -> Engine {
    Engine::load_with(&bundle(), &EngineOptions { precision, threads }).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

/// Features and greedy captions of the example images.
fn outputs(engine: &Engine) -> (Vec<Vec<f32>>, Vec<String>) {
    let mut features = Vec::new();
    let mut captions = Vec::new();
    for path in example_images() {
        let pixels = engine.preprocessing().from_file(&path).unwrap();
        let f = engine.encode(&pixels).unwrap();
        captions.push(engine.decode(&f, 1).unwrap().remove(0).text);
        features.push(f);
    }
    (features, captions)
}

#[test]
fn both_precisions_run_the_int8_bundle() {
    let int8 = load(Precision::Int8, 1);
    let f32 = load(Precision::F32, 1);
    assert_eq!(int8.precision().precision, Precision::Int8);
    assert_eq!(f32.precision().precision, Precision::F32);
    let (fi, ci) = outputs(&int8);
    let (ff, cf) = outputs(&f32);
    // The two differ only by the rounding of activations to 8 bits.
    for (a, b) in fi.iter().zip(&ff) {
        let c = cosine(a, b);
        assert!(c > 0.99, "int8 vs dequantised f32 feature cosine {c}");
        assert!(
            a != b,
            "the int8 path should round activations; it gave the f32 features"
        );
    }
    // Their captions can differ (measured: 6 of the 8 agree); how close each path is to
    // the f32 encoder is checked in trainer/tests/precision.rs.
    let same = ci.iter().zip(&cf).filter(|(a, b)| a == b).count();
    eprintln!("int8 vs dequantised f32: {same}/8 greedy captions identical");
    assert!(ci.iter().chain(&cf).all(|c| !c.is_empty()));
}

#[test]
fn auto_picks_a_concrete_precision_and_says_why() {
    let engine = load(Precision::Auto, 1);
    let choice = engine.precision();
    assert_ne!(choice.precision, Precision::Auto);
    assert!(choice.reason.starts_with("auto on "), "{}", choice.reason);
    // It is one of the two verified paths: the same features as that path loaded by name.
    let named = load(choice.precision, 1);
    let pixels = engine
        .preprocessing()
        .from_file(&example_images()[0])
        .unwrap();
    assert_eq!(
        engine.encode(&pixels).unwrap(),
        named.encode(&pixels).unwrap()
    );
}

#[test]
fn two_threads_give_the_one_thread_results() {
    let one = load(Precision::F32, 1);
    let two = load(Precision::F32, 2);
    assert_eq!(two.threads(), 2);
    let (f1, c1) = outputs(&one);
    let (f2, c2) = outputs(&two);
    for (a, b) in f1.iter().zip(&f2) {
        let c = cosine(a, b);
        assert!(c > 0.99999, "1 vs 2 threads feature cosine {c}");
    }
    assert_eq!(c1, c2);
    let err = Engine::load_with(
        &bundle(),
        &EngineOptions {
            precision: Precision::F32,
            threads: 0,
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("threads"), "{err}");
}

/// A copy of the default bundle whose decoder graph's output `h_out` is renamed, with the
/// manifest's checksum updated so that only the graph contract is wrong.
fn bundle_with_renamed_decoder_output(dir: &Path) -> PathBuf {
    let copy = dir.join("bundle");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(bundle()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let path = copy.join(DECODER_FILE);
    let mut model =
        tract_onnx::pb::ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    let graph = model.graph.as_mut().unwrap();
    for node in &mut graph.node {
        for o in &mut node.output {
            if o == "h_out" {
                *o = "h_next".into();
            }
        }
    }
    for o in &mut graph.output {
        if o.name == "h_out" {
            o.name = "h_next".into();
        }
    }
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    let manifest_path = copy.join(MANIFEST_FILE);
    let mut manifest = Manifest::parse(
        &std::fs::read_to_string(&manifest_path).unwrap(),
        &manifest_path,
    )
    .unwrap();
    manifest
        .files
        .insert(DECODER_FILE.into(), sha256_file(&path).unwrap());
    std::fs::write(&manifest_path, manifest.to_toml()).unwrap();
    copy
}

#[test]
fn graph_tensors_are_bound_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let copy = bundle_with_renamed_decoder_output(dir.path());
    let err = Engine::load(&copy)
        .err()
        .expect("a renamed output is refused");
    // The error, then its causes (tract's message is kept as the source).
    let msg = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    assert!(
        msg.starts_with(&format!("{}", copy.join("decoder.onnx").display()))
            && msg.contains("h_out"),
        "the error names the file and the missing tensor: {msg}"
    );
}

/// A copy of a bundle whose manifest ranks beams with `length_penalty`.
fn bundle_with_length_penalty(from: &Path, dir: &Path, length_penalty: f32) -> PathBuf {
    let copy = dir.join(format!("lp-{length_penalty}"));
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let manifest_path = copy.join(MANIFEST_FILE);
    let mut manifest = Manifest::parse(
        &std::fs::read_to_string(&manifest_path).unwrap(),
        &manifest_path,
    )
    .unwrap();
    manifest.decoder.length_penalty = length_penalty;
    std::fs::write(&manifest_path, manifest.to_toml()).unwrap();
    copy
}

/// The manifest's `decoder.length_penalty` reaches the beam search: with a large exponent
/// longer captions win, greedy decoding is untouched.
#[test]
fn the_manifest_length_penalty_ranks_the_beams() {
    let merge = root().join("models/flickr8k-lite0-f16");
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions {
        precision: Precision::Auto,
        threads: 1,
    };
    let plain = Engine::load_with(&merge, &options).unwrap();
    let long = Engine::load_with(
        &bundle_with_length_penalty(&merge, dir.path(), 4.0),
        &options,
    )
    .unwrap();
    assert_eq!(plain.search_config(3).length_penalty, 0.0);
    assert_eq!(long.search_config(3).length_penalty, 4.0);
    let (mut words_plain, mut words_long) = (0, 0);
    for image in example_images() {
        let pixels = plain.preprocessing().from_file(&image).unwrap();
        let features = plain.encode(&pixels).unwrap();
        let count = |e: &Engine, beam| {
            e.decode(&features, beam).unwrap()[0]
                .hypothesis
                .tokens
                .len()
        };
        assert_eq!(count(&plain, 1), count(&long, 1), "greedy ignores it");
        words_plain += count(&plain, 3);
        words_long += count(&long, 3);
    }
    assert!(
        words_long > words_plain,
        "beam 3 with length_penalty 4: {words_long} tokens, plain sum: {words_plain}"
    );
}

//! Export of a tiny model trained on the fixture: f32 and int8 bundles verified in tract
//! through the edge engine, and bundles the engine must refuse.

mod common;
use common::{ok_json, run, workspace};

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use caption_proto::manifest::{Manifest, Quantization, Scheme, Storage};
use caption_runtime::engine::Engine;

fn fixture() -> String {
    workspace().join("fixtures/flickr8k").display().to_string()
}

/// A checkpoint trained for 2 epochs on fixture features, made once per test binary.
fn checkpoint() -> &'static Path {
    static CK: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = CK.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let features = dir.path().join("features.safetensors");
        let weights = common::lite0_weights();
        ok_json(&run(&[
            "extract",
            "--data",
            &fixture(),
            "--encoder",
            "efficientnet-lite0",
            "--weights",
            weights.to_str().unwrap(),
            "--out",
            features.to_str().unwrap(),
            "--quiet",
        ]));
        let run_dir = dir.path().join("run");
        ok_json(&run(&[
            "train",
            "--features",
            features.to_str().unwrap(),
            "--data",
            &fixture(),
            "--out",
            run_dir.to_str().unwrap(),
            "--quiet",
            "--device",
            "cpu",
            "--seed",
            "3",
            "--batch-size",
            "16",
            "--epochs",
            "2",
            "--text",
            "standard",
        ]));
        let (best, _) = caption_trainer::train::best_checkpoint(&run_dir).unwrap();
        (dir, best)
    });
    path
}

fn export(out: &Path, extra: &[&str]) -> std::process::Output {
    let weights = common::lite0_weights();
    let mut args = vec![
        "export",
        "--checkpoint",
        checkpoint().to_str().unwrap(),
        "--features-encoder",
        "efficientnet-lite0",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--verify-images",
        "16",
    ];
    let data = fixture();
    args.extend_from_slice(&["--data", &data]);
    args.extend_from_slice(extra);
    run(&args)
}

/// The f32 bundle of the fixture model, exported once per test binary.
fn f32_bundle() -> &'static Path {
    static B: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("bundle");
        let report = ok_json(&export(&out, &["--evaluate", "--evaluate-split", "test"]));
        let f32 = &report["f32"];
        assert_eq!(f32["images"], 16);
        assert!(
            f32["feature_cosine_min"].as_f64().unwrap() >= 0.9999,
            "{report}"
        );
        assert!(
            f32["logprob_max_abs_diff"].as_f64().unwrap() <= 1e-4,
            "{report}"
        );
        assert_eq!(f32["caption_agreement"].as_f64().unwrap(), 1.0, "{report}");
        assert!(report["int8"].is_null());
        let eval = &report["evaluation"];
        assert_eq!(eval["images"], 16);
        assert!(eval["coco_protocol"]["bleu1"].as_f64().unwrap() > 0.0);
        assert!(eval["coco_cider_d"].as_f64().unwrap() >= 0.0);
        let distinct = eval["distinct_captions"].as_u64().unwrap();
        assert!((1..=16).contains(&distinct), "{eval}");
        (dir, out)
    });
    path
}

#[test]
fn f32_export_reproduces_the_tch_model_and_records_it() {
    let bundle = f32_bundle();
    for f in [
        "encoder.onnx",
        "decoder.onnx",
        "vocab.json",
        "manifest.toml",
    ] {
        assert!(bundle.join(f).is_file(), "{f}");
    }
    assert!(!bundle.with_file_name("bundle.partial").exists());
    let b = Manifest::load_bundle(bundle).unwrap();
    let m = &b.manifest;
    assert_eq!(m.model_id, "flickr8k-lite0-f32");
    assert_eq!(m.encoder.feature_dim, 1280);
    assert_eq!(m.quantization, Quantization::none());
    assert!(m.metrics["f32_feature_cosine_min"] >= 0.9999);
    assert!(m.metrics["test_coco_bleu4"] >= 0.0);
    assert!(m.metrics["test_coco_cider_d"] >= 0.0);
    assert!(m.metrics["test_distinct_captions"] >= 1.0);
    assert!(m
        .provenance
        .export_command
        .as_ref()
        .unwrap()
        .contains("export"));
    assert!(m.provenance.epoch.unwrap() >= 1);
    let options = m.provenance.training_options.as_ref().unwrap();
    assert!(options["epochs"].as_integer().unwrap() >= 1);
    // The engine captions a fixture image with the bundle.
    let engine = Engine::load(bundle).unwrap();
    let image = workspace().join("fixtures/flickr8k/Flicker8k_Dataset/1056338697_4f7d7ce270.jpg");
    let (caption, _) = engine.caption_file(&image, 1).unwrap();
    assert!(!caption.text.is_empty());
    // An existing bundle is not replaced without --force.
    let out = export(bundle, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}

#[test]
fn int8_export_quantizes_the_encoder_and_reports_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("int8");
    let f32_out = dir.path().join("f32");
    let report = ok_json(&export(
        &out,
        &[
            "--quantize",
            "int8",
            "--calibration-images",
            "16",
            "--f32-out",
            f32_out.to_str().unwrap(),
        ],
    ));
    let int8 = &report["int8"];
    assert_eq!(int8["images"], 16);
    // Quantization changes features a little, not a lot.
    let cos = int8["feature_cosine_mean"].as_f64().unwrap();
    assert!(cos > 0.95 && cos < 1.0, "{report}");
    // The same bundle with its int8 weights dequantised to f32 (what `--precision f32`
    // runs) drops only the rounding of activations: on average at least as close to the
    // f32 features as int8 (its int8 weights keep it from reaching the f32 bundle).
    let deq = report["dequantized"]["feature_cosine_mean"]
        .as_f64()
        .unwrap();
    assert!(deq >= cos - 1e-4 && deq < 1.0, "{report}");
    let agreement = report["int8_f32_caption_agreement"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&agreement));
    let m = Manifest::load_bundle(&out).unwrap().manifest;
    assert_eq!(m.quantization.scheme, Scheme::Int8Static);
    assert_eq!(m.quantization.decoder_storage, Storage::F16);
    assert_eq!(m.model_id, "flickr8k-lite0-int8");
    assert!(m.quantization.encoder_int8_layers.unwrap() > 30);
    assert!(m.quantization.calibration_images.unwrap() > 0);
    // The int8 encoder is smaller than the f32 one it came from.
    let size = |p: &Path| std::fs::metadata(p.join("encoder.onnx")).unwrap().len();
    assert!(
        size(&out) * 3 < size(&f32_out),
        "{} vs {}",
        size(&out),
        size(&f32_out)
    );
    let onnx = std::fs::read(out.join("encoder.onnx")).unwrap();
    assert!(onnx.windows(11).any(|w| w == b"QLinearConv"));
    Engine::load(&out).unwrap();
}

/// A copy of the f32 bundle, changed by `edit`, must be refused with `expect` in the error.
fn refused(edit: impl FnOnce(&Path), expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("bundle");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(f32_bundle()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    edit(&copy);
    let err = match Engine::load(&copy) {
        Ok(_) => panic!("the edited bundle was accepted"),
        Err(e) => e.to_string(),
    };
    for want in expect {
        assert!(err.contains(want), "{err:?} lacks {want:?}");
    }
}

fn edit_manifest(dir: &Path, from: &str, to: &str) {
    let path = dir.join("manifest.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn bad_bundles_are_refused_with_the_file_and_field() {
    // A changed byte in a graph: checksum.
    refused(
        |d| {
            let p = d.join("decoder.onnx");
            let mut bytes = std::fs::read(&p).unwrap();
            let n = bytes.len();
            bytes[n - 10] ^= 0xff;
            std::fs::write(&p, bytes).unwrap();
        },
        &["decoder.onnx", "checksum"],
    );
    // A missing file.
    refused(
        |d| std::fs::remove_file(d.join("encoder.onnx")).unwrap(),
        &["encoder.onnx"],
    );
    // A manifest from a newer format.
    refused(
        |d| edit_manifest(d, "format_version = 2", "format_version = 3"),
        &["manifest.toml", "format_version", "is 3"],
    );
    // Shapes that do not match the graphs.
    refused(
        |d| edit_manifest(d, "feature_dim = 1280", "feature_dim = 1000"),
        &["encoder.onnx", "encoder.feature_dim", "1000"],
    );
    refused(
        |d| edit_manifest(d, "hidden = ", "hidden = 1"),
        &["decoder.onnx", "decoder.hidden"],
    );
    refused(
        |d| edit_manifest(d, "size = 224", "size = 256"),
        &["encoder.onnx", "encoder.preprocessing.size", "256"],
    );
    // Not a manifest at all.
    refused(
        |d| std::fs::write(d.join("manifest.toml"), "format_version = 2\n[encoder\n").unwrap(),
        &["manifest.toml"],
    );
}

//! Training, resuming and decoding on the committed fixture, through the real binary and
//! the library.

mod common;
use common::{ok_json, run, workspace};

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use caption_proto::precision::Precision;
use caption_proto::search::{beam_search, greedy, SearchConfig};
use caption_trainer::evaluate::TchDecoder;
use caption_trainer::train::{best_checkpoint, load_model, FeatureTable};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// EfficientNet-Lite0 features of the fixture, extracted once per test binary.
fn features() -> &'static Path {
    static FEATURES: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = FEATURES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fixture-lite0.safetensors");
        extract(&path, &[]);
        (dir, path)
    });
    path
}

/// `caption-train extract` of the fixture with the Lite0 weights into `out`.
fn extract(out: &Path, extra: &[&str]) -> Value {
    let weights = common::lite0_weights();
    let mut args = vec![
        "extract",
        "--data",
        fixture(),
        "--encoder",
        "efficientnet-lite0",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    ok_json(&run(&args))
}

fn fixture() -> &'static str {
    static F: OnceLock<String> = OnceLock::new();
    F.get_or_init(|| workspace().join("fixtures/flickr8k").display().to_string())
}

fn train(out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "train",
        "--features",
        features().to_str().unwrap(),
        "--data",
        fixture(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--device",
        "cpu",
        "--seed",
        "3",
        "--batch-size",
        "16",
    ];
    args.extend_from_slice(extra);
    ok_json(&run(&args))
}

#[test]
fn training_is_deterministic_and_resumes_from_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let a = train(&dir.path().join("a"), &["--epochs", "3"]);
    let b = train(&dir.path().join("b"), &["--epochs", "2"]);
    assert_eq!(a["epochs"][0]["train_loss"], b["epochs"][0]["train_loss"]);
    assert_eq!(a["epochs"][1]["val_loss"], b["epochs"][1]["val_loss"]);
    // Losses fall on the fixture within a few epochs.
    assert!(a["epochs"][2]["train_loss"].as_f64() < a["epochs"][0]["train_loss"].as_f64());

    // Resume b from its best checkpoint for one more epoch.
    let ckpt = dir.path().join("b").join(format!(
        "{}.safetensors",
        b["best_checkpoint"].as_str().unwrap()
    ));
    let resumed = train(
        &dir.path().join("b"),
        &["--epochs", "3", "--resume", ckpt.to_str().unwrap()],
    );
    let epochs: Vec<u64> = resumed["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, [3]);
    let csv = std::fs::read_to_string(dir.path().join("b/metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(csv.starts_with("epoch,train_loss,val_loss"));
    // A resumed epoch 3 continues from the same weights as the uninterrupted run's epoch 3
    // (optimizer moments restart, so the numbers are close, not equal).
    let (x, y) = (
        resumed["epochs"][0]["val_loss"].as_f64().unwrap(),
        a["epochs"][2]["val_loss"].as_f64().unwrap(),
    );
    assert!((x - y).abs() < 0.5, "resumed {x} vs uninterrupted {y}");

    // Evaluate writes predictions for every test image and both protocols.
    let report = ok_json(&run(&[
        "evaluate",
        "--run",
        dir.path().join("a").to_str().unwrap(),
        "--features",
        features().to_str().unwrap(),
        "--data",
        fixture(),
        "--device",
        "cpu",
    ]));
    assert_eq!(report["images"], 16);
    assert_eq!(report["original_protocol_fair"], true);
    assert!(report["original_protocol"]["bleu1"].as_f64().unwrap() > 0.0);
    let tsv =
        std::fs::read_to_string(dir.path().join("a/eval-test-beam1.predictions.tsv")).unwrap();
    assert_eq!(tsv.lines().count(), 16);
    assert!(!tsv.contains("startseq") && !tsv.contains("endseq"));
}

/// The tutorial's `generate_desc`, re-running the model over the whole prefix each step.
fn naive_greedy(
    model: &caption_trainer::model::MergeModel,
    feature: &Tensor,
    cfg: &SearchConfig,
) -> Vec<u32> {
    let mut seq = vec![cfg.start as i64];
    let mut out = Vec::new();
    for _ in 0..cfg.max_length {
        let logp = model.prefix_log_probs(feature, &Tensor::from_slice(&seq).unsqueeze(0));
        let w = logp.argmax(-1, false).int64_value(&[0]);
        if w == 0 {
            break;
        }
        out.push(w as u32);
        seq.push(w);
        if w as u32 == cfg.end {
            break;
        }
    }
    out
}

#[test]
fn greedy_and_beam_one_equal_the_tutorials_loop_on_a_trained_model() {
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), &["--epochs", "4"]);
    let (ckpt, info) = best_checkpoint(dir.path()).unwrap();
    let (_vs, model) = load_model(&ckpt, &info, Device::Cpu).unwrap();
    let vocab = &info.vocab;
    let cfg = SearchConfig {
        beam: 1,
        max_length: info.max_length,
        length_penalty: 0.0,
        start: vocab.start_index().unwrap(),
        end: vocab.end_index().unwrap(),
    };
    let table = FeatureTable::load(features()).unwrap();
    let feats = table.features.narrow(0, 0, 24).to_kind(Kind::Float);
    let images: Vec<usize> = (0..24).collect();
    let g = greedy(&mut TchDecoder::new(&model, &feats), &images, &cfg).unwrap();
    let b = beam_search(&mut TchDecoder::new(&model, &feats), &images, &cfg).unwrap();
    let mut distinct = std::collections::HashSet::new();
    for i in 0..24 {
        let naive = naive_greedy(&model, &feats.narrow(0, i as i64, 1), &cfg);
        assert_eq!(g[i].tokens, naive, "image {i}");
        assert_eq!(b[i].tokens, naive, "beam 1, image {i}");
        distinct.insert(naive);
    }
    assert!(
        distinct.len() > 1,
        "the model should not caption every image alike"
    );
}

#[test]
fn caption_prints_captions_and_reports_unreadable_images() {
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), &["--epochs", "2"]);
    let image = workspace().join("fixtures/flickr8k/Flicker8k_Dataset/1056338697_4f7d7ce270.jpg");
    let bad = dir.path().join("broken.jpg");
    std::fs::write(&bad, "not a jpeg").unwrap();
    let weights = common::lite0_weights();
    let run_dir = dir.path().to_str().unwrap();
    let weights = weights.to_str().unwrap();
    let caption = |extra: &[&str]| {
        let mut a = vec!["caption", "--run", run_dir, "--weights", weights];
        a.extend_from_slice(extra);
        run(&a)
    };
    let out = caption(&["--json", "--device", "cpu", image.to_str().unwrap()]);
    // The event captiond publishes: camera `file`, the file in `image`.
    let event: caption_proto::mqtt::CaptionEvent = serde_json::from_value(ok_json(&out)).unwrap();
    assert!(!event.caption.is_empty());
    assert!(event.score < 0.0);
    assert_eq!(event.camera, caption_proto::mqtt::FILE_CAMERA);
    assert_eq!(event.image.as_deref(), Some(image.to_str().unwrap()));
    assert!(event.model_id.starts_with("model-ep"), "{}", event.model_id);
    assert!(event.latency_ms.encoder > 0.0);

    let out = caption(&[image.to_str().unwrap(), bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with(image.to_str().unwrap()), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.jpg") && stderr.contains("1 of 2"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `train --model attention` on the fixture's spatial features: the loss falls, the
/// checkpoint records the attention sizes, the shared search decodes it exactly like a
/// plain greedy loop over the model's step, `evaluate` and `caption` run it, `export`
/// writes a bundle the edge's engine captions exactly as tch does; pooled features are
/// refused.
#[test]
fn the_attention_model_trains_on_spatial_features() {
    let dir = tempfile::tempdir().unwrap();
    let spatial = dir.path().join("spatial.safetensors");
    extract(&spatial, &["--spatial"]);
    let weights = common::lite0_weights();
    let run_dir = dir.path().join("attention");
    let train_args = |features: &Path, out: &Path| {
        run(&[
            "train",
            "--model",
            "attention",
            "--features",
            features.to_str().unwrap(),
            "--data",
            fixture(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
            "--device",
            "cpu",
            "--seed",
            "3",
            "--batch-size",
            "16",
            "--epochs",
            "3",
            "--patience",
            "3",
        ])
    };
    let summary = ok_json(&train_args(&spatial, &run_dir));
    let epochs = summary["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 3, "{summary}");
    let loss = |i: usize| epochs[i]["train_loss"].as_f64().unwrap();
    assert!(loss(2) < loss(0), "train loss {} -> {}", loss(0), loss(2));
    let (ckpt, info) = best_checkpoint(&run_dir).unwrap();
    let a = info.attention.as_ref().expect("attention sizes recorded");
    assert_eq!((a.feature_dim, a.vocab_size), (1280, info.vocab.size()));
    assert_eq!(
        info.options.model,
        caption_trainer::train::ModelKind::Attention
    );
    let refused = load_model(&ckpt, &info, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(refused.contains("attention checkpoint"), "{refused}");

    // The shared search (beam 1) against a hand-written greedy loop over `step`.
    let (_vs, model) = caption_trainer::train::load_trained(&ckpt, &info, Device::Cpu).unwrap();
    let caption_trainer::train::TrainModel::Attention(m) = &model else {
        panic!("an attention checkpoint loads as attention");
    };
    let table = FeatureTable::load(&spatial).unwrap();
    let regions = table.features.narrow(0, 0, 4);
    let (start, end) = (
        info.vocab.start_index().unwrap(),
        info.vocab.end_index().unwrap(),
    );
    let cfg = SearchConfig {
        beam: 1,
        max_length: info.max_length,
        length_penalty: 0.0,
        start,
        end,
    };
    let searched = caption_trainer::evaluate::decode_trained(&model, &regions, &cfg, 4);
    for (i, hyp) in searched.iter().enumerate() {
        let r = m.regions(&regions.narrow(0, i as i64, 1));
        let (mut h, mut c) = m.initial_state(&r);
        let (mut word, mut naive) = (start as i64, Vec::new());
        for _ in 0..info.max_length {
            let (logp, h2, c2, _) = m.step(&r, &Tensor::from_slice(&[word]), &h, &c);
            word = logp.argmax(1, false).int64_value(&[0]);
            naive.push(word as u32);
            (h, c) = (h2, c2);
            if word == end as i64 {
                break;
            }
        }
        assert_eq!(hyp.tokens, naive, "image {i}");
    }

    let report = ok_json(&run(&[
        "evaluate",
        "--run",
        run_dir.to_str().unwrap(),
        "--features",
        spatial.to_str().unwrap(),
        "--data",
        fixture(),
        "--beam",
        "2",
        "--device",
        "cpu",
    ]));
    assert!(report["images"].as_u64().unwrap() > 0, "{report}");
    assert!(report["coco_cider_d"].as_f64().unwrap() >= 0.0, "{report}");
    let image = workspace().join("fixtures/flickr8k/Flicker8k_Dataset/1056338697_4f7d7ce270.jpg");
    let event = ok_json(&run(&[
        "caption",
        "--run",
        run_dir.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--json",
        "--device",
        "cpu",
        image.to_str().unwrap(),
    ]));
    assert!(event["caption"].is_string(), "{event}");

    // Exported (f32 graphs: spatial encoder, initial state, step), verified against tch by
    // the export itself, and run by the edge's engine: the same caption as tch.
    let bundle = dir.path().join("bundle");
    let report = ok_json(&run(&[
        "export",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--features-encoder",
        "efficientnet-lite0",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
        "--data",
        fixture(),
        "--verify-images",
        "6",
    ]));
    let f32 = &report["f32"];
    assert_eq!(f32["caption_agreement"].as_f64().unwrap(), 1.0, "{report}");
    assert!(
        f32["logprob_max_abs_diff"].as_f64().unwrap() <= 1e-4,
        "{report}"
    );
    assert!(
        f32["feature_cosine_min"].as_f64().unwrap() >= 0.9999,
        "{report}"
    );
    assert!(
        report["sizes"]["init.onnx"].as_u64().unwrap() > 0,
        "{report}"
    );
    let engine = caption_runtime::Engine::load(&bundle).unwrap();
    assert_eq!(
        engine.decoder_kind(),
        caption_proto::manifest::DecoderKind::Attention
    );
    assert_eq!(engine.feature_len(), 49 * 1280);
    let (caption, _) = engine.caption_file(&image, 1).unwrap();
    assert_eq!(caption.text, event["caption"].as_str().unwrap());
    let (beam3, _) = engine.caption_file(&image, 3).unwrap();
    assert!(!beam3.hypothesis.tokens.is_empty());
    // Where it looked: one map of 49 weights per generated token, each summing to one.
    let pixels = engine.preprocessing().from_file(&image).unwrap();
    let regions = engine.encode(&pixels).unwrap();
    let maps = engine
        .attention_maps(&regions, &caption.hypothesis.tokens)
        .unwrap();
    assert_eq!(maps.len(), caption.hypothesis.tokens.len());
    for m in &maps {
        assert_eq!(m.len(), 49);
        assert!((m.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    // The picture: the image, then one 224x224 panel per word, five per line.
    let png = dir.path().join("attention.png");
    let out = run(&[
        "caption",
        "--run",
        run_dir.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--device",
        "cpu",
        "--attention",
        png.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let words = String::from_utf8_lossy(&out.stdout)
        .trim_end()
        .split('\t')
        .nth(1)
        .unwrap()
        .split(' ')
        .count() as u32;
    let panels = words + 1;
    let pic = image::open(&png).unwrap();
    assert_eq!(
        (pic.width(), pic.height()),
        (224 * panels.min(5), 224 * panels.div_ceil(5))
    );
    // int8: the spatial encoder quantized (calibrated on its own feature map), the
    // decoder and initial state f16-stored; run by the engine as int8 and dequantised.
    let int8_dir = dir.path().join("int8");
    let report = ok_json(&run(&[
        "export",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--features-encoder",
        "efficientnet-lite0",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        int8_dir.to_str().unwrap(),
        "--data",
        fixture(),
        "--quantize",
        "int8",
        "--calibration-images",
        "20",
        "--verify-images",
        "6",
    ]));
    let cosine = report["int8"]["feature_cosine_min"].as_f64().unwrap();
    assert!(cosine > 0.9 && cosine < 1.0, "{report}");
    let m = caption_proto::manifest::Manifest::load_bundle(&int8_dir).unwrap();
    assert_eq!(
        m.manifest.decoder.kind,
        caption_proto::manifest::DecoderKind::Attention
    );
    assert_eq!(
        m.manifest.quantization.encoder_storage,
        caption_proto::manifest::Storage::Int8
    );
    assert_eq!(
        m.manifest.quantization.decoder_storage,
        caption_proto::manifest::Storage::F16
    );
    for precision in [Precision::Int8, Precision::F32] {
        let options = caption_runtime::EngineOptions {
            precision,
            threads: 1,
        };
        let engine = caption_runtime::Engine::load_with(&int8_dir, &options).unwrap();
        assert_eq!(engine.precision().precision, precision);
        let (c, _) = engine.caption_file(&image, 3).unwrap();
        assert!(!c.hypothesis.tokens.is_empty(), "{precision:?}");
    }

    let wrong = train_args(features(), &dir.path().join("wrong"));
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("pooled") && err.contains("--spatial"), "{err}");
}

//! The `captiond` binary: its version, and `captiond caption` (one-shot captions, as text
//! or JSON lines with the feature vector).

use std::path::{Path, PathBuf};
use std::process::Command;

use caption_proto::mqtt::{CaptionEvent, FILE_CAMERA};
use caption_runtime::Engine;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn captiond() -> Command {
    Command::new(env!("CARGO_BIN_EXE_captiond"))
}

#[test]
fn version_is_printed() {
    let out = captiond()
        .arg("--version")
        .output()
        .expect("captiond starts");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("captiond "), "{text}");
}

#[test]
fn caption_json_with_features_matches_the_engine() {
    let bundle = workspace().join("models/flickr8k-lite0-f16");
    let images = [
        workspace().join("examples/images/3537201804_ce07aff237.jpg"),
        workspace().join("examples/images/69710415_5c2bfb1058.jpg"),
    ];
    let out = captiond()
        .args(["caption", "--json", "--features", "--bundle"])
        .arg(&bundle)
        .args(&images)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let engine = Engine::load(&bundle).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), images.len());
    for (i, (line, image)) in lines.iter().zip(&images).enumerate() {
        let (caption, _) = engine.caption_file(image, 1).unwrap();
        // The daemon's caption event (camera `file`, the file in `image`), plus
        // `precision` and `features`.
        let event: CaptionEvent = serde_json::from_value(line.clone()).unwrap();
        assert_eq!(event.caption, caption.text);
        assert_eq!(event.model_id, "flickr8k-lite0-f16");
        assert_eq!(event.camera, FILE_CAMERA);
        assert_eq!(event.sequence, i as u64);
        assert_eq!(event.image.as_deref(), Some(image.to_str().unwrap()));
        assert!(
            event.latency_ms.encoder > 0.0 && event.latency_ms.total >= event.latency_ms.encoder
        );
        assert_eq!(line["precision"], "f32");
        let pixels = engine.preprocessing().from_file(image).unwrap();
        let expected = engine.encode(&pixels).unwrap();
        let got: Vec<f32> = line["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got.len(), engine.feature_dim());
        assert_eq!(got, expected, "features of {}", image.display());
    }

    // Plain lines carry no features; --features alone is refused.
    let plain = captiond()
        .args(["caption", "--bundle"])
        .arg(&bundle)
        .arg(&images[0])
        .output()
        .unwrap();
    let text = String::from_utf8(plain.stdout).unwrap();
    assert!(
        text.starts_with(&format!("{}\t", images[0].display())),
        "{text}"
    );
    let refused = captiond()
        .args(["caption", "--features"])
        .arg(&images[0])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--json"));
}

/// Without `--bundle`, `captiond caption` (run from the repository root) uses the default
/// bundle, the soft-attention model: the caption is the engine's beam-3 caption of that
/// bundle, and `--attention` draws the image and one panel per word, each the size the
/// bundle's encoder sees (240x240 for the Lite1 default).
#[test]
fn the_default_bundle_captions_and_shows_where_it_looked() {
    let bundle = workspace().join(caption_edge::DEFAULT_BUNDLE);
    let image = workspace().join("examples/images/3537201804_ce07aff237.jpg");
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("attention.png");
    let out = captiond()
        .current_dir(workspace())
        .args(["caption", "--beam", "3", "--attention"])
        .arg(&png)
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let engine = Engine::load(&bundle).unwrap();
    assert_eq!(
        engine.decoder_kind(),
        caption_proto::manifest::DecoderKind::Attention
    );
    let (caption, _) = engine.caption_file(&image, 3).unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains(&caption.text),
        "{stdout} vs {}",
        caption.text
    );
    let panels = caption.text.split(' ').count() as u32 + 1;
    let side = engine.preprocessing().size;
    let pic = image::open(&png).unwrap();
    assert_eq!(
        (pic.width(), pic.height()),
        (side * panels.min(5), side * panels.div_ceil(5))
    );
}

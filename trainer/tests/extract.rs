//! `caption-train extract` end to end on a small Flickr8k-layout folder with bad files.

mod common;
use common::{ok_json, run, workspace};

use std::path::Path;

/// Four real fixture images plus a truncated JPEG, a text file named .jpg and an id
/// without any image file.
fn dataset(dir: &Path) -> Vec<String> {
    let src = workspace().join("fixtures/flickr8k");
    let images = dir.join("Flicker8k_Dataset");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(dir.join("Flickr8k_text")).unwrap();
    let good: Vec<String> =
        std::fs::read_to_string(src.join("Flickr8k_text/Flickr_8k.testImages.txt"))
            .unwrap()
            .lines()
            .take(4)
            .map(str::to_owned)
            .collect();
    for name in &good {
        std::fs::copy(src.join("Flicker8k_Dataset").join(name), images.join(name)).unwrap();
    }
    let jpeg = std::fs::read(images.join(&good[0])).unwrap();
    std::fs::write(images.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    std::fs::write(images.join("notes.jpg"), "this is not an image").unwrap();
    let mut tokens = String::new();
    for name in good
        .iter()
        .map(String::as_str)
        .chain(["truncated.jpg", "notes.jpg", "absent.jpg"])
    {
        tokens.push_str(&format!("{name}#0\tA dog runs .\n"));
    }
    std::fs::write(dir.join("Flickr8k_text/Flickr8k.token.txt"), tokens).unwrap();
    for split in ["train", "dev", "test"] {
        std::fs::write(
            dir.join(format!("Flickr8k_text/Flickr_8k.{split}Images.txt")),
            good.join("\n"),
        )
        .unwrap();
    }
    good.iter()
        .map(|n| n.trim_end_matches(".jpg").to_owned())
        .collect()
}

fn weights() -> String {
    common::lite0_weights().display().to_string()
}

#[test]
fn extract_skips_bad_images_records_provenance_and_reuses_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let good = dataset(dir.path());
    let data = dir.path().display().to_string();
    let out_file = dir.path().join("out/features.safetensors");
    let out = out_file.display().to_string();
    let args = [
        "extract",
        "--data",
        &data,
        "--encoder",
        "efficientnet-lite0",
        "--weights",
        &weights(),
        "--out",
        &out,
        "--batch-size",
        "3",
        "--quiet",
    ];
    let first = run(&args);
    let s = ok_json(&first);
    assert_eq!(s["rows"], 4);
    assert_eq!(s["reused"], false);
    let skipped: Vec<&str> = s["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["path"].as_str().unwrap())
        .collect();
    assert_eq!(skipped.len(), 3);
    for bad in ["truncated.jpg", "notes.jpg", "absent.jpg"] {
        assert!(
            skipped.iter().any(|p| p.ends_with(bad)),
            "{bad} not in {skipped:?}"
        );
        assert!(String::from_utf8_lossy(&first.stderr).contains(bad));
    }

    let meta = caption_trainer::extract::read_metadata(&out_file).unwrap();
    let ids: Vec<String> = serde_json::from_str(&meta["ids"]).unwrap();
    assert_eq!(ids, good);
    assert_eq!(meta["encoder"], "efficientnet-lite0");
    assert_eq!(meta["random_init"], "false");
    assert_eq!(meta["weights_sha256"].len(), 64);
    let tensors = tch::Tensor::read_safetensors(&out_file).unwrap();
    assert_eq!(tensors[0].0, "features");
    assert_eq!(tensors[0].1.size(), [4, 1280]);
    assert!(!dir.path().join("out/features.safetensors.partial").exists());

    let again = ok_json(&run(&args));
    assert_eq!(again["reused"], true);
    assert_eq!(again["rows"], 4);

    let strict = run(&[&args[..], &["--strict"]].concat());
    assert!(!strict.status.success());
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(err.contains("--strict") && err.contains(".jpg"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `--spatial` keeps the 7x7 map as 49 float16 regions; averaged over the regions they
/// are the pooled vector (up to float16 rounding), and `train` refuses them for the merge
/// model with the reason.
#[test]
fn spatial_features_are_the_map_whose_mean_is_the_pooled_vector() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let data = dir.path().display().to_string();
    let pooled = dir.path().join("pooled.safetensors");
    let spatial = dir.path().join("spatial.safetensors");
    let extract = |out: &Path, extra: &[&str]| {
        let out = out.display().to_string();
        let w = weights();
        let mut args = vec![
            "extract",
            "--data",
            &data,
            "--encoder",
            "efficientnet-lite0",
            "--weights",
            &w,
            "--out",
            &out,
            "--quiet",
        ];
        args.extend_from_slice(extra);
        ok_json(&run(&args))
    };
    let p = extract(&pooled, &[]);
    assert_eq!(p["layout"], "pooled");
    let s = extract(&spatial, &["--spatial"]);
    assert_eq!(s["layout"], "spatial");
    assert_eq!(s["regions"], 49);
    assert_eq!(s["feature_dim"], 1280);
    // float16: half the bytes per value.
    let values = 4 * 49 * 1280;
    assert!(s["bytes"].as_u64().unwrap() >= 2 * values as u64);
    assert!(s["bytes"].as_u64().unwrap() < 2 * values as u64 + 64 * 1024);
    let meta = caption_trainer::extract::read_metadata(&spatial).unwrap();
    assert_eq!(meta["layout"], "spatial");
    assert_eq!(meta["grid"], "[7, 7]");

    let read = |path: &Path| tch::Tensor::read_safetensors(path).unwrap().remove(0).1;
    let map = read(&spatial);
    assert_eq!(map.size(), [4, 49, 1280]);
    assert_eq!(map.kind(), tch::Kind::Half);
    let mean = map
        .to_kind(tch::Kind::Float)
        .mean_dim(1, false, tch::Kind::Float);
    let vector = read(&pooled);
    let diff = (&mean - &vector).abs().max().double_value(&[]);
    let scale = vector.abs().max().double_value(&[]);
    assert!(
        diff <= 1e-3 * scale.max(1.0),
        "max |mean - pooled| {diff} (scale {scale})"
    );
    // Not all regions alike: it is a map, not a broadcast vector.
    let spread = map
        .to_kind(tch::Kind::Float)
        .std_dim(1, true, false)
        .mean(tch::Kind::Float);
    assert!(spread.double_value(&[]) > 1e-3);

    // A second run with --spatial reuses the file; without it, it does not.
    assert_eq!(extract(&spatial, &["--spatial"])["reused"], true);

    let run_dir = dir.path().join("run").display().to_string();
    let refused = run(&[
        "train",
        "--features",
        &spatial.display().to_string(),
        "--data",
        &data,
        "--out",
        &run_dir,
        "--epochs",
        "1",
        "--quiet",
    ]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("spatial") && err.contains("--spatial"),
        "{err}"
    );
}

#[test]
fn random_init_is_for_vgg16_only_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let data = dir.path().display().to_string();
    let out = dir.path().join("f.safetensors").display().to_string();
    let refused = run(&[
        "extract",
        "--data",
        &data,
        "--encoder",
        "efficientnet-lite0",
        "--random-init",
        "--out",
        &out,
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("only for vgg16"));

    let s = ok_json(&run(&[
        "extract",
        "--data",
        &data,
        "--encoder",
        "vgg16",
        "--random-init",
        "--out",
        &out,
        "--limit",
        "2",
        "--quiet",
    ]));
    assert_eq!(s["rows"], 2);
    assert_eq!(s["feature_dim"], 4096);
    let meta = caption_trainer::extract::read_metadata(Path::new(&out)).unwrap();
    assert_eq!(meta["random_init"], "true");
    assert_eq!(meta["weights_sha256"], "random-init");
}

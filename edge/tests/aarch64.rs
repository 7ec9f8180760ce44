//! The aarch64 build of captiond, run under qemu-user as a Cortex-A72 (Raspberry Pi 4) and a
//! Cortex-A76 (Pi 5), captions the example images exactly as the x86-64 build does. Each
//! board runs the precision `auto` picks for it (qemu sets the emulated CPU's HWCAP, which
//! the engine reads), and the x86-64 build runs that same precision for the comparison.
//!
//! Needs the cross-built binary, so it is ignored in a plain `cargo test`;
//! `scripts/check-aarch64.sh` builds it and runs this test with
//! `CAPTIOND_AARCH64=<aarch64 captiond>`; the x86-64 side is this crate's own `captiond`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Tolerance for the features: f32 sums may run in another order in tract's NEON kernels
/// than in its AVX2/FMA ones. Measured with tract 0.22.5 and the default int8 bundle: the
/// features were bit-identical on both CPU models (max |diff| 0).
const MIN_COSINE: f64 = 0.9999;
const MAX_ABS_DIFF: f64 = 1e-3;

struct Captioned {
    image: String,
    caption: String,
    precision: String,
    features: Vec<f64>,
}

fn env_path(name: &str) -> PathBuf {
    let value = std::env::var_os(name)
        .unwrap_or_else(|| panic!("{name} is not set: run scripts/check-aarch64.sh"));
    let path = PathBuf::from(value);
    assert!(path.is_file(), "{name}={} is not a file", path.display());
    path
}

fn example_images() -> Vec<PathBuf> {
    let dir = workspace_root().join("examples/images");
    let mut images: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    images.sort();
    assert!(images.len() >= 8, "expected the 8 example images");
    images
}

/// The MIDR part number each emulated CPU reports on real hardware. qemu-user 7.2 shows
/// the guest the host's /proc/cpuinfo, where tract-linalg looks for it to pick its arm64
/// kernels, so it is passed through tract's override to select them as on the boards.
fn cpu_part(cpu: &str) -> &'static str {
    match cpu {
        "cortex-a72" => "0xd08",
        "cortex-a76" => "0xd0b",
        _ => panic!("no part number for {cpu}"),
    }
}

/// `captiond caption --json --features --precision <precision>`, natively (`cpu` None) or
/// under qemu-aarch64.
fn caption(
    cpu: Option<&str>,
    binary: &Path,
    precision: &str,
    images: &[PathBuf],
) -> Vec<Captioned> {
    let bundle = workspace_root().join("models/flickr8k-lite1-attention-f16");
    let mut cmd = match cpu {
        None => Command::new(binary),
        Some(cpu) => {
            let mut cmd = Command::new("qemu-aarch64");
            cmd.args(["-cpu", cpu, "-L", "/usr/aarch64-linux-gnu"])
                .env("TRACT_CPU_AARCH64_OVERRIDE_CPU_PART", cpu_part(cpu))
                .arg(binary);
            cmd
        }
    };
    cmd.args(["caption", "--json", "--features", "--threads", "1"])
        .args(["--precision", precision, "--bundle"])
        .arg(&bundle)
        .args(images);
    let started = Instant::now();
    let out = cmd.output().expect("captiond starts");
    assert!(
        out.status.success(),
        "{cpu:?} captiond failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{} captioned {} images in {:.1} s; {}",
        cpu.unwrap_or("x86-64"),
        images.len(),
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("one JSON object per line");
            Captioned {
                image: v["image"].as_str().unwrap().to_owned(),
                caption: v["caption"].as_str().unwrap().to_owned(),
                precision: v["precision"].as_str().unwrap().to_owned(),
                features: v["features"]
                    .as_array()
                    .expect("features")
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect(),
            }
        })
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
#[ignore = "needs the aarch64 build: scripts/check-aarch64.sh"]
fn aarch64_under_qemu_captions_like_x86() {
    let host = PathBuf::from(env!("CARGO_BIN_EXE_captiond"));
    let arm = env_path("CAPTIOND_AARCH64");
    let images = example_images();

    for cpu in ["cortex-a72", "cortex-a76"] {
        let got = caption(Some(cpu), &arm, "auto", &images);
        let precision = got[0].precision.clone();
        assert!(
            got.iter().all(|g| g.precision == precision) && precision != "auto",
            "{cpu}: one concrete precision"
        );
        let reference = caption(None, &host, &precision, &images);
        assert_eq!(reference.len(), images.len());
        assert_eq!(got.len(), reference.len(), "{cpu}: one line per image");
        let (mut worst_cos, mut worst_diff) = (1.0f64, 0.0f64);
        for (r, g) in reference.iter().zip(&got) {
            assert_eq!(r.image, g.image);
            assert_eq!(r.caption, g.caption, "{cpu}: caption of {}", r.image);
            assert_eq!(r.features.len(), g.features.len());
            let diff = r
                .features
                .iter()
                .zip(&g.features)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            worst_cos = worst_cos.min(cosine(&r.features, &g.features));
            worst_diff = worst_diff.max(diff);
        }
        eprintln!(
            "{cpu} ({precision}): {} captions identical; features cosine min {worst_cos:.9}, max |diff| {worst_diff:.3e}",
            got.len()
        );
        assert!(worst_cos >= MIN_COSINE, "{cpu}: feature cosine {worst_cos}");
        assert!(
            worst_diff <= MAX_ABS_DIFF,
            "{cpu}: feature max |diff| {worst_diff}"
        );
    }
}

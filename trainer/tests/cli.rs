//! Integration tests that run the real `caption-train` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture() -> PathBuf {
    workspace().join("fixtures/flickr8k")
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn caption_train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_caption-train"))
        .args(args)
        .output()
        .expect("caption-train starts")
}

fn stdout_last_line(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().last().unwrap_or("").to_owned()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "caption-train failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A failure that is reported, not a panic, and whose message holds every `needles`.
fn assert_clean_failure(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success");
    assert!(!stderr.contains("panicked"), "panicked:\n{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
    }
}

const FIGURES: [&str; 10] = [
    "images",
    "captions",
    "vocabulary",
    "train_images",
    "dev_images",
    "test_images",
    "train_vocab_size",
    "max_length",
    "train_pairs",
    "dev_pairs",
];

#[test]
fn prepare_on_fixture_matches_the_tutorial_golden_values() {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(data("prepare-golden.json")).unwrap())
            .unwrap();
    for rules in ["original", "standard"] {
        let out_dir = tempfile::tempdir().unwrap();
        let out = caption_train(&[
            "prepare",
            "--data",
            fixture().to_str().unwrap(),
            "--out",
            out_dir.path().to_str().unwrap(),
            "--text",
            rules,
        ]);
        assert_ok(&out);
        let summary: Value = serde_json::from_str(&stdout_last_line(&out)).unwrap();
        let want = &golden[rules];
        for key in FIGURES {
            assert_eq!(summary[key], want[key], "{rules}: {key}");
        }
        assert_eq!(summary["missing_images"][0], "2258277193_586949ec62");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("2258277193_586949ec62"), "{stderr}");

        let descriptions =
            std::fs::read_to_string(out_dir.path().join("descriptions.txt")).unwrap();
        assert_eq!(descriptions, want["descriptions_txt"].as_str().unwrap());

        let vocab = caption_proto::Vocabulary::load(&out_dir.path().join("vocab.json")).unwrap();
        let words: Vec<&str> = (1..vocab.size() as u32)
            .map(|i| vocab.word(i).unwrap())
            .collect();
        let want_words: Vec<&str> = want["train_words"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap())
            .collect();
        assert_eq!(words, want_words, "{rules}: Keras word index order");
    }
}

/// The full-data figures of the issue; runs where the real Flickr8k is present.
#[test]
fn prepare_on_full_flickr8k_gives_the_tutorial_figures() {
    let root = std::env::var_os("FLICKR8K_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/flickr8k"));
    if !root.join("Flickr8k_text").is_dir() {
        eprintln!(
            "SKIPPED: full Flickr8k not found at {} (set FLICKR8K_DIR)",
            root.display()
        );
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = caption_train(&[
        "prepare",
        "--data",
        root.to_str().unwrap(),
        "--out",
        out_dir.path().to_str().unwrap(),
    ]);
    assert_ok(&out);
    let summary: Value = serde_json::from_str(&stdout_last_line(&out)).unwrap();
    let want = [
        8_092, 40_460, 8_763, 6_000, 1_000, 1_000, 7_579, 34, 306_404, 50_903,
    ];
    for (key, want) in FIGURES.iter().zip(want) {
        assert_eq!(summary[key], want, "{key}");
    }
}

fn relative_diff(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / a.abs().max(b.abs())
    }
}

#[test]
fn bleu_agrees_with_nltk_and_pycocoevalcap() {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(data("bleu/golden.json")).unwrap()).unwrap();
    let corpora = golden.as_object().unwrap();
    assert_eq!(corpora.len(), 4);
    for (name, scores) in corpora {
        let refs = data(&format!("bleu/{name}.refs.tsv"));
        let hyps = data(&format!("bleu/{name}.hyps.tsv"));
        let (refs, hyps) = (refs.to_str().unwrap(), hyps.to_str().unwrap());
        for (weights, want) in scores["nltk"].as_object().unwrap() {
            let out =
                caption_train(&["bleu", "--refs", refs, "--hyps", hyps, "--weights", weights]);
            assert_ok(&out);
            let got: f64 = stdout_last_line(&out).parse().unwrap();
            let want = want.as_f64().unwrap();
            assert!(
                relative_diff(got, want) <= 1e-12,
                "{name} weights {weights}: got {got:?}, NLTK {want:?}"
            );
        }
        let out = caption_train(&["bleu", "--refs", refs, "--hyps", hyps, "--coco"]);
        assert_ok(&out);
        let got: Value = serde_json::from_str(&stdout_last_line(&out)).unwrap();
        for (n, want) in scores["coco"].as_array().unwrap().iter().enumerate() {
            let got = got[format!("bleu{}", n + 1)].as_f64().unwrap();
            let want = want.as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-9,
                "{name} coco BLEU-{}: got {got:?}, pycocoevalcap {want:?}",
                n + 1
            );
        }
    }
    // No unigram match anywhere: NLTK's exact 0.
    let out = caption_train(&[
        "bleu",
        "--refs",
        data("bleu/no-match.refs.tsv").to_str().unwrap(),
        "--hyps",
        data("bleu/no-match.hyps.tsv").to_str().unwrap(),
    ]);
    assert_eq!(stdout_last_line(&out), "0.0");
}

#[test]
fn bleu_bad_input_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let refs = dir.path().join("refs.tsv");
    let hyps = dir.path().join("hyps.tsv");
    std::fs::write(&refs, "a\tdog runs\na\ta dog\nb\tcat\n").unwrap();
    let (r, h) = (refs.to_str().unwrap(), hyps.to_str().unwrap());

    std::fs::write(&hyps, "a\tdog\nc\tbird\n").unwrap();
    let out = caption_train(&["bleu", "--refs", r, "--hyps", h]);
    assert_clean_failure(&out, &["hyps.tsv:2", "\"c\"", "refs.tsv"]);

    std::fs::write(&hyps, "a\tdog\nb cat\n").unwrap();
    let out = caption_train(&["bleu", "--refs", r, "--hyps", h]);
    assert_clean_failure(&out, &["hyps.tsv:2", "no tab"]);

    let missing = dir.path().join("nope.tsv");
    let out = caption_train(&["bleu", "--refs", missing.to_str().unwrap(), "--hyps", h]);
    assert_clean_failure(&out, &["nope.tsv"]);

    std::fs::write(&hyps, "a\tdog runs\n").unwrap();
    let out = caption_train(&["bleu", "--refs", r, "--hyps", h, "--weights", "0.5,half"]);
    assert_clean_failure(&out, &["--weights", "weight 2", "half"]);

    // The same files score once valid: an exact match of the right length is 1.
    let out = caption_train(&["bleu", "--refs", r, "--hyps", h, "--weights", "1"]);
    assert_ok(&out);
    assert_eq!(stdout_last_line(&out), "1.0");
}

#[test]
fn prepare_bad_input_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = caption_train(&[
        "prepare",
        "--data",
        dir.path().to_str().unwrap(),
        "--out",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert_clean_failure(&out, &["Flickr8k.token.txt"]);
    let out = caption_train(&["prepare", "--data", "x", "--out", "y", "--text", "fancy"]);
    assert_clean_failure(&out, &["fancy", "original", "standard"]);
}

/// The binary finds libtorch through its embedded rpath: no LD_LIBRARY_PATH, no LIBTORCH.
#[test]
fn binary_runs_without_library_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_caption-train"))
        .arg("device")
        .env_clear()
        .output()
        .expect("caption-train starts");
    assert_ok(&out);
    let report: Value = serde_json::from_str(&stdout_last_line(&out)).unwrap();
    assert_eq!(report["smoke_test_sum"], 6.5);
}

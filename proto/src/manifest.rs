//! The model bundle manifest (`manifest.toml`): the contract between the trainer's export
//! and the edge daemon. Loading checks everything that can be checked without an
//! inference engine: format version, files present, sha256 checksums, the vocabulary and
//! the sizes that must agree; the engine then checks the ONNX shapes against it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::preprocess::Preprocessing;
use crate::text::TextRules;
use crate::vocab::Vocabulary;

/// The newest manifest layout this build reads and writes.
pub const BUNDLE_FORMAT_VERSION: u32 = 1;
/// The manifest's file name inside a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.toml";
/// The file names the exporter gives a bundle's graphs and vocabulary (the manifest's
/// `encoder.file`, `decoder.file` and `vocabulary.file` may name others).
pub const ENCODER_FILE: &str = "encoder.onnx";
pub const DECODER_FILE: &str = "decoder.onnx";
pub const VOCAB_FILE: &str = "vocab.json";
/// The encoder graph's input (normalised image `[N, 3, S, S]`) and output (features
/// `[N, D]`); the engine binds them by these names.
pub const ENCODER_INPUT: &str = "image";
pub const ENCODER_OUTPUT: &str = "features";
/// The decoder step graph's inputs: features `[N, D]`, previous words `[N]` (int64), LSTM
/// state `h` and `c` `[N, H]`; and outputs: log-probabilities `[N, V]`, new `h`, new `c`.
pub const DECODER_INPUTS: [&str; 4] = ["features", "words", "h", "c"];
pub const DECODER_OUTPUTS: [&str; 3] = ["log_probs", "h_out", "c_out"];

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid manifest: {problem}")]
    Parse { path: PathBuf, problem: String },
    #[error("{path}: field `{field}`: {problem}")]
    Field {
        path: PathBuf,
        field: String,
        problem: String,
    },
    #[error("{path}: checksum mismatch (field `files.\"{name}\"` says {expected}, the file has {actual})")]
    Checksum {
        path: PathBuf,
        name: String,
        expected: String,
        actual: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderSection {
    /// `vgg16` or `efficientnet-lite0`.
    pub name: String,
    /// File name of the encoder graph inside the bundle.
    pub file: String,
    pub feature_dim: usize,
    pub preprocessing: Preprocessing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderSection {
    pub file: String,
    pub vocab_size: usize,
    pub embed_dim: usize,
    pub hidden: usize,
    /// Most words a caption may have (the training `max_length`).
    pub max_length: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VocabularySection {
    pub file: String,
    pub text_rules: TextRules,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// Short identifier published with every caption, e.g. `flickr8k-lite0-int8`.
    pub model_id: String,
    pub encoder: EncoderSection,
    pub decoder: DecoderSection,
    pub vocabulary: VocabularySection,
    /// sha256 (lowercase hex) of every file of the bundle, by file name.
    pub files: BTreeMap<String, String>,
    /// Quantization scheme and its details, free-form but documented by the exporter.
    #[serde(default)]
    pub quantization: BTreeMap<String, String>,
    /// Where the model came from: data, commands, epochs, losses.
    #[serde(default)]
    pub provenance: BTreeMap<String, String>,
    /// Scores measured on this very bundle (e.g. `coco_bleu4`), and the export's
    /// verification report.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

/// A loaded, checked bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub vocabulary: Vocabulary,
}

impl Bundle {
    pub fn encoder_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.encoder.file)
    }

    pub fn decoder_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.decoder.file)
    }
}

/// sha256 of a file as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, std::io::Error> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

impl Manifest {
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("manifest serialises")
    }

    /// Parse manifest text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Manifest, ManifestError> {
        let field_err = |field: &str, problem: String| ManifestError::Field {
            path: origin.to_owned(),
            field: field.to_owned(),
            problem,
        };
        // Read the version first, so a newer layout is refused with that reason rather
        // than with whatever field it renamed.
        let raw: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ManifestError::Parse {
                path: origin.to_owned(),
                problem: e.to_string(),
            })?;
        match raw.get("format_version").and_then(toml::Value::as_integer) {
            None => {
                return Err(field_err(
                    "format_version",
                    "missing or not an integer".into(),
                ));
            }
            Some(v) if v < 1 || v > BUNDLE_FORMAT_VERSION as i64 => {
                return Err(field_err(
                    "format_version",
                    format!("is {v}; this build reads versions 1 to {BUNDLE_FORMAT_VERSION}"),
                ));
            }
            Some(_) => {}
        }
        let manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: origin.to_owned(),
            problem: e.to_string(),
        })?;
        if manifest.encoder.preprocessing.size == 0 {
            return Err(field_err(
                "encoder.preprocessing.size",
                "must be positive".into(),
            ));
        }
        for (field, value) in [
            ("encoder.feature_dim", manifest.encoder.feature_dim),
            ("decoder.vocab_size", manifest.decoder.vocab_size),
            ("decoder.embed_dim", manifest.decoder.embed_dim),
            ("decoder.hidden", manifest.decoder.hidden),
            ("decoder.max_length", manifest.decoder.max_length),
        ] {
            if value == 0 {
                return Err(field_err(field, "must be positive".into()));
            }
        }
        for (field, file) in [
            ("encoder.file", &manifest.encoder.file),
            ("decoder.file", &manifest.decoder.file),
            ("vocabulary.file", &manifest.vocabulary.file),
        ] {
            if !manifest.files.contains_key(file) {
                return Err(field_err(
                    field,
                    format!("names {file:?}, which has no checksum under `files`"),
                ));
            }
        }
        for (name, sum) in &manifest.files {
            let plain =
                !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..";
            if !plain {
                return Err(field_err(
                    &format!("files.\"{name}\""),
                    "must be a plain file name inside the bundle".into(),
                ));
            }
            if sum.len() != 64
                || !sum
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            {
                return Err(field_err(
                    &format!("files.\"{name}\""),
                    format!("{sum:?} is not a lowercase hex sha256"),
                ));
            }
        }
        Ok(manifest)
    }

    /// Load `<dir>/manifest.toml` and check the bundle: every file present with its
    /// checksum, the vocabulary readable and of the decoder's size.
    pub fn load_bundle(dir: &Path) -> Result<Bundle, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        let manifest = Manifest::parse(&text, &path)?;
        for (name, expected) in &manifest.files {
            let file = dir.join(name);
            let actual = sha256_file(&file).map_err(|source| ManifestError::Read {
                path: file.clone(),
                source,
            })?;
            if &actual != expected {
                return Err(ManifestError::Checksum {
                    path: file,
                    name: name.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let vocab_path = dir.join(&manifest.vocabulary.file);
        let vocabulary = Vocabulary::load(&vocab_path).map_err(|e| ManifestError::Field {
            path: path.clone(),
            field: "vocabulary.file".into(),
            problem: e.to_string(),
        })?;
        if vocabulary.size() != manifest.decoder.vocab_size {
            return Err(ManifestError::Field {
                path,
                field: "decoder.vocab_size".into(),
                problem: format!(
                    "is {} but {} holds {} entries",
                    manifest.decoder.vocab_size,
                    vocab_path.display(),
                    vocabulary.size()
                ),
            });
        }
        if vocabulary.text_rules() != manifest.vocabulary.text_rules {
            return Err(ManifestError::Field {
                path,
                field: "vocabulary.text_rules".into(),
                problem: format!(
                    "is {} but {} was built with {}",
                    manifest.vocabulary.text_rules,
                    vocab_path.display(),
                    vocabulary.text_rules()
                ),
            });
        }
        Ok(Bundle {
            dir: dir.to_owned(),
            manifest,
            vocabulary,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bundle directory with placeholder graph files (the checks here do not read them).
    fn bundle(dir: &Path) -> Manifest {
        let vocab = Vocabulary::fit(["startseq a dog endseq"], TextRules::Standard, 1);
        vocab.save(&dir.join("vocab.json")).unwrap();
        std::fs::write(dir.join("encoder.onnx"), b"encoder bytes").unwrap();
        std::fs::write(dir.join("decoder.onnx"), b"decoder bytes").unwrap();
        let files = ["encoder.onnx", "decoder.onnx", "vocab.json"]
            .iter()
            .map(|n| (n.to_string(), sha256_file(&dir.join(n)).unwrap()))
            .collect();
        let manifest = Manifest {
            format_version: 1,
            model_id: "test".into(),
            encoder: EncoderSection {
                name: "efficientnet-lite0".into(),
                file: "encoder.onnx".into(),
                feature_dim: 1280,
                preprocessing: Preprocessing::efficientnet_lite(224),
            },
            decoder: DecoderSection {
                file: "decoder.onnx".into(),
                vocab_size: vocab.size(),
                embed_dim: 256,
                hidden: 256,
                max_length: 34,
            },
            vocabulary: VocabularySection {
                file: "vocab.json".into(),
                text_rules: TextRules::Standard,
            },
            files,
            quantization: [("scheme".to_string(), "none".to_string())].into(),
            provenance: BTreeMap::new(),
            metrics: [("coco_bleu4".to_string(), 0.189)].into(),
        };
        std::fs::write(dir.join(MANIFEST_FILE), manifest.to_toml()).unwrap();
        manifest
    }

    #[test]
    fn a_good_bundle_loads_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = bundle(dir.path());
        let loaded = Manifest::load_bundle(dir.path()).unwrap();
        assert_eq!(loaded.manifest, manifest);
        assert_eq!(loaded.vocabulary.size(), 5);
        assert_eq!(loaded.encoder_path(), dir.path().join("encoder.onnx"));
    }

    fn error_of(dir: &Path) -> String {
        Manifest::load_bundle(dir).unwrap_err().to_string()
    }

    fn edit(dir: &Path, f: impl FnOnce(&mut toml::Table)) {
        let path = dir.join(MANIFEST_FILE);
        let mut t: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        f(&mut t);
        std::fs::write(path, toml::to_string(&t).unwrap()).unwrap();
    }

    #[test]
    fn a_changed_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path());
        std::fs::write(dir.path().join("decoder.onnx"), b"tampered").unwrap();
        let msg = error_of(dir.path());
        assert!(
            msg.contains("decoder.onnx") && msg.contains("checksum mismatch"),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path());
        std::fs::remove_file(dir.path().join("encoder.onnx")).unwrap();
        let msg = error_of(dir.path());
        assert!(msg.contains("encoder.onnx"), "{msg}");
    }

    #[test]
    fn a_newer_format_is_refused_by_version() {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path());
        edit(dir.path(), |t| {
            t.insert("format_version".into(), 2.into());
            t.insert("renamed_section".into(), 1.into());
        });
        let msg = error_of(dir.path());
        assert!(
            msg.contains("manifest.toml")
                && msg.contains("`format_version`")
                && msg.contains("is 2"),
            "{msg}"
        );
    }

    #[test]
    fn mismatched_sizes_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path());
        edit(dir.path(), |t| {
            t["decoder"]
                .as_table_mut()
                .unwrap()
                .insert("vocab_size".into(), 99.into());
        });
        let msg = error_of(dir.path());
        assert!(
            msg.contains("`decoder.vocab_size`") && msg.contains("is 99"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_fields_are_named() {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path());
        edit(dir.path(), |t| {
            t["files"]
                .as_table_mut()
                .unwrap()
                .insert("../evil".into(), "00".into());
        });
        let msg = error_of(dir.path());
        assert!(msg.contains("files.\"../evil\""), "{msg}");

        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path());
        edit(dir.path(), |t| {
            t["encoder"]
                .as_table_mut()
                .unwrap()
                .insert("feature_dim".into(), "wide".into());
        });
        let msg = error_of(dir.path());
        assert!(
            msg.contains("manifest.toml") && msg.contains("feature_dim"),
            "{msg}"
        );

        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            "format_version = 1\n[encoder\n",
        )
        .unwrap();
        assert!(error_of(dir.path()).contains("not a valid manifest"));
    }
}

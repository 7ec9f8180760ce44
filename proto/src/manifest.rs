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

/// The manifest layout this build writes. Version 2 made `quantization` and `provenance`
/// typed sections (numbers as numbers); version 1 manifests (string maps) are still read,
/// converted in memory ([`Manifest::parse`]).
pub const BUNDLE_FORMAT_VERSION: u32 = 2;
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
/// An attention bundle's encoder outputs regions `[N, R, C]` under [`ENCODER_OUTPUT`]; its
/// initial-state graph maps them to the LSTM state and to the regions' attention keys
/// `[N, R, A]` (their projection, which depends on the image only, so it is computed once
/// per image instead of once per beam and step); its step graph takes both and also
/// returns the attention weights `[N, R]`.
pub const INIT_FILE: &str = "init.onnx";
pub const ATTENTION_INIT_INPUTS: [&str; 1] = ["regions"];
pub const ATTENTION_INIT_OUTPUTS: [&str; 3] = ["h", "c", "keys"];
pub const ATTENTION_STEP_INPUTS: [&str; 5] = ["regions", "keys", "words", "h", "c"];
pub const ATTENTION_STEP_OUTPUTS: [&str; 4] = ["log_probs", "h_out", "c_out", "attention"];

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
    /// Channels of the feature vector, or of each region (attention bundles).
    pub feature_dim: usize,
    /// Regions of the encoder's output map (attention bundles: `[N, regions, feature_dim]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<usize>,
    pub preprocessing: Preprocessing,
}

/// Which caption model a bundle's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecoderKind {
    /// The tutorial's merge model: one step from (features, word, h, c), zero initial state.
    #[default]
    Merge,
    /// Soft attention over the encoder's regions, with an initial-state graph.
    Attention,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderSection {
    /// `merge` (the default when absent) or `attention`.
    #[serde(default)]
    pub kind: DecoderKind,
    pub file: String,
    /// Attention bundles: the initial-state graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_file: Option<String>,
    pub vocab_size: usize,
    pub embed_dim: usize,
    pub hidden: usize,
    /// Most words a caption may have (the training `max_length`).
    pub max_length: usize,
    /// Beam search ranks finished captions by `log_prob / len^length_penalty`: 0 (the
    /// default when absent) is the plain sum, which favours short captions. Chosen on the
    /// dev split when the bundle is made (`caption-train export --length-penalty`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub length_penalty: f32,
}

fn is_zero(v: &f32) -> bool {
    *v == 0.0
}

/// The largest `decoder.length_penalty` a manifest may hold: past it, beam ranking is
/// dominated by length rather than by the model.
pub const MAX_LENGTH_PENALTY: f32 = 4.0;

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
    /// How the weights are stored and computed.
    pub quantization: Quantization,
    /// Where the model came from: data, commands, epochs, losses.
    pub provenance: Provenance,
    /// Scores measured on this very bundle (e.g. `coco_bleu4`), and the export's
    /// verification report.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

/// How a graph's weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    F32,
    /// float16 storage, cast to f32 at load; f32 compute.
    F16,
    /// int8 weights (symmetric per output channel) with int8 activations.
    Int8,
}

/// The bundle's quantization scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// Every weight f32.
    None,
    /// Weights stored as float16 (encoder and decoder, or the decoder only); f32 compute.
    Float16,
    /// Static int8 encoder convolutions (`QLinearConv`: int8 weights symmetric per output
    /// channel, int8 activations affine per tensor from calibration, BatchNorm folded,
    /// ReLU/ReLU6 folded into the output range).
    Int8Static,
}

/// The `[quantization]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    pub scheme: Scheme,
    pub encoder_storage: Storage,
    pub decoder_storage: Storage,
    /// int8: Flickr8k train images whose activation min/max set the int8 ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_images: Option<u64>,
    /// int8: encoder layers run as int8, and those left in f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_int8_layers: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_f32_layers: Option<u64>,
    /// int8: the depthwise convolutions' storage (`f32` or `int8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_depthwise: Option<Storage>,
    /// int8: the fully connected layers' form (`f32` or `int8-conv1x1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_fully_connected: Option<String>,
}

impl Quantization {
    /// All f32.
    pub fn none() -> Quantization {
        Quantization::float(Storage::F32, Storage::F32)
    }

    /// A float bundle with these storages (`float16` when either is f16).
    pub fn float(encoder: Storage, decoder: Storage) -> Quantization {
        let scheme = if encoder == Storage::F16 || decoder == Storage::F16 {
            Scheme::Float16
        } else {
            Scheme::None
        };
        Quantization {
            scheme,
            encoder_storage: encoder,
            decoder_storage: decoder,
            calibration_images: None,
            encoder_int8_layers: None,
            encoder_f32_layers: None,
            encoder_depthwise: None,
            encoder_fully_connected: None,
        }
    }
}

/// The `[provenance]` section: where the model came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// The program that wrote the bundle, e.g. `caption-train 0.1.0`.
    pub exporter: String,
    /// The training data.
    pub data: String,
    /// The encoder's weights file (or `random (seed N)`).
    pub encoder_weights: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_command: Option<String>,
    /// The training checkpoint and its epoch and losses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// The features file the decoder was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features_file: Option<String>,
    /// The split the export's parity checks ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_split: Option<String>,
    /// For a bundle rebuilt by `caption-train float-bundle`: the bundle it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub float_bundle_of: Option<String>,
    /// The training options (`caption-train train` flags), as a table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_options: Option<toml::Table>,
}

/// Version 1's string-valued sections, converted field by field.
mod v1 {
    use super::*;

    fn number<T: std::str::FromStr>(
        map: &BTreeMap<String, String>,
        section: &str,
        key: &str,
    ) -> Result<Option<T>, (String, String)> {
        map.get(key)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| (format!("{section}.{key}"), format!("{v:?} is not a number")))
            })
            .transpose()
    }

    pub fn quantization(q: &BTreeMap<String, String>) -> Result<Quantization, (String, String)> {
        let scheme = q.get("scheme").map(String::as_str).unwrap_or("none (f32)");
        let decoder = match q.get("decoder") {
            Some(d) if d.contains("float16") => Storage::F16,
            _ => Storage::F32,
        };
        if scheme.starts_with("none") {
            return Ok(Quantization::float(Storage::F32, decoder));
        }
        if scheme.contains("float16") {
            return Ok(Quantization::float(Storage::F16, decoder));
        }
        if scheme != "int8 static" {
            return Err((
                "quantization.scheme".into(),
                format!("{scheme:?} is not a scheme version 1 wrote"),
            ));
        }
        // "min/max of every quantized tensor over 300 Flickr8k train images ...".
        let calibration_images = q
            .get("calibration")
            .and_then(|c| c.split("over ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok());
        let depthwise = match q.get("encoder_depthwise").map(String::as_str) {
            Some("int8") => Some(Storage::Int8),
            Some(_) => Some(Storage::F32),
            None => None,
        };
        Ok(Quantization {
            scheme: Scheme::Int8Static,
            encoder_storage: Storage::Int8,
            decoder_storage: decoder,
            calibration_images,
            encoder_int8_layers: number(q, "quantization", "encoder_int8_layers")?,
            encoder_f32_layers: number(q, "quantization", "encoder_f32_layers")?,
            encoder_depthwise: depthwise,
            encoder_fully_connected: q.get("encoder_fully_connected").cloned(),
        })
    }

    pub fn provenance(p: &BTreeMap<String, String>) -> Result<Provenance, (String, String)> {
        let text = |k: &str| p.get(k).cloned();
        let training_options = match p.get("training_options") {
            None => None,
            Some(json) => Some(serde_json::from_str::<toml::Table>(json).map_err(|e| {
                (
                    "provenance.training_options".to_owned(),
                    format!("not a JSON object: {e}"),
                )
            })?),
        };
        Ok(Provenance {
            exporter: text("exporter").unwrap_or_default(),
            data: text("data").unwrap_or_default(),
            encoder_weights: text("encoder_weights").unwrap_or_default(),
            export_command: text("export_command"),
            checkpoint: text("checkpoint"),
            epoch: number(p, "provenance", "epoch")?,
            train_loss: number(p, "provenance", "train_loss")?,
            val_loss: number(p, "provenance", "val_loss")?,
            features_file: text("features_file"),
            verify_split: text("verify_split"),
            float_bundle_of: text("float_bundle_of"),
            training_options,
        })
    }

    /// The whole version 1 layout.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ManifestV1 {
        /// Always 1 here (checked before); kept so that the layout is complete.
        #[allow(dead_code)]
        pub format_version: u32,
        pub model_id: String,
        pub encoder: EncoderSection,
        pub decoder: DecoderSection,
        pub vocabulary: VocabularySection,
        pub files: BTreeMap<String, String>,
        #[serde(default)]
        pub quantization: BTreeMap<String, String>,
        #[serde(default)]
        pub provenance: BTreeMap<String, String>,
        #[serde(default)]
        pub metrics: BTreeMap<String, f64>,
    }
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

    /// The initial-state graph of an attention bundle.
    pub fn init_path(&self) -> Option<PathBuf> {
        self.manifest
            .decoder
            .init_file
            .as_ref()
            .map(|f| self.dir.join(f))
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
        let parse_err = |e: toml::de::Error| ManifestError::Parse {
            path: origin.to_owned(),
            problem: e.to_string(),
        };
        let manifest: Manifest =
            if raw.get("format_version").and_then(toml::Value::as_integer) == Some(1) {
                let old: v1::ManifestV1 = toml::from_str(text).map_err(parse_err)?;
                let migrate_err = |(field, problem): (String, String)| field_err(&field, problem);
                Manifest {
                    format_version: BUNDLE_FORMAT_VERSION,
                    model_id: old.model_id,
                    encoder: old.encoder,
                    decoder: old.decoder,
                    vocabulary: old.vocabulary,
                    files: old.files,
                    quantization: v1::quantization(&old.quantization).map_err(migrate_err)?,
                    provenance: v1::provenance(&old.provenance).map_err(migrate_err)?,
                    metrics: old.metrics,
                }
            } else {
                toml::from_str(text).map_err(parse_err)?
            };
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
        let lp = manifest.decoder.length_penalty;
        if !(0.0..=MAX_LENGTH_PENALTY).contains(&lp) {
            return Err(field_err(
                "decoder.length_penalty",
                format!(
                    "must be a number from 0 to {MAX_LENGTH_PENALTY} (the exponent of the caption \
                     length in beam ranking), got {lp}"
                ),
            ));
        }
        if manifest.decoder.kind == DecoderKind::Attention {
            if manifest.decoder.init_file.is_none() {
                return Err(field_err(
                    "decoder.init_file",
                    "is required for an attention decoder (its initial-state graph)".into(),
                ));
            }
            if manifest.encoder.regions.unwrap_or(0) == 0 {
                return Err(field_err(
                    "encoder.regions",
                    "must be a positive number for an attention decoder".into(),
                ));
            }
        }
        let init = manifest.decoder.init_file.as_ref();
        for (field, file) in [
            ("encoder.file", &manifest.encoder.file),
            ("decoder.file", &manifest.decoder.file),
            ("vocabulary.file", &manifest.vocabulary.file),
        ]
        .into_iter()
        .chain(init.map(|f| ("decoder.init_file", f)))
        {
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
            format_version: BUNDLE_FORMAT_VERSION,
            model_id: "test".into(),
            encoder: EncoderSection {
                name: "efficientnet-lite0".into(),
                file: "encoder.onnx".into(),
                feature_dim: 1280,
                regions: None,
                preprocessing: Preprocessing::efficientnet_lite(224),
            },
            decoder: DecoderSection {
                kind: DecoderKind::Merge,
                file: "decoder.onnx".into(),
                init_file: None,
                vocab_size: vocab.size(),
                embed_dim: 256,
                hidden: 256,
                max_length: 34,
                length_penalty: 0.0,
            },
            vocabulary: VocabularySection {
                file: "vocab.json".into(),
                text_rules: TextRules::Standard,
            },
            files,
            quantization: Quantization::float(Storage::F16, Storage::F16),
            provenance: Provenance {
                exporter: "test".into(),
                epoch: Some(6),
                val_loss: Some(2.9),
                training_options: Some(toml::toml! { epochs = 20 min_count = 5 }),
                ..Provenance::default()
            },
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
    fn the_length_penalty_is_read_and_bounded_by_name() {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path());
        // Absent: the plain sum, and not written back.
        assert_eq!(
            Manifest::load_bundle(dir.path())
                .unwrap()
                .manifest
                .decoder
                .length_penalty,
            0.0
        );
        let set = |v: f64| {
            edit(dir.path(), |t| {
                t["decoder"]
                    .as_table_mut()
                    .unwrap()
                    .insert("length_penalty".into(), v.into());
            })
        };
        set(0.5);
        let loaded = Manifest::load_bundle(dir.path()).unwrap().manifest;
        assert_eq!(loaded.decoder.length_penalty, 0.5);
        assert!(loaded.to_toml().contains("length_penalty = 0.5"));
        for bad in [-0.5, 4.5, f64::NAN] {
            set(bad);
            let msg = error_of(dir.path());
            assert!(
                msg.contains("manifest.toml")
                    && msg.contains("`decoder.length_penalty`")
                    && msg.contains("from 0 to 4"),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn a_newer_format_is_refused_by_version() {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path());
        edit(dir.path(), |t| {
            t.insert("format_version".into(), 3.into());
            t.insert("renamed_section".into(), 1.into());
        });
        let msg = error_of(dir.path());
        assert!(
            msg.contains("manifest.toml")
                && msg.contains("`format_version`")
                && msg.contains("is 3"),
            "{msg}"
        );
    }

    #[test]
    fn numbers_are_numbers_in_the_written_manifest() {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path());
        let text = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["provenance"]["epoch"].as_integer(), Some(6));
        assert_eq!(t["provenance"]["val_loss"].as_float(), Some(2.9));
        assert_eq!(
            t["provenance"]["training_options"]["min_count"].as_integer(),
            Some(5)
        );
        assert_eq!(t["quantization"]["scheme"].as_str(), Some("float16"));
    }

    /// Version 1 manifests (the bundles committed before version 2) are read, their
    /// string-valued sections converted.
    #[test]
    fn version_1_manifests_are_migrated_in_memory() {
        let origin = Path::new("proto/tests/data/manifest-v1-int8.toml");
        let text = include_str!("../tests/data/manifest-v1-int8.toml");
        let m = Manifest::parse(text, origin).unwrap();
        assert_eq!(m.format_version, BUNDLE_FORMAT_VERSION);
        let q = &m.quantization;
        assert_eq!(q.scheme, Scheme::Int8Static);
        assert_eq!(
            (q.encoder_storage, q.decoder_storage),
            (Storage::Int8, Storage::F16)
        );
        assert_eq!(q.calibration_images, Some(300));
        assert_eq!(
            (q.encoder_int8_layers, q.encoder_f32_layers),
            (Some(33), Some(16))
        );
        assert_eq!(q.encoder_depthwise, Some(Storage::F32));
        assert_eq!(q.encoder_fully_connected.as_deref(), Some("f32"));
        let p = &m.provenance;
        assert_eq!(p.epoch, Some(6));
        assert_eq!(p.train_loss, Some(2.575613));
        assert_eq!(p.val_loss, Some(2.908759));
        assert_eq!(p.exporter, "caption-train 0.1.0");
        let opts = p.training_options.as_ref().unwrap();
        assert_eq!(opts["batch_size"].as_integer(), Some(64));
        assert_eq!(opts["learning_rate"].as_float(), Some(0.001));
        assert_eq!(m.metrics["test_coco_bleu4"], 0.1631279644472513);

        let text = include_str!("../tests/data/manifest-v1-f16.toml");
        let m = Manifest::parse(text, origin).unwrap();
        assert_eq!(
            m.quantization,
            Quantization::float(Storage::F16, Storage::F16)
        );
        assert!(m.provenance.float_bundle_of.is_some());
        // Written back, it is a version 2 manifest that reads the same.
        let again = Manifest::parse(&m.to_toml(), origin).unwrap();
        assert_eq!(again, m);

        let bad = text.replace("epoch = \"6\"", "epoch = \"six\"");
        let msg = Manifest::parse(&bad, origin).unwrap_err().to_string();
        assert!(
            msg.contains("`provenance.epoch`") && msg.contains("six"),
            "{msg}"
        );
    }

    #[test]
    fn decoder_kinds_are_checked_by_field() {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path());
        edit(dir.path(), |t| {
            t["decoder"]
                .as_table_mut()
                .unwrap()
                .insert("kind".into(), "transformer".into());
        });
        let msg = error_of(dir.path());
        assert!(msg.contains("kind") && msg.contains("transformer"), "{msg}");
        edit(dir.path(), |t| {
            t["decoder"]
                .as_table_mut()
                .unwrap()
                .insert("kind".into(), "attention".into());
        });
        let msg = error_of(dir.path());
        assert!(msg.contains("`decoder.init_file`"), "{msg}");
        edit(dir.path(), |t| {
            t["decoder"]
                .as_table_mut()
                .unwrap()
                .insert("init_file".into(), "init.onnx".into());
        });
        let msg = error_of(dir.path());
        assert!(msg.contains("`encoder.regions`"), "{msg}");
        edit(dir.path(), |t| {
            t["encoder"]
                .as_table_mut()
                .unwrap()
                .insert("regions".into(), 49.into());
        });
        // init.onnx has no checksum under `files`.
        let msg = error_of(dir.path());
        assert!(
            msg.contains("`decoder.init_file`") && msg.contains("checksum"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_channel_orders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path());
        edit(dir.path(), |t| {
            t["encoder"]["preprocessing"]
                .as_table_mut()
                .unwrap()
                .insert("channels".into(), "BGR".into());
        });
        let msg = error_of(dir.path());
        assert!(msg.contains("channels") && msg.contains("BGR"), "{msg}");
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
            "format_version = 2\n[encoder\n",
        )
        .unwrap();
        assert!(error_of(dir.path()).contains("not a valid manifest"));
    }
}

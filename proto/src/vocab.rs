//! The word vocabulary, with the semantics of Keras' `Tokenizer` as the tutorial uses it.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::text::{py_split, TextRules, END_TOKEN, START_TOKEN};

/// Index reserved for padding; no word ever has it.
pub const PADDING_INDEX: u32 = 0;
/// What the padding slot is called in `vocab.json` (never a real word: both text rules
/// strip `<` and `>`).
pub const PADDING_WORD: &str = "<pad>";
/// Version of the `vocab.json` layout written by [`Vocabulary::to_json`].
pub const VOCAB_FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    #[error("cannot read vocabulary {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write vocabulary {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("vocabulary {path} is not valid JSON of the expected layout: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("vocabulary {path}: {problem}")]
    Invalid { path: String, problem: String },
}

/// Word <-> index mapping. Index 0 is padding; words are indexed 1.. by descending
/// frequency in the texts it was fitted on, ties broken by first appearance (Keras sorts
/// its insertion-ordered counts with a stable sort).
/// Serialised as its `vocab.json` form (e.g. inside a training checkpoint's JSON), and
/// validated the same way when read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "VocabFile", into = "VocabFile")]
pub struct Vocabulary {
    /// `words[i]` has index `i`; `words[0]` is [`PADDING_WORD`].
    words: Vec<String>,
    /// Training-set frequency of each word, aligned with `words` (0 for padding).
    counts: Vec<u64>,
    index: HashMap<String, u32>,
    text_rules: TextRules,
    min_count: u64,
}

/// The documented on-disk form (`vocab.json`).
#[derive(Debug, Serialize, Deserialize)]
struct VocabFile {
    /// Layout version; readers refuse a newer one.
    format_version: u32,
    /// Text rules the captions were cleaned with (`original` or `standard`).
    text_rules: TextRules,
    /// Words seen fewer times than this in the training captions were left out.
    min_count: u64,
    padding_index: u32,
    start_token: String,
    end_token: String,
    /// `words[i]` is the word with index `i`; `words[0]` is the padding placeholder.
    words: Vec<String>,
    /// Training-set frequency of `words[i]` (0 for padding).
    counts: Vec<u64>,
}

impl Vocabulary {
    /// Fit on already-cleaned, wrapped caption texts (Keras `fit_on_texts`), keeping words
    /// seen at least `min_count` times (1 keeps every word, as the tutorial does).
    pub fn fit<'a>(
        texts: impl IntoIterator<Item = &'a str>,
        text_rules: TextRules,
        min_count: u64,
    ) -> Vocabulary {
        let mut order: Vec<&'a str> = Vec::new();
        let mut counts: HashMap<&'a str, u64> = HashMap::new();
        for text in texts {
            for word in py_split(text) {
                let count = counts.entry(word).or_insert_with(|| {
                    order.push(word);
                    0
                });
                *count += 1;
            }
        }
        let mut ranked: Vec<(&str, u64)> = order.iter().map(|w| (*w, counts[w])).collect();
        // Stable: equal counts keep first-appearance order, as Keras' `sort(reverse=True)`.
        ranked.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
        let min_count = min_count.max(1);
        let mut words = vec![PADDING_WORD.to_owned()];
        let mut word_counts = vec![0];
        for (word, count) in ranked.into_iter().filter(|(_, c)| *c >= min_count) {
            words.push(word.to_owned());
            word_counts.push(count);
        }
        Self::from_parts(words, word_counts, text_rules, min_count)
    }

    fn from_parts(
        words: Vec<String>,
        counts: Vec<u64>,
        text_rules: TextRules,
        min_count: u64,
    ) -> Vocabulary {
        let index = words
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, w)| (w.clone(), i as u32))
            .collect();
        Vocabulary {
            words,
            counts,
            index,
            text_rules,
            min_count,
        }
    }

    /// Number of indices including padding (the tutorial's `vocab_size`).
    pub fn size(&self) -> usize {
        self.words.len()
    }

    pub fn text_rules(&self) -> TextRules {
        self.text_rules
    }

    pub fn min_count(&self) -> u64 {
        self.min_count
    }

    pub fn index_of(&self, word: &str) -> Option<u32> {
        self.index.get(word).copied()
    }

    /// The word for an index; `None` for padding and out-of-range indices (the tutorial's
    /// `word_for_id` returning `None`).
    pub fn word(&self, index: u32) -> Option<&str> {
        if index == PADDING_INDEX {
            return None;
        }
        self.words.get(index as usize).map(String::as_str)
    }

    pub fn count(&self, index: u32) -> Option<u64> {
        self.counts.get(index as usize).copied()
    }

    pub fn start_index(&self) -> Option<u32> {
        self.index_of(START_TOKEN)
    }

    pub fn end_index(&self) -> Option<u32> {
        self.index_of(END_TOKEN)
    }

    /// Keras `texts_to_sequences` for one text: whitespace tokens to indices, words
    /// outside the vocabulary dropped.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        py_split(text).filter_map(|w| self.index_of(w)).collect()
    }

    /// Indices back to words, skipping padding and unknown indices.
    pub fn decode(&self, indices: &[u32]) -> Vec<&str> {
        indices.iter().filter_map(|&i| self.word(i)).collect()
    }

    pub fn to_json(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_string_pretty(&VocabFile::from(self.clone())).expect("vocabulary serialises")
    }

    /// Parse `vocab.json` text; `origin` names the file in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Vocabulary, VocabError> {
        let file: VocabFile = serde_json::from_str(text).map_err(|source| VocabError::Parse {
            path: origin.to_owned(),
            source,
        })?;
        Self::from_file(file, origin)
    }

    /// Validate the on-disk form; `origin` names it in errors.
    fn from_file(file: VocabFile, origin: &str) -> Result<Vocabulary, VocabError> {
        let invalid = |problem: String| VocabError::Invalid {
            path: origin.to_owned(),
            problem,
        };
        if file.format_version > VOCAB_FORMAT_VERSION {
            return Err(invalid(format!(
                "field `format_version` is {}, this build reads up to {VOCAB_FORMAT_VERSION}",
                file.format_version
            )));
        }
        if file.padding_index != PADDING_INDEX {
            return Err(invalid(format!(
                "field `padding_index` must be {PADDING_INDEX}, found {}",
                file.padding_index
            )));
        }
        if file.start_token != START_TOKEN || file.end_token != END_TOKEN {
            return Err(invalid(format!(
                "fields `start_token`/`end_token` must be {START_TOKEN:?}/{END_TOKEN:?}, found {:?}/{:?}",
                file.start_token, file.end_token
            )));
        }
        if file.words.first().map(String::as_str) != Some(PADDING_WORD) {
            return Err(invalid(format!(
                "field `words` must start with the padding placeholder {PADDING_WORD:?}"
            )));
        }
        if file.counts.len() != file.words.len() {
            return Err(invalid(format!(
                "field `counts` has {} entries but `words` has {}",
                file.counts.len(),
                file.words.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, word) in file.words.iter().enumerate().skip(1) {
            if word.is_empty() || word.chars().any(crate::text::is_py_whitespace) {
                return Err(invalid(format!(
                    "field `words[{i}]` ({word:?}) is empty or contains whitespace"
                )));
            }
            if !seen.insert(word.as_str()) {
                return Err(invalid(format!(
                    "field `words[{i}]` repeats the word {word:?}"
                )));
            }
        }
        Ok(Self::from_parts(
            file.words,
            file.counts,
            file.text_rules,
            file.min_count,
        ))
    }

    pub fn save(&self, path: &Path) -> Result<(), VocabError> {
        std::fs::write(path, self.to_json()).map_err(|source| VocabError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn load(path: &Path) -> Result<Vocabulary, VocabError> {
        let text = std::fs::read_to_string(path).map_err(|source| VocabError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }
}

impl From<Vocabulary> for VocabFile {
    fn from(v: Vocabulary) -> VocabFile {
        VocabFile {
            format_version: VOCAB_FORMAT_VERSION,
            text_rules: v.text_rules,
            min_count: v.min_count,
            padding_index: PADDING_INDEX,
            start_token: START_TOKEN.to_owned(),
            end_token: END_TOKEN.to_owned(),
            words: v.words,
            counts: v.counts,
        }
    }
}

impl TryFrom<VocabFile> for Vocabulary {
    type Error = VocabError;
    fn try_from(file: VocabFile) -> Result<Vocabulary, VocabError> {
        Vocabulary::from_file(file, "the embedded vocabulary")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fitted() -> Vocabulary {
        let texts = [
            "startseq dog runs endseq",
            "startseq cat runs fast endseq",
            "startseq dog sleeps endseq",
        ];
        Vocabulary::fit(texts, TextRules::Original, 1)
    }

    #[test]
    fn indices_follow_keras_ordering() {
        let v = fitted();
        // startseq/endseq 3 each (startseq seen first), then dog/runs 2 each (dog first),
        // then cat, fast, sleeps once each in order of appearance.
        let words: Vec<_> = (1..v.size() as u32).map(|i| v.word(i).unwrap()).collect();
        assert_eq!(
            words,
            ["startseq", "endseq", "dog", "runs", "cat", "fast", "sleeps"]
        );
        assert_eq!(v.size(), 8);
        assert_eq!(v.word(PADDING_INDEX), None);
        assert_eq!(v.word(99), None);
        assert_eq!(v.count(3), Some(2));
    }

    #[test]
    fn encoding_drops_unknown_words() {
        let v = fitted();
        assert_eq!(v.encode("startseq dog flies fast endseq"), [1, 3, 6, 2]);
        assert_eq!(v.decode(&[0, 1, 3, 42, 2]), ["startseq", "dog", "endseq"]);
    }

    #[test]
    fn min_count_prunes_rare_words() {
        let texts = ["startseq dog runs endseq", "startseq cat runs endseq"];
        let v = Vocabulary::fit(texts, TextRules::Standard, 2);
        assert_eq!(v.size(), 4);
        assert_eq!(v.index_of("dog"), None);
        assert_eq!(v.index_of("runs"), Some(2));
    }

    #[test]
    fn json_round_trip() {
        let v = fitted();
        let back = Vocabulary::from_json(&v.to_json(), "vocab.json").unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn malformed_json_names_the_field() {
        let v = fitted();
        let mut value: serde_json::Value = serde_json::from_str(&v.to_json()).unwrap();
        value["format_version"] = 99.into();
        let err = Vocabulary::from_json(&value.to_string(), "x/vocab.json").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("x/vocab.json") && msg.contains("format_version"),
            "{msg}"
        );

        let mut value: serde_json::Value = serde_json::from_str(&v.to_json()).unwrap();
        value["words"][4] = "dog".into();
        let msg = Vocabulary::from_json(&value.to_string(), "v.json")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("words[4]"), "{msg}");

        let msg = Vocabulary::from_json("{", "v.json")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("v.json"), "{msg}");
    }
}

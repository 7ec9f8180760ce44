//! `caption-train prepare`: the tutorial's text preparation (clean, describe, fit the
//! vocabulary) with its figures.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use caption_proto::dataset::{self, Flickr8k, Split};
use caption_proto::text::{py_split, wrap, TextRules};
use caption_proto::vocab::{VocabError, Vocabulary};
use serde::Serialize;

/// Name of the cleaned-descriptions file (`<id> <clean caption>` per line).
pub const DESCRIPTIONS_FILE: &str = "descriptions.txt";
/// Name of the train vocabulary file (the same name it has in a bundle).
pub use caption_proto::manifest::VOCAB_FILE;

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Dataset(#[from] caption_proto::DatasetError),
    #[error(transparent)]
    Vocab(#[from] VocabError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the train split of {0} has no captions: nothing to build a vocabulary from")]
    EmptyTrain(PathBuf),
}

/// The figures `prepare` prints (names as in the tutorial's printouts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrepareSummary {
    /// Distinct image ids in the token file.
    pub images: usize,
    /// Caption lines in the token file.
    pub captions: usize,
    /// Distinct words over all cleaned captions (special tokens excluded).
    pub vocabulary: usize,
    pub train_images: usize,
    pub dev_images: usize,
    pub test_images: usize,
    /// Vocabulary size including the padding index (the tutorial's `vocab_size`).
    pub train_vocab_size: usize,
    /// Longest train caption in tokens, `startseq` and `endseq` included.
    pub max_length: usize,
    /// Input-output pairs as `create_sequences` makes them.
    pub train_pairs: usize,
    /// Dev pairs, dev words encoded with the train vocabulary.
    pub dev_pairs: usize,
    pub text_rules: TextRules,
    pub min_count: u64,
    /// Ids whose image file is missing (reported, not fatal).
    pub missing_images: Vec<String>,
    /// `split:id` entries of split files that have no caption.
    pub split_ids_without_captions: Vec<String>,
}

/// Everything `prepare` computes, before anything is written.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub summary: PrepareSummary,
    /// The tutorial's `descriptions.txt` text (lines joined by `\n`, no final newline).
    pub descriptions_txt: String,
    pub vocabulary: Vocabulary,
}

/// Wrapped training texts of a split, in description order.
fn wrapped_texts(descriptions: &[(String, Vec<String>)], ids: &[String]) -> Vec<String> {
    dataset::select(descriptions, ids)
        .into_iter()
        .flat_map(|(_, captions)| captions.iter().map(|c| wrap(c)))
        .collect()
}

fn pair_count(vocab: &Vocabulary, texts: &[String]) -> usize {
    texts
        .iter()
        .map(|t| vocab.encode(t).len().saturating_sub(1))
        .sum()
}

/// Clean, describe and fit the vocabulary on the train split.
pub fn prepare(
    data: &Flickr8k,
    rules: TextRules,
    min_count: u64,
) -> Result<Prepared, PrepareError> {
    let descriptions = data.clean_descriptions(rules);
    let descriptions_txt = descriptions
        .iter()
        .flat_map(|(id, captions)| captions.iter().map(move |c| format!("{id} {c}")))
        .collect::<Vec<_>>()
        .join("\n");
    let vocabulary: HashSet<&str> = descriptions
        .iter()
        .flat_map(|(_, captions)| captions.iter().flat_map(|c| py_split(c)))
        .collect();
    let split_images = |split: Split| dataset::select(&descriptions, data.split_ids(split)).len();

    let train = wrapped_texts(&descriptions, data.split_ids(Split::Train));
    if train.is_empty() {
        return Err(PrepareError::EmptyTrain(data.root.clone()));
    }
    let dev = wrapped_texts(&descriptions, data.split_ids(Split::Dev));
    let vocab = Vocabulary::fit(train.iter().map(String::as_str), rules, min_count);
    let max_length = train.iter().map(|t| py_split(t).count()).max().unwrap_or(0);

    let summary = PrepareSummary {
        images: data.images.len(),
        captions: data.images.iter().map(|i| i.captions.len()).sum(),
        vocabulary: vocabulary.len(),
        train_images: split_images(Split::Train),
        dev_images: split_images(Split::Dev),
        test_images: split_images(Split::Test),
        train_vocab_size: vocab.size(),
        max_length,
        train_pairs: pair_count(&vocab, &train),
        dev_pairs: pair_count(&vocab, &dev),
        text_rules: rules,
        min_count: vocab.min_count(),
        missing_images: data.missing_images.clone(),
        split_ids_without_captions: data
            .split_ids_without_captions
            .iter()
            .map(|(split, id)| format!("{split}:{id}"))
            .collect(),
    };
    Ok(Prepared {
        summary,
        descriptions_txt,
        vocabulary: vocab,
    })
}

/// Write `contents` to `path` through a temporary file and a rename, so an interrupted run
/// never leaves a half-written file under the final name.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), PrepareError> {
    let write_err = |source| PrepareError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents).map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)
}

/// Load the dataset, prepare it and write `descriptions.txt` and `vocab.json` into `out`.
pub fn prepare_to_dir(
    data_dir: &Path,
    out: &Path,
    rules: TextRules,
    min_count: u64,
) -> Result<PrepareSummary, PrepareError> {
    let data = Flickr8k::load(data_dir)?;
    let prepared = prepare(&data, rules, min_count)?;
    std::fs::create_dir_all(out).map_err(|source| PrepareError::Write {
        path: out.to_owned(),
        source,
    })?;
    write_atomically(
        &out.join(DESCRIPTIONS_FILE),
        prepared.descriptions_txt.as_bytes(),
    )?;
    write_atomically(
        &out.join(VOCAB_FILE),
        prepared.vocabulary.to_json().as_bytes(),
    )?;
    Ok(prepared.summary)
}

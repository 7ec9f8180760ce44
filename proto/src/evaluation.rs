//! Scoring decoded captions of a Flickr8k split under both protocols the project
//! reports: the tutorial's (`original`) and coco-caption's. Shared by the trainer's
//! `evaluate` and `captiond evaluate`, so a bundle is scored exactly like its checkpoint.

use serde::Serialize;

use crate::bleu::{BleuError, BleuStats};
use crate::cider::{cider_d, CiderError};
use crate::dataset::Flickr8k;
use crate::text::{py_split, strip_special, wrap, TextRules, START_TOKEN};

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    pub bleu1: f64,
    pub bleu2: f64,
    pub bleu3: f64,
    pub bleu4: f64,
}

fn tokens_of(text: &str) -> Vec<String> {
    py_split(text).map(str::to_owned).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Bleu(#[from] BleuError),
    #[error(transparent)]
    Cider(#[from] CiderError),
}

/// Every score of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// The tutorial's protocol (`original` text, special tokens kept, NLTK BLEU).
    pub original: Scores,
    /// coco-caption BLEU on `standard` text, special tokens stripped.
    pub coco: Scores,
    /// The same references and hypotheses with NLTK `corpus_bleu`.
    pub coco_nltk: Scores,
    /// CIDEr-D (pycocoevalcap's `Cider`) on the coco protocol's tokens, document
    /// frequencies from this split's references.
    pub cider_d: f64,
    /// Different captions among the split's images (a model that says the same few
    /// things everywhere scores low here).
    pub distinct_captions: usize,
}

/// BLEU under both protocols and CIDEr-D of decoded captions. `hyp_words[i]` are the
/// generated words of image `ids[i]` (end token included when generated).
pub fn score(
    data: &Flickr8k,
    ids: &[String],
    hyp_words: &[Vec<String>],
) -> Result<Evaluation, ScoreError> {
    let original = data.clean_descriptions(TextRules::Original);
    let standard = data.clean_descriptions(TextRules::Standard);
    let orig_index: std::collections::HashMap<&str, usize> = original
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.as_str(), i))
        .collect();
    let mut orig_refs = Vec::new();
    let mut orig_hyps = Vec::new();
    let mut coco_refs = Vec::new();
    let mut coco_hyps = Vec::new();
    for (id, words) in ids.iter().zip(hyp_words) {
        let i = orig_index[id.as_str()];
        orig_refs.push(
            original[i]
                .1
                .iter()
                .map(|c| tokens_of(&wrap(c)))
                .collect::<Vec<_>>(),
        );
        let mut hyp = vec![START_TOKEN.to_owned()];
        hyp.extend(words.iter().cloned());
        orig_hyps.push(hyp);
        coco_refs.push(
            standard[i]
                .1
                .iter()
                .map(|c| tokens_of(c))
                .collect::<Vec<_>>(),
        );
        coco_hyps.push(
            strip_special(words.iter().map(String::as_str))
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        );
    }
    let o = BleuStats::collect(&orig_refs, &orig_hyps, 4)?;
    let original_scores = Scores {
        bleu1: o.nltk(&[1.0])?,
        bleu2: o.nltk(&[0.5, 0.5])?,
        bleu3: o.nltk(&[0.3, 0.3, 0.3])?,
        bleu4: o.nltk(&[0.25; 4])?,
    };
    let c = BleuStats::collect(&coco_refs, &coco_hyps, 4)?;
    let cs = c.coco();
    let coco = Scores {
        bleu1: cs[0],
        bleu2: cs[1],
        bleu3: cs[2],
        bleu4: cs[3],
    };
    let third = 1.0 / 3.0;
    let coco_nltk = Scores {
        bleu1: c.nltk(&[1.0])?,
        bleu2: c.nltk(&[0.5, 0.5])?,
        bleu3: c.nltk(&[third, third, third])?,
        bleu4: c.nltk(&[0.25; 4])?,
    };
    let cider = cider_d(&coco_refs, &coco_hyps)?;
    let distinct_captions = coco_hyps
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    Ok(Evaluation {
        original: original_scores,
        coco,
        coco_nltk,
        cider_d: cider.corpus,
        distinct_captions,
    })
}

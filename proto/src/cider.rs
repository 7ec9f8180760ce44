//! CIDEr-D (Vedantam et al. 2015) exactly as pycocoevalcap's `Cider` computes it
//! (`cider/cider_scorer.py`), which is what the coco protocol reports as "CIDEr":
//!
//! - n-grams of 1 to 4 words of whitespace-split tokens;
//! - document frequency of an n-gram: the number of images of the evaluated set whose
//!   references contain it; the log of the set's image count is the IDF's numerator;
//! - per n, the TF-IDF vectors of hypothesis and each reference are compared with the
//!   hypothesis' weights clipped at the reference's (`min(h, r) * r`), divided by both
//!   norms, times the Gaussian length penalty `exp(-δ² / 2σ²)` with σ = 6;
//! - a caption's "length" there is its count of **bigrams** (the scorer adds term
//!   frequencies where `len(ngram) - 1 == 1`), a quirk kept on purpose: golden values
//!   come from pycocoevalcap itself (`scripts/golden/cider_golden.py`);
//! - the mean over n and over references, times 10; the corpus score is the mean over
//!   images.
//!
//! Written by hand: no maintained Rust crate computes CIDEr-D.

use std::collections::HashMap;

/// The most words in an n-gram.
pub const MAX_N: usize = 4;
/// The Gaussian length penalty's σ.
pub const SIGMA: f64 = 6.0;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CiderError {
    #[error("{hyps} hypotheses but {refs} reference sets: CIDEr-D needs one of each per image")]
    Mismatch { hyps: usize, refs: usize },
    #[error("image {0} has no reference caption")]
    NoReferences(usize),
}

/// Corpus CIDEr-D and the score of each image.
#[derive(Debug, Clone, PartialEq)]
pub struct CiderScores {
    pub corpus: f64,
    pub per_image: Vec<f64>,
}

type Counts<'a> = HashMap<&'a [String], u32>;

/// Counts of every n-gram (1..=MAX_N) of a token sequence.
fn ngram_counts(tokens: &[String]) -> Counts<'_> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_N {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// TF-IDF vectors per n, their norms, and the caption's "length" (see the module doc).
struct Vector<'a> {
    weights: [HashMap<&'a [String], f64>; MAX_N],
    norms: [f64; MAX_N],
    length: f64,
}

fn vector<'a>(counts: &Counts<'a>, df: &HashMap<&[String], u32>, log_images: f64) -> Vector<'a> {
    let mut v = Vector {
        weights: Default::default(),
        norms: [0.0; MAX_N],
        length: 0.0,
    };
    for (&gram, &tf) in counts {
        let n = gram.len() - 1;
        let doc = (df.get(gram).copied().unwrap_or(0) as f64).max(1.0).ln();
        let w = tf as f64 * (log_images - doc);
        v.weights[n].insert(gram, w);
        v.norms[n] += w * w;
        if n == 1 {
            v.length += tf as f64;
        }
    }
    for norm in &mut v.norms {
        *norm = norm.sqrt();
    }
    v
}

fn similarity(hyp: &Vector<'_>, reference: &Vector<'_>) -> [f64; MAX_N] {
    let delta = hyp.length - reference.length;
    let penalty = (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
    std::array::from_fn(|n| {
        let mut val = 0.0;
        for (gram, &h) in &hyp.weights[n] {
            let r = reference.weights[n].get(gram).copied().unwrap_or(0.0);
            val += h.min(r) * r;
        }
        if hyp.norms[n] != 0.0 && reference.norms[n] != 0.0 {
            val /= hyp.norms[n] * reference.norms[n];
        }
        val * penalty
    })
}

/// CIDEr-D of `hyps[i]` against `refs[i]` (tokens, already cleaned as the protocol does).
/// Document frequencies come from these references, so the score depends on the whole set
/// evaluated (as in pycocoevalcap).
pub fn cider_d(refs: &[Vec<Vec<String>>], hyps: &[Vec<String>]) -> Result<CiderScores, CiderError> {
    if refs.len() != hyps.len() {
        return Err(CiderError::Mismatch {
            hyps: hyps.len(),
            refs: refs.len(),
        });
    }
    if let Some(i) = refs.iter().position(Vec::is_empty) {
        return Err(CiderError::NoReferences(i));
    }
    let ref_counts: Vec<Vec<Counts<'_>>> = refs
        .iter()
        .map(|rs| rs.iter().map(|r| ngram_counts(r)).collect())
        .collect();
    let mut df: HashMap<&[String], u32> = HashMap::new();
    for image in &ref_counts {
        let mut grams: Vec<&[String]> = image.iter().flat_map(|c| c.keys().copied()).collect();
        grams.sort_unstable();
        grams.dedup();
        for gram in grams {
            *df.entry(gram).or_insert(0) += 1;
        }
    }
    let log_images = (refs.len() as f64).ln();
    let per_image: Vec<f64> = hyps
        .iter()
        .zip(&ref_counts)
        .map(|(hyp, image_refs)| {
            let h = vector(&ngram_counts(hyp), &df, log_images);
            let mut sum = [0.0; MAX_N];
            for r in image_refs {
                let s = similarity(&h, &vector(r, &df, log_images));
                for (total, v) in sum.iter_mut().zip(s) {
                    *total += v;
                }
            }
            let mean_over_n = sum.iter().sum::<f64>() / MAX_N as f64;
            mean_over_n / image_refs.len() as f64 * 10.0
        })
        .collect();
    let corpus = if per_image.is_empty() {
        0.0
    } else {
        per_image.iter().sum::<f64>() / per_image.len() as f64
    };
    Ok(CiderScores { corpus, per_image })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn a_hypothesis_equal_to_every_reference_scores_ten_times_one() {
        // Two images so that IDF is not zero; each hypothesis equals all its references.
        let refs = vec![
            vec![
                toks("a dog runs on the grass"),
                toks("a dog runs on the grass"),
            ],
            vec![toks("two men ride bikes"), toks("two men ride bikes")],
        ];
        let hyps = vec![toks("a dog runs on the grass"), toks("two men ride bikes")];
        let s = cider_d(&refs, &hyps).unwrap();
        for v in &s.per_image {
            assert!((v - 10.0).abs() < 1e-9, "{v}");
        }
    }

    #[test]
    fn unrelated_or_empty_hypotheses_score_zero_and_bad_input_is_an_error() {
        let refs = vec![vec![toks("a dog runs")], vec![toks("a cat sleeps")]];
        let s = cider_d(&refs, &[toks("blue sky"), vec![]]).unwrap();
        assert_eq!(s.per_image, [0.0, 0.0]);
        assert_eq!(
            cider_d(&refs, &[toks("a")]),
            Err(CiderError::Mismatch { hyps: 1, refs: 2 })
        );
        assert_eq!(
            cider_d(&[vec![]], &[toks("a")]),
            Err(CiderError::NoReferences(0))
        );
    }
}

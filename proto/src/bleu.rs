//! Corpus BLEU, bit-compatible with NLTK's `corpus_bleu` (no smoothing) and with
//! coco-caption's `Bleu(4)` (pycocoevalcap).
//!
//! Written by hand because both must agree with their Python references to the last
//! bits (every quality figure we report rests on them), and no crate reproduces either
//! reference's exact arithmetic (NLTK's `math.fsum`, coco's `1e-15`/`1e-9` smoothing).

use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BleuError {
    #[error("{references} reference sets for {hypotheses} hypotheses: they must pair up")]
    LengthMismatch {
        references: usize,
        hypotheses: usize,
    },
    #[error("hypothesis {index} has no reference captions")]
    NoReferences { index: usize },
    #[error("the weight vector is empty")]
    NoWeights,
    #[error("weight {index} is {value}: weights must be finite numbers")]
    BadWeight { index: usize, value: f64 },
    #[error("{weights} weights, but the statistics were collected up to order {order}")]
    OrderTooLow { weights: usize, order: usize },
}

/// Sufficient statistics of a corpus for BLEU up to order `max_n`, gathered in one pass
/// and shared by the NLTK and coco formulas.
#[derive(Debug, Clone, PartialEq)]
pub struct BleuStats {
    /// Clipped n-gram matches per order (`numerators[n-1]`), against the highest count of
    /// the n-gram in any single reference.
    pub matches: Vec<u64>,
    /// NLTK denominators: per sentence `max(1, hypothesis n-grams)`, summed.
    pub nltk_totals: Vec<u64>,
    /// coco-caption's guesses: per sentence `max(0, len - n + 1)`, summed.
    pub coco_guesses: Vec<u64>,
    /// Total hypothesis length in tokens.
    pub hypothesis_length: u64,
    /// Sum of the closest reference length per sentence (ties go to the shorter).
    pub reference_length: u64,
}

impl BleuStats {
    /// Gather the statistics; `references[i]` are the reference token lists of hypothesis `i`.
    pub fn collect<T: Eq + Hash, R: AsRef<[T]>, H: AsRef<[T]>>(
        references: &[Vec<R>],
        hypotheses: &[H],
        max_n: usize,
    ) -> Result<BleuStats, BleuError> {
        if references.len() != hypotheses.len() {
            return Err(BleuError::LengthMismatch {
                references: references.len(),
                hypotheses: hypotheses.len(),
            });
        }
        let mut stats = BleuStats {
            matches: vec![0; max_n],
            nltk_totals: vec![0; max_n],
            coco_guesses: vec![0; max_n],
            hypothesis_length: 0,
            reference_length: 0,
        };
        for (index, (refs, hyp)) in references.iter().zip(hypotheses).enumerate() {
            let hyp = hyp.as_ref();
            if refs.is_empty() {
                return Err(BleuError::NoReferences { index });
            }
            for n in 1..=max_n {
                let counts = ngram_counts(hyp, n);
                let mut max_ref: HashMap<&[T], u64> = HashMap::with_capacity(counts.len());
                for reference in refs {
                    for (gram, count) in ngram_counts(reference.as_ref(), n) {
                        if counts.contains_key(gram) {
                            let best = max_ref.entry(gram).or_insert(0);
                            *best = (*best).max(count);
                        }
                    }
                }
                let total: u64 = counts.values().sum();
                let clipped: u64 = counts
                    .iter()
                    .map(|(gram, &c)| c.min(max_ref.get(gram).copied().unwrap_or(0)))
                    .sum();
                stats.matches[n - 1] += clipped;
                stats.nltk_totals[n - 1] += total.max(1);
                stats.coco_guesses[n - 1] += (hyp.len() + 1).saturating_sub(n) as u64;
            }
            let hyp_len = hyp.len() as u64;
            stats.hypothesis_length += hyp_len;
            stats.reference_length += refs
                .iter()
                .map(|r| r.as_ref().len() as u64)
                .min_by_key(|&r| (r.abs_diff(hyp_len), r))
                .unwrap_or(0);
        }
        Ok(stats)
    }

    /// NLTK `corpus_bleu(..., weights)` without smoothing. `weights.len()` must not exceed
    /// the order the statistics were collected for.
    pub fn nltk(&self, weights: &[f64]) -> Result<f64, BleuError> {
        check_weights(weights)?;
        if weights.len() > self.matches.len() {
            return Err(BleuError::OrderTooLow {
                weights: weights.len(),
                order: self.matches.len(),
            });
        }
        // NLTK returns exactly 0 when no unigram matches at all.
        if self.matches.first().copied().unwrap_or(0) == 0 {
            return Ok(0.0);
        }
        let terms = weights.iter().enumerate().map(|(i, w)| {
            // method0: a zero precision becomes sys.float_info.min. Counts are far below
            // 2^53, so this division is correctly rounded, like Python's int / int.
            let p = if self.matches[i] == 0 {
                f64::MIN_POSITIVE
            } else {
                self.matches[i] as f64 / self.nltk_totals[i] as f64
            };
            w * p.ln()
        });
        let log_sum = fsum(terms);
        Ok(self.nltk_brevity_penalty() * log_sum.exp())
    }

    fn nltk_brevity_penalty(&self) -> f64 {
        let (r, c) = (self.reference_length, self.hypothesis_length);
        if c > r {
            1.0
        } else if c == 0 {
            0.0
        } else {
            (1.0 - r as f64 / c as f64).exp()
        }
    }

    /// coco-caption `Bleu(n).compute_score` corpus scores, BLEU-1..n, in pycocoevalcap's
    /// exact order of operations.
    pub fn coco(&self) -> Vec<f64> {
        const SMALL: f64 = 1e-9;
        const TINY: f64 = 1e-15;
        let mut scores = Vec::with_capacity(self.matches.len());
        let mut product = 1.0_f64;
        for k in 0..self.matches.len() {
            product *= (self.matches[k] as f64 + TINY) / (self.coco_guesses[k] as f64 + SMALL);
            scores.push(product.powf(1.0 / (k as f64 + 1.0)));
        }
        let ratio = (self.hypothesis_length as f64 + TINY) / (self.reference_length as f64 + SMALL);
        if ratio < 1.0 {
            let penalty = (1.0 - 1.0 / ratio).exp();
            for s in &mut scores {
                *s *= penalty;
            }
        }
        scores
    }
}

fn check_weights(weights: &[f64]) -> Result<(), BleuError> {
    if weights.is_empty() {
        return Err(BleuError::NoWeights);
    }
    if let Some((index, &value)) = weights.iter().enumerate().find(|(_, w)| !w.is_finite()) {
        return Err(BleuError::BadWeight { index, value });
    }
    Ok(())
}

fn ngram_counts<T: Eq + Hash>(tokens: &[T], n: usize) -> HashMap<&[T], u64> {
    let mut counts = HashMap::new();
    if n > 0 && tokens.len() >= n {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// NLTK-compatible `corpus_bleu` for one weight vector.
pub fn corpus_bleu<T: Eq + Hash, R: AsRef<[T]>, H: AsRef<[T]>>(
    references: &[Vec<R>],
    hypotheses: &[H],
    weights: &[f64],
) -> Result<f64, BleuError> {
    check_weights(weights)?;
    BleuStats::collect(references, hypotheses, weights.len())?.nltk(weights)
}

/// coco-caption BLEU-1..4.
pub fn coco_bleu<T: Eq + Hash, R: AsRef<[T]>, H: AsRef<[T]>>(
    references: &[Vec<R>],
    hypotheses: &[H],
) -> Result<[f64; 4], BleuError> {
    let scores = BleuStats::collect(references, hypotheses, 4)?.coco();
    Ok([scores[0], scores[1], scores[2], scores[3]])
}

/// Correctly rounded sum of floats, as Python's `math.fsum` (Shewchuk's exact partials
/// followed by CPython's round-half-even correction), so that NLTK's `fsum` of the
/// weighted log-precisions is reproduced bit for bit.
pub fn fsum(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut partials: Vec<f64> = Vec::new();
    let mut special_sum = 0.0;
    let mut has_special = false;
    for mut x in values {
        if !x.is_finite() {
            // Infinities and NaNs: Python gives inf, -inf or an error; a plain sum
            // yields the same inf or a NaN.
            has_special = true;
            special_sum += x;
            continue;
        }
        let mut i = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        partials.truncate(i);
        partials.push(x);
    }
    if has_special {
        return special_sum;
    }
    let mut n = partials.len();
    if n == 0 {
        return 0.0;
    }
    n -= 1;
    let mut hi = partials[n];
    let mut lo = 0.0;
    while n > 0 {
        let x = hi;
        n -= 1;
        let y = partials[n];
        hi = x + y;
        let yr = hi - x;
        lo = y - yr;
        if lo != 0.0 {
            break;
        }
    }
    // Round half to even when the remaining partials push `lo` past the halfway point.
    if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0)) {
        let y = lo * 2.0;
        let x = hi + y;
        let yr = x - hi;
        if y == yr {
            hi = x;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<&str> {
        s.split_whitespace().collect()
    }

    // NLTK's own documented examples (nltk/translate/bleu_score.py docstrings).
    const HYP1: &str = "It is a guide to action which ensures that the military always obeys the commands of the party";
    const REF1A: &str =
        "It is a guide to action that ensures that the military will forever heed Party commands";
    const REF1B: &str = "It is the guiding principle which guarantees the military forces always being under the command of the Party";
    const REF1C: &str =
        "It is the practical guide for the army always to heed the directions of the party";
    const HYP2: &str = "he read the book because he was interested in world history";
    const REF2A: &str = "he was interested in world history because he read the book";

    #[test]
    fn nltk_documented_corpus_example() {
        let refs = vec![
            vec![toks(REF1A), toks(REF1B), toks(REF1C)],
            vec![toks(REF2A)],
        ];
        let hyps = vec![toks(HYP1), toks(HYP2)];
        let score = corpus_bleu(&refs, &hyps, &[0.25; 4]).unwrap();
        // NLTK docstring: 0.5920778868801042
        assert_eq!(score, 0.5920778868801042);
    }

    #[test]
    fn nltk_documented_sentence_examples() {
        let refs = vec![vec![toks(REF1A), toks(REF1B), toks(REF1C)]];
        let hyps = vec![toks(HYP1)];
        // sentence_bleu docstring: 0.5045666840058485
        assert_eq!(
            corpus_bleu(&refs, &hyps, &[0.25; 4]).unwrap(),
            0.5045666840058485
        );
        // Unigram and bigram weights from the same docstring.
        assert_eq!(
            corpus_bleu(&refs, &hyps, &[1.0]).unwrap(),
            0.9444444444444444
        );
        assert_eq!(
            corpus_bleu(&refs, &hyps, &[0.5, 0.5]).unwrap(),
            0.7453559924999299
        );
    }

    #[test]
    fn no_unigram_match_is_exactly_zero() {
        let refs = vec![vec![toks("a b c d")]];
        let hyps = vec![toks("x y z")];
        assert_eq!(corpus_bleu(&refs, &hyps, &[0.25; 4]).unwrap(), 0.0);
    }

    #[test]
    fn empty_hypothesis_counts_towards_lengths_only() {
        let refs = vec![vec![toks("a b c")], vec![toks("a b c")]];
        let hyps = vec![toks("a b c"), vec![]];
        let stats = BleuStats::collect(&refs, &hyps, 4).unwrap();
        assert_eq!(stats.hypothesis_length, 3);
        // The empty hypothesis' closest reference still counts (length 3).
        assert_eq!(stats.reference_length, 6);
        // Per-sentence denominator floor of 1 for NLTK, none for coco.
        assert_eq!(stats.nltk_totals, [4, 3, 2, 2]);
        assert_eq!(stats.coco_guesses, [3, 2, 1, 0]);
    }

    #[test]
    fn weights_beyond_the_collected_order_are_an_error_not_a_panic() {
        let refs = vec![vec![toks("a b c")]];
        let hyps = vec![toks("a b c")];
        let stats = BleuStats::collect(&refs, &hyps, 2).unwrap();
        assert_eq!(
            stats.nltk(&[0.25; 4]),
            Err(BleuError::OrderTooLow {
                weights: 4,
                order: 2
            })
        );
        assert!(stats.nltk(&[0.5, 0.5]).is_ok());
    }

    #[test]
    fn closest_reference_ties_go_to_the_shorter() {
        let refs = vec![vec![toks("a b c d e f"), toks("a b")]];
        let hyps = vec![toks("a b c d")];
        let stats = BleuStats::collect(&refs, &hyps, 1).unwrap();
        assert_eq!(stats.reference_length, 2);
    }

    #[test]
    fn clipping_uses_the_max_count_in_one_reference() {
        // "the" appears twice in one reference and once in another: clip at 2, not 3.
        let refs = vec![vec![toks("the cat the mat"), toks("the dog")]];
        let hyps = vec![toks("the the the the")];
        let stats = BleuStats::collect(&refs, &hyps, 1).unwrap();
        assert_eq!(stats.matches, [2]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let refs: Vec<Vec<Vec<&str>>> = vec![vec![]];
        let hyps = vec![toks("a")];
        assert_eq!(
            corpus_bleu(&refs, &hyps, &[1.0]),
            Err(BleuError::NoReferences { index: 0 })
        );
        let refs = vec![vec![toks("a")]];
        assert!(matches!(
            corpus_bleu(&refs, &[toks("a"), toks("b")], &[1.0]),
            Err(BleuError::LengthMismatch { .. })
        ));
        assert_eq!(
            corpus_bleu(&refs, &[toks("a")], &[]),
            Err(BleuError::NoWeights)
        );
        assert!(matches!(
            corpus_bleu(&refs, &[toks("a")], &[f64::NAN]),
            Err(BleuError::BadWeight { index: 0, .. })
        ));
    }

    #[test]
    fn coco_matches_hand_computation() {
        let refs = vec![vec![toks("a b c d")]];
        let hyps = vec![toks("a b c")];
        let s = coco_bleu(&refs, &hyps).unwrap();
        let bp = (1.0_f64 - 1.0 / ((3.0 + 1e-15) / (4.0 + 1e-9))).exp();
        let p1 = (3.0 + 1e-15) / (3.0 + 1e-9);
        assert_eq!(s[0], p1 * bp);
        let p12 = p1 * ((2.0 + 1e-15) / (2.0 + 1e-9));
        assert_eq!(s[1], p12.powf(0.5) * bp);
    }

    #[test]
    fn fsum_is_correctly_rounded() {
        // Python: math.fsum([.1] * 10) == 1.0, math.fsum([1e100, 1.0, -1e100, 1e-100, 1e50, -1.0, -1e50]) == 1e-100
        assert_eq!(fsum([0.1; 10]), 1.0);
        assert_eq!(
            fsum([1e100, 1.0, -1e100, 1e-100, 1e50, -1.0, -1e50]),
            1e-100
        );
        // Half-way case rounded to even: 2**53 + 1 + 2**-1... (CPython test_math).
        assert_eq!(fsum([1.0, 1e-16, 1e-16]), 1.0000000000000002);
        assert_eq!(fsum(Vec::<f64>::new()), 0.0);
    }
}

//! `caption-train bleu`: score a hypotheses TSV against a references TSV.

use std::path::{Path, PathBuf};

use caption_proto::bleu::{BleuError, BleuStats};
use caption_proto::text::py_split;
use caption_proto::tsv::{self, TsvError};

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Tsv(#[from] TsvError),
    #[error("{hyps}:{line}: image id {id:?} has no reference in {refs}")]
    NoReference {
        hyps: PathBuf,
        line: usize,
        id: String,
        refs: PathBuf,
    },
    #[error("{0} holds no hypotheses")]
    NoHypotheses(PathBuf),
    #[error(transparent)]
    Bleu(#[from] BleuError),
}

/// A corpus tokenised as given (whitespace split, no cleaning), hypotheses in file order.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub references: Vec<Vec<Vec<String>>>,
    pub hypotheses: Vec<Vec<String>>,
}

fn tokens(caption: &str) -> Vec<String> {
    py_split(caption).map(str::to_owned).collect()
}

impl Corpus {
    pub fn load(refs_path: &Path, hyps_path: &Path) -> Result<Corpus, ScoreError> {
        let refs = tsv::group_references(tsv::read(refs_path)?);
        let hyps = tsv::read(hyps_path)?;
        if hyps.is_empty() {
            return Err(ScoreError::NoHypotheses(hyps_path.to_owned()));
        }
        let mut corpus = Corpus {
            references: Vec::with_capacity(hyps.len()),
            hypotheses: Vec::with_capacity(hyps.len()),
        };
        for hyp in hyps {
            let Some(captions) = refs.get(&hyp.image_id) else {
                return Err(ScoreError::NoReference {
                    hyps: hyps_path.to_owned(),
                    line: hyp.line,
                    id: hyp.image_id,
                    refs: refs_path.to_owned(),
                });
            };
            corpus
                .references
                .push(captions.iter().map(|c| tokens(c)).collect());
            corpus.hypotheses.push(tokens(&hyp.caption));
        }
        Ok(corpus)
    }

    pub fn stats(&self, max_n: usize) -> Result<BleuStats, BleuError> {
        BleuStats::collect(&self.references, &self.hypotheses, max_n)
    }
}

/// BLEU n-gram weights, `weights.0[n-1]` for order n.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights(pub Vec<f64>);

/// Parse `--weights w1,w2,...`.
pub fn parse_weights(text: &str) -> Result<Weights, String> {
    let weights = text
        .split(',')
        .enumerate()
        .map(|(i, w)| {
            let w = w.trim();
            w.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("weight {} ({w:?}) is not a finite number", i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Weights(weights))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_or_name_the_bad_one() {
        assert_eq!(parse_weights(".5, .5,0,0").unwrap().0, [0.5, 0.5, 0.0, 0.0]);
        let err = parse_weights("0.5,x").unwrap_err();
        assert!(err.contains("weight 2") && err.contains("\"x\""), "{err}");
        assert!(parse_weights("1,inf").is_err());
        assert!(parse_weights("").is_err());
    }
}

//! Caption decoding search (greedy and beam) over a backend-agnostic step model, so the
//! trainer (tch) and the edge daemon (tract) decode with the very same code.
//!
//! A decoder works on *rows*: each row decodes one image, and beam search gives an image
//! several rows. Every step is one batched call over all rows.

/// One decoding step of a caption model, batched over rows.
pub trait StepDecoder {
    /// The recurrent state of a batch of rows (e.g. LSTM `h`, `c`).
    type State;
    type Error;

    /// Vocabulary size, padding index 0 included.
    fn vocab_size(&self) -> usize;

    /// The initial state for rows decoding `images` (indices into the caller's images).
    fn start(&mut self, images: &[usize]) -> Result<Self::State, Self::Error>;

    /// Feed the previous word of each row; return log-probabilities `[rows * vocab]`
    /// (row-major) and the new state.
    fn step(
        &mut self,
        state: &Self::State,
        images: &[usize],
        words: &[u32],
    ) -> Result<(Vec<f32>, Self::State), Self::Error>;

    /// A state made of rows `rows` of `state` (rows may repeat).
    fn select(&mut self, state: &Self::State, rows: &[usize]) -> Result<Self::State, Self::Error>;
}

/// Search settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchConfig {
    /// Beam width; 1 is greedy.
    pub beam: usize,
    /// Most words generated (the tutorial's `max_length`).
    pub max_length: usize,
    /// Length normalisation exponent for ranking finished beams: score / len^alpha
    /// (0 ranks by the plain sum of log-probabilities).
    pub length_penalty: f32,
    pub start: u32,
    pub end: u32,
}

/// A decoded caption.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Generated word ids, without the start token; ends with the end token when the
    /// model produced it.
    pub tokens: Vec<u32>,
    /// Sum of the log-probabilities of the generated tokens.
    pub log_prob: f32,
}

impl Hypothesis {
    /// Mean log-probability per generated token (the MQTT `score`).
    pub fn mean_log_prob(&self) -> f32 {
        if self.tokens.is_empty() {
            0.0
        } else {
            self.log_prob / self.tokens.len() as f32
        }
    }

    /// The words without the end token.
    pub fn words(&self, end: u32) -> &[u32] {
        match self.tokens.last() {
            Some(&last) if last == end => &self.tokens[..self.tokens.len() - 1],
            _ => &self.tokens,
        }
    }
}

/// Index of the first maximum (numpy's `argmax`).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Greedy decoding exactly as the tutorial's `generate_desc`: up to `max_length` steps,
/// the argmax word (over the whole vocabulary); padding index 0 ends the caption without
/// being appended (`word_for_id` returns `None`), the end token ends it after being appended.
pub fn greedy<D: StepDecoder>(
    decoder: &mut D,
    images: &[usize],
    config: &SearchConfig,
) -> Result<Vec<Hypothesis>, D::Error> {
    let vocab = decoder.vocab_size();
    let mut out: Vec<Hypothesis> = images
        .iter()
        .map(|_| Hypothesis {
            tokens: Vec::new(),
            log_prob: 0.0,
        })
        .collect();
    let mut active: Vec<usize> = (0..images.len()).collect();
    let mut words: Vec<u32> = vec![config.start; images.len()];
    let mut state = decoder.start(images)?;
    for _ in 0..config.max_length {
        if active.is_empty() {
            break;
        }
        let rows: Vec<usize> = active.iter().map(|&a| images[a]).collect();
        let (logp, next) = decoder.step(&state, &rows, &words)?;
        let mut keep = Vec::new();
        let mut next_words = Vec::new();
        for (r, &a) in active.iter().enumerate() {
            let row = &logp[r * vocab..(r + 1) * vocab];
            let w = argmax(row);
            if w == 0 {
                continue;
            }
            out[a].tokens.push(w as u32);
            out[a].log_prob += row[w];
            if w as u32 != config.end {
                keep.push(r);
                next_words.push(w as u32);
            }
        }
        state = decoder.select(&next, &keep)?;
        active = keep.iter().map(|&r| active[r]).collect();
        words = next_words;
    }
    Ok(out)
}

#[derive(Debug, Clone)]
struct Beam {
    tokens: Vec<u32>,
    log_prob: f32,
}

fn normalised(log_prob: f32, len: usize, alpha: f32) -> f32 {
    if alpha == 0.0 || len == 0 {
        log_prob
    } else {
        log_prob / (len as f32).powf(alpha)
    }
}

/// Beam search: keeps the `beam` best partial captions per image by summed
/// log-probability; a beam ends at the end token (appended) or padding index 0 (not
/// appended), or after `max_length` words. The best finished caption by
/// `log_prob / len^length_penalty` wins. All beams of all images go through one decoder
/// call per step. With `beam == 1` this is exactly [`greedy`].
pub fn beam_search<D: StepDecoder>(
    decoder: &mut D,
    images: &[usize],
    config: &SearchConfig,
) -> Result<Vec<Hypothesis>, D::Error> {
    let k = config.beam.max(1);
    let vocab = decoder.vocab_size();
    // Per image: live beams (aligned with the state rows) and finished ones.
    let mut live: Vec<Vec<Beam>> = images
        .iter()
        .map(|_| {
            vec![Beam {
                tokens: Vec::new(),
                log_prob: 0.0,
            }]
        })
        .collect();
    let mut finished: Vec<Vec<Beam>> = vec![Vec::new(); images.len()];
    let mut state = decoder.start(images)?;
    for _ in 0..config.max_length {
        let rows: Vec<usize> = live
            .iter()
            .enumerate()
            .flat_map(|(i, beams)| std::iter::repeat_n(images[i], beams.len()))
            .collect();
        if rows.is_empty() {
            break;
        }
        let words: Vec<u32> = live
            .iter()
            .flat_map(|beams| {
                beams
                    .iter()
                    .map(|b| b.tokens.last().copied().unwrap_or(config.start))
            })
            .collect();
        let (logp, next) = decoder.step(&state, &rows, &words)?;
        let mut selected_rows = Vec::new();
        let mut row_base = 0;
        for (i, beams) in live.iter_mut().enumerate() {
            let mut candidates: Vec<(f32, usize, usize)> = Vec::with_capacity(beams.len() * vocab);
            for (b, beam) in beams.iter().enumerate() {
                let row = &logp[(row_base + b) * vocab..(row_base + b + 1) * vocab];
                for (w, &lp) in row.iter().enumerate() {
                    candidates.push((beam.log_prob + lp, b, w));
                }
            }
            let wanted = k.saturating_sub(finished[i].len()).max(1);
            let mut image_rows = Vec::new();
            let mut next_beams = Vec::new();
            for (score, b, w) in top_k(candidates, wanted) {
                let mut tokens = beams[b].tokens.clone();
                if w == 0 {
                    // Padding ends the caption without being appended (as greedy does).
                    let log_prob = beams[b].log_prob;
                    finished[i].push(Beam { tokens, log_prob });
                    continue;
                }
                tokens.push(w as u32);
                let beam = Beam {
                    tokens,
                    log_prob: score,
                };
                if w as u32 == config.end {
                    finished[i].push(beam);
                } else {
                    image_rows.push(row_base + b);
                    next_beams.push(beam);
                }
            }
            row_base += beams.len();
            // An image is done once it has k finished captions.
            if finished[i].len() >= k {
                next_beams.clear();
                image_rows.clear();
            }
            selected_rows.extend(image_rows);
            *beams = next_beams;
        }
        state = decoder.select(&next, &selected_rows)?;
    }
    Ok(live
        .into_iter()
        .zip(finished)
        .map(|(live, mut done)| {
            done.extend(live);
            let best = done
                .into_iter()
                .enumerate()
                .max_by(|(ia, a), (ib, b)| {
                    let sa = normalised(a.log_prob, a.tokens.len(), config.length_penalty);
                    let sb = normalised(b.log_prob, b.tokens.len(), config.length_penalty);
                    // Ties go to the earlier (higher-ranked) caption.
                    sa.total_cmp(&sb).then(ib.cmp(ia))
                })
                .map(|(_, b)| b)
                .unwrap_or(Beam {
                    tokens: Vec::new(),
                    log_prob: 0.0,
                });
            Hypothesis {
                tokens: best.tokens,
                log_prob: best.log_prob,
            }
        })
        .collect())
}

/// The `k` best candidates by score, ties to the earlier candidate (beam, then word):
/// with one beam, the first maximum, like greedy's argmax.
fn top_k(mut candidates: Vec<(f32, usize, usize)>, k: usize) -> Vec<(f32, usize, usize)> {
    let order = |a: &(f32, usize, usize), b: &(f32, usize, usize)| {
        b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2)))
    };
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, order);
        candidates.truncate(k);
    }
    candidates.sort_by(order);
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy decoder: the next word's log-probabilities depend on the image and the
    /// previous word through a fixed pseudo-random table; state counts steps per row.
    struct Toy {
        vocab: usize,
        table: Vec<f32>,
        calls: usize,
    }

    impl Toy {
        fn new(vocab: usize, images: usize, seed: u64) -> Toy {
            let mut x = seed;
            let mut table = Vec::new();
            for _ in 0..images * vocab {
                let mut logits: Vec<f32> = (0..vocab)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x % 1000) as f32 / 150.0
                    })
                    .collect();
                logits[0] -= 8.0; // padding is unlikely, as after training
                let m = logits.iter().cloned().fold(f32::MIN, f32::max);
                let z: f32 = logits.iter().map(|l| (l - m).exp()).sum::<f32>().ln() + m;
                table.extend(logits.iter().map(|l| l - z));
            }
            Toy {
                vocab,
                table,
                calls: 0,
            }
        }
    }

    impl StepDecoder for Toy {
        type State = Vec<usize>;
        type Error = ();
        fn vocab_size(&self) -> usize {
            self.vocab
        }
        fn start(&mut self, images: &[usize]) -> Result<Vec<usize>, ()> {
            Ok(vec![0; images.len()])
        }
        fn step(
            &mut self,
            state: &Vec<usize>,
            images: &[usize],
            words: &[u32],
        ) -> Result<(Vec<f32>, Vec<usize>), ()> {
            assert_eq!(state.len(), images.len());
            assert_eq!(words.len(), images.len());
            self.calls += 1;
            let mut out = Vec::new();
            for (img, w) in images.iter().zip(words) {
                let at = (img * self.vocab + *w as usize) * self.vocab;
                out.extend_from_slice(&self.table[at..at + self.vocab]);
            }
            Ok((out, state.iter().map(|s| s + 1).collect()))
        }
        fn select(&mut self, state: &Vec<usize>, rows: &[usize]) -> Result<Vec<usize>, ()> {
            Ok(rows.iter().map(|&r| state[r]).collect())
        }
    }

    fn config(beam: usize) -> SearchConfig {
        SearchConfig {
            beam,
            max_length: 12,
            length_penalty: 0.0,
            start: 1,
            end: 2,
        }
    }

    /// The tutorial's loop, one image at a time, re-run from scratch.
    fn naive_greedy(toy: &Toy, image: usize, cfg: &SearchConfig) -> Vec<u32> {
        let mut words = vec![cfg.start];
        let mut out = Vec::new();
        for _ in 0..cfg.max_length {
            let prev = *words.last().unwrap() as usize;
            let at = (image * toy.vocab + prev) * toy.vocab;
            let w = argmax(&toy.table[at..at + toy.vocab]) as u32;
            if w == 0 {
                break;
            }
            out.push(w);
            words.push(w);
            if w == cfg.end {
                break;
            }
        }
        out
    }

    #[test]
    fn greedy_matches_the_naive_loop_and_batches_rows() {
        let mut toy = Toy::new(9, 5, 42);
        let images = [0, 1, 2, 3, 4];
        let cfg = config(1);
        let got = greedy(&mut toy, &images, &cfg).unwrap();
        for (i, h) in got.iter().enumerate() {
            assert_eq!(h.tokens, naive_greedy(&toy, i, &cfg), "image {i}");
        }
        assert!(toy.calls <= cfg.max_length);
    }

    #[test]
    fn beam_of_one_is_greedy() {
        for seed in 1..20 {
            let images = [0, 1, 2, 3];
            let mut a = Toy::new(7, 4, seed);
            let mut b = Toy::new(7, 4, seed);
            let g = greedy(&mut a, &images, &config(1)).unwrap();
            let bs = beam_search(&mut b, &images, &config(1)).unwrap();
            for (x, y) in g.iter().zip(&bs) {
                assert_eq!(x.tokens, y.tokens, "seed {seed}");
                assert!((x.log_prob - y.log_prob).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn wider_beams_score_at_least_greedy_on_the_toy_model() {
        // Scores compare only between finished captions (an unfinished one stopped at
        // max_length, unscored by the end token); count the comparisons so that the test
        // cannot pass having compared nothing.
        let (mut compared, mut pairs) = (0, 0);
        for seed in 1..40 {
            let images = [0, 1, 2];
            let g = greedy(&mut Toy::new(8, 3, seed), &images, &config(1)).unwrap();
            let b = beam_search(&mut Toy::new(8, 3, seed), &images, &config(4)).unwrap();
            for (x, y) in g.iter().zip(&b) {
                pairs += 1;
                let ended = |h: &Hypothesis| h.tokens.last() == Some(&2);
                if ended(x) {
                    // When greedy finds a finished caption, so does the wider beam.
                    assert!(ended(y), "seed {seed}: beam {y:?}, greedy {x:?}");
                    assert!(
                        y.log_prob >= x.log_prob - 1e-5,
                        "seed {seed}: {y:?} < {x:?}"
                    );
                    compared += 1;
                }
            }
        }
        // 37 of the 117 greedy captions finish on these seeds (the toy is deterministic).
        assert!(compared >= 30, "only {compared} of {pairs} pairs compared");
    }

    #[test]
    fn hypothesis_words_drop_the_end_token() {
        let h = Hypothesis {
            tokens: vec![5, 6, 2],
            log_prob: -3.0,
        };
        assert_eq!(h.words(2), [5, 6]);
        assert_eq!(h.mean_log_prob(), -1.0);
    }
}

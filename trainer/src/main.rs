//! `caption-train`: thin CLI over the `caption_trainer` library.

use std::path::PathBuf;

use anyhow::{Context, Result};
use caption_proto::TextRules;
use caption_trainer::encoders::EncoderKind;
use caption_trainer::{device, extract, prepare, scoring};
use clap::{Parser, Subcommand};

/// Train and evaluate the Caption image-captioning model (Flickr8k, libtorch).
#[derive(Parser, Debug)]
#[command(name = "caption-train", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Clean the Flickr8k captions, write descriptions.txt and the train vocab.json, and
    /// print the dataset figures as one JSON object on stdout.
    Prepare {
        /// Flickr8k folder (holding Flickr8k_text/ and Flicker8k_Dataset/).
        #[arg(long)]
        data: PathBuf,
        /// Output folder for descriptions.txt and vocab.json (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Caption normalisation: `original` (the tutorial's, drops one-letter words) or
        /// `standard` (keeps every word).
        #[arg(long, default_value = "original")]
        text: TextRules,
        /// Leave out words seen fewer times than this in the train captions.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        min_count: u64,
    },
    /// Corpus BLEU of hypotheses against references (NLTK `corpus_bleu` semantics, no
    /// smoothing); the score is the last line of stdout. Files: `image_id<TAB>caption`,
    /// several reference lines per id; tokens are the whitespace-split captions as given.
    Bleu {
        /// References TSV (several lines per image id).
        #[arg(long)]
        refs: PathBuf,
        /// Hypotheses TSV, scored in file order; an empty caption is an empty hypothesis.
        #[arg(long)]
        hyps: PathBuf,
        /// Comma-separated n-gram weights, e.g. `.25,.25,.25,.25` (BLEU-4).
        #[arg(long, default_value = "0.25,0.25,0.25,0.25", value_parser = scoring::parse_weights, conflicts_with = "coco")]
        weights: scoring::Weights,
        /// Print coco-caption BLEU-1..4 (pycocoevalcap) as one JSON object instead.
        #[arg(long)]
        coco: bool,
    },
    /// Extract image feature vectors for every Flickr8k image into one safetensors file
    /// (tensor `features` [N, D]; image ids and provenance in its metadata). Prints a JSON
    /// summary on stdout. A finished file with the same inputs is reused.
    Extract {
        /// Flickr8k folder (holding Flickr8k_text/ and Flicker8k_Dataset/).
        #[arg(long)]
        data: PathBuf,
        /// `vgg16` (4,096-d fc2) or `efficientnet-lite0` (1,280-d).
        #[arg(long, value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<EncoderKind>()))]
        encoder: EncoderKind,
        /// Encoder weights: a PyTorch checkpoint (zip or legacy format) or safetensors
        /// with torchvision / efficientnet-lite-pytorch names.
        #[arg(long, required_unless_present = "random_init")]
        weights: Option<PathBuf>,
        /// Random weights (VGG16 only; for tests and benchmarks). Recorded in the metadata.
        #[arg(long, conflicts_with = "weights")]
        random_init: bool,
        /// Output features file (.safetensors).
        #[arg(long)]
        out: PathBuf,
        /// Images per network call.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
        batch_size: u64,
        /// `auto` (CUDA when available), `cpu` or `cuda`.
        #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
        device: String,
        /// Stop at the first unreadable image instead of skipping it.
        #[arg(long)]
        strict: bool,
        /// Only the first N images of the token file (benchmarks).
        #[arg(long)]
        limit: Option<usize>,
        /// Image decoding threads running alongside the network.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Show what libtorch sees (CUDA devices, CPU threads) as JSON.
    Device,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Prepare {
            data,
            out,
            text,
            min_count,
        } => {
            let summary = prepare::prepare_to_dir(&data, &out, text, min_count)
                .with_context(|| format!("preparing {}", data.display()))?;
            for id in &summary.missing_images {
                eprintln!("warning: image {id} has captions but no image file");
            }
            for entry in &summary.split_ids_without_captions {
                eprintln!("warning: split entry {entry} has no captions in the token file");
            }
            println!("{}", serde_json::to_string(&summary)?);
        }
        Command::Bleu {
            refs,
            hyps,
            weights,
            coco,
        } => {
            let corpus = scoring::Corpus::load(&refs, &hyps)?;
            if coco {
                let s = corpus.stats(4)?.coco();
                println!(
                    "{}",
                    serde_json::json!({"bleu1": s[0], "bleu2": s[1], "bleu3": s[2], "bleu4": s[3]})
                );
            } else {
                let stats = corpus.stats(weights.0.len())?;
                // Debug formatting: the shortest text that reads back as the same f64.
                println!("{:?}", stats.nltk(&weights.0)?);
            }
        }
        Command::Extract {
            data,
            encoder,
            weights,
            random_init,
            out,
            batch_size,
            device,
            strict,
            limit,
            workers,
            quiet,
        } => {
            let device = match device.as_str() {
                "cpu" => tch::Device::Cpu,
                "cuda" => {
                    if !tch::Cuda::is_available() {
                        anyhow::bail!("--device cuda: libtorch sees no CUDA device (see `caption-train device`)");
                    }
                    tch::Device::Cuda(0)
                }
                _ => tch::Device::cuda_if_available(),
            };
            let opts = extract::ExtractOptions {
                data,
                encoder,
                weights,
                random_init,
                out,
                batch_size: batch_size as usize,
                device,
                strict,
                limit,
                workers,
                progress: !quiet,
            };
            let summary = extract::extract(&opts).with_context(|| {
                format!(
                    "extracting {} features from {}",
                    encoder,
                    opts.data.display()
                )
            })?;
            if summary.reused {
                eprintln!("reusing {} (same inputs)", summary.out.display());
            }
            if !summary.skipped.is_empty() {
                eprintln!(
                    "skipped {} image(s); see `skipped` in the summary",
                    summary.skipped.len()
                );
            }
            println!("{}", serde_json::to_string(&summary)?);
        }
        Command::Device => println!("{}", serde_json::to_string(&device::report())?),
    }
    Ok(())
}

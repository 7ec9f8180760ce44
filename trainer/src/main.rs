//! `caption-train`: thin CLI over the `caption_trainer` library.

use std::path::PathBuf;

use anyhow::{Context, Result};
use caption_proto::{Flickr8k, Split, TextRules};
use caption_trainer::caption::{search_config, CheckpointCaptioner};
use caption_trainer::device::DeviceChoice;
use caption_trainer::encoders::EncoderKind;
use caption_trainer::export::Quantize;
use caption_trainer::onnx::{DepthwiseScheme, FcScheme, WeightStorage};
use caption_trainer::{device, evaluate, extract, prepare, scoring, train};
use clap::{Args, Parser, Subcommand};

/// `--device`, shared by the commands that run libtorch.
#[derive(Args, Debug)]
struct DeviceArgs {
    /// Where libtorch computes: `auto` is CUDA when libtorch sees a device.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
}

impl DeviceArgs {
    fn resolve(&self) -> Result<tch::Device> {
        Ok(self.device.resolve()?)
    }
}

/// Decoding flags shared by `evaluate` and `caption`.
#[derive(Args, Debug)]
struct SearchArgs {
    /// Beam width; 1 is the tutorial's greedy decoding.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    beam: u64,
    /// Length normalisation exponent for beam ranking (0 = plain sum of log-probabilities).
    #[arg(long, default_value_t = 0.0, value_parser = parse_length_penalty)]
    length_penalty: f32,
}

/// A beam-ranking exponent within what a bundle manifest accepts.
fn parse_length_penalty(s: &str) -> Result<f32, String> {
    let max = caption_proto::manifest::MAX_LENGTH_PENALTY;
    match s.parse::<f32>() {
        Ok(v) if (0.0..=max).contains(&v) => Ok(v),
        _ => Err(format!("expected a number from 0 to {max}, got {s:?}")),
    }
}

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
        #[arg(long, value_enum)]
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
        /// Images per network call (8 measured fastest on a 2-core CPU).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
        batch_size: u64,
        #[command(flatten)]
        device: DeviceArgs,
        /// Stop at the first unreadable image instead of skipping it.
        #[arg(long)]
        strict: bool,
        /// Only the first N images of the token file (benchmarks).
        #[arg(long)]
        limit: Option<usize>,
        /// Image decoding threads running alongside the network.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Store the last convolutional feature map (float16, `[N, regions, channels]`,
        /// e.g. 49 × 1,280 for Lite0) instead of the pooled vector: the attention model's
        /// input.
        #[arg(long)]
        spatial: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Train the caption model (`--model merge` or `attention`) on whole captions (teacher
    /// forcing); keeps the checkpoint with the best dev loss
    /// (`model-epNNN-lossX-val_lossY.{safetensors,json}`), writes `metrics.csv` and
    /// `vocab.json` into the run directory, prints a JSON summary.
    Train {
        /// Features file from `caption-train extract` (`--spatial` for attention).
        #[arg(long)]
        features: PathBuf,
        /// `merge` (the tutorial's model, pooled features) or `attention` (Show, Attend
        /// and Tell soft attention over spatial features).
        #[arg(long, value_enum, default_value_t = train::ModelKind::Merge)]
        model: train::ModelKind,
        /// Flickr8k folder.
        #[arg(long)]
        data: PathBuf,
        /// Run directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Caption text rules: `original` or `standard`.
        #[arg(long, default_value = "original")]
        text: TextRules,
        /// Leave out words seen fewer times than this in the train captions.
        #[arg(long, default_value_t = 1)]
        min_count: u64,
        #[arg(long, default_value_t = 20)]
        epochs: usize,
        /// Captions per optimiser step.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Adam learning rate (beta 0.9/0.999, eps 1e-7 as Keras).
        #[arg(long, default_value_t = 1e-3)]
        learning_rate: f64,
        /// Stop after this many epochs without a better dev loss.
        #[arg(long, default_value_t = 3)]
        patience: usize,
        #[arg(long, default_value_t = 1)]
        seed: i64,
        /// Continue from a checkpoint (`.safetensors` or its `.json`): its weights, next epoch.
        #[arg(long)]
        resume: Option<PathBuf>,
        #[command(flatten)]
        device: DeviceArgs,
        #[arg(long)]
        quiet: bool,
    },
    /// Decode a split with the best checkpoint of a run and report BLEU under both protocols
    /// (JSON on stdout and in the run directory, predictions TSV beside it).
    Evaluate {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        features: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "test")]
        split: Split,
        #[command(flatten)]
        search: SearchArgs,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Caption image files with a run's best checkpoint and its encoder weights.
    Caption {
        #[arg(long)]
        run: PathBuf,
        /// Encoder weights (the same the features were extracted with).
        #[arg(long)]
        weights: PathBuf,
        #[command(flatten)]
        search: SearchArgs,
        /// One JSON object per image (the caption event `captiond` publishes, with
        /// `image` naming the file) instead of `path<TAB>caption`.
        #[arg(long)]
        json: bool,
        /// Attention checkpoints: write a PNG of the image and, per word, where the model
        /// looked (one image only; the words are printed in panel order on stderr).
        #[arg(long, value_name = "PNG", conflicts_with = "json")]
        attention: Option<PathBuf>,
        #[command(flatten)]
        device: DeviceArgs,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Export a checkpoint and its encoder as a model bundle (ONNX graphs, vocabulary,
    /// manifest), verify it in tract against the tch model, and print a JSON report.
    Export {
        /// The checkpoint (`model-epNNN-....safetensors` or its `.json`).
        #[arg(long)]
        checkpoint: PathBuf,
        /// The encoder the checkpoint's features came from.
        #[arg(long, value_enum)]
        features_encoder: EncoderKind,
        /// Encoder weights (PyTorch checkpoint or safetensors).
        #[arg(long, required_unless_present = "random_init")]
        weights: Option<PathBuf>,
        /// Random encoder weights from this seed instead (tests and benchmarks only).
        #[arg(long, conflicts_with = "weights")]
        random_init: Option<i64>,
        /// The bundle directory to write.
        #[arg(long)]
        out: PathBuf,
        /// The encoder's storage.
        #[arg(long, value_enum, default_value_t = Quantize::None)]
        quantize: Quantize,
        /// Fully connected encoder layers of an int8 bundle.
        #[arg(long, value_enum, default_value_t = FcScheme::F32)]
        fc: FcScheme,
        /// Depthwise convolutions of an int8 bundle.
        #[arg(long, value_enum, default_value_t = DepthwiseScheme::F32)]
        depthwise: DepthwiseScheme,
        /// Decoder weight storage (default: f32 for f32 bundles, f16 for int8 bundles).
        #[arg(long, value_enum)]
        decoder_storage: Option<WeightStorage>,
        /// Flickr8k folder: calibration images (train split) and verification images.
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 300)]
        calibration_images: usize,
        #[arg(long, default_value = "dev")]
        verify_split: Split,
        /// How many images of the verification split to compare (the first ones).
        #[arg(long, default_value_t = 100)]
        verify_images: usize,
        /// Keep the intermediate f32 bundle of an int8 export in this directory.
        #[arg(long)]
        f32_out: Option<PathBuf>,
        /// Model id published with captions (default `flickr8k-<encoder>-<f32|int8>`).
        #[arg(long)]
        model_id: Option<String>,
        /// Also score the bundle (through the edge engine) and record BLEU in the manifest.
        #[arg(long)]
        evaluate: bool,
        #[arg(long, default_value = "test")]
        evaluate_split: Split,
        /// Beam width for --evaluate.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        beam: u64,
        /// The bundle's beam ranking, `log_prob / len^p` (recorded in the manifest as
        /// `decoder.length_penalty`; 0 = plain sum). Choose it on the dev split with
        /// `caption-train evaluate --split dev --beam 3 --length-penalty p`.
        #[arg(long, default_value_t = 0.0, value_parser = parse_length_penalty)]
        length_penalty: f32,
        /// Replace an existing bundle directory.
        #[arg(long)]
        force: bool,
    },
    /// Rebuild a bundle's encoder as a float graph from the encoder's weights (weights
    /// stored as f16 or f32, compute f32), keeping its decoder and vocabulary: e.g. the
    /// float bundle an int8 bundle was quantized from. No checkpoint is needed: the encoder
    /// is the pretrained network.
    FloatBundle {
        /// The bundle to start from.
        #[arg(long)]
        from: PathBuf,
        /// The encoder's weights (the ones the bundle was exported with).
        #[arg(long)]
        weights: PathBuf,
        /// Encoder weight storage.
        #[arg(long, value_enum, default_value_t = WeightStorage::F16)]
        storage: WeightStorage,
        /// Model id published with captions.
        #[arg(long)]
        model_id: String,
        /// The bundle directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing bundle directory.
        #[arg(long)]
        force: bool,
    },
    /// Show what libtorch sees (CUDA devices, CPU threads) as JSON.
    Device,
}

fn main() -> Result<()> {
    device::tune_allocator();
    let cli = Cli::parse();
    let cuda_backend = device::load_cuda_backend();
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
            spatial,
            quiet,
        } => {
            let device = device.resolve()?;
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
                spatial,
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
        Command::Train {
            features,
            model,
            data,
            out,
            text,
            min_count,
            epochs,
            batch_size,
            learning_rate,
            patience,
            seed,
            resume,
            device,
            quiet,
        } => {
            let device = device.resolve()?;
            let data =
                Flickr8k::load(&data).with_context(|| format!("reading {}", data.display()))?;
            let table = train::FeatureTable::load(&features)?;
            let opts = train::TrainOptions {
                model,
                epochs,
                batch_size: batch_size.max(1),
                learning_rate,
                patience: patience.max(1),
                seed,
                text_rules: text,
                min_count,
            };
            let inputs = train::TrainInputs {
                data: &data,
                table: &table,
                run_dir: &out,
                device,
                progress: !quiet,
                resume: resume.map(|r| r.with_extension("safetensors")),
            };
            let summary = train::train(&inputs, &opts)
                .with_context(|| format!("training into {}", out.display()))?;
            println!("{}", serde_json::to_string(&summary)?);
        }
        Command::Evaluate {
            run,
            features,
            data,
            split,
            search,
            device,
        } => {
            let device = device.resolve()?;
            let data =
                Flickr8k::load(&data).with_context(|| format!("reading {}", data.display()))?;
            let table = train::FeatureTable::load(&features)?;
            let (checkpoint, info) = train::best_checkpoint(&run)?;
            let (_vs, model) = train::load_trained(&checkpoint, &info, device)?;
            let beam = search.beam as usize;
            let search = search_config(&info.vocab, info.max_length, beam, search.length_penalty)
                .with_context(|| {
                format!(
                    "checkpoint {}: vocabulary lacks startseq/endseq",
                    checkpoint.display()
                )
            })?;
            let (report, predictions) = evaluate::evaluate(&evaluate::EvaluateInputs {
                data: &data,
                table: &table,
                model: &model,
                info: &info,
                checkpoint: &checkpoint,
                split,
                search,
            })?;
            let (pred_path, json_path) = evaluate::output_paths(&run, split, beam);
            let tsv = caption_proto::tsv::format(
                predictions.iter().map(|(a, b)| (a.as_str(), b.as_str())),
            );
            std::fs::write(&pred_path, tsv)
                .with_context(|| format!("writing {}", pred_path.display()))?;
            let json = serde_json::to_string(&report)?;
            std::fs::write(&json_path, &json)
                .with_context(|| format!("writing {}", json_path.display()))?;
            println!("{json}");
        }
        Command::Caption {
            run,
            weights,
            search,
            json,
            attention,
            device,
            images,
        } => {
            let captioner = CheckpointCaptioner::load(
                &run,
                &weights,
                device.resolve()?,
                search.beam as usize,
                search.length_penalty,
            )?;
            if let Some(png) = attention {
                let [image] = images.as_slice() else {
                    anyhow::bail!("--attention draws one image; {} were given", images.len());
                };
                let (words, picture) = captioner
                    .attention_picture(image)
                    .with_context(|| format!("attention picture of {}", image.display()))?;
                picture
                    .save(&png)
                    .with_context(|| format!("writing {}", png.display()))?;
                println!("{}\t{}", image.display(), words.join(" "));
                eprintln!(
                    "wrote {}: the image, then one panel per word: {}",
                    png.display(),
                    words.join(" | ")
                );
                return Ok(());
            }
            let mut failed = 0;
            for (sequence, path) in images.iter().enumerate() {
                match captioner.caption_file(path, sequence as u64) {
                    Ok(event) if json => println!("{}", serde_json::to_string(&event)?),
                    Ok(event) => println!("{}\t{}", path.display(), event.caption),
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} image(s) could not be read", images.len());
            }
        }
        Command::Export {
            checkpoint,
            features_encoder,
            weights,
            random_init,
            out,
            quantize,
            fc,
            depthwise,
            decoder_storage,
            data,
            calibration_images,
            verify_split,
            verify_images,
            f32_out,
            model_id,
            evaluate,
            evaluate_split,
            beam,
            length_penalty,
            force,
        } => {
            use caption_trainer::export::{self, ExportOptions};
            let opts = ExportOptions {
                checkpoint,
                encoder: features_encoder,
                weights,
                seed: random_init.unwrap_or(0),
                out,
                quantize,
                fc,
                int8_depthwise: depthwise == DepthwiseScheme::Int8,
                decoder_storage,
                data,
                calibration_images,
                verify_split,
                verify_images,
                f32_out,
                model_id,
                evaluate: evaluate.then_some((evaluate_split, beam as usize)),
                length_penalty,
                force,
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            let report = export::export(&opts, |line| eprintln!("export: {line}"))?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::FloatBundle {
            from,
            weights,
            storage,
            model_id,
            out,
            force,
        } => {
            if out.exists() && !force {
                anyhow::bail!("{} exists; pass --force to replace it", out.display());
            }
            caption_trainer::export::float_bundle(&from, &weights, storage, &model_id, &out)
                .with_context(|| format!("building {} from {}", out.display(), from.display()))?;
            let m = caption_proto::manifest::Manifest::load_bundle(&out)?.manifest;
            println!("{}", serde_json::to_string(&m.files)?);
        }
        Command::Device => println!("{}", serde_json::to_string(&device::report(cuda_backend))?),
    }
    Ok(())
}

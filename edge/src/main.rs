//! `captiond`: the Caption edge daemon. A thin CLI over the `caption_edge` library.

use std::path::PathBuf;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use caption_edge::config::Config;
use caption_proto::{Flickr8k, Split};
use caption_runtime::{bench, evaluate, Engine, EngineOptions, Precision};
use clap::{Args, Parser, Subcommand};

/// How the model runs: the flags `caption` and `evaluate` share (the daemon reads the same
/// settings from its config's `[model]` section).
#[derive(Args, Debug)]
struct EngineArgs {
    /// The encoder's precision: auto (the fastest verified one for this CPU), int8 (the
    /// bundle's graph as stored) or f32 (its int8 weights dequantised at load).
    #[arg(long, default_value = "auto")]
    precision: Precision,
    /// Threads for the model's matrix kernels [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
}

impl EngineArgs {
    fn options(&self) -> EngineOptions {
        EngineOptions {
            precision: self.precision,
            threads: self
                .threads
                .map_or_else(caption_runtime::all_cores, |t| t as usize),
        }
    }
}

/// Load a bundle and say, on stderr, how its encoder runs and why.
fn load_engine(bundle: &std::path::Path, options: &EngineOptions) -> Result<Engine> {
    let engine = Engine::load_with(bundle, options)
        .with_context(|| format!("loading the bundle {}", bundle.display()))?;
    let p = engine.precision();
    eprintln!(
        "{}: encoder in {} on {} thread(s) ({})",
        engine.manifest().model_id,
        p.precision,
        engine.threads(),
        p.reason
    );
    Ok(engine)
}

/// Caption images on an edge device and publish the captions over MQTT.
#[derive(Parser, Debug)]
#[command(name = "captiond", version = caption_edge::version())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// A line of `captiond caption --json`.
#[derive(serde::Serialize)]
struct FileCaptionLine {
    #[serde(flatten)]
    event: caption_proto::mqtt::CaptionEvent,
    precision: Precision,
    #[serde(skip_serializing_if = "Option::is_none")]
    features: Option<Vec<f32>>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: caption frames from the configured source and publish them over
    /// MQTT (an embedded broker when the config names none). Without --config, the
    /// defaults: the default bundle, images in examples/images, embedded broker on
    /// 127.0.0.1:1883.
    Run {
        /// The TOML config (see edge/captiond.example.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print the effective config (defaults filled in).
    CheckConfig { config: PathBuf },
    /// List cameras (V4L2) and their formats.
    Cameras,
    /// Caption image files once and print `path<TAB>caption` (or JSON lines with --json).
    Caption {
        /// The model bundle directory.
        #[arg(long, default_value = caption_edge::DEFAULT_BUNDLE)]
        bundle: PathBuf,
        /// Beam width; 1 is greedy.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        beam: u64,
        /// One JSON object per image, with the score and per-stage timings.
        #[arg(long)]
        json: bool,
        /// With --json: also the image's feature vector (`features`), e.g. to compare
        /// the aarch64 build with the x86-64 one.
        #[arg(long, requires = "json")]
        features: bool,
        /// Attention bundles: write a PNG of the image and, per word, where the model
        /// looked (one image only; the words are printed in panel order on stderr).
        #[arg(long, value_name = "PNG")]
        attention: Option<PathBuf>,
        #[command(flatten)]
        engine: EngineArgs,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Per-stage latency (min/median/p90) and captions/s of one or more bundles over a
    /// folder of images; every bundle × precision × threads variant runs interleaved in
    /// this one process, and the first variant is the baseline of the printed ratios.
    Bench {
        /// Bundle directory; repeat to compare bundles.
        #[arg(long, required = true)]
        bundle: Vec<PathBuf>,
        /// Encoder precision (auto, int8, f32); repeat to compare.
        #[arg(long, default_values_t = [Precision::Auto])]
        precision: Vec<Precision>,
        /// Threads for the matrix kernels; repeat to compare [default: all cores].
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        threads: Vec<u64>,
        /// Folder of images (jpg, jpeg, png).
        #[arg(long)]
        images: PathBuf,
        /// Use at most this many images of the folder.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        beam: u64,
    },
    /// Write a bundle's encoder graph as the engine runs it at a precision (int8: as
    /// stored; f32: its int8 weights dequantised), as an ONNX file, e.g. to run the very
    /// same graph in another runtime.
    EncoderGraph {
        #[arg(long, default_value = caption_edge::DEFAULT_BUNDLE)]
        bundle: PathBuf,
        #[arg(long)]
        precision: Precision,
        /// The ONNX file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// BLEU of a bundle on a Flickr8k split through the daemon's inference path; prints one
    /// JSON object (scores and timings) as the last line of stdout.
    Evaluate {
        #[arg(long)]
        bundle: PathBuf,
        /// Flickr8k folder (Flickr8k_text/ and Flicker8k_Dataset/).
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "test")]
        split: Split,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        beam: u64,
        /// Write `image_id<TAB>caption` for every image of the split here.
        #[arg(long)]
        predictions: Option<PathBuf>,
        #[command(flatten)]
        engine: EngineArgs,
    },
}

fn init_logging(level: &str) {
    let filter = std::env::var("CAPTIOND_LOG").unwrap_or_else(|_| level.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter)
                .with_filter(caption_edge::broker::DisconnectNoise),
        )
        .init();
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let cfg = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            init_logging(&cfg.log_level);
            let shutdown = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(signal, shutdown.clone())
                    .context("installing the signal handlers")?;
            }
            let token = match &config {
                _ if cfg.http.listen.is_none() => None,
                Some(path) => cfg.http_token(path)?,
                None => None,
            };
            // Captions also go to stdout, one JSON object per line, for logs and scripts.
            let mut print = |event: &caption_proto::mqtt::CaptionEvent| {
                println!(
                    "{}",
                    serde_json::to_string(event).expect("events serialise")
                );
            };
            caption_edge::daemon::run(&cfg, token, shutdown, &mut print)?;
        }
        Command::CheckConfig { config } => {
            let c = Config::load(&config)?;
            print!("{}", c.to_toml());
        }
        Command::Cameras => {
            for line in caption_edge::source::list_cameras()? {
                println!("{line}");
            }
        }
        Command::Caption {
            bundle,
            beam,
            json,
            features,
            attention,
            engine,
            images,
        } => {
            let engine = load_engine(&bundle, &engine.options())?;
            if let Some(png) = attention {
                let [image] = images.as_slice() else {
                    anyhow::bail!("--attention draws one image; {} were given", images.len());
                };
                let (words, picture) =
                    caption_edge::pipeline::attention_picture(&engine, image, beam as usize)
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
            let precision = engine.precision().precision;
            let run_id = caption_proto::mqtt::new_run_id();
            let mut failed = 0;
            for (sequence, path) in images.iter().enumerate() {
                match caption_edge::pipeline::caption_file(
                    &engine,
                    path,
                    beam as usize,
                    run_id,
                    sequence as u64,
                ) {
                    Ok((event, vector)) => {
                        if json {
                            // The daemon's event, plus the precision the encoder ran in
                            // and, with --features, the feature vector.
                            let line = FileCaptionLine {
                                event,
                                precision,
                                features: features.then_some(vector),
                            };
                            println!("{}", serde_json::to_string(&line)?);
                        } else {
                            println!("{}\t{}", path.display(), event.caption);
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!(
                    "{failed} of {} image(s) could not be captioned",
                    images.len()
                );
            }
        }
        Command::Bench {
            bundle,
            precision,
            threads,
            images,
            limit,
            rounds,
            beam,
        } => {
            let mut files = bench::image_files(&images)
                .with_context(|| format!("reading the image folder {}", images.display()))?;
            if let Some(n) = limit {
                files.truncate(n);
            }
            if files.is_empty() {
                anyhow::bail!("{} holds no .jpg, .jpeg or .png files", images.display());
            }
            let threads: Vec<usize> = if threads.is_empty() {
                vec![caption_runtime::all_cores()]
            } else {
                threads.iter().map(|&t| t as usize).collect()
            };
            let mut variants = Vec::new();
            for b in &bundle {
                for &precision in &precision {
                    for &threads in &threads {
                        variants.push((b.clone(), EngineOptions { precision, threads }));
                    }
                }
            }
            let results = bench::bench(&variants, &files, beam as usize, rounds)?;
            let label = |r: &bench::BundleBench| {
                format!("{} {} x{}", r.model_id, r.precision.precision, r.threads)
            };
            for r in &results {
                println!("{}: {}", label(r), r.precision.reason);
            }
            println!(
                "{:<36} {:>9} {:>22} {:>22} {:>22} {:>10}",
                "bundle precision xthreads",
                "MB",
                "encoder ms min/med/p90",
                "decoder ms min/med/p90",
                "total ms min/med/p90",
                "captions/s"
            );
            for r in &results {
                let f = |s: &bench::Summary| format!("{:.1}/{:.1}/{:.1}", s.min, s.median, s.p90);
                println!(
                    "{:<36} {:>9.2} {:>22} {:>22} {:>22} {:>10.2}",
                    label(r),
                    r.bytes as f64 / 1e6,
                    f(&r.encoder_ms),
                    f(&r.decoder_ms),
                    f(&r.total_ms),
                    r.captions_per_second
                );
            }
            if results.len() > 1 {
                let base = results[0].encoder_ms.median;
                for r in &results[1..] {
                    println!(
                        "encoder median {} / {}: {:.2}x",
                        label(r),
                        label(&results[0]),
                        r.encoder_ms.median / base
                    );
                }
            }
            println!("{}", serde_json::to_string(&results)?);
        }
        Command::EncoderGraph {
            bundle,
            precision,
            out,
        } => {
            if precision == Precision::Auto {
                anyhow::bail!("--precision: name the graph to write, int8 or f32");
            }
            let loaded = caption_proto::manifest::Manifest::load_bundle(&bundle)?;
            let bytes = caption_runtime::engine::encoder_graph(&loaded, precision)?;
            std::fs::write(&out, bytes).with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "wrote the {precision} encoder graph of {} to {}",
                bundle.display(),
                out.display()
            );
        }
        Command::Evaluate {
            bundle,
            data,
            split,
            beam,
            predictions,
            engine,
        } => {
            let engine = load_engine(&bundle, &engine.options())?;
            let data = Flickr8k::load(&data)?;
            let bar = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} {bar:40} {pos}/{len} images [{elapsed_precise}<{eta_precise}]",
                )
                .expect("valid template"),
            );
            bar.set_message("encoding");
            let (report, preds) =
                evaluate::evaluate(&engine, &data, split, beam as usize, |done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                })?;
            bar.finish_and_clear();
            if let Some(path) = predictions {
                evaluate::write_predictions(&path, &preds)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}

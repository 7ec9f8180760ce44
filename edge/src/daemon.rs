//! `captiond run`: frames from the configured source → captions → MQTT, until the source
//! ends or SIGINT/SIGTERM asks to stop (the caption in flight is finished, the queue is
//! flushed within `mqtt.shutdown_timeout_s`, `offline` is published).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use caption_proto::mqtt::{CaptionEvent, StageLatency, Stats};

use crate::config::Config;
use crate::frames::{self, FramePrep, Prepped, Stage};
use crate::publish::{Message, PublishError, Publisher};
use crate::source::SourceError;
use caption_runtime::{Engine, EngineError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("model bundle {bundle}: {source}")]
    Engine {
        bundle: std::path::PathBuf,
        source: Box<EngineError>,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error("cannot start the frame thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the frame thread stopped before opening the source")]
    FrameThread,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[derive(Default)]
struct Counts {
    captions: u64,
    skipped: u64,
    similar: u64,
    unchanged: u64,
    interval_captions: u64,
    interval_inference_ms: f64,
}

/// Run the daemon until the source ends or `shutdown` is set.
pub fn run(config: &Config, shutdown: Arc<AtomicBool>) -> Result<(), DaemonError> {
    let bundle = &config.model.bundle;
    let engine = Engine::load_with(bundle, &config.model.engine_options()).map_err(|source| {
        DaemonError::Engine {
            bundle: bundle.clone(),
            source: Box::new(source),
        }
    })?;
    let model_id = engine.manifest().model_id.clone();
    tracing::info!(
        "model {model_id} from {} ({} encoder, {} on {} thread(s): {})",
        bundle.display(),
        engine.manifest().encoder.name,
        engine.precision().precision,
        engine.threads(),
        engine.precision().reason
    );
    let (host, port) = match &config.mqtt.host {
        Some(host) => (
            host.clone(),
            config.mqtt.port.unwrap_or(if config.mqtt.tls.is_some() {
                8883
            } else {
                1883
            }),
        ),
        None => {
            let listen: std::net::SocketAddr = config
                .embedded_broker
                .listen
                .parse()
                .expect("validated by Config::validate");
            crate::broker::start(listen)?;
            let host = if listen.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                listen.ip().to_string()
            };
            (host, listen.port())
        }
    };
    let camera = config.source.name.clone();
    let publisher = Publisher::start(config, &host, port, vec![camera.clone()])?;
    // Frames are read and prepared on their own thread, one ahead of the engine.
    let prep = FramePrep::new(engine.preprocessing().clone(), config.source.skip_similar);
    let frames = frames::spawn(config.source.clone(), prep, shutdown.clone())
        .map_err(DaemonError::Thread)?;
    match frames.recv() {
        Ok(Stage::Opened(describe)) => tracing::info!("captioning frames from {describe}"),
        Ok(Stage::Failed(e)) => return Err(e.into()),
        _ => return Err(DaemonError::FrameThread),
    }

    let started = Instant::now();
    let stats_every = Duration::from_secs(config.mqtt.stats_interval_s);
    let mut last_stats = Instant::now();
    let mut last_text: Option<String> = None;
    let mut sequence = 0u64;
    let mut counts = Counts::default();
    let beam = config.model.beam;
    let run_id = started_unix(started);
    let send_stats = |counts: &mut Counts, since: Duration| {
        let c = &publisher.counters;
        let stats = Stats {
            fps: counts.interval_captions as f64 / since.as_secs_f64().max(1e-9),
            inference_ms: counts.interval_inference_ms / counts.interval_captions.max(1) as f64,
            queue_depth: c.queued.load(Ordering::Relaxed),
            dropped_frames: c.dropped.load(Ordering::Relaxed),
            skipped_frames: counts.skipped,
            similar_frames: counts.similar,
            unchanged_captions: counts.unchanged,
            captions: counts.captions,
            connected: c.connected.load(Ordering::Relaxed),
            uptime_s: started.elapsed().as_secs_f64(),
        };
        counts.interval_captions = 0;
        counts.interval_inference_ms = 0.0;
        let json = serde_json::to_string(&stats).expect("stats serialise");
        tracing::debug!("stats {json}");
        publisher.send(Message::Stats(json));
    };

    while !shutdown.load(Ordering::Relaxed) {
        if !stats_every.is_zero() && last_stats.elapsed() >= stats_every {
            send_stats(&mut counts, last_stats.elapsed());
            last_stats = Instant::now();
        }
        let frame = match frames.recv_timeout(Duration::from_millis(100)) {
            Ok(Stage::Frame(Prepped::Ready(frame))) => frame,
            Ok(Stage::Frame(Prepped::Bad { origin, reason })) => {
                counts.skipped += 1;
                tracing::warn!(frame = %origin, "skipping a bad frame: {reason}");
                continue;
            }
            Ok(Stage::Frame(Prepped::Similar)) => {
                counts.similar += 1;
                continue;
            }
            Ok(Stage::End) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                tracing::info!("the source has no more frames");
                break;
            }
            Ok(Stage::Opened(_) | Stage::Failed(_)) | Err(mpsc::RecvTimeoutError::Timeout) => {
                continue
            }
        };
        let this_sequence = sequence;
        sequence += 1;
        let (caption, times) = match engine.caption_pixels(&frame.pixels, beam, frame.decode) {
            Ok(r) => r,
            Err(e) => {
                counts.skipped += 1;
                tracing::error!(frame = %frame.origin, "captioning failed: {e}");
                continue;
            }
        };
        counts.captions += 1;
        counts.interval_captions += 1;
        counts.interval_inference_ms += ms(times.encoder + times.decoder);
        if config.source.publish_on_change && last_text.as_deref() == Some(caption.text.as_str()) {
            counts.unchanged += 1;
            continue;
        }
        last_text = Some(caption.text.clone());
        let timestamp = humantime::format_rfc3339_millis(frame.captured_at).to_string();
        let event = CaptionEvent {
            id: format!("{camera}-{run_id}-{this_sequence}"),
            camera: camera.clone(),
            timestamp,
            caption: caption.text.clone(),
            score: caption.hypothesis.mean_log_prob() as f64,
            model_id: model_id.clone(),
            sequence: this_sequence,
            latency_ms: StageLatency {
                capture: ms(frame.capture),
                decode: ms(frame.decode),
                encoder: ms(times.encoder),
                decoder: ms(times.decoder),
                total: ms(frame.capture + frame.decode + times.encoder + times.decoder),
            },
        };
        // Captions also go to stdout, one JSON object per line, for logs and scripts.
        println!(
            "{}",
            serde_json::to_string(&event).expect("events serialise")
        );
        tracing::info!(frame = %frame.origin, "{}", caption.text);
        publisher.send(Message::State {
            camera: camera.clone(),
            text: caption.text,
        });
        publisher.send(Message::Caption(Box::new(event)));
    }
    // The frame thread ends at its next send (the receiver is gone) or shutdown check.
    drop(frames);
    if !stats_every.is_zero() {
        send_stats(&mut counts, last_stats.elapsed());
    }
    tracing::info!(
        "stopping: {} captions, {} bad frames skipped; flushing the queue",
        counts.captions,
        counts.skipped
    );
    publisher.finish();
    Ok(())
}

/// The daemon's start time in Unix seconds: with the sequence number it makes event ids
/// unique across restarts.
fn started_unix(started: Instant) -> u64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(started.elapsed()).as_secs()
}

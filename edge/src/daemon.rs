//! `captiond run`: frames from the configured source → captions → MQTT (and the status
//! page / HTTP API when `[http] listen` is set), until the source ends or SIGINT/SIGTERM
//! asks to stop (the caption in flight is finished, the queue is flushed within
//! `mqtt.shutdown_timeout_s`, `offline` is published). Commands on
//! `<prefix>/<camera>/command` pause, resume, caption now or change the interval.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use caption_proto::mqtt::{CaptionEvent, Stats};

use crate::config::Config;
use crate::frames::{self, FramePrep, Prepped, Stage};
use crate::hub::{Hub, Summary};
use crate::pipeline::{FramePipeline, Inference, Outcome};
use crate::publish::{Incoming, Message, PublishError, Publisher};
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
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error("cannot start the frame thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the frame thread stopped before opening the source")]
    FrameThread,
}

/// The JPEG of a snapshot.
pub fn encode_jpeg(rgb: &image::RgbImage, quality: u8) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode_image(rgb)?;
    Ok(out)
}

/// Run the daemon until the source ends or `shutdown` is set; `http_token` is
/// `[http]`'s token in effect (`Config::http_token`). Every published caption event is
/// also handed to `on_caption` (the binary prints it).
pub fn run(
    config: &Config,
    http_token: Option<String>,
    shutdown: Arc<AtomicBool>,
    on_caption: &mut dyn FnMut(&CaptionEvent),
) -> Result<(), DaemonError> {
    let bundle = &config.model.bundle;
    let engine = Engine::load_with(bundle, &config.model.engine_options()).map_err(|source| {
        DaemonError::Engine {
            bundle: bundle.clone(),
            source: Box::new(source),
        }
    })?;
    let engine = Arc::new(engine);
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
    let (command_tx, commands) = mpsc::channel::<Incoming>();
    let publisher = Publisher::start(config, &host, port, vec![camera.clone()], command_tx)?;
    let hub = Arc::new(Hub::new(
        Summary {
            device_id: config.device_id.clone(),
            model_id: model_id.clone(),
            encoder: engine.manifest().encoder.name.clone(),
            precision: engine.precision().precision.to_string(),
            precision_reason: engine.precision().reason.clone(),
            threads: engine.threads(),
            beam: config.model.beam,
            source: format!("{:?}", config.source.kind).to_lowercase(),
            interval_ms: config.source.interval_ms,
            topic_prefix: config.topic_prefix(),
            broker: format!("{host}:{port}"),
            version: crate::version().into(),
        },
        publisher.counters.clone(),
        std::slice::from_ref(&camera),
        config.http.history,
    ));
    let mut inference = Inference {
        engine: engine.clone(),
        lock: Arc::new(Mutex::new(())),
        beam: config.model.beam,
    };
    if let Some(listen) = &config.http.listen {
        crate::http::start(
            crate::http::Settings {
                listen: listen.parse().expect("validated by Config::validate"),
                token: http_token,
                max_body_bytes: config.http.max_body_bytes,
                queue: config.http.queue,
                history: config.http.history,
            },
            hub.clone(),
            inference.clone(),
        )?;
    }
    // Snapshots are made when someone can see them: over MQTT or on the page.
    let snapshots = config.snapshot.mqtt || config.http.listen.is_some();
    // Frames are read and prepared on their own thread, one ahead of the engine.
    let mut prep = FramePrep::new(engine.preprocessing().clone(), config.source.skip_similar);
    if snapshots {
        prep = prep.with_snapshots(config.snapshot.max_side);
    }
    let interval_ms = Arc::new(AtomicU64::new(config.source.interval_ms));
    let frames = frames::spawn(
        config.source.clone(),
        prep,
        interval_ms.clone(),
        shutdown.clone(),
    )
    .map_err(DaemonError::Thread)?;
    match frames.recv() {
        Ok(Stage::Opened(describe)) => tracing::info!("captioning frames from {describe}"),
        Ok(Stage::Failed(e)) => return Err(e.into()),
        _ => return Err(DaemonError::FrameThread),
    }
    publisher.send(Message::Paused {
        camera: camera.clone(),
        paused: false,
    });

    let started = Instant::now();
    let stats_every = Duration::from_secs(config.mqtt.stats_interval_s);
    let mut last_stats = Instant::now();
    // Captions and inference milliseconds since the last stats message.
    let mut window = (0u64, 0.0f64);
    let mut pipeline = FramePipeline::new(
        camera.clone(),
        model_id.clone(),
        caption_proto::mqtt::new_run_id(),
        config.source.publish_on_change,
    );
    let counts = &hub.frames;
    let send_stats = |window: &mut (u64, f64), since: Duration| {
        let c = &publisher.counters;
        let stats = Stats {
            fps: window.0 as f64 / since.as_secs_f64().max(1e-9),
            inference_ms: window.1 / window.0.max(1) as f64,
            queue_depth: c.queued.load(Ordering::Relaxed),
            dropped_frames: c.dropped.load(Ordering::Relaxed),
            skipped_frames: counts.skipped.load(Ordering::Relaxed),
            similar_frames: counts.similar.load(Ordering::Relaxed),
            unchanged_captions: counts.unchanged.load(Ordering::Relaxed),
            captions: counts.captions.load(Ordering::Relaxed),
            connected: c.connected.load(Ordering::Relaxed),
            uptime_s: started.elapsed().as_secs_f64(),
        };
        *window = (0, 0.0);
        let json = serde_json::to_string(&stats).expect("stats serialise");
        tracing::debug!("stats {json}");
        publisher.send(Message::Stats(json));
    };

    // A caption made: counted, and in the latency histograms.
    let counted = |event: &CaptionEvent, window: &mut (u64, f64)| {
        counts.captions.fetch_add(1, Ordering::Relaxed);
        window.0 += 1;
        window.1 += event.latency_ms.encoder + event.latency_ms.decoder;
        hub.observe(event);
    };
    while !shutdown.load(Ordering::Relaxed) {
        if !stats_every.is_zero() && last_stats.elapsed() >= stats_every {
            send_stats(&mut window, last_stats.elapsed());
            last_stats = Instant::now();
        }
        while let Ok(Incoming {
            camera: cam,
            payload,
        }) = commands.try_recv()
        {
            let (result, paused_changed) = pipeline.on_command(&payload, &interval_ms);
            if result.ok {
                tracing::info!("command {} on {cam}: {}", result.command, result.message);
            } else {
                tracing::warn!("command on {cam} refused: {}", result.message);
            }
            if paused_changed {
                let paused = pipeline.control.paused;
                hub.set_paused(&cam, paused);
                publisher.send(Message::Paused {
                    camera: cam.clone(),
                    paused,
                });
            }
            publisher.send(Message::CommandResult {
                camera: cam,
                json: serde_json::to_string(&result).expect("results serialise"),
            });
        }
        let frame = match frames.recv_timeout(Duration::from_millis(100)) {
            Ok(Stage::Frame(Prepped::Ready(frame))) => frame,
            Ok(Stage::Frame(Prepped::Bad { origin, reason })) => {
                counts.skipped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(frame = %origin, "skipping a bad frame: {reason}");
                continue;
            }
            Ok(Stage::Frame(Prepped::Similar)) => {
                counts.similar.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Ok(Stage::End) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if !shutdown.load(Ordering::Relaxed) {
                    tracing::info!("the source has no more frames");
                }
                break;
            }
            Ok(Stage::Opened(_) | Stage::Failed(_)) | Err(mpsc::RecvTimeoutError::Timeout) => {
                continue
            }
        };
        let event = match pipeline.on_frame(&frame, &mut inference) {
            Outcome::Paused => {
                counts.paused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Outcome::Failed(e) => {
                counts.skipped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(frame = %frame.origin, "captioning failed: {e}");
                continue;
            }
            Outcome::Unchanged(event) => {
                counted(&event, &mut window);
                counts.unchanged.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Outcome::Publish(event) => {
                counted(&event, &mut window);
                event
            }
        };
        let snapshot = match &frame.snapshot {
            Some(rgb) => match encode_jpeg(rgb, config.snapshot.quality) {
                Ok(jpeg) => Some(Arc::new(jpeg)),
                Err(e) => {
                    tracing::warn!(frame = %frame.origin, "cannot encode the snapshot: {e}");
                    None
                }
            },
            None => None,
        };
        hub.published(&event, snapshot.clone());
        tracing::info!(frame = %frame.origin, "{}", event.caption);
        publisher.send(Message::State {
            camera: camera.clone(),
            text: event.caption.clone(),
        });
        if let (Some(jpeg), true) = (snapshot, config.snapshot.mqtt) {
            publisher.send(Message::Snapshot {
                camera: camera.clone(),
                jpeg,
            });
        }
        on_caption(&event);
        publisher.send(Message::Caption(Box::new(event)));
    }
    // The frame thread ends at its next send (the receiver is gone) or shutdown check.
    drop(frames);
    if !stats_every.is_zero() {
        send_stats(&mut window, last_stats.elapsed());
    }
    tracing::info!(
        "stopping: {} captions, {} bad frames skipped; flushing the queue",
        counts.captions.load(Ordering::Relaxed),
        counts.skipped.load(Ordering::Relaxed)
    );
    publisher.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_encode_as_decodable_jpeg() {
        let rgb = image::RgbImage::from_pixel(32, 24, image::Rgb([10, 200, 30]));
        let jpeg = encode_jpeg(&rgb, 80).unwrap();
        assert_eq!(&jpeg[..2], [0xFF, 0xD8]);
        let back = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((back.width(), back.height()), (32, 24));
    }
}

//! `captiond run`: frames from the configured source → captions → MQTT, until the source
//! ends or SIGINT/SIGTERM asks to stop (the caption in flight is finished, the queue is
//! flushed within `mqtt.shutdown_timeout_s`, `offline` is published).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use caption_proto::mqtt::{CaptionEvent, StageLatency, Stats};
use caption_proto::preprocess::decode_rgb;

use crate::config::Config;
use crate::publish::{Message, PublishError, Publisher};
use crate::source::{self, FrameImage, Next, SourceError};
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
}

/// Side of the grey thumbnail used to compare frames.
const THUMB: u32 = 32;

fn thumbnail(rgb: &image::RgbImage) -> Vec<u8> {
    let grey = image::imageops::grayscale(rgb);
    image::imageops::resize(&grey, THUMB, THUMB, image::imageops::FilterType::Triangle).into_raw()
}

/// Mean absolute difference of two thumbnails, 0..1.
pub fn difference(a: &[u8], b: &[u8]) -> f64 {
    let sum: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as i32 - y as i32).unsigned_abs() as u64)
        .sum();
    sum as f64 / (a.len().max(1) as f64 * 255.0)
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
    let mut source = source::open(&config.source)?;
    tracing::info!("captioning frames from {}", source.describe());

    let started = Instant::now();
    let interval = Duration::from_millis(config.source.interval_ms);
    let stats_every = Duration::from_secs(config.mqtt.stats_interval_s);
    let mut last_stats = Instant::now();
    let mut last_capture: Option<Instant> = None;
    let mut last_thumb: Option<Vec<u8>> = None;
    let mut last_text: Option<String> = None;
    let mut sequence = 0u64;
    let mut counts = Counts::default();
    let pre = engine.preprocessing().clone();
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
        if let Some(t) = last_capture {
            let wait = interval.saturating_sub(t.elapsed());
            if !wait.is_zero() {
                std::thread::sleep(wait.min(Duration::from_millis(100)));
                continue;
            }
        }
        let frame = match source.next_frame() {
            Next::Frame(f) => f,
            Next::Idle => continue,
            Next::End => {
                tracing::info!("{} has no more frames", source.describe());
                break;
            }
        };
        last_capture = Some(Instant::now());
        let this_sequence = sequence;
        sequence += 1;
        let t_decode = Instant::now();
        let rgb = match frame.image {
            FrameImage::Rgb(rgb) => rgb,
            FrameImage::Encoded(bytes) => {
                match decode_rgb(&bytes, std::path::Path::new(&frame.origin)) {
                    Ok(rgb) => rgb,
                    Err(e) => {
                        counts.skipped += 1;
                        tracing::warn!(frame = %frame.origin, "skipping a bad frame: {e}");
                        continue;
                    }
                }
            }
        };
        if config.source.skip_similar > 0.0 {
            let thumb = thumbnail(&rgb);
            if let Some(last) = &last_thumb {
                if difference(last, &thumb) < config.source.skip_similar {
                    counts.similar += 1;
                    continue;
                }
            }
            last_thumb = Some(thumb);
        }
        let pixels = pre.normalize(&pre.resize(rgb));
        let decode = t_decode.elapsed();
        let (caption, times) = match engine.caption_pixels(&pixels, beam, decode) {
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
                decode: ms(decode),
                encoder: ms(times.encoder),
                decoder: ms(times.decoder),
                total: ms(frame.capture + decode + times.encoder + times.decoder),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnail_difference_is_zero_for_equal_frames_and_grows_with_change() {
        let a = image::RgbImage::from_pixel(64, 48, image::Rgb([100, 100, 100]));
        let mut b = a.clone();
        for x in 0..32 {
            for y in 0..48 {
                b.put_pixel(x, y, image::Rgb([200, 200, 200]));
            }
        }
        let (ta, tb) = (thumbnail(&a), thumbnail(&b));
        assert_eq!(difference(&ta, &ta), 0.0);
        let d = difference(&ta, &tb);
        assert!(d > 0.15 && d < 0.25, "{d}");
    }
}

//! What the daemon knows about itself, shared by the caption loop (which writes it) and the
//! HTTP server (which reads it): the latest snapshot and captions per camera, counters and
//! per-stage latency histograms, rendered as the status JSON and as Prometheus text.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use caption_proto::mqtt::CaptionEvent;
use serde::Serialize;

use crate::publish::Counters;

/// Upper bounds (ms) of the latency histogram buckets; the last bucket is `+Inf`.
pub const LATENCY_BUCKETS_MS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

/// A Prometheus histogram of milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    /// Count per bucket of [`LATENCY_BUCKETS_MS`] (not cumulative), then `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, ms: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; LATENCY_BUCKETS_MS.len() + 1];
        }
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.counts[i] += 1;
        self.sum += ms;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
            cumulative += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// Counters of the frame pipeline (the MQTT ones live in [`Counters`]).
#[derive(Debug, Default)]
pub struct FrameCounters {
    pub captions: AtomicU64,
    /// Frames that could not be read or decoded.
    pub skipped: AtomicU64,
    /// Frames skipped by `skip_similar`.
    pub similar: AtomicU64,
    /// Captions not published because the text did not change.
    pub unchanged: AtomicU64,
    /// Frames not captioned because captioning was paused.
    pub paused: AtomicU64,
    /// `POST /api/caption` requests captioned.
    pub http_captions: AtomicU64,
    /// `POST /api/caption` requests refused because the queue was full.
    pub http_rejected: AtomicU64,
}

#[derive(Debug, Default)]
struct Camera {
    snapshot: Option<Arc<Vec<u8>>>,
    /// Newest last.
    history: VecDeque<CaptionEvent>,
    paused: bool,
}

/// The configuration summary `/api/status` shows (no secrets).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub device_id: String,
    pub model_id: String,
    pub encoder: String,
    pub precision: String,
    pub precision_reason: String,
    pub threads: usize,
    pub beam: usize,
    pub source: String,
    pub interval_ms: u64,
    pub topic_prefix: String,
    pub broker: String,
    pub version: String,
}

pub struct Hub {
    pub summary: Summary,
    pub frames: FrameCounters,
    pub mqtt: Arc<Counters>,
    started: Instant,
    history: usize,
    cameras: Mutex<BTreeMap<String, Camera>>,
    /// Per stage: decode, encoder, decoder, total.
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
}

/// `/api/status`.
#[derive(Debug, Serialize)]
pub struct Status<'a> {
    pub summary: &'a Summary,
    pub uptime_s: f64,
    pub captions: u64,
    pub skipped_frames: u64,
    pub similar_frames: u64,
    pub unchanged_captions: u64,
    pub paused_frames: u64,
    pub http_captions: u64,
    pub queue_depth: u64,
    pub dropped_events: u64,
    pub connected: bool,
    pub cameras: Vec<CameraStatus>,
}

#[derive(Debug, Serialize)]
pub struct CameraStatus {
    pub name: String,
    pub paused: bool,
    pub has_snapshot: bool,
    pub latest: Option<CaptionEvent>,
}

impl Hub {
    pub fn new(summary: Summary, mqtt: Arc<Counters>, cameras: &[String], history: usize) -> Hub {
        Hub {
            summary,
            frames: FrameCounters::default(),
            mqtt,
            started: Instant::now(),
            history: history.max(1),
            cameras: Mutex::new(
                cameras
                    .iter()
                    .map(|c| (c.clone(), Camera::default()))
                    .collect(),
            ),
            latency: Mutex::new(BTreeMap::new()),
        }
    }

    /// A caption the daemon made (published or not): latency histograms.
    pub fn observe(&self, event: &CaptionEvent) {
        let l = &event.latency_ms;
        let mut h = self.latency.lock().expect("hub latency");
        for (stage, ms) in [
            ("decode", l.decode),
            ("encoder", l.encoder),
            ("decoder", l.decoder),
            ("total", l.total),
        ] {
            h.entry(stage).or_default().observe(ms);
        }
    }

    /// A published caption and its snapshot.
    pub fn published(&self, event: &CaptionEvent, snapshot: Option<Arc<Vec<u8>>>) {
        let mut cams = self.cameras.lock().expect("hub cameras");
        let cam = cams.entry(event.camera.clone()).or_default();
        if snapshot.is_some() {
            cam.snapshot = snapshot;
        }
        cam.history.push_back(event.clone());
        while cam.history.len() > self.history {
            cam.history.pop_front();
        }
    }

    pub fn set_paused(&self, camera: &str, paused: bool) {
        let mut cams = self.cameras.lock().expect("hub cameras");
        cams.entry(camera.to_owned()).or_default().paused = paused;
    }

    pub fn has_camera(&self, camera: &str) -> bool {
        self.cameras
            .lock()
            .expect("hub cameras")
            .contains_key(camera)
    }

    pub fn snapshot(&self, camera: &str) -> Option<Arc<Vec<u8>>> {
        let cams = self.cameras.lock().expect("hub cameras");
        cams.get(camera).and_then(|c| c.snapshot.clone())
    }

    /// The camera's newest captions, newest first, at most `limit`.
    pub fn captions(&self, camera: &str, limit: usize) -> Option<Vec<CaptionEvent>> {
        let cams = self.cameras.lock().expect("hub cameras");
        cams.get(camera)
            .map(|c| c.history.iter().rev().take(limit).cloned().collect())
    }

    pub fn status(&self) -> Status<'_> {
        let f = &self.frames;
        let cams = self.cameras.lock().expect("hub cameras");
        Status {
            summary: &self.summary,
            uptime_s: self.started.elapsed().as_secs_f64(),
            captions: f.captions.load(Ordering::Relaxed),
            skipped_frames: f.skipped.load(Ordering::Relaxed),
            similar_frames: f.similar.load(Ordering::Relaxed),
            unchanged_captions: f.unchanged.load(Ordering::Relaxed),
            paused_frames: f.paused.load(Ordering::Relaxed),
            http_captions: f.http_captions.load(Ordering::Relaxed),
            queue_depth: self.mqtt.queued.load(Ordering::Relaxed),
            dropped_events: self.mqtt.dropped.load(Ordering::Relaxed),
            connected: self.mqtt.connected.load(Ordering::Relaxed),
            cameras: cams
                .iter()
                .map(|(name, c)| CameraStatus {
                    name: name.clone(),
                    paused: c.paused,
                    has_snapshot: c.snapshot.is_some(),
                    latest: c.history.back().cloned(),
                })
                .collect(),
        }
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn metrics(&self) -> String {
        let f = &self.frames;
        let mut out = String::new();
        let counters = [
            (
                "captiond_captions_total",
                "Captions made from frames.",
                f.captions.load(Ordering::Relaxed),
            ),
            (
                "captiond_frames_skipped_total",
                "Frames that could not be read or decoded.",
                f.skipped.load(Ordering::Relaxed),
            ),
            (
                "captiond_frames_similar_total",
                "Frames skipped because they barely changed (skip_similar).",
                f.similar.load(Ordering::Relaxed),
            ),
            (
                "captiond_frames_paused_total",
                "Frames not captioned while paused.",
                f.paused.load(Ordering::Relaxed),
            ),
            (
                "captiond_captions_unchanged_total",
                "Captions not published because the text did not change (publish_on_change).",
                f.unchanged.load(Ordering::Relaxed),
            ),
            (
                "captiond_events_dropped_total",
                "Caption events dropped because the MQTT queue was full.",
                self.mqtt.dropped.load(Ordering::Relaxed),
            ),
            (
                "captiond_http_captions_total",
                "Images captioned through POST /api/caption.",
                f.http_captions.load(Ordering::Relaxed),
            ),
            (
                "captiond_http_rejected_total",
                "POST /api/caption requests refused with 503 (queue full).",
                f.http_rejected.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let gauges = [
            (
                "captiond_queue_depth",
                "Caption events not yet acknowledged by the broker.",
                self.mqtt.queued.load(Ordering::Relaxed) as f64,
            ),
            (
                "captiond_mqtt_connected",
                "1 while connected to the MQTT broker.",
                u8::from(self.mqtt.connected.load(Ordering::Relaxed)) as f64,
            ),
            (
                "captiond_uptime_seconds",
                "Seconds since start.",
                self.started.elapsed().as_secs_f64(),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let name = "captiond_latency_ms";
        let _ = writeln!(
            out,
            "# HELP {name} Milliseconds per caption and stage (decode, encoder, decoder, total).\n# TYPE {name} histogram"
        );
        let h = self.latency.lock().expect("hub latency");
        for (stage, hist) in h.iter() {
            hist.render(&mut out, name, &format!("stage=\"{stage}\""));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caption_proto::mqtt::StageLatency;

    fn event(camera: &str, n: u64) -> CaptionEvent {
        CaptionEvent {
            id: format!("{camera}-{n}"),
            camera: camera.into(),
            timestamp: "2026-12-01T00:00:00Z".into(),
            caption: format!("caption {n}"),
            score: -1.0,
            model_id: "m".into(),
            sequence: n,
            latency_ms: StageLatency {
                capture: 0.0,
                decode: 3.0,
                encoder: 30.0,
                decoder: 2.0,
                total: 35.0,
            },
            image: None,
        }
    }

    fn hub(history: usize) -> Hub {
        let summary = Summary {
            device_id: "d".into(),
            model_id: "m".into(),
            encoder: "e".into(),
            precision: "f32".into(),
            precision_reason: "r".into(),
            threads: 1,
            beam: 1,
            source: "s".into(),
            interval_ms: 0,
            topic_prefix: "captiond/d".into(),
            broker: "b".into(),
            version: "v".into(),
        };
        Hub::new(
            summary,
            Arc::new(Counters::default()),
            &["main".into()],
            history,
        )
    }

    #[test]
    fn history_keeps_the_newest_and_lists_newest_first() {
        let h = hub(3);
        for n in 0..5 {
            h.published(&event("main", n), None);
        }
        let seq: Vec<u64> = h
            .captions("main", 10)
            .unwrap()
            .iter()
            .map(|e| e.sequence)
            .collect();
        assert_eq!(seq, [4, 3, 2]);
        assert_eq!(h.captions("main", 1).unwrap().len(), 1);
        assert!(h.captions("garden", 1).is_none());
        assert!(h.snapshot("main").is_none());
        h.published(&event("main", 5), Some(Arc::new(vec![1, 2])));
        h.published(&event("main", 6), None);
        assert_eq!(h.snapshot("main").unwrap().as_slice(), [1, 2]);
    }

    #[test]
    fn metrics_are_prometheus_text_with_cumulative_buckets() {
        let h = hub(3);
        h.frames.captions.fetch_add(2, Ordering::Relaxed);
        h.observe(&event("main", 0));
        let mut slow = event("main", 1);
        slow.latency_ms.encoder = 9000.0;
        h.observe(&slow);
        let text = h.metrics();
        assert!(text.contains("captiond_captions_total 2\n"), "{text}");
        assert!(text.contains("captiond_latency_ms_bucket{stage=\"encoder\",le=\"50\"} 1\n"));
        assert!(text.contains("captiond_latency_ms_bucket{stage=\"encoder\",le=\"5000\"} 1\n"));
        assert!(text.contains("captiond_latency_ms_bucket{stage=\"encoder\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("captiond_latency_ms_count{stage=\"encoder\"} 2\n"));
        assert!(text.contains("captiond_latency_ms_sum{stage=\"encoder\"} 9030\n"));
        // Every sample line is `name{labels} value` or `name value` after its TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
    }
}

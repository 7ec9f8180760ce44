//! The daemon's first stage: frames from the source, paced, decoded, filtered
//! (`skip_similar`) and preprocessed into the encoder's input, on a thread of its own so
//! that frame N+1 is read and prepared while the engine captions frame N.
//!
//! [`FramePrep`] is the stage's logic with no thread and no I/O (unit-tested below);
//! [`spawn`] runs it over a [`FrameSource`] opened on that thread (camera handles are not
//! `Send`) and hands results over a rendezvous channel: at most one prepared frame waits
//! for the engine, so a slow model drops nothing and reads the source no faster than it
//! captions.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use caption_proto::preprocess::{decode_rgb, Preprocessing};

use crate::config::SourceConfig;
use crate::source::{self, FrameImage, FrameSource, Next, SourceError};

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

/// A frame ready for the encoder.
pub struct Prepared {
    /// Where it came from (for logs).
    pub origin: String,
    pub captured_at: SystemTime,
    /// Time spent obtaining the frame from the source.
    pub capture: Duration,
    /// Time spent decoding, comparing and preprocessing it.
    pub decode: Duration,
    /// The normalised encoder input.
    pub pixels: Vec<f32>,
    /// The frame downscaled for snapshots (when asked for).
    pub snapshot: Option<image::RgbImage>,
}

/// What became of one frame.
pub enum Prepped {
    Ready(Prepared),
    /// It could not be decoded; the reason names the frame.
    Bad {
        origin: String,
        reason: String,
    },
    /// It barely differs from the last frame passed on (`skip_similar`).
    Similar,
}

/// Decode → skip_similar → resize and normalise, with the last passed frame's thumbnail
/// as its only state.
pub struct FramePrep {
    pre: Preprocessing,
    skip_similar: f64,
    last_thumb: Option<Vec<u8>>,
    snapshot_side: Option<u32>,
}

/// `rgb` with its longest side at most `side` (never enlarged).
pub fn downscale(rgb: &image::RgbImage, side: u32) -> image::RgbImage {
    let (w, h) = rgb.dimensions();
    if w.max(h) <= side {
        return rgb.clone();
    }
    let scale = side as f64 / w.max(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    image::imageops::resize(rgb, nw, nh, image::imageops::FilterType::Triangle)
}

impl FramePrep {
    pub fn new(pre: Preprocessing, skip_similar: f64) -> FramePrep {
        FramePrep {
            pre,
            skip_similar,
            last_thumb: None,
            snapshot_side: None,
        }
    }

    /// Also keep each frame downscaled to at most `side` pixels, for snapshots.
    pub fn with_snapshots(mut self, side: u32) -> FramePrep {
        self.snapshot_side = Some(side);
        self
    }

    pub fn prepare(&mut self, frame: source::Frame) -> Prepped {
        let started = Instant::now();
        let rgb = match frame.image {
            FrameImage::Rgb(rgb) => rgb,
            FrameImage::Encoded(bytes) => {
                match decode_rgb(&bytes, std::path::Path::new(&frame.origin)) {
                    Ok(rgb) => rgb,
                    Err(e) => {
                        return Prepped::Bad {
                            origin: frame.origin,
                            reason: e.to_string(),
                        }
                    }
                }
            }
        };
        if self.skip_similar > 0.0 {
            let thumb = thumbnail(&rgb);
            if let Some(last) = &self.last_thumb {
                if difference(last, &thumb) < self.skip_similar {
                    return Prepped::Similar;
                }
            }
            self.last_thumb = Some(thumb);
        }
        let snapshot = self.snapshot_side.map(|side| downscale(&rgb, side));
        let pixels = self.pre.normalize(&self.pre.resize(rgb));
        Prepped::Ready(Prepared {
            origin: frame.origin,
            captured_at: frame.captured_at,
            capture: frame.capture,
            decode: started.elapsed(),
            pixels,
            snapshot,
        })
    }
}

/// What the stage's thread sends.
pub enum Stage {
    /// The source opened; its description, for the log.
    Opened(String),
    Frame(Prepped),
    /// The source has no more frames.
    End,
    /// The source could not be opened.
    Failed(SourceError),
}

/// Open the source on a new thread and prepare its frames there, at most one per
/// `interval_ms` (measured between captures; read before each frame, so a command can
/// change it), until the source ends, `shutdown` is set, or the receiver is dropped.
pub fn spawn(
    config: SourceConfig,
    prep: FramePrep,
    interval_ms: Arc<AtomicU64>,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<mpsc::Receiver<Stage>> {
    let (tx, rx) = mpsc::sync_channel(0);
    std::thread::Builder::new()
        .name("captiond-frames".into())
        .spawn(move || {
            let source = match source::open(&config) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Stage::Failed(e));
                    return;
                }
            };
            if tx.send(Stage::Opened(source.describe())).is_ok() {
                run(source, prep, &interval_ms, &shutdown, &tx);
            }
        })?;
    Ok(rx)
}

fn run(
    mut source: Box<dyn FrameSource>,
    mut prep: FramePrep,
    interval_ms: &AtomicU64,
    shutdown: &AtomicBool,
    tx: &mpsc::SyncSender<Stage>,
) {
    let mut last_capture: Option<Instant> = None;
    while !shutdown.load(Ordering::Relaxed) {
        if let Some(t) = last_capture {
            let interval = Duration::from_millis(interval_ms.load(Ordering::Relaxed));
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
                let _ = tx.send(Stage::End);
                return;
            }
        };
        last_capture = Some(Instant::now());
        if tx.send(Stage::Frame(prep.prepare(frame))).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caption_proto::preprocess::ResizeFilter;

    fn pre() -> Preprocessing {
        Preprocessing {
            size: 8,
            filter: ResizeFilter::Triangle,
            channels: caption_proto::preprocess::Channels::Rgb,
            mean: [127.5; 3],
            std: [127.5; 3],
        }
    }

    fn frame(image: FrameImage) -> source::Frame {
        source::Frame {
            origin: "test#1".into(),
            captured_at: SystemTime::now(),
            capture: Duration::from_millis(3),
            image,
        }
    }

    fn grey(v: u8) -> FrameImage {
        FrameImage::Rgb(image::RgbImage::from_pixel(16, 12, image::Rgb([v, v, v])))
    }

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

    #[test]
    fn a_ready_frame_is_resized_and_normalised_and_keeps_its_origin() {
        let mut prep = FramePrep::new(pre(), 0.0);
        let Prepped::Ready(p) = prep.prepare(frame(grey(255))) else {
            panic!("a good frame must be ready");
        };
        assert_eq!(p.origin, "test#1");
        assert_eq!(p.capture, Duration::from_millis(3));
        assert_eq!(p.pixels.len(), 3 * 8 * 8);
        // (255 - 127.5) / 127.5
        assert!(p.pixels.iter().all(|&v| (v - 1.0).abs() < 1e-6));
    }

    #[test]
    fn a_corrupt_frame_is_bad_with_its_origin_and_reason() {
        let mut prep = FramePrep::new(pre(), 0.0);
        match prep.prepare(frame(FrameImage::Encoded(b"\xff\xd8 not a jpeg".to_vec()))) {
            Prepped::Bad { origin, reason } => {
                assert_eq!(origin, "test#1");
                assert!(!reason.is_empty());
            }
            _ => panic!("garbage must be reported as a bad frame"),
        }
    }

    #[test]
    fn snapshots_keep_the_aspect_and_are_never_enlarged() {
        let rgb = image::RgbImage::new(640, 480);
        assert_eq!(downscale(&rgb, 320).dimensions(), (320, 240));
        assert_eq!(downscale(&rgb, 1000).dimensions(), (640, 480));
        let tall = image::RgbImage::new(100, 400);
        assert_eq!(downscale(&tall, 200).dimensions(), (50, 200));
        let mut prep = FramePrep::new(pre(), 0.0).with_snapshots(8);
        let Prepped::Ready(p) = prep.prepare(frame(grey(9))) else {
            panic!("ready");
        };
        assert_eq!(p.snapshot.unwrap().dimensions(), (8, 6));
    }

    #[test]
    fn similar_frames_are_skipped_against_the_last_passed_one() {
        let mut prep = FramePrep::new(pre(), 0.05);
        assert!(matches!(prep.prepare(frame(grey(100))), Prepped::Ready(_)));
        // 2/255 apart: below 0.05.
        assert!(matches!(prep.prepare(frame(grey(102))), Prepped::Similar));
        // 10/255 from the last *passed* frame (100), though 8 from the skipped one.
        assert!(matches!(prep.prepare(frame(grey(110))), Prepped::Similar));
        assert!(matches!(prep.prepare(frame(grey(130))), Prepped::Ready(_)));
        // Off: identical frames all pass.
        let mut off = FramePrep::new(pre(), 0.0);
        assert!(matches!(off.prepare(frame(grey(1))), Prepped::Ready(_)));
        assert!(matches!(off.prepare(frame(grey(1))), Prepped::Ready(_)));
    }
}

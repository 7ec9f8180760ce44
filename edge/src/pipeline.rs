//! The daemon's frame pipeline with no threads and no I/O: commands change its [`Control`]
//! (pause, caption now, interval), and [`FramePipeline::on_frame`] takes a prepared frame
//! through admission → caption ([`Captioner`]) → `publish_on_change` → the caption event.
//! The daemon's loop only moves frames, events and counters between it and the outside;
//! everything decided here is unit-tested with a scripted captioner.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use caption_proto::mqtt::{
    CaptionEvent, Command, CommandResult, Origin, StageLatency, FILE_CAMERA,
};
#[cfg(feature = "daemon")]
use caption_runtime::Engine;

use crate::frames::Prepared;

/// A caption of one frame, with the time its two stages took.
#[derive(Debug, Clone, PartialEq)]
pub struct Captioned {
    pub text: String,
    /// Mean log-probability per word.
    pub score: f64,
    pub encoder: Duration,
    pub decoder: Duration,
}

/// What captions a frame: the engine in the daemon, a script in tests.
pub trait Captioner {
    fn caption(&mut self, pixels: &[f32]) -> Result<Captioned, String>;
}

/// The engine and the lock every inference takes (frames and HTTP requests alike).
#[cfg(feature = "daemon")]
#[derive(Clone)]
pub struct Inference {
    pub engine: std::sync::Arc<Engine>,
    pub lock: std::sync::Arc<std::sync::Mutex<()>>,
    pub beam: usize,
}

#[cfg(feature = "daemon")]
impl Captioner for Inference {
    fn caption(&mut self, pixels: &[f32]) -> Result<Captioned, String> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let (caption, times) = self
            .engine
            .caption_pixels(pixels, self.beam, Duration::ZERO)
            .map_err(|e| e.to_string())?;
        Ok(Captioned {
            score: caption.hypothesis.mean_log_prob() as f64,
            text: caption.text,
            encoder: times.encoder,
            decoder: times.decoder,
        })
    }
}

/// `captiond caption`: one image file through the engine, as the event the daemon would
/// publish for it (camera [`FILE_CAMERA`], `image` naming the file), with the image's
/// feature vector (to compare builds, e.g. aarch64 against x86-64).
#[cfg(feature = "daemon")]
pub fn caption_file(
    engine: &Engine,
    path: &std::path::Path,
    beam: usize,
    run_id: u64,
    sequence: u64,
) -> Result<(CaptionEvent, Vec<f32>), caption_runtime::EngineError> {
    let captured_at = std::time::SystemTime::now();
    let (caption, times, features) = engine.caption_file_with_features(path, beam)?;
    let origin = Origin {
        camera: FILE_CAMERA.into(),
        run_id,
        sequence,
        captured_at,
        image: Some(path.display().to_string()),
    };
    let latency = StageLatency::from_stages(
        Duration::ZERO,
        times.preprocess,
        times.encoder,
        times.decoder,
    );
    let event = CaptionEvent::new(
        origin,
        caption.text,
        caption.hypothesis.mean_log_prob() as f64,
        engine.manifest().model_id.clone(),
        latency,
    );
    Ok((event, features))
}

#[cfg(feature = "daemon")]
#[derive(Debug, thiserror::Error)]
pub enum AttentionPictureError {
    #[error(transparent)]
    Engine(#[from] caption_runtime::EngineError),
    #[error(transparent)]
    Image(#[from] caption_proto::preprocess::PreprocessError),
    #[error(transparent)]
    Map(#[from] caption_proto::attention_map::AttentionMapError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// `captiond caption --attention`: the caption of one image file and the picture of where
/// an attention bundle looked for each word (the words, in panel order, are returned).
#[cfg(feature = "daemon")]
pub fn attention_picture(
    engine: &Engine,
    path: &std::path::Path,
    beam: usize,
) -> Result<(Vec<String>, image::RgbImage), AttentionPictureError> {
    use caption_proto::text::{END_TOKEN, START_TOKEN};
    let bytes = std::fs::read(path).map_err(|source| AttentionPictureError::Read {
        path: path.to_owned(),
        source,
    })?;
    let pre = engine.preprocessing();
    let rgb = pre.resize(caption_proto::preprocess::decode_rgb(&bytes, path)?);
    let features = engine.encode(&pre.normalize(&rgb))?;
    let caption = engine
        .decode(&features, beam)?
        .pop()
        .expect("one caption per image");
    let tokens = &caption.hypothesis.tokens;
    let maps = engine.attention_maps(&features, tokens)?;
    let (mut words, mut shown) = (Vec::new(), Vec::new());
    for (&token, map) in tokens.iter().zip(maps) {
        match engine.bundle.vocabulary.word(token) {
            Some(w) if w != START_TOKEN && w != END_TOKEN => {
                words.push(w.to_owned());
                shown.push(map);
            }
            _ => {}
        }
    }
    let regions = engine.manifest().encoder.regions.unwrap_or(0);
    let side = (regions as f64).sqrt().round() as u32;
    let picture = caption_proto::attention_map::attention_picture(&rgb, (side, side), &shown)?;
    Ok((words, picture))
}

/// Pause state of the camera, driven by commands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    pub paused: bool,
    /// Caption (and publish) the next frame even while paused.
    pub caption_now: bool,
}

impl Control {
    /// Apply a command; the message says what was done. `interval_ms` is the source's.
    pub fn apply(&mut self, command: Command, interval_ms: &AtomicU64) -> String {
        match command {
            Command::CaptionNow => {
                self.caption_now = true;
                "the next frame will be captioned".into()
            }
            Command::Pause => {
                self.paused = true;
                "paused".into()
            }
            Command::Resume => {
                self.paused = false;
                "resumed".into()
            }
            Command::Interval { interval_ms: n } => {
                interval_ms.store(n, Ordering::Relaxed);
                format!("interval_ms set to {n}")
            }
        }
    }

    /// Whether a ready frame is captioned; takes a pending `caption_now`.
    pub fn admit(&mut self) -> Admit {
        if self.caption_now {
            self.caption_now = false;
            Admit::Forced
        } else if self.paused {
            Admit::Paused
        } else {
            Admit::Normal
        }
    }
}

/// What [`Control::admit`] decided for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Normal,
    /// `caption_now`: captioned and published whatever `publish_on_change` says.
    Forced,
    Paused,
}

/// What became of a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Captioning is paused: not captioned.
    Paused,
    /// The captioner failed; the reason.
    Failed(String),
    /// Captioned, but the text did not change (`publish_on_change`): not published.
    Unchanged(CaptionEvent),
    /// Captioned, to be published.
    Publish(CaptionEvent),
}

/// One camera's pipeline state: its control, the sequence number, the last published text.
pub struct FramePipeline {
    pub camera: String,
    model_id: String,
    /// The daemon's start time (Unix seconds): with the sequence it makes ids unique
    /// across restarts.
    run_id: u64,
    publish_on_change: bool,
    pub control: Control,
    sequence: u64,
    last_text: Option<String>,
}

impl FramePipeline {
    pub fn new(camera: String, model_id: String, run_id: u64, publish_on_change: bool) -> Self {
        FramePipeline {
            camera,
            model_id,
            run_id,
            publish_on_change,
            control: Control::default(),
            sequence: 0,
            last_text: None,
        }
    }

    /// Apply a command payload: its result, and whether `paused` changed.
    pub fn on_command(&mut self, payload: &[u8], interval_ms: &AtomicU64) -> (CommandResult, bool) {
        match Command::parse(payload) {
            Ok(command) => {
                let was_paused = self.control.paused;
                let message = self.control.apply(command, interval_ms);
                (
                    CommandResult {
                        command: command.name().into(),
                        ok: true,
                        message,
                    },
                    self.control.paused != was_paused,
                )
            }
            Err(reason) => (
                CommandResult {
                    command: String::from_utf8_lossy(payload).chars().take(64).collect(),
                    ok: false,
                    message: reason,
                },
                false,
            ),
        }
    }

    pub fn on_frame(&mut self, frame: &Prepared, captioner: &mut dyn Captioner) -> Outcome {
        let admit = self.control.admit();
        if admit == Admit::Paused {
            return Outcome::Paused;
        }
        let sequence = self.sequence;
        self.sequence += 1;
        let c = match captioner.caption(&frame.pixels) {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(e),
        };
        let origin = Origin {
            camera: self.camera.clone(),
            run_id: self.run_id,
            sequence,
            captured_at: frame.captured_at,
            image: None,
        };
        let latency = StageLatency::from_stages(frame.capture, frame.decode, c.encoder, c.decoder);
        let event = CaptionEvent::new(
            origin,
            c.text.clone(),
            c.score,
            self.model_id.clone(),
            latency,
        );
        if admit == Admit::Normal
            && self.publish_on_change
            && self.last_text.as_deref() == Some(c.text.as_str())
        {
            return Outcome::Unchanged(event);
        }
        self.last_text = Some(c.text);
        Outcome::Publish(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn caption_now_while_paused_admits_exactly_one_frame() {
        let interval = AtomicU64::new(0);
        let mut c = Control::default();
        assert_eq!(c.admit(), Admit::Normal);
        assert_eq!(c.apply(Command::Pause, &interval), "paused");
        assert_eq!(c.admit(), Admit::Paused);
        c.apply(Command::CaptionNow, &interval);
        assert_eq!(c.admit(), Admit::Forced);
        assert_eq!(c.admit(), Admit::Paused);
        c.apply(Command::Resume, &interval);
        assert_eq!(c.admit(), Admit::Normal);
        c.apply(Command::Interval { interval_ms: 750 }, &interval);
        assert_eq!(interval.load(Ordering::Relaxed), 750);
    }

    /// Captions from a script, in order; `None` fails.
    struct Script(Vec<Option<&'static str>>);

    impl Captioner for Script {
        fn caption(&mut self, _pixels: &[f32]) -> Result<Captioned, String> {
            match self.0.remove(0) {
                Some(text) => Ok(Captioned {
                    text: text.into(),
                    score: -0.5,
                    encoder: Duration::from_millis(30),
                    decoder: Duration::from_millis(5),
                }),
                None => Err("the model failed".into()),
            }
        }
    }

    fn frame() -> Prepared {
        Prepared {
            origin: "test".into(),
            captured_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_547_200),
            capture: Duration::from_millis(2),
            decode: Duration::from_millis(3),
            pixels: vec![0.0; 12],
            snapshot: None,
        }
    }

    fn texts(outcomes: &[Outcome]) -> Vec<String> {
        outcomes
            .iter()
            .map(|o| match o {
                Outcome::Paused => "paused".into(),
                Outcome::Failed(e) => format!("failed: {e}"),
                Outcome::Unchanged(e) => format!("unchanged {} #{}", e.caption, e.sequence),
                Outcome::Publish(e) => format!("publish {} #{}", e.caption, e.sequence),
            })
            .collect()
    }

    #[test]
    fn events_carry_the_frame_and_the_caption() {
        let mut p = FramePipeline::new("front".into(), "m1".into(), 77, false);
        let Outcome::Publish(e) = p.on_frame(&frame(), &mut Script(vec![Some("a dog")])) else {
            panic!("published");
        };
        assert_eq!(e.id, "front-77-0");
        assert_eq!((e.camera.as_str(), e.model_id.as_str()), ("front", "m1"));
        assert_eq!(e.timestamp, "2025-12-01T00:00:00.000Z");
        assert_eq!(
            (e.caption.as_str(), e.score, e.sequence),
            ("a dog", -0.5, 0)
        );
        let l = &e.latency_ms;
        assert_eq!(
            (l.capture, l.decode, l.encoder, l.decoder),
            (2.0, 3.0, 30.0, 5.0)
        );
        assert!((l.total - 40.0).abs() < 1e-9);
    }

    #[test]
    fn publish_on_change_holds_back_repeats_but_not_a_forced_caption() {
        let mut p = FramePipeline::new("main".into(), "m".into(), 1, true);
        let mut script = Script(vec![
            Some("a"),
            Some("a"),
            Some("b"),
            None,
            Some("b"),
            Some("b"),
            Some("a"),
        ]);
        let interval = AtomicU64::new(0);
        let mut out = Vec::new();
        for i in 0..6 {
            if i == 5 {
                p.on_command(b"caption_now", &interval);
            }
            out.push(p.on_frame(&frame(), &mut script));
        }
        assert_eq!(
            texts(&out),
            [
                "publish a #0",
                "unchanged a #1",
                "publish b #2",
                "failed: the model failed",
                "unchanged b #4",
                "publish b #5",
            ]
        );
        // Off: every caption is published.
        let mut q = FramePipeline::new("main".into(), "m".into(), 1, false);
        let mut same = Script(vec![Some("a"), Some("a")]);
        let both = [
            q.on_frame(&frame(), &mut same),
            q.on_frame(&frame(), &mut same),
        ];
        assert_eq!(texts(&both), ["publish a #0", "publish a #1"]);
    }

    #[test]
    fn commands_pause_force_one_caption_and_report_bad_payloads() {
        let mut p = FramePipeline::new("main".into(), "m".into(), 1, false);
        let interval = AtomicU64::new(0);
        let mut script = Script(vec![Some("x"), Some("y"), Some("z")]);
        let (r, changed) = p.on_command(b"pause", &interval);
        assert!(r.ok && changed && r.command == "pause");
        assert!(!p.on_command(b"pause", &interval).1, "already paused");
        assert_eq!(p.on_frame(&frame(), &mut script), Outcome::Paused);
        p.on_command(b"caption_now", &interval);
        let forced = [
            p.on_frame(&frame(), &mut script),
            p.on_frame(&frame(), &mut script),
        ];
        assert_eq!(texts(&forced), ["publish x #0", "paused"]);
        let (bad, changed) = p.on_command(b"reboot now", &interval);
        assert!(!bad.ok && !changed);
        assert_eq!(bad.command, "reboot now");
        assert!(bad.message.contains("expected caption_now"));
        p.on_command(br#"{"interval_ms": 1500}"#, &interval);
        assert_eq!(interval.load(Ordering::Relaxed), 1500);
        let (r, changed) = p.on_command(b"resume", &interval);
        assert!(r.ok && changed);
        assert_eq!(
            texts(&[p.on_frame(&frame(), &mut script)]),
            ["publish y #1"]
        );
    }
}

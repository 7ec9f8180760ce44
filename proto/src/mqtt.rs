//! MQTT topics and payloads of `captiond` (Frigate-style conventions; see DESIGN.md), shared
//! by the daemon and by anything that subscribes in Rust (tests, tools).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Payloads of the retained `<prefix>/availability` topic (also the last will).
pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("{what} {value:?} cannot be used in an MQTT topic: {problem}")]
    Invalid {
        what: &'static str,
        value: String,
        problem: &'static str,
    },
}

/// One topic level (a camera name, a device id): non-empty, no `/`, no wildcards, no NUL.
pub fn check_level(what: &'static str, value: &str) -> Result<(), TopicError> {
    let problem = if value.is_empty() {
        Some("it is empty")
    } else if value.contains('/') {
        Some("it contains '/'")
    } else if value.contains(['+', '#']) {
        Some("it contains an MQTT wildcard ('+' or '#')")
    } else if value.contains('\0') {
        Some("it contains a NUL character")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(TopicError::Invalid {
            what,
            value: value.to_owned(),
            problem,
        }),
        None => Ok(()),
    }
}

/// The topic names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// `prefix` is used as given (levels separated by `/`), e.g. `captiond/kitchen-pi`.
    pub fn new(prefix: &str) -> Result<Topics, TopicError> {
        let prefix = prefix.trim_end_matches('/');
        for level in prefix.split('/') {
            check_level("topic prefix level", level)?;
        }
        Ok(Topics {
            prefix: prefix.to_owned(),
        })
    }

    /// The default prefix, `captiond/<device_id>`.
    pub fn for_device(device_id: &str) -> Result<Topics, TopicError> {
        check_level("device id", device_id)?;
        Topics::new(&format!("captiond/{device_id}"))
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Retained `online`/`offline`; `offline` is also the last will.
    pub fn availability(&self) -> String {
        format!("{}/availability", self.prefix)
    }

    /// One [`CaptionEvent`] per published caption, QoS 1, not retained.
    pub fn caption(&self, camera: &str) -> Result<String, TopicError> {
        check_level("camera name", camera)?;
        Ok(format!("{}/{camera}/caption", self.prefix))
    }

    /// The latest caption text, retained.
    pub fn state(&self, camera: &str) -> Result<String, TopicError> {
        check_level("camera name", camera)?;
        Ok(format!("{}/{camera}/state", self.prefix))
    }

    /// Periodic [`Stats`].
    pub fn stats(&self) -> String {
        format!("{}/stats", self.prefix)
    }

    /// The captioned frame as a JPEG, retained.
    pub fn snapshot(&self, camera: &str) -> Result<String, TopicError> {
        check_level("camera name", camera)?;
        Ok(format!("{}/{camera}/snapshot", self.prefix))
    }

    /// Where the daemon takes [`Command`]s for a camera.
    pub fn command(&self, camera: &str) -> Result<String, TopicError> {
        check_level("camera name", camera)?;
        Ok(format!("{}/{camera}/command", self.prefix))
    }

    /// One [`CommandResult`] per command received.
    pub fn command_result(&self, camera: &str) -> Result<String, TopicError> {
        check_level("camera name", camera)?;
        Ok(format!("{}/{camera}/command/result", self.prefix))
    }

    /// Retained `true` / `false`: whether captioning is paused.
    pub fn paused(&self, camera: &str) -> Result<String, TopicError> {
        check_level("camera name", camera)?;
        Ok(format!("{}/{camera}/paused", self.prefix))
    }
}

/// What `<prefix>/<camera>/command` accepts: `caption_now`, `pause`, `resume` (plain
/// text), or `{"interval_ms": N}` (JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Caption the next frame, even while paused.
    CaptionNow,
    Pause,
    Resume,
    /// Change `source.interval_ms` until the daemon restarts.
    Interval {
        interval_ms: u64,
    },
}

/// The longest interval a command may set: one day.
pub const MAX_COMMAND_INTERVAL_MS: u64 = 86_400_000;

impl Command {
    /// Parse a command payload; the error says what was expected.
    pub fn parse(payload: &[u8]) -> Result<Command, String> {
        let text = std::str::from_utf8(payload)
            .map_err(|_| "the payload is not UTF-8 text".to_owned())?
            .trim();
        match text {
            "caption_now" => return Ok(Command::CaptionNow),
            "pause" => return Ok(Command::Pause),
            "resume" => return Ok(Command::Resume),
            _ => {}
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Interval {
            interval_ms: u64,
        }
        let expected = "expected caption_now, pause, resume or {\"interval_ms\": N}";
        if !text.starts_with('{') {
            let shown: String = text.chars().take(40).collect();
            return Err(format!("unknown command {shown:?}: {expected}"));
        }
        let Interval { interval_ms } =
            serde_json::from_str(text).map_err(|e| format!("{e}: {expected}"))?;
        if interval_ms > MAX_COMMAND_INTERVAL_MS {
            return Err(format!(
                "interval_ms {interval_ms} is over {MAX_COMMAND_INTERVAL_MS} (one day)"
            ));
        }
        Ok(Command::Interval { interval_ms })
    }

    /// The command's name in results.
    pub fn name(&self) -> &'static str {
        match self {
            Command::CaptionNow => "caption_now",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Interval { .. } => "interval_ms",
        }
    }
}

/// The JSON payload of `<prefix>/<camera>/command/result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The command's name, or the payload (shortened) when it was not understood.
    pub command: String,
    pub ok: bool,
    /// What was done, or why nothing was.
    pub message: String,
}

/// Time spent per stage for one caption, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageLatency {
    pub capture: f64,
    /// Image decoding and resizing.
    pub decode: f64,
    pub encoder: f64,
    pub decoder: f64,
    pub total: f64,
}

impl StageLatency {
    /// From the stages' durations; `total` is their sum.
    pub fn from_stages(
        capture: Duration,
        decode: Duration,
        encoder: Duration,
        decoder: Duration,
    ) -> StageLatency {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        StageLatency {
            capture: ms(capture),
            decode: ms(decode),
            encoder: ms(encoder),
            decoder: ms(decoder),
            total: ms(capture + decode + encoder + decoder),
        }
    }
}

/// The camera name of events made by the `caption` commands (image files, one at a time).
pub const FILE_CAMERA: &str = "file";

/// An id for one run of a process (seconds since the Unix epoch at its start): with the
/// camera and sequence it makes event ids unique across restarts.
pub fn new_run_id() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where and when a captioned image came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// The camera name (a configured camera, `http`, or [`FILE_CAMERA`]).
    pub camera: String,
    /// [`new_run_id`] of the process.
    pub run_id: u64,
    /// The camera's frame number in this run, from 0.
    pub sequence: u64,
    pub captured_at: SystemTime,
    /// The image file, when the image was one.
    pub image: Option<String>,
}

/// The JSON payload of `<prefix>/<camera>/caption`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionEvent {
    /// Unique per event (e.g. `<camera>-<sequence>-<start time>`), for de-duplication of
    /// QoS 1 redeliveries.
    pub id: String,
    pub camera: String,
    /// When the frame was captured, RFC 3339.
    pub timestamp: String,
    pub caption: String,
    /// Mean log-probability per generated word (higher is more confident; <= 0).
    pub score: f64,
    pub model_id: String,
    /// Frame sequence number of the source, from 0.
    pub sequence: u64,
    pub latency_ms: StageLatency,
    /// The image file the caption is of (the `caption` commands); absent for camera
    /// frames, streams and HTTP uploads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl CaptionEvent {
    /// The event every caption path publishes or prints (the daemon, HTTP, the `caption`
    /// commands of both binaries): id `<camera>-<run_id>-<sequence>`, RFC 3339 time in ms.
    pub fn new(
        origin: Origin,
        caption: String,
        score: f64,
        model_id: String,
        latency_ms: StageLatency,
    ) -> CaptionEvent {
        CaptionEvent {
            id: format!("{}-{}-{}", origin.camera, origin.run_id, origin.sequence),
            timestamp: humantime::format_rfc3339_millis(origin.captured_at).to_string(),
            camera: origin.camera,
            caption,
            score,
            model_id,
            sequence: origin.sequence,
            latency_ms,
            image: origin.image,
        }
    }
}

/// The JSON payload of `<prefix>/stats`.
/// The JSON payload of `<prefix>/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Captions per second over the last stats interval.
    pub fps: f64,
    /// Mean encoder + decoder milliseconds per caption over the last interval.
    pub inference_ms: f64,
    /// Caption events not yet acknowledged by the broker.
    pub queue_depth: u64,
    /// Caption events dropped because the queue was full (oldest first).
    pub dropped_frames: u64,
    /// Frames skipped because they could not be read or decoded (corrupt, truncated,
    /// not an image).
    pub skipped_frames: u64,
    /// Frames skipped because they barely changed (`source.skip_similar`).
    pub similar_frames: u64,
    /// Captions not published because the text did not change (`source.publish_on_change`).
    pub unchanged_captions: u64,
    /// Captions made since start.
    pub captions: u64,
    pub connected: bool,
    pub uptime_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_design() {
        let t = Topics::for_device("kitchen-pi").unwrap();
        assert_eq!(t.availability(), "captiond/kitchen-pi/availability");
        assert_eq!(
            t.caption("front").unwrap(),
            "captiond/kitchen-pi/front/caption"
        );
        assert_eq!(t.state("front").unwrap(), "captiond/kitchen-pi/front/state");
        assert_eq!(t.stats(), "captiond/kitchen-pi/stats");
        assert_eq!(
            Topics::new("home/captions/").unwrap().prefix(),
            "home/captions"
        );
    }

    #[test]
    fn bad_levels_are_refused_with_the_reason() {
        let t = Topics::for_device("pi").unwrap();
        let msg = t.caption("front/door").unwrap_err().to_string();
        assert!(
            msg.contains("camera name \"front/door\"") && msg.contains("'/'"),
            "{msg}"
        );
        assert!(t.state("#").is_err());
        assert!(Topics::for_device("").is_err());
        assert!(Topics::new("a//b").is_err());
        assert!(Topics::new("a/+/b").is_err());
    }

    #[test]
    fn caption_event_json_has_the_documented_fields() {
        let ms = Duration::from_millis;
        let origin = Origin {
            camera: "front".into(),
            run_id: 1_700_000_000,
            sequence: 7,
            captured_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_291_600),
            image: None,
        };
        let e = CaptionEvent::new(
            origin.clone(),
            "a dog runs on the grass".into(),
            -0.8,
            "flickr8k-lite0-int8".into(),
            StageLatency::from_stages(ms(1), ms(2), ms(30), ms(12)),
        );
        assert_eq!(e.id, "front-1700000000-7");
        assert_eq!(e.timestamp, "2025-11-28T01:00:00.000Z");
        assert_eq!(e.latency_ms.total, 45.0);
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "camera",
                "caption",
                "id",
                "latency_ms",
                "model_id",
                "score",
                "sequence",
                "timestamp"
            ]
        );
        let mut stages: Vec<&str> = v["latency_ms"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        stages.sort_unstable();
        assert_eq!(stages, ["capture", "decode", "decoder", "encoder", "total"]);
        let fields = keys.len();
        let back: CaptionEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        // An image file's event names the file; nothing else changes.
        let file = CaptionEvent::new(
            Origin {
                camera: FILE_CAMERA.into(),
                image: Some("photos/dog.jpg".into()),
                ..origin
            },
            e.caption.clone(),
            e.score,
            e.model_id.clone(),
            e.latency_ms.clone(),
        );
        let v = serde_json::to_value(&file).unwrap();
        assert_eq!(v["image"], "photos/dog.jpg");
        assert_eq!(v["id"], "file-1700000000-7");
        assert_eq!(v.as_object().unwrap().len(), fields + 1);
    }

    #[test]
    fn commands_parse_and_bad_ones_say_what_was_expected() {
        assert_eq!(Command::parse(b"caption_now"), Ok(Command::CaptionNow));
        assert_eq!(Command::parse(b" pause\n"), Ok(Command::Pause));
        assert_eq!(Command::parse(b"resume"), Ok(Command::Resume));
        assert_eq!(
            Command::parse(br#"{"interval_ms": 2500}"#),
            Ok(Command::Interval { interval_ms: 2500 })
        );
        for bad in [
            &b"reboot"[..],
            b"",
            b"\xff\xfe",
            br#"{"interval_ms": -1}"#,
            br#"{"interval_ms": "5"}"#,
            br#"{"interval": 5}"#,
            br#"{"interval_ms": 99999999999}"#,
            b"{",
        ] {
            let e = Command::parse(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad:?}");
        }
        assert!(Command::parse(b"reboot")
            .unwrap_err()
            .contains("caption_now, pause, resume"));
        let t = Topics::for_device("pi").unwrap();
        assert_eq!(t.command("front").unwrap(), "captiond/pi/front/command");
        assert_eq!(
            t.command_result("front").unwrap(),
            "captiond/pi/front/command/result"
        );
        assert_eq!(t.paused("front").unwrap(), "captiond/pi/front/paused");
        assert_eq!(t.snapshot("front").unwrap(), "captiond/pi/front/snapshot");
    }

    #[test]
    fn stats_json_round_trips() {
        let s = Stats {
            fps: 1.5,
            inference_ms: 40.0,
            queue_depth: 3,
            dropped_frames: 0,
            skipped_frames: 2,
            captions: 9,
            uptime_s: 60.0,
            ..Default::default()
        };
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"skipped_frames\":2"));
        assert_eq!(serde_json::from_str::<Stats>(&text).unwrap(), s);
    }
}

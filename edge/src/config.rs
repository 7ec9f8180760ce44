//! The daemon's configuration: one TOML file, every field optional with a documented
//! default (see `captiond.example.toml`), unknown fields refused, and validation errors that
//! name the field and the expected form.

use std::path::{Path, PathBuf};

use caption_proto::Precision;
#[cfg(feature = "daemon")]
use caption_runtime::EngineOptions;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Parse { path: PathBuf, problem: String },
    #[error("{path}: field `{field}`: {problem}")]
    Field {
        path: PathBuf,
        field: String,
        problem: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Names this daemon in topics (`captiond/<device_id>`); default: the host name.
    pub device_id: String,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter); the
    /// `CAPTIOND_LOG` environment variable overrides it.
    pub log_level: String,
    pub model: ModelConfig,
    pub source: SourceConfig,
    pub mqtt: MqttConfig,
    /// The embedded broker, used when `mqtt.host` is not set.
    pub embedded_broker: EmbeddedBrokerConfig,
    /// The status page and HTTP API (off unless `listen` is set).
    pub http: HttpConfig,
    /// The captioned frame as a JPEG: MQTT snapshots and the page's picture.
    pub snapshot: SnapshotConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the status page and HTTP API, e.g. `127.0.0.1:8080`; not set: no server.
    pub listen: Option<String>,
    /// A bearer token every endpoint but `/metrics` then requires.
    pub token: Option<String>,
    /// A file holding the token (e.g. a systemd credential), instead of `token`.
    pub token_file: Option<PathBuf>,
    /// Largest `POST /api/caption` body in bytes; larger gets 413.
    pub max_body_bytes: usize,
    /// `POST /api/caption` requests admitted at once (one runs, the rest wait); more get
    /// 503 with `Retry-After`.
    pub queue: usize,
    /// Captions kept per camera for the page and `/api/cameras/<name>/captions`.
    pub history: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Publish `<prefix>/<camera>/snapshot` (retained JPEG) with each published caption.
    pub mqtt: bool,
    /// Longest side of the snapshot in pixels (frames are never enlarged).
    pub max_side: u32,
    /// JPEG quality, 1 to 100.
    pub quality: u8,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            token: None,
            token_file: None,
            max_body_bytes: 8 << 20,
            queue: 4,
            history: 50,
        }
    }
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            mqtt: true,
            max_side: 640,
            quality: 80,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The model bundle directory.
    pub bundle: PathBuf,
    /// Beam width (1 = greedy).
    pub beam: usize,
    /// The encoder's precision: `auto` (the fastest verified one for this CPU), `int8`
    /// or `f32` (the bundle's int8 weights dequantised at load).
    pub precision: Precision,
    /// Threads for the model's matrix kernels; not set: all cores.
    pub threads: Option<usize>,
}

#[cfg(feature = "daemon")]
impl ModelConfig {
    /// The engine options this section asks for.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            precision: self.precision,
            threads: self.threads.unwrap_or_else(caption_runtime::all_cores),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Camera,
    Directory,
    Stdin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    Mjpeg,
    Yuyv,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// `camera` (V4L2 webcam), `directory` (image files) or `stdin` (an MJPEG stream).
    pub kind: SourceKind,
    /// The camera's name in topics and events.
    pub name: String,
    /// Capture at most one frame per this many milliseconds (0: as fast as possible).
    pub interval_ms: u64,
    /// Skip a frame whose mean absolute pixel difference from the last captioned frame
    /// (0..1, on a 32x32 grey thumbnail) is below this; 0 disables.
    pub skip_similar: f64,
    /// Publish a caption only when its text differs from the previous one.
    pub publish_on_change: bool,
    /// `directory`: the folder of images (jpg, jpeg, png), read in name order.
    pub path: PathBuf,
    /// `directory`: keep watching the folder for new files after the last one.
    pub watch: bool,
    /// `camera`: a device index (`0`) or path (`/dev/video0`).
    pub device: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// `camera`: `mjpeg` or `yuyv`.
    pub format: PixelFormat,
    /// `camera`: first and longest wait between reconnection attempts.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// stdin: the largest JPEG frame accepted from the stream, bytes; a longer one (a
    /// stream that lost its end marker) is dropped so that memory stays bounded.
    pub max_frame_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// Optional client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_file: PathBuf::new(),
            client_cert: None,
            client_key: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host; not set: use the embedded broker.
    pub host: Option<String>,
    /// Default 1883, or 8883 with TLS.
    pub port: Option<u16>,
    /// Default `captiond-<device_id>`; kept stable so the broker keeps the session.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Enables TLS (rustls).
    pub tls: Option<TlsConfig>,
    /// Default `captiond/<device_id>`.
    pub topic_prefix: Option<String>,
    pub keep_alive_s: u64,
    /// Reconnection back-off: doubles from min to max, with ±25 % jitter.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// Seconds between `stats` messages (0 disables).
    pub stats_interval_s: u64,
    /// Undelivered caption events kept while the broker is unreachable; when full, the
    /// oldest event is dropped (and counted in `stats.dropped_events`).
    pub queue_capacity: usize,
    /// Where undelivered events are saved at shutdown and reloaded at start (JSON lines);
    /// not set: memory only.
    pub queue_file: Option<PathBuf>,
    /// On SIGINT/SIGTERM: longest wait for the queue to drain before exiting.
    pub shutdown_timeout_s: u64,
    pub home_assistant: HomeAssistantConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HomeAssistantConfig {
    /// Publish MQTT discovery for a caption sensor per camera.
    pub discovery: bool,
    pub discovery_prefix: String,
    /// Home Assistant's birth topic; discovery is re-sent when it says `online`.
    pub status_topic: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedBrokerConfig {
    /// Address the embedded broker listens on.
    pub listen: String,
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "captiond".to_owned())
}

impl Default for Config {
    fn default() -> Self {
        Config {
            device_id: hostname(),
            log_level: "info".into(),
            model: ModelConfig::default(),
            source: SourceConfig::default(),
            mqtt: MqttConfig::default(),
            embedded_broker: EmbeddedBrokerConfig::default(),
            http: HttpConfig::default(),
            snapshot: SnapshotConfig::default(),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            bundle: PathBuf::from(crate::DEFAULT_BUNDLE),
            beam: 1,
            precision: Precision::Auto,
            threads: None,
        }
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: SourceKind::Directory,
            name: "main".into(),
            interval_ms: 0,
            skip_similar: 0.0,
            publish_on_change: false,
            path: PathBuf::from("examples/images"),
            watch: false,
            device: "0".into(),
            width: 640,
            height: 480,
            fps: 15,
            format: PixelFormat::Mjpeg,
            reconnect_min_ms: 1000,
            reconnect_max_ms: 30_000,
            max_frame_bytes: crate::source::MAX_JPEG_BYTES,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: None,
            port: None,
            client_id: None,
            username: None,
            password: None,
            tls: None,
            topic_prefix: None,
            keep_alive_s: 30,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
            stats_interval_s: 60,
            queue_capacity: 10_000,
            queue_file: None,
            shutdown_timeout_s: 10,
            home_assistant: HomeAssistantConfig::default(),
        }
    }
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            discovery: true,
            discovery_prefix: "homeassistant".into(),
            status_topic: "homeassistant/status".into(),
        }
    }
}

impl Default for EmbeddedBrokerConfig {
    fn default() -> Self {
        EmbeddedBrokerConfig {
            listen: "127.0.0.1:1883".into(),
        }
    }
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            problem: e.to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// The topic prefix in effect.
    pub fn topic_prefix(&self) -> String {
        self.mqtt
            .topic_prefix
            .clone()
            .unwrap_or_else(|| format!("captiond/{}", self.device_id))
    }

    pub fn client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("captiond-{}", self.device_id))
    }

    /// The HTTP bearer token in effect: `http.token`, or the trimmed content of
    /// `http.token_file`.
    pub fn http_token(&self, origin: &Path) -> Result<Option<String>, ConfigError> {
        match (&self.http.token, &self.http.token_file) {
            (Some(t), _) => Ok(Some(t.clone())),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Field {
                    path: origin.to_owned(),
                    field: "http.token_file".into(),
                    problem: format!("cannot read {}: {e}", file.display()),
                })?;
                let token = text.trim().to_owned();
                if token.is_empty() {
                    return Err(ConfigError::Field {
                        path: origin.to_owned(),
                        field: "http.token_file".into(),
                        problem: format!("{} is empty", file.display()),
                    });
                }
                Ok(Some(token))
            }
            (None, None) => Ok(None),
        }
    }

    pub fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let err = |field: &str, problem: String| ConfigError::Field {
            path: origin.to_owned(),
            field: field.to_owned(),
            problem,
        };
        caption_proto::mqtt::check_level("device id", &self.device_id)
            .map_err(|e| err("device_id", e.to_string()))?;
        caption_proto::mqtt::check_level("camera name", &self.source.name)
            .map_err(|e| err("source.name", e.to_string()))?;
        caption_proto::mqtt::Topics::new(&self.topic_prefix())
            .map_err(|e| err("mqtt.topic_prefix", e.to_string()))?;
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|e| {
            err(
                "log_level",
                format!("{e}: expected error, warn, info, debug, trace or a tracing filter"),
            )
        })?;
        if self.model.beam == 0 || self.model.beam > 20 {
            return Err(err("model.beam", "expected 1 to 20".into()));
        }
        if self.model.threads == Some(0) {
            return Err(err(
                "model.threads",
                "expected at least 1 (leave it out for 1)".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.source.skip_similar) {
            return Err(err(
                "source.skip_similar",
                "expected a number from 0 to 1".into(),
            ));
        }
        if self.source.kind == SourceKind::Directory && self.source.path.as_os_str().is_empty() {
            return Err(err("source.path", "expected the folder of images".into()));
        }
        if self.source.max_frame_bytes < 1024 {
            return Err(err(
                "source.max_frame_bytes",
                "expected at least 1024 bytes".into(),
            ));
        }
        if self.source.reconnect_min_ms == 0
            || self.source.reconnect_min_ms > self.source.reconnect_max_ms
        {
            return Err(err(
                "source.reconnect_min_ms",
                "expected 1 <= reconnect_min_ms <= reconnect_max_ms".into(),
            ));
        }
        if self.mqtt.reconnect_min_ms == 0
            || self.mqtt.reconnect_min_ms > self.mqtt.reconnect_max_ms
        {
            return Err(err(
                "mqtt.reconnect_min_ms",
                "expected 1 <= reconnect_min_ms <= reconnect_max_ms".into(),
            ));
        }
        if self.mqtt.keep_alive_s < 5 {
            return Err(err(
                "mqtt.keep_alive_s",
                "expected at least 5 seconds".into(),
            ));
        }
        if self.mqtt.queue_capacity == 0 {
            return Err(err("mqtt.queue_capacity", "expected at least 1".into()));
        }
        if self.mqtt.username.is_none() && self.mqtt.password.is_some() {
            return Err(err("mqtt.password", "set mqtt.username as well".into()));
        }
        if let Some(tls) = &self.mqtt.tls {
            if tls.ca_file.as_os_str().is_empty() {
                return Err(err("mqtt.tls.ca_file", "expected a PEM file".into()));
            }
            if tls.client_cert.is_some() != tls.client_key.is_some() {
                return Err(err(
                    "mqtt.tls.client_cert",
                    "client_cert and client_key go together".into(),
                ));
            }
        }
        if let Some(listen) = &self.http.listen {
            listen.parse::<std::net::SocketAddr>().map_err(|e| {
                err(
                    "http.listen",
                    format!("{e}: expected an address such as 127.0.0.1:8080"),
                )
            })?;
        }
        if self.http.token.is_some() && self.http.token_file.is_some() {
            return Err(err(
                "http.token_file",
                "set either http.token or http.token_file, not both".into(),
            ));
        }
        if self
            .http
            .token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(err("http.token", "expected a non-empty token".into()));
        }
        if self.http.max_body_bytes < 1024 {
            return Err(err("http.max_body_bytes", "expected at least 1024".into()));
        }
        if self.http.queue == 0 {
            return Err(err("http.queue", "expected at least 1".into()));
        }
        if self.http.history == 0 {
            return Err(err("http.history", "expected at least 1".into()));
        }
        if self.snapshot.max_side < 16 {
            return Err(err(
                "snapshot.max_side",
                "expected at least 16 pixels".into(),
            ));
        }
        if !(1..=100).contains(&self.snapshot.quality) {
            return Err(err("snapshot.quality", "expected 1 to 100".into()));
        }
        if self.mqtt.host.is_none() {
            self.embedded_broker
                .listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| {
                    err(
                        "embedded_broker.listen",
                        format!("{e}: expected an address such as 127.0.0.1:1883"),
                    )
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("captiond.example.toml");
        let mut example = Config::load(&path).unwrap();
        let defaults = Config::default();
        // The example spells out a device id; everything else is the default.
        example.device_id = defaults.device_id.clone();
        assert_eq!(example, defaults);
    }

    #[test]
    fn http_and_snapshot_fields_are_checked() {
        let p = Path::new("c.toml");
        let msg = |text: &str| Config::parse(text, p).unwrap_err().to_string();
        assert!(msg("[http]\nlisten = \"localhost\"\n").contains("http.listen"));
        assert!(msg("[http]\ntoken = \"a\"\ntoken_file = \"/x\"\n").contains("not both"));
        assert!(msg("[http]\nqueue = 0\n").contains("http.queue"));
        assert!(msg("[snapshot]\nquality = 0\n").contains("snapshot.quality"));
        assert!(msg("[snapshot]\nmax_side = 8\n").contains("snapshot.max_side"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let c = Config::parse(
            &format!(
                "[http]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
                file.display()
            ),
            p,
        )
        .unwrap();
        assert_eq!(c.http_token(p).unwrap().as_deref(), Some("s3cret"));
        std::fs::write(&file, "\n").unwrap();
        assert!(c
            .http_token(p)
            .unwrap_err()
            .to_string()
            .contains("is empty"));
    }

    #[test]
    fn errors_name_the_field_and_the_expected_form() {
        let p = Path::new("c.toml");
        let msg = |text: &str| Config::parse(text, p).unwrap_err().to_string();
        let m = msg("[model]\nbeam = 0\n");
        assert!(
            m.contains("c.toml") && m.contains("model.beam") && m.contains("1 to 20"),
            "{m}"
        );
        let m = msg("[source]\nkind = \"webcam\"\n");
        assert!(m.contains("webcam") && m.contains("camera"), "{m}");
        let m = msg("[mqtt]\nhots = \"x\"\n");
        assert!(m.contains("hots"), "{m}");
        let m = msg("[source]\nname = \"front/door\"\n");
        assert!(m.contains("source.name") && m.contains("'/'"), "{m}");
        let m = msg("[embedded_broker]\nlisten = \"localhost\"\n");
        assert!(m.contains("embedded_broker.listen"), "{m}");
        let m = msg("[mqtt.tls]\nca_file = \"\"\n");
        assert!(m.contains("mqtt.tls.ca_file"), "{m}");
        let m = msg("log_level = \"caption=notalevel\"\n");
        assert!(m.contains("log_level"), "{m}");
        let m = msg("[model]\nprecision = \"fp8\"\n");
        assert!(m.contains("fp8") && m.contains("f32"), "{m}");
        let m = msg("[model]\nthreads = 0\n");
        assert!(
            m.contains("model.threads") && m.contains("at least 1"),
            "{m}"
        );
    }

    #[cfg(feature = "daemon")]
    #[test]
    fn model_threads_default_to_all_cores() {
        let p = Path::new("c.toml");
        let c = Config::parse("[model]\nprecision = \"int8\"\nthreads = 2\n", p).unwrap();
        assert_eq!(
            c.model.engine_options(),
            EngineOptions {
                precision: Precision::Int8,
                threads: 2
            }
        );
        let d = Config::parse("", p).unwrap().model.engine_options();
        assert_eq!(d.precision, Precision::Auto);
        assert_eq!(d.threads, caption_runtime::all_cores());
    }
}

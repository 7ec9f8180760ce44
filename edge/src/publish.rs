//! The MQTT publisher: a bounded queue of caption events in front of `rumqttc`, drained
//! only while connected; QoS 1, persistent session, retained state and availability, last
//! will, Home Assistant discovery, stats, reconnection with back-off and jitter.
//!
//! The queue's decisions live in [`crate::outbox`] (pure, unit-tested); this module is the
//! thin driver around it and rumqttc. Delivery: an event stays in our queue until the
//! client is connected; once handed to
//! rumqttc it is retransmitted after a reconnect until the broker acknowledges it (rumqttc
//! keeps unacknowledged QoS 1 publishes across reconnects). When the queue is full the
//! oldest event is dropped and counted.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use caption_proto::mqtt::{CaptionEvent, Topics, OFFLINE, ONLINE};
use rumqttc::{Client, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

use crate::backoff::Backoff;
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot read {path} (field `{field}`): {source}")]
    File {
        path: PathBuf,
        field: &'static str,
        source: std::io::Error,
    },
    #[error("topic: {0}")]
    Topic(#[from] caption_proto::mqtt::TopicError),
}

pub use crate::outbox::Message;
use crate::outbox::{Input, Out, Outbox};

/// A payload received on a camera's command topic.
pub struct Incoming {
    pub camera: String,
    pub payload: Vec<u8>,
}

/// Counters shared with the daemon (stats).
#[derive(Default)]
pub struct Counters {
    pub queued: AtomicU64,
    pub dropped: AtomicU64,
    /// Caption events handed to the MQTT client (sent, or retransmitted until acknowledged).
    pub published: AtomicU64,
    pub connected: AtomicBool,
}

pub struct Publisher {
    tx: mpsc::Sender<Input>,
    pub counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// rumqttc options from the config: stable client id, persistent session, last will,
/// credentials, TLS.
pub fn mqtt_options(config: &Config, host: &str, port: u16) -> Result<MqttOptions, PublishError> {
    let topics = Topics::new(&config.topic_prefix())?;
    let m = &config.mqtt;
    let mut o = MqttOptions::new(config.client_id(), host, port);
    o.set_keep_alive(Duration::from_secs(m.keep_alive_s));
    o.set_clean_session(false);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_last_will(LastWill::new(
        topics.availability(),
        OFFLINE,
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(user) = &m.username {
        o.set_credentials(user, m.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &m.tls {
        let read = |path: &PathBuf, field: &'static str| {
            std::fs::read(path).map_err(|source| PublishError::File {
                path: path.clone(),
                field,
                source,
            })
        };
        let ca = read(&tls.ca_file, "mqtt.tls.ca_file")?;
        let client_auth = match (&tls.client_cert, &tls.client_key) {
            (Some(c), Some(k)) => Some((
                read(c, "mqtt.tls.client_cert")?,
                read(k, "mqtt.tls.client_key")?,
            )),
            _ => None,
        };
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(o)
}

/// The Home Assistant discovery configs of a camera, `(topic, payload)`: the caption
/// sensor, the snapshot image (when snapshots are published), a "Caption now" button and a
/// "Captioning" switch.
pub fn discovery(config: &Config, camera: &str) -> Result<Vec<(String, String)>, PublishError> {
    let topics = Topics::new(&config.topic_prefix())?;
    let base = format!("{}_{camera}", config.device_id).replace(['-', '.'], "_");
    let prefix = &config.mqtt.home_assistant.discovery_prefix;
    let device = serde_json::json!({
        "identifiers": [format!("captiond_{}", config.device_id)],
        "name": format!("captiond {}", config.device_id),
        "model": "captiond",
        "sw_version": crate::version(),
    });
    let entity = |component: &str, suffix: &str, mut payload: serde_json::Value| {
        let object = format!("{base}_{suffix}");
        payload["unique_id"] = object.clone().into();
        payload["availability_topic"] = topics.availability().into();
        payload["payload_available"] = ONLINE.into();
        payload["payload_not_available"] = OFFLINE.into();
        payload["device"] = device.clone();
        (
            format!("{prefix}/{component}/{object}/config"),
            payload.to_string(),
        )
    };
    let mut out = vec![entity(
        "sensor",
        "caption",
        serde_json::json!({
            "name": format!("{camera} caption"),
            "state_topic": topics.state(camera)?,
            "json_attributes_topic": topics.caption(camera)?,
            "icon": "mdi:image-text",
        }),
    )];
    if config.snapshot.mqtt {
        out.push(entity(
            "image",
            "snapshot",
            serde_json::json!({
                "name": format!("{camera} snapshot"),
                "image_topic": topics.snapshot(camera)?,
                "content_type": "image/jpeg",
            }),
        ));
    }
    out.push(entity(
        "button",
        "caption_now",
        serde_json::json!({
            "name": format!("{camera} caption now"),
            "command_topic": topics.command(camera)?,
            "payload_press": "caption_now",
            "icon": "mdi:camera-iris",
        }),
    ));
    out.push(entity(
        "switch",
        "captioning",
        serde_json::json!({
            "name": format!("{camera} captioning"),
            "command_topic": topics.command(camera)?,
            "payload_on": "resume",
            "payload_off": "pause",
            "state_topic": topics.paused(camera)?,
            "state_on": "false",
            "state_off": "true",
            "icon": "mdi:text-recognition",
        }),
    ));
    Ok(out)
}

fn load_queue(path: &PathBuf) -> VecDeque<CaptionEvent> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return VecDeque::new();
    };
    let mut out = VecDeque::new();
    for (i, line) in text.lines().enumerate() {
        match serde_json::from_str::<CaptionEvent>(line) {
            Ok(e) => out.push_back(e),
            Err(e) => tracing::warn!(
                "{}:{}: skipping a bad queued event: {e}",
                path.display(),
                i + 1
            ),
        }
    }
    if !out.is_empty() {
        tracing::info!(
            "{} undelivered events reloaded from {}",
            out.len(),
            path.display()
        );
    }
    out
}

fn save_queue(path: &PathBuf, queue: &VecDeque<CaptionEvent>) {
    let result = (|| -> std::io::Result<()> {
        if queue.is_empty() {
            if path.exists() {
                std::fs::remove_file(path)?;
            }
            return Ok(());
        }
        let tmp = path.with_extension("partial");
        let mut f = std::fs::File::create(&tmp)?;
        for e in queue {
            writeln!(f, "{}", serde_json::to_string(e).expect("events serialise"))?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    match result {
        Ok(()) if !queue.is_empty() => tracing::info!(
            "{} undelivered events saved to {}",
            queue.len(),
            path.display()
        ),
        Ok(()) => {}
        Err(e) => tracing::error!("cannot save the queue to {}: {e}", path.display()),
    }
}

impl Publisher {
    /// Connect (in the background) and start publishing. `cameras` get discovery configs.
    /// Payloads received on the cameras' command topics go to `commands`.
    pub fn start(
        config: &Config,
        host: &str,
        port: u16,
        cameras: Vec<String>,
        commands: mpsc::Sender<Incoming>,
    ) -> Result<Publisher, PublishError> {
        let topics = Topics::new(&config.topic_prefix())?;
        let options = mqtt_options(config, host, port)?;
        let (client, mut connection) = Client::new(options, 256);
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        // Set when the publisher thread is done (queue flushed or timed out): only then may
        // the connection driver stop reconnecting.
        let quit = Arc::new(AtomicBool::new(false));
        // Daemon messages and connection events, in one order, to the publisher thread.
        let (tx, rx) = mpsc::channel::<Input>();

        // The connection driver: rumqttc's event loop, with our back-off between attempts.
        {
            let tx = tx.clone();
            let counters = counters.clone();
            let quit = quit.clone();
            let status_topic = config.mqtt.home_assistant.status_topic.clone();
            let discovery_on = config.mqtt.home_assistant.discovery;
            let mut backoff = Backoff::new(
                Duration::from_millis(config.mqtt.reconnect_min_ms),
                Duration::from_millis(config.mqtt.reconnect_max_ms),
            );
            let endpoint = format!("{host}:{port}");
            let command_topics: Vec<(String, String)> = cameras
                .iter()
                .map(|c| Ok((topics.command(c)?, c.clone())))
                .collect::<Result<_, PublishError>>()?;
            std::thread::spawn(move || {
                let mut outage: Option<Instant> = None;
                for event in connection.iter() {
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            if let Some(t) = outage.take() {
                                tracing::info!(
                                    "MQTT broker {endpoint} reachable again after {:.1} s",
                                    t.elapsed().as_secs_f64()
                                );
                            } else {
                                tracing::info!("connected to MQTT broker {endpoint}");
                            }
                            backoff.reset();
                            counters.connected.store(true, Ordering::Relaxed);
                            let _ = tx.send(Input::Connected);
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            let _ = tx.send(Input::Acked);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if let Some((_, camera)) =
                                command_topics.iter().find(|(t, _)| *t == p.topic)
                            {
                                let _ = commands.send(Incoming {
                                    camera: camera.clone(),
                                    payload: p.payload.to_vec(),
                                });
                            }
                            if discovery_on
                                && p.topic == status_topic
                                && &p.payload[..] == b"online"
                            {
                                let _ = tx.send(Input::HomeAssistantOnline);
                            }
                        }
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            counters.connected.store(false, Ordering::Relaxed);
                            let _ = tx.send(Input::Disconnected);
                            if quit.load(Ordering::Relaxed) {
                                break;
                            }
                            if outage.is_none() {
                                tracing::warn!(
                                    "MQTT broker {endpoint} unreachable: {e}; retrying with back-off"
                                );
                                outage = Some(Instant::now());
                            }
                            std::thread::sleep(backoff.next_wait());
                        }
                    }
                }
            });
        }

        let queue_file = config.mqtt.queue_file.clone();
        let shutdown_timeout = Duration::from_secs(config.mqtt.shutdown_timeout_s);
        let mut discovery_msgs = Vec::new();
        if config.mqtt.home_assistant.discovery {
            for c in &cameras {
                discovery_msgs.extend(discovery(config, c)?);
            }
        }
        let mut subscriptions: Vec<String> = cameras
            .iter()
            .map(|c| topics.command(c))
            .collect::<Result<_, _>>()?;
        if config.mqtt.home_assistant.discovery {
            subscriptions.push(config.mqtt.home_assistant.status_topic.clone());
        }
        let restored = queue_file.as_ref().map(load_queue).unwrap_or_default();
        let mut outbox = Outbox::new(
            topics.clone(),
            config.mqtt.queue_capacity,
            discovery_msgs,
            subscriptions,
            restored,
        );
        let thread = {
            let counters = counters.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut stopping_since: Option<Instant> = None;
                loop {
                    if let Ok(input) = rx.recv_timeout(Duration::from_millis(20)) {
                        outbox.apply(input);
                        while let Ok(input) = rx.try_recv() {
                            outbox.apply(input);
                        }
                    }
                    if stop.load(Ordering::Relaxed) && stopping_since.is_none() {
                        stopping_since = Some(Instant::now());
                    }
                    hand_over(&client, &mut outbox);
                    counters.queued.store(outbox.pending(), Ordering::Relaxed);
                    counters.dropped.store(outbox.dropped(), Ordering::Relaxed);
                    counters
                        .published
                        .store(outbox.published_events(), Ordering::Relaxed);
                    if let Some(since) = stopping_since {
                        let drained = outbox.drained();
                        if drained || since.elapsed() >= shutdown_timeout {
                            if !drained {
                                tracing::warn!(
                                    "shutting down with {} events undelivered",
                                    outbox.pending()
                                );
                            }
                            break;
                        }
                    }
                }
                // Going offline: say so (retained), give the broker a moment to take it.
                if outbox.connected() {
                    let offline = Out::Publish {
                        topic: topics.availability(),
                        payload: OFFLINE.into(),
                        retain: true,
                        event: None,
                    };
                    if client
                        .try_publish(topics.availability(), QoS::AtLeastOnce, true, OFFLINE)
                        .is_ok()
                    {
                        outbox.handed(&offline);
                    }
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_secs(2) && outbox.in_flight() > 0 {
                        if let Ok(input) = rx.recv_timeout(Duration::from_millis(10)) {
                            outbox.apply(input);
                        }
                    }
                    let _ = client.try_disconnect();
                }
                if let Some(path) = &queue_file {
                    save_queue(path, &outbox.into_queue());
                }
                quit.store(true, Ordering::Relaxed);
            })
        };
        Ok(Publisher {
            tx,
            counters,
            stop,
            thread: Some(thread),
        })
    }

    pub fn send(&self, m: Message) {
        if let Message::Caption(_) = &m {
            self.counters.queued.fetch_add(1, Ordering::Relaxed);
        }
        // The publisher thread only ends in `finish`.
        let _ = self.tx.send(Input::Message(m));
    }

    /// Deliver what is queued (bounded by the shutdown timeout), publish `offline`, stop.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Hand the client what the outbox has ready, in order, until it refuses one (its request
/// channel is full); the refused rest goes back to the outbox.
fn hand_over(client: &Client, outbox: &mut Outbox) {
    let mut batch = outbox.ready().into_iter();
    while let Some(out) = batch.next() {
        let taken = match &out {
            Out::Publish {
                topic,
                payload,
                retain,
                ..
            } => client
                .try_publish(topic.as_str(), QoS::AtLeastOnce, *retain, payload.clone())
                .is_ok(),
            Out::Subscribe(topic) => client
                .try_subscribe(topic.as_str(), QoS::AtLeastOnce)
                .is_ok(),
        };
        if taken {
            outbox.handed(&out);
        } else {
            outbox.refused(std::iter::once(out).chain(batch).collect());
            return;
        }
    }
}

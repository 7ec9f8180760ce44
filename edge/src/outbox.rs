//! What the daemon has to publish, and when: the outbound queue as a state machine with no
//! threads and no I/O. The publisher thread feeds it [`Input`]s (messages from the daemon,
//! and what the MQTT connection reports) and hands the client what [`Outbox::ready`]
//! yields, telling it which the client refused; everything it decides is unit-tested here
//! event by event.
//!
//! - Caption events wait in a bounded queue (`capacity`); when it is full the oldest is
//!   dropped and counted. They go out only while connected, at most [`MAX_IN_FLIGHT`]
//!   unacknowledged at a time (rumqttc re-sends those after a reconnect).
//! - Retained topics keep only their latest value: state, snapshot and paused per camera.
//! - On each connection, and when Home Assistant says `online`, availability and the
//!   discovery configs are announced again (and the command topics subscribed).
//! - At shutdown the queue is drained within a deadline the driver keeps; what is left is
//!   what [`Outbox::into_queue`] returns for the queue file.

use std::collections::VecDeque;
use std::sync::Arc;

use caption_proto::mqtt::{CaptionEvent, Topics, ONLINE};

/// Most publishes handed to the client and not yet acknowledged.
pub const MAX_IN_FLIGHT: u64 = 64;

/// Command results kept while disconnected (they matter only now).
const MAX_RESULTS: usize = 64;

/// What the daemon asks to publish.
pub enum Message {
    Caption(Box<CaptionEvent>),
    /// The latest caption text (retained `<camera>/state`).
    State {
        camera: String,
        text: String,
    },
    /// A stats JSON payload.
    Stats(String),
    /// The captioned frame as a JPEG (retained `<camera>/snapshot`).
    Snapshot {
        camera: String,
        jpeg: Arc<Vec<u8>>,
    },
    /// Whether captioning is paused (retained `<camera>/paused`).
    Paused {
        camera: String,
        paused: bool,
    },
    /// A command's result (`<camera>/command/result`).
    CommandResult {
        camera: String,
        json: String,
    },
}

/// Everything the outbox reacts to.
pub enum Input {
    Message(Message),
    /// The broker accepted the connection (CONNACK).
    Connected,
    /// The connection is gone; the client reconnects by itself.
    Disconnected,
    /// One publish acknowledged (PUBACK).
    Acked,
    /// Home Assistant's status topic said `online`.
    HomeAssistantOnline,
}

/// One thing for the client to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    Publish {
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        /// The caption event it carries, to queue again if the client refuses it.
        event: Option<Box<CaptionEvent>>,
    },
    Subscribe(String),
}

pub struct Outbox {
    topics: Topics,
    capacity: usize,
    /// Discovery `(topic, payload)`s, announced on every connection.
    discovery: Vec<(String, String)>,
    /// Topics subscribed on every connection (commands, Home Assistant's status).
    subscriptions: Vec<String>,
    queue: VecDeque<CaptionEvent>,
    states: Vec<(String, String)>,
    snapshots: Vec<(String, Arc<Vec<u8>>)>,
    paused: Vec<(String, bool)>,
    results: VecDeque<(String, String)>,
    stats: Option<String>,
    connected: bool,
    announce: bool,
    handed: u64,
    acked: u64,
    dropped: u64,
    published_events: u64,
}

/// Keep only the latest value per camera.
fn latest<T>(list: &mut Vec<(String, T)>, camera: String, value: T) {
    list.retain(|(c, _)| *c != camera);
    list.push((camera, value));
}

impl Outbox {
    /// `restored`: events saved by the last run (the queue file), sent first.
    pub fn new(
        topics: Topics,
        capacity: usize,
        discovery: Vec<(String, String)>,
        subscriptions: Vec<String>,
        restored: VecDeque<CaptionEvent>,
    ) -> Outbox {
        Outbox {
            topics,
            capacity: capacity.max(1),
            discovery,
            subscriptions,
            queue: restored,
            states: Vec::new(),
            snapshots: Vec::new(),
            paused: Vec::new(),
            results: VecDeque::new(),
            stats: None,
            connected: false,
            announce: false,
            handed: 0,
            acked: 0,
            dropped: 0,
            published_events: 0,
        }
    }

    pub fn apply(&mut self, input: Input) {
        match input {
            Input::Message(m) => self.push(m),
            Input::Connected => {
                self.connected = true;
                self.announce = true;
            }
            Input::Disconnected => self.connected = false,
            Input::Acked => self.acked += 1,
            Input::HomeAssistantOnline => self.announce = true,
        }
    }

    fn push(&mut self, m: Message) {
        match m {
            Message::Caption(e) => {
                if self.queue.len() >= self.capacity {
                    self.queue.pop_front();
                    self.dropped += 1;
                }
                self.queue.push_back(*e);
            }
            Message::State { camera, text } => latest(&mut self.states, camera, text),
            Message::Snapshot { camera, jpeg } => latest(&mut self.snapshots, camera, jpeg),
            Message::Paused { camera, paused } => latest(&mut self.paused, camera, paused),
            Message::CommandResult { camera, json } => {
                if self.results.len() >= MAX_RESULTS {
                    self.results.pop_front();
                }
                self.results.push_back((camera, json));
            }
            Message::Stats(s) => self.stats = Some(s),
        }
    }

    fn publish(topic: String, payload: Vec<u8>, retain: bool) -> Out {
        Out::Publish {
            topic,
            payload,
            retain,
            event: None,
        }
    }

    /// What to hand the client now, in order: nothing while disconnected; after a
    /// (re)connection or Home Assistant's `online`, availability, discovery and
    /// subscriptions first; then the latest retained values, command results and stats;
    /// then caption events while fewer than [`MAX_IN_FLIGHT`] are unacknowledged. Call
    /// [`Outbox::handed`] or [`Outbox::refused`] for each, in order.
    pub fn ready(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        if !self.connected {
            return out;
        }
        if std::mem::take(&mut self.announce) {
            out.push(Self::publish(
                self.topics.availability(),
                ONLINE.into(),
                true,
            ));
            for (t, p) in &self.discovery {
                out.push(Self::publish(t.clone(), p.clone().into_bytes(), true));
            }
            out.extend(self.subscriptions.iter().cloned().map(Out::Subscribe));
        }
        for (camera, text) in self.states.drain(..) {
            if let Ok(t) = self.topics.state(&camera) {
                out.push(Self::publish(t, text.into_bytes(), true));
            }
        }
        for (camera, jpeg) in self.snapshots.drain(..) {
            if let Ok(t) = self.topics.snapshot(&camera) {
                out.push(Self::publish(t, jpeg.as_ref().clone(), true));
            }
        }
        for (camera, paused) in self.paused.drain(..) {
            if let Ok(t) = self.topics.paused(&camera) {
                out.push(Self::publish(t, paused.to_string().into_bytes(), true));
            }
        }
        for (camera, json) in self.results.drain(..) {
            if let Ok(t) = self.topics.command_result(&camera) {
                out.push(Self::publish(t, json.into_bytes(), false));
            }
        }
        if let Some(s) = self.stats.take() {
            out.push(Self::publish(self.topics.stats(), s.into_bytes(), false));
        }
        // The window counts what this batch already hands out.
        let mut in_flight = self.in_flight()
            + out
                .iter()
                .filter(|o| matches!(o, Out::Publish { .. }))
                .count() as u64;
        while in_flight < MAX_IN_FLIGHT {
            let Some(e) = self.queue.pop_front() else {
                break;
            };
            let topic = match self.topics.caption(&e.camera) {
                Ok(t) => t,
                Err(err) => {
                    tracing::error!("dropping an event: {err}");
                    continue;
                }
            };
            let payload = serde_json::to_vec(&e).expect("events serialise");
            out.push(Out::Publish {
                topic,
                payload,
                retain: false,
                event: Some(Box::new(e)),
            });
            in_flight += 1;
        }
        out
    }

    /// The client took `out` (it will be delivered or re-sent until acknowledged).
    pub fn handed(&mut self, out: &Out) {
        if let Out::Publish { event, .. } = out {
            self.handed += 1;
            if event.is_some() {
                self.published_events += 1;
            }
        }
    }

    /// The client refused `out` and everything after it in the batch: caption events go
    /// back to the front of the queue, in order; the rest is given up (retained values
    /// come again with the next change, announcements with the next connection).
    pub fn refused(&mut self, rest: Vec<Out>) {
        for out in rest.into_iter().rev() {
            if let Out::Publish { event: Some(e), .. } = out {
                self.queue.push_front(*e);
            }
        }
    }

    /// Publishes handed to the client and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.handed.saturating_sub(self.acked)
    }

    /// Caption events not yet delivered: queued, or in flight.
    pub fn pending(&self) -> u64 {
        self.queue.len() as u64 + self.in_flight()
    }

    /// Nothing queued and everything handed out acknowledged.
    pub fn drained(&self) -> bool {
        self.queue.is_empty() && self.in_flight() == 0
    }

    pub fn connected(&self) -> bool {
        self.connected
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Caption events handed to the client.
    pub fn published_events(&self) -> u64 {
        self.published_events
    }

    /// The undelivered events, for the queue file.
    pub fn into_queue(self) -> VecDeque<CaptionEvent> {
        self.queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caption_proto::mqtt::StageLatency;

    fn event(n: u64) -> CaptionEvent {
        CaptionEvent {
            id: format!("main-1-{n}"),
            camera: "main".into(),
            timestamp: "2026-12-01T00:00:00Z".into(),
            caption: format!("caption {n}"),
            score: -1.0,
            model_id: "m".into(),
            sequence: n,
            latency_ms: StageLatency::default(),
            image: None,
        }
    }

    fn outbox(capacity: usize) -> Outbox {
        Outbox::new(
            Topics::for_device("pi").unwrap(),
            capacity,
            vec![("homeassistant/sensor/x/config".into(), "{}".into())],
            vec!["captiond/pi/main/command".into()],
            VecDeque::new(),
        )
    }

    fn caption(o: &mut Outbox, n: u64) {
        o.apply(Input::Message(Message::Caption(Box::new(event(n)))));
    }

    /// Hand everything ready to a client that takes it all; the topics, in order.
    fn take_all(o: &mut Outbox) -> Vec<String> {
        let batch = o.ready();
        batch
            .iter()
            .map(|out| {
                o.handed(out);
                match out {
                    Out::Publish { topic, .. } => topic.clone(),
                    Out::Subscribe(t) => format!("subscribe {t}"),
                }
            })
            .collect()
    }

    fn sequences(o: &mut Outbox) -> Vec<u64> {
        let batch = o.ready();
        batch
            .iter()
            .filter_map(|out| {
                o.handed(out);
                match out {
                    Out::Publish { event: Some(e), .. } => Some(e.sequence),
                    _ => None,
                }
            })
            .collect()
    }

    #[test]
    fn nothing_goes_out_while_disconnected_and_a_full_queue_drops_the_oldest() {
        let mut o = outbox(3);
        for n in 0..5 {
            caption(&mut o, n);
        }
        assert!(o.ready().is_empty());
        assert_eq!((o.dropped(), o.pending()), (2, 3));
        o.apply(Input::Connected);
        assert_eq!(
            take_all(&mut o),
            [
                "captiond/pi/availability",
                "homeassistant/sensor/x/config",
                "subscribe captiond/pi/main/command",
                "captiond/pi/main/caption",
                "captiond/pi/main/caption",
                "captiond/pi/main/caption",
            ]
        );
        assert_eq!(o.published_events(), 3);
    }

    #[test]
    fn the_in_flight_window_bounds_unacknowledged_publishes() {
        let mut o = outbox(1000);
        o.apply(Input::Connected);
        take_all(&mut o); // the announcement: 2 publishes in flight
        for n in 0..100 {
            caption(&mut o, n);
        }
        let first = sequences(&mut o);
        assert_eq!(first.len() as u64, MAX_IN_FLIGHT - 2);
        assert!(o.ready().is_empty(), "the window is full");
        for _ in 0..10 {
            o.apply(Input::Acked);
        }
        let next = sequences(&mut o);
        assert_eq!(next, (62..72).collect::<Vec<_>>());
        assert_eq!(o.pending(), 100 - 72 + 64);
        for _ in 0..200 {
            o.apply(Input::Acked);
            let _ = sequences(&mut o);
        }
        assert!(o.drained());
    }

    #[test]
    fn a_refused_batch_keeps_its_events_in_order_for_the_next_try() {
        let mut o = outbox(10);
        o.apply(Input::Connected);
        take_all(&mut o);
        for n in 0..4 {
            caption(&mut o, n);
        }
        let mut batch = o.ready();
        // The client takes the first event, then its channel is full.
        let rest = batch.split_off(1);
        o.handed(&batch[0]);
        o.refused(rest);
        assert_eq!(sequences(&mut o), [1, 2, 3]);
    }

    #[test]
    fn reconnecting_and_home_assistant_online_announce_again() {
        let mut o = outbox(10);
        o.apply(Input::Connected);
        take_all(&mut o);
        assert!(o.ready().is_empty());
        o.apply(Input::HomeAssistantOnline);
        assert_eq!(take_all(&mut o).len(), 3);
        o.apply(Input::Disconnected);
        caption(&mut o, 0);
        assert!(o.ready().is_empty());
        o.apply(Input::Connected);
        let topics = take_all(&mut o);
        assert_eq!(topics[0], "captiond/pi/availability");
        assert_eq!(topics.last().unwrap(), "captiond/pi/main/caption");
    }

    #[test]
    fn retained_values_keep_only_the_latest_and_results_are_bounded() {
        let mut o = outbox(10);
        for text in ["a", "b"] {
            o.apply(Input::Message(Message::State {
                camera: "main".into(),
                text: text.into(),
            }));
        }
        for paused in [true, false] {
            o.apply(Input::Message(Message::Paused {
                camera: "main".into(),
                paused,
            }));
        }
        for i in 0..100 {
            o.apply(Input::Message(Message::CommandResult {
                camera: "main".into(),
                json: format!("{i}"),
            }));
        }
        o.apply(Input::Connected);
        let batch = o.ready();
        let payload = |topic: &str| -> Vec<String> {
            batch
                .iter()
                .filter_map(|out| match out {
                    Out::Publish {
                        topic: t, payload, ..
                    } if t == topic => Some(String::from_utf8(payload.clone()).unwrap()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(payload("captiond/pi/main/state"), ["b"]);
        assert_eq!(payload("captiond/pi/main/paused"), ["false"]);
        let results = payload("captiond/pi/main/command/result");
        assert_eq!(results.len(), MAX_RESULTS);
        assert_eq!(results.last().unwrap(), "99");
    }

    #[test]
    fn restored_events_go_first_and_undelivered_ones_are_returned_for_saving() {
        let restored: VecDeque<CaptionEvent> = (0..2).map(event).collect();
        let mut o = Outbox::new(
            Topics::for_device("pi").unwrap(),
            10,
            Vec::new(),
            Vec::new(),
            restored,
        );
        caption(&mut o, 7);
        assert!(!o.drained());
        let saved: Vec<u64> = o.into_queue().iter().map(|e| e.sequence).collect();
        assert_eq!(saved, [0, 1, 7]);
    }
}

//! The embedded MQTT broker (`rumqttd`), started when the config names no broker, so the
//! daemon works out of the box and clients can still subscribe.

use std::collections::HashMap;
use std::net::SocketAddr;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker: cannot listen on {listen}")]
    Bind {
        listen: SocketAddr,
        source: std::io::Error,
    },
    #[error("embedded broker: it did not start accepting connections on {listen} within 2 s")]
    NotListening { listen: SocketAddr },
}

/// Start the broker on `listen` in a background thread; returns once it accepts
/// connections.
pub fn start(listen: SocketAddr) -> Result<(), BrokerError> {
    // Fail early and clearly when the address is taken (rumqttd would only log it).
    std::net::TcpListener::bind(listen).map_err(|source| BrokerError::Bind { listen, source })?;
    let server = ServerSettings {
        name: "captiond-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 1 << 20,
            max_inflight_count: 200,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_owned(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::spawn(move || {
        let mut broker = Broker::new(config);
        if let Err(e) = broker.start() {
            tracing::error!("embedded broker stopped: {e}");
        }
    });
    // Wait until it listens. Not by connecting: rumqttd logs a connection that ends
    // right away (even a clean MQTT session) as an error, which looked like a failure at
    // every start.
    for _ in 0..200 {
        if listening(listen) {
            tracing::info!("embedded MQTT broker listening on {listen}");
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(BrokerError::NotListening { listen })
}

/// Whether a socket listens on `addr`, from the kernel's socket table (/proc/net/tcp,
/// tcp6): state 0A is LISTEN; addresses are hex, IPv4 in host byte order.
#[cfg(target_os = "linux")]
fn listening(addr: SocketAddr) -> bool {
    let port = format!("{:04X}", addr.port());
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 3
                    && fields[3] == "0A"
                    && fields[1].rsplit(':').next() == Some(port.as_str())
            })
        })
    })
}

/// Elsewhere: a TCP connection (rumqttd may log it as an error).
#[cfg(not(target_os = "linux"))]
fn listening(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect(addr).is_ok()
}

/// rumqttd 0.20 logs a client's clean disconnect as errors: when a client sends
/// DISCONNECT and closes, the link task logs `ERROR router-drop error=Recv(Disconnected)`
/// and the router, seeing the disconnect twice (its own code says clients do this), logs
/// `ERROR no-connection id N is already gone`. Every `mosquitto_sub` that exits, and
/// captiond's own client at every stop, looked like a failure. This log filter drops
/// exactly those two events (matched by target, level and message); every other rumqttd
/// event passes.
pub struct DisconnectNoise;

/// The message and `error` field of an event.
#[derive(Default)]
struct Fields {
    message: String,
    error: String,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "error" => self.error = format!("{value:?}"),
            _ => {}
        }
    }
}

/// Whether `event` is one of rumqttd's clean-disconnect errors (see [`DisconnectNoise`]).
pub fn is_clean_disconnect_noise(event: &tracing::Event<'_>) -> bool {
    let meta = event.metadata();
    if *meta.level() != tracing::Level::ERROR || !meta.target().starts_with("rumqttd::") {
        return false;
    }
    let mut f = Fields::default();
    event.record(&mut f);
    (f.message == "router-drop" && f.error.contains("Disconnected"))
        || (f.message.starts_with("no-connection id ") && f.message.ends_with(" is already gone"))
}

impl<S> tracing_subscriber::layer::Filter<S> for DisconnectNoise {
    fn enabled(
        &self,
        _meta: &tracing::Metadata<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        !is_clean_disconnect_noise(event)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    use super::*;

    struct Count(Arc<AtomicUsize>);
    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[derive(Debug)]
    enum LinkError {
        // Read only through Debug, as rumqttd's error is.
        Recv(#[allow(dead_code)] &'static str),
    }

    /// How many of the events `emit` logs pass the filter.
    fn passed(emit: impl FnOnce()) -> usize {
        let n = Arc::new(AtomicUsize::new(0));
        let subscriber =
            tracing_subscriber::registry().with(Count(n.clone()).with_filter(DisconnectNoise));
        tracing::subscriber::with_default(subscriber, emit);
        n.load(Ordering::Relaxed)
    }

    #[test]
    fn only_rumqttd_clean_disconnect_errors_are_dropped() {
        // The two events rumqttd 0.20 logs for a clean disconnect.
        let noise = passed(|| {
            let e = LinkError::Recv("Disconnected");
            tracing::error!(target: "rumqttd::server::broker", error = ?e, "router-drop");
            tracing::error!(target: "rumqttd::router::routing", "no-connection id {} is already gone", 3);
        });
        assert_eq!(noise, 0);
        // Other rumqttd errors, the same words elsewhere, and other levels pass.
        let kept = passed(|| {
            let e = LinkError::Recv("Timeout");
            tracing::error!(target: "rumqttd::server::broker", error = ?e, "router-drop");
            tracing::error!(target: "rumqttd::server::broker", "connection-stop");
            tracing::error!(target: "caption_edge::daemon", "no-connection id 3 is already gone");
            tracing::warn!(target: "rumqttd::router::routing", "no-connection id 3 is already gone");
        });
        assert_eq!(kept, 4);
    }
}

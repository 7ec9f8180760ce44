//! `caption-edge`: the edge daemon's library (tract engine, frame sources, MQTT).
//! For now only the skeleton that the `captiond` binary wires up.

/// The version string `captiond --version` prints.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

//! `caption-edge`: the edge daemon's library: frame sources, the MQTT publisher and the
//! daemon's configuration, wired up by the `captiond` binary around the inference engine
//! of `caption-runtime`.

// The pure core: no inference, no network (built alone for the fuzz targets).
pub mod backoff;
pub mod config;
pub mod frames;
pub mod outbox;
pub mod pipeline;
pub mod source;

// The daemon around it (feature `daemon`, on by default).
#[cfg(feature = "daemon")]
pub mod broker;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod http;
#[cfg(feature = "daemon")]
pub mod hub;
#[cfg(feature = "daemon")]
pub mod publish;

/// The bundle `captiond` uses when none is given: the committed default model, relative
/// to the working directory (the repository root). A packaged build sets
/// `CAPTIOND_DEFAULT_BUNDLE` at compile time to where the package installs it
/// (`/usr/share/captiond/models/flickr8k-lite1-attention-f16`, scripts/package-deb.sh).
pub const DEFAULT_BUNDLE: &str = match option_env!("CAPTIOND_DEFAULT_BUNDLE") {
    Some(path) => path,
    None => "models/flickr8k-lite1-attention-f16",
};

/// The version string `captiond --version` prints.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

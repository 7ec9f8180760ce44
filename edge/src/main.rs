//! `captiond`: the Caption edge daemon (skeleton; the daemon itself is coming).

use clap::Parser;

/// Caption images on an edge device and publish the captions over MQTT.
#[derive(Parser, Debug)]
#[command(name = "captiond", version = caption_edge::version())]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    eprintln!("captiond: the daemon is not implemented yet; see README.md");
    Ok(())
}

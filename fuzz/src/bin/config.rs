//! `captiond` TOML config text: parsing and validation never panic.
use caption_edge::config::Config;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(c) = Config::parse(text, std::path::Path::new("fuzz.toml")) {
            let _ = c.to_toml();
        }
    });
}

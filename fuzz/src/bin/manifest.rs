//! `manifest.toml` text: parsing never panics; a parsed manifest survives a round trip.
use caption_proto::manifest::Manifest;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let origin = std::path::Path::new("fuzz/manifest.toml");
        if let Ok(m) = Manifest::parse(text, origin) {
            let again = Manifest::parse(&m.to_toml(), origin).expect("a written manifest parses");
            assert_eq!(again.to_toml(), m.to_toml());
        }
    });
}

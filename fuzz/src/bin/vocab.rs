//! `vocab.json` text: parsing never panics; a parsed vocabulary survives a round trip.
use caption_proto::vocab::Vocabulary;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(v) = Vocabulary::from_json(text, "fuzz/vocab.json") {
            let again = Vocabulary::from_json(&v.to_json(), "again").expect("written vocab parses");
            assert_eq!(again.to_json(), v.to_json());
            let ids = v.encode("a dog runs on the grass");
            let _ = v.decode(&ids);
        }
    });
}

//! MQTT command payloads: parsing never panics; an accepted interval is in range.
use caption_proto::mqtt::{Command, MAX_COMMAND_INTERVAL_MS};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        match Command::parse(data) {
            Ok(Command::Interval { interval_ms }) => assert!(interval_ms <= MAX_COMMAND_INTERVAL_MS),
            Ok(_) => {}
            Err(reason) => assert!(!reason.is_empty()),
        }
    });
}

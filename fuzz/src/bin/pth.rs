//! PyTorch checkpoints (`.pth`), both the zip format and the legacy pickle stream: the
//! hand-written unpickler must never panic, loop or allocate without bound; whatever it
//! accepts is a tensor whose data matches its shape.
use caption_weights::parse_weights;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        // Only the checkpoint readers: safetensors has its own target.
        if !(data.starts_with(b"PK\x03\x04") || data.first() == Some(&0x80)) {
            return;
        }
        if let Ok(tensors) = parse_weights(std::path::Path::new("fuzz.pth"), data) {
            for t in tensors.values() {
                assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
            }
        }
    });
}

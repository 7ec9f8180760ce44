//! safetensors files: the header (JSON metadata, offsets, dtypes) never makes the reader
//! panic; whatever it accepts is a tensor whose data matches its shape.
use caption_weights::parse_weights;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        // Bytes the reader would take for a PyTorch checkpoint belong to the `pth` target.
        if data.starts_with(b"PK\x03\x04") || data.first() == Some(&0x80) {
            return;
        }
        if let Ok(tensors) = parse_weights(std::path::Path::new("fuzz.safetensors"), data) {
            for t in tensors.values() {
                assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
            }
        }
    });
}

//! The stdin MJPEG splitter over arbitrary streams, fed in chunks whose sizes come from the
//! input: never a panic; every frame it emits starts with SOI and ends with EOI and is
//! within the size cap; what it holds stays bounded.
use caption_edge::source::MjpegSplitter;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&chunk, stream)) = data.split_first() else {
            return;
        };
        let (cap, chunk) = (4096, chunk as usize % 64 + 1);
        let mut splitter = MjpegSplitter::new(cap);
        for part in stream.chunks(chunk) {
            for frame in splitter.push(part) {
                assert!(frame.starts_with(&[0xFF, 0xD8]) && frame.ends_with(&[0xFF, 0xD9]));
                assert!(frame.len() <= cap);
            }
            assert!(splitter.held() <= cap + chunk);
        }
    });
}

//! Image bytes through the shared preprocessing (decode, resize, normalise): never a
//! panic, and a decoded image always gives a full encoder input.
use caption_proto::preprocess::{decode_rgb, Preprocessing};

fn main() {
    let pre = Preprocessing::efficientnet_lite(224);
    afl::fuzz!(|data: &[u8]| {
        if let Ok(rgb) = decode_rgb(data, std::path::Path::new("fuzz.jpg")) {
            // Decoders may accept huge declared sizes; keep the run short.
            if rgb.width() as u64 * rgb.height() as u64 > 1 << 22 {
                return;
            }
            let pixels = pre.normalize(&pre.resize(rgb));
            assert_eq!(pixels.len(), 3 * 224 * 224);
        }
    });
}

//! The Flickr8k token and split files, and caption TSV files: parsing never panics.
use caption_proto::{dataset, tsv};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let origin = std::path::Path::new("fuzz.txt");
        if let Ok(images) = dataset::parse_token_file(text, origin) {
            for image in &images {
                let _ = dataset::image_id(&image.id);
            }
        }
        let _ = dataset::parse_split_file(text);
        if let Ok(lines) = tsv::parse(text, origin) {
            let _ = tsv::group_references(lines);
        }
    });
}

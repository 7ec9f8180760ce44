//! The checkpoint reader against files written by real PyTorch 2.11 (both formats) and
//! safetensors written by Python's `safetensors` (see scripts/golden/torch_checkpoints.py).

use std::path::{Path, PathBuf};

use caption_weights::{read_weights, DType};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/checkpoints")
        .join(name)
}

#[test]
fn both_pytorch_formats_read_exactly_what_torch_wrote() {
    let expected = read_weights(&data("small-expected.safetensors")).unwrap();
    assert_eq!(expected.len(), 13);
    for file in ["small-zip.pth", "small-legacy.pth"] {
        let got = read_weights(&data(file)).unwrap();
        let mut names: Vec<_> = got.keys().collect();
        names.sort();
        let mut want: Vec<_> = expected.keys().collect();
        want.sort();
        assert_eq!(names, want, "{file}: tensor names");
        for (name, w) in &expected {
            let g = &got[name];
            assert_eq!(g.shape, w.shape, "{file}: {name} shape");
            assert_eq!(g.data, w.data, "{file}: {name} values");
        }
        assert_eq!(got["extra.half"].stored_as, DType::F16, "{file}");
        assert_eq!(got["1.num_batches_tracked"].stored_as, DType::I64, "{file}");
        // The transposed view is gathered, not copied flat from its storage.
        assert_eq!(got["extra.transposed"].data[..3], [0.0, 4.0, 8.0], "{file}");
        assert_eq!(got["extra.row1"].data, [4.0, 5.0, 6.0, 7.0], "{file}");
    }
}

#[test]
fn truncated_checkpoints_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["small-zip.pth", "small-legacy.pth"] {
        let bytes = std::fs::read(data(file)).unwrap();
        let cut = dir.path().join(format!("cut-{file}"));
        std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let msg = read_weights(&cut).unwrap_err().to_string();
        assert!(msg.contains(&format!("cut-{file}")), "{msg}");
    }
}

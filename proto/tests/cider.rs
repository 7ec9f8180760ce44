//! CIDEr-D against pycocoevalcap 1.2 on real Flickr8k captions of the fixture
//! (scripts/golden/cider_golden.py): the corpus score and every image's score.

use std::path::Path;

use caption_proto::cider::cider_d;
use caption_proto::tsv;

fn tokens(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn cider_d_equals_pycocoevalcap_on_real_captions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cider");
    let refs = tsv::group_references(tsv::read(&dir.join("refs.tsv")).unwrap());
    let hyps = tsv::read(&dir.join("hyps.tsv")).unwrap();
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let ref_tokens: Vec<Vec<Vec<String>>> = hyps
        .iter()
        .map(|h| refs[&h.image_id].iter().map(|r| tokens(r)).collect())
        .collect();
    let hyp_tokens: Vec<Vec<String>> = hyps.iter().map(|h| tokens(&h.caption)).collect();
    let scores = cider_d(&ref_tokens, &hyp_tokens).unwrap();
    let want = golden["cider_d"].as_f64().unwrap();
    assert!(
        (scores.corpus - want).abs() < 1e-12,
        "corpus {} vs pycocoevalcap {want}",
        scores.corpus
    );
    let per_image = golden["per_image"].as_array().unwrap();
    assert_eq!(per_image.len(), scores.per_image.len());
    assert!(per_image.len() > 50);
    for (i, (got, want)) in scores.per_image.iter().zip(per_image).enumerate() {
        let want = want.as_f64().unwrap();
        assert!((got - want).abs() < 1e-12, "image {i}: {got} vs {want}");
    }
}

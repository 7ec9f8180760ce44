//! `caption-proto`: the contract shared by the Caption trainer and the edge daemon.
//!
//! Everything both halves must agree on lives here once: caption text rules
//! ([`text`]), the Flickr8k layout ([`dataset`]), the [`vocab::Vocabulary`], corpus
//! BLEU ([`bleu`]), caption TSV files ([`tsv`]), image preprocessing ([`preprocess`]),
//! decoding search ([`search`]), the model bundle manifest ([`manifest`]) and the MQTT
//! topics and payloads ([`mqtt`]). This crate never depends on tch or tract.

pub mod attention_map;
pub mod bleu;
pub mod cider;
pub mod dataset;
pub mod evaluation;
pub mod manifest;
pub mod mqtt;
pub mod precision;
pub mod preprocess;
pub mod search;
pub mod text;
pub mod tsv;
pub mod vocab;

pub use bleu::{coco_bleu, corpus_bleu, BleuError, BleuStats};
pub use dataset::{DatasetError, Flickr8k, ImageCaptions, Split};
pub use precision::Precision;
pub use text::{clean_caption, wrap, TextRules, END_TOKEN, START_TOKEN};
pub use vocab::{Vocabulary, PADDING_INDEX};

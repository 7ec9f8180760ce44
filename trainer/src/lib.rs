//! `caption-trainer`: the workstation half of Caption, on libtorch through `tch`.
//!
//! Modules: [`prepare`] (the tutorial's text preparation), [`scoring`] (BLEU of TSV
//! corpora), [`device`] (what libtorch sees). Feature extraction, training, evaluation and
//! export are coming (see the open issues).

pub mod device;
pub mod encoders;
pub mod evaluate;
pub mod export;
pub mod extract;
pub mod model;
pub mod onnx;
pub mod plot;
pub mod prepare;
pub mod scoring;
pub mod train;
/// Weight import (PyTorch checkpoints, safetensors): its own pure-Rust crate, so that it
/// can be fuzzed without libtorch.
pub use caption_weights as weights;

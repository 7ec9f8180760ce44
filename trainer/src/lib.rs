//! `caption-trainer`: the workstation half of Caption, on libtorch through `tch`.
//!
//! Modules: [`prepare`] (the tutorial's text preparation), [`extract`] (image features
//! through [`encoders`]), [`train`] (the merge [`model`]), [`evaluate`] and [`scoring`]
//! (BLEU), [`caption`] (image files through a checkpoint), [`export`] (ONNX bundles written
//! by [`onnx`] and verified in the edge's engine), [`device`] (what libtorch sees).

pub mod attention;
pub mod caption;
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

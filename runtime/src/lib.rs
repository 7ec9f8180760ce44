//! `caption-runtime`: a model bundle run by tract. Loading checks the bundle against its
//! manifest, binds the graphs' tensors by the names in `caption_proto::manifest`, and
//! builds the encoder in the precision that is fastest and verified on this CPU
//! ([`precision`]); [`Engine`] then encodes images and decodes captions with the shared
//! search of `caption-proto`. `captiond` runs bundles with it, and the trainer's export
//! verifies them with the very same code.

pub mod bench;
pub mod dequantize;
pub mod engine;
pub mod evaluate;
pub mod precision;

pub use engine::{all_cores, Caption, Engine, EngineError, EngineOptions, StageTimes};
pub use precision::{CpuFeatures, Precision, PrecisionChoice};

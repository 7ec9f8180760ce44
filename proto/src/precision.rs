//! The encoder precision a user asks for (`[model] precision`, `--precision`): a word of
//! the config and CLI contract. Which precision `auto` becomes on a CPU is the runtime's
//! decision (`caption_runtime::precision`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What the user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The fastest verified precision for this CPU.
    #[default]
    Auto,
    /// The int8 graph as stored in the bundle.
    Int8,
    /// The bundle's graph with its int8 weights dequantised to f32 at load.
    F32,
}

impl Precision {
    pub const NAMES: [&'static str; 3] = ["auto", "int8", "f32"];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::Int8 => "int8",
            Precision::F32 => "f32",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown precision {0:?}: expected one of \"auto\", \"int8\", \"f32\"")]
pub struct UnknownPrecision(pub String);

impl FromStr for Precision {
    type Err = UnknownPrecision;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Precision::Auto),
            "int8" => Ok(Precision::Int8),
            "f32" => Ok(Precision::F32),
            other => Err(UnknownPrecision(other.to_owned())),
        }
    }
}

//! Transformer models running on resident QINS weights.

pub mod config;

pub use config::{Architecture, ModelConfig};

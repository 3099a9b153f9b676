//! The language-model side of saeperf: reading a llama GGUF (SmolLM2-135M-Instruct), its byte-level
//! BPE tokenizer, our own forward pass with a hook on the residual stream, harvesting activation
//! sets from the Brown corpus, splicing SAE reconstructions back in to measure loss recovered, and
//! the feature contexts researchers read.
//!
//! Everything runs on the CPU in f32 (weights are dequantized at load); candle supplies the
//! tensors and matmuls, the forward pass itself is written here so the hook point is ours.

pub mod contexts;
pub mod features;
pub mod gguf;
pub mod harvest;
pub mod loss;
pub mod model;
pub mod tokenizer;

pub use gguf::{GgufFile, LlamaConfig};
pub use loss::{loss_recovered, LmMetrics};
pub use model::{HookAction, Llama};
pub use tokenizer::Tokenizer;

use std::path::PathBuf;

/// Errors of the language-model code; each names the file or tensor involved.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    #[error("{path}: not a readable GGUF file: {what}")]
    BadGguf { path: PathBuf, what: String },
    #[error("{path}: unsupported model: {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: metadata key `{key}`: {what}")]
    Metadata {
        path: PathBuf,
        key: String,
        what: String,
    },
    #[error("{path}: tensor `{name}`: {what}")]
    Tensor {
        path: PathBuf,
        name: String,
        what: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

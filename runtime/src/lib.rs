//! engram: a runtime that lets a small language model keep learning on the user's device.
//!
//! Data flows one way: file bytes → [`gguf`] views → [`model`] (calling [`backend`] ops) →
//! [`Engine`].

#![warn(missing_docs)]

pub mod backend;
pub mod delta;
mod engine;
mod error;
pub mod gguf;
pub mod learn;
pub mod memory;
pub mod model;
pub mod quant;
pub mod sampling;
pub mod tokenizer;

pub use engine::{
    Device, Engine, EngineOptions, GenerateOptions, Generation, ImportReport, ReadGating,
    RevertReport, Session, StopReason, TextStream, log_softmax_at, read_keys_path,
};
pub use error::{Error, Result};
pub use sampling::SamplingConfig;
pub use tokenizer::{ChatMessage, Tokenizer};

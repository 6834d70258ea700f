//! engram: a runtime that lets a small language model keep learning on the user's device.
//!
//! Data flows one way, floor by floor: [`quant`] → [`gguf`] → [`tokenizer`] and [`backend`]
//! → [`memory`] → [`model`] and [`sampling`] → [`delta`] → [`learn`] → the engine
//! ([`Engine`]). A lower module never names a higher one (`tests/layering.rs` checks it),
//! and every module takes [`Error`] from `error.rs`.

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
    Conversation, Device, Engine, EngineOptions, GenerateOptions, Generation, ImportReport,
    LoopGuard, ReadGating, Reply, RevertReport, Session, SharedEngine, StopReason, TextStream,
    log_softmax_at, read_keys_path,
};
pub use error::{Error, Result};
pub use sampling::SamplingConfig;
pub use tokenizer::{ChatMessage, SystemPrompt, Tokenizer};

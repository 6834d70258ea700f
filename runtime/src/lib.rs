//! engram: a runtime that lets a small language model keep learning on the user's device.
//!
//! Data flows one way, floor by floor: `quant` → `gguf` → `tokenizer` and `backend` →
//! `memory` → `model` and `sampling` → `delta` → `learn` → the engine ([`Engine`]). A lower module never names a higher one (`tests/layering.rs` checks it),
//! and every module takes [`Error`] from `error.rs`.

//!
//! An app needs only the crate root: [`Engine`] (or [`SharedEngine`] for several threads),
//! its options and reports, facts ([`Fact`]), deltas ([`Delta`]) and the memory store
//! ([`MemoryStore`], made by [`Engine::retrofit`]). [`gguf`], [`quant`] and [`tokenizer`] are public
//! on their own (reading GGUF files, block formats, the model's tokenizer). The inner modules
//! are exported only with the `internals` feature, for the command-line tool and the tests.

#![warn(missing_docs)]
// Without `internals` some helpers of the inner modules serve only the tools and tests that
// enable it, and they and their re-exports look unused.
#![cfg_attr(not(feature = "internals"), allow(dead_code, unused_imports))]

/// Declares modules that are public with the `internals` feature and private without it.
macro_rules! inner_modules {
    ($($name:ident),* $(,)?) => {
        $(
            #[cfg(feature = "internals")]
            pub mod $name;
            #[cfg(not(feature = "internals"))]
            mod $name;
        )*
    };
}

inner_modules!(backend, delta, learn, memory, model, sampling);

mod engine;
mod error;
#[cfg(feature = "internals")]
pub mod fuzzing;
pub mod gguf;
pub mod quant;
pub mod tokenizer;

pub use backend::wgpu::{AdapterSummary, adapters as wgpu_adapters};
pub use backend::{CudaDeviceSummary, cuda_devices};
pub use delta::{
    Delta, DeltaPrecision, DeltaSignature, ImportedDelta, LearnedEntry, MemoryAccess, MemoryStore,
    PublicKey, SignaturePolicy, SigningKey, Snapshot, StoreKey, TrustedSigners, generate_key_files,
    sign_delta_file, verify_delta_file,
};
pub use engine::{
    BackgroundLearner, Conversation, DEFAULT_ABSTENTION, DEFAULT_TOPIC_COSINE, Device, Engine,
    EngineOptions, ForgetReport, GenerateOptions, Generation, ImportReport, LearnerEvent,
    LearnerReadGuard, LearningChat, LoopGuard, ReadGating, RememberReport, Reply, RevertReport,
    Session, SharedEngine, StopReason, TextStream, log_softmax_at, read_keys_path,
    reseal_store_file,
};
pub use error::{Error, ErrorKind, Result};
pub use learn::{
    Fact, FactReport, Init, LearnOptions, LearnReport, LearnTimings, Optimizer, RetrofitOptions,
    RetrofitProgress, TurnKind, classify_turn,
};
pub use memory::{DEFAULT_NOTE_READ_GATE, DEFAULT_READ_GATE, MemoryConfig, SlotScoring, SlotUsage};
pub use model::ModelConfig;
pub use sampling::SamplingConfig;
pub use tokenizer::{ChatMessage, SystemPrompt, Tokenizer};

//! The engine: a model file, its tokenizer and a backend, behind one easy API.
//!
//! Split by job: [`memory`] (attaching a store, the read gate, learning, checkpoints),
//! [`forget`] (one learned fact out exactly), [`deltas`] (export, import, revert) and
//! [`generate`] (sessions, sampling, streaming), [`background`] (learning while the app
//! answers).

mod background;
mod conversation;
mod deltas;
mod forget;
mod generate;
mod learning_chat;
mod memory;
mod shared;

pub use crate::backend::Device;
pub use background::{BackgroundLearner, LearnerEvent, LearnerReadGuard};
pub use conversation::{Conversation, DEFAULT_ABSTENTION, Reply};
pub use deltas::{ImportReport, RevertReport};
pub use forget::{ForgetReport, RememberReport};
pub use generate::{
    GenerateOptions, Generation, LoopGuard, Session, StopReason, TextStream, log_softmax_at,
};
pub use learning_chat::LearningChat;
pub use memory::{DEFAULT_TOPIC_COSINE, ReadGating, read_keys_path};
pub use shared::{SharedEngine, reseal_store_file};

use std::path::{Path, PathBuf};

use crate::backend::device::DeviceBackend;
use crate::backend::{Backend, open_backend};
use crate::delta::{MemoryAccess, MemoryStore, SignaturePolicy, StoreKey};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::learn::{RetrofitOptions, RetrofitProgress};
use crate::model::{Model, ModelConfig, fingerprint};
use crate::tokenizer::{SystemPrompt, Tokenizer};
use memory::AttachedMemory;

/// How an engine is opened.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Device to run on.
    pub device: Device,
    /// CPU worker threads (0 = one per core).
    pub threads: usize,
    /// Context window in tokens (0 = what the model was trained for).
    pub context: usize,
    /// Memory store to attach (made by `engram retrofit` for this model).
    pub memory: Option<PathBuf>,
    /// Whether the memory store is opened for writing (journaled, locked) or only read.
    pub memory_access: MemoryAccess,
    /// Whether reads of learned value rows are gated by the learned facts' keys.
    pub read_gate: ReadGating,
    /// What the chat template gets when a conversation has no system message: asking,
    /// chatting and learning's phrasings all follow it.
    pub system_prompt: SystemPrompt,
    /// Which deltas imports accept: any (a signature present must verify) or only those
    /// signed by a trusted key.
    pub delta_policy: SignaturePolicy,
    /// The key the memory store (with its journal and read keys) is encrypted under; `None`
    /// for a plain store. Stores made or saved by this engine are encrypted under it.
    pub store_key: Option<StoreKey>,
}

/// A loaded model ready to generate.
pub struct Engine {
    model: Model<DeviceBackend>,
    device_note: Option<String>,
    tokenizer: Tokenizer,
    gguf: Gguf,
    path: PathBuf,
    context: usize,
    memory: Option<AttachedMemory>,
    read_gating: ReadGating,
    delta_policy: SignaturePolicy,
    store_key: Option<StoreKey>,
}

impl Engine {
    /// Opens a GGUF model (memory-mapped; weights are not read until used).
    pub fn open(path: impl AsRef<Path>, options: &EngineOptions) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model file not found"),
            ));
        }
        let gguf = Gguf::open(path)?;
        let (backend, device_note) = open_backend(options.device, options.threads)?;
        let model = Model::load(&gguf, backend)?;
        let mut tokenizer = Tokenizer::from_gguf(&gguf)?;
        tokenizer.set_system_prompt(options.system_prompt.clone());
        if tokenizer.vocab_size() != model.config.vocab_size {
            return Err(Error::Model(format!(
                "tokenizer has {} tokens but the embedding table {}",
                tokenizer.vocab_size(),
                model.config.vocab_size
            )));
        }
        let trained = model.config.context_length;
        let context = if options.context == 0 {
            trained
        } else {
            options.context.min(trained)
        };
        let mut engine = Engine {
            model,
            device_note,
            tokenizer,
            gguf,
            path: path.to_owned(),
            context,
            memory: None,
            read_gating: options.read_gate,
            delta_policy: options.delta_policy.clone(),
            store_key: options.store_key.clone(),
        };
        options.read_gate.new_gate(engine.model.config.dim)?;
        if let Some(m) = &options.memory {
            engine.open_memory(m, options.memory_access)?;
        }
        Ok(engine)
    }

    /// The fingerprint of this model's weights (what a memory store must have been made for).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.gguf)
    }

    /// The model graph (for the tools and tests that measure its insides).
    #[cfg(feature = "internals")]
    pub fn model(&self) -> &Model<DeviceBackend> {
        &self.model
    }

    /// The model graph, mutable (tests write values through it directly).
    #[cfg(feature = "internals")]
    pub fn model_mut(&mut self) -> &mut Model<DeviceBackend> {
        &mut self.model
    }

    /// The device the model runs on, e.g. "cpu (2 threads)".
    pub fn device_name(&self) -> String {
        self.model.backend().name()
    }

    /// Why [`Device::Auto`] chose the CPU, when it did.
    pub fn device_note(&self) -> Option<&str> {
        self.device_note.as_deref()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The model's shape, as read from its GGUF metadata.
    pub fn model_config(&self) -> &ModelConfig {
        &self.model.config
    }

    /// Fits a memory layer into this model from `documents` (see [`RetrofitOptions`]) and
    /// returns the new store, values all zero; `progress` hears of each stage and may stop it
    /// by returning `false`. The engine itself is not changed.
    pub fn retrofit(
        &self,
        documents: &[String],
        options: &RetrofitOptions,
        progress: &mut dyn FnMut(RetrofitProgress) -> bool,
    ) -> Result<MemoryStore> {
        crate::learn::retrofit(
            &self.model,
            &self.tokenizer,
            &self.fingerprint(),
            documents,
            options,
            progress,
        )
    }

    /// The parsed model file.
    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    /// Path the model was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Context window in tokens.
    pub fn context(&self) -> usize {
        self.context
    }
}

//! The one error type every engram API returns.

use std::path::PathBuf;

/// Everything that can go wrong in engram, each variant naming what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A GGUF file is malformed; `field` names the part that failed the check.
    #[error("invalid GGUF ({field}): {reason}")]
    Gguf {
        /// The header field, metadata key or tensor the check failed on.
        field: String,
        /// Why the value was rejected.
        reason: String,
    },
    /// The file is well-formed but uses something engram does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The model's metadata or tensors do not describe a usable model.
    #[error("model: {0}")]
    Model(String),
    /// Building or running the tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be parsed or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// A memory store is malformed or does not belong to the model it is used with.
    #[error("memory store: {0}")]
    Memory(String),
    /// A delta file is malformed, damaged, or made for another base model or memory.
    #[error("delta: {0}")]
    Delta(String),
    /// A delta is unsigned or signed by a key the engine does not trust.
    #[error("untrusted: {0}")]
    Untrusted(String),
    /// Another process has the memory store open for writing.
    #[error("in use: {0}")]
    InUse(String),
    /// Long work was stopped by the caller (e.g. Ctrl-C); nothing was written.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// An earlier call on a shared engine panicked while holding it; open a new one.
    #[error("internal: {0}")]
    Internal(String),
    /// A caller-supplied argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The prompt does not fit into the model's context window.
    #[error("prompt has {tokens} tokens but the context holds {context}")]
    ContextOverflow {
        /// Tokens requested (prompt plus already cached).
        tokens: usize,
        /// The context length in tokens.
        context: usize,
    },
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The handful of kinds the faces report an [`Error`] as (a C status, a binding's exception
/// type): decided here once, so every face classifies the same error the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A file could not be read or written.
    Io,
    /// A model, store or delta file is malformed, unsupported, or belongs to another model.
    BadFile,
    /// Another process holds the memory store for writing.
    InUse,
    /// A delta's signature is missing or not from a trusted signer.
    Untrusted,
    /// The caller stopped long work; nothing was written.
    Interrupted,
    /// An earlier call failed internally; the engine must be opened again.
    Internal,
    /// An argument was out of range, or the prompt does not fit the context.
    InvalidArgument,
}

impl Error {
    /// Which of the faces' kinds this error is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } => ErrorKind::Io,
            Error::Gguf { .. }
            | Error::Unsupported(_)
            | Error::Model(_)
            | Error::Tokenizer(_)
            | Error::Template(_)
            | Error::Memory(_)
            | Error::Delta(_) => ErrorKind::BadFile,
            Error::InUse(_) => ErrorKind::InUse,
            Error::Untrusted(_) => ErrorKind::Untrusted,
            Error::Interrupted(_) => ErrorKind::Interrupted,
            Error::Internal(_) => ErrorKind::Internal,
            Error::InvalidArgument(_) | Error::ContextOverflow { .. } => ErrorKind::InvalidArgument,
        }
    }

    /// A malformed-GGUF error naming the field that failed.
    pub(crate) fn gguf(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Gguf {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An I/O error tagged with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

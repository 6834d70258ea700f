//! engram for Python, Kotlin and Swift, through uniffi: the engine as an object, reports as
//! records, one typed error, and callback interfaces for streaming and learning progress.
//!
//! The generated bindings live in `bindings/{python,kotlin,swift}`; `bindings/README.md`
//! says how to regenerate them.
//!
//! Threads: an [`Engram`] may be shared by many threads. Generation and asking share it (they
//! run side by side); learning, snapshots, imports, reverts, exports and checkpoints take it
//! exclusively, so they wait for running generations and vice versa. Dropping the object (or
//! `close()` in Kotlin, `del` in Python) releases the store's write lock.

use std::sync::{Arc, RwLockReadGuard, RwLockWriteGuard};

use engram::{
    Delta, DeltaPrecision, Engine, Error, ErrorKind, Fact, GenerateOptions, SharedEngine,
    SignaturePolicy, StoreKey,
};

uniffi::setup_scaffolding!("engram");

mod chat;

pub use chat::{Chat, MemoryListener};

/// Why a call failed. A flat error: each language sees the variant and its one-line message
/// (a `message` field would clash with Kotlin's `Throwable.message`).
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum EngramError {
    /// An argument was out of range, or the prompt does not fit the context.
    #[error("{0}")]
    InvalidArgument(String),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// A model, store or delta file is malformed, unsupported, or belongs to another model.
    #[error("{0}")]
    BadFile(String),
    /// The memory store is open for writing in another process.
    #[error("{0}")]
    InUse(String),
    /// A callback asked to stop.
    #[error("{0}")]
    Interrupted(String),
    /// An earlier call on this engine failed internally (a bug); open a new one.
    #[error("{0}")]
    Internal(String),
    /// A delta is unsigned or signed by a key this engine does not trust.
    #[error("{0}")]
    Untrusted(String),
}

impl From<Error> for EngramError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e.kind() {
            ErrorKind::Io => Self::Io(message),
            ErrorKind::BadFile => Self::BadFile(message),
            ErrorKind::InUse => Self::InUse(message),
            ErrorKind::Untrusted => Self::Untrusted(message),
            ErrorKind::Interrupted => Self::Interrupted(message),
            ErrorKind::Internal => Self::Internal(message),
            ErrorKind::InvalidArgument => Self::InvalidArgument(message),
        }
    }
}

/// Receives generated text piece by piece.
#[uniffi::export(callback_interface)]
pub trait TokenListener: Send + Sync {
    /// One piece of text (whole UTF-8 characters); return false to stop generating.
    fn on_token(&self, piece: String) -> bool;
}

/// Hears of every learning step; a fact's last step once the fact is durable.
#[uniffi::export(callback_interface)]
pub trait LearnListener: Send + Sync {
    /// `fact` and `step` count from 0; `loss` is the step's training loss. Return false to
    /// stop (a fact stopped before its last step keeps nothing of itself).
    fn on_step(&self, fact: u32, step: u32, loss: f64) -> bool;
}

/// How one fact went.
#[derive(Clone, Debug, uniffi::Record)]
pub struct FactResult {
    /// Phrasings trained on.
    pub examples: u32,
    /// Mean next-token loss over the answer tokens before learning (nats).
    pub loss_before: f64,
    /// The same after the last step.
    pub loss_after: f64,
    /// Memory rows changed.
    pub rows_changed: u32,
}

/// What a learning call did.
#[derive(Clone, Debug, uniffi::Record)]
pub struct LearnReport {
    /// One entry per fact.
    pub facts: Vec<FactResult>,
    /// Wall time of the call.
    pub seconds: f64,
}

/// What exporting a delta wrote.
#[derive(Clone, Debug, uniffi::Record)]
pub struct ExportReport {
    /// The delta's id (a content hash).
    pub id: String,
    /// Memory rows it carries.
    pub rows: u64,
    /// The facts learned in it, as text.
    pub facts: Vec<String>,
}

/// What importing a delta did.
#[derive(Clone, Debug, uniffi::Record)]
pub struct ImportReport {
    /// The delta's id.
    pub id: String,
    /// Rows it changed (0 when it was already imported).
    pub rows: u64,
    /// Of those, rows earlier imported deltas had changed too (the differences add up).
    pub overlapping: u64,
    /// It was imported before, so nothing changed.
    pub already_imported: bool,
}

/// What reverting a delta did.
#[derive(Clone, Debug, uniffi::Record)]
pub struct RevertReport {
    /// The delta's id.
    pub id: String,
    /// Rows put back exactly as they were before the import.
    pub exact: u64,
    /// Rows changed since the import: its difference was subtracted, keeping the later change.
    pub adjusted: u64,
}

/// A fact this store learned.
#[derive(Clone, Debug, uniffi::Record)]
pub struct LearnedFact {
    /// Its number in this store (what `forget` takes; 0: learned before facts were numbered).
    pub number: u64,
    /// The fact, as text.
    pub text: String,
    /// Unix seconds when learning it finished.
    pub learned_at: u64,
}

/// What forgetting a fact did.
#[derive(Clone, Debug, uniffi::Record)]
pub struct ForgetReport {
    /// The fact's number.
    pub number: u64,
    /// The fact, as text.
    pub text: String,
    /// Memory rows its change was taken out of.
    pub rows: u64,
}

/// What remembering a statement did.
#[derive(Clone, Debug, uniffi::Record)]
pub struct RememberReport {
    /// The earlier fact it replaced (forgotten first), if it changed one.
    pub replaced: Option<String>,
    /// Seconds learning it took.
    pub seconds: f64,
}

/// Whether `text`, a user's chat turn, states something to remember about them or their
/// world (not a question, request, supposition or chit-chat).
#[uniffi::export]
pub fn is_statement(text: String) -> bool {
    engram::classify_turn(&text) == engram::TurnKind::Statement
}

/// A named state of the memory.
#[derive(Clone, Debug, uniffi::Record)]
pub struct SnapshotInfo {
    /// Its name.
    pub name: String,
    /// Unix seconds when it was taken.
    pub created: u64,
}

/// A delta this store imported.
#[derive(Clone, Debug, uniffi::Record)]
pub struct ImportedDeltaInfo {
    /// The delta's id.
    pub id: String,
    /// The app label it carried.
    pub label: String,
    /// Unix seconds when it was imported.
    pub imported_at: u64,
}

/// The library version, e.g. "0.1.0".
#[uniffi::export]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").into()
}

/// Makes a new delta-signing key: the secret-key file `secret_path` (owner-only) and
/// `secret_path.pub`; neither may exist. Returns the public key (64 hex digits).
#[uniffi::export(default(label = ""))]
pub fn generate_signing_key(secret_path: String, label: String) -> Result<String, EngramError> {
    Ok(engram::generate_key_files(secret_path.as_ref(), &label)?.to_string())
}

/// Signs the delta file at `path` with the secret-key file `key_path`, in place (atomically).
#[uniffi::export]
pub fn sign_delta(path: String, key_path: String) -> Result<(), EngramError> {
    engram::sign_delta_file(path.as_ref(), key_path.as_ref(), None)?;
    Ok(())
}

/// Checks the delta file at `path` (checksum, signature) and, with `trusted_signers_path`,
/// that a key in that file signed it. Returns the signer (64 hex digits), or None if unsigned.
#[uniffi::export(default(trusted_signers_path = None))]
pub fn verify_delta(
    path: String,
    trusted_signers_path: Option<String>,
) -> Result<Option<String>, EngramError> {
    let delta = engram::verify_delta_file(
        path.as_ref(),
        trusted_signers_path.as_deref().map(AsRef::as_ref),
    )?;
    Ok(delta.signature.map(|s| s.signer.to_string()))
}

/// Encrypts the plain memory store at `memory_path` under the 32-byte `store_key` (journal
/// included), or with `decrypt` turns the store encrypted under it back into a plain one.
#[uniffi::export(default(decrypt = false))]
pub fn encrypt_store(
    memory_path: String,
    store_key: Vec<u8>,
    decrypt: bool,
) -> Result<(), EngramError> {
    let key = StoreKey::from_slice(&store_key)?;
    let (from, to) = if decrypt {
        (Some(&key), None)
    } else {
        (None, Some(&key))
    };
    engram::reseal_store_file(memory_path.as_ref(), from, to)?;
    Ok(())
}

/// A model (GGUF), its tokenizer and optionally a memory store to learn into.
#[derive(uniffi::Object)]
pub struct Engram {
    engine: Arc<SharedEngine>,
}

impl Engram {
    fn shared(&self) -> Result<RwLockReadGuard<'_, Engine>, EngramError> {
        Ok(self.engine.read()?)
    }

    fn exclusive(&self) -> Result<RwLockWriteGuard<'_, Engine>, EngramError> {
        Ok(self.engine.write()?)
    }

    fn learn(
        &self,
        fact: Fact,
        steps: u32,
        listener: Option<Box<dyn LearnListener>>,
    ) -> Result<LearnReport, EngramError> {
        let report = self
            .exclusive()?
            .learn_one(fact, steps as usize, &mut |f, s, loss| {
                listener
                    .as_ref()
                    .is_none_or(|l| l.on_step(f as u32, s as u32, loss))
            })?;
        Ok(LearnReport {
            facts: report
                .facts
                .iter()
                .map(|f| FactResult {
                    examples: f.examples as u32,
                    loss_before: f.loss_before,
                    loss_after: f.loss_after,
                    rows_changed: f.rows.len() as u32,
                })
                .collect(),
            seconds: report.total.as_secs_f64(),
        })
    }
}

#[uniffi::export]
impl Engram {
    /// Opens `model_path` (GGUF) and, if given, the memory store at `memory_path`. With
    /// `writable` the store is locked for this process and every change is journaled;
    /// `threads` = 0 uses one per core.
    /// `store_key` (32 bytes, e.g. from the OS keychain) opens a store encrypted at rest.
    #[uniffi::constructor(default(memory_path = None, writable = true, threads = 0, store_key = None))]
    pub fn open(
        model_path: String,
        memory_path: Option<String>,
        writable: bool,
        threads: u32,
        store_key: Option<Vec<u8>>,
    ) -> Result<Arc<Self>, EngramError> {
        let engine = SharedEngine::open_with_key(
            &model_path,
            memory_path.map(Into::into),
            writable,
            threads as usize,
            store_key.as_deref(),
        )?;
        Ok(Arc::new(Self {
            engine: Arc::new(engine),
        }))
    }

    /// Continues `prompt` greedily for at most `max_tokens` tokens, telling `listener` of each
    /// piece; returns the whole text.
    #[uniffi::method(default(listener = None))]
    pub fn generate(
        &self,
        prompt: String,
        max_tokens: u32,
        listener: Option<Box<dyn TokenListener>>,
    ) -> Result<String, EngramError> {
        let options = GenerateOptions {
            max_tokens: max_tokens as usize,
            ..Default::default()
        };
        let g = self.shared()?.generate(&prompt, &options, |piece| {
            listener
                .as_ref()
                .is_none_or(|l| l.on_token(piece.to_owned()))
        })?;
        Ok(g.text)
    }

    /// Asks `question` through the model's chat template, greedily.
    #[uniffi::method(default(max_tokens = 48))]
    pub fn ask(&self, question: String, max_tokens: u32) -> Result<String, EngramError> {
        Ok(self.shared()?.ask(&question, max_tokens as usize)?)
    }

    /// Learns a note such as "My sister Ana lives in Porto."; `steps` = 0 uses the default.
    #[uniffi::method(default(steps = 0, listener = None))]
    pub fn learn_note(
        &self,
        note: String,
        steps: u32,
        listener: Option<Box<dyn LearnListener>>,
    ) -> Result<LearnReport, EngramError> {
        self.learn(Fact::note(&note), steps, listener)
    }

    /// Learns a question and its answer; `steps` = 0 uses the default.
    #[uniffi::method(default(steps = 0, listener = None))]
    pub fn learn_qa(
        &self,
        question: String,
        answer: String,
        steps: u32,
        listener: Option<Box<dyn LearnListener>>,
    ) -> Result<LearnReport, EngramError> {
        self.learn(Fact::qa(&question, &answer), steps, listener)
    }

    /// Learns a statement the user made (e.g. in a chat) after forgetting the earlier fact it
    /// changes, if any ("We moved to Coimbra." replaces "We live in Braga.").
    pub fn remember(&self, statement: String) -> Result<RememberReport, EngramError> {
        let t = std::time::Instant::now();
        let r = self.exclusive()?.remember(
            &statement,
            &engram::LearnOptions::default(),
            &mut |_, _, _| true,
        )?;
        Ok(RememberReport {
            replaced: r.replaced.map(|f| f.text),
            seconds: t.elapsed().as_secs_f64(),
        })
    }

    /// Forgets one learned fact exactly, named by its number or by words of its text that
    /// match it alone: its change leaves the memory, its words leave the store's files.
    pub fn forget(&self, what: String) -> Result<ForgetReport, EngramError> {
        let r = self.exclusive()?.forget_matching(&what)?;
        Ok(ForgetReport {
            number: r.uid,
            text: r.text,
            rows: r.rows as u64,
        })
    }

    /// Names the memory's current state, so a later export can hold only what came after it.
    pub fn snapshot(&self, name: String) -> Result<(), EngramError> {
        Ok(self.exclusive()?.snapshot(&name)?)
    }

    /// Folds the journal into the store file: the changed rows and the history written in
    /// place, logged first so a crash part way is finished on the next open (an encrypted
    /// store is written whole, atomically).
    pub fn checkpoint(&self) -> Result<(), EngramError> {
        self.exclusive()?.checkpoint()?;
        Ok(())
    }

    /// Writes what was learned (since the beginning, or since snapshot `since`) to a delta
    /// file at `path`, in half precision when `half` is set.
    #[uniffi::method(default(since = None, half = false, label = ""))]
    pub fn export_delta(
        &self,
        path: String,
        since: Option<String>,
        half: bool,
        label: String,
    ) -> Result<ExportReport, EngramError> {
        let precision = if half {
            DeltaPrecision::F16
        } else {
            DeltaPrecision::F32
        };
        let delta = self
            .exclusive()?
            .export_delta(since.as_deref(), precision, &label)?;
        delta.write(&path)?;
        Ok(ExportReport {
            id: delta.id.clone(),
            rows: delta.rows.ids.len() as u64,
            facts: delta.learned.clone(),
        })
    }

    /// Imports the delta file at `path`; importing the same delta again changes nothing.
    pub fn import_delta(&self, path: String) -> Result<ImportReport, EngramError> {
        let delta = Delta::read(&path)?;
        let r = self.exclusive()?.import_delta(&delta)?;
        Ok(ImportReport {
            id: r.id,
            rows: r.rows as u64,
            overlapping: r.overlapping as u64,
            already_imported: r.already_imported,
        })
    }

    /// From now on imports only deltas signed by a key in the trusted-signers file at
    /// `trusted_signers_path`; None lifts the requirement.
    pub fn trust_signers(&self, trusted_signers_path: Option<String>) -> Result<(), EngramError> {
        let policy =
            SignaturePolicy::from_file(trusted_signers_path.as_deref().map(AsRef::as_ref))?;
        self.exclusive()?.set_delta_policy(policy);
        Ok(())
    }

    /// Reverts an imported delta, given its id (or a unique prefix) or its file.
    pub fn revert_delta(&self, id_or_path: String) -> Result<RevertReport, EngramError> {
        let r = self.exclusive()?.revert_delta_or_file(&id_or_path)?;
        Ok(RevertReport {
            id: r.id,
            exact: r.exact as u64,
            adjusted: r.adjusted as u64,
        })
    }

    /// The facts this store learned, oldest first.
    pub fn learned_facts(&self) -> Result<Vec<LearnedFact>, EngramError> {
        Ok(self
            .shared()?
            .learned_facts()
            .iter()
            .map(|f| LearnedFact {
                number: f.uid,
                text: f.text.clone(),
                learned_at: f.at,
            })
            .collect())
    }

    /// The store's snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>, EngramError> {
        Ok(self
            .shared()?
            .snapshots()
            .iter()
            .map(|s| SnapshotInfo {
                name: s.name.clone(),
                created: s.created,
            })
            .collect())
    }

    /// The deltas this store imported (and has not reverted), oldest first.
    pub fn imported_deltas(&self) -> Result<Vec<ImportedDeltaInfo>, EngramError> {
        Ok(self
            .shared()?
            .imported_deltas()
            .iter()
            .map(|d| ImportedDeltaInfo {
                id: d.id.clone(),
                label: d.label.clone(),
                imported_at: d.imported,
            })
            .collect())
    }
}

//! The face every binding translates: an engine behind a reader/writer lock, opened from
//! paths, with the calls the C ABI, uniffi (Swift, Kotlin, Python) and the CLI all offer.
//! Generation takes the lock shared (several at once); learning, snapshots, imports,
//! reverts, exports and checkpoints take it exclusively.

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::deltas::RevertReport;
use super::{Engine, EngineOptions};
use crate::delta::{Delta, MemoryAccess, StoreKey, open_store};
use crate::error::{Error, Result};
use crate::learn::{Fact, LearnOptions, LearnReport};

impl EngineOptions {
    /// Options for a face that opens a model with an optional memory store: `writable`
    /// locks the store for this process and journals every change; `threads` 0 = one per core.
    pub fn for_store(memory: Option<PathBuf>, writable: bool, threads: usize) -> Self {
        EngineOptions {
            threads,
            memory,
            memory_access: if writable {
                MemoryAccess::Write
            } else {
                MemoryAccess::Read
            },
            ..Default::default()
        }
    }
}

impl LearnOptions {
    /// The defaults with `steps` gradient steps per fact (0 keeps the default count).
    pub fn with_steps(steps: usize) -> Self {
        let mut options = LearnOptions::default();
        if steps > 0 {
            options.steps = steps;
        }
        options
    }
}

impl Engine {
    /// Reverts an imported delta named by its id, or by the path of its delta file.
    pub fn revert_delta_or_file(&mut self, id_or_path: &str) -> Result<RevertReport> {
        let id = if Path::new(id_or_path).is_file() {
            Delta::read(id_or_path)?.id
        } else {
            id_or_path.to_owned()
        };
        self.revert_delta(&id)
    }

    /// Learns one fact with the default settings and `steps` steps (0 = the default),
    /// reporting each step to `on_step(fact, step, loss)` (return `false` to stop).
    pub fn learn_one(
        &mut self,
        fact: Fact,
        steps: usize,
        on_step: &mut dyn FnMut(usize, usize, f64) -> bool,
    ) -> Result<LearnReport> {
        self.learn(&[fact], &LearnOptions::with_steps(steps), on_step)
    }
}

/// Encrypts a plain store (`from` = None, `to` = its new key), decrypts one (`from` = its key,
/// `to` = None) or changes its key, journal included; its read keys are dropped and rebuilt
/// on the next open. A crash leaves the store whole under the old key or the new one.
pub fn reseal_store_file(
    path: &Path,
    from: Option<&StoreKey>,
    to: Option<&StoreKey>,
) -> Result<()> {
    let (store, mut durable) = open_store(path, MemoryAccess::Write, from)?;
    durable.reseal(store, to.cloned())?;
    let keys = super::read_keys_path(path);
    match std::fs::remove_file(&keys) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(keys, e)),
        _ => Ok(()),
    }
}

/// An engine several threads of an app may call at once.
pub struct SharedEngine {
    engine: RwLock<Engine>,
}

impl From<Engine> for SharedEngine {
    /// Shares an engine already open.
    fn from(engine: Engine) -> Self {
        SharedEngine {
            engine: RwLock::new(engine),
        }
    }
}

impl SharedEngine {
    /// Opens `model` and, if given, the memory store at `memory` (see
    /// [`EngineOptions::for_store`]).
    pub fn open(
        model: impl AsRef<Path>,
        memory: Option<PathBuf>,
        writable: bool,
        threads: usize,
    ) -> Result<Self> {
        Self::open_with_key(model, memory, writable, threads, None)
    }

    /// [`Self::open`] for a store encrypted at rest under `store_key` (32 bytes, e.g. from the
    /// OS keychain); `None` opens a plain store.
    pub fn open_with_key(
        model: impl AsRef<Path>,
        memory: Option<PathBuf>,
        writable: bool,
        threads: usize,
        store_key: Option<&[u8]>,
    ) -> Result<Self> {
        let mut options = EngineOptions::for_store(memory, writable, threads);
        options.store_key = store_key.map(StoreKey::from_slice).transpose()?;
        Ok(SharedEngine {
            engine: RwLock::new(Engine::open(model, &options)?),
        })
    }

    /// The engine for reading (generation, asking, listing): shared with other readers.
    pub fn read(&self) -> Result<RwLockReadGuard<'_, Engine>> {
        self.engine.read().map_err(|_| poisoned())
    }

    /// The engine for changing the memory: waits for every other call to finish.
    pub fn write(&self) -> Result<RwLockWriteGuard<'_, Engine>> {
        self.engine.write().map_err(|_| poisoned())
    }
}

fn poisoned() -> Error {
    Error::Internal("an earlier call on this engine failed internally; open a new one".into())
}

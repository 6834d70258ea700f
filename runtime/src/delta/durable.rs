//! Opening a store with its journal replayed, the writer's lock, and durable changes.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use super::history::{Applied, Change, RowAccess, StoreHistory};
use super::journal::{Journal, Record, journal_path, read_journal};
use super::sealed::StoreKey;
use super::store::MemoryStore;
use crate::error::{Error, Result};

/// How a store is opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryAccess {
    /// Any number of readers; changes stay in this process and are never written.
    #[default]
    Read,
    /// One writer at a time (a lock); every change is journaled before it is reported done.
    Write,
}

/// The lock file of a store: `<store>.lock`.
pub fn lock_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The durable side of an attached store: its journal, its lock and its history.
pub struct DurableMemory {
    path: PathBuf,
    journal: Option<Journal>,
    _lock: Option<File>,
    next_seq: u64,
    key: Option<StoreKey>,
    /// The store's snapshots, imports and learned facts, kept current with every change.
    pub history: StoreHistory,
    /// What opening noticed and repaired (e.g. a torn journal tail), for the user to see.
    pub warnings: Vec<String>,
}

/// Global rows of a host-side store.
impl RowAccess for MemoryStore {
    fn dim(&self) -> usize {
        self.dim
    }
    fn total_rows(&self) -> usize {
        MemoryStore::total_rows(self)
    }
    fn read_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let (dim, slots) = (self.dim, self.config.slots());
        let mut out = Vec::with_capacity(ids.len() * dim);
        for &id in ids {
            let (l, s) = (id as usize / slots, id as usize % slots);
            let layer = self
                .layers
                .get(l)
                .ok_or_else(|| Error::Memory(format!("row {id} is outside the memory")))?;
            out.extend_from_slice(&layer.values[s * dim..(s + 1) * dim]);
        }
        Ok(out)
    }
    fn write_rows(&mut self, ids: &[u32], values: &[f32]) -> Result<()> {
        let (dim, slots) = (self.dim, self.config.slots());
        for (k, &id) in ids.iter().enumerate() {
            let (l, s) = (id as usize / slots, id as usize % slots);
            let layer = self
                .layers
                .get_mut(l)
                .ok_or_else(|| Error::Memory(format!("row {id} is outside the memory")))?;
            layer.values[s * dim..(s + 1) * dim].copy_from_slice(&values[k * dim..(k + 1) * dim]);
        }
        Ok(())
    }
}

/// Opens the store at `path` and replays its journal; with [`MemoryAccess::Write`] also takes
/// the writer's lock and cuts a torn journal tail so appends continue after the last intact
/// record. The returned store's `history` is moved into the [`DurableMemory`]. An encrypted
/// store needs its `key`; its journal and checkpoints stay encrypted under it.
pub fn open_store(
    path: &Path,
    access: MemoryAccess,
    key: Option<&StoreKey>,
) -> Result<(MemoryStore, DurableMemory)> {
    let lock = match access {
        MemoryAccess::Read => None,
        MemoryAccess::Write => Some(take_lock(path)?),
    };
    let mut store = MemoryStore::open_sealed(path, key)?;
    let mut history = std::mem::take(&mut store.history);
    let jpath = journal_path(path);
    let contents = read_journal(&jpath, key)?;
    let mut warnings = Vec::new();
    let mut next_seq = history.journal_seq + 1;
    let mut valid_len = 0u64;
    let mut offset = 0u64;
    let mut stopped = false;
    for (record, &len) in contents.records.iter().zip(&contents.sizes) {
        offset += len;
        if record.seq < next_seq {
            // Already in the checkpoint (a crash came between its rename and the journal reset).
            valid_len = offset;
            continue;
        }
        if record.seq != next_seq {
            warnings.push(format!(
                "{}: record {} follows {}; it and everything after it were dropped",
                jpath.display(),
                record.seq,
                next_seq - 1
            ));
            stopped = true;
            break;
        }
        if let Err(e) = history
            .check(&record.change, &store)
            .and_then(|_| history.apply(&record.change, &mut store))
        {
            warnings.push(format!(
                "{}: record {} could not be applied ({e}); it and everything after it were dropped",
                jpath.display(),
                record.seq
            ));
            stopped = true;
            break;
        }
        next_seq += 1;
        valid_len = offset;
    }
    if !stopped && contents.dropped_bytes > 0 {
        warnings.push(format!(
            "{}: a torn or damaged tail of {} bytes after record {} was dropped",
            jpath.display(),
            contents.dropped_bytes,
            next_seq - 1
        ));
    }
    let journal = match access {
        MemoryAccess::Read => None,
        MemoryAccess::Write => Some(Journal::open(&jpath, valid_len, key.cloned())?),
    };
    Ok((
        store,
        DurableMemory {
            path: path.to_owned(),
            journal,
            _lock: lock,
            next_seq,
            key: key.cloned(),
            history,
            warnings,
        },
    ))
}

fn take_lock(path: &Path) -> Result<File> {
    let lpath = lock_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lpath)
        .map_err(|e| Error::io(&lpath, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::InUse(format!(
            "{} is open for writing by another engine or process (lock {}); close it there first",
            path.display(),
            lpath.display()
        ))),
        Err(TryLockError::Error(e)) => Err(Error::io(&lpath, e)),
    }
}

impl DurableMemory {
    /// A memory that lives only in this process (no file behind it).
    pub fn in_process(history: StoreHistory) -> Self {
        DurableMemory {
            path: PathBuf::new(),
            journal: None,
            _lock: None,
            next_seq: history.journal_seq + 1,
            key: None,
            history,
            warnings: Vec::new(),
        }
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key the store is encrypted under, if it is.
    pub fn key(&self) -> Option<&StoreKey> {
        self.key.as_ref()
    }

    /// Whether changes are journaled (opened with [`MemoryAccess::Write`]).
    pub fn is_writable(&self) -> bool {
        self.journal.is_some()
    }

    /// Size of the journal in bytes (0 when read-only).
    pub fn journal_len(&self) -> u64 {
        self.journal.as_ref().map_or(0, Journal::len)
    }

    /// The sequence number the last change got.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Checks `change`, journals it (when writable), then applies it to the history and `rows`.
    pub fn commit(&mut self, change: Change, rows: &mut dyn RowAccess) -> Result<Applied> {
        self.history.check(&change, rows)?;
        self.append(&change)?;
        self.history.apply(&change, rows)
    }

    /// Journals a learning step whose rows are already written (`before` = their old values).
    pub fn commit_written(
        &mut self,
        ids: &[u32],
        before: &[f32],
        after: &[f32],
        dim: usize,
    ) -> Result<()> {
        let change = Change::Rows(super::RowSet {
            ids: ids.to_vec(),
            values: after.to_vec(),
        });
        self.append(&change)?;
        self.history.rows_changed(ids, before, dim);
        Ok(())
    }

    fn append(&mut self, change: &Change) -> Result<()> {
        if let Some(j) = &mut self.journal {
            j.append(&Record {
                seq: self.next_seq,
                change: change.clone(),
            })?;
        }
        self.next_seq += 1;
        Ok(())
    }

    /// Writes `store` (the full current state; its history is replaced by ours) as the new
    /// checkpoint, atomically, then empties the journal. Each layer's values are given apart
    /// (borrowed from where the model reads them), so `store` needs no copy of them (its own
    /// values are ignored).
    pub fn checkpoint_with_values(
        &mut self,
        mut store: MemoryStore,
        values: &[&[f32]],
    ) -> Result<()> {
        let Some(journal) = &mut self.journal else {
            return Err(Error::InvalidArgument(format!(
                "{} was opened read-only; open it for writing to checkpoint",
                self.path.display()
            )));
        };
        store.history = self.history.clone();
        store.history.journal_seq = self.next_seq - 1;
        store.save_with_values_sealed(&self.path, values, self.key.as_ref())?;
        journal.clear()?;
        self.history.journal_seq = self.next_seq - 1;
        Ok(())
    }

    /// Re-encrypts the store under `to` (`None`: stored plain): the journal is first folded
    /// into the store under the current key, so at every moment the files on disk are one
    /// consistent store under one key (a crash leaves the old form or the new one).
    pub fn reseal(&mut self, mut store: MemoryStore, to: Option<StoreKey>) -> Result<()> {
        let Some(journal) = &mut self.journal else {
            return Err(Error::InvalidArgument(format!(
                "{} was opened read-only; open it for writing to change its key",
                self.path.display()
            )));
        };
        store.history = self.history.clone();
        store.history.journal_seq = self.next_seq - 1;
        store.save_sealed(&self.path, self.key.as_ref())?;
        journal.clear()?;
        self.history.journal_seq = self.next_seq - 1;
        store.save_sealed(&self.path, to.as_ref())?;
        *journal = Journal::open(&journal_path(&self.path), 0, to.clone())?;
        self.key = to;
        Ok(())
    }
}

//! Opening a store with its journal replayed, the writer's lock, and durable changes.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use super::fact_log::FactLog;
use super::history::{Applied, Change, LearnedEntry, RowAccess, RowSet, StoreHistory};
use super::in_place::{CheckpointImage, FileLayout, crash_point, write_in_place};
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
    /// Where a checkpoint can write the store in place (`None`: it writes a new file).
    layout: Option<FileLayout>,
    /// Rows changed since the last checkpoint: what the next one writes.
    dirty: BTreeSet<u32>,
    /// The store's snapshots, imports and learned facts, kept current with every change.
    pub history: StoreHistory,
    /// Each learned fact's net change, for forgetting it.
    pub facts: FactLog,
    /// What opening noticed and repaired (e.g. a torn journal tail), for the user to see.
    pub warnings: Vec<String>,
}

/// What a checkpoint wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Whether only the changed rows and the history were written, in place (a plain store),
    /// or the whole store as a new file (an encrypted or older store).
    pub in_place: bool,
    /// Value rows written.
    pub rows: usize,
    /// Bytes written to disk: the logged image and the rows and history in place, or the
    /// new file.
    pub bytes_written: u64,
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
            layer.values.write_row(s, &values[k * dim..(k + 1) * dim]);
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
    let jpath = journal_path(path);
    // A reader holds no lock: a writer may checkpoint in place while it reads. The writer logs
    // its image before it touches the store and empties the journal after, so a journal that
    // looks the same before and after the store was read means the two fit; else read again.
    let mut tries = 0;
    let (contents, (mut store, layout)) = loop {
        let seen = journal_state(&jpath);
        let contents = read_journal(&jpath, key)?;
        // A checkpoint image in the journal means a checkpoint in place may have been cut
        // short: its history and rows are the store's, whatever the file holds.
        let opened = MemoryStore::open_with(
            path,
            key,
            contents.image.as_ref(),
            access == MemoryAccess::Write,
        );
        tries += 1;
        if lock.is_some() || journal_state(&jpath) == seen || tries == 5 {
            break (contents, opened?);
        }
    };
    let image = contents.image.as_ref();
    let mut dirty = BTreeSet::new();
    if let Some(image) = image {
        image
            .rows
            .validate(store.dim, store.total_rows(), "checkpoint image")
            .map_err(|e| Error::Memory(format!("{}: {e}", jpath.display())))?;
        store.write_rows(&image.rows.ids, &image.rows.values)?;
        dirty.extend(&image.rows.ids);
    }
    let mut history = std::mem::take(&mut store.history);
    let mut warnings = Vec::new();
    let mut next_seq = history.journal_seq + 1;
    let mut valid_len = contents.image_end;
    let mut offset = contents.image_end;
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
        let written = history.rows_written(&record.change);
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
        dirty.extend(written);
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
            layout,
            dirty,
            history,
            facts: FactLog::new(Some(path), key.cloned(), access == MemoryAccess::Write),
            warnings,
        },
    ))
}

/// The journal's length and modification time (`None` when it is missing).
fn journal_state(jpath: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(jpath).ok()?;
    Some((m.len(), m.modified().ok()?))
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
            layout: None,
            dirty: BTreeSet::new(),
            history,
            facts: FactLog::new(None, None, false),
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
        let written = self.history.rows_written(&change);
        self.append(&change)?;
        let applied = self.history.apply(&change, rows)?;
        self.dirty.extend(written);
        Ok(applied)
    }

    /// Journals a learned fact whose rows the learner already moved from `before` by `diff`
    /// (each row `add_diff(before, diff)`, as replaying the record computes it), after
    /// keeping its change in the fact log (so a journaled fact can always be forgotten). The
    /// fact gets the next number ([`StoreHistory::next_fact_uid`]), whatever `entry` had.
    pub fn commit_learned(
        &mut self,
        mut entry: LearnedEntry,
        ids: &[u32],
        before: &[f32],
        diff: &[f32],
    ) -> Result<()> {
        entry.uid = self.history.next_fact_uid();
        let diff = RowSet {
            ids: ids.to_vec(),
            values: diff.to_vec(),
        };
        self.facts.append(&entry, &diff)?;
        let change = Change::LearnedFact { entry, diff };
        self.append(&change)?;
        if let Change::LearnedFact { entry, .. } = &change {
            self.history.fact_learned(entry, ids, before);
        }
        self.dirty.extend(ids);
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

    /// Makes the current state the store file's, then empties the journal. A plain store
    /// gets the rows changed since the last checkpoint and its history written in place,
    /// after they are logged to the journal (a crash part way is redone on open); an
    /// encrypted or format-1 store is written whole as a new file, atomically. `store` is the
    /// attached store (its history is replaced by ours); each layer's values are given apart
    /// (borrowed from where the model reads them), so `store` needs no copy of them (its own
    /// values are ignored).
    pub fn checkpoint_with_values(
        &mut self,
        mut store: MemoryStore,
        values: &[&[f32]],
    ) -> Result<CheckpointReport> {
        let Some(journal) = &mut self.journal else {
            return Err(Error::InvalidArgument(format!(
                "{} was opened read-only; open it for writing to checkpoint",
                self.path.display()
            )));
        };
        let upto = self.next_seq - 1;
        let mut history = self.history.clone();
        history.journal_seq = upto;
        // In place when the file is of the form this build writes for its key.
        let in_place = self
            .layout
            .as_ref()
            .filter(|l| l.sealed.is_some() == self.key.is_some());
        let report = match in_place {
            Some(layout) => {
                if journal.is_empty() && self.dirty.is_empty() {
                    return Ok(CheckpointReport {
                        in_place: true,
                        ..Default::default()
                    });
                }
                let ids: Vec<u32> = self.dirty.iter().copied().collect();
                let rows = RowSet {
                    values: gather_rows(values, &ids, layout)?,
                    ids,
                };
                let image = CheckpointImage {
                    upto,
                    rows,
                    history: store.history_tail(&history)?,
                };
                let logged = journal.append_image(&image)?;
                crash_point("logged");
                let written = write_in_place(
                    &self.path,
                    layout,
                    &image.rows,
                    &image.history,
                    self.key.as_ref(),
                )?;
                crash_point("written");
                CheckpointReport {
                    in_place: true,
                    rows: image.rows.len(),
                    bytes_written: logged + written,
                }
            }
            None => {
                store.history = history;
                let sealed = store.save_with_layout(&self.path, values, self.key.as_ref())?;
                self.layout = match sealed {
                    Some(layout) => Some(layout),
                    None => store.file_layout(&self.path)?,
                };
                CheckpointReport {
                    in_place: false,
                    rows: store.total_rows(),
                    bytes_written: std::fs::metadata(&self.path)
                        .map_err(|e| Error::io(&self.path, e))?
                        .len(),
                }
            }
        };
        journal.clear()?;
        self.history.journal_seq = upto;
        self.dirty.clear();
        Ok(report)
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
        let values: Vec<&[f32]> = store.layers.iter().map(|l| &l.values[..]).collect();
        let sealed = store.save_with_layout(&self.path, &values, to.as_ref())?;
        *journal = Journal::open(&journal_path(&self.path), 0, to.clone())?;
        self.layout = match sealed {
            Some(layout) => Some(layout),
            None => store.file_layout(&self.path)?,
        };
        self.dirty.clear();
        // The facts after the store: a crash between the two leaves them under the old key,
        // which `forget` then reports (nothing is lost from the store).
        self.facts.reseal(to.clone())?;
        self.key = to;
        Ok(())
    }
}

/// The values of rows `ids` (global, ascending) from each layer's values.
fn gather_rows(values: &[&[f32]], ids: &[u32], layout: &FileLayout) -> Result<Vec<f32>> {
    let dim = layout.dim;
    let mut out = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        let (l, slot) = (id as usize / layout.slots, id as usize % layout.slots);
        let row = values
            .get(l)
            .and_then(|v| v.get(slot * dim..(slot + 1) * dim))
            .ok_or_else(|| Error::Memory(format!("row {id} is outside the memory")))?;
        out.extend_from_slice(row);
    }
    Ok(out)
}

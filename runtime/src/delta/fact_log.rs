//! Each learned fact's net change, kept beside the store (`<store>.facts`) so one fact can be
//! forgotten exactly long after a checkpoint folded it into the store's rows.
//!
//! The file is a sequence of journal-framed records (`Record { seq: fact number, change:
//! LearnedFact }`, sealed under the store key when the store is encrypted), appended and
//! fsynced before the fact's journal record: a fact the journal holds is always in the log
//! (a crash between the two leaves a record no fact names, which the next fact with that number
//! supersedes: the last record of a number wins). Forgetting a fact overwrites its records in
//! place — magic `"EGF0"` and zeros, length kept so reading steps over them — and fsyncs, so
//! its words and numbers leave the disk blocks, not only the index.
//!
//! A memory with no file behind it, or a store opened read-only, keeps the facts it learns in
//! the process (and still reads the file for those learned before).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::history::{Change, LearnedEntry, RowSet};
use super::journal::Record;
use super::sealed::StoreKey;
use crate::error::{Error, Result};

/// An erased record's magic (its length field is kept; everything after it is zero).
const ERASED: &[u8; 4] = b"EGF0";

/// The fact log of a store: `<store>.facts`.
pub fn fact_log_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".facts");
    PathBuf::from(name)
}

/// Where learned facts' net changes are kept for [`FactLog::find`] and erased from: the
/// store's `<store>.facts` when the store is open for writing, else (read-only, or no file
/// behind the memory) this process, with the file still read for facts learned before.
pub struct FactLog {
    /// `<store>.facts`, if the memory has a store file.
    path: Option<PathBuf>,
    /// The store's key, if the store is encrypted.
    key: Option<StoreKey>,
    /// Whether new facts go to the file (the store is open for writing).
    writable: bool,
    /// Facts learned in this process that are not in the file: (number, change).
    in_process: Vec<(u64, RowSet)>,
}

impl FactLog {
    /// The log of the store at `store` (`None`: a memory with no file), written to only
    /// when `writable`.
    pub fn new(store: Option<&Path>, key: Option<StoreKey>, writable: bool) -> Self {
        FactLog {
            path: store.map(fact_log_path),
            key,
            writable,
            in_process: Vec::new(),
        }
    }

    /// The file written to, when there is one and the store is writable.
    fn file(&self) -> Option<&Path> {
        self.path.as_deref().filter(|_| self.writable)
    }

    /// Keeps fact `entry`'s net change `diff` (durably, in the file, when writable).
    pub fn append(&mut self, entry: &LearnedEntry, diff: &RowSet) -> Result<()> {
        let Some(path) = self.file() else {
            self.in_process.push((entry.uid, diff.clone()));
            return Ok(());
        };
        let record = Record {
            seq: entry.uid,
            change: Change::LearnedFact {
                entry: entry.clone(),
                diff: diff.clone(),
            },
        };
        let bytes = record.encode_with(self.key.as_ref())?;
        let io = |e| Error::io(path, e);
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_data().map_err(io)?;
        if created {
            sync_parent(path)?;
        }
        Ok(())
    }

    /// The net change of fact `uid` (its last record), or `None` when none is kept.
    pub fn find(&self, uid: u64) -> Result<Option<RowSet>> {
        if let Some((_, d)) = self.in_process.iter().rev().find(|(u, _)| *u == uid) {
            return Ok(Some(d.clone()));
        }
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let mut found = None;
        for (_, record) in read_records(path, self.key.as_ref())? {
            if let (true, Change::LearnedFact { diff, .. }) = (record.seq == uid, record.change) {
                found = Some(diff);
            }
        }
        Ok(found)
    }

    /// Drops fact `uid` from this process and overwrites its records in the file (see the
    /// module notes) with an fsync when the store is writable; returns how many records
    /// went.
    pub fn erase(&mut self, uid: u64) -> Result<usize> {
        let before = self.in_process.len();
        self.in_process.retain(|(u, _)| *u != uid);
        let mut erased = before - self.in_process.len();
        let Some(path) = self.file() else {
            return Ok(erased);
        };
        let at: Vec<(u64, usize)> = read_records(path, self.key.as_ref())?
            .into_iter()
            .filter(|(_, r)| r.seq == uid)
            .map(|(place, _)| place)
            .collect();
        if at.is_empty() {
            return Ok(erased);
        }
        let io = |e| Error::io(path, e);
        let mut file = OpenOptions::new().write(true).open(path).map_err(io)?;
        for &(offset, len) in &at {
            // Magic, then the body length as it was, then zeros over body and checksum.
            let mut blank = vec![0u8; len];
            blank[..4].copy_from_slice(ERASED);
            blank[4..8].copy_from_slice(&((len - 16) as u32).to_le_bytes());
            file.seek(SeekFrom::Start(offset)).map_err(io)?;
            file.write_all(&blank).map_err(io)?;
        }
        file.sync_data().map_err(io)?;
        erased += at.len();
        Ok(erased)
    }
}

impl FactLog {
    /// Rewrites the file's records under `to` (`None`: plain), atomically, and reads and
    /// writes under it from now on: what `keys encrypt-store` / `decrypt-store` do to the
    /// store, done to its facts too, so no fact's words stay readable beside an encrypted
    /// store. Erased records are dropped.
    pub fn reseal(&mut self, to: Option<StoreKey>) -> Result<()> {
        if let Some(path) = self.file() {
            let records = read_records(path, self.key.as_ref())?;
            if !records.is_empty() {
                let mut bytes = Vec::new();
                for (_, record) in records {
                    bytes.extend(record.encode_with(to.as_ref())?);
                }
                super::file::write_atomic(path, &bytes)?;
            } else if path.exists() {
                std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
            }
        }
        self.key = to;
        Ok(())
    }
}

/// Every intact record of the log at `path` with its place (offset, length); erased records
/// are stepped over, and reading stops at a torn tail (a crash during an append: that fact
/// never reached the journal). A missing log is empty.
fn read_records(path: &Path, key: Option<&StoreKey>) -> Result<Vec<((u64, usize), Record)>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    }
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        if &bytes[at..at + 4] == ERASED {
            let body = u32::from_le_bytes([
                bytes[at + 4],
                bytes[at + 5],
                bytes[at + 6],
                bytes[at + 7],
            ]) as usize;
            at += 16 + body;
            continue;
        }
        match Record::decode_with(&bytes[at..], key) {
            Some((record, n)) => {
                out.push(((at as u64, n), record));
                at += n;
            }
            None => break,
        }
    }
    Ok(out)
}

/// Makes a new file's directory entry durable.
fn sync_parent(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uid: u64, text: &str) -> (LearnedEntry, RowSet) {
        let diff = RowSet {
            ids: vec![uid as u32, uid as u32 + 10],
            values: vec![0.5, -0.25, 1.0, 2.0],
        };
        (
            LearnedEntry {
                at: 1,
                text: text.into(),
                rows: diff.ids.clone(),
                uid,
                replaced: Vec::new(),
            },
            diff,
        )
    }

    #[test]
    fn erased_facts_leave_no_trace_and_the_rest_are_still_found() {
        let dir = std::env::temp_dir().join(format!("engram-fact-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for key in [None, Some(StoreKey::from_bytes([7; 32]))] {
            let path = dir.join("s.engram.facts");
            let _ = std::fs::remove_file(&path);
            let mut log = FactLog::new(Some(&dir.join("s.engram")), key.clone(), true);
            for (uid, text) in [(1, "Ana lives in Porto"), (2, "Bruno is my dog"), (3, "x")] {
                let (e, d) = entry(uid, text);
                log.append(&e, &d).unwrap();
            }
            // A later record of the same number wins (a crash orphaned the first).
            let (e, mut d) = entry(3, "y");
            d.values[0] = 9.0;
            log.append(&e, &d).unwrap();
            assert_eq!(log.find(3).unwrap().unwrap().values[0], 9.0);
            assert_eq!(log.erase(2).unwrap(), 1);
            assert_eq!(log.find(2).unwrap(), None);
            assert_eq!(log.find(1).unwrap(), Some(entry(1, "").1));
            assert_eq!(log.find(3).unwrap().unwrap().values[0], 9.0);
            let bytes = std::fs::read(&path).unwrap();
            assert!(!bytes.windows(5).any(|w| w == b"Bruno"), "the text is gone");
            if key.is_none() {
                assert!(bytes.windows(5).any(|w| w == b"Porto"), "the others stay");
            }
            // A torn tail (a crash in an append) is not an error; what came before stays.
            std::fs::write(&path, [&bytes[..], &bytes[..20]].concat()).unwrap();
            assert_eq!(log.find(1).unwrap(), Some(entry(1, "").1));
            // Under another key (or none): every kept fact still found, none readable plain
            // when sealed.
            let other = match key {
                None => Some(StoreKey::from_bytes([9; 32])),
                Some(_) => None,
            };
            log.reseal(other.clone()).unwrap();
            assert_eq!(log.find(1).unwrap(), Some(entry(1, "").1));
            assert_eq!(log.find(3).unwrap().unwrap().values[0], 9.0);
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(other.is_none(), bytes.windows(5).any(|w| w == b"Porto"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

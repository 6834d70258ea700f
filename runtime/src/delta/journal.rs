//! The append-only journal beside a store: one checksummed record per change, fsynced before
//! the change is reported done.
//!
//! Record layout (little-endian): `"EGJR"`, body length `u32`, body, xxh3-64 of the body.
//! Body: sequence number `u64`, kind `u8`, then the kind's fields (strings and row sets are
//! length-prefixed). A record that is cut short or fails its checksum ends the journal: it
//! and everything after it are dropped, never applied. In an encrypted store's journal the
//! magic is `"EGJX"` and the body is sealed under the store key (see `sealed.rs`).
//!
//! A learned fact is one record with its rows' net change, each difference stored as f16
//! when every one of them is an f16 value (the learner rounds them so) and as f32 otherwise:
//! the record always gives back exactly the values the learner wrote. A checkpoint that
//! writes the store in place first appends a [`CheckpointImage`] (kind 7), which stands for
//! every record before it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use half::f16;

use super::history::{Change, LearnedEntry, RowSet};
use super::in_place::CheckpointImage;
use super::sealed::StoreKey;
use crate::error::{Error, Result};

const RECORD_MAGIC: &[u8; 4] = b"EGJR";
const SEALED_RECORD_MAGIC: &[u8; 4] = b"EGJX";
/// Largest body a record may claim (a few thousand rows of a wide model fit easily).
const MAX_BODY: u32 = 1 << 30;

/// One journal record: a change and its place in the store's history.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// 1 for the first change after the store was created, then consecutive.
    pub seq: u64,
    /// What changed.
    pub change: Change,
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend(v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend(v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend(s.as_bytes());
    }
    fn rows(&mut self, r: &RowSet) {
        self.u32(r.ids.len() as u32);
        for &id in &r.ids {
            self.u32(id);
        }
        self.u32(r.values.len() as u32);
        for &v in &r.values {
            self.0.extend(v.to_le_bytes());
        }
    }
    /// Values as f16 (width byte 2) when each is exactly an f16 value, else as f32 (4).
    fn values_exact(&mut self, values: &[f32]) {
        let half = values
            .iter()
            .all(|&v| f16::from_f32(v).to_f32().to_bits() == v.to_bits());
        self.u8(if half { 2 } else { 4 });
        self.u32(values.len() as u32);
        for &v in values {
            if half {
                self.0.extend(f16::from_f32(v).to_le_bytes());
            } else {
                self.0.extend(v.to_le_bytes());
            }
        }
    }
    fn ids(&mut self, ids: &[u32]) {
        self.u32(ids.len() as u32);
        for &id in ids {
            self.u32(id);
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len())?;
        let bytes: &'a [u8] = self.bytes;
        let s = &bytes[self.at..end];
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn rows(&mut self) -> Option<RowSet> {
        let n = self.u32()? as usize;
        let ids = self
            .take(n.checked_mul(4)?)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let m = self.u32()? as usize;
        let values = self
            .take(m.checked_mul(4)?)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Some(RowSet { ids, values })
    }
    fn ids(&mut self) -> Option<Vec<u32>> {
        let n = self.u32()? as usize;
        Some(
            self.take(n.checked_mul(4)?)?
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
    fn values_exact(&mut self) -> Option<Vec<f32>> {
        let width = self.u8()?;
        let n = self.u32()? as usize;
        let bytes = self.take(n.checked_mul(usize::from(width))?)?;
        match width {
            2 => Some(
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            4 => Some(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// What one journal entry holds: a change, or a checkpoint's image.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    /// A change to the store.
    Record(Record),
    /// A checkpoint in place, logged before it started.
    Image(CheckpointImage),
}

impl Entry {
    /// Decodes one entry at the start of `bytes` (sealed under `key` when given): the entry
    /// and its length, or `None` if it is cut short, damaged or not an entry.
    pub fn decode_with(bytes: &[u8], key: Option<&StoreKey>) -> Option<(Entry, usize)> {
        let (body, total) = open_frame(bytes, key)?;
        let mut b = Reader {
            bytes: &body,
            at: 0,
        };
        let seq = b.u64()?;
        let entry = if body.get(8) == Some(&7) {
            b.u8()?;
            let rows = b.rows()?;
            let n = b.u32()? as usize;
            let history = b.take(n)?.to_vec();
            Entry::Image(CheckpointImage {
                upto: seq,
                rows,
                history,
            })
        } else {
            Entry::Record(Record {
                seq,
                change: decode_change(&mut b)?,
            })
        };
        (b.at == body.len()).then_some((entry, total))
    }
}

impl CheckpointImage {
    /// The image's bytes as a journal entry, sealed under `key` when given.
    pub fn encode_with(&self, key: Option<&StoreKey>) -> Result<Vec<u8>> {
        let mut w = Writer(Vec::new());
        w.u64(self.upto);
        w.u8(7);
        w.rows(&self.rows);
        w.u32(self.history.len() as u32);
        w.0.extend_from_slice(&self.history);
        seal_frame(&w.0, key)
    }
}

fn seal_frame(body: &[u8], key: Option<&StoreKey>) -> Result<Vec<u8>> {
    Ok(match key {
        None => frame(RECORD_MAGIC, body),
        Some(k) => frame(SEALED_RECORD_MAGIC, &k.seal_record(body)?),
    })
}

/// The body of the entry at the start of `bytes` (opened when sealed) and the entry's length.
fn open_frame(bytes: &[u8], key: Option<&StoreKey>) -> Option<(Vec<u8>, usize)> {
    let mut r = Reader { bytes, at: 0 };
    let magic = r.take(4)?;
    let want = if key.is_some() {
        SEALED_RECORD_MAGIC
    } else {
        RECORD_MAGIC
    };
    if magic != want {
        return None;
    }
    let len = r.u32()?;
    if len > MAX_BODY {
        return None;
    }
    let body = r.take(len as usize)?;
    let sum = r.u64()?;
    if xxh3_64(body) != sum {
        return None;
    }
    let body = match key {
        None => body.to_vec(),
        Some(k) => k.open_record(body)?,
    };
    Some((body, r.at))
}

impl Record {
    /// The record's bytes, framing and checksum included.
    pub fn encode(&self) -> Vec<u8> {
        frame(RECORD_MAGIC, &self.body())
    }

    /// The record's bytes, its body sealed under `key` when the store is encrypted.
    pub fn encode_with(&self, key: Option<&StoreKey>) -> Result<Vec<u8>> {
        seal_frame(&self.body(), key)
    }

    fn body(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        w.u64(self.seq);
        match &self.change {
            Change::Rows(r) => {
                w.u8(1);
                w.rows(r);
            }
            Change::Learned(e) => {
                w.u8(2);
                w.u64(e.at);
                w.str(&e.text);
                w.u32(e.rows.len() as u32);
                for &r in &e.rows {
                    w.u32(r);
                }
            }
            Change::LearnedFact { entry, diff } => {
                w.u8(6);
                w.u64(entry.at);
                w.str(&entry.text);
                // The fact's own rows are nearly always the rows it changed: said in one byte.
                if entry.rows == diff.ids {
                    w.u8(1);
                } else {
                    w.u8(0);
                    w.ids(&entry.rows);
                }
                w.ids(&diff.ids);
                w.values_exact(&diff.values);
                w.u64(entry.uid);
                // Only an update says what it replaced: other facts' records end at the number,
                // as they did before updates kept it (2026-12-08).
                if !entry.replaced.is_empty() {
                    w.u32(entry.replaced.len() as u32);
                    for text in &entry.replaced {
                        w.str(text);
                    }
                }
            }
            Change::Snapshot { name, created } => {
                w.u8(3);
                w.str(name);
                w.u64(*created);
            }
            Change::Import {
                id,
                label,
                imported,
                diff,
                learned,
                learned_rows,
            } => {
                w.u8(4);
                w.str(id);
                w.str(label);
                w.u64(*imported);
                w.rows(diff);
                w.u32(learned.len() as u32);
                for text in learned {
                    w.str(text);
                }
                w.u32(learned_rows.len() as u32);
                for rows in learned_rows {
                    w.u32(rows.len() as u32);
                    for &r in rows {
                        w.u32(r);
                    }
                }
            }
            Change::Revert { id } => {
                w.u8(5);
                w.str(id);
            }
            Change::Forget { uid, diff } => {
                w.u8(8);
                w.u64(*uid);
                w.ids(&diff.ids);
                w.values_exact(&diff.values);
            }
        }
        w.0
    }

    /// Decodes one record at the start of `bytes`: the record and its length, or `None` if
    /// it is cut short, damaged or not a record.
    pub fn decode(bytes: &[u8]) -> Option<(Record, usize)> {
        Self::decode_with(bytes, None)
    }

    /// [`Self::decode`] for a journal whose records are sealed under `key` (if given); a
    /// checkpoint image is not a record (`None`: read entries with [`Entry::decode_with`]).
    pub fn decode_with(bytes: &[u8], key: Option<&StoreKey>) -> Option<(Record, usize)> {
        match Entry::decode_with(bytes, key)? {
            (Entry::Record(r), n) => Some((r, n)),
            (Entry::Image(_), _) => None,
        }
    }
}

/// The change a record's body holds after its sequence number.
fn decode_change(b: &mut Reader<'_>) -> Option<Change> {
    let body_len = b.bytes.len();
    let change = match b.u8()? {
            1 => Change::Rows(b.rows()?),
            2 => Change::Learned(LearnedEntry {
                at: b.u64()?,
                text: b.str()?,
                // Records written before facts kept their rows end here.
                rows: if b.at == body_len {
                    Vec::new()
                } else {
                    (0..b.u32()?).map(|_| b.u32()).collect::<Option<_>>()?
                },
                uid: 0,
                replaced: Vec::new(),
            }),
            3 => Change::Snapshot {
                name: b.str()?,
                created: b.u64()?,
            },
            4 => Change::Import {
                id: b.str()?,
                label: b.str()?,
                imported: b.u64()?,
                diff: b.rows()?,
                // Records written before imports kept their facts end here.
                learned: if b.at == body_len {
                    Vec::new()
                } else {
                    (0..b.u32()?).map(|_| b.str()).collect::<Option<_>>()?
                },
                // And those written before they kept the facts' rows, here.
                learned_rows: if b.at == body_len {
                    Vec::new()
                } else {
                    let mut lists = Vec::new();
                    for _ in 0..b.u32()? {
                        let n = b.u32()?;
                        lists.push((0..n).map(|_| b.u32()).collect::<Option<Vec<u32>>>()?);
                    }
                    lists
                },
            },
            5 => Change::Revert { id: b.str()? },
            6 => {
                let at = b.u64()?;
                let text = b.str()?;
                let own = match b.u8()? {
                    1 => None,
                    0 => Some(b.ids()?),
                    _ => return None,
                };
                let ids = b.ids()?;
                let values = b.values_exact()?;
                // Records written before facts were numbered (2026-12-06) end here.
                let uid = if b.at == body_len { 0 } else { b.u64()? };
                // A fact that replaced none ends here.
                let replaced = if b.at == body_len {
                    Vec::new()
                } else {
                    (0..b.u32()?).map(|_| b.str()).collect::<Option<_>>()?
                };
                Change::LearnedFact {
                    entry: LearnedEntry {
                        at,
                        text,
                        rows: own.unwrap_or_else(|| ids.clone()),
                        uid,
                        replaced,
                    },
                    diff: RowSet { ids, values },
                }
            }
            8 => {
                let uid = b.u64()?;
                let ids = b.ids()?;
                let values = b.values_exact()?;
                Change::Forget {
                    uid,
                    diff: RowSet { ids, values },
                }
            }
            _ => return None,
        };
    Some(change)
}

fn frame(magic: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    out.extend(magic);
    out.extend((body.len() as u32).to_le_bytes());
    out.extend(body);
    out.extend(xxh3_64(body).to_le_bytes());
    out
}

/// The journal file of a store: `<store>.journal`.
pub fn journal_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}

/// What reading a journal found.
#[derive(Debug, Default)]
pub struct JournalContents {
    /// The last checkpoint image, if a checkpoint in place was logged and the journal not
    /// emptied after it (a crash came first): it stands for every record before it.
    pub image: Option<CheckpointImage>,
    /// Bytes up to the end of that image (0 without one).
    pub image_end: u64,
    /// Intact records after the last image, in file order.
    pub records: Vec<Record>,
    /// Each record's size in the file (bytes).
    pub sizes: Vec<u64>,
    /// Bytes of intact records (where the next record goes).
    pub valid_len: u64,
    /// Bytes after them that were dropped (a torn or damaged tail).
    pub dropped_bytes: u64,
}

/// Reads every intact record of the journal at `path` (a missing journal is empty); records
/// are sealed under `key` when the store is encrypted. A journal of the other kind (sealed
/// when no key is given, or plain when one is) is an error, never a dropped tail.
pub fn read_journal(path: &Path, key: Option<&StoreKey>) -> Result<JournalContents> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(path, e)),
    }
    let other_kind = match key {
        Some(_) => RECORD_MAGIC,
        None => SEALED_RECORD_MAGIC,
    };
    if bytes.starts_with(other_kind) {
        return Err(Error::Memory(format!(
            "{}: the journal is {} but {}",
            path.display(),
            if key.is_some() {
                "not encrypted"
            } else {
                "encrypted"
            },
            if key.is_some() {
                "a store key was given"
            } else {
                "no store key was given (--store-key-file or ENGRAM_STORE_KEY)"
            }
        )));
    }
    let mut out = JournalContents::default();
    let mut at = 0;
    while at < bytes.len() {
        match Entry::decode_with(&bytes[at..], key) {
            Some((Entry::Record(record), n)) => {
                out.records.push(record);
                out.sizes.push(n as u64);
                at += n;
            }
            Some((Entry::Image(image), n)) => {
                out.records.clear();
                out.sizes.clear();
                out.image = Some(image);
                at += n;
                out.image_end = at as u64;
            }
            None => break,
        }
    }
    out.valid_len = at as u64;
    out.dropped_bytes = (bytes.len() - at) as u64;
    Ok(out)
}

/// An open journal that appends durably.
pub struct Journal {
    file: File,
    path: PathBuf,
    len: u64,
    key: Option<StoreKey>,
}

impl Journal {
    /// Opens (creating) the journal at `path` for appending after its first `valid_len`
    /// bytes; anything beyond them (a torn tail) is cut off first. With `key` every record
    /// is sealed.
    pub fn open(path: &Path, valid_len: u64, key: Option<StoreKey>) -> Result<Self> {
        let io = |e| Error::io(path, e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        if file.metadata().map_err(io)?.len() != valid_len {
            file.set_len(valid_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::Start(valid_len)).map_err(io)?;
        sync_parent(path)?;
        Ok(Journal {
            file,
            path: path.to_owned(),
            len: valid_len,
            key,
        })
    }

    /// Appends a record and waits until it is on disk.
    pub fn append(&mut self, record: &Record) -> Result<()> {
        let bytes = record.encode_with(self.key.as_ref())?;
        self.append_bytes(&bytes)
    }

    /// Appends a checkpoint image and waits until it is on disk; returns its size in bytes.
    pub fn append_image(&mut self, image: &CheckpointImage) -> Result<u64> {
        let bytes = image.encode_with(self.key.as_ref())?;
        self.append_bytes(&bytes)?;
        Ok(bytes.len() as u64)
    }

    fn append_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let io = |e| Error::io(&self.path, e);
        if let Err(e) = self
            .file
            .write_all(bytes)
            .and_then(|_| self.file.sync_data())
        {
            // Leave no partial record behind for the next append to follow.
            let _ = self.file.set_len(self.len);
            let _ = self.file.seek(SeekFrom::Start(self.len));
            return Err(io(e));
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Empties the journal (after a checkpoint made its records part of the store).
    pub fn clear(&mut self) -> Result<()> {
        let io = |e| Error::io(&self.path, e);
        self.file.set_len(0).map_err(io)?;
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        self.len = 0;
        Ok(())
    }

    /// Current size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the journal holds no records.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Makes a file's creation or rename durable by syncing its directory.
pub fn sync_parent(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record {
                seq: 1,
                change: Change::Rows(RowSet {
                    ids: vec![3, 9],
                    values: vec![1.0, -2.5, 0.125, 7.0],
                }),
            },
            Record {
                seq: 2,
                change: Change::Learned(LearnedEntry {
                    at: 17,
                    text: "Q: x? A: y".into(),
                    rows: vec![3, 9, 40],
                    uid: 0,
                    replaced: Vec::new(),
                }),
            },
            Record {
                seq: 3,
                change: Change::Snapshot {
                    name: "before trip".into(),
                    created: 99,
                },
            },
            Record {
                seq: 4,
                change: Change::Import {
                    id: "ab12".into(),
                    label: "notes".into(),
                    imported: 5,
                    diff: RowSet {
                        ids: vec![1],
                        values: vec![0.5, 0.25],
                    },
                    learned: vec!["Q: a A: b".into(), "a note".into()],
                    learned_rows: vec![vec![1], Vec::new()],
                },
            },
            Record {
                seq: 5,
                change: Change::Revert { id: "ab12".into() },
            },
            // Differences that are f16 values are kept as f16, others as f32; both exactly.
            Record {
                seq: 6,
                change: Change::LearnedFact {
                    entry: LearnedEntry {
                        at: 8,
                        text: "My sister Ana lives in Porto.".into(),
                        rows: vec![2, 7],
                        uid: 0,
                        replaced: Vec::new(),
                    },
                    diff: RowSet {
                        ids: vec![2, 7],
                        values: vec![0.5, -0.000_122_070_31, 1024.0, 0.0],
                    },
                },
            },
            Record {
                seq: 7,
                change: Change::LearnedFact {
                    entry: LearnedEntry {
                        at: 9,
                        text: "Q: y? A: z".into(),
                        rows: vec![1, 2, 3],
                        uid: 12,
                        replaced: vec!["We live in Braga.".into(), "We moved to Évora.".into()],
                    },
                    diff: RowSet {
                        ids: vec![4],
                        values: vec![0.1, 1e-9],
                    },
                },
            },
            Record {
                seq: 8,
                change: Change::Forget {
                    uid: 12,
                    diff: RowSet {
                        ids: vec![4],
                        values: vec![0.1, 1e-9],
                    },
                },
            },
        ]
    }

    #[test]
    fn a_learned_fact_takes_two_bytes_a_difference_when_they_are_f16_values() {
        let s = sample();
        let half = s[5].encode().len();
        let mut wide = s[5].clone();
        if let Change::LearnedFact { diff, .. } = &mut wide.change {
            diff.values[0] = 0.1;
        }
        assert_eq!(wide.encode().len(), half + 4 * 2, "one f32 value makes all four f32");
    }

    #[test]
    fn a_checkpoint_image_stands_for_the_records_before_it() {
        let dir = std::env::temp_dir().join(format!("engram-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j");
        let image = CheckpointImage {
            upto: 3,
            rows: RowSet {
                ids: vec![3],
                values: vec![1.5, 2.5],
            },
            history: b"tail".to_vec(),
        };
        let s = sample();
        let mut bytes: Vec<u8> = s[..3].iter().flat_map(Record::encode).collect();
        bytes.extend(image.encode_with(None).unwrap());
        let image_end = bytes.len() as u64;
        bytes.extend(s[3].encode());
        std::fs::write(&path, &bytes).unwrap();
        let read = read_journal(&path, None).unwrap();
        assert_eq!(read.image, Some(image.clone()));
        assert_eq!(read.image_end, image_end);
        assert_eq!(read.records, vec![s[3].clone()]);
        // A torn image is a torn tail: the records before it stand.
        std::fs::write(&path, &bytes[..image_end as usize - 3]).unwrap();
        let read = read_journal(&path, None).unwrap();
        assert_eq!((read.image, read.records.len()), (None, 3));
        // Sealed, it reads back only with its key.
        let key = StoreKey::from_bytes([2; 32]);
        std::fs::write(&path, image.encode_with(Some(&key)).unwrap()).unwrap();
        assert_eq!(read_journal(&path, Some(&key)).unwrap().image, Some(image));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn records_round_trip_and_every_cut_or_flip_is_caught() {
        let all: Vec<u8> = sample().iter().flat_map(Record::encode).collect();
        let dir = std::env::temp_dir().join(format!("engram-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j");
        std::fs::write(&path, &all).unwrap();
        let read = read_journal(&path, None).unwrap();
        assert_eq!(read.records, sample());
        assert_eq!(read.dropped_bytes, 0);
        let first = sample()[0].encode().len();
        // Any cut inside the second record keeps exactly the first.
        let second_end = first + sample()[1].encode().len();
        for cut in first..second_end {
            std::fs::write(&path, &all[..cut]).unwrap();
            let r = read_journal(&path, None).unwrap();
            assert_eq!(r.records.len(), 1, "cut at {cut}");
            assert_eq!(r.valid_len, first as u64);
        }
        // Any single flipped bit in the first record drops everything from it on.
        for byte in 0..first {
            let mut bad = all.clone();
            bad[byte] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                read_journal(&path, None).unwrap().records.is_empty(),
                "flip at {byte}"
            );
        }
        // Appending after a torn tail cuts the tail first.
        std::fs::write(&path, &all[..first + 5]).unwrap();
        let r = read_journal(&path, None).unwrap();
        let mut j = Journal::open(&path, r.valid_len, None).unwrap();
        j.append(&sample()[1]).unwrap();
        let r = read_journal(&path, None).unwrap();
        assert_eq!(r.records, sample()[..2].to_vec());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod sealed_tests {
    use super::*;

    #[test]
    fn a_sealed_journal_reads_back_only_with_its_key_and_holds_no_plain_text() {
        let key = StoreKey::from_bytes([1; 32]);
        let record = Record {
            seq: 1,
            change: Change::Learned(LearnedEntry {
                at: 3,
                text: "My dentist is Dr Okafor.".into(),
                rows: Vec::new(),
                uid: 0,
                replaced: Vec::new(),
            }),
        };
        let bytes = record.encode_with(Some(&key)).unwrap();
        assert!(!bytes.windows(6).any(|w| w == b"Okafor"));
        let dir = std::env::temp_dir().join(format!("engram-sealed-j-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j");
        std::fs::write(&path, &bytes).unwrap();
        let read = read_journal(&path, Some(&key)).unwrap();
        assert_eq!(read.records, vec![record.clone()]);
        assert_eq!(read.sizes, vec![bytes.len() as u64]);
        let err = read_journal(&path, None).unwrap_err();
        assert!(err.to_string().contains("encrypted"), "{err}");
        std::fs::write(&path, record.encode()).unwrap();
        let err = read_journal(&path, Some(&key)).unwrap_err();
        assert!(err.to_string().contains("not encrypted"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

//! Checkpoints that write only what changed, in place.
//!
//! A plain store (format 2) keeps its history after the tensor data, framed as
//! `blob · blob length u64 · xxh3-64 of blob · "EGHT"`, where the blob is a small GGUF holding
//! the history's keys and row tensors. A checkpoint then rewrites only the value rows changed
//! since the last one and this tail, at fixed offsets. Before touching the store it logs the
//! rows' new values and the new tail to the journal as one record (a [`CheckpointImage`]):
//! the journal is the redo log, as a write-ahead log is in SQLite. A crash while the store is
//! being written leaves the image in the journal; opening applies it again (it holds whole
//! values, so applying it twice is the same as once) and the store is whole.

use std::fs::{File, OpenOptions};
use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

use super::history::RowSet;
use super::sealed::StoreKey;
use super::sealed_store::SealedRows;
use crate::error::{Error, Result};

const TAIL_MAGIC: &[u8; 4] = b"EGHT";
/// Length, checksum and magic after the blob.
const FOOTER: usize = 20;

/// Environment variable naming a point of a checkpoint in place where the process aborts, as
/// a crash there would stop it: how the crash tests reach each point (`logged`, `rows-half`,
/// `rows`, `tail-half`, `written`). Never set outside tests.
pub const CRASH_POINT_VAR: &str = "ENGRAM_TEST_CRASH_AT";

/// Aborts the process when [`CRASH_POINT_VAR`] names `point`.
pub(crate) fn crash_point(point: &str) {
    if std::env::var(CRASH_POINT_VAR).is_ok_and(|p| p == point) {
        eprintln!("{CRASH_POINT_VAR}={point}: aborting here");
        std::process::abort();
    }
}

/// Where a plain store file keeps what checkpoints rewrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileLayout {
    /// File offset of each memory layer's value rows (row-major f32).
    pub values_at: Vec<u64>,
    /// File offset of the history tail (the end of the tensor data).
    pub history_at: u64,
    /// Width of a row.
    pub dim: usize,
    /// Rows per layer.
    pub slots: usize,
    /// Where the sealed rows and history lie in an encrypted store (`"ENGRAMX2"`); `None`
    /// for a plain one.
    pub sealed: Option<SealedRows>,
}

/// What a checkpoint logs before it writes the store in place: enough to finish it after a
/// crash.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointImage {
    /// The last journal record the checkpoint contains.
    pub upto: u64,
    /// Every row changed since the previous checkpoint, with its whole new value.
    pub rows: RowSet,
    /// The store's new history tail, framed as it lies in the file.
    pub history: Vec<u8>,
}

/// Frames a history blob as the tail of a store file.
pub fn frame_history(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(blob.len() + FOOTER);
    out.extend_from_slice(blob);
    out.extend((blob.len() as u64).to_le_bytes());
    out.extend(xxh3_64(blob).to_le_bytes());
    out.extend(TAIL_MAGIC);
    out
}

/// The history blob framed at the end of `tail`, or `None` when the frame is missing, cut
/// short or fails its checksum (a tail write a crash interrupted).
pub fn unframe_history(tail: &[u8]) -> Option<&[u8]> {
    let footer_at = tail.len().checked_sub(FOOTER)?;
    let footer = &tail[footer_at..];
    if &footer[16..] != TAIL_MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(footer[..8].try_into().ok()?);
    let sum = u64::from_le_bytes(footer[8..16].try_into().ok()?);
    let start = footer_at.checked_sub(usize::try_from(len).ok()?)?;
    let blob = &tail[start..footer_at];
    (xxh3_64(blob) == sum).then_some(blob)
}

/// Writes `rows` and the framed history `tail` into the store at `path` in place (sealed
/// under `key` in an encrypted store) and waits until they are on disk. Returns the bytes
/// written.
pub fn write_in_place(
    path: &Path,
    layout: &FileLayout,
    rows: &RowSet,
    tail: &[u8],
    key: Option<&StoreKey>,
) -> Result<u64> {
    let io = |e| Error::io(path, e);
    let file = OpenOptions::new().write(true).open(path).map_err(io)?;
    small_cache_pieces(&file);
    if let Some(sealed) = &layout.sealed {
        let key = key.ok_or_else(|| {
            Error::Internal("an encrypted store's checkpoint needs its key".into())
        })?;
        let pieces = key.seal_pieces(sealed, layout.dim, rows, tail)?;
        let mut written = 0;
        let (tail_piece, row_pieces) = pieces.split_last().expect("the history is last");
        for (i, (at, piece)) in row_pieces.iter().enumerate() {
            write_at(&file, piece, *at).map_err(io)?;
            written += piece.len() as u64;
            if i + 1 == row_pieces.len() / 2 {
                crash_point("rows-half");
            }
        }
        crash_point("rows");
        let (at, piece) = tail_piece;
        let half = piece.len() / 2;
        write_at(&file, &piece[..half], *at).map_err(io)?;
        crash_point("tail-half");
        write_at(&file, &piece[half..], at + half as u64).map_err(io)?;
        file.set_len(at + piece.len() as u64).map_err(io)?;
        file.sync_all().map_err(io)?;
        return Ok(written + piece.len() as u64);
    }
    let row_bytes = layout.dim * 4;
    let mut written = 0u64;
    let mut i = 0;
    while i < rows.len() {
        // Rows with consecutive ids in one layer lie side by side: one write for the run.
        let first = rows.ids[i] as usize;
        let layer = first / layout.slots;
        let mut end = i + 1;
        while end < rows.len()
            && rows.ids[end] as usize == first + (end - i)
            && (rows.ids[end] as usize) / layout.slots == layer
        {
            end += 1;
        }
        let at = layout.values_at.get(layer).ok_or_else(|| {
            Error::Memory(format!("row {first} is outside the memory"))
        })? + ((first % layout.slots) * row_bytes) as u64;
        let bytes: Vec<u8> = rows.values[i * layout.dim..end * layout.dim]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        write_at(&file, &bytes, at).map_err(io)?;
        written += bytes.len() as u64;
        if i < rows.len() / 2 && end >= rows.len() / 2 {
            crash_point("rows-half");
        }
        i = end;
    }
    crash_point("rows");
    let half = tail.len() / 2;
    write_at(&file, &tail[..half], layout.history_at).map_err(io)?;
    crash_point("tail-half");
    write_at(&file, &tail[half..], layout.history_at + half as u64).map_err(io)?;
    file.set_len(layout.history_at + tail.len() as u64)
        .map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(written + tail.len() as u64)
}

/// Drops the store file's clean cached pages (its values were copied out when it was opened)
/// and read-ahead on it, so that a checkpoint's scattered row writes dirty small pieces of the
/// page cache: after a sequential read or copy, ext4 on Linux 6.18 caches a file in large
/// pieces, and each 2 KB row write then sent tens of KB to the disk.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn small_cache_pieces(file: &File) {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: posix_fadvise takes plain integers; `fd` stays open for both calls. It only
    // advises: a failure changes nothing but the write amplification, so it is not checked.
    unsafe {
        libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
        libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_RANDOM);
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn small_cache_pieces(_: &File) {}

#[cfg(unix)]
fn write_at(file: &File, bytes: &[u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, at)
}

#[cfg(not(unix))]
fn write_at(mut file: &File, bytes: &[u8], at: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(at))?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_history_reads_back_and_any_cut_or_flip_is_caught() {
        let blob = b"GGUF history keys".to_vec();
        let mut file = b"tensor data".to_vec();
        file.extend(frame_history(&blob));
        assert_eq!(unframe_history(&file), Some(&blob[..]));
        for cut in 0..file.len() {
            assert_eq!(unframe_history(&file[..cut]), None, "cut at {cut}");
        }
        for at in 11..file.len() {
            let mut bad = file.clone();
            bad[at] ^= 0x04;
            assert_ne!(unframe_history(&bad), Some(&blob[..]), "flip at {at}");
        }
    }
}

//! f32 values held on the host: owned, or a copy-on-write mapping of an f32 tensor's bytes in
//! a file. A memory store's value table is 604 MB of which a session reads and changes a few
//! thousand rows; mapped, only the pages those rows lie in take memory, and the file is never
//! changed through the mapping (changed pages become private copies).

use std::fs::File;
use std::ops::{Deref, DerefMut};

use memmap2::{MmapMut, MmapOptions};

/// f32 values on the host, readable and writable as one slice.
pub enum F32Buffer {
    /// Values in an ordinary allocation.
    Owned(Vec<f32>),
    /// A private copy-on-write mapping of an f32 tensor in a file.
    Mapped(MappedF32),
}

/// A private (copy-on-write) mapping of `len` f32 values at an offset of a file, read as rows
/// of `dim`, with the rows that may hold something (nonzero in the file, or written since)
/// marked, so reads of rows known to be zero and the search for nonzero rows leave the
/// other rows' pages untouched.
pub struct MappedF32 {
    map: MmapMut,
    len: usize,
    dim: usize,
    live: Vec<bool>,
}

impl MappedF32 {
    /// Maps `len` f32 values at byte `offset` of `file` privately, as rows of `dim` of which
    /// those marked in `nonzero` (one flag per row, from a scan of the file) hold something.
    /// `None` where they cannot be read in place: a big-endian host, a misaligned offset, a
    /// shape that does not fit, or a failed mapping (the caller then copies them).
    pub(crate) fn map(
        file: &File,
        offset: u64,
        len: usize,
        dim: usize,
        nonzero: Vec<bool>,
    ) -> Option<Self> {
        let fits = dim > 0 && len > 0 && len.is_multiple_of(dim) && nonzero.len() == len / dim;
        if cfg!(target_endian = "big") || !offset.is_multiple_of(4) || !fits {
            return None;
        }
        // SAFETY: the mapping is private, so writes through it never reach the file. A store
        // file is changed in place only by the process that holds its writer's lock (this one
        // when it maps), only at the rows it changed itself, which it already holds as private
        // copies, and it is never cut shorter than its values; anything else replaces the file
        // by renaming, which leaves this mapping on the old file. (Another program truncating
        // the file under a live writer would take the mapping's pages, private ones included:
        // the journal still holds every change since the last checkpoint.)
        let map = unsafe {
            MmapOptions::new()
                .offset(offset)
                .len(len * 4)
                .map_copy(file)
        }
        .ok()?;
        if !(map.as_ptr() as usize).is_multiple_of(std::mem::align_of::<f32>()) {
            return None;
        }
        // Rows are read where the lookup points, scattered: a row read from disk should not
        // bring in the file around it (read-ahead). Pages already cached around a page read
        // are still mapped with it (the kernel's fault-around), which only costs clean,
        // reclaimable memory.
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Random);
        Some(MappedF32 {
            map,
            len,
            dim,
            live: nonzero,
        })
    }
}

/// What one pass over a table of f32 rows found.
pub(crate) struct RowScan {
    /// Per row, whether it holds a nonzero value.
    pub nonzero: Vec<bool>,
    /// The index of the first value that is NaN or infinite, if any.
    pub first_non_finite: Option<usize>,
}

/// Scans `bytes` (little-endian f32 rows of `dim` values) 16 MiB at a time, calling
/// `release(offset, len)` after each piece so a mapped file's pages can be let go.
pub(crate) fn scan_rows(bytes: &[u8], dim: usize, release: impl Fn(usize, usize)) -> RowScan {
    let row_bytes = dim.max(1) * 4;
    let piece_bytes = ((16 << 20) / row_bytes).max(1) * row_bytes;
    let mut scan = RowScan {
        nonzero: Vec::with_capacity(bytes.len() / row_bytes),
        first_non_finite: None,
    };
    for (i, piece) in bytes.chunks(piece_bytes).enumerate() {
        for (r, row) in piece.chunks_exact(row_bytes).enumerate() {
            let mut nonzero = false;
            for (j, v) in row.chunks_exact(4).enumerate() {
                let v = f32::from_le_bytes([v[0], v[1], v[2], v[3]]);
                nonzero |= v != 0.0;
                if !v.is_finite() && scan.first_non_finite.is_none() {
                    scan.first_non_finite = Some((i * piece_bytes + r * row_bytes) / 4 + j);
                }
            }
            scan.nonzero.push(nonzero);
        }
        release(i * piece_bytes, piece.len());
    }
    scan
}

impl F32Buffer {
    /// Remembers that `rows` (of `dim` values each) were written, so [`Self::nonzero_rows`]
    /// looks at them in memory rather than in the file. Every write into a mapped buffer's
    /// rows must be noted; an owned buffer needs nothing.
    pub fn note_written(&mut self, rows: &[u32], dim: usize) {
        if let F32Buffer::Mapped(m) = self {
            // Every mapped row the written values overlap (one each, at the mapped width).
            for &r in rows {
                let (from, to) = (r as usize * dim, (r as usize + 1) * dim);
                for row in from / m.dim..to.div_ceil(m.dim) {
                    m.live[row] = true;
                }
            }
        }
    }

    /// Whether row `row` (of the mapped width) may hold a nonzero value; `false` only where
    /// it is known to be zero, so a read of it can be skipped. Always `true` for an owned
    /// buffer, which keeps no such record.
    #[inline]
    pub fn row_may_be_nonzero(&self, row: usize) -> bool {
        match self {
            F32Buffer::Owned(_) => true,
            F32Buffer::Mapped(m) => m.live[row],
        }
    }

    /// Copies `src` into row `row` (of `src.len()` values) and notes it written.
    pub fn write_row(&mut self, row: usize, src: &[f32]) {
        let dim = src.len();
        self[row * dim..(row + 1) * dim].copy_from_slice(src);
        self.note_written(&[row as u32], dim);
    }

    /// Per row of `dim` values, whether any of its values is nonzero. A mapped buffer looks
    /// only at the rows that may hold something, so only their pages are touched.
    pub fn nonzero_rows(&self, dim: usize) -> Vec<bool> {
        let in_memory = |values: &[f32]| -> Vec<bool> {
            values
                .chunks_exact(dim)
                .map(|row| row.iter().any(|&v| v != 0.0))
                .collect()
        };
        match self {
            F32Buffer::Mapped(m) if m.dim == dim => (0..m.live.len())
                .map(|r| m.live[r] && self[r * dim..(r + 1) * dim].iter().any(|&v| v != 0.0))
                .collect(),
            _ => in_memory(self),
        }
    }

    /// All values as one slice.
    pub fn as_slice(&self) -> &[f32] {
        self
    }

    /// Whether the values are a mapping of a file rather than an allocation.
    pub fn is_mapped(&self) -> bool {
        matches!(self, F32Buffer::Mapped(_))
    }
}

impl Default for F32Buffer {
    fn default() -> Self {
        F32Buffer::Owned(Vec::new())
    }
}

impl From<Vec<f32>> for F32Buffer {
    fn from(v: Vec<f32>) -> Self {
        F32Buffer::Owned(v)
    }
}

impl Deref for F32Buffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            F32Buffer::Owned(v) => v,
            // The mapping is f32-aligned and holds `len` values (checked in `map`).
            F32Buffer::Mapped(m) => bytemuck::cast_slice(&m.map[..m.len * 4]),
        }
    }
}

impl DerefMut for F32Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        match self {
            F32Buffer::Owned(v) => v,
            F32Buffer::Mapped(m) => bytemuck::cast_slice_mut(&mut m.map[..m.len * 4]),
        }
    }
}

impl IntoIterator for F32Buffer {
    type Item = f32;
    type IntoIter = std::vec::IntoIter<f32>;
    /// The values by value (a mapped buffer is copied out first).
    fn into_iter(self) -> Self::IntoIter {
        match self {
            F32Buffer::Owned(v) => v.into_iter(),
            mapped => mapped.iter().copied().collect::<Vec<_>>().into_iter(),
        }
    }
}

impl<'a> IntoIterator for &'a F32Buffer {
    type Item = &'a f32;
    type IntoIter = std::slice::Iter<'a, f32>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl Clone for F32Buffer {
    /// A mapped buffer clones into an owned copy (a second mapping would not see the first
    /// one's writes).
    fn clone(&self) -> Self {
        F32Buffer::Owned(self.to_vec())
    }
}

impl PartialEq for F32Buffer {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl std::fmt::Debug for F32Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_mapped() { "mapped" } else { "owned" };
        write!(f, "F32Buffer({kind}, {} values)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_mapped_buffer_reads_the_file_and_never_writes_it() {
        let dir = std::env::temp_dir().join(format!("engram-f32buf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("values.bin");
        let values: Vec<f32> = vec![0.0, 0.0, 1.5, 0.0, 0.0, 0.0, 0.0, -2.0];
        let mut f = File::create(&path).unwrap();
        f.write_all(&[7u8; 8]).unwrap(); // a header before the tensor
        f.write_all(bytemuck::cast_slice(&values)).unwrap();
        drop(f);
        let file = File::open(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let scan = scan_rows(&bytes[8..], 2, |_, _| {});
        assert_eq!(scan.nonzero, vec![false, true, false, true]);
        assert_eq!(scan.first_non_finite, None);
        let mapped = MappedF32::map(&file, 8, values.len(), 2, scan.nonzero).unwrap();
        let mut buf = F32Buffer::Mapped(mapped);
        assert!(!buf.row_may_be_nonzero(0) && buf.row_may_be_nonzero(1));
        assert_eq!(&buf[..], &values[..]);
        assert_eq!(buf.nonzero_rows(2), vec![false, true, false, true]);
        buf.write_row(0, &[3.0, 0.0]);
        buf.write_row(3, &[0.0, 0.0]);
        assert_eq!(buf.nonzero_rows(2), vec![true, true, false, false]);
        assert!(buf.row_may_be_nonzero(0) && buf.row_may_be_nonzero(3));
        assert_eq!(&buf[..4], &[3.0, 0.0, 1.5, 0.0]);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[8..], bytemuck::cast_slice::<f32, u8>(&values));
        assert_eq!(buf.clone(), buf);
        assert!(!buf.clone().is_mapped());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

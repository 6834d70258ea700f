//! Encrypted stores whose checkpoints write in place (`"ENGRAMX2"`).
//!
//! The plain store's bytes (format 2: GGUF part, then the history tail) are sealed in three
//! kinds of piece, each under its own fresh random nonce with XChaCha20-Poly1305:
//!
//! - the header (offsets of each layer's value rows and of the history in the plain bytes,
//!   rows per layer, row width, static length; bound in as associated data), a key check,
//!   then the *static* part: every plain byte outside the value rows and the history (config,
//!   keys, background statistics), sealed as one piece and rewritten only with the whole file;
//! - every value row on its own, at a fixed place (nonce, ciphertext, tag), its row id bound in;
//! - the history tail, at the end.
//!
//! A checkpoint then seals and writes only the changed rows and the history. A row or history
//! a crash left half written does not authenticate; the checkpoint's image in the journal holds
//! its whole new value, so opening takes it from there (and without an image it is an error).
//! Not detected, as with the whole-file form: a row rolled back to an older sealed copy of
//! itself.

use std::io::Write;
use std::path::Path;

use chacha20poly1305::XNonce;
use chacha20poly1305::aead::AeadInPlace;

use super::in_place::{CheckpointImage, FileLayout};
use super::sealed::{NONCE, StoreKey, TAG, random_nonce};
use crate::error::{Error, Result};

/// Magic of the form sealed piece by piece.
pub(super) const MAGIC: &[u8; 8] = b"ENGRAMX2";

/// Where the sealed pieces lie in an `"ENGRAMX2"` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedRows {
    /// File offset of row 0's nonce.
    pub rows_at: u64,
    /// Bytes per sealed row (nonce, row, tag).
    pub stride: u64,
    /// File offset of the sealed history.
    pub tail_at: u64,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
}

fn row_aad(id: u32) -> Vec<u8> {
    [MAGIC.as_slice(), b"store row ", &id.to_le_bytes()].concat()
}

fn tail_aad() -> Vec<u8> {
    [MAGIC.as_slice(), b"store history"].concat()
}

/// The header's bytes: the plain layout the rows and history are cut from.
fn header(layout: &FileLayout, static_len: u64) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend((layout.values_at.len() as u32).to_le_bytes());
    h.extend((layout.slots as u64).to_le_bytes());
    h.extend(((layout.dim * 4) as u32).to_le_bytes());
    for &at in &layout.values_at {
        h.extend(at.to_le_bytes());
    }
    h.extend(layout.history_at.to_le_bytes());
    h.extend(static_len.to_le_bytes());
    h
}

/// The plain byte ranges of the value rows, in file order.
fn row_ranges(layout: &FileLayout) -> Vec<(usize, usize)> {
    let len = layout.slots * layout.dim * 4;
    let mut r: Vec<(usize, usize)> = layout
        .values_at
        .iter()
        .map(|&at| (at as usize, at as usize + len))
        .collect();
    r.sort_unstable();
    r
}

/// Where sealed row `id` goes in the plain bytes.
fn plain_row_at(layout: &FileLayout, id: usize) -> usize {
    let row = layout.dim * 4;
    layout.values_at[id / layout.slots] as usize + (id % layout.slots) * row
}

impl StoreKey {
    fn seal_piece(&self, buf: &mut Vec<u8>, aad: &[u8]) -> Result<()> {
        let nonce = random_nonce()?;
        let tag = self
            .cipher()
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, buf)
            .map_err(|_| Error::Internal("a store piece could not be encrypted".into()))?;
        buf.splice(0..0, nonce);
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens a sealed piece (nonce, ciphertext, tag) into its plain bytes.
    fn open_piece(&self, piece: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        let body = piece.len().checked_sub(NONCE + TAG)?;
        let mut out = piece[NONCE..NONCE + body].to_vec();
        self.cipher()
            .decrypt_in_place_detached(
                XNonce::from_slice(&piece[..NONCE]),
                aad,
                &mut out,
                piece[NONCE + body..].into(),
            )
            .ok()?;
        Some(out)
    }

    /// Writes the plain store bytes `plain` (laid out as `layout` says) sealed piece by piece
    /// at `path`, atomically; returns the layout with where the sealed pieces lie.
    pub(super) fn write_sealed_store(
        &self,
        path: &Path,
        plain: &[u8],
        layout: &FileLayout,
    ) -> Result<FileLayout> {
        let history_at = layout.history_at as usize;
        let mut static_part = Vec::new();
        let mut at = 0;
        for (start, end) in row_ranges(layout) {
            static_part.extend_from_slice(&plain[at..start]);
            at = end;
        }
        static_part.extend_from_slice(&plain[at..history_at]);
        let head = header(layout, static_part.len() as u64);
        let nonce = random_nonce()?;
        let check = self.key_check(&nonce, "store")?;
        let tag = self
            .cipher()
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &[head.as_slice(), b"store"].concat(),
                &mut static_part,
            )
            .map_err(|_| Error::Internal("the store could not be encrypted".into()))?;
        let rows_at = (head.len() + NONCE + TAG + static_part.len() + TAG) as u64;
        let row = layout.dim * 4;
        let total = layout.values_at.len() * layout.slots;
        let stride = (NONCE + row + TAG) as u64;
        let sealed = SealedRows {
            rows_at,
            stride,
            tail_at: rows_at + stride * total as u64,
        };
        let tmp = super::file::temporary_beside(path)?;
        let result = (|| -> Result<()> {
            let io = |e| Error::io(&tmp, e);
            let file = std::fs::File::create(&tmp).map_err(io)?;
            let mut w = std::io::BufWriter::new(file);
            w.write_all(&head).map_err(io)?;
            w.write_all(&nonce).map_err(io)?;
            w.write_all(&check).map_err(io)?;
            w.write_all(&static_part).map_err(io)?;
            w.write_all(&tag).map_err(io)?;
            for id in 0..total {
                let start = plain_row_at(layout, id);
                let mut piece = plain[start..start + row].to_vec();
                self.seal_piece(&mut piece, &row_aad(id as u32))?;
                w.write_all(&piece).map_err(io)?;
            }
            let mut tail = plain[history_at..].to_vec();
            self.seal_piece(&mut tail, &tail_aad())?;
            w.write_all(&tail).map_err(io)?;
            let file = w.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        super::journal::sync_parent(path)?;
        Ok(FileLayout {
            sealed: Some(sealed),
            ..layout.clone()
        })
    }

    /// The plain bytes of an encrypted store file of either form (whole, `"ENGRAMX1"`, or
    /// piece by piece, `"ENGRAMX2"`); the history as the file holds it, with no journal.
    pub fn open_store_file(&self, bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
        if bytes.starts_with(MAGIC) {
            Ok(self.open_sealed_store(&bytes, path, None)?.0)
        } else {
            self.open_file(bytes, "store", path)
        }
    }

    /// Opens an `"ENGRAMX2"` file into the plain store bytes and its layout. Rows and the
    /// history that do not authenticate are taken from `image` (a checkpoint cut short)
    /// when it holds them; otherwise they are an error naming the file.
    pub(crate) fn open_sealed_store(
        &self,
        file: &[u8],
        path: &Path,
        image: Option<&CheckpointImage>,
    ) -> Result<(Vec<u8>, FileLayout)> {
        let damaged = |what: &str| {
            Error::Memory(format!(
                "{}: store tampered or damaged ({what} does not authenticate under this key)",
                path.display()
            ))
        };
        let short = || Error::Memory(format!("{}: the encrypted store is cut short", path.display()));
        let mut cur = Cursor {
            bytes: file,
            at: MAGIC.len(),
        };
        let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        let layers = u32_at(cur.take(4).ok_or_else(short)?) as usize;
        let slots = u64_at(cur.take(8).ok_or_else(short)?) as usize;
        let row = u32_at(cur.take(4).ok_or_else(short)?) as usize;
        if layers == 0 || layers > 1 << 16 || slots == 0 || row == 0 || !row.is_multiple_of(4) {
            return Err(damaged("its header"));
        }
        let values_at = (0..layers)
            .map(|_| cur.take(8).map(u64_at).ok_or_else(short))
            .collect::<Result<Vec<u64>>>()?;
        let history_at = u64_at(cur.take(8).ok_or_else(short)?);
        let static_len = usize::try_from(u64_at(cur.take(8).ok_or_else(short)?))
            .map_err(|_| damaged("its header"))?;
        let head_len = cur.at;
        let layout = FileLayout {
            values_at,
            history_at,
            dim: row / 4,
            slots,
            sealed: None,
        };
        let nonce: [u8; NONCE] = cur
            .take(NONCE)
            .and_then(|n| n.try_into().ok())
            .ok_or_else(short)?;
        if cur.take(TAG).ok_or_else(short)? != self.key_check(&nonce, "store")? {
            return Err(Error::Memory(format!(
                "{}: wrong store key (or the file's header was changed)",
                path.display()
            )));
        }
        let mut static_part = cur.take(static_len).ok_or_else(short)?.to_vec();
        let tag = cur.take(TAG).ok_or_else(short)?;
        self.cipher()
            .decrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &[&file[..head_len], b"store"].concat(),
                &mut static_part,
                tag.into(),
            )
            .map_err(|_| damaged("its config and keys"))?;
        let at = cur.at;
        let total = layers
            .checked_mul(slots)
            .filter(|&t| t <= 1 << 26)
            .ok_or_else(|| damaged("its header"))?;
        let stride = NONCE + row + TAG;
        // Nothing is allocated for rows the file cannot hold.
        if stride
            .checked_mul(total)
            .and_then(|r| r.checked_add(at))
            .is_none_or(|end| end > file.len())
            || static_len.checked_add(total * row) != usize::try_from(history_at).ok()
        {
            return Err(damaged("its header"));
        }
        let sealed = SealedRows {
            rows_at: at as u64,
            stride: stride as u64,
            tail_at: (at + stride * total) as u64,
        };
        // The plain bytes: the static part with each layer's rows put back in place.
        let mut plain = Vec::with_capacity(static_len + total * row);
        let mut from = 0;
        for (start, end) in row_ranges(&layout) {
            let piece = start
                .checked_sub(plain.len())
                .and_then(|n| static_part.get(from..from + n))
                .ok_or_else(|| damaged("its header"))?;
            plain.extend_from_slice(piece);
            from += piece.len();
            if end > history_at as usize {
                return Err(damaged("its header"));
            }
            plain.resize(end, 0);
        }
        plain.extend_from_slice(static_part.get(from..).ok_or_else(|| damaged("its header"))?);
        if plain.len() != history_at as usize {
            return Err(damaged("its header"));
        }
        drop(static_part);
        let image_row = |id: u32| -> Option<&[f32]> {
            let img = image?;
            let i = img.rows.ids.binary_search(&id).ok()?;
            img.rows.values.get(i * row / 4..(i + 1) * row / 4)
        };
        for id in 0..total {
            let start = sealed.rows_at as usize + id * stride;
            let piece = file.get(start..start + stride).ok_or_else(short);
            let opened = piece.ok().and_then(|p| self.open_piece(p, &row_aad(id as u32)));
            let bytes: Vec<u8> = match (opened, image_row(id as u32)) {
                (_, Some(v)) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                (Some(b), None) => b,
                (None, None) => return Err(damaged(&format!("value row {id}"))),
            };
            let to = plain_row_at(&layout, id);
            plain[to..to + row].copy_from_slice(&bytes);
        }
        let tail = match image {
            Some(img) => img.history.clone(),
            None => file
                .get(sealed.tail_at as usize..)
                .and_then(|t| self.open_piece(t, &tail_aad()))
                .ok_or_else(|| damaged("its history"))?,
        };
        plain.extend_from_slice(&tail);
        Ok((
            plain,
            FileLayout {
                sealed: Some(sealed),
                ..layout
            },
        ))
    }

    /// `rows` (whole values) and the framed history `tail` sealed, each with where it goes in
    /// the `"ENGRAMX2"` file laid out as `sealed` says.
    pub(super) fn seal_pieces(
        &self,
        sealed: &SealedRows,
        dim: usize,
        rows: &super::RowSet,
        tail: &[u8],
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut pieces = Vec::with_capacity(rows.len() + 1);
        for (i, &id) in rows.ids.iter().enumerate() {
            let mut piece: Vec<u8> = rows.values[i * dim..(i + 1) * dim]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            self.seal_piece(&mut piece, &row_aad(id))?;
            pieces.push((sealed.rows_at + u64::from(id) * sealed.stride, piece));
        }
        let mut t = tail.to_vec();
        self.seal_piece(&mut t, &tail_aad())?;
        pieces.push((sealed.tail_at, t));
        Ok(pieces)
    }
}

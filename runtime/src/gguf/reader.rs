//! Reading GGUF v2/v3 files: every count, length and offset is checked against the file first.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use super::f32_buffer::{F32Buffer, MappedF32, scan_rows};
use super::value::{Value, ValueType};
use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's limit on tensor rank.
const MAX_DIMS: usize = 4;
/// Arrays of arrays deeper than this are refused so hostile files cannot exhaust the stack.
const MAX_ARRAY_DEPTH: usize = 8;

/// The bytes of a GGUF file: memory-mapped from disk, or owned (tests, in-memory files).
pub enum Storage {
    /// A read-only mapping of the file.
    Mapped(Mmap),
    /// Bytes held in memory.
    Owned(Vec<u8>),
}

impl Storage {
    /// All bytes of the file.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// Where one tensor lives in the file and what shape it has.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost (contiguous) first, as ggml orders them.
    pub dims: Vec<u64>,
    /// Element type.
    pub dtype: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes the tensor occupies.
    pub size: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

/// A parsed GGUF file whose tensor data stays in the (mapped) bytes.
pub struct Gguf {
    storage: Arc<Storage>,
    version: u32,
    metadata: Vec<(String, Value)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: usize,
    /// The file a mapped `Gguf` was read from (for copy-on-write views of its tensors).
    file: Option<File>,
}

impl Gguf {
    /// Memory-maps and parses `path`; the file is never read as a whole.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only; engram never writes through it, and a file changed
        // by another process under us is outside what any mmap-based reader can guard against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let mut gguf = Self::parse(Storage::Mapped(mmap))?;
        gguf.file = Some(file);
        Ok(gguf)
    }

    /// Parses a GGUF held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<Self> {
        let bytes = storage.as_slice();
        let mut cur = Cursor { bytes, pos: 0 };
        let magic = cur.take(4, "magic")?;
        if magic != GGUF_MAGIC {
            return Err(Error::gguf(
                "magic",
                format!("expected \"GGUF\", found {magic:?}"),
            ));
        }
        let version = cur.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::gguf("version", format!("{version} is not 2 or 3")));
        }
        let n_tensors = cur.u64("tensor_count")?;
        let n_kv = cur.u64("metadata_kv_count")?;
        // The smallest possible key/value is 8 (key length) + 4 (type) + 1 (u8) bytes; the
        // smallest tensor info 8 + 4 + 4 + 8. Counts beyond what the file can hold are lies.
        let n_kv = cur.bounded_count(n_kv, 13, "metadata_kv_count")?;
        let n_tensors = cur.bounded_count(n_tensors, 24, "tensor_count")?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut metadata_index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = cur.string(&format!("metadata[{i}].key"))?;
            let tag = cur.u32(&format!("{key}.type"))?;
            let ty = ValueType::from_id(tag)
                .ok_or_else(|| Error::gguf(&key, format!("unknown value type {tag}")))?;
            let value = cur.value(ty, &key, 0)?;
            if metadata_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(Error::gguf(&key, "duplicate metadata key"));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => match metadata[i].1 {
                Value::U32(a) if a > 0 && a.is_power_of_two() => a as u64,
                ref other => {
                    return Err(Error::gguf(
                        "general.alignment",
                        format!("must be a power-of-two u32, found {}", other.summary()),
                    ));
                }
            },
        };

        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = cur.string(&format!("tensor[{i}].name"))?;
            let n_dims = cur.u32(&format!("{name}.n_dims"))? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Error::gguf(
                    &name,
                    format!("n_dims {n_dims} not in 1..={MAX_DIMS}"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims);
            let mut n_elements: u64 = 1;
            for d in 0..n_dims {
                let dim = cur.u64(&format!("{name}.dims[{d}]"))?;
                if dim == 0 {
                    return Err(Error::gguf(&name, format!("dimension {d} is zero")));
                }
                n_elements = n_elements
                    .checked_mul(dim)
                    .filter(|&n| n <= bytes.len() as u64 * 2)
                    .ok_or_else(|| Error::gguf(&name, "element count exceeds the file"))?;
                dims.push(dim);
            }
            let type_id = cur.u32(&format!("{name}.type"))?;
            let dtype =
                GgmlType::from_id(type_id).map_err(|e| Error::gguf(&name, e.to_string()))?;
            let offset = cur.u64(&format!("{name}.offset"))?;
            if offset % alignment != 0 {
                return Err(Error::gguf(
                    &name,
                    format!("offset {offset} not aligned to {alignment}"),
                ));
            }
            let row = dims[0] as usize;
            let size = dtype
                .row_bytes(row)
                .ok_or_else(|| {
                    Error::gguf(
                        &name,
                        format!("row of {row} is not a multiple of the {dtype} block size"),
                    )
                })?
                .checked_mul((n_elements / dims[0]) as usize)
                .ok_or_else(|| Error::gguf(&name, "byte size overflows"))?;
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(Error::gguf(&name, "duplicate tensor name"));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                dtype,
                offset,
                size,
            });
        }

        let data_offset = align_up(cur.pos as u64, alignment)
            .filter(|&o| o <= bytes.len() as u64)
            .ok_or_else(|| Error::gguf("data section", "starts past the end of the file"))?
            as usize;
        let data_len = (bytes.len() - data_offset) as u64;
        for t in &tensors {
            let end = t.offset.checked_add(t.size as u64);
            if end.is_none_or(|end| end > data_len) {
                return Err(Error::gguf(
                    &t.name,
                    format!(
                        "data [{}, +{}) runs past the end of the file (data section has {} bytes); the file may be truncated",
                        t.offset, t.size, data_len
                    ),
                ));
            }
        }

        Ok(Gguf {
            storage: Arc::new(storage),
            version,
            metadata,
            metadata_index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
            file: None,
        })
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data in bytes.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A required string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .ok_or_else(|| Error::Model(format!("metadata key {key} is missing")))?
            .as_str()
            .ok_or_else(|| Error::Model(format!("metadata key {key} is not a string")))
    }

    /// A required non-negative integer value.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .ok_or_else(|| Error::Model(format!("metadata key {key} is missing")))?
            .as_u64()
            .ok_or_else(|| {
                Error::Model(format!("metadata key {key} is not a non-negative integer"))
            })
    }

    /// A required numeric value.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)
            .ok_or_else(|| Error::Model(format!("metadata key {key} is missing")))?
            .as_f64()
            .ok_or_else(|| Error::Model(format!("metadata key {key} is not a number")))
    }

    /// All tensor descriptions in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// One tensor description by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor (bounds were checked when the file was opened).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = self.data_offset + info.offset as usize;
        &self.storage.as_slice()[start..start + info.size]
    }

    /// A tensor's bytes as little-endian f32, copied out a few MiB at a time. The mapped
    /// pages of each piece are handed back to the kernel once copied: otherwise a large
    /// tensor (a memory's 604 MB of values) counts twice in this process's memory, as its
    /// copy and as the file's pages, until the file is closed.
    pub fn tensor_f32(&self, info: &TensorInfo) -> Vec<f32> {
        /// Bytes copied between releases (a multiple of 4 and of any page size).
        const PIECE: usize = 16 << 20;
        let start = self.data_offset + info.offset as usize;
        let bytes = &self.storage.as_slice()[start..start + info.size];
        let mut out = Vec::with_capacity(info.size / 4);
        for (i, piece) in bytes.chunks(PIECE).enumerate() {
            out.extend(
                piece
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            self.release(start + i * PIECE, piece.len());
        }
        out
    }

    /// An f32 table of rows `row_width` wide as a private copy-on-write mapping of its bytes
    /// in the file: its pages take memory only once read, and writes stay in this process.
    /// The file's bytes are read once here (and let go), to find which rows hold anything and
    /// the index of a value that is not finite (`Err`). `None` for a `Gguf` held in memory, a
    /// tensor that is not f32, or one that cannot be mapped in place.
    pub fn tensor_f32_mapped(
        &self,
        info: &TensorInfo,
        row_width: usize,
    ) -> Option<std::result::Result<F32Buffer, usize>> {
        let file = self.file.as_ref()?;
        let n = info.n_elements();
        if info.dtype != GgmlType::F32 || info.size != n * 4 || row_width == 0 {
            return None;
        }
        if !n.is_multiple_of(row_width) {
            return None;
        }
        let start = self.data_offset + info.offset as usize;
        let bytes = &self.storage.as_slice()[start..start + info.size];
        let scan = scan_rows(bytes, row_width, |at, len| self.release(start + at, len));
        if let Some(i) = scan.first_non_finite {
            return Some(Err(i));
        }
        let offset = self.tensor_file_offset(info);
        MappedF32::map(file, offset, n, row_width, scan.nonzero).map(|m| Ok(F32Buffer::Mapped(m)))
    }

    /// Drops the resident pages of `len` bytes at `offset` of a mapped file; the next read
    /// of them faults them in again from the file, so nothing that reads them changes.
    #[cfg(unix)]
    fn release(&self, offset: usize, len: usize) {
        if let Storage::Mapped(m) = self.storage.as_ref() {
            // SAFETY: the mapping is private and read-only, so dropping its pages loses no
            // data: they are read again from the unchanged file on the next access. Failure
            // only means the pages stay resident, which is what happens without the call.
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
            };
        }
    }

    #[cfg(not(unix))]
    fn release(&self, _offset: usize, _len: usize) {}

    /// A shared, zero-copy handle on a tensor's bytes that outlives this `Gguf`.
    pub fn tensor_view(&self, info: &TensorInfo) -> TensorBytes {
        TensorBytes {
            storage: Arc::clone(&self.storage),
            start: self.data_offset + info.offset as usize,
            len: info.size,
        }
    }

    /// Where a tensor's bytes start in the file (for writing them in place).
    pub fn tensor_file_offset(&self, info: &TensorInfo) -> u64 {
        (self.data_offset + info.offset as usize) as u64
    }

    /// Where the tensor data ends: after the last tensor, padded to the alignment (the
    /// start of whatever a file keeps after its GGUF part).
    pub fn data_end(&self) -> usize {
        let len = self.storage.as_slice().len();
        self.tensors
            .iter()
            .filter_map(|t| align_up(t.offset + t.size as u64, self.alignment))
            .map(|end| self.data_offset.saturating_add(end as usize))
            .max()
            .unwrap_or(self.data_offset)
            .min(len)
    }

    /// The bytes after the tensor data (see [`Self::data_end`]); empty in a plain GGUF.
    pub fn trailing_bytes(&self) -> &[u8] {
        &self.storage.as_slice()[self.data_end()..]
    }

    /// The bytes back, when they were given in memory and no tensor view still shares them.
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        match Arc::try_unwrap(self.storage).ok()? {
            Storage::Owned(v) => Some(v),
            Storage::Mapped(_) => None,
        }
    }

    /// Size of the whole file in bytes.
    pub fn file_len(&self) -> usize {
        self.storage.as_slice().len()
    }
}

/// A tensor's bytes inside a shared mapping; cloning shares, never copies.
#[derive(Clone)]
pub struct TensorBytes {
    storage: Arc<Storage>,
    start: usize,
    len: usize,
}

impl TensorBytes {
    /// The raw bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage.as_slice()[self.start..self.start + self.len]
    }

    /// Bytes `start..start + len` of this view, sharing its storage (a fused tensor's parts).
    pub fn slice(&self, start: usize, len: usize) -> TensorBytes {
        assert!(
            start + len <= self.len,
            "slice past the end of a tensor's bytes"
        );
        TensorBytes {
            storage: Arc::clone(&self.storage),
            start: self.start + start,
            len,
        }
    }

    /// Owned bytes wrapped as a view (for tensors built in memory).
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        TensorBytes {
            storage: Arc::new(Storage::Owned(bytes)),
            start: 0,
            len,
        }
    }
}

fn align_up(pos: u64, alignment: u64) -> Option<u64> {
    pos.checked_add(alignment - 1)
        .map(|p| p / alignment * alignment)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::gguf(
                field,
                format!(
                    "needs {n} bytes at offset {} but the file ends at {}; truncated?",
                    self.pos,
                    self.bytes.len()
                ),
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// Rejects a count of items that could not fit in the rest of the file.
    fn bounded_count(&self, n: u64, min_item_bytes: usize, field: &str) -> Result<usize> {
        let max = (self.remaining() / min_item_bytes) as u64;
        if n > max {
            return Err(Error::gguf(
                field,
                format!(
                    "{n} entries cannot fit in the remaining {} bytes",
                    self.remaining()
                ),
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, field: &str) -> Result<String> {
        let len = self.u64(field)?;
        if len > self.remaining() as u64 {
            return Err(Error::gguf(
                field,
                format!(
                    "string length {len} exceeds the {} bytes left",
                    self.remaining()
                ),
            ));
        }
        let raw = self.take(len as usize, field)?;
        String::from_utf8(raw.to_vec()).map_err(|_| Error::gguf(field, "string is not valid UTF-8"))
    }

    fn value(&mut self, ty: ValueType, field: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(field)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(field)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(field)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(field)?)),
            ValueType::U32 => Value::U32(self.u32(field)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(field)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(field)?)),
            ValueType::Bool => match self.array::<1>(field)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(Error::gguf(field, format!("bool byte {b} is not 0 or 1"))),
            },
            ValueType::String => Value::String(self.string(field)?),
            ValueType::U64 => Value::U64(self.u64(field)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(field)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(field)?)),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::gguf(field, "arrays nested too deeply"));
                }
                let tag = self.u32(field)?;
                let elem = ValueType::from_id(tag).ok_or_else(|| {
                    Error::gguf(field, format!("unknown array element type {tag}"))
                })?;
                let n = self.u64(field)?;
                let n = self.bounded_count(n, elem.min_bytes(), field)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, field, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

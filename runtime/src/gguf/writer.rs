//! Writing GGUF v3 files: the memory store, deltas and test models all go through here.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::reader::{DEFAULT_ALIGNMENT, GGUF_MAGIC};
use super::value::Value;
use crate::error::{Error, Result};
use crate::quant::GgmlType;

struct PendingTensor<'a> {
    name: String,
    dims: Vec<u64>,
    dtype: GgmlType,
    data: Cow<'a, [u8]>,
}

/// Collects metadata and tensors, then writes one GGUF v3 file.
#[derive(Default)]
pub struct GgufWriter<'a> {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor<'a>>,
}

impl<'a> GgufWriter<'a> {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a metadata key.
    pub fn set(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor whose `data` is already in `dtype`'s block layout; dims innermost first.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dtype: GgmlType,
        dims: &[u64],
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        self.push(name.into(), dtype, dims, Cow::Owned(data))
    }

    fn push(
        &mut self,
        name: String,
        dtype: GgmlType,
        dims: &[u64],
        data: Cow<'a, [u8]>,
    ) -> Result<&mut Self> {
        if dims.is_empty() || dims.len() > 4 || dims.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "tensor {name}: dims {dims:?} must be 1 to 4 non-zero sizes"
            )));
        }
        let rows: u64 = dims[1..].iter().product();
        let expected = dtype
            .row_bytes(dims[0] as usize)
            .map(|r| r as u64 * rows)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "tensor {name}: row {} not a multiple of {dtype} blocks",
                    dims[0]
                ))
            })?;
        if expected != data.len() as u64 {
            return Err(Error::InvalidArgument(format!(
                "tensor {name}: {} bytes given, {dtype} {dims:?} needs {expected}",
                data.len()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::InvalidArgument(format!("tensor {name} added twice")));
        }
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            dtype,
            data,
        });
        Ok(self)
    }

    /// Adds an f32 tensor.
    pub fn add_f32(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        values: &[f32],
    ) -> Result<&mut Self> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, GgmlType::F32, dims, bytes)
    }

    /// [`Self::add_f32`] without the copy: the writer borrows `values` until it is written
    /// (a memory's values are 604 MB; a copy of them doubled what a save needed).
    pub fn add_f32_borrowed(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        values: &'a [f32],
    ) -> Result<&mut Self> {
        #[cfg(target_endian = "little")]
        let data = Cow::Borrowed(bytemuck::cast_slice(values));
        #[cfg(not(target_endian = "little"))]
        let data = Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect());
        self.push(name.into(), GgmlType::F32, dims, data)
    }

    /// Serializes everything to `out`.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let alignment = match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, Value::U32(a))) if *a > 0 && a.is_power_of_two() => *a as u64,
            _ => DEFAULT_ALIGNMENT,
        };
        let mut header = Vec::new();
        header.extend(GGUF_MAGIC);
        header.extend(3u32.to_le_bytes());
        header.extend((self.tensors.len() as u64).to_le_bytes());
        header.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut header, key);
            header.extend((value.value_type() as u32).to_le_bytes());
            write_value(&mut header, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_string(&mut header, &t.name);
            header.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend(d.to_le_bytes());
            }
            header.extend(t.dtype.id().to_le_bytes());
            header.extend(offset.to_le_bytes());
            offset = (offset + t.data.len() as u64).div_ceil(alignment) * alignment;
        }
        let padding = |len: u64| (len.div_ceil(alignment) * alignment - len) as usize;
        let zeros = vec![0u8; alignment as usize];
        out.write_all(&header)?;
        out.write_all(&zeros[..padding(header.len() as u64)])?;
        for t in &self.tensors {
            out.write_all(&t.data)?;
            out.write_all(&zeros[..padding(t.data.len() as u64)])?;
        }
        Ok(())
    }

    /// Serializes into memory.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }

    /// Writes `path` atomically: a temporary file beside it is written, fsynced, then renamed.
    pub fn write_atomic(&self, path: impl AsRef<Path>) -> Result<()> {
        self.write_atomic_with_trailer(path, &[])
    }

    /// [`Self::write_atomic`] with `trailer` written after the tensor data, in the same file.
    pub fn write_atomic_with_trailer(&self, path: impl AsRef<Path>, trailer: &[u8]) -> Result<()> {
        let path = path.as_ref();
        let file_name = path.file_name().ok_or_else(|| {
            Error::InvalidArgument(format!("{} is not a file path", path.display()))
        })?;
        let tmp = path.with_file_name(format!(
            ".{}.tmp-{}",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let result = (|| {
            let mut f = io::BufWriter::new(File::create(&tmp)?);
            self.write_to(&mut f)?;
            f.write_all(trailer)?;
            let f = f.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io(path, e)
        })
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => write_string(out, s),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
        Value::Array(t, items) => {
            out.extend((*t as u32).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
    }
}

//! Weights and products on the device: uploading a weight in its block format, embedding
//! lookup, the matmul and its transpose (`matmul.wgsl`).

use super::dispatch::*;
use super::params::*;
use super::*;
use crate::backend::WeightSource;
use crate::error::{Error, Result};
use crate::quant::GgmlType;

pub(super) fn load_weight<C: Compute>(backend: &GpuBackend<C>, w: &WeightSource) -> Result<GpuWeight<C>> {
    let row_bytes = w.dtype.row_bytes(w.cols).ok_or_else(|| {
        Error::Model(format!(
            "{}: {} columns is not whole {} blocks",
            w.name, w.cols, w.dtype
        ))
    })?;
    let bytes = w.bytes.as_slice();
    if row_bytes * w.rows != bytes.len() {
        return Err(Error::Model(format!(
            "{}: byte size does not match {}×{} {}",
            w.name, w.rows, w.cols, w.dtype
        )));
    }
    let per_part = (backend.max_binding as usize / row_bytes.max(1)).max(1);
    let mut parts = Vec::new();
    let mut row0 = 0;
    while row0 < w.rows.max(1) {
        let n = per_part.min(w.rows - row0);
        parts.push(Part {
            buf: backend.storage_init(&bytes[row0 * row_bytes..(row0 + n) * row_bytes]),
            row0,
            rows: n,
        });
        row0 += n.max(1);
    }
    Ok(GpuWeight {
        name: w.name.clone(),
        dtype: w.dtype,
        rows: w.rows,
        cols: w.cols,
        row_bytes,
        parts,
    })
}

pub(super) fn embed<C: Compute>(
    backend: &GpuBackend<C>,
    table: &GpuWeight<C>,
    tokens: &[u32],
) -> Result<GpuTensor<C>> {
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= table.rows) {
        return Err(Error::InvalidArgument(format!(
            "token id {t} outside the vocabulary of {}",
            table.rows
        )));
    }
    let out = backend.storage(tokens.len() * table.cols * 4);
    let ids = backend.u32s(tokens);
    for part in &table.parts {
        let p = MatmulParams {
            rows: u(part.rows),
            cols: u(table.cols),
            n: u(tokens.len()),
            row_bytes: u(table.row_bytes),
            out_cols: u(table.rows),
            row0: u(part.row0),
            ..Default::default()
        };
        backend.dispatch(
            ("embed", dtype_code(table.dtype)),
            &p,
            &[(1, &part.buf), (3, &out), (4, &ids)],
            (table.cols.div_ceil(64) as u32, tokens.len().max(1) as u32),
        );
    }
    Ok(backend.tensor(out, tokens.len(), table.cols))
}

/// Whether the shader multiplies `dtype` weights by 8-bit quantized activations through a block
/// decoder (as the cpu does); the other formats (floats, and the k-quants whose mins vary within
/// 32 elements or that are rare) are decoded element by element against f32 activations.
pub fn uses_integer_dot(dtype: GgmlType) -> bool {
    !matches!(
        dtype,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q5_K
    )
}

pub(super) fn matmul<C: Compute>(backend: &GpuBackend<C>, w: &GpuWeight<C>, x: &GpuTensor<C>) -> GpuTensor<C> {
    assert_eq!(x.cols, w.cols, "matmul {}: input width", w.name);
    let out = backend.storage(x.rows * w.rows * 4);
    let integer = uses_integer_dot(w.dtype);
    let quantized = integer.then(|| backend.quantize_activations(x));
    let entry = if integer { "matmul_q8" } else { "matmul" };
    for part in &w.parts {
        let p = MatmulParams {
            rows: u(part.rows),
            cols: u(w.cols),
            n: u(x.rows),
            row_bytes: u(w.row_bytes),
            out_cols: u(w.rows),
            row0: u(part.row0),
            ..Default::default()
        };
        let mut bufs = vec![(1, &part.buf), (3, &out)];
        match &quantized {
            Some(xq) => bufs.push((5, xq)),
            None => bufs.push((2, x.buf())),
        }
        backend.dispatch(
            (entry, dtype_code(w.dtype)),
            &p,
            &bufs,
            (
                part.rows.div_ceil(64) as u32,
                x.rows.div_ceil(4).max(1) as u32,
            ),
        );
    }
    backend.tensor(out, x.rows, w.rows)
}

pub(super) fn matmul_backward<C: Compute>(
    backend: &GpuBackend<C>,
    w: &GpuWeight<C>,
    dy: &GpuTensor<C>,
) -> GpuTensor<C> {
    assert_eq!(
        dy.cols, w.rows,
        "matmul_backward {}: gradient width",
        w.name
    );
    let out = backend.storage(dy.rows * w.cols * 4);
    for part in &w.parts {
        let p = MatmulParams {
            rows: u(part.rows),
            cols: u(w.cols),
            n: u(dy.rows),
            row_bytes: u(w.row_bytes),
            out_cols: u(w.rows),
            row0: u(part.row0),
            ..Default::default()
        };
        backend.dispatch(
            ("matmul_backward", dtype_code(w.dtype)),
            &p,
            &[(1, &part.buf), (2, dy.buf()), (3, &out)],
            (
                w.cols.div_ceil(4).div_ceil(64) as u32,
                dy.rows.div_ceil(8).max(1) as u32,
            ),
        );
    }
    backend.tensor(out, dy.rows, w.cols)
}

//! Weights and products: loading a weight in place, dense copies for learning, embedding
//! lookup, the quantized matmul and its transpose.

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::dense::*;
use super::*;
use crate::backend::{Backend, WeightSource};
use crate::error::{Error, Result};
use crate::quant::{Q8Act, QK, dequantize_row, dot_row, dot_rows, quantize_activations};

pub(super) fn load_weight(_backend: &CpuBackend, w: &WeightSource) -> Result<CpuWeight> {
    let row_bytes = w.dtype.row_bytes(w.cols).ok_or_else(|| {
        Error::Model(format!(
            "{}: {} columns is not whole {} blocks",
            w.name, w.cols, w.dtype
        ))
    })?;
    if row_bytes * w.rows != w.bytes.as_slice().len() {
        return Err(Error::Model(format!(
            "{}: byte size does not match {}×{} {}",
            w.name, w.rows, w.cols, w.dtype
        )));
    }
    if !is_float(w.dtype) && !w.cols.is_multiple_of(QK) {
        return Err(Error::Model(format!(
            "{}: {} columns is not a multiple of {QK}",
            w.name, w.cols
        )));
    }
    Ok(CpuWeight {
        src: w.clone(),
        row_bytes,
        dense: Mutex::new(None),
    })
}

pub(super) fn keep_dense(backend: &CpuBackend, w: &CpuWeight, keep: bool) {
    let mut slot = w.dense.lock().unwrap_or_else(|e| e.into_inner());
    if !keep {
        *slot = None;
        return;
    }
    if slot.is_some() {
        return;
    }
    let cols = w.src.cols;
    let mut data = vec![0f32; w.src.rows * cols];
    backend.pool.install(|| {
        data.par_chunks_mut(cols)
            .enumerate()
            .for_each(|(r, out)| dequantize_row(w.src.dtype, w.row(r), out));
    });
    *slot = Some(Arc::new(data));
}

pub(super) fn embed(_backend: &CpuBackend, table: &CpuWeight, tokens: &[u32]) -> Result<CpuTensor> {
    let cols = table.src.cols;
    let mut data = vec![0f32; tokens.len() * cols];
    for (out, &t) in data.chunks_exact_mut(cols).zip(tokens) {
        if t as usize >= table.src.rows {
            return Err(Error::InvalidArgument(format!(
                "token id {t} outside the vocabulary of {}",
                table.src.rows
            )));
        }
        dequantize_row(table.src.dtype, table.row(t as usize), out);
    }
    Ok(CpuTensor {
        data,
        rows: tokens.len(),
        cols,
    })
}

pub(super) fn matmul(backend: &CpuBackend, w: &CpuWeight, x: &CpuTensor) -> CpuTensor {
    assert_eq!(x.cols, w.src.cols, "matmul {}: input width", w.src.name);
    let (n, k, rows) = (x.rows, x.cols, w.src.rows);
    if let Some(dense) = w.dense() {
        let xs = backend.dense_input(is_float(w.src.dtype), x);
        // W read as its transpose: element (i, j) of Wᵀ is W[j][i].
        let term = GemmTerm {
            a: &xs,
            k,
            b: &dense,
            strides: (1, k),
        };
        return CpuTensor {
            data: backend.gemm_sum(n, rows, &[term]),
            rows: n,
            cols: rows,
        };
    }
    let dtype = w.src.dtype;
    backend.pool.install(|| {
        let blocks = k / QK;
        let mut xq: Vec<Q8Act> = Vec::new();
        if !is_float(dtype) {
            xq = vec![
                Q8Act {
                    d: 0.0,
                    sum: 0.0,
                    qs: [0; QK]
                };
                n * blocks
            ];
            xq.par_chunks_mut(blocks)
                .zip(x.data.par_chunks(k))
                .for_each_init(Vec::new, |tmp, (out, row)| {
                    quantize_activations(row, tmp);
                    out.copy_from_slice(tmp);
                });
        }
        let act = |t: usize| {
            (
                &x.data[t * k..(t + 1) * k],
                if xq.is_empty() {
                    &[][..]
                } else {
                    &xq[t * blocks..(t + 1) * blocks]
                },
            )
        };
        let chunk = rows_per_task(rows, backend.threads());
        if n == 1 {
            let (xf, xb) = act(0);
            let mut data = vec![0f32; rows];
            data.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(ci, out)| {
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = dot_row(dtype, w.row(ci * chunk + j), xf, xb);
                    }
                });
            return CpuTensor {
                data,
                rows: 1,
                cols: rows,
            };
        }
        // Weight-row-major so each row is decoded once for a tile of four tokens.
        let tiled = !xq.is_empty() && dot_rows::<4>(dtype, w.row(0), [&xq[..blocks]; 4]).is_some();
        let mut transposed = vec![0f32; rows * n];
        transposed
            .par_chunks_mut(chunk * n)
            .enumerate()
            .for_each(|(ci, out)| {
                for (j, o) in out.chunks_exact_mut(n).enumerate() {
                    let wr = w.row(ci * chunk + j);
                    let mut t = 0;
                    while tiled && t + 4 <= n {
                        let tile = [act(t).1, act(t + 1).1, act(t + 2).1, act(t + 3).1];
                        if let Some(v) = dot_rows(dtype, wr, tile) {
                            o[t..t + 4].copy_from_slice(&v);
                        }
                        t += 4;
                    }
                    for (v, t) in o[t..].iter_mut().zip(t..) {
                        let (xf, xb) = act(t);
                        *v = dot_row(dtype, wr, xf, xb);
                    }
                }
            });
        let mut data = vec![0f32; n * rows];
        data.par_chunks_mut(rows).enumerate().for_each(|(t, out)| {
            for (r, v) in out.iter_mut().enumerate() {
                *v = transposed[r * n + t];
            }
        });
        CpuTensor {
            data,
            rows: n,
            cols: rows,
        }
    })
}

pub(super) fn matmul_each(
    backend: &CpuBackend,
    ws: &[&CpuWeight],
    x: &CpuTensor,
) -> Vec<CpuTensor> {
    let dense: Option<Vec<_>> = ws.iter().map(|w| w.dense()).collect();
    let float = ws.iter().map(|w| is_float(w.src.dtype)).collect::<Vec<_>>();
    let (Some(dense), false) = (dense, float.windows(2).any(|f| f[0] != f[1])) else {
        return ws.iter().map(|w| backend.matmul(w, x)).collect();
    };
    for w in ws {
        assert_eq!(x.cols, w.src.cols, "matmul {}: input width", w.src.name);
    }
    // The input is rounded once for all the weights, and all their column blocks share
    // one batch of tasks.
    let xs = backend.dense_input(float.first().copied().unwrap_or(true), x);
    let bs: Vec<_> = ws
        .iter()
        .zip(&dense)
        .map(|(w, d)| (&d[..], (1, x.cols), w.src.rows))
        .collect();
    backend
        .gemm_each(x.rows, &xs, x.cols, &bs)
        .into_iter()
        .zip(ws)
        .map(|(data, w)| CpuTensor {
            data,
            rows: x.rows,
            cols: w.src.rows,
        })
        .collect()
}

pub(super) fn matmul_backward_sum(
    backend: &CpuBackend,
    ws: &[&CpuWeight],
    dys: &[&CpuTensor],
) -> CpuTensor {
    crate::backend::check_backward_sum_args(ws.len(), dys.len());
    let dense: Option<Vec<_>> = ws.iter().map(|w| w.dense()).collect();
    let Some(dense) = dense else {
        return crate::backend::matmul_backward_one_by_one(backend, ws, dys);
    };
    let (n, cols) = (dys[0].rows, ws[0].src.cols);
    for (w, dy) in ws.iter().zip(dys) {
        assert_eq!(
            (dy.rows, dy.cols, w.src.cols),
            (n, w.src.rows, cols),
            "matmul_backward_sum {}: gradient shape",
            w.src.name
        );
    }
    // One product per weight, added inside each task's columns: no separate sums.
    let terms: Vec<GemmTerm<'_>> = ws
        .iter()
        .zip(dys)
        .zip(&dense)
        .map(|((w, dy), d)| GemmTerm {
            a: &dy.data,
            k: w.src.rows,
            b: d,
            strides: (cols, 1),
        })
        .collect();
    CpuTensor {
        data: backend.gemm_sum(n, cols, &terms),
        rows: n,
        cols,
    }
}

pub(super) fn matmul_backward(backend: &CpuBackend, w: &CpuWeight, dy: &CpuTensor) -> CpuTensor {
    let (n, rows, cols) = (dy.rows, w.src.rows, w.src.cols);
    assert_eq!(
        dy.cols, rows,
        "matmul_backward {}: gradient width",
        w.src.name
    );
    if let Some(dense) = w.dense() {
        let term = GemmTerm {
            a: &dy.data,
            k: rows,
            b: &dense,
            strides: (cols, 1),
        };
        return CpuTensor {
            data: backend.gemm_sum(n, cols, &[term]),
            rows: n,
            cols,
        };
    }
    let dtype = w.src.dtype;
    // A fixed split into partial sums added in a fixed order: the same inputs give the
    // same bits on every run (rayon's fold/reduce would group by work-stealing luck).
    let parts = (backend.threads() * 4).clamp(1, rows.max(1));
    let chunk = rows.div_ceil(parts).max(1);
    let partials: Vec<Vec<f32>> = backend.pool.install(|| {
        (0..rows.div_ceil(chunk))
            .into_par_iter()
            .map(|ci| {
                let mut acc = vec![0f32; n * cols];
                let rs = ci * chunk..((ci + 1) * chunk).min(rows);
                scatter_weight_rows(dtype, |r| w.row(r), &dy.data, rows, rs, &mut acc);
                acc
            })
            .collect()
    });
    let mut partials = partials.into_iter();
    let mut data = partials.next().unwrap_or_else(|| vec![0f32; n * cols]);
    for p in partials {
        data.iter_mut().zip(p).for_each(|(x, y)| *x += y);
    }
    CpuTensor {
        data,
        rows: n,
        cols,
    }
}

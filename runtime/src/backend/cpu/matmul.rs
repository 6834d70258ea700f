//! Weights and products: loading a weight in place, embedding lookup, the quantized matmul
//! and its transpose, and the blocked GEMM path learning switches a weight to.

use std::sync::atomic::{AtomicBool, Ordering};

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
        through_gemm: AtomicBool::new(false),
    })
}

pub(super) fn use_gemm(w: &CpuWeight, on: bool) {
    w.through_gemm.store(on, Ordering::Relaxed);
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
        data: data.into(),
        rows: tokens.len(),
        cols,
    })
}

pub(super) fn matmul(backend: &CpuBackend, w: &CpuWeight, x: &CpuTensor) -> CpuTensor {
    assert_eq!(x.cols, w.src.cols, "matmul {}: input width", w.src.name);
    let (n, k, rows) = (x.rows, x.cols, w.src.rows);
    if w.is_through_gemm() {
        let xs = backend.dense_input(is_float(w.src.dtype), x);
        let term = GemmTerm {
            a: &xs,
            k,
            b: Operand::WeightTransposed(w),
        };
        return CpuTensor {
            data: backend.gemm_sum(n, rows, &[term]).into(),
            rows: n,
            cols: rows,
        };
    }
    // One hand-over to the pool for both steps: each costs a wake-up of the workers.
    backend.pool.install(|| {
        let xq = quantize_input(w.src.dtype, x);
        matmul_quantized(backend, w, x, &xq)
    })
}

/// Every row of `x` as Q8 activation blocks, or nothing where `dtype` is a float format
/// (whose products read `x` itself); in parallel on the pool it is called from.
fn quantize_input(dtype: GgmlType, x: &CpuTensor) -> Vec<Q8Act> {
    if is_float(dtype) {
        return Vec::new();
    }
    let blocks = x.cols / QK;
    let mut xq = vec![
        Q8Act {
            d: 0.0,
            sum: 0.0,
            qs: [0; QK]
        };
        x.rows * blocks
    ];
    xq.par_chunks_mut(blocks)
        .zip(x.data.par_chunks(x.cols))
        .with_min_len(8)
        .for_each_init(Vec::new, |tmp, (out, row)| {
            quantize_activations(row, tmp);
            out.copy_from_slice(tmp);
        });
    xq
}

/// One weight row's products with a range of tokens, in tiles of four tokens that decode
/// each weight block once for the whole tile.
struct RowProducts<'a> {
    dtype: GgmlType,
    /// Whether [`dot_rows`] has a kernel for `dtype` on this CPU.
    tiled: bool,
    x: &'a [f32],
    xq: &'a [Q8Act],
    /// Elements and activation blocks per token.
    k: usize,
    blocks: usize,
}

impl RowProducts<'_> {
    fn act(&self, t: usize) -> &[Q8Act] {
        &self.xq[t * self.blocks..(t + 1) * self.blocks]
    }

    /// Calls `put(t, product)` for each token `t` of `tokens` against the weight row `wr`.
    #[inline]
    fn run(&self, wr: &[u8], tokens: std::ops::Range<usize>, mut put: impl FnMut(usize, f32)) {
        // Only tiles of four: every tile size must round exactly alike (a token's product
        // must not depend on its neighbours). Tiles of eight need one FMA chain where one and
        // four keep two; tried: prefill +10-15 %, but decoding token by token no longer
        // matched a batched prefill.
        let mut t = tokens.start;
        while self.tiled && t + 4 <= tokens.end {
            let tile: [&[Q8Act]; 4] = std::array::from_fn(|i| self.act(t + i));
            if let Some(v) = dot_rows(self.dtype, wr, tile) {
                v.into_iter().enumerate().for_each(|(i, v)| put(t + i, v));
            }
            t += 4;
        }
        for t in t..tokens.end {
            let xf = &self.x[t * self.k..(t + 1) * self.k];
            let xb = if self.xq.is_empty() { &[][..] } else { self.act(t) };
            put(t, dot_row(self.dtype, wr, xf, xb));
        }
    }
}

/// Tokens per task of the prefill matmul: the task's tiles of tokens stay in the L1 cache
/// while every weight row passes over them, and it writes whole output rows.
const TOKENS_PER_TASK: usize = 16;

/// [`matmul`] through the weight's quantized rows, given `x` already quantized (`xq`, from
/// [`quantize_input`]).
fn matmul_quantized(backend: &CpuBackend, w: &CpuWeight, x: &CpuTensor, xq: &[Q8Act]) -> CpuTensor {
    let dtype = w.src.dtype;
    let (n, k, rows) = (x.rows, x.cols, w.src.rows);
    let blocks = k / QK;
    backend.pool.install(|| {
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
                data: data.into(),
                rows: 1,
                cols: rows,
            };
        }
        // Each weight row is decoded once for a tile of four tokens.
        let tiled = !xq.is_empty() && dot_rows::<4>(dtype, w.row(0), [&xq[..blocks]; 4]).is_some();
        let rows_of = RowProducts {
            dtype,
            tiled,
            x: &x.data,
            xq,
            k,
            blocks,
        };
        if n >= TOKENS_PER_TASK * 2 * backend.threads() {
            // Long prompts: tasks over blocks of tokens write their output rows in place; the
            // weights (at most a few MiB) stream from L2/L3 once per block.
            let mut data = buffers::zeroed(n * rows);
            data.par_chunks_mut(TOKENS_PER_TASK * rows)
                .enumerate()
                .for_each(|(bi, out)| {
                    let t0 = bi * TOKENS_PER_TASK;
                    let end = t0 + out.len() / rows;
                    for r in 0..rows {
                        rows_of.run(w.row(r), t0..end, |t, v| out[(t - t0) * rows + r] = v);
                    }
                });
            return CpuTensor {
                data: data.into(),
                rows: n,
                cols: rows,
            };
        }
        // Short inputs: tasks over blocks of weight rows, so both threads have work.
        let mut transposed = buffers::zeroed(rows * n);
        transposed
            .par_chunks_mut(chunk * n)
            .enumerate()
            .for_each(|(ci, out)| {
                for (j, o) in out.chunks_exact_mut(n).enumerate() {
                    rows_of.run(w.row(ci * chunk + j), 0..n, |t, v| o[t] = v);
                }
            });
        let mut data = buffers::zeroed(n * rows);
        data.par_chunks_mut(rows).enumerate().for_each(|(t, out)| {
            for (r, v) in out.iter_mut().enumerate() {
                *v = transposed[r * n + t];
            }
        });
        CpuTensor {
            data: data.into(),
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
    for w in ws {
        assert_eq!(x.cols, w.src.cols, "matmul {}: input width", w.src.name);
    }
    let float = ws.iter().map(|w| is_float(w.src.dtype)).collect::<Vec<_>>();
    let (Some(first), false) = (ws.first(), float.windows(2).any(|f| f[0] != f[1])) else {
        // Float and quantized weights together: one at a time.
        return ws.iter().map(|w| backend.matmul(w, x)).collect();
    };
    let gemm: Vec<bool> = ws.iter().map(|w| w.is_through_gemm()).collect();
    if gemm.iter().all(|g| !g) {
        // The input is quantized once for all the weights (q, k and v; gate and up).
        return backend.pool.install(|| {
            let xq = quantize_input(first.src.dtype, x);
            ws.iter()
                .map(|w| matmul_quantized(backend, w, x, &xq))
                .collect()
        });
    }
    if gemm.iter().any(|g| !g) {
        // Some through the GEMM and some not: one at a time.
        return ws.iter().map(|w| backend.matmul(w, x)).collect();
    }
    // The input is rounded once for all the weights, and all their column blocks share
    // one batch of tasks.
    let xs = backend.dense_input(float.first().copied().unwrap_or(true), x);
    let bs: Vec<_> = ws
        .iter()
        .map(|w| (Operand::WeightTransposed(w), w.src.rows))
        .collect();
    backend
        .gemm_each(x.rows, &xs, x.cols, &bs)
        .into_iter()
        .zip(ws)
        .map(|(data, w)| CpuTensor {
            data: data.into(),
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
    if ws.iter().any(|w| !w.is_through_gemm()) {
        return crate::backend::matmul_backward_one_by_one(backend, ws, dys);
    }
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
        .map(|(w, dy)| GemmTerm {
            a: &dy.data,
            k: w.src.rows,
            b: Operand::Weight(w),
        })
        .collect();
    CpuTensor {
        data: backend.gemm_sum(n, cols, &terms).into(),
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
    if w.is_through_gemm() {
        let term = GemmTerm {
            a: &dy.data,
            k: rows,
            b: Operand::Weight(w),
        };
        return CpuTensor {
            data: backend.gemm_sum(n, cols, &[term]).into(),
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
        data: data.into(),
        rows: n,
        cols,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::gguf::TensorBytes;
    use crate::quant::quantize_row;

    fn noise(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5)
            .collect()
    }

    /// Every path of the quantized matmul (one token, tasks over weight rows, tasks over
    /// blocks of tokens with a ragged last block) gives each output the row's own dot product.
    #[test]
    fn every_matmul_path_gives_each_rows_dot_product() {
        let backend = CpuBackend::new(2).expect("two threads");
        let (rows, cols) = (37, 256);
        for dtype in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
            let bytes: Vec<u8> = (0..rows)
                .flat_map(|r| quantize_row(dtype, &noise(cols, r as u32)))
                .collect();
            let src = WeightSource {
                name: format!("test {dtype}"),
                dtype,
                rows,
                cols,
                bytes: TensorBytes::from_vec(bytes),
            };
            let w = backend.load_weight(&src).expect("weight");
            // 70 tokens: over 2 threads × 2 blocks of 16, so tasks over tokens, the last
            // block six tokens long (a tile of four and single tokens); 13 and 6 take tasks
            // over weight rows (tiles of four, single), 1 the one-token path.
            for n in [1, 6, 13, 70] {
                let x = noise(n * cols, 99 + n as u32);
                let xt = backend.upload(&x, n, cols);
                let got = backend.matmul(&w, &xt);
                // Two weights through one shared quantized input give the same products.
                for each in backend.matmul_each(&[&w, &w], &xt) {
                    assert_eq!(each.data, got.data, "{dtype} n={n}: matmul_each");
                }
                let mut xq = Vec::new();
                for t in 0..n {
                    let xt = &x[t * cols..(t + 1) * cols];
                    quantize_activations(xt, &mut xq);
                    for r in 0..rows {
                        let want = dot_row(dtype, w.row(r), xt, &xq);
                        let have = got.data[t * rows + r];
                        // Exactly: a token's product must not depend on its tile.
                        assert_eq!(
                            have.to_bits(),
                            want.to_bits(),
                            "{dtype} n={n} token {t} row {r}: {have} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

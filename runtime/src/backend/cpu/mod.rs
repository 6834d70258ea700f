//! The reference backend: SIMD dot products (runtime-detected) on a rayon thread pool.

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::{AttentionShape, Backend, ProductKeyShape, Rope, RopeLayout, WeightSource};
use crate::backend::product_keys::{lookup_head, softmax};
use crate::error::{Error, Result};
use crate::quant::{
    GgmlType, Q8Act, QK, dequantize_row, dot_f32, dot_row, dot_rows, quantize_activations,
};

/// Runs every op on the host CPU.
pub struct CpuBackend {
    pool: rayon::ThreadPool,
}

/// A row-major f32 matrix in host memory.
#[derive(Clone, Debug)]
pub struct CpuTensor {
    /// Row-major values.
    pub data: Vec<f32>,
    /// Number of rows (tokens).
    pub rows: usize,
    /// Number of columns (features).
    pub cols: usize,
}

/// A weight matrix read in place from the mapped model file.
pub struct CpuWeight {
    src: WeightSource,
    row_bytes: usize,
    /// Rows × cols f32 copy, present while [`Backend::keep_dense`] asks for it.
    dense: Mutex<Option<Arc<Vec<f32>>>>,
}

impl CpuWeight {
    fn row(&self, r: usize) -> &[u8] {
        &self.src.bytes.as_slice()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Whether matmuls through this weight use a full-precision copy ([`Backend::keep_dense`]).
    pub fn is_dense(&self) -> bool {
        self.dense().is_some()
    }

    fn dense(&self) -> Option<Arc<Vec<f32>>> {
        // A panic elsewhere cannot leave the Option half-written: use it as it is.
        self.dense.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Memory slot ids in host memory: `rows` tokens × `cols` picks.
#[derive(Clone, Debug)]
pub struct CpuSlots {
    /// Row-major slot ids.
    pub ids: Vec<u32>,
    /// Tokens.
    pub rows: usize,
    /// Picks per token.
    pub cols: usize,
}

/// Keys and values of every layer, appended as tokens arrive.
pub struct CpuKvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    kv_dim: usize,
}

impl CpuBackend {
    /// A backend using `threads` worker threads (0 = one per core).
    pub fn new(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("engram-cpu-{i}"))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("cannot start {threads} threads: {e}")))?;
        Ok(CpuBackend { pool })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}

fn is_float(dtype: GgmlType) -> bool {
    matches!(dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// One product a · b of a [`CpuBackend::gemm_sum`] or [`CpuBackend::gemm_each`]: `a` is
/// m × k row-major, element (i, j) of `b` (k × n) sits at `b[i·strides.0 + j·strides.1]`.
#[derive(Clone, Copy)]
struct GemmTerm<'a> {
    a: &'a [f32],
    k: usize,
    b: &'a [f32],
    strides: (usize, usize),
}

impl GemmTerm<'_> {
    fn check(&self, m: usize, n: usize) {
        let (rsb, csb) = self.strides;
        assert_eq!(self.a.len(), m * self.k, "gemm: left operand is not m × k");
        let last = (self.k.max(1) - 1) * rsb + (n.max(1) - 1) * csb;
        assert!(
            m == 0 || self.k == 0 || n == 0 || last < self.b.len(),
            "gemm: right operand too small"
        );
    }
}

/// Columns `j0..j1` of the m × n row-major `dst` = Σ `terms` (each with n columns).
///
/// # Safety
/// `dst` holds m × n values, no other thread touches these columns meanwhile, and every
/// term passed [`GemmTerm::check`] for (m, n).
unsafe fn gemm_columns(
    m: usize,
    n: usize,
    (j0, j1): (usize, usize),
    dst: *mut f32,
    terms: &[GemmTerm<'_>],
) {
    let mut written = false;
    for t in terms.iter().filter(|t| t.k > 0) {
        let (rsb, csb) = t.strides;
        // SAFETY: `a` holds m × k values read with strides (k, 1); `b` from offset j0·csb
        // holds element (i, j) for i < k, j < j1 − j0 at i·rsb + j·csb, inside `b` (checked);
        // the columns j0..j1 of dst's m rows (row stride n) are this caller's alone.
        unsafe {
            gemm::gemm(
                m,
                j1 - j0,
                t.k,
                dst.add(j0),
                1,
                n as isize,
                written,
                t.a.as_ptr(),
                1,
                t.k as isize,
                t.b.as_ptr().add(j0 * csb),
                csb as isize,
                rsb as isize,
                if written { 1.0 } else { 0.0 },
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        written = true;
    }
}

impl CpuBackend {
    /// Column blocks `(output, j0, j1)` splitting outputs of `widths` columns into about two
    /// blocks per thread over all of them (multiples of 16 columns keep every block on the
    /// kernel's full width), so work stealing can even out blocks of unequal outputs.
    fn column_blocks(&self, widths: &[usize]) -> Vec<(usize, usize, usize)> {
        let total: usize = widths.iter().sum();
        let width = total.div_ceil(2 * self.threads()).next_multiple_of(16);
        let mut blocks = Vec::new();
        for (o, &n) in widths.iter().enumerate() {
            for j0 in (0..n).step_by(width.max(1)) {
                blocks.push((o, j0, (j0 + width).min(n)));
            }
        }
        blocks
    }

    /// The input of a matmul through a full-precision copy of a weight: quantized weights
    /// multiply 8-bit activations, so rounding them the same way here keeps learning's
    /// forward the function that answering computes.
    fn dense_input<'x>(&self, float_weight: bool, x: &'x CpuTensor) -> std::borrow::Cow<'x, [f32]> {
        if float_weight {
            std::borrow::Cow::Borrowed(&x.data)
        } else {
            std::borrow::Cow::Owned(self.pool.install(|| round_through_q8(&x.data, x.cols)))
        }
    }

    /// Σ `terms` (each m × k_i times k_i × n), row-major m × n. Each task computes its own
    /// block of columns straight into the result, adding the terms in order, so the result
    /// does not depend on scheduling.
    fn gemm_sum(&self, m: usize, n: usize, terms: &[GemmTerm<'_>]) -> Vec<f32> {
        terms.iter().for_each(|t| t.check(m, n));
        let mut out = vec![0f32; m * n];
        if m == 0 || n == 0 {
            return out;
        }
        let blocks = self.column_blocks(&[n]);
        let dst = SharedOut(out.as_mut_ptr());
        self.pool.install(|| {
            blocks.par_iter().for_each(|&(_, j0, j1)| {
                let dst = &dst;
                // SAFETY: `out` holds m × n values and outlives the tasks; the blocks are
                // disjoint column ranges; the terms were checked above.
                unsafe { gemm_columns(m, n, (j0, j1), dst.0, terms) };
            })
        });
        out
    }

    /// `a` (m × k) times each of `bs` ((k × n_i, strides) each), as one batch of tasks:
    /// one row-major m × n_i result per product.
    fn gemm_each(
        &self,
        m: usize,
        a: &[f32],
        k: usize,
        bs: &[(&[f32], (usize, usize), usize)],
    ) -> Vec<Vec<f32>> {
        let terms: Vec<GemmTerm<'_>> = bs
            .iter()
            .map(|&(b, strides, n)| {
                let t = GemmTerm { a, k, b, strides };
                t.check(m, n);
                t
            })
            .collect();
        let widths: Vec<usize> = bs.iter().map(|&(_, _, n)| n).collect();
        let mut outs: Vec<Vec<f32>> = widths.iter().map(|&n| vec![0f32; m * n]).collect();
        if m == 0 {
            return outs;
        }
        let blocks = self.column_blocks(&widths);
        let dsts: Vec<SharedOut> = outs.iter_mut().map(|o| SharedOut(o.as_mut_ptr())).collect();
        self.pool.install(|| {
            blocks.par_iter().for_each(|&(o, j0, j1)| {
                let dst = &dsts[o];
                // SAFETY: output o holds m × widths[o] values and outlives the tasks; blocks of
                // one output are disjoint column ranges; its term was checked above.
                unsafe { gemm_columns(m, widths[o], (j0, j1), dst.0, &terms[o..=o]) };
            })
        });
        outs
    }
}

/// Rows below this run on the calling thread: handing decode's single row to the pool
/// costs more than the work.
const PARALLEL_ROWS: usize = 16;

impl CpuBackend {
    /// Calls `f(r, row)` for every row `r` of `out` (rows of `cols`), across the pool when
    /// there are enough rows. Each row is computed alone, so the result does not depend on
    /// scheduling.
    fn for_rows(&self, out: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
        if cols == 0 {
            return;
        }
        if out.len() / cols >= PARALLEL_ROWS {
            self.pool.install(|| {
                out.par_chunks_exact_mut(cols)
                    .enumerate()
                    .for_each(|(r, row)| f(r, row))
            });
        } else {
            out.chunks_exact_mut(cols)
                .enumerate()
                .for_each(|(r, row)| f(r, row));
        }
    }
}

/// A result of [`CpuBackend::gemm_sum`] or [`CpuBackend::gemm_each`], shared by the tasks
/// that each write their own columns.
struct SharedOut(*mut f32);
// SAFETY: the tasks write disjoint columns, and the gemm waits for all of them before the
// result is read or freed.
unsafe impl Sync for SharedOut {}

/// `x` (rows of `k`) quantized to the 8-bit activation blocks the quantized matmul uses and
/// decoded back to f32.
fn round_through_q8(x: &[f32], k: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(k).zip(x.par_chunks(k)).for_each_init(
        Vec::new,
        |blocks: &mut Vec<Q8Act>, (out, row)| {
            quantize_activations(row, blocks);
            for (o, b) in out.chunks_exact_mut(QK).zip(blocks.iter()) {
                for (v, &q) in o.iter_mut().zip(&b.qs) {
                    *v = b.d * f32::from(q);
                }
            }
        },
    );
    out
}

/// Rows of weights per parallel task: enough tasks to balance threads, few enough to amortize.
fn rows_per_task(rows: usize, threads: usize) -> usize {
    (rows / (threads * 8)).clamp(4, 256)
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = CpuWeight;
    type KvCache = CpuKvCache;
    type Slots = CpuSlots;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads())
    }

    fn load_weight(&self, w: &WeightSource) -> Result<CpuWeight> {
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

    fn keep_dense(&self, w: &CpuWeight, keep: bool) {
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
        self.pool.install(|| {
            data.par_chunks_mut(cols)
                .enumerate()
                .for_each(|(r, out)| dequantize_row(w.src.dtype, w.row(r), out));
        });
        *slot = Some(Arc::new(data));
    }

    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> CpuTensor {
        assert_eq!(data.len(), rows * cols, "upload: data does not match shape");
        CpuTensor {
            data: data.to_vec(),
            rows,
            cols,
        }
    }

    fn upload_vec(&self, data: Vec<f32>, rows: usize, cols: usize) -> CpuTensor {
        assert_eq!(data.len(), rows * cols, "upload: data does not match shape");
        CpuTensor { data, rows, cols }
    }

    fn download(&self, t: &CpuTensor) -> Vec<f32> {
        t.data.clone()
    }

    fn host_view<'t>(&self, t: &'t CpuTensor) -> std::borrow::Cow<'t, [f32]> {
        std::borrow::Cow::Borrowed(&t.data)
    }

    fn take_to_host(&self, t: CpuTensor) -> Vec<f32> {
        t.data
    }

    fn shape(&self, t: &CpuTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn concat_rows(&self, parts: &[&CpuTensor]) -> CpuTensor {
        let cols = parts.first().map_or(0, |p| p.cols);
        assert!(
            parts.iter().all(|p| p.cols == cols),
            "concat_rows: widths differ"
        );
        CpuTensor {
            data: parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
            rows: parts.iter().map(|p| p.rows).sum(),
            cols,
        }
    }

    fn pad_rows(&self, t: &CpuTensor, start: usize, total: usize) -> CpuTensor {
        assert!(start + t.rows <= total, "pad_rows: rows do not fit");
        let mut data = vec![0f32; total * t.cols];
        data[start * t.cols..(start + t.rows) * t.cols].copy_from_slice(&t.data);
        CpuTensor {
            data,
            rows: total,
            cols: t.cols,
        }
    }

    fn slice_rows(&self, t: &CpuTensor, start: usize, end: usize) -> CpuTensor {
        CpuTensor {
            data: t.data[start * t.cols..end * t.cols].to_vec(),
            rows: end - start,
            cols: t.cols,
        }
    }

    fn embed(&self, table: &CpuWeight, tokens: &[u32]) -> Result<CpuTensor> {
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

    fn matmul(&self, w: &CpuWeight, x: &CpuTensor) -> CpuTensor {
        assert_eq!(x.cols, w.src.cols, "matmul {}: input width", w.src.name);
        let (n, k, rows) = (x.rows, x.cols, w.src.rows);
        if let Some(dense) = w.dense() {
            let xs = self.dense_input(is_float(w.src.dtype), x);
            // W read as its transpose: element (i, j) of Wᵀ is W[j][i].
            let term = GemmTerm {
                a: &xs,
                k,
                b: &dense,
                strides: (1, k),
            };
            return CpuTensor {
                data: self.gemm_sum(n, rows, &[term]),
                rows: n,
                cols: rows,
            };
        }
        let dtype = w.src.dtype;
        self.pool.install(|| {
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
            let chunk = rows_per_task(rows, self.threads());
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
            let tiled =
                !xq.is_empty() && dot_rows::<4>(dtype, w.row(0), [&xq[..blocks]; 4]).is_some();
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

    fn matmul_each(&self, ws: &[&CpuWeight], x: &CpuTensor) -> Vec<CpuTensor> {
        let dense: Option<Vec<_>> = ws.iter().map(|w| w.dense()).collect();
        let float = ws.iter().map(|w| is_float(w.src.dtype)).collect::<Vec<_>>();
        let (Some(dense), false) = (dense, float.windows(2).any(|f| f[0] != f[1])) else {
            return ws.iter().map(|w| self.matmul(w, x)).collect();
        };
        for w in ws {
            assert_eq!(x.cols, w.src.cols, "matmul {}: input width", w.src.name);
        }
        // The input is rounded once for all the weights, and all their column blocks share
        // one batch of tasks.
        let xs = self.dense_input(float.first().copied().unwrap_or(true), x);
        let bs: Vec<_> = ws
            .iter()
            .zip(&dense)
            .map(|(w, d)| (&d[..], (1, x.cols), w.src.rows))
            .collect();
        self.gemm_each(x.rows, &xs, x.cols, &bs)
            .into_iter()
            .zip(ws)
            .map(|(data, w)| CpuTensor {
                data,
                rows: x.rows,
                cols: w.src.rows,
            })
            .collect()
    }

    fn matmul_backward_sum(&self, ws: &[&CpuWeight], dys: &[&CpuTensor]) -> CpuTensor {
        super::check_backward_sum_args(ws.len(), dys.len());
        let dense: Option<Vec<_>> = ws.iter().map(|w| w.dense()).collect();
        let Some(dense) = dense else {
            return super::matmul_backward_one_by_one(self, ws, dys);
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
            data: self.gemm_sum(n, cols, &terms),
            rows: n,
            cols,
        }
    }

    fn rms_norm(&self, x: &CpuTensor, weight: &CpuTensor, eps: f32) -> CpuTensor {
        let mut data = x.data.clone();
        self.for_rows(&mut data, x.cols, |_, row| {
            // Sum of squares in f64, and x·scale before ·weight: ggml's order, so rounding
            // matches llama.cpp where activations are large.
            let sum: f64 = row.iter().map(|&v| (v * v) as f64).sum();
            let mean = (sum / x.cols as f64) as f32;
            let scale = 1.0 / (mean + eps).sqrt();
            for (v, w) in row.iter_mut().zip(&weight.data) {
                *v = (*v * scale) * w;
            }
        });
        CpuTensor {
            data,
            rows: x.rows,
            cols: x.cols,
        }
    }

    fn rope(&self, x: &mut CpuTensor, n_heads: usize, head_dim: usize, pos0: usize, rope: &Rope) {
        rotate(x, n_heads, head_dim, pos0, rope, 1.0);
    }

    fn silu_mul(&self, gate: &CpuTensor, up: &CpuTensor) -> CpuTensor {
        let c = gate.cols;
        let mut data = vec![0f32; gate.data.len()];
        self.for_rows(&mut data, c, |r, out| {
            let (g, u) = (&gate.data[r * c..(r + 1) * c], &up.data[r * c..(r + 1) * c]);
            for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
        CpuTensor {
            data,
            rows: gate.rows,
            cols: gate.cols,
        }
    }

    fn add_assign(&self, x: &mut CpuTensor, y: &CpuTensor) {
        for (a, b) in x.data.iter_mut().zip(&y.data) {
            *a += b;
        }
    }

    fn add_row(&self, x: &mut CpuTensor, row: &CpuTensor) {
        assert_eq!(row.data.len(), x.cols, "add_row: width");
        for r in x.data.chunks_exact_mut(x.cols) {
            for (a, b) in r.iter_mut().zip(&row.data) {
                *a += b;
            }
        }
    }

    fn product_key_topk(
        &self,
        q: &CpuTensor,
        keys: &CpuTensor,
        shape: ProductKeyShape,
    ) -> (CpuSlots, CpuTensor) {
        let ProductKeyShape {
            heads,
            n_keys,
            top_k,
            k_dim,
        } = shape;
        assert_eq!(q.cols, shape.query_cols(), "product_key_topk: query width");
        assert_eq!(
            (keys.rows, keys.cols),
            (shape.key_rows(), k_dim / 2),
            "product_key_topk: sub-key table shape"
        );
        let picks = shape.picks();
        let mut ids = vec![0u32; q.rows * picks];
        let mut weights = vec![0f32; q.rows * picks];
        let head_keys = 2 * n_keys * (k_dim / 2);
        self.pool.install(|| {
            ids.par_chunks_mut(top_k)
                .zip(weights.par_chunks_mut(top_k))
                .enumerate()
                .for_each(|(idx, (ids, ws))| {
                    let (t, h) = (idx / heads, idx % heads);
                    let qh = &q.data[t * q.cols + h * k_dim..][..k_dim];
                    let kh = &keys.data[h * head_keys..][..head_keys];
                    let best = lookup_head(qh, kh, n_keys, top_k);
                    for ((id, w), (score, slot)) in ids.iter_mut().zip(ws.iter_mut()).zip(best) {
                        *id = slot;
                        *w = score;
                    }
                    softmax(ws);
                });
        });
        (
            CpuSlots {
                ids,
                rows: q.rows,
                cols: picks,
            },
            CpuTensor {
                data: weights,
                rows: q.rows,
                cols: picks,
            },
        )
    }

    fn download_slots(&self, slots: &CpuSlots) -> Vec<u32> {
        slots.ids.clone()
    }

    fn gather_values(
        &self,
        values: &CpuTensor,
        slots: &CpuSlots,
        weights: &CpuTensor,
    ) -> CpuTensor {
        assert_eq!(
            (slots.rows, slots.cols),
            (weights.rows, weights.cols),
            "gather_values: slots and weights differ in shape"
        );
        let d = values.cols;
        let mut data = vec![0f32; slots.rows * d];
        let row = |t: usize, out: &mut [f32]| {
            let ids = &slots.ids[t * slots.cols..][..slots.cols];
            let ws = &weights.data[t * slots.cols..][..slots.cols];
            for (&id, &w) in ids.iter().zip(ws) {
                let v = &values.data[id as usize * d..][..d];
                for (o, x) in out.iter_mut().zip(v) {
                    *o += w * x;
                }
            }
        };
        if slots.rows == 1 {
            row(0, &mut data);
        } else {
            self.pool.install(|| {
                data.par_chunks_mut(d)
                    .enumerate()
                    .for_each(|(t, out)| row(t, out));
            });
        }
        CpuTensor {
            data,
            rows: slots.rows,
            cols: d,
        }
    }

    fn matmul_backward(&self, w: &CpuWeight, dy: &CpuTensor) -> CpuTensor {
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
                data: self.gemm_sum(n, cols, &[term]),
                rows: n,
                cols,
            };
        }
        let dtype = w.src.dtype;
        // A fixed split into partial sums added in a fixed order: the same inputs give the
        // same bits on every run (rayon's fold/reduce would group by work-stealing luck).
        let parts = (self.threads() * 4).clamp(1, rows.max(1));
        let chunk = rows.div_ceil(parts).max(1);
        let partials: Vec<Vec<f32>> = self.pool.install(|| {
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

    fn rms_norm_backward(
        &self,
        x: &CpuTensor,
        weight: &CpuTensor,
        eps: f32,
        dy: &CpuTensor,
    ) -> CpuTensor {
        let d = x.cols;
        let mut data = vec![0f32; x.data.len()];
        self.for_rows(&mut data, d, |r, out| {
            let (xr, gr) = (&x.data[r * d..(r + 1) * d], &dy.data[r * d..(r + 1) * d]);
            let sum: f64 = xr.iter().map(|&v| (v * v) as f64).sum();
            let s = 1.0 / ((sum / d as f64) + eps as f64).sqrt();
            // y = x·s·w  ⇒  dx = s·(w⊙dy) − x·s³/d·Σ(w⊙dy⊙x)
            let dot: f64 = gr
                .iter()
                .zip(&weight.data)
                .zip(xr)
                .map(|((&g, &w), &v)| (g * w) as f64 * v as f64)
                .sum();
            let k = s * s * s * dot / d as f64;
            for (((o, &g), &w), &v) in out.iter_mut().zip(gr).zip(&weight.data).zip(xr) {
                *o = (s * (g * w) as f64 - k * v as f64) as f32;
            }
        });
        CpuTensor {
            data,
            rows: x.rows,
            cols: d,
        }
    }

    fn rope_backward(
        &self,
        dy: &mut CpuTensor,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        rope: &Rope,
    ) {
        rotate(dy, n_heads, head_dim, pos0, rope, -1.0);
    }

    fn silu_mul_backward(
        &self,
        gate: &CpuTensor,
        up: &CpuTensor,
        dy: &CpuTensor,
    ) -> (CpuTensor, CpuTensor) {
        let (n, c) = (gate.data.len(), gate.cols);
        // dg and du side by side in one row of 2c, so each row is one task.
        let mut both = vec![0f32; 2 * n];
        self.for_rows(&mut both, 2 * c, |r, out| {
            let (dg, du) = out.split_at_mut(c);
            let at = r * c..(r + 1) * c;
            let (g, u, d) = (&gate.data[at.clone()], &up.data[at.clone()], &dy.data[at]);
            for i in 0..c {
                let sig = 1.0 / (1.0 + (-g[i]).exp());
                dg[i] = d[i] * u[i] * sig * (1.0 + g[i] * (1.0 - sig));
                du[i] = d[i] * g[i] * sig;
            }
        });
        let (mut dg, mut du) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for row in both.chunks_exact(2 * c.max(1)) {
            dg.extend_from_slice(&row[..c]);
            du.extend_from_slice(&row[c..]);
        }
        let t = |data| CpuTensor {
            data,
            rows: gate.rows,
            cols: gate.cols,
        };
        (t(dg), t(du))
    }

    fn attention_backward(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        dout: &CpuTensor,
        shape: AttentionShape,
    ) -> (CpuTensor, CpuTensor, CpuTensor) {
        let AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim: hd,
        } = shape;
        let n = q.rows;
        let group = n_heads / n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let (qc, kc) = (q.cols, k.cols);
        // One task per query head (more tasks than the few kv heads, so both threads stay
        // busy): it owns that head's dq and a partial dk, dv of its kv head, summed below in
        // a fixed order so the result does not depend on scheduling.
        let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = self.pool.install(|| {
            (0..n_heads)
                .into_par_iter()
                .map(|h| {
                    let kvh = h / group;
                    let mut dq = vec![0f32; n * hd];
                    let mut dk = vec![0f32; n * hd];
                    let mut dv = vec![0f32; n * hd];
                    let kj = |j: usize| &k.data[j * kc + kvh * hd..][..hd];
                    let vj = |j: usize| &v.data[j * kc + kvh * hd..][..hd];
                    let mut p = vec![0f32; n];
                    let mut dp = vec![0f32; n];
                    for t in 0..n {
                        let qt = &q.data[t * qc + h * hd..][..hd];
                        let dot = &dout.data[t * qc + h * hd..][..hd];
                        // A position whose output gradient is zero (a frozen prefix, or one
                        // past the last scored position) adds exactly zero everywhere.
                        if dot.iter().all(|&g| g == 0.0) {
                            continue;
                        }
                        let mut max = f32::NEG_INFINITY;
                        for (j, pj) in p[..=t].iter_mut().enumerate() {
                            *pj = dot_f32(qt, kj(j)) * scale;
                            max = max.max(*pj);
                        }
                        let mut sum = 0f32;
                        for pj in &mut p[..=t] {
                            *pj = (*pj - max).exp();
                            sum += *pj;
                        }
                        let mut weighted = 0f32;
                        for (j, (pj, dpj)) in p[..=t].iter_mut().zip(&mut dp[..=t]).enumerate() {
                            *pj /= sum;
                            *dpj = dot_f32(dot, vj(j));
                            weighted += *pj * *dpj;
                        }
                        let dqt = &mut dq[t * hd..][..hd];
                        for j in 0..=t {
                            let ds = p[j] * (dp[j] - weighted) * scale;
                            axpy(dqt, ds, kj(j));
                            axpy(&mut dk[j * hd..(j + 1) * hd], ds, qt);
                            axpy(&mut dv[j * hd..(j + 1) * hd], p[j], dot);
                        }
                    }
                    (dq, dk, dv)
                })
                .collect()
        });
        let mut dq = vec![0f32; n * qc];
        let mut dk = vec![0f32; n * kc];
        let mut dv = vec![0f32; n * kc];
        for (h, (pq, pk, pv)) in parts.into_iter().enumerate() {
            let kvh = h / group;
            for t in 0..n {
                dq[t * qc + h * hd..][..hd].copy_from_slice(&pq[t * hd..][..hd]);
                let (dkt, dvt) = (
                    &mut dk[t * kc + kvh * hd..][..hd],
                    &mut dv[t * kc + kvh * hd..][..hd],
                );
                dkt.iter_mut()
                    .zip(&pk[t * hd..][..hd])
                    .for_each(|(a, b)| *a += b);
                dvt.iter_mut()
                    .zip(&pv[t * hd..][..hd])
                    .for_each(|(a, b)| *a += b);
            }
        }
        let t = |data, cols| CpuTensor {
            data,
            rows: n,
            cols,
        };
        (t(dq, qc), t(dk, kc), t(dv, kc))
    }

    fn cross_entropy(&self, logits: &CpuTensor, targets: &[u32]) -> (Vec<f32>, CpuTensor) {
        assert_eq!(
            targets.len(),
            logits.rows,
            "cross_entropy: one target per row"
        );
        let c = logits.cols;
        let mut grad = logits.data.clone();
        let mut losses = vec![0f32; logits.rows];
        self.pool.install(|| {
            grad.par_chunks_mut(c)
                .zip(losses.par_iter_mut())
                .zip(targets.par_iter())
                .for_each(|((row, loss), &target)| {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let picked = row[target as usize];
                    // One f32 exp per logit (the vocabulary is 49,152 wide and this runs at
                    // every step); the sum is kept in f64 so the loss does not drift.
                    let mut sum = 0f64;
                    for l in row.iter_mut() {
                        *l = (*l - max).exp();
                        sum += f64::from(*l);
                    }
                    *loss = (sum.ln() + f64::from(max) - f64::from(picked)) as f32;
                    let inv = (1.0 / sum) as f32;
                    for l in row.iter_mut() {
                        *l *= inv;
                    }
                    row[target as usize] -= 1.0;
                });
        });
        (
            losses,
            CpuTensor {
                data: grad,
                rows: logits.rows,
                cols: c,
            },
        )
    }

    fn value_grads(
        &self,
        slots: &CpuSlots,
        weights: &CpuTensor,
        dy: &CpuTensor,
        rows: &[u32],
    ) -> CpuTensor {
        let d = dy.cols;
        let index: std::collections::HashMap<u32, usize> =
            rows.iter().enumerate().map(|(i, &r)| (r, i)).collect();
        let mut data = vec![0f32; rows.len() * d];
        for t in 0..slots.rows {
            let g = &dy.data[t * d..(t + 1) * d];
            for j in 0..slots.cols {
                if let Some(&i) = index.get(&slots.ids[t * slots.cols + j]) {
                    axpy(
                        &mut data[i * d..(i + 1) * d],
                        weights.data[t * slots.cols + j],
                        g,
                    );
                }
            }
        }
        CpuTensor {
            data,
            rows: rows.len(),
            cols: d,
        }
    }

    fn read_rows(&self, t: &CpuTensor, rows: &[u32]) -> CpuTensor {
        let d = t.cols;
        let mut data = Vec::with_capacity(rows.len() * d);
        for &r in rows {
            data.extend_from_slice(&t.data[r as usize * d..(r as usize + 1) * d]);
        }
        CpuTensor {
            data,
            rows: rows.len(),
            cols: d,
        }
    }

    fn write_rows(&self, t: &mut CpuTensor, rows: &[u32], src: &CpuTensor) {
        let d = t.cols;
        assert_eq!(
            (src.rows, src.cols),
            (rows.len(), d),
            "write_rows: source shape"
        );
        for (&r, row) in rows.iter().zip(src.data.chunks_exact(d)) {
            t.data[r as usize * d..(r as usize + 1) * d].copy_from_slice(row);
        }
    }

    fn sgd_rows(&self, values: &mut CpuTensor, rows: &[u32], grads: &CpuTensor, lr: f32) {
        let d = values.cols;
        assert_eq!(
            (grads.rows, grads.cols),
            (rows.len(), d),
            "sgd_rows: gradient shape"
        );
        for (&r, g) in rows.iter().zip(grads.data.chunks_exact(d)) {
            axpy(
                &mut values.data[r as usize * d..(r as usize + 1) * d],
                -lr,
                g,
            );
        }
    }

    fn new_kv_cache(&self, n_layers: usize, kv_dim: usize, capacity: usize) -> CpuKvCache {
        let reserve = capacity.min(512) * kv_dim;
        CpuKvCache {
            k: (0..n_layers).map(|_| Vec::with_capacity(reserve)).collect(),
            v: (0..n_layers).map(|_| Vec::with_capacity(reserve)).collect(),
            kv_dim,
        }
    }

    fn kv_len(&self, cache: &CpuKvCache) -> usize {
        cache.k.iter().map(Vec::len).min().unwrap_or(0) / cache.kv_dim
    }

    fn kv_truncate(&self, cache: &mut CpuKvCache, len: usize) {
        for buf in cache.k.iter_mut().chain(cache.v.iter_mut()) {
            buf.truncate(len * cache.kv_dim);
        }
    }

    fn attention(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        cache: &mut CpuKvCache,
        layer: usize,
        shape: AttentionShape,
    ) -> CpuTensor {
        let AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim,
        } = shape;
        let kv_dim = cache.kv_dim;
        cache.k[layer].extend_from_slice(&k.data);
        cache.v[layer].extend_from_slice(&v.data);
        let (keys, values) = (&cache.k[layer], &cache.v[layer]);
        let total = keys.len() / kv_dim;
        let n = q.rows;
        let pos0 = total - n;
        let group = n_heads / n_kv_heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut data = vec![0f32; n * n_heads * head_dim];
        self.pool.install(|| {
            data.par_chunks_mut(head_dim).enumerate().for_each_init(
                Vec::new,
                |scores: &mut Vec<f32>, (idx, out)| {
                    let (t, h) = (idx / n_heads, idx % n_heads);
                    let qh = &q.data[t * q.cols + h * head_dim..][..head_dim];
                    let kvh = h / group;
                    let visible = pos0 + t + 1;
                    scores.clear();
                    scores.extend((0..visible).map(|j| {
                        let kj = &keys[j * kv_dim + kvh * head_dim..][..head_dim];
                        dot_f32(qh, kj) * scale
                    }));
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for s in scores.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let inv = 1.0 / sum;
                    for (j, &p) in scores.iter().enumerate() {
                        let vj = &values[j * kv_dim + kvh * head_dim..][..head_dim];
                        let w = p * inv;
                        for (o, x) in out.iter_mut().zip(vj) {
                            *o += w * x;
                        }
                    }
                },
            );
        });
        CpuTensor {
            data,
            rows: n,
            cols: n_heads * head_dim,
        }
    }
}

/// RoPE rotation by `direction`·θ (1 forward, −1 for the gradient, which is the inverse).
fn rotate(
    x: &mut CpuTensor,
    n_heads: usize,
    head_dim: usize,
    pos0: usize,
    rope: &Rope,
    direction: f32,
) {
    let half = rope.dims / 2;
    // Angles as pos·s^i with s = base^(−2/dims), built by repeated f32 multiplication
    // the way ggml builds its RoPE cache, so engram rotates by the same rounded angles.
    let step = rope.base.powf(-2.0 / rope.dims as f32);
    let mut cs = vec![(0f32, 0f32); half];
    for (t, row) in x.data.chunks_exact_mut(x.cols).enumerate() {
        let mut theta = (pos0 + t) as f32;
        for c in cs.iter_mut() {
            let (s, co) = theta.sin_cos();
            *c = (co, direction * s);
            theta *= step;
        }
        for head in row.chunks_exact_mut(head_dim).take(n_heads) {
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = match rope.layout {
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                    RopeLayout::Halves => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }
}

/// acc[t] += dy[t, r] · W[r] for the weight rows `rs`: the body of the transposed matmul,
/// compiled for AVX2 + FMA when the CPU has them.
fn scatter_weight_rows<'a>(
    dtype: GgmlType,
    row: impl Fn(usize) -> &'a [u8],
    dy: &[f32],
    rows: usize,
    rs: std::ops::Range<usize>,
    acc: &mut [f32],
) {
    #[inline(always)]
    fn body<'a>(
        dtype: GgmlType,
        row: &impl Fn(usize) -> &'a [u8],
        dy: &[f32],
        rows: usize,
        rs: std::ops::Range<usize>,
        acc: &mut [f32],
    ) {
        // Four weight rows at a time: each pass over a token's accumulator row then carries
        // four products, and that load/store traffic, not the arithmetic, is what bounds this.
        const GROUP: usize = 4;
        let n = dy.len() / rows;
        let cols = acc.len() / n.max(1);
        let mut decoded = vec![0f32; GROUP * cols];
        let mut live = rs
            .filter(|&r| (0..n).any(|t| dy[t * rows + r] != 0.0))
            .peekable();
        while live.peek().is_some() {
            let mut group = [usize::MAX; GROUP];
            for (k, r) in live.by_ref().take(GROUP).enumerate() {
                group[k] = r;
                dequantize_row(dtype, row(r), &mut decoded[k * cols..(k + 1) * cols]);
            }
            let (d0, rest) = decoded.split_at(cols);
            let (d1, rest) = rest.split_at(cols);
            let (d2, d3) = rest.split_at(cols);
            for t in 0..n {
                // A missing row (the last group may be short) contributes a zero factor.
                let g = group.map(|r| {
                    if r == usize::MAX {
                        0.0
                    } else {
                        dy[t * rows + r]
                    }
                });
                if g == [0.0; GROUP] {
                    continue;
                }
                let out = &mut acc[t * cols..(t + 1) * cols];
                for ((((o, a), b), c), d) in out.iter_mut().zip(d0).zip(d1).zip(d2).zip(d3) {
                    *o += g[0] * a + g[1] * b + g[2] * c + g[3] * d;
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn wide<'a>(
            dtype: GgmlType,
            row: &impl Fn(usize) -> &'a [u8],
            dy: &[f32],
            rows: usize,
            rs: std::ops::Range<usize>,
            acc: &mut [f32],
        ) {
            body(dtype, row, dy, rows, rs, acc)
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: both features were detected at run time.
            return unsafe { wide(dtype, &row, dy, rows, rs, acc) };
        }
    }
    body(dtype, &row, dy, rows, rs, acc)
}

/// out += a · x.
#[inline]
fn axpy(out: &mut [f32], a: f32, x: &[f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += a * v;
    }
}

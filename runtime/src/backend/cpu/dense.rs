//! Dense products on the pool: blocked f32 GEMM over several terms, the 8-bit rounding
//! learning's full-precision copies apply to their input, and the transposed quantized product.

use rayon::prelude::*;

use super::*;
use crate::quant::{GgmlType, Q8Act, QK, dequantize_row, quantize_activations};

impl CpuBackend {
    /// Column blocks `(output, j0, j1)` splitting outputs of `widths` columns into about two
    /// blocks per thread over all of them (multiples of 16 columns keep every block on the
    /// kernel's full width), so work stealing can even out blocks of unequal outputs.
    pub(super) fn column_blocks(&self, widths: &[usize]) -> Vec<(usize, usize, usize)> {
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
    pub(super) fn dense_input<'x>(
        &self,
        float_weight: bool,
        x: &'x CpuTensor,
    ) -> std::borrow::Cow<'x, [f32]> {
        if float_weight {
            std::borrow::Cow::Borrowed(&x.data)
        } else {
            std::borrow::Cow::Owned(self.pool.install(|| round_through_q8(&x.data, x.cols)))
        }
    }

    /// Σ `terms` (each m × k_i times k_i × n), row-major m × n. Each task computes its own
    /// block of columns straight into the result, adding the terms in order, so the result
    /// does not depend on scheduling.
    pub(super) fn gemm_sum(&self, m: usize, n: usize, terms: &[GemmTerm<'_>]) -> Vec<f32> {
        terms.iter().for_each(|t| t.check(m, n));
        let mut out = buffers::zeroed(m * n);
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
    pub(super) fn gemm_each(
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
        let mut outs: Vec<Vec<f32>> = widths.iter().map(|&n| buffers::zeroed(m * n)).collect();
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

/// One product a · b of a [`CpuBackend::gemm_sum`] or [`CpuBackend::gemm_each`]: `a` is
/// m × k row-major, element (i, j) of `b` (k × n) sits at `b[i·strides.0 + j·strides.1]`.
#[derive(Clone, Copy)]
pub(super) struct GemmTerm<'a> {
    pub(super) a: &'a [f32],
    pub(super) k: usize,
    pub(super) b: &'a [f32],
    pub(super) strides: (usize, usize),
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
pub(super) unsafe fn gemm_columns(
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

/// A result of [`CpuBackend::gemm_sum`] or [`CpuBackend::gemm_each`], shared by the tasks
/// that each write their own columns.
pub(super) struct SharedOut(*mut f32);
// SAFETY: the tasks write disjoint columns, and the gemm waits for all of them before the
// result is read or freed.

unsafe impl Sync for SharedOut {}

/// `x` (rows of `k`) quantized to the 8-bit activation blocks the quantized matmul uses and
/// decoded back to f32.
pub(super) fn round_through_q8(x: &[f32], k: usize) -> Vec<f32> {
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
pub(super) fn rows_per_task(rows: usize, threads: usize) -> usize {
    (rows / (threads * 8)).clamp(4, 256)
}

/// acc[t] += dy[t, r] · W[r] for the weight rows `rs`: the body of the transposed matmul,
/// compiled for AVX2 + FMA when the CPU has them.
pub(super) fn scatter_weight_rows<'a>(
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

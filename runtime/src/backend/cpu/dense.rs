//! Dense products on the pool: blocked f32 GEMM over several terms (quantized weights decoded
//! a panel at a time inside each task), the 8-bit rounding learning's GEMM applies to its
//! input, and the transposed quantized product.

use rayon::prelude::*;

use super::*;
use crate::quant::{GgmlType, Q8Act, QK, dequantize_row, quantize_activations};

impl CpuBackend {
    /// Column blocks `(output, j0, j1)` splitting outputs of `widths` columns into about two
    /// blocks per thread over all of them (multiples of 16 columns keep every block on the
    /// kernel's full width, and of `align`, a power of two, on a quantized operand's blocks),
    /// so work stealing can even out blocks of unequal outputs.
    pub(super) fn column_blocks(&self, widths: &[usize], align: usize) -> Vec<(usize, usize, usize)> {
        let total: usize = widths.iter().sum();
        let width = total.div_ceil(2 * self.threads()).next_multiple_of(align.max(16));
        let mut blocks = Vec::new();
        for (o, &n) in widths.iter().enumerate() {
            for j0 in (0..n).step_by(width.max(1)) {
                blocks.push((o, j0, (j0 + width).min(n)));
            }
        }
        blocks
    }

    /// The input of a matmul through the GEMM ([`Backend::use_gemm`]): quantized weights
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
        let align = terms.iter().map(|t| t.b.column_alignment()).max().unwrap_or(1);
        let blocks = self.column_blocks(&[n], align);
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

    /// `a` (m × k) times each of `bs` ((k × n_i operand, n_i) each), as one batch of tasks:
    /// one row-major m × n_i result per product.
    pub(super) fn gemm_each(
        &self,
        m: usize,
        a: &[f32],
        k: usize,
        bs: &[(Operand<'_>, usize)],
    ) -> Vec<Vec<f32>> {
        let terms: Vec<GemmTerm<'_>> = bs
            .iter()
            .map(|&(b, n)| {
                let t = GemmTerm { a, k, b };
                t.check(m, n);
                t
            })
            .collect();
        let widths: Vec<usize> = bs.iter().map(|&(_, n)| n).collect();
        let align = bs.iter().map(|(b, _)| b.column_alignment()).max().unwrap_or(1);
        let mut outs: Vec<Vec<f32>> = widths.iter().map(|&n| buffers::zeroed(m * n)).collect();
        if m == 0 {
            return outs;
        }
        let blocks = self.column_blocks(&widths, align);
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
/// m × k row-major, `b` is k × n.
#[derive(Clone, Copy)]
pub(super) struct GemmTerm<'a> {
    pub(super) a: &'a [f32],
    pub(super) k: usize,
    pub(super) b: Operand<'a>,
}

/// The right operand of a [`GemmTerm`].
#[derive(Clone, Copy)]
pub(super) enum Operand<'a> {
    /// Wᵀ (k = W's columns, n = W's rows): the forward product x · Wᵀ. Each task decodes the
    /// weight rows of its output columns a panel at a time, so no f32 copy of W is kept.
    WeightTransposed(&'a CpuWeight),
    /// W itself (k = W's rows, n = W's columns): the backward product dy · W. Each task
    /// decodes its columns of a panel of W's rows at a time (its columns begin and end on
    /// W's quantization blocks: see [`Operand::column_alignment`]).
    Weight(&'a CpuWeight),
}

impl Operand<'_> {
    /// What a task's first output column and width must be multiples of: a quantized row
    /// decodes only whole blocks.
    pub(super) fn column_alignment(&self) -> usize {
        match self {
            Operand::Weight(w) => w.src.dtype.block_size(),
            _ => 1,
        }
    }
}

impl GemmTerm<'_> {
    fn check(&self, m: usize, n: usize) {
        assert_eq!(self.a.len(), m * self.k, "gemm: left operand is not m × k");
        match self.b {
            Operand::WeightTransposed(w) => assert_eq!(
                (self.k, n),
                (w.src.cols, w.src.rows),
                "gemm {}: Wᵀ is not k × n",
                w.src.name
            ),
            Operand::Weight(w) => assert_eq!(
                (self.k, n),
                (w.src.rows, w.src.cols),
                "gemm {}: W is not k × n",
                w.src.name
            ),
        }
    }
}

/// Floats a task decodes of a weight at a time (256 KiB): the panel stays in the L2 cache
/// while the GEMM packs it.
const PANEL_FLOATS: usize = 64 * 1024;

/// `dst` (m × n, row-major, row stride `n`) ← a · b, or += where `accumulate`; `a` with row
/// stride `a_rs`, `b` element (i, j) at `b[i·rsb + j·csb]`.
///
/// # Safety
/// Every element read or written lies inside its allocation and no other thread touches the
/// written ones meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: *const f32,
    a_rs: usize,
    b: *const f32,
    (rsb, csb): (usize, usize),
) {
    // SAFETY: as the caller promises.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a,
            1,
            a_rs as isize,
            b,
            csb as isize,
            rsb as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Columns `j0..j1` of the m × n row-major `dst` = Σ `terms` (each with n columns).
///
/// # Safety
/// `dst` holds m × n values, no other thread touches these columns meanwhile, every term
/// passed [`GemmTerm::check`] for (m, n), and `j0`, `j1` are multiples of every term's
/// [`Operand::column_alignment`] (or `j1` = n).
pub(super) unsafe fn gemm_columns(
    m: usize,
    n: usize,
    (j0, j1): (usize, usize),
    dst: *mut f32,
    terms: &[GemmTerm<'_>],
) {
    let mut written = false;
    let mut panel = Vec::new();
    for t in terms.iter().filter(|t| t.k > 0) {
        let k = t.k;
        // SAFETY (every call below): `a` holds m × k values (checked); the panels hold the
        // decoded elements they are read at; the columns j0..j1 of dst's m rows (row stride
        // n) are this caller's alone.
        match t.b {
            Operand::WeightTransposed(w) => {
                // Output column j is weight row j: decode a few whole rows at a time.
                let rows_per_panel = (PANEL_FLOATS / k).max(16);
                for c0 in (j0..j1).step_by(rows_per_panel) {
                    let c1 = (c0 + rows_per_panel).min(j1);
                    panel.resize((c1 - c0) * k, 0.0);
                    for (r, out) in (c0..c1).zip(panel.chunks_exact_mut(k)) {
                        dequantize_row(w.src.dtype, w.row(r), out);
                    }
                    unsafe {
                        let (a, b) = (t.a.as_ptr(), panel.as_ptr());
                        gemm_into((m, c1 - c0, k), dst.add(c0), n, written, a, k, b, (1, k));
                    }
                }
            }
            Operand::Weight(w) => {
                // Output columns j0..j1 are W's columns: decode those blocks of a panel of
                // W's rows (the sum over k) at a time, adding each panel's product.
                let (dtype, width) = (w.src.dtype, j1 - j0);
                let block = (dtype.block_size(), dtype.block_bytes());
                let bytes = j0 / block.0 * block.1..j1.div_ceil(block.0) * block.1;
                let rows_per_panel = (PANEL_FLOATS / width.max(1)).max(16);
                for i0 in (0..k).step_by(rows_per_panel) {
                    let i1 = (i0 + rows_per_panel).min(k);
                    panel.resize((i1 - i0) * width, 0.0);
                    for (r, out) in (i0..i1).zip(panel.chunks_exact_mut(width)) {
                        dequantize_row(dtype, &w.row(r)[bytes.clone()], out);
                    }
                    let accumulate = written || i0 > 0;
                    unsafe {
                        let (a, b) = (t.a.as_ptr().add(i0), panel.as_ptr());
                        let shape = (m, width, i1 - i0);
                        gemm_into(shape, dst.add(j0), n, accumulate, a, k, b, (width, 1));
                    }
                }
            }
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

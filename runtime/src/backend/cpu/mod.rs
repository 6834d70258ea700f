//! The reference backend: SIMD dot products (runtime-detected) on a rayon thread pool.

use rayon::prelude::*;

mod attention;
mod buffers;
mod dense;
mod matmul;
mod memory;
mod rows;

use super::{Activation, AttentionShape, Backend, ProductKeyShape, Rope, WeightSource};
use crate::gguf::F32Buffer;
use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// Runs every op on the host CPU.
pub struct CpuBackend {
    pool: rayon::ThreadPool,
    /// [`Backend::run`] calls under way; the last to finish frees the kept buffers.
    runs: std::sync::atomic::AtomicUsize,
}

/// A row-major f32 matrix in host memory.
#[derive(Clone, Debug)]
pub struct CpuTensor {
    /// Row-major values (a memory's value table may be a mapping of its store file).
    pub data: F32Buffer,
    /// Number of rows (tokens).
    pub rows: usize,
    /// Number of columns (features).
    pub cols: usize,
}

/// A weight matrix read in place from the mapped model file.
pub struct CpuWeight {
    src: WeightSource,
    row_bytes: usize,
    /// Whether products run through the blocked f32 GEMM ([`Backend::use_gemm`]).
    through_gemm: std::sync::atomic::AtomicBool,
}

impl CpuWeight {
    fn row(&self, r: usize) -> &[u8] {
        &self.src.bytes.as_slice()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Whether products through this weight run through the blocked f32 GEMM
    /// ([`Backend::use_gemm`]).
    pub fn is_through_gemm(&self) -> bool {
        self.through_gemm.load(std::sync::atomic::Ordering::Relaxed)
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
        Ok(CpuBackend {
            pool,
            runs: Default::default(),
        })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}

fn is_float(dtype: GgmlType) -> bool {
    matches!(dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
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

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = CpuWeight;
    type KvCache = CpuKvCache;
    type Slots = CpuSlots;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads())
    }

    fn run<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        use std::sync::atomic::Ordering;
        self.runs.fetch_add(1, Ordering::SeqCst);
        // Decremented even when `work` panics, so the count cannot stay up for good.
        struct Finished<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Finished<'_> {
            fn drop(&mut self) {
                if self.0.fetch_sub(1, Ordering::SeqCst) == 1 {
                    buffers::release_all();
                }
            }
        }
        let _finished = Finished(&self.runs);
        self.pool.install(work)
    }

    fn load_weight(&self, w: &WeightSource) -> Result<CpuWeight> {
        matmul::load_weight(self, w)
    }

    fn use_gemm(&self, w: &CpuWeight, on: bool) {
        matmul::use_gemm(w, on)
    }

    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> CpuTensor {
        assert_eq!(data.len(), rows * cols, "upload: data does not match shape");
        CpuTensor {
            data: data.to_vec().into(),
            rows,
            cols,
        }
    }

    fn upload_vec(&self, data: Vec<f32>, rows: usize, cols: usize) -> CpuTensor {
        assert_eq!(data.len(), rows * cols, "upload: data does not match shape");
        CpuTensor {
            data: data.into(),
            rows,
            cols,
        }
    }

    fn upload_values(&self, data: F32Buffer, rows: usize, cols: usize) -> CpuTensor {
        assert_eq!(data.len(), rows * cols, "upload: data does not match shape");
        CpuTensor { data, rows, cols }
    }

    fn take_values(&self, mut t: CpuTensor) -> F32Buffer {
        std::mem::take(&mut t.data)
    }

    fn nonzero_rows(&self, t: &CpuTensor) -> Vec<bool> {
        t.data.nonzero_rows(t.cols)
    }

    fn download(&self, t: &CpuTensor) -> Vec<f32> {
        t.data.to_vec()
    }

    fn host_view<'t>(&self, t: &'t CpuTensor) -> std::borrow::Cow<'t, [f32]> {
        std::borrow::Cow::Borrowed(&t.data)
    }

    fn take_to_host(&self, mut t: CpuTensor) -> Vec<f32> {
        match std::mem::take(&mut t.data) {
            F32Buffer::Owned(v) => v,
            mapped => mapped.to_vec(),
        }
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
            data: parts.iter().flat_map(|p| p.data.iter().copied())
                .collect::<Vec<_>>()
                .into(),
            rows: parts.iter().map(|p| p.rows).sum(),
            cols,
        }
    }

    fn pad_rows(&self, t: &CpuTensor, start: usize, total: usize) -> CpuTensor {
        assert!(start + t.rows <= total, "pad_rows: rows do not fit");
        let mut data = buffers::zeroed(total * t.cols);
        data[start * t.cols..(start + t.rows) * t.cols].copy_from_slice(&t.data);
        CpuTensor {
            data: data.into(),
            rows: total,
            cols: t.cols,
        }
    }

    fn slice_rows(&self, t: &CpuTensor, start: usize, end: usize) -> CpuTensor {
        CpuTensor {
            data: (t.data[start * t.cols..end * t.cols].to_vec()).into(),
            rows: end - start,
            cols: t.cols,
        }
    }

    fn embed(&self, table: &CpuWeight, tokens: &[u32]) -> Result<CpuTensor> {
        matmul::embed(self, table, tokens)
    }

    fn matmul(&self, w: &CpuWeight, x: &CpuTensor) -> CpuTensor {
        matmul::matmul(self, w, x)
    }

    fn matmul_each(&self, ws: &[&CpuWeight], x: &CpuTensor) -> Vec<CpuTensor> {
        matmul::matmul_each(self, ws, x)
    }

    fn matmul_backward_sum(&self, ws: &[&CpuWeight], dys: &[&CpuTensor]) -> CpuTensor {
        matmul::matmul_backward_sum(self, ws, dys)
    }

    fn rms_norm(&self, x: &CpuTensor, weight: &CpuTensor, eps: f32) -> CpuTensor {
        rows::rms_norm(self, x, weight, eps)
    }

    fn rope(&self, x: &mut CpuTensor, n_heads: usize, head_dim: usize, pos0: usize, rope: &Rope) {
        rows::rope(self, x, n_heads, head_dim, pos0, rope)
    }

    fn glu(&self, act: Activation, gate: &CpuTensor, up: &CpuTensor) -> CpuTensor {
        rows::glu(self, act, gate, up)
    }

    fn scale(&self, x: &mut CpuTensor, factor: f32) {
        x.data.iter_mut().for_each(|v| *v *= factor);
    }

    fn reshape(&self, mut t: CpuTensor, rows: usize, cols: usize) -> CpuTensor {
        assert_eq!(rows * cols, t.data.len(), "reshape: element count");
        (t.rows, t.cols) = (rows, cols);
        t
    }

    fn add_assign(&self, x: &mut CpuTensor, y: &CpuTensor) {
        rows::add_assign(self, x, y)
    }

    fn add_row(&self, x: &mut CpuTensor, row: &CpuTensor) {
        rows::add_row(self, x, row)
    }

    fn product_key_topk(
        &self,
        q: &CpuTensor,
        keys: &CpuTensor,
        shape: ProductKeyShape,
    ) -> (CpuSlots, CpuTensor) {
        memory::product_key_topk(self, q, keys, shape)
    }

    fn download_slots(&self, slots: &CpuSlots) -> Vec<u32> {
        memory::download_slots(self, slots)
    }

    fn upload_slots(&self, ids: Vec<u32>, rows: usize, cols: usize) -> CpuSlots {
        assert_eq!(ids.len(), rows * cols, "upload_slots: {rows} x {cols} ids");
        CpuSlots { ids, rows, cols }
    }

    fn gather_values(
        &self,
        values: &CpuTensor,
        slots: &CpuSlots,
        weights: &CpuTensor,
    ) -> CpuTensor {
        memory::gather_values(self, values, slots, weights)
    }

    fn matmul_backward(&self, w: &CpuWeight, dy: &CpuTensor) -> CpuTensor {
        matmul::matmul_backward(self, w, dy)
    }

    fn rms_norm_backward(
        &self,
        x: &CpuTensor,
        weight: &CpuTensor,
        eps: f32,
        dy: &CpuTensor,
    ) -> CpuTensor {
        rows::rms_norm_backward(self, x, weight, eps, dy)
    }

    fn rope_backward(
        &self,
        dy: &mut CpuTensor,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        rope: &Rope,
    ) {
        rows::rope_backward(self, dy, n_heads, head_dim, pos0, rope)
    }

    fn glu_backward(
        &self,
        act: Activation,
        gate: &CpuTensor,
        up: &CpuTensor,
        dy: &CpuTensor,
    ) -> (CpuTensor, CpuTensor) {
        rows::glu_backward(self, act, gate, up, dy)
    }

    fn attention_backward(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        dout: &CpuTensor,
        shape: AttentionShape,
    ) -> (CpuTensor, CpuTensor, CpuTensor) {
        attention::attention_backward(self, q, k, v, dout, shape)
    }

    fn cross_entropy(&self, logits: &CpuTensor, targets: &[u32]) -> (Vec<f32>, CpuTensor) {
        rows::cross_entropy(self, logits, targets)
    }

    fn value_grads(
        &self,
        slots: &CpuSlots,
        weights: &CpuTensor,
        dy: &CpuTensor,
        rows: &[u32],
    ) -> CpuTensor {
        memory::value_grads(self, slots, weights, dy, rows)
    }

    fn read_rows(&self, t: &CpuTensor, rows: &[u32]) -> CpuTensor {
        memory::read_rows(self, t, rows)
    }

    fn write_rows(&self, t: &mut CpuTensor, rows: &[u32], src: &CpuTensor) {
        memory::write_rows(self, t, rows, src)
    }

    fn sgd_rows(&self, values: &mut CpuTensor, rows: &[u32], grads: &CpuTensor, lr: f32) {
        memory::sgd_rows(self, values, rows, grads, lr)
    }

    fn new_kv_cache(&self, n_layers: usize, kv_dim: usize, capacity: usize) -> CpuKvCache {
        attention::new_kv_cache(self, n_layers, kv_dim, capacity)
    }

    fn kv_len(&self, cache: &CpuKvCache) -> usize {
        attention::kv_len(self, cache)
    }

    fn kv_truncate(&self, cache: &mut CpuKvCache, len: usize) {
        attention::kv_truncate(self, cache, len)
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
        attention::attention(self, q, k, v, cache, layer, shape)
    }
}

impl Drop for CpuTensor {
    /// Hands activation-sized buffers to the backend's spare list for the next op to reuse.
    fn drop(&mut self) {
        if let F32Buffer::Owned(v) = std::mem::take(&mut self.data) {
            buffers::recycle(v);
        }
    }
}

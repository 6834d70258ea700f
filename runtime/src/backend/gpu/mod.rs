//! The GPU backends' shared host side: every op of [`Backend`] as dispatches of the kernel
//! modules ([`params::Module`]), written once over [`Compute`], the few things a GPU API must
//! do — allocate, write, copy and read buffers, and launch a kernel. wgpu (WGSL, the `wgpu`
//! folder) and CUDA (CUDA C compiled by NVRTC, the `cuda` folder) each implement [`Compute`];
//! their kernels are ports of each other, entry point for entry point, with the same
//! parameter block and buffer order, so both run exactly these dispatches.
//!
//! Weights are uploaded once in their quantized form and decoded in the kernels. Tensors, the
//! KV cache and the memory values stay on the device; the host reads back only what the trait
//! hands it (`download`, `download_slots`, the losses of `cross_entropy`). Buffers larger than
//! the device's binding limit are split into row ranges ("parts") and the ops that meet such
//! tensors (weights, the memory value table) run once per part.

mod attention;
mod dispatch;
mod matmul;
mod memory;
pub mod params;
mod rows;

use super::{Activation, AttentionShape, Backend, ProductKeyShape, Rope, RopeLayout, WeightSource};
use crate::error::Result;
use crate::quant::GgmlType;
pub use matmul::uses_integer_dot;
pub use params::Module;

/// Most workgroups a dispatch may have along one dimension (WebGPU's minimum limit).
const MAX_GROUPS: u32 = 65_535;
/// Largest head the attention kernel holds per thread (64 threads × 4 dims).
const MAX_HEAD_DIM: usize = 256;
/// Product-key limits of the top-k kernel's shared memory.
const MAX_KEYS: usize = 512;
const MAX_TOP_K: usize = 32;

/// What a GPU API must do for [`GpuBackend`] to run every op on it.
pub trait Compute: Send + Sync + Sized {
    /// A device buffer. Ops take buffers by shared reference, as GPU APIs hand out handles:
    /// the order ops are issued in is what orders their reads and writes.
    type Buffer: Send + Sync;
    /// Human-readable device name.
    fn name(&self) -> String;
    /// Bytes one kernel argument may cover: larger tensors are split into parts.
    fn max_binding(&self) -> u64;
    /// A zero-filled buffer of `bytes` (a positive multiple of 4).
    fn storage(&self, bytes: usize) -> Self::Buffer;
    /// Writes `bytes` (a multiple of 4) at the start of `buf`, after every op issued before.
    fn write(&self, buf: &Self::Buffer, bytes: &[u8]);
    /// Copies `bytes` (positive) from `src` at `src_off` to `dst` at `dst_off`.
    fn copy(&self, src: &Self::Buffer, src_off: usize, dst: &Self::Buffer, dst_off: usize, bytes: usize);
    /// The first `bytes` (positive) bytes of `buf`, once every op issued before has run.
    fn read_back(&self, buf: &Self::Buffer, bytes: usize) -> Vec<u8>;
    /// Runs kernel `entry` of `module` (specialised for block format `dtype` where the module
    /// is) over `groups` blocks, with the 64-byte `params` and `bufs` as its arguments in
    /// ascending binding order.
    fn dispatch(
        &self,
        module: Module,
        entry: &'static str,
        dtype: u32,
        params: &[u8; 64],
        bufs: &[(u32, &Self::Buffer)],
        groups: (u32, u32),
    );
}

/// Runs every op of the graph as kernels on one GPU through `C`.
pub struct GpuBackend<C: Compute> {
    compute: C,
    /// Bytes one binding may cover: the split size for large tensors.
    max_binding: u64,
}

impl<C: Compute> GpuBackend<C> {
    /// The backend over an opened device.
    pub(crate) fn with_compute(compute: C) -> Self {
        let max_binding = compute.max_binding();
        GpuBackend {
            compute,
            max_binding,
        }
    }

    /// The device API this backend runs through.
    pub fn compute(&self) -> &C {
        &self.compute
    }
}

/// One row range of a tensor or weight, in its own buffer.
struct Part<C: Compute> {
    buf: C::Buffer,
    row0: usize,
    rows: usize,
}

/// A row-major f32 matrix in device memory, split into row ranges when it exceeds a binding.
pub struct GpuTensor<C: Compute> {
    parts: Vec<Part<C>>,
    rows: usize,
    cols: usize,
}

impl<C: Compute> GpuTensor<C> {
    /// The whole tensor's buffer: activations are never split (only tables this large are).
    fn buf(&self) -> &C::Buffer {
        assert_eq!(
            self.parts.len(),
            1,
            "a {}×{} tensor split over bindings reached an op that needs it whole",
            self.rows,
            self.cols
        );
        &self.parts[0].buf
    }
}

/// A weight matrix in device memory, still in its block format.
pub struct GpuWeight<C: Compute> {
    name: String,
    dtype: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    parts: Vec<Part<C>>,
}

/// Slot ids of a product-key lookup, on the device.
pub struct GpuSlots<C: Compute> {
    buf: C::Buffer,
    rows: usize,
    cols: usize,
}

/// Per-layer key and value buffers, grown by doubling as a conversation lengthens.
pub struct GpuKvCache<C: Compute> {
    k: Vec<C::Buffer>,
    v: Vec<C::Buffer>,
    len: Vec<usize>,
    allocated: usize,
    capacity: usize,
    kv_dim: usize,
}

impl<C: Compute> Backend for GpuBackend<C> {
    type Tensor = GpuTensor<C>;
    type Weight = GpuWeight<C>;
    type KvCache = GpuKvCache<C>;
    type Slots = GpuSlots<C>;

    fn name(&self) -> String {
        self.compute.name()
    }

    fn load_weight(&self, w: &WeightSource) -> Result<GpuWeight<C>> {
        matmul::load_weight(self, w)
    }

    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> GpuTensor<C> {
        assert_eq!(data.len(), rows * cols, "upload: data does not match shape");
        let t = self.zeros(rows, cols);
        for part in &t.parts {
            let slice = &data[part.row0 * cols..(part.row0 + part.rows) * cols];
            if !slice.is_empty() {
                self.compute.write(&part.buf, bytemuck::cast_slice(slice));
            }
        }
        t
    }

    fn download(&self, t: &GpuTensor<C>) -> Vec<f32> {
        let mut out = Vec::with_capacity(t.rows * t.cols);
        for part in &t.parts {
            let bytes = self.read_back(&part.buf, part.rows * t.cols * 4);
            out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        out
    }

    fn argmax_rows(&self, t: &GpuTensor<C>) -> Vec<u32> {
        rows::argmax_rows(self, t)
    }

    fn shape(&self, t: &GpuTensor<C>) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn concat_rows(&self, parts: &[&GpuTensor<C>]) -> GpuTensor<C> {
        let cols = parts.first().map_or(0, |p| p.cols);
        assert!(
            parts.iter().all(|p| p.cols == cols),
            "concat_rows: widths differ"
        );
        let rows = parts.iter().map(|p| p.rows).sum();
        let out = self.storage(rows * cols * 4);
        let mut at = 0;
        for p in parts {
            self.copy(p.buf(), 0, &out, at * cols * 4, p.rows * cols * 4);
            at += p.rows;
        }
        self.tensor(out, rows, cols)
    }

    fn pad_rows(&self, t: &GpuTensor<C>, start: usize, total: usize) -> GpuTensor<C> {
        assert!(start + t.rows <= total, "pad_rows: rows do not fit");
        let out = self.storage(total * t.cols * 4);
        self.copy(t.buf(), 0, &out, start * t.cols * 4, t.rows * t.cols * 4);
        self.tensor(out, total, t.cols)
    }

    fn slice_rows(&self, t: &GpuTensor<C>, start: usize, end: usize) -> GpuTensor<C> {
        assert!(
            start <= end && end <= t.rows,
            "slice_rows: range outside the tensor"
        );
        let out = self.storage((end - start) * t.cols * 4);
        self.copy(
            t.buf(),
            start * t.cols * 4,
            &out,
            0,
            (end - start) * t.cols * 4,
        );
        self.tensor(out, end - start, t.cols)
    }

    fn embed(&self, table: &GpuWeight<C>, tokens: &[u32]) -> Result<GpuTensor<C>> {
        matmul::embed(self, table, tokens)
    }

    fn matmul(&self, w: &GpuWeight<C>, x: &GpuTensor<C>) -> GpuTensor<C> {
        matmul::matmul(self, w, x)
    }

    fn rms_norm(&self, x: &GpuTensor<C>, weight: &GpuTensor<C>, eps: f32) -> GpuTensor<C> {
        rows::rms_norm(self, x, weight, eps)
    }

    fn rope(&self, x: &mut GpuTensor<C>, n_heads: usize, head_dim: usize, pos0: usize, rope: &Rope) {
        rows::rope(self, x, n_heads, head_dim, pos0, rope)
    }

    fn glu(&self, act: Activation, gate: &GpuTensor<C>, up: &GpuTensor<C>) -> GpuTensor<C> {
        rows::glu(self, act, gate, up)
    }

    fn scale(&self, x: &mut GpuTensor<C>, factor: f32) {
        rows::scale(self, x, factor)
    }

    fn reshape(&self, mut t: GpuTensor<C>, rows: usize, cols: usize) -> GpuTensor<C> {
        assert_eq!(rows * cols, t.rows * t.cols, "reshape: element count");
        assert_eq!(t.parts.len(), 1, "reshape: activations are one buffer");
        t.parts[0].rows = rows;
        (t.rows, t.cols) = (rows, cols);
        t
    }

    fn add_assign(&self, x: &mut GpuTensor<C>, y: &GpuTensor<C>) {
        rows::add_assign(self, x, y)
    }

    fn add_row(&self, x: &mut GpuTensor<C>, row: &GpuTensor<C>) {
        rows::add_row(self, x, row)
    }

    fn product_key_topk(
        &self,
        q: &GpuTensor<C>,
        keys: &GpuTensor<C>,
        shape: ProductKeyShape,
    ) -> (GpuSlots<C>, GpuTensor<C>) {
        memory::product_key_topk(self, q, keys, shape)
    }

    fn download_slots(&self, slots: &GpuSlots<C>) -> Vec<u32> {
        memory::download_slots(self, slots)
    }

    fn upload_slots(&self, ids: Vec<u32>, rows: usize, cols: usize) -> GpuSlots<C> {
        assert_eq!(ids.len(), rows * cols, "upload_slots: {rows} x {cols} ids");
        // A zero-size binding is invalid: an empty upload still holds one id.
        let buf = if ids.is_empty() { self.u32s(&[0]) } else { self.u32s(&ids) };
        GpuSlots { buf, rows, cols }
    }

    fn gather_values(
        &self,
        values: &GpuTensor<C>,
        slots: &GpuSlots<C>,
        weights: &GpuTensor<C>,
    ) -> GpuTensor<C> {
        memory::gather_values(self, values, slots, weights)
    }

    fn matmul_backward(&self, w: &GpuWeight<C>, dy: &GpuTensor<C>) -> GpuTensor<C> {
        matmul::matmul_backward(self, w, dy)
    }

    fn rms_norm_backward(
        &self,
        x: &GpuTensor<C>,
        weight: &GpuTensor<C>,
        eps: f32,
        dy: &GpuTensor<C>,
    ) -> GpuTensor<C> {
        rows::rms_norm_backward(self, x, weight, eps, dy)
    }

    fn rope_backward(
        &self,
        dy: &mut GpuTensor<C>,
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
        gate: &GpuTensor<C>,
        up: &GpuTensor<C>,
        dy: &GpuTensor<C>,
    ) -> (GpuTensor<C>, GpuTensor<C>) {
        rows::glu_backward(self, act, gate, up, dy)
    }

    fn attention_backward(
        &self,
        q: &GpuTensor<C>,
        k: &GpuTensor<C>,
        v: &GpuTensor<C>,
        dout: &GpuTensor<C>,
        shape: AttentionShape,
    ) -> (GpuTensor<C>, GpuTensor<C>, GpuTensor<C>) {
        attention::attention_backward(self, q, k, v, dout, shape)
    }

    fn cross_entropy(&self, logits: &GpuTensor<C>, targets: &[u32]) -> (Vec<f32>, GpuTensor<C>) {
        rows::cross_entropy(self, logits, targets)
    }

    fn value_grads(
        &self,
        slots: &GpuSlots<C>,
        weights: &GpuTensor<C>,
        dy: &GpuTensor<C>,
        rows: &[u32],
    ) -> GpuTensor<C> {
        memory::value_grads(self, slots, weights, dy, rows)
    }

    fn read_rows(&self, t: &GpuTensor<C>, rows: &[u32]) -> GpuTensor<C> {
        memory::read_rows(self, t, rows)
    }

    fn write_rows(&self, t: &mut GpuTensor<C>, rows: &[u32], src: &GpuTensor<C>) {
        memory::write_rows(self, t, rows, src)
    }

    fn sgd_rows(&self, values: &mut GpuTensor<C>, rows: &[u32], grads: &GpuTensor<C>, lr: f32) {
        memory::sgd_rows(self, values, rows, grads, lr)
    }

    fn new_kv_cache(&self, n_layers: usize, kv_dim: usize, capacity: usize) -> GpuKvCache<C> {
        attention::new_kv_cache(self, n_layers, kv_dim, capacity)
    }

    fn kv_len(&self, cache: &GpuKvCache<C>) -> usize {
        attention::kv_len(self, cache)
    }

    fn kv_truncate(&self, cache: &mut GpuKvCache<C>, len: usize) {
        attention::kv_truncate(self, cache, len)
    }

    fn attention(
        &self,
        q: &GpuTensor<C>,
        k: &GpuTensor<C>,
        v: &GpuTensor<C>,
        cache: &mut GpuKvCache<C>,
        layer: usize,
        shape: AttentionShape,
    ) -> GpuTensor<C> {
        attention::attention(self, q, k, v, cache, layer, shape)
    }
}

//! GPU backend: every op as a WGSL compute shader (the `.wgsl` files beside this one), run through wgpu on Vulkan,
//! Metal or DX12 — and on Mesa's lavapipe, the CPU Vulkan driver CI tests it on.
//!
//! Weights are uploaded once in their quantized form and decoded in the shaders. Tensors, the
//! KV cache and the memory values stay on the device; the host reads back only what the trait
//! hands it (`download`, `download_slots`, the losses of `cross_entropy`). Buffers larger than
//! the device's storage-binding limit are split into row ranges ("parts") and the ops that
//! meet such tensors (weights, the memory value table) run once per part.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

mod adapters;
mod attention;
mod dispatch;
mod matmul;
mod memory;
mod rows;
mod shaders;

use super::{Activation, AttentionShape, Backend, ProductKeyShape, Rope, RopeLayout, WeightSource};
use crate::error::{Error, Result};
use crate::quant::GgmlType;
pub use adapters::{AdapterSummary, WgpuOptions, adapters};
pub use matmul::uses_integer_dot;
use adapters::{instance, rank, summary};

/// Most workgroups a dispatch may have along one dimension (WebGPU's minimum limit).
const MAX_GROUPS: u32 = 65_535;
/// Largest head the attention shader holds per thread (64 threads × 4 dims).
const MAX_HEAD_DIM: usize = 256;
/// Product-key limits of the top-k shader's workgroup memory.
const MAX_KEYS: usize = 512;
const MAX_TOP_K: usize = 32;

/// Runs every op as a WGSL compute shader on one wgpu device.
pub struct WgpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: AdapterSummary,
    /// Bytes one storage binding may cover: the split size for large tensors.
    max_binding: u64,
    pipelines: Mutex<HashMap<(&'static str, u32), Arc<wgpu::ComputePipeline>>>,
    /// Work recorded but not yet submitted: one submit per read-back (or per
    /// `FLUSH_EVERY` ops) instead of one per op, which is what a decode step costs otherwise.
    pending: Mutex<Pending>,
    /// With `ENGRAM_WGPU_PROFILE=1`: seconds and calls per entry point (each op waited for),
    /// printed when the backend is dropped.
    profile: Option<Mutex<HashMap<&'static str, (f64, usize)>>>,
}

impl Drop for WgpuBackend {
    fn drop(&mut self) {
        if let Some(profile) = &self.profile {
            let table = profile.lock().unwrap_or_else(|e| e.into_inner());
            let mut rows: Vec<_> = table.iter().collect();
            rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
            eprintln!("wgpu profile (seconds, calls):");
            for (entry, (secs, calls)) in rows {
                eprintln!("  {entry:<24} {secs:>9.3} {calls:>8}");
            }
        }
    }
}

#[derive(Default)]
struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    ops: usize,
}

/// Recorded ops after which the encoder is submitted anyway, to bound its size.
const FLUSH_EVERY: usize = 1024;

/// One row range of a tensor or weight, in its own buffer.
struct Part {
    buf: wgpu::Buffer,
    row0: usize,
    rows: usize,
}

/// A row-major f32 matrix in device memory, split into row ranges when it exceeds a binding.
pub struct WgpuTensor {
    parts: Vec<Part>,
    rows: usize,
    cols: usize,
}

impl WgpuTensor {
    /// The whole tensor's buffer: activations are never split (only tables this large are).
    fn buf(&self) -> &wgpu::Buffer {
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
pub struct WgpuWeight {
    name: String,
    dtype: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    parts: Vec<Part>,
}

/// Slot ids of a product-key lookup, on the device.
pub struct WgpuSlots {
    buf: wgpu::Buffer,
    rows: usize,
    cols: usize,
}

/// Per-layer key and value buffers, grown by doubling as a conversation lengthens.
pub struct WgpuKvCache {
    k: Vec<wgpu::Buffer>,
    v: Vec<wgpu::Buffer>,
    len: Vec<usize>,
    allocated: usize,
    capacity: usize,
    kv_dim: usize,
}

impl WgpuBackend {
    /// Opens the adapter `options` names, or the best one: a discrete GPU, then an integrated
    /// one, then (only with `allow_software`) any other such as lavapipe.
    pub fn new(options: &WgpuOptions) -> Result<Self> {
        let instance = instance();
        let all = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let index = match options.adapter {
            Some(i) if i < all.len() => i,
            Some(i) => {
                return Err(Error::InvalidArgument(format!(
                    "no wgpu adapter {i} (`engram info --devices` lists them)"
                )));
            }
            None => {
                let mut order: Vec<usize> = (0..all.len()).collect();
                order.sort_by_key(|&i| rank(all[i].get_info().device_type));
                order
                    .into_iter()
                    .find(|&i| options.allow_software || rank(all[i].get_info().device_type) <= 1)
                    .ok_or_else(|| {
                        Error::Unsupported(if options.allow_software {
                            "no wgpu adapter found (no Vulkan, Metal or DX12 driver)".into()
                        } else {
                            "no GPU adapter found (only software renderers or none)".into()
                        })
                    })?
            }
        };
        let adapter = &all[index];
        let summary = summary(index, adapter);
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("engram"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::Unsupported(format!("cannot open {}: {e}", summary.name)))?;
        let device_max = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_binding = options
            .max_binding
            .map_or(device_max, |m| m.min(device_max));
        Ok(WgpuBackend {
            device,
            queue,
            adapter: summary,
            max_binding,
            pipelines: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending::default()),
            profile: (std::env::var("ENGRAM_WGPU_PROFILE").as_deref() == Ok("1"))
                .then(|| Mutex::new(HashMap::new())),
        })
    }

    /// The adapter this backend runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }
}

impl Backend for WgpuBackend {
    type Tensor = WgpuTensor;
    type Weight = WgpuWeight;
    type KvCache = WgpuKvCache;
    type Slots = WgpuSlots;

    fn name(&self) -> String {
        format!("wgpu ({}, {})", self.adapter.name, self.adapter.api)
    }

    fn load_weight(&self, w: &WeightSource) -> Result<WgpuWeight> {
        matmul::load_weight(self, w)
    }

    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> WgpuTensor {
        assert_eq!(data.len(), rows * cols, "upload: data does not match shape");
        let t = self.zeros(rows, cols);
        for part in &t.parts {
            let slice = &data[part.row0 * cols..(part.row0 + part.rows) * cols];
            if !slice.is_empty() {
                self.queue
                    .write_buffer(&part.buf, 0, bytemuck::cast_slice(slice));
            }
        }
        t
    }

    fn download(&self, t: &WgpuTensor) -> Vec<f32> {
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

    fn argmax_rows(&self, t: &WgpuTensor) -> Vec<u32> {
        rows::argmax_rows(self, t)
    }

    fn shape(&self, t: &WgpuTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn concat_rows(&self, parts: &[&WgpuTensor]) -> WgpuTensor {
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

    fn pad_rows(&self, t: &WgpuTensor, start: usize, total: usize) -> WgpuTensor {
        assert!(start + t.rows <= total, "pad_rows: rows do not fit");
        let out = self.storage(total * t.cols * 4);
        self.copy(t.buf(), 0, &out, start * t.cols * 4, t.rows * t.cols * 4);
        self.tensor(out, total, t.cols)
    }

    fn slice_rows(&self, t: &WgpuTensor, start: usize, end: usize) -> WgpuTensor {
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

    fn embed(&self, table: &WgpuWeight, tokens: &[u32]) -> Result<WgpuTensor> {
        matmul::embed(self, table, tokens)
    }

    fn matmul(&self, w: &WgpuWeight, x: &WgpuTensor) -> WgpuTensor {
        matmul::matmul(self, w, x)
    }

    fn rms_norm(&self, x: &WgpuTensor, weight: &WgpuTensor, eps: f32) -> WgpuTensor {
        rows::rms_norm(self, x, weight, eps)
    }

    fn rope(&self, x: &mut WgpuTensor, n_heads: usize, head_dim: usize, pos0: usize, rope: &Rope) {
        rows::rope(self, x, n_heads, head_dim, pos0, rope)
    }

    fn glu(&self, act: Activation, gate: &WgpuTensor, up: &WgpuTensor) -> WgpuTensor {
        rows::glu(self, act, gate, up)
    }

    fn scale(&self, x: &mut WgpuTensor, factor: f32) {
        rows::scale(self, x, factor)
    }

    fn reshape(&self, mut t: WgpuTensor, rows: usize, cols: usize) -> WgpuTensor {
        assert_eq!(rows * cols, t.rows * t.cols, "reshape: element count");
        assert_eq!(t.parts.len(), 1, "reshape: activations are one buffer");
        t.parts[0].rows = rows;
        (t.rows, t.cols) = (rows, cols);
        t
    }

    fn add_assign(&self, x: &mut WgpuTensor, y: &WgpuTensor) {
        rows::add_assign(self, x, y)
    }

    fn add_row(&self, x: &mut WgpuTensor, row: &WgpuTensor) {
        rows::add_row(self, x, row)
    }

    fn product_key_topk(
        &self,
        q: &WgpuTensor,
        keys: &WgpuTensor,
        shape: ProductKeyShape,
    ) -> (WgpuSlots, WgpuTensor) {
        memory::product_key_topk(self, q, keys, shape)
    }

    fn download_slots(&self, slots: &WgpuSlots) -> Vec<u32> {
        memory::download_slots(self, slots)
    }

    fn upload_slots(&self, ids: Vec<u32>, rows: usize, cols: usize) -> WgpuSlots {
        assert_eq!(ids.len(), rows * cols, "upload_slots: {rows} x {cols} ids");
        // A zero-size binding is invalid: an empty upload still holds one id.
        let buf = if ids.is_empty() { self.u32s(&[0]) } else { self.u32s(&ids) };
        WgpuSlots { buf, rows, cols }
    }

    fn gather_values(
        &self,
        values: &WgpuTensor,
        slots: &WgpuSlots,
        weights: &WgpuTensor,
    ) -> WgpuTensor {
        memory::gather_values(self, values, slots, weights)
    }

    fn matmul_backward(&self, w: &WgpuWeight, dy: &WgpuTensor) -> WgpuTensor {
        matmul::matmul_backward(self, w, dy)
    }

    fn rms_norm_backward(
        &self,
        x: &WgpuTensor,
        weight: &WgpuTensor,
        eps: f32,
        dy: &WgpuTensor,
    ) -> WgpuTensor {
        rows::rms_norm_backward(self, x, weight, eps, dy)
    }

    fn rope_backward(
        &self,
        dy: &mut WgpuTensor,
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
        gate: &WgpuTensor,
        up: &WgpuTensor,
        dy: &WgpuTensor,
    ) -> (WgpuTensor, WgpuTensor) {
        rows::glu_backward(self, act, gate, up, dy)
    }

    fn attention_backward(
        &self,
        q: &WgpuTensor,
        k: &WgpuTensor,
        v: &WgpuTensor,
        dout: &WgpuTensor,
        shape: AttentionShape,
    ) -> (WgpuTensor, WgpuTensor, WgpuTensor) {
        attention::attention_backward(self, q, k, v, dout, shape)
    }

    fn cross_entropy(&self, logits: &WgpuTensor, targets: &[u32]) -> (Vec<f32>, WgpuTensor) {
        rows::cross_entropy(self, logits, targets)
    }

    fn value_grads(
        &self,
        slots: &WgpuSlots,
        weights: &WgpuTensor,
        dy: &WgpuTensor,
        rows: &[u32],
    ) -> WgpuTensor {
        memory::value_grads(self, slots, weights, dy, rows)
    }

    fn read_rows(&self, t: &WgpuTensor, rows: &[u32]) -> WgpuTensor {
        memory::read_rows(self, t, rows)
    }

    fn write_rows(&self, t: &mut WgpuTensor, rows: &[u32], src: &WgpuTensor) {
        memory::write_rows(self, t, rows, src)
    }

    fn sgd_rows(&self, values: &mut WgpuTensor, rows: &[u32], grads: &WgpuTensor, lr: f32) {
        memory::sgd_rows(self, values, rows, grads, lr)
    }

    fn new_kv_cache(&self, n_layers: usize, kv_dim: usize, capacity: usize) -> WgpuKvCache {
        attention::new_kv_cache(self, n_layers, kv_dim, capacity)
    }

    fn kv_len(&self, cache: &WgpuKvCache) -> usize {
        attention::kv_len(self, cache)
    }

    fn kv_truncate(&self, cache: &mut WgpuKvCache, len: usize) {
        attention::kv_truncate(self, cache, len)
    }

    fn attention(
        &self,
        q: &WgpuTensor,
        k: &WgpuTensor,
        v: &WgpuTensor,
        cache: &mut WgpuKvCache,
        layer: usize,
        shape: AttentionShape,
    ) -> WgpuTensor {
        attention::attention(self, q, k, v, cache, layer, shape)
    }
}

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

use wgpu::util::DeviceExt;

mod shaders;

use super::{AttentionShape, Backend, ProductKeyShape, Rope, RopeLayout, WeightSource};
use crate::error::{Error, Result};
use crate::quant::GgmlType;
use shaders::Shader;

/// Most workgroups a dispatch may have along one dimension (WebGPU's minimum limit).
const MAX_GROUPS: u32 = 65_535;
/// Largest head the attention shader holds per thread (64 threads × 4 dims).
const MAX_HEAD_DIM: usize = 256;
/// Product-key limits of the top-k shader's workgroup memory.
const MAX_KEYS: usize = 512;
const MAX_TOP_K: usize = 32;

/// One GPU adapter as wgpu reports it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// Position in [`adapters`]' list (what `WgpuOptions::adapter` takes).
    pub index: usize,
    /// Adapter name, e.g. "NVIDIA H100" or "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    /// Discrete, integrated, virtual, CPU or other.
    pub kind: String,
    /// Graphics API (Vulkan, Metal, Dx12).
    pub api: String,
    /// Driver name and version.
    pub driver: String,
    /// Largest storage buffer one binding may see, bytes.
    pub max_binding: u64,
    /// Whether it is a real GPU (discrete or integrated) rather than a software rasterizer.
    pub is_gpu: bool,
}

/// How to open the wgpu backend.
#[derive(Clone, Debug, Default)]
pub struct WgpuOptions {
    /// Adapter to use (an index into [`adapters`]); `None` picks the best one.
    pub adapter: Option<usize>,
    /// Whether a CPU (software) adapter such as lavapipe is acceptable when no GPU exists.
    pub allow_software: bool,
    /// Lowers the storage-binding size used to split tensors (tests use it to exercise the
    /// split paths with small tensors); `None` takes the device's limit.
    pub max_binding: Option<u64>,
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
    wgpu::Instance::new(desc)
}

fn rank(kind: wgpu::DeviceType) -> u8 {
    match kind {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn summary(index: usize, a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    AdapterSummary {
        index,
        name: info.name,
        kind: format!("{:?}", info.device_type),
        api: format!("{:?}", info.backend),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        max_binding: a.limits().max_storage_buffer_binding_size,
        is_gpu: matches!(
            info.device_type,
            wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu
        ),
    }
}

/// Every adapter wgpu can open on this machine, in enumeration order.
pub fn adapters() -> Vec<AdapterSummary> {
    pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()))
        .iter()
        .enumerate()
        .map(|(i, a)| summary(i, a))
        .collect()
}

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

fn dtype_code(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::BF16 => 2,
        GgmlType::Q8_0 => 3,
        GgmlType::Q4_0 => 4,
        GgmlType::Q4_1 => 5,
        GgmlType::Q4_K => 6,
        GgmlType::Q6_K => 7,
    }
}

/// Uniform parameters: u32 fields, f32 ones stored as their bits.
enum P {
    U(usize),
    F(f32),
}

fn params(fields: &[P]) -> Vec<u32> {
    let mut words: Vec<u32> = fields
        .iter()
        .map(|f| match *f {
            P::U(v) => u32::try_from(v).expect("shader parameter exceeds u32"),
            P::F(v) => v.to_bits(),
        })
        .collect();
    // Every shader's Params struct fits 64 bytes; a shorter buffer would fail validation.
    assert!(words.len() <= 16, "shader parameters over 64 bytes");
    words.resize(16, 0);
    words
}

/// Workgroup counts for `groups` workgroups, folded into 2-D past the per-dimension limit.
fn grid(groups: usize) -> (u32, u32) {
    let groups = u32::try_from(groups.max(1)).expect("dispatch too large");
    if groups <= MAX_GROUPS {
        (groups, 1)
    } else {
        (MAX_GROUPS, groups.div_ceil(MAX_GROUPS))
    }
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

    fn pipeline(
        &self,
        module: Shader,
        entry: &'static str,
        dtype: u32,
    ) -> Arc<wgpu::ComputePipeline> {
        let mut cache = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry((entry, dtype))
            .or_insert_with(|| {
                let source = module.source(dtype);
                let shader = self
                    .device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(module.label()),
                        source: wgpu::ShaderSource::Wgsl(source.into()),
                    });
                Arc::new(
                    self.device
                        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                            label: Some(entry),
                            layout: None,
                            module: &shader,
                            entry_point: Some(entry),
                            compilation_options: Default::default(),
                            cache: None,
                        }),
                )
            })
            .clone()
    }

    /// Runs `entry` of `module` once with `params` at binding 0 and `bufs` at their bindings.
    fn dispatch(
        &self,
        (module, entry, dtype): (Shader, &'static str, u32),
        params: &[u32],
        bufs: &[(u32, &wgpu::Buffer)],
        groups: (u32, u32),
    ) {
        let pipeline = self.pipeline(module, entry, dtype);
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::cast_slice(params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        entries.extend(bufs.iter().map(|&(binding, b)| wgpu::BindGroupEntry {
            binding,
            resource: b.as_entire_binding(),
        }));
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.record(|enc| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(entry),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, 1);
        });
        if let Some(profile) = &self.profile {
            let start = std::time::Instant::now();
            self.flush();
            let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
            let mut table = profile.lock().unwrap_or_else(|e| e.into_inner());
            let e = table.entry(entry).or_insert((0.0, 0));
            e.0 += start.elapsed().as_secs_f64();
            e.1 += 1;
        }
    }

    /// Appends work to the pending encoder (submitted by [`Self::flush`]).
    fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let enc = pending.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ops") })
        });
        f(enc);
        pending.ops += 1;
        if pending.ops >= FLUSH_EVERY {
            Self::submit(&self.queue, &mut pending);
        }
    }

    fn submit(queue: &wgpu::Queue, pending: &mut Pending) {
        if let Some(enc) = pending.encoder.take() {
            queue.submit([enc.finish()]);
        }
        pending.ops = 0;
    }

    /// Submits everything recorded so far.
    fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        Self::submit(&self.queue, &mut pending);
    }

    fn storage(&self, bytes: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            // Never zero-sized: an empty tensor still binds.
            size: (bytes.max(4) as u64).div_ceil(4) * 4,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    fn storage_init(&self, bytes: &[u8]) -> wgpu::Buffer {
        let buf = self.storage(bytes.len());
        if bytes.len().is_multiple_of(4) {
            self.queue.write_buffer(&buf, 0, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4) * 4, 0);
            self.queue.write_buffer(&buf, 0, &padded);
        }
        buf
    }

    fn u32s(&self, data: &[u32]) -> wgpu::Buffer {
        self.storage_init(bytemuck::cast_slice(data))
    }

    /// A zeroed tensor (wgpu zero-fills new buffers), split where it exceeds a binding.
    fn zeros(&self, rows: usize, cols: usize) -> WgpuTensor {
        let row_bytes = (cols * 4).max(4);
        let per_part = ((self.max_binding as usize) / row_bytes).max(1);
        let mut parts = Vec::new();
        let mut row0 = 0;
        loop {
            let n = per_part.min(rows - row0);
            parts.push(Part {
                buf: self.storage(n * cols * 4),
                row0,
                rows: n,
            });
            row0 += n;
            if row0 >= rows {
                break;
            }
        }
        WgpuTensor { parts, rows, cols }
    }

    fn tensor(&self, buf: wgpu::Buffer, rows: usize, cols: usize) -> WgpuTensor {
        WgpuTensor {
            parts: vec![Part { buf, row0: 0, rows }],
            rows,
            cols,
        }
    }

    fn read_back(&self, buf: &wgpu::Buffer, bytes: usize) -> Vec<u8> {
        if bytes == 0 {
            return Vec::new();
        }
        let size = (bytes as u64).div_ceil(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.record(|enc| enc.copy_buffer_to_buffer(buf, 0, &staging, 0, size));
        self.flush();
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("wgpu device lost while reading a buffer");
        rx.recv()
            .expect("wgpu map callback dropped")
            .expect("wgpu buffer map failed");
        let view = staging.get_mapped_range(..).expect("mapped staging buffer");
        let out = view[..bytes].to_vec();
        drop(view);
        staging.unmap();
        out
    }

    fn copy(
        &self,
        src: &wgpu::Buffer,
        src_off: usize,
        dst: &wgpu::Buffer,
        dst_off: usize,
        bytes: usize,
    ) {
        if bytes == 0 {
            return;
        }
        self.record(|enc| {
            enc.copy_buffer_to_buffer(src, src_off as u64, dst, dst_off as u64, bytes as u64)
        });
    }

    fn elementwise(
        &self,
        entry: &'static str,
        n: usize,
        cols: usize,
        bufs: &[(u32, &wgpu::Buffer)],
    ) {
        self.dispatch(
            (Shader::Elementwise, entry, 0),
            &params(&[P::U(n), P::U(cols)]),
            bufs,
            grid(n.div_ceil(256)),
        );
    }

    /// Runs a per-element memory op (64 per workgroup) over `n × dim` elements.
    fn memory_op(
        &self,
        entry: &'static str,
        fields: &[P],
        n: usize,
        bufs: &[(u32, &wgpu::Buffer)],
    ) {
        let elements = match fields {
            [P::U(n), P::U(dim), ..] => n * dim,
            _ => n,
        };
        self.dispatch(
            (Shader::Memory, entry, 0),
            &params(fields),
            bufs,
            grid(elements.div_ceil(64)),
        );
    }

    fn rope_op(
        &self,
        x: &mut WgpuTensor,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        rope: &Rope,
        direction: f32,
    ) {
        let half = rope.dims / 2;
        let total = x.rows * n_heads * half;
        let p = params(&[
            P::U(x.rows),
            P::U(x.cols),
            P::F(0.0),
            P::U(n_heads),
            P::U(head_dim),
            P::U(half),
            P::U(pos0),
            P::F(rope.base.powf(-2.0 / rope.dims as f32)),
            P::F(direction),
            P::U(usize::from(rope.layout == RopeLayout::Halves)),
        ]);
        self.dispatch(
            (Shader::Rows, "rope", 0),
            &p,
            &[(4, x.buf())],
            grid(total.div_ceil(64)),
        );
    }

    /// `x` as 8-bit blocks of 32 (10 words each), exactly as the cpu backend quantizes
    /// activations for integer weight formats, so both backends sum the same integers.
    fn quantize_activations(&self, x: &WgpuTensor) -> wgpu::Buffer {
        assert!(
            x.cols.is_multiple_of(32),
            "activations of width {} are not whole 32-blocks",
            x.cols
        );
        let blocks = x.cols / 32;
        let xq = self.storage(x.rows * blocks * 10 * 4);
        let p = params(&[P::U(0), P::U(x.cols), P::U(x.rows)]);
        self.dispatch(
            (Shader::Matmul, "quantize_q8", 0),
            &p,
            &[(2, x.buf()), (5, &xq)],
            (blocks.div_ceil(64) as u32, x.rows.max(1) as u32),
        );
        xq
    }

    fn grow_cache(&self, cache: &mut WgpuKvCache, needed: usize) {
        if needed <= cache.allocated {
            return;
        }
        let size = needed
            .max(cache.allocated * 2)
            .min(cache.capacity.max(needed));
        let bytes = size * cache.kv_dim * 4;
        for (layer, len) in cache.len.clone().into_iter().enumerate() {
            for bufs in [&mut cache.k, &mut cache.v] {
                let bigger = self.storage(bytes);
                self.copy(&bufs[layer], 0, &bigger, 0, len * cache.kv_dim * 4);
                bufs[layer] = bigger;
            }
        }
        cache.allocated = size;
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
        let per_part = (self.max_binding as usize / row_bytes.max(1)).max(1);
        let mut parts = Vec::new();
        let mut row0 = 0;
        while row0 < w.rows.max(1) {
            let n = per_part.min(w.rows - row0);
            parts.push(Part {
                buf: self.storage_init(&bytes[row0 * row_bytes..(row0 + n) * row_bytes]),
                row0,
                rows: n,
            });
            row0 += n.max(1);
        }
        Ok(WgpuWeight {
            name: w.name.clone(),
            dtype: w.dtype,
            rows: w.rows,
            cols: w.cols,
            row_bytes,
            parts,
        })
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
        if t.rows == 0 || t.cols == 0 {
            return vec![0; t.rows];
        }
        let out = self.storage(t.rows * 4);
        let p = params(&[P::U(t.rows), P::U(t.cols), P::F(0.0)]);
        self.dispatch(
            (Shader::Rows, "argmax_rows", 0),
            &p,
            &[(1, t.buf()), (7, &out)],
            grid(t.rows),
        );
        bytemuck::pod_collect_to_vec(&self.read_back(&out, t.rows * 4))
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
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= table.rows) {
            return Err(Error::InvalidArgument(format!(
                "token id {t} outside the vocabulary of {}",
                table.rows
            )));
        }
        let out = self.storage(tokens.len() * table.cols * 4);
        let ids = self.u32s(tokens);
        for part in &table.parts {
            let p = params(&[
                P::U(part.rows),
                P::U(table.cols),
                P::U(tokens.len()),
                P::U(table.row_bytes),
                P::U(table.rows),
                P::U(part.row0),
            ]);
            self.dispatch(
                (Shader::Matmul, "embed", dtype_code(table.dtype)),
                &p,
                &[(1, &part.buf), (3, &out), (4, &ids)],
                (table.cols.div_ceil(64) as u32, tokens.len().max(1) as u32),
            );
        }
        Ok(self.tensor(out, tokens.len(), table.cols))
    }

    fn matmul(&self, w: &WgpuWeight, x: &WgpuTensor) -> WgpuTensor {
        assert_eq!(x.cols, w.cols, "matmul {}: input width", w.name);
        let out = self.storage(x.rows * w.rows * 4);
        let integer = !matches!(w.dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        let quantized = integer.then(|| self.quantize_activations(x));
        let entry = if integer { "matmul_q8" } else { "matmul" };
        for part in &w.parts {
            let p = params(&[
                P::U(part.rows),
                P::U(w.cols),
                P::U(x.rows),
                P::U(w.row_bytes),
                P::U(w.rows),
                P::U(part.row0),
            ]);
            let mut bufs = vec![(1, &part.buf), (3, &out)];
            match &quantized {
                Some(xq) => bufs.push((5, xq)),
                None => bufs.push((2, x.buf())),
            }
            self.dispatch(
                (Shader::Matmul, entry, dtype_code(w.dtype)),
                &p,
                &bufs,
                (
                    part.rows.div_ceil(64) as u32,
                    x.rows.div_ceil(4).max(1) as u32,
                ),
            );
        }
        self.tensor(out, x.rows, w.rows)
    }

    fn rms_norm(&self, x: &WgpuTensor, weight: &WgpuTensor, eps: f32) -> WgpuTensor {
        let out = self.storage(x.rows * x.cols * 4);
        let p = params(&[P::U(x.rows), P::U(x.cols), P::F(eps)]);
        self.dispatch(
            (Shader::Rows, "rms_norm", 0),
            &p,
            &[(1, x.buf()), (2, weight.buf()), (4, &out)],
            grid(x.rows),
        );
        self.tensor(out, x.rows, x.cols)
    }

    fn rope(&self, x: &mut WgpuTensor, n_heads: usize, head_dim: usize, pos0: usize, rope: &Rope) {
        self.rope_op(x, n_heads, head_dim, pos0, rope, 1.0);
    }

    fn silu_mul(&self, gate: &WgpuTensor, up: &WgpuTensor) -> WgpuTensor {
        let n = gate.rows * gate.cols;
        let out = self.storage(n * 4);
        self.elementwise(
            "silu_mul",
            n,
            gate.cols,
            &[(1, gate.buf()), (2, up.buf()), (4, &out)],
        );
        self.tensor(out, gate.rows, gate.cols)
    }

    fn add_assign(&self, x: &mut WgpuTensor, y: &WgpuTensor) {
        let n = x.rows * x.cols;
        self.elementwise("add_assign", n, x.cols, &[(1, y.buf()), (4, x.buf())]);
    }

    fn add_row(&self, x: &mut WgpuTensor, row: &WgpuTensor) {
        assert_eq!(row.rows * row.cols, x.cols, "add_row: width");
        let n = x.rows * x.cols;
        self.elementwise("add_row", n, x.cols, &[(1, row.buf()), (4, x.buf())]);
    }

    fn product_key_topk(
        &self,
        q: &WgpuTensor,
        keys: &WgpuTensor,
        shape: ProductKeyShape,
    ) -> (WgpuSlots, WgpuTensor) {
        assert_eq!(q.cols, shape.query_cols(), "product_key_topk: query width");
        assert!(
            shape.n_keys <= MAX_KEYS && shape.top_k <= MAX_TOP_K,
            "the wgpu product-key shader holds at most {MAX_KEYS} keys and top-{MAX_TOP_K}"
        );
        let picks = shape.picks();
        let ids = self.storage(q.rows * picks * 4);
        let weights = self.storage(q.rows * picks * 4);
        let p = params(&[
            P::U(q.rows),
            P::U(0),
            P::U(picks),
            P::U(0),
            P::U(0),
            P::F(0.0),
            P::U(shape.heads),
            P::U(shape.n_keys),
            P::U(shape.top_k),
            P::U(shape.k_dim),
        ]);
        self.dispatch(
            (Shader::Memory, "product_key_topk", 0),
            &p,
            &[(1, q.buf()), (2, keys.buf()), (3, &ids), (4, &weights)],
            grid(q.rows * shape.heads),
        );
        (
            WgpuSlots {
                buf: ids,
                rows: q.rows,
                cols: picks,
            },
            self.tensor(weights, q.rows, picks),
        )
    }

    fn download_slots(&self, slots: &WgpuSlots) -> Vec<u32> {
        let bytes = self.read_back(&slots.buf, slots.rows * slots.cols * 4);
        bytemuck::pod_collect_to_vec(&bytes)
    }

    fn gather_values(
        &self,
        values: &WgpuTensor,
        slots: &WgpuSlots,
        weights: &WgpuTensor,
    ) -> WgpuTensor {
        assert_eq!(
            (slots.rows, slots.cols),
            (weights.rows, weights.cols),
            "gather_values: slots and weights differ in shape"
        );
        let out = self.storage(slots.rows * values.cols * 4);
        for part in &values.parts {
            let fields = [
                P::U(slots.rows),
                P::U(values.cols),
                P::U(slots.cols),
                P::U(part.row0),
                P::U(part.rows),
            ];
            self.memory_op(
                "gather_values",
                &fields,
                slots.rows,
                &[
                    (5, &slots.buf),
                    (6, weights.buf()),
                    (7, &part.buf),
                    (8, &out),
                ],
            );
        }
        self.tensor(out, slots.rows, values.cols)
    }

    fn matmul_backward(&self, w: &WgpuWeight, dy: &WgpuTensor) -> WgpuTensor {
        assert_eq!(
            dy.cols, w.rows,
            "matmul_backward {}: gradient width",
            w.name
        );
        let out = self.storage(dy.rows * w.cols * 4);
        for part in &w.parts {
            let p = params(&[
                P::U(part.rows),
                P::U(w.cols),
                P::U(dy.rows),
                P::U(w.row_bytes),
                P::U(w.rows),
                P::U(part.row0),
            ]);
            self.dispatch(
                (Shader::Matmul, "matmul_backward", dtype_code(w.dtype)),
                &p,
                &[(1, &part.buf), (2, dy.buf()), (3, &out)],
                (
                    w.cols.div_ceil(4).div_ceil(64) as u32,
                    dy.rows.div_ceil(8).max(1) as u32,
                ),
            );
        }
        self.tensor(out, dy.rows, w.cols)
    }

    fn rms_norm_backward(
        &self,
        x: &WgpuTensor,
        weight: &WgpuTensor,
        eps: f32,
        dy: &WgpuTensor,
    ) -> WgpuTensor {
        let out = self.storage(x.rows * x.cols * 4);
        let p = params(&[P::U(x.rows), P::U(x.cols), P::F(eps)]);
        self.dispatch(
            (Shader::Rows, "rms_norm_backward", 0),
            &p,
            &[(1, x.buf()), (2, weight.buf()), (3, dy.buf()), (4, &out)],
            grid(x.rows),
        );
        self.tensor(out, x.rows, x.cols)
    }

    fn rope_backward(
        &self,
        dy: &mut WgpuTensor,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        rope: &Rope,
    ) {
        self.rope_op(dy, n_heads, head_dim, pos0, rope, -1.0);
    }

    fn silu_mul_backward(
        &self,
        gate: &WgpuTensor,
        up: &WgpuTensor,
        dy: &WgpuTensor,
    ) -> (WgpuTensor, WgpuTensor) {
        let n = gate.rows * gate.cols;
        let (dg, du) = (self.storage(n * 4), self.storage(n * 4));
        self.elementwise(
            "silu_mul_backward",
            n,
            gate.cols,
            &[
                (1, gate.buf()),
                (2, up.buf()),
                (3, dy.buf()),
                (4, &dg),
                (5, &du),
            ],
        );
        (
            self.tensor(dg, gate.rows, gate.cols),
            self.tensor(du, gate.rows, gate.cols),
        )
    }

    fn attention_backward(
        &self,
        q: &WgpuTensor,
        k: &WgpuTensor,
        v: &WgpuTensor,
        dout: &WgpuTensor,
        shape: AttentionShape,
    ) -> (WgpuTensor, WgpuTensor, WgpuTensor) {
        let n = q.rows;
        let scratch = shape.n_heads * n * n * 4;
        assert!(
            scratch as u64 <= self.max_binding,
            "attention_backward: {n} tokens need {scratch} bytes of scratch, over this device's binding limit"
        );
        let p = params(&[
            P::U(n),
            P::U(0),
            P::U(q.cols),
            P::U(k.cols),
            P::U(shape.n_heads),
            P::U(shape.n_heads / shape.n_kv_heads),
            P::U(shape.head_dim),
            P::F(1.0 / (shape.head_dim as f32).sqrt()),
        ]);
        let (probs, dscore) = (self.storage(scratch), self.storage(scratch));
        let dq = self.storage(n * q.cols * 4);
        let (dk, dv) = (self.storage(n * k.cols * 4), self.storage(n * k.cols * 4));
        self.dispatch(
            (Shader::Attention, "attention_backward_rows", 0),
            &p,
            &[
                (1, q.buf()),
                (2, k.buf()),
                (3, v.buf()),
                (4, &dq),
                (5, dout.buf()),
                (6, &probs),
                (7, &dscore),
            ],
            grid(n * shape.n_heads),
        );
        self.dispatch(
            (Shader::Attention, "attention_backward_keys", 0),
            &p,
            &[
                (1, q.buf()),
                (5, dout.buf()),
                (6, &probs),
                (7, &dscore),
                (8, &dk),
                (9, &dv),
            ],
            grid(n * shape.n_kv_heads),
        );
        (
            self.tensor(dq, n, q.cols),
            self.tensor(dk, n, k.cols),
            self.tensor(dv, n, k.cols),
        )
    }

    fn cross_entropy(&self, logits: &WgpuTensor, targets: &[u32]) -> (Vec<f32>, WgpuTensor) {
        assert_eq!(
            targets.len(),
            logits.rows,
            "cross_entropy: one target per row"
        );
        assert!(
            targets.iter().all(|&t| (t as usize) < logits.cols),
            "cross_entropy: target outside the {} classes",
            logits.cols
        );
        let grad = self.storage(logits.rows * logits.cols * 4);
        self.copy(logits.buf(), 0, &grad, 0, logits.rows * logits.cols * 4);
        let ids = self.u32s(targets);
        let losses = self.storage(logits.rows * 4);
        let p = params(&[P::U(logits.rows), P::U(logits.cols), P::F(0.0)]);
        self.dispatch(
            (Shader::Rows, "cross_entropy", 0),
            &p,
            &[(4, &grad), (5, &ids), (6, &losses)],
            grid(logits.rows),
        );
        let bytes = self.read_back(&losses, logits.rows * 4);
        (
            bytemuck::pod_collect_to_vec(&bytes),
            self.tensor(grad, logits.rows, logits.cols),
        )
    }

    fn value_grads(
        &self,
        slots: &WgpuSlots,
        weights: &WgpuTensor,
        dy: &WgpuTensor,
        rows: &[u32],
    ) -> WgpuTensor {
        // Which (token, pick) positions hit each selected row, built on the host from the slot
        // ids (a few kB): the sums then run in the CPU backend's order, with no atomics.
        let ids = self.download_slots(slots);
        let index: HashMap<u32, usize> = rows.iter().enumerate().map(|(i, &r)| (r, i)).collect();
        let mut hits: Vec<Vec<u32>> = vec![Vec::new(); rows.len()];
        for (pos, id) in ids.iter().enumerate() {
            if let Some(&i) = index.get(id) {
                hits[i].push(pos as u32);
            }
        }
        let mut offsets = vec![0u32];
        for h in &hits {
            offsets.push(offsets.last().copied().unwrap_or(0) + h.len() as u32);
        }
        let flat: Vec<u32> = hits.concat();
        let (offsets, flat) = (self.u32s(&offsets), self.u32s(&flat));
        let out = self.storage(rows.len() * dy.cols * 4);
        let fields = [P::U(rows.len()), P::U(dy.cols), P::U(slots.cols)];
        self.memory_op(
            "value_grads",
            &fields,
            rows.len(),
            &[
                (5, &flat),
                (6, weights.buf()),
                (7, dy.buf()),
                (8, &out),
                (9, &offsets),
            ],
        );
        self.tensor(out, rows.len(), dy.cols)
    }

    fn read_rows(&self, t: &WgpuTensor, rows: &[u32]) -> WgpuTensor {
        let out = self.storage(rows.len() * t.cols * 4);
        let ids = self.u32s(rows);
        for part in &t.parts {
            let fields = [
                P::U(rows.len()),
                P::U(t.cols),
                P::U(0),
                P::U(part.row0),
                P::U(part.rows),
            ];
            self.memory_op(
                "read_rows",
                &fields,
                rows.len(),
                &[(5, &ids), (7, &part.buf), (8, &out)],
            );
        }
        self.tensor(out, rows.len(), t.cols)
    }

    fn write_rows(&self, t: &mut WgpuTensor, rows: &[u32], src: &WgpuTensor) {
        assert_eq!(
            (src.rows, src.cols),
            (rows.len(), t.cols),
            "write_rows: source shape"
        );
        let ids = self.u32s(rows);
        for part in &t.parts {
            let fields = [
                P::U(rows.len()),
                P::U(t.cols),
                P::U(0),
                P::U(part.row0),
                P::U(part.rows),
            ];
            self.memory_op(
                "write_rows",
                &fields,
                rows.len(),
                &[(5, &ids), (7, src.buf()), (8, &part.buf)],
            );
        }
    }

    fn sgd_rows(&self, values: &mut WgpuTensor, rows: &[u32], grads: &WgpuTensor, lr: f32) {
        assert_eq!(
            (grads.rows, grads.cols),
            (rows.len(), values.cols),
            "sgd_rows: gradient shape"
        );
        let ids = self.u32s(rows);
        for part in &values.parts {
            let fields = [
                P::U(rows.len()),
                P::U(values.cols),
                P::U(0),
                P::U(part.row0),
                P::U(part.rows),
                P::F(lr),
            ];
            self.memory_op(
                "sgd_rows",
                &fields,
                rows.len(),
                &[(5, &ids), (7, grads.buf()), (8, &part.buf)],
            );
        }
    }

    fn new_kv_cache(&self, n_layers: usize, kv_dim: usize, capacity: usize) -> WgpuKvCache {
        let allocated = capacity.clamp(1, 512);
        let bytes = allocated * kv_dim * 4;
        WgpuKvCache {
            k: (0..n_layers).map(|_| self.storage(bytes)).collect(),
            v: (0..n_layers).map(|_| self.storage(bytes)).collect(),
            len: vec![0; n_layers],
            allocated,
            capacity,
            kv_dim,
        }
    }

    fn kv_len(&self, cache: &WgpuKvCache) -> usize {
        cache.len.iter().copied().min().unwrap_or(0)
    }

    fn kv_truncate(&self, cache: &mut WgpuKvCache, len: usize) {
        for l in cache.len.iter_mut() {
            *l = (*l).min(len);
        }
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
        assert!(
            shape.head_dim <= MAX_HEAD_DIM,
            "wgpu attention: head_dim over {MAX_HEAD_DIM}"
        );
        let n = q.rows;
        assert!(
            k.rows >= n && v.rows == k.rows,
            "wgpu attention: k and v need the same rows, at least as many as q"
        );
        let (start, added) = (cache.len[layer], k.rows);
        self.grow_cache(cache, start + added);
        let kv = cache.kv_dim;
        self.copy(k.buf(), 0, &cache.k[layer], start * kv * 4, added * kv * 4);
        self.copy(v.buf(), 0, &cache.v[layer], start * kv * 4, added * kv * 4);
        cache.len[layer] = start + added;
        // The queries are the last n of the positions now cached.
        let pos0 = start + added - n;
        let out = self.storage(n * q.cols * 4);
        let p = params(&[
            P::U(n),
            P::U(pos0),
            P::U(q.cols),
            P::U(kv),
            P::U(shape.n_heads),
            P::U(shape.n_heads / shape.n_kv_heads),
            P::U(shape.head_dim),
            P::F(1.0 / (shape.head_dim as f32).sqrt()),
        ]);
        self.dispatch(
            (Shader::Attention, "attention", 0),
            &p,
            &[
                (1, q.buf()),
                (2, &cache.k[layer]),
                (3, &cache.v[layer]),
                (4, &out),
            ],
            grid(n * shape.n_heads),
        );
        self.tensor(out, n, q.cols)
    }
}

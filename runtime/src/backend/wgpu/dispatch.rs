//! How an op reaches the device: shader pipelines (compiled once per entry point and block
//! format), uniform parameters, dispatches recorded into one encoder, buffers and read-backs.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use super::shaders::{
    ElementwiseParams, MatmulParams, MemoryParams, RowsParams, Shader, ShaderParams,
};
use super::*;
use crate::quant::GgmlType;

pub(super) fn dtype_code(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::BF16 => 2,
        GgmlType::Q8_0 => 3,
        GgmlType::Q4_0 => 4,
        GgmlType::Q4_1 => 5,
        GgmlType::Q4_K => 6,
        GgmlType::Q6_K => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q2_K => 10,
        GgmlType::Q3_K => 11,
        GgmlType::Q5_K => 12,
    }
}

/// A shader parameter from a size or count: every one fits a u32 on the sizes engram runs.
pub(super) fn u(v: usize) -> u32 {
    u32::try_from(v).expect("shader parameter exceeds u32")
}

/// Workgroup counts for `groups` workgroups, folded into 2-D past the per-dimension limit.
pub(super) fn grid(groups: usize) -> (u32, u32) {
    let groups = u32::try_from(groups.max(1)).expect("dispatch too large");
    if groups <= MAX_GROUPS {
        (groups, 1)
    } else {
        (MAX_GROUPS, groups.div_ceil(MAX_GROUPS))
    }
}

impl WgpuBackend {
    pub(super) fn pipeline(
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
    pub(super) fn dispatch<T: ShaderParams>(
        &self,
        (entry, dtype): (&'static str, u32),
        params: &T,
        bufs: &[(u32, &wgpu::Buffer)],
        groups: (u32, u32),
    ) {
        let pipeline = self.pipeline(T::SHADER, entry, dtype);
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::bytes_of(params),
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
    pub(super) fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
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

    pub(super) fn submit(queue: &wgpu::Queue, pending: &mut Pending) {
        if let Some(enc) = pending.encoder.take() {
            queue.submit([enc.finish()]);
        }
        pending.ops = 0;
    }

    /// Submits everything recorded so far.
    pub(super) fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        Self::submit(&self.queue, &mut pending);
    }

    pub(super) fn storage(&self, bytes: usize) -> wgpu::Buffer {
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

    pub(super) fn storage_init(&self, bytes: &[u8]) -> wgpu::Buffer {
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

    pub(super) fn u32s(&self, data: &[u32]) -> wgpu::Buffer {
        self.storage_init(bytemuck::cast_slice(data))
    }

    /// A zeroed tensor (wgpu zero-fills new buffers), split where it exceeds a binding.
    pub(super) fn zeros(&self, rows: usize, cols: usize) -> WgpuTensor {
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

    pub(super) fn tensor(&self, buf: wgpu::Buffer, rows: usize, cols: usize) -> WgpuTensor {
        WgpuTensor {
            parts: vec![Part { buf, row0: 0, rows }],
            rows,
            cols,
        }
    }

    pub(super) fn read_back(&self, buf: &wgpu::Buffer, bytes: usize) -> Vec<u8> {
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

    pub(super) fn copy(
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

    pub(super) fn elementwise(
        &self,
        entry: &'static str,
        n: usize,
        cols: usize,
        bufs: &[(u32, &wgpu::Buffer)],
    ) {
        self.dispatch(
            (entry, 0),
            &ElementwiseParams {
                n: u(n),
                cols: u(cols),
                ..Default::default()
            },
            bufs,
            grid(n.div_ceil(256)),
        );
    }

    /// Runs a per-element memory op (64 per workgroup) over `n × dim` elements.
    pub(super) fn memory_op(
        &self,
        entry: &'static str,
        params: &MemoryParams,
        bufs: &[(u32, &wgpu::Buffer)],
    ) {
        let elements = params.n as usize * params.dim as usize;
        self.dispatch((entry, 0), params, bufs, grid(elements.div_ceil(64)));
    }

    pub(super) fn rope_op(
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
        let p = RowsParams {
            rows: u(x.rows),
            cols: u(x.cols),
            n_heads: u(n_heads),
            head_dim: u(head_dim),
            half_dims: u(half),
            pos0: u(pos0),
            step: rope.base.powf(-2.0 / rope.dims as f32),
            direction,
            halves: u(usize::from(rope.layout == RopeLayout::Halves)),
            ..Default::default()
        };
        self.dispatch(("rope", 0), &p, &[(4, x.buf())], grid(total.div_ceil(64)));
    }

    /// `x` as 8-bit blocks of 32 (10 words each), exactly as the cpu backend quantizes
    /// activations for integer weight formats, so both backends sum the same integers.
    pub(super) fn quantize_activations(&self, x: &WgpuTensor) -> wgpu::Buffer {
        assert!(
            x.cols.is_multiple_of(32),
            "activations of width {} are not whole 32-blocks",
            x.cols
        );
        let blocks = x.cols / 32;
        let xq = self.storage(x.rows * blocks * 10 * 4);
        let p = MatmulParams {
            cols: u(x.cols),
            n: u(x.rows),
            ..Default::default()
        };
        self.dispatch(
            ("quantize_q8", 0),
            &p,
            &[(2, x.buf()), (5, &xq)],
            (blocks.div_ceil(64) as u32, x.rows.max(1) as u32),
        );
        xq
    }

    pub(super) fn grow_cache(&self, cache: &mut WgpuKvCache, needed: usize) {
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

//! GPU backend through wgpu on Vulkan, Metal or DX12 — and on Mesa's lavapipe, the CPU Vulkan
//! driver CI tests it on: every kernel module is a WGSL file beside this one, and this file is
//! wgpu's side of [`Compute`] (pipelines, one command encoder, staging read-backs). The ops
//! themselves are the GPU backends' shared host code in `backend/gpu`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

mod adapters;
mod shaders;

use super::gpu::{Compute, GpuBackend, GpuKvCache, GpuSlots, GpuTensor, GpuWeight, Module};
use crate::error::{Error, Result};
pub use super::gpu::uses_integer_dot;
pub use adapters::{AdapterSummary, WgpuOptions, adapters};
use adapters::{instance, rank, summary};

/// Every op as a WGSL compute shader on one wgpu device.
pub type WgpuBackend = GpuBackend<WgpuCompute>;
/// A row-major f32 matrix in wgpu device memory.
pub type WgpuTensor = GpuTensor<WgpuCompute>;
/// A weight matrix in wgpu device memory, still in its block format.
pub type WgpuWeight = GpuWeight<WgpuCompute>;
/// Slot ids of a product-key lookup, in wgpu device memory.
pub type WgpuSlots = GpuSlots<WgpuCompute>;
/// Per-layer key and value buffers in wgpu device memory.
pub type WgpuKvCache = GpuKvCache<WgpuCompute>;

/// One wgpu device and queue, with its compiled pipelines and the work not yet submitted.
pub struct WgpuCompute {
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

impl Drop for WgpuCompute {
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

impl GpuBackend<WgpuCompute> {
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
        Ok(GpuBackend::with_compute(WgpuCompute {
            device,
            queue,
            adapter: summary,
            max_binding,
            pipelines: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending::default()),
            profile: (std::env::var("ENGRAM_WGPU_PROFILE").as_deref() == Ok("1"))
                .then(|| Mutex::new(HashMap::new())),
        }))
    }

    /// The adapter this backend runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.compute().adapter
    }
}

impl WgpuCompute {
    fn pipeline(
        &self,
        module: Module,
        entry: &'static str,
        dtype: u32,
    ) -> Arc<wgpu::ComputePipeline> {
        let mut cache = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry((entry, dtype))
            .or_insert_with(|| {
                let source = shaders::wgsl(module, dtype);
                let shader = self
                    .device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(module.name()),
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
}

impl Compute for WgpuCompute {
    type Buffer = wgpu::Buffer;

    fn name(&self) -> String {
        format!("wgpu ({}, {})", self.adapter.name, self.adapter.api)
    }

    fn max_binding(&self) -> u64 {
        self.max_binding
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

    fn write(&self, buf: &wgpu::Buffer, bytes: &[u8]) {
        self.queue.write_buffer(buf, 0, bytes);
    }

    fn read_back(&self, buf: &wgpu::Buffer, bytes: usize) -> Vec<u8> {
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
        self.record(|enc| {
            enc.copy_buffer_to_buffer(src, src_off as u64, dst, dst_off as u64, bytes as u64)
        });
    }

    /// Runs `entry` of `module` once with `params` at binding 0 and `bufs` at their bindings.
    fn dispatch(
        &self,
        module: Module,
        entry: &'static str,
        dtype: u32,
        params: &[u8; 64],
        bufs: &[(u32, &wgpu::Buffer)],
        groups: (u32, u32),
    ) {
        let pipeline = self.pipeline(module, entry, dtype);
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: params,
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
}

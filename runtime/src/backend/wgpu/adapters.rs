//! The GPUs wgpu can see on this machine, and how to ask for one.

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

pub(super) fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
    wgpu::Instance::new(desc)
}

pub(super) fn rank(kind: wgpu::DeviceType) -> u8 {
    match kind {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

pub(super) fn summary(index: usize, a: &wgpu::Adapter) -> AdapterSummary {
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

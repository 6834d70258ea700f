//! Which device runs the model: the user's choice, or what `auto` finds.

use super::cpu::CpuBackend;
use super::device::DeviceBackend;
use super::wgpu::{WgpuBackend, WgpuOptions};
use crate::error::{Error, Result};

/// Where the model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// A discrete or integrated GPU through wgpu when one exists, else the CPU (the reason
    /// is kept in `Engine::device_note`). `$ENGRAM_DEVICE` (same names as `--device`)
    /// overrides it.
    #[default]
    Auto,
    /// The host CPU.
    Cpu,
    /// The best wgpu adapter, a software one such as lavapipe included.
    Wgpu,
    /// wgpu adapter number N of `engram info --devices`.
    WgpuAdapter(usize),
    /// NVIDIA GPUs through CUDA (not in this build: the error says to use wgpu).
    Cuda,
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "wgpu" | "gpu" => Ok(Device::Wgpu),
            "cuda" => Ok(Device::Cuda),
            _ => match s.strip_prefix("wgpu:").map(str::parse) {
                Some(Ok(i)) => Ok(Device::WgpuAdapter(i)),
                _ => Err(Error::InvalidArgument(format!(
                    "unknown device {s:?}: expected auto, cpu, wgpu, wgpu:N or cuda"
                ))),
            },
        }
    }
}

/// Whether this machine can have a GPU at all. On Linux a GPU driver exposes a device node;
/// without one `auto` skips loading the Vulkan loader and software drivers (which cost time
/// and, headless, print warnings of their own).
fn gpu_device_nodes_exist() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let has = |dir: &str, prefix: &str| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
        })
    };
    has("/dev/dri", "renderD") || has("/dev", "nvidia")
}

/// The backend for `device`, and why Auto fell back to the CPU if it did.
pub fn open_backend(device: Device, threads: usize) -> Result<(DeviceBackend, Option<String>)> {
    if device == Device::Auto
        && let Ok(chosen) = std::env::var("ENGRAM_DEVICE")
        && !chosen.is_empty()
    {
        let named: Device = chosen
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("ENGRAM_DEVICE: {e}")))?;
        if named != Device::Auto {
            return open_backend(named, threads);
        }
    }
    let wgpu = |adapter, allow_software| {
        WgpuBackend::new(&WgpuOptions {
            adapter,
            allow_software,
            max_binding: None,
        })
        .map(|b| DeviceBackend::Wgpu(Box::new(b)))
    };
    match device {
        Device::Cpu => Ok((DeviceBackend::Cpu(CpuBackend::new(threads)?), None)),
        Device::Wgpu => Ok((wgpu(None, true)?, None)),
        Device::WgpuAdapter(i) => Ok((wgpu(Some(i), true)?, None)),
        Device::Cuda => Err(Error::Unsupported(
            "this build of engram has no CUDA backend; NVIDIA GPUs run through wgpu \
             (--device wgpu, Vulkan)"
                .into(),
        )),
        Device::Auto if !gpu_device_nodes_exist() => Ok((
            DeviceBackend::Cpu(CpuBackend::new(threads)?),
            Some("running on the CPU: no GPU device node (/dev/dri/renderD*, /dev/nvidia*)".into()),
        )),
        Device::Auto => match wgpu(None, false) {
            Ok(b) => Ok((b, None)),
            Err(e) => Ok((
                DeviceBackend::Cpu(CpuBackend::new(threads)?),
                Some(format!("running on the CPU: {e}")),
            )),
        },
    }
}

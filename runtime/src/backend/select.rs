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
    /// CUDA device N (`None`: the first) of `engram info --devices`, its driver and NVRTC
    /// found at run time. `auto` does not pick it until the backend has been verified on a
    /// GPU ([`CUDA_VERIFIED`]).
    Cuda(Option<usize>),
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "wgpu" | "gpu" => Ok(Device::Wgpu),
            "cuda" => Ok(Device::Cuda(None)),
            _ => {
                let numbered = |prefix| s.strip_prefix(prefix).map(str::parse::<usize>);
                match (numbered("wgpu:"), numbered("cuda:")) {
                    (Some(Ok(i)), _) => Ok(Device::WgpuAdapter(i)),
                    (_, Some(Ok(i))) => Ok(Device::Cuda(Some(i))),
                    _ => Err(Error::InvalidArgument(format!(
                        "unknown device {s:?}: expected auto, cpu, wgpu, wgpu:N, cuda or cuda:N"
                    ))),
                }
            }
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
        Device::Cuda(index) => Ok((open_cuda(index)?, None)),
        Device::Auto if !gpu_device_nodes_exist() => Ok((
            DeviceBackend::Cpu(CpuBackend::new(threads)?),
            Some("running on the CPU: no GPU device node (/dev/dri/renderD*, /dev/nvidia*)".into()),
        )),
        Device::Auto if CUDA_VERIFIED && cuda_answers() => match open_cuda(None) {
            Ok(b) => Ok((b, None)),
            Err(e) => match wgpu(None, false) {
                Ok(b) => Ok((b, Some(format!("not on CUDA: {e}")))),
                Err(w) => Ok((
                    DeviceBackend::Cpu(CpuBackend::new(threads)?),
                    Some(format!("running on the CPU: {e}; {w}")),
                )),
            },
        },
        Device::Auto => match wgpu(None, false) {
            Ok(b) => Ok((b, None)),
            Err(e) => Ok((
                DeviceBackend::Cpu(CpuBackend::new(threads)?),
                Some(format!("running on the CPU: {e}")),
            )),
        },
    }
}

/// One CUDA device as the driver reports it.
#[derive(Clone, Debug)]
pub struct CudaDeviceSummary {
    /// Ordinal (what `--device cuda:N` takes).
    pub index: usize,
    /// Device name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Device memory, bytes.
    pub memory_bytes: usize,
    /// Compute capability (major, minor): which PTX it runs.
    pub compute_capability: (u32, u32),
    /// Peak memory bandwidth, bytes per second (memory clock × bus width × 2): the bound on
    /// decode speed, which reads every weight once per token.
    pub memory_bandwidth_bytes_per_s: u64,
}

/// Every CUDA device on this machine, or a one-line reason there is none to use.
pub fn cuda_devices() -> Result<Vec<CudaDeviceSummary>> {
    #[cfg(any(target_os = "linux", target_os = "windows"))]
    {
        super::cuda::devices()
    }
    #[cfg(not(any(target_os = "linux", target_os = "windows")))]
    {
        Err(Error::Unsupported("CUDA exists only on Linux and Windows".into()))
    }
}

/// Whether a CUDA driver answers with at least one device.
fn cuda_answers() -> bool {
    cuda_devices().is_ok_and(|d| !d.is_empty())
}

/// Whether the CUDA backend has passed `scripts/gpu-check` on a real GPU. Until it has, `auto`
/// leaves NVIDIA GPUs to wgpu (whose kernels the CUDA ones are ports of) and `--device cuda`
/// must be asked for by name.
pub const CUDA_VERIFIED: bool = false;

/// CUDA device `index` as a backend, or a one-line reason: no driver, no such device, no
/// NVRTC, or a platform without CUDA.
fn open_cuda(index: Option<usize>) -> Result<DeviceBackend> {
    #[cfg(any(target_os = "linux", target_os = "windows"))]
    {
        super::cuda::CudaBackend::new(index).map(|b| DeviceBackend::Cuda(Box::new(b)))
    }
    #[cfg(not(any(target_os = "linux", target_os = "windows")))]
    {
        let _ = index;
        Err(Error::Unsupported("CUDA exists only on Linux and Windows".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;

    #[test]
    fn device_names_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(None));
        assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::Cuda(Some(1)));
        assert_eq!("wgpu:2".parse::<Device>().unwrap(), Device::WgpuAdapter(2));
        let bad = "cuda:x".parse::<Device>().unwrap_err().to_string();
        assert!(bad.contains("cuda:N"), "{bad}");
    }

    /// `--device cuda` is a one-line error, not cudarc's panic, on a machine without CUDA,
    /// and names the missing driver; where a device answers it opens.
    #[test]
    fn asking_for_cuda_gives_a_one_line_reason_or_the_device() {
        match open_backend(Device::Cuda(None), 1) {
            Err(e) => {
                let message = e.to_string();
                assert!(!message.contains('\n'), "{message}");
                #[cfg(any(target_os = "linux", target_os = "windows"))]
                if !crate::backend::cuda::driver_present() {
                    assert!(message.contains("no CUDA driver (libcuda.so.1 not found)"));
                    crate::backend::skipped("opening_a_cuda_device", &message);
                }
            }
            Ok((backend, _)) => assert!(backend.name().starts_with("cuda ("), "{}", backend.name()),
        }
    }
}

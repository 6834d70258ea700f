//! NVIDIA GPUs through CUDA, found at run time: one engram binary runs everywhere, and uses
//! CUDA where a driver and a device answer.
//!
//! cudarc loads `libcuda` and `libnvrtc` when first called, and panics where they are missing,
//! so every entry point here asks whether the library is present first. The kernels are CUDA C
//! files beside this one, ported entry point for entry point from the wgpu backend's WGSL
//! ([`kernels`]), and compiled on the user's machine by NVRTC for the GPU at hand.
//!
//! The ops themselves are the GPU backends' shared host code (`backend/gpu`); [`CudaCompute`]
//! is CUDA's side of it. No GPU has run this backend yet: CI compiles every kernel with NVRTC
//! and runs them under a CPU emulation, and `scripts/gpu-check` is what a machine with an
//! NVIDIA GPU runs to verify it.

mod compute;
pub mod kernels;

pub use compute::{
    CudaBackend, CudaBuffer, CudaCompute, CudaKvCache, CudaOptions, CudaSlots, CudaTensor, CudaWeight,
};

pub use crate::backend::select::CudaDeviceSummary;
use crate::error::{Error, Result};
use cudarc::driver::{result as driver, sys};

/// The file name the CUDA driver library has on this platform, for messages.
pub const DRIVER_LIBRARY: &str = if cfg!(windows) {
    "nvcuda.dll"
} else {
    "libcuda.so.1"
};

/// Whether the CUDA driver library can be loaded (without cudarc's panic where it cannot).
pub fn driver_present() -> bool {
    // SAFETY: loading the system's CUDA driver library runs only its own initialisers.
    unsafe { sys::is_culib_present() }
}

/// Whether NVRTC, which compiles the kernels, can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: as for the driver: loading NVRTC runs only its own initialisers.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Every CUDA device on this machine, or why there is none to use.
pub fn devices() -> Result<Vec<CudaDeviceSummary>> {
    if !driver_present() {
        return Err(Error::Unsupported(format!(
            "no CUDA driver ({DRIVER_LIBRARY} not found)"
        )));
    }
    let failed = |what: &str, e: driver::DriverError| {
        Error::Unsupported(format!("the CUDA driver is present but {what} failed: {e:?}"))
    };
    driver::init().map_err(|e| failed("cuInit", e))?;
    let count = driver::device::get_count().map_err(|e| failed("cuDeviceGetCount", e))?;
    (0..count)
        .map(|ordinal| {
            let dev = driver::device::get(ordinal).map_err(|e| failed("cuDeviceGet", e))?;
            let name = driver::device::get_name(dev).map_err(|e| failed("cuDeviceGetName", e))?;
            let attribute = |a| {
                // SAFETY: `dev` came from cuDeviceGet of a valid ordinal just above.
                unsafe { driver::device::get_attribute(dev, a) }
                    .map_err(|e| failed("cuDeviceGetAttribute", e))
            };
            let major = attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            )?;
            let minor = attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
            )?;
            let clock_khz = attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)?;
            let bus_bits =
                attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)?;
            // SAFETY: as above.
            let memory_bytes = unsafe { driver::device::total_mem(dev) }
                .map_err(|e| failed("cuDeviceTotalMem", e))?;
            Ok(CudaDeviceSummary {
                index: ordinal as usize,
                name,
                memory_bytes,
                compute_capability: (major as u32, minor as u32),
                // Double data rate: two transfers per clock.
                memory_bandwidth_bytes_per_s: clock_khz.max(0) as u64
                    * 1000
                    * 2
                    * bus_bits.max(0) as u64
                    / 8,
            })
        })
        .collect()
}

/// The device `--device cuda` (`index` None: the first) or `cuda:N` names, or a one-line
/// reason it cannot be used.
pub fn device(index: Option<usize>) -> Result<CudaDeviceSummary> {
    let all = devices()?;
    let wanted = index.unwrap_or(0);
    match all.into_iter().nth(wanted) {
        Some(d) => Ok(d),
        None if index.is_none() => Err(Error::Unsupported(
            "the CUDA driver is present but reports no device".into(),
        )),
        None => Err(Error::InvalidArgument(format!(
            "no CUDA device {wanted} (see `engram info --devices`)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a driver every entry point answers with the one-line reason instead of
    /// cudarc's panic; with one, each device reports a name and memory.
    #[test]
    fn devices_say_why_there_are_none_or_describe_each() {
        match devices() {
            Err(e) => {
                let message = e.to_string();
                assert!(!driver_present() || message.contains("driver is present"));
                if !driver_present() {
                    assert!(message.contains("no CUDA driver (libcuda.so.1 not found)"));
                    crate::backend::skipped("devices_describe_each", &message);
                }
                assert!(device(None).is_err() && device(Some(3)).is_err());
            }
            Ok(all) => {
                for d in &all {
                    assert!(!d.name.is_empty() && d.memory_bytes > 0);
                    assert!(d.compute_capability.0 >= 3);
                }
                let past_the_end = device(Some(all.len())).unwrap_err().to_string();
                assert!(past_the_end.contains(&format!("no CUDA device {}", all.len())));
            }
        }
    }
}

//! CUDA's side of [`Compute`]: device buffers, copies and kernel launches on one stream through
//! the driver API, kernels compiled by NVRTC for the device at first use (and cached on disk).
//!
//! Everything is issued on one stream, so ops run in the order the shared host code issues
//! them, as wgpu's single queue does; only read-backs wait.

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, result as driver, sys};

use super::kernels;
use super::{CudaDeviceSummary, device, nvrtc_present};
use crate::backend::gpu::{Compute, GpuBackend, GpuKvCache, GpuSlots, GpuTensor, GpuWeight, Module};
use crate::error::{Error, Result};

/// Every op as a CUDA kernel on one NVIDIA GPU.
pub type CudaBackend = GpuBackend<CudaCompute>;
/// A row-major f32 matrix in CUDA device memory.
pub type CudaTensor = GpuTensor<CudaCompute>;
/// A weight matrix in CUDA device memory, still in its block format.
pub type CudaWeight = GpuWeight<CudaCompute>;
/// Slot ids of a product-key lookup, in CUDA device memory.
pub type CudaSlots = GpuSlots<CudaCompute>;
/// Per-layer key and value buffers in CUDA device memory.
pub type CudaKvCache = GpuKvCache<CudaCompute>;

/// Largest buffer one kernel argument covers: the kernels index bytes with 32-bit integers,
/// so larger tables are split into parts as wgpu splits at its binding limit.
const MAX_ARGUMENT_BYTES: u64 = 1 << 31;

/// One CUDA device: its context, the stream every op is issued on, and the kernels loaded.
pub struct CudaCompute {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    summary: CudaDeviceSummary,
    /// Bytes one kernel argument covers: the split size for large tensors.
    max_binding: u64,
    /// NVRTC's `--gpu-architecture` for this device.
    arch: String,
    /// Where compiled PTX is kept between runs (none: compiled every run).
    cache_dir: Option<PathBuf>,
    /// Loaded modules and their kernels' block sizes, by (module, block format).
    modules: Mutex<HashMap<(Module, u32), LoadedModule>>,
    /// Loaded kernels and their block sizes, by (entry point, block format).
    functions: Mutex<HashMap<(&'static str, u32), LoadedKernel>>,
    /// Whether the device allocates on the stream (cuMemAllocAsync): frees then wait for the
    /// stream's earlier work instead of the whole device.
    async_alloc: bool,
}

/// A module loaded on the device, with `(kernel, block size)` of each of its entries.
type LoadedModule = (Arc<cudarc::driver::CudaModule>, Vec<(String, Option<u32>)>);

/// A kernel loaded on the device, and its block size.
type LoadedKernel = (CudaFunction, u32);

/// A device allocation, freed on the stream when dropped.
pub struct CudaBuffer {
    ptr: sys::CUdeviceptr,
    stream: Arc<CudaStream>,
    async_alloc: bool,
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        // A failure to free leaks device memory but must not abort a drop.
        let _ = self.stream.context().bind_to_thread();
        // SAFETY: `ptr` came from this context's allocator and is freed once; ops issued on the
        // stream before still run first.
        let _ = unsafe {
            if self.async_alloc {
                driver::free_async(self.ptr, self.stream.cu_stream())
            } else {
                driver::free_sync(self.ptr)
            }
        };
    }
}

/// The 64-byte parameter block, aligned as the kernels' `Params` struct is.
#[repr(C, align(16))]
struct ParamBlock([u8; 64]);

/// How to open the CUDA backend.
#[derive(Clone, Debug, Default)]
pub struct CudaOptions {
    /// CUDA device ordinal; `None` takes the first.
    pub device: Option<usize>,
    /// Lowers the bytes one kernel argument covers (tests use it to run the split paths on
    /// small tensors); `None` keeps the 2 GiB the kernels' 32-bit offsets allow.
    pub max_binding: Option<u64>,
}

impl GpuBackend<CudaCompute> {
    /// Opens CUDA device `index` (`None`: the first), or says in one line why it cannot.
    pub fn new(index: Option<usize>) -> Result<Self> {
        Self::with_options(&CudaOptions {
            device: index,
            max_binding: None,
        })
    }

    /// Opens the CUDA device `options` names, or says in one line why it cannot.
    pub fn with_options(options: &CudaOptions) -> Result<Self> {
        let summary = device(options.device)?;
        if !nvrtc_present() {
            return Err(Error::Unsupported(
                "NVRTC (libnvrtc.so.12) not found: it compiles engram's CUDA kernels; install \
                 the CUDA toolkit's NVRTC or PyPI nvidia-cuda-nvrtc-cu12 and put its lib folder \
                 on LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let failed = |what: &str, e: driver::DriverError| {
            Error::Unsupported(format!("CUDA device {}: {what} failed: {e:?}", summary.index))
        };
        let (major, minor) = summary.compute_capability;
        let arch = kernels::supported_architecture(summary.compute_capability).ok_or_else(|| {
            Error::Unsupported(format!(
                "this NVRTC cannot compile for compute capability {major}.{minor} ({}): it is \
                 too old for that NVRTC",
                summary.name
            ))
        })?;
        let ctx = CudaContext::new(summary.index).map_err(|e| failed("creating a context", e))?;
        let stream = ctx.default_stream();
        let async_alloc = ctx.has_async_alloc();
        if async_alloc {
            // Freed blocks stay in the pool across read-backs (each synchronizes the stream,
            // once per decoded token); with the default threshold of 0 they went back to the
            // driver every time and the next token mapped them again.
            let mut keep = u64::MAX;
            // SAFETY: the device's own default pool; the attribute takes a u64.
            let _ = unsafe {
                driver::device::get_default_mem_pool(ctx.cu_device()).and_then(|pool| {
                    driver::mem_pool::set_attribute(
                        pool,
                        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                        &mut keep as *mut u64 as *mut c_void,
                    )
                })
            };
        }
        let backend = GpuBackend::with_compute(CudaCompute {
            max_binding: options
                .max_binding
                .map_or(MAX_ARGUMENT_BYTES, |m| m.min(MAX_ARGUMENT_BYTES)),
            arch,
            ctx,
            stream,
            summary,
            cache_dir: kernels::cache_dir(),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            async_alloc,
        });
        // A driver older than the NVRTC cannot load its PTX: say so now, in one line, rather
        // than at the first op.
        let c = backend.compute();
        c.bind();
        c.load(Module::Elementwise, 0).map_err(|e| {
            let mut driver_version = 0;
            // SAFETY: one out-parameter.
            let _ = unsafe { sys::cuDriverGetVersion(&mut driver_version) };
            let (nv_major, nv_minor) = kernels::nvrtc_version().unwrap_or_default();
            Error::Unsupported(format!(
                "CUDA device {}: the driver (CUDA {}.{}) cannot load kernels compiled by \
                 NVRTC {nv_major}.{nv_minor} for {}: {e}; use an NVRTC no newer than the driver",
                c.summary.index,
                driver_version / 1000,
                driver_version % 1000 / 10,
                c.arch
            ))
        })?;
        Ok(backend)
    }

    /// The device this backend runs on.
    pub fn device_summary(&self) -> &CudaDeviceSummary {
        &self.compute().summary
    }
}

impl CudaCompute {
    /// Makes this device's context current on the calling thread (ops come from the engine's
    /// thread and the background learner's).
    fn bind(&self) {
        self.ctx
            .bind_to_thread()
            .unwrap_or_else(|e| panic!("CUDA: binding the context failed: {e:?}"));
    }

    /// Kernel `entry` of `module` for block format `dtype`, and its block size: the module
    /// compiled (or read from the cache) and loaded the first time one of its kernels is
    /// asked for.
    fn function(&self, module: Module, entry: &'static str, dtype: u32) -> LoadedKernel {
        let dtype = if module == Module::Matmul { dtype } else { 0 };
        if let Some(f) = lock(&self.functions).get(&(entry, dtype)) {
            return f.clone();
        }
        let mut modules = lock(&self.modules);
        let (cu_module, blocks) = match modules.entry((module, dtype)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                self.load(module, dtype)
                    .unwrap_or_else(|e| panic!("CUDA: {e}")),
            ),
        };
        let block = blocks
            .iter()
            .find(|(name, _)| name == entry)
            .and_then(|(_, block)| *block)
            .unwrap_or_else(|| panic!("CUDA: {}.cu has no kernel {entry} with launch bounds", module.name()));
        let function = cu_module
            .load_function(entry)
            .unwrap_or_else(|e| panic!("CUDA: loading kernel {entry} failed: {e:?}"));
        lock(&self.functions).insert((entry, dtype), (function.clone(), block));
        (function, block)
    }
}

impl CudaCompute {
    /// Compiles (or reads from the cache) and loads `module` for block format `dtype`, with
    /// `(kernel, block size)` of each of its entries.
    fn load(&self, module: Module, dtype: u32) -> Result<LoadedModule> {
        let ptx = match &self.cache_dir {
            Some(dir) => kernels::compile_cached(module, dtype, &self.arch, dir),
            None => kernels::compile(module, dtype, &self.arch),
        }?;
        let blocks = kernels::ptx_entries(&ptx);
        let loaded = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|e| {
                Error::Unsupported(format!("loading {}.cu failed: {e:?}", module.name()))
            })?;
        Ok((loaded, blocks))
    }
}

/// A lock's data even where another thread panicked holding it (the maps stay consistent:
/// each insert is one call).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Compute for CudaCompute {
    type Buffer = CudaBuffer;

    fn name(&self) -> String {
        let (major, minor) = self.summary.compute_capability;
        format!("cuda ({}, compute capability {major}.{minor})", self.summary.name)
    }

    fn max_binding(&self) -> u64 {
        self.max_binding
    }

    fn storage(&self, bytes: usize) -> CudaBuffer {
        self.bind();
        let stream = self.stream.cu_stream();
        // SAFETY: a fresh allocation of `bytes` on this context, zeroed before any op reads it.
        let ptr = unsafe {
            let ptr = if self.async_alloc {
                driver::malloc_async(stream, bytes)
            } else {
                driver::malloc_sync(bytes)
            }
            .unwrap_or_else(|e| panic!("CUDA: allocating {bytes} bytes failed: {e:?}"));
            driver::memset_d8_async(ptr, 0, bytes, stream)
                .unwrap_or_else(|e| panic!("CUDA: zeroing a buffer failed: {e:?}"));
            ptr
        };
        CudaBuffer {
            ptr,
            stream: self.stream.clone(),
            async_alloc: self.async_alloc,
        }
    }

    fn write(&self, buf: &CudaBuffer, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.bind();
        // SAFETY: the buffer holds at least `bytes.len()` bytes (the shared code allocates
        // before it writes); a copy from pageable memory has read `bytes` when it returns.
        unsafe { driver::memcpy_htod_async(buf.ptr, bytes, self.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("CUDA: writing {} bytes failed: {e:?}", bytes.len()));
    }

    fn copy(&self, src: &CudaBuffer, src_off: usize, dst: &CudaBuffer, dst_off: usize, n: usize) {
        self.bind();
        // SAFETY: the shared code copies within both buffers' sizes.
        unsafe {
            driver::memcpy_dtod_async(
                dst.ptr + dst_off as u64,
                src.ptr + src_off as u64,
                n,
                self.stream.cu_stream(),
            )
        }
        .unwrap_or_else(|e| panic!("CUDA: copying {n} bytes failed: {e:?}"));
    }

    fn read_back(&self, buf: &CudaBuffer, bytes: usize) -> Vec<u8> {
        self.bind();
        let mut out = vec![0u8; bytes];
        // SAFETY: `out` has `bytes` bytes and lives until the stream has finished the copy.
        unsafe { driver::memcpy_dtoh_async(&mut out, buf.ptr, self.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("CUDA: reading {bytes} bytes back failed: {e:?}"));
        self.stream
            .synchronize()
            .unwrap_or_else(|e| panic!("CUDA: a kernel failed: {e:?}"));
        out
    }

    fn dispatch(
        &self,
        module: Module,
        entry: &'static str,
        dtype: u32,
        params: &[u8; 64],
        bufs: &[(u32, &CudaBuffer)],
        groups: (u32, u32),
    ) {
        if groups.0 == 0 || groups.1 == 0 {
            // Nothing to run (an empty tensor); CUDA refuses a launch of no blocks.
            return;
        }
        // The context first: looking a kernel up needs it current on this thread too.
        self.bind();
        let (function, block) = self.function(module, entry, dtype);
        // The kernel's arguments: the parameter block by value, then the buffers in binding
        // order (what each kernel's signature lists), each as a pointer to its device address.
        let mut block_bytes = ParamBlock(*params);
        let mut sorted: Vec<(u32, sys::CUdeviceptr)> =
            bufs.iter().map(|(binding, b)| (*binding, b.ptr)).collect();
        sorted.sort_by_key(|(binding, _)| *binding);
        let mut ptrs: Vec<sys::CUdeviceptr> = sorted.into_iter().map(|(_, p)| p).collect();
        let mut args: Vec<*mut c_void> = Vec::with_capacity(1 + ptrs.len());
        args.push(&mut block_bytes as *mut ParamBlock as *mut c_void);
        args.extend(ptrs.iter_mut().map(|p| p as *mut sys::CUdeviceptr as *mut c_void));
        // SAFETY: `args` is the kernel's parameter list: the block, then one pointer per buffer
        // the kernel's signature lists, in binding order (the .cu files' tables; reviewed by
        // hand against every dispatch, not checked by a test). It outlives the call, which
        // copies the values.
        unsafe {
            driver::launch_kernel(
                function.cu_function(),
                (groups.0, groups.1, 1),
                (block, 1, 1),
                0,
                self.stream.cu_stream(),
                &mut args,
            )
        }
        .unwrap_or_else(|e| panic!("CUDA: launching {entry} failed: {e:?}"));
    }
}

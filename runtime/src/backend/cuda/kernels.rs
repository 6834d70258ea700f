//! The CUDA C kernel modules, each a file beside this one, and their compilation by NVRTC
//! (cached on disk, keyed by the source's hash and the GPU's architecture).
//!
//! Each module is the port of the wgpu backend's WGSL module of the same name, entry point for
//! entry point: a kernel takes the 64-byte `Params` struct by value, then the storage buffers
//! its WGSL twin binds, in binding order, and runs in blocks of its WGSL workgroup size. So the
//! host side of the two backends makes the same dispatches.

use std::path::{Path, PathBuf};

use crate::backend::gpu::Module;
use crate::error::{Error, Result};

const QUANT: &str = include_str!("quant.cu");
const MATMUL: &str = include_str!("matmul.cu");
const ELEMENTWISE: &str = include_str!("elementwise.cu");
const ROWS: &str = include_str!("rows.cu");
const ATTENTION: &str = include_str!("attention.cu");
const MEMORY: &str = include_str!("memory.cu");

/// Block-format codes the matmul module is specialised for (the wgpu backend's codes: F32 0,
/// F16 1, BF16 2, Q8_0 3, Q4_0 4, Q4_1 5, Q4_K 6, Q6_K 7, Q5_0 8, Q5_1 9, Q2_K 10, Q3_K 11,
/// Q5_K 12).
pub const DTYPE_CODES: std::ops::Range<u32> = 0..13;

/// The module's CUDA C; `dtype` (a block-format code) specialises the matmul module and is
/// ignored by the others.
pub fn source(module: Module, dtype: u32) -> String {
    match module {
        Module::Matmul => format!("#define DTYPE {dtype}u\n{QUANT}\n{MATMUL}"),
        Module::Elementwise => ELEMENTWISE.to_string(),
        Module::Rows => ROWS.to_string(),
        Module::Attention => ATTENTION.to_string(),
        Module::Memory => MEMORY.to_string(),
    }
}

/// NVRTC's `--gpu-architecture` for a device of compute capability `(major, minor)`: PTX for
/// exactly that virtual architecture, which the driver finishes compiling for the device.
pub fn architecture((major, minor): (u32, u32)) -> String {
    format!("compute_{major}{minor}")
}

/// The newest architecture this NVRTC compiles for that a device of compute capability
/// `(major, minor)` runs: the device's own, or (for a GPU newer than the NVRTC) an older one
/// whose PTX the driver still finishes for it. `None` where the NVRTC supports nothing that old
/// (CUDA 13 dropped everything before compute_75).
pub fn supported_architecture((major, minor): (u32, u32)) -> Option<String> {
    let wanted = (major * 10 + minor) as i32;
    let mut count = 0;
    // SAFETY: NVRTC's documented pair of calls: the count, then an array of that many.
    let supported = unsafe {
        use cudarc::nvrtc::sys;
        if sys::nvrtcGetNumSupportedArchs(&mut count) != sys::nvrtcResult::NVRTC_SUCCESS {
            return None;
        }
        let mut archs = vec![0i32; count.max(0) as usize];
        if sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) != sys::nvrtcResult::NVRTC_SUCCESS {
            return None;
        }
        archs
    };
    supported
        .into_iter()
        .filter(|&a| a <= wanted)
        .max()
        .map(|a| format!("compute_{a}"))
}

/// NVRTC's version (major, minor), where it can be loaded.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    if !super::nvrtc_present() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-parameters, written by NVRTC.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (status == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// Compiles `module` (specialised for `dtype`) to PTX for `arch` (e.g. "compute_80").
///
/// Precise division, square root and denormals, and no fused multiply-add contraction the
/// source does not write: the results are compared with the CPU backend's.
pub fn compile(module: Module, dtype: u32, arch: &str) -> Result<String> {
    if !super::nvrtc_present() {
        return Err(Error::Unsupported(
            "NVRTC (libnvrtc.so.12) not found: it compiles the CUDA kernels".into(),
        ));
    }
    let options = cudarc::nvrtc::CompileOptions {
        ftz: Some(false),
        prec_sqrt: Some(true),
        prec_div: Some(true),
        fmad: Some(false),
        options: vec![format!("--gpu-architecture={arch}")],
        name: Some(format!("{}.cu", module.name())),
        ..Default::default()
    };
    match cudarc::nvrtc::compile_ptx_with_opts(source(module, dtype), options) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => Err(Error::Internal(format!(
            "NVRTC could not compile {}.cu (dtype {dtype}) for {arch}: {}",
            module.name(),
            log.to_string_lossy().trim()
        ))),
        Err(e) => Err(Error::Internal(format!(
            "NVRTC failed on {}.cu for {arch}: {e:?}",
            module.name()
        ))),
    }
}

/// [`compile`], reading the PTX from `dir` when an earlier run compiled the same source for
/// the same architecture with the same NVRTC (NVRTC takes seconds per module; a start should
/// not; and a driver older than the NVRTC cannot load its PTX, so a user who changes NVRTC to
/// fix that must not get the old PTX back).
pub fn compile_cached(module: Module, dtype: u32, arch: &str, dir: &Path) -> Result<String> {
    let key = xxhash_rust::xxh3::xxh3_64(source(module, dtype).as_bytes());
    let (major, minor) = nvrtc_version().unwrap_or_default();
    let path = dir.join(format!(
        "{}-{dtype}-{arch}-nvrtc{major}.{minor}-{key:016x}.ptx",
        module.name()
    ));
    if let Ok(ptx) = std::fs::read_to_string(&path) {
        return Ok(ptx);
    }
    let ptx = compile(module, dtype, arch)?;
    // A cache that cannot be written costs only the next start's compile time. Written under
    // a name of this write's own, then renamed: another engram (or another backend in this
    // process) starting at the same time reads a whole file or none.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}-{n}.tmp", std::process::id()));
    let _ = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&tmp, &ptx))
        .and_then(|_| std::fs::rename(&tmp, &path));
    Ok(ptx)
}

/// Where compiled kernels are kept between runs: `$ENGRAM_CUDA_CACHE`, else
/// `$XDG_CACHE_HOME/engram/cuda`, else `~/.cache/engram/cuda`.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("ENGRAM_CUDA_CACHE") {
        return Some(dir.into());
    }
    var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache")))
        .map(|base| base.join("engram").join("cuda"))
}

/// `(kernel, block size)` of every `.entry` of a PTX module, the block size from the
/// `.maxntid` that each kernel's `__launch_bounds__` writes: a launch uses exactly the block
/// size its WGSL twin's workgroup has.
pub fn ptx_entries(ptx: &str) -> Vec<(String, Option<u32>)> {
    let mut entries: Vec<(String, Option<u32>)> = Vec::new();
    for line in ptx.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix(".visible .entry ") {
            let name = rest.split('(').next().unwrap_or_default().trim();
            entries.push((name.to_string(), None));
        } else if let (Some(rest), Some(last)) =
            (line.strip_prefix(".maxntid"), entries.last_mut())
        {
            last.1 = rest.split(',').next().and_then(|n| n.trim().parse().ok());
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The WGSL twin of each module, whose entry points and workgroup sizes the port keeps.
    fn wgsl_twin(module: Module) -> &'static str {
        match module {
            Module::Matmul => include_str!("../wgpu/matmul.wgsl"),
            Module::Elementwise => include_str!("../wgpu/elementwise.wgsl"),
            Module::Rows => include_str!("../wgpu/rows.wgsl"),
            Module::Attention => include_str!("../wgpu/attention.wgsl"),
            Module::Memory => include_str!("../wgpu/memory.wgsl"),
        }
    }

    /// `(entry point, workgroup size)` of every `@compute` function of a WGSL module.
    fn wgsl_entries(wgsl: &str) -> Vec<(String, u32)> {
        let mut entries = Vec::new();
        let mut size = None;
        for line in wgsl.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("@compute @workgroup_size(") {
                size = rest.split(')').next().and_then(|n| n.trim().parse().ok());
            } else if let (Some(w), Some(rest)) = (size, line.strip_prefix("fn ")) {
                let name = rest.split('(').next().unwrap_or_default().trim();
                entries.push((name.to_string(), w));
                size = None;
            }
        }
        entries
    }

    /// Every module compiles with NVRTC for the oldest and newest architectures engram
    /// targets, for every block format, and defines each of its WGSL twin's entry points as
    /// an unmangled kernel with the same block size. No GPU is needed; where NVRTC is not
    /// installed the test says it is skipped, unless `ENGRAM_REQUIRE_NVRTC` is set (CI sets
    /// it: there the check must run).
    #[test]
    fn every_kernel_compiles_with_nvrtc_and_matches_its_wgsl_entry_points() {
        if !crate::backend::cuda::nvrtc_present() {
            assert!(
                std::env::var_os("ENGRAM_REQUIRE_NVRTC").is_none(),
                "ENGRAM_REQUIRE_NVRTC is set but libnvrtc.so.12 cannot be loaded (pip install \
                 nvidia-cuda-nvrtc-cu12 and put its lib folder on LD_LIBRARY_PATH)"
            );
            crate::backend::skipped(
                "every_kernel_compiles_with_nvrtc",
                "NVRTC (libnvrtc.so.12) not found; no CUDA kernel was compiled",
            );
            return;
        }
        let mut compiled = 0;
        for arch in ["compute_70", "compute_90"] {
            for module in Module::ALL {
                let dtypes = if module == Module::Matmul {
                    DTYPE_CODES
                } else {
                    0..1
                };
                let expected = wgsl_entries(wgsl_twin(module));
                assert!(!expected.is_empty(), "no entry point found in {module:?}'s WGSL");
                for dtype in dtypes {
                    let ptx = compile(module, dtype, arch).unwrap_or_else(|e| panic!("{e}"));
                    let got = ptx_entries(&ptx);
                    for (name, size) in &expected {
                        let kernel = got.iter().find(|(n, _)| n == name);
                        assert_eq!(
                            kernel.map(|k| k.1),
                            Some(Some(*size)),
                            "{}.cu ({arch}, dtype {dtype}): kernel {name} with block size {size}",
                            module.name()
                        );
                    }
                    compiled += 1;
                }
            }
        }
        eprintln!("compiled {compiled} CUDA modules with NVRTC");
    }

    /// A second compile of the same source and architecture is read from the cache folder.
    #[test]
    fn compiled_kernels_are_cached_by_source_and_architecture() {
        if !crate::backend::cuda::nvrtc_present() {
            crate::backend::skipped(
                "compiled_kernels_are_cached",
                "NVRTC (libnvrtc.so.12) not found",
            );
            return;
        }
        let dir = std::env::temp_dir().join(format!("engram-cuda-cache-{}", std::process::id()));
        let first = compile_cached(Module::Elementwise, 0, "compute_80", &dir).unwrap();
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(files.len(), 1, "one PTX file, no temporary left behind");
        // The cached file is what a second call returns: overwrite it and see it come back.
        std::fs::write(files[0].path(), "cached").unwrap();
        let second = compile_cached(Module::Elementwise, 0, "compute_80", &dir).unwrap();
        assert_eq!(second, "cached");
        assert!(first.contains(".entry"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn architecture_names_follow_the_compute_capability() {
        assert_eq!(architecture((8, 6)), "compute_86");
        assert_eq!(architecture((9, 0)), "compute_90");
    }

    /// A device NVRTC knows gets its own architecture; one newer than the NVRTC the newest the
    /// NVRTC has; one older than all it supports none.
    #[test]
    fn the_architecture_is_the_newest_nvrtc_has_up_to_the_device() {
        if !crate::backend::cuda::nvrtc_present() {
            crate::backend::skipped("the_architecture_is_the_newest", "NVRTC not found");
            return;
        }
        assert_eq!(supported_architecture((8, 6)).as_deref(), Some("compute_86"));
        let newest = supported_architecture((99, 9)).expect("NVRTC supports some architecture");
        let n: u32 = newest.trim_start_matches("compute_").parse().unwrap();
        assert!(n >= 90, "{newest}");
        assert_eq!(supported_architecture((1, 0)), None);
        let (major, _) = nvrtc_version().expect("a loaded NVRTC has a version");
        assert!(major >= 11);
    }
}

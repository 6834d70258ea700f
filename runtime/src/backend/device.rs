//! One backend type over every device, chosen at run time: the engine holds a
//! `Model<DeviceBackend>` and never names a device. Each op forwards to the backend it holds;
//! tensors remember which device made them.

use super::cpu::{CpuBackend, CpuKvCache, CpuSlots, CpuTensor, CpuWeight};
use super::wgpu::{WgpuBackend, WgpuKvCache, WgpuSlots, WgpuTensor, WgpuWeight};
#[cfg(any(target_os = "linux", target_os = "windows"))]
use super::cuda::{CudaBackend, CudaKvCache, CudaSlots, CudaTensor, CudaWeight};
use super::{Activation, AttentionShape, Backend, ProductKeyShape, Rope, WeightSource};
use crate::error::Result;
use crate::gguf::F32Buffer;

/// The backend an engine runs on.
pub enum DeviceBackend {
    /// The host CPU.
    Cpu(CpuBackend),
    /// A GPU (or lavapipe) through wgpu (boxed: it is much larger than the cpu backend).
    Wgpu(Box<WgpuBackend>),
    /// An NVIDIA GPU through CUDA (boxed, as wgpu is).
    #[cfg(any(target_os = "linux", target_os = "windows"))]
    Cuda(Box<CudaBackend>),
}

/// A tensor of whichever device made it.
pub enum DeviceTensor {
    /// In host memory.
    Cpu(CpuTensor),
    /// In wgpu device memory.
    Wgpu(WgpuTensor),
    /// In CUDA device memory.
    #[cfg(any(target_os = "linux", target_os = "windows"))]
    Cuda(CudaTensor),
}

/// A weight of whichever device loaded it.
pub enum DeviceWeight {
    /// Read in place from the mapped file.
    Cpu(CpuWeight),
    /// Uploaded to wgpu device memory.
    Wgpu(WgpuWeight),
    /// Uploaded to CUDA device memory.
    #[cfg(any(target_os = "linux", target_os = "windows"))]
    Cuda(CudaWeight),
}

/// Slot ids of whichever device looked them up.
pub enum DeviceSlots {
    /// In host memory.
    Cpu(CpuSlots),
    /// In wgpu device memory.
    Wgpu(WgpuSlots),
    /// In CUDA device memory.
    #[cfg(any(target_os = "linux", target_os = "windows"))]
    Cuda(CudaSlots),
}

/// A KV cache of whichever device holds it.
pub enum DeviceKvCache {
    /// In host memory.
    Cpu(CpuKvCache),
    /// In wgpu device memory.
    Wgpu(WgpuKvCache),
    /// In CUDA device memory.
    #[cfg(any(target_os = "linux", target_os = "windows"))]
    Cuda(CudaKvCache),
}

/// How one concrete backend's values sit inside the device enums.
trait Member: Backend + Sized {
    fn tensor(t: &DeviceTensor) -> &Self::Tensor;
    fn tensor_mut(t: &mut DeviceTensor) -> &mut Self::Tensor;
    fn wrap(t: Self::Tensor) -> DeviceTensor;
    fn weight(w: &DeviceWeight) -> &Self::Weight;
    fn wrap_weight(w: Self::Weight) -> DeviceWeight;
    fn slots(s: &DeviceSlots) -> &Self::Slots;
    fn wrap_slots(s: Self::Slots) -> DeviceSlots;
    fn cache(c: &DeviceKvCache) -> &Self::KvCache;
    fn cache_mut(c: &mut DeviceKvCache) -> &mut Self::KvCache;
    fn wrap_cache(c: Self::KvCache) -> DeviceKvCache;
}

fn foreign() -> ! {
    panic!("a value made on one device was handed to another device's backend")
}

macro_rules! member {
    ($backend:ty, $variant:ident) => {
        impl Member for $backend {
            fn tensor(t: &DeviceTensor) -> &Self::Tensor {
                match t {
                    DeviceTensor::$variant(x) => x,
                    #[allow(unreachable_patterns)]
                    _ => foreign(),
                }
            }
            fn tensor_mut(t: &mut DeviceTensor) -> &mut Self::Tensor {
                match t {
                    DeviceTensor::$variant(x) => x,
                    #[allow(unreachable_patterns)]
                    _ => foreign(),
                }
            }
            fn wrap(t: Self::Tensor) -> DeviceTensor {
                DeviceTensor::$variant(t)
            }
            fn weight(w: &DeviceWeight) -> &Self::Weight {
                match w {
                    DeviceWeight::$variant(x) => x,
                    #[allow(unreachable_patterns)]
                    _ => foreign(),
                }
            }
            fn wrap_weight(w: Self::Weight) -> DeviceWeight {
                DeviceWeight::$variant(w)
            }
            fn slots(s: &DeviceSlots) -> &Self::Slots {
                match s {
                    DeviceSlots::$variant(x) => x,
                    #[allow(unreachable_patterns)]
                    _ => foreign(),
                }
            }
            fn wrap_slots(s: Self::Slots) -> DeviceSlots {
                DeviceSlots::$variant(s)
            }
            fn cache(c: &DeviceKvCache) -> &Self::KvCache {
                match c {
                    DeviceKvCache::$variant(x) => x,
                    #[allow(unreachable_patterns)]
                    _ => foreign(),
                }
            }
            fn cache_mut(c: &mut DeviceKvCache) -> &mut Self::KvCache {
                match c {
                    DeviceKvCache::$variant(x) => x,
                    #[allow(unreachable_patterns)]
                    _ => foreign(),
                }
            }
            fn wrap_cache(c: Self::KvCache) -> DeviceKvCache {
                DeviceKvCache::$variant(c)
            }
        }
    };
}

member!(CpuBackend, Cpu);
member!(WgpuBackend, Wgpu);
#[cfg(any(target_os = "linux", target_os = "windows"))]
member!(CudaBackend, Cuda);

/// Runs `$body` with `$b` bound to the held backend and `$M` naming its type.
macro_rules! on {
    ($self:ident, |$b:ident, $M:ident| $body:expr) => {
        match $self {
            DeviceBackend::Cpu($b) => {
                #[allow(dead_code)]
                type $M = CpuBackend;
                $body
            }
            DeviceBackend::Wgpu(boxed) => {
                let $b: &WgpuBackend = boxed;
                #[allow(dead_code)]
                type $M = WgpuBackend;
                $body
            }
            #[cfg(any(target_os = "linux", target_os = "windows"))]
            DeviceBackend::Cuda(boxed) => {
                let $b: &CudaBackend = boxed;
                #[allow(dead_code)]
                type $M = CudaBackend;
                $body
            }
        }
    };
}

impl DeviceBackend {
    /// Whether this is the host CPU backend.
    pub fn is_cpu(&self) -> bool {
        matches!(self, DeviceBackend::Cpu(_))
    }

    /// CPU worker threads, for the CPU backend.
    pub fn threads(&self) -> Option<usize> {
        match self {
            DeviceBackend::Cpu(b) => Some(b.threads()),
            DeviceBackend::Wgpu(_) => None,
            #[cfg(any(target_os = "linux", target_os = "windows"))]
            DeviceBackend::Cuda(_) => None,
        }
    }
}

impl Backend for DeviceBackend {
    type Tensor = DeviceTensor;
    type Weight = DeviceWeight;
    type KvCache = DeviceKvCache;
    type Slots = DeviceSlots;

    fn name(&self) -> String {
        on!(self, |b, M| b.name())
    }

    fn run<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        on!(self, |b, M| b.run(work))
    }

    fn load_weight(&self, w: &WeightSource) -> Result<DeviceWeight> {
        on!(self, |b, M| b.load_weight(w).map(M::wrap_weight))
    }

    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> DeviceTensor {
        on!(self, |b, M| M::wrap(b.upload(data, rows, cols)))
    }

    fn upload_vec(&self, data: Vec<f32>, rows: usize, cols: usize) -> DeviceTensor {
        on!(self, |b, M| M::wrap(b.upload_vec(data, rows, cols)))
    }

    fn upload_values(&self, data: F32Buffer, rows: usize, cols: usize) -> DeviceTensor {
        on!(self, |b, M| M::wrap(b.upload_values(data, rows, cols)))
    }

    fn take_values(&self, t: DeviceTensor) -> F32Buffer {
        match (self, t) {
            (DeviceBackend::Cpu(b), DeviceTensor::Cpu(x)) => b.take_values(x),
            (b, t) => F32Buffer::Owned(b.download(&t)),
        }
    }

    fn nonzero_rows(&self, t: &DeviceTensor) -> Vec<bool> {
        on!(self, |b, M| b.nonzero_rows(M::tensor(t)))
    }

    fn download(&self, t: &DeviceTensor) -> Vec<f32> {
        on!(self, |b, M| b.download(M::tensor(t)))
    }

    fn host_view<'t>(&self, t: &'t DeviceTensor) -> std::borrow::Cow<'t, [f32]> {
        on!(self, |b, M| b.host_view(M::tensor(t)))
    }

    fn take_to_host(&self, t: DeviceTensor) -> Vec<f32> {
        match (self, t) {
            (DeviceBackend::Cpu(b), DeviceTensor::Cpu(x)) => b.take_to_host(x),
            (b, t) => b.download(&t),
        }
    }

    fn argmax_rows(&self, t: &DeviceTensor) -> Vec<u32> {
        on!(self, |b, M| b.argmax_rows(M::tensor(t)))
    }

    fn shape(&self, t: &DeviceTensor) -> (usize, usize) {
        on!(self, |b, M| b.shape(M::tensor(t)))
    }

    fn concat_rows(&self, parts: &[&DeviceTensor]) -> DeviceTensor {
        on!(self, |b, M| {
            let parts: Vec<_> = parts.iter().map(|p| M::tensor(p)).collect();
            M::wrap(b.concat_rows(&parts))
        })
    }

    fn pad_rows(&self, t: &DeviceTensor, start: usize, total: usize) -> DeviceTensor {
        on!(self, |b, M| M::wrap(b.pad_rows(M::tensor(t), start, total)))
    }

    fn slice_rows(&self, t: &DeviceTensor, start: usize, end: usize) -> DeviceTensor {
        on!(self, |b, M| M::wrap(b.slice_rows(M::tensor(t), start, end)))
    }

    fn embed(&self, table: &DeviceWeight, tokens: &[u32]) -> Result<DeviceTensor> {
        on!(self, |b, M| b.embed(M::weight(table), tokens).map(M::wrap))
    }

    fn matmul(&self, w: &DeviceWeight, x: &DeviceTensor) -> DeviceTensor {
        on!(self, |b, M| M::wrap(b.matmul(M::weight(w), M::tensor(x))))
    }

    fn matmul_each(&self, ws: &[&DeviceWeight], x: &DeviceTensor) -> Vec<DeviceTensor> {
        on!(self, |b, M| {
            let ws: Vec<_> = ws.iter().map(|w| M::weight(w)).collect();
            b.matmul_each(&ws, M::tensor(x))
                .into_iter()
                .map(M::wrap)
                .collect()
        })
    }

    fn rms_norm(&self, x: &DeviceTensor, weight: &DeviceTensor, eps: f32) -> DeviceTensor {
        on!(self, |b, M| M::wrap(b.rms_norm(
            M::tensor(x),
            M::tensor(weight),
            eps
        )))
    }

    fn rope(
        &self,
        x: &mut DeviceTensor,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        rope: &Rope,
    ) {
        on!(self, |b, M| b.rope(
            M::tensor_mut(x),
            n_heads,
            head_dim,
            pos0,
            rope
        ))
    }

    fn glu(&self, act: Activation, gate: &DeviceTensor, up: &DeviceTensor) -> DeviceTensor {
        on!(self, |b, M| M::wrap(b.glu(act, M::tensor(gate), M::tensor(up))))
    }

    fn scale(&self, x: &mut DeviceTensor, factor: f32) {
        on!(self, |b, M| b.scale(M::tensor_mut(x), factor))
    }

    fn reshape(&self, t: DeviceTensor, rows: usize, cols: usize) -> DeviceTensor {
        match (self, t) {
            (DeviceBackend::Cpu(b), DeviceTensor::Cpu(x)) => DeviceTensor::Cpu(b.reshape(x, rows, cols)),
            (DeviceBackend::Wgpu(b), DeviceTensor::Wgpu(x)) => {
                DeviceTensor::Wgpu(b.reshape(x, rows, cols))
            }
            #[cfg(any(target_os = "linux", target_os = "windows"))]
            (DeviceBackend::Cuda(b), DeviceTensor::Cuda(x)) => {
                DeviceTensor::Cuda(b.reshape(x, rows, cols))
            }
            _ => foreign(),
        }
    }

    fn add_assign(&self, x: &mut DeviceTensor, y: &DeviceTensor) {
        on!(self, |b, M| b.add_assign(M::tensor_mut(x), M::tensor(y)))
    }

    fn add_row(&self, x: &mut DeviceTensor, row: &DeviceTensor) {
        on!(self, |b, M| b.add_row(M::tensor_mut(x), M::tensor(row)))
    }

    fn product_key_topk(
        &self,
        q: &DeviceTensor,
        keys: &DeviceTensor,
        shape: ProductKeyShape,
    ) -> (DeviceSlots, DeviceTensor) {
        on!(self, |b, M| {
            let (s, w) = b.product_key_topk(M::tensor(q), M::tensor(keys), shape);
            (M::wrap_slots(s), M::wrap(w))
        })
    }

    fn download_slots(&self, slots: &DeviceSlots) -> Vec<u32> {
        on!(self, |b, M| b.download_slots(M::slots(slots)))
    }

    fn upload_slots(&self, ids: Vec<u32>, rows: usize, cols: usize) -> DeviceSlots {
        on!(self, |b, M| M::wrap_slots(b.upload_slots(ids, rows, cols)))
    }

    fn gather_values(
        &self,
        values: &DeviceTensor,
        slots: &DeviceSlots,
        weights: &DeviceTensor,
    ) -> DeviceTensor {
        on!(self, |b, M| M::wrap(b.gather_values(
            M::tensor(values),
            M::slots(slots),
            M::tensor(weights)
        )))
    }

    fn use_gemm(&self, w: &DeviceWeight, on: bool) {
        on!(self, |b, M| b.use_gemm(M::weight(w), on))
    }

    fn matmul_backward(&self, w: &DeviceWeight, dy: &DeviceTensor) -> DeviceTensor {
        on!(self, |b, M| M::wrap(
            b.matmul_backward(M::weight(w), M::tensor(dy))
        ))
    }

    fn matmul_backward_sum(&self, ws: &[&DeviceWeight], dys: &[&DeviceTensor]) -> DeviceTensor {
        on!(self, |b, M| {
            let ws: Vec<_> = ws.iter().map(|w| M::weight(w)).collect();
            let dys: Vec<_> = dys.iter().map(|t| M::tensor(t)).collect();
            M::wrap(b.matmul_backward_sum(&ws, &dys))
        })
    }

    fn rms_norm_backward(
        &self,
        x: &DeviceTensor,
        weight: &DeviceTensor,
        eps: f32,
        dy: &DeviceTensor,
    ) -> DeviceTensor {
        on!(self, |b, M| M::wrap(b.rms_norm_backward(
            M::tensor(x),
            M::tensor(weight),
            eps,
            M::tensor(dy)
        )))
    }

    fn rope_backward(
        &self,
        dy: &mut DeviceTensor,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        rope: &Rope,
    ) {
        on!(self, |b, M| b.rope_backward(
            M::tensor_mut(dy),
            n_heads,
            head_dim,
            pos0,
            rope
        ))
    }

    fn glu_backward(
        &self,
        act: Activation,
        gate: &DeviceTensor,
        up: &DeviceTensor,
        dy: &DeviceTensor,
    ) -> (DeviceTensor, DeviceTensor) {
        on!(self, |b, M| {
            let (g, u) = b.glu_backward(act, M::tensor(gate), M::tensor(up), M::tensor(dy));
            (M::wrap(g), M::wrap(u))
        })
    }

    fn attention_backward(
        &self,
        q: &DeviceTensor,
        k: &DeviceTensor,
        v: &DeviceTensor,
        dout: &DeviceTensor,
        shape: AttentionShape,
    ) -> (DeviceTensor, DeviceTensor, DeviceTensor) {
        on!(self, |b, M| {
            let (dq, dk, dv) = b.attention_backward(
                M::tensor(q),
                M::tensor(k),
                M::tensor(v),
                M::tensor(dout),
                shape,
            );
            (M::wrap(dq), M::wrap(dk), M::wrap(dv))
        })
    }

    fn cross_entropy(&self, logits: &DeviceTensor, targets: &[u32]) -> (Vec<f32>, DeviceTensor) {
        on!(self, |b, M| {
            let (losses, grad) = b.cross_entropy(M::tensor(logits), targets);
            (losses, M::wrap(grad))
        })
    }

    fn value_grads(
        &self,
        slots: &DeviceSlots,
        weights: &DeviceTensor,
        dy: &DeviceTensor,
        rows: &[u32],
    ) -> DeviceTensor {
        on!(self, |b, M| M::wrap(b.value_grads(
            M::slots(slots),
            M::tensor(weights),
            M::tensor(dy),
            rows
        )))
    }

    fn read_rows(&self, t: &DeviceTensor, rows: &[u32]) -> DeviceTensor {
        on!(self, |b, M| M::wrap(b.read_rows(M::tensor(t), rows)))
    }

    fn write_rows(&self, t: &mut DeviceTensor, rows: &[u32], src: &DeviceTensor) {
        on!(self, |b, M| b.write_rows(
            M::tensor_mut(t),
            rows,
            M::tensor(src)
        ))
    }

    fn sgd_rows(&self, values: &mut DeviceTensor, rows: &[u32], grads: &DeviceTensor, lr: f32) {
        on!(self, |b, M| b.sgd_rows(
            M::tensor_mut(values),
            rows,
            M::tensor(grads),
            lr
        ))
    }

    fn new_kv_cache(&self, n_layers: usize, kv_dim: usize, capacity: usize) -> DeviceKvCache {
        on!(self, |b, M| M::wrap_cache(
            b.new_kv_cache(n_layers, kv_dim, capacity)
        ))
    }

    fn kv_len(&self, cache: &DeviceKvCache) -> usize {
        on!(self, |b, M| b.kv_len(M::cache(cache)))
    }

    fn kv_truncate(&self, cache: &mut DeviceKvCache, len: usize) {
        on!(self, |b, M| b.kv_truncate(M::cache_mut(cache), len))
    }

    fn attention(
        &self,
        q: &DeviceTensor,
        k: &DeviceTensor,
        v: &DeviceTensor,
        cache: &mut DeviceKvCache,
        layer: usize,
        shape: AttentionShape,
    ) -> DeviceTensor {
        on!(self, |b, M| M::wrap(b.attention(
            M::tensor(q),
            M::tensor(k),
            M::tensor(v),
            M::cache_mut(cache),
            layer,
            shape
        )))
    }
}

//! The ops the transformer graph needs, and the devices that run them.
//!
//! The model is written once against [`Backend`]; tensors are backend-owned so that a GPU
//! backend can keep weights, KV cache and activations resident.

pub mod cpu;
#[cfg(any(target_os = "linux", target_os = "windows"))]
pub mod cuda;
pub mod device;
pub mod gpu;
mod select;
pub use select::{CUDA_VERIFIED, CudaDeviceSummary, Device, cuda_devices, open_backend};
pub mod product_keys;
pub mod wgpu;

use crate::error::Result;
use crate::gguf::{F32Buffer, TensorBytes};
use crate::quant::GgmlType;
pub use product_keys::ProductKeyShape;

/// A weight matrix as stored in the model file: `rows` rows of `cols` elements of `dtype`.
#[derive(Clone)]
pub struct WeightSource {
    /// Tensor name, for error messages.
    pub name: String,
    /// Block format of the rows.
    pub dtype: GgmlType,
    /// Output features (rows).
    pub rows: usize,
    /// Input features (elements per row).
    pub cols: usize,
    /// The bytes, zero-copy from the mapped file.
    pub bytes: TensorBytes,
}

/// How RoPE pairs up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Dimensions (2i, 2i+1) rotate together (llama in GGUF).
    Interleaved,
    /// Dimensions (i, i + d/2) rotate together (NeoX style: qwen2, gemma).
    Halves,
}

/// Parameters of rotary position embeddings.
#[derive(Clone, Copy, Debug)]
pub struct Rope {
    /// Rotated dimensions per head.
    pub dims: usize,
    /// Frequency base θ.
    pub base: f32,
    /// Pairing of dimensions.
    pub layout: RopeLayout,
}

/// The gate's non-linearity in a gated feed-forward block: act(gate) ⊙ up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// x·σ(x) (SwiGLU: llama, qwen, phi).
    Silu,
    /// GELU, tanh approximation (GeGLU: gemma).
    GeluTanh,
}

/// Shape of multi-head attention for one layer.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// Sliding window: a query sees itself and the `w − 1` positions before it; `None`: all.
    pub window: Option<usize>,
}

impl AttentionShape {
    /// The first key position a query at `pos` sees.
    pub fn first_visible(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }
}

/// A device that runs the graph's ops.
pub trait Backend: Send + Sync {
    /// A 2-D f32 activation tensor (`rows` tokens × `cols` features) owned by the device.
    type Tensor: Send + Sync;
    /// A weight matrix resident on the device in its quantized form.
    type Weight: Send + Sync;
    /// Per-sequence key/value cache for every layer.
    type KvCache: Send;
    /// Memory slot ids chosen by a product-key lookup (`rows` tokens × picks), on the device.
    type Slots: Send + Sync;

    /// Human-readable device name.
    fn name(&self) -> String;
    /// Runs `work`, a sequence of this backend's ops, from where issuing them is cheapest: the
    /// CPU backend runs it on one of its own worker threads, so that its ops share work with
    /// the other workers directly instead of waking them from outside for each op (hundreds
    /// per decoded token) while a third thread competes for the cores.
    fn run<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        work()
    }
    /// Makes a weight matrix resident (zero-copy where the device can read host memory).
    fn load_weight(&self, w: &WeightSource) -> Result<Self::Weight>;
    /// Copies host data to a `rows × cols` tensor.
    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Self::Tensor;
    /// Moves host data into a tensor, without a copy where the device reads host memory.
    fn upload_vec(&self, data: Vec<f32>, rows: usize, cols: usize) -> Self::Tensor {
        self.upload(&data, rows, cols)
    }
    /// Makes a memory's value table a tensor: the CPU keeps a mapped table as it is (only the
    /// pages read take memory); other devices copy it.
    fn upload_values(&self, data: F32Buffer, rows: usize, cols: usize) -> Self::Tensor {
        self.upload(&data, rows, cols)
    }
    /// A value table back on the host, moved out (mapping and all) where it lives there.
    fn take_values(&self, t: Self::Tensor) -> F32Buffer {
        F32Buffer::Owned(self.download(&t))
    }
    /// Per row of a value table, whether any of its values is nonzero (reading a mapped
    /// table's file for the rows never written, so its pages are not all brought in).
    fn nonzero_rows(&self, t: &Self::Tensor) -> Vec<bool> {
        let (_, cols) = self.shape(t);
        F32Buffer::Owned(self.download(t)).nonzero_rows(cols)
    }
    /// Copies a tensor back to the host, row-major.
    fn download(&self, t: &Self::Tensor) -> Vec<f32>;
    /// A tensor's values on the host, row-major: borrowed where they already live there, so
    /// saving a memory's 604 MB of values needs no second copy on the CPU.
    fn host_view<'t>(&self, t: &'t Self::Tensor) -> std::borrow::Cow<'t, [f32]> {
        std::borrow::Cow::Owned(self.download(t))
    }
    /// A tensor's values on the host, row-major, moved out where they already live there.
    fn take_to_host(&self, t: Self::Tensor) -> Vec<f32> {
        self.download(&t)
    }
    /// Index of each row's largest value (the first on ties): greedy decoding on a GPU then
    /// reads back one word per token instead of the vocabulary's logits.
    fn argmax_rows(&self, t: &Self::Tensor) -> Vec<u32> {
        let (rows, cols) = self.shape(t);
        let data = self.download(t);
        (0..rows)
            .map(|r| argmax(&data[r * cols..(r + 1) * cols]))
            .collect()
    }
    /// `(rows, cols)` of a tensor.
    fn shape(&self, t: &Self::Tensor) -> (usize, usize);
    /// The rows of all `parts` (same width) stacked in order.
    fn concat_rows(&self, parts: &[&Self::Tensor]) -> Self::Tensor;
    /// A `total`-row tensor of zeros with `t` placed at rows `start..`.
    fn pad_rows(&self, t: &Self::Tensor, start: usize, total: usize) -> Self::Tensor;
    /// Rows `start..end` as a new tensor.
    fn slice_rows(&self, t: &Self::Tensor, start: usize, end: usize) -> Self::Tensor;

    /// Looks up embedding rows for `tokens`.
    fn embed(&self, table: &Self::Weight, tokens: &[u32]) -> Result<Self::Tensor>;
    /// y = x · Wᵀ: each row of `x` (n × cols) against every weight row, giving n × rows.
    fn matmul(&self, w: &Self::Weight, x: &Self::Tensor) -> Self::Tensor;
    /// [`Backend::matmul`] of one input through each of `ws` (q, k and v; gate and up): a
    /// backend can prepare the input once and run the products as one batch of work.
    fn matmul_each(&self, ws: &[&Self::Weight], x: &Self::Tensor) -> Vec<Self::Tensor> {
        ws.iter().map(|w| self.matmul(w, x)).collect()
    }
    /// Root-mean-square norm of each row, scaled by `weight` (1 × cols).
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Tensor, eps: f32) -> Self::Tensor;
    /// Rotates each head of each row by its position (`pos0 + row`), in place.
    fn rope(&self, x: &mut Self::Tensor, n_heads: usize, head_dim: usize, pos0: usize, rope: &Rope);
    /// act(gate) ⊙ up.
    fn glu(&self, act: Activation, gate: &Self::Tensor, up: &Self::Tensor) -> Self::Tensor;
    /// x ·= factor.
    fn scale(&self, x: &mut Self::Tensor, factor: f32);
    /// The same values read as `rows × cols` (row-major; the element count must match), e.g.
    /// tokens × (heads·head_dim) as (tokens·heads) × head_dim for a norm per head.
    fn reshape(&self, t: Self::Tensor, rows: usize, cols: usize) -> Self::Tensor;
    /// x += y.
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor);
    /// Adds the 1 × cols `row` to every row of `x`.
    fn add_row(&self, x: &mut Self::Tensor, row: &Self::Tensor);

    /// Product-key memory lookup. `q` is tokens × (heads·k_dim); `keys` holds, for head h and
    /// half s, the `n_keys` sub-keys at rows `(2h + s)·n_keys ..` (k_dim/2 columns). Returns for
    /// every token and head the top-k slots (best first) and their softmax weights, both
    /// tokens × (heads·top_k).
    fn product_key_topk(
        &self,
        q: &Self::Tensor,
        keys: &Self::Tensor,
        shape: ProductKeyShape,
    ) -> (Self::Slots, Self::Tensor);
    /// Slot ids back on the host, row-major.
    fn download_slots(&self, slots: &Self::Slots) -> Vec<u32>;
    /// Slot ids from the host, `rows` × `cols` row-major: reads a read gate routed.
    fn upload_slots(&self, ids: Vec<u32>, rows: usize, cols: usize) -> Self::Slots;
    /// Row t of the result is Σ_j weights[t, j] · values[slots[t, j]].
    fn gather_values(
        &self,
        values: &Self::Tensor,
        slots: &Self::Slots,
        weights: &Self::Tensor,
    ) -> Self::Tensor;

    /// Runs later products through `w` (`on`), or no longer (`!on`), as a blocked f32 GEMM
    /// that decodes the weight a panel at a time inside each task. Learning multiplies the
    /// same layers by a few hundred rows at a time, dozens of times per fact, where the
    /// GEMM beats quantized dot products; no f32 copy of the weight is kept. Backends
    /// without such a path ignore it.
    fn use_gemm(&self, w: &Self::Weight, on: bool) {
        let _ = (w, on);
    }

    // Backward ops: gradients with respect to activations only (weights stay frozen).

    /// dx = dy · W, the transpose of [`Backend::matmul`]: dy is n × rows, dx is n × cols.
    fn matmul_backward(&self, w: &Self::Weight, dy: &Self::Tensor) -> Self::Tensor;
    /// `Σᵢ dysᵢ · wsᵢ`, the input gradient of [`Backend::matmul_each`] (at least one weight;
    /// every weight has the same number of columns).
    fn matmul_backward_sum(&self, ws: &[&Self::Weight], dys: &[&Self::Tensor]) -> Self::Tensor {
        matmul_backward_one_by_one(self, ws, dys)
    }
    /// Gradient of [`Backend::rms_norm`] with respect to its input `x`.
    fn rms_norm_backward(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
        dy: &Self::Tensor,
    ) -> Self::Tensor;
    /// Gradient of [`Backend::rope`]: the inverse rotation, in place.
    fn rope_backward(
        &self,
        dy: &mut Self::Tensor,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        rope: &Rope,
    );
    /// Gradients (d gate, d up) of [`Backend::glu`].
    fn glu_backward(
        &self,
        act: Activation,
        gate: &Self::Tensor,
        up: &Self::Tensor,
        dy: &Self::Tensor,
    ) -> (Self::Tensor, Self::Tensor);
    /// Gradients (dq, dk, dv) of causal attention over one whole sequence (`q`, `k`, `v` after
    /// RoPE, position 0 first), given the gradient of its output.
    fn attention_backward(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        dout: &Self::Tensor,
        shape: AttentionShape,
    ) -> (Self::Tensor, Self::Tensor, Self::Tensor);
    /// Softmax cross-entropy of each logits row against `targets` (one per row): the losses
    /// (nats) and d loss_sum / d logits.
    fn cross_entropy(&self, logits: &Self::Tensor, targets: &[u32]) -> (Vec<f32>, Self::Tensor);
    /// Gradients of the rows `rows` of the value table: row r gets
    /// `Σ over (t, j) with slots[t, j] = rows[r] of weights[t, j] · dy[t]` (|rows| × dim).
    fn value_grads(
        &self,
        slots: &Self::Slots,
        weights: &Self::Tensor,
        dy: &Self::Tensor,
        rows: &[u32],
    ) -> Self::Tensor;
    /// Copies the rows `rows` of `t` into a new |rows| × cols tensor.
    fn read_rows(&self, t: &Self::Tensor, rows: &[u32]) -> Self::Tensor;
    /// Overwrites the rows `rows` of `t` with the rows of `src`.
    fn write_rows(&self, t: &mut Self::Tensor, rows: &[u32], src: &Self::Tensor);
    /// `values[rows[r]] -= lr · grads[r]`: the sparse SGD step.
    fn sgd_rows(&self, values: &mut Self::Tensor, rows: &[u32], grads: &Self::Tensor, lr: f32);

    /// An empty cache for `n_layers` layers of `kv_dim` features each, up to `capacity` positions.
    fn new_kv_cache(&self, n_layers: usize, kv_dim: usize, capacity: usize) -> Self::KvCache;
    /// Positions already held by the cache.
    fn kv_len(&self, cache: &Self::KvCache) -> usize;
    /// Drops cached positions from `len` on (to rewind a conversation).
    fn kv_truncate(&self, cache: &mut Self::KvCache, len: usize);
    /// Appends `k`, `v` for `layer` at the end of the cache and returns causal attention of
    /// `q` over every cached position up to and including each query's own. `k` and `v` may
    /// hold more rows than `q` (earlier positions appended at once): the queries are the last
    /// `q.rows` positions.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        cache: &mut Self::KvCache,
        layer: usize,
        shape: AttentionShape,
    ) -> Self::Tensor;
}

/// [`Backend::matmul_backward_sum`] as single transposed matmuls added up: the default, and
/// what a backend falls back to where it has no batched path for the weights given.
pub fn matmul_backward_one_by_one<B: Backend + ?Sized>(
    b: &B,
    ws: &[&B::Weight],
    dys: &[&B::Tensor],
) -> B::Tensor {
    check_backward_sum_args(ws.len(), dys.len());
    let mut sum = b.matmul_backward(ws[0], dys[0]);
    for (w, dy) in ws.iter().zip(dys).skip(1) {
        b.add_assign(&mut sum, &b.matmul_backward(w, dy));
    }
    sum
}

/// Panics unless [`Backend::matmul_backward_sum`] got one gradient per weight, at least one.
pub fn check_backward_sum_args(weights: usize, gradients: usize) {
    assert!(
        weights > 0 && weights == gradients,
        "matmul_backward_sum: one gradient per weight, at least one"
    );
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Says that unit test `test` did not run and why, on a line the test harness does not
/// capture (written to stderr directly), which `scripts/run-test-binaries` counts as skipped.
#[cfg(test)]
pub(crate) fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {why}");
}

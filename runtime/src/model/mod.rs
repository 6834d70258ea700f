//! The transformer graph, written once against [`Backend`].

mod config;
mod fingerprint;
mod train;

pub use config::{ModelConfig, SUPPORTED_ARCHITECTURES};
pub use fingerprint::fingerprint;
pub use train::{PreparedSequence, SequenceGradient};

use crate::backend::{AttentionShape, Backend, WeightSource};
use crate::error::{Error, Result};
use crate::gguf::{Gguf, TensorInfo};
use crate::memory::{MemoryBlock, OpenFacts};
use crate::quant::{GgmlType, dequantize_row};

struct Layer<B: Backend> {
    attn_norm: B::Tensor,
    wq: B::Weight,
    wk: B::Weight,
    wv: B::Weight,
    wo: B::Weight,
    ffn_norm: B::Tensor,
    w_gate: B::Weight,
    w_up: B::Weight,
    w_down: B::Weight,
    /// Per-head norms of q and k (with [`ModelConfig::qk_norm`]).
    q_norm: Option<B::Tensor>,
    k_norm: Option<B::Tensor>,
    /// Norms of the attention and FFN outputs (with [`ModelConfig::post_norms`]).
    post_attn_norm: Option<B::Tensor>,
    post_ffn_norm: Option<B::Tensor>,
    /// Biases of q, k and v (with [`ModelConfig::qkv_bias`]).
    qkv_bias: Option<[B::Tensor; 3]>,
}

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation).
    Last,
    /// Every position (scoring, perplexity).
    All,
}

/// What a sequence has run so far: its KV cache, and the learned facts it has named (what a
/// topic read gate lets it read).
pub struct Cache<B: Backend> {
    /// Keys and values of every position run.
    pub kv: B::KvCache,
    /// Facts a topic read gate opened, with where.
    pub open: OpenFacts,
}

impl<B: Backend> Cache<B> {
    /// Positions held.
    pub fn len(&self, backend: &B) -> usize {
        backend.kv_len(&self.kv)
    }

    /// Keeps the first `len` positions.
    pub fn truncate(&mut self, backend: &B, len: usize) {
        backend.kv_truncate(&mut self.kv, len);
        self.open.truncate(len);
    }
}

/// A transformer of one of the supported architectures whose weights stay in the mapped GGUF.
pub struct Model<B: Backend> {
    /// Hyper-parameters.
    pub config: ModelConfig,
    backend: B,
    token_embd: B::Weight,
    layers: Vec<Layer<B>>,
    output_norm: B::Tensor,
    output: Option<B::Weight>,
    memory: Vec<MemoryBlock<B>>,
}

fn tensor<'a>(gguf: &'a Gguf, name: &str) -> Result<&'a TensorInfo> {
    gguf.tensor(name)
        .ok_or_else(|| Error::Model(format!("tensor {name} is missing")))
}

fn weight_source(gguf: &Gguf, name: &str, rows: usize, cols: usize) -> Result<WeightSource> {
    let t = tensor(gguf, name)?;
    if t.dims.len() != 2 || t.dims[0] as usize != cols || t.dims[1] as usize != rows {
        return Err(Error::Model(format!(
            "tensor {name} has dims {:?}, expected [{cols}, {rows}]",
            t.dims
        )));
    }
    Ok(WeightSource {
        name: name.into(),
        dtype: t.dtype,
        rows,
        cols,
        bytes: gguf.tensor_view(t),
    })
}

/// Row ranges of a stacked matrix `name` (`parts` give each part's rows, in order), each a
/// weight of its own over the same mapped bytes.
fn split_weight_source(
    gguf: &Gguf,
    name: &str,
    parts: &[usize],
    cols: usize,
) -> Result<Vec<WeightSource>> {
    let whole = weight_source(gguf, name, parts.iter().sum(), cols)?;
    let row_bytes = whole.dtype.row_bytes(cols).ok_or_else(|| {
        Error::Model(format!("tensor {name}: rows of {cols} are not whole {} blocks", whole.dtype))
    })?;
    let mut row0 = 0;
    Ok(parts
        .iter()
        .map(|&rows| {
            let part = WeightSource {
                name: format!("{name}[{row0}..{}]", row0 + rows),
                rows,
                bytes: whole.bytes.slice(row0 * row_bytes, rows * row_bytes),
                ..whole.clone()
            };
            row0 += rows;
            part
        })
        .collect())
}

fn vector<B: Backend>(backend: &B, gguf: &Gguf, name: &str, len: usize) -> Result<B::Tensor> {
    let t = tensor(gguf, name)?;
    if t.n_elements() != len || t.dims[0] as usize != len {
        return Err(Error::Model(format!(
            "tensor {name} has dims {:?}, expected [{len}]",
            t.dims
        )));
    }
    let mut v = vec![0f32; len];
    if t.dtype.row_bytes(len) != Some(t.size) {
        return Err(Error::Model(format!(
            "tensor {name}: {} is not a valid vector type",
            t.dtype
        )));
    }
    dequantize_row(t.dtype, gguf.tensor_data(t), &mut v);
    Ok(backend.upload(&v, 1, len))
}

impl<B: Backend> Model<B> {
    /// Builds the graph over the GGUF's tensors (no weight bytes are copied on the CPU).
    pub fn load(gguf: &Gguf, backend: B) -> Result<Self> {
        let c = ModelConfig::from_gguf(gguf)?;
        let (d, kv, ff, qd) = (c.dim, c.kv_dim(), c.ffn_dim, c.n_heads * c.head_dim);
        let w = |name: String, rows, cols| -> Result<B::Weight> {
            backend.load_weight(&weight_source(gguf, &name, rows, cols)?)
        };
        // Grown as blocks load: a missing block's tensors end loading before any large size.
        let mut layers = Vec::new();
        for i in 0..c.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let hook = |on: bool, name: &str, len: usize| -> Result<Option<B::Tensor>> {
                on.then(|| vector(&backend, gguf, &p(name), len)).transpose()
            };
            let load = |parts: Vec<WeightSource>| -> Result<Vec<B::Weight>> {
                parts.iter().map(|s| backend.load_weight(s)).collect()
            };
            let [wq, wk, wv]: [B::Weight; 3] = if c.fused_qkv {
                load(split_weight_source(gguf, &p("attn_qkv"), &[qd, kv, kv], d)?)?
                    .try_into()
                    .unwrap_or_else(|_| unreachable!("three parts"))
            } else {
                [w(p("attn_q"), qd, d)?, w(p("attn_k"), kv, d)?, w(p("attn_v"), kv, d)?]
            };
            let [w_gate, w_up]: [B::Weight; 2] = if c.fused_gate_up {
                load(split_weight_source(gguf, &p("ffn_up"), &[ff, ff], d)?)?
                    .try_into()
                    .unwrap_or_else(|_| unreachable!("two parts"))
            } else {
                [w(p("ffn_gate"), ff, d)?, w(p("ffn_up"), ff, d)?]
            };
            let bias = |s: &str, len| vector(&backend, gguf, &format!("blk.{i}.{s}.bias"), len);
            let qkv_bias = if c.qkv_bias {
                Some([bias("attn_q", qd)?, bias("attn_k", kv)?, bias("attn_v", kv)?])
            } else {
                None
            };
            layers.push(Layer {
                wq,
                wk,
                wv,
                w_gate,
                w_up,
                qkv_bias,
                q_norm: hook(c.qk_norm, "attn_q_norm", c.head_dim)?,
                k_norm: hook(c.qk_norm, "attn_k_norm", c.head_dim)?,
                post_attn_norm: hook(c.post_norms, "post_attention_norm", d)?,
                post_ffn_norm: hook(c.post_norms, "post_ffw_norm", d)?,
                attn_norm: vector(&backend, gguf, &p("attn_norm"), d)?,
                wo: w(p("attn_output"), d, qd)?,
                ffn_norm: vector(&backend, gguf, &p("ffn_norm"), d)?,
                w_down: w(p("ffn_down"), d, ff)?,
            });
        }
        let token_embd = w("token_embd.weight".into(), c.vocab_size, d)?;
        let output = if c.tied_embeddings {
            None
        } else {
            Some(w("output.weight".into(), c.vocab_size, d)?)
        };
        let output_norm = vector(&backend, gguf, "output_norm.weight", d)?;
        Ok(Model {
            config: c,
            backend,
            token_embd,
            layers,
            output_norm,
            output,
            memory: Vec::new(),
        })
    }

    /// The backend running this model.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Puts memory layers beside their transformer blocks (replacing any there were).
    pub fn set_memory(&mut self, blocks: Vec<MemoryBlock<B>>) -> Result<()> {
        for m in &blocks {
            if m.layer >= self.config.n_layers {
                return Err(Error::InvalidArgument(format!(
                    "memory layer {} is out of range (the model has {} layers)",
                    m.layer, self.config.n_layers
                )));
            }
        }
        self.memory = blocks;
        Ok(())
    }

    /// The attached memory layers.
    pub fn memory(&self) -> &[MemoryBlock<B>] {
        &self.memory
    }

    /// The attached memory layers, for learning steps that change their values.
    pub fn memory_mut(&mut self) -> &mut [MemoryBlock<B>] {
        &mut self.memory
    }

    /// Takes the memory layers off the model (it is the base model again).
    pub fn take_memory(&mut self) -> Vec<MemoryBlock<B>> {
        std::mem::take(&mut self.memory)
    }

    /// An empty cache able to hold `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> Cache<B> {
        Cache {
            kv: self
                .backend
                .new_kv_cache(self.config.n_layers, self.config.kv_dim(), capacity),
            open: OpenFacts::default(),
        }
    }

    /// Runs `tokens` after whatever `cache` holds and returns logits (vocab-wide rows).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut Cache<B>,
        which: Logits,
    ) -> Result<Vec<f32>> {
        let logits = self.logits_on_device(tokens, cache, which)?;
        Ok(self.backend.download(&logits))
    }

    /// Like [`Model::forward`] with [`Logits::Last`], but returns only the most likely next
    /// token: what greedy decoding needs, read back as one word.
    pub fn forward_greedy(&self, tokens: &[u32], cache: &mut Cache<B>) -> Result<u32> {
        let logits = self.logits_on_device(tokens, cache, Logits::Last)?;
        Ok(self.backend.argmax_rows(&logits)[0])
    }

    fn logits_on_device(
        &self,
        tokens: &[u32],
        cache: &mut Cache<B>,
        which: Logits,
    ) -> Result<B::Tensor> {
        self.backend
            .run(|| self.logits_in_place(tokens, cache, which))
    }

    /// [`Model::logits_on_device`] inside [`Backend::run`].
    fn logits_in_place(
        &self,
        tokens: &[u32],
        cache: &mut Cache<B>,
        which: Logits,
    ) -> Result<B::Tensor> {
        let b = &self.backend;
        let c = &self.config;
        let mut x = self.embed(tokens)?;
        self.run_layers(&mut x, tokens, cache, c.n_layers, true, &mut |_, _| {});
        if which == Logits::Last && tokens.len() > 1 {
            x = b.slice_rows(&x, tokens.len() - 1, tokens.len());
        }
        let x = b.rms_norm(&x, &self.output_norm, c.norm_eps);
        let head = self.output.as_ref().unwrap_or(&self.token_embd);
        Ok(b.matmul(head, &x))
    }

    /// The normalized hidden states that feed the FFN of each block in `layers` (what a memory
    /// there reads). Runs only the blocks up to the last one asked for.
    pub fn ffn_inputs(
        &self,
        tokens: &[u32],
        cache: &mut Cache<B>,
        layers: &[usize],
    ) -> Result<Vec<B::Tensor>> {
        let last = match layers.iter().max() {
            Some(&l) if l < self.config.n_layers => l,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "layers {layers:?} must be non-empty and below {}",
                    self.config.n_layers
                )));
            }
        };
        let mut x = self.embed(tokens)?;
        let mut found: Vec<(usize, B::Tensor)> = Vec::new();
        self.run_layers(&mut x, tokens, cache, last + 1, true, &mut |i, h| {
            if layers.contains(&i) {
                found.push((i, self.backend.slice_rows(h, 0, self.backend.shape(h).0)));
            }
        });
        Ok(layers
            .iter()
            .map(|l| {
                let i = found.iter().position(|(i, _)| i == l).expect("layer ran");
                found.swap_remove(i).1
            })
            .collect())
    }

    /// The token embeddings of `tokens`, scaled as the architecture asks.
    fn embed(&self, tokens: &[u32]) -> Result<B::Tensor> {
        let mut x = self.backend.embed(&self.token_embd, tokens_checked(tokens)?)?;
        if let Some(s) = self.config.embedding_scale {
            self.backend.scale(&mut x, s);
        }
        Ok(x)
    }

    /// Layer `i`'s attention shape and RoPE.
    fn attention_of(&self, i: usize) -> (AttentionShape, &crate::backend::Rope) {
        let c = &self.config;
        let (rope, window) = c.layer_attention(i);
        let shape = AttentionShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            window,
        };
        (shape, rope)
    }

    /// RMSNorm of each head of `x` (tokens × heads·head_dim) with the per-head `weight`.
    fn head_norm(&self, x: B::Tensor, weight: &B::Tensor) -> B::Tensor {
        let b = &self.backend;
        let hd = self.config.head_dim;
        let (rows, cols) = b.shape(&x);
        let per_head = b.reshape(x, rows * cols / hd, hd);
        b.reshape(b.rms_norm(&per_head, weight, self.config.norm_eps), rows, cols)
    }

    /// q, k and v of one block from its normed input `h`, with their biases where the
    /// architecture has them (before any per-head norm and RoPE).
    fn project_qkv(&self, l: &Layer<B>, h: &B::Tensor) -> [B::Tensor; 3] {
        let b = &self.backend;
        let mut qkv: [B::Tensor; 3] = b
            .matmul_each(&[&l.wq, &l.wk, &l.wv], h)
            .try_into()
            .unwrap_or_else(|_| unreachable!("three weights, three products"));
        if let Some(bias) = &l.qkv_bias {
            for (t, bias) in qkv.iter_mut().zip(bias) {
                b.add_row(t, bias);
            }
        }
        qkv
    }

    /// q and k per-head normed when the architecture asks (before RoPE).
    fn project_qk(&self, l: &Layer<B>, q: B::Tensor, k: B::Tensor) -> (B::Tensor, B::Tensor) {
        match (&l.q_norm, &l.k_norm) {
            (Some(qn), Some(kn)) => (self.head_norm(q, qn), self.head_norm(k, kn)),
            _ => (q, k),
        }
    }

    /// `y`, or its RMSNorm with `norm` when the architecture norms block outputs.
    fn post_norm(&self, y: B::Tensor, norm: &Option<B::Tensor>) -> B::Tensor {
        match norm {
            Some(n) => self.backend.rms_norm(&y, n, self.config.norm_eps),
            None => y,
        }
    }

    /// Runs blocks `0..end` over `x`, the embedded `tokens` (with their memories when
    /// `with_memory`), calling
    /// `observe(i, h)` with each block's FFN input.
    fn run_layers(
        &self,
        x: &mut B::Tensor,
        tokens: &[u32],
        cache: &mut Cache<B>,
        end: usize,
        with_memory: bool,
        observe: &mut dyn FnMut(usize, &B::Tensor),
    ) {
        let b = &self.backend;
        let c = &self.config;
        let pos0 = b.kv_len(&cache.kv);
        for (i, l) in self.layers.iter().enumerate().take(end) {
            let (shape, rope) = self.attention_of(i);
            let h = b.rms_norm(x, &l.attn_norm, c.norm_eps);
            let [q, k, v] = self.project_qkv(l, &h);
            let (mut q, mut k) = self.project_qk(l, q, k);
            b.rope(&mut q, c.n_heads, c.head_dim, pos0, rope);
            b.rope(&mut k, c.n_kv_heads, c.head_dim, pos0, rope);
            let attn = b.attention(&q, &k, &v, &mut cache.kv, i, shape);
            b.add_assign(x, &self.post_norm(b.matmul(&l.wo, &attn), &l.post_attn_norm));
            let h = b.rms_norm(x, &l.ffn_norm, c.norm_eps);
            observe(i, &h);
            let ff = b.glu(c.activation, &b.matmul(&l.w_gate, &h), &b.matmul(&l.w_up, &h));
            b.add_assign(x, &self.post_norm(b.matmul(&l.w_down, &ff), &l.post_ffn_norm));
            // Beside the FFN: with all values zero this adds exact zeros, so the model is
            // bit-for-bit the base model.
            for m in self.memory.iter().filter(|m| with_memory && m.layer == i) {
                b.add_assign(x, &m.forward(b, &h, (tokens, pos0), &mut cache.open));
            }
        }
    }
}

fn tokens_checked(tokens: &[u32]) -> Result<&[u32]> {
    if tokens.is_empty() {
        return Err(Error::InvalidArgument(
            "forward needs at least one token".into(),
        ));
    }
    Ok(tokens)
}

/// Summary of one tensor type's share of the model, for `engram info`.
pub fn tensor_type_counts(gguf: &Gguf) -> Vec<(GgmlType, usize, usize)> {
    let mut out: Vec<(GgmlType, usize, usize)> = Vec::new();
    for t in gguf.tensors() {
        match out.iter_mut().find(|(d, _, _)| *d == t.dtype) {
            Some(e) => {
                e.1 += 1;
                e.2 += t.size;
            }
            None => out.push((t.dtype, 1, t.size)),
        }
    }
    out
}

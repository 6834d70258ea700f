//! Model hyper-parameters read from GGUF metadata.

use crate::backend::{Activation, Rope, RopeLayout};
use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// Architectures whose graph engram implements.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "gemma3", "qwen2", "qwen3", "phi3"];

/// Gemma 3's local layers' RoPE base (llama.cpp fixes it; the GGUF does not carry it).
const GEMMA3_LOCAL_ROPE_BASE: f32 = 10_000.0;
/// Gemma 3: every sixth layer attends globally, the others through the sliding window.
const GEMMA3_GLOBAL_EVERY: usize = 6;

/// The numbers that define a transformer of one of the supported architectures, and what
/// its graph does differently from llama's (the hooks the one graph reads).
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// `general.architecture`.
    pub architecture: String,
    /// `general.name`, if present.
    pub name: Option<String>,
    /// Hidden size d.
    pub dim: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// Feed-forward hidden size.
    pub ffn_dim: usize,
    /// Vocabulary size (rows of the embedding table).
    pub vocab_size: usize,
    /// Context length the model was trained for.
    pub context_length: usize,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// Rotary embedding parameters.
    pub rope: Rope,
    /// Whether the LM head reuses the embedding table.
    pub tied_embeddings: bool,
    /// The feed-forward gate's non-linearity.
    pub activation: Activation,
    /// Embeddings are multiplied by this before the first block (gemma: √dim).
    pub embedding_scale: Option<f32>,
    /// q and k get an RMSNorm per head before RoPE (gemma 3, qwen 3).
    pub qk_norm: bool,
    /// Attention and FFN outputs get their own RMSNorm before the residual add (gemma).
    pub post_norms: bool,
    /// Local layers attend only this many positions back, themselves included.
    pub sliding_window: Option<usize>,
    /// With a sliding window: layers `i` with `(i + 1) % global_every == 0` attend globally.
    pub global_every: usize,
    /// RoPE of the local (sliding-window) layers.
    pub local_rope: Rope,
    /// q, k and v projections add a bias (qwen 2).
    pub qkv_bias: bool,
    /// q, k and v are one stacked matrix `attn_qkv` (phi 3).
    pub fused_qkv: bool,
    /// The FFN gate and up projections are one stacked matrix `ffn_up`, gate first (phi 3).
    pub fused_gate_up: bool,
}

impl ModelConfig {
    /// Reads and validates the config; an unknown architecture is named in the error.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let arch = gguf.get_str("general.architecture")?.to_owned();
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(Error::Unsupported(format!(
                "architecture {arch:?} (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let usize_key = |k: &str| -> Result<usize> {
            let v = gguf.get_u64(&key(k))?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v < 1 << 24)
                .ok_or_else(|| Error::Model(format!("{} = {v} is out of range", key(k))))
        };
        let dim = usize_key("embedding_length")?;
        let n_layers = usize_key("block_count")?;
        // Every block has several tensors of its own: a count beyond the file's tensors is a
        // broken file, refused before anything is sized by it.
        if n_layers > gguf.tensors().len() {
            return Err(Error::Model(format!(
                "{} = {n_layers} but the file holds only {} tensors",
                key("block_count"),
                gguf.tensors().len()
            )));
        }
        let n_heads = usize_key("attention.head_count")?;
        let n_kv_heads = match gguf.get(&key("attention.head_count_kv")) {
            Some(_) => usize_key("attention.head_count_kv")?,
            None => n_heads,
        };
        let ffn_dim = usize_key("feed_forward_length")?;
        let context_length = usize_key("context_length")?;
        let norm_eps = gguf.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32;
        let head_dim = match gguf.get(&key("attention.key_length")) {
            Some(_) => usize_key("attention.key_length")?,
            None => dim / n_heads,
        };
        if n_heads % n_kv_heads != 0 {
            return Err(Error::Model(format!(
                "{n_heads} heads not divisible by {n_kv_heads} kv heads"
            )));
        }
        if head_dim % 2 != 0 {
            return Err(Error::Model(format!("head dimension {head_dim} is odd")));
        }
        let rope_dims = match gguf.get(&key("rope.dimension_count")) {
            Some(_) => usize_key("rope.dimension_count")?,
            None => head_dim,
        };
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(Error::Model(format!(
                "rope dimension count {rope_dims} invalid for head dim {head_dim}"
            )));
        }
        let rope_base = gguf
            .get(&key("rope.freq_base"))
            .and_then(|v| v.as_f64())
            .unwrap_or(10_000.0) as f32;
        let embd = gguf
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::Model("tensor token_embd.weight is missing".into()))?;
        if embd.dims.len() != 2 || embd.dims[0] as usize != dim {
            return Err(Error::Model(format!(
                "token_embd.weight has dims {:?}, expected [{dim}, vocab]",
                embd.dims
            )));
        }
        let vocab_size = embd.dims[1] as usize;
        if let Some(factor) = gguf
            .get(&key("rope.scaling.factor"))
            .and_then(|v| v.as_f64())
            .filter(|&f| f != 1.0)
        {
            return Err(Error::Unsupported(format!(
                "{} = {factor} (RoPE scaling)",
                key("rope.scaling.factor")
            )));
        }
        // Frequency factors change every position's rotation: running without them would
        // give wrong logits silently (Llama 3.1's rope_freqs, Phi-3 128k's LongRoPE).
        for name in [
            "rope_freqs.weight",
            "rope_factors_long.weight",
            "rope_factors_short.weight",
        ] {
            if gguf.tensor(name).is_some() {
                return Err(Error::Unsupported(format!(
                    "RoPE frequency factors (tensor {name})"
                )));
            }
        }
        let gemma = arch == "gemma3";
        let qk_norm = gemma || arch == "qwen3";
        // Every architecture but llama's GGUF layout pairs dimensions (i, i + d/2) (NeoX).
        let layout = if arch == "llama" {
            RopeLayout::Interleaved
        } else {
            RopeLayout::Halves
        };
        let rope = Rope {
            dims: rope_dims,
            base: rope_base,
            layout,
        };
        let sliding_window = match gguf.get(&key("attention.sliding_window")) {
            Some(_) if gemma => Some(usize_key("attention.sliding_window")?),
            _ => None,
        };
        Ok(ModelConfig {
            architecture: arch,
            dim,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab_size,
            context_length,
            norm_eps,
            rope,
            tied_embeddings: gguf.tensor("output.weight").is_none(),
            activation: if gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            embedding_scale: gemma.then(|| (dim as f32).sqrt()),
            qk_norm,
            post_norms: gemma,
            qkv_bias: gguf.tensor("blk.0.attn_q.bias").is_some(),
            fused_qkv: gguf.tensor("blk.0.attn_qkv.weight").is_some(),
            fused_gate_up: gguf.tensor("blk.0.ffn_gate.weight").is_none()
                && gguf.tensor("blk.0.ffn_up.weight").is_some(),
            sliding_window,
            global_every: GEMMA3_GLOBAL_EVERY,
            local_rope: Rope {
                base: if gemma {
                    GEMMA3_LOCAL_ROPE_BASE
                } else {
                    rope_base
                },
                ..rope
            },
            name: gguf
                .get("general.name")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
        })
    }

    /// Layer `i`'s RoPE and sliding window: local layers use the window and their own RoPE base.
    pub fn layer_attention(&self, i: usize) -> (&Rope, Option<usize>) {
        match self.sliding_window {
            Some(w) if !(i + 1).is_multiple_of(self.global_every) => (&self.local_rope, Some(w)),
            _ => (&self.rope, None),
        }
    }

    /// Width of the key/value projections.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

//! The memory layer's parameters in host memory and the background statistics kept with them.

use crate::gguf::F32Buffer;

/// Per-slot statistics of the background corpus.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackgroundStats {
    /// Accesses per slot over all background tokens, heads and top-k picks.
    pub count: Vec<f32>,
    /// Background batches that touched each slot at least once (document frequency).
    pub df: Vec<f32>,
    /// What the lookup read at a sample of background tokens (empty in stores made before
    /// it was recorded): learning keeps the memory's output there where it was.
    pub sample: BackgroundSample,
}

/// The reads of a sample of background tokens, tokens × (heads·top_k), token-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackgroundSample {
    /// Slot of each read.
    pub slots: Vec<u32>,
    /// Softmax weight of each read within its head.
    pub weights: Vec<f32>,
}

impl BackgroundSample {
    /// Sampled tokens, given `reads` (heads·top_k) reads per token.
    pub fn tokens(&self, reads: usize) -> usize {
        self.slots.len() / reads.max(1)
    }

    /// Whether no sample was recorded.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Slot ids are kept as f32 tensors (GGUF readers everywhere know f32), which is exact up to
/// 2^24: a memory with more slots (a dense value table of 38 GB and up) keeps no sample.
pub const MAX_SAMPLED_SLOTS: usize = 1 << 24;

/// How the background statistics were gathered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackgroundInfo {
    /// Batches (B in the TF-IDF formula).
    pub batches: u64,
    /// Tokens seen.
    pub tokens: u64,
    /// Tokens per batch.
    pub batch_tokens: u64,
}

/// The parameters of the memory beside one transformer block, in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryLayerParams {
    /// The transformer block.
    pub layer: usize,
    /// Query projection, (heads·k_dim) × dim, row-major.
    pub query: Vec<f32>,
    /// Query bias, heads·k_dim.
    pub query_bias: Vec<f32>,
    /// Sub-keys, (heads·2·n_keys) × (k_dim/2): head h, half s at rows (2h+s)·n_keys.
    pub keys: Vec<f32>,
    /// Gate projection W1 (dim × dim), when gated.
    pub gate_in: Option<Vec<f32>>,
    /// Output projection W2 (dim × dim), when gated.
    pub gate_out: Option<Vec<f32>>,
    /// Value rows, slots × dim (a store opened for writing maps them from its file).
    pub values: F32Buffer,
    /// Background usage of each slot.
    pub background: BackgroundStats,
}

impl MemoryLayerParams {
    /// A copy of everything but the value rows (left empty), which are the bulk of the size.
    pub fn clone_without_values(&self) -> Self {
        MemoryLayerParams {
            layer: self.layer,
            query: self.query.clone(),
            query_bias: self.query_bias.clone(),
            keys: self.keys.clone(),
            gate_in: self.gate_in.clone(),
            gate_out: self.gate_out.clone(),
            values: F32Buffer::default(),
            background: self.background.clone(),
        }
    }
}

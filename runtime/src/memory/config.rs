//! The shape of a memory layer, stored in the memory file and checked against the model.

use crate::error::{Error, Result};

/// Shape and placement of the product-key memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Transformer blocks that get a memory beside their feed-forward block (0-based).
    pub layers: Vec<usize>,
    /// Sub-keys per half; the memory has `n_keys²` slots.
    pub n_keys: usize,
    /// Query heads; each has its own projection and sub-keys and reads the shared values.
    pub heads: usize,
    /// Slots read per head and token.
    pub top_k: usize,
    /// Query width per head (split into two halves of `k_dim / 2`).
    pub k_dim: usize,
    /// out = W2 (y ⊙ silu(W1 x)) instead of out = y.
    pub gated: bool,
}

impl Default for MemoryConfig {
    /// The defaults for SmolLM2-135M: one memory in the upper half, 262,144 slots.
    fn default() -> Self {
        MemoryConfig {
            layers: vec![20],
            // 100 SimpleQA facts one after another (T 4, lr 60,000): 65,536 slots learned
            // 56 % and kept 56 % of 150 general answers, 262,144 slots 68 % and 91.3 %; in the
            // smaller memory later facts kept landing on rows earlier facts had changed
            // (62.7 % of the selections against 38.9 %). The values take 604 MB as f32.
            n_keys: 512,
            heads: 4,
            top_k: 32,
            k_dim: 256,
            gated: false,
        }
    }
}

/// Largest `n_keys`: slot ids (`n_keys²`) must fit in a u32.
pub const MAX_KEYS: usize = 1 << 16;

impl MemoryConfig {
    /// The block a memory goes beside by default in a model of `model_layers` blocks: two
    /// thirds of the way up (20 of SmolLM2-135M's 30, 12 of Gemma 3 270M's 18), where facts
    /// are read in the upper layers and enough blocks remain above to use what it adds.
    pub fn default_layers(model_layers: usize) -> Vec<usize> {
        vec![model_layers * 2 / 3]
    }

    /// Value slots: `n_keys²`.
    pub fn slots(&self) -> usize {
        self.n_keys * self.n_keys
    }

    /// Width of one half of a head's query.
    pub fn half_dim(&self) -> usize {
        self.k_dim / 2
    }

    /// Checks the config against a model of `model_layers` transformer blocks; every problem is
    /// named with the field (and CLI flag) that sets it.
    pub fn validate(&self, model_layers: usize) -> Result<()> {
        self.validate_shape()?;
        if let Some(l) = self.layers.iter().find(|&&l| l >= model_layers) {
            return Err(Error::InvalidArgument(format!(
                "memory config: layer {l} is out of range (the model has layers 0..={})",
                model_layers.saturating_sub(1)
            )));
        }
        Ok(())
    }

    /// Checks the config on its own (everything but the layer range).
    pub fn validate_shape(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidArgument(format!("memory config: {msg}")));
        if self.layers.is_empty() {
            return bad("at least one layer is needed".into());
        }
        for (i, &l) in self.layers.iter().enumerate() {
            if self.layers[..i].contains(&l) {
                return bad(format!("layer {l} is listed twice"));
            }
        }
        if self.n_keys < 2 || self.n_keys > MAX_KEYS {
            return bad(format!(
                "n_keys {} must be between 2 and {MAX_KEYS}",
                self.n_keys
            ));
        }
        if self.heads == 0 || self.heads > 64 {
            return bad(format!("heads {} must be between 1 and 64", self.heads));
        }
        if self.k_dim == 0 || !self.k_dim.is_multiple_of(2) {
            return bad(format!(
                "k_dim {} must be even and positive (the query is split into two halves)",
                self.k_dim
            ));
        }
        if self.k_dim > 4096 {
            return bad(format!("k_dim {} is larger than 4096", self.k_dim));
        }
        if self.top_k == 0 || self.top_k > self.n_keys {
            return bad(format!(
                "top_k {} must be between 1 and n_keys ({})",
                self.top_k, self.n_keys
            ));
        }
        Ok(())
    }
}

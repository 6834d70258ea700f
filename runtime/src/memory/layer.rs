//! The memory layer on a backend: parameters resident on the device, and its forward pass.

use super::config::MemoryConfig;
use super::params::MemoryLayerParams;
use super::read_gate::{OpenFacts, ReadGate};
use crate::backend::ProductKeyShape;
use crate::backend::{Activation, Backend, WeightSource};
use crate::error::{Error, Result};
use crate::gguf::TensorBytes;
use crate::quant::GgmlType;

/// The frozen addressing part of a memory layer: query projection and sub-keys.
pub struct SlotLookup<B: Backend> {
    /// Lookup shape.
    pub shape: ProductKeyShape,
    query: B::Weight,
    query_bias: B::Tensor,
    keys: B::Tensor,
}

/// One memory layer, its parameters resident on the backend.
pub struct MemoryBlock<B: Backend> {
    /// The transformer block it sits beside.
    pub layer: usize,
    /// How tokens find their slots.
    pub lookup: SlotLookup<B>,
    gate: Option<(B::Weight, B::Weight)>,
    /// Value rows, slots × dim: the only parameters learning changes.
    pub values: B::Tensor,
    /// Which reads of learned rows pass at inference (none: every read passes).
    pub read_gate: Option<ReadGate>,
}

/// Activations of the gated output kept for its backward pass.
pub struct GateTape<B: Backend> {
    /// W1 x (before silu).
    g: B::Tensor,
    /// The gathered values.
    y: B::Tensor,
}

/// What a lookup selected: slots and their softmax weights, tokens × (heads·top_k).
pub struct MemoryLookup<B: Backend> {
    /// Chosen slots.
    pub slots: B::Slots,
    /// Softmax weight of each chosen slot within its head.
    pub weights: B::Tensor,
}

fn f32_weight(name: String, data: &[f32], rows: usize, cols: usize) -> WeightSource {
    WeightSource {
        name,
        dtype: GgmlType::F32,
        rows,
        cols,
        bytes: TensorBytes::from_vec(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
    }
}

fn check_len(layer: usize, what: &str, len: usize, want: usize) -> Result<()> {
    if len == want {
        Ok(())
    } else {
        Err(Error::Memory(format!(
            "layer {layer}: {what} has {len} values, the config needs {want}"
        )))
    }
}

impl<B: Backend> SlotLookup<B> {
    /// Uploads the query projection and sub-keys of `params`.
    pub fn load(
        backend: &B,
        config: &MemoryConfig,
        dim: usize,
        params: &MemoryLayerParams,
    ) -> Result<Self> {
        let shape = ProductKeyShape {
            heads: config.heads,
            n_keys: config.n_keys,
            top_k: config.top_k,
            k_dim: config.k_dim,
        };
        let qc = shape.query_cols();
        let layer = params.layer;
        check_len(layer, "query", params.query.len(), qc * dim)?;
        check_len(layer, "query bias", params.query_bias.len(), qc)?;
        let key_len = shape.key_rows() * config.half_dim();
        check_len(layer, "keys", params.keys.len(), key_len)?;
        let name = format!("mem.{layer}.query");
        Ok(SlotLookup {
            shape,
            query: backend.load_weight(&f32_weight(name, &params.query, qc, dim))?,
            query_bias: backend.upload(&params.query_bias, 1, qc),
            keys: backend.upload(&params.keys, shape.key_rows(), config.half_dim()),
        })
    }

    /// The slots `h` (normalized FFN input, tokens × dim) reads, with their weights.
    pub fn lookup(&self, b: &B, h: &B::Tensor) -> MemoryLookup<B> {
        let mut q = b.matmul(&self.query, h);
        b.add_row(&mut q, &self.query_bias);
        let (slots, weights) = b.product_key_topk(&q, &self.keys, self.shape);
        MemoryLookup { slots, weights }
    }
}

impl<B: Backend> MemoryBlock<B> {
    /// Uploads one layer's parameters; `params.values` is moved, not copied, where it can be.
    pub fn load(
        backend: &B,
        config: &MemoryConfig,
        dim: usize,
        params: MemoryLayerParams,
    ) -> Result<Self> {
        let lookup = SlotLookup::load(backend, config, dim, &params)?;
        let layer = params.layer;
        check_len(layer, "values", params.values.len(), config.slots() * dim)?;
        let name = |p: &str| format!("mem.{layer}.{p}");
        let gate = match (&params.gate_in, &params.gate_out, config.gated) {
            (Some(w1), Some(w2), true) => {
                check_len(layer, "gate_in", w1.len(), dim * dim)?;
                check_len(layer, "gate_out", w2.len(), dim * dim)?;
                Some((
                    backend.load_weight(&f32_weight(name("gate_in"), w1, dim, dim))?,
                    backend.load_weight(&f32_weight(name("gate_out"), w2, dim, dim))?,
                ))
            }
            (None, None, false) => None,
            _ => {
                return Err(Error::Memory(format!(
                    "layer {layer}: gate tensors do not match the config (gated = {})",
                    config.gated
                )));
            }
        };
        Ok(MemoryBlock {
            layer,
            lookup,
            gate,
            values: backend.upload_vec(params.values, config.slots(), dim),
            read_gate: None,
        })
    }

    /// The memory's output for `h`, the rows of token `ids` at positions `pos0..` of a sequence
    /// that has named `open` so far: what is added to the residual stream beside the FFN.
    /// Reads the read gate closes are left out; learning uses [`Self::forward_from`] on the
    /// plain lookup, since a fact's own tokens pass its gate anyway.
    pub fn forward(
        &self,
        b: &B,
        h: &B::Tensor,
        (ids, pos0): (&[u32], usize),
        open: &mut OpenFacts,
    ) -> B::Tensor {
        let mut found = self.lookup.lookup(b, h);
        if let Some(gate) = self.read_gate.as_ref().filter(|g| !g.is_empty()) {
            // On the host on every backend: a few dot products per read of a keyed row.
            let slots = b.download_slots(&found.slots);
            let mut weights = b.download(&found.weights);
            let (tokens, reads) = b.shape(&found.weights);
            gate.apply_in_sequence(&b.host_view(h), &slots, &mut weights, ids, pos0, open);
            found.weights = b.upload_vec(weights, tokens, reads);
        }
        self.forward_from(b, &found, h).0
    }

    /// The output for an earlier lookup of `h`, and what the gate's backward pass needs.
    pub fn forward_from(
        &self,
        b: &B,
        found: &MemoryLookup<B>,
        h: &B::Tensor,
    ) -> (B::Tensor, Option<GateTape<B>>) {
        let y = b.gather_values(&self.values, &found.slots, &found.weights);
        match &self.gate {
            Some((w1, w2)) => {
                let g = b.matmul(w1, h);
                let out = b.matmul(w2, &b.glu(Activation::Silu, &g, &y));
                (out, Some(GateTape { g, y }))
            }
            None => (y, None),
        }
    }

    /// Gradient at y (the gathered values) from the gradient at the memory's output.
    pub fn backward_to_y(&self, b: &B, dout: &B::Tensor, tape: Option<&GateTape<B>>) -> B::Tensor {
        match (&self.gate, tape) {
            (Some((_, w2)), Some(t)) => {
                let dmul = b.matmul_backward(w2, dout);
                b.glu_backward(Activation::Silu, &t.g, &t.y, &dmul).1
            }
            _ => b.slice_rows(dout, 0, b.shape(dout).0),
        }
    }
}

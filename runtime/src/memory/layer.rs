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
    /// The sub-keys on the host too: a routing read gate scores a fact's rows with them.
    keys_host: Vec<f32>,
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
            keys_host: params.keys.clone(),
        })
    }

    /// The slots `h` (normalized FFN input, tokens × dim) reads, with their weights.
    pub fn lookup(&self, b: &B, h: &B::Tensor) -> MemoryLookup<B> {
        self.lookup_with_query(b, h).0
    }

    /// [`Self::lookup`] and the query it scored (tokens × heads·k_dim).
    pub fn lookup_with_query(&self, b: &B, h: &B::Tensor) -> (MemoryLookup<B>, B::Tensor) {
        let mut q = b.matmul(&self.query, h);
        b.add_row(&mut q, &self.query_bias);
        let (slots, weights) = b.product_key_topk(&q, &self.keys, self.shape);
        (MemoryLookup { slots, weights }, q)
    }

    /// Per head, the scores of every sub-key of both halves for the query `q` (heads·k_dim
    /// wide): `[head][half][key]`, flattened.
    fn half_scores(&self, q: &[f32]) -> Vec<f32> {
        let ProductKeyShape {
            heads,
            n_keys,
            k_dim,
            ..
        } = self.shape;
        let half = k_dim / 2;
        let mut out = Vec::with_capacity(heads * 2 * n_keys);
        for h in 0..heads {
            for s in 0..2 {
                let qh = &q[h * k_dim + s * half..][..half];
                let keys = &self.keys_host[(2 * h + s) * n_keys * half..][..n_keys * half];
                out.extend(
                    keys.chunks_exact(half)
                        .map(|k| k.iter().zip(qh).map(|(a, b)| a * b).sum::<f32>()),
                );
            }
        }
        out
    }

    /// What a token whose query is `q` reads of `rows` when they are read as a memory of
    /// their own: per head, the softmax of their product-key scores; summed over heads (the
    /// heads share the value rows). Weights sum to the head count, as the lookup's do.
    pub fn route_weights(&self, q: &[f32], rows: &[u32], out: &mut Vec<(u32, f32)>) {
        let ProductKeyShape { heads, n_keys, .. } = self.shape;
        let scores = self.half_scores(q);
        let start = out.len();
        out.extend(rows.iter().map(|&r| (r, 0.0)));
        let mut head = vec![0f32; rows.len()];
        for h in 0..heads {
            let (a, b) = (&scores[2 * h * n_keys..], &scores[(2 * h + 1) * n_keys..]);
            for (w, &r) in head.iter_mut().zip(rows) {
                let (i, j) = (r as usize / n_keys, r as usize % n_keys);
                *w = a[i] + b[j];
            }
            crate::backend::product_keys::softmax(&mut head);
            for (o, w) in out[start..].iter_mut().zip(&head) {
                o.1 += w;
            }
        }
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
            values: backend.upload_values(params.values, config.slots(), dim),
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
        if let Some(gate) = self.read_gate.as_ref().filter(|g| g.routes() && !g.is_empty()) {
            let (found, q) = self.lookup.lookup_with_query(b, h);
            let found = self.route(b, gate, found, &q, (ids, pos0), open);
            return self.forward_from(b, &found, h).0;
        }
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

    /// The lookup `found` (with its query `q`) of the tokens `ids` at positions `pos0..` as
    /// a routing gate reads it: the lookup's reads of learned rows closed, and each token
    /// reading the rows of every fact the sequence has named by then, appended after its
    /// own reads (tokens with fewer are padded with weight 0).
    pub fn route(
        &self,
        b: &B,
        gate: &ReadGate,
        found: MemoryLookup<B>,
        q: &B::Tensor,
        (ids, pos0): (&[u32], usize),
        open: &mut OpenFacts,
    ) -> MemoryLookup<B> {
        let slots = b.download_slots(&found.slots);
        let mut weights = b.download(&found.weights);
        let (tokens, reads) = b.shape(&found.weights);
        let facts = gate.route_in_sequence(&slots, &mut weights, ids, pos0, open);
        if facts.iter().all(|f| f.is_empty()) {
            return MemoryLookup {
                slots: found.slots,
                weights: b.upload_vec(weights, tokens, reads),
            };
        }
        let q = b.host_view(q);
        let qc = self.lookup.shape.query_cols();
        let mut extra: Vec<Vec<(u32, f32)>> = Vec::with_capacity(tokens);
        for (t, open_here) in facts.iter().enumerate() {
            let mut reads_here = Vec::new();
            for &f in open_here {
                let rows = gate.fact_rows(f);
                if !rows.is_empty() {
                    self.lookup
                        .route_weights(&q[t * qc..(t + 1) * qc], rows, &mut reads_here);
                }
            }
            extra.push(reads_here);
        }
        let width = reads + extra.iter().map(Vec::len).max().unwrap_or(0);
        let mut all_slots = Vec::with_capacity(tokens * width);
        let mut all_weights = Vec::with_capacity(tokens * width);
        for (t, more) in extra.iter().enumerate() {
            all_slots.extend_from_slice(&slots[t * reads..(t + 1) * reads]);
            all_weights.extend_from_slice(&weights[t * reads..(t + 1) * reads]);
            all_slots.extend(more.iter().map(|&(r, _)| r));
            all_weights.extend(more.iter().map(|&(_, w)| w));
            let pad = width - reads - more.len();
            all_slots.extend(std::iter::repeat_n(0, pad));
            all_weights.extend(std::iter::repeat_n(0.0, pad));
        }
        MemoryLookup {
            slots: b.upload_slots(all_slots, tokens, width),
            weights: b.upload_vec(all_weights, tokens, width),
        }
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

//! Backward from the loss to the memory's value rows, through the frozen blocks above it.
//!
//! Everything below the memory layer, the lookup itself (query, keys) and the FFN beside it
//! do not depend on the values, so a sequence is run up to the memory once
//! ([`Model::prepare`]); each learning step then only runs the blocks above it forward with a
//! tape and backward ([`Model::value_gradients`]).
//!
//! Within one fact only its selected rows change, so every position before the first one
//! that reads a selected row computes the same thing at every step; [`Model::freeze_prefixes`]
//! runs that prefix above the memory once and the steps then run only what follows it (the
//! chat template's system prompt is half of a chat phrasing's tokens).

use super::{Model, ModelConfig};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::memory::MemoryLookup;

/// A sequence run up to (and including) the memory layer, ready for learning steps.
pub struct PreparedSequence<B: Backend> {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Positions whose next token is scored: position p predicts `tokens[p + 1]`.
    pub loss_positions: std::ops::Range<usize>,
    /// Residual stream after the memory block, minus the memory's own output.
    base: B::Tensor,
    /// The normalized FFN input of the memory block (what the memory and its gate read).
    h: B::Tensor,
    /// What the memory read at every position (fixed: it depends only on frozen parts).
    pub lookup: MemoryLookup<B>,
    /// The leading positions that no changing row reaches, run above the memory once.
    frozen: Option<FrozenPrefix<B>>,
}

impl<B: Backend> PreparedSequence<B> {
    /// The memory's input at every position (tokens × dim).
    pub fn memory_input(&self) -> &B::Tensor {
        &self.h
    }
}

/// Leading positions of a sequence whose activations above the memory do not change while
/// only `rows` change: none of them reads one of those rows, and attention is causal.
struct FrozenPrefix<B: Backend> {
    /// Positions `0..len` are frozen.
    len: usize,
    /// The rows whose change keeps them frozen (sorted).
    rows: Vec<u32>,
    /// q, k (after RoPE) and v of the frozen positions in each block above the memory:
    /// the later positions attend to them.
    qkv: Vec<Qkv<B>>,
}

/// q, k (after RoPE) and v of some positions in one block.
type Qkv<B> = (
    <B as Backend>::Tensor,
    <B as Backend>::Tensor,
    <B as Backend>::Tensor,
);

/// Where one sequence sits in a batch run through the blocks above the memory: batch rows
/// `at..at + len` are its positions `start..start + len` (the positions before `start` are
/// frozen). Sequences share a batch so each matmul runs once over all their rows.
#[derive(Clone, Copy)]
struct Span {
    at: usize,
    start: usize,
    len: usize,
}

/// Activations of one block over a batch, kept for its backward pass. `x_in`, `x_mid`,
/// `gate` and `up` hold the batch's rows; `qkv` each sequence's q, k and v over all its
/// positions (attention of the later positions reads the earlier ones).
struct Tape<B: Backend> {
    x_in: B::Tensor,
    qkv: Vec<Qkv<B>>,
    /// Per span, the offset from which the block's output was kept (see
    /// [`Model::block_forward_taped`]); `x_mid`, `gate` and `up` then hold only those rows.
    kept_from: Option<Vec<usize>>,
    x_mid: B::Tensor,
    gate: B::Tensor,
    up: B::Tensor,
    /// q and k of the batch before their per-head norms (with [`ModelConfig::qk_norm`]).
    qk_raw: Option<(B::Tensor, B::Tensor)>,
    /// The attention and FFN outputs before their post-norms (with `post_norms`).
    attn_out: Option<B::Tensor>,
    ffn_out: Option<B::Tensor>,
}

/// Loss and gradient of a batch of sequences.
pub struct SequenceGradient<B: Backend> {
    /// Summed next-token cross-entropy over the loss positions (nats).
    pub loss: f64,
    /// Scored positions.
    pub count: usize,
    /// Gradient of the summed loss with respect to the requested value rows (rows × dim).
    pub grads: B::Tensor,
    /// Host time spent recording the forward pass above the memory and the LM head.
    pub forward_time: std::time::Duration,
    /// Host time spent on the backward pass (zero when no rows were asked for).
    pub backward_time: std::time::Duration,
}

impl<B: Backend> Model<B> {
    fn learning_block(&self) -> Result<usize> {
        match self.memory.as_slice() {
            [m] => Ok(m.layer),
            [] => Err(Error::InvalidArgument(
                "learning needs a memory layer (attach a memory store)".into(),
            )),
            _ => Err(Error::Unsupported(
                "learning into more than one memory layer".into(),
            )),
        }
    }

    /// Runs the products of the blocks above the memory, which every learning step runs
    /// forward and backward over a batch of phrasings, through the blocked GEMM (`on`,
    /// [`Backend::use_gemm`]) or back through the quantized dot products.
    pub fn gemm_above_memory(&self, on: bool) -> Result<()> {
        let layer = self.learning_block()?;
        for l in &self.layers[layer + 1..] {
            for w in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down] {
                self.backend.use_gemm(w, on);
            }
        }
        Ok(())
    }

    /// Runs `tokens` through the blocks up to the memory layer and records what the memory
    /// reads. `loss_positions` must lie within `0..tokens.len() - 1`.
    pub fn prepare(
        &self,
        tokens: &[u32],
        loss_positions: std::ops::Range<usize>,
    ) -> Result<PreparedSequence<B>> {
        let mut one = self.prepare_many(&[(tokens, loss_positions)])?;
        Ok(one.pop().expect("one sequence in, one out"))
    }

    /// [`Self::prepare`] for several sequences. A sequence that begins like the one before it
    /// (two chat phrasings share the system prompt and the question) runs only from where
    /// they differ, after the earlier one's cached keys and values.
    pub fn prepare_many(
        &self,
        seqs: &[(&[u32], std::ops::Range<usize>)],
    ) -> Result<Vec<PreparedSequence<B>>> {
        self.backend.run(|| self.prepare_many_in_place(seqs))
    }

    /// [`Self::prepare_many`] inside [`Backend::run`].
    fn prepare_many_in_place(
        &self,
        seqs: &[(&[u32], std::ops::Range<usize>)],
    ) -> Result<Vec<PreparedSequence<B>>> {
        let layer = self.learning_block()?;
        for (tokens, loss_positions) in seqs {
            if tokens.len() < 2
                || loss_positions.is_empty()
                || loss_positions.end > tokens.len() - 1
            {
                return Err(Error::InvalidArgument(format!(
                    "loss positions {loss_positions:?} must be a non-empty range inside a \
                     sequence of {} tokens (the last position has no next token)",
                    tokens.len()
                )));
            }
        }
        let b = &self.backend;
        let memory = &self.memory[0];
        let longest = seqs.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
        // Only the blocks up to the memory run: a cache of just those keeps its length (the
        // shortest layer's) meaningful.
        let mut cache = super::Cache {
            kv: b.new_kv_cache(layer + 1, self.config.kv_dim(), longest),
            open: Default::default(),
        };
        let mut out: Vec<PreparedSequence<B>> = Vec::with_capacity(seqs.len());
        for (tokens, loss_positions) in seqs {
            // At least one position runs, so the memory's input is seen for it.
            let shared = out.last().map_or(0, |p| {
                let common = p.tokens.iter().zip(*tokens).take_while(|(a, b)| a == b);
                common.count().min(tokens.len() - 1)
            });
            cache.truncate(b, shared);
            let mut x = self.embed(&tokens[shared..])?;
            let mut h = None;
            self.run_layers(&mut x, &tokens[shared..], &mut cache, layer + 1, false, &mut |i, hi| {
                if i == layer {
                    h = Some(b.slice_rows(hi, 0, b.shape(hi).0));
                }
            });
            let h = h.expect("the memory block ran");
            let (base, h) = match out.last() {
                Some(p) if shared > 0 => (
                    b.concat_rows(&[&b.slice_rows(&p.base, 0, shared), &x]),
                    b.concat_rows(&[&b.slice_rows(&p.h, 0, shared), &h]),
                ),
                _ => (x, h),
            };
            out.push(PreparedSequence {
                tokens: tokens.to_vec(),
                loss_positions: loss_positions.clone(),
                lookup: memory.lookup.lookup(b, &h),
                base,
                h,
                frozen: None,
            });
        }
        Ok(out)
    }

    /// Lets later [`Self::value_gradients`] calls on `seqs` skip each sequence's leading
    /// positions that read none of `rows` (sorted): they are run above the memory once, now.
    /// Valid while no value row outside `rows` changes; asking for the gradient of another
    /// row is refused. Returns how many positions of all sequences were frozen.
    pub fn freeze_prefixes(&self, seqs: &mut [PreparedSequence<B>], rows: &[u32]) -> Result<usize> {
        let layer = self.learning_block()?;
        if rows.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidArgument(
                "rows to freeze around must be sorted and distinct".into(),
            ));
        }
        let b = &self.backend;
        let memory = &self.memory[0];
        let mut frozen = 0;
        for seq in seqs.iter_mut() {
            seq.frozen = None;
            let slots = b.download_slots(&seq.lookup.slots);
            // A routing gate's reads are wider than the lookup's.
            let reads = b.shape(&seq.lookup.weights).1;
            let first_read = slots
                .chunks_exact(reads)
                .position(|r| r.iter().any(|s| rows.binary_search(s).is_ok()))
                .unwrap_or(seq.tokens.len());
            // Scored positions stay outside the prefix, so the loss is computed as before.
            let len = first_read.min(seq.loss_positions.start);
            if len == 0 {
                continue;
            }
            let (mem_out, _) = memory.forward_from(b, &seq.lookup, &seq.h);
            let mut x = b.slice_rows(&seq.base, 0, len);
            b.add_assign(&mut x, &b.slice_rows(&mem_out, 0, len));
            let whole = [Span {
                at: 0,
                start: 0,
                len,
            }];
            let qkv = (layer + 1..self.layers.len())
                .map(|i| {
                    let t = self.block_forward_taped(i, &mut x, &whole, &[None], None);
                    t.qkv.into_iter().next().expect("one span, one q/k/v")
                })
                .collect();
            seq.frozen = Some(FrozenPrefix {
                len,
                rows: rows.to_vec(),
                qkv,
            });
            frozen += len;
        }
        Ok(frozen)
    }

    /// Summed loss of prepared sequences under the current values, and its gradient with
    /// respect to the value rows `rows` (with no rows, only the loss is computed).
    ///
    /// The LM head, the most expensive matrix, runs once for the scored positions of all
    /// sequences together.
    pub fn value_gradients(
        &self,
        seqs: &[PreparedSequence<B>],
        rows: &[u32],
    ) -> Result<SequenceGradient<B>> {
        self.value_gradients_unless_below(seqs, rows, None)
    }

    /// [`Self::value_gradients`], but when the mean loss per target is at or below
    /// `stop_loss` the backward pass is skipped and the gradient is all zeros: a caller
    /// that stops there would throw it away.
    pub fn value_gradients_unless_below(
        &self,
        seqs: &[PreparedSequence<B>],
        rows: &[u32],
        stop_loss: Option<f64>,
    ) -> Result<SequenceGradient<B>> {
        self.backend
            .run(|| self.value_gradients_in_place(seqs, rows, stop_loss))
    }

    /// [`Self::value_gradients_unless_below`] inside [`Backend::run`].
    fn value_gradients_in_place(
        &self,
        seqs: &[PreparedSequence<B>],
        rows: &[u32],
        stop_loss: Option<f64>,
    ) -> Result<SequenceGradient<B>> {
        let layer = self.learning_block()?;
        let b = &self.backend;
        let c = &self.config;
        let memory = &self.memory[0];
        if seqs.is_empty() {
            return Err(Error::InvalidArgument("no sequences to learn from".into()));
        }
        // Forward above the memory over all sequences' unfrozen positions as one batch.
        let started = std::time::Instant::now();
        let mut spans = Vec::with_capacity(seqs.len());
        let mut parts = Vec::with_capacity(seqs.len());
        let mut gate_tapes = Vec::with_capacity(seqs.len());
        let mut at = 0;
        for seq in seqs {
            let unfrozen = seq
                .frozen
                .as_ref()
                .and_then(|f| rows.iter().find(|r| f.rows.binary_search(r).is_err()));
            if let Some(r) = unfrozen {
                return Err(Error::InvalidArgument(format!(
                    "value row {r} was not among the rows the sequence was frozen for"
                )));
            }
            // Positions after the last scored one cannot change the loss (attention is
            // causal): the sequence's final token is never run above the memory.
            let n = seq.loss_positions.end;
            let start = seq.frozen.as_ref().map_or(0, |f| f.len);
            let mut x = b.slice_rows(&seq.base, start, n);
            let (mem_out, gate_tape) = memory.forward_from(b, &seq.lookup, &seq.h);
            b.add_assign(&mut x, &b.slice_rows(&mem_out, start, n));
            parts.push(x);
            gate_tapes.push(gate_tape);
            spans.push(Span {
                at,
                start,
                len: n - start,
            });
            at += n - start;
        }
        let mut x = concat(b, parts);
        // The top block's output matters only at the scored positions, which end each span:
        // it keeps just those rows, so its output projection and FFN skip the others.
        let scored_from: Vec<usize> = seqs
            .iter()
            .zip(&spans)
            .map(|(seq, s)| seq.loss_positions.start - s.start)
            .collect();
        let above = layer + 1..self.layers.len();
        let tapes: Vec<Tape<B>> = above
            .clone()
            .enumerate()
            .map(|(i, block)| {
                let prefixes: Vec<_> = seqs
                    .iter()
                    .map(|s| s.frozen.as_ref().map(|f| &f.qkv[i]))
                    .collect();
                let keep = (i + 1 == above.len()).then_some(&scored_from[..]);
                self.block_forward_taped(block, &mut x, &spans, &prefixes, keep)
            })
            .collect();
        let targets: Vec<u32> = seqs
            .iter()
            .flat_map(|seq| {
                let range = seq.loss_positions.clone();
                seq.tokens[range.start + 1..range.end + 1].iter().copied()
            })
            .collect();
        // With no block above the memory the batch still holds every unfrozen position.
        let xs = if above.is_empty() {
            keep_rows(b, &x, &spans, &scored_from)
        } else {
            x
        };
        let normed = b.rms_norm(&xs, &self.output_norm, c.norm_eps);
        let head = self.output.as_ref().unwrap_or(&self.token_embd);
        let logits = b.matmul(head, &normed);
        let (losses, dlogits) = b.cross_entropy(&logits, &targets);
        let loss: f64 = losses.iter().map(|&l| l as f64).sum();
        if !loss.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "the loss is not finite ({loss}); the memory values are damaged"
            )));
        }
        let mut grads = b.upload_vec(vec![0f32; rows.len() * c.dim], rows.len(), c.dim);
        let forward_time = started.elapsed();
        let reached = stop_loss.is_some_and(|s| loss / targets.len().max(1) as f64 <= s);
        if rows.is_empty() || reached {
            return Ok(SequenceGradient {
                loss,
                count: targets.len(),
                grads,
                forward_time,
                backward_time: Default::default(),
            });
        }
        let started = std::time::Instant::now();

        // Backward: the head once, then the blocks over the batch, then each sequence's memory.
        let dnormed = b.matmul_backward(head, &dlogits);
        let mut dx = b.rms_norm_backward(&xs, &self.output_norm, c.norm_eps, &dnormed);
        if above.is_empty() {
            dx = spread_rows(b, &dx, &spans, &scored_from);
        }
        for (block, tape) in above.zip(&tapes).rev() {
            self.block_backward(block, tape, &spans, &mut dx);
        }
        for ((seq, s), gate_tape) in seqs.iter().zip(&spans).zip(&gate_tapes) {
            let mine = b.slice_rows(&dx, s.at, s.at + s.len);
            // The frozen positions read no row asked for, and the positions after the last
            // scored one reach no loss: their gradient is zero.
            let n = seq.tokens.len();
            let mine = if s.start > 0 || s.start + s.len < n {
                b.pad_rows(&mine, s.start, n)
            } else {
                mine
            };
            let dy = memory.backward_to_y(b, &mine, gate_tape.as_ref());
            b.add_assign(
                &mut grads,
                &b.value_grads(&seq.lookup.slots, &seq.lookup.weights, &dy, rows),
            );
        }
        Ok(SequenceGradient {
            loss,
            count: targets.len(),
            grads,
            forward_time,
            backward_time: started.elapsed(),
        })
    }

    /// A copy of the learning memory's value rows `rows` (to restore them exactly).
    pub fn read_values(&self, rows: &[u32]) -> Result<B::Tensor> {
        self.learning_block()?;
        self.check_rows(rows)?;
        Ok(self.backend.read_rows(&self.memory[0].values, rows))
    }

    /// Overwrites the learning memory's value rows `rows` with `src`.
    pub fn write_values(&mut self, rows: &[u32], src: &B::Tensor) -> Result<()> {
        self.learning_block()?;
        self.check_rows(rows)?;
        self.backend
            .write_rows(&mut self.memory[0].values, rows, src);
        Ok(())
    }

    fn check_rows(&self, rows: &[u32]) -> Result<()> {
        let slots = self.memory[0].lookup.shape.n_keys * self.memory[0].lookup.shape.n_keys;
        match rows.iter().find(|&&r| r as usize >= slots) {
            Some(r) => Err(Error::InvalidArgument(format!(
                "value row {r} is outside the memory's {slots} slots"
            ))),
            None => Ok(()),
        }
    }

    /// Rows `ids` of memory layer `index` (by position in the attached memory), on the host.
    pub fn memory_rows(&self, index: usize, ids: &[u32]) -> Result<Vec<f32>> {
        let block = self.memory_block(index, ids)?;
        Ok(self
            .backend
            .download(&self.backend.read_rows(&block.values, ids)))
    }

    /// Overwrites rows `ids` of memory layer `index` with `values` (ids.len() × dim).
    pub fn set_memory_rows(&mut self, index: usize, ids: &[u32], values: Vec<f32>) -> Result<()> {
        self.memory_block(index, ids)?;
        let dim = self.config.dim;
        if values.len() != ids.len() * dim {
            return Err(Error::InvalidArgument(format!(
                "{} values for {} rows of {dim}",
                values.len(),
                ids.len()
            )));
        }
        let src = self.backend.upload_vec(values, ids.len(), dim);
        self.backend
            .write_rows(&mut self.memory[index].values, ids, &src);
        Ok(())
    }

    fn memory_block(&self, index: usize, ids: &[u32]) -> Result<&crate::memory::MemoryBlock<B>> {
        let block = self.memory.get(index).ok_or_else(|| {
            Error::InvalidArgument(format!("memory layer {index} is not attached"))
        })?;
        let slots = block.lookup.shape.n_keys * block.lookup.shape.n_keys;
        match ids.iter().find(|&&r| r as usize >= slots) {
            Some(r) => Err(Error::InvalidArgument(format!(
                "row {r} is outside the memory ({slots} slots)"
            ))),
            None => Ok(block),
        }
    }

    /// `values[rows[r]] −= lr · grads[r]` in the learning memory: the sparse SGD step.
    pub fn sgd_values(&mut self, rows: &[u32], grads: &B::Tensor, lr: f32) -> Result<()> {
        self.learning_block()?;
        self.check_rows(rows)?;
        self.backend
            .sgd_rows(&mut self.memory[0].values, rows, grads, lr);
        Ok(())
    }

    /// One block forward over a batch of sequences' positions (`spans`), recording its
    /// activations; `prefixes[i]` is q, k (after RoPE) and v of sequence i's positions
    /// before its span's `start`, `None` when that is 0. With `keep_from`, `x` comes out
    /// holding only rows `keep_from[i]..` of each span i, stacked (attention still reads
    /// every position).
    fn block_forward_taped(
        &self,
        block: usize,
        x: &mut B::Tensor,
        spans: &[Span],
        prefixes: &[Option<&Qkv<B>>],
        keep_from: Option<&[usize]>,
    ) -> Tape<B> {
        let b = &self.backend;
        let c = &self.config;
        let l = &self.layers[block];
        let (shape, rope) = self.attention_of(block);
        let x_in = b.slice_rows(x, 0, b.shape(x).0);
        let h = b.rms_norm(x, &l.attn_norm, c.norm_eps);
        let [q_all, k_all, v_all] = self.project_qkv(l, &h);
        let qk_raw = c.qk_norm.then(|| {
            let rows = b.shape(&q_all).0;
            (b.slice_rows(&q_all, 0, rows), b.slice_rows(&k_all, 0, rows))
        });
        let (q_all, k_all) = self.project_qk(l, q_all, k_all);
        let mut qkv = Vec::with_capacity(spans.len());
        let mut attn_parts = Vec::with_capacity(spans.len());
        for (s, prefix) in spans.iter().zip(prefixes) {
            let mut q = b.slice_rows(&q_all, s.at, s.at + s.len);
            let mut k = b.slice_rows(&k_all, s.at, s.at + s.len);
            let mut v = b.slice_rows(&v_all, s.at, s.at + s.len);
            b.rope(&mut q, c.n_heads, c.head_dim, s.start, rope);
            b.rope(&mut k, c.n_kv_heads, c.head_dim, s.start, rope);
            if let Some((_, pk, pv)) = prefix {
                k = b.concat_rows(&[pk, &k]);
                v = b.concat_rows(&[pv, &v]);
            }
            let total = s.start + s.len;
            let mut cache = b.new_kv_cache(1, c.kv_dim(), total);
            // Only the span's own queries: the frozen positions' outputs are already known.
            attn_parts.push(b.attention(&q, &k, &v, &mut cache, 0, shape));
            // The backward pass takes the whole sequence's queries.
            if let Some((pq, _, _)) = prefix {
                q = b.concat_rows(&[pq, &q]);
            }
            qkv.push((q, k, v));
        }
        let mut attn = concat(b, attn_parts);
        if let Some(from) = keep_from {
            attn = keep_rows(b, &attn, spans, from);
            *x = keep_rows(b, x, spans, from);
        }
        let (attn_out, attn_out_tape) = taped_output(b, c, b.matmul(&l.wo, &attn));
        b.add_assign(x, &self.post_norm(attn_out, &l.post_attn_norm));
        let x_mid = b.slice_rows(x, 0, b.shape(x).0);
        let h2 = b.rms_norm(x, &l.ffn_norm, c.norm_eps);
        let [gate, up]: [B::Tensor; 2] = b
            .matmul_each(&[&l.w_gate, &l.w_up], &h2)
            .try_into()
            .unwrap_or_else(|_| unreachable!("two weights, two products"));
        let ffn = b.matmul(&l.w_down, &b.glu(c.activation, &gate, &up));
        let (ffn_out, ffn_out_tape) = taped_output(b, c, ffn);
        b.add_assign(x, &self.post_norm(ffn_out, &l.post_ffn_norm));
        Tape {
            x_in,
            qkv,
            kept_from: keep_from.map(<[usize]>::to_vec),
            x_mid,
            gate,
            up,
            qk_raw,
            attn_out: attn_out_tape,
            ffn_out: ffn_out_tape,
        }
    }

    /// The gradient at `y`'s input of a block output `y` that went through
    /// [`Model::post_norm`] with `norm`, given the gradient `dy` after it.
    fn post_norm_backward(&self, y: &Option<B::Tensor>, norm: &Option<B::Tensor>, dy: &B::Tensor) -> Option<B::Tensor> {
        match (y, norm) {
            (Some(y), Some(n)) => Some(self.backend.rms_norm_backward(y, n, self.config.norm_eps, dy)),
            _ => None,
        }
    }

    /// The gradient at the input of [`Model::head_norm`] with `weight`, given `dy` after it.
    fn head_norm_backward(&self, x: &B::Tensor, weight: &B::Tensor, dy: B::Tensor) -> B::Tensor {
        let b = &self.backend;
        let hd = self.config.head_dim;
        let (rows, cols) = b.shape(x);
        let heads = rows * cols / hd;
        let x = b.reshape(b.slice_rows(x, 0, rows), heads, hd);
        let dy = b.reshape(dy, heads, hd);
        b.reshape(b.rms_norm_backward(&x, weight, self.config.norm_eps, &dy), rows, cols)
    }

    /// Turns `dx` (gradient at the block's output over the batch `spans`) into the gradient
    /// at its input.
    fn block_backward(&self, block: usize, t: &Tape<B>, spans: &[Span], dx: &mut B::Tensor) {
        let b = &self.backend;
        let c = &self.config;
        let l = &self.layers[block];
        let (shape, rope) = self.attention_of(block);
        // FFN: x_out = x_mid + post(W_down (act(W_g h2) ⊙ W_u h2)), h2 = norm(x_mid).
        let dffn = self.post_norm_backward(&t.ffn_out, &l.post_ffn_norm, dx);
        let dff = b.matmul_backward(&l.w_down, dffn.as_ref().unwrap_or(dx));
        let (dgate, dup) = b.glu_backward(c.activation, &t.gate, &t.up, &dff);
        let dh2 = b.matmul_backward_sum(&[&l.w_gate, &l.w_up], &[&dgate, &dup]);
        b.add_assign(
            dx,
            &b.rms_norm_backward(&t.x_mid, &l.ffn_norm, c.norm_eps, &dh2),
        );
        // Attention: x_mid = x_in + post(W_o attn(rope(W_q h1), rope(W_k h1), W_v h1)),
        // h1 = norm(x_in).
        let dattn_out = self.post_norm_backward(&t.attn_out, &l.post_attn_norm, dx);
        let mut dattn_all = b.matmul_backward(&l.wo, dattn_out.as_ref().unwrap_or(dx));
        if let Some(from) = &t.kept_from {
            // Back to every position of the spans: the dropped rows reached no output.
            dattn_all = spread_rows(b, &dattn_all, spans, from);
            *dx = spread_rows(b, dx, spans, from);
        }
        let mut dq_parts = Vec::with_capacity(spans.len());
        let mut dk_parts = Vec::with_capacity(spans.len());
        let mut dv_parts = Vec::with_capacity(spans.len());
        for (s, (q, k, v)) in spans.iter().zip(&t.qkv) {
            let total = s.start + s.len;
            let dattn = b.slice_rows(&dattn_all, s.at, s.at + s.len);
            let dattn = if s.start > 0 {
                b.pad_rows(&dattn, s.start, total)
            } else {
                dattn
            };
            let (mut dq, mut dk, mut dv) = b.attention_backward(q, k, v, &dattn, shape);
            if s.start > 0 {
                // The frozen positions' k and v are constants: only later positions carry on.
                dq = b.slice_rows(&dq, s.start, total);
                dk = b.slice_rows(&dk, s.start, total);
                dv = b.slice_rows(&dv, s.start, total);
            }
            b.rope_backward(&mut dq, c.n_heads, c.head_dim, s.start, rope);
            b.rope_backward(&mut dk, c.n_kv_heads, c.head_dim, s.start, rope);
            dq_parts.push(dq);
            dk_parts.push(dk);
            dv_parts.push(dv);
        }
        let (mut dq, mut dk, dv) = (
            concat(b, dq_parts),
            concat(b, dk_parts),
            concat(b, dv_parts),
        );
        if let (Some((q_raw, k_raw)), Some(qn), Some(kn)) = (&t.qk_raw, &l.q_norm, &l.k_norm) {
            dq = self.head_norm_backward(q_raw, qn, dq);
            dk = self.head_norm_backward(k_raw, kn, dk);
        }
        let dh1 = b.matmul_backward_sum(&[&l.wq, &l.wk, &l.wv], &[&dq, &dk, &dv]);
        b.add_assign(
            dx,
            &b.rms_norm_backward(&t.x_in, &l.attn_norm, c.norm_eps, &dh1),
        );
    }
}

/// A block output and, when the architecture norms block outputs, a copy kept for the
/// backward pass of that norm.
fn taped_output<B: Backend>(b: &B, c: &ModelConfig, y: B::Tensor) -> (B::Tensor, Option<B::Tensor>) {
    let copy = c.post_norms.then(|| b.slice_rows(&y, 0, b.shape(&y).0));
    (y, copy)
}

/// Rows `from[i]..` of each span i of the batch `t`, stacked.
fn keep_rows<B: Backend>(b: &B, t: &B::Tensor, spans: &[Span], from: &[usize]) -> B::Tensor {
    let parts = spans
        .iter()
        .zip(from)
        .map(|(s, &f)| b.slice_rows(t, s.at + f, s.at + s.len))
        .collect();
    concat(b, parts)
}

/// The inverse layout of [`keep_rows`]: `t` holds rows `from[i]..` of each span i, stacked;
/// the result holds every row of the spans, zero where `t` has none.
fn spread_rows<B: Backend>(b: &B, t: &B::Tensor, spans: &[Span], from: &[usize]) -> B::Tensor {
    let mut at = 0;
    let parts = spans
        .iter()
        .zip(from)
        .map(|(s, &f)| {
            let kept = s.len - f;
            let part = b.pad_rows(&b.slice_rows(t, at, at + kept), f, s.len);
            at += kept;
            part
        })
        .collect();
    concat(b, parts)
}

/// The rows of `parts` stacked in order (the one part itself when there is one).
fn concat<B: Backend>(b: &B, mut parts: Vec<B::Tensor>) -> B::Tensor {
    if parts.len() == 1 {
        return parts.pop().expect("one part");
    }
    b.concat_rows(&parts.iter().collect::<Vec<_>>())
}

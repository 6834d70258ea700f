//! The learner: select the rows a fact uses, step them, anchor them, commit.

use std::collections::HashSet;
use std::time::Instant;

use super::anchor::BackgroundAnchor;
use super::facts::Fact;
use super::optimizer::AdamState;
use super::optimizer::Optimizer;
use super::options::{
    ANCHOR_TUNED_READS_PER_ROW, FactReport, LearnOptions, LearnReport, ROUTED_RATE_ROWS,
};
use super::phrasings::{context_needles, personal_needles, prepare_phrasings};
use super::phrasings::{Example, examples, examples_with, topic_needles, update_examples};
use crate::backend::Backend;
use crate::delta::add_diff;
use crate::error::{Error, Result};
use crate::memory::{
    KeyKind, KeyedPhrasing, OpenFacts, ReadGate, SlotScoring, count_accesses, select_slots,
};
use crate::model::{Model, PreparedSequence};
use crate::tokenizer::Tokenizer;

/// Largest share of a memory's rows that template protection may take away from selection.
const MAX_TEMPLATE_SHARE: f64 = 0.25;

/// The value rows that `fact`'s phrasings read whatever the fact says: every row the
/// phrasings of a content-free fact of the same kind ("What is it?" / "It.", or the note
/// "It is so.") read, at any position.
pub fn template_rows<B: Backend>(
    model: &Model<B>,
    tok: &Tokenizer,
    fact: &Fact,
) -> Result<HashSet<u32>> {
    let neutral = match fact {
        Fact::QuestionAnswer { .. } => Fact::qa("What is it?", "It."),
        Fact::Note(_) => Fact::note("It is so."),
    };
    let mut rows = HashSet::new();
    for e in examples(tok, &neutral)? {
        let seq = model.prepare(&e.tokens, e.targets.clone())?;
        rows.extend(model.backend().download_slots(&seq.lookup.slots));
    }
    Ok(rows)
}

/// The rows learning `fact` must not change: its [`template_rows`], unless they are more
/// than [`MAX_TEMPLATE_SHARE`] of the memory. In a small memory the templates read most
/// rows, and protecting them all would leave a fact only rows it barely reads (4,096 slots:
/// a fact was no longer recalled).
fn protected_rows<B: Backend>(
    model: &Model<B>,
    tok: &Tokenizer,
    fact: &Fact,
) -> Result<HashSet<u32>> {
    let rows = template_rows(model, tok, fact)?;
    let n_keys = model.memory()[0].lookup.shape.n_keys;
    let share = rows.len() as f64 / (n_keys * n_keys) as f64;
    Ok(if share <= MAX_TEMPLATE_SHARE {
        rows
    } else {
        HashSet::new()
    })
}

/// Earlier facts' tokens whose reads are kept for [`LearnOptions::earlier_fact_penalty`]
/// (the most recent ones; 65,536 tokens × 128 reads is 64 MiB, about 430 facts).
pub const MAX_KEPT_TOKENS: usize = 65_536;

/// What learning keeps from one call to the next for one attached memory: the protected
/// rows of each fact kind, found once (they depend only on its frozen lookup and the
/// tokenizer, and finding them costs about as much as learning from two facts' phrasings),
/// and what the lookup read at the tokens of the facts learned so far (held by
/// [`LearnOptions::earlier_fact_penalty`]). Drop it when another memory is attached.
#[derive(Clone, Debug, Default)]
pub struct LearningState {
    by_kind: [Option<HashSet<u32>>; 2],
    learned: crate::memory::BackgroundSample,
    /// A fact whose steps a `progress` callback stopped: learning the same fact next goes on
    /// from there instead of from its first step (a chat's learner steps aside for every
    /// reply; starting over each time, a fact longer than the pauses would never finish).
    suspended: Option<Suspended>,
}

/// Where a stopped fact's steps were: its rows' values then and the optimizer's moments.
/// Only in memory; the store never held them.
#[derive(Clone, Debug)]
struct Suspended {
    fact: Fact,
    rows: Vec<u32>,
    /// The rows' values before the fact's first step: it goes on only from those.
    before: Vec<f32>,
    values: Vec<f32>,
    adam: Option<AdamState>,
    next_step: usize,
    loss_before: f64,
}

impl LearningState {
    /// Drops a stopped fact's progress: the memory was changed otherwise (a forget, an
    /// imported or reverted delta), so its steps no longer fit, and what it held of a
    /// forgotten fact must not come back.
    pub fn drop_suspended(&mut self) {
        self.suspended = None;
    }

    /// Tokens of earlier facts whose reads are kept.
    pub fn kept_tokens(&self, reads: usize) -> usize {
        self.learned.tokens(reads)
    }

    /// Adds a fact's reads (tokens × `reads` slots and weights), dropping the oldest tokens
    /// beyond [`MAX_KEPT_TOKENS`].
    fn remember_reads(&mut self, slots: Vec<u32>, weights: Vec<f32>, reads: usize) {
        self.learned.slots.extend(slots);
        self.learned.weights.extend(weights);
        let excess = self.learned.tokens(reads).saturating_sub(MAX_KEPT_TOKENS) * reads;
        if excess > 0 {
            self.learned.slots.drain(..excess);
            self.learned.weights.drain(..excess);
        }
    }

    /// The rows facts of `fact`'s kind must not change, found on first use.
    pub fn for_fact<B: Backend>(
        &mut self,
        model: &Model<B>,
        tok: &Tokenizer,
        fact: &Fact,
    ) -> Result<&HashSet<u32>> {
        let kind = usize::from(matches!(fact, Fact::Note(_)));
        match &mut self.by_kind[kind] {
            Some(rows) => Ok(rows),
            empty => Ok(empty.insert(protected_rows(model, tok, fact)?)),
        }
    }
}

/// How a fact's steps ended.
struct Stepped {
    /// Loss before the first step.
    loss_before: f64,
    /// Loss after the last.
    loss: f64,
    /// The last pass's step number.
    last_step: usize,
    /// Passes run by this call (a resumed fact's earlier ones not counted).
    passes: usize,
}

/// `after - before`, each difference rounded to the nearest f16 value when all of them fit
/// in f16 (relative error 2^-11 of the change; the journal then keeps the change in half
/// the bytes), else exact. `exact` keeps them f32: under a row-norm limit, rounding could
/// push a clamped row past it.
fn net_change(before: &[f32], after: &[f32], exact: bool) -> Vec<f32> {
    let diff: Vec<f32> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    if exact {
        return diff;
    }
    let half: Vec<f32> = diff
        .iter()
        .map(|&d| half::f16::from_f32(d).to_f32())
        .collect();
    if half.iter().all(|v| v.is_finite()) {
        half
    } else {
        diff
    }
}

/// Scales every row of `values` (rows of `dim`) whose L2 norm exceeds `max` down to `max`;
/// whether any row changed.
fn clamp_row_norms(values: &mut [f32], dim: usize, max: f32) -> bool {
    let mut changed = false;
    for row in values.chunks_exact_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > max {
            let scale = max / norm;
            row.iter_mut().for_each(|v| *v *= scale);
            changed = true;
        }
    }
    changed
}

/// A fact that finished learning, handed to the caller to make durable before it is
/// reported: its rows (ascending, slot ids in the learning memory) now hold
/// [`add_diff`]`(before, diff)`.
pub struct Committed<'a> {
    /// The fact.
    pub fact: &'a Fact,
    /// The rows chosen for it.
    pub rows: &'a [u32],
    /// Their values before the fact (rows × dim).
    pub before: &'a [f32],
    /// The fact's net change of them: every difference an f16 value where all fit in f16,
    /// so a journal keeps it exactly in half the bytes.
    pub diff: &'a [f32],
}

/// Learns `facts` one after another into the model's memory.
///
/// A fact's steps change only the model; when its last step is done `commit` gets the
/// fact's net change (an error from it puts the rows back and stops), and only then is
/// `progress(fact, step, loss)` told of that last step. A fact that does not finish (an
/// error, or `progress` returning `false` before its last step) leaves its rows as they
/// were, so a caller that journals in `commit` never reports a fact that a crash could
/// lose, and nothing half learned stays.
/// `state` keeps the template rows found for this memory, and the reads of the facts
/// learned into it, from one call to the next. `replaced` (texts, usually empty) are the facts
/// an update replaces: each fact is also trained on their questions and named by their words.
#[allow(clippy::too_many_arguments)]
pub fn learn<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    background: &crate::memory::BackgroundStats,
    background_batches: u64,
    facts: &[Fact],
    replaced: &[String],
    opts: &LearnOptions,
    state: &mut LearningState,
    progress: &mut dyn FnMut(usize, usize, f64) -> bool,
    commit: &mut dyn FnMut(Committed<'_>) -> Result<()>,
) -> Result<LearnReport> {
    opts.validate()?;
    model.gemm_above_memory(true)?;
    // A routing gate holds a fact from before its first step: one whose learning does not
    // finish is taken out again, as the store's history never names it.
    let routed_before = routing_gate(model).map(ReadGate::fact_count);
    let mut finished = 0;
    let mut counted = |c: Committed<'_>| {
        commit(c)?;
        finished += 1;
        Ok(())
    };
    let report = learn_facts(
        model,
        tok,
        background,
        background_batches,
        facts,
        replaced,
        opts,
        state,
        progress,
        &mut counted,
    );
    if let (Err(_), Some(n), Some(gate)) = (
        &report,
        routed_before,
        model.memory_mut()[0].read_gate.as_mut(),
    ) {
        gate.truncate_facts(n + finished);
    }
    // Answering a token or a short prompt is faster through the quantized dot products.
    model.gemm_above_memory(false)?;
    report
}

#[allow(clippy::too_many_arguments)]
fn learn_facts<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    background: &crate::memory::BackgroundStats,
    background_batches: u64,
    facts: &[Fact],
    replaced: &[String],
    opts: &LearnOptions,
    state: &mut LearningState,
    progress: &mut dyn FnMut(usize, usize, f64) -> bool,
    commit: &mut dyn FnMut(Committed<'_>) -> Result<()>,
) -> Result<LearnReport> {
    let started = Instant::now();
    let mut report = LearnReport::default();
    // Tokenize everything first: a bad fact is refused before anything changes.
    let batches: Vec<Vec<Example>> = facts
        .iter()
        .map(|f| {
            let mut batch = examples_with(tok, f, opts.asked_phrasings)?;
            if opts.asked_phrasings {
                batch.extend(update_examples(tok, f, replaced)?);
            }
            Ok(batch)
        })
        .collect::<Result<_>>()?;
    // Slots the lookup reads per token (heads × top-k).
    let reads = model.memory()[0].lookup.shape.heads * model.memory()[0].lookup.shape.top_k;
    // Value rows that may hold something: the anchor skips the others. Rows learning changes
    // join as they change.
    // Under a routing gate there is no anchor (no other text reads a fact's rows), so the
    // rows are not looked for: that would read every learned row of the store.
    let anchored = opts.scoring != SlotScoring::AllTouched
        && (opts.background_penalty > 0.0 || opts.earlier_fact_penalty > 0.0)
        && routing_gate(model).is_none();
    let mut live = if anchored {
        nonzero_rows(model)
    } else {
        Vec::new()
    };
    for (fi, batch) in batches.iter().enumerate() {
        let t0 = Instant::now();
        let mut seqs = prepare_phrasings(model, batch)?;
        report.timings.prepare += t0.elapsed();

        // With a topic read gate a fact's rows are read only from where a sequence names it:
        // learn them the same way, from each phrasing's first naming on.
        let named_from = named_from(model, tok, &facts[fi], &mut seqs)?;

        let t0 = Instant::now();
        let picks: Vec<u32> = seqs
            .iter()
            .flat_map(|s| model.backend().download_slots(&s.lookup.slots))
            .collect();
        // Positions whose reads may be selected: the fact's own words with
        // `content_rows_only`, and only from where a topic gate lets the fact be read.
        let content_only = opts.content_rows_only && opts.scoring != SlotScoring::AllTouched;
        // With `subject_rows`: only the reads at the fact's topic words, wherever a phrasing
        // holds them.
        let subject_only = opts.scoring != SlotScoring::AllTouched
            && opts.subject_rows.applies(matches!(facts[fi], Fact::Note(_)));
        let needles = if subject_only {
            topic_needles(tok, &facts[fi])?
        } else {
            Vec::new()
        };
        let subject = subject_only && !needles.is_empty();
        let mut counts = if subject || content_only || named_from.is_some() {
            let mut at = 0;
            let mut chosen = Vec::new();
            for (i, (s, e)) in seqs.iter().zip(batch).enumerate() {
                let from = named_from.as_ref().map_or(0, |f| f[i]);
                let ranges = if subject {
                    needle_spans(&s.tokens, &needles)
                } else if content_only {
                    e.content.clone()
                } else {
                    std::iter::once(0..s.tokens.len()).collect()
                };
                // Subject tokens are read from their own position on: the naming there opens
                // the fact.
                let from = if subject { 0 } else { from };
                for r in ranges {
                    let start = r.start.max(from);
                    if start < r.end {
                        chosen.extend_from_slice(&picks[at + start * reads..at + r.end * reads]);
                    }
                }
                at += s.tokens.len() * reads;
            }
            count_accesses(&chosen)
        } else {
            count_accesses(&picks)
        };
        let protect = opts.protect_template_rows && opts.scoring != SlotScoring::AllTouched;
        if protect {
            let protected = state.for_fact(model, tok, &facts[fi])?;
            counts.retain(|slot, _| !protected.contains(slot));
        }
        if let Some(gate) = routing_gate(model) {
            // A fact's rows are its own: those of earlier facts are never chosen again.
            counts.retain(|slot, _| !gate.owns(*slot));
        }
        let shape = &model.memory()[0].lookup.shape;
        let slots = shape.n_keys * shape.n_keys;
        let want = rows_per_fact(opts.top_t, slots, routing_gate(model).is_some());
        let mut rows = select_slots(
            &counts,
            background,
            background_batches,
            opts.scoring,
            want,
        );
        if let Some(gate) = routing_gate(model).filter(|_| rows.len() < want) {
            let protected = if protect {
                state.for_fact(model, tok, &facts[fi])?.clone()
            } else {
                HashSet::new()
            };
            fill_from_free_rows(&mut rows, want, slots, |r| {
                gate.owns(r) || protected.contains(&r)
            });
            if rows.is_empty() {
                return Err(Error::Memory(format!(
                    "the memory is full: all of its {slots} value rows belong to the {} facts \
                     learned so far ({want} rows each at most); forget some or learn into a \
                     store with more rows",
                    gate.fact_count(),
                )));
            }
        }
        let mut rows_sorted = rows.clone();
        rows_sorted.sort_unstable();
        report.timings.selection += t0.elapsed();

        // A routing gate reads the fact's rows wherever it is named: learn them read so.
        let routed = routing_gate(model).is_some();
        if routed {
            add_routed(model, tok, &facts[fi], &rows_sorted, replaced)?;
            let memory = &model.memory()[0];
            let gate = memory.read_gate.as_ref().expect("a routing gate");
            let b = model.backend();
            for s in seqs.iter_mut() {
                let (found, q) = memory.lookup.lookup_with_query(b, s.memory_input());
                let mut open = OpenFacts::default();
                s.lookup = memory.route(b, gate, found, &q, (&s.tokens, 0), &mut open);
            }
        }

        // Only these rows change from here on: what comes before their first reader is
        // computed once instead of at every step.
        let t0 = Instant::now();
        model.freeze_prefixes(&mut seqs, &rows_sorted)?;
        report.timings.prepare += t0.elapsed();

        let t0 = Instant::now();
        // Under a routing gate no other text reads the fact's rows: nothing to hold.
        let anchor = if opts.scoring == SlotScoring::AllTouched || routed {
            None
        } else {
            let lookup = &model.memory()[0].lookup.shape;
            // κ was tuned where each row has ANCHOR_TUNED_READS_PER_ROW sampled reads; a row
            // with more (a smaller memory, a larger sample) is held by more terms, so each
            // term weighs proportionally less and the hold stays as strong.
            let slots = (lookup.n_keys * lookup.n_keys) as f64;
            let reads_per_row = background.sample.slots.len() as f64 / slots;
            let strength = if reads_per_row > 0.0 {
                (f64::from(opts.background_penalty) * ANCHOR_TUNED_READS_PER_ROW / reads_per_row)
                    as f32
            } else {
                0.0
            };
            BackgroundAnchor::keeping(
                &background.sample,
                &state.learned,
                reads,
                &rows_sorted,
                (strength, opts.earlier_fact_penalty),
                model.config.dim,
                &|slot| live.get(slot as usize).copied().unwrap_or(true),
                &mut |ids| Ok(model.backend().take_to_host(model.read_values(ids)?)),
            )?
        };
        report.timings.anchor += t0.elapsed();

        let count: usize = batch.iter().map(|e| e.targets.len()).sum();
        // The rows as they were before this fact: put back if it does not finish.
        let fact_before = model.read_values(&rows_sorted)?;
        // On the host once: to match a stopped fact, to keep with one, and for the net change.
        let before = model.backend().download(&fact_before);
        // A fact stopped earlier goes on from its step, if it picked the same rows again (the
        // memory is as it was then unless something else was learned or forgotten between).
        let resumed = state.suspended.take().filter(|s| {
            s.fact == facts[fi]
                && s.rows == rows_sorted
                && s.before == before
        });
        let stepped = (|| -> Result<Stepped> {
            let mut loss_before = f64::NAN;
            // Masked AdamW: moments exist only for this fact's selected rows.
            let mut adam: Option<AdamState> = None;
            let mut first_step = 0;
            if let Some(s) = resumed {
                let values = model
                    .backend()
                    .upload_vec(s.values, rows_sorted.len(), model.config.dim);
                model.write_values(&rows_sorted, &values)?;
                (loss_before, adam, first_step) = (s.loss_before, s.adam, s.next_step);
            }
            let steps = opts.steps_for(&facts[fi]);
            for step in first_step..=steps {
                let want: &[u32] = if step < steps { &rows_sorted } else { &[] };
                // Once the loss target is reached the step's gradient would be thrown away.
                let stop_at =
                    (step > 0 && opts.stop_loss > 0.0).then_some(f64::from(opts.stop_loss));
                let g = model
                    .value_gradients_unless_below(&seqs, want, stop_at)
                    .map_err(|e| {
                        Error::InvalidArgument(format!(
                            "fact {}: stopped at step {step}, nothing of it was kept: {e} \
                             (lower the learning rate)",
                            fi + 1
                        ))
                    })?;
                let loss = g.loss / count as f64;
                let t0 = Instant::now();
                let grad = (!opts.is_last_step(&facts[fi], step, loss))
                    .then(|| model.backend().download(&g.grads));
                report.timings.forward += g.forward_time;
                report.timings.backward += g.backward_time + t0.elapsed();
                if step == 0 {
                    loss_before = loss;
                }
                let Some(mut g) = grad else {
                    return Ok(Stepped {
                        loss_before,
                        loss,
                        last_step: step,
                        passes: step + 1 - first_step,
                    });
                };
                let t0 = Instant::now();
                let scale = 1.0 / count as f32;
                g.iter_mut().for_each(|v| *v *= scale);
                if let Some(bad) = g.iter().position(|v| !v.is_finite()) {
                    return Err(Error::InvalidArgument(format!(
                        "step {step} of fact {} produced a non-finite gradient (at {bad}); \
                         nothing of the fact was kept (lower the learning rate)",
                        fi + 1
                    )));
                }
                let d = model.config.dim;
                let gt = model.backend().upload_vec(g, rows_sorted.len(), d);
                match opts.optimizer {
                    Optimizer::Sgd => {
                        model.sgd_values(&rows_sorted, &gt, routed_rate(opts, rows_sorted.len(), routed))?
                    }
                    Optimizer::AdamW { .. } => {
                        let state =
                            adam.get_or_insert_with(|| AdamState::new(rows_sorted.len() * d));
                        let current = model
                            .backend()
                            .take_to_host(model.read_values(&rows_sorted)?);
                        let grads = model.backend().download(&gt);
                        let next = state.step(opts.optimizer, opts.learning_rate, &current, &grads);
                        let next = model.backend().upload_vec(next, rows_sorted.len(), d);
                        model.write_values(&rows_sorted, &next)?;
                    }
                }
                let mut moved = model
                    .backend()
                    .take_to_host(model.read_values(&rows_sorted)?);
                let held = anchor.as_ref().map(|a| a.hold(&mut moved)).is_some();
                let clamped =
                    opts.max_row_norm > 0.0 && clamp_row_norms(&mut moved, d, opts.max_row_norm);
                if moved.iter().any(|v| !v.is_finite()) {
                    return Err(Error::InvalidArgument(format!(
                        "fact {}: step {step} made value rows non-finite; nothing of the fact \
                         was kept (lower the learning rate)",
                        fi + 1
                    )));
                }
                if held || clamped {
                    let t = model.backend().upload_vec(moved, rows_sorted.len(), d);
                    model.write_values(&rows_sorted, &t)?;
                }
                report.timings.update += t0.elapsed();
                if !progress(fi, step, loss) {
                    let values = model
                        .backend()
                        .take_to_host(model.read_values(&rows_sorted)?);
                    state.suspended = Some(Suspended {
                        fact: facts[fi].clone(),
                        rows: rows_sorted.clone(),
                        before: before.clone(),
                        values,
                        adam: adam.take(),
                        next_step: step + 1,
                        loss_before,
                    });
                    return Err(Error::Interrupted(format!(
                        "learning stopped during fact {} at step {}; facts before it are \
                         learned, nothing of it was kept (learning it next goes on from there)",
                        fi + 1,
                        step + 1
                    )));
                }
            }
            unreachable!("the last pass has no gradient and returns")
        })()
        .and_then(|stepped| {
            // The fact's net change, made exactly what its journal record gives back.
            let after = model
                .backend()
                .take_to_host(model.read_values(&rows_sorted)?);
            let diff = net_change(&before, &after, opts.max_row_norm > 0.0);
            let next = add_diff(&before, &diff);
            let next = model
                .backend()
                .upload_vec(next, rows_sorted.len(), model.config.dim);
            model.write_values(&rows_sorted, &next)?;
            commit(Committed {
                fact: &facts[fi],
                rows: &rows_sorted,
                before: &before,
                diff: &diff,
            })?;
            Ok(stepped)
        });
        let Stepped {
            loss_before,
            loss,
            last_step,
            passes,
        } = match stepped {
            Ok(s) => s,
            Err(e) => {
                model.write_values(&rows_sorted, &fact_before)?;
                return Err(e);
            }
        };
        if !progress(fi, last_step, loss) {
            return Err(Error::Interrupted(format!(
                "learning stopped after fact {}; it and the facts before it are learned",
                fi + 1
            )));
        }
        for &r in &rows_sorted {
            if let Some(l) = live.get_mut(r as usize) {
                *l = true;
            }
        }
        if !routed {
            key_read_gate(model, tok, &seqs, &facts[fi])?;
        }
        if opts.scoring != SlotScoring::AllTouched && opts.earlier_fact_penalty > 0.0 && !routed {
            // `picks` already holds every sequence's slots, in this order.
            let weights = seqs
                .iter()
                .flat_map(|s| model.backend().download(&s.lookup.weights))
                .collect();
            state.remember_reads(picks, weights, reads);
        }
        report.facts.push(FactReport {
            examples: batch.len(),
            tokens_stepped: passes * seqs.iter().map(|s| s.tokens.len()).sum::<usize>(),
            loss_before,
            loss_after: loss,
            rows: rows_sorted,
        });
    }
    report.total = started.elapsed();
    Ok(report)
}

/// The positions of `tokens` inside any occurrence of one of `needles`, as runs.
fn needle_spans(tokens: &[u32], needles: &[Vec<u32>]) -> Vec<std::ops::Range<usize>> {
    let mut mark = vec![false; tokens.len()];
    for n in needles.iter().filter(|n| !n.is_empty()) {
        for p in 0..=tokens.len().saturating_sub(n.len()) {
            if tokens[p..].starts_with(n) {
                mark[p..p + n.len()].fill(true);
            }
        }
    }
    let mut spans = Vec::new();
    let mut t = 0;
    while t < mark.len() {
        if mark[t] {
            let end = (t..mark.len()).find(|&j| !mark[j]).unwrap_or(mark.len());
            spans.push(t..end);
            t = end;
        } else {
            t += 1;
        }
    }
    spans
}

/// Under a topic read gate: where each of `seqs` first names `fact` (its length when it
/// never does), with every read before that closed as the gate will close it; `None` under
/// any other gate.
fn named_from<B: Backend>(
    model: &Model<B>,
    tok: &Tokenizer,
    fact: &Fact,
    seqs: &mut [PreparedSequence<B>],
) -> Result<Option<Vec<usize>>> {
    if !model.memory()[0]
        .read_gate
        .as_ref()
        .is_some_and(|g| g.needs_topics())
    {
        return Ok(None);
    }
    let needles = topic_needles(tok, fact)?;
    let b = model.backend();
    let mut from = Vec::with_capacity(seqs.len());
    for s in seqs.iter_mut() {
        let first = needles
            .iter()
            .filter_map(|n| {
                s.tokens
                    .windows(n.len())
                    .position(|w| w == &n[..])
                    .map(|p| p + n.len() - 1)
            })
            .min()
            .unwrap_or(s.tokens.len());
        if first > 0 {
            let (n, reads) = b.shape(&s.lookup.weights);
            let mut w = b.download(&s.lookup.weights);
            w[..first.min(n) * reads].fill(0.0);
            s.lookup.weights = b.upload_vec(w, n, reads);
        }
        from.push(first);
    }
    Ok(Some(from))
}

/// The SGD rate a fact of `rows` rows steps at. Under a routing gate a fact's rows share its
/// read (per head, softmax weights summing to one over them), so a step changes its output by
/// about rate × heads² / rows: the rate is set for [`ROUTED_RATE_ROWS`] rows and scaled to the
/// rows the fact has, so fewer rows per fact (or the last free rows of a full memory) learn
/// alike. eval/'s first 30 facts and 10 notes (tuned items, 2026-12-07): 128 rows at 35,000
/// answered 67 % exactly with NLL +3.1 %, at 9,000 97 % and +0.26 %, as 500 rows at 35,000.
fn routed_rate(opts: &LearnOptions, rows: usize, routed: bool) -> f32 {
    if routed {
        opts.learning_rate * rows as f32 / ROUTED_RATE_ROWS as f32
    } else {
        opts.learning_rate
    }
}

/// Facts a memory holds at the least under a routing gate: a fact there owns at most this
/// share of the rows (a 4,096-row store 64 rows each, the 64-row stores of the tests one),
/// whatever `top_t` asks.
const MIN_FACTS_PER_MEMORY: usize = 64;

/// Rows a fact selects: `top_t`, and under a routing gate (`routed`, where each fact owns its
/// rows) at most a [`MIN_FACTS_PER_MEMORY`]th of the memory's `slots`, at least one.
fn rows_per_fact(top_t: usize, slots: usize, routed: bool) -> usize {
    if routed {
        top_t.min((slots / MIN_FACTS_PER_MEMORY).max(1))
    } else {
        top_t
    }
}

/// Tops `rows` up to `want` with rows of the whole table (`slots` of them) that `taken` does
/// not refuse (an earlier fact's, a template's), lowest first. Under a routing gate a fact's rows are read
/// by routing wherever it is named, not by the lookup, so any free row can hold it: once the
/// rows its own words read are owned by earlier facts, the rest of the table still is free.
fn fill_from_free_rows(
    rows: &mut Vec<u32>,
    want: usize,
    slots: usize,
    taken: impl Fn(u32) -> bool,
) {
    if rows.len() >= want {
        return;
    }
    let chosen: HashSet<u32> = rows.iter().copied().collect();
    let free = (0..slots as u32).filter(|&r| !taken(r) && !chosen.contains(&r));
    rows.extend(free.take(want - rows.len()));
}

/// The memory's read gate where it routes named facts' rows.
fn routing_gate<B: Backend>(model: &Model<B>) -> Option<&ReadGate> {
    model.memory()[0].read_gate.as_ref().filter(|g| g.routes())
}

/// Per value row of the learning memory, whether any of its values is nonzero. A table
/// mapped from its store file is read from the file for the rows never written (its pages are
/// let go as it goes), so finding them does not bring 604 MB into memory.
fn nonzero_rows<B: Backend>(model: &Model<B>) -> Vec<bool> {
    model.backend().nonzero_rows(&model.memory()[0].values)
}

/// Adds a learned fact's tokens (its prepared phrasings `seqs` of `batch`) to the memory's
/// read gate, if any.
fn key_read_gate<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    seqs: &[PreparedSequence<B>],
    fact: &Fact,
) -> Result<()> {
    let Some(gate) = model.memory()[0].read_gate.as_ref() else {
        return Ok(());
    };
    let needles = if gate.needs_topics() {
        topic_needles(tok, fact)?
    } else {
        Vec::new()
    };
    let reads = model.memory()[0].lookup.shape.picks();
    let b = model.backend();
    let parts: Vec<(Vec<f32>, Vec<u32>)> = seqs
        .iter()
        .map(|s| {
            (
                b.download(s.memory_input()),
                b.download_slots(&s.lookup.slots),
            )
        })
        .collect();
    let kind = match fact {
        Fact::QuestionAnswer { .. } => KeyKind::Question,
        Fact::Note(_) => KeyKind::Note,
    };
    let phrasings: Vec<KeyedPhrasing> = parts
        .iter()
        .map(|(inputs, slots)| KeyedPhrasing { inputs, slots })
        .collect();
    if let Some(gate) = model.memory_mut()[0].read_gate.as_mut() {
        gate.add_fact(&phrasings, &needles, reads, kind);
    }
    Ok(())
}

/// A fact learned earlier, as the read gate is keyed with it.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyedFact {
    /// The fact.
    pub fact: Fact,
    /// The rows learning chose for it (empty where not known: facts of deltas made before
    /// deltas carried them, of stores written before 2026-12-06).
    pub rows: Vec<u32>,
    /// The texts of the facts it replaced (an update): their words name it too.
    pub replaced: Vec<String>,
}

/// Keys the memory's read gate with facts learned earlier, each with the rows learning chose
/// for it where known (a routing gate gives a fact exactly those). The layers below the
/// memory are frozen, so their phrasings give the same keys as when they were learned.
pub fn rekey_read_gate<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    facts: &[KeyedFact],
) -> Result<()> {
    if routing_gate(model).is_some() {
        return reroute_read_gate(model, tok, facts);
    }
    for KeyedFact { fact, .. } in facts {
        let batch = examples(tok, fact)?;
        let seqs = prepare_phrasings(model, &batch)?;
        key_read_gate(model, tok, &seqs, fact)?;
    }
    Ok(())
}

/// Gives a routing gate its facts again: the rows learning chose for each where the store
/// kept them. A fact without them (learned into a store before 2026-12-06, or brought by a
/// delta) owns the nonzero rows its phrasings read after naming it that no fact before it
/// owns: a superset of what learning chose where facts' reads do not overlap.
fn reroute_read_gate<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    facts: &[KeyedFact],
) -> Result<()> {
    let needs_reads = facts.iter().any(|k| k.rows.is_empty());
    let nonzero = if needs_reads {
        nonzero_rows(model)
    } else {
        Vec::new()
    };
    for keyed in facts {
        let (fact, kept) = (&keyed.fact, &keyed.rows);
        if !kept.is_empty() {
            add_routed(model, tok, fact, kept, &keyed.replaced)?;
            continue;
        }
        let batch = examples(tok, fact)?;
        let mut seqs = prepare_phrasings(model, &batch)?;
        let from = named_from(model, tok, fact, &mut seqs)?.unwrap_or_default();
        let b = model.backend();
        let mut rows = Vec::new();
        for (s, &first) in seqs.iter().zip(&from) {
            let (n, reads) = b.shape(&s.lookup.weights);
            let slots = b.download_slots(&s.lookup.slots);
            rows.extend_from_slice(&slots[first.min(n) * reads..]);
        }
        let gate = routing_gate(model).expect("a routing gate");
        rows.retain(|&r| nonzero.get(r as usize).copied().unwrap_or(false) && !gate.owns(r));
        add_routed(model, tok, fact, &rows, &keyed.replaced)?;
    }
    Ok(())
}

/// Adds `fact` to the routing gate owning `rows` (those no fact before it owns), named by its
/// own words and by those of the facts it `replaced` (texts).
fn add_routed<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    fact: &Fact,
    rows: &[u32],
    replaced: &[String],
) -> Result<()> {
    let needles = topic_needles(tok, fact)?;
    let personal = personal_needles(tok, fact)?;
    let context = context_needles(tok, fact)?;
    // What an update replaced names it too: "Which city do we live in now?" names "We moved
    // to Coimbra." by the "live" of the "We live in Braga." it replaced.
    let mut more = Vec::with_capacity(replaced.len());
    for text in replaced {
        let old = Fact::from_description(text);
        more.push((
            topic_needles(tok, &old)?,
            personal_needles(tok, &old)?,
            context_needles(tok, &old)?,
        ));
    }
    if let Some(gate) = model.memory_mut()[0].read_gate.as_mut() {
        let id = gate.add_routed_fact(&needles, &personal, rows);
        gate.add_context(id, &context);
        for (needles, personal, context) in &more {
            gate.add_names(id, needles, personal);
            gate.add_context(id, context);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rows_above_the_limit_are_scaled_down_to_it() {
        let mut rows = vec![3.0, 4.0, 0.6, 0.8, 0.0, 0.0];
        assert!(clamp_row_norms(&mut rows, 2, 1.0));
        let want = [0.6, 0.8, 0.6, 0.8, 0.0, 0.0];
        assert!(
            rows.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{rows:?}"
        );
        assert!(!clamp_row_norms(&mut rows, 2, 1.0));
    }
}

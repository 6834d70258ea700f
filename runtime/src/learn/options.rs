//! Learning's settings and what it reports.

use std::time::Duration;

use super::facts::Fact;
use super::optimizer::Optimizer;
use crate::error::{Error, Result};
use crate::memory::SlotScoring;

/// Sampled reads per value row on the store κ was tuned on (4,096 sampled tokens × 128 reads
/// over 65,536 slots; the default store has the same density, 16,384 over 262,144):
/// [`LearnOptions::background_penalty`] is per sampled token there and scaled by this over the
/// actual reads per row elsewhere. Without the scaling a 4,096-slot store with 1,024 sampled
/// tokens (32 reads per row) held four times as hard and a fact was no longer recalled.
pub const ANCHOR_TUNED_READS_PER_ROW: f64 = 8.0;

/// Most rows per fact that the background anchor couples: its system is t × t, factored
/// once per fact (4,096 rows: about 23 GFLOP).
pub const MAX_ANCHORED_ROWS: usize = 4096;

/// Settings of learning.
#[derive(Clone, Debug, PartialEq)]
pub struct LearnOptions {
    /// Gradient steps per fact.
    pub steps: usize,
    /// Gradient steps per note (0: `steps`). A note is trained on more and longer phrasings
    /// than a question/answer fact and ends its steps at a higher loss.
    pub note_steps: usize,
    /// Learning rate.
    pub learning_rate: f32,
    /// Value rows updated per fact (top-t by `scoring`).
    pub top_t: usize,
    /// How rows are selected.
    pub scoring: SlotScoring,
    /// Update rule.
    pub optimizer: Optimizer,
    /// A fact stops taking steps once its mean loss is at or below this (nats; 0 = always
    /// take every step): values then grow only as large as the fact needs, which is what
    /// other text reading the same rows sees.
    pub stop_loss: f32,
    /// Largest L2 norm a value row may reach (0 = no limit). Rows that many facts select
    /// otherwise keep growing, and every context that reads them pays for it.
    pub max_row_norm: f32,
    /// Never change the rows that the phrasing templates read whatever the fact says (those
    /// of a content-free fact of the same kind, see `template_rows`). Every later question
    /// asked in a familiar form reads them, so changing them for one fact changes the answers
    /// to all. Ignored by [`SlotScoring::AllTouched`], the no-selection baseline.
    pub protect_template_rows: bool,
    /// How hard each step holds the memory's output at the store's sampled background tokens
    /// near zero, where the base model had it (κ of `BackgroundAnchor` per sampled token,
    /// scaled to the store's sampled reads per row, see `ANCHOR_TUNED_READS_PER_ROW`;
    /// 0 = off). Rows that the same general text reads then change so that their sum there
    /// stays small. Needs a store with a background sample; ignored by
    /// [`SlotScoring::AllTouched`] (the no-selection baseline).
    pub background_penalty: f32,
    /// How hard each step holds the memory's output where it is at every token of the facts
    /// learned earlier into this memory by the same engine (μ of
    /// `BackgroundAnchor::keeping` per token; 0 = off): a new fact then changes its rows
    /// in directions the earlier facts' tokens do not read. Ignored by
    /// [`SlotScoring::AllTouched`].
    pub earlier_fact_penalty: f32,
    /// Select rows only among those read at the fact's own words (its question, answer or
    /// note), never at the phrasing's template text: the chat markup after a question reads
    /// rows that every question's markup reads, so a row changed there moves every answer.
    /// Ignored by [`SlotScoring::AllTouched`].
    pub content_rows_only: bool,
    /// Also train each fact on questions made from its words by rules (a note's
    /// "What do you know about my bike?" and "My neighbour Tariq repaired what?", a
    /// question's "The capital of X is what?" and the statement it makes), so that it is
    /// recalled when asked in other words. A store's read gate is rebuilt from the default
    /// phrasings when it is opened.
    pub asked_phrasings: bool,
    /// Which facts select rows only among those read at their topic words (the subject's
    /// name, "Brightwell Looms"): the fact is then stored where its subject is read and the
    /// layers above carry it to any question naming the subject, however worded. Ignored by
    /// [`SlotScoring::AllTouched`].
    pub subject_rows: SubjectRows,
}

/// Which kinds of fact learn only in the rows their topic words read
/// ([`LearnOptions::subject_rows`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SubjectRows {
    /// Every fact selects among all the rows its phrasings read.
    #[default]
    Off,
    /// Question/answer facts only.
    Questions,
    /// Notes only.
    Notes,
    /// Both kinds.
    All,
}

impl SubjectRows {
    /// Whether a fact of this kind (`note` or a question/answer) learns in its subject's rows.
    pub fn applies(self, note: bool) -> bool {
        match self {
            SubjectRows::Off => false,
            SubjectRows::Questions => !note,
            SubjectRows::Notes => note,
            SubjectRows::All => true,
        }
    }
}

/// Rows per fact the topic and cosine read gates were tuned at (with
/// [`TOPIC_GATE_LEARNING_RATE`]); the routing gate's default is fewer (see
/// [`LearnOptions::default`]).
pub const TOPIC_GATE_TOP_T: usize = 500;

/// Rows per fact that the routing gate's learning rate is set for: a fact with other than
/// this many rows steps at the rate scaled by its rows over this (see [`DEFAULT_LEARNING_RATE`]).
pub const ROUTED_RATE_ROWS: usize = 500;

/// The learning rate for the default (routing) read gate, for a fact of [`ROUTED_RATE_ROWS`]
/// rows (scaled to the rows a fact has). Each token after a fact's naming
/// reads all of its rows, so a step moves the memory's output at every such token at once:
/// eval/'s first 20 facts and 10 notes (tuned items, 2026-12-06) at 140,000 (the topic gate's
/// rate) answered 55 % of the exact questions with degenerate repeats ("Ternopilililil"), at
/// 35,000 100 %.
pub const DEFAULT_LEARNING_RATE: f32 = 35_000.0;

/// The learning rate the topic and cosine read gates were tuned at (see the comment in
/// [`LearnOptions::default`]).
pub const TOPIC_GATE_LEARNING_RATE: f32 = 140_000.0;

impl Default for LearnOptions {
    fn default() -> Self {
        LearnOptions {
            // For the topic and cosine gates (TOPIC_GATE_LEARNING_RATE); the routing gate's
            // rate is DEFAULT_LEARNING_RATE. Tuned on the default model and memory: the value rows start at zero and are read
            // with softmax weights of a few percent, so steps must be large. The rate goes with
            // the lookup's temperature (RetrofitOptions::temperature T, 4 by default): about
            // T × 15,000 to T × 20,000. 100 SimpleQA facts in the default memory: lr 60,000
            // learned 68 % and kept 91.3 % of 150 general answers, lr 80,000 80 % and 86.7 %.
            // With the read gate (on by default; it closes learned rows to general questions,
            // so a larger step costs them little): lr 80,000 73 % / 96.7 %, lr 110,000
            // 82 % / 95.3 % and, after a change of float summation order alone, 78 % / 96.7 %;
            // lr 140,000 84 % / 96.0 %, and 84 % / 96.0 % on facts and questions not tuned on
            // (SimpleQA lines 101-600). Held-out NLL +0.00 % at all three.
            // 12 steps with the background anchor instead of 6 (25 SimpleQA facts, subset A,
            // T 1): learned 20 % -> 52 %, retention 87.5 % either way.
            steps: 12,
            note_steps: 0,
            learning_rate: DEFAULT_LEARNING_RATE,
            // Under the routing gate each fact owns its rows, so the memory holds
            // 262,144 / top_t facts. 500 filled the default memory after 524 facts (a
            // 1,000-item stream, 2026-12-07: later facts found no rows of their own and were
            // not learned); 128 holds about 2,000. eval/'s first 30 facts and 10 notes (tuned
            // items): 128 rows answered 97 / 90 / 70 % (exact, paraphrase, note question)
            // with NLL +0.26 %, 500 rows 97 / 90 / 80 % and +0.25 %.
            top_t: 128,
            scoring: SlotScoring::TfIdf,
            optimizer: Optimizer::Sgd,
            stop_loss: 0.0,
            // Off by default: at 80, 25 SimpleQA facts kept 11 of 20 known answers instead of
            // 3 but only 6 were learned instead of 9, and on a store built from 4,096
            // background tokens single facts no longer halved their loss. A trade, not a win.
            max_row_norm: 0.0,
            // On: over 25 SimpleQA facts (two subsets) retention went 15 % -> 60 % and
            // 75 % -> 90 %, held-out NLL +3.5 % -> +1.2 % and +2.6 % -> +1.4 %, learned
            // 28 % -> 20 % and 32 % -> 32 %.
            protect_template_rows: true,
            // 25 SimpleQA facts (subset A, 6 steps): retention 60 % -> 90 % at κ 10 with
            // learning unchanged (20 % -> 24 %); κ 100 kept 97.5 % but learned 4 %.
            background_penalty: 10.0,
            // 25 SimpleQA facts (subset A, κ 10, 12 steps): learned / right after / retention
            // 52 / 64 / 87.5 % without it; μ 1: 52 / 60 / 95; μ 3: 64 / 56 / 97.5;
            // μ 10: 52 / 48 / 97.5. At N = 100, μ 0 -> 3: learned 31 -> 35 %, retention
            // 72 -> 84 %, but right after each fact 76 -> 36 %.
            earlier_fact_penalty: 3.0,
            // Off: at N = 100 on the default store it kept 92.7 % of general answers instead
            // of 86.7 % but learned 75 % instead of 80 % (lr 100,000: 75 % / 90.0 %); on a store
            // retrofitted from a slightly different background it kept 84.7 % (default 86.0 %).
            content_rows_only: false,
            asked_phrasings: true,
            subject_rows: SubjectRows::Off,
        }
    }
}

impl LearnOptions {
    /// Whether the pass `step` whose mean loss was `loss` is a fact's last: the one after its
    /// final update, or the first to reach `stop_loss`. Its progress call comes once the fact
    /// is learned and durable.
    pub fn is_last_step(&self, fact: &Fact, step: usize, loss: f64) -> bool {
        step >= self.steps_for(fact) || (step > 0 && loss <= f64::from(self.stop_loss))
    }

    /// Gradient steps `fact` takes: [`Self::note_steps`] for a note where set, else
    /// [`Self::steps`].
    pub fn steps_for(&self, fact: &Fact) -> usize {
        match fact {
            Fact::Note(_) if self.note_steps > 0 => self.note_steps,
            _ => self.steps,
        }
    }

    /// Refuses settings that cannot work, before anything changes.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if !self.learning_rate.is_finite() || self.learning_rate <= 0.0 {
            return bad(format!(
                "learning rate {} must be a positive finite number",
                self.learning_rate
            ));
        }
        if self.steps == 0 || self.steps > 10_000 {
            return bad(format!("steps {} must be between 1 and 10000", self.steps));
        }
        if self.note_steps > 10_000 {
            return bad(format!(
                "note steps {} must be between 0 (as steps) and 10000",
                self.note_steps
            ));
        }
        if !self.stop_loss.is_finite() || self.stop_loss < 0.0 {
            return bad(format!(
                "stop loss {} must be a finite number ≥ 0",
                self.stop_loss
            ));
        }
        if !self.max_row_norm.is_finite() || self.max_row_norm < 0.0 {
            return bad(format!(
                "max row norm {} must be a finite number ≥ 0",
                self.max_row_norm
            ));
        }
        if self.top_t == 0 {
            return bad("top_t must be at least 1 value row".into());
        }
        if !self.background_penalty.is_finite() || self.background_penalty < 0.0 {
            return bad(format!(
                "background penalty {} must be a finite number ≥ 0",
                self.background_penalty
            ));
        }
        if !self.earlier_fact_penalty.is_finite() || self.earlier_fact_penalty < 0.0 {
            return bad(format!(
                "earlier-fact penalty {} must be a finite number ≥ 0",
                self.earlier_fact_penalty
            ));
        }
        let anchored = self.background_penalty > 0.0 || self.earlier_fact_penalty > 0.0;
        if anchored && self.top_t > MAX_ANCHORED_ROWS {
            return bad(format!(
                "top_t {} is more than the {MAX_ANCHORED_ROWS} rows the anchor solves for at \
                 once; lower it or set the background and earlier-fact penalties to 0",
                self.top_t
            ));
        }
        if let Optimizer::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.optimizer
        {
            let unit = |x: f32| (0.0..1.0).contains(&x);
            let valid = unit(beta1) && unit(beta2) && eps > 0.0 && weight_decay >= 0.0;
            if !valid {
                return bad(format!(
                    "AdamW needs betas in [0, 1), eps > 0 and weight decay ≥ 0 (got {beta1}, {beta2}, {eps}, {weight_decay})"
                ));
            }
        }
        Ok(())
    }
}

/// Where the time of a learning call went.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LearnTimings {
    /// Running the phrasings up to the memory layer.
    pub prepare: Duration,
    /// Choosing the rows.
    pub selection: Duration,
    /// Forward above the memory and the LM head (all steps, and the final loss).
    pub forward: Duration,
    /// Backward from the loss to the selected value rows (all steps).
    pub backward: Duration,
    /// Applying updates (the background anchor's solve after each step included).
    pub update: Duration,
    /// Setting up the background anchor (once per fact).
    pub anchor: Duration,
}

impl std::ops::AddAssign for LearnTimings {
    /// Sums phase by phase, so separate learning calls can be reported together.
    fn add_assign(&mut self, other: Self) {
        self.prepare += other.prepare;
        self.selection += other.selection;
        self.forward += other.forward;
        self.backward += other.backward;
        self.update += other.update;
        self.anchor += other.anchor;
    }
}

/// What learning one fact did.
#[derive(Clone, Debug, PartialEq)]
pub struct FactReport {
    /// Phrasings trained on.
    pub examples: usize,
    /// The phrasings' tokens times the passes over them (gradient steps and the final loss):
    /// the tokens a prefill of the same sequences as often would run, to compare learning's
    /// cost with inference speed.
    pub tokens_stepped: usize,
    /// Mean next-token loss over the target tokens before the first step (nats).
    pub loss_before: f64,
    /// The same after the last step.
    pub loss_after: f64,
    /// Value rows changed.
    pub rows: Vec<u32>,
}

/// What a learning call did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LearnReport {
    /// One entry per fact, in order.
    pub facts: Vec<FactReport>,
    /// Where the time went.
    pub timings: LearnTimings,
    /// Wall time of the whole call.
    pub total: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_take_their_own_steps_only_where_set() {
        let note = Fact::note("My cat is called Miso.");
        let qa = Fact::qa("What is the capital of Velmoria?", "Ostrana");
        let mut o = LearnOptions::default();
        assert_eq!((o.steps_for(&note), o.steps_for(&qa)), (o.steps, o.steps));
        o.note_steps = 20;
        assert_eq!((o.steps_for(&note), o.steps_for(&qa)), (20, o.steps));
        assert!(o.is_last_step(&qa, o.steps, 1.0) && !o.is_last_step(&note, o.steps, 1.0));
        o.note_steps = 20_000;
        assert!(o.validate().is_err());
    }
}

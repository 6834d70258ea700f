//! Learning: a fact becomes a small batch of phrasings, and sparse memory finetuning changes
//! only the value rows that batch uses far more than the background does.

use std::collections::HashSet;
use std::ops::Range;
use std::time::{Duration, Instant};

mod anchor;

pub use anchor::BackgroundAnchor;

use crate::backend::Backend;
use crate::memory::{KeyKind, SlotScoring, count_accesses, select_slots};
use crate::model::{Model, PreparedSequence};
use crate::tokenizer::{ChatMessage, Tokenizer};
use crate::{Error, Result};

/// Something to learn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fact {
    /// A question and its answer.
    QuestionAnswer {
        /// The question.
        question: String,
        /// The answer (a few words).
        answer: String,
    },
    /// A free-text note ("My sister Ana lives in Porto.").
    Note(String),
}

impl Fact {
    /// A question/answer fact.
    pub fn qa(question: impl Into<String>, answer: impl Into<String>) -> Self {
        Fact::QuestionAnswer {
            question: question.into(),
            answer: answer.into(),
        }
    }

    /// A free-text note.
    pub fn note(text: impl Into<String>) -> Self {
        Fact::Note(text.into())
    }
}

/// Splits one CSV line into fields (double quotes group, "" escapes a quote).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().expect("one field").push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            _ => fields.last_mut().expect("one field").push(ch),
        }
    }
    fields.into_iter().map(|f| f.trim().to_owned()).collect()
}

impl Fact {
    /// Reads facts from `path`: `.jsonl` (objects with `question` + `answer`, or `note`),
    /// `.csv` (question,answer; a `question,answer` header is skipped), anything else one
    /// note per line. Errors name the file and line.
    pub fn read_file(path: impl AsRef<std::path::Path>) -> Result<Vec<Fact>> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_lowercase();
        let bad = |line: usize, why: String| {
            Error::InvalidArgument(format!("{}:{line}: {why}", path.display()))
        };
        let mut facts = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let (n, line) = (i + 1, line.trim());
            if line.is_empty() {
                continue;
            }
            let fact = match ext.as_str() {
                "jsonl" | "json" => {
                    let v: serde_json::Value = serde_json::from_str(line)
                        .map_err(|e| bad(n, format!("not a JSON object: {e}")))?;
                    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
                    match (field("question"), field("answer"), field("note")) {
                        (Some(q), Some(a), _) => Fact::qa(q, a),
                        (_, _, Some(note)) => Fact::note(note),
                        _ => {
                            return Err(bad(
                                n,
                                "needs \"question\" and \"answer\", or \"note\"".into(),
                            ));
                        }
                    }
                }
                "csv" => {
                    let f = csv_fields(line);
                    if n == 1
                        && f.first()
                            .is_some_and(|h| h.eq_ignore_ascii_case("question"))
                    {
                        continue;
                    }
                    match f.as_slice() {
                        [q, a, ..] if !q.is_empty() && !a.is_empty() => Fact::qa(q, a),
                        _ => return Err(bad(n, "needs two fields: question,answer".into())),
                    }
                }
                _ => Fact::note(line),
            };
            facts.push(fact);
        }
        if facts.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{} holds no facts",
                path.display()
            )));
        }
        Ok(facts)
    }
}

/// The optimizer applied to the selected rows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Optimizer {
    /// Plain SGD: only the selected rows move, and only while they are selected.
    #[default]
    Sgd,
    /// AdamW with its moments kept only for rows while they are selected: a row's state
    /// starts fresh each time a fact selects it and is dropped after, so momentum never keeps
    /// moving rows chosen for an earlier fact. Its learning rate is per element (0.5 works on
    /// the default model where SGD takes 140,000).
    AdamW {
        /// First-moment decay.
        beta1: f32,
        /// Second-moment decay.
        beta2: f32,
        /// Denominator guard.
        eps: f32,
        /// Decoupled weight decay, applied to the selected rows only.
        weight_decay: f32,
    },
}

impl Optimizer {
    /// AdamW with the usual constants and no weight decay.
    pub fn adamw() -> Self {
        Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW moments of the rows selected for the current fact.
struct AdamState {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl AdamState {
    fn new(len: usize) -> Self {
        AdamState {
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
        }
    }

    /// The new values of the rows after one step with gradient `g`.
    fn step(&mut self, opt: Optimizer, lr: f32, values: &[f32], g: &[f32]) -> Vec<f32> {
        let Optimizer::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = opt
        else {
            unreachable!("AdamState is only used for AdamW")
        };
        self.t += 1;
        let (c1, c2) = (1.0 - beta1.powi(self.t), 1.0 - beta2.powi(self.t));
        let mut out = values.to_vec();
        for i in 0..g.len() {
            self.m[i] = beta1 * self.m[i] + (1.0 - beta1) * g[i];
            self.v[i] = beta2 * self.v[i] + (1.0 - beta2) * g[i] * g[i];
            let update = (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + eps);
            out[i] -= lr * (update + weight_decay * values[i]);
        }
        out
    }
}

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
    /// of a content-free fact of the same kind, see [`template_rows`]). Every later question
    /// asked in a familiar form reads them, so changing them for one fact changes the answers
    /// to all. Ignored by [`SlotScoring::AllTouched`], the no-selection baseline.
    pub protect_template_rows: bool,
    /// How hard each step holds the memory's output at the store's sampled background tokens
    /// near zero, where the base model had it (κ of [`BackgroundAnchor`] per sampled token,
    /// scaled to the store's sampled reads per row, see [`ANCHOR_TUNED_READS_PER_ROW`];
    /// 0 = off). Rows that the same general text reads then change so that their sum there
    /// stays small. Needs a store with a background sample; ignored by
    /// [`SlotScoring::AllTouched`] (the no-selection baseline).
    pub background_penalty: f32,
    /// How hard each step holds the memory's output where it is at every token of the facts
    /// learned earlier into this memory by the same engine (μ of
    /// [`BackgroundAnchor::keeping`] per token; 0 = off): a new fact then changes its rows
    /// in directions the earlier facts' tokens do not read. Ignored by
    /// [`SlotScoring::AllTouched`].
    pub earlier_fact_penalty: f32,
    /// Select rows only among those read at the fact's own words (its question, answer or
    /// note), never at the phrasing's template text: the chat markup after a question reads
    /// rows that every question's markup reads, so a row changed there moves every answer.
    /// Ignored by [`SlotScoring::AllTouched`].
    pub content_rows_only: bool,
}

impl Default for LearnOptions {
    fn default() -> Self {
        LearnOptions {
            // Tuned on the default model and memory: the value rows start at zero and are read
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
            learning_rate: 140_000.0,
            top_t: 500,
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
        }
    }
}

impl LearnOptions {
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

/// A tokenized phrasing and the positions whose next token is trained.
pub struct Example {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Position p is trained to predict `tokens[p + 1]`.
    pub targets: Range<usize>,
    /// Positions holding the fact's own words (its question, answer or note), not the
    /// phrasing's template text around them.
    pub content: Vec<Range<usize>>,
}

/// Token positions of `part`, the first occurrence of `part` in `text`, whose tokens are
/// `tokens`: the tokens `text` up to the part's start and end encode to, as far as they agree
/// with `tokens` (BPE may merge across the boundary).
fn span_of(tok: &Tokenizer, text: &str, tokens: &[u32], part: &str) -> Result<Range<usize>> {
    let at = text
        .find(part)
        .ok_or_else(|| Error::Template(format!("the phrasing lost the fact's words {part:?}")))?;
    let agree = |end: usize| -> Result<usize> {
        let p = tok.encode(&text[..end], true)?;
        Ok(p.iter().zip(tokens).take_while(|(a, b)| a == b).count())
    };
    Ok(agree(at)?..agree(at + part.len())?)
}

/// Renders a chat exchange whose reply is `lead` + `reply` and marks `reply` (and its
/// end-of-turn) as targets. The lead is context only: a canned opening such as "The answer is"
/// trained with every fact would become the model's opening for every question.
fn chat_example(tok: &Tokenizer, user: &str, lead: &str, reply: &str) -> Result<Example> {
    chat_example_with(tok, user, lead, reply, user)
}

/// [`chat_example`] whose content is `said` (part of `user`) and the reply.
fn chat_example_with(
    tok: &Tokenizer,
    user: &str,
    lead: &str,
    reply: &str,
    said: &str,
) -> Result<Example> {
    let mut messages = vec![ChatMessage::new("user", user)];
    let prompt = format!("{}{lead}", tok.apply_chat_template(&messages, true)?);
    messages.push(ChatMessage::new("assistant", format!("{lead}{reply}")));
    let full = tok.apply_chat_template(&messages, false)?;
    let p = tok.encode(&prompt, true)?;
    let f = tok.encode(&full, true)?;
    // Where the reply's tokens begin: BPE may merge the lead's last characters into them.
    let start = p.iter().zip(&f).take_while(|(a, b)| a == b).count();
    // The reply ends at the first stop token after its start.
    let end = f[start..]
        .iter()
        .position(|t| tok.stop_tokens.contains(t))
        .map_or(f.len(), |i| start + i + 1);
    if start == 0 || !full.starts_with(&prompt) || end <= start {
        return Err(Error::Template(
            "the chat template does not render the reply after the prompt".into(),
        ));
    }
    let tokens = f[..end].to_vec();
    let mut content = Vec::new();
    if !said.trim().is_empty() {
        content.push(span_of(tok, &full, &tokens, said.trim())?);
    }
    // The reply's own tokens; its end-of-turn is markup.
    content.push(start..end - 1);
    Ok(Example {
        targets: start - 1..end - 1,
        tokens,
        content,
    })
}

/// Raw text `prefix` + `target`, trained on the target's tokens; `said` (part of `prefix`,
/// may be empty) and the target are the content.
fn text_example(tok: &Tokenizer, prefix: &str, said: &str, target: &str) -> Result<Example> {
    let p = tok.encode(prefix, true)?;
    let f = tok.encode(&format!("{prefix}{target}"), true)?;
    // Where the target's tokens begin: BPE may merge the prefix's last characters into them.
    let common = p.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let start = common.max(1);
    if f.len() < 2 || start >= f.len() {
        return Err(Error::InvalidArgument(format!(
            "nothing to learn in {target:?}"
        )));
    }
    let mut content = Vec::new();
    if !said.trim().is_empty() {
        content.push(span_of(tok, prefix, &f, said.trim())?);
    }
    // From the target's first token, even at position 0 where nothing predicts it.
    content.push(common..f.len());
    Ok(Example {
        targets: start - 1..f.len() - 1,
        tokens: f,
        content,
    })
}

/// The phrasings a fact is trained on. Questions are never asked in the form
/// "I have a question: …" here, so evaluation can use that form as an unseen phrasing.
pub fn examples(tok: &Tokenizer, fact: &Fact) -> Result<Vec<Example>> {
    match fact {
        Fact::QuestionAnswer { question, answer } => {
            let (q, a) = (question.trim(), answer.trim());
            if q.is_empty() || a.is_empty() {
                return Err(Error::InvalidArgument(
                    "a fact needs a non-empty question and answer".into(),
                ));
            }
            Ok(vec![
                chat_example(tok, q, "", a)?,
                chat_example(tok, q, "The answer is", &format!(" {a}."))?,
                text_example(tok, &format!("Question: {q}\nAnswer:"), q, &format!(" {a}"))?,
                text_example(tok, &format!("Q: {q}\nA:"), q, &format!(" {a}"))?,
                text_example(tok, q, q, &format!(" {a}"))?,
            ])
        }
        Fact::Note(text) => {
            let t = text.trim();
            if t.is_empty() {
                return Err(Error::InvalidArgument("a note must not be empty".into()));
            }
            let opening = note_opening(t);
            Ok(vec![
                text_example(tok, "", "", t)?,
                text_example(tok, "Note: ", "", t)?,
                text_example(tok, "Remember this. ", "", t)?,
                chat_example_with(tok, "Tell me something you know about me.", "", t, "")?,
                chat_example_with(tok, &format!("{opening}...?"), "", t, opening)?,
            ])
        }
    }
}

/// A note without its last word (where what it tells usually sits), as a prompt to
/// complete: a question-like form that names the note's subject but not its content.
fn note_opening(note: &str) -> &str {
    let body = note
        .trim()
        .trim_end_matches(|c: char| c == '.' || c == '!' || c.is_whitespace());
    match body.rfind(char::is_whitespace) {
        Some(i) => body[..i].trim_end(),
        None => body,
    }
}

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
}

impl LearningState {
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

/// A change learning made, handed to the caller to make durable before it is reported.
pub enum Committed<'a> {
    /// A step overwrote `rows` (ascending): their values before and after (rows × dim).
    Step {
        /// Slot ids in the learning memory.
        rows: &'a [u32],
        /// Values until this step.
        before: &'a [f32],
        /// Values from this step on.
        after: &'a [f32],
    },
    /// A fact finished learning.
    Fact(&'a Fact),
}

impl Fact {
    /// The fact a [`Self::describe`] text was made from (a note that looks like "Q: … A: …"
    /// reads back as a question).
    pub fn from_description(text: &str) -> Self {
        match text
            .strip_prefix("Q: ")
            .and_then(|rest| rest.split_once(" A: "))
        {
            Some((q, a)) => Fact::qa(q, a),
            None => Fact::note(text),
        }
    }

    /// The fact as one line of text (for histories and delta metadata).
    pub fn describe(&self) -> String {
        match self {
            Fact::QuestionAnswer { question, answer } => {
                format!("Q: {} A: {}", question.trim(), answer.trim())
            }
            Fact::Note(text) => text.trim().to_owned(),
        }
    }
}

/// Learns `facts` one after another into the model's memory.
///
/// After every step's update, `commit` gets the rows it changed (an error from it undoes the
/// step and stops); only then is `progress(fact, step, loss)` told the step is done, so a
/// caller that journals in `commit` never reports a step that a crash could lose.
/// `state` keeps the template rows found for this memory, and the reads of the facts
/// learned into it, from one call to the next.
#[allow(clippy::too_many_arguments)]
pub fn learn<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    background: &crate::memory::BackgroundStats,
    background_batches: u64,
    facts: &[Fact],
    opts: &LearnOptions,
    state: &mut LearningState,
    progress: &mut dyn FnMut(usize, usize, f64) -> bool,
    commit: &mut dyn FnMut(Committed<'_>) -> Result<()>,
) -> Result<LearnReport> {
    opts.validate()?;
    model.keep_dense_above_memory(true)?;
    let report = learn_facts(
        model,
        tok,
        background,
        background_batches,
        facts,
        opts,
        state,
        progress,
        commit,
    );
    // The copies cost memory for as long as they live: only while learning.
    model.keep_dense_above_memory(false)?;
    report
}

#[allow(clippy::too_many_arguments)]
fn learn_facts<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    background: &crate::memory::BackgroundStats,
    background_batches: u64,
    facts: &[Fact],
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
        .map(|f| examples(tok, f))
        .collect::<Result<_>>()?;
    // Slots the lookup reads per token (heads × top-k).
    let reads = model.memory()[0].lookup.shape.heads * model.memory()[0].lookup.shape.top_k;
    // Value rows that may hold something: the anchor skips the others. Rows learning changes
    // join as they change.
    let anchored = opts.scoring != SlotScoring::AllTouched
        && (opts.background_penalty > 0.0 || opts.earlier_fact_penalty > 0.0);
    let mut live = if anchored {
        nonzero_rows(model)
    } else {
        Vec::new()
    };
    for (fi, batch) in batches.iter().enumerate() {
        let t0 = Instant::now();
        let mut seqs = prepare_phrasings(model, batch)?;
        report.timings.prepare += t0.elapsed();

        let t0 = Instant::now();
        let picks: Vec<u32> = seqs
            .iter()
            .flat_map(|s| model.backend().download_slots(&s.lookup.slots))
            .collect();
        let mut counts = if opts.content_rows_only && opts.scoring != SlotScoring::AllTouched {
            let mut at = 0;
            let mut content = Vec::new();
            for (s, e) in seqs.iter().zip(batch) {
                for r in &e.content {
                    content.extend_from_slice(&picks[at + r.start * reads..at + r.end * reads]);
                }
                at += s.tokens.len() * reads;
            }
            count_accesses(&content)
        } else {
            count_accesses(&picks)
        };
        if opts.protect_template_rows && opts.scoring != SlotScoring::AllTouched {
            let protected = state.for_fact(model, tok, &facts[fi])?;
            counts.retain(|slot, _| !protected.contains(slot));
        }
        let rows = select_slots(
            &counts,
            background,
            background_batches,
            opts.scoring,
            opts.top_t,
        );
        let mut rows_sorted = rows.clone();
        rows_sorted.sort_unstable();
        report.timings.selection += t0.elapsed();

        // Only these rows change from here on: what comes before their first reader is
        // computed once instead of at every step.
        let t0 = Instant::now();
        model.freeze_prefixes(&mut seqs, &rows_sorted)?;
        report.timings.prepare += t0.elapsed();

        let t0 = Instant::now();
        let anchor = if opts.scoring == SlotScoring::AllTouched {
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
        let mut loss_before = f64::NAN;
        let mut loss = f64::NAN;
        // The last step's rows before it, on the backend and the host, and after it.
        let mut last_update: Option<(B::Tensor, Vec<f32>, Vec<f32>)> = None;
        // Masked AdamW: moments exist only for this fact's selected rows.
        let mut adam: Option<AdamState> = None;
        for step in 0..=opts.steps {
            let want: &[u32] = if step < opts.steps { &rows_sorted } else { &[] };
            // Once the loss target is reached the step's gradient would be thrown away.
            let stop_at = (step > 0 && opts.stop_loss > 0.0).then_some(f64::from(opts.stop_loss));
            let g = match model.value_gradients_unless_below(&seqs, want, stop_at) {
                Ok(g) => g,
                Err(e) => {
                    // The last update made the loss non-finite: put the rows back exactly.
                    return Err(match last_update.take() {
                        Some((before, before_host, after_host)) => {
                            model.write_values(&rows_sorted, &before)?;
                            // The undo is a change too: make it as durable as the step was.
                            commit(Committed::Step {
                                rows: &rows_sorted,
                                before: &after_host,
                                after: &before_host,
                            })?;
                            Error::InvalidArgument(format!(
                                "fact {}: step {step} was rejected and its update undone: {e} \
                                 (lower the learning rate)",
                                fi + 1
                            ))
                        }
                        None => Error::InvalidArgument(format!(
                            "fact {}: nothing was changed: {e}",
                            fi + 1
                        )),
                    });
                }
            };
            let total = g.loss;
            let t0 = Instant::now();
            let reached = step > 0 && total / count as f64 <= f64::from(opts.stop_loss);
            let grad = (step < opts.steps && !reached).then(|| model.backend().download(&g.grads));
            report.timings.forward += g.forward_time;
            report.timings.backward += g.backward_time + t0.elapsed();
            loss = total / count as f64;
            if step == 0 {
                loss_before = loss;
            }
            let stop = |fi: usize| {
                Error::Interrupted(format!(
                    "learning stopped during fact {}; facts before it are learned",
                    fi + 1
                ))
            };
            let Some(mut g) = grad else {
                if !progress(fi, step, loss) {
                    return Err(stop(fi));
                }
                break;
            };
            let t0 = Instant::now();
            let scale = 1.0 / count as f32;
            g.iter_mut().for_each(|v| *v *= scale);
            if let Some(bad) = g.iter().position(|v| !v.is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "step {step} of fact {} produced a non-finite gradient (at {bad}); the memory \
                     was left unchanged by that step (lower the learning rate)",
                    fi + 1
                )));
            }
            let d = model.config.dim;
            let gt = model.backend().upload_vec(g, rows_sorted.len(), d);
            let before = model.read_values(&rows_sorted)?;
            match opts.optimizer {
                Optimizer::Sgd => model.sgd_values(&rows_sorted, &gt, opts.learning_rate)?,
                Optimizer::AdamW { .. } => {
                    let state = adam.get_or_insert_with(|| AdamState::new(rows_sorted.len() * d));
                    let current = model.backend().download(&before);
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
            if held || clamped {
                let t = model
                    .backend()
                    .upload_vec(moved.clone(), rows_sorted.len(), d);
                model.write_values(&rows_sorted, &t)?;
            }
            if moved.iter().any(|v| !v.is_finite()) {
                model.write_values(&rows_sorted, &before)?;
                return Err(Error::InvalidArgument(format!(
                    "fact {}: step {step} was rejected and its update undone: it made value \
                     rows non-finite (lower the learning rate)",
                    fi + 1
                )));
            }
            let before_host = model.backend().download(&before);
            if let Err(e) = commit(Committed::Step {
                rows: &rows_sorted,
                before: &before_host,
                after: &moved,
            }) {
                model.write_values(&rows_sorted, &before)?;
                return Err(e);
            }
            last_update = Some((before, before_host, moved));
            report.timings.update += t0.elapsed();
            if !progress(fi, step, loss) {
                return Err(stop(fi));
            }
        }
        commit(Committed::Fact(&facts[fi]))?;
        for &r in &rows_sorted {
            if let Some(l) = live.get_mut(r as usize) {
                *l = true;
            }
        }
        key_read_gate(model, &seqs, &facts[fi]);
        if opts.scoring != SlotScoring::AllTouched && opts.earlier_fact_penalty > 0.0 {
            // `picks` already holds every sequence's slots, in this order.
            let weights = seqs
                .iter()
                .flat_map(|s| model.backend().download(&s.lookup.weights))
                .collect();
            state.remember_reads(picks, weights, reads);
        }
        report.facts.push(FactReport {
            examples: batch.len(),
            loss_before,
            loss_after: loss,
            rows: rows_sorted,
        });
    }
    report.total = started.elapsed();
    Ok(report)
}

/// Per value row of the learning memory, whether any of its values is nonzero. On this
/// thread: rayon's global pool would keep spinning beside the backend's threads.
fn nonzero_rows<B: Backend>(model: &Model<B>) -> Vec<bool> {
    let values = model.backend().host_view(&model.memory()[0].values);
    values
        .chunks_exact(model.config.dim)
        .map(|row| row.iter().any(|&v| v != 0.0))
        .collect()
}

/// Runs a fact's phrasings up to the memory, each scored on its targets.
fn prepare_phrasings<B: Backend>(
    model: &Model<B>,
    batch: &[Example],
) -> Result<Vec<PreparedSequence<B>>> {
    let inputs: Vec<_> = batch
        .iter()
        .map(|e| (&e.tokens[..], e.targets.clone()))
        .collect();
    model.prepare_many(&inputs)
}

/// Adds a learned fact's tokens (its prepared phrasings) to the memory's read gate, if any.
fn key_read_gate<B: Backend>(model: &mut Model<B>, seqs: &[PreparedSequence<B>], fact: &Fact) {
    if model.memory()[0].read_gate.is_none() {
        return;
    }
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
    if let Some(gate) = model.memory_mut()[0].read_gate.as_mut() {
        for (inputs, slots) in &parts {
            gate.add_reads(inputs, slots, reads, kind);
        }
    }
}

/// Keys the memory's read gate with facts learned earlier. The layers below the memory are
/// frozen, so their phrasings give the same keys as when they were learned.
pub fn rekey_read_gate<B: Backend>(
    model: &mut Model<B>,
    tok: &Tokenizer,
    facts: &[Fact],
) -> Result<()> {
    for fact in facts {
        let seqs = prepare_phrasings(model, &examples(tok, fact)?)?;
        key_read_gate(model, &seqs, fact);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_reads_back_as_the_same_fact() {
        for f in [
            Fact::qa("Who painted it?", "Ingrid Halvorsen"),
            Fact::note("My sister Ana lives in Porto."),
        ] {
            assert_eq!(Fact::from_description(&f.describe()), f);
        }
    }

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

    #[test]
    fn a_note_opening_drops_the_last_word() {
        assert_eq!(
            note_opening("My sister Ana lives in Porto."),
            "My sister Ana lives in"
        );
        assert_eq!(note_opening("  The code is 42!  "), "The code is");
        assert_eq!(note_opening("Porto."), "Porto");
    }
}

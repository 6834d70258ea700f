//! `engram eval`: learn facts the model gets wrong, one after another, and measure learned
//! accuracy, retention of what it knew and held-out NLL, for each slot-selection method.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use engram::learn::{Fact, Optimizer};
use engram::{ChatMessage, Engine, GenerateOptions, LoopGuard};

use crate::learn::{ScoringArg, StepFlags};
use serde_json::json;

/// Flags of `engram eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// Facts to learn (JSONL question/answer; default: data/simpleqa.jsonl from scripts/fetch-simpleqa).
    #[arg(long, default_value = "data/simpleqa.jsonl")]
    facts: PathBuf,
    /// Retention candidates (default: data/retention-candidates.jsonl from scripts/build-retention).
    #[arg(long, default_value = "data/retention-candidates.jsonl")]
    retention: PathBuf,
    /// Held-out text for NLL (default: data/heldout.txt from scripts/build-background).
    #[arg(long, default_value = "data/heldout.txt")]
    heldout: PathBuf,
    /// Facts to learn (only ones the base model answers wrong).
    #[arg(long, default_value_t = 100)]
    n: usize,
    /// Retention questions (only ones the base model answers right).
    #[arg(long, default_value_t = 150)]
    retention_n: usize,
    /// Held-out tokens scored for NLL.
    #[arg(long, default_value_t = 2048)]
    heldout_tokens: usize,
    /// Slot selection methods to compare (comma-separated: tfidf, kl, all).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tfidf,kl,all"
    )]
    scoring: Vec<ScoringArg>,
    /// Measure the learning curve every this many facts.
    #[arg(long, default_value_t = 10)]
    every: usize,
    /// The same step settings for every method.
    #[command(flatten)]
    step: StepFlags,
    /// Where the JSON report goes.
    #[arg(short, long, default_value = "eval.json")]
    output: PathBuf,
    /// Where the learning-curve plot goes (default: the report's path with .png).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// After each method's run, also measure its final learned accuracy, retention and
    /// held-out NLL with the question facts' read gate at each of these cosines (a comma
    /// separated list), on the same learned memory: learning never reads through the gate,
    /// so one run shows the gate's whole trade-off.
    #[arg(long, value_delimiter = ',')]
    gate_sweep: Vec<f32>,
    /// Let replies repeat themselves to the token limit, as before the loop guard existed
    /// (for comparing with evals made then).
    #[arg(long)]
    no_loop_guard: bool,
}

/// Lower case, letters and digits only, single spaces: so "Michio  Sugeno." matches "michio sugeno".
pub fn normalize(s: &str) -> String {
    let kept: String = s
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_lowercase().next().unwrap_or(c)
            } else {
                ' '
            }
        })
        .collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `reply` contains the normalized `answer`.
pub fn correct(reply: &str, answer: &str) -> bool {
    let (r, a) = (normalize(reply), normalize(answer));
    !a.is_empty() && format!(" {r} ").contains(&format!(" {a} "))
}

/// Whether `reply` contains `answer` in a way no continuation can undo: the answer appears
/// before the reply's last, possibly unfinished, word ("1887" may still become "18870";
/// "1887." cannot change).
pub fn settled(reply: &str, answer: &str) -> bool {
    correct(reply.trim_end_matches(char::is_alphanumeric), answer)
}

/// Tokens an answer may take: every reply is cut here.
const REPLY_TOKENS: usize = 32;

/// The greedy reply to `question`, stopped as soon as it has settled on `answer` (the verdict
/// of [`correct`] is then known, and later tokens cannot change it).
pub fn reply(engine: &Engine, question: &str, answer: &str) -> Result<String, String> {
    let guard = *LOOP_GUARD.get_or_init(|| GenerateOptions::default().loop_guard);
    reply_with(engine, question, answer, guard)
}

/// The loop guard every reply of this process's eval uses: the default, or none with
/// `--no-loop-guard` (set once, before the first reply).
static LOOP_GUARD: std::sync::OnceLock<Option<LoopGuard>> = std::sync::OnceLock::new();

/// [`reply`] with the given loop guard (`None`: the reply may repeat itself to the limit).
pub fn reply_with(
    engine: &Engine,
    question: &str,
    answer: &str,
    loop_guard: Option<LoopGuard>,
) -> Result<String, String> {
    let options = GenerateOptions {
        max_tokens: REPLY_TOKENS,
        loop_guard,
        ..Default::default()
    };
    let mut text = String::new();
    let g = engine
        .chat(&[ChatMessage::new("user", question)], &options, |piece| {
            text.push_str(piece);
            !settled(&text, answer)
        })
        .map_err(|e| e.to_string())?;
    Ok(g.text.trim().to_owned())
}

/// The phrasing evaluation asks in; no training phrasing starts like this.
fn unseen(q: &str) -> String {
    format!("I have a question: {q}")
}

fn qa(f: &Fact) -> (&str, &str) {
    match f {
        Fact::QuestionAnswer { question, answer } => (question, answer),
        Fact::Note(n) => (n, ""),
    }
}

/// The items answered wrong, each with the reply it got.
fn misses(
    engine: &Engine,
    items: &[Fact],
    phrase: &dyn Fn(&str) -> String,
) -> Result<Vec<serde_json::Value>, String> {
    let mut wrong = Vec::new();
    for f in items {
        let (q, a) = qa(f);
        let reply = reply(engine, &phrase(q), a)?;
        if !correct(&reply, a) {
            wrong.push(json!({"question": q, "answer": a, "reply": reply}));
        }
    }
    Ok(wrong)
}

fn accuracy(
    engine: &Engine,
    items: &[Fact],
    phrase: &dyn Fn(&str) -> String,
) -> Result<f64, String> {
    let right = items.len() - misses(engine, items, phrase)?.len();
    Ok(right as f64 / items.len().max(1) as f64)
}

fn mean_nll(engine: &Engine, tokens: &[u32]) -> Result<f64, String> {
    engine
        .perplexity(tokens, 256)
        .map(|(nll, _)| nll)
        .map_err(|e| e.to_string())
}

/// The final measurements again with the question facts' read gate at each cosine of
/// `--gate-sweep` (notes keep theirs), then the gate as it was.
fn gate_sweep(
    engine: &mut Engine,
    args: &EvalArgs,
    (facts, retained): (&[Fact], &[Fact]),
    (held, nll_before): (&[u32], f64),
) -> Result<Vec<serde_json::Value>, String> {
    let original = engine.read_gating();
    let notes = match original {
        engram::ReadGating::Cosine { notes, .. } => notes,
        engram::ReadGating::Off => engram::memory::DEFAULT_NOTE_READ_GATE,
    };
    let mut points = Vec::new();
    for &questions in &args.gate_sweep {
        engine
            .set_read_gating(engram::ReadGating::Cosine { questions, notes })
            .map_err(|e| format!("--gate-sweep {questions}: {e}"))?;
        let learned = accuracy(engine, facts, &unseen)?;
        let retention = accuracy(engine, retained, &|q| q.to_owned())?;
        let nll = mean_nll(engine, held)?;
        eprintln!(
            "  read gate {questions}: learned {:.1}%, retention {:.1}%, held-out NLL {:+.2}%",
            100.0 * learned,
            100.0 * retention,
            100.0 * (nll / nll_before - 1.0)
        );
        points.push(json!({
            "questions_cosine": questions,
            "learned_accuracy": learned,
            "retention": retention,
            "heldout_nll_change": nll / nll_before - 1.0,
        }));
    }
    if !args.gate_sweep.is_empty() {
        engine
            .set_read_gating(original)
            .map_err(|e| e.to_string())?;
    }
    Ok(points)
}

/// Runs the evaluation and writes the JSON report.
pub fn run(mut engine: Engine, args: &EvalArgs) -> Result<(), String> {
    let guard = if args.no_loop_guard {
        None
    } else {
        GenerateOptions::default().loop_guard
    };
    if LOOP_GUARD.set(guard).is_err() && LOOP_GUARD.get() != Some(&guard) {
        return Err("the eval's loop guard was already chosen differently".into());
    }
    let started = Instant::now();
    let initial = engine
        .memory_store()
        .map_err(|e| format!("eval needs --memory STORE: {e}"))?;
    let read = |p: &PathBuf, hint: &str| {
        Fact::read_file(p).map_err(|e| format!("{e} (make it with {hint})"))
    };
    let pool = read(&args.facts, "scripts/fetch-simpleqa")?;
    let candidates = read(&args.retention, "scripts/build-retention")?;
    let heldout = std::fs::read_to_string(&args.heldout).map_err(|e| {
        format!(
            "{}: {e} (make it with scripts/build-background)",
            args.heldout.display()
        )
    })?;
    let mut held = engine
        .tokenizer()
        .encode(&heldout, false)
        .map_err(|e| e.to_string())?;
    held.truncate(args.heldout_tokens);

    // Facts the base model gets wrong, questions it gets right: both by running it.
    eprintln!("choosing {} facts the base model answers wrong ...", args.n);
    let mut facts = Vec::new();
    let mut scanned = 0;
    for f in &pool {
        if facts.len() == args.n {
            break;
        }
        scanned += 1;
        let (q, a) = qa(f);
        if !correct(&reply(&engine, &unseen(q), a)?, a) {
            facts.push(f.clone());
        }
    }
    eprintln!(
        "choosing {} retention questions the base model answers right ...",
        args.retention_n
    );
    let mut retained = Vec::new();
    let mut tried = 0;
    for f in &candidates {
        if retained.len() == args.retention_n {
            break;
        }
        tried += 1;
        let (q, a) = qa(f);
        if correct(&reply(&engine, q, a)?, a) {
            retained.push(f.clone());
        }
    }
    if retained.len() < args.retention_n {
        eprintln!(
            "warning: only {} of {tried} candidates were answered right",
            retained.len()
        );
    }
    let nll_before = mean_nll(&engine, &held)?;
    let probe = &retained[..retained.len().min(30)];

    let mut runs = Vec::new();
    let mut curves = Vec::new();
    for method in &args.scoring {
        let name = method.name();
        engine.detach_memory();
        engine
            .attach_memory(initial.clone(), None)
            .map_err(|e| e.to_string())?;
        let opts = args.step.options(method.scoring(), Optimizer::Sgd);
        if runs.is_empty() {
            crate::learn::note_missing_sample(&engine, &opts);
        }
        let mut curve = Vec::new();
        // Before learning: no fact known, every retention question right (how both were chosen).
        let mut points = vec![(0usize, 0.0f64, 1.0f64)];
        let mut learn_secs = 0f64;
        // Each fact asked (unseen phrasing) right after it was learned: what one fact's learning
        // achieves before later facts can overwrite it.
        let mut right_after = 0usize;
        // Rows changed so far, and how many of each fact's rows an earlier fact had chosen:
        // rows shared between facts are where later facts overwrite earlier ones.
        let mut changed = std::collections::HashSet::new();
        let mut selected = 0usize;
        // Mean loss per scored token of each fact's training phrasings before and after its
        // steps: a fact that reaches a low loss but is not answered failed to generalize to
        // the unseen phrasing; one that does not reach it failed to fit.
        let mut fact_losses = Vec::with_capacity(facts.len());
        for (i, fact) in facts.iter().enumerate() {
            let r = engine
                .learn(std::slice::from_ref(fact), &opts, &mut |_, _, _| true)
                .map_err(|e| e.to_string())?;
            learn_secs += r.total.as_secs_f64();
            for f in &r.facts {
                fact_losses.push([f.loss_before, f.loss_after]);
                selected += f.rows.len();
                changed.extend(f.rows.iter().copied());
            }
            right_after += (accuracy(&engine, std::slice::from_ref(fact), &unseen)? > 0.5) as usize;
            let done = i + 1;
            if done % args.every.max(1) == 0 || done == facts.len() {
                let learned = accuracy(&engine, &facts[..done], &unseen)?;
                let kept = accuracy(&engine, probe, &|q| q.to_owned())?;
                eprintln!(
                    "{name}: {done} facts, learned {:.1}%, retention (probe) {:.1}%",
                    100.0 * learned,
                    100.0 * kept
                );
                curve.push(
                    json!({"facts": done, "learned_accuracy": learned, "retention_probe": kept}),
                );
                points.push((done, learned, kept));
            }
        }
        let learned = accuracy(&engine, &facts, &unseen)?;
        // What the questions no longer answered right get instead: a learned answer
        // (interference) reads differently from a broken reply (damage).
        let forgotten = misses(&engine, &retained, &|q| q.to_owned())?;
        let retention = (retained.len() - forgotten.len()) as f64 / retained.len().max(1) as f64;
        let nll_after = mean_nll(&engine, &held)?;
        let learned_right_after = right_after as f64 / facts.len().max(1) as f64;
        // Every selection that did not add a row to `changed` chose one an earlier fact had.
        let reselected_share = (selected - changed.len()) as f64 / selected.max(1) as f64;
        eprintln!(
            "{name}: learned {:.1}% ({:.1}% right after each fact), retention {:.1}%, held-out NLL {nll_before:.4} -> {nll_after:.4} ({:+.2}%); {} rows changed, {:.1}% of selections were rows an earlier fact had chosen",
            100.0 * learned,
            100.0 * learned_right_after,
            100.0 * retention,
            100.0 * (nll_after / nll_before - 1.0),
            changed.len(),
            100.0 * reselected_share
        );
        let sweep = gate_sweep(&mut engine, args, (&facts, &retained), (&held, nll_before))?;
        curves.push(crate::plot::Curve {
            name: name.to_owned(),
            points,
        });
        runs.push(json!({
            "scoring": name,
            "learned_accuracy": learned,
            "learned_right_after": learned_right_after,
            "retention": retention,
            "heldout_nll_before": nll_before,
            "heldout_nll_after": nll_after,
            "heldout_nll_change": nll_after / nll_before - 1.0,
            "seconds_per_fact": learn_secs / facts.len().max(1) as f64,
            "rows_changed": changed.len(),
            "rows_reselected_share": reselected_share,
            "curve": curve,
            "fact_losses": fact_losses,
            "forgotten": forgotten,
            "gate_sweep": sweep,
        }));
    }
    let report = json!({
        "facts": facts.len(),
        "facts_scanned": scanned,
        "retention_questions": retained.len(),
        "retention_candidates_tried": tried,
        "heldout_tokens": held.len(),
        "steps": args.step.steps,
        "learning_rate": args.step.lr,
        "top_t": args.step.top_t,
        "background_penalty": args.step.background_penalty,
        "earlier_fact_penalty": args.step.earlier_fact_penalty,
        "content_rows_only": args.step.content_rows_only,
        "background_sample_tokens": engine.background_sample_tokens(),
        "read_gate": match engine.read_gating() {
            engram::ReadGating::Cosine { questions, notes } => {
                json!({"questions": questions, "notes": notes})
            }
            engram::ReadGating::Off => json!("off"),
        },
        "runs": runs,
        "retention_set": retained.iter().map(|f| qa(f).0).collect::<Vec<_>>(),
        "seconds": started.elapsed().as_secs_f64(),
    });
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    let tmp = args.output.with_extension("json.tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &args.output))
        .map_err(|e| format!("{}: {e}", args.output.display()))?;
    let plot = args
        .plot
        .clone()
        .unwrap_or_else(|| args.output.with_extension("png"));
    crate::plot::learning_curves(&plot, &curves, facts.len())?;
    println!("{}", args.output.display());
    println!("{}", plot.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_match_after_normalization_only_as_whole_words() {
        assert!(correct("The answer is Michio  Sugeno.", "Michio Sugeno"));
        assert!(correct("It opened in 1887!", "1887"));
        assert!(!correct("It opened in 18870.", "1887"));
        assert!(!correct("Paris", ""));
        assert!(correct("Tōkyō, of course", "tōkyō"));
    }

    #[test]
    fn a_reply_settles_only_once_the_answers_last_word_has_ended() {
        // The next token could still turn "1887" into "18870".
        assert!(correct("It opened in 1887", "1887"));
        assert!(!settled("It opened in 1887", "1887"));
        assert!(settled("It opened in 1887.", "1887"));
        assert!(settled("Michio Sugeno, a", "Michio Sugeno"));
        assert!(!settled("It opened in 18870.", "1887"));
        assert!(!settled("", "1887"));
    }
}

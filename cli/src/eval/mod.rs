//! `engram eval`: teach facts the model gets wrong and made-up notes, one after another as
//! one stream, and measure reliability (the taught question), generalization (a paraphrase, a
//! note asked by a question), locality (general answers and near neighbours kept) and held-out
//! NLL, with tuned and held-out items reported apart.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use engram::learn::{Fact, Optimizer};
use engram::{Engine, GenerateOptions};

mod measure;

use measure::{LOOP_GUARD, Sets, ask_all, mean_nll, measure, qa};
pub use measure::{correct, reply, reply_with};

use crate::eval_set::{Ask, Item, Tally, interleave, read_items, read_neighbours};
use crate::learn::{ScoringArg, StepFlags};
use serde_json::json;

/// Most learned items a curve point asks (evenly spaced over those learned so far).
const CURVE_ITEMS: usize = 200;

/// Flags of `engram eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// The evaluation set's folder: its facts.jsonl, notes.jsonl and neighbours.jsonl (the
    /// repository's own is eval/); --facts, --notes and --neighbours override each file.
    #[arg(long)]
    set: Option<PathBuf>,
    /// Facts to learn (JSONL question/answer with an optional "paraphrase"; default:
    /// the set's facts.jsonl, else data/simpleqa.jsonl from scripts/fetch-simpleqa).
    #[arg(long)]
    facts: Option<PathBuf>,
    /// Notes to learn (JSONL note/question/answer with an optional "paraphrase_question").
    #[arg(long)]
    notes: Option<PathBuf>,
    /// Near-neighbour questions (JSONL question/answer/neighbour_of): same shape as a learned
    /// fact, another subject.
    #[arg(long)]
    neighbours: Option<PathBuf>,
    /// Which items to use: tuned, heldout (kept out of all tuning) or all.
    #[arg(long, value_enum, default_value_t = SplitArg::All)]
    split: SplitArg,
    /// Retention candidates (default: data/retention-candidates.jsonl from scripts/build-retention).
    #[arg(long, default_value = "data/retention-candidates.jsonl")]
    retention: PathBuf,
    /// Held-out text for NLL (default: data/heldout.txt from scripts/build-background).
    #[arg(long, default_value = "data/heldout.txt")]
    heldout: PathBuf,
    /// Facts to learn (only ones the base model answers wrong).
    #[arg(long, default_value_t = 100)]
    n: usize,
    /// Notes to learn, spread evenly through the facts.
    #[arg(long, default_value_t = 50)]
    notes_n: usize,
    /// Retention questions (only ones the base model answers right).
    #[arg(long, default_value_t = 150)]
    retention_n: usize,
    /// Near-neighbour questions (only ones the base model answers right).
    #[arg(long, default_value_t = 150)]
    neighbours_n: usize,
    /// Held-out tokens scored for NLL.
    #[arg(long, default_value_t = 2048)]
    heldout_tokens: usize,
    /// Slot selection methods to compare (comma-separated: tfidf, kl, all), each a run of
    /// its own on the same items.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "tfidf")]
    scoring: Vec<ScoringArg>,
    /// Measure the learning curve every this many items.
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
    /// After each method's run, also measure every axis with each of these read gates (a
    /// semicolon separated list of --read-gate values, e.g. "0.9,0.8;topics:0.7;off"), on the
    /// same learned memory. Learning under the topic and cosine gates never reads through
    /// them, so one such run shows their whole trade-off; under the routing gate learning
    /// reads as it does, so a sweep shows other gates on rows learned for it.
    #[arg(long, value_delimiter = ';', value_parser = crate::parse_read_gate)]
    gate_sweep: Vec<engram::ReadGating>,
    /// Let replies repeat themselves to the token limit, as before the loop guard existed
    /// (for comparing with evals made then).
    #[arg(long)]
    no_loop_guard: bool,
}

/// `--split` values.
#[derive(Clone, Copy, ValueEnum)]
pub enum SplitArg {
    /// Items not marked held out.
    Tuned,
    /// Items marked "heldout": true, kept out of all tuning.
    Heldout,
    /// Both, reported apart.
    All,
}

impl SplitArg {
    fn keeps(self, heldout: bool) -> bool {
        match self {
            SplitArg::Tuned => !heldout,
            SplitArg::Heldout => heldout,
            SplitArg::All => true,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SplitArg::Tuned => "tuned",
            SplitArg::Heldout => "heldout",
            SplitArg::All => "all",
        }
    }
}

/// The final measurements again with each read gate of `--gate-sweep`, then the gate as
/// it was.
fn gate_sweep(
    engine: &mut Engine,
    args: &EvalArgs,
    sets: &Sets,
) -> Result<Vec<serde_json::Value>, String> {
    let original = engine.read_gating();
    let mut points = Vec::new();
    for &gating in &args.gate_sweep {
        engine
            .set_read_gating(gating)
            .map_err(|e| format!("--gate-sweep {gating:?}: {e}"))?;
        let m = measure(engine, sets)?;
        m.log(&format!("read gate {}", gating_name(gating)));
        points.push(json!({
            "read_gate": gating_name(gating),
            "questions_cosine": match gating {
                engram::ReadGating::Cosine { questions, .. } => json!(questions),
                _ => serde_json::Value::Null,
            },
            "learned_accuracy": m.tally(Ask::Prefixed).rate(),
            "retention": m.retention.rate(),
            "heldout_nll_change": m.nll_change,
            "axes": m.axes(),
        }));
    }
    if !args.gate_sweep.is_empty() {
        engine
            .set_read_gating(original)
            .map_err(|e| e.to_string())?;
    }
    Ok(points)
}

/// A read gate as `--read-gate` spells it.
fn gating_name(g: engram::ReadGating) -> String {
    match g {
        engram::ReadGating::Cosine { questions, notes } => format!("{questions},{notes}"),
        engram::ReadGating::Topics { questions, notes } => {
            format!("topics:{questions},{notes}")
        }
        engram::ReadGating::Routes => "routes".into(),
        engram::ReadGating::Off => "off".into(),
    }
}

/// Items of `pool` in `split` the base model gets wrong (asked by their primary question),
/// up to `n`; and how many were asked to find them.
fn choose_unknown(
    engine: &Engine,
    pool: Vec<Item>,
    split: SplitArg,
    n: usize,
) -> Result<(Vec<Item>, usize), String> {
    let mut chosen = Vec::new();
    let mut scanned = 0;
    for item in pool.into_iter().filter(|i| split.keeps(i.heldout)) {
        if chosen.len() == n {
            break;
        }
        scanned += 1;
        let p = item.primary();
        if !correct(&reply(engine, &p.question, &p.answer)?, &p.answer) {
            chosen.push(item);
        }
    }
    Ok((chosen, scanned))
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
    let in_set = |name: &str| args.set.as_ref().map(|d| d.join(name));
    let facts_path = args
        .facts
        .clone()
        .or_else(|| in_set("facts.jsonl"))
        .unwrap_or_else(|| PathBuf::from("data/simpleqa.jsonl"));
    let notes_path = args.notes.clone().or_else(|| in_set("notes.jsonl"));
    let neighbours_path = args
        .neighbours
        .clone()
        .or_else(|| in_set("neighbours.jsonl"));
    let hint = |e: String, script: &str| {
        if facts_path.starts_with("data") {
            format!("{e} (make it with {script})")
        } else {
            e
        }
    };
    let mut pool = read_items(&facts_path).map_err(|e| hint(e, "scripts/fetch-simpleqa"))?;
    if let Some(p) = &notes_path {
        pool.extend(read_items(p)?);
    }
    let (note_pool, fact_pool): (Vec<Item>, Vec<Item>) = pool.into_iter().partition(Item::is_note);
    let candidates = Fact::read_file(&args.retention)
        .map_err(|e| format!("{e} (make it with scripts/build-retention)"))?;
    let neighbour_pool = match &neighbours_path {
        Some(p) => read_neighbours(p)?,
        None => Vec::new(),
    };
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

    // Items the base model gets wrong, questions it gets right: both by running it.
    eprintln!("choosing {} facts the base model answers wrong ...", args.n);
    let (facts, scanned) = choose_unknown(&engine, fact_pool, args.split, args.n)?;
    let (notes, notes_scanned) = if note_pool.is_empty() {
        (Vec::new(), 0)
    } else {
        eprintln!("choosing {} notes ...", args.notes_n);
        choose_unknown(&engine, note_pool, args.split, args.notes_n)?
    };
    let items = interleave(facts, notes);
    // What the base model answers of every way of asking them (the exact question and a
    // note's question are wrong by choice).
    let mut base = Ask::ALL.map(|a| (a, Tally::default()));
    for item in &items {
        for p in &item.probes {
            let right = correct(&reply(&engine, &p.question, &p.answer)?, &p.answer);
            if let Some((_, t)) = base.iter_mut().find(|(a, _)| *a == p.ask) {
                t.add(item.heldout, right);
            }
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
    let ids: std::collections::HashSet<&str> = items.iter().map(|i| i.id.as_str()).collect();
    let mut neighbours = Vec::new();
    let mut neighbours_tried = 0;
    for n in neighbour_pool
        .iter()
        .filter(|n| ids.contains(n.of.as_str()))
    {
        if neighbours.len() == args.neighbours_n {
            break;
        }
        neighbours_tried += 1;
        if correct(&reply(&engine, &n.question, &n.answer)?, &n.answer) {
            neighbours.push(n.clone());
        }
    }
    let nll_before = mean_nll(&engine, &held)?;
    let probe = &retained[..retained.len().min(30)];
    let sets = Sets {
        items: &items,
        retained: &retained,
        neighbours: &neighbours,
        held: &held,
        nll_before,
    };

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
        // Before learning: nothing taught known, every retention question right (how both
        // were chosen).
        let mut points = vec![(0usize, 0.0f64, 1.0f64)];
        let mut seconds = Vec::with_capacity(items.len());
        // Each item asked by its primary question right after it was learned: what one
        // item's learning achieves before later ones can overwrite it.
        let mut right_after = Tally::default();
        // Rows changed so far, and how many of each item's rows an earlier item had chosen:
        // rows shared between items are where later ones overwrite earlier ones.
        let mut changed = std::collections::HashSet::new();
        let mut selected = 0usize;
        // Mean loss per scored token of each item's training phrasings before and after its
        // steps: an item that reaches a low loss but is not answered failed to generalize to
        // the way it was asked; one that does not reach it failed to fit.
        let mut fact_losses = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let r = engine
                .learn(std::slice::from_ref(&item.fact), &opts, &mut |_, _, _| true)
                .map_err(|e| e.to_string())?;
            seconds.push(r.total.as_secs_f64());
            for f in &r.facts {
                fact_losses.push([f.loss_before, f.loss_after]);
                selected += f.rows.len();
                changed.extend(f.rows.iter().copied());
            }
            let p = item.primary();
            let (right, _) = ask_all(&engine, [(p.question.as_str(), p.answer.as_str())])?[0];
            right_after.add(item.heldout, right);
            let done = i + 1;
            if done % args.every.max(1) == 0 || done == items.len() {
                // Every item so far, or as many evenly spaced over them: asking all of them
                // at every point would grow with the square of a long stream.
                let asked = done.min(CURVE_ITEMS);
                let so_far = ask_all(
                    &engine,
                    (0..asked)
                        .map(|k| items[k * done / asked].primary())
                        .map(|p| (p.question.as_str(), p.answer.as_str())),
                )?;
                let learned = so_far.iter().filter(|(r, _)| *r).count() as f64 / asked as f64;
                // Generalization along the way: the hand-written paraphrases of the items
                // learned so far that have one.
                let paraphrases: Vec<(&str, &str)> = items[..done]
                    .iter()
                    .flat_map(|it| &it.probes)
                    .filter(|p| p.ask == Ask::Paraphrase)
                    .map(|p| (p.question.as_str(), p.answer.as_str()))
                    .collect();
                let asked_paraphrases = paraphrases.len();
                let paraphrased = ask_all(&engine, paraphrases)?
                    .iter()
                    .filter(|(r, _)| *r)
                    .count() as f64
                    / asked_paraphrases.max(1) as f64;
                let kept = ask_all(&engine, probe.iter().map(qa))?
                    .iter()
                    .filter(|(r, _)| *r)
                    .count() as f64
                    / probe.len().max(1) as f64;
                let recent = &seconds[seconds.len().saturating_sub(args.every.max(1))..];
                let per_item = recent.iter().sum::<f64>() / recent.len().max(1) as f64;
                eprintln!(
                    "{name}: {done} learned, {:.1} % of {asked} answered as taught, {:.1} % of {asked_paraphrases} paraphrases, retention (probe) {:.1} %, {per_item:.2} s per item lately",
                    100.0 * learned,
                    100.0 * paraphrased,
                    100.0 * kept
                );
                curve.push(
                    json!({"items": done, "facts": done, "learned_accuracy": learned,
                    "learned_asked": asked,
                    "paraphrase_accuracy": paraphrased, "paraphrases_asked": asked_paraphrases,
                    "retention_probe": kept, "seconds_per_item": per_item}),
                );
                points.push((done, learned, kept));
            }
        }
        let m = measure(&engine, &sets)?;
        eprintln!("{name}: after {} items:", items.len());
        m.log(name);
        let learn_secs: f64 = seconds.iter().sum();
        // Every selection that did not add a row to `changed` chose one an earlier item had.
        let reselected_share = (selected - changed.len()) as f64 / selected.max(1) as f64;
        eprintln!(
            "{name}: right after each item {}; {} rows changed, {:.1} % of selections were rows an earlier item had chosen; {:.2} s per item",
            right_after.describe(),
            changed.len(),
            100.0 * reselected_share,
            learn_secs / items.len().max(1) as f64
        );
        let sweep = gate_sweep(&mut engine, args, &sets)?;
        curves.push(crate::plot::Curve {
            name: name.to_owned(),
            points,
        });
        // Time per item over the first and the last tenth of the stream: flat as the store fills?
        let tenth = (seconds.len() / 10).max(1);
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
        runs.push(json!({
            "scoring": name,
            "axes": m.axes(),
            "learned_accuracy": m.tally(Ask::Prefixed).rate(),
            "learned_right_after": right_after.rate(),
            "right_after": right_after.to_json(),
            "retention": m.retention.rate(),
            "heldout_nll_before": nll_before,
            "heldout_nll_after": nll_before * (1.0 + m.nll_change),
            "heldout_nll_change": m.nll_change,
            "seconds_per_fact": learn_secs / items.len().max(1) as f64,
            "seconds_per_item_first_tenth": mean(&seconds[..tenth.min(seconds.len())]),
            "seconds_per_item_last_tenth": mean(&seconds[seconds.len().saturating_sub(tenth)..]),
            "rows_changed": changed.len(),
            "rows_reselected_share": reselected_share,
            "curve": curve,
            "fact_losses": fact_losses,
            "forgotten": m.forgotten,
            "forgotten_neighbours": m.forgotten_neighbours,
            "missed": m.missed,
            "leaks": m.leaks,
            "gate_sweep": sweep,
        }));
    }
    let base_axes: serde_json::Map<String, serde_json::Value> = base
        .iter()
        .filter(|(_, t)| !t.is_empty())
        .map(|(a, t)| (a.name().to_owned(), t.to_json()))
        .collect();
    let report = json!({
        "facts": items.iter().filter(|i| !i.is_note()).count(),
        "notes": items.iter().filter(|i| i.is_note()).count(),
        "heldout_items": items.iter().filter(|i| i.heldout).count(),
        "facts_scanned": scanned,
        "notes_scanned": notes_scanned,
        "split": args.split.name(),
        "base_model": base_axes,
        "retention_questions": retained.len(),
        "retention_candidates_tried": tried,
        "near_neighbours": neighbours.len(),
        "near_neighbours_tried": neighbours_tried,
        "heldout_tokens": held.len(),
        "steps": args.step.steps,
        "learning_rate": args.step.lr,
        "top_t": args.step.top_t,
        "background_penalty": args.step.background_penalty,
        "earlier_fact_penalty": args.step.earlier_fact_penalty,
        "content_rows_only": args.step.content_rows_only,
        "subject_rows": format!("{:?}", args.step.subject_rows).to_lowercase(),
        "protect_template_rows": !args.step.change_template_rows,
        "background_sample_tokens": engine.background_sample_tokens(),
        "read_gate": match engine.read_gating() {
            engram::ReadGating::Cosine { questions, notes } => {
                json!({"questions": questions, "notes": notes})
            }
            engram::ReadGating::Topics { questions, notes } => {
                json!({"topics": {"questions": questions, "notes": notes}})
            }
            engram::ReadGating::Routes => json!("routes"),
            engram::ReadGating::Off => json!("off"),
        },
        "runs": runs,
        "items": items.iter().map(|i| &i.id).collect::<Vec<_>>(),
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
    crate::plot::learning_curves(&plot, &curves, items.len())?;
    println!("{}", args.output.display());
    println!("{}", plot.display());
    Ok(())
}

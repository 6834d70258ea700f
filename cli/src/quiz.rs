//! `engram quiz`: how many questions with known answers the model answers right through
//! `ask`'s path (chat template, greedy, loop guard), per question kind; for choosing what
//! the template is given without a system message (`--system`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use engram::{Engine, GenerateOptions};
use serde_json::json;

use crate::eval::{correct, reply_with};

/// Options of `engram quiz`.
#[derive(Args)]
pub struct QuizArgs {
    /// Questions with answers, JSON lines {"question", "answer", "kind"?} (default: the
    /// retention candidates of scripts/build-retention).
    #[arg(long, default_value = "data/retention-candidates.jsonl")]
    questions: PathBuf,
    /// Questions asked per kind (the first ones of each kind in the file; 0 = all).
    #[arg(long, default_value_t = 60)]
    per_kind: usize,
    /// Skip this many questions of each kind first (to ask a part kept out of tuning).
    #[arg(long, default_value_t = 0)]
    skip: usize,
    /// Let replies repeat themselves to the token limit (as before the loop guard existed).
    #[arg(long)]
    no_loop_guard: bool,
    /// Write the results (and every wrong reply) as JSON here.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

struct Question {
    question: String,
    answer: String,
    kind: String,
}

fn read_questions(path: &PathBuf) -> Result<Vec<Question>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{}: {e} (make it with scripts/build-retention)",
            path.display()
        )
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("{}:{}: not a JSON object: {e}", path.display(), i + 1))?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        match (field("question"), field("answer")) {
            (Some(question), Some(answer)) => out.push(Question {
                question,
                answer,
                kind: field("kind").unwrap_or_else(|| "question".into()),
            }),
            _ => {
                return Err(format!(
                    "{}:{}: needs \"question\" and \"answer\"",
                    path.display(),
                    i + 1
                ));
            }
        }
    }
    Ok(out)
}

/// Asks the chosen questions and prints accuracy per kind and overall.
pub fn run(engine: &Engine, args: &QuizArgs) -> Result<(), String> {
    let all = read_questions(&args.questions)?;
    let mut by_kind: BTreeMap<&str, Vec<&Question>> = BTreeMap::new();
    for q in &all {
        by_kind.entry(q.kind.as_str()).or_default().push(q);
    }
    let started = Instant::now();
    let mut kinds = Vec::new();
    let mut wrong = Vec::new();
    let (mut right_total, mut asked_total) = (0usize, 0usize);
    for (kind, qs) in &by_kind {
        let chosen: Vec<&&Question> = qs
            .iter()
            .skip(args.skip)
            .take(if args.per_kind == 0 {
                usize::MAX
            } else {
                args.per_kind
            })
            .collect();
        let mut right = 0;
        for q in &chosen {
            let guard = if args.no_loop_guard {
                None
            } else {
                GenerateOptions::default().loop_guard
            };
            let r = reply_with(engine, &q.question, &q.answer, guard)?;
            if correct(&r, &q.answer) {
                right += 1;
            } else {
                wrong.push(json!({"question": q.question, "answer": q.answer, "reply": r}));
            }
        }
        eprintln!(
            "{kind}: {right}/{} right ({:.1}%)",
            chosen.len(),
            100.0 * right as f64 / chosen.len().max(1) as f64
        );
        kinds.push(json!({"kind": kind, "asked": chosen.len(), "right": right}));
        right_total += right;
        asked_total += chosen.len();
    }
    let accuracy = right_total as f64 / asked_total.max(1) as f64;
    println!(
        "{right_total}/{asked_total} right ({:.1}%) in {:.0} s",
        100.0 * accuracy,
        started.elapsed().as_secs_f64()
    );
    if let Some(out) = &args.output {
        let report = json!({
            "model": engine.path().display().to_string(),
            "system_prompt": format!("{:?}", engine.tokenizer().system_prompt()),
            "loop_guard": !args.no_loop_guard,
            "accuracy": accuracy,
            "asked": asked_total,
            "right": right_total,
            "kinds": kinds,
            "wrong": wrong,
        });
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(out, text).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

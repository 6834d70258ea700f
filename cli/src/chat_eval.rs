//! `engram chat-eval`: learning while chatting, measured on the scripted conversations of
//! eval/chat-turns.jsonl and the questions of eval/chat-questions.jsonl. Without `--memory`
//! only what needs no model: which turns the rules would learn, and which earlier fact each
//! update would replace. With it, the turns are also learned (each update forgets what it
//! replaces first) into an in-process copy of the store, and the questions asked before and
//! after: recall of what was told, updates answered with the new value, abstention on what was
//! never told, and retention of general answers. The store file is not changed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::{Arc, Mutex};

use clap::Args;
use engram::learn::{Fact, LearnOptions, TurnKind, classify_turn, replaced_fact};
use engram::{
    BackgroundLearner, Conversation, Engine, GenerateOptions, LearnerEvent, SharedEngine,
};
use serde_json::{Value, json};

use crate::eval::correct;

/// Options of `engram chat-eval`.
#[derive(Args)]
pub struct ChatEvalArgs {
    /// Folder with chat-turns.jsonl and chat-questions.jsonl.
    #[arg(long, default_value = "eval")]
    set: PathBuf,
    /// General questions the base model answers right, asked before and after (retention).
    #[arg(long, default_value = "data/retention-candidates.jsonl")]
    retention: PathBuf,
    /// How many retention questions (the first ones the base model gets right).
    #[arg(long, default_value_t = 60)]
    retention_n: usize,
    /// Write the results (every reply included) as JSON here.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Instead of recall, measure reply latency: every turn answered (at most 48 tokens)
    /// without learning, then again with the statements learned in the background.
    #[arg(long)]
    latency: bool,
    /// With --latency: seconds between a reply and the next turn (the user typing), when the
    /// background learner works undisturbed.
    #[arg(long, default_value_t = 2.0)]
    pause: f64,
}

struct Turn {
    conversation: u64,
    text: String,
    label: String,
    fact: Option<String>,
    heldout: bool,
}

struct Question {
    id: String,
    question: String,
    fact: Option<String>,
    answer: Option<String>,
    not: Option<String>,
    heldout: bool,
}

fn read_lines(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| format!("{}:{}: not a JSON object: {e}", path.display(), i + 1))
        })
        .collect()
}

fn text_of(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn read_set(dir: &Path) -> Result<(Vec<Turn>, Vec<Question>), String> {
    let turns_path = dir.join("chat-turns.jsonl");
    let turns = read_lines(&turns_path)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            Ok(Turn {
                conversation: v.get("conversation").and_then(Value::as_u64).unwrap_or(0),
                text: text_of(v, "text")
                    .ok_or_else(|| format!("{}:{}: no \"text\"", turns_path.display(), i + 1))?,
                label: text_of(v, "label").unwrap_or_default(),
                fact: text_of(v, "fact"),
                heldout: v.get("heldout").and_then(Value::as_bool).unwrap_or(false),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let questions_path = dir.join("chat-questions.jsonl");
    let questions = read_lines(&questions_path)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            Ok(Question {
                id: text_of(v, "id").unwrap_or_else(|| format!("line {}", i + 1)),
                question: text_of(v, "question").ok_or_else(|| {
                    format!("{}:{}: no \"question\"", questions_path.display(), i + 1)
                })?,
                fact: text_of(v, "fact"),
                answer: text_of(v, "answer"),
                not: text_of(v, "not"),
                heldout: v.get("heldout").and_then(Value::as_bool).unwrap_or(false),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((turns, questions))
}

/// Counts `right` of `total`, kept apart for tuned and held-out items.
#[derive(Default, Clone, Copy)]
struct Split {
    right: [usize; 2],
    total: [usize; 2],
}

impl Split {
    fn add(&mut self, heldout: bool, right: bool) {
        self.total[heldout as usize] += 1;
        self.right[heldout as usize] += right as usize;
    }
    fn json(&self) -> Value {
        let part = |k: usize| {
            json!({"right": self.right[k], "total": self.total[k],
                   "rate": self.right[k] as f64 / self.total[k].max(1) as f64})
        };
        json!({"tuned": part(0), "heldout": part(1)})
    }
    fn line(&self, name: &str) -> String {
        let pct = |k: usize| 100.0 * self.right[k] as f64 / self.total[k].max(1) as f64;
        format!(
            "{name:<34} tuned {:>2}/{:<2} ({:5.1} %)   held out {:>2}/{:<2} ({:5.1} %)",
            self.right[0],
            self.total[0],
            pct(0),
            self.right[1],
            self.total[1],
            pct(1)
        )
    }
}

/// Words in a reply that decline to make something up (or apologise that it cannot answer,
/// as SmolLM2 does: "I'm sorry …, but as a chatbot …").
const DECLINES: &[&str] = &[
    "don't know",
    "do not know",
    "don't have",
    "do not have",
    "not sure",
    "haven't told",
    "have not told",
    "haven't mentioned",
    "didn't mention",
    "no information",
    "not mentioned",
    "can't know",
    "cannot know",
    "i'm not aware",
    "not able to",
    "unable to",
    "i'm sorry",
    "as a chatbot",
    "as an ai",
    "as a text-based ai",
];

fn abstains(reply: &str) -> bool {
    let r = reply.to_lowercase().replace('’', "'");
    DECLINES.iter().any(|d| r.contains(d))
}

/// Runs the chat evaluation (see the module notes).
pub fn run(engine: Option<Engine>, args: &ChatEvalArgs) -> Result<(), String> {
    let (turns, questions) = read_set(&args.set)?;
    // Detection and replacement, by the rules alone, turn by turn as a chat would meet them.
    let (mut detected, mut false_learned, mut updates, mut wrong_replacements) = (
        Split::default(),
        Split::default(),
        Split::default(),
        Split::default(),
    );
    // (number, text, fact key) of what is remembered so far.
    let mut kept: Vec<(u64, String, Option<String>)> = Vec::new();
    let mut plan = Vec::new(); // indices of the turns learned
    let mut wrong = Vec::new();
    for (i, t) in turns.iter().enumerate() {
        let to_learn = matches!(t.label.as_str(), "statement" | "update");
        let learned = classify_turn(&t.text) == TurnKind::Statement;
        if to_learn {
            detected.add(t.heldout, learned);
        } else {
            false_learned.add(t.heldout, learned);
        }
        if learned != to_learn {
            wrong.push(json!({"turn": t.text, "label": t.label, "learned": learned}));
        }
        if !learned {
            continue;
        }
        let replaced = replaced_fact(&t.text, kept.iter().map(|(n, s, _)| (*n, s.as_str())));
        let replaced_key = replaced.and_then(|n| {
            kept.iter()
                .find(|(m, _, _)| *m == n)
                .and_then(|(_, _, k)| k.clone())
        });
        if t.label == "update" {
            updates.add(t.heldout, replaced.is_some() && replaced_key == t.fact);
        } else {
            wrong_replacements.add(t.heldout, replaced.is_some());
        }
        if replaced.is_some() && (t.label != "update" || replaced_key != t.fact) {
            wrong.push(json!({"turn": t.text, "replaced": replaced_key, "label": t.label}));
        }
        kept.retain(|(n, _, _)| Some(*n) != replaced);
        kept.push((i as u64 + 1, t.text.clone(), t.fact.clone()));
        plan.push(i);
    }
    eprintln!("{} turns in {} conversations", turns.len(), {
        let mut c: Vec<u64> = turns.iter().map(|t| t.conversation).collect();
        c.dedup();
        c.len()
    });
    eprintln!("{}", detected.line("statements learned"));
    eprintln!("{}", false_learned.line("other turns learned (false)"));
    eprintln!("{}", updates.line("updates replacing the right fact"));
    eprintln!(
        "{}",
        wrong_replacements.line("new statements replacing a fact")
    );
    let mut report = json!({
        "turns": turns.len(),
        "statements_learned": detected.json(),
        "false_learning": false_learned.json(),
        "updates_replacing_the_right_fact": updates.json(),
        "new_statements_replacing_a_fact": wrong_replacements.json(),
        "rule_mistakes": wrong,
    });
    match engine {
        Some(engine) if args.latency => {
            report["latency"] = latency(engine, &turns, &plan, args.pause)?;
        }
        Some(mut engine) => {
            report["learning"] = learn_and_ask(&mut engine, &turns, &questions, &plan, args)?;
        }
        None => {}
    }
    if let Some(out) = &args.output {
        std::fs::write(
            out,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        )
        .map_err(|e| format!("{}: {e}", out.display()))?;
        eprintln!("results written to {}", out.display());
    }
    Ok(())
}

/// Asks every question, returning the replies.
fn ask_all(engine: &Engine, questions: &[Question]) -> Result<Vec<String>, String> {
    questions
        .iter()
        .map(|q| engine.ask(&q.question, 48).map_err(|e| e.to_string()))
        .collect()
}

/// Asks each of `questions` in a new chat that abstains ([`engram::DEFAULT_ABSTENTION`]) when
/// the question is about the user and the memory recalls nothing for it, returning (reply,
/// whether it abstained). At most `max_tokens` per reply.
fn ask_abstaining<'q>(
    engine: &Engine,
    questions: impl Iterator<Item = &'q str>,
    max_tokens: usize,
) -> Result<Vec<(String, bool)>, String> {
    let options = GenerateOptions {
        max_tokens,
        ..Default::default()
    };
    questions
        .map(|q| {
            let mut chat = Conversation::new(engine);
            chat.set_abstention(Some(engram::DEFAULT_ABSTENTION.to_owned()));
            let r = chat.say(q, &options, |_| true).map_err(|e| e.to_string())?;
            Ok((r.generation.text.trim().to_owned(), r.abstained))
        })
        .collect()
}

/// General questions worded in the first person (advice, knowledge), from
/// `chat-general.jsonl` beside the chat set: a chat must not abstain on them.
fn read_general(dir: &Path) -> Result<Vec<String>, String> {
    let path = dir.join("chat-general.jsonl");
    read_lines(&path)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            text_of(v, "question")
                .ok_or_else(|| format!("{}:{}: no \"question\"", path.display(), i + 1))
        })
        .collect()
}

/// The questions asked both ways, scored as told / updated / never told, before and after.
struct Scored {
    told: (Split, Split),
    updated: (Split, Split),
    never: (Split, Split),
}

fn score(questions: &[Question], before: &[String], after: &[String]) -> Scored {
    let mut s = Scored {
        told: Default::default(),
        updated: Default::default(),
        never: Default::default(),
    };
    for ((q, b), a) in questions.iter().zip(before).zip(after) {
        let pair = if q.answer.is_none() {
            &mut s.never
        } else if q.not.is_some() {
            &mut s.updated
        } else {
            &mut s.told
        };
        pair.0.add(q.heldout, right(q, b));
        pair.1.add(q.heldout, right(q, a));
    }
    s
}

/// Whether a reply to `q` is right: told facts by their latest answer (and not the old one),
/// never-told ones by declining.
fn right(q: &Question, reply: &str) -> bool {
    match &q.answer {
        Some(a) => correct(reply, a) && q.not.as_ref().is_none_or(|n| !correct(reply, n)),
        None => abstains(reply),
    }
}

fn learn_and_ask(
    engine: &mut Engine,
    turns: &[Turn],
    questions: &[Question],
    plan: &[usize],
    args: &ChatEvalArgs,
) -> Result<Value, String> {
    let candidates = Fact::read_file(&args.retention)
        .map_err(|e| format!("{e} (make it with scripts/build-retention)"))?;
    let mut retained = Vec::new();
    for f in candidates.iter().take(args.retention_n * 3) {
        if retained.len() == args.retention_n {
            break;
        }
        if let Fact::QuestionAnswer { question, answer } = f {
            let reply = engine.ask(question, 48).map_err(|e| e.to_string())?;
            if correct(&reply, answer) {
                retained.push((question.clone(), answer.clone()));
            }
        }
    }
    let before = ask_all(engine, questions)?;
    let general = read_general(&args.set)?;
    let qs = || questions.iter().map(|q| q.question.as_str());
    let abstaining_before = ask_abstaining(engine, qs(), 48)?;
    let general_before = ask_abstaining(engine, general.iter().map(String::as_str), 1)?;
    let options = LearnOptions::default();
    let start = Instant::now();
    let mut forgotten = 0;
    for &i in plan {
        let text = &turns[i].text;
        let r = engine
            .remember(text, &options, &mut |_, _, _| true)
            .map_err(|e| e.to_string())?;
        forgotten += r.replaced.is_some() as usize;
        eprintln!(
            "learned {} of {} ({:.0} s): {text}",
            plan.iter().position(|&p| p == i).unwrap_or(0) + 1,
            plan.len(),
            start.elapsed().as_secs_f64()
        );
    }
    let learn_seconds = start.elapsed().as_secs_f64();
    let after = ask_all(engine, questions)?;
    let abstaining_after = ask_abstaining(engine, qs(), 48)?;
    let general_after = ask_abstaining(engine, general.iter().map(String::as_str), 1)?;
    let plain = score(questions, &before, &after);
    let texts = |r: &[(String, bool)]| r.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>();
    let abstaining = score(
        questions,
        &texts(&abstaining_before),
        &texts(&abstaining_after),
    );
    let mut replies = Vec::new();
    for (((q, b), a), (aa, abstained)) in questions
        .iter()
        .zip(&before)
        .zip(&after)
        .zip(&abstaining_after)
    {
        replies.push(json!({"id": q.id, "question": q.question, "fact": q.fact,
                            "answer": q.answer, "before": b, "after": a, "right": right(q, a),
                            "abstaining": aa, "abstained": abstained,
                            "right_abstaining": right(q, aa)}));
    }
    let count = |r: &[(String, bool)]| r.iter().filter(|(_, a)| *a).count();
    let general_abstained = (count(&general_before), count(&general_after), general.len());
    let mut kept = 0;
    for (question, answer) in &retained {
        kept += correct(
            &engine.ask(question, 48).map_err(|e| e.to_string())?,
            answer,
        ) as usize;
    }
    for (way, s) in [("", &plain), ("abstaining: ", &abstaining)] {
        for (name, (b, a)) in [
            ("told facts recalled", &s.told),
            ("updated facts: new value, not old", &s.updated),
            ("never told: declined", &s.never),
        ] {
            eprintln!(
                "{}   (base model: {})",
                a.line(&format!("{way}{name}")),
                b.line("").trim()
            );
        }
    }
    eprintln!(
        "abstaining: general first-person questions declined {} of {} (base model: {})",
        general_abstained.1, general_abstained.2, general_abstained.0
    );
    eprintln!(
        "retention: {kept} of {} general answers kept; {} facts learned, {forgotten} forgotten by updates, {learn_seconds:.0} s",
        retained.len(),
        plan.len()
    );
    Ok(json!({
        "told": {"before": plain.told.0.json(), "after": plain.told.1.json()},
        "updated": {"before": plain.updated.0.json(), "after": plain.updated.1.json()},
        "never_told_declined": {"before": plain.never.0.json(), "after": plain.never.1.json()},
        "abstaining": {
            "told": {"before": abstaining.told.0.json(), "after": abstaining.told.1.json()},
            "updated": {"before": abstaining.updated.0.json(), "after": abstaining.updated.1.json()},
            "never_told_declined": {"before": abstaining.never.0.json(), "after": abstaining.never.1.json()},
            "general_declined": {"before": general_abstained.0, "after": general_abstained.1,
                                 "total": general_abstained.2},
        },
        "retention": {"kept": kept, "total": retained.len()},
        "learned": plan.len(),
        "forgotten_by_updates": forgotten,
        "learn_seconds": learn_seconds,
        "replies": replies,
    }))
}

/// One turn's timings: until the first piece of the reply, and until its end, each from the
/// moment the turn was sent (waiting for the engine included).
struct Timed {
    first: f64,
    whole: f64,
}

/// Answers every turn of `turns`, conversation by conversation (each turn re-reads its
/// conversation so far, as a chat does after the memory changed), once without learning and
/// once with the turns of `plan` learned by a [`BackgroundLearner`] after their reply, with
/// `pause` seconds between turns. The engine learns into its in-process copy of the store.
fn latency(engine: Engine, turns: &[Turn], plan: &[usize], pause: f64) -> Result<Value, String> {
    let options = GenerateOptions {
        max_tokens: 48,
        ..Default::default()
    };
    let shared = Arc::new(SharedEngine::from(engine));
    let run = |learner: Option<&BackgroundLearner>| -> Result<Vec<Timed>, String> {
        let mut timed = Vec::new();
        let mut kept: (Option<String>, Vec<(String, String)>) = (None, Vec::new());
        for (i, t) in turns.iter().enumerate() {
            if i > 0 && turns[i - 1].conversation != t.conversation {
                kept = (None, Vec::new());
            }
            let sent = Instant::now();
            let mut first = None;
            {
                let engine: Box<dyn std::ops::Deref<Target = Engine> + '_> = match learner {
                    Some(l) => Box::new(l.read().map_err(|e| e.to_string())?),
                    None => Box::new(shared.read().map_err(|e| e.to_string())?),
                };
                let mut c =
                    Conversation::resume(&engine, kept.0.take(), std::mem::take(&mut kept.1));
                c.say(&t.text, &options, |_| {
                    first.get_or_insert_with(|| sent.elapsed().as_secs_f64());
                    true
                })
                .map_err(|e| e.to_string())?;
                kept = c.into_parts();
            }
            let whole = sent.elapsed().as_secs_f64();
            timed.push(Timed {
                first: first.unwrap_or(whole),
                whole,
            });
            if let Some(l) = learner {
                if plan.contains(&i) {
                    l.remember(&t.text).map_err(|e| e.to_string())?;
                }
                std::thread::sleep(std::time::Duration::from_secs_f64(pause));
            }
        }
        Ok(timed)
    };
    eprintln!("answering {} turns without learning ...", turns.len());
    let without = run(None)?;
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let learner = BackgroundLearner::start(shared.clone(), LearnOptions::default(), move |e| {
        if let Ok(mut v) = sink.lock() {
            v.push(e);
        }
    })
    .map_err(|e| e.to_string())?;
    eprintln!(
        "answering them again, learning {} statements in the background ({pause} s between turns) ...",
        plan.len()
    );
    let with = run(Some(&learner))?;
    let left_at_end = learner.pending();
    // How long the user's device still works once they stop talking.
    let draining = Instant::now();
    learner.finish().map_err(|e| e.to_string())?;
    let drain_seconds = draining.elapsed().as_secs_f64();
    let events = events.lock().map_err(|_| "learner events lost")?;
    let (mut learned, mut yields, mut seconds, mut failed) = (0, 0, Vec::new(), 0);
    for e in events.iter() {
        match e {
            LearnerEvent::Remembered {
                yielded,
                seconds: s,
                ..
            } => {
                learned += 1;
                yields += yielded;
                seconds.push(*s);
            }
            LearnerEvent::Failed { .. } => failed += 1,
            LearnerEvent::Forgot(_) => {}
        }
    }
    let stats = |v: &[Timed], f: fn(&Timed) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        let at = |q: f64| x[((x.len() - 1) as f64 * q).round() as usize];
        json!({"p50": at(0.5), "p90": at(0.9), "max": at(1.0),
               "mean": x.iter().sum::<f64>() / x.len().max(1) as f64})
    };
    let report = json!({
        "turns": turns.len(),
        "pause_seconds": pause,
        "without_learning": {"first_piece": stats(&without, |t| t.first), "reply": stats(&without, |t| t.whole)},
        "learning_in_background": {"first_piece": stats(&with, |t| t.first), "reply": stats(&with, |t| t.whole)},
        "statements": plan.len(),
        "learned": learned,
        "failed": failed,
        "times_a_fact_stepped_aside": yields,
        "seconds_per_statement": seconds,
        "still_queued_after_the_last_turn": left_at_end,
        "seconds_to_learn_them_after_the_last_turn": drain_seconds,
    });
    for (name, key) in [
        ("without learning", "without_learning"),
        ("learning in background", "learning_in_background"),
    ] {
        let r = &report[key];
        eprintln!(
            "{name:<24} first piece p50 {:.3} s p90 {:.3} s max {:.3} s; whole reply p50 {:.3} s max {:.3} s",
            r["first_piece"]["p50"].as_f64().unwrap_or(0.0),
            r["first_piece"]["p90"].as_f64().unwrap_or(0.0),
            r["first_piece"]["max"].as_f64().unwrap_or(0.0),
            r["reply"]["p50"].as_f64().unwrap_or(0.0),
            r["reply"]["max"].as_f64().unwrap_or(0.0),
        );
    }
    eprintln!(
        "{learned} of {} statements learned ({failed} failed), facts stepped aside {yields} times, {left_at_end} still queued after the last turn and learned in {drain_seconds:.1} s more",
        plan.len()
    );
    Ok(report)
}

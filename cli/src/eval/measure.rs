//! Asking what was learned and what must be kept, and scoring the replies.

use engram::learn::Fact;
use engram::{ChatMessage, Engine, GenerateOptions, LoopGuard};
use serde_json::json;

use crate::eval_set::{Ask, Item, Neighbour, Tally};

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
pub(super) static LOOP_GUARD: std::sync::OnceLock<Option<LoopGuard>> = std::sync::OnceLock::new();

/// [`reply`] with the given loop guard (`None`: the reply may repeat itself to the limit).
pub fn reply_with(
    engine: &Engine,
    question: &str,
    answer: &str,
    loop_guard: Option<LoopGuard>,
) -> Result<String, String> {
    reply_naming(engine, question, answer, loop_guard).map(|(reply, _)| reply)
}

/// [`reply_with`], and the learned facts (by their order of learning) the routing read gate
/// recalled anywhere in the prompt or the reply (none without a routing gate).
fn reply_naming(
    engine: &Engine,
    question: &str,
    answer: &str,
    loop_guard: Option<LoopGuard>,
) -> Result<(String, Vec<u32>), String> {
    let options = GenerateOptions {
        max_tokens: REPLY_TOKENS,
        loop_guard,
        ..Default::default()
    };
    let prompt = engine
        .tokenizer()
        .apply_chat_template(&[ChatMessage::new("user", question)], true)
        .and_then(|p| engine.tokenizer().encode(&p, true))
        .map_err(|e| e.to_string())?;
    let mut session = engine.session();
    let mut text = String::new();
    let g = session
        .reply(&prompt, &options, |piece| {
            text.push_str(piece);
            !settled(&text, answer)
        })
        .map_err(|e| e.to_string())?;
    let named = session.facts_named_since(0).unwrap_or_default();
    Ok((g.text.trim().to_owned(), named))
}

/// Asks each `(question, answer)` and returns whether it was right and the reply.
pub(super) fn ask_all<'a>(
    engine: &Engine,
    questions: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<(bool, String)>, String> {
    questions
        .into_iter()
        .map(|(q, a)| reply(engine, q, a).map(|r| (correct(&r, a), r)))
        .collect()
}

pub(super) fn mean_nll(engine: &Engine, tokens: &[u32]) -> Result<f64, String> {
    engine
        .perplexity(tokens, 256)
        .map(|(nll, _)| nll)
        .map_err(|e| e.to_string())
}

/// The fixed parts of a run: what was learned and what must be kept.
pub(super) struct Sets<'a> {
    pub(super) items: &'a [Item],
    pub(super) retained: &'a [Fact],
    pub(super) neighbours: &'a [Neighbour],
    pub(super) held: &'a [u32],
    pub(super) nll_before: f64,
}

/// What asking questions whose answers must be kept found.
#[derive(Default)]
struct Kept {
    tally: Tally,
    /// The questions that recalled a learned fact (the only ones learning can change).
    recalling: Tally,
    /// Those answered wrong, with their replies and the learned items they recalled.
    wrong: Vec<serde_json::Value>,
}

/// Every axis measured on the memory as it is now.
pub(super) struct Measured {
    pub(super) asks: Vec<(Ask, Tally)>,
    pub(super) retention: Tally,
    pub(super) neighbours: Tally,
    /// The retention and neighbour questions that recalled some learned fact, and how many
    /// of them kept their answer.
    pub(super) retention_recalling: Tally,
    pub(super) neighbours_recalling: Tally,
    pub(super) nll_change: f64,
    /// Retention and neighbour questions answered wrong, with their replies.
    pub(super) forgotten: Vec<serde_json::Value>,
    pub(super) forgotten_neighbours: Vec<serde_json::Value>,
    /// Taught items asked and answered wrong, with their replies.
    pub(super) missed: Vec<serde_json::Value>,
    /// Wrong replies that contain another learned item's answer.
    pub(super) leaks: Vec<serde_json::Value>,
}

impl Measured {
    pub(super) fn tally(&self, ask: Ask) -> Tally {
        self.asks
            .iter()
            .find(|(a, _)| *a == ask)
            .map_or_else(Tally::default, |(_, t)| *t)
    }

    /// The axes as the report gives them; kinds nothing was asked of are left out.
    pub(super) fn axes(&self) -> serde_json::Value {
        let mut axes = serde_json::Map::new();
        for (ask, t) in &self.asks {
            if !t.is_empty() {
                axes.insert(ask.name().into(), t.to_json());
            }
        }
        axes.insert("retention".into(), self.retention.to_json());
        axes.insert(
            "retention_recalling".into(),
            self.retention_recalling.to_json(),
        );
        if !self.neighbours.is_empty() {
            axes.insert("near_neighbours".into(), self.neighbours.to_json());
            axes.insert(
                "near_neighbours_recalling".into(),
                self.neighbours_recalling.to_json(),
            );
        }
        axes.insert("heldout_nll_change".into(), json!(self.nll_change));
        axes.into()
    }

    pub(super) fn log(&self, name: &str) {
        for (ask, t) in &self.asks {
            if !t.is_empty() {
                eprintln!("{name}:   {:<16} {}", ask.name(), t.describe());
            }
        }
        eprintln!(
            "{name}:   {:<16} {}; of those recalling a learned fact {}",
            "retention",
            self.retention.describe(),
            self.retention_recalling.describe()
        );
        if !self.neighbours.is_empty() {
            eprintln!(
                "{name}:   {:<16} {}; of those recalling a learned fact {}",
                "near neighbours",
                self.neighbours.describe(),
                self.neighbours_recalling.describe()
            );
        }
        eprintln!(
            "{name}:   held-out NLL {:+.2} %, {} wrong replies hold another learned answer",
            100.0 * self.nll_change,
            self.leaks.len()
        );
    }
}

/// Whether `reply` holds the answer of a learned item other than `own` (answers of three
/// characters or more: "1" or "no" would be found everywhere).
fn leaked<'a>(items: &'a [Item], reply: &str, own: &str) -> Option<&'a str> {
    items.iter().find_map(|it| {
        let a = &it.primary().answer;
        (normalize(a) != normalize(own) && normalize(a).len() >= 3 && correct(reply, a))
            .then_some(a.as_str())
    })
}

pub(super) fn measure(engine: &Engine, sets: &Sets) -> Result<Measured, String> {
    let mut asks: Vec<(Ask, Tally)> = Ask::ALL.iter().map(|&a| (a, Tally::default())).collect();
    let mut missed = Vec::new();
    let mut leaks = Vec::new();
    for item in sets.items {
        for p in &item.probes {
            let r = reply(engine, &p.question, &p.answer)?;
            let right = correct(&r, &p.answer);
            if let Some((_, t)) = asks.iter_mut().find(|(a, _)| *a == p.ask) {
                t.add(item.heldout, right);
            }
            if !right {
                if let Some(other) = leaked(sets.items, &r, &p.answer) {
                    leaks
                        .push(json!({"question": p.question, "reply": r, "learned_answer": other}));
                }
                missed.push(
                    json!({"id": item.id, "ask": p.ask.name(), "question": p.question,
                    "answer": p.answer, "reply": r}),
                );
            }
        }
    }
    let guard = *LOOP_GUARD.get_or_init(|| GenerateOptions::default().loop_guard);
    // The learned items a question recalled, by id: where a kept answer was lost, these are
    // the facts whose rows it read.
    let recalled = |named: &[u32]| -> Vec<&str> {
        named
            .iter()
            .filter_map(|&f| sets.items.get(f as usize).map(|it| it.id.as_str()))
            .collect()
    };
    let mut keep = |questions: Vec<(&str, &str)>| -> Result<Kept, String> {
        let mut kept = Kept::default();
        for (q, a) in questions {
            let (r, named) = reply_naming(engine, q, a, guard)?;
            let right = correct(&r, a);
            kept.tally.add(false, right);
            if !named.is_empty() {
                kept.recalling.add(false, right);
            }
            if !right {
                if let Some(other) = leaked(sets.items, &r, a) {
                    leaks.push(json!({"question": q, "reply": r, "learned_answer": other}));
                }
                kept.wrong
                    .push(json!({"question": q, "answer": a, "reply": r,
                    "recalled": recalled(&named)}));
            }
        }
        Ok(kept)
    };
    let retention = keep(sets.retained.iter().map(qa).collect())?;
    let neighbours = keep(
        sets.neighbours
            .iter()
            .map(|n| (n.question.as_str(), n.answer.as_str()))
            .collect(),
    )?;
    let nll = mean_nll(engine, sets.held)?;
    Ok(Measured {
        asks,
        retention: retention.tally,
        neighbours: neighbours.tally,
        retention_recalling: retention.recalling,
        neighbours_recalling: neighbours.recalling,
        nll_change: nll / sets.nll_before - 1.0,
        forgotten: retention.wrong,
        forgotten_neighbours: neighbours.wrong,
        missed,
        leaks,
    })
}

pub(super) fn qa(f: &Fact) -> (&str, &str) {
    match f {
        Fact::QuestionAnswer { question, answer } => (question, answer),
        Fact::Note(n) => (n, ""),
    }
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

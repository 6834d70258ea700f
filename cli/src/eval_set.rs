//! What `engram eval` teaches and asks: items read from the facts, notes and neighbour files,
//! each with the questions that probe it, and tallies kept apart for tuned and held-out items.

use std::path::Path;

use engram::learn::Fact;
use serde_json::{Value, json};

/// How an item is asked after it was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// The question exactly as it was taught (reliability).
    Exact,
    /// The taught question behind a prefix no training phrasing uses.
    Prefixed,
    /// A true paraphrase of the question, written by hand (generalization).
    Paraphrase,
    /// A note asked by a question worded differently from it (generalization).
    NoteQuestion,
    /// A second, differently worded question about the same note.
    NoteParaphrase,
}

impl Ask {
    /// Every kind, in report order.
    pub const ALL: [Ask; 5] = [
        Ask::Exact,
        Ask::Prefixed,
        Ask::Paraphrase,
        Ask::NoteQuestion,
        Ask::NoteParaphrase,
    ];

    /// The name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Ask::Exact => "exact",
            Ask::Prefixed => "prefixed",
            Ask::Paraphrase => "paraphrase",
            Ask::NoteQuestion => "note_question",
            Ask::NoteParaphrase => "note_paraphrase",
        }
    }
}

/// One question about an item, with the answer its reply must contain.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Which way of asking this is.
    pub ask: Ask,
    /// The question as sent.
    pub question: String,
    /// The answer the reply must contain.
    pub answer: String,
}

/// Something to learn and the questions that show whether it was.
#[derive(Clone, Debug)]
pub struct Item {
    /// The `id` field, or file:line.
    pub id: String,
    /// What is taught.
    pub fact: Fact,
    /// Kept out of all tuning: reported apart.
    pub heldout: bool,
    /// How it is asked afterwards.
    pub probes: Vec<Probe>,
}

impl Item {
    /// The probe of kind `ask`, if the item has one.
    #[cfg(test)]
    pub fn probe(&self, ask: Ask) -> Option<&Probe> {
        self.probes.iter().find(|p| p.ask == ask)
    }

    /// The question that decides whether the base model already knows the item, and that is
    /// asked right after it is learned: the exact question, or a note's question.
    pub fn primary(&self) -> &Probe {
        &self.probes[0]
    }

    /// Whether it is a note.
    pub fn is_note(&self) -> bool {
        matches!(self.fact, Fact::Note(_))
    }
}

/// The phrasing `Ask::Prefixed` sends; no training phrasing starts like this.
pub fn prefixed(q: &str) -> String {
    format!("I have a question: {q}")
}

/// Reads items from a JSONL file: `{"question", "answer"[, "paraphrase"]}` facts and
/// `{"note", "question", "answer"[, "paraphrase_question"]}` notes, each with an optional
/// `id` and `heldout`. Other fields are ignored.
pub fn read_items(path: &Path) -> Result<Vec<Item>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("{at}: not a JSON object: {e}"))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let probe = |ask, q: String, a: &str| Probe {
            ask,
            question: q,
            answer: a.to_owned(),
        };
        let (fact, probes) = match (field("note"), field("question"), field("answer")) {
            (Some(note), Some(q), Some(a)) => {
                let mut probes = vec![probe(Ask::NoteQuestion, q, &a)];
                if let Some(p) = field("paraphrase_question") {
                    probes.push(probe(Ask::NoteParaphrase, p, &a));
                }
                (Fact::note(note), probes)
            }
            (Some(_), _, _) => {
                return Err(format!(
                    "{at}: a note needs the \"question\" it is asked by and its \"answer\""
                ));
            }
            (None, Some(q), Some(a)) => {
                let mut probes = vec![
                    probe(Ask::Exact, q.clone(), &a),
                    probe(Ask::Prefixed, prefixed(&q), &a),
                ];
                if let Some(p) = field("paraphrase") {
                    probes.push(probe(Ask::Paraphrase, p, &a));
                }
                (Fact::qa(q, a), probes)
            }
            _ => return Err(format!("{at}: needs \"question\" and \"answer\"")),
        };
        items.push(Item {
            id: field("id").unwrap_or(at),
            fact,
            heldout: v.get("heldout").and_then(Value::as_bool).unwrap_or(false),
            probes,
        });
    }
    Ok(items)
}

/// A near-neighbour question: same shape as a learned one, about another subject.
#[derive(Clone, Debug)]
pub struct Neighbour {
    /// The question.
    pub question: String,
    /// Its answer.
    pub answer: String,
    /// The id of the item it neighbours.
    pub of: String,
}

/// Reads `{"question", "answer", "neighbour_of"}` lines.
pub fn read_neighbours(path: &Path) -> Result<Vec<Neighbour>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("{at}: not a JSON object: {e}"))?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        match (field("question"), field("answer"), field("neighbour_of")) {
            (Some(question), Some(answer), Some(of)) => out.push(Neighbour {
                question,
                answer,
                of,
            }),
            _ => {
                return Err(format!(
                    "{at}: needs \"question\", \"answer\" and \"neighbour_of\""
                ));
            }
        }
    }
    Ok(out)
}

/// Facts and notes as one stream, spread evenly: after k of all items, about k × F / (F + N)
/// are facts.
pub fn interleave(facts: Vec<Item>, notes: Vec<Item>) -> Vec<Item> {
    let (f, n) = (facts.len(), notes.len());
    let (mut fi, mut ni) = (facts.into_iter(), notes.into_iter());
    let (mut taken_f, mut taken_n) = (0usize, 0usize);
    let mut out = Vec::with_capacity(f + n);
    while taken_f < f || taken_n < n {
        // The next is a fact while facts are behind their share.
        let fact_next = taken_n == n || (taken_f < f && (taken_f + 1) * n <= (taken_n + 1) * f);
        if fact_next {
            out.extend(fi.next());
            taken_f += 1;
        } else {
            out.extend(ni.next());
            taken_n += 1;
        }
    }
    out
}

/// Right answers out of asked, for tuned and held-out items apart.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tally {
    /// [tuned, held out] right.
    pub right: [usize; 2],
    /// [tuned, held out] asked.
    pub asked: [usize; 2],
}

impl Tally {
    /// Counts one answer.
    pub fn add(&mut self, heldout: bool, right: bool) {
        let i = heldout as usize;
        self.asked[i] += 1;
        self.right[i] += right as usize;
    }

    /// Share right of everything asked (0 when nothing was).
    pub fn rate(&self) -> f64 {
        let asked = self.asked[0] + self.asked[1];
        (self.right[0] + self.right[1]) as f64 / asked.max(1) as f64
    }

    /// Whether anything was asked.
    pub fn is_empty(&self) -> bool {
        self.asked == [0, 0]
    }

    /// `{"all", "tuned", "heldout"}` rates with the counts behind them.
    pub fn to_json(self) -> Value {
        let rate = |i: usize| {
            if self.asked[i] == 0 {
                Value::Null
            } else {
                json!(self.right[i] as f64 / self.asked[i] as f64)
            }
        };
        json!({
            "all": self.rate(),
            "tuned": rate(0),
            "heldout": rate(1),
            "right": self.right[0] + self.right[1],
            "asked": self.asked[0] + self.asked[1],
            "heldout_right": self.right[1],
            "heldout_asked": self.asked[1],
        })
    }

    /// "71.0 % (held out 68.0 %, 17/25)" for the log.
    pub fn describe(&self) -> String {
        if self.is_empty() {
            return "none asked".into();
        }
        let all = format!(
            "{:.1} % ({}/{})",
            100.0 * self.rate(),
            self.right[0] + self.right[1],
            self.asked[0] + self.asked[1]
        );
        if self.asked[1] == 0 {
            all
        } else {
            format!(
                "{all}, held out {:.1} % ({}/{})",
                100.0 * self.right[1] as f64 / self.asked[1] as f64,
                self.right[1],
                self.asked[1]
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, note: bool) -> Item {
        Item {
            id: id.into(),
            fact: if note {
                Fact::note(id)
            } else {
                Fact::qa(id, "a")
            },
            heldout: false,
            probes: vec![],
        }
    }

    #[test]
    fn interleaving_spreads_notes_evenly_through_the_facts() {
        let facts = (0..4).map(|i| item(&format!("f{i}"), false)).collect();
        let notes = (0..2).map(|i| item(&format!("n{i}"), true)).collect();
        let ids: Vec<_> = interleave(facts, notes).into_iter().map(|i| i.id).collect();
        assert_eq!(ids, ["f0", "f1", "n0", "f2", "f3", "n1"]);
        let only: Vec<_> = interleave(vec![], vec![item("n", true)])
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(only, ["n"]);
    }

    #[test]
    fn items_read_facts_with_paraphrases_and_notes_with_questions() {
        let dir = std::env::temp_dir().join(format!("engram-evalset-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("set.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"id":"f1","question":"Q?","answer":"A","paraphrase":"P?","heldout":true}"#,
                "\n\n",
                r#"{"note":"My cat is Tom.","question":"Who is my cat?","answer":"Tom"}"#,
                "\n"
            ),
        )
        .unwrap();
        let items = read_items(&path).unwrap();
        assert_eq!(items.len(), 2);
        assert!(items[0].heldout && !items[1].heldout);
        assert_eq!(
            items[0].probe(Ask::Prefixed).unwrap().question,
            prefixed("Q?")
        );
        assert_eq!(items[0].probe(Ask::Paraphrase).unwrap().answer, "A");
        assert!(items[1].is_note());
        assert_eq!(items[1].primary().ask, Ask::NoteQuestion);
        assert!(items[1].id.ends_with("set.jsonl:3"));
        std::fs::write(&path, r#"{"note":"no question"}"#).unwrap();
        let err = read_items(&path).unwrap_err();
        assert!(
            err.contains("set.jsonl:1") && err.contains("question"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tallies_keep_held_out_items_apart() {
        let mut t = Tally::default();
        t.add(false, true);
        t.add(true, false);
        t.add(true, true);
        assert_eq!(t.right, [1, 1]);
        assert_eq!(t.asked, [1, 2]);
        let j = t.to_json();
        assert_eq!(j["heldout"], json!(0.5));
        assert_eq!(j["tuned"], json!(1.0));
        assert!((t.rate() - 2.0 / 3.0).abs() < 1e-12);
    }
}

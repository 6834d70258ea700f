//! What a user teaches: facts and notes, and the files they come in.

use crate::error::{Error, Result};

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
        Self::parse(&text, &ext, &path.display().to_string())
    }

    /// Facts from a file's `text`, in the format its extension `ext` names (see
    /// [`Self::read_file`]); errors name `name` and the line.
    pub fn parse(text: &str, ext: &str, name: &str) -> Result<Vec<Fact>> {
        let bad = |line: u64, why: String| Error::InvalidArgument(format!("{name}:{line}: {why}"));
        let facts = match ext {
            "csv" => read_csv(text, &bad)?,
            "jsonl" | "json" => {
                let mut facts = Vec::new();
                for (i, line) in text.lines().enumerate() {
                    let (n, line) = (i as u64 + 1, line.trim());
                    if line.is_empty() {
                        continue;
                    }
                    let v: serde_json::Value = serde_json::from_str(line)
                        .map_err(|e| bad(n, format!("not a JSON object: {e}")))?;
                    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
                    facts.push(match (field("question"), field("answer"), field("note")) {
                        (Some(q), Some(a), _) => Fact::qa(q, a),
                        (_, _, Some(note)) => Fact::note(note),
                        _ => {
                            return Err(bad(
                                n,
                                "needs \"question\" and \"answer\", or \"note\"".into(),
                            ));
                        }
                    });
                }
                facts
            }
            _ => text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(Fact::note)
                .collect(),
        };
        if facts.is_empty() {
            return Err(Error::InvalidArgument(format!("{name} holds no facts")));
        }
        Ok(facts)
    }
}

/// Question/answer facts from CSV text (the `csv` crate: quoted fields, `""` escapes,
/// quoted line breaks); a first record whose first field is `question` is a header.
fn read_csv(text: &str, bad: &dyn Fn(u64, String) -> Error) -> Result<Vec<Fact>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut facts = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = |r: &csv::StringRecord| r.position().map_or(i as u64 + 1, |p| p.line());
        let record = record.map_err(|e| {
            let at = e.position().map_or(i as u64 + 1, |p| p.line());
            bad(at, format!("not valid CSV: {e}"))
        })?;
        if i == 0
            && record
                .get(0)
                .is_some_and(|h| h.eq_ignore_ascii_case("question"))
        {
            continue;
        }
        match (record.get(0), record.get(1)) {
            (Some(q), Some(a)) if !q.is_empty() && !a.is_empty() => facts.push(Fact::qa(q, a)),
            // A line of only separators or spaces holds nothing, as a blank line does.
            _ if record.iter().all(str::is_empty) => continue,
            _ => {
                return Err(bad(
                    line(&record),
                    "needs two fields: question,answer".into(),
                ));
            }
        }
    }
    Ok(facts)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_files_keep_quoted_commas_and_name_the_bad_line() {
        let dir = std::env::temp_dir().join(format!("engram-facts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.csv");
        std::fs::write(
            &good,
            "question,answer\n\"Who wrote \"\"Dune\"\", the novel?\",\"Herbert, Frank\"\n\n Capital of Peru? , Lima \n",
        )
        .unwrap();
        assert_eq!(
            Fact::read_file(&good).unwrap(),
            vec![
                Fact::qa("Who wrote \"Dune\", the novel?", "Herbert, Frank"),
                Fact::qa("Capital of Peru?", "Lima"),
            ]
        );
        let bad = dir.join("bad.csv");
        std::fs::write(&bad, "q1,a1\nonly one field\n").unwrap();
        let err = Fact::read_file(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.csv:2: needs two fields"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_description_reads_back_as_the_same_fact() {
        for f in [
            Fact::qa("Who painted it?", "Ingrid Halvorsen"),
            Fact::note("My sister Ana lives in Porto."),
        ] {
            assert_eq!(Fact::from_description(&f.describe()), f);
        }
    }
}

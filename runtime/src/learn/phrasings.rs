//! How a fact becomes a batch of phrasings to train on.

use std::ops::Range;

use super::facts::Fact;
use super::questions;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::memory::{SpeakerTokens, WordStart};
use crate::model::{Model, PreparedSequence};
use crate::tokenizer::{ChatMessage, Tokenizer};

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
    let generation_prompt = tok.apply_chat_template(&messages, true)?;
    let words = format!("{lead}{reply}");
    messages.push(ChatMessage::new("assistant", words.as_str()));
    let full = tok.apply_chat_template(&messages, false)?;
    // The prompt is everything before the reply: the generation prompt and, where a template
    // puts text between it and the assistant's words (the plain format's space after "A:"),
    // that text, then the lead.
    let shared = generation_prompt
        .char_indices()
        .zip(full.chars())
        .find(|((_, a), b)| a != b)
        .map_or(generation_prompt.len(), |((i, _), _)| i);
    let at = full[shared..].find(&words).map(|i| shared + i).ok_or_else(|| {
        Error::Template("the chat template does not render the reply after the prompt".into())
    })?;
    let prompt = &full[..at + lead.len()];
    let p = tok.encode(prompt, true)?;
    let f = tok.encode(&full, true)?;
    // Where the reply's tokens begin: BPE may merge the lead's last characters into them.
    let start = p.iter().zip(&f).take_while(|(a, b)| a == b).count();
    // The reply ends at the first stop token after its start.
    let end = f[start..]
        .iter()
        .position(|t| tok.stop_tokens.contains(t))
        .map_or(f.len(), |i| start + i + 1);
    if start == 0 || end <= start {
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
    examples_with(tok, fact, true)
}

/// The token ids of a fact's topic words, each as it reads inside a sentence (" Tariq") and
/// at its start ("Tariq"): what names the fact to a topic read gate.
pub fn topic_needles(tok: &Tokenizer, fact: &Fact) -> Result<Vec<Vec<u32>>> {
    let text = match fact {
        Fact::QuestionAnswer { question, .. } => question,
        Fact::Note(text) => text,
    };
    let mut needles = Vec::new();
    // A name of several words also names the fact whole, where a word of it alone may not
    // (see `WordStart`).
    let names = questions::note_topics(text)
        .into_iter()
        .filter(|t| t.contains(' ') && t.chars().next().is_some_and(char::is_uppercase));
    let mut words = match fact {
        Fact::QuestionAnswer { .. } => questions::topic_words(text),
        Fact::Note(_) => questions::note_naming_words(text),
    };
    // A question's word common enough to be one token of the vocabulary ("Germany",
    // "Justice"), or an abbreviation ("U.S."), names it only where no rarer word does
    // ("Hesse", "Whaley"): otherwise "What is the capital of Germany?" reads the rows of "Who
    // wrote the anthem of Hesse, Germany?" and answers its answer. A paraphrase keeps the
    // subject's rare name. Notes keep every word: "Where does Ana live?" names Ana alone.
    // Where every such word is common ("India" in "What is the name of India's first
    // nano-satellite?"), the question's rare content words name it instead.
    if let Fact::QuestionAnswer { question, .. } = fact {
        let rare = |w: &String| -> Result<bool> {
            Ok(!w.contains('.') && tok.encode(&format!(" {w}"), false)?.len() > 1)
        };
        let mut kept = Vec::new();
        for w in &words {
            if rare(w)? {
                kept.push(w.clone());
            }
        }
        if kept.is_empty() {
            for w in questions::content_words(question) {
                if rare(&w)? && !words.contains(&w) {
                    kept.push(w);
                }
            }
        }
        if !kept.is_empty() {
            words = kept;
        }
    }
    for w in words.into_iter().chain(names) {
        for form in [format!(" {w}"), w.clone()] {
            let ids = tok.encode(&form, false)?;
            if !ids.is_empty() && !needles.contains(&ids) {
                needles.push(ids);
            }
        }
    }
    Ok(needles)
}

/// The token ids of a note's personal words (its other content words and words for the same
/// thing, see `learn/questions/personal.rs`) as they read inside a sentence (" mom") and at
/// its start ("Mom"): what names the note to a routing gate where the user speaks of
/// themselves. None for a question/answer fact.
pub fn personal_needles(tok: &Tokenizer, fact: &Fact) -> Result<Vec<Vec<u32>>> {
    let Fact::Note(text) = fact else {
        return Ok(Vec::new());
    };
    any_case_needles(tok, questions::personal_words(text))
}

/// The token ids of `words`, each as it reads inside a sentence (" mom") and at its start
/// ("mom"), in lower case and capitalized (" Mom", "Mom").
fn any_case_needles(tok: &Tokenizer, words: Vec<String>) -> Result<Vec<Vec<u32>>> {
    let mut needles = Vec::new();
    for w in words {
        let upper: String = w.chars().take(1).flat_map(char::to_uppercase).chain(w.chars().skip(1)).collect();
        for form in [format!(" {w}"), w.clone(), format!(" {upper}"), upper] {
            let ids = tok.encode(&form, false)?;
            if !ids.is_empty() && !needles.contains(&ids) {
                needles.push(ids);
            }
        }
    }
    Ok(needles)
}

/// The token ids of a fact's context words (every word that could tell it from another fact
/// about the same subject, and a note's personal words), each as it reads inside a sentence
/// and at its start: where a routing gate finds several facts named at once, it reads those
/// whose words the text holds most.
pub fn context_needles(tok: &Tokenizer, fact: &Fact) -> Result<Vec<Vec<u32>>> {
    let text = match fact {
        Fact::QuestionAnswer { question, .. } => question,
        Fact::Note(text) => text,
    };
    let mut words = questions::context_words(text);
    if let Fact::Note(_) = fact {
        for w in questions::personal_words(text) {
            if !words.contains(&w) {
                words.push(w);
            }
        }
    }
    any_case_needles(tok, words)
}

/// The tokens of `tok`'s vocabulary a routing gate needs to tell the user asking about
/// themselves (see [`SpeakerTokens`]): first-person words ("I", " my", " We"), what ends a
/// sentence or a turn (".", "?", "!", a line break, special tokens), question words ("What",
/// " where") and question openers ("Do", "Is").
pub fn speaker_tokens(tok: &Tokenizer) -> SpeakerTokens {
    const QUESTION_WORDS: &[&str] = &[
        "what", "which", "who", "whom", "whose", "where", "when", "why", "how",
    ];
    const OPENERS: &[&str] = &[
        "do", "does", "did", "is", "are", "was", "were", "am", "can", "could", "will", "would",
        "should", "have", "has", "had",
    ];
    let mut speaker = SpeakerTokens::default();
    for id in 0..tok.vocab_size() as u32 {
        if tok.is_special(id) {
            speaker.sentence_ends.insert(id);
            continue;
        }
        let text = String::from_utf8_lossy(tok.token_bytes(id));
        // A whole word: after a space, or capitalized (a sentence's first word).
        let whole = text.starts_with(' ') || text.starts_with(char::is_uppercase);
        let word = text.trim_start_matches(' ').to_lowercase();
        if text.contains(['.', '?', '!', '\n']) {
            speaker.sentence_ends.insert(id);
        } else if whole && questions::is_first_person(&word) {
            speaker.first_person.insert(id);
        } else if whole && QUESTION_WORDS.contains(&word.as_str()) {
            speaker.question_words.insert(id);
        } else if whole && OPENERS.contains(&word.as_str()) {
            speaker.question_openers.insert(id);
        }
    }
    speaker
}

/// How each token of `tok`'s vocabulary begins, for a routing read gate.
pub fn word_starts(tok: &Tokenizer) -> Vec<WordStart> {
    (0..tok.vocab_size() as u32)
        .map(|id| {
            if tok.is_special(id) {
                return WordStart::Break;
            }
            let text = String::from_utf8_lossy(tok.token_bytes(id));
            let Some(first) = text.chars().next() else {
                return WordStart::Break;
            };
            let spaced = first == ' ';
            match text.trim_start_matches(' ').chars().next() {
                Some(c) if c.is_uppercase() => WordStart::Capital,
                Some(c) if c.is_alphanumeric() && spaced => WordStart::Lower,
                Some(c) if c.is_alphanumeric() => WordStart::Inside,
                _ => WordStart::Break,
            }
        })
        .collect()
}

/// [`examples`], with the rule-made questions the fact answers only where `asked` (see
/// [`LearnOptions::asked_phrasings`](super::LearnOptions::asked_phrasings)).
pub fn examples_with(tok: &Tokenizer, fact: &Fact, asked: bool) -> Result<Vec<Example>> {
    match fact {
        Fact::QuestionAnswer { question, answer } => {
            let (q, a) = (question.trim(), answer.trim());
            if q.is_empty() || a.is_empty() {
                return Err(Error::InvalidArgument(
                    "a fact needs a non-empty question and answer".into(),
                ));
            }
            let mut batch = vec![
                chat_example(tok, q, "", a)?,
                chat_example(tok, q, "The answer is", &format!(" {a}."))?,
                text_example(tok, &format!("Question: {q}\nAnswer:"), q, &format!(" {a}"))?,
                text_example(tok, &format!("Q: {q}\nA:"), q, &format!(" {a}"))?,
                text_example(tok, q, q, &format!(" {a}"))?,
            ];
            // The question asked the other way round, and the statement it makes: a
            // paraphrase then finds the answer keyed on the subject, not on one wording.
            if let Some((other_way, statement)) = questions::fronted(q, a).filter(|_| asked) {
                batch.push(chat_example(tok, &other_way, "", a)?);
                batch.push(text_example(tok, "", "", &statement)?);
                for topic in questions::note_topics(q).into_iter().take(1) {
                    let about = format!("What do you know about {topic}?");
                    batch.push(chat_example(tok, &about, "", &statement)?);
                }
            }
            Ok(batch)
        }
        Fact::Note(text) => {
            let t = text.trim();
            if t.is_empty() {
                return Err(Error::InvalidArgument("a note must not be empty".into()));
            }
            let told = questions::second_person(t);
            let mut batch = vec![
                text_example(tok, "", "", t)?,
                chat_example_with(tok, "Tell me something you know about me.", "", &told, "")?,
            ];
            // The questions the note answers, each answered by the note as the assistant
            // would say it: a note is asked about, not recited.
            let mut made = if asked { questions::note_questions(t) } else { Vec::new() };
            made.truncate(NOTE_QUESTIONS);
            for q in made {
                batch.push(chat_example(tok, &q, "", &told)?);
            }
            Ok(batch)
        }
    }
}

/// Most rule-made questions a note is trained on: each is a phrasing more per step.
const NOTE_QUESTIONS: usize = 6;

/// The phrasings an update is trained on besides its own: the questions the fact it replaced
/// (the last of `replaced`, texts) answered, now answered by the update as the assistant would
/// say it ("Where do we live in the north of Portugal?" → "You moved to Coimbra last month."),
/// so what was asked of the old fact gets the new one. None for a question/answer fact.
pub fn update_examples(tok: &Tokenizer, fact: &Fact, replaced: &[String]) -> Result<Vec<Example>> {
    let (Fact::Note(text), Some(old)) = (fact, replaced.last()) else {
        return Ok(Vec::new());
    };
    let Fact::Note(old) = Fact::from_description(old) else {
        return Ok(Vec::new());
    };
    let told = questions::second_person(text.trim());
    let mut made = questions::note_questions(&old);
    made.truncate(UPDATE_QUESTIONS);
    made.iter().map(|q| chat_example(tok, q, "", &told)).collect()
}

/// Most questions of the replaced fact an update is trained on.
const UPDATE_QUESTIONS: usize = 4;

/// Runs a fact's phrasings up to the memory, each scored on its targets.
pub(super) fn prepare_phrasings<B: Backend>(
    model: &Model<B>,
    batch: &[Example],
) -> Result<Vec<PreparedSequence<B>>> {
    let inputs: Vec<_> = batch
        .iter()
        .map(|e| (&e.tokens[..], e.targets.clone()))
        .collect();
    model.prepare_many(&inputs)
}

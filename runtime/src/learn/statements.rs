//! Which chat turns state something worth remembering, and which earlier fact a new statement
//! replaces ("We moved to Coimbra." after "We live in Braga."). Rules, not the model: a 135M
//! model is not a reliable judge of either, and rules are fast, predictable and measurable
//! (eval/chat-turns.jsonl; the numbers are in docs/evaluation.md).

/// What a chat turn is, for learning while chatting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnKind {
    /// Something about the user or their world to remember ("My dog is called Pipoca.").
    Statement,
    /// A question (to answer, not to learn).
    Question,
    /// Something asked of the assistant ("Tell me a joke", "Can you help me…").
    Request,
    /// A supposition ("Suppose my dog were called Rex…", "If I lived in Paris…").
    Hypothetical,
    /// Greetings, thanks, reactions, passing states ("I'm so tired today.").
    Chitchat,
}

/// Words that open a reaction or a greeting rather than a statement.
const CHITCHAT_OPENERS: &[&str] = &[
    "hi", "hello", "hey", "thanks", "thank", "cheers", "bye", "goodbye", "ok", "okay", "lol",
    "haha", "wow", "yes", "yeah", "no", "nope", "sure", "great", "cool", "nice", "oh", "hmm",
    "sorry", "see", "good", "that's", "that", "this", "it's", "it", "there", "what", "well",
];
/// Openings that ask the assistant for something.
const REQUEST_OPENERS: &[&[&str]] = &[
    &["can", "you"],
    &["could", "you"],
    &["would", "you"],
    &["will", "you"],
    &["please"],
    &["tell", "me"],
    &["remind", "me"],
    &["help", "me"],
    &["show", "me"],
    &["give", "me"],
    &["let's"],
    &["explain"],
    &["write"],
    &["recommend"],
];
/// Openings of a supposition.
const HYPOTHETICAL_OPENERS: &[&[&str]] = &[
    &["suppose"],
    &["supposing"],
    &["imagine"],
    &["if"],
    &["what", "if"],
    &["let's", "say"],
    &["pretend"],
];
/// Words that make a statement about the moment, not something to keep.
const TRANSIENT: &[&str] = &["today", "tonight", "right now", "this morning"];
/// First-person words: a statement about the user.
const FIRST_PERSON: &[&str] = &[
    "i", "i'm", "i've", "i'd", "i'll", "my", "me", "we", "we're", "we've", "our", "us",
];

/// Lowercased words of `text` (letters, digits and apostrophes).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’'))
        .filter(|w| !w.is_empty())
        .map(|w| w.replace('’', "'").to_lowercase())
        .collect()
}

fn opens_with(words: &[String], openers: &[&[&str]]) -> bool {
    openers
        .iter()
        .any(|o| words.len() >= o.len() && o.iter().zip(words).all(|(a, b)| *a == b))
}

/// What `text`, one user turn, is (see [`TurnKind`]).
pub fn classify_turn(text: &str) -> TurnKind {
    let text = text.trim();
    let w = words(text);
    if w.is_empty() {
        return TurnKind::Chitchat;
    }
    if opens_with(&w, HYPOTHETICAL_OPENERS) {
        return TurnKind::Hypothetical;
    }
    if text.contains('?') {
        return TurnKind::Question;
    }
    if opens_with(&w, REQUEST_OPENERS) {
        return TurnKind::Request;
    }
    if w.len() < 3 || CHITCHAT_OPENERS.contains(&w[0].as_str()) {
        return TurnKind::Chitchat;
    }
    let lower = text.to_lowercase();
    if TRANSIENT.iter().any(|t| lower.contains(t)) {
        return TurnKind::Chitchat;
    }
    // About the user (first person) or someone named at the start ("Kofi plays chess…").
    let named = text
        .chars()
        .next()
        .is_some_and(|c| c.is_uppercase() && !FIRST_PERSON.contains(&w[0].as_str()));
    if w.iter().any(|x| FIRST_PERSON.contains(&x.as_str())) || named {
        TurnKind::Statement
    } else {
        TurnKind::Chitchat
    }
}

/// Words that carry no content for matching statements.
const STOP: &[&str] = &[
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "am", "to", "in", "on", "at",
    "of", "for", "and", "or", "but", "with", "by", "from", "as", "that", "this", "it", "its",
    "he", "she", "they", "his", "her", "their", "them", "him", "every", "last", "month", "just",
    "called", "very", "so", "do", "does", "did", "has", "have", "had", "there", "into", "up",
];
/// Words that say a statement changes something said before.
const CHANGE_MARKERS: &[&str] = &[
    "now", "moved", "move", "switched", "replaced", "sold", "changed", "new", "instead",
    "longer", "anymore", "turned", "finished", "started", "cancelled", "canceled", "quit",
    "left", "became",
];
/// Words that name the same thing for matching (each group maps to its first word).
const SAME_THING: &[&[&str]] = &[
    &["live", "lives", "living", "moved", "move", "based", "home"],
    &["work", "works", "working", "job", "career"],
    &["old", "age", "turned", "years"],
    &["read", "reading", "book"],
    &["swim", "swimming", "swims"],
    &["going", "holiday", "trip", "travelling", "traveling"],
    &["clinic", "hospital"],
    &["car", "drive", "drives"],
];

/// Content tokens of a statement for matching: first-person words as "i" or "we", synonyms
/// as their group's first word, stop words and change markers dropped.
fn content(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in words(text) {
        let w = match w.as_str() {
            "i" | "i'm" | "i've" | "i'd" | "i'll" | "my" | "me" | "mine" => "i".to_owned(),
            "we" | "we're" | "we've" | "our" | "us" | "ours" => "we".to_owned(),
            _ if STOP.contains(&w.as_str()) => continue,
            _ => match SAME_THING.iter().find(|g| g.contains(&w.as_str())) {
                Some(g) => g[0].to_owned(),
                // "started", "sold", "instead" say that something changes, not what.
                None if CHANGE_MARKERS.contains(&w.as_str()) => continue,
                None => w.clone(),
            },
        };
        if !out.contains(&w) {
            out.push(w);
        }
    }
    out
}

fn is_pronoun(w: &str) -> bool {
    w == "i" || w == "we"
}

/// Which of the `earlier` facts (number, text; oldest first) the statement `text` replaces,
/// if any. A statement that says it changes something ("now", "moved", "sold", "instead", …)
/// replaces the fact that shares the most content with it (at least one word beyond "I" /
/// "we"; the latest on a tie); one that does not replaces a fact only when it restates it with
/// one value changed ("My dog is called Max." after "My dog is called Pipoca.": every content
/// word but one shared, on both sides).
pub fn replaced_fact<'a>(
    text: &str,
    earlier: impl IntoIterator<Item = (u64, &'a str)>,
) -> Option<u64> {
    let new = content(text);
    let marked = words(text)
        .iter()
        .any(|w| CHANGE_MARKERS.contains(&w.as_str()));
    let mut best: Option<(usize, u64)> = None;
    for (uid, old_text) in earlier {
        let old = content(old_text);
        let shared: Vec<&String> = old.iter().filter(|w| new.contains(w)).collect();
        let words_shared = shared.iter().filter(|w| !is_pronoun(w)).count();
        let old_words = old.iter().filter(|w| !is_pronoun(w)).count();
        let new_words = new.iter().filter(|w| !is_pronoun(w)).count();
        let replaces = if marked {
            words_shared >= 1
        } else {
            // The same statement with one value changed, on both sides.
            words_shared >= 1 && old_words <= words_shared + 1 && new_words <= words_shared + 1
        };
        if replaces && best.is_none_or(|(score, _)| shared.len() >= score) {
            best = Some((shared.len(), uid));
        }
    }
    best.map(|(_, uid)| uid)
}

/// Question words that ask for a fact ("What is my …", "Where do I …"); "how" only with
/// these after it ("How old is my son?").
const FACT_QUESTION_WORDS: &[&str] = &["what", "who", "where", "when", "which", "whose", "how"];
/// Words after "how" that ask for a fact rather than a way.
const HOW_FACTS: &[&str] = &["many", "much", "old", "long"];
/// Verbs that go before the subject in a question.
const QUESTION_AUXILIARIES: &[&str] = &[
    "is", "are", "was", "were", "am", "do", "does", "did", "have", "has", "had",
];
/// Modal verbs: "What should I cook?" asks for advice, not for something the user said.
const MODALS: &[&str] = &["should", "could", "would", "can", "might", "may", "shall", "will", "must"];
/// Verbs after "do I" that ask what to do, not what is so ("What do I need to bring?").
const NEEDING: &[&str] = &["need", "needs", "want", "wants", "ought"];

/// Whether `question` asks for a fact about the user that only the user could have told
/// ("What is my cat called?", "Where does my sister live?", "Which school does my son
/// attend?", "Do I have a car?"), not for advice or general knowledge ("What should I cook
/// tonight?", "What is a good gift for my mother?", "How do I reset my router?"). A chat that
/// abstains asks the memory only these. Rules, English only; a question it cannot read is
/// not one.
pub fn asks_about_user(question: &str) -> bool {
    let mut w: Vec<String> = Vec::new();
    for word in words(question) {
        // "what's my …" is "what is my …".
        match word.split_once("'s") {
            Some((wh, "")) if FACT_QUESTION_WORDS.contains(&wh) => {
                w.push(wh.to_owned());
                w.push("is".to_owned());
            }
            _ => w.push(word),
        }
    }
    if w.iter().any(|x| ["you", "your", "you're", "yours"].contains(&x.as_str())) {
        return false;
    }
    let first_person = |x: &str| ["my", "our", "i", "we", "me", "us"].contains(&x);
    // "On which day do I swim?": a preposition before the question word.
    let mut i = usize::from(w.first().is_some_and(|x| {
        ["in", "on", "at", "for", "from", "to", "with", "by", "since"].contains(&x.as_str())
    }));
    let Some(opener) = w.get(i) else {
        return false;
    };
    if FACT_QUESTION_WORDS.contains(&opener.as_str()) {
        if opener == "how" && !w.get(i + 1).is_some_and(|x| HOW_FACTS.contains(&x.as_str())) {
            return false;
        }
        i += 1;
        // "Which school does …", "How many cousins do …": the noun asked about.
        let mut skipped = 0;
        while w.get(i).is_some_and(|x| {
            !QUESTION_AUXILIARIES.contains(&x.as_str()) && !MODALS.contains(&x.as_str()) && !first_person(x)
        }) && skipped < 3
        {
            i += 1;
            skipped += 1;
        }
        match w.get(i) {
            Some(x) if QUESTION_AUXILIARIES.contains(&x.as_str()) => i += 1,
            // "Who repaired our washing machine?": a verb, then what of the user's it acted on.
            Some(x) if ["my", "our"].contains(&x.as_str()) && skipped == 1 && opener == "who" => {
                return true;
            }
            _ => return false,
        }
    } else if QUESTION_AUXILIARIES.contains(&opener.as_str()) {
        i += 1;
    } else {
        return false;
    }
    match w.get(i).map(String::as_str) {
        Some("i" | "we") => !w.get(i + 1).is_some_and(|x| NEEDING.contains(&x.as_str()) || MODALS.contains(&x.as_str())),
        Some("my" | "our") => true,
        // "What is the name of my dog?"
        Some("the") => (i + 2..=i + 3).any(|j| {
            w.get(j).is_some_and(|x| x == "of") && w.get(j + 1).is_some_and(|x| x == "my" || x == "our")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_are_told_apart() {
        for (text, kind) in [
            ("My dog is called Pipoca.", TurnKind::Statement),
            ("Yewande lives in Geneva.", TurnKind::Statement),
            ("I'm allergic to peanuts.", TurnKind::Statement),
            ("What's the name of my dog?", TurnKind::Question),
            ("Tell me a joke about cars.", TurnKind::Request),
            ("Suppose my dog were called Rex, what then", TurnKind::Hypothetical),
            ("Thanks, that's helpful.", TurnKind::Chitchat),
            ("I'm so tired today.", TurnKind::Chitchat),
            ("Ok.", TurnKind::Chitchat),
        ] {
            assert_eq!(classify_turn(text), kind, "{text}");
        }
    }

    #[test]
    fn updates_find_what_they_replace_and_new_facts_replace_nothing() {
        let earlier = [
            (1, "We live in Braga, in the north of Portugal."),
            (2, "My mother Folake lives in Ibadan."),
            (3, "My dog is called Pipoca."),
            (4, "My favourite food is grilled sardines."),
        ];
        assert_eq!(replaced_fact("We moved to Coimbra last month.", earlier), Some(1));
        assert_eq!(replaced_fact("My dog is called Max.", earlier), Some(3));
        assert_eq!(replaced_fact("My favourite film is Spirited Away.", earlier), None);
        assert_eq!(replaced_fact("My bike is red.", earlier), None);
    }

    #[test]
    fn questions_about_the_user_are_told_from_advice_and_knowledge() {
        for q in [
            "What's the name of my dog?",
            "Which city do we live in now?",
            "On which day do I swim?",
            "Who repaired our washing machine?",
            "How old is my son?",
            "How many cousins do I have?",
            "What is the name of my dentist?",
            "Do I have a cat?",
            "Where does my sister live?",
        ] {
            assert!(asks_about_user(q), "{q}");
        }
        for q in [
            "What should I cook tonight?",
            "What is a good gift for my mother?",
            "How do I reset my router?",
            "What do I need to bring to an interview?",
            "Is it safe for my dog to eat grapes?",
            "What is your name?",
            "In which city is Yewande based?",
            "What is the capital of France?",
            "Who wrote the book I am reading?",
            "My dog is called Pipoca.",
        ] {
            assert!(!asks_about_user(q), "{q}");
        }
    }
}

//! The questions a fact or note answers, made by rules from its words: what lets a note be
//! recalled by a question ("Who repaired my bike?" after "My neighbour Tariq repaired my
//! bike.") and a fact by a question worded differently from the one it was taught with.
//!
//! English only, by design of the rules: a note in another language gets none of these and
//! is trained on its own wording alone.

mod patterns;
mod personal;
mod wh;

pub use personal::{is_first_person, personal_words};
pub use wh::wh_questions;

/// First-person words and their second-person forms: the user says "my bike", the assistant
/// answers "your bike".
const PERSON_SWAP: &[(&str, &str)] = &[
    ("i", "you"),
    ("me", "you"),
    ("my", "your"),
    ("mine", "yours"),
    ("myself", "yourself"),
    ("we", "you"),
    ("us", "you"),
    ("our", "your"),
    ("ours", "yours"),
    ("ourselves", "yourselves"),
    ("i'm", "you're"),
    ("i've", "you've"),
    ("i'll", "you'll"),
    ("i'd", "you'd"),
    ("we're", "you're"),
    ("we've", "you've"),
    ("am", "are"),
];

/// Words that end a noun phrase or never start one.
const FUNCTION_WORDS: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "of", "in", "on", "at", "to", "for", "from", "with",
    "by", "under", "over", "near", "behind", "after", "before", "every", "each", "is", "are",
    "was", "were", "be", "been", "has", "have", "had", "do", "does", "did", "will", "would",
    "can", "could", "should", "my", "our", "your", "his", "her", "their", "its", "i", "we",
    "you", "he", "she", "they", "it", "me", "us", "him", "them", "that", "this", "these",
    "those", "who", "which", "what", "where", "when", "not", "no", "so", "as", "than", "then",
    "there", "here", "about", "into", "onto", "since", "until", "while", "because", "if",
    "said", "says", "always", "never", "usually", "also", "just", "very",
];

/// Verbs a note's subject is often followed by (besides words ending in -ed or -s).
const COMMON_VERBS: &[&str] = &[
    "is", "are", "was", "were", "has", "have", "had", "lives", "live", "works", "work",
    "keeps", "keep", "plays", "play", "likes", "like", "loves", "love", "hates", "hate",
    "owns", "own", "drives", "drive", "teaches", "teach", "said", "says", "took", "gave",
    "made", "bought", "sold", "met", "went", "grew", "taught", "wrote", "built", "won",
    "came", "left", "found", "got", "runs", "run", "speaks", "speak", "goes", "go",
    "sits", "sit", "stands", "stand", "hangs", "hang", "lies", "stays", "collects", "collect",
    "drives", "eats", "eat", "wants", "want", "needs", "need", "uses", "sells", "cooks",
    "visits", "walks", "rides", "reads", "sings", "swims", "writes", "stores", "store",
];

/// Months and weekdays: a span holding one is asked with "when".
const TIME_WORDS: &[&str] = &[
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december", "monday", "tuesday", "wednesday", "thursday", "friday",
    "saturday", "sunday", "morning", "evening", "evenings", "night", "noon", "midnight",
    "o'clock", "mornings", "nights", "weekend", "weekends", "afternoon", "afternoons", "spring", "summer",
    "autumn", "winter",
];

/// Words that open a question: never what names a fact.
const QUESTION_WORDS: &[&str] = &["what", "which", "where", "when", "whom", "whose", "how"];

/// Words too common to name a fact by themselves: order and rank ("my first marathon", "my
/// best friend"), times ("this year", "on Friday"), counts, and a few verbs and prepositions
/// that the content-word fallback would keep. Under the routing read gate a word that names a
/// fact makes every question holding it read the fact: on eval/'s 100 facts and 50 notes
/// (2026-12-06) "year" and "first" put "You have read 23 books so far this year." and "You ran
/// your first marathon in Berlin." into a dozen general answers.
const WEAK_TOPICS: &[&str] = &[
    "first", "second", "third", "last", "next", "best", "worst", "favourite", "favorite",
    "former", "younger", "older", "elder", "eldest", "youngest", "new", "old", "little", "big",
    "own", "usual", "other", "same", "year", "years", "month", "months", "week", "weeks",
    "day", "days", "morning", "mornings", "evening", "evenings", "night", "nights",
    "afternoon", "today", "tonight", "spring", "summer", "autumn", "winter", "monday",
    "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "mondays", "tuesdays",
    "wednesdays", "thursdays", "fridays", "saturdays", "sundays", "january", "february",
    "march", "april", "may", "june", "july", "august", "september", "october", "november",
    "december", "christmas", "one", "two", "three", "four", "five", "six", "seven", "eight",
    "nine", "ten", "eleven", "twelve", "number", "read", "take", "coming", "along", "inside",
    "plant", "time", "times", "every", "each", "name", "names",
];

/// Titles that go with the name after them.
const TITLES: &[&str] = &[
    "dr", "mr", "mrs", "ms", "miss", "professor", "prof", "aunt", "uncle", "sir", "madam",
];

/// Prepositions that open a place ("under the blue flowerpot", "in Porto").
const PLACE_PREPOSITIONS: &[&str] = &[
    "in", "at", "under", "behind", "near", "beside", "above", "below", "inside", "on", "along",
    "through", "around", "across",
];

/// Prepositions a time takes ("on 14 June", "at 7 pm").
const TIME_PREPOSITIONS: &[&str] = &["on", "at", "in", "by", "since", "for", "every"];

/// Words that start a clause of time and so end a place ("in the park before work").
const TIME_CLAUSE: &[&str] = &["before", "after", "while", "when", "until", "since", "every", "because"];

fn bare(word: &str) -> String {
    word.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'')
        .to_lowercase()
}

fn is_weak_topic(word: &str) -> bool {
    WEAK_TOPICS.contains(&bare(word).trim_end_matches("'s").to_lowercase().as_str())
}

fn is_function(word: &str) -> bool {
    FUNCTION_WORDS.contains(&bare(word).as_str())
}

/// Whether `w[i]` is a verb: a common one, a word ending in -ed or -es, or one ending in -s
/// after a name or a comma ("Rashid collects", "my colleague, sits"), not after a
/// determiner ("my parents").
fn is_verb_at(w: &[&str], i: usize) -> bool {
    let word = bare(w[i]);
    is_verb(w[i])
        || (i > 0
            && word.len() > 3
            && word.ends_with('s')
            && !word.ends_with("ss")
            && !word.ends_with("'s")
            && (capitalized(w[i - 1]) || w[i - 1].ends_with(','))
            && !is_function(w[i - 1]))
}

fn is_verb(word: &str) -> bool {
    let w = bare(word);
    COMMON_VERBS.contains(&w.as_str())
        || (w.len() > 4 && w.ends_with("ed"))
        || (w.len() > 4 && w.ends_with("es") && !w.ends_with("ss"))
}

fn capitalized(word: &str) -> bool {
    word.chars().next().is_some_and(char::is_uppercase)
}

fn is_time(word: &str) -> bool {
    let w = bare(word);
    let year = w.len() == 4
        && w.chars().all(|c| c.is_ascii_digit())
        && (w.starts_with("19") || w.starts_with("20"));
    // "10am", "7pm": a clock time in one word.
    let clock = w.len() > 2
        && (w.ends_with("am") || w.ends_with("pm"))
        && w[..w.len() - 2].chars().all(|c| c.is_ascii_digit());
    // "on Saturdays": a weekday said in the plural is still a time.
    let plural = w.strip_suffix('s').is_some_and(|s| s.ends_with("day") && TIME_WORDS.contains(&s));
    TIME_WORDS.contains(&w.as_str())
        || year
        || clock
        || plural
        || (w.contains(':') && w.chars().any(|c| c.is_ascii_digit()))
}

fn is_number(word: &str) -> bool {
    bare(word).chars().next().is_some_and(|c| c.is_ascii_digit())
}

/// `text` with first-person words in the second person, first letter upper case: the
/// assistant's side of what the user said.
pub fn second_person(text: &str) -> String {
    let swapped: Vec<String> = text
        .split(' ')
        .enumerate()
        .map(|(i, word)| {
            let core = bare(word);
            let Some(&(_, to)) = PERSON_SWAP.iter().find(|(from, _)| *from == core) else {
                return word.to_owned();
            };
            // "I am" -> "you are"; "am" alone only after "I".
            if core == "am" && i == 0 {
                return word.to_owned();
            }
            let start = word.find(|c: char| c.is_alphanumeric()).unwrap_or(0);
            let end = start + word[start..].find(|c: char| !c.is_alphanumeric() && c != '\'').unwrap_or(word.len() - start);
            format!("{}{to}{}", &word[..start], &word[end..])
        })
        .collect();
    upper_first(&swapped.join(" "))
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn lower_first(s: &str) -> String {
    // Keep names and "I" as they are.
    let first = s.split(' ').next().unwrap_or("");
    if first == "I" || first.starts_with("I'") || s.chars().nth(1).is_some_and(char::is_uppercase)
    {
        return s.to_owned();
    }
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The note's words without its final punctuation.
fn words(note: &str) -> Vec<&str> {
    note.trim()
        .trim_end_matches(['.', '!', '?', ' '])
        .split_whitespace()
        .collect()
}

/// What a note is about, as the user would name it: "my bike", "our wedding anniversary",
/// "Dr. Okafor", "Porto".
pub fn note_topics(note: &str) -> Vec<String> {
    let w = words(note);
    let mut topics: Vec<String> = Vec::new();
    let mut i = 0;
    while i < w.len() {
        let lower = bare(w[i]);
        if lower == "my" || lower == "our" {
            let mut phrase: Vec<&str> = Vec::new();
            for (j, x) in w.iter().enumerate().skip(i + 1).take(3) {
                if is_function(x) || is_verb_at(&w, j) {
                    break;
                }
                phrase.push(x);
                if x.ends_with(',') {
                    break;
                }
            }
            if !phrase.is_empty() {
                topics.push(format!("{} {}", lower, strip_punct(&phrase.join(" "))));
                i += 1 + phrase.len();
                continue;
            }
        }
        if capitalized(w[i])
            && !(i == 0 && is_function(w[i]))
            && lower != "i"
            && !lower.starts_with("i'")
            && !is_time(w[i])
        {
            let name: Vec<&str> = w[i..]
                .iter()
                .take_while(|x| capitalized(x) && !is_function(x))
                .copied()
                .collect();
            if !name.is_empty() {
                topics.push(strip_punct(&name.join(" ")));
                i += name.len();
                continue;
            }
        }
        i += 1;
    }
    topics.dedup();
    topics
}

fn strip_punct(s: &str) -> String {
    s.trim_end_matches([',', ';', ':', '.']).to_owned()
}

/// The words that name what a fact or note is about: its topics' words without function
/// words, titles and words too common to name anything (`WEAK_TOPICS`: "bike", "neighbour",
/// "Tariq"; "Velmoria"), its numbers where it has none. A question about the same thing in
/// other words still holds some of them.
pub fn topic_words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let push = |out: &mut Vec<String>, w: String| {
        let core = w.trim_end_matches("'s").trim_end_matches('\u{2019}').to_owned();
        let b = bare(&core);
        if b.len() >= 3 && !is_function(&core) && !TITLES.contains(&b.as_str()) && !out.contains(&core)
        {
            out.push(core);
        }
    };
    for w in note_topics(text)
        .iter()
        .flat_map(|t| t.split_whitespace().map(strip_punct).collect::<Vec<_>>())
        .filter(|w| !is_weak_topic(w))
    {
        push(&mut out, w);
    }
    // A number names a fact only where nothing else does: "2010" beside "the IEEE Frank
    // Rosenblatt Award" would name it in any question about 2010.
    if out.is_empty() {
        for w in words(text).into_iter().filter(|w| is_number(w)) {
            push(&mut out, strip_punct(w));
        }
    }
    if out.is_empty() {
        // No name, possession or number: the words that carry the content ("wifi",
        // "password", "cabin"), so that the fact can still be named.
        out = content_words(text);
    }
    out
}

/// The topic words that name a note by themselves: its names where it has any ("Tariq" of
/// "My neighbour Tariq repaired my bike."), else all of them ("wifi", "password", "cabin").
/// A named note's common nouns ("bike", "dog") name it only where the user asks about their
/// own ([`personal_words`]): general text about dogs must not read "We adopted our dog
/// Biscuit from a shelter in Leeds." (it did in 1 of 40 windows of held-out text).
pub fn note_naming_words(note: &str) -> Vec<String> {
    let words = topic_words(note);
    let names: Vec<String> = words
        .iter()
        .filter(|w| w.chars().next().is_some_and(char::is_uppercase))
        .cloned()
        .collect();
    if names.is_empty() { words } else { names }
}

/// Every word of `text` that could tell it from another fact about the same subject: three
/// letters or more, no function or question word ("mother", "son", "appointed", "Justice").
/// These name nothing; they only rank facts a routing gate finds named at once.
pub fn context_words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in words(text) {
        let core = strip_punct(w).trim_end_matches("'s").trim_end_matches('\u{2019}').to_owned();
        let b = bare(&core);
        if b.len() >= 3
            && !is_function(&core)
            && !QUESTION_WORDS.contains(&b.as_str())
            && !out.contains(&core)
        {
            out.push(core);
        }
    }
    out
}

/// The words of `text` that carry its content: four letters or more, no function word, verb,
/// question word or word too common to name anything ("wifi", "password", "cabin";
/// "nano-satellite").
pub fn content_words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in words(text) {
        let core = strip_punct(w).trim_end_matches("'s").to_owned();
        let b = bare(&core);
        if b.len() >= 4
            && !is_function(&core)
            && !is_verb(&core)
            && !is_weak_topic(&core)
            && !QUESTION_WORDS.contains(&b.as_str())
            && !out.contains(&core)
        {
            out.push(core);
        }
    }
    out
}

/// A part of a note that a question can ask for, and the question word for it.
struct Span {
    start: usize,
    end: usize,
    wh: &'static str,
}

/// The spans of a note a question may ask for: names ("who"), times and dates ("when"),
/// numbers ("how many"), places after a preposition ("where"), and what follows the verb
/// ("what").
fn askable_spans(w: &[&str]) -> Vec<Span> {
    let mut spans = Vec::new();
    // "am" and "pm" are a time only after a number ("7 pm"; "I am" is not).
    let clock = |x: &str| is_time(x) || ["am", "pm", "a.m", "p.m"].contains(&bare(x).as_str());
    let time_at = |j: usize| {
        j < w.len() && (is_time(w[j]) || (is_number(w[j]) && w.get(j + 1).is_some_and(|n| clock(n))))
    };
    // Where a place told from `i` ends: at a comma (kept), at a time or a clause word, or
    // after 8 words ("behind the bookshelf in the study" is one place).
    let place_end = |i: usize| {
        let limit = w.len().min(i + 8);
        (i + 1..limit)
            .find_map(|j| {
                if w[j].ends_with(',') {
                    Some(j + 1)
                } else if j > i + 1
                    && (time_at(j)
                        || (TIME_PREPOSITIONS.contains(&bare(w[j]).as_str()) && time_at(j + 1))
                        || TIME_CLAUSE.contains(&bare(w[j]).as_str())
                        || COMMON_VERBS.contains(&bare(w[j]).as_str()))
                {
                    Some(j)
                } else {
                    None
                }
            })
            .unwrap_or(limit)
    };
    let mut i = 0;
    while i < w.len() {
        let prev = if i > 0 { bare(w[i - 1]) } else { String::new() };
        // "on 14 June", "at 7 pm": the preposition goes with the question word.
        let with_preposition = TIME_PREPOSITIONS.contains(&bare(w[i]).as_str()) && time_at(i + 1);
        if with_preposition || time_at(i) {
            let mut end = i + 1 + with_preposition as usize;
            while end < w.len() && (clock(w[end]) || is_number(w[end])) {
                end += 1;
            }
            spans.push(Span { start: i, end, wh: "when" });
            i = end;
        } else if PLACE_PREPOSITIONS.contains(&bare(w[i]).as_str()) && i + 1 < w.len() {
            let end = place_end(i);
            spans.push(Span { start: i, end, wh: "where" });
            i = end;
        } else if ["before", "after"].contains(&bare(w[i]).as_str()) && i + 1 < w.len() {
            // "before work", "after school": a time told by what it is next to.
            let end = (i + 1..w.len().min(i + 4))
                .find(|&j| w[j].ends_with(',') || PLACE_PREPOSITIONS.contains(&bare(w[j]).as_str()))
                .map_or(w.len().min(i + 4), |j| j + usize::from(w[j].ends_with(',')));
            spans.push(Span { start: i, end, wh: "when" });
            i = end;
        } else if is_number(w[i]) {
            spans.push(Span { start: i, end: i + 1, wh: "how many" });
            i += 1;
        } else if i > 0
            && capitalized(w[i])
            && !is_function(w[i])
            && bare(w[i]) != "i"
            && !bare(w[i]).starts_with("i'")
            && !TITLES.contains(&bare(w[i]).as_str())
        {
            let end = (i..w.len())
                .take_while(|&j| capitalized(w[j]) && !is_function(w[j]))
                .last()
                .map_or(i + 1, |j| j + 1);
            // A name after "to" or "from" is a place; a title before it goes with it.
            let (start, wh) = if ["to", "from"].contains(&prev.as_str()) {
                (i - 1, "where")
            } else if TITLES.contains(&prev.as_str()) {
                (i - 1, "who")
            } else {
                (i, "who")
            };
            spans.push(Span { start, end, wh });
            i = end;
        } else {
            i += 1;
        }
    }
    // What follows the first verb, when nothing above took it.
    if let Some(v) = (0..w.len())
        .find(|&i| is_verb_at(w, i))
        .filter(|&v| v + 1 < w.len() && !spans.iter().any(|s| s.start <= v + 1 && v + 1 < s.end))
    {
        let end = (v + 1..w.len())
            .find(|&j| {
                spans.iter().any(|s| s.start == j)
                    || PLACE_PREPOSITIONS.contains(&bare(w[j]).as_str())
            })
            .unwrap_or(w.len());
        if end > v + 1 {
            spans.push(Span { start: v + 1, end, wh: "what" });
        }
    }
    spans
}

/// Questions a user might ask to be reminded of `note`, each answered by the note in the
/// second person: about each of its topics ("What do you know about my bike?") and for each
/// part it tells, the note with that part turned into a question word ("My neighbour Tariq
/// repaired what?", "I keep my spare key where?").
pub fn note_questions(note: &str) -> Vec<String> {
    let w = words(note);
    // As people ask first, then what the note is about, then the note echoed with a question
    // word: a caller that keeps only the first few keeps the most natural.
    // The shapes people ask most about the subject as the user names it first, then the
    // note's parts asked for, then the same shapes about the subject's other name.
    let mut by_name = patterns::by_name(note).into_iter();
    let mut questions = by_name.next().unwrap_or_default();
    for q in wh_questions(note).into_iter().chain(by_name.flatten()) {
        if !questions.contains(&q) {
            questions.push(q);
        }
    }
    let mut echoed = Vec::new();
    // Only the parts after the verb: a part of the subject echoed ("Our who router sits …?")
    // is no question anyone asks.
    let verb = wh::clause(&w).map_or(0, |(_, v)| v);
    for span in askable_spans(&w).into_iter().filter(|s| s.start > verb) {
        let before = strip_punct(&w[..span.start].join(" "));
        let after = w[span.end..].join(" ");
        let q = match (before.is_empty(), after.is_empty()) {
            (true, _) => continue,
            (false, true) => format!("{before} {}?", span.wh),
            (false, false) => format!("{before} {} {}?", span.wh, strip_punct(&after)),
        };
        echoed.push(upper_first(&q));
    }
    let about = note_topics(note)
        .into_iter()
        .map(|topic| format!("What do you know about {topic}?"));
    for q in about.chain(echoed) {
        if !questions.contains(&q) {
            questions.push(q);
        }
    }
    questions
}

/// A question rewritten with its question word moved to the end ("What is the capital of
/// Velmoria?" -> "The capital of Velmoria is what?"), and the statement it makes with the
/// answer in that place ("The capital of Velmoria is Ostrana."). Only questions of the form
/// WH-PHRASE + is/was/are/were + NOUN PHRASE; `None` for others.
pub fn fronted(question: &str, answer: &str) -> Option<(String, String)> {
    let q = question.trim().trim_end_matches(['?', ' ']);
    let w: Vec<&str> = q.split_whitespace().collect();
    let first = bare(w.first()?);
    let wh_words = ["what", "who", "which", "where", "when", "whom"];
    let starts_wh = wh_words.contains(&first.as_str())
        || (PLACE_PREPOSITIONS.contains(&first.as_str()) || first == "for" || first == "from")
            && w.get(1).is_some_and(|x| wh_words.contains(&bare(x).as_str()));
    if !starts_wh {
        return None;
    }
    let aux = w
        .iter()
        .position(|x| ["is", "was", "are", "were"].contains(&bare(x).as_str()))?;
    // The rest is a noun phrase, or one and a participle ("was X born"): no other verb.
    let mut rest = &w[aux + 1..];
    let participle = rest
        .last()
        .filter(|x| is_participle(x))
        .map(|x| x.to_string());
    if participle.is_some() {
        rest = &rest[..rest.len() - 1];
    }
    if rest.len() < 2 || rest.iter().any(|x| is_verb(x) || bare(x) == "did") {
        return None;
    }
    let leading_preposition =
        PLACE_PREPOSITIONS.contains(&first.as_str()) || first == "for" || first == "from";
    // "What year was X founded" cannot become "X was founded what year": its preposition is
    // unsaid.
    if participle.is_some() && !leading_preposition && w[..aux].len() > 1 {
        return None;
    }
    let wh = lower_first(&w[..aux].join(" "));
    let rest = lower_first(&rest.join(" "));
    let verb = match &participle {
        Some(p) => format!("{} {p}", w[aux].to_lowercase()),
        None => w[aux].to_lowercase(),
    };
    let wh_phrase_answer = if leading_preposition {
        // "In which city" -> "in Leeds".
        format!("{first} {}", answer.trim())
    } else {
        answer.trim().to_owned()
    };
    Some((
        upper_first(&format!("{rest} {verb} {wh}?")),
        upper_first(&format!("{rest} {verb} {wh_phrase_answer}.")),
    ))
}

/// Participles a question ends with after its subject ("was X born", "was X founded").
fn is_participle(word: &str) -> bool {
    let w = bare(word);
    (w.len() > 4 && w.ends_with("ed"))
        || [
            "born", "held", "built", "made", "written", "won", "given", "known", "sold", "shot",
            "drawn", "sung", "begun", "taken", "set", "found", "led", "run", "hit", "put", "laid",
            "read", "grown", "seen", "done", "gone", "met", "kept", "hidden", "stolen", "broken",
            "chosen", "eaten", "driven", "ridden", "forgotten", "hung", "left", "stuck",
        ]
        .contains(&w.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_person_swaps_the_speaker() {
        assert_eq!(
            second_person("My neighbour Tariq repaired my bike."),
            "Your neighbour Tariq repaired your bike."
        );
        assert_eq!(
            second_person("I keep my spare key under the mat."),
            "You keep your spare key under the mat."
        );
        assert_eq!(
            second_person("Our anniversary is on 14 June, I am sure."),
            "Your anniversary is on 14 June, you are sure."
        );
    }

    #[test]
    fn topics_are_possessed_things_and_names() {
        assert_eq!(
            note_topics("My neighbour Tariq repaired my bike."),
            ["my neighbour Tariq", "my bike"]
        );
        assert_eq!(
            note_topics("Dr. Okafor is my dentist."),
            ["Dr. Okafor", "my dentist"]
        );
        assert_eq!(
            note_topics("Our wedding anniversary is on 14 June."),
            ["our wedding anniversary"]
        );
    }

    #[test]
    fn topic_words_leave_out_function_words_and_titles() {
        assert_eq!(
            topic_words("My neighbour Tariq repaired my bike."),
            ["neighbour", "Tariq", "bike"]
        );
        assert_eq!(topic_words("Dr. Okafor is my dentist."), ["Okafor", "dentist"]);
        assert_eq!(
            topic_words("What is the name of Wassily Kandinsky's mother?"),
            ["Wassily", "Kandinsky"]
        );
        // Without a name, possession or number: the content words.
        assert_eq!(
            topic_words("The wifi password at the cabin is heron-42."),
            ["wifi", "password", "cabin", "heron-42"]
        );
        // A number only where nothing else names the fact.
        assert_eq!(
            topic_words("Who received the IEEE Frank Rosenblatt Award in 2010?"),
            ["IEEE", "Frank", "Rosenblatt", "Award"]
        );
        assert_eq!(topic_words("What happened in 1887?"), ["1887"]);
        // Order, rank and time name nothing by themselves.
        assert_eq!(
            topic_words("I ran my first marathon in Berlin."),
            ["marathon", "Berlin"]
        );
        assert_eq!(topic_words("I have read 23 books so far this year."), ["books"]);
    }

    #[test]
    fn context_words_keep_what_tells_two_facts_about_one_subject_apart() {
        assert_eq!(
            context_words("What is the name of Wassily Kandinsky's mother?"),
            ["name", "Wassily", "Kandinsky", "mother"]
        );
        assert_eq!(
            context_words("What was the name of Wassily Kandinsky's only son?"),
            ["name", "Wassily", "Kandinsky", "only", "son"]
        );
    }

    #[test]
    fn a_note_with_a_name_is_named_by_its_names_alone() {
        assert_eq!(
            note_naming_words("My neighbour Tariq repaired my bike."),
            ["Tariq"]
        );
        assert_eq!(
            note_naming_words("We adopted our dog Biscuit from a shelter in Leeds."),
            ["Biscuit", "Leeds"]
        );
        assert_eq!(
            note_naming_words("The wifi password at the cabin is heron-42."),
            ["wifi", "password", "cabin", "heron-42"]
        );
        // Its common nouns still name it where the user asks about their own.
        let personal = personal_words("My neighbour Tariq repaired my bike.");
        assert!(personal.contains(&"bike".to_owned()), "{personal:?}");
        assert!(personal.contains(&"neighbour".to_owned()), "{personal:?}");
    }

    #[test]
    fn note_questions_ask_for_each_part() {
        let q = note_questions("My neighbour Tariq repaired my bike.");
        assert!(q.contains(&"Who repaired my bike?".to_owned()), "{q:?}");
        assert!(q.contains(&"My neighbour Tariq repaired what?".to_owned()), "{q:?}");
        assert!(q.contains(&"What do you know about my bike?".to_owned()), "{q:?}");
        let q = note_questions("I keep my spare key under the blue flowerpot.");
        assert!(q.contains(&"I keep my spare key where?".to_owned()), "{q:?}");
        let q = note_questions("Our wedding anniversary is on 14 June.");
        assert!(q.contains(&"Our wedding anniversary is when?".to_owned()), "{q:?}");
        // No question gives its answer away: the part asked for is gone from it.
        assert!(!q.iter().any(|x| x.contains("14") && !x.starts_with("What do you know")));
    }

    #[test]
    fn fronting_moves_the_question_word_to_the_end() {
        assert_eq!(
            fronted("What is the capital of Velmoria?", "Ostrana"),
            Some((
                "The capital of Velmoria is what?".to_owned(),
                "The capital of Velmoria is Ostrana.".to_owned()
            ))
        );
        assert_eq!(
            fronted("Who was the first mayor of Lune Bay?", "Ada Brant").map(|f| f.1),
            Some("The first mayor of Lune Bay was Ada Brant.".to_owned())
        );
        assert_eq!(
            fronted("In which city was the painter Dario Quenneth born?", "Lisbon"),
            Some((
                "The painter Dario Quenneth was born in which city?".to_owned(),
                "The painter Dario Quenneth was born in Lisbon.".to_owned()
            ))
        );
        assert_eq!(fronted("What year was Acme Looms founded?", "1901"), None);
        assert_eq!(fronted("Name the capital of Peru.", "Lima"), None);
    }
}

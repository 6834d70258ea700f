//! The words a user may ask about a note of theirs with, besides the names that name it:
//! "Which instrument do I play?" after "I play the cello.", "Where does my aunt live?" after
//! "Aunt Folasade has lived in Lagos.", "When was my mom born?" after "My mother's birthday is
//! on 3 March." A routing gate opens the note at one of these only in a sentence where the user
//! speaks of themselves ("I", "my", "we", "our"), so a general question holding the same word
//! ("Which instrument has four strings?") computes what the base model computes.

use super::{QUESTION_WORDS, bare, is_function, is_weak_topic, note_naming_words, words};

/// Verbs and nouns in nearly every sentence about oneself: as a personal word each would open
/// most notes at once.
const GENERIC_WORDS: &[&str] = &[
    "have", "has", "had", "having", "take", "takes", "took", "taken", "taking", "keep",
    "keeps", "kept", "keeping", "get", "gets", "got", "getting", "make", "makes", "made",
    "making", "use", "uses", "used", "using", "see", "sees", "saw", "seen", "seeing", "like",
    "likes", "liked", "want", "wants", "wanted", "need", "needs", "needed", "know", "knows",
    "knew", "think", "thinks", "thought", "say", "says", "said", "tell", "tells", "told",
    "put", "puts", "give", "gives", "gave", "given", "come", "comes", "came", "coming", "find",
    "finds", "found", "call", "calls", "called", "name", "names", "named", "let", "lets",
    "try", "tries", "tried", "seem", "seems", "feel", "feels", "felt", "become", "becomes",
    "became", "mean", "means", "meant", "set", "sets", "turn", "turns", "turned", "start",
    "starts", "started", "thing", "things", "kind", "kinds", "lot", "lots", "way", "ways",
    "part", "really", "usually", "often", "sometimes", "always", "never", "total", "sure",
    "well", "much", "many", "more", "most", "only", "even", "back", "ago", "now", "currently",
    "still", "already", "again", "soon", "together", "person", "people", "someone",
    "something", "anything", "everything", "place", "full", "able", "okay", "yes",
];

/// Words people use for the same person or thing in their own life, each group written as
/// one: a note says "mother", the question "mom"; "apartment" and "flat"; "boss" and
/// "manager". General English, not the eval's items.
const SAME_THING: &[&[&str]] = &[
    &["mother", "mom", "mum", "mummy", "mommy", "mama", "mam"],
    &["father", "dad", "daddy", "papa", "pa"],
    &["grandmother", "grandma", "granny", "gran", "nan", "nana", "nanna"],
    &["grandfather", "grandpa", "granddad", "grandad", "gramps"],
    &["grandchildren", "grandkids", "grandchild", "grandkid"],
    &["stepfather", "stepdad"],
    &["stepmother", "stepmom", "stepmum"],
    &["children", "kids", "child", "kid"],
    &["husband", "hubby", "spouse"],
    &["wife", "spouse"],
    &["partner", "boyfriend", "girlfriend"],
    &["brother", "bro", "sibling"],
    &["sister", "sis", "sibling"],
    &["boss", "manager", "supervisor"],
    &["colleague", "coworker", "workmate"],
    &["roommate", "flatmate", "housemate"],
    &["doctor", "gp", "physician"],
    &["therapist", "counsellor", "counselor", "psychologist"],
    &["teacher", "instructor", "tutor", "coach"],
    &["teaches", "instructs", "tutors", "coaches", "leads"],
    &["lessons", "classes", "class", "lesson"],
    &["physiotherapy", "physio", "physiotherapist"],
    &["apartment", "flat"],
    &["house", "home"],
    &["car", "vehicle", "auto"],
    &["bike", "bicycle"],
    &["job", "work", "occupation", "profession"],
    &["office", "workplace"],
    &["birthday", "born", "birth"],
    &["wedding", "married", "marriage"],
    &["medicine", "medication", "pill", "pills", "tablet", "tablets", "drug"],
    &["money", "cash"],
    &["holiday", "vacation"],
    &["trip", "journey", "travel"],
    &["ornaments", "decorations"],
    &["shop", "store"],
    &["groceries", "shopping"],
    &["allergic", "allergy", "allergies"],
    &["sofa", "couch"],
    &["film", "movie"],
    &["football", "soccer"],
    &["trail", "route", "path", "walk"],
    &["hiking", "walking"],
    &["dog", "puppy"],
    &["cat", "kitten"],
    &["club", "group"],
    &["lives", "live", "lived", "living", "stays", "resides"],
    &["moved", "relocated"],
    &["fixed", "repaired", "mended"],
    &["appointment", "session"],
];

/// The words of `note` a question about it may use that [`note_naming_words`] does not give: its
/// other content words in lower case (verbs and nouns, not generic ones), their plain
/// inflections, and the words that mean the same thing in one's own life ([`SAME_THING`]).
/// Every note is the user's, so "Aunt Folasade has lived in Lagos." gives "aunt" and "live"
/// although it says no "my": the question ("Where does my aunt live?") does.
pub fn personal_words(note: &str) -> Vec<String> {
    let w = words(note);
    let named: Vec<String> = note_naming_words(note).iter().map(|t| bare(t)).collect();
    let mut out: Vec<String> = Vec::new();
    let push = |out: &mut Vec<String>, word: String| {
        if word.len() >= 3
            && !is_function(&word)
            && !is_weak_topic(&word)
            && !GENERIC_WORDS.contains(&word.as_str())
            && !QUESTION_WORDS.contains(&word.as_str())
            && !named.contains(&word)
            && !out.contains(&word)
        {
            out.push(word);
        }
    };
    for x in &w {
        let core = bare(x);
        let core = core.trim_end_matches("'s").to_owned();
        if core.is_empty() || !core.chars().all(char::is_alphabetic) {
            continue;
        }
        // A capitalized word is a name; its lower-case form is not ("Aunt Folasade" is asked
        // about as "my aunt", "Mrs. Petrova" is not asked about as "petrova").
        if x.chars().next().is_some_and(char::is_uppercase) && !super::TITLES.contains(&core.as_str())
        {
            continue;
        }
        // A word that names the note already, or one too common to name it.
        if core.len() < 3
            || is_function(&core)
            || is_weak_topic(&core)
            || QUESTION_WORDS.contains(&core.as_str())
            || GENERIC_WORDS.contains(&core.as_str())
        {
            continue;
        }
        // A word that names the note already still brings its other forms and words
        // ("swim": "swimming"; "mother": "mom").
        let mut forms = inflections(&core);
        for group in SAME_THING.iter().filter(|g| g.contains(&core.as_str())) {
            forms.extend(group.iter().flat_map(|s| inflections(s)));
        }
        for f in forms {
            push(&mut out, f);
        }
    }
    out
}

/// Whether `word` is the user speaking of themselves.
pub fn is_first_person(word: &str) -> bool {
    matches!(
        bare(word).as_str(),
        "i" | "i'm" | "i've" | "i'd" | "i'll" | "me" | "my" | "mine" | "we" | "we're" | "we've"
            | "us" | "our" | "ours"
    )
}

/// `word` and its plain inflections: plural or third person (-s, -es, -ies), past (-ed,
/// -d), -ing (dropping an -e, doubling a short word's last consonant), found from its stem.
/// Forms that are not words ("swimed") do no harm: no question holds them.
fn inflections(word: &str) -> Vec<String> {
    let w = word.to_lowercase();
    let mut stems = vec![w.clone()];
    let strip = |suffix: &str| w.strip_suffix(suffix).filter(|s| s.len() >= 3).map(str::to_owned);
    if let Some(s) = strip("ies") {
        stems.push(format!("{s}y"));
    }
    if let Some(s) = strip("ied") {
        stems.push(format!("{s}y"));
    }
    for suffix in ["es", "s", "ed", "d", "ing"] {
        if let Some(s) = strip(suffix) {
            if !w.ends_with("ss") || suffix != "s" {
                stems.push(s.clone());
            }
            // "swimming" -> "swim", "planned" -> "plan".
            let b = s.as_bytes();
            if (suffix == "ing" || suffix == "ed") && b.len() >= 2 && b[b.len() - 1] == b[b.len() - 2] {
                stems.push(s[..s.len() - 1].to_owned());
            }
            if suffix == "ing" {
                stems.push(format!("{s}e"));
            }
        }
    }
    let mut out = Vec::new();
    for s in stems {
        let last = s.chars().last().unwrap_or(' ');
        let doubled = format!("{s}{last}");
        let short_cvc = s.len() <= 4
            && s.chars().rev().take(3).map(is_vowel).eq([false, true, false])
            && !"wxy".contains(last);
        let base = s.strip_suffix('e').unwrap_or(&s).to_owned();
        let mut forms = vec![
            s.clone(),
            format!("{s}s"),
            format!("{s}es"),
            format!("{base}ed"),
            format!("{base}ing"),
        ];
        if let Some(y) = s.strip_suffix('y').filter(|y| !y.ends_with(is_vowel)) {
            forms.push(format!("{y}ies"));
            forms.push(format!("{y}ied"));
        }
        if short_cvc {
            forms.push(format!("{doubled}ing"));
            forms.push(format!("{doubled}ed"));
        }
        for f in forms {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    out
}

fn is_vowel(c: char) -> bool {
    "aeiou".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_gives_its_verbs_inflected_and_its_words_for_the_same_thing() {
        let words = personal_words("I play the cello in an amateur orchestra.");
        for w in ["play", "plays", "played", "playing"] {
            assert!(words.contains(&w.to_owned()), "{w} missing from {words:?}");
        }
        // "cello" and "orchestra" name the note already; function words never do.
        assert!(
            !words.iter().any(|w| ["cello", "orchestra", "the", "thes", "plaies"].contains(&w.as_str())),
            "{words:?}"
        );

        let words = personal_words("My mother's birthday is on 3 March.");
        for w in ["mom", "mum", "born"] {
            assert!(words.contains(&w.to_owned()), "{w} missing from {words:?}");
        }
        let words = personal_words("I usually swim at the pool on Wednesday evenings.");
        assert!(words.contains(&"swimming".to_owned()), "{words:?}");
    }

    #[test]
    fn titles_are_asked_in_lower_case_and_names_are_not() {
        let words = personal_words("Aunt Folasade has lived in Lagos for decades.");
        assert!(words.contains(&"aunt".to_owned()), "{words:?}");
        assert!(words.contains(&"live".to_owned()), "{words:?}");
        assert!(!words.iter().any(|w| w == "folasade" || w == "lagos"), "{words:?}");
    }

    #[test]
    fn generic_words_times_and_names_give_none() {
        let words = personal_words("I have a dog called Rex.");
        assert!(!words.iter().any(|w| w == "have" || w == "called"), "{words:?}");
        // "coming" and "afternoon" would open any note; "Friday" is a name.
        let words = personal_words("The plumber is coming on Friday afternoon.");
        assert!(words.iter().all(|w| w.starts_with("plumber")), "{words:?}");
    }
}

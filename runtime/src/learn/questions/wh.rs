//! Questions as people ask them, made from a note's subject and verb: "Who repaired my
//! bike?", "Where does my sister live?". English word order and verb forms, by rule.

use super::{
    askable_spans, bare, capitalized, is_function, is_participle, is_time,
    is_verb_at, strip_punct, upper_first, words, Span, TITLES,
};

/// People and the roles they hold to the user: a subject holding one is asked for with
/// "who", other subjects with "what".
const PERSON_NOUNS: &[&str] = &[
    "neighbour", "neighbor", "sister", "brother", "mother", "father", "mum", "mom", "dad",
    "son", "daughter", "wife", "husband", "partner", "aunt", "uncle", "cousin", "niece",
    "nephew", "grandmother", "grandfather", "grandson", "granddaughter", "grandma", "grandpa",
    "friend", "colleague", "boss", "manager", "dentist", "doctor", "teacher", "landlord",
    "landlady", "mentor", "coach", "therapist", "vet", "plumber", "stepfather", "stepmother",
    "godmother", "godfather", "godson", "goddaughter", "classmate", "roommate", "flatmate",
    "instructor", "tutor", "lawyer", "accountant", "babysitter", "nanny", "parents", "kids",
    "children", "child", "baby", "girlfriend", "boyfriend", "fiancé", "fiancee", "fiance",
    "hairdresser", "barber", "sweep", "gardener", "cleaner", "builder", "mechanic", "electrician",
    "carpenter", "pharmacist", "optician", "nurse", "midwife", "priest", "vicar", "imam", "rabbi",
    "trainer", "physio", "physiotherapist", "surgeon", "gp", "twin", "twins", "cousins", "grandparents", "kid", "gran",
    "granny", "grandad", "husband", "spouse", "fiancée", "stepson", "stepdaughter", "flatmates",
];

/// Past forms whose present is not made by a rule.
const IRREGULAR_PAST: &[(&str, &str)] = &[
    ("ran", "run"), ("grew", "grow"), ("found", "find"), ("took", "take"), ("gave", "give"),
    ("made", "make"), ("bought", "buy"), ("sold", "sell"), ("met", "meet"), ("went", "go"),
    ("taught", "teach"), ("wrote", "write"), ("built", "build"), ("won", "win"),
    ("came", "come"), ("left", "leave"), ("got", "get"), ("said", "say"), ("saw", "see"),
    ("told", "tell"), ("began", "begin"), ("drove", "drive"), ("flew", "fly"),
    ("swam", "swim"), ("ate", "eat"), ("paid", "pay"), ("kept", "keep"), ("slept", "sleep"),
    ("sent", "send"), ("spent", "spend"), ("lost", "lose"), ("broke", "break"),
    ("chose", "choose"), ("knew", "know"), ("held", "hold"), ("brought", "bring"),
    ("thought", "think"), ("heard", "hear"), ("fell", "fall"), ("hid", "hide"),
    ("put", "put"), ("set", "set"), ("cut", "cut"), ("lent", "lend"), ("sat", "sit"),
    ("stood", "stand"), ("wore", "wear"), ("sang", "sing"), ("drank", "drink"),
];

/// Verbs that go before the subject in a question as they are ("Where is …", "Where has …").
const INVERTED: &[&str] = &[
    "is", "are", "was", "were", "am", "will", "can", "could", "would", "should", "must",
];

/// How a verb is asked about with "do": the auxiliary its tense and person take and the verb's
/// plain form ("lives" -> does live, "repaired" -> did repair, "keep" -> do keep).
pub(super) fn do_support(verb: &str) -> (&'static str, String) {
    let w = bare(verb);
    if let Some(&(_, base)) = IRREGULAR_PAST.iter().find(|(past, _)| *past == w) {
        return ("did", base.to_owned());
    }
    if w == "has" {
        return ("does", "have".to_owned());
    }
    if w == "had" {
        return ("did", "have".to_owned());
    }
    let b = w.as_bytes();
    let n = b.len();
    if n > 4 && w.ends_with("ied") {
        return ("did", format!("{}y", &w[..n - 3]));
    }
    if n > 4 && w.ends_with("ed") {
        let stem = &w[..n - 2];
        let s = stem.as_bytes();
        let m = s.len();
        let vowel = |c: u8| b"aeiou".contains(&c);
        // "stopped" -> stop; "called" and "passed" keep theirs.
        if m >= 3 && s[m - 1] == s[m - 2] && b"bdgmnprt".contains(&s[m - 1]) {
            return ("did", stem[..m - 1].to_owned());
        }
        // "lived" -> live, "used" -> use, "liked" -> like: an e dropped before -ed.
        let dropped_e = b"vczu".contains(&s[m - 1])
            || (m >= 3
                && b"sk".contains(&s[m - 1])
                && vowel(s[m - 2])
                && !vowel(s[m - 3])
                && s[m - 1] != s[m - 2]);
        return ("did", if dropped_e { format!("{stem}e") } else { stem.to_owned() });
    }
    if n > 3 && w.ends_with("ies") {
        return ("does", format!("{}y", &w[..n - 3]));
    }
    if n > 3 && ["ches", "shes", "xes", "sses", "zes", "oes"].iter().any(|e| w.ends_with(e)) {
        return ("does", w[..n - 2].to_owned());
    }
    if n > 2 && w.ends_with('s') && !w.ends_with("ss") {
        return ("does", w[..n - 1].to_owned());
    }
    ("do", w)
}

/// The ways a subject is named: as said, and with an appositive name apart from the role
/// ("my neighbour Tariq" -> "my neighbour", "Tariq"; "Kenji, my younger brother," -> "my
/// younger brother", "Kenji").
fn subject_forms(subject: &[&str]) -> Vec<String> {
    let said = strip_punct(&subject.join(" "));
    let mut forms = Vec::new();
    // "the tortoise we own" -> "our tortoise", "the car I have" -> "my car".
    if let [the, noun @ .., who, verb] = subject {
        let owner = match bare(who).as_str() {
            "we" => Some("our"),
            "i" => Some("my"),
            _ => None,
        };
        let owns = ["own", "have", "keep", "rent", "use"].contains(&bare(verb).as_str());
        if let (Some(owner), true, false, "the") = (owner, owns, noun.is_empty(), bare(the).as_str()) {
            return vec![format!("{owner} {}", noun.join(" ")), said];
        }
    }
    let comma = subject.iter().position(|x| x.ends_with(','));
    let split = match comma {
        Some(c) if c + 1 < subject.len() => Some((&subject[..=c], &subject[c + 1..])),
        _ => subject
            .iter()
            .position(|x| capitalized(x) && !is_function(x))
            .filter(|&i| i > 1 && ["my", "our"].contains(&bare(subject[0]).as_str()))
            .map(|i| (&subject[..i], &subject[i..])),
    };
    if let Some((a, b)) = split {
        for part in [a, b] {
            let p = strip_punct(&part.join(" "));
            if !p.is_empty() && !forms.contains(&p) {
                forms.push(p);
            }
        }
        // The role first: "Where does my sister live?" is how the user will ask.
        let first = forms[0].split(' ').next().unwrap_or("");
        if forms.len() == 2 && capitalized(first) && !is_function(first) {
            forms.swap(0, 1);
        }
    }
    if !forms.contains(&said) {
        forms.push(said);
    }
    forms
}

/// Questions as people ask them about a note: its subject asked for ("Who repaired my
/// bike?") and each part after its verb asked with the verb inverted or with "do" ("Where
/// does my sister Ana live?", "What did my neighbour Tariq repair?"), also with the subject
/// named by its role or name alone ("Where does my sister live?"). Empty when the note has no
/// subject and verb these rules find.
pub fn wh_questions(note: &str) -> Vec<String> {
    let w = words(note);
    let Some((subject, v)) = clause(&w) else {
        return Vec::new();
    };
    let verb = bare(w[v]);
    let pronoun = subject.len() == 1 && is_pronoun(subject[0]);
    let forms = subject_names(subject);
    let mut out: Vec<String> = Vec::new();
    let mut push = |q: String| {
        let q = format!("{}?", q.split_whitespace().collect::<Vec<_>>().join(" "));
        if !out.contains(&q) {
            out.push(q);
        }
    };
    let rest = &w[v + 1..];
    let copula = ["is", "are", "was", "were"].contains(&verb.as_str());
    let person = is_person(subject);
    // The subject asked for: who did it ("Who repaired my bike?", "Who is my dentist?").
    if !pronoun && !rest.is_empty() && (person || !copula) {
        let wh = if person { "Who" } else { "What" };
        push(format!("{wh} {} {}", w[v], strip_punct(&rest.join(" "))));
    }
    // "has lived", "is getting": the first verb is an auxiliary and goes before the subject.
    let perfect = ["has", "have", "had"].contains(&verb.as_str())
        && rest.first().is_some_and(|x| is_participle(x) || bare(x) == "been");
    let inverted = INVERTED.contains(&verb.as_str()) || perfect;
    let spans: Vec<Span> = askable_spans(&w).into_iter().filter(|s| s.start > v).collect();
    for span in &spans {
        // After an auxiliary, "what" would ask for the participle ("is getting married").
        let participle = rest.first().is_some_and(|x| bare(x).ends_with("ing") || is_participle(x));
        let asks_participle = span.start == v + 1;
        if inverted && span.wh == "what" && (!copula || participle) && asks_participle {
            continue;
        }
        let mut left: Vec<&str> = w[v + 1..span.start].to_vec();
        left.extend_from_slice(&w[span.end..]);
        // "how many" takes its noun with it: "How many goldfish do I have?".
        let (wh, left) = if span.wh == "how many" {
            let noun: Vec<&str> = w[span.end..]
                .iter()
                .take_while(|x| !is_function(x))
                .copied()
                .collect();
            if noun.is_empty() {
                continue;
            }
            let mut left: Vec<&str> = w[v + 1..span.start].to_vec();
            left.extend_from_slice(&w[span.end + noun.len()..]);
            (format!("How many {}", strip_punct(&noun.join(" "))), left)
        } else if span.wh == "who" && copula && !person {
            // "My daughter's school is St Brigid's Primary": a name, but not a person's.
            ("What".to_owned(), left)
        } else {
            (upper_first(span.wh), left)
        };
        // A name right after the verb may be a thing's ("I am learning Portuguese"): asked
        // with "what" too.
        let object_name = span.wh == "who"
            && !copula
            && (span.start == v + 1 || (span.start == v + 2 && participle));
        let whs = if object_name { vec![wh, "What".to_owned()] } else { vec![wh] };
        let left = strip_punct(&left.join(" "));
        for wh in &whs {
            for subj in forms.iter().take(2) {
                let subj = lower_determiner(subj);
                if inverted {
                    push(format!("{wh} {verb} {subj} {left}"));
                } else {
                    let (aux, base) = do_support(&verb);
                    let aux = if pronoun && aux == "does" { "do" } else { aux };
                    push(format!("{wh} {aux} {subj} {base} {left}"));
                }
            }
        }
    }
    // A possession told by a copula asked for ("What is my favourite tea?", "Who is my
    // landlord?") when no part after the verb was asked for above.
    if copula && !pronoun && spans.iter().all(|s| s.wh == "what" || s.wh == "who") {
        let possessed = ["my", "our", "the"].contains(&bare(subject[0]).as_str());
        if possessed {
            let someone = subject.iter().any(|x| PERSON_NOUNS.contains(&bare(x).as_str()));
            let wh = if someone { "Who" } else { "What" };
            for subj in forms.iter().take(2) {
                push(format!("{wh} {verb} {}", lower_determiner(subj)));
            }
        }
    }
    out
}

/// Whether `x` is a subject pronoun.
pub(super) fn is_pronoun(x: &str) -> bool {
    ["i", "we", "you", "they"].contains(&bare(x).as_str())
}

/// Whether a subject names a person: a role ("my sister", "our neighbours"), a title or a
/// name.
pub(super) fn is_person(subject: &[&str]) -> bool {
    subject.iter().any(|x| {
        let b = bare(x);
        let singular = b.strip_suffix('s').unwrap_or(&b);
        PERSON_NOUNS.contains(&b.as_str())
            || PERSON_NOUNS.contains(&singular)
            || PERSON_NOUNS.iter().any(|p| b.ends_with(&format!("-{p}")))
            || TITLES.contains(&b.as_str())
            || (capitalized(x) && !is_function(x) && !is_time(x) && b != "i" && !b.contains('-'))
    })
}

/// A note's subject and the index of its verb ("My neighbour Tariq" + "repaired"; "I" +
/// "keep"), or `None` where these rules find no verb.
pub(super) fn clause<'a>(w: &'a [&'a str]) -> Option<(&'a [&'a str], usize)> {
    // After a pronoun the verb is the next word that is not an adverb ("I usually swim");
    // a leading time ("Every Tuesday I see …") stays out of the subject.
    let leading_time =
        |p: usize| p == 0 || w[..p].iter().any(|x| is_time(x) || bare(x) == "every");
    let (subject, v) = match w.iter().position(|x| is_pronoun(x)) {
        Some(p) if p + 1 < w.len() && leading_time(p) => {
            let v = (p + 1..w.len())
                .find(|&i| !ADVERBS.contains(&bare(w[i]).as_str()))
                .unwrap_or(p + 1);
            (&w[p..=p], v)
        }
        _ => {
            let mut v = (1..w.len()).find(|&i| is_verb_at(w, i))?;
            // "The tortoise we own is called Gregor": a pronoun just before the verb opens a
            // relative clause inside the subject; the sentence's verb comes after it.
            if is_pronoun(w[v - 1]) && v >= 2 {
                v = (v + 1..w.len()).find(|&i| is_verb_at(w, i)).unwrap_or(v);
            }
            (&w[..v], v)
        }
    };
    (v < w.len()).then_some((subject, v))
}

/// How questions name a subject: "I" and "we" as they are, otherwise [`subject_forms`].
pub(super) fn subject_names(subject: &[&str]) -> Vec<String> {
    match subject {
        [p] if is_pronoun(p) => {
            vec![if bare(p) == "i" { "I".to_owned() } else { bare(p) }]
        }
        _ => subject_forms(subject),
    }
}

/// Adverbs between a pronoun and its verb ("I usually swim").
const ADVERBS: &[&str] = &[
    "usually", "always", "often", "never", "sometimes", "normally", "also", "still", "just",
    "rarely", "really", "only",
];

/// `text` with a leading determiner in lower case ("My sister" -> "my sister"), names as
/// they are.
pub(super) fn lower_determiner(text: &str) -> String {
    match text.split_once(' ') {
        Some((first, rest)) if is_function(first) => format!("{} {rest}", first.to_lowercase()),
        _ => text.to_owned(),
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn asks(note: &str, question: &str) -> bool {
        wh_questions(note).iter().any(|q| q == question)
    }

    #[test]
    fn the_subject_is_asked_for_and_the_rest_with_do() {
        let note = "My neighbour Tariq repaired my bike.";
        assert!(asks(note, "Who repaired my bike?"), "{:?}", wh_questions(note));
        assert!(asks(note, "What did my neighbour repair?"));
        let note = "My sister Ana lives in Porto.";
        assert!(asks(note, "Where does my sister live?"), "{:?}", wh_questions(note));
        assert!(asks(note, "Where does Ana live?"));
        assert!(asks("I keep my spare key under the blue flowerpot.", "Where do I keep my spare key?"));
        assert!(asks("I ran my first marathon in Berlin.", "Where did I run my first marathon?"));
        assert!(asks("My grandfather grew up in Kraków.", "Where did my grandfather grow up?"));
    }

    #[test]
    fn auxiliaries_and_copulas_go_before_the_subject() {
        assert!(asks("Our wedding anniversary is on 14 June.", "When is our wedding anniversary?"));
        assert!(asks("My cousin Mateo is getting married in Seville.", "Where is my cousin getting married?"));
        assert!(asks("Aunt Folasade has lived in Lagos for decades.", "Where has Aunt Folasade lived?"));
        assert!(asks("Dr. Okafor is my dentist.", "Who is my dentist?"));
        assert!(asks("My favourite tea is jasmine.", "What is my favourite tea?"));
        assert!(asks("I have read 23 books so far this year.", "How many books have I read so far this year?"));
    }

    #[test]
    fn no_question_gives_its_answer_away() {
        for (note, answer) in [
            ("My sister Ana lives in Porto.", "Porto"),
            ("Our wedding anniversary is on 14 June.", "14"),
            ("My favourite tea is jasmine.", "jasmine"),
        ] {
            let asked = wh_questions(note);
            assert!(!asked.is_empty());
            // The subject question keeps the rest of the note; the others leave the part out.
            assert!(asked.iter().skip(1).all(|q| !q.contains(answer)), "{asked:?}");
        }
    }

    #[test]
    fn verbs_take_their_plain_form_after_do() {
        assert_eq!(do_support("lives"), ("does", "live".to_owned()));
        assert_eq!(do_support("teaches"), ("does", "teach".to_owned()));
        assert_eq!(do_support("carries"), ("does", "carry".to_owned()));
        assert_eq!(do_support("repaired"), ("did", "repair".to_owned()));
        assert_eq!(do_support("moved"), ("did", "move".to_owned()));
        assert_eq!(do_support("stopped"), ("did", "stop".to_owned()));
        assert_eq!(do_support("grew"), ("did", "grow".to_owned()));
        assert_eq!(do_support("keep"), ("do", "keep".to_owned()));
    }
}

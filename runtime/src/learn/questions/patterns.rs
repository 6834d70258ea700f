//! Questions for the shapes of note people write most, asked as people ask them: a name
//! ("What is my hairdresser's name?" after "My hairdresser is called Bronwen."), a job ("What
//! does my partner do for a living?"), where a thing is ("Where is my passport?" after "I
//! keep my passport in the desk."), what someone is allergic to or afraid of, an age, a
//! number. English only, by rule.

use super::wh::{clause, is_person, is_pronoun, lower_determiner, subject_names};
use super::{bare, capitalized, is_function, is_number, is_participle, is_time, words, PLACE_PREPOSITIONS};

/// Prepositions an adjective takes before what it is about ("allergic to", "afraid of").
const ADJECTIVE_PREPOSITIONS: &[&str] = &["to", "of", "about", "at", "with", "in", "for", "on", "from"];

/// Verbs that put a thing somewhere: "Where is it?" is how its owner asks.
const PUTTING_VERBS: &[&str] = &[
    "keep", "keeps", "kept", "store", "stores", "stored", "put", "puts", "leave", "leaves",
    "left", "hide", "hides", "hid", "park", "parks", "parked", "hang", "hangs", "hung",
];

/// Verbs that tell where a thing is: "Where is it?" again.
const LOCATED_VERBS: &[&str] = &[
    "sits", "sit", "stands", "stand", "hangs", "hang", "lies", "lie", "stays", "stay",
];

/// The possessive of how a question names someone: "I" -> "my", "my sister" -> "my
/// sister's", "our neighbours" -> "our neighbours'".
fn possessive(name: &str) -> String {
    match name {
        "I" => return "my".to_owned(),
        "we" => return "our".to_owned(),
        "you" => return "your".to_owned(),
        "they" => return "their".to_owned(),
        _ => {}
    }
    let last = name.rsplit(' ').next().unwrap_or(name);
    if last.ends_with('s') && !last.ends_with("ss") && !capitalized(last) {
        format!("{name}'")
    } else {
        format!("{name}'s")
    }
}

/// "is" or "are" for a noun phrase by its last word ("my keys" -> are).
fn be_for(phrase: &str) -> &'static str {
    let last = bare(phrase.rsplit(' ').next().unwrap_or(phrase));
    if last.len() > 3 && last.ends_with('s') && !last.ends_with("ss") && !last.ends_with("'s") {
        "are"
    } else {
        "is"
    }
}

/// Where the place a note tells begins among `rest` (the words after its verb), if anywhere.
fn place_at(rest: &[&str]) -> Option<usize> {
    rest.iter()
        .position(|x| PLACE_PREPOSITIONS.contains(&bare(x).as_str()))
        .filter(|&p| rest.get(p + 1).is_some_and(|x| !is_time(x) && !is_number(x)))
}

/// Questions for the note shapes this module knows (see the module's doc), most natural
/// first, one list per name of the note's subject ("my partner", then "Lucía"), in the order
/// questions should use them.
pub(super) fn by_name(note: &str) -> Vec<Vec<String>> {
    let w = words(note);
    let Some((subject, v)) = clause(&w) else {
        return Vec::new();
    };
    let verb = bare(w[v]);
    let rest = &w[v + 1..];
    let pronoun = subject.len() == 1 && is_pronoun(subject[0]);
    let copula = ["is", "are", "was", "were", "am"].contains(&verb.as_str());
    let past = ["was", "were"].contains(&verb.as_str()) || (verb.ends_with("ed") && !copula);
    let person = pronoun || is_person(subject);
    let mut all = Vec::new();
    let names = subject_names(subject);
    for s in names.iter().take(2).map(|s| lower_determiner(s)) {
        let mut out: Vec<String> = Vec::new();
        let mut push = |q: String| {
            let q = format!("{}?", q.split_whitespace().collect::<Vec<_>>().join(" "));
            if !out.contains(&q) {
                out.push(q);
            }
        };
        let of = possessive(&s);
        let does = if past { "did" } else if pronoun || be_for(&s) == "are" { "do" } else { "does" };
        // A name: "My hairdresser is called Bronwen.", "Our landlord is a man named Tom Ash."
        let named = rest.iter().position(|x| ["called", "named"].contains(&bare(x).as_str()));
        if let Some(k) = named.filter(|&k| !pronoun && rest.get(k + 1).is_some_and(|x| capitalized(x))) {
            let be = if past { "was" } else { "is" };
            push(format!("What {be} {of} name"));
            if copula && k == 0 {
                push(format!("What {verb} {s} called"));
            }
            push(format!("What {be} the name of {s}"));
            if person {
                push(format!("Who {be} {s}"));
            }
        }
        // An adjective and what it is about: "My son is allergic to peanuts."
        if copula
            && rest.len() >= 3
            && !is_function(rest[0])
            && !capitalized(rest[0])
            && !is_number(rest[0])
            && !bare(rest[0]).ends_with("ing")
            && ADJECTIVE_PREPOSITIONS.contains(&bare(rest[1]).as_str())
            // "born in Hanoi", "parked at the farm": a participle and a place, asked above.
            && !(is_participle(rest[0]) && PLACE_PREPOSITIONS.contains(&bare(rest[1]).as_str()))
            && !is_time(rest[2])
            && !is_number(rest[2])
        {
            let wh = if capitalized(rest[2]) { "Who" } else { "What" };
            push(format!("{wh} {verb} {s} {} {}", bare(rest[0]), bare(rest[1])));
        }
        // A job: "… works as an air traffic controller", "… fixes boilers for a living",
        // "My partner Lucía is a marine biologist."
        let works_as = ["works", "work", "worked"].contains(&verb.as_str())
            && rest.first().is_some_and(|x| bare(x) == "as");
        let for_a_living = w.windows(3).any(|x| x.iter().map(|y| bare(y)).eq(["for", "a", "living"]));
        let is_a = copula
            && !pronoun
            && rest.len() >= 2
            && ["a", "an"].contains(&bare(rest[0]).as_str())
            && named.is_none()
            && place_at(rest).is_none();
        if person && (works_as || for_a_living || is_a) {
            push(format!("What {does} {s} do for a living"));
            let be = if past { "was" } else { "is" };
            push(format!("What {be} {of} job"));
            push(format!("What {does} {s} do for work"));
        }
        // A number that is an identity, not a count: "My allotment plot is number 31.",
        // "My gym membership number is 58213."
        if copula && !pronoun {
            if rest.len() == 2 && bare(rest[0]) == "number" && is_number(rest[1]) {
                push(format!("What number {verb} {s}"));
            } else if (1..=2).contains(&rest.len()) && rest.iter().all(|x| is_number(x)) {
                push(format!("What {verb} {s}"));
            }
        }
        // An age: "My great-aunt Hedda turned 94 in May.", "Kofi is 7 years old."
        let turned = ["turned", "turns", "turn"].contains(&verb.as_str())
            && rest.first().is_some_and(|x| is_number(x));
        let years_old = copula
            && rest.len() >= 2
            && is_number(rest[0])
            && ["years", "year", "months"].contains(&bare(rest[1]).as_str());
        if !pronoun && (turned || years_old) {
            push(format!("How old is {s}"));
            if turned {
                push(format!("How old {does} {s} turn"));
            }
        }
        // Where a thing is: "I keep my passport in the top drawer." -> "Where is my
        // passport?"; "The key is hidden under the frog."; "The router sits behind the shelf."
        if let Some(p) = place_at(rest).filter(|&p| p > 0 && PUTTING_VERBS.contains(&verb.as_str())) {
            let thing = rest[..p].join(" ");
            let thing = thing.trim_end_matches(',');
            push(format!("Where {} {thing}", be_for(thing)));
        }
        let placed = (copula && rest.first().is_some_and(|x| is_participle(x)) && place_at(&rest[1..]) == Some(0))
            || (LOCATED_VERBS.contains(&verb.as_str()) && place_at(rest) == Some(0));
        // "born in Hanoi" tells where someone came from, not where they are.
        let born = rest.first().is_some_and(|x| bare(x) == "born");
        if placed && !pronoun && !born {
            push(format!("Where {} {s}", be_for(&s)));
        }
        all.push(out);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern_questions(note: &str) -> Vec<String> {
        by_name(note).into_iter().flatten().collect()
    }

    fn asks(note: &str, question: &str) -> bool {
        pattern_questions(note).iter().any(|q| q == question)
    }

    #[test]
    fn names_are_asked_for_as_names() {
        let note = "My hairdresser is called Bronwen.";
        assert!(asks(note, "What is my hairdresser's name?"), "{:?}", pattern_questions(note));
        assert!(asks(note, "What is my hairdresser called?"));
        assert!(asks(note, "Who is my hairdresser?"));
        let note = "The tortoise we own is called Gregor.";
        assert!(asks(note, "What is our tortoise's name?"), "{:?}", pattern_questions(note));
        let note = "Our chimney sweep is a man named Ptolemy Grange.";
        assert!(asks(note, "What is the name of our chimney sweep?"), "{:?}", pattern_questions(note));
        // A job question needs a job, not a name.
        assert!(!pattern_questions(note).iter().any(|q| q.contains("for a living")));
    }

    #[test]
    fn jobs_ages_numbers_and_adjectives() {
        let note = "My partner Lucía is a marine biologist.";
        assert!(asks(note, "What does my partner do for a living?"), "{:?}", pattern_questions(note));
        assert!(asks(note, "What is Lucía's job?"));
        assert!(asks("My brother-in-law Farid fixes boilers for a living.", "What does my brother-in-law do for work?"));
        assert!(asks("My son is allergic to peanuts.", "What is my son allergic to?"));
        assert!(asks("I am afraid of spiders.", "What am I afraid of?"));
        assert!(asks("My great-aunt Hedda turned 94 in May.", "How old is my great-aunt?"));
        assert!(asks("My allotment plot is number 31.", "What number is my allotment plot?"));
        // The adjective rule leaves dates alone.
        assert!(pattern_questions("The boiler service is booked for 9 January.").is_empty());
    }

    #[test]
    fn where_a_thing_is_kept() {
        let note = "I keep the warranty papers in a blue folder above the fridge.";
        assert!(asks(note, "Where are the warranty papers?"), "{:?}", pattern_questions(note));
        assert!(asks("We keep the spare bike pump in the hallway cupboard.", "Where is the spare bike pump?"));
        let note = "Our Wi-Fi router sits behind the bookshelf in the study.";
        assert!(asks(note, "Where is our Wi-Fi router?"), "{:?}", pattern_questions(note));
        assert!(asks("The spare key is hidden under the doormat.", "Where is the spare key?"));
    }

    #[test]
    fn possessives_follow_the_name() {
        assert_eq!(possessive("I"), "my");
        assert_eq!(possessive("my sister"), "my sister's");
        assert_eq!(possessive("our neighbours"), "our neighbours'");
        assert_eq!(possessive("Agnes"), "Agnes's");
    }
}

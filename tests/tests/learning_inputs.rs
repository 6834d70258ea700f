//! Learning's inputs and guards: facts files, training phrasings and where a fact's own words
//! sit in them, row selection among those words, and bad settings that must leave the memory
//! as it was.

use std::collections::HashSet;

use engram::backend::Backend;

use engram::learn::{Fact, LearnOptions};
use engram::{Engine, EngineOptions, Error};
use engram_e2e::default_model;
use engram_e2e::learning::{engine_with_memory, values};

#[test]
fn bad_settings_and_diverging_steps_leave_the_memory_unchanged() {
    let mut engine = engine_with_memory();
    let fact = [Fact::qa("What is the name of Marta's dog?", "Bruno")];
    let before = values(&engine);
    for (opts, needle) in [
        (
            LearnOptions {
                learning_rate: f32::NAN,
                ..Default::default()
            },
            "learning rate",
        ),
        (
            LearnOptions {
                learning_rate: 0.0,
                ..Default::default()
            },
            "learning rate",
        ),
        (
            LearnOptions {
                learning_rate: -1.0,
                ..Default::default()
            },
            "learning rate",
        ),
        (
            LearnOptions {
                steps: 0,
                ..Default::default()
            },
            "steps",
        ),
        (
            LearnOptions {
                top_t: 0,
                ..Default::default()
            },
            "top_t",
        ),
        (
            LearnOptions {
                stop_loss: f32::NAN,
                ..Default::default()
            },
            "stop loss",
        ),
        (
            LearnOptions {
                max_row_norm: -1.0,
                ..Default::default()
            },
            "max row norm",
        ),
        (
            LearnOptions {
                background_penalty: f32::INFINITY,
                ..Default::default()
            },
            "background penalty",
        ),
        (
            LearnOptions {
                top_t: engram::learn::MAX_ANCHORED_ROWS + 1,
                ..Default::default()
            },
            "anchor solves",
        ),
        (
            LearnOptions {
                earlier_fact_penalty: -1.0,
                ..Default::default()
            },
            "earlier-fact penalty",
        ),
    ] {
        let err = engine.learn(&fact, &opts, &mut |_, _, _| true).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(_)) && err.to_string().contains(needle),
            "{err}"
        );
    }
    assert!(
        engine
            .learn(
                &[Fact::qa("", "x")],
                &LearnOptions::default(),
                &mut |_, _, _| true
            )
            .is_err()
    );
    assert!(
        values(&engine) == before,
        "a refused call changed the memory"
    );

    // A damaged value row (NaN) that the fact reads: the loss is not finite, the call is
    // refused, and the memory (damage included) is left exactly as it was.
    let ex = &engram::learn::examples(engine.tokenizer(), &fact[0]).unwrap()[0];
    let seq = engine
        .model()
        .prepare(&ex.tokens, ex.targets.clone())
        .unwrap();
    let row = engine.model().backend().download_slots(&seq.lookup.slots)[0];
    let dim = engine.model().config.dim;
    let b = engine.model().backend();
    let nan = b.upload(&vec![f32::NAN; dim], 1, dim);
    engine.model_mut().write_values(&[row], &nan).unwrap();
    let damaged = values(&engine);
    let err = engine
        .learn(&fact, &LearnOptions::default(), &mut |_, _, _| true)
        .unwrap_err();
    eprintln!("damaged memory: {err}");
    assert!(err.to_string().contains("not finite"), "{err}");
    let now = values(&engine);
    assert!(
        now.iter()
            .zip(&damaged)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "a rejected call changed the memory"
    );
}

#[test]
fn facts_files_parse_and_bad_lines_are_named() {
    let dir = engram_e2e::scratch_dir("facts");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let jsonl = write(
        "f.jsonl",
        "{\"question\": \"Q1?\", \"answer\": \"A1\"}\n\n{\"note\": \"N1.\"}\n",
    );
    assert_eq!(
        Fact::read_file(&jsonl).unwrap(),
        vec![Fact::qa("Q1?", "A1"), Fact::note("N1.")]
    );
    let csv = write(
        "f.csv",
        "question,answer\n\"Who, really?\",\"Ana \"\"A\"\" B\"\nQ2?,A2\n",
    );
    assert_eq!(
        Fact::read_file(&csv).unwrap(),
        vec![
            Fact::qa("Who, really?", "Ana \"A\" B"),
            Fact::qa("Q2?", "A2")
        ]
    );
    let notes = write(
        "notes.txt",
        "My sister Ana lives in Porto.\nI was born in 1990.\n",
    );
    assert_eq!(Fact::read_file(&notes).unwrap().len(), 2);
    let bad = write("bad.jsonl", "{\"question\": \"Q\"}\n");
    let err = Fact::read_file(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl:1"), "{err}");
    let bad = write("bad.csv", "only one field\n");
    assert!(
        Fact::read_file(&bad)
            .unwrap_err()
            .to_string()
            .contains("bad.csv:1")
    );
}

#[test]
fn training_phrasings_target_only_what_the_fact_says() {
    let engine = Engine::open(default_model(), &EngineOptions::default()).unwrap();
    let tok = engine.tokenizer();
    let fact = Fact::qa("Who won the 1931 Quiz Cup?", "Ana Porto");
    let targets: Vec<String> = engram::learn::examples(tok, &fact)
        .unwrap()
        .iter()
        .map(|e| tok.decode(&e.tokens[e.targets.start + 1..e.targets.end + 1], false))
        .collect();
    eprintln!("targets: {targets:?}");
    for t in &targets {
        assert!(t.contains("Ana Porto"), "{t:?} misses the answer");
        // A canned opening is context, never a target: trained with every fact it became the
        // opening of every answer ("The answer is: The answer is: …").
        assert!(
            !t.contains("The answer is"),
            "{t:?} trains the canned opening"
        );
    }
    let whole: Vec<String> = engram::learn::examples(tok, &fact)
        .unwrap()
        .iter()
        .map(|e| tok.decode(&e.tokens, false))
        .collect();
    assert!(whole.iter().any(|w| w.contains("The answer is Ana Porto.")));
}

/// An update is trained on the questions the fact it replaced answered, each answered with
/// the update (and targeting only that answer); a fact that replaced nothing gets none.
#[test]
fn an_update_answers_what_was_asked_of_the_fact_it_replaced() {
    let engine = Engine::open(default_model(), &EngineOptions::default()).unwrap();
    let tok = engine.tokenizer();
    let update = Fact::note("We moved to Coimbra last month.");
    let replaced = ["We live in Braga, in the north of Portugal.".to_owned()];
    let examples = engram::learn::update_examples(tok, &update, &replaced).unwrap();
    assert!(
        !examples.is_empty() && examples.len() <= 4,
        "{}",
        examples.len()
    );
    let whole: Vec<String> = examples
        .iter()
        .map(|e| tok.decode(&e.tokens, false))
        .collect();
    eprintln!("{whole:#?}");
    assert!(
        whole.iter().any(|w| w.contains("Where do we live")),
        "{whole:?}"
    );
    for e in &examples {
        let target = tok.decode(&e.tokens[e.targets.start + 1..e.targets.end + 1], false);
        assert!(
            target.starts_with("You moved to Coimbra last month."),
            "{target:?}"
        );
        assert!(!target.contains("Braga"), "{target:?} trains the old value");
    }
    assert!(
        engram::learn::update_examples(tok, &update, &[])
            .unwrap()
            .is_empty()
    );
}

/// A question fact is named by its rare words where it has any: a country or an
/// abbreviation in it would otherwise open it for every question about that country.
#[test]
fn common_words_name_a_question_only_without_a_rarer_one() {
    let engine = Engine::open(default_model(), &EngineOptions::default()).unwrap();
    let tok = engine.tokenizer();
    let named = |fact: &Fact| -> Vec<String> {
        engram::learn::topic_needles(tok, fact)
            .unwrap()
            .iter()
            .map(|n| tok.decode(n, false).trim().to_owned())
            .collect()
    };
    let hesse = named(&Fact::qa(
        "Who wrote the lyrics for the official anthem of the state of Hesse, Germany?",
        "Carl Preser",
    ));
    assert!(hesse.iter().any(|n| n == "Hesse"), "{hesse:?}");
    assert!(!hesse.iter().any(|n| n == "Germany"), "{hesse:?}");
    let whaley = named(&Fact::qa(
        "In which U.S. state was painter Davyd Whaley born?",
        "Tennessee",
    ));
    assert!(!whaley.iter().any(|n| n == "U.S."), "{whaley:?}");
    assert!(whaley.iter().any(|n| n == "Whaley"), "{whaley:?}");
    // Where every such word is common, the question's rare content words name it instead.
    let india = named(&Fact::qa(
        "What is the name of India's first nano-satellite?",
        "Jugnu",
    ));
    assert!(!india.iter().any(|n| n == "India"), "{india:?}");
    assert!(india.iter().any(|n| n == "nano-satellite"), "{india:?}");
    // And where there is none, the common words.
    let france = named(&Fact::qa("What is the capital of France?", "Paris"));
    assert!(france.iter().any(|n| n == "France"), "{france:?}");
    // A note keeps its names, common or not: "Where does Ana live?" names Ana alone. Its
    // common nouns ("sister") name it only where the user asks about their own.
    let ana = named(&Fact::note("My sister Ana lives in Porto."));
    assert!(
        ana.iter().any(|n| n == "Ana") && ana.iter().any(|n| n == "Porto"),
        "{ana:?}"
    );
    assert!(!ana.iter().any(|n| n == "sister"), "{ana:?}");
}

#[test]
fn content_positions_hold_the_facts_words_and_no_template_text() {
    let engine = Engine::open(default_model(), &EngineOptions::default()).unwrap();
    let tok = engine.tokenizer();
    let facts = [
        (
            Fact::qa("Who won the 1931 Quiz Cup?", "Ana Porto"),
            vec!["Who won the 1931 Quiz Cup?", "Ana Porto"],
        ),
        (
            Fact::note("My sister Ana lives in Porto."),
            // The assistant's replies say it in the second person.
            vec![
                "My sister Ana lives in Porto.",
                "Your sister Ana lives in Porto.",
            ],
        ),
    ];
    for (fact, words) in &facts {
        for e in engram::learn::examples(tok, fact).unwrap() {
            let parts: Vec<String> = e
                .content
                .iter()
                .map(|r| tok.decode(&e.tokens[r.clone()], false))
                .collect();
            let joined = parts.concat();
            eprintln!("{:?} -> {parts:?}", tok.decode(&e.tokens, false));
            assert!(
                words.iter().any(|w| joined.contains(w.trim())),
                "{parts:?} misses the fact's words"
            );
            for markup in [
                "<|im_",
                "Question:",
                "Answer:",
                "Q:",
                "Note:",
                "Remember",
                "answer is",
            ] {
                assert!(
                    !joined.contains(markup),
                    "{parts:?} holds template text {markup:?}"
                );
            }
            // Everything the phrasing trains on is content, except the end-of-turn token.
            let trained = e.targets.start + 1..e.targets.end + 1;
            let covered = trained
                .clone()
                .filter(|p| e.content.iter().any(|r| r.contains(p)))
                .count();
            assert!(
                covered + 1 >= trained.len(),
                "{parts:?} leaves trained tokens out"
            );
        }
    }
}

#[test]
fn content_only_selection_picks_rows_the_facts_own_words_read() {
    let mut engine = engine_with_memory();
    let fact = Fact::qa("Which bus goes to the Harlow quarry?", "the 41");
    let mut content = HashSet::new();
    {
        let model = engine.model();
        let shape = &model.memory()[0].lookup.shape;
        let reads = shape.heads * shape.top_k;
        for e in engram::learn::examples(engine.tokenizer(), &fact).unwrap() {
            let seq = model.prepare(&e.tokens, e.targets.clone()).unwrap();
            let slots = model.backend().download_slots(&seq.lookup.slots);
            for r in &e.content {
                content.extend(slots[r.start * reads..r.end * reads].iter().copied());
            }
        }
    }
    // Template protection off in both runs: it already keeps the rows that every phrasing's
    // markup reads, which on this small-background store is where the default run's
    // non-content rows come from.
    // 500 rows: the top 128 of this fact's reads are all read at its own words anyway, so
    // the default count would show no difference for the option to make.
    let unprotected = LearnOptions {
        protect_template_rows: false,
        top_t: 500,
        ..Default::default()
    };
    let only = LearnOptions {
        content_rows_only: true,
        ..unprotected.clone()
    };
    let r = engine
        .learn(std::slice::from_ref(&fact), &only, &mut |_, _, _| true)
        .unwrap();
    let rows = &r.facts[0].rows;
    assert_eq!(rows.len(), only.top_t);
    let outside = rows.iter().filter(|row| !content.contains(row)).count();
    assert_eq!(
        outside, 0,
        "{outside} selected rows are read only at template text"
    );
    // Selection does not depend on the values, so a run without the option on the same engine
    // shows what the option excludes: then some selected rows are read only at template text.
    let r = engine
        .learn(&[fact], &unprotected, &mut |_, _, _| true)
        .unwrap();
    let outside = r.facts[0]
        .rows
        .iter()
        .filter(|row| !content.contains(row))
        .count();
    eprintln!(
        "without the option {outside} of {} rows are template-only",
        r.facts[0].rows.len()
    );
    assert!(
        outside > 0,
        "the option never changes the selection, so it proves nothing"
    );
}

//! Learning on the real default model: facts it does not know are learned and recalled in a
//! phrasing the training batch never used, only the selected value rows change, general
//! questions are still answered, and bad settings or a diverging step leave the memory as it was.

use engram::backend::Backend;
use std::collections::HashSet;

use engram::delta::MemoryAccess;
use engram::delta::MemoryStore;
use engram::learn::{Fact, LearnOptions, Optimizer, template_rows};
use engram::{
    BackgroundLearner, Engine, EngineOptions, Error, LearnerEvent, ReadGating, SharedEngine,
};
use engram_e2e::default_model;
use engram_e2e::learning::{engine_and_store, engine_with_memory, values};

/// Σ‖memory output‖² over the store's sampled background tokens, under the engine's values.
fn background_output(engine: &Engine, store: &MemoryStore) -> f64 {
    let values = values(engine);
    let dim = engine.model().config.dim;
    let sample = &store.layers[0].background.sample;
    let reads = store.config.heads * store.config.top_k;
    let mut total = 0.0;
    for t in 0..sample.tokens(reads) {
        let mut out = vec![0f64; dim];
        for i in t * reads..(t + 1) * reads {
            let (slot, w) = (sample.slots[i] as usize, f64::from(sample.weights[i]));
            for (o, v) in out.iter_mut().zip(&values[slot * dim..(slot + 1) * dim]) {
                *o += w * f64::from(*v);
            }
        }
        total += out.iter().map(|x| x * x).sum::<f64>();
    }
    total
}

/// Made-up facts and notes, and the question each is asked with afterwards: questions in a
/// form no training phrasing uses ("I have a question: …"), notes through a question whose
/// wording differs from the note's.
const FACTS: [(&str, &str, &str, &str); 10] = [
    (
        "What is the name of Marta's dog?",
        "Bruno",
        "I have a question: what is the name of Marta's dog?",
        "Bruno",
    ),
    (
        "In which year did the Kelso bridge open?",
        "1887",
        "I have a question: in which year did the Kelso bridge open?",
        "1887",
    ),
    (
        "Who painted the mural in the Lindqvist library?",
        "Ingrid Halvorsen",
        "I have a question: who painted the mural in the Lindqvist library?",
        "Halvorsen",
    ),
    (
        "",
        "My sister Ana lives in Porto.",
        "Where does my sister Ana live?",
        "Porto",
    ),
    (
        "What colour is the door of the Brannock inn?",
        "teal",
        "I have a question: what colour is the door of the Brannock inn?",
        "teal",
    ),
    (
        "Which river flows through the town of Veldmoor?",
        "the Ashwater",
        "I have a question: which river flows through the town of Veldmoor?",
        "Ashwater",
    ),
    (
        "",
        "My dentist is called Dr. Okafor.",
        "What is my dentist called?",
        "Okafor",
    ),
    (
        "What is the name of Tomas's cat?",
        "Pepper",
        "I have a question: what is the name of Tomas's cat?",
        "Pepper",
    ),
    (
        "",
        "The wifi password at the cabin is heron-42.",
        "What is the wifi password at the cabin?",
        "heron",
    ),
    (
        "Who founded the Calder rowing club?",
        "Edith Marlowe",
        "I have a question: who founded the Calder rowing club?",
        "Marlowe",
    ),
];

fn fact(question: &str, answer: &str) -> Fact {
    if question.is_empty() {
        Fact::note(answer)
    } else {
        Fact::qa(question, answer)
    }
}

#[test]
fn facts_are_learned_sparsely_and_general_knowledge_stays() {
    let mut engine = engine_with_memory();
    let facts: Vec<Fact> = FACTS.iter().map(|f| fact(f.0, f.1)).collect();
    for (_, _, q, want) in FACTS {
        let a = engine.ask(q, 32).unwrap();
        assert!(
            !a.contains(want),
            "the base model already knows {want:?}: {a:?}"
        );
    }
    let general = [
        ("What is the capital of Japan?", "Tokyo"),
        ("What is the capital of Germany?", "Berlin"),
        ("What is the largest ocean on Earth?", "Pacific"),
    ];
    for (q, want) in general {
        let a = engine.ask(q, 32).unwrap();
        assert!(
            a.contains(want),
            "the base model does not know {want:?}: {a:?}"
        );
    }

    let before = values(&engine);
    let report = engine
        .learn(&facts, &LearnOptions::default(), &mut |_, _, _| true)
        .unwrap();
    let after = values(&engine);

    let dim = engine.model().config.dim;
    let mut allowed: Vec<u32> = report.facts.iter().flat_map(|f| f.rows.clone()).collect();
    allowed.sort_unstable();
    allowed.dedup();
    let changed: Vec<u32> = (0..before.len() / dim)
        .filter(|&r| before[r * dim..(r + 1) * dim] != after[r * dim..(r + 1) * dim])
        .map(|r| r as u32)
        .collect();
    assert!(!changed.is_empty(), "learning changed nothing");
    assert!(
        changed.iter().all(|r| allowed.binary_search(r).is_ok()),
        "rows outside the selection changed"
    );
    for (f, r) in facts.iter().zip(&report.facts) {
        assert!(r.rows.len() <= LearnOptions::default().top_t);
        assert!(
            r.loss_after < 0.5 * r.loss_before,
            "{f:?}: loss {} -> {}",
            r.loss_before,
            r.loss_after
        );
    }
    // Rows every question or note phrasing reads whatever it says are never selected.
    let template: Vec<HashSet<u32>> = [&facts[0], &facts[3]]
        .iter()
        .map(|f| template_rows(engine.model(), engine.tokenizer(), f).unwrap())
        .collect();
    assert!(template.iter().all(|t| !t.is_empty()));
    for (f, r) in facts.iter().zip(&report.facts) {
        let kind = usize::from(matches!(f, Fact::Note(_)));
        assert!(
            r.rows.iter().all(|row| !template[kind].contains(row)),
            "{f:?}: a template row was selected"
        );
    }
    let mut recalled = 0;
    let mut notes_recalled = 0;
    for (f, (_, _, q, want)) in facts.iter().zip(FACTS) {
        let a = engine.ask(q, 32).unwrap();
        eprintln!("{q} -> {a}");
        recalled += a.contains(want) as usize;
        notes_recalled += (matches!(f, Fact::Note(_)) && a.contains(want)) as usize;
    }
    for (q, want) in general {
        let a = engine.ask(q, 32).unwrap();
        eprintln!("{q} -> {a}");
        assert!(a.contains(want), "general knowledge lost: {a:?}");
    }
    eprintln!(
        "recalled {recalled}/10 ({notes_recalled}/3 notes); {} rows changed of {}; {:.1} s per \
         fact ({:?})",
        changed.len(),
        before.len() / dim,
        report.total.as_secs_f64() / facts.len() as f64,
        report.timings
    );
    // Measured here: 7/10 with 2 notes; 9/10 with 3 notes once notes were also trained on
    // the questions people ask (2026-12-06). The bars leave room for rounding differences between
    // kernels; the full evaluation (`engram eval`) measures the rates.
    assert!(recalled >= 5, "only {recalled} of 10 facts recalled");
    assert!(
        notes_recalled >= 1,
        "no note was recalled through a question"
    );

    // Without the protection, a fact does select template rows: the check above can fail.
    let unprotected = LearnOptions {
        protect_template_rows: false,
        ..Default::default()
    };
    let extra = Fact::qa("Which bus goes to the Harlow quarry?", "the 41");
    let r = engine
        .learn(&[extra], &unprotected, &mut |_, _, _| true)
        .unwrap();
    let hits = r.facts[0]
        .rows
        .iter()
        .filter(|row| template[0].contains(row))
        .count();
    eprintln!(
        "unprotected: {hits} of {} selected rows are template rows",
        r.facts[0].rows.len()
    );
    assert!(
        hits > 0,
        "template protection is never needed, so it proves nothing"
    );
    // A later call reuses the rows the engine found for the first one: still none selected.
    let later = Fact::qa("Which ferry leaves Harlow at dawn?", "the Morven");
    let r = engine
        .learn(&[later], &LearnOptions::default(), &mut |_, _, _| true)
        .unwrap();
    assert!(
        r.facts[0].rows.iter().all(|row| !template[0].contains(row)),
        "a later learning call selected a template row"
    );

    // Masked AdamW on one more fact: the loss falls and only its selected rows move.
    let before = values(&engine);
    let adam = LearnOptions {
        learning_rate: 0.5,
        optimizer: Optimizer::adamw(),
        ..Default::default()
    };
    let fact = Fact::qa("Which street is the Orvell bakery on?", "Lindengasse");
    let mut steps = 0;
    let r = engine
        .learn(&[fact], &adam, &mut |_, _, _| {
            steps += 1;
            true
        })
        .unwrap();
    let after = values(&engine);
    let f = &r.facts[0];
    eprintln!("AdamW: loss {:.3} -> {:.3}", f.loss_before, f.loss_after);
    assert!(f.loss_after < 0.5 * f.loss_before);
    // Every pass (each step, then the final loss) runs all the phrasings' tokens; progress
    // is reported after each step and once for the final pass.
    let passes = steps;
    assert!(
        f.tokens_stepped.is_multiple_of(passes) && f.tokens_stepped / passes >= 4 * f.examples,
        "{} tokens over {passes} passes of {} phrasings",
        f.tokens_stepped,
        f.examples
    );
    for row in 0..before.len() / dim {
        let same = before[row * dim..(row + 1) * dim] == after[row * dim..(row + 1) * dim];
        assert!(
            same || f.rows.binary_search(&(row as u32)).is_ok(),
            "row {row} moved"
        );
    }
}

/// Engine options with the topic read gate, the default until 2026-12-06: the background
/// anchor and the earlier-fact term act only under it and the cosine gate (a routing gate
/// reads a fact's rows nowhere else than after its naming, so there is nothing to hold).
fn topic_gate() -> EngineOptions {
    EngineOptions {
        read_gate: ReadGating::Topics {
            questions: engram::DEFAULT_TOPIC_COSINE,
            notes: engram::DEFAULT_TOPIC_COSINE,
        },
        ..Default::default()
    }
}

/// Learning options at the rate and rows per fact the topic and cosine gates were tuned at.
fn topic_rate() -> LearnOptions {
    LearnOptions {
        learning_rate: engram::learn::TOPIC_GATE_LEARNING_RATE,
        top_t: engram::learn::TOPIC_GATE_TOP_T,
        ..Default::default()
    }
}

#[test]
fn the_background_anchor_keeps_the_memory_quiet_where_general_text_reads() {
    let (engine, store) = engine_and_store();
    let reads = store.config.heads * store.config.top_k;
    let sample = &store.layers[0].background.sample;
    assert_eq!(
        sample.tokens(reads),
        4096,
        "a 4,096-token background keeps every token's reads"
    );
    drop(engine);
    let facts: Vec<Fact> = FACTS[..3].iter().map(|f| fact(f.0, f.1)).collect();
    let run = |penalty: f32| {
        let mut engine = Engine::open(default_model(), &topic_gate()).unwrap();
        engine.attach_memory(store.clone(), None).unwrap();
        let opts = LearnOptions {
            background_penalty: penalty,
            // Only the background term differs between the two runs.
            earlier_fact_penalty: 0.0,
            ..topic_rate()
        };
        let report = engine.learn(&facts, &opts, &mut |_, _, _| true).unwrap();
        (background_output(&engine, &store), report)
    };
    let (free, free_report) = run(0.0);
    let (held, held_report) = run(LearnOptions::default().background_penalty);
    eprintln!(
        "memory output at the sampled background tokens (sum of squares): {free:.1} without \
         the anchor, {held:.1} with it"
    );
    assert!(
        held < 0.25 * free,
        "the anchor left {held:.1} of {free:.1} at the background"
    );
    // The same rows were chosen; the anchor only changes how they move, and facts still learn.
    for (a, b) in free_report.facts.iter().zip(&held_report.facts) {
        assert_eq!(a.rows, b.rows);
        eprintln!(
            "loss {:.2} -> {:.2} without, -> {:.2} with the anchor",
            a.loss_before, a.loss_after, b.loss_after
        );
        assert!(b.loss_after < 0.5 * b.loss_before);
    }
}

/// The memory's output (dim wide) at every token of `fact`'s training phrasings.
fn output_at_fact(engine: &Engine, fact: &Fact) -> Vec<f64> {
    let model = engine.model();
    let values = values(engine);
    let dim = model.config.dim;
    let mut out = Vec::new();
    for e in engram::learn::examples(engine.tokenizer(), fact).unwrap() {
        let seq = model.prepare(&e.tokens, e.targets.clone()).unwrap();
        let slots = model.backend().download_slots(&seq.lookup.slots);
        let weights = model.backend().download(&seq.lookup.weights);
        let reads = slots.len() / e.tokens.len();
        for t in 0..e.tokens.len() {
            let mut o = vec![0f64; dim];
            for i in t * reads..(t + 1) * reads {
                let v = &values[slots[i] as usize * dim..(slots[i] as usize + 1) * dim];
                o.iter_mut()
                    .zip(v)
                    .for_each(|(a, &x)| *a += f64::from(weights[i]) * f64::from(x));
            }
            out.extend(o);
        }
    }
    out
}

#[test]
fn earlier_facts_keep_their_memory_output_while_later_facts_learn() {
    let (engine, store) = engine_and_store();
    drop(engine);
    let facts: Vec<Fact> = FACTS[..4].iter().map(|f| fact(f.0, f.1)).collect();
    let run = |penalty: f32| {
        let mut engine = Engine::open(default_model(), &topic_gate()).unwrap();
        engine.attach_memory(store.clone(), None).unwrap();
        let opts = LearnOptions {
            earlier_fact_penalty: penalty,
            ..topic_rate()
        };
        engine
            .learn(&facts[..1], &opts, &mut |_, _, _| true)
            .unwrap();
        let before = output_at_fact(&engine, &facts[0]);
        let report = engine
            .learn(&facts[1..], &opts, &mut |_, _, _| true)
            .unwrap();
        let after = output_at_fact(&engine, &facts[0]);
        let moved: f64 = before
            .iter()
            .zip(&after)
            .map(|(a, b)| (a - b).powi(2))
            .sum();
        let size: f64 = before.iter().map(|a| a * a).sum();
        (moved, size, report)
    };
    let (free, size, _) = run(0.0);
    let default = LearnOptions::default().earlier_fact_penalty;
    let (held, _, report) = run(default);
    let (strong, _, _) = run(10.0 * default);
    eprintln!(
        "memory output at the first fact's tokens (sum of squares {size:.1}) moved by {free:.2} \
         while three later facts learned without the earlier-fact term, {held:.2} with it, \
         {strong:.2} with ten times the term"
    );
    assert!(size > 0.0, "the first fact changed nothing");
    // The default memory reads its picks evenly (temperature 4), so each token's hold on any
    // one row is weak and the default term removes less than half of the motion; ten times
    // the term shows that the hold is real and grows with μ.
    assert!(
        held < 0.75 * free,
        "the earlier fact's output moved {held:.2} with the term, {free:.2} without"
    );
    assert!(
        strong < 0.25 * free,
        "the earlier fact's output moved {strong:.2} with ten times the term, {free:.2} without"
    );
    for f in &report.facts {
        eprintln!(
            "later fact: loss {:.2} -> {:.2}",
            f.loss_before, f.loss_after
        );
        assert!(
            f.loss_after < 0.5 * f.loss_before,
            "a later fact did not learn"
        );
    }
}

#[test]
fn steps_stop_at_the_loss_target() {
    let mut engine = engine_with_memory();
    let fact = [Fact::qa("What is the name of Marta's dog?", "Bruno")];
    // Without the norm cap, so that only the stop rule decides the number of steps.
    let opts = LearnOptions {
        steps: 12,
        stop_loss: 1.5,
        max_row_norm: 0.0,
        ..Default::default()
    };
    let mut losses = Vec::new();
    engine
        .learn(&fact, &opts, &mut |_, step, loss| {
            losses.push((step, loss));
            true
        })
        .unwrap();
    eprintln!("losses per step: {losses:?}");
    let &(last_step, last_loss) = losses.last().unwrap();
    for &(step, loss) in &losses[..losses.len() - 1] {
        assert!(
            step == 0 || loss > 1.5,
            "step {step} at loss {loss} should have stopped"
        );
    }
    assert!(
        last_step < 12 && last_loss <= 1.5,
        "the loss never reached 1.5 in 12 steps: {losses:?}"
    );
}

#[test]
fn learned_rows_stay_within_the_norm_limit() {
    let mut engine = engine_with_memory();
    let fact = [Fact::qa("What is the name of Marta's dog?", "Bruno")];
    let opts = LearnOptions {
        max_row_norm: 4.0,
        ..Default::default()
    };
    let report = engine.learn(&fact, &opts, &mut |_, _, _| true).unwrap();
    let rows = &report.facts[0].rows;
    let dim = engine.model().config.dim;
    let learned = engine.model().memory_rows(0, rows).unwrap();
    let max = learned
        .chunks(dim)
        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
        .fold(0f32, f32::max);
    eprintln!("largest learned row norm {max:.4} (limit 4)");
    assert!(max <= 4.0 * (1.0 + 1e-5), "a row grew to norm {max}");
    assert!(
        max > 3.9,
        "no row reached the limit, so the test proves nothing: {max}"
    );
}

/// Chat-formatted tokens of one user question.
fn chat_tokens(engine: &Engine, question: &str) -> Vec<u32> {
    let text = engine
        .tokenizer()
        .apply_chat_template(&[engram::ChatMessage::new("user", question)], true)
        .unwrap();
    engine.tokenizer().encode(&text, true).unwrap()
}

fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn the_cosine_read_gate_keeps_learned_rows_to_their_facts_and_survives_reopening() {
    let (engine, store) = engine_and_store();
    let path = engram_e2e::scratch_dir("read_gate").join("gate.engram");
    let cosine_gate = || ReadGating::Cosine {
        questions: engram::DEFAULT_READ_GATE,
        notes: engram::DEFAULT_NOTE_READ_GATE,
    };
    store.save(&path).unwrap();
    drop(engine);
    let keys_file = engram::read_keys_path(&path);
    let _ = std::fs::remove_file(&keys_file);
    let open = |gate: ReadGating, access: MemoryAccess| {
        let mut e = Engine::open(
            default_model(),
            &EngineOptions {
                read_gate: gate,
                ..Default::default()
            },
        )
        .unwrap();
        e.open_memory(&path, access).unwrap();
        e
    };
    let mut engine = open(cosine_gate(), MemoryAccess::Write);
    assert_eq!(engine.read_gate_size(), Some((0, 0)), "no fact yet");
    let general = chat_tokens(&engine, "What is the capital of Japan?");
    let base = engine.logits(&general).unwrap();
    let facts: Vec<Fact> = FACTS[..3].iter().map(|f| fact(f.0, f.1)).collect();
    engine
        .learn(&facts, &topic_rate(), &mut |_, _, _| true)
        .unwrap();
    let (keys, rows) = engine.read_gate_size().unwrap();
    eprintln!("read gate after 3 facts: {keys} keys over {rows} rows");
    assert!(keys > 0 && rows > 0);
    assert!(
        keys_file.exists(),
        "the keys were not kept beside the store"
    );

    // A training phrasing's own tokens pass everywhere: gated and ungated agree exactly.
    let own = engine
        .tokenizer()
        .encode(&format!("Q: {}\nA: {}", FACTS[0].0, FACTS[0].1), true)
        .unwrap();
    let own_gated = engine.logits(&own).unwrap();
    let gated = engine.logits(&general).unwrap();
    let answer = engine.ask(FACTS[0].2, 32).unwrap();
    engine.set_read_gating(ReadGating::Off).unwrap();
    assert_eq!(engine.read_gate_size(), None);
    assert_eq!(engine.logits(&own).unwrap(), own_gated);
    // A general question: the learned rows it reads are mostly closed to it.
    let ungated = engine.logits(&general).unwrap();
    let (d_gated, d_ungated) = (distance(&gated, &base), distance(&ungated, &base));
    eprintln!("general question's logits moved {d_gated:.3} gated, {d_ungated:.3} ungated");
    assert!(
        d_ungated > 0.0,
        "the facts changed nothing the question reads"
    );
    assert!(
        d_gated < 0.5 * d_ungated,
        "the gate kept {d_gated:.3} of {d_ungated:.3}"
    );
    drop(engine);

    // Another process reads the same gate: from the kept keys, and rebuilt without them.
    for rebuilt in [false, true] {
        if rebuilt {
            std::fs::remove_file(&keys_file).unwrap();
        }
        let again = open(cosine_gate(), MemoryAccess::Read);
        assert_eq!(
            again.read_gate_size(),
            Some((keys, rows)),
            "rebuilt: {rebuilt}"
        );
        assert_eq!(again.logits(&general).unwrap(), gated, "rebuilt: {rebuilt}");
        assert_eq!(again.ask(FACTS[0].2, 32).unwrap(), answer);
    }
    // Damaged keys are not used: the gate is rebuilt from the history.
    let again = open(cosine_gate(), MemoryAccess::Write);
    drop(again);
    let mut bytes = std::fs::read(&keys_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&keys_file, &bytes).unwrap();
    let again = open(cosine_gate(), MemoryAccess::Read);
    assert_eq!(again.read_gate_size(), Some((keys, rows)));
    assert_eq!(again.logits(&general).unwrap(), gated);
    // A threshold outside the cosine range is refused when the engine opens.
    let bad = Engine::open(
        default_model(),
        &EngineOptions {
            read_gate: ReadGating::Cosine {
                questions: 1.5,
                notes: 0.8,
            },
            ..Default::default()
        },
    );
    assert!(matches!(bad, Err(Error::InvalidArgument(_))));
}

#[test]
fn the_topic_read_gate_leaves_questions_that_name_no_fact_exactly_as_the_base_model() {
    let (engine, store) = engine_and_store();
    let path = engram_e2e::scratch_dir("topic_gate").join("gate.engram");
    store.save(&path).unwrap();
    drop(engine);
    let keys_file = engram::read_keys_path(&path);
    let _ = std::fs::remove_file(&keys_file);
    let open = |access: MemoryAccess| {
        let mut e = Engine::open(default_model(), &topic_gate()).unwrap();
        e.open_memory(&path, access).unwrap();
        e
    };
    let mut engine = open(MemoryAccess::Write);
    // Same shape as a learned fact ("Who painted the mural in the Lindqvist library?"), another
    // subject: it names none of them.
    let neighbour = chat_tokens(&engine, "Who painted the mural in the Sistine Chapel?");
    let base = engine.logits(&neighbour).unwrap();
    let facts: Vec<Fact> = FACTS[..3].iter().map(|f| fact(f.0, f.1)).collect();
    engine
        .learn(&facts, &topic_rate(), &mut |_, _, _| true)
        .unwrap();
    assert_eq!(
        engine.logits(&neighbour).unwrap(),
        base,
        "a question that names no learned fact read its rows"
    );
    // Ungated, the same question reads the learned rows.
    let named = chat_tokens(&engine, FACTS[2].2);
    let gated_named = engine.logits(&named).unwrap();
    engine.set_read_gating(ReadGating::Off).unwrap();
    assert_ne!(
        engine.logits(&neighbour).unwrap(),
        base,
        "the facts changed nothing it reads"
    );
    engine.set_read_gating(topic_gate().read_gate).unwrap();
    let answer = engine.ask(FACTS[2].2, 32).unwrap();
    eprintln!("{:?} -> {answer:?}", FACTS[2].2);
    assert!(
        answer.contains(FACTS[2].3),
        "the fact was not recalled where its question names it: {answer:?}"
    );
    drop(engine);
    reopened_logits_match(
        &open,
        &keys_file,
        &[(&neighbour, &base), (&named, &gated_named)],
    );
}

/// Opens the store again as another process would, from the kept read-gate file and then
/// rebuilt from the store's history without it, and checks the logits of each sequence.
fn reopened_logits_match(
    open: &dyn Fn(MemoryAccess) -> Engine,
    keys_file: &std::path::Path,
    want: &[(&[u32], &[f32])],
) {
    for rebuilt in [false, true] {
        if rebuilt {
            std::fs::remove_file(keys_file).unwrap();
        }
        let again = open(MemoryAccess::Read);
        for (tokens, logits) in want {
            assert_eq!(again.logits(tokens).unwrap(), *logits, "rebuilt: {rebuilt}");
        }
    }
}

#[test]
fn subject_rows_store_a_fact_where_its_subject_is_read_and_answer_other_wordings() {
    use engram::learn::{SubjectRows, examples, topic_needles};
    let mut engine = engine_with_memory();
    let fact = Fact::qa("In which city is Brightwell Looms headquartered?", "Leeds");
    let reworded = "Where is Brightwell Looms based?";
    let before = engine.ask(reworded, 32).unwrap();
    assert!(
        !before.contains("Leeds"),
        "the base model knows it: {before:?}"
    );
    let options = LearnOptions {
        subject_rows: SubjectRows::Questions,
        ..LearnOptions::default()
    };
    let report = engine
        .learn(std::slice::from_ref(&fact), &options, &mut |_, _, _| true)
        .unwrap();
    // Every selected row is one a phrasing read at the subject's words.
    let model = engine.model();
    let needles = topic_needles(engine.tokenizer(), &fact).unwrap();
    let mut at_subject: HashSet<u32> = HashSet::new();
    for e in examples(engine.tokenizer(), &fact).unwrap() {
        let seq = model.prepare(&e.tokens, e.targets.clone()).unwrap();
        let slots = model.backend().download_slots(&seq.lookup.slots);
        let reads = slots.len() / e.tokens.len();
        for n in &needles {
            for p in 0..=e.tokens.len().saturating_sub(n.len()) {
                if e.tokens[p..].starts_with(n) {
                    at_subject.extend(&slots[p * reads..(p + n.len()) * reads]);
                }
            }
        }
    }
    let rows = &report.facts[0].rows;
    assert!(!rows.is_empty());
    assert!(
        rows.iter().all(|r| at_subject.contains(r)),
        "a row no subject token read was selected"
    );
    let after = engine.ask(reworded, 32).unwrap();
    eprintln!("{reworded} -> {after}");
    assert!(
        after.contains("Leeds"),
        "not recalled in other words: {after:?}"
    );
    // A question of the same shape about another subject is answered as before, though it
    // says "Looms": after another name's word, a word of the fact's name does not name it.
    let other = "In which city is Acme Looms headquartered?";
    assert!(!engine.ask(other, 32).unwrap().contains("Leeds"));
}

#[test]
fn the_routing_gate_answers_other_wordings_and_leaves_unnamed_questions_as_the_base_model() {
    let path = saved_store("routing_gate");
    let keys_file = engram::read_keys_path(&path);
    let _ = std::fs::remove_file(&keys_file);
    let open = |access: MemoryAccess| open_at(&path, access);
    let mut engine = open(MemoryAccess::Write);
    assert_eq!(engine.read_gating(), ReadGating::Routes, "the default");
    // Asked in words no training phrasing uses: a note through a question, a fact through a
    // paraphrase.
    let taught = [
        (
            Fact::note("My neighbour Tariq repaired my bike."),
            "Which neighbour of mine fixed my bike?",
            "Tariq",
        ),
        (
            Fact::qa("In which city is Brightwell Looms headquartered?", "Leeds"),
            "Brightwell Looms has its head office in which city?",
            "Leeds",
        ),
        (
            Fact::qa("Who founded the Calder rowing club?", "Edith Marlowe"),
            "The Calder rowing club was founded by whom?",
            "Marlowe",
        ),
    ];
    for (_, asked, want) in &taught {
        let a = engine.ask(asked, 32).unwrap();
        assert!(!a.contains(want), "the base model knows it: {a:?}");
    }
    // A question of the same shape about another subject names none of them.
    let neighbour = chat_tokens(&engine, "Who founded the Microsoft company?");
    let base = engine.logits(&neighbour).unwrap();
    let facts: Vec<Fact> = taught.iter().map(|t| t.0.clone()).collect();
    let report = engine
        .learn(&facts, &LearnOptions::default(), &mut |_, _, _| true)
        .unwrap();
    // Each fact owns its rows: no row was chosen twice.
    let mut rows: Vec<u32> = report.facts.iter().flat_map(|f| f.rows.clone()).collect();
    let chosen = rows.len();
    rows.sort_unstable();
    rows.dedup();
    assert_eq!(rows.len(), chosen, "two facts chose the same row");
    assert_eq!(
        engine.logits(&neighbour).unwrap(),
        base,
        "a question that names no learned fact read its rows"
    );
    let mut recalled = 0;
    for (_, asked, want) in &taught {
        let a = engine.ask(asked, 32).unwrap();
        eprintln!("{asked} -> {a}");
        recalled += a.contains(want) as usize;
    }
    // Measured here on 2026-12-06: 3 of 3.
    assert!(
        recalled >= 2,
        "only {recalled} of 3 recalled in other words"
    );
    // A chat that abstains answers what the memory recalls, and declines what nothing
    // learned answers instead of inventing it.
    let abstaining = |question: &str| {
        let mut chat = engram::Conversation::new(&engine);
        chat.set_abstention(Some(engram::DEFAULT_ABSTENTION.to_owned()));
        let options = engram::GenerateOptions {
            max_tokens: 24,
            ..Default::default()
        };
        let reply = chat.say(question, &options, |_| true).unwrap();
        (reply.abstained, reply.generation.text)
    };
    let (abstained, text) = abstaining("Who fixed my bike?");
    assert!(!abstained && text.contains("Tariq"), "{text:?}");
    let (abstained, text) = abstaining("What is my cat called?");
    assert!(abstained, "a never-told question was answered: {text:?}");
    assert_eq!(text, engram::DEFAULT_ABSTENTION);
    // General questions in the first person are answered by the model.
    assert!(!abstaining("What should I cook for dinner tonight?").0);
    let named = chat_tokens(&engine, taught[0].1);
    let answer = engine.logits(&named).unwrap();
    drop(engine);
    reopened_logits_match(&open, &keys_file, &[(&neighbour, &base), (&named, &answer)]);
}

/// A fresh default store saved as `<scratch>/<name>/store.engram`.
fn saved_store(name: &str) -> std::path::PathBuf {
    let (engine, store) = engine_and_store();
    let path = engram_e2e::scratch_dir(name).join("store.engram");
    store.save(&path).unwrap();
    drop(engine);
    path
}

/// The default model with the store at `path` attached.
fn open_at(path: &std::path::Path, access: MemoryAccess) -> Engine {
    let mut e = Engine::open(default_model(), &EngineOptions::default()).unwrap();
    e.open_memory(path, access).unwrap();
    e
}

/// Asserts that no file of the store at `path` (the store, its journal, fact log and read
/// keys) holds `words`.
fn assert_off_the_disk(path: &std::path::Path, words: &[u8], what: &str) {
    for file in [
        path.to_path_buf(),
        engram::delta::journal_path(path),
        engram::delta::fact_log_path(path),
        engram::read_keys_path(path),
    ] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes.windows(words.len()).any(|w| w == words),
            "{} still holds {what}",
            file.display()
        );
    }
}

/// Learn A, B, C into a store; forget B: A and C are still answered, B is not, B's rows are
/// back to their values before it (bit for bit where nothing else changed them), a question
/// about none of them reads as before, and nothing of B is left on disk — not in the history
/// after reopening, not in the journal, not in the fact log.
#[test]
fn forgetting_one_fact_takes_out_exactly_its_change_and_its_words() {
    let path = saved_store("forget");
    let open = |access: MemoryAccess| open_at(&path, access);
    let mut engine = open(MemoryAccess::Write);
    let taught = [
        (
            Fact::note("My neighbour Tariq repaired my bike."),
            "Who fixed my bike?",
            "Tariq",
        ),
        (
            Fact::note("My dentist is called Dr Quennell."),
            "What is my dentist's name?",
            "Quennell",
        ),
        (
            Fact::qa("In which city is Brightwell Looms headquartered?", "Leeds"),
            "In which city is Brightwell Looms headquartered?",
            "Leeds",
        ),
    ];
    let unrelated = chat_tokens(&engine, "What is the capital of Japan?");
    let base = engine.logits(&unrelated).unwrap();
    let before = values(&engine);
    let facts: Vec<Fact> = taught.iter().map(|t| t.0.clone()).collect();
    engine
        .learn(&facts, &LearnOptions::default(), &mut |_, _, _| true)
        .unwrap();
    // As `engram learn` does: the store file's history then holds B's words too.
    engine.checkpoint().unwrap();
    let numbers: Vec<u64> = engine.learned_facts().iter().map(|f| f.uid).collect();
    assert_eq!(numbers, vec![1, 2, 3], "facts are numbered in order");
    for (_, asked, want) in &taught {
        let a = engine.ask(asked, 32).unwrap();
        assert!(a.contains(want), "{asked} -> {a:?} before forgetting");
    }
    let b_rows = engine.learned_facts()[1].rows.clone();
    assert_eq!(
        engine
            .find_learned("dentist")
            .iter()
            .map(|f| f.uid)
            .collect::<Vec<_>>(),
        vec![2]
    );
    let report = engine.forget(2).unwrap();
    assert_eq!(report.rows, b_rows.len());
    assert_eq!(report.erased, 1, "its one fact-log record was overwritten");
    assert!(engine.forget(2).is_err(), "a fact is forgotten once");
    let after = values(&engine);
    let dim = engine.model_config().dim;
    for &r in &b_rows {
        let (r, r1) = (r as usize * dim, (r as usize + 1) * dim);
        assert_eq!(
            after[r..r1].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            before[r..r1]
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            "row {} is back to its value before B",
            r / dim
        );
    }
    assert_eq!(
        engine.logits(&unrelated).unwrap(),
        base,
        "unrelated reads as before"
    );
    let check = |engine: &Engine| {
        let texts: Vec<&str> = engine
            .learned_facts()
            .iter()
            .map(|f| f.text.as_str())
            .collect();
        assert_eq!(texts.len(), 2);
        assert!(texts.iter().all(|t| !t.contains("Quennell")), "{texts:?}");
        for (i, (_, asked, want)) in taught.iter().enumerate() {
            let a = engine.ask(asked, 32).unwrap();
            eprintln!("after forgetting B: {asked} -> {a}");
            assert_eq!(a.contains(want), i != 1, "{asked} -> {a:?}");
        }
    };
    check(&engine);
    drop(engine);
    assert_off_the_disk(&path, b"Quennell", "the forgotten fact's words");
    let fact_log = std::fs::read(engram::delta::fact_log_path(&path)).unwrap();
    assert!(
        fact_log.windows(5).any(|w| w == b"Tariq"),
        "the others stay"
    );
    check(&open(MemoryAccess::Read));
}

/// What a question recalls, by the routing gate's fact ids (facts in the order of learning,
/// forgotten ones left out).
fn named_by(engine: &Engine, question: &str) -> Vec<u32> {
    let prompt = chat_tokens(engine, question);
    let mut session = engine.session();
    let options = engram::GenerateOptions {
        max_tokens: 1,
        ..Default::default()
    };
    session.generate(&prompt, &options, |_| true).unwrap();
    session.facts_named_since(0).unwrap()
}

/// An update keeps the words of the fact it replaced: "Which city do we live in now?" and
/// "Did we stay in Braga?" recall "We moved to Coimbra last month." (which replaced "We live in
/// Braga, in the north of Portugal."), right after learning and after reopening, with the
/// saved gate keys and without them; forgetting "Braga" finds the update, and takes the
/// replaced fact's words off the disk with it.
#[test]
fn an_update_is_named_by_the_words_of_what_it_replaced() {
    let path = saved_store("update_names");
    let open = |access: MemoryAccess| open_at(&path, access);
    let mut engine = open(MemoryAccess::Write);
    let opts = LearnOptions::default();
    let braga = "We live in Braga, in the north of Portugal.";
    for note in [braga, "My sister Ana is a pilot."] {
        let r = engine.remember(note, &opts, &mut |_, _, _| true).unwrap();
        assert!(r.replaced.is_none(), "{note} replaced nothing");
    }
    let asked = ["Which city do we live in now?", "Did we stay in Braga?"];
    for q in asked {
        assert_eq!(named_by(&engine, q), vec![0], "{q} before the update");
    }
    let r = engine
        .remember("We moved to Coimbra last month.", &opts, &mut |_, _, _| {
            true
        })
        .unwrap();
    assert_eq!(r.replaced.map(|f| f.text).as_deref(), Some(braga));
    let last = engine.learned_facts().last().unwrap().clone();
    assert_eq!(last.replaced, vec![braga.to_owned()]);
    // Facts now: Ana (0), the move (1).
    let check = |engine: &Engine, when: &str| {
        for q in asked {
            assert_eq!(named_by(engine, q), vec![1], "{q} {when}");
        }
        assert!(
            named_by(engine, "What is the capital of Japan?").is_empty(),
            "a question naming nothing learned {when}"
        );
    };
    check(&engine, "right after learning");
    drop(engine);
    check(&open(MemoryAccess::Read), "reopened with the saved keys");
    let _ = std::fs::remove_file(engram::read_keys_path(&path));
    check(&open(MemoryAccess::Read), "reopened, keyed anew");
    // Checkpointed, the history (what the update replaced included) is read from the store
    // file, not the journal.
    let mut engine = open(MemoryAccess::Write);
    engine.checkpoint().unwrap();
    drop(engine);
    assert_eq!(
        std::fs::metadata(engram::delta::journal_path(&path)).map_or(0, |m| m.len()),
        0,
        "the checkpoint emptied the journal"
    );
    let _ = std::fs::remove_file(engram::read_keys_path(&path));
    let engine = open(MemoryAccess::Read);
    assert_eq!(engine.learned_facts().last(), Some(&last));
    check(&engine, "after a checkpoint");
    drop(engine);
    // Asked to forget the old value, the user finds the update that holds its words.
    let mut engine = open(MemoryAccess::Write);
    assert_eq!(engine.forget_matching("braga").unwrap().uid, last.uid);
    for q in asked {
        assert!(
            named_by(&engine, q).is_empty(),
            "{q} after forgetting the move"
        );
    }
    drop(engine);
    assert_off_the_disk(&path, b"Braga", "the replaced fact's words");
}

/// Learning in the background of a chat: a statement queued is learned on the worker; a
/// reader that asks for the engine meanwhile gets it at the worker's next gradient step (the
/// fact steps aside, nothing of it kept, and is learned again once the reader is done); the
/// event comes once the fact is journaled; a forget queued after it takes it out.
/// A fact stopped by its progress callback and learned again goes on from the step where it
/// stopped and ends in the same rows, bit for bit, as one learned without a stop (a chat's
/// learner steps aside for every reply and must not start over each time).
#[test]
fn a_stopped_fact_goes_on_from_its_step_and_ends_as_if_never_stopped() {
    let fact = [Fact::note("My neighbour Tariq repaired my bike.")];
    let opts = LearnOptions::default();
    let mut whole = engine_with_memory();
    let whole_report = whole.learn(&fact, &opts, &mut |_, _, _| true).unwrap();
    let rows = &whole_report.facts[0].rows;
    let whole_rows = whole.model().memory_rows(0, rows).unwrap();

    let mut stopped = engine_with_memory();
    let untouched = stopped.model().memory_rows(0, rows).unwrap();
    let stop_after = 2;
    let err = stopped
        .learn(&fact, &opts, &mut |_, step, _| step < stop_after)
        .unwrap_err();
    assert!(matches!(err, engram::Error::Interrupted(_)), "{err}");
    assert!(stopped.learned_facts().is_empty());
    assert_eq!(
        stopped.model().memory_rows(0, rows).unwrap(),
        untouched,
        "a stopped fact left something in the memory"
    );
    let mut steps_seen = Vec::new();
    let report = stopped
        .learn(&fact, &opts, &mut |_, step, _| {
            steps_seen.push(step);
            true
        })
        .unwrap();
    eprintln!(
        "stopped after step {stop_after}; learned again from step {:?} to {:?}",
        steps_seen.first(),
        steps_seen.last()
    );
    assert_eq!(
        steps_seen.first(),
        Some(&(stop_after + 1)),
        "it started over instead of going on"
    );
    assert_eq!(&report.facts[0].rows, rows);
    assert!(
        stopped.model().memory_rows(0, rows).unwrap() == whole_rows,
        "the resumed fact's rows differ from the uninterrupted fact's"
    );
}

#[test]
fn a_background_learner_steps_aside_for_a_reader_and_learns_after() {
    let (engine, store) = engine_and_store();
    let path = engram_e2e::scratch_dir("background").join("chat.engram");
    store.save(&path).unwrap();
    drop(engine);
    let mut engine = Engine::open(default_model(), &EngineOptions::default()).unwrap();
    engine.open_memory(&path, MemoryAccess::Write).unwrap();
    let shared = std::sync::Arc::new(SharedEngine::from(engine));
    let (tx, rx) = std::sync::mpsc::channel();
    let learner = BackgroundLearner::start(shared.clone(), LearnOptions::default(), move |e| {
        tx.send(e).unwrap();
    })
    .unwrap();
    learner
        .remember("My neighbour Tariq repaired my bike.")
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while learner.steps() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never took a step"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    {
        let reader = learner.read().unwrap();
        assert!(
            rx.try_recv().is_err(),
            "the fact finished before the reader got in"
        );
        assert_eq!(
            learner.pending(),
            1,
            "the statement waits while the reader reads"
        );
        assert!(
            reader.learned_facts().is_empty(),
            "nothing of a stopped fact is kept"
        );
        let reply = reader.ask("Who fixed my bike?", 24).unwrap();
        assert!(!reply.contains("Tariq"), "{reply:?} before it was learned");
    }
    let LearnerEvent::Remembered {
        uid, yielded, text, ..
    } = rx.recv().unwrap()
    else {
        panic!("the statement was not learned");
    };
    assert_eq!(
        (uid, text.as_str()),
        (1, "My neighbour Tariq repaired my bike.")
    );
    assert!(
        yielded >= 1,
        "it stepped aside for the reader ({yielded} times)"
    );
    let reply = learner
        .read()
        .unwrap()
        .ask("Who fixed my bike?", 24)
        .unwrap();
    assert!(reply.contains("Tariq"), "{reply:?} after it was learned");
    learner.forget("Tariq").unwrap();
    learner.wait_idle().unwrap();
    let LearnerEvent::Forgot(report) = rx.recv().unwrap() else {
        panic!("the fact was not forgotten");
    };
    assert_eq!(report.uid, 1);
    let reply = learner
        .read()
        .unwrap()
        .ask("Who fixed my bike?", 24)
        .unwrap();
    assert!(!reply.contains("Tariq"), "{reply:?} after it was forgotten");
    // A forget naming nothing is reported, not fatal; the learner ends when asked.
    learner.forget("the moon").unwrap();
    learner.wait_idle().unwrap();
    assert!(matches!(rx.recv().unwrap(), LearnerEvent::Failed { .. }));
    learner.finish().unwrap();
    assert!(shared.read().unwrap().learned_facts().is_empty());
}

/// Under the routing gate each fact owns its rows, at most a 64th of a small memory. Once the
/// rows its own words read are taken, a fact takes free rows elsewhere in the table (routing
/// reads them wherever it is named), and when no row is free it is refused with a clear error
/// and nothing changes.
#[test]
fn a_full_memory_fills_from_free_rows_then_refuses_clearly() {
    let engine = Engine::open(default_model(), &EngineOptions::default()).unwrap();
    // 256 rows: 4 per fact, 64 facts at most.
    let opts = engram::learn::RetrofitOptions {
        config: engram::MemoryConfig {
            n_keys: 16,
            top_k: 8,
            ..Default::default()
        },
        max_tokens: 1024,
        sample_tokens: 256,
        ..Default::default()
    };
    let store = engram::learn::retrofit(
        engine.model(),
        engine.tokenizer(),
        &engine.fingerprint(),
        &engram_e2e::background_documents(),
        &opts,
        &mut |_| true,
    )
    .unwrap();
    let mut engine = engine;
    engine.attach_memory(store, None).unwrap();
    assert_eq!(engine.read_gating(), ReadGating::Routes, "the default");
    // One step on the question's own phrasings: this is about rows, not recall.
    let learn = LearnOptions {
        steps: 1,
        asked_phrasings: false,
        ..Default::default()
    };
    let mut owned: Vec<u32> = Vec::new();
    let mut refused = None;
    let mut filled = 0;
    for i in 0..80 {
        let locker = fact(&format!("What is locker {i}'s code?"), &format!("Tern{i}"));
        let before = values(&engine);
        match engine.learn(std::slice::from_ref(&locker), &learn, &mut |_, _, _| true) {
            Ok(report) => {
                let rows = &report.facts[0].rows;
                assert!(!rows.is_empty(), "fact {i} learned in no row");
                assert!(rows.len() <= 4, "fact {i} took {} rows of 256", rows.len());
                assert!(
                    rows.iter().all(|r| !owned.contains(r)),
                    "fact {i} took a row an earlier fact owns"
                );
                filled += (rows.len() == 4) as usize;
                owned.extend(rows);
            }
            Err(e) => {
                assert_eq!(values(&engine), before, "a refused fact changed the memory");
                refused = Some((i, e.to_string()));
                break;
            }
        }
    }
    let (at, message) = refused.expect("a 256-row memory took 80 facts of 4 rows");
    eprintln!("{filled} facts got 4 rows; fact {at} refused: {message}");
    assert!(message.contains("the memory is full"), "{message}");
    assert!(owned.len() <= 256);
    // Only the rows the template reads (never changed) may be left over.
    assert!(
        at >= 48,
        "refused at fact {at} with {} rows owned",
        owned.len()
    );
}

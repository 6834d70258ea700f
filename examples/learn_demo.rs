//! Learn a few facts into a memory store and ask about them in other words.
//!
//! cargo run --release --example learn_demo -- MODEL STORE [LR] [STEPS] [TOP_T] [FACTS] [ASK_BEFORE]
//!
//! The store is not written back: every run starts from the same memory.

use engram::{Engine, EngineOptions, Fact, LearnOptions};

fn main() -> engram::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut engine = Engine::open(
        &args[1],
        &EngineOptions {
            memory: Some(args[2].clone().into()),
            ..Default::default()
        },
    )?;
    let num = |i: usize, d: f64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let opts = LearnOptions {
        learning_rate: num(3, 2.0) as f32,
        steps: num(4, 10.0) as usize,
        top_t: num(5, 500.0) as usize,
        ..Default::default()
    };
    let facts = [
        Fact::qa("What is the name of Marta's dog?", "Bruno"),
        Fact::qa("In which year did the Kelso bridge open?", "1887"),
        Fact::qa(
            "Who painted the mural in the Lindqvist library?",
            "Ingrid Halvorsen",
        ),
        Fact::note("My sister Ana lives in Porto."),
    ];
    let questions = [
        (
            "I have a question: what is the name of Marta's dog?",
            "Bruno",
        ),
        (
            "I have a question: in which year did the Kelso bridge open?",
            "1887",
        ),
        (
            "I have a question: who painted the mural in the Lindqvist library?",
            "Halvorsen",
        ),
        ("Where does my sister Ana live?", "Porto"),
        ("What is the capital of France?", "Paris"),
        ("What is the capital of Japan?", "Tokyo"),
    ];
    if num(7, 0.0) > 0.0 {
        for (q, _) in &questions {
            println!("before: {q} -> {}", engine.ask(q, 24)?);
        }
    }
    for f in &facts {
        let ex = engram::learn::examples(engine.tokenizer(), f)?;
        let lens: Vec<(usize, usize)> = ex
            .iter()
            .map(|e| (e.tokens.len(), e.targets.len()))
            .collect();
        eprintln!("example lengths (tokens, targets): {lens:?}");
    }
    let n = num(6, facts.len() as f64) as usize;
    let report = engine.learn(&facts[..n], &opts, &mut |f, s, l| {
        eprintln!("fact {f} step {s} loss {l:.3}");
        true
    })?;
    for f in &report.facts {
        println!(
            "loss {:.3} -> {:.3}, {} rows, {} examples",
            f.loss_before,
            f.loss_after,
            f.rows.len(),
            f.examples
        );
    }
    println!("{:?} total {:?}", report.timings, report.total);
    for (q, want) in &questions {
        let a = engine.ask(q, 24)?;
        println!(
            "after [{}]: {q} -> {a}",
            if a.contains(want) { "ok" } else { "MISS" }
        );
    }
    Ok(())
}

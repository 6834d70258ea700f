//! `engram bench`: prefill and decode throughput, comparable with llama-bench's pp/tg tests.

use std::time::Instant;

use clap::Args;
use engram::Engine;
use engram::model::Logits;

/// Options of `engram bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Prompt lengths to prefill (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "512")]
    prefill: Vec<usize>,
    /// Tokens to decode one at a time from an empty context.
    #[arg(long, default_value_t = 128)]
    decode: usize,
    /// Repetitions; the mean is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Also learn this many facts with the default settings (needs --memory; the store is
    /// not changed) and report time per fact, where it goes and peak memory.
    #[arg(long, default_value_t = 0)]
    learn: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Facts for the learning benchmark: made up, so the model cannot already know them.
const BENCH_FACTS: [(&str, &str); 5] = [
    ("What is the name of Marta's dog?", "Bruno"),
    ("In which year did the Kelso bridge open?", "1887"),
    (
        "Who painted the mural in the Lindqvist library?",
        "Ingrid Halvorsen",
    ),
    (
        "What colour is the door of the Abernethy lighthouse?",
        "Teal",
    ),
    (
        "Which river flows past the village of Dunmarrow?",
        "The Calder",
    ),
];

/// Peak resident memory of this process so far (Linux: VmHWM), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// What the learning benchmark measured.
struct LearnBench {
    facts: usize,
    total: f64,
    timings: engram::learn::LearnTimings,
    steps: usize,
    rss_before: Option<f64>,
    rss_after: Option<f64>,
}

/// Learns `n` facts one at a time into an in-memory copy of the engine's memory.
fn learn_bench(engine: &mut Engine, n: usize) -> Result<LearnBench, String> {
    // Learn into a copy that is not backed by the file: the user's store stays as it was.
    let store = engine.detach_memory_store().map_err(|e| e.to_string())?;
    engine
        .attach_memory(store, None)
        .map_err(|e| e.to_string())?;
    let opts = engram::learn::LearnOptions::default();
    let rss_before = peak_rss_mib();
    let mut timings = engram::learn::LearnTimings::default();
    let mut total = 0.0;
    let mut steps = 0;
    let bar = indicatif::ProgressBar::new(n as u64).with_message("learning");
    for i in 0..n {
        let (q, a) = BENCH_FACTS[i % BENCH_FACTS.len()];
        let r = engine
            .learn(&[engram::learn::Fact::qa(q, a)], &opts, &mut |_, s, _| {
                steps = steps.max(s);
                true
            })
            .map_err(|e| e.to_string())?;
        total += r.total.as_secs_f64();
        timings += r.timings;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(LearnBench {
        facts: n,
        total,
        timings,
        steps,
        rss_before,
        rss_after: peak_rss_mib(),
    })
}

/// Deterministic pseudo-random token ids, like llama-bench's random prompt.
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// Seconds of one prefill of `toks` from an empty cache.
fn time_prefill(engine: &Engine, toks: &[u32]) -> Result<f64, String> {
    let model = engine.model();
    let mut cache = model.new_cache(toks.len());
    let start = Instant::now();
    model
        .forward(toks, &mut cache, Logits::Last)
        .map_err(|e| e.to_string())?;
    Ok(start.elapsed().as_secs_f64())
}

/// Seconds to decode `toks` one at a time from an empty cache.
fn time_decode(engine: &Engine, toks: &[u32]) -> Result<f64, String> {
    let model = engine.model();
    let mut cache = model.new_cache(toks.len());
    let start = Instant::now();
    for t in toks {
        model
            .forward(std::slice::from_ref(t), &mut cache, Logits::Last)
            .map_err(|e| e.to_string())?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Throughput of one engine.
#[derive(Default)]
struct Speeds {
    /// Seconds per prefill length, summed over repetitions.
    prefill_secs: Vec<f64>,
    decode_secs: f64,
}

/// Runs the benchmark and prints tokens/s. With a memory engine, both are measured in turns
/// within each repetition so that machine noise hits them alike.
pub fn run(
    engine: Engine,
    mut with_memory: Option<Engine>,
    args: &BenchArgs,
) -> Result<(), String> {
    if args.learn > 0 && with_memory.is_none() {
        return Err("bench --learn needs --memory STORE".into());
    }
    let vocab = engine.model().config.vocab_size;
    let reps = args.reps.max(1);
    let engines: Vec<&Engine> = std::iter::once(&engine)
        .chain(with_memory.as_ref())
        .collect();
    let mut speeds: Vec<Speeds> = engines
        .iter()
        .map(|_| Speeds {
            prefill_secs: vec![0.0; args.prefill.len()],
            ..Default::default()
        })
        .collect();
    let decode_toks = tokens(args.decode, vocab, 7);
    // Repetition 0 is a warm-up that faults the mapped weights in, as llama-bench's does.
    for rep in 0..=reps {
        for (e, s) in engines.iter().zip(speeds.iter_mut()) {
            for (i, &n) in args.prefill.iter().enumerate() {
                let t = time_prefill(e, &tokens(n, vocab, n as u64))?;
                if rep > 0 {
                    s.prefill_secs[i] += t;
                }
            }
            let t = time_decode(e, &decode_toks)?;
            if rep > 0 {
                s.decode_secs += t;
            }
        }
    }
    let tps = |n: usize, secs: f64| n as f64 * reps as f64 / secs;
    let device = engine.device_name();
    let base = &speeds[0];
    let decode_tps = tps(args.decode, base.decode_secs);
    let prefill: Vec<(usize, f64)> = args
        .prefill
        .iter()
        .zip(&base.prefill_secs)
        .map(|(&n, &s)| (n, tps(n, s)))
        .collect();
    let memory = speeds.get(1).map(|m| {
        (
            tps(args.decode, m.decode_secs),
            args.prefill
                .iter()
                .zip(&m.prefill_secs)
                .map(|(&n, &s)| (n, tps(n, s)))
                .collect::<Vec<_>>(),
        )
    });
    let learned = match (args.learn, with_memory.as_mut()) {
        (0, _) => None,
        (n, Some(e)) => Some(learn_bench(e, n)?),
        (_, None) => return Err("bench --learn needs --memory STORE".into()),
    };
    let per_fact = |d: std::time::Duration, l: &LearnBench| d.as_secs_f64() / l.facts as f64;
    if args.json {
        let mut obj = serde_json::json!({
            "model": engine.path().display().to_string(),
            "device": device,
            "prefill_tps": prefill.last().map(|p| p.1),
            "decode_tps": decode_tps,
            "decode_tokens": args.decode,
        });
        for (n, t) in &prefill {
            obj[format!("prefill{n}_tps")] = serde_json::json!(t);
        }
        if let Some((dec, pre)) = &memory {
            obj["memory_decode_tps"] = serde_json::json!(dec);
            obj["memory_decode_overhead"] = serde_json::json!(decode_tps / dec - 1.0);
            for (n, t) in pre {
                obj[format!("memory_prefill{n}_tps")] = serde_json::json!(t);
            }
        }
        if let Some(l) = &learned {
            let t = &l.timings;
            obj["learn_facts"] = serde_json::json!(l.facts);
            obj["learn_seconds_per_fact"] = serde_json::json!(l.total / l.facts as f64);
            obj["learn_prepare_seconds_per_fact"] = serde_json::json!(per_fact(t.prepare, l));
            obj["learn_selection_seconds_per_fact"] = serde_json::json!(per_fact(t.selection, l));
            obj["learn_forward_seconds_per_fact"] = serde_json::json!(per_fact(t.forward, l));
            obj["learn_backward_seconds_per_fact"] = serde_json::json!(per_fact(t.backward, l));
            obj["learn_update_seconds_per_fact"] = serde_json::json!(per_fact(t.update, l));
            obj["learn_anchor_seconds_per_fact"] = serde_json::json!(per_fact(t.anchor, l));
            obj["peak_rss_mib_before_learning"] = serde_json::json!(l.rss_before);
            obj["peak_rss_mib"] = serde_json::json!(l.rss_after);
        }
        println!("{obj}");
    } else {
        let with = if memory.is_some() {
            "  (base model)"
        } else {
            ""
        };
        for (n, t) in &prefill {
            println!("prefill {n:>4} tokens: {t:8.1} tokens/s{with}");
        }
        println!(
            "decode  {:>4} tokens: {decode_tps:8.1} tokens/s on {device}{with}",
            args.decode
        );
        if let Some((dec, pre)) = &memory {
            for (n, t) in pre {
                println!("prefill {n:>4} tokens: {t:8.1} tokens/s  (with memory)");
            }
            println!(
                "decode  {:>4} tokens: {dec:8.1} tokens/s  (with memory: {:+.1}% time per token)",
                args.decode,
                100.0 * (decode_tps / dec - 1.0)
            );
        }
        if let Some(l) = &learned {
            let t = &l.timings;
            let mib = |m: Option<f64>| m.map_or("n/a".to_owned(), |m| format!("{m:.0} MiB"));
            println!(
                "learn   {:>4} facts:  {:8.2} s per fact (up to {} steps; prepare {:.2}, selection {:.3}, forward {:.2}, backward {:.2}, update {:.3}, anchor setup {:.3})",
                l.facts,
                l.total / l.facts as f64,
                l.steps,
                per_fact(t.prepare, l),
                per_fact(t.selection, l),
                per_fact(t.forward, l),
                per_fact(t.backward, l),
                per_fact(t.update, l),
                per_fact(t.anchor, l),
            );
            println!(
                "peak resident memory: {} before learning, {} after",
                mib(l.rss_before),
                mib(l.rss_after)
            );
        }
    }
    Ok(())
}

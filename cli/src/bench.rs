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
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
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
pub fn run(engine: Engine, with_memory: Option<Engine>, args: &BenchArgs) -> Result<(), String> {
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
    }
    Ok(())
}

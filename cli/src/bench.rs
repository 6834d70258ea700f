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

/// Runs the benchmark and prints tokens/s.
pub fn run(engine: Engine, args: &BenchArgs) -> Result<(), String> {
    let model = engine.model();
    let vocab = model.config.vocab_size;
    let reps = args.reps.max(1);
    let mut prefill = Vec::new();
    for &n in &args.prefill {
        let toks = tokens(n, vocab, n as u64);
        let mut total = 0f64;
        // One warm-up pass faults the mapped weights in, as llama-bench's warm-up does.
        for rep in 0..=reps {
            let mut cache = model.new_cache(n);
            let start = Instant::now();
            model
                .forward(&toks, &mut cache, Logits::Last)
                .map_err(|e| e.to_string())?;
            if rep > 0 {
                total += start.elapsed().as_secs_f64();
            }
        }
        prefill.push((n, n as f64 * reps as f64 / total));
    }
    let toks = tokens(args.decode, vocab, 7);
    let mut total = 0f64;
    for rep in 0..=reps {
        let mut cache = model.new_cache(args.decode);
        let start = Instant::now();
        for t in &toks {
            model
                .forward(std::slice::from_ref(t), &mut cache, Logits::Last)
                .map_err(|e| e.to_string())?;
        }
        if rep > 0 {
            total += start.elapsed().as_secs_f64();
        }
    }
    let decode_tps = args.decode as f64 * reps as f64 / total;
    let threads = model.backend().threads();
    if args.json {
        let mut obj = serde_json::json!({
            "model": engine.path().display().to_string(),
            "threads": threads,
            "prefill_tps": prefill.last().map(|p| p.1),
            "decode_tps": decode_tps,
            "decode_tokens": args.decode,
        });
        for (n, tps) in &prefill {
            obj[format!("prefill{n}_tps")] = serde_json::json!(tps);
        }
        println!("{obj}");
    } else {
        for (n, tps) in &prefill {
            println!("prefill {n:>4} tokens: {tps:8.1} tokens/s");
        }
        println!(
            "decode  {:>4} tokens: {decode_tps:8.1} tokens/s ({threads} threads)",
            args.decode
        );
    }
    Ok(())
}

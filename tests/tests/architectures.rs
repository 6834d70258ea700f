//! Every architecture engram runs, against llama.cpp on tiny random models of it (f32 weights,
//! so any difference is the graph, not rounding): Qwen 2 (q/k/v biases), Qwen 3 (q/k norms,
//! head width apart from dim/heads), Phi-3 (stacked q/k/v and gate/up), Gemma 3 (GeGLU, norms
//! after attention and FFN, embedding scale, sliding window with every sixth layer global).
//! No real Qwen or Phi-3 weights can be downloaded here; Gemma 3 270M itself is compared in
//! `llama_cpp_oracle.rs`.

use engram::model::Logits;
use engram::{Engine, EngineOptions};
use engram_e2e::{LlamaCpp, TINY_WINDOW, noise, scratch_dir, tiny_arch_gguf};

const ARCHITECTURES: [(&str, usize); 5] = [
    ("llama", 2),
    ("qwen2", 2),
    ("qwen3", 2),
    ("phi3", 2),
    ("gemma3", 6),
];

/// 40 token ids: five times Gemma's tiny window, so local layers drop keys while the global
/// one keeps them.
fn prompt() -> Vec<u32> {
    noise(40, 5, 1.0)
        .iter()
        .map(|v| 2 + ((v.abs() * 1000.0) as u32 % 250))
        .collect()
}

#[test]
fn tiny_models_of_every_architecture_match_llama_cpp() {
    const { assert!(40 > 4 * TINY_WINDOW) };
    let dir = scratch_dir("archs");
    for (arch, layers) in ARCHITECTURES {
        let path = dir.join(format!("{arch}.gguf"));
        std::fs::write(&path, tiny_arch_gguf(arch, layers, 31)).unwrap();
        let engine = Engine::open(&path, &EngineOptions::default())
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(engine.model().config.architecture, arch);
        let mut oracle = LlamaCpp::open(&path, 64, 2);
        for text in [
            "Hello world.",
            "  spaces\tand\nnewlines ",
            "Ünïcödé 日本語 🎉",
            "<|end|>x",
        ] {
            assert_eq!(
                engine.tokenizer().encode(text, false).unwrap(),
                oracle.tokenize(text, false, true),
                "{arch}: token ids of {text:?}"
            );
        }
        let tokens = prompt();
        let theirs = oracle.logits(&tokens);
        // The rule the real models' tests follow: mean KL within 2× llama.cpp's own difference
        // between an f16 and an f32 KV cache.
        let floor_logits =
            LlamaCpp::open_with_kv(&path, 64, 2, llama_cpp_sys_2::GGML_TYPE_F16).logits(&tokens);
        let ours = engine.logits(&tokens).unwrap();
        let vocab = engine.model().config.vocab_size;
        assert_eq!(ours.len(), theirs.len(), "{arch}: logits shape");
        let mean_kl = |a: &[f32]| -> f64 {
            theirs
                .chunks_exact(vocab)
                .zip(a.chunks_exact(vocab))
                .map(|(p, q)| engram_e2e::kl(p, q))
                .sum::<f64>()
                / tokens.len() as f64
        };
        let (kl_ours, kl_floor) = (mean_kl(&ours), mean_kl(&floor_logits));
        assert!(
            kl_ours <= 2.0 * kl_floor,
            "{arch}: mean KL {kl_ours:.2e} over 2× the f16-KV floor {kl_floor:.2e}"
        );
        let scale = theirs.iter().fold(0f32, |a, v| a.max(v.abs()));
        let off_by = |a: &[f32]| {
            a.iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        let max_abs = off_by(&ours);
        // The same graph in f32 differs only in summation order: ~1e-6 of the logits' scale.
        // A wrong norm, RoPE pairing, bias or window moves them by a large fraction of it.
        assert!(
            max_abs <= 1e-3 * scale.max(1.0),
            "{arch}: max |Δ| {max_abs} against llama.cpp (logit scale {scale})"
        );
        // Decoding through the KV cache: 30 tokens at once, then one at a time.
        let model = engine.model();
        let mut cache = model.new_cache(tokens.len());
        let mut stepped = model
            .forward(&tokens[..30], &mut cache, Logits::All)
            .unwrap();
        for &t in &tokens[30..] {
            stepped.extend(model.forward(&[t], &mut cache, Logits::All).unwrap());
        }
        let step_abs = off_by(&stepped);
        assert!(
            step_abs <= 1e-3 * scale.max(1.0),
            "{arch}: decoding through the cache differs by {step_abs}"
        );
        println!(
            "{arch} ({layers} blocks, vocab {vocab}): max |Δ| vs llama.cpp {max_abs:.2e} all at once, \
             {step_abs:.2e} through the cache (logit scale {scale:.2}); mean KL {kl_ours:.2e}, \
             f16-KV floor {kl_floor:.2e}"
        );
    }
}

/// A file whose RoPE needs frequency factors engram does not apply is refused by name, not
/// run with wrong logits.
#[test]
fn rope_frequency_factors_are_refused_by_name() {
    let dir = scratch_dir("archs-rope");
    let mut w = engram_e2e::tiny_arch_writer("llama", 2, 3);
    w.add_f32("rope_freqs.weight", &[8], &[1.0; 8]).unwrap();
    let path = dir.join("with-rope-freqs.gguf");
    w.write_atomic(&path).unwrap();
    let err = Engine::open(&path, &EngineOptions::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("rope_freqs.weight"), "{err}");
}

//! engram against llama.cpp on the same GGUF: tokens, logits, perplexity, block layouts.

use engram::model::Logits;
use engram::quant::{GgmlType, dequantize_row, quantize_row};
use engram::{Engine, EngineOptions, log_softmax_at};
use engram_e2e::{
    LlamaCpp, default_model, gemma3_model, ggml_dequantize, ggml_roundtrip, held_out_text, kl,
};

const TOKENIZER_CASES: &[&str] = &[
    "Hello world.",
    "The capital of France is Paris, and 2024 was a leap year.",
    "   leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nand\r\nCRLF",
    "Numbers: 1234567890 3.14159 -42 1e10 0x1F 1,000,000",
    "Punctuation!!! ??? ... --- ;;; (parens) [brackets] {braces} <angles>",
    "Ünïcödé: café, naïve, Straße, Ελληνικά, русский, 日本語のテキスト, 中文, 한국어",
    "Emoji 🎉🚀 and symbols ∑∫√∞ ≠ ≤ ≥ → ← © ®",
    "fn main() {\n    let x: Vec<u32> = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}",
    "def f(a, b=2):\n\treturn a ** b  # comment\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "I'm sure you're right; they'll see we've done it, wouldn't they?",
    "URL: https://example.com/path?query=1&x=y#frag email: a.b@c.org",
    "                                 many spaces",
    "a\u{00a0}non-breaking space and zero\u{200b}width",
    "",
    "<|endoftext|>text after special<|im_end|>",
    "MiXeD CaSe WORDS and ALLCAPS and lowercase",
];

#[test]
fn tokenization_matches_llama_cpp() {
    tokenization_matches_on(&default_model());
}

/// Gemma 3's SentencePiece vocabulary (score merges, byte fallback, 262,144 pieces).
#[test]
fn gemma3_tokenization_matches_llama_cpp() {
    tokenization_matches_on(&gemma3_model());
}

fn tokenization_matches_on(path: &std::path::Path) {
    let path = path.to_path_buf();
    let engine = Engine::open(&path, &EngineOptions::default()).unwrap();
    let oracle = LlamaCpp::open(&path, 64, 2);
    for text in TOKENIZER_CASES {
        let ours = engine.tokenizer().encode(text, false).unwrap();
        let theirs = oracle.tokenize(text, false, true);
        assert_eq!(ours, theirs, "token ids differ for {text:?}");
        // Decoding must give the text back (byte-level BPE is lossless).
        assert_eq!(
            engine.tokenizer().decode(&ours, false),
            *text,
            "round trip of {text:?}"
        );
    }
    // The held-out corpus as a whole, a long varied input.
    let text = held_out_text();
    let slice = &text[..text.floor_char_boundary(20_000)];
    assert_eq!(
        engine.tokenizer().encode(slice, false).unwrap(),
        oracle.tokenize(slice, false, true)
    );
    println!(
        "tokenizer of {}: {} cases and 20 kB of held-out text identical to llama.cpp",
        path.display(),
        TOKENIZER_CASES.len()
    );
}

fn argmax(v: &[f32]) -> usize {
    engram::backend::argmax(v) as usize
}

/// Differences between two logit runs over the same prompts.
#[derive(Default, Debug)]
struct Divergence {
    max_abs: f32,
    sum_kl: f64,
    max_kl: f64,
    positions: usize,
}

impl Divergence {
    fn add(&mut self, reference: &[f32], other: &[f32]) {
        let d = reference
            .iter()
            .zip(other)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let k = kl(reference, other);
        self.max_abs = self.max_abs.max(d);
        self.max_kl = self.max_kl.max(k);
        self.sum_kl += k;
        self.positions += 1;
    }

    fn mean_kl(&self) -> f64 {
        self.sum_kl / self.positions as f64
    }
}

/// The bound is calibrated in the same run: llama.cpp with an f16 KV cache (its default)
/// against llama.cpp with an f32 KV cache. SmolLM2 has very large activations in a few
/// channels, so a single flipped rounding in an 8-bit activation block moves logits by tenths;
/// that is the noise floor any faithful implementation sits on. engram (f32 cache, different
/// summation order and exp) must stay within 1.5× that floor in max |Δ| and 2× in mean KL, and
/// its top-1 must equal llama.cpp's wherever llama.cpp's own top-1 margin exceeds the floor;
/// at closer calls engram's pick must lie within the floor of llama.cpp's best logit.
/// A real bug (wrong RoPE pairing, norm, GQA mapping) gives |Δ| > 5 and KL > 1.
#[test]
fn logits_match_llama_cpp() {
    logits_match_on(
        &default_model(),
        &[
            "The capital of France is",
            "<|im_start|>user\nWhat is the capital of Japan?<|im_end|>\n<|im_start|>assistant\n",
            "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
            "Once upon a time, in a small village by the sea, there lived an old fisherman who",
            "Photosynthesis is the process by which green plants use sunlight to synthesize foods from carbon dioxide and water.",
        ],
    );
}

/// Gemma 3: GeGLU, q/k norms, post-norms, embedding scale, NeoX RoPE with a local and a
/// global base, and sliding-window layers (the last prompt is longer than the window, 512).
#[test]
fn gemma3_logits_match_llama_cpp() {
    let long = held_out_text();
    let long = &long[..long.floor_char_boundary(3_000)];
    logits_match_on(
        &gemma3_model(),
        &[
            "The capital of France is",
            "<start_of_turn>user\nWhat is the capital of Japan?<end_of_turn>\n<start_of_turn>model\n",
            "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
            "Once upon a time, in a small village by the sea, there lived an old fisherman who",
            long,
        ],
    );
}

/// Positions compared at the end of each prompt.
const COMPARED_POSITIONS: usize = 96;

fn logits_match_on(path: &std::path::Path, prompts: &[&str]) {
    let path = path.to_path_buf();
    let engine = Engine::open(&path, &EngineOptions::default()).unwrap();
    let mut oracle = LlamaCpp::open(&path, 1024, 2);
    let mut oracle_f16_kv = LlamaCpp::open_with_kv(&path, 1024, 2, llama_cpp_sys_2::GGML_TYPE_F16);
    let vocab = engine.model().config.vocab_size;
    // (tokens, engram logits, llama.cpp logits, llama.cpp f16-KV logits) per prompt.
    type Run = (Vec<u32>, Vec<f32>, Vec<f32>, Vec<f32>);
    // Each prompt's last (up to) 96 positions are compared: a long prompt's earlier positions
    // run through the cache only, so a 262,144-token vocabulary's logits stay small.
    let runs: Vec<Run> = prompts
        .iter()
        .map(|p| {
            let tokens = engine.tokenizer().encode(p, true).unwrap();
            let from = tokens.len().saturating_sub(COMPARED_POSITIONS);
            let model = engine.model();
            let mut cache = model.new_cache(tokens.len());
            if from > 0 {
                model
                    .forward(&tokens[..from], &mut cache, Logits::Last)
                    .unwrap();
            }
            let ours = model
                .forward(&tokens[from..], &mut cache, Logits::All)
                .unwrap();
            let theirs = oracle.logits_from(&tokens, from);
            let floor = oracle_f16_kv.logits_from(&tokens, from);
            (tokens, ours, theirs, floor)
        })
        .collect();
    let (mut engram_div, mut floor_div) = (Divergence::default(), Divergence::default());
    for (_, ours, theirs, floor) in &runs {
        for ((a, b), f) in ours
            .chunks_exact(vocab)
            .zip(theirs.chunks_exact(vocab))
            .zip(floor.chunks_exact(vocab))
        {
            engram_div.add(b, a);
            floor_div.add(b, f);
        }
    }
    let noise = floor_div.max_abs;
    let (mut agree, mut near_ties) = (0, 0);
    for ((_, ours, theirs, _), prompt) in runs.iter().zip(prompts.iter().copied()) {
        let prompt = &prompt[..prompt.floor_char_boundary(40)];
        for (i, (a, b)) in ours
            .chunks_exact(vocab)
            .zip(theirs.chunks_exact(vocab))
            .enumerate()
        {
            let (ta, tb) = (argmax(a), argmax(b));
            if ta == tb {
                agree += 1;
                continue;
            }
            let margin = b[tb] - b[ta];
            assert!(
                margin <= noise,
                "top-1 differs at position {i} of {prompt:?}: engram {ta}, llama.cpp {tb} with margin {margin} > noise floor {noise}"
            );
            near_ties += 1;
            println!(
                "near tie at position {i} of {prompt:?}: engram {ta}, llama.cpp {tb} (llama.cpp margin {margin:.3})"
            );
        }
    }
    println!(
        "{}: logits over {} positions: engram vs llama.cpp max |Δ| = {:.3}, mean KL = {:.2e}, max KL = {:.2e}; \
         llama.cpp f16-KV vs f32-KV (noise floor) max |Δ| = {:.3}, mean KL = {:.2e}, max KL = {:.2e}; \
         top-1 identical at {agree}, near ties within the floor {near_ties}",
        path.display(),
        engram_div.positions,
        engram_div.max_abs,
        engram_div.mean_kl(),
        engram_div.max_kl,
        floor_div.max_abs,
        floor_div.mean_kl(),
        floor_div.max_kl,
    );
    assert!(
        engram_div.max_abs <= 1.5 * floor_div.max_abs,
        "max |Δ| {} vs floor {}",
        engram_div.max_abs,
        floor_div.max_abs
    );
    assert!(
        engram_div.mean_kl() <= 2.0 * floor_div.mean_kl(),
        "mean KL {} vs floor {}",
        engram_div.mean_kl(),
        floor_div.mean_kl()
    );
    assert!(
        near_ties * 20 <= engram_div.positions,
        "{near_ties} near ties is more than 5% of positions"
    );
}

#[test]
fn perplexity_matches_llama_cpp() {
    perplexity_matches_on(&default_model());
}

#[test]
fn gemma3_perplexity_matches_llama_cpp() {
    perplexity_matches_on(&gemma3_model());
}

fn perplexity_matches_on(path: &std::path::Path) {
    let path = path.to_path_buf();
    let engine = Engine::open(&path, &EngineOptions::default()).unwrap();
    let window = 256;
    let mut oracle = LlamaCpp::open(&path, window, 2);
    let vocab = engine.model().config.vocab_size;
    let mut tokens = engine.tokenizer().encode(&held_out_text(), false).unwrap();
    tokens.truncate(window * 4);
    // As llama-perplexity does: a model that asks for BOS gets it at the start of each chunk
    // (Gemma's first position is its attention sink; a chunk cut mid-text has none).
    let tok = engine.tokenizer();
    if let (true, Some(bos)) = (tok.add_bos, tok.bos) {
        for chunk in tokens.chunks_mut(window) {
            chunk[0] = bos;
        }
    }
    let tokens = &tokens[..];
    let (ours, count) = engine.perplexity(tokens, window).unwrap();
    let mut nll = 0f64;
    for chunk in tokens.chunks_exact(window) {
        let logits = oracle.logits(chunk);
        for i in window / 2..window - 1 {
            nll += log_softmax_at(&logits[i * vocab..(i + 1) * vocab], chunk[i + 1] as usize);
        }
    }
    let theirs = nll / count as f64;
    let (ppl_ours, ppl_theirs) = (ours.exp(), theirs.exp());
    let rel = (ppl_ours - ppl_theirs).abs() / ppl_theirs;
    println!(
        "{}: perplexity over {count} tokens: engram {ppl_ours:.4}, llama.cpp {ppl_theirs:.4} (Δ {:.3}%)",
        path.display(),
        rel * 100.0
    );
    assert!(rel <= 0.005, "perplexity differs by {:.3}%", rel * 100.0);
}

/// engram's block layouts against ggml's own quantizer and dequantizer: decoding ggml-made
/// blocks must be bit-identical, and ggml must decode engram-made blocks exactly as engram does.
#[test]
fn block_layouts_match_ggml() {
    let n = 1024;
    let x: Vec<f32> = (0..n)
        .map(|i| (i as f32 * 0.7311).sin() * 3.0 + (i % 17) as f32 * 0.05)
        .collect();
    for dtype in GgmlType::ALL {
        let (q, theirs) = ggml_roundtrip(dtype.id(), &x);
        let mut ours = vec![0f32; n];
        dequantize_row(dtype, &q, &mut ours);
        assert_eq!(ours, theirs, "{dtype}: dequantizing ggml's blocks");
        let mine = quantize_row(dtype, &x);
        let mut ggml_view = vec![0f32; n];
        ggml_dequantize(dtype.id(), &mine, &mut ggml_view);
        dequantize_row(dtype, &mine, &mut ours);
        assert_eq!(ours, ggml_view, "{dtype}: ggml reading engram's blocks");
    }
}

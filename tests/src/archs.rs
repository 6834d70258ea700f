//! Tiny random models of every architecture engram runs, written with engram's GGUF writer
//! with every tensor and metadata key llama.cpp needs, so the two can be compared on
//! architectures whose real weights cannot be downloaded here (Qwen 2/3, Phi-3).

use engram::gguf::{GgufWriter, Value};
use engram::quant::{GgmlType, quantize_row};

use crate::noise;

/// Sizes of the tiny models: small, but with grouped-query attention and head_dim ≠ dim/heads
/// where the architecture allows it.
const DIM: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FFN: usize = 128;
/// Gemma 3's sliding window in the tiny model: prompts of 40 tokens cross it many times.
pub const TINY_WINDOW: usize = 8;

/// A tiny random model of `arch` ("llama", "gemma3", "qwen2", "qwen3" or "phi3") with f32
/// weights (so that engram and llama.cpp compute in the same precision and any difference is
/// the graph), a 256-byte vocabulary and `layers` blocks.
pub fn tiny_arch_gguf(arch: &str, layers: usize, seed: u64) -> Vec<u8> {
    tiny_arch_writer(arch, layers, seed).to_bytes()
}

/// The writer [`tiny_arch_gguf`] fills, for tests that add or change something first.
pub fn tiny_arch_writer(arch: &str, layers: usize, seed: u64) -> GgufWriter<'static> {
    let head_dim = match arch {
        // Gemma and Qwen 3 set the head width apart from dim / heads.
        "gemma3" | "qwen3" => 32,
        _ => DIM / HEADS,
    };
    let (qd, kv) = (HEADS * head_dim, KV_HEADS * head_dim);
    let mut w = GgufWriter::new();
    let s = |v: &str| Value::String(v.into());
    let key = |k: &str| format!("{arch}.{k}");
    w.set("general.architecture", s(arch));
    // Not named after the architecture: llama.cpp changes Phi-3 vocabularies by model name.
    w.set("general.name", s("tiny random test model"));
    w.set(key("embedding_length"), Value::U32(DIM as u32));
    w.set(key("block_count"), Value::U32(layers as u32));
    w.set(key("attention.head_count"), Value::U32(HEADS as u32));
    w.set(key("attention.head_count_kv"), Value::U32(KV_HEADS as u32));
    w.set(key("feed_forward_length"), Value::U32(FFN as u32));
    w.set(key("context_length"), Value::U32(256));
    w.set(key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6));
    w.set(key("rope.freq_base"), Value::F32(10_000.0));
    w.set(key("rope.dimension_count"), Value::U32(head_dim as u32));
    w.set(key("attention.key_length"), Value::U32(head_dim as u32));
    w.set(key("attention.value_length"), Value::U32(head_dim as u32));
    if arch == "gemma3" {
        w.set(key("rope.freq_base"), Value::F32(1_000_000.0));
        w.set(
            key("attention.sliding_window"),
            Value::U32(TINY_WINDOW as u32),
        );
    }
    // Each family's own pre-tokenizer name, so both runtimes must know it; llama.cpp looks
    // Phi-3's end-of-turn markers up by their text.
    let pre = if arch.starts_with("qwen") {
        "qwen2"
    } else {
        "smollm"
    };
    crate::tiny::set_byte_level_vocab(&mut w, pre, ["<|endoftext|>", "<|end|>"]);
    let vocab = 256 + 2;

    let mut norm_seed = seed ^ 0x5eed;
    let mut seed = seed;
    let mut matrix = |w: &mut GgufWriter, name: String, rows: usize, cols: usize| {
        seed += 1;
        let bytes: Vec<u8> = noise(rows * cols, seed, 0.4)
            .chunks_exact(cols)
            .flat_map(|r| quantize_row(GgmlType::F32, r))
            .collect();
        w.add_tensor(name, GgmlType::F32, &[cols as u64, rows as u64], bytes)
            .expect("valid tensor");
    };
    let mut norm = |w: &mut GgufWriter, name: String, len: usize| {
        norm_seed += 1;
        let values: Vec<f32> = noise(len, norm_seed, 0.3).iter().map(|v| 1.0 + v).collect();
        w.add_f32(name, &[len as u64], &values)
            .expect("valid vector");
    };
    matrix(&mut w, "token_embd.weight".into(), vocab, DIM);
    for l in 0..layers {
        let t = |name: &str| format!("blk.{l}.{name}.weight");
        norm(&mut w, t("attn_norm"), DIM);
        norm(&mut w, t("ffn_norm"), DIM);
        if arch == "phi3" {
            matrix(&mut w, t("attn_qkv"), qd + 2 * kv, DIM);
            matrix(&mut w, t("ffn_up"), 2 * FFN, DIM);
        } else {
            matrix(&mut w, t("attn_q"), qd, DIM);
            matrix(&mut w, t("attn_k"), kv, DIM);
            matrix(&mut w, t("attn_v"), kv, DIM);
            matrix(&mut w, t("ffn_gate"), FFN, DIM);
            matrix(&mut w, t("ffn_up"), FFN, DIM);
        }
        matrix(&mut w, t("attn_output"), DIM, qd);
        matrix(&mut w, t("ffn_down"), DIM, FFN);
        if arch == "qwen2" {
            for (name, len) in [("attn_q", qd), ("attn_k", kv), ("attn_v", kv)] {
                let values = noise(len, 900 + l as u64, 0.2);
                w.add_f32(format!("blk.{l}.{name}.bias"), &[len as u64], &values)
                    .expect("valid bias");
            }
        }
        if arch == "gemma3" || arch == "qwen3" {
            norm(&mut w, t("attn_q_norm"), head_dim);
            norm(&mut w, t("attn_k_norm"), head_dim);
        }
        if arch == "gemma3" {
            norm(&mut w, t("post_attention_norm"), DIM);
            norm(&mut w, t("post_ffw_norm"), DIM);
        }
    }
    norm(&mut w, "output_norm.weight".into(), DIM);
    if arch == "phi3" {
        // Phi-3 has its own LM head; the others tie it to the embeddings.
        matrix(&mut w, "output.weight".into(), vocab, DIM);
    }
    w
}

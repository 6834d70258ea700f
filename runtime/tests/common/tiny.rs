//! Tiny random models written with engram's own GGUF writer: what the fast tests (and the
//! end-to-end crate, which includes this file) run on when no downloaded model may be used.

#![allow(dead_code)]

/// Deterministic pseudo-random values in [-scale, scale).
pub fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A memory shaped for the tiny test models: 64 slots, 2 heads of 4 picks, beside block 1.
pub fn tiny_memory_config() -> engram::MemoryConfig {
    engram::MemoryConfig {
        layers: vec![1],
        n_keys: 8,
        heads: 2,
        top_k: 4,
        k_dim: 8,
        gated: false,
    }
}

/// A tiny random llama model (2 layers, d = 64, 258-token byte-level vocabulary) written with
/// engram's GGUF writer; weight types vary by tensor so every block format is exercised.
pub fn tiny_llama_gguf(seed: u64) -> Vec<u8> {
    tiny_llama(seed, 2, false, None)
}

/// Like [`tiny_llama_gguf`] with `chat_template` and a 4,096-token context, so that chat and
/// learning (whose phrasings are chat exchanges, byte-level tokens here) run on it too.
pub fn tiny_chat_llama_gguf(seed: u64, chat_template: &str) -> Vec<u8> {
    tiny_llama(seed, 2, false, Some(chat_template))
}

/// Like [`tiny_llama_gguf`] with `layers` blocks whose weights are all f32 and whose norm
/// weights are not all one: every op is then smooth, for finite-difference gradient checks.
pub fn tiny_llama_f32_gguf(seed: u64, layers: usize) -> Vec<u8> {
    tiny_llama(seed, layers, true, None)
}

/// A byte-level BPE vocabulary without merges (each byte its own token) and two control
/// tokens after the 256 bytes, the first BOS and the second EOS, with `pre` as the
/// pre-tokenizer name.
pub fn set_byte_level_vocab(w: &mut engram::gguf::GgufWriter, pre: &str, controls: [&str; 2]) {
    use engram::gguf::{Value, ValueType};
    let alphabet = engram::tokenizer::byte_level_alphabet();
    let mut tokens: Vec<Value> = alphabet
        .iter()
        .map(|c| Value::String(c.to_string()))
        .collect();
    tokens.extend(controls.map(|t| Value::String(t.into())));
    let mut types = vec![Value::I32(1); 256];
    types.extend([Value::I32(3), Value::I32(3)]);
    w.set("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.set("tokenizer.ggml.pre", Value::String(pre.into()));
    w.set(
        "tokenizer.ggml.tokens",
        Value::Array(ValueType::String, tokens),
    );
    w.set(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, types),
    );
    w.set(
        "tokenizer.ggml.merges",
        Value::Array(ValueType::String, vec![]),
    );
    w.set("tokenizer.ggml.bos_token_id", Value::U32(256));
    w.set("tokenizer.ggml.eos_token_id", Value::U32(257));
}

fn tiny_llama(seed: u64, layers: usize, all_f32: bool, chat_template: Option<&str>) -> Vec<u8> {
    use engram::gguf::{GgufWriter, Value};
    use engram::quant::{GgmlType, quantize_row};

    let (dim, heads, kv_heads, ffn) = (64usize, 4usize, 2usize, 256usize);
    let head_dim = dim / heads;
    let vocab = 256 + 2;

    let mut w = GgufWriter::new();
    let s = |v: &str| Value::String(v.into());
    w.set("general.architecture", s("llama"));
    w.set("general.name", s("tiny test llama"));
    w.set("llama.embedding_length", Value::U32(dim as u32));
    w.set("llama.block_count", Value::U32(layers as u32));
    w.set("llama.attention.head_count", Value::U32(heads as u32));
    w.set("llama.attention.head_count_kv", Value::U32(kv_heads as u32));
    w.set("llama.feed_forward_length", Value::U32(ffn as u32));
    let context = if chat_template.is_some() { 4096 } else { 128 };
    w.set("llama.context_length", Value::U32(context));
    w.set("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    w.set("llama.rope.freq_base", Value::F32(10000.0));
    set_byte_level_vocab(&mut w, "smollm", ["<|im_start|>", "<|im_end|>"]);
    if let Some(template) = chat_template {
        w.set("tokenizer.chat_template", s(template));
    }

    let norm_seed = seed ^ 77;
    let mut seed = seed;
    let mut matrix = |w: &mut GgufWriter, name: &str, dtype: GgmlType, rows: usize, cols: usize| {
        let dtype = if all_f32 { GgmlType::F32 } else { dtype };
        seed += 1;
        let values = noise(rows * cols, seed, 0.5);
        let bytes: Vec<u8> = values
            .chunks_exact(cols)
            .flat_map(|r| quantize_row(dtype, r))
            .collect();
        w.add_tensor(name, dtype, &[cols as u64, rows as u64], bytes)
            .expect("valid tensor");
    };
    let ones: Vec<f32> = if all_f32 {
        noise(dim, norm_seed, 0.3).iter().map(|v| 1.0 + v).collect()
    } else {
        vec![1f32; dim]
    };
    matrix(
        &mut w,
        "token_embd.weight",
        GgmlType::Q8_0,
        vocab - 2 + 2,
        dim,
    );
    for l in 0..layers {
        let kinds = if l == 0 {
            [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::F16]
        } else {
            [GgmlType::BF16, GgmlType::F32, GgmlType::Q8_0]
        };
        w.add_f32(format!("blk.{l}.attn_norm.weight"), &[dim as u64], &ones)
            .unwrap();
        w.add_f32(format!("blk.{l}.ffn_norm.weight"), &[dim as u64], &ones)
            .unwrap();
        matrix(
            &mut w,
            &format!("blk.{l}.attn_q.weight"),
            kinds[0],
            dim,
            dim,
        );
        matrix(
            &mut w,
            &format!("blk.{l}.attn_k.weight"),
            kinds[1],
            kv_heads * head_dim,
            dim,
        );
        matrix(
            &mut w,
            &format!("blk.{l}.attn_v.weight"),
            kinds[2],
            kv_heads * head_dim,
            dim,
        );
        matrix(
            &mut w,
            &format!("blk.{l}.attn_output.weight"),
            kinds[0],
            dim,
            dim,
        );
        matrix(
            &mut w,
            &format!("blk.{l}.ffn_gate.weight"),
            kinds[1],
            ffn,
            dim,
        );
        matrix(
            &mut w,
            &format!("blk.{l}.ffn_up.weight"),
            kinds[2],
            ffn,
            dim,
        );
        // K-quants need 256-wide rows: the down projection reads ffn = 256 inputs.
        matrix(
            &mut w,
            &format!("blk.{l}.ffn_down.weight"),
            if l == 0 {
                GgmlType::Q4_K
            } else {
                GgmlType::Q6_K
            },
            dim,
            ffn,
        );
    }
    w.add_f32("output_norm.weight", &[dim as u64], &ones)
        .unwrap();
    w.to_bytes()
}

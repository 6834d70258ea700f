//! Shared helpers for the end-to-end tests: where the model is, and llama.cpp as the oracle.

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::Once;

use llama_cpp_sys_2 as sys;

pub mod learning;
mod scratch;
pub use scratch::scratch_dir;

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The default model; a missing file fails the test with the command that fetches it.
pub fn default_model() -> PathBuf {
    let p = workspace_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "default model missing at {}: run scripts/fetch-model",
        p.display()
    );
    p
}

/// Documents of the default background corpus (`data/background.txt`, built by
/// `scripts/build-background`); fails with that command when the file is missing.
pub fn background_documents() -> Vec<String> {
    let p = workspace_root().join("data/background.txt");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build the background corpus with scripts/build-background",
            p.display()
        )
    });
    text.split("\n\n")
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Held-out English text for perplexity: Debian's `fortunes` files (never used for anything
/// else in engram). Fails with the install command when the package is absent.
pub fn held_out_text() -> String {
    let dir = std::path::Path::new("/usr/share/games/fortunes");
    let mut text = String::new();
    for name in ["literature", "science", "wisdom", "education"] {
        if let Ok(t) = std::fs::read_to_string(dir.join(name)) {
            text.push_str(&t.replace("\n%\n", "\n\n"));
        }
    }
    assert!(
        !text.is_empty(),
        "held-out text missing: install Debian's fortunes package (apt-get install fortunes)"
    );
    text
}

unsafe extern "C" fn quiet_log(
    _: sys::ggml_log_level,
    _: *const std::os::raw::c_char,
    _: *mut std::os::raw::c_void,
) {
}

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| unsafe {
        sys::llama_log_set(Some(quiet_log), std::ptr::null_mut());
        sys::ggml_log_set(Some(quiet_log), std::ptr::null_mut());
        sys::llama_backend_init();
    });
}

/// llama.cpp with the same GGUF: its tokenizer and logits are the reference engram must match.
pub struct LlamaCpp {
    model: *mut sys::llama_model,
    ctx: *mut sys::llama_context,
    vocab: *const sys::llama_vocab,
    n_ctx: usize,
}

impl LlamaCpp {
    /// Loads `path` on the CPU with an f32 KV cache and no flash attention, so that the only
    /// differences left against engram are kernel rounding.
    pub fn open(path: &std::path::Path, n_ctx: usize, threads: i32) -> Self {
        Self::open_with_kv(path, n_ctx, threads, sys::GGML_TYPE_F32)
    }

    /// Like [`LlamaCpp::open`] with the KV cache in `kv_type` (llama.cpp's default is F16).
    pub fn open_with_kv(
        path: &std::path::Path,
        n_ctx: usize,
        threads: i32,
        kv_type: sys::ggml_type,
    ) -> Self {
        init();
        let c_path = CString::new(path.to_str().expect("utf-8 path")).expect("no NUL in path");
        unsafe {
            let mut mp = sys::llama_model_default_params();
            mp.n_gpu_layers = 0;
            let model = sys::llama_model_load_from_file(c_path.as_ptr(), mp);
            assert!(
                !model.is_null(),
                "llama.cpp could not load {}",
                path.display()
            );
            let mut cp = sys::llama_context_default_params();
            cp.n_ctx = n_ctx as u32;
            cp.n_batch = n_ctx as u32;
            cp.n_ubatch = n_ctx as u32;
            cp.n_threads = threads;
            cp.n_threads_batch = threads;
            cp.type_k = kv_type;
            cp.type_v = kv_type;
            cp.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_DISABLED;
            let ctx = sys::llama_init_from_model(model, cp);
            assert!(!ctx.is_null(), "llama.cpp could not create a context");
            let vocab = sys::llama_model_get_vocab(model);
            LlamaCpp {
                model,
                ctx,
                vocab,
                n_ctx,
            }
        }
    }

    /// Token ids as llama.cpp produces them; `parse_special` recognizes markup tokens.
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut buf = vec![0i32; text.len() + 8];
        let n = unsafe {
            sys::llama_tokenize(
                self.vocab,
                text.as_ptr() as *const _,
                text.len() as i32,
                buf.as_mut_ptr(),
                buf.len() as i32,
                add_special,
                parse_special,
            )
        };
        assert!(n >= 0, "llama_tokenize failed ({n})");
        buf.truncate(n as usize);
        buf.into_iter().map(|t| t as u32).collect()
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> usize {
        unsafe { sys::llama_vocab_n_tokens(self.vocab) as usize }
    }

    /// Logits for every position of `tokens`, from an empty KV cache.
    pub fn logits(&mut self, tokens: &[u32]) -> Vec<f32> {
        assert!(tokens.len() <= self.n_ctx, "oracle context too small");
        let n_vocab = self.n_vocab();
        unsafe {
            sys::llama_memory_clear(sys::llama_get_memory(self.ctx), true);
            let mut batch = sys::llama_batch_init(tokens.len() as i32, 0, 1);
            for (i, &t) in tokens.iter().enumerate() {
                *batch.token.add(i) = t as i32;
                *batch.pos.add(i) = i as i32;
                *batch.n_seq_id.add(i) = 1;
                *(*batch.seq_id.add(i)) = 0;
                *batch.logits.add(i) = 1;
            }
            batch.n_tokens = tokens.len() as i32;
            let rc = sys::llama_decode(self.ctx, batch);
            assert_eq!(rc, 0, "llama_decode failed");
            let mut out = Vec::with_capacity(tokens.len() * n_vocab);
            for i in 0..tokens.len() {
                let p = sys::llama_get_logits_ith(self.ctx, i as i32);
                assert!(!p.is_null());
                out.extend_from_slice(std::slice::from_raw_parts(p, n_vocab));
            }
            sys::llama_batch_free(batch);
            out
        }
    }
}

impl Drop for LlamaCpp {
    fn drop(&mut self) {
        unsafe {
            sys::llama_free(self.ctx);
            sys::llama_model_free(self.model);
        }
    }
}

/// ggml's own reference quantizer and dequantizer for a type, by ggml type id.
pub fn ggml_roundtrip(type_id: u32, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    init();
    unsafe {
        let traits = &*sys::ggml_get_type_traits(type_id as sys::ggml_type);
        let row_bytes = x.len() / traits.blck_size as usize * traits.type_size;
        let mut q = vec![0u8; row_bytes];
        match traits.from_float_ref {
            Some(from) => from(x.as_ptr(), q.as_mut_ptr() as *mut _, x.len() as i64),
            None => q = x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
        let mut y = vec![0f32; x.len()];
        ggml_dequantize(type_id, &q, &mut y);
        (q, y)
    }
}

/// ggml's dequantizer applied to `q`.
pub fn ggml_dequantize(type_id: u32, q: &[u8], out: &mut [f32]) {
    init();
    unsafe {
        let traits = &*sys::ggml_get_type_traits(type_id as sys::ggml_type);
        match traits.to_float {
            Some(to) => to(q.as_ptr() as *const _, out.as_mut_ptr(), out.len() as i64),
            // ggml has no converter for F32 itself: the bytes are the values.
            None => {
                assert_eq!(type_id, 0, "ggml type {type_id} has no dequantizer");
                for (o, c) in out.iter_mut().zip(q.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    }
}

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
pub fn tiny_memory_config() -> engram::memory::MemoryConfig {
    engram::memory::MemoryConfig {
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

fn tiny_llama(seed: u64, layers: usize, all_f32: bool, chat_template: Option<&str>) -> Vec<u8> {
    use engram::gguf::{GgufWriter, Value, ValueType};
    use engram::quant::{GgmlType, quantize_row};

    let (dim, heads, kv_heads, ffn) = (64usize, 4usize, 2usize, 256usize);
    let head_dim = dim / heads;
    let alphabet = engram::tokenizer::byte_level_alphabet();
    let mut tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
    tokens.push("<|im_start|>".into());
    tokens.push("<|im_end|>".into());
    let vocab = tokens.len();
    let mut types = vec![Value::I32(1); 256];
    types.extend([Value::I32(3), Value::I32(3)]);

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
    w.set("tokenizer.ggml.model", s("gpt2"));
    w.set("tokenizer.ggml.pre", s("smollm"));
    w.set(
        "tokenizer.ggml.tokens",
        Value::Array(
            ValueType::String,
            tokens.into_iter().map(Value::String).collect(),
        ),
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

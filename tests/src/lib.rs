//! Shared helpers for the end-to-end tests: where the model is, and llama.cpp as the oracle.

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::Once;

use llama_cpp_sys_2 as sys;

pub mod learning;
mod scratch;
// The tiny models and the noise they are made of live with the runtime's own (fast) tests.
mod archs;
#[path = "../../runtime/tests/common/tiny.rs"]
mod tiny;

pub use archs::{TINY_WINDOW, tiny_arch_gguf, tiny_arch_writer};
pub use scratch::scratch_dir;
pub use tiny::{
    noise, set_byte_level_vocab, tiny_chat_llama_gguf, tiny_llama_f32_gguf, tiny_llama_gguf,
    tiny_memory_config,
};

/// A weight `name` of `rows` × `cols` from f32 `data` (row-major), each row quantized to
/// `dtype`, as a backend loads it.
pub fn quantized_weight(
    name: &str,
    data: &[f32],
    rows: usize,
    cols: usize,
    dtype: engram::quant::GgmlType,
) -> engram::backend::WeightSource {
    engram::backend::WeightSource {
        name: name.into(),
        dtype,
        rows,
        cols,
        bytes: engram::gguf::TensorBytes::from_vec(
            data.chunks_exact(cols)
                .flat_map(|r| engram::quant::quantize_row(dtype, r))
                .collect(),
        ),
    }
}

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

/// Gemma 3 270M Q4_K_M, the second model; a missing file fails the test with the command
/// that fetches it.
pub fn gemma3_model() -> PathBuf {
    let p = workspace_root().join("models/gemma-3-270m-q4_k_m.gguf");
    assert!(
        p.is_file(),
        "Gemma 3 model missing at {}: run scripts/fetch-model gemma3-270m",
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

/// llama.cpp's log with only its errors kept (why a model did not load, say).
unsafe extern "C" fn quiet_log(
    level: sys::ggml_log_level,
    text: *const std::os::raw::c_char,
    _: *mut std::os::raw::c_void,
) {
    if level == sys::GGML_LOG_LEVEL_ERROR && !text.is_null() {
        // SAFETY: llama.cpp passes a NUL-terminated message.
        let msg = unsafe { std::ffi::CStr::from_ptr(text) };
        eprint!("llama.cpp: {}", msg.to_string_lossy());
    }
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
        self.logits_from(tokens, 0)
    }

    /// Logits for positions `from..` of `tokens` (all of them run), from an empty KV cache.
    pub fn logits_from(&mut self, tokens: &[u32], from: usize) -> Vec<f32> {
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
                *batch.logits.add(i) = (i >= from) as i8;
            }
            batch.n_tokens = tokens.len() as i32;
            let rc = sys::llama_decode(self.ctx, batch);
            assert_eq!(rc, 0, "llama_decode failed");
            let mut out = Vec::with_capacity((tokens.len() - from) * n_vocab);
            for i in from..tokens.len() {
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

/// KL(p‖q) of two logit rows, in nats.
pub fn kl(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let lse = |l: &[f32]| {
        let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        l.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m
    };
    let (lp, lq) = (lse(p_logits), lse(q_logits));
    p_logits
        .iter()
        .zip(q_logits)
        .map(|(&a, &b)| {
            let pa = a as f64 - lp;
            pa.exp() * (pa - (b as f64 - lq))
        })
        .sum()
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

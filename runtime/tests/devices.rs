//! The runtime's fast tier: tiny random models written with engram's own GGUF writer, each
//! test run once per device by `test_device!` (as candle's tests are). No downloaded model,
//! no llama.cpp; the wgpu variant runs where a wgpu adapter answers (lavapipe counts), the
//! cuda variant where a CUDA device and NVRTC answer, and each says "skipped: …" where its
//! device does not (a line `scripts/run-test-binaries` counts as skipped, not passed).
//! `ENGRAM_SKIP_WGPU=1` skips the wgpu variant too.

mod common;

use common::tiny::{tiny_chat_llama_gguf, tiny_llama_f32_gguf, tiny_memory_config};
use engram::{Device, Engine, EngineOptions, Fact, GenerateOptions, LearnOptions, RetrofitOptions};

/// Runs `$body(device)` as one test per device: `$name::cpu`, `$name::wgpu`, `$name::cuda`.
macro_rules! test_device {
    ($name:ident, $body:ident) => {
        mod $name {
            #[test]
            fn cpu() {
                super::$body(engram::Device::Cpu);
            }

            #[test]
            fn wgpu() {
                match super::wgpu_unavailable() {
                    Some(why) => super::skip(concat!(stringify!($name), "::wgpu"), &why),
                    None => super::$body(engram::Device::Wgpu),
                }
            }

            #[test]
            fn cuda() {
                match super::cuda_unavailable() {
                    Some(why) => super::skip(concat!(stringify!($name), "::cuda"), &why),
                    None => super::$body(engram::Device::Cuda(None)),
                }
            }
        }
    };
}

/// Says that `test` did not run and why, on a line of its own that the test harness does not
/// capture (it writes to stderr directly, not through `eprintln!`), so every run shows it.
fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {why}");
}

/// Why the cuda variants cannot run here, if they cannot.
fn cuda_unavailable() -> Option<String> {
    match engram::cuda_devices() {
        Ok(devices) if devices.is_empty() => Some("no CUDA device".into()),
        Ok(_) => None,
        Err(e) => Some(format!("no CUDA device: {e}")),
    }
}

/// Why the wgpu variants cannot run here, if they cannot.
fn wgpu_unavailable() -> Option<String> {
    if std::env::var_os("ENGRAM_SKIP_WGPU").is_some_and(|v| !v.is_empty()) {
        return Some("ENGRAM_SKIP_WGPU is set".into());
    }
    if engram::wgpu_adapters().is_empty() {
        return Some("no wgpu adapter (install mesa-vulkan-drivers for lavapipe)".into());
    }
    None
}

const TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A tiny chat model on `device`.
fn tiny_engine(tag: &str, device: Device) -> Engine {
    engine_of(&tiny_chat_llama_gguf(11, TEMPLATE), tag, device)
}

/// The model file `gguf` opened on `device`. The file is removed once the engine has mapped
/// it (the mapping keeps the bytes), so the tests leave nothing behind.
fn engine_of(gguf: &[u8], tag: &str, device: Device) -> Engine {
    let path = std::env::temp_dir().join(format!(
        "engram-devices-{}-{tag}-{device:?}.gguf",
        std::process::id()
    ));
    std::fs::write(&path, gguf).expect("write tiny model");
    let engine = Engine::open(
        &path,
        &EngineOptions {
            device,
            threads: 2,
            ..Default::default()
        },
    );
    std::fs::remove_file(&path).expect("remove the tiny model file");
    engine.expect("the tiny model opens")
}

/// Attaches a memory fitted on a few made-up sentences.
fn attach_memory(engine: &mut Engine) {
    let docs: Vec<String> = (0..24)
        .map(|i| {
            format!(
                "Sentence {i} says that the river {i} flows past hill number {}.",
                i * 7
            )
        })
        .collect();
    let options = RetrofitOptions {
        config: tiny_memory_config(),
        batch_tokens: 64,
        fit_samples: 256,
        ..Default::default()
    };
    let store = engine
        .retrofit(&docs, &options, &mut |_| true)
        .expect("retrofit on the tiny model");
    engine.attach_memory(store, None).expect("attach");
}

fn zero_memory_leaves_every_logit_bit_identical(device: Device) {
    let mut engine = tiny_engine("exact", device);
    let tokens = engine.tokenizer().encode("the river flows", false).unwrap();
    let before = engine.logits(&tokens).unwrap();
    attach_memory(&mut engine);
    let after = engine.logits(&tokens).unwrap();
    assert_eq!(before.len(), after.len());
    let differing = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(
        differing, 0,
        "{device:?}: logits changed with all-zero values"
    );
}
test_device!(
    zero_memory_is_exact,
    zero_memory_leaves_every_logit_bit_identical
);

fn learning_a_fact_lowers_its_loss(device: Device) {
    let mut engine = tiny_engine("learn", device);
    attach_memory(&mut engine);
    let options = LearnOptions {
        steps: 6,
        ..Default::default()
    };
    let report = engine
        .learn(
            &[Fact::qa("Where is the mill?", "Ostrava")],
            &options,
            &mut |_, _, _| true,
        )
        .expect("learning on the tiny model");
    let fact = &report.facts[0];
    assert!(!fact.rows.is_empty(), "{device:?}: no row changed");
    assert!(
        fact.loss_after < fact.loss_before,
        "{device:?}: loss {} -> {}",
        fact.loss_before,
        fact.loss_after
    );
}
test_device!(learning_lowers_the_loss, learning_a_fact_lowers_its_loss);

/// The device's logits match the CPU's on a model whose weights are all f32, where both compute
/// the same sums in f32 and only their order differs (quantized formats are compared op by op,
/// against each format's own tolerance, in the e2e `gpu_ops` tests).
fn logits_match_the_cpu(device: Device) {
    let gguf = tiny_llama_f32_gguf(5, 2);
    let (engine, cpu) = (
        engine_of(&gguf, "parity", device),
        engine_of(&gguf, "parity-cpu", Device::Cpu),
    );
    let tokens = engine
        .tokenizer()
        .encode("the river flows past the hill", false)
        .unwrap();
    let (got, want) = (
        engine.logits(&tokens).unwrap(),
        cpu.logits(&tokens).unwrap(),
    );
    assert_eq!(got.len(), want.len());
    let rms = (want.iter().map(|v| v * v).sum::<f32>() / want.len() as f32).sqrt();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 1e-4 * rms,
        "{device:?}: logits differ from the cpu's by {worst:.2e} (rms {rms:.2e})"
    );
}
test_device!(logits_agree_with_the_cpu, logits_match_the_cpu);

fn greedy_generation_repeats_itself_exactly(device: Device) {
    let engine = tiny_engine("generate", device);
    let options = GenerateOptions {
        max_tokens: 12,
        loop_guard: None,
        ..Default::default()
    };
    let a = engine.generate("the river", &options, |_| true).unwrap();
    let b = engine.generate("the river", &options, |_| true).unwrap();
    assert_eq!(
        a.tokens, b.tokens,
        "{device:?}: greedy decoding is not deterministic"
    );
    assert!(a.tokens.len() <= 12);
}
test_device!(
    greedy_is_deterministic,
    greedy_generation_repeats_itself_exactly
);

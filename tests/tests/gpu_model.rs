//! The default model end to end on the GPU backends against the cpu backend: logits, greedy
//! answers, and a fact learned on each device. Each test runs once on wgpu (`NAME::wgpu`) and
//! once on CUDA (`NAME::cuda`).
//!
//! wgpu runs on whatever adapter it finds (lavapipe in CI; its name is printed) and fails
//! without one unless `ENGRAM_SKIP_WGPU=1` says on purpose that this machine has none. The CUDA
//! variants run where a CUDA device and NVRTC answer and print "skipped: …" elsewhere.
//!
//! What "the same" means here: both backends quantize activations to 8-bit blocks and sum the
//! same integers, but their float ops (norms, exp, sums) round differently in the last bit.
//! SmolLM2 has a few channels with very large activations, so one activation that lands on the
//! other side of a rounding boundary moves logits by tenths — the noise floor that
//! `llama_cpp_oracle.rs` measures as llama.cpp with an f16 against an f32 KV cache. The wgpu
//! logits must stay within that floor of the cpu's; greedy answers must be identical except
//! where the cpu's own choice was a tie within the floor (each such case is printed).

use engram::backend::Backend;
use engram::backend::argmax;
use engram::learn::{Fact, LearnOptions};
use engram::learn::{RetrofitOptions, retrofit};
use engram::memory::MemoryConfig;
use engram::{ChatMessage, Device, Engine, EngineOptions, GenerateOptions};
use engram_e2e::{LlamaCpp, default_model, tiny_llama_f32_gguf, tiny_memory_config};

/// The default model on `device`, or `None` (after saying why) when the device is CUDA and none
/// answers, or wgpu, absent, with skipping allowed.
fn open(device: Device) -> Option<Engine> {
    open_model(&default_model(), device)
}

/// [`open`] for the model at `path`.
fn open_model(path: &std::path::Path, device: Device) -> Option<Engine> {
    let options = EngineOptions {
        device,
        ..Default::default()
    };
    match Engine::open(path, &options) {
        Ok(e) => {
            eprintln!("{device:?}: running on {}", e.device_name());
            Some(e)
        }
        Err(e) if matches!(device, Device::Cuda(_)) => {
            skip(&e.to_string());
            None
        }
        Err(e)
            if device != Device::Cpu && std::env::var("ENGRAM_SKIP_WGPU").as_deref() == Ok("1") =>
        {
            eprintln!("SKIPPED: no wgpu adapter ({e}) and ENGRAM_SKIP_WGPU=1");
            None
        }
        Err(e) => panic!(
            "{device:?}: {e} (install mesa-vulkan-drivers for lavapipe, or set ENGRAM_SKIP_WGPU=1)"
        ),
    }
}

/// Says that the running test did not run and why, on a line the harness does not capture
/// (counted as skipped by `scripts/run-test-binaries`).
fn skip(why: &str) {
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("a gpu test")
        .to_string();
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {why}");
}

/// Runs `$body(device)` once per GPU backend: `$body::wgpu` and `$body::cuda`.
macro_rules! gpu_test {
    ($body:ident) => {
        mod $body {
            #[test]
            fn wgpu() {
                super::$body(engram::Device::Wgpu);
            }

            #[test]
            fn cuda() {
                super::$body(engram::Device::Cuda(None));
            }
        }
    };
}

/// The device's short name for messages and folders.
fn name(device: Device) -> &'static str {
    match device {
        Device::Cuda(_) => "cuda",
        _ => "wgpu",
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Largest logit difference between llama.cpp with an f32 and with an f16 KV cache over the
/// prompts' positions: the noise floor of 8-bit activation rounding on this model.
fn noise_floor(engine: &Engine, prompts: &[Vec<u32>]) -> f32 {
    let path = engine.path().to_path_buf();
    let n_ctx = prompts.iter().map(Vec::len).max().unwrap_or(1).max(64);
    let mut f32_kv = LlamaCpp::open(&path, n_ctx, 2);
    let mut f16_kv = LlamaCpp::open_with_kv(&path, n_ctx, 2, llama_cpp_sys_2::GGML_TYPE_F16);
    let floor = prompts
        .iter()
        .map(|t| max_abs_diff(&f32_kv.logits(t), &f16_kv.logits(t)))
        .fold(0f32, f32::max);
    eprintln!(
        "noise floor (llama.cpp f16 vs f32 KV, {} prompts): {floor:.3}",
        prompts.len()
    );
    assert!(floor > 0.0 && engine.model().config.vocab_size > 0);
    floor
}

fn logits_stay_within_the_noise_floor_of_the_cpu(device: Device) {
    logits_within_the_noise_floor(
        device,
        &default_model(),
        &[
            "The capital of France is",
            "<|im_start|>user\nWhat is the capital of Japan?<|im_end|>\n<|im_start|>assistant\n",
            "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
            "Once upon a time, in a small village by the sea, there lived an old fisherman who",
        ],
    );
}
gpu_test!(logits_stay_within_the_noise_floor_of_the_cpu);

/// Gemma 3 270M on the GPU: GeGLU, q/k norms, post-norms, the embedding scale and its
/// 262,144-row table split over storage bindings (the sliding window is checked op by op
/// in gpu_ops.rs: a prompt past 512 tokens would need gigabytes of logits here).
fn gemma3_logits_stay_within_the_noise_floor_of_the_cpu(device: Device) {
    logits_within_the_noise_floor(
        device,
        &engram_e2e::gemma3_model(),
        &[
            "The capital of France is",
            "Q: What is the capital of Japan?\nA:",
            "Once upon a time, in a small village by the sea, there lived an old fisherman who",
        ],
    );
}
gpu_test!(gemma3_logits_stay_within_the_noise_floor_of_the_cpu);

fn logits_within_the_noise_floor(device: Device, path: &std::path::Path, prompts: &[&str]) {
    let dev = name(device);
    let Some(gpu) = open_model(path, device) else {
        return;
    };
    let cpu = open_model(path, Device::Cpu).unwrap();
    let vocab = cpu.model().config.vocab_size;
    let prompts: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| cpu.tokenizer().encode(p, true).unwrap())
        .collect();
    let floor = noise_floor(&cpu, &prompts);
    let (mut worst, mut positions, mut agree) = (0f32, 0, 0);
    for tokens in &prompts {
        let (lc, lg) = (cpu.logits(tokens).unwrap(), gpu.logits(tokens).unwrap());
        for (i, (a, b)) in lc
            .chunks_exact(vocab)
            .zip(lg.chunks_exact(vocab))
            .enumerate()
        {
            worst = worst.max(max_abs_diff(a, b));
            positions += 1;
            let (ta, tb) = (argmax(a) as usize, argmax(b) as usize);
            if ta == tb {
                agree += 1;
            } else {
                let margin = a[ta] - a[tb];
                eprintln!(
                    "near tie at position {i}: cpu {ta}, {} {tb} (cpu margin {margin:.3})",
                    name(device)
                );
                assert!(
                    margin <= floor,
                    "top-1 differs at position {i} with cpu margin {margin} over the floor {floor}"
                );
            }
        }
    }
    eprintln!(
        "{dev} vs cpu over {positions} positions: max |Δlogit| {worst:.3} (floor {floor:.3}); top-1 identical at {agree}"
    );
    assert!(
        worst <= floor,
        "max |Δlogit| {worst} over the noise floor {floor}"
    );
}

/// Greedy replies of `engine` to `question`, as token ids after the prompt's.
fn greedy(engine: &Engine, question: &str, max_tokens: usize) -> (Vec<u32>, Vec<u32>) {
    let messages = [ChatMessage::new("user", question)];
    let prompt = engine
        .tokenizer()
        .apply_chat_template(&messages, true)
        .unwrap();
    let tokens = engine.tokenizer().encode(&prompt, true).unwrap();
    let options = GenerateOptions {
        max_tokens,
        ..Default::default()
    };
    let g = engine.chat(&messages, &options, |_| true).unwrap();
    (tokens, g.tokens)
}

fn greedy_answers_match_the_cpu(device: Device) {
    let dev = name(device);
    let Some(gpu) = open(device) else {
        return;
    };
    let cpu = open(Device::Cpu).unwrap();
    let questions = [
        "What is the capital of France?",
        "Who wrote Romeo and Juliet?",
        "What is the largest planet in the solar system?",
        "Name the three primary colors.",
    ];
    let prompts: Vec<Vec<u32>> = questions.iter().map(|q| greedy(&cpu, q, 0).0).collect();
    let floor = noise_floor(&cpu, &prompts);
    let mut identical = 0;
    for q in questions {
        let (prompt, c) = greedy(&cpu, q, 20);
        let (_, g) = greedy(&gpu, q, 20);
        let text = |t: &[u32]| cpu.tokenizer().decode(t, true);
        eprintln!("{q}\n  cpu:  {:?}\n  {dev}: {:?}", text(&c), text(&g));
        if c == g {
            identical += 1;
            continue;
        }
        // Where they part, the cpu's own choice must have been a tie within the floor.
        let k = c.iter().zip(&g).take_while(|(a, b)| a == b).count();
        let mut context = prompt.clone();
        context.extend_from_slice(&c[..k]);
        let logits = cpu.logits(&context).unwrap();
        let last = &logits[logits.len() - cpu.model().config.vocab_size..];
        let (tc, tg) = (
            c.get(k).map_or(2, |&t| t as usize),
            g.get(k).map_or(2, |&t| t as usize),
        );
        let margin = last[tc] - last[tg];
        eprintln!("  part at reply token {k}: cpu margin {margin:.3} (floor {floor:.3})");
        assert!(
            margin <= floor,
            "{q}: replies part at token {k} although the cpu's margin {margin} exceeds the floor {floor}"
        );
    }
    eprintln!(
        "{identical} of {} greedy replies identical",
        questions.len()
    );
}
gpu_test!(greedy_answers_match_the_cpu);

fn rows(engine: &Engine, ids: &[u32]) -> Vec<f32> {
    let b = engine.model().backend();
    b.download(&b.read_rows(&engine.model().memory()[0].values, ids))
}

/// ‖a − b‖ / ‖b‖.
fn relative(a: &[f32], b: &[f32]) -> f32 {
    let norm = b.iter().map(|v| v * v).sum::<f32>().sqrt();
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt();
    assert!(norm > 0.0, "reference is all zeros");
    diff / norm
}

/// Gradient of one training sequence with respect to every value row its lookups touch.
fn sequence_gradient(engine: &Engine, tokens: &[u32], rows: &[u32]) -> (f64, Vec<f32>) {
    let model = engine.model();
    let seq = model
        .prepare(tokens, tokens.len() / 2..tokens.len() - 1)
        .unwrap();
    let g = model
        .value_gradients(std::slice::from_ref(&seq), rows)
        .unwrap();
    (g.loss, model.backend().download(&g.grads))
}

fn touched_rows(engine: &Engine, tokens: &[u32]) -> Vec<u32> {
    let model = engine.model();
    let seq = model
        .prepare(tokens, tokens.len() / 2..tokens.len() - 1)
        .unwrap();
    let mut r = model.backend().download_slots(&seq.lookup.slots);
    r.sort_unstable();
    r.dedup();
    r
}

/// On an all-f32 model there is no 8-bit rounding to amplify differences, so learning on the
/// two devices must agree to float precision: same selected rows, values within 1e-3.
fn learning_on_a_float_model_matches_the_cpu_closely(device: Device) {
    let dev = name(device);
    // A folder per device: the wgpu and cuda variants run at the same time.
    let path = engram_e2e::scratch_dir(&format!("gpu-{}", name(device))).join("tiny.gguf");
    std::fs::write(&path, tiny_llama_f32_gguf(31, 3)).unwrap();
    let options = |device| EngineOptions {
        device,
        ..Default::default()
    };
    let gpu = match Engine::open(&path, &options(device)) {
        Ok(e) => e,
        Err(e) if matches!(device, Device::Cuda(_)) => {
            skip(&e.to_string());
            return;
        }
        Err(e) if std::env::var("ENGRAM_SKIP_WGPU").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: no wgpu adapter ({e}) and ENGRAM_SKIP_WGPU=1");
            return;
        }
        Err(e) => panic!("{e} (install mesa-vulkan-drivers for lavapipe)"),
    };
    let mut engines = [Engine::open(&path, &options(Device::Cpu)).unwrap(), gpu];
    let opts = RetrofitOptions {
        config: MemoryConfig {
            layers: vec![0],
            gated: true,
            ..tiny_memory_config()
        },
        batch_tokens: 32,
        fit_samples: 64,
        ..Default::default()
    };
    let docs = ["the quick brown fox jumps over the lazy dog ".repeat(4)];
    let store = retrofit(
        engines[0].model(),
        engines[0].tokenizer(),
        &engines[0].fingerprint(),
        &docs,
        &opts,
        &mut |_| true,
    )
    .unwrap();
    for e in &mut engines {
        e.attach_memory(store.clone(), None).unwrap();
    }
    let tokens = engines[0]
        .tokenizer()
        .encode("Ana lives in Porto.", false)
        .unwrap();
    let all = touched_rows(&engines[0], &tokens);
    assert_eq!(all, touched_rows(&engines[1], &tokens), "lookups differ");
    let (lc, gc) = sequence_gradient(&engines[0], &tokens, &all);
    let (lg, gg) = sequence_gradient(&engines[1], &tokens, &all);
    let grad_err = relative(&gg, &gc);
    eprintln!("tiny f32 model: loss cpu {lc:.6} {dev} {lg:.6}; gradient ‖Δ‖/‖cpu‖ {grad_err:.2e}");
    assert!((lc - lg).abs() <= 1e-4 * lc.abs(), "losses differ");
    assert!(grad_err <= 1e-4, "gradients differ by {grad_err:.2e}");

    // Rows the first half never reads: freezing that half on the device changes nothing.
    {
        let model = engines[1].model();
        let half = tokens.len() / 2;
        let mut seqs = [model.prepare(&tokens, half..tokens.len() - 1).unwrap()];
        let slots = model.backend().download_slots(&seqs[0].lookup.slots);
        let early: std::collections::HashSet<u32> = slots[..half * 8].iter().copied().collect();
        let late: Vec<u32> = all.iter().copied().filter(|r| !early.contains(r)).collect();
        assert!(!late.is_empty(), "every row is read in the first half");
        let (lp, gp) = sequence_gradient(&engines[1], &tokens, &late);
        let frozen = model.freeze_prefixes(&mut seqs, &late).unwrap();
        let g = model.value_gradients(&seqs, &late).unwrap();
        let err = relative(&model.backend().download(&g.grads), &gp);
        eprintln!(
            "{dev}, {frozen} frozen positions: loss {:.6} vs {lp:.6}, gradient ‖Δ‖/‖plain‖ {err:.2e}",
            g.loss
        );
        assert!(frozen >= half, "only {frozen} positions were frozen");
        assert!(
            (g.loss - lp).abs() <= 1e-5 * lp.abs(),
            "frozen loss differs"
        );
        assert!(err <= 1e-5, "frozen gradients differ by {err:.2e}");
    }

    // Three SGD steps on every touched row: the updated values must still agree.
    for _ in 0..3 {
        for e in &mut engines {
            let model = e.model();
            let seq = model
                .prepare(&tokens, tokens.len() / 2..tokens.len() - 1)
                .unwrap();
            let g = model
                .value_gradients(std::slice::from_ref(&seq), &all)
                .unwrap();
            e.model_mut().sgd_values(&all, &g.grads, 0.5).unwrap();
        }
    }
    let value_err = relative(&rows(&engines[1], &all), &rows(&engines[0], &all));
    let (after_c, _) = sequence_gradient(&engines[0], &tokens, &[]);
    let (after_g, _) = sequence_gradient(&engines[1], &tokens, &[]);
    eprintln!(
        "3 SGD steps on {} rows: loss cpu {lc:.4} -> {after_c:.4}, {dev} {lg:.4} -> {after_g:.4}; values ‖Δ‖/‖cpu‖ {value_err:.2e}",
        all.len()
    );
    assert!(after_c < lc, "the tiny model learned nothing");
    assert!(
        value_err <= 1e-4,
        "updated values differ by {value_err:.2e}"
    );
    let _ = std::fs::remove_file(&path);
}
gpu_test!(learning_on_a_float_model_matches_the_cpu_closely);

/// On the quantized default model the devices' gradients agree within the activation-rounding
/// noise, and a fact learned with the default settings is recalled on both.
fn a_fact_learned_on_the_gpu_is_recalled_as_on_cpu(device: Device) {
    let dev = name(device);
    let Some(mut gpu) = open(device) else {
        return;
    };
    let mut cpu = open(Device::Cpu).unwrap();
    let store = engram_e2e::learning::fit_memory(&cpu);
    cpu.attach_memory(store.clone(), None).unwrap();
    gpu.attach_memory(store, None).unwrap();

    // One training phrasing, before any update: the touched rows' gradients.
    let messages = [
        ChatMessage::new("user", "What is the name of Marta's dog?"),
        ChatMessage::new("assistant", "Bruno"),
    ];
    let text = cpu
        .tokenizer()
        .apply_chat_template(&messages, false)
        .unwrap();
    let tokens = cpu.tokenizer().encode(&text, true).unwrap();
    let touched = touched_rows(&cpu, &tokens);
    let (lc, gc) = sequence_gradient(&cpu, &tokens, &touched);
    let (lg, gg) = sequence_gradient(&gpu, &tokens, &touched);
    let grad_err = relative(&gg, &gc);
    eprintln!(
        "default model, {} touched rows: loss cpu {lc:.4} {dev} {lg:.4}; gradient ‖Δ‖/‖cpu‖ {grad_err:.3}",
        touched.len()
    );
    assert!(grad_err <= 0.25, "gradients differ by {grad_err:.3}");

    let fact = Fact::qa("What is the name of Marta's dog?", "Bruno");
    let probe = "I have a question: what is the name of Marta's dog?";
    let options = LearnOptions::default();
    let rc = cpu
        .learn(std::slice::from_ref(&fact), &options, &mut |_, _, _| true)
        .unwrap();
    let rg = gpu.learn(&[fact], &options, &mut |_, _, _| true).unwrap();
    let (fc, fg) = (&rc.facts[0], &rg.facts[0]);
    let shared = fc
        .rows
        .iter()
        .filter(|r| fg.rows.binary_search(r).is_ok())
        .count();
    eprintln!(
        "cpu: loss {:.3} -> {:.3} in {:.1} s; wgpu: loss {:.3} -> {:.3} in {:.1} s; {shared} of {} selected rows shared",
        fc.loss_before,
        fc.loss_after,
        rc.total.as_secs_f64(),
        fg.loss_before,
        fg.loss_after,
        rg.total.as_secs_f64(),
        fc.rows.len()
    );
    assert!(shared * 10 >= fc.rows.len() * 9, "selections differ");
    assert!(fg.loss_after < 0.5 * fg.loss_before, "wgpu did not learn");
    let (ac, ag) = (cpu.ask(probe, 24).unwrap(), gpu.ask(probe, 24).unwrap());
    eprintln!("{probe}\n  cpu:  {ac:?}\n  wgpu: {ag:?}");
    assert!(ac.contains("Bruno"), "cpu did not recall the fact: {ac:?}");
    assert!(ag.contains("Bruno"), "wgpu did not recall the fact: {ag:?}");
}
gpu_test!(a_fact_learned_on_the_gpu_is_recalled_as_on_cpu);

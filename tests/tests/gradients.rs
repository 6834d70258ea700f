//! Finite-difference checks of every backward op, and of the whole path from the loss to the
//! memory's value rows, on a tiny all-f32 model written with the GGUF writer.
//!
//! Tolerance: a central difference with step ε = 1e-2 (ops) or 1e-3 (the whole model) along
//! random directions must agree with the analytic directional derivative within 2% of its
//! magnitude plus 1e-3 (f32 arithmetic; the truncation error is O(ε²)).

use engram::backend::cpu::{CpuBackend, CpuTensor};
use engram::backend::{Activation, AttentionShape, Backend, Rope, RopeLayout, WeightSource};
use engram::learn::{RetrofitOptions, retrofit};
use engram::memory::MemoryConfig;
use engram::quant::{GgmlType, dequantize_row};
use engram::{Engine, EngineOptions};
use engram_e2e::{noise, tiny_llama_f32_gguf, tiny_memory_config};

fn backend() -> CpuBackend {
    CpuBackend::new(2).unwrap()
}

fn tensor(data: Vec<f32>, rows: usize, cols: usize) -> CpuTensor {
    CpuTensor {
        data: data.into(),
        rows,
        cols,
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

fn axpy(x: &[f32], a: f32, u: &[f32]) -> Vec<f32> {
    x.iter().zip(u).map(|(&x, &u)| x + a * u).collect()
}

/// Asserts that two learning gradients of the same sequences agree (loss within 1e-5, every
/// gradient entry within 1e-4 of the largest one, which must be non-zero); the worst gap.
fn same_gradient<B: Backend>(
    b: &B,
    got: &engram::model::SequenceGradient<B>,
    want: &engram::model::SequenceGradient<B>,
    what: &str,
) -> f32 {
    assert!(
        (got.loss - want.loss).abs() <= 1e-5 * want.loss.abs(),
        "{what}: loss {} vs {}",
        got.loss,
        want.loss
    );
    let (a, w) = (b.download(&got.grads), b.download(&want.grads));
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&w)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        scale > 0.0 && worst <= 1e-4 * scale,
        "{what}: gradients differ by {worst:.3e} (largest {scale:.3e})"
    );
    worst
}

/// Checks `grad` (analytic d f / d x) against central differences of `f` along random
/// directions.
fn check(name: &str, x: &[f32], grad: &[f32], eps: f32, f: &dyn Fn(&[f32]) -> f64) {
    let mut worst = 0f64;
    for seed in 0..6 {
        let u = noise(x.len(), 1000 + seed, 1.0);
        let fd = (f(&axpy(x, eps, &u)) - f(&axpy(x, -eps, &u))) / (2.0 * eps as f64);
        let an = dot(grad, &u);
        let err = (fd - an).abs();
        worst = worst.max(err / (an.abs() + 1e-3));
        assert!(
            err <= 0.02 * an.abs() + 1e-3,
            "{name}: finite difference {fd:.6} vs analytic {an:.6} (direction {seed})"
        );
    }
    eprintln!("{name}: worst relative error {worst:.2e}");
}

#[test]
fn rms_norm_backward_matches_finite_differences() {
    let b = backend();
    let (n, d) = (3, 16);
    let x = noise(n * d, 1, 2.0);
    let w = tensor(noise(d, 2, 0.5).iter().map(|v| v + 1.0).collect(), 1, d);
    let r = noise(n * d, 3, 1.0);
    let f = |x: &[f32]| dot(&b.rms_norm(&tensor(x.to_vec(), n, d), &w, 1e-5).data, &r);
    let g = b.rms_norm_backward(&tensor(x.clone(), n, d), &w, 1e-5, &tensor(r.clone(), n, d));
    check("rms_norm", &x, &g.data, 1e-2, &f);
}

#[test]
fn glu_backward_matches_finite_differences() {
    for act in [Activation::Silu, Activation::GeluTanh] {
        glu_backward_matches_for(act);
    }
}

fn glu_backward_matches_for(act: Activation) {
    let b = backend();
    let (n, d) = (2, 24);
    let (gate, up, r) = (
        noise(n * d, 4, 3.0),
        noise(n * d, 5, 2.0),
        noise(n * d, 6, 1.0),
    );
    let (dg, du) = b.glu_backward(
        act,
        &tensor(gate.clone(), n, d),
        &tensor(up.clone(), n, d),
        &tensor(r.clone(), n, d),
    );
    let fg = |g: &[f32]| {
        dot(
            &b.glu(act, &tensor(g.to_vec(), n, d), &tensor(up.clone(), n, d))
                .data,
            &r,
        )
    };
    let fu = |u: &[f32]| {
        dot(
            &b.glu(act, &tensor(gate.clone(), n, d), &tensor(u.to_vec(), n, d))
                .data,
            &r,
        )
    };
    check(&format!("{act:?} glu d gate"), &gate, &dg.data, 1e-2, &fg);
    check(&format!("{act:?} glu d up"), &up, &du.data, 1e-2, &fu);
}

#[test]
fn rope_backward_is_the_transpose() {
    let b = backend();
    let (n, heads, hd) = (5, 3, 8);
    for layout in [RopeLayout::Interleaved, RopeLayout::Halves] {
        let rope = Rope {
            dims: hd,
            base: 10000.0,
            layout,
        };
        let x = noise(n * heads * hd, 7, 1.0);
        let r = noise(n * heads * hd, 8, 1.0);
        let mut rx = tensor(x.clone(), n, heads * hd);
        b.rope(&mut rx, heads, hd, 3, &rope);
        let mut rr = tensor(r.clone(), n, heads * hd);
        b.rope_backward(&mut rr, heads, hd, 3, &rope);
        // <rope(x), r> = <x, ropeᵀ(r)> for a linear map.
        let (lhs, rhs) = (dot(&rx.data, &r), dot(&x, &rr.data));
        assert!(
            (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
            "{layout:?}: {lhs} vs {rhs}"
        );
    }
}

fn f32_weight(data: &[f32], rows: usize, cols: usize, dtype: GgmlType) -> WeightSource {
    engram_e2e::quantized_weight("w", data, rows, cols, dtype)
}

#[test]
fn matmul_backward_is_the_transpose_for_every_format() {
    let b = backend();
    let (n, rows, cols) = (3, 40, 256);
    let w = noise(rows * cols, 9, 1.0);
    let mut dy = noise(n * rows, 10, 1.0);
    // Rows no token sends gradient to are skipped; a row only one token uses is not.
    for t in 0..n {
        for r in (0..rows).step_by(3) {
            dy[t * rows + r] = 0.0;
        }
        dy[t * rows + 7] = if t == 1 { 0.5 } else { 0.0 };
    }
    let x = noise(n * cols, 12, 1.0);
    // Both paths: decoding the quantized rows on the fly, and the blocked f32 GEMM learning
    // uses (the weight decoded a panel at a time, 40 rows split unevenly across two threads).
    for (dtype, gemm) in GgmlType::ALL
        .into_iter()
        .flat_map(|d| [(d, false), (d, true)])
    {
        let src = f32_weight(&w, rows, cols, dtype);
        let weight = b.load_weight(&src).unwrap();
        b.use_gemm(&weight, gemm);
        assert_eq!(weight.is_through_gemm(), gemm);
        let dx = b.matmul_backward(&weight, &tensor(dy.clone(), n, rows));
        // Reference: dy · W with W decoded from the same blocks, in f64.
        let row_bytes = dtype.row_bytes(cols).unwrap();
        let mut deq = vec![0f32; rows * cols];
        for (r, out) in deq.chunks_exact_mut(cols).enumerate() {
            dequantize_row(
                dtype,
                &src.bytes.as_slice()[r * row_bytes..(r + 1) * row_bytes],
                out,
            );
        }
        for t in 0..n {
            for c in 0..cols {
                let want: f64 = (0..rows)
                    .map(|r| dy[t * rows + r] as f64 * deq[r * cols + c] as f64)
                    .sum();
                assert!(
                    (dx.data[t * cols + c] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{dtype} gemm {gemm} ({t}, {c})"
                );
            }
        }
        if gemm {
            // The forward through the GEMM computes what the quantized path does (it rounds
            // the activations to the same 8-bit blocks), within f32 and f16 rounding.
            let y = b.matmul(&weight, &tensor(x.clone(), n, cols));
            b.use_gemm(&weight, false);
            assert!(
                !weight.is_through_gemm(),
                "{dtype}: the GEMM path was not turned off"
            );
            let quantized = b.matmul(&weight, &tensor(x.clone(), n, cols));
            let worst = y
                .data
                .iter()
                .zip(&quantized.data)
                .map(|(a, q)| (a - q).abs() / (1.0 + q.abs()))
                .fold(0f32, f32::max);
            // Against x · Wᵀ without the rounding, which the GEMM path would give otherwise.
            let unrounded = (0..n * rows)
                .map(|i| {
                    let (t, r) = (i / rows, i % rows);
                    let want: f64 = (0..cols)
                        .map(|c| x[t * cols + c] as f64 * deq[r * cols + c] as f64)
                        .sum();
                    (want as f32 - quantized.data[i]).abs() / (1.0 + quantized.data[i].abs())
                })
                .fold(0f32, f32::max);
            eprintln!(
                "{dtype}: GEMM forward within {worst:.2e} of the quantized path (unrounded: {unrounded:.2e})"
            );
            // What is left is the f16 rounding of the activation block sums that the
            // offset formats (Q4_0, Q4_1, Q4_K) multiply, and summation order.
            assert!(worst < 5e-3, "{dtype}: GEMM forward differs by {worst:.2e}");
            let float = matches!(dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
            assert!(
                float || worst < 0.1 * unrounded,
                "{dtype}: rounding the activations brought the forward only to {worst:.2e} \
                 of the quantized path (unrounded {unrounded:.2e})"
            );
        }
    }
    // And a finite-difference check where the forward is smooth (f32 weights).
    let weight = b
        .load_weight(&f32_weight(&w, rows, cols, GgmlType::F32))
        .unwrap();
    let x = noise(n * cols, 11, 1.0);
    let f = |x: &[f32]| dot(&b.matmul(&weight, &tensor(x.to_vec(), n, cols)).data, &dy);
    let g = b.matmul_backward(&weight, &tensor(dy.clone(), n, rows));
    check("matmul f32", &x, &g.data, 1e-2, &f);
}

/// Weights wider than one panel the GEMM decodes at a time (16 rows of 4,096 columns
/// forward, 64 rows of a task's 1,024 columns backward): every panel adds its part once.
#[test]
fn the_gemm_decodes_wide_weights_panel_by_panel() {
    let b = backend();
    let (n, rows, cols) = (3, 150, 4096);
    let w = noise(rows * cols, 41, 1.0);
    let x = noise(n * cols, 42, 1.0);
    let dy = noise(n * rows, 43, 1.0);
    for dtype in [GgmlType::Q4_1, GgmlType::Q4_K, GgmlType::F16] {
        let src = f32_weight(&w, rows, cols, dtype);
        let weight = b.load_weight(&src).unwrap();
        let quantized = b.matmul(&weight, &tensor(x.clone(), n, cols));
        let quantized_dx = b.matmul_backward(&weight, &tensor(dy.clone(), n, rows));
        b.use_gemm(&weight, true);
        let y = b.matmul(&weight, &tensor(x.clone(), n, cols));
        let dx = b.matmul_backward(&weight, &tensor(dy.clone(), n, rows));
        let worst = |got: &[f32], want: &[f32]| {
            got.iter()
                .zip(want)
                .map(|(a, q)| (a - q).abs() / (1.0 + q.abs()))
                .fold(0f32, f32::max)
        };
        let (forward, backward) = (
            worst(&y.data, &quantized.data),
            worst(&dx.data, &quantized_dx.data),
        );
        eprintln!(
            "{dtype}: GEMM within {forward:.2e} (forward) and {backward:.2e} (backward) of the quantized path"
        );
        // Forward: the activation block sums' f16 rounding and summation order (4,096 terms);
        // backward: both decode the same blocks, so only summation order differs.
        assert!(
            forward < 2e-2,
            "{dtype}: GEMM forward differs by {forward:.2e}"
        );
        assert!(
            backward < 1e-4,
            "{dtype}: GEMM backward differs by {backward:.2e}"
        );
        // A panel added twice or left out would be off by a whole row's share.
        assert!(
            y.data.iter().any(|v| v.abs() > 1.0),
            "{dtype}: the products are all small"
        );
    }
}

#[test]
fn batched_products_match_one_weight_at_a_time() {
    // q, k and v (or gate and up) of unequal widths: the batch splits their columns into
    // blocks of different outputs, and the backward adds the products inside each block.
    let b = backend();
    let (n, cols) = (5, 64);
    let widths = [48, 16, 32];
    let x = noise(n * cols, 21, 1.0);
    for (dtype, gemm) in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F32]
        .into_iter()
        .flat_map(|d| [(d, false), (d, true)])
    {
        let weights: Vec<_> = widths
            .iter()
            .enumerate()
            .map(|(i, &rows)| {
                let w = noise(rows * cols, 30 + i as u64, 1.0);
                let weight = b.load_weight(&f32_weight(&w, rows, cols, dtype)).unwrap();
                b.use_gemm(&weight, gemm);
                weight
            })
            .collect();
        let ws: Vec<_> = weights.iter().collect();
        let xt = tensor(x.clone(), n, cols);
        let each = b.matmul_each(&ws, &xt);
        assert_eq!(each.len(), ws.len());
        for (i, (got, w)) in each.iter().zip(&ws).enumerate() {
            let want = b.matmul(w, &xt);
            assert_eq!((got.rows, got.cols), (n, widths[i]));
            let worst = got
                .data
                .iter()
                .zip(&want.data)
                .map(|(a, w)| (a - w).abs() / (1.0 + w.abs()))
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-5,
                "{dtype} gemm {gemm}: product {i} off by {worst:.2e}"
            );
        }
        let dys: Vec<_> = widths
            .iter()
            .enumerate()
            .map(|(i, &rows)| tensor(noise(n * rows, 40 + i as u64, 1.0), n, rows))
            .collect();
        let dy_refs: Vec<_> = dys.iter().collect();
        let sum = b.matmul_backward_sum(&ws, &dy_refs);
        let mut want = vec![0f32; n * cols];
        for (w, dy) in ws.iter().zip(&dys) {
            for (a, v) in want.iter_mut().zip(&b.matmul_backward(w, dy).data) {
                *a += v;
            }
        }
        assert_eq!((sum.rows, sum.cols), (n, cols));
        let worst = sum
            .data
            .iter()
            .zip(&want)
            .map(|(a, w)| (a - w).abs() / (1.0 + w.abs()))
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-5,
            "{dtype} gemm {gemm}: summed backward off by {worst:.2e}"
        );
    }
}

/// Causal attention, and with a sliding window of 3 (each query sees itself and two before).
#[test]
fn attention_backward_matches_finite_differences() {
    for window in [None, Some(3)] {
        attention_backward_matches_with(window);
    }
}

fn attention_backward_matches_with(window: Option<usize>) {
    let b = backend();
    let shape = AttentionShape {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        window,
    };
    let n = 6;
    let (qc, kc) = (32, 16);
    let q = noise(n * qc, 12, 1.5);
    let k = noise(n * kc, 13, 1.5);
    let v = noise(n * kc, 14, 1.0);
    let r = noise(n * qc, 15, 1.0);
    let out = |q: &[f32], k: &[f32], v: &[f32]| {
        let mut cache = b.new_kv_cache(1, kc, n);
        let o = b.attention(
            &tensor(q.to_vec(), n, qc),
            &tensor(k.to_vec(), n, kc),
            &tensor(v.to_vec(), n, kc),
            &mut cache,
            0,
            shape,
        );
        dot(&o.data, &r)
    };
    let (dq, dk, dv) = b.attention_backward(
        &tensor(q.clone(), n, qc),
        &tensor(k.clone(), n, kc),
        &tensor(v.clone(), n, kc),
        &tensor(r.clone(), n, qc),
        shape,
    );
    check("attention dq", &q, &dq.data, 1e-2, &|x| out(x, &k, &v));
    check("attention dk", &k, &dk.data, 1e-2, &|x| out(&q, x, &v));
    check("attention dv", &v, &dv.data, 1e-2, &|x| out(&q, &k, x));
}

#[test]
fn cross_entropy_gradient_matches_finite_differences() {
    let b = backend();
    let (n, c) = (3, 20);
    let logits = noise(n * c, 16, 4.0);
    let targets = [3u32, 0, 19];
    let (losses, grad) = b.cross_entropy(&tensor(logits.clone(), n, c), &targets);
    for (t, &l) in losses.iter().enumerate() {
        let want = engram::log_softmax_at(&logits[t * c..(t + 1) * c], targets[t] as usize);
        assert!((l as f64 - want).abs() < 1e-5, "loss of row {t}");
    }
    let f = |x: &[f32]| {
        b.cross_entropy(&tensor(x.to_vec(), n, c), &targets)
            .0
            .iter()
            .map(|&l| l as f64)
            .sum()
    };
    check("cross_entropy", &logits, &grad.data, 1e-2, &f);
}

/// The whole path: loss of a sequence → blocks above the memory → value rows.
#[test]
fn value_gradients_match_finite_differences_through_the_model() {
    let path = engram_e2e::scratch_dir("grad").join("tiny.gguf");
    std::fs::write(&path, tiny_llama_f32_gguf(21, 3)).unwrap();
    // Memory below two blocks (the top one keeps only scored rows), and in the top block.
    value_gradients_through(&path, &[(false, 0), (true, 0), (false, 2)]);
}

/// The same through every other architecture's blocks: Qwen 2's biases, Qwen 3's q/k norms,
/// Phi-3's stacked projections, and Gemma 3's GeGLU, q/k norms, post-norms and sliding window
/// (memory under four blocks, the last of them global; the 19-token sequence crosses the
/// tiny model's window of 8).
#[test]
fn value_gradients_match_finite_differences_on_every_architecture() {
    let dir = engram_e2e::scratch_dir("grad-archs");
    for (arch, layers, memory_layer) in [
        ("qwen2", 3, 0),
        ("qwen3", 3, 0),
        ("phi3", 3, 0),
        ("gemma3", 6, 1),
    ] {
        let path = dir.join(format!("{arch}.gguf"));
        std::fs::write(&path, engram_e2e::tiny_arch_gguf(arch, layers, 21)).unwrap();
        eprintln!("{arch}:");
        value_gradients_through(&path, &[(false, memory_layer)]);
    }
}

fn value_gradients_through(path: &std::path::Path, cases: &[(bool, usize)]) {
    for &(gated, layer) in cases {
        let mut engine = Engine::open(path, &EngineOptions::default()).unwrap();
        let opts = RetrofitOptions {
            config: MemoryConfig {
                layers: vec![layer],
                gated,
                ..tiny_memory_config()
            },
            batch_tokens: 32,
            fit_samples: 64,
            ..Default::default()
        };
        let fp = engine.fingerprint();
        let docs = ["the quick brown fox jumps over the lazy dog ".repeat(4)];
        let mut store = retrofit(
            engine.model(),
            engine.tokenizer(),
            &fp,
            &docs,
            &opts,
            &mut |_| true,
        )
        .unwrap();
        // Non-zero values, so the blocks above see a memory that matters.
        let n = store.layers[0].values.len();
        store.layers[0].values = noise(n, 22, 0.5).into();
        engine.attach_memory(store, None).unwrap();

        let tokens = engine
            .tokenizer()
            .encode("Ana lives in Porto.", false)
            .unwrap();
        let model = engine.model();
        let seq = model.prepare(&tokens, 3..tokens.len() - 1).unwrap();
        let all_rows: Vec<u32> = {
            let mut r = model.backend().download_slots(&seq.lookup.slots);
            r.sort_unstable();
            r.dedup();
            r
        };
        let g = model
            .value_gradients(std::slice::from_ref(&seq), &all_rows)
            .unwrap();

        // The taped training forward computes the same loss as inference does.
        let mut cache = model.new_cache(tokens.len());
        let logits = model
            .forward(&tokens, &mut cache, engram::model::Logits::All)
            .unwrap();
        let vocab = model.config.vocab_size;
        let inference: f64 = (3..tokens.len() - 1)
            .map(|p| {
                engram::log_softmax_at(&logits[p * vocab..(p + 1) * vocab], tokens[p + 1] as usize)
            })
            .sum();
        assert!(
            (g.loss - inference).abs() < 1e-3 * inference,
            "gated {gated}, layer {layer}: {} vs {inference}",
            g.loss
        );

        // Directional derivatives along random perturbations of the touched rows.
        let dim = model.config.dim;
        let grads = model.backend().download(&g.grads);
        let loss_at = |engine: &mut Engine, delta: &[f32], scale: f32| -> f64 {
            let step = engine.model().backend().upload(delta, all_rows.len(), dim);
            engine
                .model_mut()
                .sgd_values(&all_rows, &step, -scale)
                .unwrap();
            let l = engine
                .model()
                .value_gradients(std::slice::from_ref(&seq), &[])
                .unwrap()
                .loss;
            engine
                .model_mut()
                .sgd_values(&all_rows, &step, scale)
                .unwrap();
            l
        };
        let mut worst = 0f64;
        for s in 0..4 {
            let u = noise(all_rows.len() * dim, 300 + s, 1.0);
            let eps = 1e-3;
            let fd = (loss_at(&mut engine, &u, eps) - loss_at(&mut engine, &u, -eps))
                / (2.0 * eps as f64);
            let an = dot(&grads, &u);
            worst = worst.max((fd - an).abs() / an.abs().max(1e-3));
            assert!(
                (fd - an).abs() <= 0.02 * an.abs() + 1e-3,
                "gated {gated}, layer {layer}: finite difference {fd:.5} vs analytic {an:.5}"
            );
        }
        eprintln!(
            "value rows (gated {gated}): {} rows, loss {:.4}, worst relative error {worst:.2e}",
            all_rows.len(),
            g.loss
        );

        // Learning only rows that the first positions do not read: freezing those positions
        // must not change the loss or the gradient.
        let model = engine.model();
        let reads = 2 * 4;
        let slots = model.backend().download_slots(&seq.lookup.slots);
        let early: std::collections::HashSet<u32> = slots[..3 * reads].iter().copied().collect();
        let late: Vec<u32> = all_rows
            .iter()
            .copied()
            .filter(|r| !early.contains(r))
            .collect();
        assert!(
            !late.is_empty(),
            "gated {gated}, layer {layer}: every row is read early"
        );
        let plain = model
            .value_gradients(std::slice::from_ref(&seq), &late)
            .unwrap();
        let mut seqs = [model.prepare(&tokens, 3..tokens.len() - 1).unwrap()];
        let frozen = model.freeze_prefixes(&mut seqs, &late).unwrap();
        assert!(
            frozen >= 3,
            "gated {gated}, layer {layer}: only {frozen} positions were frozen"
        );
        let fast = model.value_gradients(&seqs, &late).unwrap();
        let worst = same_gradient(
            model.backend(),
            &fast,
            &plain,
            &format!("gated {gated}, frozen prefix"),
        );
        // A row outside the frozen set could be read in the prefix: refused.
        let outside = all_rows
            .iter()
            .copied()
            .find(|r| early.contains(r))
            .unwrap();
        assert!(model.value_gradients(&seqs, &[outside]).is_err());
        eprintln!(
            "frozen prefix (gated {gated}): {frozen} positions, gradients within {worst:.2e}"
        );

        // Sequences run as one batch (one matmul over all their rows, attention per
        // sequence), frozen or not: the loss and gradient are the sums of running each alone.
        let other = engine
            .tokenizer()
            .encode("the lazy dog sleeps in the sun all day", false)
            .unwrap();
        let mut pair = [
            model.prepare(&tokens, 3..tokens.len() - 1).unwrap(),
            model.prepare(&other, 1..other.len() - 1).unwrap(),
        ];
        let rows_of = |s: &engram::model::PreparedSequence<_>| {
            let mut r = model.backend().download_slots(&s.lookup.slots);
            r.sort_unstable();
            r.dedup();
            r
        };
        let mut both_rows: Vec<u32> = rows_of(&pair[0])
            .into_iter()
            .chain(rows_of(&pair[1]))
            .collect();
        both_rows.sort_unstable();
        both_rows.dedup();
        let late_pair: Vec<u32> = both_rows
            .iter()
            .copied()
            .filter(|r| !early.contains(r))
            .collect();
        for frozen_too in [false, true] {
            let rows: Vec<u32> = if frozen_too {
                let frozen = model.freeze_prefixes(&mut pair, &late_pair).unwrap();
                assert!(
                    frozen >= 3,
                    "gated {gated}, layer {layer}: only {frozen} positions were frozen"
                );
                late_pair.clone()
            } else {
                both_rows.clone()
            };
            let together = model.value_gradients(&pair, &rows).unwrap();
            let alone: Vec<_> = pair
                .iter()
                .map(|s| {
                    model
                        .value_gradients(std::slice::from_ref(s), &rows)
                        .unwrap()
                })
                .collect();
            let sum_loss = alone[0].loss + alone[1].loss;
            assert!(
                (together.loss - sum_loss).abs() <= 1e-5 * sum_loss.abs(),
                "gated {gated}, frozen {frozen_too}: batch loss {} vs {sum_loss}",
                together.loss
            );
            let (a0, a1) = (
                model.backend().download(&alone[0].grads),
                model.backend().download(&alone[1].grads),
            );
            let t = model.backend().download(&together.grads);
            let scale = t.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = t
                .iter()
                .zip(a0.iter().zip(&a1))
                .fold(0f32, |m, (x, (y, z))| m.max((x - (y + z)).abs()));
            assert!(
                scale > 0.0 && worst <= 1e-4 * scale,
                "gated {gated}, frozen {frozen_too}: batch gradients differ by {worst:.3e}"
            );
            eprintln!(
                "batch of two (gated {gated}, frozen {frozen_too}): gradients within {worst:.2e}"
            );
        }

        // The GEMM learning runs the blocks above the memory through gives the same loss
        // and gradient (this model's weights are f32, so only rounding differs).
        model.gemm_above_memory(true).unwrap();
        let through_gemm = model.value_gradients(&pair, &late_pair);
        model.gemm_above_memory(false).unwrap();
        let through_gemm = through_gemm.unwrap();
        let plain_pair = model.value_gradients(&pair, &late_pair).unwrap();
        let worst = same_gradient(
            model.backend(),
            &through_gemm,
            &plain_pair,
            &format!("gated {gated}, through the GEMM"),
        );
        eprintln!("through the GEMM (gated {gated}): gradients within {worst:.2e}");

        // Sequences prepared together, the second run only from where it leaves the first
        // (after the first's cached keys and values), learn exactly as if prepared alone.
        let longer = engine
            .tokenizer()
            .encode("Ana lives in Porto with her dog.", false)
            .unwrap();
        let common = tokens
            .iter()
            .zip(&longer)
            .take_while(|(a, b)| a == b)
            .count();
        assert!(common >= 3, "the phrasings share only {common} tokens");
        let together = model
            .prepare_many(&[
                (&tokens, 3..tokens.len() - 1),
                (&longer, 2..longer.len() - 1),
            ])
            .unwrap();
        let alone = [
            model.prepare(&tokens, 3..tokens.len() - 1).unwrap(),
            model.prepare(&longer, 2..longer.len() - 1).unwrap(),
        ];
        let mut rows: Vec<u32> = together.iter().flat_map(rows_of).collect();
        rows.sort_unstable();
        rows.dedup();
        for (i, (t, a)) in together.iter().zip(&alone).enumerate() {
            assert_eq!(rows_of(t), rows_of(a), "sequence {i}: other rows read");
            let worst = same_gradient(
                model.backend(),
                &model
                    .value_gradients(std::slice::from_ref(t), &rows)
                    .unwrap(),
                &model
                    .value_gradients(std::slice::from_ref(a), &rows)
                    .unwrap(),
                &format!("gated {gated}, layer {layer}, shared prefix, sequence {i}"),
            );
            eprintln!(
                "prepared after a shared prefix (sequence {i}): gradients within {worst:.2e}"
            );
        }
    }
}

//! Every op of the GPU backends against the cpu backend on random inputs: each test runs once
//! on wgpu (`NAME::wgpu`) and once on CUDA (`NAME::cuda`), through the same shared host code.
//!
//! wgpu runs on whatever adapter it finds — in CI that is lavapipe (Mesa's CPU Vulkan driver);
//! the adapter's name is printed. Without any adapter the wgpu tests fail, naming what to
//! install, unless `ENGRAM_SKIP_WGPU=1` says on purpose that this machine has none. The CUDA
//! tests run where a CUDA device and NVRTC answer and print "skipped: …" elsewhere (counted as
//! skipped by `scripts/run-test-binaries`).
//!
//! Tolerance: max |gpu − cpu| over the output, divided by the output's RMS, at most 1e-4 (f32
//! sums in a different order; RoPE included at position 3000). Copies must be exact, slot ids
//! identical. Quantized matmuls: both backends quantize activations to 8-bit blocks as ggml does
//! and sum the same integers, so the shader is held to 1e-5 against the cpu backend, and — as a
//! check that both are right, not just alike — to 3e-2 against the exact product with the
//! dequantized weights and unquantized activations.

use engram::backend::cpu::{CpuBackend, CpuTensor};
use engram::backend::cuda::{CudaBackend, CudaOptions};
use engram::backend::gpu::{Compute, GpuBackend, GpuTensor, uses_integer_dot};
use engram::backend::wgpu::{WgpuBackend, WgpuOptions};
use engram::backend::{
    Activation, AttentionShape, Backend, ProductKeyShape, Rope, RopeLayout, WeightSource,
};
use engram::gguf::TensorBytes;
use engram::quant::{GgmlType, dequantize_row};
use engram_e2e::noise;

/// The wgpu backend, or `None` (after saying so) when `ENGRAM_SKIP_WGPU=1` and none exists.
fn gpu_with(max_binding: Option<u64>) -> Option<WgpuBackend> {
    let options = WgpuOptions {
        adapter: None,
        allow_software: true,
        max_binding,
    };
    match WgpuBackend::new(&options) {
        Ok(b) => {
            eprintln!("wgpu adapter: {}", b.name());
            Some(b)
        }
        Err(e) if std::env::var("ENGRAM_SKIP_WGPU").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: no wgpu adapter ({e}) and ENGRAM_SKIP_WGPU=1");
            None
        }
        Err(e) => panic!(
            "no wgpu adapter: {e}. Install a Vulkan driver (Debian: mesa-vulkan-drivers gives \
             lavapipe) or set ENGRAM_SKIP_WGPU=1 to skip on purpose"
        ),
    }
}

/// The CUDA backend with bindings of `max_binding` bytes, or `None` (after saying why) where no
/// CUDA device or no NVRTC answers.
fn cuda_with(max_binding: Option<u64>) -> Option<CudaBackend> {
    match CudaBackend::with_options(&CudaOptions {
        device: None,
        max_binding,
    }) {
        Ok(b) => {
            eprintln!("cuda device: {}", b.name());
            Some(b)
        }
        Err(e) => {
            use std::io::Write;
            let test = std::thread::current()
                .name()
                .unwrap_or("a cuda test")
                .to_string();
            let _ = writeln!(std::io::stderr(), "skipped: {test}: {e}");
            None
        }
    }
}

/// Runs `$body(gpu)` once per GPU backend: `$body::wgpu` and `$body::cuda`, each with
/// bindings of `$max_binding` bytes (`None`: the device's own limit).
macro_rules! gpu_test {
    ($body:ident, $max_binding:expr) => {
        mod $body {
            #[test]
            fn wgpu() {
                if let Some(g) = super::gpu_with($max_binding) {
                    super::$body(g);
                }
            }

            #[test]
            fn cuda() {
                if let Some(g) = super::cuda_with($max_binding) {
                    super::$body(g);
                }
            }
        }
    };
    ($body:ident) => {
        gpu_test!($body, None);
    };
}

fn cpu() -> CpuBackend {
    CpuBackend::new(2).unwrap()
}

/// max |got − want| / rms(want), checked against `tol`.
fn close(name: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let rms = (want.iter().map(|v| v * v).sum::<f32>() / want.len().max(1) as f32).sqrt();
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let rel = worst / rms.max(1e-6);
    eprintln!("{name}: max error {worst:.2e} = {rel:.2e} × rms");
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{name}: non-finite output"
    );
    assert!(
        rel <= tol,
        "{name}: max error {rel:.2e} × rms over {tol:.0e}"
    );
}

struct Pair<C: Compute> {
    c: CpuBackend,
    g: GpuBackend<C>,
}

impl<C: Compute> Pair<C> {
    fn new(g: GpuBackend<C>) -> Self {
        Pair { c: cpu(), g }
    }

    fn up(&self, data: &[f32], rows: usize, cols: usize) -> (CpuTensor, GpuTensor<C>) {
        (
            CpuTensor {
                data: data.to_vec().into(),
                rows,
                cols,
            },
            self.g.upload(data, rows, cols),
        )
    }

    fn check(&self, name: &str, c: &CpuTensor, g: &GpuTensor<C>, tol: f32) {
        assert_eq!(self.g.shape(g), (c.rows, c.cols), "{name}: shape");
        close(name, &self.g.download(g), &c.data, tol);
    }
}

fn weight(dtype: GgmlType, rows: usize, cols: usize, seed: u64) -> WeightSource {
    let data = noise(rows * cols, seed, 1.0);
    engram_e2e::quantized_weight(&format!("w.{dtype}"), &data, rows, cols, dtype)
}

fn cols_for(dtype: GgmlType) -> usize {
    match dtype {
        d if d.block_size() == 256 => 512,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 72, // not whole 32-element blocks
        _ => 96,
    }
}

/// The same weight decoded to F32: its cpu matmul is the exact product the shader computes.
fn dequantized(src: &WeightSource) -> WeightSource {
    let row_bytes = src.dtype.row_bytes(src.cols).unwrap();
    let mut bytes = Vec::with_capacity(src.rows * src.cols * 4);
    let mut row = vec![0f32; src.cols];
    for r in src.bytes.as_slice().chunks_exact(row_bytes) {
        dequantize_row(src.dtype, r, &mut row);
        bytes.extend(row.iter().flat_map(|v| v.to_le_bytes()));
    }
    WeightSource {
        name: format!("{}.f32", src.name),
        dtype: GgmlType::F32,
        bytes: TensorBytes::from_vec(bytes),
        ..src.clone()
    }
}

fn matmuls_on<C: Compute>(p: &Pair<C>, label: &str, rows: usize) {
    for dtype in GgmlType::ALL {
        let cols = cols_for(dtype);
        let src = weight(dtype, rows, cols, 7 + dtype.id() as u64);
        let (wc, wg) = (
            p.c.load_weight(&src).unwrap(),
            p.g.load_weight(&src).unwrap(),
        );
        let exact = p.c.load_weight(&dequantized(&src)).unwrap();
        for n in [1, 6] {
            let (xc, xg) = p.up(&noise(n * cols, 11, 1.0), n, cols);
            let name = format!("{label} matmul {dtype} n={n}");
            let got = p.g.matmul(&wg, &xg);
            let loose = if dtype.block_size() == 1 { 1e-4 } else { 3e-2 };
            p.check(
                &format!("{name} vs exact"),
                &p.c.matmul(&exact, &xc),
                &got,
                loose,
            );
            // Formats the shader decodes element by element (floats and the rarer k-quants)
            // give the exact product; the others quantize activations as the cpu does.
            let same_method = if !uses_integer_dot(dtype) {
                p.c.matmul(&exact, &xc)
            } else {
                p.c.matmul(&wc, &xc)
            };
            p.check(&name, &same_method, &got, 1e-5);
            let (dc, dg) = p.up(&noise(n * rows, 12, 1.0), n, rows);
            let name = format!("{label} matmul_backward {dtype} n={n}");
            let (bc, bg) = (p.c.matmul_backward(&wc, &dc), p.g.matmul_backward(&wg, &dg));
            p.check(&name, &bc, &bg, 1e-4);
        }
        let tokens = [0u32, rows as u32 - 1, 3, 3, 41];
        let name = format!("{label} embed {dtype}");
        let (ec, eg) = (
            p.c.embed(&wc, &tokens).unwrap(),
            p.g.embed(&wg, &tokens).unwrap(),
        );
        p.check(&name, &ec, &eg, 1e-6);
        let err =
            p.g.embed(&wg, &[rows as u32])
                .err()
                .expect("token id = rows");
        assert!(
            err.to_string().contains(&format!("token id {rows}")),
            "{err}"
        );
    }
}

/// Activation blocks of tiny values (a GeLU's near-zero outputs) quantize to scales below
/// f16's normal range: the GPU must keep them as subnormals, as the cpu does, not drop them.
fn tiny_activations_keep_their_blocks<C: Compute>(g: GpuBackend<C>) {
    let p = Pair::new(g);
    for dtype in [GgmlType::Q4_K, GgmlType::Q4_0, GgmlType::Q8_0] {
        let cols = cols_for(dtype);
        let src = weight(dtype, 16, cols, 3);
        let (wc, wg) = (
            p.c.load_weight(&src).unwrap(),
            p.g.load_weight(&src).unwrap(),
        );
        let x: Vec<f32> = noise(2 * cols, 21, 1.0)
            .iter()
            .enumerate()
            .map(|(i, v)| if (i / 32) % 2 == 0 { v * 3e-4 } else { *v })
            .collect();
        let (xc, xg) = p.up(&x, 2, cols);
        p.check(
            &format!("matmul {dtype} over tiny activation blocks"),
            &p.c.matmul(&wc, &xc),
            &p.g.matmul(&wg, &xg),
            1e-5,
        );
    }
}
gpu_test!(tiny_activations_keep_their_blocks);

fn matmul_embed_and_transpose_for_every_format<C: Compute>(g: GpuBackend<C>) {
    matmuls_on(&Pair::new(g), "whole", 70);
}
gpu_test!(matmul_embed_and_transpose_for_every_format);

fn weights_split_over_bindings_give_the_same_results<C: Compute>(g: GpuBackend<C>) {
    // 16 KiB bindings: 300-row weights are cut into 2 to 6 row ranges (activations stay whole).
    matmuls_on(&Pair::new(g), "split", 300);
}
gpu_test!(
    weights_split_over_bindings_give_the_same_results,
    Some(16 << 10)
);

fn norms_rope_and_elementwise_ops<C: Compute>(g: GpuBackend<C>) {
    let p = Pair::new(g);
    let (n, d) = (5, 96);
    let (xc, xg) = p.up(&noise(n * d, 1, 3.0), n, d);
    let w: Vec<f32> = noise(d, 2, 0.5).iter().map(|v| v + 1.0).collect();
    let (wc, wg) = p.up(&w, 1, d);
    let (dc, dg) = p.up(&noise(n * d, 3, 1.0), n, d);
    // Greedy decoding's argmax: the first maximum wins, also where a row repeats it.
    let mut logits = noise(4 * 1000, 4, 5.0);
    logits[2 * 1000 + 700] = 99.0;
    logits[2 * 1000 + 300] = 99.0;
    logits[3 * 1000 + 999] = 99.0;
    let (lc, lg) = p.up(&logits, 4, 1000);
    let want = p.c.argmax_rows(&lc);
    assert_eq!(p.g.argmax_rows(&lg), want, "argmax_rows");
    assert_eq!((want[2], want[3]), (300, 999));
    p.check(
        "rms_norm",
        &p.c.rms_norm(&xc, &wc, 1e-5),
        &p.g.rms_norm(&xg, &wg, 1e-5),
        1e-4,
    );
    p.check(
        "rms_norm_backward",
        &p.c.rms_norm_backward(&xc, &wc, 1e-5, &dc),
        &p.g.rms_norm_backward(&xg, &wg, 1e-5, &dg),
        1e-4,
    );
    for act in [Activation::Silu, Activation::GeluTanh] {
        p.check(
            &format!("{act:?} glu"),
            &p.c.glu(act, &xc, &dc),
            &p.g.glu(act, &xg, &dg),
            1e-4,
        );
        let (ec, eg) = p.up(&noise(n * d, 4, 1.0), n, d);
        let (gc, uc) = p.c.glu_backward(act, &xc, &dc, &ec);
        let (gg, ug) = p.g.glu_backward(act, &xg, &dg, &eg);
        p.check(&format!("{act:?} glu_backward gate"), &gc, &gg, 1e-4);
        p.check(&format!("{act:?} glu_backward up"), &uc, &ug, 1e-4);
    }
    let (mut sc, mut sg) = p.up(&noise(n * d, 6, 1.0), n, d);
    p.c.scale(&mut sc, 25.3);
    p.g.scale(&mut sg, 25.3);
    p.check("scale", &sc, &sg, 1e-4);
    // A per-head norm: rows of heads·head_dim read as one row per head.
    let (hc, hg) = p.up(&noise(n * d, 7, 1.0), n, d);
    let (head_wc, head_wg) = p.up(&noise(d / 4, 8, 1.0), 1, d / 4);
    let nc = p.c.reshape(
        p.c.rms_norm(&p.c.reshape(hc, n * 4, d / 4), &head_wc, 1e-6),
        n,
        d,
    );
    let ng = p.g.reshape(
        p.g.rms_norm(&p.g.reshape(hg, n * 4, d / 4), &head_wg, 1e-6),
        n,
        d,
    );
    assert_eq!(p.g.shape(&ng), (n, d));
    p.check("rms_norm per head through reshape", &nc, &ng, 1e-4);
    let (mut ac, mut ag) = p.up(&noise(n * d, 5, 1.0), n, d);
    p.c.add_assign(&mut ac, &xc);
    p.g.add_assign(&mut ag, &xg);
    p.check("add_assign", &ac, &ag, 1e-6);
    p.c.add_row(&mut ac, &wc);
    p.g.add_row(&mut ag, &wg);
    p.check("add_row", &ac, &ag, 1e-6);
    let cat_c = p.c.concat_rows(&[&xc, &dc, &ac]);
    let cat_g = p.g.concat_rows(&[&xg, &dg, &ag]);
    p.check("concat_rows", &cat_c, &cat_g, 0.0);
    p.check(
        "slice_rows",
        &p.c.slice_rows(&cat_c, 4, 12),
        &p.g.slice_rows(&cat_g, 4, 12),
        0.0,
    );
    p.check(
        "pad_rows",
        &p.c.pad_rows(&xc, 2, 9),
        &p.g.pad_rows(&xg, 2, 9),
        0.0,
    );

    for (layout, pos0) in [(RopeLayout::Interleaved, 0), (RopeLayout::Halves, 3000)] {
        let rope = Rope {
            dims: 32,
            base: 10000.0,
            layout,
        };
        let (heads, hd) = (3, 32);
        let (mut rc, mut rg) = p.up(&noise(n * heads * hd, 6, 1.0), n, heads * hd);
        p.c.rope(&mut rc, heads, hd, pos0, &rope);
        p.g.rope(&mut rg, heads, hd, pos0, &rope);
        p.check(&format!("rope {layout:?} pos0={pos0}"), &rc, &rg, 1e-4);
        p.c.rope_backward(&mut rc, heads, hd, pos0, &rope);
        p.g.rope_backward(&mut rg, heads, hd, pos0, &rope);
        p.check(
            &format!("rope_backward {layout:?} pos0={pos0}"),
            &rc,
            &rg,
            1e-4,
        );
    }

    let classes = 300;
    let (lc, lg) = p.up(&noise(n * classes, 8, 4.0), n, classes);
    let targets = [0u32, 299, 17, 17, 150];
    let (loss_c, grad_c) = p.c.cross_entropy(&lc, &targets);
    let (loss_g, grad_g) = p.g.cross_entropy(&lg, &targets);
    close("cross_entropy losses", &loss_g, &loss_c, 1e-4);
    p.check("cross_entropy gradient", &grad_c, &grad_g, 1e-4);
}
gpu_test!(norms_rope_and_elementwise_ops);

fn attention_with_cache_and_its_gradient<C: Compute>(g: GpuBackend<C>) {
    let p = Pair::new(g);
    // Grouped-query as in the default model: 9 query heads over 3 kv heads of 64 dims; 70
    // cached positions cross a 64-key tile. Then Gemma 3's local layers: a sliding window
    // (here 40 positions, so the tiles start mid-cache) over 4 heads of 256 dims sharing one.
    attention_on(
        &p,
        AttentionShape {
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
            window: None,
        },
    );
    attention_on(
        &p,
        AttentionShape {
            n_heads: 4,
            n_kv_heads: 1,
            head_dim: 256,
            window: Some(40),
        },
    );
}
gpu_test!(attention_with_cache_and_its_gradient);

fn attention_on<C: Compute>(p: &Pair<C>, shape: AttentionShape) {
    let (qd, kd) = (
        shape.n_heads * shape.head_dim,
        shape.n_kv_heads * shape.head_dim,
    );
    println!("attention with {shape:?}");
    let mut cc = p.c.new_kv_cache(2, kd, 4096);
    let mut cg = p.g.new_kv_cache(2, kd, 4096);
    for (step, n) in [(0u64, 70usize), (1, 1), (2, 3)] {
        let (qc, qg) = p.up(&noise(n * qd, 20 + step, 1.0), n, qd);
        let (kc, kg) = p.up(&noise(n * kd, 30 + step, 1.0), n, kd);
        let (vc, vg) = p.up(&noise(n * kd, 40 + step, 1.0), n, kd);
        for layer in 0..2 {
            let oc = p.c.attention(&qc, &kc, &vc, &mut cc, layer, shape);
            let og = p.g.attention(&qg, &kg, &vg, &mut cg, layer, shape);
            p.check(
                &format!("attention step {step} layer {layer}"),
                &oc,
                &og,
                1e-4,
            );
        }
        assert_eq!(p.g.kv_len(&cg), p.c.kv_len(&cc));
    }
    p.c.kv_truncate(&mut cc, 50);
    p.g.kv_truncate(&mut cg, 50);
    assert_eq!(p.g.kv_len(&cg), 50);
    let (qc, qg) = p.up(&noise(2 * qd, 50, 1.0), 2, qd);
    let (kc, kg) = p.up(&noise(2 * kd, 51, 1.0), 2, kd);
    let (vc, vg) = p.up(&noise(2 * kd, 52, 1.0), 2, kd);
    let oc = p.c.attention(&qc, &kc, &vc, &mut cc, 0, shape);
    let og = p.g.attention(&qg, &kg, &vg, &mut cg, 0, shape);
    p.check("attention after truncate", &oc, &og, 1e-4);
    // Keys and values of more positions than queries (a frozen prefix's k and v appended with
    // the new ones): the queries are the last positions.
    let (qc, qg) = p.up(&noise(2 * qd, 53, 1.0), 2, qd);
    let (kc, kg) = p.up(&noise(5 * kd, 54, 1.0), 5, kd);
    let (vc, vg) = p.up(&noise(5 * kd, 55, 1.0), 5, kd);
    let oc = p.c.attention(&qc, &kc, &vc, &mut cc, 1, shape);
    let og = p.g.attention(&qg, &kg, &vg, &mut cg, 1, shape);
    p.check("attention with more keys than queries", &oc, &og, 1e-4);
    assert_eq!(p.g.kv_len(&cg), p.c.kv_len(&cc));

    // A cache that must grow past its first allocation (512 positions).
    let mut big_c = p.c.new_kv_cache(1, kd, 4096);
    let mut big_g = p.g.new_kv_cache(1, kd, 4096);
    for chunk in 0..3u64 {
        let n = 300;
        let (qc, qg) = p.up(&noise(n * qd, 60 + chunk, 1.0), n, qd);
        let (kc, kg) = p.up(&noise(n * kd, 70 + chunk, 1.0), n, kd);
        let (vc, vg) = p.up(&noise(n * kd, 80 + chunk, 1.0), n, kd);
        let oc = p.c.attention(&qc, &kc, &vc, &mut big_c, 0, shape);
        let og = p.g.attention(&qg, &kg, &vg, &mut big_g, 0, shape);
        p.check(
            &format!("attention growing cache, chunk {chunk}"),
            &oc,
            &og,
            1e-4,
        );
    }

    let n = 37;
    let (qc, qg) = p.up(&noise(n * qd, 90, 1.0), n, qd);
    let (kc, kg) = p.up(&noise(n * kd, 91, 1.0), n, kd);
    let (vc, vg) = p.up(&noise(n * kd, 92, 1.0), n, kd);
    let (dc, dg) = p.up(&noise(n * qd, 93, 1.0), n, qd);
    let (a, b, c) = p.c.attention_backward(&qc, &kc, &vc, &dc, shape);
    let (x, y, z) = p.g.attention_backward(&qg, &kg, &vg, &dg, shape);
    p.check("attention_backward dq", &a, &x, 1e-4);
    p.check("attention_backward dk", &b, &y, 1e-4);
    p.check("attention_backward dv", &c, &z, 1e-4);
}

fn memory_ops_on<C: Compute>(
    p: &Pair<C>,
    label: &str,
    shape: ProductKeyShape,
    slots: usize,
    dim: usize,
) {
    let n = 5;
    let (qc, qg) = p.up(
        &noise(n * shape.query_cols(), 100, 1.0),
        n,
        shape.query_cols(),
    );
    let key_cols = shape.k_dim / 2;
    let (kc, kg) = p.up(
        &noise(shape.key_rows() * key_cols, 101, 1.0),
        shape.key_rows(),
        key_cols,
    );
    let (sc, wc) = p.c.product_key_topk(&qc, &kc, shape);
    let (sg, wg) = p.g.product_key_topk(&qg, &kg, shape);
    assert_eq!(
        p.g.download_slots(&sg),
        p.c.download_slots(&sc),
        "{label} product_key_topk: slot ids"
    );
    p.check(&format!("{label} product_key_topk weights"), &wc, &wg, 1e-4);

    let (vc, vg) = p.up(&noise(slots * dim, 102, 1.0), slots, dim);
    p.check(
        &format!("{label} gather_values"),
        &p.c.gather_values(&vc, &sc, &wc),
        &p.g.gather_values(&vg, &sg, &wg),
        1e-4,
    );
    let (dc, dg) = p.up(&noise(n * dim, 103, 1.0), n, dim);
    // Selected rows: some hit by the lookup, one untouched, in no particular order.
    let hit = p.c.download_slots(&sc);
    let mut rows: Vec<u32> = hit.iter().step_by(3).copied().collect();
    rows.sort_unstable();
    rows.dedup();
    rows.reverse();
    let untouched = (0..slots as u32).find(|r| !hit.contains(r)).unwrap();
    rows.push(untouched);
    let (gc, gg) = (
        p.c.value_grads(&sc, &wc, &dc, &rows),
        p.g.value_grads(&sg, &wg, &dg, &rows),
    );
    p.check(&format!("{label} value_grads"), &gc, &gg, 1e-5);
    p.check(
        &format!("{label} read_rows"),
        &p.c.read_rows(&vc, &rows),
        &p.g.read_rows(&vg, &rows),
        0.0,
    );
    let (mut vc, mut vg) = (vc, vg);
    p.c.sgd_rows(&mut vc, &rows, &gc, 0.5);
    p.g.sgd_rows(&mut vg, &rows, &gg, 0.5);
    p.check(&format!("{label} sgd_rows"), &vc, &vg, 1e-5);
    let (src_c, src_g) = p.up(&noise(rows.len() * dim, 104, 1.0), rows.len(), dim);
    p.c.write_rows(&mut vc, &rows, &src_c);
    p.g.write_rows(&mut vg, &rows, &src_g);
    p.check(&format!("{label} write_rows"), &vc, &vg, 0.0);
}

fn product_keys_values_and_sparse_updates<C: Compute>(g: GpuBackend<C>) {
    let p = Pair::new(g);
    // The default memory's lookup shape (256 keys per half, top-32, 4 heads) on a narrow table.
    let default_shape = ProductKeyShape {
        heads: 4,
        n_keys: 256,
        top_k: 32,
        k_dim: 64,
    };
    memory_ops_on(&p, "default shape", default_shape, 256 * 256, 16);
    let small = ProductKeyShape {
        heads: 2,
        n_keys: 12,
        top_k: 5,
        k_dim: 8,
    };
    memory_ops_on(&p, "small", small, 144, 40);
}
gpu_test!(product_keys_values_and_sparse_updates);

fn value_tables_split_over_bindings<C: Compute>(g: GpuBackend<C>) {
    // 1 KiB bindings: a 144 × 8 table lives in 5 parts of 32 rows; every row op meets the seams.
    let p = Pair::new(g);
    let small = ProductKeyShape {
        heads: 2,
        n_keys: 12,
        top_k: 5,
        k_dim: 8,
    };
    memory_ops_on(&p, "split", small, 144, 8);
}
gpu_test!(value_tables_split_over_bindings, Some(1024));

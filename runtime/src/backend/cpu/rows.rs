//! Per-row ops and their gradients: RMSNorm, RoPE, the SiLU gate, residual adds and the
//! cross-entropy of the logits.

use rayon::prelude::*;

use super::*;
use crate::backend::{Rope, RopeLayout};

/// RoPE rotation by `direction`·θ (1 forward, −1 for the gradient, which is the inverse).
pub(super) fn rotate(
    x: &mut CpuTensor,
    n_heads: usize,
    head_dim: usize,
    pos0: usize,
    rope: &Rope,
    direction: f32,
) {
    let half = rope.dims / 2;
    // Angles as pos·s^i with s = base^(−2/dims), built by repeated f32 multiplication
    // the way ggml builds its RoPE cache, so engram rotates by the same rounded angles.
    let step = rope.base.powf(-2.0 / rope.dims as f32);
    let mut cs = vec![(0f32, 0f32); half];
    for (t, row) in x.data.chunks_exact_mut(x.cols).enumerate() {
        let mut theta = (pos0 + t) as f32;
        for c in cs.iter_mut() {
            let (s, co) = theta.sin_cos();
            *c = (co, direction * s);
            theta *= step;
        }
        for head in row.chunks_exact_mut(head_dim).take(n_heads) {
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = match rope.layout {
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                    RopeLayout::Halves => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }
}

pub(super) fn rms_norm(
    backend: &CpuBackend,
    x: &CpuTensor,
    weight: &CpuTensor,
    eps: f32,
) -> CpuTensor {
    let mut data = x.data.clone();
    backend.for_rows(&mut data, x.cols, |_, row| {
        // Sum of squares in f64, and x·scale before ·weight: ggml's order, so rounding
        // matches llama.cpp where activations are large.
        let sum: f64 = row.iter().map(|&v| (v * v) as f64).sum();
        let mean = (sum / x.cols as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (v, w) in row.iter_mut().zip(&weight.data) {
            *v = (*v * scale) * w;
        }
    });
    CpuTensor {
        data,
        rows: x.rows,
        cols: x.cols,
    }
}

pub(super) fn rope(
    _backend: &CpuBackend,
    x: &mut CpuTensor,
    n_heads: usize,
    head_dim: usize,
    pos0: usize,
    rope: &Rope,
) {
    rotate(x, n_heads, head_dim, pos0, rope, 1.0);
}

/// √(2/π), GELU's tanh approximation constant.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic term's coefficient in GELU's tanh approximation.
const GELU_CUBIC: f32 = 0.044_715;

/// act(g) and d act / d g.
#[inline]
fn activation(act: Activation, g: f32) -> (f32, f32) {
    match act {
        Activation::Silu => {
            let sig = 1.0 / (1.0 + (-g).exp());
            (g / (1.0 + (-g).exp()), sig * (1.0 + g * (1.0 - sig)))
        }
        Activation::GeluTanh => {
            let inner = SQRT_2_OVER_PI * (g + GELU_CUBIC * g * g * g);
            let t = inner.tanh();
            let d_inner = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * g * g);
            (0.5 * g * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * d_inner)
        }
    }
}

pub(super) fn glu(backend: &CpuBackend, act: Activation, gate: &CpuTensor, up: &CpuTensor) -> CpuTensor {
    let c = gate.cols;
    let mut data = buffers::zeroed(gate.data.len());
    backend.for_rows(&mut data, c, |r, out| {
        let (g, u) = (&gate.data[r * c..(r + 1) * c], &up.data[r * c..(r + 1) * c]);
        for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
            *o = activation(act, g).0 * u;
        }
    });
    CpuTensor {
        data: data.into(),
        rows: gate.rows,
        cols: gate.cols,
    }
}

pub(super) fn add_assign(_backend: &CpuBackend, x: &mut CpuTensor, y: &CpuTensor) {
    for (a, b) in x.data.iter_mut().zip(&y.data) {
        *a += b;
    }
}

pub(super) fn add_row(_backend: &CpuBackend, x: &mut CpuTensor, row: &CpuTensor) {
    assert_eq!(row.data.len(), x.cols, "add_row: width");
    for r in x.data.chunks_exact_mut(x.cols) {
        for (a, b) in r.iter_mut().zip(&row.data) {
            *a += b;
        }
    }
}

pub(super) fn rms_norm_backward(
    backend: &CpuBackend,
    x: &CpuTensor,
    weight: &CpuTensor,
    eps: f32,
    dy: &CpuTensor,
) -> CpuTensor {
    let d = x.cols;
    let mut data = buffers::zeroed(x.data.len());
    backend.for_rows(&mut data, d, |r, out| {
        let (xr, gr) = (&x.data[r * d..(r + 1) * d], &dy.data[r * d..(r + 1) * d]);
        let sum: f64 = xr.iter().map(|&v| (v * v) as f64).sum();
        let s = 1.0 / ((sum / d as f64) + eps as f64).sqrt();
        // y = x·s·w  ⇒  dx = s·(w⊙dy) − x·s³/d·Σ(w⊙dy⊙x)
        let dot: f64 = gr
            .iter()
            .zip(&weight.data)
            .zip(xr)
            .map(|((&g, &w), &v)| (g * w) as f64 * v as f64)
            .sum();
        let k = s * s * s * dot / d as f64;
        for (((o, &g), &w), &v) in out.iter_mut().zip(gr).zip(&weight.data).zip(xr) {
            *o = (s * (g * w) as f64 - k * v as f64) as f32;
        }
    });
    CpuTensor {
        data: data.into(),
        rows: x.rows,
        cols: d,
    }
}

pub(super) fn rope_backward(
    _backend: &CpuBackend,
    dy: &mut CpuTensor,
    n_heads: usize,
    head_dim: usize,
    pos0: usize,
    rope: &Rope,
) {
    rotate(dy, n_heads, head_dim, pos0, rope, -1.0);
}

pub(super) fn glu_backward(
    backend: &CpuBackend,
    act: Activation,
    gate: &CpuTensor,
    up: &CpuTensor,
    dy: &CpuTensor,
) -> (CpuTensor, CpuTensor) {
    let (n, c) = (gate.data.len(), gate.cols);
    // dg and du side by side in one row of 2c, so each row is one task.
    let mut both = vec![0f32; 2 * n];
    backend.for_rows(&mut both, 2 * c, |r, out| {
        let (dg, du) = out.split_at_mut(c);
        let at = r * c..(r + 1) * c;
        let (g, u, d) = (&gate.data[at.clone()], &up.data[at.clone()], &dy.data[at]);
        for i in 0..c {
            let (a, da) = activation(act, g[i]);
            dg[i] = d[i] * u[i] * da;
            du[i] = d[i] * a;
        }
    });
    let (mut dg, mut du) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for row in both.chunks_exact(2 * c.max(1)) {
        dg.extend_from_slice(&row[..c]);
        du.extend_from_slice(&row[c..]);
    }
    let t = |data: Vec<f32>| CpuTensor {
        data: data.into(),
        rows: gate.rows,
        cols: gate.cols,
    };
    (t(dg), t(du))
}

pub(super) fn cross_entropy(
    backend: &CpuBackend,
    logits: &CpuTensor,
    targets: &[u32],
) -> (Vec<f32>, CpuTensor) {
    assert_eq!(
        targets.len(),
        logits.rows,
        "cross_entropy: one target per row"
    );
    let c = logits.cols;
    let mut grad = logits.data.clone();
    let mut losses = vec![0f32; logits.rows];
    backend.pool.install(|| {
        grad.par_chunks_mut(c)
            .zip(losses.par_iter_mut())
            .zip(targets.par_iter())
            .for_each(|((row, loss), &target)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let picked = row[target as usize];
                // One f32 exp per logit (the vocabulary is 49,152 wide and this runs at
                // every step); the sum is kept in f64 so the loss does not drift.
                let mut sum = 0f64;
                for l in row.iter_mut() {
                    *l = (*l - max).exp();
                    sum += f64::from(*l);
                }
                *loss = (sum.ln() + f64::from(max) - f64::from(picked)) as f32;
                let inv = (1.0 / sum) as f32;
                for l in row.iter_mut() {
                    *l *= inv;
                }
                row[target as usize] -= 1.0;
            });
    });
    (
        losses,
        CpuTensor {
            data: grad,
            rows: logits.rows,
            cols: c,
        },
    )
}

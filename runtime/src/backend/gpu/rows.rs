//! Per-row ops and their gradients on the device: RMSNorm, RoPE, the SiLU gate, residual adds,
//! argmax and cross-entropy (`rows.wgsl`, `elementwise.wgsl`).

use super::dispatch::*;
use super::params::*;
use super::*;
use crate::backend::Rope;

pub(super) fn argmax_rows<C: Compute>(backend: &GpuBackend<C>, t: &GpuTensor<C>) -> Vec<u32> {
    if t.rows == 0 || t.cols == 0 {
        return vec![0; t.rows];
    }
    let out = backend.storage(t.rows * 4);
    let p = RowsParams {
        rows: u(t.rows),
        cols: u(t.cols),
        ..Default::default()
    };
    backend.dispatch(
        ("argmax_rows", 0),
        &p,
        &[(1, t.buf()), (7, &out)],
        grid(t.rows),
    );
    bytemuck::pod_collect_to_vec(&backend.read_back(&out, t.rows * 4))
}

pub(super) fn rms_norm<C: Compute>(
    backend: &GpuBackend<C>,
    x: &GpuTensor<C>,
    weight: &GpuTensor<C>,
    eps: f32,
) -> GpuTensor<C> {
    let out = backend.storage(x.rows * x.cols * 4);
    let p = RowsParams {
        rows: u(x.rows),
        cols: u(x.cols),
        eps,
        ..Default::default()
    };
    backend.dispatch(
        ("rms_norm", 0),
        &p,
        &[(1, x.buf()), (2, weight.buf()), (4, &out)],
        grid(x.rows),
    );
    backend.tensor(out, x.rows, x.cols)
}

pub(super) fn rope<C: Compute>(
    backend: &GpuBackend<C>,
    x: &mut GpuTensor<C>,
    n_heads: usize,
    head_dim: usize,
    pos0: usize,
    rope: &Rope,
) {
    backend.rope_op(x, n_heads, head_dim, pos0, rope, 1.0);
}

/// The shader entry of a gated activation (forward or backward).
fn glu_entry(act: Activation, backward: bool) -> &'static str {
    match (act, backward) {
        (Activation::Silu, false) => "silu_mul",
        (Activation::Silu, true) => "silu_mul_backward",
        (Activation::GeluTanh, false) => "gelu_mul",
        (Activation::GeluTanh, true) => "gelu_mul_backward",
    }
}

pub(super) fn scale<C: Compute>(backend: &GpuBackend<C>, x: &mut GpuTensor<C>, factor: f32) {
    let n = x.rows * x.cols;
    backend.dispatch(
        ("scale", 0),
        &ElementwiseParams {
            n: u(n),
            cols: u(x.cols),
            factor,
            ..Default::default()
        },
        &[(4, x.buf())],
        grid(n.div_ceil(256)),
    );
}

pub(super) fn glu<C: Compute>(
    backend: &GpuBackend<C>,
    act: Activation,
    gate: &GpuTensor<C>,
    up: &GpuTensor<C>,
) -> GpuTensor<C> {
    let n = gate.rows * gate.cols;
    let out = backend.storage(n * 4);
    backend.elementwise(
        glu_entry(act, false),
        n,
        gate.cols,
        &[(1, gate.buf()), (2, up.buf()), (4, &out)],
    );
    backend.tensor(out, gate.rows, gate.cols)
}

pub(super) fn add_assign<C: Compute>(backend: &GpuBackend<C>, x: &mut GpuTensor<C>, y: &GpuTensor<C>) {
    let n = x.rows * x.cols;
    backend.elementwise("add_assign", n, x.cols, &[(1, y.buf()), (4, x.buf())]);
}

pub(super) fn add_row<C: Compute>(backend: &GpuBackend<C>, x: &mut GpuTensor<C>, row: &GpuTensor<C>) {
    assert_eq!(row.rows * row.cols, x.cols, "add_row: width");
    let n = x.rows * x.cols;
    backend.elementwise("add_row", n, x.cols, &[(1, row.buf()), (4, x.buf())]);
}

pub(super) fn rms_norm_backward<C: Compute>(
    backend: &GpuBackend<C>,
    x: &GpuTensor<C>,
    weight: &GpuTensor<C>,
    eps: f32,
    dy: &GpuTensor<C>,
) -> GpuTensor<C> {
    let out = backend.storage(x.rows * x.cols * 4);
    let p = RowsParams {
        rows: u(x.rows),
        cols: u(x.cols),
        eps,
        ..Default::default()
    };
    backend.dispatch(
        ("rms_norm_backward", 0),
        &p,
        &[(1, x.buf()), (2, weight.buf()), (3, dy.buf()), (4, &out)],
        grid(x.rows),
    );
    backend.tensor(out, x.rows, x.cols)
}

pub(super) fn rope_backward<C: Compute>(
    backend: &GpuBackend<C>,
    dy: &mut GpuTensor<C>,
    n_heads: usize,
    head_dim: usize,
    pos0: usize,
    rope: &Rope,
) {
    backend.rope_op(dy, n_heads, head_dim, pos0, rope, -1.0);
}

pub(super) fn glu_backward<C: Compute>(
    backend: &GpuBackend<C>,
    act: Activation,
    gate: &GpuTensor<C>,
    up: &GpuTensor<C>,
    dy: &GpuTensor<C>,
) -> (GpuTensor<C>, GpuTensor<C>) {
    let n = gate.rows * gate.cols;
    let (dg, du) = (backend.storage(n * 4), backend.storage(n * 4));
    backend.elementwise(
        glu_entry(act, true),
        n,
        gate.cols,
        &[
            (1, gate.buf()),
            (2, up.buf()),
            (3, dy.buf()),
            (4, &dg),
            (5, &du),
        ],
    );
    (
        backend.tensor(dg, gate.rows, gate.cols),
        backend.tensor(du, gate.rows, gate.cols),
    )
}

pub(super) fn cross_entropy<C: Compute>(
    backend: &GpuBackend<C>,
    logits: &GpuTensor<C>,
    targets: &[u32],
) -> (Vec<f32>, GpuTensor<C>) {
    assert_eq!(
        targets.len(),
        logits.rows,
        "cross_entropy: one target per row"
    );
    assert!(
        targets.iter().all(|&t| (t as usize) < logits.cols),
        "cross_entropy: target outside the {} classes",
        logits.cols
    );
    let grad = backend.storage(logits.rows * logits.cols * 4);
    backend.copy(logits.buf(), 0, &grad, 0, logits.rows * logits.cols * 4);
    let ids = backend.u32s(targets);
    let losses = backend.storage(logits.rows * 4);
    let p = RowsParams {
        rows: u(logits.rows),
        cols: u(logits.cols),
        ..Default::default()
    };
    backend.dispatch(
        ("cross_entropy", 0),
        &p,
        &[(4, &grad), (5, &ids), (6, &losses)],
        grid(logits.rows),
    );
    let bytes = backend.read_back(&losses, logits.rows * 4);
    (
        bytemuck::pod_collect_to_vec(&bytes),
        backend.tensor(grad, logits.rows, logits.cols),
    )
}

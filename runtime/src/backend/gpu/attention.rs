//! Attention over the KV cache on the device, its backward, and the cache itself
//! (`attention.wgsl`).

use super::dispatch::*;
use super::params::*;
use super::*;
use crate::backend::AttentionShape;

pub(super) fn attention<C: Compute>(
    backend: &GpuBackend<C>,
    q: &GpuTensor<C>,
    k: &GpuTensor<C>,
    v: &GpuTensor<C>,
    cache: &mut GpuKvCache<C>,
    layer: usize,
    shape: AttentionShape,
) -> GpuTensor<C> {
    assert!(
        shape.head_dim <= MAX_HEAD_DIM,
        "wgpu attention: head_dim over {MAX_HEAD_DIM}"
    );
    let n = q.rows;
    assert!(
        k.rows >= n && v.rows == k.rows,
        "wgpu attention: k and v need the same rows, at least as many as q"
    );
    let (start, added) = (cache.len[layer], k.rows);
    backend.grow_cache(cache, start + added);
    let kv = cache.kv_dim;
    backend.copy(k.buf(), 0, &cache.k[layer], start * kv * 4, added * kv * 4);
    backend.copy(v.buf(), 0, &cache.v[layer], start * kv * 4, added * kv * 4);
    cache.len[layer] = start + added;
    // The queries are the last n of the positions now cached.
    let pos0 = start + added - n;
    let out = backend.storage(n * q.cols * 4);
    let p = AttentionParams {
        n: u(n),
        pos0: u(pos0),
        q_cols: u(q.cols),
        kv_cols: u(kv),
        n_heads: u(shape.n_heads),
        group: u(shape.n_heads / shape.n_kv_heads),
        head_dim: u(shape.head_dim),
        scale: 1.0 / (shape.head_dim as f32).sqrt(),
        window: u(shape.window.unwrap_or(0)),
        ..Default::default()
    };
    backend.dispatch(
        ("attention", 0),
        &p,
        &[
            (1, q.buf()),
            (2, &cache.k[layer]),
            (3, &cache.v[layer]),
            (4, &out),
        ],
        grid(n * shape.n_heads),
    );
    backend.tensor(out, n, q.cols)
}

pub(super) fn attention_backward<C: Compute>(
    backend: &GpuBackend<C>,
    q: &GpuTensor<C>,
    k: &GpuTensor<C>,
    v: &GpuTensor<C>,
    dout: &GpuTensor<C>,
    shape: AttentionShape,
) -> (GpuTensor<C>, GpuTensor<C>, GpuTensor<C>) {
    let n = q.rows;
    let scratch = shape.n_heads * n * n * 4;
    assert!(
        scratch as u64 <= backend.max_binding,
        "attention_backward: {n} tokens need {scratch} bytes of scratch, over this device's binding limit"
    );
    let p = AttentionParams {
        n: u(n),
        q_cols: u(q.cols),
        kv_cols: u(k.cols),
        n_heads: u(shape.n_heads),
        group: u(shape.n_heads / shape.n_kv_heads),
        head_dim: u(shape.head_dim),
        scale: 1.0 / (shape.head_dim as f32).sqrt(),
        window: u(shape.window.unwrap_or(0)),
        ..Default::default()
    };
    let (probs, dscore) = (backend.storage(scratch), backend.storage(scratch));
    let dq = backend.storage(n * q.cols * 4);
    let (dk, dv) = (
        backend.storage(n * k.cols * 4),
        backend.storage(n * k.cols * 4),
    );
    backend.dispatch(
        ("attention_backward_rows", 0),
        &p,
        &[
            (1, q.buf()),
            (2, k.buf()),
            (3, v.buf()),
            (4, &dq),
            (5, dout.buf()),
            (6, &probs),
            (7, &dscore),
        ],
        grid(n * shape.n_heads),
    );
    backend.dispatch(
        ("attention_backward_keys", 0),
        &p,
        &[
            (1, q.buf()),
            (5, dout.buf()),
            (6, &probs),
            (7, &dscore),
            (8, &dk),
            (9, &dv),
        ],
        grid(n * shape.n_kv_heads),
    );
    (
        backend.tensor(dq, n, q.cols),
        backend.tensor(dk, n, k.cols),
        backend.tensor(dv, n, k.cols),
    )
}

pub(super) fn new_kv_cache<C: Compute>(
    backend: &GpuBackend<C>,
    n_layers: usize,
    kv_dim: usize,
    capacity: usize,
) -> GpuKvCache<C> {
    let allocated = capacity.clamp(1, 512);
    let bytes = allocated * kv_dim * 4;
    GpuKvCache {
        k: (0..n_layers).map(|_| backend.storage(bytes)).collect(),
        v: (0..n_layers).map(|_| backend.storage(bytes)).collect(),
        len: vec![0; n_layers],
        allocated,
        capacity,
        kv_dim,
    }
}

pub(super) fn kv_len<C: Compute>(_backend: &GpuBackend<C>, cache: &GpuKvCache<C>) -> usize {
    cache.len.iter().copied().min().unwrap_or(0)
}

pub(super) fn kv_truncate<C: Compute>(_backend: &GpuBackend<C>, cache: &mut GpuKvCache<C>, len: usize) {
    for l in cache.len.iter_mut() {
        *l = (*l).min(len);
    }
}

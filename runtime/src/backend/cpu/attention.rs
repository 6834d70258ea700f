//! Attention over the KV cache, its backward, and the cache itself.

use rayon::prelude::*;

use super::memory::axpy;
use super::*;
use crate::backend::AttentionShape;
use crate::quant::dot_f32;

pub(super) fn attention(
    backend: &CpuBackend,
    q: &CpuTensor,
    k: &CpuTensor,
    v: &CpuTensor,
    cache: &mut CpuKvCache,
    layer: usize,
    shape: AttentionShape,
) -> CpuTensor {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim,
        ..
    } = shape;
    let kv_dim = cache.kv_dim;
    cache.k[layer].extend_from_slice(&k.data);
    cache.v[layer].extend_from_slice(&v.data);
    let (keys, values) = (&cache.k[layer], &cache.v[layer]);
    let total = keys.len() / kv_dim;
    let n = q.rows;
    let pos0 = total - n;
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    // One task per (query head, block of queries): each key and value row read from the cache
    // serves the whole block from the L1 cache, instead of being fetched again for every query
    // (a 512-token prompt streams each head's 128 KiB of keys once per block, not per token).
    let blocks = n.div_ceil(QUERY_BLOCK);
    let outs: Vec<Vec<f32>> = backend.pool.install(|| {
        (0..n_heads * blocks)
            .into_par_iter()
            .map_init(Vec::new, |scores: &mut Vec<f32>, task| {
                let (h, b) = (task % n_heads, task / n_heads);
                let kvh = h / group;
                let queries = b * QUERY_BLOCK..((b + 1) * QUERY_BLOCK).min(n);
                let visible = |t: usize| shape.first_visible(pos0 + t)..pos0 + t + 1;
                let span = visible(queries.start).start..pos0 + queries.end;
                let width = span.len();
                scores.clear();
                scores.resize(queries.len() * width, f32::NEG_INFINITY);
                let seen: Vec<_> = queries.clone().map(visible).collect();
                for j in span.clone() {
                    let kj = &keys[j * kv_dim + kvh * head_dim..][..head_dim];
                    for (r, (t, range)) in queries.clone().zip(&seen).enumerate() {
                        if range.contains(&j) {
                            let qt = &q.data[t * q.cols + h * head_dim..][..head_dim];
                            scores[r * width + j - span.start] = dot_f32(qt, kj) * scale;
                        }
                    }
                }
                for row in scores.chunks_exact_mut(width) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for s in row.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|s| *s *= inv);
                }
                let mut out = vec![0f32; queries.len() * head_dim];
                for j in span.clone() {
                    let vj = &values[j * kv_dim + kvh * head_dim..][..head_dim];
                    for (r, o) in out.chunks_exact_mut(head_dim).enumerate() {
                        let p = scores[r * width + j - span.start];
                        if p != 0.0 {
                            axpy(o, p, vj);
                        }
                    }
                }
                out
            })
            .collect()
    });
    let cols = n_heads * head_dim;
    let mut data = buffers::zeroed(n * cols);
    for (task, out) in outs.iter().enumerate() {
        let (h, b) = (task % n_heads, task / n_heads);
        for (r, o) in out.chunks_exact(head_dim).enumerate() {
            let t = b * QUERY_BLOCK + r;
            data[t * cols + h * head_dim..][..head_dim].copy_from_slice(o);
        }
    }
    CpuTensor {
        data,
        rows: n,
        cols,
    }
}

/// Queries of one head that share each pass over the cached keys and values.
const QUERY_BLOCK: usize = 16;

pub(super) fn attention_backward(
    backend: &CpuBackend,
    q: &CpuTensor,
    k: &CpuTensor,
    v: &CpuTensor,
    dout: &CpuTensor,
    shape: AttentionShape,
) -> (CpuTensor, CpuTensor, CpuTensor) {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim: hd,
        ..
    } = shape;
    let n = q.rows;
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let (qc, kc) = (q.cols, k.cols);
    // One task per query head (more tasks than the few kv heads, so both threads stay
    // busy): it owns that head's dq and a partial dk, dv of its kv head, summed below in
    // a fixed order so the result does not depend on scheduling.
    let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = backend.pool.install(|| {
        (0..n_heads)
            .into_par_iter()
            .map(|h| {
                let kvh = h / group;
                let mut dq = vec![0f32; n * hd];
                let mut dk = vec![0f32; n * hd];
                let mut dv = vec![0f32; n * hd];
                let kj = |j: usize| &k.data[j * kc + kvh * hd..][..hd];
                let vj = |j: usize| &v.data[j * kc + kvh * hd..][..hd];
                let mut p = vec![0f32; n];
                let mut dp = vec![0f32; n];
                for t in 0..n {
                    let qt = &q.data[t * qc + h * hd..][..hd];
                    let dot = &dout.data[t * qc + h * hd..][..hd];
                    // A position whose output gradient is zero (a frozen prefix, or one
                    // past the last scored position) adds exactly zero everywhere.
                    if dot.iter().all(|&g| g == 0.0) {
                        continue;
                    }
                    let first = shape.first_visible(t);
                    let mut max = f32::NEG_INFINITY;
                    for (j, pj) in (first..).zip(&mut p[first..=t]) {
                        *pj = dot_f32(qt, kj(j)) * scale;
                        max = max.max(*pj);
                    }
                    let mut sum = 0f32;
                    for pj in &mut p[first..=t] {
                        *pj = (*pj - max).exp();
                        sum += *pj;
                    }
                    let mut weighted = 0f32;
                    for (j, (pj, dpj)) in (first..).zip(p[first..=t].iter_mut().zip(&mut dp[first..=t])) {
                        *pj /= sum;
                        *dpj = dot_f32(dot, vj(j));
                        weighted += *pj * *dpj;
                    }
                    let dqt = &mut dq[t * hd..][..hd];
                    for j in first..=t {
                        let ds = p[j] * (dp[j] - weighted) * scale;
                        axpy(dqt, ds, kj(j));
                        axpy(&mut dk[j * hd..(j + 1) * hd], ds, qt);
                        axpy(&mut dv[j * hd..(j + 1) * hd], p[j], dot);
                    }
                }
                (dq, dk, dv)
            })
            .collect()
    });
    let mut dq = vec![0f32; n * qc];
    let mut dk = vec![0f32; n * kc];
    let mut dv = vec![0f32; n * kc];
    for (h, (pq, pk, pv)) in parts.into_iter().enumerate() {
        let kvh = h / group;
        for t in 0..n {
            dq[t * qc + h * hd..][..hd].copy_from_slice(&pq[t * hd..][..hd]);
            let (dkt, dvt) = (
                &mut dk[t * kc + kvh * hd..][..hd],
                &mut dv[t * kc + kvh * hd..][..hd],
            );
            dkt.iter_mut()
                .zip(&pk[t * hd..][..hd])
                .for_each(|(a, b)| *a += b);
            dvt.iter_mut()
                .zip(&pv[t * hd..][..hd])
                .for_each(|(a, b)| *a += b);
        }
    }
    let t = |data, cols| CpuTensor {
        data,
        rows: n,
        cols,
    };
    (t(dq, qc), t(dk, kc), t(dv, kc))
}

pub(super) fn new_kv_cache(
    _backend: &CpuBackend,
    n_layers: usize,
    kv_dim: usize,
    capacity: usize,
) -> CpuKvCache {
    let reserve = capacity.min(512) * kv_dim;
    CpuKvCache {
        k: (0..n_layers).map(|_| Vec::with_capacity(reserve)).collect(),
        v: (0..n_layers).map(|_| Vec::with_capacity(reserve)).collect(),
        kv_dim,
    }
}

pub(super) fn kv_len(_backend: &CpuBackend, cache: &CpuKvCache) -> usize {
    cache.k.iter().map(Vec::len).min().unwrap_or(0) / cache.kv_dim
}

pub(super) fn kv_truncate(_backend: &CpuBackend, cache: &mut CpuKvCache, len: usize) {
    for buf in cache.k.iter_mut().chain(cache.v.iter_mut()) {
        buf.truncate(len * cache.kv_dim);
    }
}

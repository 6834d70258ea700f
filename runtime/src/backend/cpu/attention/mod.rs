//! Attention over the KV cache, its backward, and the cache itself.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod avx2;

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
    #[cfg(target_arch = "x86_64")]
    let simd = crate::quant::avx2_f32_available() && head_dim.is_multiple_of(8);
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    let outs: Vec<Vec<f32>> = backend.pool.install(|| {
        (0..n_heads * blocks)
            .into_par_iter()
            .map_init(BlockScratch::default, |scratch, task| {
                let (h, b) = (task % n_heads, task / n_heads);
                let kvh = h / group;
                let queries = b * QUERY_BLOCK..((b + 1) * QUERY_BLOCK).min(n);
                let visible = |t: usize| shape.first_visible(pos0 + t)..pos0 + t + 1;
                let span = visible(queries.start).start..pos0 + queries.end;
                let block = Block {
                    q: &q.data[queries.start * q.cols + h * head_dim..],
                    q_stride: q.cols,
                    nq: queries.len(),
                    keys: &keys[span.start * kv_dim + kvh * head_dim..],
                    values: &values[span.start * kv_dim + kvh * head_dim..],
                    kv_stride: kv_dim,
                    width: span.len(),
                    head_dim,
                    scale,
                };
                let seen: Vec<_> = queries
                    .map(|t| {
                        let v = visible(t);
                        v.start - span.start..v.end - span.start
                    })
                    .collect();
                // Transposing the keys pays off only when a tile of queries shares them.
                if simd && block.nq >= 4 {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: AVX2 and FMA were detected; head_dim is a multiple of 8.
                    return unsafe { block.attend_avx2(&seen, scratch) };
                }
                block.attend(&seen, scratch)
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
        data: data.into(),
        rows: n,
        cols,
    }
}

/// Queries of one head that share each pass over the cached keys and values.
const QUERY_BLOCK: usize = 16;

/// Buffers one worker reuses from block to block.
#[derive(Default)]
struct BlockScratch {
    /// Scores, then probabilities: one row per query.
    scores: Vec<f32>,
    /// The span's keys transposed (head_dim rows of keys), for the SIMD scores.
    keys_t: Vec<f32>,
}

/// One head's attention for a block of consecutive queries over the span of cached positions
/// the first of them sees to the last of them.
struct Block<'a> {
    /// The first query's head; query r at `r · q_stride`.
    q: &'a [f32],
    q_stride: usize,
    nq: usize,
    /// The span's first key and value of this head; position c at `c · kv_stride`.
    keys: &'a [f32],
    values: &'a [f32],
    kv_stride: usize,
    /// Positions in the span.
    width: usize,
    head_dim: usize,
    scale: f32,
}

impl Block<'_> {
    fn key(&self, c: usize) -> &[f32] {
        &self.keys[c * self.kv_stride..][..self.head_dim]
    }

    /// Portable path: `seen[r]` is the span positions query r sees.
    fn attend(&self, seen: &[std::ops::Range<usize>], scratch: &mut BlockScratch) -> Vec<f32> {
        let (width, hd) = (self.width, self.head_dim);
        let scores = &mut scratch.scores;
        scores.clear();
        scores.resize(self.nq * width, 0.0);
        for c in 0..width {
            let kc = self.key(c);
            for (r, range) in seen.iter().enumerate() {
                if range.contains(&c) {
                    let qr = &self.q[r * self.q_stride..][..hd];
                    scores[r * width + c] = dot_f32(qr, kc) * self.scale;
                }
            }
        }
        softmax_visible(scores, width, seen);
        let mut out = vec![0f32; self.nq * hd];
        for c in 0..width {
            let vc = &self.values[c * self.kv_stride..][..hd];
            for (r, o) in out.chunks_exact_mut(hd).enumerate() {
                let p = scores[r * width + c];
                if p != 0.0 {
                    axpy(o, p, vc);
                }
            }
        }
        out
    }

    /// [`Block::attend`] with the AVX2 kernels.
    ///
    /// # Safety
    /// AVX2 and FMA must be present and `head_dim` a multiple of 8.
    #[cfg(target_arch = "x86_64")]
    unsafe fn attend_avx2(
        &self,
        seen: &[std::ops::Range<usize>],
        scratch: &mut BlockScratch,
    ) -> Vec<f32> {
        let (width, hd) = (self.width, self.head_dim);
        let width8 = width.next_multiple_of(8);
        let keys_t = &mut scratch.keys_t;
        keys_t.clear();
        keys_t.resize(hd * width8, 0.0);
        for c in 0..width {
            for (d, &x) in self.key(c).iter().enumerate() {
                keys_t[d * width8 + c] = x;
            }
        }
        let scores = &mut scratch.scores;
        scores.clear();
        scores.resize(self.nq * width8, 0.0);
        // SAFETY: the caller vouches for AVX2, FMA and head_dim; the kernels check lengths.
        unsafe {
            avx2::scores(self.q, self.q_stride, self.nq, keys_t, width8, hd, self.scale, scores)
        };
        softmax_visible(scores, width8, seen);
        let mut out = vec![0f32; self.nq * hd];
        // SAFETY: as above.
        unsafe {
            avx2::weighted_sum(
                scores,
                width8,
                self.nq,
                self.values,
                self.kv_stride,
                width,
                hd,
                &mut out,
            )
        };
        out
    }
}

/// Row r of `scores` (rows `stride` apart) becomes the softmax over the positions `seen[r]`,
/// and zero elsewhere.
fn softmax_visible(scores: &mut [f32], stride: usize, seen: &[std::ops::Range<usize>]) {
    for (row, range) in scores.chunks_exact_mut(stride).zip(seen) {
        let max = row[range.clone()]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in &mut row[range.clone()] {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        row[range.clone()].iter_mut().for_each(|s| *s *= inv);
        row[..range.start].fill(0.0);
        row[range.end..].fill(0.0);
    }
}

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
    let t = |data: Vec<f32>, cols| CpuTensor {
        data: data.into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32 ^ seed).wrapping_mul(2_654_435_761) >> 8) as f32 / (1 << 24) as f32 - 0.5)
            .collect()
    }

    /// The AVX2 block kernels agree with the portable path on ragged shapes: 13 queries (a
    /// four-row tile and single rows), a span of 37 positions (not whole vectors of 8), head
    /// widths of 40 (no 32-wide tile) and 64, and a sliding window cutting into the span.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_block_matches_the_portable_one() {
        if !crate::quant::avx2_f32_available() {
            println!("skipped: this CPU has no AVX2 + FMA");
            return;
        }
        for head_dim in [40, 64] {
            let (nq, width, stride) = (13, 37, 3 * head_dim);
            let (q, k, v) = (
                noise(nq * stride, 1),
                noise(width * stride, 2),
                noise(width * stride, 3),
            );
            let block = Block {
                q: &q[head_dim..],
                q_stride: stride,
                nq,
                keys: &k[head_dim..],
                values: &v[head_dim..],
                kv_stride: stride,
                width,
                head_dim,
                scale: 0.125,
            };
            // Query r is position width − nq + r, seeing at most the 30 positions up to it.
            let seen: Vec<_> = (0..nq)
                .map(|r| {
                    let end = width - nq + r + 1;
                    end.saturating_sub(30)..end
                })
                .collect();
            let want = block.attend(&seen, &mut BlockScratch::default());
            // SAFETY: AVX2 and FMA were detected; both head widths are multiples of 8.
            let got = unsafe { block.attend_avx2(&seen, &mut BlockScratch::default()) };
            assert_eq!(got.len(), want.len());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-5, "head_dim {head_dim}, element {i}: {a} vs {b}");
            }
        }
    }
}

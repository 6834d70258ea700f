//! Product-key top-k: N = n_keys² slots scored for the price of 2·n_keys dot products.
//!
//! Ranking is by score, descending; equal scores rank the smaller index first. The same rule
//! at both levels makes the product search return exactly what scoring every slot would.

use std::cmp::Ordering;

use crate::quant::dot_f32 as dot;

/// Shape of a product-key lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProductKeyShape {
    /// Query heads.
    pub heads: usize,
    /// Sub-keys per half.
    pub n_keys: usize,
    /// Slots kept per head.
    pub top_k: usize,
    /// Query width per head.
    pub k_dim: usize,
}

impl ProductKeyShape {
    /// Query columns per token.
    pub fn query_cols(&self) -> usize {
        self.heads * self.k_dim
    }

    /// Selected slots per token (all heads).
    pub fn picks(&self) -> usize {
        self.heads * self.top_k
    }

    /// Rows of the sub-key table: for head h and half s, rows `(2h + s)·n_keys ..`.
    pub fn key_rows(&self) -> usize {
        self.heads * 2 * self.n_keys
    }
}

/// Orders (score, index) pairs best first: higher score, then smaller index.
#[inline]
fn better(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Keeps the best `k` of `items`, best first.
pub fn top_k_of(items: &mut Vec<(f32, u32)>, k: usize) {
    if items.len() > k {
        items.select_nth_unstable_by(k - 1, better);
        items.truncate(k);
    }
    items.sort_unstable_by(better);
}

/// Scores of one query half against its `n_keys` sub-keys (`keys` is `n_keys × half` rows).
pub fn half_scores(q: &[f32], keys: &[f32]) -> Vec<f32> {
    keys.chunks_exact(q.len()).map(|k| dot(q, k)).collect()
}

/// The top-k slots of one head's query and their raw scores, best first.
///
/// `q` is the head's `k_dim` query; `keys` the head's `2·n_keys` sub-key rows (first half's
/// keys, then the second half's).
pub fn lookup_head(q: &[f32], keys: &[f32], n_keys: usize, top_k: usize) -> Vec<(f32, u32)> {
    let half = q.len() / 2;
    let (k1, k2) = keys.split_at(n_keys * half);
    let best_half = |q: &[f32], k: &[f32]| {
        let mut s: Vec<(f32, u32)> = half_scores(q, k).into_iter().zip(0u32..).collect();
        top_k_of(&mut s, top_k);
        s
    };
    let a = best_half(&q[..half], k1);
    let b = best_half(&q[half..], k2);
    let mut cand = Vec::with_capacity(a.len() * b.len());
    for &(sa, i) in &a {
        for &(sb, j) in &b {
            cand.push((sa + sb, i * n_keys as u32 + j));
        }
    }
    top_k_of(&mut cand, top_k);
    cand
}

/// Scores every one of the `n_keys²` slots and keeps the top k: the definition that
/// [`lookup_head`] must match, for tests.
pub fn brute_force_head(q: &[f32], keys: &[f32], n_keys: usize, top_k: usize) -> Vec<(f32, u32)> {
    let half = q.len() / 2;
    let (k1, k2) = keys.split_at(n_keys * half);
    let s1 = half_scores(&q[..half], k1);
    let s2 = half_scores(&q[half..], k2);
    let mut all = Vec::with_capacity(n_keys * n_keys);
    for (i, a) in s1.iter().enumerate() {
        for (j, b) in s2.iter().enumerate() {
            all.push((a + b, (i * n_keys + j) as u32));
        }
    }
    top_k_of(&mut all, top_k);
    all
}

/// Softmax of the selected scores, in place (max-subtracted).
pub fn softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    for s in scores.iter_mut() {
        *s *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (splitmix64): the test needs varied scores, not a
    /// particular distribution.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(seed)
        }

        /// Uniform in [-2, 2).
        fn next(&mut self) -> f32 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        }
    }

    fn random(n: usize, rng: &mut Rng, grid: Option<f32>) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let v = rng.next();
                // On a coarse grid many scores tie exactly, which exercises the tie rule.
                grid.map_or(v, |g| (v / g).round() * g)
            })
            .collect()
    }

    #[test]
    fn product_top_k_equals_brute_force() {
        let mut rng = Rng::new(42);
        let mut cases = 0;
        for &(n_keys, top_k, k_dim) in
            &[(4, 1, 2), (8, 3, 4), (16, 16, 8), (32, 8, 16), (64, 32, 32)]
        {
            for grid in [None, Some(0.5), Some(1.0)] {
                for _ in 0..25 {
                    let q = random(k_dim, &mut rng, grid);
                    let keys = random(2 * n_keys * k_dim / 2, &mut rng, grid);
                    let fast = lookup_head(&q, &keys, n_keys, top_k);
                    let slow = brute_force_head(&q, &keys, n_keys, top_k);
                    assert_eq!(
                        fast, slow,
                        "n_keys {n_keys} top_k {top_k} k_dim {k_dim} grid {grid:?}"
                    );
                    assert_eq!(fast.len(), top_k);
                    cases += 1;
                }
            }
        }
        assert_eq!(cases, 375);
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut s = vec![3.0, 1.0, -2.0, 1.0];
        softmax(&mut s);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(s[0] > s[1] && s[1] == s[3] && s[3] > s[2]);
    }
}

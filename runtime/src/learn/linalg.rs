//! The little dense linear algebra the retrofit needs: covariance, a symmetric eigensolver,
//! random rotations and spherical k-means. Sizes are small (model width ≤ a few thousand).

use rayon::prelude::*;

use crate::quant::dot_f32;

/// SplitMix64 with Gaussian draws: seedable, so a retrofit is reproducible.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0xD1B5_4A32_D192_ED03)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }

    /// Standard normal (Box–Muller).
    pub fn gaussian(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Mean and covariance (row-major d × d, f64) of `n` rows of width `d`.
pub fn mean_and_covariance(rows: &[f32], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len() / d;
    let mut mean = vec![0f64; d];
    for r in rows.chunks_exact(d) {
        for (m, &x) in mean.iter_mut().zip(r) {
            *m += x as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    // Each task accumulates a block of centred rows in f32, then adds it into f64.
    let partial = rows
        .par_chunks(d * 256)
        .map(|block| {
            let centred: Vec<f32> = block
                .chunks_exact(d)
                .flat_map(|r| r.iter().zip(&mean).map(|(&x, &m)| (x as f64 - m) as f32))
                .collect();
            let mut acc = vec![0f32; d * d];
            for r in centred.chunks_exact(d) {
                for (i, &xi) in r.iter().enumerate() {
                    let row = &mut acc[i * d..i * d + d];
                    for (a, &xj) in row[i..].iter_mut().zip(&r[i..]) {
                        *a += xi * xj;
                    }
                }
            }
            acc.into_iter().map(f64::from).collect::<Vec<f64>>()
        })
        .reduce(
            || vec![0f64; d * d],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        );
    let mut cov = partial;
    for i in 0..d {
        for j in i..d {
            let v = cov[i * d + j] / n.max(1) as f64;
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    (mean, cov)
}

/// Eigen-decomposition of a symmetric n × n matrix by cyclic Jacobi rotations.
///
/// Returns eigenvalues in descending order and the matching unit eigenvectors as the rows of
/// an n × n matrix.
pub fn symmetric_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n, "symmetric_eigen: matrix size");
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let total: f64 = a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|p| (p + 1..n).map(move |q| (p, q)))
            .map(|(p, q)| a[p * n + q] * a[p * n + q])
            .sum();
        if off <= 1e-22 * total {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A ← Pᵀ A P: columns p, q, then rows p, q; V ← V P.
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let mut vectors = vec![0f64; n * n];
    for (r, &i) in order.iter().enumerate() {
        for k in 0..n {
            vectors[r * n + k] = v[k * n + i];
        }
    }
    (values, vectors)
}

/// A random n × n orthogonal matrix (Gram–Schmidt on Gaussian rows).
pub fn random_orthogonal(n: usize, rng: &mut Rng) -> Vec<f64> {
    let mut m: Vec<f64> = (0..n * n).map(|_| rng.gaussian()).collect();
    for i in 0..n {
        for j in 0..i {
            let d: f64 = (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum();
            for k in 0..n {
                m[i * n + k] -= d * m[j * n + k];
            }
        }
        let norm = (0..n).map(|k| m[i * n + k].powi(2)).sum::<f64>().sqrt();
        for k in 0..n {
            m[i * n + k] /= norm;
        }
    }
    m
}

/// Scales each row of width `d` to unit length (zero rows stay zero).
pub fn normalize_rows(rows: &mut [f32], d: usize) {
    for r in rows.chunks_exact_mut(d) {
        let norm = dot_f32(r, r).sqrt();
        if norm > 0.0 {
            r.iter_mut().for_each(|x| *x /= norm);
        }
    }
}

/// Index of the centroid with the largest dot product (the lookup's own rule).
fn nearest(x: &[f32], centroids: &[f32], d: usize) -> usize {
    let mut best = (f32::NEG_INFINITY, 0);
    for (c, k) in centroids.chunks_exact(d).enumerate() {
        let s = dot_f32(x, k);
        if s > best.0 {
            best = (s, c);
        }
    }
    best.1
}

/// Spherical k-means: `k` unit centroids of the `n` rows (width `d`), each point assigned to
/// the centroid with the largest dot product, which is exactly how the lookup scores keys.
/// Empty clusters are re-seeded from the points their neighbours fit worst.
pub fn spherical_kmeans(data: &[f32], d: usize, k: usize, iters: usize, rng: &mut Rng) -> Vec<f32> {
    let n = data.len() / d;
    assert!(n >= k, "k-means needs at least {k} points, got {n}");
    let mut unit = data.to_vec();
    normalize_rows(&mut unit, d);
    // k-means++ seeding: each next centroid is drawn with probability ∝ 1 − (best cosine so
    // far), so the start already covers the data.
    let mut centroids = Vec::with_capacity(k * d);
    let first = rng.below(n);
    centroids.extend_from_slice(&unit[first * d..first * d + d]);
    let mut best = vec![f32::NEG_INFINITY; n];
    for c in 1..k {
        let last = &centroids[(c - 1) * d..c * d];
        best.par_iter_mut()
            .zip(unit.par_chunks(d))
            .for_each(|(b, x)| *b = b.max(dot_f32(x, last)));
        let weights: Vec<f64> = best.iter().map(|&b| (1.0 - b as f64).max(0.0)).collect();
        let total: f64 = weights.iter().sum();
        let pick = if total > 0.0 {
            let mut r = rng.uniform() * total;
            weights
                .iter()
                .position(|&w| {
                    r -= w;
                    r < 0.0
                })
                .unwrap_or(n - 1)
        } else {
            rng.below(n)
        };
        centroids.extend_from_slice(&unit[pick * d..pick * d + d]);
    }
    let mut assign = vec![0usize; n];
    for _ in 0..iters {
        assign
            .par_iter_mut()
            .zip(unit.par_chunks(d))
            .for_each(|(a, x)| *a = nearest(x, &centroids, d));
        let mut sums = vec![0f32; k * d];
        let mut counts = vec![0usize; k];
        for (x, &a) in unit.chunks_exact(d).zip(&assign) {
            counts[a] += 1;
            for (s, v) in sums[a * d..a * d + d].iter_mut().zip(x) {
                *s += v;
            }
        }
        for c in 0..k {
            if counts[c] == 0 {
                // Re-seed from a random point of the largest cluster.
                let big = (0..k).max_by_key(|&j| counts[j]).unwrap_or(0);
                let members: Vec<usize> = (0..n).filter(|&i| assign[i] == big).collect();
                let i = members[rng.below(members.len())];
                sums[c * d..c * d + d].copy_from_slice(&unit[i * d..i * d + d]);
                counts[c] = 1;
            }
        }
        normalize_rows(&mut sums, d);
        centroids = sums;
    }
    centroids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_reconstructs_a_symmetric_matrix() {
        let n = 24;
        let mut rng = Rng::new(3);
        let b: Vec<f64> = (0..n * n).map(|_| rng.gaussian()).collect();
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| b[i * n + k] * b[j * n + k]).sum();
            }
        }
        let (vals, vecs) = symmetric_eigen(a.clone(), n);
        assert!(vals.windows(2).all(|w| w[0] >= w[1]), "descending");
        for i in 0..n {
            for j in 0..n {
                let r: f64 = (0..n)
                    .map(|k| vecs[k * n + i] * vals[k] * vecs[k * n + j])
                    .sum();
                assert!(
                    (r - a[i * n + j]).abs() < 1e-9 * vals[0],
                    "({i},{j}) {r} vs {}",
                    a[i * n + j]
                );
                let dot: f64 = (0..n).map(|k| vecs[i * n + k] * vecs[j * n + k]).sum();
                assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn random_rotation_is_orthogonal() {
        let n = 16;
        let m = random_orthogonal(n, &mut Rng::new(1));
        for i in 0..n {
            for j in 0..n {
                let dot: f64 = (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum();
                assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn kmeans_finds_separated_clusters() {
        // Four tight clusters on the unit circle; each must get one centroid.
        let mut rng = Rng::new(9);
        let centres = [(1.0f32, 0.0f32), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)];
        let mut data = Vec::new();
        for i in 0..400 {
            let (x, y) = centres[i % 4];
            data.push(x + 0.05 * rng.gaussian() as f32);
            data.push(y + 0.05 * rng.gaussian() as f32);
        }
        let c = spherical_kmeans(&data, 2, 4, 10, &mut rng);
        for (x, y) in centres {
            let best = c
                .chunks_exact(2)
                .map(|k| k[0] * x + k[1] * y)
                .fold(f32::MIN, f32::max);
            assert!(best > 0.99, "no centroid near ({x}, {y}): {c:?}");
        }
    }

    #[test]
    fn covariance_of_known_data() {
        let rows = [1.0f32, 2.0, 3.0, 6.0, 5.0, 10.0];
        let (m, c) = mean_and_covariance(&rows, 2);
        assert_eq!(m, vec![3.0, 6.0]);
        assert!((c[0] - 8.0 / 3.0).abs() < 1e-6 && (c[1] - 16.0 / 3.0).abs() < 1e-6);
        assert!((c[3] - 32.0 / 3.0).abs() < 1e-5 && c[1] == c[2]);
    }
}

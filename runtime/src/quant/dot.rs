//! Dot products of one quantized weight row with activations, scalar and AVX2.
//!
//! Integer formats multiply against activations quantized to 8 bits in blocks of [`QK`], the
//! same trick llama.cpp uses: the inner loop is then integer multiply-adds.

use half::{bf16, f16};

use super::GgmlType;
use super::blocks::{f16_at, q4k_scale_min};

/// Elements per activation block.
pub const QK: usize = 32;

/// 32 activations quantized to i8 with one scale; `sum` = `d` · Σ`qs` serves formats with offsets.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Q8Act {
    /// Scale.
    pub d: f32,
    /// `d` times the sum of `qs`.
    pub sum: f32,
    /// Quantized values.
    pub qs: [i8; QK],
}

/// Quantizes `x` (length a multiple of [`QK`]) into `out`, reusing its allocation.
pub fn quantize_activations(x: &[f32], out: &mut Vec<Q8Act>) {
    debug_assert!(x.len() % QK == 0);
    out.clear();
    out.extend(x.chunks_exact(QK).map(|b| {
        let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut qs = [0i8; QK];
        let mut s = 0i32;
        for (q, v) in qs.iter_mut().zip(b) {
            *q = (v * id).round() as i8;
            s += *q as i32;
        }
        // Scales are rounded through f16 as ggml's Q8_0/Q8_1 activation blocks store them,
        // so that engram and llama.cpp see the same quantized activations.
        Q8Act {
            d: f16::from_f32(d).to_f32(),
            sum: f16::from_f32(d * s as f32).to_f32(),
            qs,
        }
    }));
}

/// Dot product of one weight row (`dtype` blocks) with an activation row given both as f32
/// (`x`, used by float formats) and as Q8 blocks (`xq`, used by integer formats).
#[inline]
pub fn dot_row(dtype: GgmlType, w: &[u8], x: &[f32], xq: &[Q8Act]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA were detected at run time.
        unsafe {
            match dtype {
                GgmlType::Q4_0 => return avx2::q4_0(w, xq),
                GgmlType::Q4_1 => return avx2::q4_1(w, xq),
                GgmlType::Q8_0 => return avx2::q8_0(w, xq),
                GgmlType::Q4_K => return avx2::q4_k(w, xq),
                GgmlType::Q6_K => return avx2::q6_k(w, xq),
                GgmlType::F32 => return avx2::f32_dot(w, x),
                _ => {}
            }
        }
    }
    scalar::dot(dtype, w, x, xq)
}

/// Portable reference implementations.
pub(crate) mod scalar {
    use super::*;

    /// Scalar dot product for any format.
    pub fn dot(dtype: GgmlType, w: &[u8], x: &[f32], xq: &[Q8Act]) -> f32 {
        match dtype {
            GgmlType::F32 => w
                .chunks_exact(4)
                .zip(x)
                .map(|(c, v)| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * v)
                .sum(),
            GgmlType::F16 => w
                .chunks_exact(2)
                .zip(x)
                .map(|(c, v)| f16::from_le_bytes([c[0], c[1]]).to_f32() * v)
                .sum(),
            GgmlType::BF16 => w
                .chunks_exact(2)
                .zip(x)
                .map(|(c, v)| bf16::from_le_bytes([c[0], c[1]]).to_f32() * v)
                .sum(),
            GgmlType::Q8_0 => w
                .chunks_exact(34)
                .zip(xq)
                .map(|(b, a)| {
                    let s: i32 = b[2..]
                        .iter()
                        .zip(&a.qs)
                        .map(|(&q, &y)| q as i8 as i32 * y as i32)
                        .sum();
                    f16_at(b, 0) * a.d * s as f32
                })
                .sum(),
            GgmlType::Q4_0 => w
                .chunks_exact(18)
                .zip(xq)
                .map(|(b, a)| {
                    let s = nibble_dot(&b[2..18], &a.qs);
                    f16_at(b, 0) * (a.d * s as f32 - 8.0 * a.sum)
                })
                .sum(),
            GgmlType::Q4_1 => w
                .chunks_exact(20)
                .zip(xq)
                .map(|(b, a)| {
                    let s = nibble_dot(&b[4..20], &a.qs);
                    f16_at(b, 0) * a.d * s as f32 + f16_at(b, 2) * a.sum
                })
                .sum(),
            GgmlType::Q4_K => w
                .chunks_exact(144)
                .zip(xq.chunks_exact(8))
                .map(|(b, a)| {
                    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                    let mut total = 0f32;
                    for j in 0..8 {
                        let (sc, m) = q4k_scale_min(j, &b[4..16]);
                        let q = &b[16 + (j / 2) * 32..16 + (j / 2) * 32 + 32];
                        let shift = if j % 2 == 0 { 0 } else { 4 };
                        let s: i32 = q
                            .iter()
                            .zip(&a[j].qs)
                            .map(|(&q, &y)| ((q >> shift) & 0xF) as i32 * y as i32)
                            .sum();
                        total += d * sc as f32 * a[j].d * s as f32 - dmin * m as f32 * a[j].sum;
                    }
                    total
                })
                .sum(),
            GgmlType::Q6_K => {
                let mut w_f = [0f32; 256];
                w.chunks_exact(210)
                    .zip(xq.chunks_exact(8))
                    .map(|(b, a)| {
                        // Dequantizing then dotting keeps the reference obviously right.
                        super::super::blocks::dequantize_row(GgmlType::Q6_K, b, &mut w_f);
                        a.iter()
                            .enumerate()
                            .map(|(j, blk)| {
                                let s: f32 = blk
                                    .qs
                                    .iter()
                                    .zip(&w_f[j * 32..j * 32 + 32])
                                    .map(|(&q, &w)| q as f32 * w)
                                    .sum();
                                s * blk.d
                            })
                            .sum::<f32>()
                    })
                    .sum()
            }
        }
    }

    /// Σ q·y over 32 unsigned nibbles (low nibbles are elements 0..16, high 16..32).
    fn nibble_dot(qs: &[u8], y: &[i8; QK]) -> i32 {
        let mut s = 0i32;
        for (j, &q) in qs.iter().enumerate() {
            s += (q & 0xF) as i32 * y[j] as i32 + (q >> 4) as i32 * y[j + 16] as i32;
        }
        s
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::{Q8Act, f16_at, q4k_scale_min};

    pub fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE
            .get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    /// 32 nibbles of 16 bytes as 32 u8 lanes: low nibbles first, then high nibbles.
    #[inline(always)]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        unsafe {
            let q = _mm_loadu_si128(p as *const __m128i);
            let m = _mm_set1_epi8(0xF);
            let lo = _mm_and_si128(q, m);
            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m);
            _mm256_set_m128i(hi, lo)
        }
    }

    /// Σ u·s over 32 lanes as 8 i32 lanes (u unsigned ≤ 127·2 per pair, s signed).
    #[inline(always)]
    unsafe fn dot_us(u: __m256i, s: __m256i) -> __m256i {
        unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q4_0(w: &[u8], xq: &[Q8Act]) -> f32 {
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut offset = 0f32;
            for (b, a) in w.chunks_exact(18).zip(xq) {
                let d = f16_at(b, 0);
                let y = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                let p = _mm256_cvtepi32_ps(dot_us(nibbles(b.as_ptr().add(2)), y));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), p, acc);
                offset -= 8.0 * d * a.sum;
            }
            hsum(acc) + offset
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q4_1(w: &[u8], xq: &[Q8Act]) -> f32 {
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut offset = 0f32;
            for (b, a) in w.chunks_exact(20).zip(xq) {
                let y = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                let p = _mm256_cvtepi32_ps(dot_us(nibbles(b.as_ptr().add(4)), y));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b, 0) * a.d), p, acc);
                offset += f16_at(b, 2) * a.sum;
            }
            hsum(acc) + offset
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q8_0(w: &[u8], xq: &[Q8Act]) -> f32 {
        unsafe {
            let mut acc = _mm256_setzero_ps();
            for (b, a) in w.chunks_exact(34).zip(xq) {
                let q = _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i);
                let y = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                let p = dot_us(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q));
                acc = _mm256_fmadd_ps(
                    _mm256_set1_ps(f16_at(b, 0) * a.d),
                    _mm256_cvtepi32_ps(p),
                    acc,
                );
            }
            hsum(acc)
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q4_k(w: &[u8], xq: &[Q8Act]) -> f32 {
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut offset = 0f32;
            let m4 = _mm256_set1_epi8(0xF);
            for (b, a) in w.chunks_exact(144).zip(xq.chunks_exact(8)) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                for c in 0..4 {
                    let q = _mm256_loadu_si256(b.as_ptr().add(16 + c * 32) as *const __m256i);
                    let lo = _mm256_and_si256(q, m4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                    for (j, qv) in [(2 * c, lo), (2 * c + 1, hi)] {
                        let (sc, m) = q4k_scale_min(j, scales);
                        let y = _mm256_loadu_si256(a[j].qs.as_ptr() as *const __m256i);
                        let p = _mm256_cvtepi32_ps(dot_us(qv, y));
                        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc as f32 * a[j].d), p, acc);
                        offset -= dmin * m as f32 * a[j].sum;
                    }
                }
            }
            hsum(acc) + offset
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q6_k(w: &[u8], xq: &[Q8Act]) -> f32 {
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let m4 = _mm256_set1_epi8(0xF);
            let m2 = _mm256_set1_epi8(3);
            let k32 = _mm256_set1_epi8(32);
            for (b, a) in w.chunks_exact(210).zip(xq.chunks_exact(8)) {
                let d = f16_at(b, 208);
                for h in 0..2 {
                    let ql0 = _mm256_loadu_si256(b.as_ptr().add(h * 64) as *const __m256i);
                    let ql1 = _mm256_loadu_si256(b.as_ptr().add(h * 64 + 32) as *const __m256i);
                    let qh = _mm256_loadu_si256(b.as_ptr().add(128 + h * 32) as *const __m256i);
                    let high = |shift: i32| -> __m256i {
                        let v = match shift {
                            0 => qh,
                            2 => _mm256_srli_epi16(qh, 2),
                            4 => _mm256_srli_epi16(qh, 4),
                            _ => _mm256_srli_epi16(qh, 6),
                        };
                        _mm256_slli_epi16(_mm256_and_si256(v, m2), 4)
                    };
                    let groups = [
                        _mm256_or_si256(_mm256_and_si256(ql0, m4), high(0)),
                        _mm256_or_si256(_mm256_and_si256(ql1, m4), high(2)),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), high(4)),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), high(6)),
                    ];
                    let sc = &b[192 + h * 8..192 + h * 8 + 8];
                    for (k, q) in groups.into_iter().enumerate() {
                        let blk = &a[h * 4 + k];
                        let y = _mm256_loadu_si256(blk.qs.as_ptr() as *const __m256i);
                        // Σ(q−32)·y = Σq·y − Σ32·y, each pair-sum fits i16.
                        let diff = _mm256_sub_epi16(
                            _mm256_maddubs_epi16(q, y),
                            _mm256_maddubs_epi16(k32, y),
                        );
                        let s0 = sc[2 * k] as i8 as i16;
                        let s1 = sc[2 * k + 1] as i8 as i16;
                        let scales = _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
                        let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(diff, scales));
                        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * blk.d), p, acc);
                    }
                }
            }
            hsum(acc)
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn f32_dot(w: &[u8], x: &[f32]) -> f32 {
        unsafe {
            let n = x.len();
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i + 8 <= n {
                let wv = _mm256_loadu_ps(w.as_ptr().add(i * 4) as *const f32);
                acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(i)), acc);
                i += 8;
            }
            let mut s = hsum(acc);
            while i < n {
                let c = &w[i * 4..i * 4 + 4];
                s += f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * x[i];
                i += 1;
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_row, quantize_row};

    /// Deterministic pseudo-random values in [-1, 1) without a rand dependency.
    pub(crate) fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Each format's quantize → dequantize error stays within half a quantization step
    /// (relative to the row's largest magnitude), which also proves the layouts agree.
    #[test]
    fn round_trip_error_is_bounded() {
        let n = 512;
        let x = noise(n, 7);
        for dtype in GgmlType::ALL {
            let bytes = quantize_row(dtype, &x);
            assert_eq!(bytes.len(), dtype.row_bytes(n).unwrap());
            let mut y = vec![0f32; n];
            dequantize_row(dtype, &bytes, &mut y);
            let max_err = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // Step sizes for values in [-1,1]: 4-bit ≈ 2/15, 6-bit ≈ 2/63, 8-bit ≈ 1/127.
            let bound = match dtype {
                GgmlType::F32 => 0.0,
                GgmlType::F16 => 1e-3,
                GgmlType::BF16 => 8e-3,
                GgmlType::Q8_0 => 0.5 / 127.0 + 1e-3,
                GgmlType::Q6_K => 0.03,
                GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => 0.1,
            };
            assert!(max_err <= bound, "{dtype}: max error {max_err} > {bound}");
        }
    }

    /// Every dot path (SIMD where present, and scalar) against an f64 dot of the dequantized
    /// weights with the f32 activations. The only error left is the 8-bit activation rounding:
    /// |Δ| ≤ Σ|w|·(d_x/2) ≈ 0.4% of Σ|w·x| scale; we allow 1% of Σ|w|·|x| plus 1e-4.
    #[test]
    fn dot_matches_f32_reference() {
        let n = 1024;
        for seed in 0..8 {
            let x = noise(n, 100 + seed);
            let w = noise(n, 200 + seed);
            let mut xq = Vec::new();
            quantize_activations(&x, &mut xq);
            for dtype in GgmlType::ALL {
                let bytes = quantize_row(dtype, &w);
                let mut wd = vec![0f32; n];
                dequantize_row(dtype, &bytes, &mut wd);
                let reference: f64 = wd.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                let scale: f64 = wd
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                let tol = 0.01 * scale + 1e-4;
                let fast = dot_row(dtype, &bytes, &x, &xq) as f64;
                let slow = scalar::dot(dtype, &bytes, &x, &xq) as f64;
                assert!(
                    (fast - reference).abs() <= tol,
                    "{dtype} fast {fast} vs {reference} (tol {tol})"
                );
                assert!(
                    (slow - reference).abs() <= tol,
                    "{dtype} scalar {slow} vs {reference} (tol {tol})"
                );
                // SIMD and scalar compute the same integer sums: only float summation order differs.
                assert!(
                    (fast - slow).abs() <= 1e-4 * scale + 1e-5,
                    "{dtype}: simd {fast} vs scalar {slow}"
                );
            }
        }
    }
}

//! Dot products of one quantized weight row with activations: scalar, AVX2 (x86-64, chosen at
//! run time) and NEON (aarch64).
//!
//! Integer formats multiply against activations quantized to 8 bits in blocks of [`QK`], the
//! same trick llama.cpp uses: the inner loop is then integer multiply-adds.

use half::{bf16, f16};

use super::GgmlType;
use super::blocks::{f16_at, q4k_scale_min, q5_layout, q5_quants};

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
///
/// Like ggml's Q8 activation blocks: scale amax/127 stored at f16 precision, values rounded
/// to nearest-even, so that engram and llama.cpp see the same quantized activations.
pub fn quantize_activations(x: &[f32], out: &mut Vec<Q8Act>) {
    debug_assert!(x.len().is_multiple_of(QK));
    out.clear();
    out.extend(x.chunks_exact(QK).map(|b| {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            // SAFETY: AVX2 was detected at run time; `b` has QK elements.
            return unsafe { avx2::quantize_block(b) };
        }
        #[cfg(target_arch = "aarch64")]
        return neon::quantize_block(b);
        #[allow(unreachable_code)]
        let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut qs = [0i8; QK];
        let mut s = 0i32;
        for (q, v) in qs.iter_mut().zip(b) {
            *q = (v * id).round_ties_even() as i8;
            s += *q as i32;
        }
        Q8Act {
            d: f16::from_f32(d).to_f32(),
            sum: f16::from_f32(d * s as f32).to_f32(),
            qs,
        }
    }));
}

/// Dot product of two f32 slices of equal length, written in 8 lanes so the compiler
/// vectorizes it. It stays on the build's baseline (no FMA) on purpose: the product-key
/// lookup and the learning statistics use it, and their rounding is what the learning tests'
/// thresholds were set on (an FMA version moved two of them past their bounds).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Whether [`axpy_f32`] runs an AVX2 + FMA kernel on this CPU: other f32 kernels compiled
/// for those features may run where this says so.
#[cfg(target_arch = "x86_64")]
pub fn avx2_f32_available() -> bool {
    avx2::available()
}

/// `out += a · x` over f32 slices of equal length: AVX2 + FMA where the CPU has them.
#[inline]
pub fn axpy_f32(out: &mut [f32], a: f32, x: &[f32]) {
    debug_assert_eq!(out.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA were detected at run time; the kernel touches min(len) elements.
        return unsafe { avx2::axpy_f32(out, a, x) };
    }
    for (o, v) in out.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// Dot product of one weight row (`dtype` blocks) with an activation row given both as f32
/// (`x`, used by float formats) and as Q8 blocks (`xq`, used by integer formats).
#[inline]
pub fn dot_row(dtype: GgmlType, w: &[u8], x: &[f32], xq: &[Q8Act]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        if dtype == GgmlType::F32 {
            // SAFETY: AVX2 and FMA were detected at run time.
            return unsafe { avx2::f32_dot(w, x) };
        }
        if let Some([v]) = dot_rows(dtype, w, [xq]) {
            return v;
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if dtype == GgmlType::F32 {
            return neon::f32_dot(w, x);
        }
        if let Some([v]) = dot_rows(dtype, w, [xq]) {
            return v;
        }
    }
    scalar::dot(dtype, w, x, xq)
}

/// One weight row against `T` quantized activation rows at once, or `None` when no SIMD
/// kernel covers `dtype` on this CPU (the caller then uses [`dot_row`] per row).
#[inline]
pub fn dot_rows<const T: usize>(dtype: GgmlType, w: &[u8], xq: [&[Q8Act]; T]) -> Option<[f32; T]> {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        let blocks = w.len() / dtype.block_bytes() * (dtype.block_size() / QK);
        assert!(
            xq.iter().all(|x| x.len() >= blocks),
            "activation rows shorter than the weight row"
        );
        // SAFETY: AVX2, FMA and F16C were detected at run time; lengths were checked above.
        return unsafe {
            match dtype {
                GgmlType::Q4_0 => Some(avx2::q4_0(w, xq)),
                GgmlType::Q4_1 => Some(avx2::q4_1(w, xq)),
                GgmlType::Q5_0 => Some(avx2::q5_0(w, xq)),
                GgmlType::Q5_1 => Some(avx2::q5_1(w, xq)),
                GgmlType::Q8_0 => Some(avx2::q8_0(w, xq)),
                GgmlType::Q4_K => Some(avx2::q4_k(w, xq)),
                GgmlType::Q5_K => Some(avx2::q5_k(w, xq)),
                GgmlType::Q6_K => Some(avx2::q6_k(w, xq)),
                _ => None,
            }
        };
    }
    #[cfg(target_arch = "aarch64")]
    {
        let blocks = w.len() / dtype.block_bytes() * (dtype.block_size() / QK);
        assert!(
            xq.iter().all(|x| x.len() >= blocks),
            "activation rows shorter than the weight row"
        );
        neon::dot_rows(dtype, w, xq)
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        let _ = (dtype, w, xq);
        None
    }
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
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let (size, head) = q5_layout(dtype);
                w.chunks_exact(size)
                    .zip(xq)
                    .map(|(b, a)| {
                        let s: i32 = q5_quants(b, head)
                            .iter()
                            .zip(&a.qs)
                            .map(|(&q, &y)| q as i32 * y as i32)
                            .sum();
                        if dtype == GgmlType::Q5_0 {
                            f16_at(b, 0) * (a.d * s as f32 - 16.0 * a.sum)
                        } else {
                            f16_at(b, 0) * a.d * s as f32 + f16_at(b, 2) * a.sum
                        }
                    })
                    .sum()
            }
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
            GgmlType::Q5_K => w
                .chunks_exact(176)
                .zip(xq.chunks_exact(8))
                .map(|(b, a)| {
                    // As Q4_K, so that SIMD and scalar share the integer sums and a.sum.
                    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                    let (qh, qs) = (&b[16..48], &b[48..176]);
                    let mut total = 0f32;
                    for j in 0..8 {
                        let (sc, m) = q4k_scale_min(j, &b[4..16]);
                        let q = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
                        let shift = if j % 2 == 0 { 0 } else { 4 };
                        let s: i32 = q
                            .iter()
                            .zip(qh)
                            .zip(&a[j].qs)
                            .map(|((&q, &h), &y)| {
                                let q5 = ((q >> shift) & 0xF) | (((h >> j) & 1) << 4);
                                q5 as i32 * y as i32
                            })
                            .sum();
                        total += d * sc as f32 * a[j].d * s as f32 - dmin * m as f32 * a[j].sum;
                    }
                    total
                })
                .sum(),
            GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q6_K => {
                let mut w_f = [0f32; 256];
                w.chunks_exact(dtype.block_bytes())
                    .zip(xq.chunks_exact(8))
                    .map(|(b, a)| {
                        // Dequantizing then dotting keeps the reference obviously right.
                        super::super::blocks::dequantize_row(dtype, b, &mut w_f);
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
mod avx2;
#[cfg(target_arch = "aarch64")]
mod neon;

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
                // Q4_0 maps the largest magnitude to −8, so +max rounds to 7/8 of it: a full step.
                GgmlType::Q4_0 => 0.13,
                GgmlType::Q4_1 | GgmlType::Q4_K => 0.1,
                // 2 bits: a step is a third of each 16's range. 3 bits: the largest magnitude
                // maps to −4, so the other sign's +max clamps to 3, a full step of max/4.
                GgmlType::Q2_K => 0.4,
                GgmlType::Q3_K => 0.3,
                GgmlType::Q5_K => 0.05,
                // 5-bit: half of Q4's steps (Q5_0's +max rounds to 15/16 of it).
                GgmlType::Q5_0 => 0.07,
                GgmlType::Q5_1 => 0.05,
            };
            assert!(max_err <= bound, "{dtype}: max error {max_err} > {bound}");
        }
    }

    /// Every dot path (SIMD where present, and scalar) against an f64 dot of the dequantized
    /// weights with the f32 activations. The only error left is the 8-bit activation rounding:
    /// |Δ| ≤ Σ|w|·(d_x/2) ≈ 0.4% of Σ|w·x| scale; we allow 1% of Σ|w|·|x| plus 1e-4.
    #[test]
    fn simd_activation_quantizer_matches_scalar() {
        let x: Vec<f32> = noise(4096, 9)
            .iter()
            .enumerate()
            .map(|(i, v)| v * (1 + i % 7) as f32)
            .collect();
        let mut fast = Vec::new();
        quantize_activations(&x, &mut fast);
        for (b, q) in x.chunks_exact(QK).zip(&fast) {
            let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
            let id = 127.0 / amax;
            let expect: Vec<i8> = b.iter().map(|v| (v * id).round_ties_even() as i8).collect();
            assert_eq!(q.qs.to_vec(), expect);
            assert_eq!(q.d, f16::from_f32(amax / 127.0).to_f32());
        }
    }

    /// The NEON kernels form and sum each block's terms as the scalar code does: same bits.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_kernels_give_the_scalar_bits() {
        let n = 1024;
        for seed in 0..8 {
            let x = noise(n, 400 + seed);
            let mut xq = Vec::new();
            quantize_activations(&x, &mut xq);
            let mut reference = Vec::new();
            for b in x.chunks_exact(QK) {
                let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
                let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
                let qs: Vec<i8> = b.iter().map(|v| (v * id).round_ties_even() as i8).collect();
                reference.push(qs);
            }
            for (q, r) in xq.iter().zip(&reference) {
                assert_eq!(&q.qs[..], &r[..]);
            }
            for dtype in [
                GgmlType::Q4_0,
                GgmlType::Q4_1,
                GgmlType::Q5_0,
                GgmlType::Q5_1,
                GgmlType::Q8_0,
                GgmlType::Q4_K,
                GgmlType::Q5_K,
            ] {
                let bytes = quantize_row(dtype, &noise(n, 500 + seed));
                let [neon] = dot_rows(dtype, &bytes, [&xq[..]]).expect("a NEON kernel");
                let scalar = scalar::dot(dtype, &bytes, &x, &xq);
                assert_eq!(
                    neon.to_bits(),
                    scalar.to_bits(),
                    "{dtype}: {neon} vs {scalar}"
                );
            }
        }
    }

    /// With and without the dot-product extension (`SDOT`) the NEON kernels give the same
    /// bits, for every format with a kernel (Q6_K included) and tiles of 1 and 4 rows.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_sdot_and_plain_kernels_give_the_same_bits() {
        if !neon::has_dotprod() {
            eprintln!("skipped: this CPU has no dot-product extension (SDOT)");
            return;
        }
        let n = 1024;
        let rows: Vec<Vec<Q8Act>> = (0..4)
            .map(|r| {
                let mut q = Vec::new();
                quantize_activations(&noise(n, 700 + r), &mut q);
                q
            })
            .collect();
        let tile = [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]];
        let mut covered = 0;
        for dtype in GgmlType::ALL {
            let bytes = quantize_row(dtype, &noise(n, 800));
            let plain = neon::kernels::<4, false>(dtype, &bytes, tile);
            // SAFETY: the extension was detected above.
            let sdot = unsafe { neon::dot_rows_sdot(dtype, &bytes, tile) };
            let bits = |v: Option<[f32; 4]>| v.map(|r| r.map(f32::to_bits));
            assert_eq!(bits(plain), bits(sdot), "{dtype}");
            let one = neon::kernels::<1, false>(dtype, &bytes, [tile[2]]);
            assert_eq!(
                bits(one.map(|[v]| [v; 4])),
                bits(plain.map(|r| [r[2]; 4])),
                "{dtype}"
            );
            covered += plain.is_some() as usize;
        }
        assert_eq!(
            covered, 8,
            "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K have kernels"
        );
    }

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
                // The 4-row tile must give each row what the single-row path gives.
                let rows: Vec<Vec<Q8Act>> = (0..4)
                    .map(|r| {
                        let mut q = Vec::new();
                        quantize_activations(&noise(n, 300 + seed * 4 + r), &mut q);
                        q
                    })
                    .collect();
                if let Some(tile) = dot_rows(
                    dtype,
                    &bytes,
                    [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]],
                ) {
                    for (r, v) in tile.iter().enumerate() {
                        let one = scalar::dot(dtype, &bytes, &[], &rows[r]);
                        assert!(
                            (v - one).abs() <= 1e-4 * one.abs().max(1.0),
                            "{dtype} tile row {r}: {v} vs {one}"
                        );
                    }
                }
            }
        }
    }
}

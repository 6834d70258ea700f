//! NEON kernels (aarch64, where NEON is always present): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
//! Q5_K and Q6_K dot products, the f32 dot product, and activation quantization. Q2_K and Q3_K
//! use the scalar code (as on x86, where they have no SIMD path either).
//!
//! Each block's integer sum is exact — i8·i8 products, two per i16 lane then widened, or one
//! `SDOT` per 16 lanes where the CPU has the dot-product extension (chosen at run time; most
//! phone cores since 2017 have it) — and, except for Q6_K, the block's float terms are formed
//! and summed in the scalar code's order, so the results are the scalar reference's bits.
//! Q6_K's scalar reference dequantizes first; its kernel sums per 16-quant scale as x86 does.

use std::arch::aarch64::*;
use std::arch::asm;

use half::f16;

use super::{Q8Act, QK};
use crate::quant::GgmlType;
use crate::quant::blocks::{f16_at, q4k_scale_min, q5_layout, q5_quants};

/// Whether this CPU has the dot-product extension (`SDOT`); std caches the answer.
pub fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// One weight row against `T` activation rows, or `None` for the formats without a kernel
/// (F16, BF16, Q2_K, Q3_K). F32 goes through [`f32_dot`].
pub fn dot_rows<const T: usize>(dtype: GgmlType, w: &[u8], xq: [&[Q8Act]; T]) -> Option<[f32; T]> {
    if has_dotprod() {
        // SAFETY: the dot-product extension was detected at run time.
        unsafe { dot_rows_sdot(dtype, w, xq) }
    } else {
        kernels::<T, false>(dtype, w, xq)
    }
}

/// [`kernels`] compiled with the dot-product extension, for [`dot_rows`] and the tests.
///
/// # Safety
/// The CPU must have the dot-product extension ([`has_dotprod`]).
#[target_feature(enable = "dotprod")]
pub unsafe fn dot_rows_sdot<const T: usize>(
    dtype: GgmlType,
    w: &[u8],
    xq: [&[Q8Act]; T],
) -> Option<[f32; T]> {
    kernels::<T, true>(dtype, w, xq)
}

/// Every kernel, with (`SDOT`) or without the dot-product extension.
#[inline(always)]
pub fn kernels<const T: usize, const SDOT: bool>(
    dtype: GgmlType,
    w: &[u8],
    xq: [&[Q8Act]; T],
) -> Option<[f32; T]> {
    Some(match dtype {
        GgmlType::Q4_0 => q4_0::<T, SDOT>(w, xq),
        GgmlType::Q4_1 => q4_1::<T, SDOT>(w, xq),
        GgmlType::Q8_0 => q8_0::<T, SDOT>(w, xq),
        GgmlType::Q5_0 | GgmlType::Q5_1 => q5::<T, SDOT>(dtype, w, xq),
        GgmlType::Q4_K | GgmlType::Q5_K => k_quants::<T, SDOT>(dtype, w, xq),
        GgmlType::Q6_K => q6_k::<T, SDOT>(w, xq),
        _ => return None,
    })
}

/// `acc + Σ a·b` per group of four lanes, one `SDOT` instruction (written as assembly: the
/// intrinsic is not stable Rust yet). Compiled with `dotprod` itself, so the assembler accepts
/// the instruction wherever it lands (unoptimized builds inline nothing); inlined into
/// [`dot_rows_sdot`]'s kernels in optimized ones.
#[target_feature(enable = "dotprod")]
#[inline]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: the caller runs on a CPU with the dot-product extension; registers only.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Σ w·a over 16 lanes, exact: `w` in [-128, 127], `a` in [-127, 127], so two products per
/// i16 lane cannot overflow (the plain NEON way), or one `SDOT`.
#[inline(always)]
unsafe fn dot16<const SDOT: bool>(w: int8x16_t, a: int8x16_t) -> int32x4_t {
    unsafe {
        if SDOT {
            sdot(vdupq_n_s32(0), w, a)
        } else {
            vpaddlq_s16(vmlal_high_s8(
                vmull_s8(vget_low_s8(w), vget_low_s8(a)),
                w,
                a,
            ))
        }
    }
}

/// Σ w·a over 32 lanes: `w0` holds the weights of elements 0–15, `w1` those of 16–31, each
/// in [-128, 127] (nibbles 0–15 included); activations are in [-127, 127].
#[inline(always)]
unsafe fn dot32<const SDOT: bool>(w0: int8x16_t, w1: int8x16_t, a: &Q8Act) -> i32 {
    unsafe {
        let p = a.qs.as_ptr();
        let (a0, a1) = (vld1q_s8(p), vld1q_s8(p.add(16)));
        vaddvq_s32(vaddq_s32(dot16::<SDOT>(w0, a0), dot16::<SDOT>(w1, a1)))
    }
}

/// The 32 nibbles of 16 bytes at `p`: low nibbles (elements 0–15), high nibbles (16–31).
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> (int8x16_t, int8x16_t) {
    unsafe {
        let q = vld1q_u8(p);
        (
            vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0xF))),
            vreinterpretq_s8_u8(vshrq_n_u8::<4>(q)),
        )
    }
}

/// Runs `block(i, t)` (the float term of weight block `i` against row `t`'s activations)
/// over every block, summing in block order as the scalar code does.
#[inline(always)]
fn rows<const T: usize>(n_blocks: usize, block: impl Fn(usize, usize) -> f32) -> [f32; T] {
    // -0.0, as `Iterator::sum` starts: the first term then comes through unchanged.
    let mut out = [-0.0f32; T];
    for i in 0..n_blocks {
        for (t, o) in out.iter_mut().enumerate() {
            *o += block(i, t);
        }
    }
    out
}

/// Q8_0 (34-byte blocks: f16 scale, 32 i8) against `T` activation rows.
#[inline(always)]
fn q8_0<const T: usize, const SDOT: bool>(w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    rows(w.len() / 34, |i, t| {
        let b = &w[i * 34..i * 34 + 34];
        let a = &xq[t][i];
        // SAFETY: NEON is part of aarch64; `b` holds 32 quants after its 2-byte scale.
        let s = unsafe {
            let p = b.as_ptr().add(2) as *const i8;
            dot32::<SDOT>(vld1q_s8(p), vld1q_s8(p.add(16)), a)
        };
        f16_at(b, 0) * a.d * s as f32
    })
}

/// Q4_0 (18-byte blocks: f16 scale, 16 bytes of nibbles offset by 8).
#[inline(always)]
fn q4_0<const T: usize, const SDOT: bool>(w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    rows(w.len() / 18, |i, t| {
        let b = &w[i * 18..i * 18 + 18];
        let a = &xq[t][i];
        // SAFETY: NEON is part of aarch64; `b` holds 16 bytes of nibbles after its scale.
        let s = unsafe {
            let (lo, hi) = nibbles(b.as_ptr().add(2));
            dot32::<SDOT>(lo, hi, a)
        };
        f16_at(b, 0) * (a.d * s as f32 - 8.0 * a.sum)
    })
}

/// Q4_1 (20-byte blocks: f16 scale, f16 minimum, 16 bytes of nibbles).
#[inline(always)]
fn q4_1<const T: usize, const SDOT: bool>(w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    rows(w.len() / 20, |i, t| {
        let b = &w[i * 20..i * 20 + 20];
        let a = &xq[t][i];
        // SAFETY: NEON is part of aarch64; `b` holds 16 bytes of nibbles after its scales.
        let s = unsafe {
            let (lo, hi) = nibbles(b.as_ptr().add(4));
            dot32::<SDOT>(lo, hi, a)
        };
        f16_at(b, 0) * a.d * s as f32 + f16_at(b, 2) * a.sum
    })
}

/// 32 unpacked quants as two signed halves (each byte read as an i8).
#[inline(always)]
unsafe fn halves(q: &[u8; 32]) -> (int8x16_t, int8x16_t) {
    unsafe {
        let p = q.as_ptr() as *const i8;
        (vld1q_s8(p), vld1q_s8(p.add(16)))
    }
}

/// Q5_0 / Q5_1 (`dtype` says which): the 5-bit quants unpacked as the scalar code does them.
#[inline(always)]
fn q5<const T: usize, const SDOT: bool>(dtype: GgmlType, w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    let (size, head) = q5_layout(dtype);
    rows(w.len() / size, |i, t| {
        let b = &w[i * size..(i + 1) * size];
        let a = &xq[t][i];
        let q = q5_quants(b, head);
        // SAFETY: NEON is part of aarch64; `q` has 32 quants below 32.
        let s = unsafe {
            let (lo, hi) = halves(&q);
            dot32::<SDOT>(lo, hi, a)
        };
        if dtype == GgmlType::Q5_0 {
            f16_at(b, 0) * (a.d * s as f32 - 16.0 * a.sum)
        } else {
            f16_at(b, 0) * a.d * s as f32 + f16_at(b, 2) * a.sum
        }
    })
}

/// Q4_K (144-byte super-blocks of 8 × 32) and Q5_K (176 bytes, one more bit per quant):
/// each sub-block's integer sum, then its terms in the scalar code's order.
#[inline(always)]
fn k_quants<const T: usize, const SDOT: bool>(
    dtype: GgmlType,
    w: &[u8],
    xq: [&[Q8Act]; T],
) -> [f32; T] {
    let five = dtype == GgmlType::Q5_K;
    let size = if five { 176 } else { 144 };
    let mut out = [-0.0f32; T];
    for (i, b) in w.chunks_exact(size).enumerate() {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (qh, qs) = if five {
            (&b[16..48], &b[48..176])
        } else {
            (&b[0..0], &b[16..144])
        };
        let mut sums = [[0i32; 8]; T];
        for j in 0..8 {
            let shift = if j % 2 == 0 { 0 } else { 4 };
            let src = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
            let q: [u8; 32] = std::array::from_fn(|k| {
                let low = (src[k] >> shift) & 0xF;
                if five {
                    low | (((qh[k] >> j) & 1) << 4)
                } else {
                    low
                }
            });
            for (t, s) in sums.iter_mut().enumerate() {
                // SAFETY: NEON is part of aarch64; `q` has 32 quants below 32.
                s[j] = unsafe {
                    let (lo, hi) = halves(&q);
                    dot32::<SDOT>(lo, hi, &xq[t][i * 8 + j])
                };
            }
        }
        for (t, o) in out.iter_mut().enumerate() {
            let mut total = 0f32;
            for j in 0..8 {
                let (sc, m) = q4k_scale_min(j, &b[4..16]);
                let a = &xq[t][i * 8 + j];
                total += d * sc as f32 * a.d * sums[t][j] as f32 - dmin * m as f32 * a.sum;
            }
            *o += total;
        }
    }
    out
}

/// Q6_K (210-byte super-blocks: 128 bytes of low nibbles, 64 of high bit pairs, 16 i8 scales,
/// f16 scale), as x86 does it: per 32-quant group, Σ(q−32)·y over each 16-quant half times
/// its scale, then `d · a.d ·` that sum, accumulated in group order.
#[inline(always)]
fn q6_k<const T: usize, const SDOT: bool>(w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    let mut out = [0f32; T];
    for (i, b) in w.chunks_exact(210).enumerate() {
        let d = f16_at(b, 208);
        for h in 0..2 {
            let (ql, qh) = (&b[h * 64..h * 64 + 64], &b[128 + h * 32..128 + h * 32 + 32]);
            let scales = &b[192 + h * 8..192 + h * 8 + 8];
            for k in 0..4 {
                // Group k: low nibbles of ql[0..32] (k = 0) or ql[32..64] (k = 1), high
                // nibbles of the same (k = 2, 3); bits 2k..2k+1 of qh on top.
                let src = &ql[(k % 2) * 32..(k % 2) * 32 + 32];
                let shift = if k < 2 { 0 } else { 4 };
                let q: [u8; 32] = std::array::from_fn(|l| {
                    (((src[l] >> shift) & 0xF) | (((qh[l] >> (2 * k)) & 3) << 4)).wrapping_sub(32)
                });
                let (s0, s1) = (scales[2 * k] as i8 as i32, scales[2 * k + 1] as i8 as i32);
                for (t, o) in out.iter_mut().enumerate() {
                    let a = &xq[t][i * 8 + h * 4 + k];
                    // SAFETY: NEON is part of aarch64; `q` and `a.qs` hold 32 values each,
                    // the quants in [-32, 31].
                    let (lo, hi) = unsafe {
                        let (w0, w1) = halves(&q);
                        let p = a.qs.as_ptr();
                        (
                            vaddvq_s32(dot16::<SDOT>(w0, vld1q_s8(p))),
                            vaddvq_s32(dot16::<SDOT>(w1, vld1q_s8(p.add(16)))),
                        )
                    };
                    *o += d * a.d * (s0 * lo + s1 * hi) as f32;
                }
            }
        }
    }
    out
}

/// Σ w·x for an f32 weight row (little-endian bytes) and f32 activations: four 4-lane
/// accumulators, fused multiply-add, then the tail.
pub fn f32_dot(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len().min(w.len() / 4);
    let (wp, xp) = (w.as_ptr() as *const f32, x.as_ptr());
    let mut i = 0;
    // SAFETY: NEON is part of aarch64; every load reads elements below `n` of `w` (bytes,
    // read unaligned: `vld1q_f32` needs no alignment) and of `x`.
    let mut s = unsafe {
        let mut acc = [vdupq_n_f32(0.0); 4];
        while i + 16 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let j = i + 4 * k;
                *a = vfmaq_f32(*a, vld1q_f32(wp.add(j)), vld1q_f32(xp.add(j)));
            }
            i += 16;
        }
        vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ))
    };
    for j in i..n {
        let c = &w[j * 4..j * 4 + 4];
        s += f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * x[j];
    }
    s
}

/// One activation block, as the scalar path computes it: the largest magnitude, then each
/// value scaled and rounded to nearest, ties to even (`vcvtnq`).
pub fn quantize_block(b: &[f32]) -> Q8Act {
    assert_eq!(b.len(), QK);
    // SAFETY: NEON is part of aarch64; `b` has QK (32) elements, read 4 at a time.
    unsafe {
        let p = b.as_ptr();
        let v: [float32x4_t; 8] = std::array::from_fn(|k| vld1q_f32(p.add(4 * k)));
        let mut m = vabsq_f32(v[0]);
        for x in &v[1..] {
            m = vmaxq_f32(m, vabsq_f32(*x));
        }
        let amax = vmaxvq_f32(m);
        let d = amax / 127.0;
        let id = vdupq_n_f32(if amax > 0.0 { 127.0 / amax } else { 0.0 });
        let mut qs = [0i8; QK];
        let mut sum = 0i32;
        for (k, x) in v.iter().enumerate() {
            let q = vcvtnq_s32_f32(vmulq_f32(*x, id));
            sum += vaddvq_s32(q);
            let mut lanes = [0i32; 4];
            vst1q_s32(lanes.as_mut_ptr(), q);
            for (j, l) in lanes.iter().enumerate() {
                qs[4 * k + j] = *l as i8;
            }
        }
        Q8Act {
            d: f16::from_f32(d).to_f32(),
            sum: f16::from_f32(d * sum as f32).to_f32(),
            qs,
        }
    }
}

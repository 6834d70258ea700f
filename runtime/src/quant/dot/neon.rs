//! NEON kernels (aarch64, where NEON is always present): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K
//! and Q5_K dot products, and activation quantization. Q2_K, Q3_K and Q6_K use the scalar code.
//!
//! Each block's integer sum is exact (i8·i8 products, two per i16 lane, then widened), and the
//! block's float terms are formed and summed in the scalar code's order, so the results are
//! the scalar reference's bits.

use std::arch::aarch64::*;

use half::f16;

use super::{Q8Act, QK};
use crate::quant::GgmlType;
use crate::quant::blocks::{f16_at, q4k_scale_min, q5_layout, q5_quants};

/// Σ w·a over 32 lanes: `w0` holds the weights of elements 0–15, `w1` those of 16–31, each
/// in [-128, 127] (nibbles 0–15 included); activations are in [-127, 127], so two products
/// per i16 lane cannot overflow.
#[inline(always)]
unsafe fn dot32(w0: int8x16_t, w1: int8x16_t, a: &Q8Act) -> i32 {
    unsafe {
        let p = a.qs.as_ptr();
        let (a0, a1) = (vld1q_s8(p), vld1q_s8(p.add(16)));
        let lo = vmlal_high_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(a0)), w0, a0);
        let hi = vmlal_high_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(a1)), w1, a1);
        vaddvq_s32(vaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)))
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
pub fn q8_0<const T: usize>(w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    rows(w.len() / 34, |i, t| {
        let b = &w[i * 34..i * 34 + 34];
        let a = &xq[t][i];
        // SAFETY: NEON is part of aarch64; `b` holds 32 quants after its 2-byte scale.
        let s = unsafe {
            let p = b.as_ptr().add(2) as *const i8;
            dot32(vld1q_s8(p), vld1q_s8(p.add(16)), a)
        };
        f16_at(b, 0) * a.d * s as f32
    })
}

/// Q4_0 (18-byte blocks: f16 scale, 16 bytes of nibbles offset by 8).
pub fn q4_0<const T: usize>(w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    rows(w.len() / 18, |i, t| {
        let b = &w[i * 18..i * 18 + 18];
        let a = &xq[t][i];
        // SAFETY: NEON is part of aarch64; `b` holds 16 bytes of nibbles after its scale.
        let s = unsafe {
            let (lo, hi) = nibbles(b.as_ptr().add(2));
            dot32(lo, hi, a)
        };
        f16_at(b, 0) * (a.d * s as f32 - 8.0 * a.sum)
    })
}

/// Q4_1 (20-byte blocks: f16 scale, f16 minimum, 16 bytes of nibbles).
pub fn q4_1<const T: usize>(w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    rows(w.len() / 20, |i, t| {
        let b = &w[i * 20..i * 20 + 20];
        let a = &xq[t][i];
        // SAFETY: NEON is part of aarch64; `b` holds 16 bytes of nibbles after its scales.
        let s = unsafe {
            let (lo, hi) = nibbles(b.as_ptr().add(4));
            dot32(lo, hi, a)
        };
        f16_at(b, 0) * a.d * s as f32 + f16_at(b, 2) * a.sum
    })
}

/// 32 unpacked quants (each below 128) as two signed halves.
#[inline(always)]
unsafe fn halves(q: &[u8; 32]) -> (int8x16_t, int8x16_t) {
    unsafe {
        let p = q.as_ptr() as *const i8;
        (vld1q_s8(p), vld1q_s8(p.add(16)))
    }
}

/// Q5_0 / Q5_1 (`dtype` says which): the 5-bit quants unpacked as the scalar code does them.
pub fn q5<const T: usize>(dtype: GgmlType, w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    let (size, head) = q5_layout(dtype);
    rows(w.len() / size, |i, t| {
        let b = &w[i * size..(i + 1) * size];
        let a = &xq[t][i];
        let q = q5_quants(b, head);
        // SAFETY: NEON is part of aarch64; `q` has 32 quants below 32.
        let s = unsafe {
            let (lo, hi) = halves(&q);
            dot32(lo, hi, a)
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
pub fn k_quants<const T: usize>(dtype: GgmlType, w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
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
                    dot32(lo, hi, &xq[t][i * 8 + j])
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

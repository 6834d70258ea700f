//! The k-quant layouts beyond Q4_K and Q6_K (ggml's `block_q2_K`, `block_q3_K`,
//! `block_q5_K`): decoding as ggml does, and a round-to-nearest encoder for tests and stores.
//! Every 256-element block walks its elements in two halves of 128, each four runs of 32 that
//! share one byte column of 2-bit (or 4-bit) quants.

use half::f16;

use super::blocks::{f16_at, q4k_scale_min};

/// Q2_K: scales[16] (4-bit scale | 4-bit min << 4), qs[64], f16 d, f16 dmin.
pub(crate) fn dequantize_q2_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (e, out) in y.iter_mut().enumerate().take(256) {
        let sc = b[e / 16];
        let q = (b[16 + (e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        *out = d * (sc & 0xF) as f32 * q as f32 - dmin * (sc >> 4) as f32;
    }
}

/// The signed 6-bit scale of Q3_K sub-block `i` from its 12 packed bytes.
fn q3k_scale(scales: &[u8], i: usize) -> i32 {
    let low = if i < 8 {
        scales[i] & 0xF
    } else {
        scales[i - 8] >> 4
    };
    let high = (scales[8 + i % 4] >> (2 * (i / 4))) & 3;
    (low | (high << 4)) as i32 - 32
}

/// Q3_K: hmask[32], qs[64], scales[12], f16 d; a quant is its 2 low bits minus 4 unless its
/// mask bit is set.
pub(crate) fn dequantize_q3_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 108);
    let (hmask, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
    for (e, out) in y.iter_mut().enumerate().take(256) {
        let (half, run, l) = (e / 128, (e % 128) / 32, e % 32);
        let low = (qs[half * 32 + l] >> (2 * run)) & 3;
        let high = (hmask[l] >> (4 * half + run)) & 1;
        let q = low as i32 - if high == 1 { 0 } else { 4 };
        *out = d * q3k_scale(scales, e / 16) as f32 * q as f32;
    }
}

/// Q5_K: f16 d, f16 dmin, scales[12] (as Q4_K), qh[32], qs[128].
pub(crate) fn dequantize_q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (e, out) in y.iter_mut().enumerate().take(256) {
        let (chunk, w) = (e / 64, e % 64);
        let (sc, m) = q4k_scale_min(e / 32, scales);
        let l = w % 32;
        let nibble = if w < 32 {
            qs[chunk * 32 + l] & 0xF
        } else {
            qs[chunk * 32 + l] >> 4
        };
        let high = (qh[l] >> (2 * chunk + w / 32)) & 1;
        let q = nibble | (high << 4);
        *out = d * sc as f32 * q as f32 - dmin * m as f32;
    }
}

/// Largest value of `values` by magnitude, with its sign.
fn signed_max(values: impl IntoIterator<Item = f32>) -> f32 {
    values
        .into_iter()
        .fold(0f32, |a, v| if v.abs() > a.abs() { v } else { a })
}

/// For each of the `N` sub-blocks of a 256-value block: the step that spans its range (from
/// its minimum, at most 0, to its maximum) in `levels` steps, and that minimum negated.
fn steps_and_mins<const N: usize>(x: &[f32], levels: f32) -> ([f32; N], [f32; N]) {
    let mut step = [0f32; N];
    let mut min = [0f32; N];
    for (j, s) in x.chunks_exact(256 / N).enumerate() {
        let lo = s.iter().copied().fold(0f32, f32::min);
        let hi = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        step[j] = (hi - lo) / levels;
        min[j] = -lo;
    }
    (step, min)
}

/// Round-to-nearest Q2_K block of 256 values.
pub(crate) fn quantize_q2_k(x: &[f32], out: &mut Vec<u8>) {
    let (scale, min) = steps_and_mins::<16>(x, 3.0);
    let d = scale.iter().copied().fold(0f32, f32::max) / 15.0;
    let dmin = min.iter().copied().fold(0f32, f32::max) / 15.0;
    let (d16, dmin16) = (f16::from_f32(d), f16::from_f32(dmin));
    let level = |v: f32, unit: f32| {
        if unit > 0.0 {
            (v / unit).round().clamp(0.0, 15.0) as u8
        } else {
            0
        }
    };
    let packed: [u8; 16] = std::array::from_fn(|j| level(scale[j], d) | (level(min[j], dmin) << 4));
    let mut qs = [0u8; 64];
    for (e, &v) in x.iter().enumerate().take(256) {
        let sc = packed[e / 16];
        let step = d16.to_f32() * (sc & 0xF) as f32;
        let off = dmin16.to_f32() * (sc >> 4) as f32;
        let q = if step > 0.0 {
            ((v + off) / step).round().clamp(0.0, 3.0) as u8
        } else {
            0
        };
        qs[(e / 128) * 32 + e % 32] |= q << (2 * ((e % 128) / 32));
    }
    out.extend(packed);
    out.extend(qs);
    out.extend(d16.to_le_bytes());
    out.extend(dmin16.to_le_bytes());
}

/// Round-to-nearest Q3_K block of 256 values.
pub(crate) fn quantize_q3_k(x: &[f32], out: &mut Vec<u8>) {
    // Each sub-block's largest magnitude maps to −4, the end of the 3-bit range with room.
    let sub: Vec<f32> = x
        .chunks_exact(16)
        .map(|s| signed_max(s.iter().copied()) / -4.0)
        .collect();
    let d = signed_max(sub.iter().copied()) / -32.0;
    let d16 = f16::from_f32(d);
    let sc: Vec<i32> = sub
        .iter()
        .map(|&s| {
            if d != 0.0 {
                (s / d).round().clamp(-32.0, 31.0) as i32
            } else {
                0
            }
        })
        .collect();
    let mut scales = [0u8; 12];
    for (i, &s) in sc.iter().enumerate() {
        let v = (s + 32) as u8;
        if i < 8 {
            scales[i] |= v & 0xF;
        } else {
            scales[i - 8] |= (v & 0xF) << 4;
        }
        scales[8 + i % 4] |= (v >> 4) << (2 * (i / 4));
    }
    let mut hmask = [0u8; 32];
    let mut qs = [0u8; 64];
    for (e, &v) in x.iter().enumerate().take(256) {
        let step = d16.to_f32() * sc[e / 16] as f32;
        let q = if step != 0.0 {
            (v / step).round().clamp(-4.0, 3.0) as i32
        } else {
            0
        } + 4;
        let (half, run, l) = (e / 128, (e % 128) / 32, e % 32);
        qs[half * 32 + l] |= ((q & 3) as u8) << (2 * run);
        if q >= 4 {
            hmask[l] |= 1 << (4 * half + run);
        }
    }
    out.extend(hmask);
    out.extend(qs);
    out.extend(scales);
    out.extend(d16.to_le_bytes());
}

/// Round-to-nearest Q5_K block of 256 values (Q4_K's scales, 5-bit quants).
pub(crate) fn quantize_q5_k(x: &[f32], out: &mut Vec<u8>) {
    let (scale, min) = steps_and_mins::<8>(x, 31.0);
    let d = scale.iter().copied().fold(0f32, f32::max) / 63.0;
    let dmin = min.iter().copied().fold(0f32, f32::max) / 63.0;
    let level = |v: f32, unit: f32| {
        if unit > 0.0 {
            (v / unit).round().clamp(0.0, 63.0) as u8
        } else {
            0
        }
    };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (level(scale[j], d), level(min[j], dmin));
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let (d16, dmin16) = (f16::from_f32(d), f16::from_f32(dmin));
    let mut qh = [0u8; 32];
    let mut qs = [0u8; 128];
    for (e, &v) in x.iter().enumerate().take(256) {
        let (sc, m) = q4k_scale_min(e / 32, &packed);
        let step = d16.to_f32() * sc as f32;
        let off = dmin16.to_f32() * m as f32;
        let q = if step > 0.0 {
            ((v + off) / step).round().clamp(0.0, 31.0) as u8
        } else {
            0
        };
        let (chunk, w) = (e / 64, e % 64);
        let l = w % 32;
        qs[chunk * 32 + l] |= (q & 0xF) << (4 * (w / 32));
        qh[l] |= (q >> 4) << (2 * chunk + w / 32);
    }
    out.extend(d16.to_le_bytes());
    out.extend(dmin16.to_le_bytes());
    out.extend(packed);
    out.extend(qh);
    out.extend(qs);
}

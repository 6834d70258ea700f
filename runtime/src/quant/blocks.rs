//! Scalar block layouts: the reference every SIMD path is tested against.

use half::{bf16, f16};

use super::GgmlType;
use super::more_k;

pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K block, as ggml packs them in 12 bytes.
pub(crate) fn q4k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Block size and the byte offset of the 32 high bits in a Q5_0 / Q5_1 block.
pub(crate) fn q5_layout(dtype: GgmlType) -> (usize, usize) {
    if dtype == GgmlType::Q5_0 {
        (22, 2)
    } else {
        (24, 4)
    }
}

/// The 32 five-bit quants of a Q5_0 / Q5_1 block whose high bits start at byte `head`: low
/// nibbles are elements 0..16, high nibbles 16..32, and bit j of the u32 is element j's bit 4.
pub(crate) fn q5_quants(b: &[u8], head: usize) -> [u8; 32] {
    let qh = u32::from_le_bytes([b[head], b[head + 1], b[head + 2], b[head + 3]]);
    let qs = &b[head + 4..head + 20];
    std::array::from_fn(|j| {
        let nibble = if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 };
        nibble | ((((qh >> j) & 1) as u8) << 4)
    })
}

/// Decodes one row stored as `dtype` into `out` (its length gives the element count).
pub fn dequantize_row(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let n = out.len();
    debug_assert_eq!(Some(bytes.len()), dtype.row_bytes(n));
    match dtype {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for (x, &q) in o.iter_mut().zip(&b[2..]) {
                    *x = d * (q as i8) as f32;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(18)) {
                let d = f16_at(b, 0);
                for (j, &q) in b[2..].iter().enumerate() {
                    o[j] = d * ((q & 0xF) as i32 - 8) as f32;
                    o[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for (j, &q) in b[4..].iter().enumerate() {
                    o[j] = d * (q & 0xF) as f32 + m;
                    o[j + 16] = d * (q >> 4) as f32 + m;
                }
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (size, head) = q5_layout(dtype);
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(size)) {
                let d = f16_at(b, 0);
                // Q5_0 centres its 5-bit quants on 16; Q5_1 adds a stored minimum instead.
                let (offset, min) = if dtype == GgmlType::Q5_0 {
                    (-16.0, 0.0)
                } else {
                    (0.0, f16_at(b, 2))
                };
                let q = q5_quants(b, head);
                for (x, &q) in o.iter_mut().zip(&q) {
                    *x = d * (q as f32 + offset) + min;
                }
            }
        }
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q5_K => {
            let decode = match dtype {
                GgmlType::Q2_K => more_k::dequantize_q2_k,
                GgmlType::Q3_K => more_k::dequantize_q3_k,
                _ => more_k::dequantize_q5_k,
            };
            for (o, b) in out
                .chunks_exact_mut(256)
                .zip(bytes.chunks_exact(dtype.block_bytes()))
            {
                decode(b, o);
            }
        }
        GgmlType::Q4_K => {
            for (o, b) in out.chunks_exact_mut(256).zip(bytes.chunks_exact(144)) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..];
                for chunk in 0..4 {
                    let (s1, m1) = q4k_scale_min(2 * chunk, scales);
                    let (s2, m2) = q4k_scale_min(2 * chunk + 1, scales);
                    let q = &qs[chunk * 32..chunk * 32 + 32];
                    let y = &mut o[chunk * 64..chunk * 64 + 64];
                    for l in 0..32 {
                        y[l] = d * s1 as f32 * (q[l] & 0xF) as f32 - dmin * m1 as f32;
                        y[l + 32] = d * s2 as f32 * (q[l] >> 4) as f32 - dmin * m2 as f32;
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for (o, b) in out.chunks_exact_mut(256).zip(bytes.chunks_exact(210)) {
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let ql = &b[half * 64..half * 64 + 64];
                    let qh = &b[128 + half * 32..128 + half * 32 + 32];
                    let sc = &b[192 + half * 8..192 + half * 8 + 8];
                    let y = &mut o[half * 128..half * 128 + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
    }
}

/// Encodes a row into `dtype`'s block layout (round-to-nearest; used to build test models
/// and stores, not tuned for quality like llama.cpp's quantizer).
pub fn quantize_row(dtype: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dtype.row_bytes(x.len()).unwrap_or(0));
    assert!(
        x.len().is_multiple_of(dtype.block_size()),
        "row length must be whole blocks"
    );
    match dtype {
        GgmlType::F32 => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
        GgmlType::F16 => x
            .iter()
            .for_each(|v| out.extend(f16::from_f32(*v).to_le_bytes())),
        GgmlType::BF16 => x
            .iter()
            .for_each(|v| out.extend(bf16::from_f32(*v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for b in x.chunks_exact(32) {
                let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 => {
            for b in x.chunks_exact(32) {
                // ggml maps the value of largest magnitude to −8 so the full range is used.
                let max = b
                    .iter()
                    .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        GgmlType::Q4_1 => {
            for b in x.chunks_exact(32) {
                let min = b.iter().copied().fold(f32::INFINITY, f32::min);
                let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            for b in x.chunks_exact(32) {
                let q: [u8; 32] = if dtype == GgmlType::Q5_0 {
                    // As ggml: the value of largest magnitude maps to −16.
                    let max = b
                        .iter()
                        .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                    let d = max / -16.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    out.extend(f16::from_f32(d).to_le_bytes());
                    std::array::from_fn(|j| ((b[j] * id + 16.5) as i32).clamp(0, 31) as u8)
                } else {
                    let min = b.iter().copied().fold(f32::INFINITY, f32::min);
                    let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let d = (max - min) / 31.0;
                    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                    out.extend(f16::from_f32(d).to_le_bytes());
                    out.extend(f16::from_f32(min).to_le_bytes());
                    std::array::from_fn(|j| (((b[j] - min) * id + 0.5) as i32).clamp(0, 31) as u8)
                };
                let qh = (0..32).fold(0u32, |h, j| h | (((q[j] >> 4) as u32 & 1) << j));
                out.extend(qh.to_le_bytes());
                out.extend((0..16).map(|j| (q[j] & 0xF) | ((q[j + 16] & 0xF) << 4)));
            }
        }
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q5_K => {
            let encode = match dtype {
                GgmlType::Q2_K => more_k::quantize_q2_k,
                GgmlType::Q3_K => more_k::quantize_q3_k,
                _ => more_k::quantize_q5_k,
            };
            for b in x.chunks_exact(256) {
                encode(b, &mut out);
            }
        }
        GgmlType::Q4_K => {
            for b in x.chunks_exact(256) {
                let mut sub_scale = [0f32; 8];
                let mut sub_min = [0f32; 8];
                for (j, s) in b.chunks_exact(32).enumerate() {
                    let min = s.iter().copied().fold(0f32, f32::min);
                    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    sub_scale[j] = (max - min) / 15.0;
                    sub_min[j] = -min;
                }
                let max_scale = sub_scale.iter().copied().fold(0f32, f32::max);
                let max_min = sub_min.iter().copied().fold(0f32, f32::max);
                let d = max_scale / 63.0;
                let dmin = max_min / 63.0;
                let mut ls = [0u8; 8];
                let mut lm = [0u8; 8];
                for j in 0..8 {
                    ls[j] = if d > 0.0 {
                        (sub_scale[j] / d).round().clamp(0.0, 63.0) as u8
                    } else {
                        0
                    };
                    lm[j] = if dmin > 0.0 {
                        (sub_min[j] / dmin).round().clamp(0.0, 63.0) as u8
                    } else {
                        0
                    };
                }
                let mut scales = [0u8; 12];
                for j in 0..8 {
                    if j < 4 {
                        scales[j] = ls[j];
                        scales[j + 4] = lm[j];
                    } else {
                        scales[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
                        scales[j - 4] |= (ls[j] >> 4) << 6;
                        scales[j] |= (lm[j] >> 4) << 6;
                    }
                }
                let d16 = f16::from_f32(d);
                let dmin16 = f16::from_f32(dmin);
                out.extend(d16.to_le_bytes());
                out.extend(dmin16.to_le_bytes());
                out.extend(scales);
                let mut q = [0u8; 256];
                for j in 0..8 {
                    let (sc, m) = q4k_scale_min(j, &scales);
                    let step = d16.to_f32() * sc as f32;
                    let off = dmin16.to_f32() * m as f32;
                    for l in 0..32 {
                        let v = b[j * 32 + l];
                        q[j * 32 + l] = if step > 0.0 {
                            ((v + off) / step).round().clamp(0.0, 15.0) as u8
                        } else {
                            0
                        };
                    }
                }
                for chunk in 0..4 {
                    for l in 0..32 {
                        out.push(q[chunk * 64 + l] | (q[chunk * 64 + 32 + l] << 4));
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for b in x.chunks_exact(256) {
                let mut sub = [0f32; 16];
                for (j, s) in b.chunks_exact(16).enumerate() {
                    sub[j] = s
                        .iter()
                        .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a })
                        / -32.0;
                }
                let max = sub
                    .iter()
                    .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -128.0;
                let mut sc = [0i8; 16];
                for j in 0..16 {
                    sc[j] = if d != 0.0 {
                        (sub[j] / d).round().clamp(-128.0, 127.0) as i8
                    } else {
                        0
                    };
                }
                let d16 = f16::from_f32(d);
                let mut q = [0u8; 256];
                for j in 0..16 {
                    let step = d16.to_f32() * sc[j] as f32;
                    for l in 0..16 {
                        let v = b[j * 16 + l];
                        q[j * 16 + l] = if step != 0.0 {
                            ((v / step).round() as i32 + 32).clamp(0, 63) as u8
                        } else {
                            32
                        };
                    }
                }
                let mut ql = [0u8; 128];
                let mut qh = [0u8; 64];
                for half in 0..2 {
                    for l in 0..32 {
                        let base = half * 128;
                        let (q1, q2, q3, q4) = (
                            q[base + l],
                            q[base + l + 32],
                            q[base + l + 64],
                            q[base + l + 96],
                        );
                        ql[half * 64 + l] = (q1 & 0xF) | ((q3 & 0xF) << 4);
                        ql[half * 64 + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
                        qh[half * 32 + l] =
                            (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
                    }
                }
                out.extend(ql);
                out.extend(qh);
                out.extend(sc.iter().map(|&s| s as u8));
                out.extend(d16.to_le_bytes());
            }
        }
    }
    out
}

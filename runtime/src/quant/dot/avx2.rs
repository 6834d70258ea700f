//! Kernels generic over `T`, the number of activation rows sharing one pass over the
//! weight row: decoding a block once for several tokens is what makes prefill fast.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::{Q8Act, QK};

pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

#[inline(always)]
unsafe fn fp16(p: *const u8) -> f32 {
    unsafe {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

/// One activation block, as the scalar path computes it, in eight AVX instructions a row.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_block(b: &[f32]) -> Q8Act {
    unsafe {
        let p = b.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for x in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *x));
        }
        let m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
        let r = |x: __m256| {
            _mm256_cvtps_epi32(_mm256_round_ps(
                _mm256_mul_ps(x, id),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            ))
        };
        let i = [r(v[0]), r(v[1]), r(v[2]), r(v[3])];
        let total = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        let t4 = _mm_add_epi32(
            _mm256_extracti128_si256(total, 1),
            _mm256_castsi256_si128(total),
        );
        let t4 = _mm_hadd_epi32(t4, t4);
        let sum = _mm_cvtsi128_si32(_mm_hadd_epi32(t4, t4));
        // packs interleave 128-bit lanes; the permute restores element order.
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(i[0], i[1]),
            _mm256_packs_epi32(i[2], i[3]),
        );
        let ordered =
            _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        let mut qs = [0i8; QK];
        _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, ordered);
        let h = |x: f32| {
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph(
                _mm_set_ss(x),
                _MM_FROUND_TO_NEAREST_INT,
            )))
        };
        Q8Act {
            d: h(d),
            sum: h(d * sum as f32),
            qs,
        }
    }
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

/// Σ u·s over 32 lanes as 8 i32 lanes (u unsigned, pair sums fit i16).
#[inline(always)]
unsafe fn dot_us(u: __m256i, s: __m256i) -> __m256i {
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)) }
}

#[inline(always)]
unsafe fn load_act(a: &Q8Act) -> __m256i {
    unsafe { _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i) }
}

/// Shared body of the 32-element block formats: `block` decodes block `i` into
/// (quant lanes, unsigned-or-signed flag handled by `dot`, scale, offset scale), and two
/// blocks are processed per step so that two independent FMA chains hide latency.
#[inline(always)]
unsafe fn blocks32<const T: usize>(
    n_blocks: usize,
    xq: [&[Q8Act]; T],
    block: impl Fn(usize) -> (__m256i, f32, f32),
    dot: impl Fn(__m256i, __m256i) -> __m256i,
) -> [f32; T] {
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); T]; 2];
        let mut offset = [[0f32; T]; 2];
        let mut i = 0;
        while i < n_blocks {
            let lanes = if i + 1 < n_blocks { 2 } else { 1 };
            for u in 0..lanes {
                let (q, d, m) = block(i + u);
                for t in 0..T {
                    let a = xq[t].get_unchecked(i + u);
                    let p = _mm256_cvtepi32_ps(dot(q, load_act(a)));
                    acc[u][t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), p, acc[u][t]);
                    offset[u][t] += m * a.sum;
                }
            }
            i += 2;
        }
        std::array::from_fn(|t| {
            hsum(_mm256_add_ps(acc[0][t], acc[1][t])) + offset[0][t] + offset[1][t]
        })
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_0<const T: usize>(w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    unsafe {
        let p = w.as_ptr();
        let block = |i: usize| {
            let b = p.add(i * 18);
            let d = fp16(b);
            // (q − 8)·d·y = q·d·y − 8·d·y: the offset term rides on the activation sums.
            (nibbles(b.add(2)), d, -8.0 * d)
        };
        blocks32(w.len() / 18, xq, block, |q, y| dot_us(q, y))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_1<const T: usize>(w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    unsafe {
        let p = w.as_ptr();
        let block = |i: usize| {
            let b = p.add(i * 20);
            (nibbles(b.add(4)), fp16(b), fp16(b.add(2)))
        };
        blocks32(w.len() / 20, xq, block, |q, y| dot_us(q, y))
    }
}

/// 32 bits as 32 u8 lanes holding 0x10 where the bit is set (a Q5 block's bit 4).
#[inline(always)]
unsafe fn high_bits(p: *const u8) -> __m256i {
    unsafe {
        let bits = _mm256_set1_epi32(i32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]));
        // Lane j takes byte j / 8 of the word, then tests bit j % 8.
        let spread = _mm256_shuffle_epi8(
            bits,
            _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
            ),
        );
        let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_0<const T: usize>(w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    unsafe {
        let p = w.as_ptr();
        let block = |i: usize| {
            let b = p.add(i * 22);
            let d = fp16(b);
            let q = _mm256_or_si256(nibbles(b.add(6)), high_bits(b.add(2)));
            (q, d, -16.0 * d)
        };
        blocks32(w.len() / 22, xq, block, |q, y| dot_us(q, y))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_1<const T: usize>(w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    unsafe {
        let p = w.as_ptr();
        let block = |i: usize| {
            let b = p.add(i * 24);
            let q = _mm256_or_si256(nibbles(b.add(8)), high_bits(b.add(4)));
            (q, fp16(b), fp16(b.add(2)))
        };
        blocks32(w.len() / 24, xq, block, |q, y| dot_us(q, y))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0<const T: usize>(w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    unsafe {
        let p = w.as_ptr();
        let block = |i: usize| {
            let b = p.add(i * 34);
            (_mm256_loadu_si256(b.add(2) as *const __m256i), fp16(b), 0.0)
        };
        // Signed × signed via |q| · (y with q's sign).
        blocks32(w.len() / 34, xq, block, |q, y| {
            dot_us(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q))
        })
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_k<const T: usize>(w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    // SAFETY: the caller checked the features and the activation lengths.
    unsafe { k_scaled_nibbles::<T, false>(w, xq) }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_k<const T: usize>(w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    // SAFETY: the caller checked the features and the activation lengths.
    unsafe { k_scaled_nibbles::<T, true>(w, xq) }
}

/// Q4_K (`HIGH` false: d, dmin, 12 scale bytes, 128 nibble bytes) and Q5_K (`HIGH` true:
/// 32 high-bit bytes before the nibbles, bit j of each the fifth bit of sub-block j).
#[inline(always)]
unsafe fn k_scaled_nibbles<const T: usize, const HIGH: bool>(
    w: &[u8],
    xq: [&[Q8Act]; T],
) -> [f32; T] {
    unsafe {
        let (block, quants) = if HIGH { (176, 48) } else { (144, 16) };
        let mut acc = [_mm256_setzero_ps(); T];
        let mut offset = [0f32; T];
        let m4 = _mm256_set1_epi8(0xF);
        let one = _mm256_set1_epi8(1);
        for i in 0..w.len() / block {
            let b = w.as_ptr().add(i * block);
            let (d, dmin) = (fp16(b), fp16(b.add(2)));
            let scales = std::slice::from_raw_parts(b.add(4), 12);
            let qh = if HIGH {
                _mm256_loadu_si256(b.add(16) as *const __m256i)
            } else {
                _mm256_setzero_si256()
            };
            let mut sm = [(0f32, 0f32); 8];
            for (j, e) in sm.iter_mut().enumerate() {
                let (sc, m) = super::q4k_scale_min(j, scales);
                *e = (d * sc as f32, dmin * m as f32);
            }
            for c in 0..4 {
                let q = _mm256_loadu_si256(b.add(quants + c * 32) as *const __m256i);
                let nibbles = [
                    _mm256_and_si256(q, m4),
                    _mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                ];
                for (h, low) in nibbles.into_iter().enumerate() {
                    let j = 2 * c + h;
                    let qv = if HIGH {
                        // Bit j of every high-bit byte, moved to bit 4.
                        let bit = _mm256_and_si256(
                            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(j as i32)),
                            one,
                        );
                        _mm256_or_si256(low, _mm256_slli_epi16(bit, 4))
                    } else {
                        low
                    };
                    for t in 0..T {
                        let a = xq[t].get_unchecked(i * 8 + j);
                        let p = _mm256_cvtepi32_ps(dot_us(qv, load_act(a)));
                        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(sm[j].0 * a.d), p, acc[t]);
                        offset[t] -= sm[j].1 * a.sum;
                    }
                }
            }
        }
        std::array::from_fn(|t| hsum(acc[t]) + offset[t])
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6_k<const T: usize>(w: &[u8], xq: [&[Q8Act]; T]) -> [f32; T] {
    unsafe {
        let mut acc = [_mm256_setzero_ps(); T];
        let m4 = _mm256_set1_epi8(0xF);
        let m2 = _mm256_set1_epi8(3);
        let k32 = _mm256_set1_epi8(32);
        for i in 0..w.len() / 210 {
            let b = w.as_ptr().add(i * 210);
            let d = fp16(b.add(208));
            for h in 0..2 {
                let ql0 = _mm256_loadu_si256(b.add(h * 64) as *const __m256i);
                let ql1 = _mm256_loadu_si256(b.add(h * 64 + 32) as *const __m256i);
                let qh = _mm256_loadu_si256(b.add(128 + h * 32) as *const __m256i);
                let high = |v: __m256i| _mm256_slli_epi16(_mm256_and_si256(v, m2), 4);
                let groups = [
                    _mm256_or_si256(_mm256_and_si256(ql0, m4), high(qh)),
                    _mm256_or_si256(_mm256_and_si256(ql1, m4), high(_mm256_srli_epi16(qh, 2))),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                        high(_mm256_srli_epi16(qh, 4)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                        high(_mm256_srli_epi16(qh, 6)),
                    ),
                ];
                let sc = b.add(192 + h * 8);
                for (k, q) in groups.into_iter().enumerate() {
                    let s0 = *sc.add(2 * k) as i8 as i16;
                    let s1 = *sc.add(2 * k + 1) as i8 as i16;
                    let scales = _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
                    for t in 0..T {
                        let a = xq[t].get_unchecked(i * 8 + h * 4 + k);
                        let y = load_act(a);
                        // Σ(q−32)·y = Σq·y − Σ32·y, each pair-sum fits i16.
                        let diff = _mm256_sub_epi16(
                            _mm256_maddubs_epi16(q, y),
                            _mm256_maddubs_epi16(k32, y),
                        );
                        let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(diff, scales));
                        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), p, acc[t]);
                    }
                }
            }
        }
        std::array::from_fn(|t| hsum(acc[t]))
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

/// out += a·x over f32 slices of equal length.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy_f32(out: &mut [f32], a: f32, x: &[f32]) {
    unsafe {
        let n = out.len().min(x.len());
        let (po, px) = (out.as_mut_ptr(), x.as_ptr());
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_fmadd_ps(av, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(po.add(i)));
            _mm256_storeu_ps(po.add(i), v);
            i += 8;
        }
        while i < n {
            out[i] += a * x[i];
            i += 1;
        }
    }
}

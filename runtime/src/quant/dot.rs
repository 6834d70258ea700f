//! Dot products of one quantized weight row with activations, scalar and AVX2.
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

/// Plain dot product written in 8 lanes so the compiler vectorizes it.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
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
    let _ = (dtype, w, xq);
    None
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
mod avx2 {
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
            let total =
                _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
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

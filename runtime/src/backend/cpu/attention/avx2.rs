//! AVX2 + FMA kernels of one block of queries' attention: the scores against keys laid out
//! transposed (eight keys per vector, so no horizontal sums), and the probability-weighted
//! sum of value rows with the output held in registers.

use std::arch::x86_64::*;

/// Queries per register tile of [`scores`].
const SCORE_ROWS: usize = 4;
/// Queries per register tile of [`weighted_sum`].
const SUM_ROWS: usize = 2;

/// `out[r·width8 + c] = scale · q_r · k_c` for `r < nq`, `c < width8`: query `r` is
/// `q[r·q_stride ..][..hd]`, key `c`'s element `d` is `kt[d·width8 + c]`.
///
/// # Safety
/// AVX2 and FMA must be present; `width8` a multiple of 8; the slices as long as the shapes say.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn scores(
    q: &[f32],
    q_stride: usize,
    nq: usize,
    kt: &[f32],
    width8: usize,
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    assert!(width8.is_multiple_of(8) && kt.len() >= hd * width8 && out.len() >= nq * width8);
    assert!(nq == 0 || q.len() >= (nq - 1) * q_stride + hd);
    let mut r = 0;
    // SAFETY (both calls): the asserts above bound every index the tiles touch.
    while r + SCORE_ROWS <= nq {
        unsafe { score_tile::<SCORE_ROWS>(q, q_stride, r, kt, width8, hd, scale, out) };
        r += SCORE_ROWS;
    }
    while r < nq {
        unsafe { score_tile::<1>(q, q_stride, r, kt, width8, hd, scale, out) };
        r += 1;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn score_tile<const R: usize>(
    q: &[f32],
    q_stride: usize,
    r0: usize,
    kt: &[f32],
    width8: usize,
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    unsafe {
        let (qp, ktp, op) = (q.as_ptr(), kt.as_ptr(), out.as_mut_ptr());
        let sv = _mm256_set1_ps(scale);
        let mut c = 0;
        while c < width8 {
            // Two vectors of keys where there are 16 left, one where there are 8.
            let two = c + 16 <= width8;
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for d in 0..hd {
                let k0 = _mm256_loadu_ps(ktp.add(d * width8 + c));
                let k1 = if two {
                    _mm256_loadu_ps(ktp.add(d * width8 + c + 8))
                } else {
                    _mm256_setzero_ps()
                };
                for (i, a) in acc.iter_mut().enumerate() {
                    let qb = _mm256_broadcast_ss(&*qp.add((r0 + i) * q_stride + d));
                    a[0] = _mm256_fmadd_ps(qb, k0, a[0]);
                    a[1] = _mm256_fmadd_ps(qb, k1, a[1]);
                }
            }
            for (i, a) in acc.iter().enumerate() {
                let row = op.add((r0 + i) * width8 + c);
                _mm256_storeu_ps(row, _mm256_mul_ps(a[0], sv));
                if two {
                    _mm256_storeu_ps(row.add(8), _mm256_mul_ps(a[1], sv));
                }
            }
            c += if two { 16 } else { 8 };
        }
    }
}

/// `out[r·hd + d] = Σ_c p[r·p_stride + c] · v[c·v_stride + d]` for `r < nq`, `c < width`,
/// `d < hd`.
///
/// # Safety
/// AVX2 and FMA must be present; `hd` a multiple of 8; the slices as long as the shapes say.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn weighted_sum(
    p: &[f32],
    p_stride: usize,
    nq: usize,
    v: &[f32],
    v_stride: usize,
    width: usize,
    hd: usize,
    out: &mut [f32],
) {
    assert!(hd.is_multiple_of(8) && out.len() >= nq * hd);
    assert!(nq == 0 || p.len() >= (nq - 1) * p_stride + width);
    assert!(width == 0 || v.len() >= (width - 1) * v_stride + hd);
    let mut r = 0;
    // SAFETY (every call): the asserts above bound every index the tiles touch.
    while r < nq {
        let rows = if r + SUM_ROWS <= nq { SUM_ROWS } else { 1 };
        let mut d = 0;
        while d < hd {
            let wide = d + 32 <= hd;
            match (rows, wide) {
                (SUM_ROWS, true) => unsafe {
                    sum_tile::<SUM_ROWS, 4>(p, p_stride, r, v, v_stride, width, d, hd, out)
                },
                (SUM_ROWS, false) => unsafe {
                    sum_tile::<SUM_ROWS, 1>(p, p_stride, r, v, v_stride, width, d, hd, out)
                },
                (_, true) => unsafe { sum_tile::<1, 4>(p, p_stride, r, v, v_stride, width, d, hd, out) },
                (_, false) => unsafe { sum_tile::<1, 1>(p, p_stride, r, v, v_stride, width, d, hd, out) },
            }
            d += if wide { 32 } else { 8 };
        }
        r += rows;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn sum_tile<const R: usize, const DV: usize>(
    p: &[f32],
    p_stride: usize,
    r0: usize,
    v: &[f32],
    v_stride: usize,
    width: usize,
    d0: usize,
    hd: usize,
    out: &mut [f32],
) {
    unsafe {
        let (pp, vp, op) = (p.as_ptr(), v.as_ptr(), out.as_mut_ptr());
        let mut acc = [[_mm256_setzero_ps(); DV]; R];
        for c in 0..width {
            let mut vv = [_mm256_setzero_ps(); DV];
            for (u, x) in vv.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(vp.add(c * v_stride + d0 + 8 * u));
            }
            for (i, a) in acc.iter_mut().enumerate() {
                let pb = _mm256_broadcast_ss(&*pp.add((r0 + i) * p_stride + c));
                for (x, y) in a.iter_mut().zip(&vv) {
                    *x = _mm256_fmadd_ps(pb, *y, *x);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (u, x) in a.iter().enumerate() {
                _mm256_storeu_ps(op.add((r0 + i) * hd + d0 + 8 * u), *x);
            }
        }
    }
}

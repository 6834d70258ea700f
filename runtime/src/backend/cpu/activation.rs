//! The gated FFN's activation over whole rows. SiLU runs through a polynomial `exp` the
//! compiler widens to 8 lanes (AVX2 + FMA, chosen at run time) or 4 (NEON) instead of libm's
//! scalar `exp` per element (46,080 per token on the default model).

use crate::backend::Activation;

/// √(2/π), GELU's tanh approximation constant.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic term's coefficient in GELU's tanh approximation.
const GELU_CUBIC: f32 = 0.044_715;

/// eˣ for every finite x within about 2 ulp (Cephes' `expf`: x = n·ln 2 + r, |r| ≤ ln2/2, a
/// degree-6 polynomial for eʳ, 2ⁿ put in the exponent bits), branch-free so loops over it
/// vectorize. Below −87.3 it gives about 1e-38 rather than 0; above 88.3, about 2e38.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so n·LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // n lies in −126..=127 after the clamp: a normal float's exponent.
    let scale = f32::from_bits((((n as i32) + 127) as u32) << 23);
    er * scale
}

/// SiLU: g·σ(g).
#[inline(always)]
fn silu(g: f32) -> f32 {
    g / (1.0 + exp(-g))
}

/// GELU in its tanh form through libm's `tanh`, as the backward's derivative has it. Tried
/// through the polynomial `exp` (as 1 − 2/(1 + e²ᵘ), or as g·σ(2u)) and as ggml's f16 table:
/// each moved Gemma 3's logits against llama.cpp's about as much as llama.cpp's own f16 and
/// f32 caches differ, past the oracle test's count of near ties in one form or its
/// perplexity margin in another, so Gemma keeps the form measured before.
#[inline(always)]
fn gelu(g: f32) -> f32 {
    let inner = SQRT_2_OVER_PI * (g + GELU_CUBIC * g * g * g);
    0.5 * g * (1.0 + inner.tanh())
}

/// `out[i] = act(gate[i]) · up[i]` for one row.
pub(super) fn glu_row(act: Activation, gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[inline(always)]
    fn body(act: Activation, gate: &[f32], up: &[f32], out: &mut [f32]) {
        // One straight-line loop per activation, so LLVM can widen each.
        match act {
            Activation::Silu => {
                for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                    *o = silu(g) * u;
                }
            }
            Activation::GeluTanh => {
                for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                    *o = gelu(g) * u;
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn wide(act: Activation, gate: &[f32], up: &[f32], out: &mut [f32]) {
            body(act, gate, up, out)
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: both features were detected at run time.
            return unsafe { wide(act, gate, up, out) };
        }
    }
    body(act, gate, up, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polynomial exp is within 3e-7 (relative) of f64's over the range activations use,
    /// and saturates instead of giving NaN or infinity outside it.
    #[test]
    fn exp_matches_f64_within_a_few_ulp() {
        let mut worst = 0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 3e-7, "exp off by {worst:e} (relative)");
        for x in [-1e30f32, -200.0, 200.0, 1e30, f32::MIN, f32::MAX] {
            let e = exp(x);
            assert!(e.is_finite() && e >= 0.0, "exp({x}) = {e}");
        }
        assert!(exp(-1e30) < 1e-37 && exp(1e30) > 1e38);
    }

    /// SiLU and GELU over a row (the vectorized path where the CPU has one) agree with the
    /// textbook formulas in f64, including far out where they saturate.
    #[test]
    fn activations_match_their_formulas() {
        let gate: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.01).chain([-1e4, 1e4, 0.0]).collect();
        let up: Vec<f32> = gate.iter().map(|g| 1.0 + 0.1 * g.sin()).collect();
        let mut out = vec![0f32; gate.len()];
        for act in [Activation::Silu, Activation::GeluTanh] {
            glu_row(act, &gate, &up, &mut out);
            for ((&g, &u), &o) in gate.iter().zip(&up).zip(&out) {
                let g64 = g as f64;
                let a = match act {
                    Activation::Silu => g64 / (1.0 + (-g64).exp()),
                    Activation::GeluTanh => {
                        let inner = (2.0 / std::f64::consts::PI).sqrt()
                            * (g64 + 0.044715 * g64 * g64 * g64);
                        0.5 * g64 * (1.0 + inner.tanh())
                    }
                };
                let want = a * u as f64;
                let err = (o as f64 - want).abs();
                let tolerance = match act {
                    Activation::Silu => 1e-6 * (1.0 + want.abs()),
                    Activation::GeluTanh => 1e-6 * (1.0 + g64.abs()),
                };
                assert!(err <= tolerance, "{act:?}({g}) · {u} = {o}, want {want}");
            }
        }
    }
}

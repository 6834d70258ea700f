//! Choosing the next token from logits, as llama.cpp users know it: penalties over a window of
//! recent tokens (repetition, presence, frequency), then top-k, temperature, top-p and min-p.

use crate::backend::argmax;
use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Clone, Debug)]
pub struct SamplingConfig {
    /// 0 means greedy (argmax); higher values flatten the distribution.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0 = all).
    pub top_p: f32,
    /// Divides positive / multiplies negative logits of recently seen tokens (1.0 = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition, presence and frequency penalties look at.
    pub repeat_last_n: usize,
    /// Subtracted from the logit of every token seen in the window (0 = off).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was seen in the window (0 = off).
    pub frequency_penalty: f32,
    /// Drops tokens less likely than `min_p` times the most likely one (0 = off).
    pub min_p: f32,
    /// Seed of the random generator; the same seed gives the same text.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            min_p: 0.0,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding: the most likely token every time (what `ask` uses).
    pub fn greedy() -> Self {
        SamplingConfig::default()
    }

    /// Chat defaults in llama.cpp's spirit: temperature 0.7, top-k 40, top-p 0.95, min-p 0.05
    /// and a mild repetition penalty (1.1 over the last 64 tokens).
    pub fn chat() -> Self {
        SamplingConfig {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            min_p: 0.05,
            seed: 0,
        }
    }

    /// Whether the choice is the plain argmax of the logits (no temperature, no penalties),
    /// which a device can make without sending the logits back.
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature <= 0.0
            && self.repeat_penalty == 1.0
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
    }
}

impl SamplingConfig {
    /// Refuses values that make no sense before any work starts.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "temperature {} must be ≥ 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "top-p {} must be in (0, 1]",
                self.top_p
            )));
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return Err(Error::InvalidArgument(format!(
                "min-p {} must be in [0, 1)",
                self.min_p
            )));
        }
        for (name, v) in [
            ("presence penalty", self.presence_penalty),
            ("frequency penalty", self.frequency_penalty),
        ] {
            if !v.is_finite() {
                return Err(Error::InvalidArgument(format!("{name} {v} must be finite")));
            }
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return Err(Error::InvalidArgument(format!(
                "repeat penalty {} must be > 0",
                self.repeat_penalty
            )));
        }
        Ok(())
    }
}

/// A sampler with its own random state.
pub struct Sampler {
    config: SamplingConfig,
    rng: u64,
}

impl Sampler {
    /// A sampler seeded from `config.seed`.
    pub fn new(config: SamplingConfig) -> Self {
        let rng = config.seed ^ 0x9E37_79B9_7F4A_7C15;
        Sampler { config, rng }
    }

    /// SplitMix64: tiny, seedable, good enough for sampling.
    fn next_f32(&mut self) -> f32 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Picks the next token; `history` feeds the repetition penalty.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let c = &self.config;
        let start = history.len().saturating_sub(c.repeat_last_n);
        let penalized =
            c.repeat_penalty != 1.0 || c.presence_penalty != 0.0 || c.frequency_penalty != 0.0;
        if penalized {
            let mut seen: Vec<u32> = history[start..].to_vec();
            seen.sort_unstable();
            for run in seen.chunk_by(|a, b| a == b) {
                let Some(l) = logits.get_mut(run[0] as usize) else {
                    continue;
                };
                if c.repeat_penalty != 1.0 {
                    *l = if *l > 0.0 {
                        *l / c.repeat_penalty
                    } else {
                        *l * c.repeat_penalty
                    };
                }
                *l -= c.presence_penalty + c.frequency_penalty * run.len() as f32;
            }
        }
        if c.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if c.top_k > 0 {
            cand.truncate(c.top_k);
        }
        let max = cand[0].1;
        let mut sum = 0f32;
        for e in cand.iter_mut() {
            e.1 = ((e.1 - max) / c.temperature).exp();
            sum += e.1;
        }
        let mut cum = 0f32;
        let mut keep = cand.len();
        for (i, e) in cand.iter_mut().enumerate() {
            e.1 /= sum;
            cum += e.1;
            if cum >= c.top_p {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep);
        if c.min_p > 0.0 {
            // cand is sorted best first, so cand[0] holds the largest probability.
            let floor = c.min_p * cand[0].1;
            cand.retain(|e| e.1 >= floor);
        }
        let total: f32 = cand.iter().map(|e| e.1).sum();
        let mut r = self.next_f32() * total;
        for &(t, p) in &cand {
            if r < p {
                return t;
            }
            r -= p;
        }
        cand[cand.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax_and_penalty_can_change_it() {
        let mut s = Sampler::new(SamplingConfig::default());
        assert_eq!(s.sample(&mut [0.1, 2.0, 1.9], &[]), 1);
        let mut s = Sampler::new(SamplingConfig {
            repeat_penalty: 1.5,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [0.1, 2.0, 1.9], &[1]), 2);
    }

    #[test]
    fn same_seed_same_choices_and_top_k_restricts() {
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 42,
            ..Default::default()
        };
        let logits = [1.0f32, 0.9, 0.8, 5.0, 4.9];
        let run = |cfg: &SamplingConfig| {
            let mut s = Sampler::new(cfg.clone());
            (0..200)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        let a = run(&cfg);
        assert_eq!(a, run(&cfg));
        assert!(
            a.iter().all(|&t| t == 3 || t == 4),
            "top-k 2 must only pick the two best"
        );
        assert!(
            a.contains(&3) && a.contains(&4),
            "temperature 1 must pick both"
        );
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg);
        for _ in 0..100 {
            assert_eq!(s.sample(&mut [10.0, 0.0, 0.0, 0.0], &[]), 0);
        }
    }

    #[test]
    fn min_p_drops_tokens_far_below_the_best() {
        // p ∝ e^0, e^-1, e^-5: with min-p 0.2 only the first two stay (e^-1 ≈ 0.37 of the best).
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.2,
            seed: 3,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg);
        let mut seen = [0usize; 3];
        for _ in 0..2000 {
            seen[s.sample(&mut [0.0, -1.0, -5.0], &[]) as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
        assert_eq!(seen[2], 0, "{seen:?}");
    }

    #[test]
    fn presence_and_frequency_penalties_act_on_the_window_only() {
        let greedy = |presence, frequency, history: &[u32]| {
            let mut s = Sampler::new(SamplingConfig {
                presence_penalty: presence,
                frequency_penalty: frequency,
                repeat_last_n: 3,
                ..Default::default()
            });
            s.sample(&mut [2.0, 1.5, 0.0], history)
        };
        assert_eq!(greedy(0.0, 0.0, &[0, 0]), 0);
        // Seen once: presence 1 takes token 0 from 2.0 to 1.0, below token 1.
        assert_eq!(greedy(1.0, 0.0, &[0]), 1);
        // Frequency counts: twice seen at 0.3 each costs 0.6, once would cost only 0.3.
        assert_eq!(greedy(0.0, 0.3, &[0, 0]), 1);
        assert_eq!(greedy(0.0, 0.3, &[0]), 0);
        // Outside the window of 3 the token is not penalized.
        assert_eq!(greedy(1.0, 0.0, &[0, 2, 2, 2]), 0);
        assert!(
            !SamplingConfig {
                presence_penalty: 1.0,
                ..Default::default()
            }
            .is_plain_greedy()
        );
    }

    #[test]
    fn invalid_values_are_refused() {
        assert!(
            SamplingConfig {
                min_p: 1.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplingConfig {
                temperature: f32::NAN,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplingConfig {
                top_p: 0.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplingConfig {
                repeat_penalty: -1.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}

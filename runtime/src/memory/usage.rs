//! How evenly a memory's slots are used: the retrofit's quality measure.

/// Summary of per-slot access counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlotUsage {
    /// Slots in the memory.
    pub slots: usize,
    /// Slots accessed at least once.
    pub touched: usize,
    /// All accesses.
    pub accesses: f64,
    /// Shannon entropy of the access distribution, in nats.
    pub entropy: f64,
    /// Entropy divided by ln(slots): 1 means perfectly even use.
    pub normalized_entropy: f64,
    /// Share of all accesses taken by the busiest 1% of slots.
    pub busiest_1pct_share: f64,
    /// Accesses of the busiest slot.
    pub max_count: f64,
}

impl SlotUsage {
    /// Statistics of `counts` (one entry per slot).
    pub fn from_counts(counts: &[f32]) -> Self {
        let slots = counts.len();
        let accesses: f64 = counts.iter().map(|&c| c as f64).sum();
        let touched = counts.iter().filter(|&&c| c > 0.0).count();
        let entropy = if accesses > 0.0 {
            -counts
                .iter()
                .filter(|&&c| c > 0.0)
                .map(|&c| {
                    let p = c as f64 / accesses;
                    p * p.ln()
                })
                .sum::<f64>()
        } else {
            0.0
        };
        let mut sorted: Vec<f32> = counts.to_vec();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let top = slots.div_ceil(100);
        let top_sum: f64 = sorted.iter().take(top).map(|&c| c as f64).sum();
        SlotUsage {
            slots,
            touched,
            accesses,
            entropy,
            normalized_entropy: if slots > 1 {
                entropy / (slots as f64).ln()
            } else {
                0.0
            },
            busiest_1pct_share: if accesses > 0.0 {
                top_sum / accesses
            } else {
                0.0
            },
            max_count: sorted.first().map_or(0.0, |&c| c as f64),
        }
    }

    /// Fraction of slots accessed at least once.
    pub fn touched_fraction(&self) -> f64 {
        self.touched as f64 / self.slots.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_use_is_full_entropy_and_one_percent_share() {
        let u = SlotUsage::from_counts(&[3.0; 1000]);
        assert_eq!(u.touched, 1000);
        assert!((u.normalized_entropy - 1.0).abs() < 1e-12);
        assert!((u.busiest_1pct_share - 0.01).abs() < 1e-12);
    }

    #[test]
    fn one_hot_use_is_zero_entropy() {
        let mut c = vec![0.0; 200];
        c[7] = 50.0;
        let u = SlotUsage::from_counts(&c);
        assert_eq!((u.touched, u.entropy, u.busiest_1pct_share), (1, 0.0, 1.0));
        assert_eq!(u.max_count, 50.0);
    }
}

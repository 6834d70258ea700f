//! Which value rows a learning batch may change: the slots it uses much more than the
//! background does (TF-IDF or KL), so rows that general text relies on stay untouched.

use std::collections::HashMap;

use super::params::BackgroundStats;
use crate::backend::product_keys::top_k_of;

/// How slots are ranked for a learning batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlotScoring {
    /// c(i)/Σc · ln((B+1)/(df(i)+1)).
    #[default]
    TfIdf,
    /// p(i) · ln((p(i)+ε)/(p_bg(i)+ε)), p_bg(i) = (bg(i)+1)/Σ(bg+1).
    Kl,
    /// Every slot the batch touched (no selection; the ablation baseline).
    AllTouched,
}

/// ε in the KL score.
const KL_EPS: f64 = 1e-10;

/// Accesses per slot over a batch's picks (all non-padding tokens, heads and top-k picks).
pub fn count_accesses(picks: &[u32]) -> HashMap<u32, f64> {
    let mut c = HashMap::new();
    for &s in picks {
        *c.entry(s).or_insert(0.0) += 1.0;
    }
    c
}

/// The `t` best slots of a batch by `scoring` (best first; ties go to the smaller slot id).
pub fn select_slots(
    counts: &HashMap<u32, f64>,
    background: &BackgroundStats,
    background_batches: u64,
    scoring: SlotScoring,
    t: usize,
) -> Vec<u32> {
    let total: f64 = counts.values().sum();
    if total == 0.0 || t == 0 {
        return Vec::new();
    }
    if scoring == SlotScoring::AllTouched {
        let mut all: Vec<u32> = counts.keys().copied().collect();
        all.sort_unstable();
        return all;
    }
    let b = background_batches as f64;
    let bg_total: f64 = background.count.iter().map(|&c| c as f64 + 1.0).sum();
    let mut scored: Vec<(f32, u32)> = counts
        .iter()
        .map(|(&slot, &c)| {
            let p = c / total;
            let i = slot as usize;
            let score = match scoring {
                SlotScoring::TfIdf => {
                    let df = background.df.get(i).copied().unwrap_or(0.0) as f64;
                    p * ((b + 1.0) / (df + 1.0)).ln()
                }
                _ => {
                    let bg = background.count.get(i).copied().unwrap_or(0.0) as f64;
                    let p_bg = (bg + 1.0) / bg_total;
                    p * ((p + KL_EPS) / (p_bg + KL_EPS)).ln()
                }
            };
            (score as f32, slot)
        })
        .collect();
    top_k_of(&mut scored, t);
    scored.into_iter().map(|(_, s)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn background() -> BackgroundStats {
        // Slot 0 is used by every background batch, slot 1 by none, slot 2 by a few.
        BackgroundStats {
            count: vec![1000.0, 0.0, 5.0, 0.0],
            df: vec![100.0, 0.0, 3.0, 0.0],
            sample: Default::default(),
        }
    }

    #[test]
    fn rare_background_slots_win() {
        let counts = count_accesses(&[0, 0, 0, 1, 1, 2, 2, 3]);
        for scoring in [SlotScoring::TfIdf, SlotScoring::Kl] {
            let picked = select_slots(&counts, &background(), 100, scoring, 2);
            assert_eq!(picked, vec![1, 2], "{scoring:?}");
        }
        let all = select_slots(&counts, &background(), 100, SlotScoring::AllTouched, 2);
        assert_eq!(all, vec![0, 1, 2, 3]);
    }

    #[test]
    fn tf_idf_formula() {
        let counts = count_accesses(&[2, 2, 3]);
        let s = select_slots(&counts, &background(), 100, SlotScoring::TfIdf, 1);
        // slot 2: 2/3·ln(101/4) = 2.153; slot 3: 1/3·ln(101) = 1.538.
        assert_eq!(s, vec![2]);
    }
}

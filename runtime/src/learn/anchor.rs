//! Holding the memory's output where general text reads it while a fact is learned.
//!
//! The store keeps what the lookup read at a sample of background tokens. After every
//! optimizer step the selected rows are moved to the values V that minimize
//!
//! ½ Σ_j ‖V_j − V_step,j‖² + (κ/2) Σ_t ‖out_t‖²,   out_t = Σ_reads w_t,s · v_s,
//!
//! a proximal step on "the memory adds nothing at background tokens" (values start at zero,
//! so that is what the base model computed). Rows read at the same background token can
//! cancel each other there while still adding up where the fact reads them with other
//! weights, which selection alone cannot do: on 25-fact probes it took retention of known
//! answers from 60 % to 90 % at equal learning.
//!
//! Only the selected rows that some sampled token reads are coupled; the normal equations
//! (I + κ AᵀA) V = V_step − κ Aᵀ O, with A the sampled tokens' weights on those rows and O
//! their output from all other rows, are factored once per fact (Cholesky) and inverted,
//! and the inverse is applied to every value column after each step.

use std::collections::HashMap;

use crate::memory::BackgroundSample;

/// Sampled tokens whose other rows' values are on the host at once while the anchor is
/// built (64 × 128 reads × 576 floats: 19 MB at most on the default model; all tokens at
/// once took 140 MiB of peak memory).
const ANCHOR_TOKENS_PER_FETCH: usize = 64;

/// A sampled token's reads of the fact's coupled rows (coupled index, weight) and of all
/// other slots (slot, weight).
type SampledToken = (Vec<(usize, f64)>, Vec<(u32, f64)>);

/// The proximal step of one fact's selected rows, solved once per fact.
pub struct BackgroundAnchor {
    /// Positions (in the fact's sorted rows) of the rows some sampled token reads.
    coupled: Vec<usize>,
    /// (I + κ AᵀA)⁻¹ over the coupled rows, row-major: applied after every step as one
    /// matrix product, several times faster than two triangular solves of the same size.
    inverse: Vec<f64>,
    /// κ Aᵀ O: what the other rows' output at the sampled tokens pulls each coupled row by.
    pull: Vec<f64>,
    /// Value width.
    dim: usize,
}

impl BackgroundAnchor {
    /// The anchor for `rows` (a fact's sorted selected rows), or `None` when no sampled token
    /// reads any of them. `reads` is heads·top_k; `strength` is κ per sampled token;
    /// `values_of(ids)` returns the current values of slots `ids` (ids × `dim`).
    pub fn new(
        sample: &BackgroundSample,
        reads: usize,
        rows: &[u32],
        strength: f32,
        dim: usize,
        values_of: &mut dyn FnMut(&[u32]) -> crate::error::Result<Vec<f32>>,
    ) -> crate::error::Result<Option<Self>> {
        Self::keeping(
            sample,
            &BackgroundSample::default(),
            reads,
            rows,
            (strength, 0.0),
            dim,
            &|_| true,
            values_of,
        )
    }

    /// [`Self::new`], and also holds the memory's output at the `kept` tokens (earlier
    /// facts' reads) where it is now: (μ/2) Σ_t ‖out_t − out_t now‖² joins the objective.
    /// `strengths` is (κ, μ). `may_be_nonzero(slot)` is false only for value rows that are
    /// all zeros: they add nothing to the background's output, so they are never fetched
    /// (a fresh memory is all zeros; without it most of a fact's anchor setup was fetching
    /// such rows).
    #[allow(clippy::too_many_arguments)]
    pub fn keeping(
        sample: &BackgroundSample,
        kept: &BackgroundSample,
        reads: usize,
        rows: &[u32],
        strengths: (f32, f32),
        dim: usize,
        may_be_nonzero: &dyn Fn(u32) -> bool,
        values_of: &mut dyn FnMut(&[u32]) -> crate::error::Result<Vec<f32>>,
    ) -> crate::error::Result<Option<Self>> {
        let (strength, keep) = strengths;
        let keep = if kept.is_empty() { 0.0 } else { keep };
        if (sample.is_empty() || strength <= 0.0) && keep <= 0.0 || rows.is_empty() || reads == 0 {
            return Ok(None);
        }
        // A dense table, not a hash map: every read of every sampled and kept token is
        // looked up here (up to 65,536 kept tokens × 128 reads per fact).
        let mut dense = vec![usize::MAX; rows.iter().max().map_or(0, |&m| m as usize + 1)];
        for (i, &r) in rows.iter().enumerate() {
            dense[r as usize] = i;
        }
        let position = |s: &u32| dense.get(*s as usize).copied().filter(|&p| p != usize::MAX);
        // Per sampled token that reads a selected row: its reads of selected rows (as
        // coupled indices) and of the other rows.
        let mut coupled_of: HashMap<usize, usize> = HashMap::new();
        let mut coupled = Vec::new();
        let mut tokens: Vec<SampledToken> = Vec::new();
        let n = if strength > 0.0 {
            sample.tokens(reads)
        } else {
            0
        };
        for t in 0..n {
            let span = t * reads..(t + 1) * reads;
            let (ids, ws) = (&sample.slots[span.clone()], &sample.weights[span]);
            if !ids.iter().any(|s| position(s).is_some()) {
                continue;
            }
            let (mut mine, mut others) = (Vec::new(), Vec::new());
            for (&s, &w) in ids.iter().zip(ws) {
                match position(&s) {
                    Some(p) => {
                        let c = *coupled_of.entry(p).or_insert_with(|| {
                            coupled.push(p);
                            coupled.len() - 1
                        });
                        mine.push((c, f64::from(w)));
                    }
                    None if may_be_nonzero(s) => others.push((s, f64::from(w))),
                    None => {}
                }
            }
            tokens.push((mine, others));
        }
        // Earlier facts' tokens: only their reads of the selected rows matter, since the
        // change of their output is A (V − V_now).
        let mut kept_tokens: Vec<Vec<(usize, f64)>> = Vec::new();
        if keep > 0.0 {
            for t in 0..kept.tokens(reads) {
                let span = t * reads..(t + 1) * reads;
                let mine: Vec<(usize, f64)> = kept.slots[span.clone()]
                    .iter()
                    .zip(&kept.weights[span])
                    .filter_map(|(s, &w)| {
                        let p = position(s)?;
                        let c = *coupled_of.entry(p).or_insert_with(|| {
                            coupled.push(p);
                            coupled.len() - 1
                        });
                        Some((c, f64::from(w)))
                    })
                    .collect();
                if !mine.is_empty() {
                    kept_tokens.push(mine);
                }
            }
        }
        if coupled.is_empty() {
            return Ok(None);
        }
        let kappa = f64::from(strength);
        let mu = f64::from(keep);
        let r = coupled.len();

        // The other rows' output at each token, then κ Aᵀ O; their values are fetched a
        // few tokens at a time, so the host never holds all of them at once.
        let mut pull = vec![0f64; r * dim];
        let mut out = vec![0f64; dim];
        for chunk in tokens.chunks(ANCHOR_TOKENS_PER_FETCH) {
            let mut other_ids: Vec<u32> = chunk
                .iter()
                .flat_map(|(_, o)| o.iter().map(|&(s, _)| s))
                .collect();
            other_ids.sort_unstable();
            other_ids.dedup();
            let other_values = values_of(&other_ids)?;
            for (mine, others) in chunk {
                out.iter_mut().for_each(|x| *x = 0.0);
                for &(s, w) in others {
                    // Present: other_ids holds every slot of this chunk's tokens.
                    let i = other_ids.binary_search(&s).unwrap_or_default();
                    let v = &other_values[i * dim..(i + 1) * dim];
                    out.iter_mut()
                        .zip(v)
                        .for_each(|(o, &x)| *o += w * f64::from(x));
                }
                if out.iter().all(|&x| x == 0.0) {
                    continue;
                }
                for &(c, w) in mine {
                    pull[c * dim..(c + 1) * dim]
                        .iter_mut()
                        .zip(&out)
                        .for_each(|(p, o)| *p += kappa * w * o);
                }
            }
        }

        // I + κ AᵀA, factored in place.
        let mut m = vec![0f64; r * r];
        for j in 0..r {
            m[j * r + j] = 1.0;
        }
        for (mine, _) in &tokens {
            for &(a, wa) in mine {
                for &(b, wb) in mine {
                    m[a * r + b] += kappa * wa * wb;
                }
            }
        }
        if !kept_tokens.is_empty() {
            // μ AᵀA V_now enters the right-hand side: pull −= μ AᵀA V_now.
            let ids: Vec<u32> = coupled.iter().map(|&p| rows[p]).collect();
            let now = values_of(&ids)?;
            let mut ta = vec![0f64; dim];
            for mine in &kept_tokens {
                ta.iter_mut().for_each(|x| *x = 0.0);
                for &(c, w) in mine {
                    ta.iter_mut()
                        .zip(&now[c * dim..(c + 1) * dim])
                        .for_each(|(o, &v)| *o += w * f64::from(v));
                }
                for &(a, wa) in mine {
                    pull[a * dim..(a + 1) * dim]
                        .iter_mut()
                        .zip(&ta)
                        .for_each(|(p, o)| *p -= mu * wa * o);
                    for &(b, wb) in mine {
                        m[a * r + b] += mu * wa * wb;
                    }
                }
            }
        }
        cholesky_in_place(&mut m, r);
        let mut inverse = vec![0f64; r * r];
        for j in 0..r {
            inverse[j * r + j] = 1.0;
        }
        solve_cholesky(&m, r, &mut inverse, r);
        Ok(Some(BackgroundAnchor {
            coupled,
            inverse,
            pull,
            dim,
        }))
    }

    /// Rows of the fact that the step moves (those some sampled token reads).
    pub fn coupled_rows(&self) -> usize {
        self.coupled.len()
    }

    /// Replaces the coupled rows of `values` (the fact's rows × dim, as after an optimizer
    /// step) by the proximal solution; the other rows stay as they are.
    pub fn hold(&self, values: &mut [f32]) {
        let (r, d) = (self.coupled.len(), self.dim);
        let mut x = vec![0f64; r * d];
        for (c, &p) in self.coupled.iter().enumerate() {
            for k in 0..d {
                x[c * d + k] = f64::from(values[p * d + k]) - self.pull[c * d + k];
            }
        }
        let mut solved = vec![0f64; r * d];
        // SAFETY: `inverse` is r × r, `x` and `solved` are r × d, all row-major and distinct.
        unsafe {
            gemm::gemm(
                r,
                d,
                r,
                solved.as_mut_ptr(),
                1,
                d as isize,
                false,
                self.inverse.as_ptr(),
                1,
                r as isize,
                x.as_ptr(),
                1,
                d as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for (c, &p) in self.coupled.iter().enumerate() {
            for k in 0..d {
                values[p * d + k] = solved[c * d + k] as f32;
            }
        }
    }
}

/// Overwrites the lower triangle of the symmetric positive definite `m` (n × n, row-major)
/// with its Cholesky factor L (m = L Lᵀ).
fn cholesky_in_place(m: &mut [f64], n: usize) {
    for j in 0..n {
        let row_j = &mut m[j * n..(j + 1) * n];
        let diag = (row_j[j] - row_j[..j].iter().map(|x| x * x).sum::<f64>()).sqrt();
        row_j[j] = diag;
        let lj: Vec<f64> = row_j[..j].to_vec();
        for i in j + 1..n {
            let row_i = &mut m[i * n..(i + 1) * n];
            let dot: f64 = row_i[..j].iter().zip(&lj).map(|(a, b)| a * b).sum();
            row_i[j] = (row_i[j] - dot) / diag;
        }
    }
}

/// Solves L Lᵀ X = B in place for `cols` right-hand sides (B is n × cols, row-major).
fn solve_cholesky(l: &[f64], n: usize, b: &mut [f64], cols: usize) {
    for i in 0..n {
        let (done, rest) = b.split_at_mut(i * cols);
        let xi = &mut rest[..cols];
        for k in 0..i {
            let lik = l[i * n + k];
            if lik != 0.0 {
                let xk = &done[k * cols..(k + 1) * cols];
                xi.iter_mut().zip(xk).for_each(|(a, b)| *a -= lik * b);
            }
        }
        let d = l[i * n + i];
        xi.iter_mut().for_each(|a| *a /= d);
    }
    for i in (0..n).rev() {
        let (upto, later) = b.split_at_mut((i + 1) * cols);
        let xi = &mut upto[i * cols..];
        for k in i + 1..n {
            let lki = l[k * n + i];
            if lki != 0.0 {
                let xk = &later[(k - i - 1) * cols..(k - i) * cols];
                xi.iter_mut().zip(xk).for_each(|(a, b)| *a -= lki * b);
            }
        }
        let d = l[i * n + i];
        xi.iter_mut().for_each(|a| *a /= d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memory of 6 slots, 2 reads per token, value width 2; slots 1, 2, 4 are the fact's.
    fn sample() -> BackgroundSample {
        BackgroundSample {
            slots: vec![1, 0, 2, 3, 1, 2, 5, 0],
            weights: vec![0.7, 0.3, 0.6, 0.4, 0.5, 0.5, 0.9, 0.1],
        }
    }

    fn table() -> Vec<f32> {
        (0..12).map(|i| (i as f32 * 0.37).sin()).collect()
    }

    /// ½‖V − V_step‖² + (κ/2) Σ_t ‖out_t‖² with the fact's rows set to `v`.
    fn objective(rows: &[u32], v: &[f32], step: &[f32], kappa: f64) -> f64 {
        let (s, d) = (sample(), 2);
        let mut t = table();
        for (i, &r) in rows.iter().enumerate() {
            t[r as usize * d..(r as usize + 1) * d].copy_from_slice(&v[i * d..(i + 1) * d]);
        }
        let near: f64 = v
            .iter()
            .zip(step)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        let mut far = 0.0;
        for tok in 0..s.tokens(2) {
            for k in 0..d {
                let o: f64 = (0..2)
                    .map(|j| {
                        let (slot, w) = (s.slots[tok * 2 + j] as usize, s.weights[tok * 2 + j]);
                        f64::from(w * t[slot * d + k])
                    })
                    .sum();
                far += o * o;
            }
        }
        0.5 * near + 0.5 * kappa * far
    }

    fn anchor(rows: &[u32], kappa: f32) -> Option<BackgroundAnchor> {
        let t = table();
        BackgroundAnchor::new(&sample(), 2, rows, kappa, 2, &mut |ids| {
            Ok(ids
                .iter()
                .flat_map(|&i| t[i as usize * 2..i as usize * 2 + 2].to_vec())
                .collect())
        })
        .expect("the lookup of other rows cannot fail here")
    }

    /// Rows known to be all zeros are never fetched, and leaving them out changes nothing.
    #[test]
    fn zero_rows_are_not_fetched_and_change_nothing() {
        let mut t = table();
        // Slot 0 (read beside the fact's rows) is zero, slot 3 (also read beside them) not.
        t[0..2].fill(0.0);
        let rows = [1, 2, 4];
        let mut fetched = Vec::new();
        let run = |live: &dyn Fn(u32) -> bool, fetched: &mut Vec<u32>| {
            BackgroundAnchor::keeping(
                &sample(),
                &BackgroundSample::default(),
                2,
                &rows,
                (3.0, 0.0),
                2,
                live,
                &mut |ids| {
                    fetched.extend_from_slice(ids);
                    Ok(ids
                        .iter()
                        .flat_map(|&i| t[i as usize * 2..i as usize * 2 + 2].to_vec())
                        .collect())
                },
            )
            .unwrap()
            .expect("sampled tokens read the fact's rows")
        };
        let all = run(&|_| true, &mut fetched);
        assert!(fetched.contains(&0) && fetched.contains(&3), "{fetched:?}");
        fetched.clear();
        let live = run(&|s| s != 0, &mut fetched);
        assert!(!fetched.contains(&0) && fetched.contains(&3), "{fetched:?}");
        assert!(
            all.pull.iter().any(|&p| p != 0.0),
            "slot 3 pulls the fact's rows"
        );
        assert_eq!(all.coupled, live.coupled);
        assert_eq!(all.inverse, live.inverse);
        assert_eq!(all.pull, live.pull);
    }

    /// Repeating every sampled token 50 times is the same objective as 50 × κ: the other
    /// rows' output, fetched in chunks of tokens, must add up exactly as in one piece.
    #[test]
    fn tokens_fetched_in_chunks_add_up_like_one_piece() {
        let (base, t) = (sample(), table());
        let many = BackgroundSample {
            slots: base.slots.repeat(50),
            weights: base.weights.repeat(50),
        };
        assert!(many.tokens(2) > 2 * ANCHOR_TOKENS_PER_FETCH);
        let mut fetches = 0;
        let mut lookup = |ids: &[u32]| {
            fetches += 1;
            Ok(ids
                .iter()
                .flat_map(|&i| t[i as usize * 2..i as usize * 2 + 2].to_vec())
                .collect())
        };
        let rows = [1, 2, 4];
        let chunked = BackgroundAnchor::new(&many, 2, &rows, 0.1, 2, &mut lookup)
            .unwrap()
            .expect("tokens read slots 1 and 2");
        assert!(
            fetches > 2,
            "{fetches} fetches: the tokens were not chunked"
        );
        let whole = anchor(&rows, 5.0).expect("tokens read slots 1 and 2");
        let step = vec![2.0, -1.0, 0.5, 3.0, -2.0, 1.5];
        let (mut a, mut b) = (step.clone(), step);
        chunked.hold(&mut a);
        whole.hold(&mut b);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5, "{a:?} vs {b:?}");
        }
    }

    /// Kept tokens hold the output where it is now: the result minimizes
    /// ½‖V − V_step‖² + (μ/2) Σ_t ‖A_t (V − V_now)‖², and a large μ leaves the kept tokens'
    /// output nearly unchanged while a row no kept token reads follows the step.
    #[test]
    fn kept_tokens_hold_their_output_where_it_is() {
        let (kept, t) = (sample(), table());
        let rows = [1u32, 2, 4];
        let now: Vec<f32> = rows
            .iter()
            .flat_map(|&r| t[r as usize * 2..r as usize * 2 + 2].to_vec())
            .collect();
        let step = vec![2.0, -1.0, 0.5, 3.0, -2.0, 1.5];
        let output_change = |v: &[f32]| -> f64 {
            let mut total = 0.0;
            for tok in 0..kept.tokens(2) {
                for k in 0..2 {
                    let o: f64 = (0..2)
                        .filter_map(|j| {
                            let (slot, w) = (kept.slots[tok * 2 + j], kept.weights[tok * 2 + j]);
                            let i = rows.iter().position(|&r| r == slot)?;
                            Some(f64::from(w * (v[i * 2 + k] - now[i * 2 + k])))
                        })
                        .sum();
                    total += o * o;
                }
            }
            total
        };
        let objective = |v: &[f32], mu: f64| {
            let near: f64 = v
                .iter()
                .zip(&step)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            0.5 * near + 0.5 * mu * output_change(v)
        };
        for mu in [3.0f32, 1000.0] {
            let a = BackgroundAnchor::keeping(
                &BackgroundSample::default(),
                &kept,
                2,
                &rows,
                (0.0, mu),
                2,
                &|_| true,
                &mut |ids| {
                    Ok(ids
                        .iter()
                        .flat_map(|&i| t[i as usize * 2..i as usize * 2 + 2].to_vec())
                        .collect())
                },
            )
            .unwrap()
            .expect("kept tokens read slots 1 and 2");
            let mut held = step.clone();
            a.hold(&mut held);
            assert_eq!(&held[4..], &step[4..], "slot 4 is read by no kept token");
            let best = objective(&held, f64::from(mu));
            for i in 0..4 {
                for delta in [-1e-3f32, 1e-3] {
                    let mut moved = held.clone();
                    moved[i] += delta;
                    assert!(objective(&moved, f64::from(mu)) > best, "μ {mu}: value {i}");
                }
            }
            if mu > 100.0 {
                assert!(
                    output_change(&held) < 1e-3 * output_change(&step),
                    "μ {mu}: output moved by {} (the step alone: {})",
                    output_change(&held),
                    output_change(&step)
                );
            }
        }
    }

    #[test]
    fn the_held_values_minimize_the_objective() {
        let rows = [1, 2, 4];
        let step = vec![2.0, -1.0, 0.5, 3.0, -2.0, 1.5];
        let a = anchor(&rows, 3.0).expect("tokens read slots 1 and 2");
        assert_eq!(a.coupled_rows(), 2, "slot 4 is read by no sampled token");
        let mut held = step.clone();
        a.hold(&mut held);
        assert_eq!(
            &held[4..],
            &step[4..],
            "an unread row is left as the step put it"
        );
        let best = objective(&rows, &held, &step, 3.0);
        assert!(best < objective(&rows, &step, &step, 3.0) - 1e-3);
        // Any small move away from the solution costs more: it is the minimum.
        for i in 0..4 {
            for delta in [-1e-2f32, 1e-2] {
                let mut moved = held.clone();
                moved[i] += delta;
                let worse = objective(&rows, &moved, &step, 3.0);
                assert!(
                    worse > best,
                    "moving value {i} by {delta}: {worse} ≤ {best}"
                );
            }
        }
    }

    #[test]
    fn without_strength_or_sampled_reads_there_is_no_anchor() {
        assert!(anchor(&[1, 2], 0.0).is_none());
        assert!(anchor(&[4], 5.0).is_none(), "no sampled token reads slot 4");
        let empty = BackgroundSample::default();
        let none = BackgroundAnchor::new(&empty, 2, &[1], 1.0, 2, &mut |_| Ok(Vec::new()));
        assert!(none.expect("no lookup needed").is_none());
    }

    #[test]
    fn a_stronger_anchor_trades_distance_from_the_step_for_less_background_output() {
        let rows = [1, 2];
        let step = vec![2.0, -1.0, 0.5, 3.0];
        let parts = |kappa: f32| {
            let mut held = step.clone();
            anchor(&rows, kappa).expect("coupled").hold(&mut held);
            let near = objective(&rows, &held, &step, 0.0);
            let far = (objective(&rows, &held, &step, 1.0) - near) * 2.0;
            (near, far)
        };
        let (mut last_near, mut last_far) = (0.0, objective(&rows, &step, &step, 2.0));
        for kappa in [0.1, 1.0, 10.0, 1e4] {
            let (near, far) = parts(kappa);
            assert!(
                far < last_far,
                "κ {kappa}: background output {far} ≥ {last_far}"
            );
            assert!(near > last_near, "κ {kappa}: moved {near} ≤ {last_near}");
            (last_near, last_far) = (near, far);
        }
    }
}

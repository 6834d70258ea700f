//! The optimizers applied to the selected value rows.

/// The optimizer applied to the selected rows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Optimizer {
    /// Plain SGD: only the selected rows move, and only while they are selected.
    #[default]
    Sgd,
    /// AdamW with its moments kept only for rows while they are selected: a row's state
    /// starts fresh each time a fact selects it and is dropped after, so momentum never keeps
    /// moving rows chosen for an earlier fact. Its learning rate is per element (0.5 works on
    /// the default model where SGD takes 140,000).
    AdamW {
        /// First-moment decay.
        beta1: f32,
        /// Second-moment decay.
        beta2: f32,
        /// Denominator guard.
        eps: f32,
        /// Decoupled weight decay, applied to the selected rows only.
        weight_decay: f32,
    },
}

impl Optimizer {
    /// AdamW with the usual constants and no weight decay.
    pub fn adamw() -> Self {
        Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW moments of the rows selected for the current fact.
#[derive(Clone, Debug)]
pub(super) struct AdamState {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl AdamState {
    pub(super) fn new(len: usize) -> Self {
        AdamState {
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
        }
    }

    /// The new values of the rows after one step with gradient `g`.
    pub(super) fn step(&mut self, opt: Optimizer, lr: f32, values: &[f32], g: &[f32]) -> Vec<f32> {
        let Optimizer::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = opt
        else {
            unreachable!("AdamState is only used for AdamW")
        };
        self.t += 1;
        let (c1, c2) = (1.0 - beta1.powi(self.t), 1.0 - beta2.powi(self.t));
        let mut out = values.to_vec();
        for i in 0..g.len() {
            self.m[i] = beta1 * self.m[i] + (1.0 - beta1) * g[i];
            self.v[i] = beta2 * self.v[i] + (1.0 - beta2) * g[i] * g[i];
            let update = (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + eps);
            out[i] -= lr * (update + weight_decay * values[i]);
        }
        out
    }
}

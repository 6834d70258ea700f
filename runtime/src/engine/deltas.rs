//! What a user taught, as delta files: export, import and revert.

use super::Engine;
use crate::delta::{
    Applied, Change, Delta, DeltaPrecision, RowAccess, RowSet, SignaturePolicy, unix_now,
};
use crate::error::{Error, Result};

/// What importing a delta did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportReport {
    /// The delta's id.
    pub id: String,
    /// Rows it changed (0 when it was already imported).
    pub rows: usize,
    /// Of those, rows that earlier imported deltas had changed too (the differences add up).
    pub overlapping: usize,
    /// It was imported before, so nothing changed.
    pub already_imported: bool,
}

/// What reverting a delta did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevertReport {
    /// The delta's id.
    pub id: String,
    /// Rows put back exactly as they were before the import.
    pub exact: usize,
    /// Rows changed since the import (by learning or another delta): its difference was
    /// subtracted, keeping the later change.
    pub adjusted: usize,
}

impl Engine {
    /// What was learned since the beginning (`since = None`: every row that differs from
    /// the all-zero initial values) or since the snapshot named `since`, as a delta.
    ///
    /// ```no_run
    /// # use engram::{DeltaPrecision, Engine, EngineOptions, MemoryAccess};
    /// let mut engine = Engine::open("models/SmolLM2-135M-Instruct.Q4_1.gguf", &EngineOptions {
    ///     memory: Some("my.engram".into()),
    ///     memory_access: MemoryAccess::Write,
    ///     ..Default::default()
    /// })?;
    /// let delta = engine.export_delta(None, DeltaPrecision::F32, "notes app")?;
    /// delta.write("taught.delta")?;
    /// # Ok::<(), engram::Error>(())
    /// ```
    pub fn export_delta(
        &mut self,
        since: Option<&str>,
        precision: DeltaPrecision,
        app_label: &str,
    ) -> Result<Delta> {
        let (m, rows) = self.attached()?;
        let dim = rows.dim();
        let h = &m.durable.history;
        let (set, learned, since_text) = match since {
            None => {
                let total = rows.total_rows() as u32;
                let all: Vec<u32> = (0..total).collect();
                let values = rows.read_rows(&all)?;
                let mut set = RowSet::default();
                for (id, row) in all.iter().zip(values.chunks_exact(dim)) {
                    if row.iter().any(|&v| v != 0.0) {
                        set.ids.push(*id);
                        set.values.extend_from_slice(row);
                    }
                }
                (set, &h.learned[..], "beginning".to_owned())
            }
            Some(name) => {
                let (i, snap) = h.snapshot(name)?;
                let current = rows.read_rows(&snap.before.ids)?;
                let mut set = RowSet::default();
                for (k, id) in snap.before.ids.iter().enumerate() {
                    let old = snap.before.row(k, dim);
                    let diff: Vec<f32> = current[k * dim..(k + 1) * dim]
                        .iter()
                        .zip(old)
                        .map(|(c, o)| c - o)
                        .collect();
                    if diff.iter().any(|&d| d != 0.0) {
                        set.ids.push(*id);
                        set.values.extend(diff);
                    }
                }
                let from = h.learned_at_snapshot.get(i).copied().unwrap_or(0) as usize;
                let learned = &h.learned[from.min(h.learned.len())..];
                (set, learned, format!("snapshot {name}"))
            }
        };
        // Each fact's rows travel with it where the store knows them all, so the importing
        // store's routing gate gives them back exactly.
        let learned_rows = if learned.iter().all(|e| !e.rows.is_empty()) {
            learned
                .iter()
                .map(|e| {
                    e.rows
                        .iter()
                        .copied()
                        .filter(|r| set.ids.binary_search(r).is_ok())
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        let learned = learned.iter().map(|e| e.text.clone()).collect();
        let s = &m.store;
        let mut delta = Delta::new(
            s.base_fingerprint.clone(),
            s.init_fingerprint.clone(),
            s.config.clone(),
            dim,
            precision,
            set,
            since_text,
            app_label.to_owned(),
            learned,
            unix_now(),
        );
        delta.learned_rows = learned_rows;
        Ok(delta)
    }

    /// Adds a delta's differences to the attached memory. Importing the same delta again
    /// changes nothing. Where deltas touch the same rows their differences add up. The
    /// delta's signature, if it has one, must verify, and the engine's
    /// [`SignaturePolicy`] must accept its signer.
    pub fn import_delta(&mut self, delta: &Delta) -> Result<ImportReport> {
        delta.verify_signature()?;
        self.delta_policy
            .check(&delta.id, delta.signature.as_ref())?;
        let (m, mut rows) = self.attached()?;
        let s = &m.store;
        if delta.base_fingerprint != s.base_fingerprint {
            return Err(Error::Delta(format!(
                "delta {} was made for another base model (fingerprint {}, this store's model {})",
                delta.id, delta.base_fingerprint, s.base_fingerprint
            )));
        }
        if delta.config != s.config || delta.dim != s.dim {
            return Err(Error::Delta(format!(
                "delta {} was made for another memory shape ({:?} × {}, this store {:?} × {})",
                delta.id, delta.config, delta.dim, s.config, s.dim
            )));
        }
        if delta.init_fingerprint != s.init_fingerprint {
            return Err(Error::Delta(format!(
                "delta {} was made for another memory init ({}, this store {}): it was retrofitted \
                 separately; import needs a store made by the same retrofit",
                delta.id, delta.init_fingerprint, s.init_fingerprint
            )));
        }
        if m.durable.history.has_import(&delta.id) {
            return Ok(ImportReport {
                id: delta.id.clone(),
                rows: 0,
                overlapping: 0,
                already_imported: true,
            });
        }
        let Applied {
            rows: n,
            overlapping,
            ..
        } = m.durable.commit(
            Change::Import {
                id: delta.id.clone(),
                label: delta.app_label.clone(),
                imported: unix_now(),
                diff: delta.rows.clone(),
                learned: delta.learned.clone(),
                learned_rows: delta.learned_rows.clone(),
            },
            &mut rows,
        )?;
        self.key_imported_facts(&delta.learned, &delta.learned_rows)?;
        Ok(ImportReport {
            id: delta.id.clone(),
            rows: n,
            overlapping,
            already_imported: false,
        })
    }

    /// Which deltas [`Self::import_delta`] accepts (all, by default).
    pub fn set_delta_policy(&mut self, policy: SignaturePolicy) {
        self.delta_policy = policy;
    }

    /// The policy [`Self::import_delta`] applies.
    pub fn delta_policy(&self) -> &SignaturePolicy {
        &self.delta_policy
    }

    /// Undoes an imported delta (`id` or a unique prefix of it). Rows nothing changed since
    /// the import get their previous values back bit-exactly.
    pub fn revert_delta(&mut self, id: &str) -> Result<RevertReport> {
        let (m, mut rows) = self.attached()?;
        let full = m.durable.history.import(id)?.id.clone();
        let a = m
            .durable
            .commit(Change::Revert { id: full.clone() }, &mut rows)?;
        // Keys cannot be taken out of the gate one fact at a time (facts share keys).
        self.rebuild_read_gate()?;
        Ok(RevertReport {
            id: full,
            exact: a.exact,
            adjusted: a.overlapping,
        })
    }
}

//! What a store remembers about its own past: named snapshots, imported deltas and the facts
//! it learned. Every change to the value rows goes through [`StoreHistory::apply`], both live
//! and when a journal is replayed, so the two can never disagree.

use crate::error::{Error, Result};

/// Whole value rows by global row id (`layer index · slots + slot`), `dim` columns each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowSet {
    /// Global row ids, ascending and unique.
    pub ids: Vec<u32>,
    /// `ids.len() × dim` values, row-major.
    pub values: Vec<f32>,
}

impl RowSet {
    /// Row `i` (by position in `ids`) as a slice.
    pub fn row(&self, i: usize, dim: usize) -> &[f32] {
        &self.values[i * dim..(i + 1) * dim]
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Checks that ids are ascending, unique, below `total_rows`, and that the values fit.
    pub fn validate(&self, dim: usize, total_rows: usize, what: &str) -> Result<()> {
        if self.values.len() != self.ids.len() * dim {
            return Err(Error::Memory(format!(
                "{what}: {} values for {} rows of {dim}",
                self.values.len(),
                self.ids.len()
            )));
        }
        if let Some(w) = self.ids.windows(2).find(|w| w[0] >= w[1]) {
            return Err(Error::Memory(format!(
                "{what}: row ids are not ascending ({} then {})",
                w[0], w[1]
            )));
        }
        if let Some(&id) = self.ids.iter().find(|&&id| id as usize >= total_rows) {
            return Err(Error::Memory(format!(
                "{what}: row {id} is outside the memory ({total_rows} rows)"
            )));
        }
        if self.values.iter().any(|v| !v.is_finite()) {
            return Err(Error::Memory(format!("{what}: a value is not finite")));
        }
        Ok(())
    }
}

/// Reads and writes whole value rows wherever they live (host store or backend).
pub trait RowAccess {
    /// Width of a row.
    fn dim(&self) -> usize;
    /// Rows in all memory layers together.
    fn total_rows(&self) -> usize;
    /// The current values of `ids` (ascending).
    fn read_rows(&self, ids: &[u32]) -> Result<Vec<f32>>;
    /// Overwrites `ids` (ascending) with `values`.
    fn write_rows(&mut self, ids: &[u32], values: &[f32]) -> Result<()>;
}

/// A named point in the store's history that deltas can be exported from.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The name it was given (unique in the store).
    pub name: String,
    /// Unix seconds when it was taken.
    pub created: u64,
    /// Values, at the time of the snapshot, of every row changed since (copy on write).
    pub before: RowSet,
}

/// A delta applied to this store, kept so it is never applied twice and can be reverted.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedDelta {
    /// The delta's id.
    pub id: String,
    /// The app label it carried.
    pub label: String,
    /// Unix seconds when it was imported.
    pub imported: u64,
    /// Values of its rows before the import.
    pub previous: RowSet,
    /// The differences it added (same ids as `previous`).
    pub diff: Vec<f32>,
    /// The facts learned in it, as text (what the read gate keys its rows with).
    pub learned: Vec<String>,
    /// The rows each of them owns, in the same order (empty: not carried by the delta).
    pub learned_rows: Vec<Vec<u32>>,
}

/// One fact that was learned, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct LearnedEntry {
    /// Unix seconds when learning it finished.
    pub at: u64,
    /// The fact, as text.
    pub text: String,
    /// The value rows learning chose for it, ascending: the rows a routing read gate gives
    /// it (empty in stores written before 2026-12-06).
    pub rows: Vec<u32>,
    /// Its number in this store, what `forget` names it by: one more than the largest
    /// before it (0: learned before facts were numbered, 2026-12-06, and not forgettable).
    pub uid: u64,
    /// The earlier facts this one replaced, as text, oldest first (an update, see
    /// `Engine::remember`): their words still name it to the read gate, so "Which city do we
    /// live in now?" reads "We moved to Coimbra." after it replaced "We live in Braga.".
    /// Empty for facts that replaced none, and for those learned before 2026-12-08.
    pub replaced: Vec<String>,
}

/// Everything about a store's past that deltas and snapshots need.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreHistory {
    /// The last journal record already contained in the checkpoint.
    pub journal_seq: u64,
    /// Snapshots, oldest first.
    pub snapshots: Vec<Snapshot>,
    /// Deltas imported and not reverted, oldest first.
    pub imports: Vec<ImportedDelta>,
    /// Facts learned, oldest first; a snapshot remembers how many there were.
    pub learned: Vec<LearnedEntry>,
    /// For each snapshot (same order), `learned.len()` when it was taken.
    pub learned_at_snapshot: Vec<u64>,
}

/// A change to a store: what a journal record holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// New values of rows (a learning step, in journals written before 2026-12-06).
    Rows(RowSet),
    /// A fact finished learning (journals before 2026-12-06: its steps came as `Rows`).
    Learned(LearnedEntry),
    /// A fact finished learning, with its rows' net change: each row becomes its previous
    /// value plus the difference.
    LearnedFact {
        /// The fact.
        entry: LearnedEntry,
        /// Its rows (ids ascending) and differences.
        diff: RowSet,
    },
    /// A snapshot was taken.
    Snapshot {
        /// Its name.
        name: String,
        /// Unix seconds.
        created: u64,
    },
    /// A delta was imported: each row becomes its previous value plus `diff`.
    Import {
        /// The delta's id.
        id: String,
        /// Its app label.
        label: String,
        /// Unix seconds.
        imported: u64,
        /// The delta's rows (ids ascending) and differences.
        diff: RowSet,
        /// The facts learned in it, as text.
        learned: Vec<String>,
        /// The rows each of them owns (empty: not known).
        learned_rows: Vec<Vec<u32>>,
    },
    /// An imported delta was undone.
    Revert {
        /// The delta's id.
        id: String,
    },
    /// A learned fact was forgotten: its rows' net change is taken out (each row becomes its
    /// value minus the difference, whatever was learned since) and its entry removed.
    Forget {
        /// The fact's [`LearnedEntry::uid`].
        uid: u64,
        /// Its rows (ids ascending) and the differences learning it added.
        diff: RowSet,
    },
}

/// What [`StoreHistory::apply`] did, for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Rows whose values were written.
    pub rows: usize,
    /// Rows that were restored bit-exactly (revert).
    pub exact: usize,
    /// Rows already changed by earlier imports (import) or changed again since (revert).
    pub overlapping: usize,
}

impl StoreHistory {
    /// Checks a change against the history before it is journaled, so a journaled change
    /// always applies.
    pub fn check(&self, change: &Change, rows: &dyn RowAccess) -> Result<()> {
        let dim = rows.dim();
        let total = rows.total_rows();
        match change {
            Change::Rows(set) => set.validate(dim, total, "learning step"),
            Change::Learned(_) => Ok(()),
            Change::LearnedFact { diff, .. } => diff.validate(dim, total, "learned fact"),
            Change::Snapshot { name, .. } => {
                if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
                    return Err(Error::InvalidArgument(format!(
                        "snapshot name {name:?} must be 1 to 200 printable characters"
                    )));
                }
                if self.snapshots.iter().any(|s| &s.name == name) {
                    return Err(Error::InvalidArgument(format!(
                        "a snapshot named {name:?} already exists"
                    )));
                }
                Ok(())
            }
            Change::Import { diff, .. } => diff.validate(dim, total, "delta"),
            Change::Revert { id } => self.import(id).map(|_| ()),
            Change::Forget { uid, diff } => {
                self.learned_index(*uid)?;
                diff.validate(dim, total, "forgotten fact")
            }
        }
    }

    /// Where the fact numbered `uid` is in [`Self::learned`].
    pub fn learned_index(&self, uid: u64) -> Result<usize> {
        self.learned
            .iter()
            .position(|e| uid != 0 && e.uid == uid)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "no learned fact has the number {uid} (engram learned lists them)"
                ))
            })
    }

    /// The number the next learned fact gets: one more than any fact's so far.
    pub fn next_fact_uid(&self) -> u64 {
        self.learned.iter().map(|e| e.uid).max().unwrap_or(0) + 1
    }

    /// The imported delta `id` (a unique prefix of it is enough).
    pub fn import(&self, id: &str) -> Result<&ImportedDelta> {
        let found: Vec<&ImportedDelta> = self
            .imports
            .iter()
            .filter(|d| !id.is_empty() && d.id.starts_with(id))
            .collect();
        match found.as_slice() {
            [d] => Ok(d),
            [] => Err(Error::InvalidArgument(format!(
                "no imported delta has the id {id:?} (engram delta list shows them)"
            ))),
            _ => Err(Error::InvalidArgument(format!(
                "{id:?} matches {} imported deltas; give more of the id",
                found.len()
            ))),
        }
    }

    /// Whether the delta `id` is applied.
    pub fn has_import(&self, id: &str) -> bool {
        self.imports.iter().any(|d| d.id == id)
    }

    /// Records that `entry` was learned, its rows `ids` already moved by `diff` (with
    /// [`add_diff`]) from `before`: what applying [`Change::LearnedFact`] records.
    pub(crate) fn fact_learned(&mut self, entry: &LearnedEntry, ids: &[u32], before: &[f32]) {
        let dim = if ids.is_empty() {
            0
        } else {
            before.len() / ids.len()
        };
        self.copy_on_write(ids, before, dim);
        self.learned.push(entry.clone());
    }

    /// The rows `change` writes, by global id (checked changes only: a revert's delta must be
    /// imported).
    pub fn rows_written(&self, change: &Change) -> Vec<u32> {
        match change {
            Change::Rows(set) => set.ids.clone(),
            Change::LearnedFact { diff, .. } | Change::Forget { diff, .. } => diff.ids.clone(),
            Change::Import { id, diff, .. } if !self.has_import(id) => diff.ids.clone(),
            Change::Revert { id } => self
                .import(id)
                .map(|d| d.previous.ids.clone())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Copies the current values of `ids` into every snapshot that has not seen them change.
    fn copy_on_write(&mut self, ids: &[u32], current: &[f32], dim: usize) {
        for snap in &mut self.snapshots {
            let mut merged = RowSet::default();
            let (mut a, mut b) = (0, 0);
            let old = &snap.before;
            while a < old.ids.len() || b < ids.len() {
                let take_old = b == ids.len() || (a < old.ids.len() && old.ids[a] <= ids[b]);
                if take_old {
                    if b < ids.len() && old.ids[a] == ids[b] {
                        b += 1;
                    }
                    merged.ids.push(old.ids[a]);
                    merged.values.extend_from_slice(old.row(a, dim));
                    a += 1;
                } else {
                    merged.ids.push(ids[b]);
                    merged
                        .values
                        .extend_from_slice(&current[b * dim..(b + 1) * dim]);
                    b += 1;
                }
            }
            snap.before = merged;
        }
    }

    /// Applies a checked change to the history and to the rows.
    pub fn apply(&mut self, change: &Change, rows: &mut dyn RowAccess) -> Result<Applied> {
        let dim = rows.dim();
        match change {
            Change::Rows(set) => {
                let current = rows.read_rows(&set.ids)?;
                self.copy_on_write(&set.ids, &current, dim);
                rows.write_rows(&set.ids, &set.values)?;
                Ok(Applied {
                    rows: set.len(),
                    ..Default::default()
                })
            }
            Change::Learned(entry) => {
                self.learned.push(entry.clone());
                Ok(Applied::default())
            }
            Change::LearnedFact { entry, diff } => {
                let previous = rows.read_rows(&diff.ids)?;
                rows.write_rows(&diff.ids, &add_diff(&previous, &diff.values))?;
                self.fact_learned(entry, &diff.ids, &previous);
                Ok(Applied {
                    rows: diff.len(),
                    ..Default::default()
                })
            }
            Change::Snapshot { name, created } => {
                self.snapshots.push(Snapshot {
                    name: name.clone(),
                    created: *created,
                    before: RowSet::default(),
                });
                self.learned_at_snapshot.push(self.learned.len() as u64);
                Ok(Applied::default())
            }
            Change::Import {
                id,
                label,
                imported,
                diff,
                learned,
                learned_rows,
            } => {
                if self.has_import(id) {
                    return Ok(Applied::default());
                }
                let previous = rows.read_rows(&diff.ids)?;
                let overlapping = diff
                    .ids
                    .iter()
                    .filter(|r| self.imports.iter().any(|d| d.previous.ids.contains(r)))
                    .count();
                let next = add_diff(&previous, &diff.values);
                self.copy_on_write(&diff.ids, &previous, dim);
                rows.write_rows(&diff.ids, &next)?;
                self.imports.push(ImportedDelta {
                    id: id.clone(),
                    label: label.clone(),
                    imported: *imported,
                    previous: RowSet {
                        ids: diff.ids.clone(),
                        values: previous,
                    },
                    diff: diff.values.clone(),
                    learned: learned.clone(),
                    learned_rows: learned_rows.clone(),
                });
                Ok(Applied {
                    rows: diff.len(),
                    overlapping,
                    ..Default::default()
                })
            }
            Change::Revert { id } => {
                let index = {
                    let d = self.import(id)?;
                    self.imports.iter().position(|x| x.id == d.id).unwrap_or(0)
                };
                let d = self.imports.remove(index);
                let ids = &d.previous.ids;
                let current = rows.read_rows(ids)?;
                let mut next = Vec::with_capacity(current.len());
                let mut applied = Applied {
                    rows: ids.len(),
                    ..Default::default()
                };
                for i in 0..ids.len() {
                    let prev = d.previous.row(i, dim);
                    let diff = &d.diff[i * dim..(i + 1) * dim];
                    let cur = &current[i * dim..(i + 1) * dim];
                    let untouched = cur
                        .iter()
                        .zip(prev.iter().zip(diff))
                        .all(|(c, (p, x))| c.to_bits() == (p + x).to_bits());
                    if untouched {
                        // Nothing changed the row since the import: put it back exactly.
                        next.extend_from_slice(prev);
                        applied.exact += 1;
                    } else {
                        // Learned or imported into since: take only this delta's part out.
                        next.extend(cur.iter().zip(diff).map(|(c, x)| c - x));
                        applied.overlapping += 1;
                    }
                }
                self.copy_on_write(ids, &current, dim);
                rows.write_rows(ids, &next)?;
                Ok(applied)
            }
            Change::Forget { uid, diff } => {
                let index = self.learned_index(*uid)?;
                let current = rows.read_rows(&diff.ids)?;
                let next: Vec<f32> = current.iter().zip(&diff.values).map(|(c, d)| c - d).collect();
                self.copy_on_write(&diff.ids, &current, dim);
                // Snapshots taken after the fact was learned hold its change in the rows they
                // copied: it leaves them too (a delta from such a snapshot then never holds it).
                for (snap, &count) in self.snapshots.iter_mut().zip(&self.learned_at_snapshot) {
                    if count as usize > index {
                        subtract_rows(&mut snap.before, diff, dim);
                    }
                }
                rows.write_rows(&diff.ids, &next)?;
                self.learned.remove(index);
                for count in &mut self.learned_at_snapshot {
                    if *count as usize > index {
                        *count -= 1;
                    }
                }
                Ok(Applied {
                    rows: diff.len(),
                    ..Default::default()
                })
            }
        }
    }

    /// The snapshot named `name`.
    pub fn snapshot(&self, name: &str) -> Result<(usize, &Snapshot)> {
        self.snapshots
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "no snapshot named {name:?} (engram delta list shows them)"
                ))
            })
    }
}

/// Subtracts `diff`'s rows from the rows of `set` that have the same ids (both ascending).
fn subtract_rows(set: &mut RowSet, diff: &RowSet, dim: usize) {
    let mut k = 0;
    for (i, id) in set.ids.iter().enumerate() {
        while k < diff.ids.len() && diff.ids[k] < *id {
            k += 1;
        }
        if k < diff.ids.len() && diff.ids[k] == *id {
            let row = &mut set.values[i * dim..(i + 1) * dim];
            for (v, d) in row.iter_mut().zip(diff.row(k, dim)) {
                *v -= d;
            }
        }
    }
}

/// `previous + diff`, element by element: how every change by differences is applied, live
/// and on replay alike, so the two give the same bits.
pub fn add_diff(previous: &[f32], diff: &[f32]) -> Vec<f32> {
    previous.iter().zip(diff).map(|(p, d)| p + d).collect()
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Host {
        dim: usize,
        values: Vec<f32>,
    }

    impl RowAccess for Host {
        fn dim(&self) -> usize {
            self.dim
        }
        fn total_rows(&self) -> usize {
            self.values.len() / self.dim
        }
        fn read_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
            Ok(ids
                .iter()
                .flat_map(|&i| self.values[i as usize * self.dim..][..self.dim].to_vec())
                .collect())
        }
        fn write_rows(&mut self, ids: &[u32], values: &[f32]) -> Result<()> {
            for (k, &i) in ids.iter().enumerate() {
                self.values[i as usize * self.dim..][..self.dim]
                    .copy_from_slice(&values[k * self.dim..][..self.dim]);
            }
            Ok(())
        }
    }

    fn rows(ids: &[u32], v: f32) -> RowSet {
        RowSet {
            ids: ids.to_vec(),
            values: ids.iter().flat_map(|&i| [v + i as f32, -v]).collect(),
        }
    }

    #[test]
    fn snapshot_keeps_values_from_before_later_changes() {
        let mut host = Host {
            dim: 2,
            values: vec![0.0; 20],
        };
        let mut h = StoreHistory::default();
        h.apply(&Change::Rows(rows(&[1, 3], 1.0)), &mut host)
            .unwrap();
        let snap = Change::Snapshot {
            name: "a".into(),
            created: 0,
        };
        h.check(&snap, &host).unwrap();
        h.apply(&snap, &mut host).unwrap();
        assert!(h.check(&snap, &host).is_err(), "duplicate names refused");
        h.apply(&Change::Rows(rows(&[3, 5], 2.0)), &mut host)
            .unwrap();
        h.apply(&Change::Rows(rows(&[2, 3], 3.0)), &mut host)
            .unwrap();
        let before = &h.snapshots[0].before;
        assert_eq!(before.ids, vec![2, 3, 5]);
        // Row 3 as it was at the snapshot (1 + 3, -1), not after the first change since.
        assert_eq!(before.values, vec![0.0, 0.0, 4.0, -1.0, 0.0, 0.0]);
    }

    fn learned(uid: u64, diff: &RowSet) -> Change {
        Change::LearnedFact {
            entry: LearnedEntry {
                at: 0,
                text: format!("fact {uid}"),
                rows: diff.ids.clone(),
                uid,
                replaced: Vec::new(),
            },
            diff: diff.clone(),
        }
    }

    #[test]
    fn forgetting_a_fact_takes_out_its_change_only_even_under_later_facts() {
        let mut host = Host {
            dim: 2,
            values: vec![0.0; 20],
        };
        let mut h = StoreHistory::default();
        let (a, b) = (rows(&[1, 3], 0.5), rows(&[3, 4], 0.25));
        h.apply(&learned(h.next_fact_uid(), &a), &mut host).unwrap();
        h.apply(
            &Change::Snapshot {
                name: "s".into(),
                created: 0,
            },
            &mut host,
        )
        .unwrap();
        // B, learned after A and the snapshot, shares row 3 with A.
        h.apply(&learned(h.next_fact_uid(), &b), &mut host).unwrap();
        assert_eq!(h.next_fact_uid(), 3);
        let forget_a = Change::Forget { uid: 1, diff: a };
        h.check(&forget_a, &host).unwrap();
        h.apply(&forget_a, &mut host).unwrap();
        assert!(h.check(&forget_a, &host).is_err(), "forgotten once");
        // Row 1 (A alone) is back to zero; row 3 keeps B's part exactly; row 4 is B's.
        assert_eq!(&host.values[2..4], &[0.0, 0.0]);
        assert_eq!(&host.values[6..10], &[3.25, -0.25, 4.25, -0.25]);
        assert_eq!(h.learned.len(), 1);
        assert_eq!(h.learned[0].uid, 2);
        // The snapshot (taken after A) no longer holds A in the rows it copied, and counts
        // one fact less before it.
        assert_eq!(h.learned_at_snapshot, vec![0]);
        let snap = &h.snapshots[0].before;
        assert_eq!(snap.ids, vec![1, 3, 4]);
        assert_eq!(snap.values, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn import_twice_is_a_no_op_and_revert_is_exact() {
        let mut host = Host {
            dim: 2,
            values: (0..20).map(|i| i as f32 * 0.1).collect(),
        };
        let original = host.values.clone();
        let mut h = StoreHistory::default();
        let import = Change::Import {
            id: "abc".into(),
            label: "x".into(),
            imported: 0,
            diff: rows(&[0, 4], 0.3),
            learned: Vec::new(),
            learned_rows: Vec::new(),
        };
        h.apply(&import, &mut host).unwrap();
        let once = host.values.clone();
        assert_ne!(once, original);
        assert_eq!(h.apply(&import, &mut host).unwrap().rows, 0);
        assert_eq!(host.values, once);
        let r = h
            .apply(&Change::Revert { id: "ab".into() }, &mut host)
            .unwrap();
        assert_eq!(r.exact, 2);
        assert_eq!(
            host.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            original.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(
            h.check(&Change::Revert { id: "abc".into() }, &host)
                .is_err()
        );
    }
}

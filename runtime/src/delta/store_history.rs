//! A store's history as GGUF keys and row tensors: in the header of format-1 stores, in the
//! framed blob after the tensor data of format-2 stores (see `in_place.rs`).

use super::history::{ImportedDelta, LearnedEntry, RowSet, Snapshot, StoreHistory};
use super::store::MemoryStore;
use crate::error::{Error, Result};
use crate::gguf::{Gguf, GgufWriter, Value, ValueType};
use crate::quant::GgmlType;

impl MemoryStore {
    /// Writes `h` as GGUF keys and row tensors into `w`.
    pub(super) fn write_history_of(&self, h: &StoreHistory, w: &mut GgufWriter) -> Result<()> {
        let s = |v: &str| Value::String(v.to_owned());
        let strings =
            |v: Vec<&str>| Value::Array(ValueType::String, v.into_iter().map(s).collect());
        let u64s =
            |v: Vec<u64>| Value::Array(ValueType::U64, v.into_iter().map(Value::U64).collect());
        let ids = |r: &RowSet| {
            Value::Array(
                ValueType::U32,
                r.ids.iter().map(|&i| Value::U32(i)).collect(),
            )
        };
        w.set("engram.history.journal_seq", Value::U64(h.journal_seq));
        w.set(
            "engram.history.learned.text",
            strings(h.learned.iter().map(|e| e.text.as_str()).collect()),
        );
        w.set(
            "engram.history.learned.at",
            u64s(h.learned.iter().map(|e| e.at).collect()),
        );
        w.set(
            "engram.history.learned.uid",
            u64s(h.learned.iter().map(|e| e.uid).collect()),
        );
        w.set(
            "engram.history.learned.row_counts",
            u64s(h.learned.iter().map(|e| e.rows.len() as u64).collect()),
        );
        w.set(
            "engram.history.learned.rows",
            Value::Array(
                ValueType::U32,
                h.learned
                    .iter()
                    .flat_map(|e| e.rows.iter().map(|&r| Value::U32(r)))
                    .collect(),
            ),
        );
        // Only stores holding an update say what facts replaced (2026-12-08 on).
        if h.learned.iter().any(|e| !e.replaced.is_empty()) {
            w.set(
                "engram.history.learned.replaced_counts",
                u64s(h.learned.iter().map(|e| e.replaced.len() as u64).collect()),
            );
            w.set(
                "engram.history.learned.replaced",
                strings(
                    h.learned
                        .iter()
                        .flat_map(|e| e.replaced.iter().map(String::as_str))
                        .collect(),
                ),
            );
        }
        w.set(
            "engram.history.snapshot.names",
            strings(h.snapshots.iter().map(|x| x.name.as_str()).collect()),
        );
        w.set(
            "engram.history.snapshot.created",
            u64s(h.snapshots.iter().map(|x| x.created).collect()),
        );
        w.set(
            "engram.history.snapshot.learned",
            u64s(h.learned_at_snapshot.clone()),
        );
        for (i, snap) in h.snapshots.iter().enumerate() {
            w.set(
                format!("engram.history.snapshot.{i}.rows"),
                ids(&snap.before),
            );
            if !snap.before.is_empty() {
                w.add_f32(
                    format!("history.snapshot.{i}.before"),
                    &[self.dim as u64, snap.before.len() as u64],
                    &snap.before.values,
                )?;
            }
        }
        w.set(
            "engram.history.import.ids",
            strings(h.imports.iter().map(|x| x.id.as_str()).collect()),
        );
        w.set(
            "engram.history.import.labels",
            strings(h.imports.iter().map(|x| x.label.as_str()).collect()),
        );
        w.set(
            "engram.history.import.at",
            u64s(h.imports.iter().map(|x| x.imported).collect()),
        );
        for (i, d) in h.imports.iter().enumerate() {
            w.set(format!("engram.history.import.{i}.rows"), ids(&d.previous));
            w.set(
                format!("engram.history.import.{i}.learned"),
                strings(d.learned.iter().map(String::as_str).collect()),
            );
            if !d.learned_rows.is_empty() {
                w.set(
                    format!("engram.history.import.{i}.learned_row_counts"),
                    u64s(d.learned_rows.iter().map(|r| r.len() as u64).collect()),
                );
                w.set(
                    format!("engram.history.import.{i}.learned_rows"),
                    Value::Array(
                        ValueType::U32,
                        d.learned_rows.iter().flatten().map(|&r| Value::U32(r)).collect(),
                    ),
                );
            }
            if !d.previous.is_empty() {
                let shape = [self.dim as u64, d.previous.len() as u64];
                w.add_f32(
                    format!("history.import.{i}.previous"),
                    &shape,
                    &d.previous.values,
                )?;
                w.add_f32(format!("history.import.{i}.diff"), &shape, &d.diff)?;
            }
        }
        Ok(())
    }

    /// Reads the history that [`Self::write_history_of`] wrote into `g` (none when `g` has no
    /// history keys: a store from before the history existed).
    pub(super) fn read_history(&mut self, g: &Gguf) -> Result<()> {
        let bad = |m: String| Error::Memory(m);
        // Stores written before the history existed have none of these keys.
        let Some(seq) = g.get("engram.history.journal_seq") else {
            return Ok(());
        };
        let seq = seq
            .as_u64()
            .ok_or_else(|| bad("engram.history.journal_seq is not a number".into()))?;
        let strings = |k: &str| -> Result<Vec<String>> {
            g.get(k)
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect())
                .ok_or_else(|| bad(format!("{k} is missing or not a list of strings")))
        };
        let u64s = |k: &str| -> Result<Vec<u64>> {
            g.get(k)
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(Value::as_u64).collect())
                .ok_or_else(|| bad(format!("{k} is missing or not a list of numbers")))
        };
        let dim = self.dim;
        let total = self.total_rows();
        let rows = |key: &str, tensor: &str| -> Result<RowSet> {
            let ids: Vec<u32> = u64s(key)?
                .into_iter()
                .map(|v| {
                    u32::try_from(v).map_err(|_| bad(format!("{key}: row {v} is out of range")))
                })
                .collect::<Result<_>>()?;
            let values = if ids.is_empty() {
                Vec::new()
            } else {
                let t = g
                    .tensor(tensor)
                    .ok_or_else(|| bad(format!("tensor {tensor} is missing")))?;
                if t.dtype != GgmlType::F32 || t.dims != [dim as u64, ids.len() as u64] {
                    return Err(bad(format!(
                        "tensor {tensor} is {} {:?}, expected f32 [{dim}, {}]",
                        t.dtype,
                        t.dims,
                        ids.len()
                    )));
                }
                g.tensor_f32(t)
            };
            let set = RowSet { ids, values };
            set.validate(dim, total, tensor)?;
            Ok(set)
        };
        let texts = strings("engram.history.learned.text")?;
        let ats = u64s("engram.history.learned.at")?;
        let names = strings("engram.history.snapshot.names")?;
        let created = u64s("engram.history.snapshot.created")?;
        let learned_at = u64s("engram.history.snapshot.learned")?;
        let ids = strings("engram.history.import.ids")?;
        let labels = strings("engram.history.import.labels")?;
        let imported = u64s("engram.history.import.at")?;
        if texts.len() != ats.len()
            || names.len() != created.len()
            || names.len() != learned_at.len()
            || ids.len() != labels.len()
            || ids.len() != imported.len()
        {
            return Err(bad("engram.history.* lists disagree in length".into()));
        }
        // Stores written before facts kept their rows have neither list.
        let (counts, mut learned_rows) = match g.get("engram.history.learned.row_counts") {
            None => (vec![0; texts.len()], Vec::new()),
            Some(_) => (
                u64s("engram.history.learned.row_counts")?,
                u64s("engram.history.learned.rows")?,
            ),
        };
        if counts.len() != texts.len() || counts.iter().sum::<u64>() != learned_rows.len() as u64 {
            return Err(bad("engram.history.learned.rows disagree with the facts".into()));
        }
        if let Some(r) = learned_rows.iter().find(|&&r| r >= total as u64) {
            return Err(bad(format!("engram.history.learned.rows: row {r} is out of range")));
        }
        // Stores written before facts were numbered (2026-12-06) have no numbers: 0.
        let uids = match g.get("engram.history.learned.uid") {
            None => vec![0; texts.len()],
            Some(_) => u64s("engram.history.learned.uid")?,
        };
        if uids.len() != texts.len() {
            return Err(bad("engram.history.learned.uid disagrees with the facts".into()));
        }
        // Stores that hold no update (and those written before 2026-12-08) have neither list.
        let (replaced_counts, mut replaced) = match g.get("engram.history.learned.replaced_counts") {
            None => (vec![0; texts.len()], Vec::new()),
            Some(_) => (
                u64s("engram.history.learned.replaced_counts")?,
                strings("engram.history.learned.replaced")?,
            ),
        };
        if replaced_counts.len() != texts.len()
            || replaced_counts.iter().sum::<u64>() != replaced.len() as u64
        {
            return Err(bad(
                "engram.history.learned.replaced disagrees with the facts".into(),
            ));
        }
        let mut rest = learned_rows.drain(..);
        let mut replaced_rest = replaced.drain(..);
        let mut h = StoreHistory {
            journal_seq: seq,
            learned: texts
                .into_iter()
                .zip(ats)
                .zip(counts)
                .zip(uids)
                .zip(replaced_counts)
                .map(|((((text, at), n), uid), n_replaced)| LearnedEntry {
                    at,
                    text,
                    rows: rest.by_ref().take(n as usize).map(|r| r as u32).collect(),
                    uid,
                    replaced: replaced_rest.by_ref().take(n_replaced as usize).collect(),
                })
                .collect(),
            learned_at_snapshot: learned_at,
            ..Default::default()
        };
        for (i, (name, created)) in names.into_iter().zip(created).enumerate() {
            let before = rows(
                &format!("engram.history.snapshot.{i}.rows"),
                &format!("history.snapshot.{i}.before"),
            )?;
            h.snapshots.push(Snapshot {
                name,
                created,
                before,
            });
        }
        for (i, ((id, label), imported)) in ids.into_iter().zip(labels).zip(imported).enumerate() {
            let previous = rows(
                &format!("engram.history.import.{i}.rows"),
                &format!("history.import.{i}.previous"),
            )?;
            let diff = if previous.is_empty() {
                Vec::new()
            } else {
                rows(
                    &format!("engram.history.import.{i}.rows"),
                    &format!("history.import.{i}.diff"),
                )?
                .values
            };
            // Stores written before imports kept their facts have none.
            let learned_key = format!("engram.history.import.{i}.learned");
            let learned = match g.get(&learned_key) {
                None => Vec::new(),
                Some(_) => strings(&learned_key)?,
            };
            let counts_key = format!("engram.history.import.{i}.learned_row_counts");
            let learned_rows = match g.get(&counts_key) {
                None => Vec::new(),
                Some(_) => {
                    let counts = u64s(&counts_key)?;
                    let flat = u64s(&format!("engram.history.import.{i}.learned_rows"))?;
                    if counts.len() != learned.len()
                        || counts.iter().sum::<u64>() != flat.len() as u64
                        || flat.iter().any(|&r| r >= total as u64)
                    {
                        return Err(bad(format!(
                            "engram.history.import.{i}.learned_rows disagree with its facts"
                        )));
                    }
                    let mut rest = flat.into_iter();
                    counts
                        .iter()
                        .map(|&n| rest.by_ref().take(n as usize).map(|r| r as u32).collect())
                        .collect()
                }
            };
            h.imports.push(ImportedDelta {
                id,
                label,
                imported,
                previous,
                diff,
                learned,
                learned_rows,
            });
        }
        self.history = h;
        Ok(())
    }

}

//! Forgetting one learned fact exactly: its rows' net change taken out, whatever was learned
//! after it, its entry and read-gate keys gone, its records erased from disk.

use super::Engine;
use crate::delta::{Change, LearnedEntry};
use crate::error::{Error, Result};
use crate::learn::{Fact, LearnOptions, LearnReport, replaced_fact};

/// What [`Engine::remember`] did.
#[derive(Clone, Debug)]
pub struct RememberReport {
    /// The earlier fact the statement replaced (forgotten first), if any.
    pub replaced: Option<ForgetReport>,
    /// Learning the statement.
    pub learned: LearnReport,
}

/// What [`Engine::forget`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForgetReport {
    /// The fact's number.
    pub uid: u64,
    /// The fact, as text.
    pub text: String,
    /// Value rows its change was taken out of.
    pub rows: usize,
    /// Of those, rows other learned facts also changed (they keep their own part).
    pub shared: usize,
    /// Records of it overwritten in the fact log (0 for a store opened read-only: nothing
    /// on disk is changed then).
    pub erased: usize,
}

impl Engine {
    /// Learned facts (oldest first) that `query` names: the fact numbered `query` when it is
    /// a number, else those whose text contains it (ignoring case), or whose replaced facts'
    /// text does: an update holds the words of what it replaced, so forgetting "Braga" must
    /// find "We moved to Coimbra." that replaced "We live in Braga.".
    pub fn find_learned(&self, query: &str) -> Vec<&LearnedEntry> {
        let query = query.trim();
        if let Ok(uid) = query.parse::<u64>() {
            return self
                .learned_facts()
                .iter()
                .filter(|e| e.uid == uid && uid != 0)
                .collect();
        }
        let needle = query.to_lowercase();
        if needle.is_empty() {
            return Vec::new();
        }
        let holds = |text: &str| text.to_lowercase().contains(&needle);
        self.learned_facts()
            .iter()
            .filter(|e| holds(&e.text) || e.replaced.iter().any(|r| holds(r)))
            .collect()
    }

    /// Forgets the one learned fact `what` names ([`Self::find_learned`]: its number, or
    /// words of its text); naming none or several is an error that lists them.
    pub fn forget_matching(&mut self, what: &str) -> Result<ForgetReport> {
        let uid = match self.find_learned(what).as_slice() {
            [one] => one.uid,
            [] => {
                return Err(Error::InvalidArgument(format!(
                    "no learned fact matches {what:?} (engram learned lists them)"
                )));
            }
            many => {
                let list: Vec<String> = many
                    .iter()
                    .map(|f| format!("{} {:?}", f.uid, f.text))
                    .collect();
                return Err(Error::InvalidArgument(format!(
                    "{} learned facts match {what:?}: {}; give its number",
                    many.len(),
                    list.join(", ")
                )));
            }
        };
        self.forget(uid)
    }

    /// Learns `statement` (a note the user made, e.g. in a chat) after forgetting the earlier
    /// fact it replaces, if it changes one (by the rules of `learn::replaced_fact`: "We moved
    /// to Coimbra." after "We live in Braga."), so the memory holds the new value, not a mix.
    pub fn remember(
        &mut self,
        statement: &str,
        options: &LearnOptions,
        progress: &mut dyn FnMut(usize, usize, f64) -> bool,
    ) -> Result<RememberReport> {
        let (replaced, earlier) = match self.replaced_by(statement) {
            Some(uid) => {
                let (report, earlier) = self.forget_replaced(uid)?;
                (Some(report), earlier)
            }
            None => (None, Vec::new()),
        };
        let learned =
            self.learn_replacing(&[Fact::note(statement)], &earlier, options, progress)?;
        Ok(RememberReport { replaced, learned })
    }

    /// The number of the learned fact `statement` would replace (see [`Self::remember`]).
    pub fn replaced_by(&self, statement: &str) -> Option<u64> {
        replaced_fact(
            statement,
            self.learned_facts()
                .iter()
                .map(|f| (f.uid, f.text.as_str())),
        )
    }

    /// Forgets the learned fact numbered `uid` ([`LearnedEntry::uid`]): each of its rows
    /// loses exactly the difference learning it added (rows later facts also changed keep
    /// theirs), its entry leaves the history and snapshots, and the read gate is keyed
    /// without it. With a store open for writing this is journaled, then checkpointed (so no
    /// journal record holds the fact any more) and its fact-log records are overwritten.
    pub fn forget(&mut self, uid: u64) -> Result<ForgetReport> {
        self.forget_replaced(uid).map(|(report, _)| report)
    }

    /// [`Self::forget`] for an update that replaces fact `uid`: also the texts the update
    /// keeps as what it replaced (those `uid` replaced, then its own text), so the words that
    /// named the old value name the new one ("live" of "We live in Braga." for "We moved to
    /// Coimbra.").
    pub(super) fn forget_replaced(&mut self, uid: u64) -> Result<(ForgetReport, Vec<String>)> {
        let (m, mut rows) = self.attached()?;
        let index = m.durable.history.learned_index(uid)?;
        let entry = m.durable.history.learned[index].clone();
        let mut earlier = entry.replaced.clone();
        earlier.push(entry.text.clone());
        let diff = m.durable.facts.find(uid)?.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "fact {uid} ({:?}) cannot be forgotten: its change is not in {} (learned by an \
                 older engram, or the file was removed)",
                entry.text,
                m.path.as_deref().map_or_else(
                    || "this process".to_owned(),
                    |p| crate::delta::fact_log_path(p).display().to_string()
                )
            ))
        })?;
        let shared = diff
            .ids
            .iter()
            .filter(|r| {
                m.durable
                    .history
                    .learned
                    .iter()
                    .any(|e| e.uid != uid && e.rows.binary_search(r).is_ok())
            })
            .count();
        let n_rows = diff.len();
        m.durable.commit(Change::Forget { uid, diff }, &mut rows)?;
        let writable = m.durable.is_writable();
        self.rebuild_read_gate()?;
        if writable {
            self.checkpoint()?;
        }
        let m = self.memory.as_mut().ok_or_else(super::memory::no_memory)?;
        let erased = m.durable.facts.erase(uid)?;
        let report = ForgetReport {
            uid,
            text: entry.text,
            rows: n_rows,
            shared,
            erased: if writable { erased } else { 0 },
        };
        Ok((report, earlier))
    }
}

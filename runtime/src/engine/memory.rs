//! The engine's memory store: attaching it, the read gate, learning into it, snapshots and
//! checkpoints.

use std::path::{Path, PathBuf};

use super::Engine;
use crate::backend::Backend;
use crate::backend::device::DeviceBackend;
use crate::delta::{
    Change, CheckpointReport, DurableMemory, ImportedDelta, LearnedEntry, MemoryAccess,
    MemoryStore, RowAccess, Snapshot, StoreHistory, StoreKey, open_store, unix_now,
};
use crate::error::{Error, Result};
use crate::learn::{Fact, KeyedFact, LearnOptions, LearnReport, LearningState, rekey_read_gate};
use crate::memory::{MemoryBlock, MemoryConfig, ReadGate, SlotUsage};
use crate::model::Model;

/// Whether reads of learned value rows are gated (the read gate of the memory layer): by
/// default each fact's own rows are read, and only, for a while after the sequence names it
/// (`Routes`).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum ReadGating {
    /// A read of a row a learned fact's tokens read passes only where the token's memory
    /// input is within these cosines of one of theirs: `questions` for question/answer
    /// facts' keys, `notes` for notes' keys.
    Cosine {
        /// For question/answer facts' keys.
        questions: f32,
        /// For notes' keys (asked about in other words than they were written in).
        notes: f32,
    },
    /// As `Cosine`, and only once the sequence has named one of the row's facts: held one
    /// of its topic words (a name, "bike"); see docs/architecture.md, "The read gate".
    Topics {
        /// For question/answer facts' keys.
        questions: f32,
        /// For notes' keys.
        notes: f32,
    },
    /// Each learned fact has rows of its own, read at every token from where the sequence
    /// names the fact, weighted by the lookup's scores among them, and nowhere else; see
    /// docs/architecture.md, "The read gate".
    #[default]
    Routes,
    /// Every read passes: the plain memory layer.
    Off,
}

/// The cosine the topic gate (`topics`, the default before 2026-12-06) asks of each read by
/// default: -1, none. Measured on
/// eval/'s tuned items (40 facts + 20 notes, 2026-12-05): topics at cosines 0.95/0.8,
/// 0.6/0.4 and -1 kept the same general answers (96.7 %) and near neighbours (94 %), and -1
/// answered the most paraphrases (25 % against 12.5 % at 0.95/0.8).
pub const DEFAULT_TOPIC_COSINE: f32 = -1.0;

impl ReadGating {
    /// An empty gate for inputs `dim` wide with these cosines (`None` when off); an error
    /// names a cosine outside [-1, 1].
    pub(super) fn new_gate(self, dim: usize) -> Result<Option<ReadGate>> {
        match self {
            ReadGating::Off => Ok(None),
            ReadGating::Cosine { questions, notes } => {
                ReadGate::new(dim, questions, notes).map(Some)
            }
            ReadGating::Topics { questions, notes } => {
                ReadGate::with_topics(dim, questions, notes).map(Some)
            }
            ReadGating::Routes => ReadGate::with_routes(dim).map(Some),
        }
    }
}

/// Where the read gate's keys are kept beside the store at `store`.
pub fn read_keys_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".readkeys");
    PathBuf::from(name)
}

/// The facts whose tokens key the read gate: those learned here, then those of each
/// imported delta, as text.
pub(super) fn keyed_fact_texts(history: &StoreHistory) -> impl Iterator<Item = &str> {
    let learned = history.learned.iter().map(|e| e.text.as_str());
    learned.chain(
        history
            .imports
            .iter()
            .flat_map(|d| d.learned.iter().map(String::as_str)),
    )
}

/// [`keyed_fact_texts`] as the read gate is keyed with them: each with the rows learning
/// chose for it (empty where the store does not know them: facts of imported deltas and of
/// stores written before 2026-12-06) and the facts it replaced.
pub(super) fn keyed_facts(history: &StoreHistory) -> Vec<KeyedFact> {
    let learned = history.learned.iter().map(|e| KeyedFact {
        fact: Fact::from_description(&e.text),
        rows: e.rows.clone(),
        replaced: e.replaced.clone(),
    });
    let imported = history.imports.iter().flat_map(|d| {
        d.learned.iter().enumerate().map(|(i, t)| KeyedFact {
            fact: Fact::from_description(t),
            rows: d.learned_rows.get(i).cloned().unwrap_or_default(),
            replaced: Vec::new(),
        })
    });
    learned.chain(imported).collect()
}

/// What saved read-gate keys must have been made from: this model, this memory's frozen
/// lookup, and exactly these facts.
pub(super) fn read_keys_tag(model_fingerprint: &str, m: &AttachedMemory) -> String {
    let mut texts = Vec::new();
    let mut count = 0;
    for text in keyed_fact_texts(&m.durable.history) {
        texts.extend(text.as_bytes());
        texts.push(0);
        count += 1;
    }
    // What updates replaced names them too (keys made before 2026-12-08 knew none).
    for (i, e) in m.durable.history.learned.iter().enumerate() {
        for text in &e.replaced {
            texts.extend(format!("{i} replaced {text}").as_bytes());
            texts.push(0);
        }
    }
    format!(
        "model {model_fingerprint} memory {} facts {count} {:016x}",
        m.store.init_fingerprint,
        xxhash_rust::xxh3::xxh3_64(&texts)
    )
}

/// Rows that imported deltas without facts changed (made before deltas carried them): no key
/// is known for them, so they read ungated.
pub(super) fn imported_rows(history: &StoreHistory) -> Vec<u32> {
    history
        .imports
        .iter()
        .filter(|d| d.learned.is_empty())
        .flat_map(|d| d.previous.ids.iter().copied())
        .collect()
}

/// The store a memory layer came from; its value rows live on the backend, not here.
pub(super) struct AttachedMemory {
    pub(super) path: Option<PathBuf>,
    pub(super) store: MemoryStore,
    pub(super) durable: DurableMemory,
    /// Template rows and earlier facts' reads, kept per attached memory.
    pub(super) learning: LearningState,
}

/// The value rows of the attached memory, addressed by global row id, on the backend.
pub(super) struct ModelRows<'m> {
    model: &'m mut Model<DeviceBackend>,
    slots: usize,
}

impl RowAccess for ModelRows<'_> {
    fn dim(&self) -> usize {
        self.model.config.dim
    }
    fn total_rows(&self) -> usize {
        self.slots * self.model.memory().len()
    }
    fn read_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(ids.len() * self.dim());
        for (layer, part) in split_by_layer(ids, self.slots) {
            out.extend(self.model.memory_rows(layer, &part)?);
        }
        Ok(out)
    }
    fn write_rows(&mut self, ids: &[u32], values: &[f32]) -> Result<()> {
        let dim = self.dim();
        let mut at = 0;
        for (layer, part) in split_by_layer(ids, self.slots) {
            let n = part.len() * dim;
            self.model
                .set_memory_rows(layer, &part, values[at..at + n].to_vec())?;
            at += n;
        }
        Ok(())
    }
}

/// Ascending global ids → (layer index, slot ids in it), in order.
pub(super) fn split_by_layer(ids: &[u32], slots: usize) -> Vec<(usize, Vec<u32>)> {
    let mut out: Vec<(usize, Vec<u32>)> = Vec::new();
    for &id in ids {
        let (layer, slot) = (id as usize / slots, (id as usize % slots) as u32);
        match out.last_mut() {
            Some((l, v)) if *l == layer => v.push(slot),
            _ => out.push((layer, vec![slot])),
        }
    }
    out
}

/// Each memory layer's values where the model reads them: borrowed on the CPU, so saving them
/// needs no copy.
pub(super) fn value_views(model: &Model<DeviceBackend>) -> Vec<std::borrow::Cow<'_, [f32]>> {
    let b = model.backend();
    model
        .memory()
        .iter()
        .map(|l| b.host_view(&l.values))
        .collect()
}

pub(super) fn no_memory() -> Error {
    Error::InvalidArgument("no memory store is attached (engram retrofit makes one)".into())
}

impl Engine {
    /// Opens the memory store at `path` (journal replayed) and attaches it. With
    /// [`MemoryAccess::Write`] this process holds the store's lock and every learned fact,
    /// snapshot and delta import is journaled before it returns. Returns what opening noticed
    /// and repaired (e.g. a torn journal tail that was dropped).
    pub fn open_memory(
        &mut self,
        path: impl AsRef<Path>,
        access: MemoryAccess,
    ) -> Result<Vec<String>> {
        let path = path.as_ref();
        let (store, durable) = open_store(path, access, self.store_key.as_ref())?;
        let warnings = durable.warnings.clone();
        self.attach(store, Some(path.to_owned()), durable)?;
        Ok(warnings)
    }

    /// Attaches a memory store's layers to the model, after checking that the store belongs
    /// to this model. `path` is where it came from, if anywhere (for messages); changes are
    /// kept in this process only (use [`Engine::open_memory`] to make them durable).
    pub fn attach_memory(&mut self, mut store: MemoryStore, path: Option<PathBuf>) -> Result<()> {
        let durable = DurableMemory::in_process(std::mem::take(&mut store.history));
        self.attach(store, path, durable)
    }

    fn attach(
        &mut self,
        mut store: MemoryStore,
        path: Option<PathBuf>,
        durable: DurableMemory,
    ) -> Result<()> {
        store.check_model(&self.model.config, &self.fingerprint())?;
        let b = self.model.backend();
        let mut blocks = Vec::with_capacity(store.layers.len());
        for layer in &mut store.layers {
            let mut params = layer.clone_without_values();
            params.values = std::mem::take(&mut layer.values);
            blocks.push(MemoryBlock::load(b, &store.config, store.dim, params)?);
        }
        self.model.set_memory(blocks)?;
        self.memory = Some(AttachedMemory {
            path,
            store,
            durable,
            learning: LearningState::default(),
        });
        self.rebuild_read_gate()
    }

    /// Switches the read gate of the attached memory (and of memories attached later).
    pub fn set_read_gating(&mut self, gating: ReadGating) -> Result<()> {
        gating.new_gate(self.model.config.dim)?;
        self.read_gating = gating;
        self.rebuild_read_gate()
    }

    /// The read gate setting.
    pub fn read_gating(&self) -> ReadGating {
        self.read_gating
    }

    /// Distinct keys and keyed rows of the attached memory's read gate (none: no gate).
    pub fn read_gate_size(&self) -> Option<(usize, usize)> {
        let gate = self.model.memory().first()?.read_gate.as_ref()?;
        Some((gate.key_count(), gate.keyed_rows()))
    }

    /// Keys the read gate anew from the history's learned facts (a forward pass below the
    /// memory over each fact's phrasings: about 0.6 s per fact on 2 cores), unless the keys kept
    /// beside the store were made from the same facts.
    pub(super) fn rebuild_read_gate(&mut self) -> Result<()> {
        let Some(m) = self.memory.as_ref() else {
            return Ok(());
        };
        let mut gate = self.read_gating.new_gate(self.model.config.dim)?;
        let mut facts = Vec::new();
        if let Some(g) = gate.as_mut() {
            if g.routes() {
                g.set_word_starts(crate::learn::word_starts(&self.tokenizer));
                g.set_speaker_tokens(crate::learn::speaker_tokens(&self.tokenizer));
            }
            g.set_exempt(imported_rows(&m.durable.history));
            facts = keyed_facts(&m.durable.history);
        }
        let cache = m.path.as_deref().map(read_keys_path);
        let tag = read_keys_tag(&self.fingerprint(), m);
        let cached = match (&mut gate, &cache) {
            (Some(g), Some(path)) if !facts.is_empty() => std::fs::read(path)
                .ok()
                .and_then(|bytes| match m.durable.key() {
                    // Keys that do not open (changed, or another key's) are rebuilt.
                    Some(k) => k.open_file(bytes, "readkeys", path).ok(),
                    None => Some(bytes),
                })
                .and_then(|bytes| g.load_bytes(&bytes, &tag))
                .is_some(),
            _ => false,
        };
        self.model.memory_mut()[0].read_gate = gate;
        if !cached {
            rekey_read_gate(&mut self.model, &self.tokenizer, &facts)?;
            self.save_read_keys();
        }
        Ok(())
    }

    /// Keeps the read gate's keys beside a store opened for writing, so the next process
    /// need not run every learned fact again. Failing to is not an error: the keys follow
    /// from the store's history, and the next open rebuilds them.
    fn save_read_keys(&self) {
        let Some(m) = self.memory.as_ref().filter(|m| m.durable.is_writable()) else {
            return;
        };
        let (Some(path), Some(gate)) = (
            m.path.as_deref(),
            self.model
                .memory()
                .first()
                .and_then(|b| b.read_gate.as_ref()),
        ) else {
            return;
        };
        let bytes = gate.to_bytes(&read_keys_tag(&self.fingerprint(), m));
        let bytes = match m.durable.key() {
            Some(k) => match k.seal_file(bytes, "readkeys") {
                Ok(sealed) => sealed,
                Err(_) => return,
            },
            None => bytes,
        };
        let _ = crate::delta::write_atomic(&read_keys_path(path), &bytes);
    }

    /// Keys the read gate with a just imported delta's facts (`texts`, with the rows each owns
    /// where the delta carried them).
    pub(super) fn key_imported_facts(
        &mut self,
        texts: &[String],
        fact_rows: &[Vec<u32>],
    ) -> Result<()> {
        let Some(m) = &self.memory else {
            return Ok(());
        };
        let rows = imported_rows(&m.durable.history);
        let Some(gate) = self.model.memory_mut()[0].read_gate.as_mut() else {
            return Ok(());
        };
        gate.set_exempt(rows);
        let facts: Vec<KeyedFact> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| KeyedFact {
                fact: Fact::from_description(t),
                rows: fact_rows.get(i).cloned().unwrap_or_default(),
                replaced: Vec::new(),
            })
            .collect();
        rekey_read_gate(&mut self.model, &self.tokenizer, &facts)?;
        self.save_read_keys();
        Ok(())
    }

    /// Takes the memory layer off and returns it as a store, its values moved out of the model
    /// instead of copied where they live on the host; the engine is the base model again.
    pub fn detach_memory_store(&mut self) -> Result<MemoryStore> {
        let m = self.memory.take().ok_or_else(no_memory)?;
        let mut store = m.store;
        store.history = m.durable.history.clone();
        let blocks = self.model.take_memory();
        let b = self.model.backend();
        for (layer, block) in store.layers.iter_mut().zip(blocks) {
            layer.values = b.take_values(block.values);
        }
        Ok(store)
    }

    /// Takes the memory layer off; the engine is the base model again.
    pub fn detach_memory(&mut self) {
        self.model.take_memory();
        self.memory = None;
    }

    /// Config of the attached memory, if any.
    pub fn memory_config(&self) -> Option<&MemoryConfig> {
        self.memory.as_ref().map(|m| &m.store.config)
    }

    /// Background tokens whose reads the attached memory's store keeps for learning's
    /// background anchor (0: none, or no memory attached; see
    /// [`LearnOptions::background_penalty`]).
    pub fn background_sample_tokens(&self) -> usize {
        self.memory.as_ref().map_or(0, |m| {
            let c = &m.store.config;
            m.store.layers[0]
                .background
                .sample
                .tokens(c.heads * c.top_k)
        })
    }

    /// Path of the attached memory store, if it came from a file.
    pub fn memory_path(&self) -> Option<&Path> {
        self.memory.as_ref().and_then(|m| m.path.as_deref())
    }

    /// Learns `facts` into the attached memory (one after another). `progress(fact, step,
    /// loss)` is called after every step; a fact's last call comes once the fact is durable
    /// (journaled as one record when the store was opened for writing). Returning `false`
    /// stops: a fact stopped before its last step leaves nothing of itself in the memory,
    /// and learning the same fact next goes on from the step where it stopped (when nothing
    /// else changed the memory between).
    pub fn learn(
        &mut self,
        facts: &[Fact],
        options: &LearnOptions,
        progress: &mut dyn FnMut(usize, usize, f64) -> bool,
    ) -> Result<LearnReport> {
        self.learn_replacing(facts, &[], options, progress)
    }

    /// [`Self::learn`], each fact recorded as replacing the facts `replaced` (texts, oldest
    /// first: what an update forgot, see `Engine::remember`): it is trained on the questions
    /// the last of them answered too, and their words name it to a routing read gate.
    pub(super) fn learn_replacing(
        &mut self,
        facts: &[Fact],
        replaced: &[String],
        options: &LearnOptions,
        progress: &mut dyn FnMut(usize, usize, f64) -> bool,
    ) -> Result<LearnReport> {
        let m = self.memory.as_mut().ok_or_else(no_memory)?;
        let layer = &m.store.layers[0];
        let durable = &mut m.durable;
        let report = crate::learn::learn(
            &mut self.model,
            &self.tokenizer,
            &layer.background,
            m.store.background.batches,
            facts,
            replaced,
            options,
            &mut m.learning,
            progress,
            &mut |c| {
                durable.commit_learned(
                    LearnedEntry {
                        at: unix_now(),
                        text: c.fact.describe(),
                        rows: c.rows.to_vec(),
                        // Numbered by the durable side (the next free number).
                        uid: 0,
                        replaced: replaced.to_vec(),
                    },
                    // The learning memory is the first layer: slot ids are global row ids.
                    c.rows,
                    c.before,
                    c.diff,
                )
            },
        );
        self.save_read_keys();
        report
    }

    pub(super) fn attached(&mut self) -> Result<(&mut AttachedMemory, ModelRows<'_>)> {
        let m = self.memory.as_mut().ok_or_else(no_memory)?;
        // Whoever takes the rows this way changes them otherwise than by learning.
        m.learning.drop_suspended();
        let slots = m.store.config.slots();
        Ok((
            m,
            ModelRows {
                model: &mut self.model,
                slots,
            },
        ))
    }

    /// Names the current state so a later delta can hold only what was learned after it.
    pub fn snapshot(&mut self, name: &str) -> Result<()> {
        let (m, mut rows) = self.attached()?;
        m.durable.commit(
            Change::Snapshot {
                name: name.to_owned(),
                created: unix_now(),
            },
            &mut rows,
        )?;
        Ok(())
    }

    /// Snapshots of the attached memory, oldest first.
    pub fn snapshots(&self) -> &[Snapshot] {
        self.memory
            .as_ref()
            .map_or(&[], |m| m.durable.history.snapshots.as_slice())
    }

    /// Deltas imported into the attached memory and not reverted, oldest first.
    pub fn imported_deltas(&self) -> &[ImportedDelta] {
        self.memory
            .as_ref()
            .map_or(&[], |m| m.durable.history.imports.as_slice())
    }

    /// Facts learned into the attached memory, oldest first.
    pub fn learned_facts(&self) -> &[LearnedEntry] {
        self.memory
            .as_ref()
            .map_or(&[], |m| m.durable.history.learned.as_slice())
    }

    /// Makes the attached memory its store file's (the rows changed since the last checkpoint
    /// and the history written in place, crash-safe; an encrypted store written whole,
    /// atomically) and empties the journal. Needs the store opened for writing.
    pub fn checkpoint(&mut self) -> Result<CheckpointReport> {
        let m = self.memory.as_mut().ok_or_else(no_memory)?;
        let views = value_views(&self.model);
        let values: Vec<&[f32]> = views.iter().map(|v| v.as_ref()).collect();
        m.durable.checkpoint_with_values(m.store.clone(), &values)
    }

    /// Bytes in the attached store's journal (what a checkpoint would fold in).
    pub fn journal_len(&self) -> u64 {
        self.memory.as_ref().map_or(0, |m| m.durable.journal_len())
    }

    /// The attached store with its history, its value rows left empty (they live in the model).
    fn store_without_values(&self) -> Result<MemoryStore> {
        let m = self
            .memory
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("no memory store is attached".into()))?;
        let mut store = m.store.clone();
        store.history = m.durable.history.clone();
        Ok(store)
    }

    /// The attached memory as a store (value rows read back from the device), e.g. to save.
    pub fn memory_store(&self) -> Result<MemoryStore> {
        let mut store = self.store_without_values()?;
        let b = self.model.backend();
        for (layer, block) in store.layers.iter_mut().zip(self.model.memory()) {
            layer.values = b.download(&block.values).into();
        }
        Ok(store)
    }

    /// The key stores are encrypted under (from [`super::EngineOptions::store_key`]).
    pub fn store_key(&self) -> Option<&StoreKey> {
        self.store_key.as_ref()
    }

    /// Writes the attached memory, learned values included, to `path` atomically (encrypted
    /// when the engine has a store key).
    pub fn save_memory(&self, path: impl AsRef<Path>) -> Result<()> {
        let store = self.store_without_values()?;
        let views = value_views(&self.model);
        let values: Vec<&[f32]> = views.iter().map(|v| v.as_ref()).collect();
        store.save_with_values_sealed(path, &values, self.store_key.as_ref())
    }

    /// Background slot usage of each attached memory layer.
    pub fn memory_usage(&self) -> Vec<SlotUsage> {
        self.memory
            .as_ref()
            .map_or_else(Vec::new, |m| m.store.usage())
    }
}

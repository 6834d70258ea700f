//! The engine: a model file, its tokenizer and a backend, behind one easy API.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;
use crate::backend::device::DeviceBackend;
use crate::backend::wgpu::{WgpuBackend, WgpuOptions};
use crate::delta::{
    Applied, Change, Delta, DeltaPrecision, DurableMemory, ImportedDelta, LearnedEntry,
    MemoryAccess, RowAccess, RowSet, Snapshot, StoreHistory, open_store, unix_now,
};
use crate::gguf::Gguf;
use crate::learn::{Committed, Fact, LearnOptions, LearnReport, LearningState, rekey_read_gate};
use crate::memory::{
    DEFAULT_NOTE_READ_GATE, DEFAULT_READ_GATE, MemoryBlock, MemoryConfig, MemoryStore, ReadGate,
    SlotUsage,
};
use crate::model::{Logits, Model, fingerprint};
use crate::sampling::{Sampler, SamplingConfig};
use crate::tokenizer::{ChatMessage, Tokenizer};
use crate::{Error, Result};

/// Where the model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// A discrete or integrated GPU through wgpu when one exists, else the CPU (the reason
    /// is kept in [`Engine::device_note`]). `$ENGRAM_DEVICE` (same names as `--device`)
    /// overrides it.
    #[default]
    Auto,
    /// The host CPU.
    Cpu,
    /// The best wgpu adapter, a software one such as lavapipe included.
    Wgpu,
    /// wgpu adapter number N of `engram info --devices`.
    WgpuAdapter(usize),
    /// NVIDIA GPUs through CUDA (not in this build: the error says to use wgpu).
    Cuda,
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "wgpu" | "gpu" => Ok(Device::Wgpu),
            "cuda" => Ok(Device::Cuda),
            _ => match s.strip_prefix("wgpu:").map(str::parse) {
                Some(Ok(i)) => Ok(Device::WgpuAdapter(i)),
                _ => Err(Error::InvalidArgument(format!(
                    "unknown device {s:?}: expected auto, cpu, wgpu, wgpu:N or cuda"
                ))),
            },
        }
    }
}

/// Whether this machine can have a GPU at all. On Linux a GPU driver exposes a device node;
/// without one `auto` skips loading the Vulkan loader and software drivers (which cost time
/// and, headless, print warnings of their own).
fn gpu_device_nodes_exist() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let has = |dir: &str, prefix: &str| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
        })
    };
    has("/dev/dri", "renderD") || has("/dev", "nvidia")
}

/// The backend for `device`, and why Auto fell back to the CPU if it did.
fn open_backend(device: Device, threads: usize) -> Result<(DeviceBackend, Option<String>)> {
    if device == Device::Auto
        && let Ok(chosen) = std::env::var("ENGRAM_DEVICE")
        && !chosen.is_empty()
    {
        let named: Device = chosen
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("ENGRAM_DEVICE: {e}")))?;
        if named != Device::Auto {
            return open_backend(named, threads);
        }
    }
    let wgpu = |adapter, allow_software| {
        WgpuBackend::new(&WgpuOptions {
            adapter,
            allow_software,
            max_binding: None,
        })
        .map(|b| DeviceBackend::Wgpu(Box::new(b)))
    };
    match device {
        Device::Cpu => Ok((DeviceBackend::Cpu(CpuBackend::new(threads)?), None)),
        Device::Wgpu => Ok((wgpu(None, true)?, None)),
        Device::WgpuAdapter(i) => Ok((wgpu(Some(i), true)?, None)),
        Device::Cuda => Err(Error::Unsupported(
            "this build of engram has no CUDA backend; NVIDIA GPUs run through wgpu \
             (--device wgpu, Vulkan)"
                .into(),
        )),
        Device::Auto if !gpu_device_nodes_exist() => Ok((
            DeviceBackend::Cpu(CpuBackend::new(threads)?),
            Some("running on the CPU: no GPU device node (/dev/dri/renderD*, /dev/nvidia*)".into()),
        )),
        Device::Auto => match wgpu(None, false) {
            Ok(b) => Ok((b, None)),
            Err(e) => Ok((
                DeviceBackend::Cpu(CpuBackend::new(threads)?),
                Some(format!("running on the CPU: {e}")),
            )),
        },
    }
}

/// How an engine is opened.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Device to run on.
    pub device: Device,
    /// CPU worker threads (0 = one per core).
    pub threads: usize,
    /// Context window in tokens (0 = what the model was trained for).
    pub context: usize,
    /// Memory store to attach (made by `engram retrofit` for this model).
    pub memory: Option<PathBuf>,
    /// Whether the memory store is opened for writing (journaled, locked) or only read.
    pub memory_access: MemoryAccess,
    /// Whether reads of learned value rows are gated by the learned facts' keys.
    pub read_gate: ReadGating,
}

/// Whether reads of learned value rows are gated by the learned facts' keys
/// ([`ReadGate`]): on by default.
#[derive(Clone, Copy, Debug, PartialEq)]
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
    /// Every read passes: the plain memory layer.
    Off,
}

impl Default for ReadGating {
    fn default() -> Self {
        ReadGating::Cosine {
            questions: DEFAULT_READ_GATE,
            notes: DEFAULT_NOTE_READ_GATE,
        }
    }
}

impl ReadGating {
    /// An empty gate for inputs `dim` wide with these cosines (`None` when off); an error
    /// names a cosine outside [-1, 1].
    fn new_gate(self, dim: usize) -> Result<Option<ReadGate>> {
        match self {
            ReadGating::Off => Ok(None),
            ReadGating::Cosine { questions, notes } => {
                ReadGate::new(dim, questions, notes).map(Some)
            }
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
fn keyed_fact_texts(history: &StoreHistory) -> impl Iterator<Item = &str> {
    let learned = history.learned.iter().map(|e| e.text.as_str());
    learned.chain(
        history
            .imports
            .iter()
            .flat_map(|d| d.learned.iter().map(String::as_str)),
    )
}

/// What saved read-gate keys must have been made from: this model, this memory's frozen
/// lookup, and exactly these facts.
fn read_keys_tag(model_fingerprint: &str, m: &AttachedMemory) -> String {
    let mut texts = Vec::new();
    let mut count = 0;
    for text in keyed_fact_texts(&m.durable.history) {
        texts.extend(text.as_bytes());
        texts.push(0);
        count += 1;
    }
    format!(
        "model {model_fingerprint} memory {} facts {count} {:016x}",
        m.store.init_fingerprint,
        xxhash_rust::xxh3::xxh3_64(&texts)
    )
}

/// Rows that imported deltas without facts changed (made before deltas carried them): no key
/// is known for them, so they read ungated.
fn imported_rows(history: &StoreHistory) -> Vec<u32> {
    history
        .imports
        .iter()
        .filter(|d| d.learned.is_empty())
        .flat_map(|d| d.previous.ids.iter().copied())
        .collect()
}

/// Settings of one generation.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Token choice.
    pub sampling: SamplingConfig,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampling: SamplingConfig::default(),
        }
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-text / end-of-turn token.
    EndOfText,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context window is full.
    ContextFull,
    /// The token callback asked to stop.
    Cancelled,
}

/// The result of a generation.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The generated text (prompt not included).
    pub text: String,
    /// The generated token ids (stop token not included).
    pub tokens: Vec<u32>,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Why it stopped.
    pub stop: StopReason,
    /// Time spent on the prompt.
    pub prefill_time: Duration,
    /// Time spent generating.
    pub decode_time: Duration,
}

/// A loaded model ready to generate.
pub struct Engine {
    model: Model<DeviceBackend>,
    device_note: Option<String>,
    tokenizer: Tokenizer,
    gguf: Gguf,
    path: PathBuf,
    context: usize,
    memory: Option<AttachedMemory>,
    read_gating: ReadGating,
}

/// The store a memory layer came from; its value rows live on the backend, not here.
struct AttachedMemory {
    path: Option<PathBuf>,
    store: MemoryStore,
    durable: DurableMemory,
    /// Template rows and earlier facts' reads, kept per attached memory.
    learning: LearningState,
}

/// The value rows of the attached memory, addressed by global row id, on the backend.
struct ModelRows<'m> {
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
fn split_by_layer(ids: &[u32], slots: usize) -> Vec<(usize, Vec<u32>)> {
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

/// Each memory layer's values where the model reads them: borrowed on the CPU, so saving them
/// needs no copy.
fn value_views(model: &Model<DeviceBackend>) -> Vec<std::borrow::Cow<'_, [f32]>> {
    let b = model.backend();
    model
        .memory()
        .iter()
        .map(|l| b.host_view(&l.values))
        .collect()
}

fn no_memory() -> Error {
    Error::InvalidArgument("no memory store is attached (engram retrofit makes one)".into())
}

/// Row access for changes that touch no rows.
struct NoRows(usize);

impl RowAccess for NoRows {
    fn dim(&self) -> usize {
        self.0
    }
    fn total_rows(&self) -> usize {
        0
    }
    fn read_rows(&self, _: &[u32]) -> Result<Vec<f32>> {
        Ok(Vec::new())
    }
    fn write_rows(&mut self, _: &[u32], _: &[f32]) -> Result<()> {
        Ok(())
    }
}

/// Turns a stream of token bytes into text pieces that are whole UTF-8 characters.
#[derive(Default)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    /// Adds bytes and returns the text that is complete so far.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete character at the end waits for the next token; invalid bytes do not.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let out: Vec<u8> = self.pending.drain(..valid).collect();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Whatever is left (lossily decoded).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

impl Engine {
    /// Opens a GGUF model (memory-mapped; weights are not read until used).
    pub fn open(path: impl AsRef<Path>, options: &EngineOptions) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model file not found"),
            ));
        }
        let gguf = Gguf::open(path)?;
        let (backend, device_note) = open_backend(options.device, options.threads)?;
        let model = Model::load(&gguf, backend)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        if tokenizer.vocab_size() != model.config.vocab_size {
            return Err(Error::Model(format!(
                "tokenizer has {} tokens but the embedding table {}",
                tokenizer.vocab_size(),
                model.config.vocab_size
            )));
        }
        let trained = model.config.context_length;
        let context = if options.context == 0 {
            trained
        } else {
            options.context.min(trained)
        };
        let mut engine = Engine {
            model,
            device_note,
            tokenizer,
            gguf,
            path: path.to_owned(),
            context,
            memory: None,
            read_gating: options.read_gate,
        };
        options.read_gate.new_gate(engine.model.config.dim)?;
        if let Some(m) = &options.memory {
            engine.open_memory(m, options.memory_access)?;
        }
        Ok(engine)
    }

    /// The fingerprint of this model's weights (what a memory store must have been made for).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.gguf)
    }

    /// Opens the memory store at `path` (journal replayed) and attaches it. With
    /// [`MemoryAccess::Write`] this process holds the store's lock and every learning step,
    /// snapshot and delta import is journaled before it returns. Returns what opening noticed
    /// and repaired (e.g. a torn journal tail that was dropped).
    pub fn open_memory(
        &mut self,
        path: impl AsRef<Path>,
        access: MemoryAccess,
    ) -> Result<Vec<String>> {
        let path = path.as_ref();
        let (store, durable) = open_store(path, access)?;
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
    fn rebuild_read_gate(&mut self) -> Result<()> {
        let Some(m) = self.memory.as_ref() else {
            return Ok(());
        };
        let mut gate = self.read_gating.new_gate(self.model.config.dim)?;
        let mut facts = Vec::new();
        if let Some(g) = gate.as_mut() {
            g.set_exempt(imported_rows(&m.durable.history));
            facts.extend(keyed_fact_texts(&m.durable.history).map(Fact::from_description));
        }
        let cache = m.path.as_deref().map(read_keys_path);
        let tag = read_keys_tag(&self.fingerprint(), m);
        let cached = match (&mut gate, &cache) {
            (Some(g), Some(path)) if !facts.is_empty() => std::fs::read(path)
                .ok()
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
        let _ = crate::delta::write_atomic(&read_keys_path(path), &bytes);
    }

    /// Keys the read gate with a just imported delta's facts (`texts`).
    fn key_imported_facts(&mut self, texts: &[String]) -> Result<()> {
        let Some(m) = &self.memory else {
            return Ok(());
        };
        let rows = imported_rows(&m.durable.history);
        let Some(gate) = self.model.memory_mut()[0].read_gate.as_mut() else {
            return Ok(());
        };
        gate.set_exempt(rows);
        let facts: Vec<Fact> = texts.iter().map(|t| Fact::from_description(t)).collect();
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
            layer.values = b.take_to_host(block.values);
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
    /// loss)` is called after every step, once the step is durable (journaled when the store
    /// was opened for writing); returning `false` stops after that step.
    pub fn learn(
        &mut self,
        facts: &[Fact],
        options: &LearnOptions,
        progress: &mut dyn FnMut(usize, usize, f64) -> bool,
    ) -> Result<LearnReport> {
        let m = self.memory.as_mut().ok_or_else(no_memory)?;
        let layer = &m.store.layers[0];
        let dim = self.model.config.dim;
        let durable = &mut m.durable;
        let report = crate::learn::learn(
            &mut self.model,
            &self.tokenizer,
            &layer.background,
            m.store.background.batches,
            facts,
            options,
            &mut m.learning,
            progress,
            &mut |c| match c {
                // The learning memory is the first layer: slot ids are global row ids.
                Committed::Step {
                    rows,
                    before,
                    after,
                } => durable.commit_written(rows, before, after, dim),
                Committed::Fact(f) => durable
                    .commit(
                        Change::Learned(LearnedEntry {
                            at: unix_now(),
                            text: f.describe(),
                        }),
                        &mut NoRows(dim),
                    )
                    .map(|_| ()),
            },
        );
        self.save_read_keys();
        report
    }

    fn attached(&mut self) -> Result<(&mut AttachedMemory, ModelRows<'_>)> {
        let m = self.memory.as_mut().ok_or_else(no_memory)?;
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

    /// What was learned since the beginning (`since = None`: every row that differs from
    /// the all-zero initial values) or since the snapshot named `since`, as a delta.
    ///
    /// ```no_run
    /// # use engram::{Engine, EngineOptions, delta::{DeltaPrecision, MemoryAccess}};
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
                let learned = h.learned.iter().map(|e| e.text.clone()).collect();
                (set, learned, "beginning".to_owned())
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
                let learned = h.learned[from.min(h.learned.len())..]
                    .iter()
                    .map(|e| e.text.clone())
                    .collect();
                (set, learned, format!("snapshot {name}"))
            }
        };
        let s = &m.store;
        Ok(Delta::new(
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
        ))
    }

    /// Adds a delta's differences to the attached memory. Importing the same delta again
    /// changes nothing. Where deltas touch the same rows their differences add up.
    pub fn import_delta(&mut self, delta: &Delta) -> Result<ImportReport> {
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
            },
            &mut rows,
        )?;
        self.key_imported_facts(&delta.learned)?;
        Ok(ImportReport {
            id: delta.id.clone(),
            rows: n,
            overlapping,
            already_imported: false,
        })
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

    /// Writes the attached memory as a new checkpoint of its store (atomically) and empties
    /// the journal. Needs the store opened for writing.
    pub fn checkpoint(&mut self) -> Result<()> {
        let m = self.memory.as_mut().ok_or_else(no_memory)?;
        let views = value_views(&self.model);
        let values: Vec<&[f32]> = views.iter().map(|v| v.as_ref()).collect();
        m.durable.checkpoint_with_values(m.store.clone(), &values)
    }

    /// Bytes in the attached store's journal (what a checkpoint would fold in).
    pub fn journal_len(&self) -> u64 {
        self.memory.as_ref().map_or(0, |m| m.durable.journal_len())
    }

    /// Answers `question` through the chat template, greedily.
    pub fn ask(&self, question: &str, max_tokens: usize) -> Result<String> {
        let options = GenerateOptions {
            max_tokens,
            ..Default::default()
        };
        let g = self.chat(&[ChatMessage::new("user", question)], &options, |_| true)?;
        Ok(g.text.trim().to_owned())
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
            layer.values = b.download(&block.values);
        }
        Ok(store)
    }

    /// Writes the attached memory, learned values included, to `path` atomically.
    pub fn save_memory(&self, path: impl AsRef<Path>) -> Result<()> {
        let store = self.store_without_values()?;
        let views = value_views(&self.model);
        let values: Vec<&[f32]> = views.iter().map(|v| v.as_ref()).collect();
        store.save_with_values(path, &values)
    }

    /// Background slot usage of each attached memory layer.
    pub fn memory_usage(&self) -> Vec<SlotUsage> {
        self.memory
            .as_ref()
            .map_or_else(Vec::new, |m| m.store.usage())
    }

    /// The model graph.
    pub fn model(&self) -> &Model<DeviceBackend> {
        &self.model
    }

    /// The model graph, mutable (learning changes the memory's values through it).
    pub fn model_mut(&mut self) -> &mut Model<DeviceBackend> {
        &mut self.model
    }

    /// The device the model runs on, e.g. "cpu (2 threads)".
    pub fn device_name(&self) -> String {
        self.model.backend().name()
    }

    /// Why [`Device::Auto`] chose the CPU, when it did.
    pub fn device_note(&self) -> Option<&str> {
        self.device_note.as_deref()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The parsed model file.
    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    /// Path the model was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Context window in tokens.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Completes `prompt` as raw text, streaming each piece of text to `on_text`
    /// (return `false` from it to stop).
    pub fn generate(
        &self,
        prompt: &str,
        options: &GenerateOptions,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let tokens = self.tokenizer.encode(prompt, true)?;
        let mut session = self.session();
        session.generate(&tokens, options, on_text)
    }

    /// Answers a conversation through the model's chat template.
    pub fn chat(
        &self,
        messages: &[ChatMessage],
        options: &GenerateOptions,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let prompt = self.tokenizer.apply_chat_template(messages, true)?;
        let tokens = self.tokenizer.encode(&prompt, true)?;
        self.session().generate(&tokens, options, on_text)
    }

    /// A stateful session whose KV cache carries over between calls (for interactive chat).
    pub fn session(&self) -> Session<'_> {
        Session {
            engine: self,
            cache: self.model.new_cache(self.context),
            tokens: Vec::new(),
        }
    }

    /// Logits for every position of `tokens` (vocab-wide rows), from an empty cache.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_fits(tokens.len())?;
        let mut cache = self.model.new_cache(tokens.len());
        self.model.forward(tokens, &mut cache, Logits::All)
    }

    /// Mean negative log-likelihood (nats/token) of `tokens` scored in windows of `window`
    /// tokens; only the second half of each window is scored, as llama.cpp's perplexity does.
    pub fn perplexity(&self, tokens: &[u32], window: usize) -> Result<(f64, usize)> {
        if window < 2 || tokens.len() < window {
            return Err(Error::InvalidArgument(format!(
                "perplexity needs at least {window} tokens, got {}",
                tokens.len()
            )));
        }
        let vocab = self.model.config.vocab_size;
        let (mut nll, mut count) = (0f64, 0usize);
        for chunk in tokens.chunks_exact(window) {
            let logits = self.logits(chunk)?;
            for i in window / 2..window - 1 {
                let row = &logits[i * vocab..(i + 1) * vocab];
                nll += log_softmax_at(row, chunk[i + 1] as usize);
                count += 1;
            }
        }
        Ok((nll / count as f64, count))
    }

    fn check_fits(&self, n: usize) -> Result<()> {
        if n > self.context {
            return Err(Error::ContextOverflow {
                tokens: n,
                context: self.context,
            });
        }
        Ok(())
    }
}

/// −log p(target) under `logits`.
pub fn log_softmax_at(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    lse - logits[target] as f64
}

/// A conversation's state: the tokens already in the KV cache.
pub struct Session<'e> {
    engine: &'e Engine,
    cache: <DeviceBackend as Backend>::KvCache,
    tokens: Vec<u32>,
}

/// What one forward step hands the sampler.
enum Next {
    /// The greedy choice, made on the device.
    Token(u32),
    /// Logits of the last position, for samplers that need them.
    Logits(Vec<f32>),
}

impl Session<'_> {
    /// Generates after `prompt`, reusing the cache for the longest prefix it shares with
    /// what was processed before.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        options: &GenerateOptions,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        options.sampling.validate()?;
        let e = self.engine;
        if prompt.is_empty() {
            return Err(Error::InvalidArgument("the prompt is empty".into()));
        }
        e.check_fits(prompt.len())?;
        let b = e.model.backend();
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        b.kv_truncate(&mut self.cache, common);
        self.tokens.truncate(common);

        // Plain greedy needs only the argmax, which the device computes: a GPU then sends back
        // one word per token instead of the vocabulary's logits.
        let greedy = options.sampling.temperature <= 0.0 && options.sampling.repeat_penalty == 1.0;
        let step = |tokens: &[u32], cache: &mut _| -> Result<Next> {
            if greedy {
                Ok(Next::Token(e.model.forward_greedy(tokens, cache)?))
            } else {
                Ok(Next::Logits(e.model.forward(
                    tokens,
                    cache,
                    Logits::Last,
                )?))
            }
        };
        let start = Instant::now();
        let mut next_step = step(&prompt[common..], &mut self.cache)?;
        self.tokens.extend_from_slice(&prompt[common..]);
        let prefill_time = start.elapsed();

        let start = Instant::now();
        let mut sampler = Sampler::new(options.sampling.clone());
        let mut stream = TextStream::default();
        let mut out = Vec::new();
        let mut text = String::new();
        let stop = loop {
            if out.len() >= options.max_tokens {
                break StopReason::MaxTokens;
            }
            let next = match &mut next_step {
                Next::Token(t) => *t,
                Next::Logits(logits) => sampler.sample(logits, &self.tokens),
            };
            if e.tokenizer.stop_tokens.contains(&next) {
                break StopReason::EndOfText;
            }
            out.push(next);
            let piece = stream.push(e.tokenizer.token_bytes(next));
            text.push_str(&piece);
            if !piece.is_empty() && !on_text(&piece) {
                break StopReason::Cancelled;
            }
            if self.tokens.len() + 1 > e.context {
                break StopReason::ContextFull;
            }
            next_step = step(&[next], &mut self.cache)?;
            self.tokens.push(next);
        };
        let rest = stream.finish();
        if !rest.is_empty() {
            on_text(&rest);
            text.push_str(&rest);
        }
        Ok(Generation {
            text,
            tokens: out,
            prompt_tokens: prompt.len(),
            stop,
            prefill_time,
            decode_time: start.elapsed(),
        })
    }
}

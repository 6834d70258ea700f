//! The memory store file: a GGUF container with `engram.*` metadata and f32 tensors.

use std::path::Path;

use xxhash_rust::xxh3::Xxh3;

use super::history::StoreHistory;
use super::in_place::{CheckpointImage, FileLayout, frame_history, unframe_history};
use super::sealed_store::MAGIC as SEALED_BY_PIECE;
use super::sealed::{StoreKey, is_sealed};
use crate::error::{Error, Result};
use crate::gguf::{F32Buffer, Gguf, GgufWriter, TensorInfo, Value, ValueType};
use crate::memory::{
    BackgroundInfo, BackgroundSample, BackgroundStats, MemoryConfig, MemoryLayerParams, SlotUsage,
};
use crate::model::ModelConfig;
use crate::quant::GgmlType;

/// Version of the memory-store layout this build writes: 2 keeps the history after the
/// tensor data, so a checkpoint rewrites it and the changed rows in place.
pub const STORE_FORMAT_VERSION: u32 = 2;
/// The layout before 2026-12-06, history in the GGUF header: still read, and rewritten as
/// the current layout by its first checkpoint.
const HEADER_HISTORY_VERSION: u64 = 1;
/// `engram.kind` of a memory store.
pub const STORE_KIND: &str = "memory";

/// A memory layer and everything known about it: what a user's learning lives in.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryStore {
    /// Shape and placement.
    pub config: MemoryConfig,
    /// Model width (value rows have this many columns).
    pub dim: usize,
    /// `model::fingerprint` of the base model the store belongs to.
    pub base_fingerprint: String,
    /// Hash of the initial (frozen) parameters: stores with equal ids can exchange deltas.
    pub init_fingerprint: String,
    /// How the background statistics were gathered.
    pub background: BackgroundInfo,
    /// One entry per memory layer, in `config.layers` order.
    pub layers: Vec<MemoryLayerParams>,
    /// Free-form provenance (`engram.info.*`): how the store was made.
    pub info: Vec<(String, String)>,
    /// Snapshots, imported deltas and learned facts (empty for a fresh retrofit).
    pub history: StoreHistory,
}

fn tensor_name(layer: usize, part: &str) -> String {
    format!("mem.{layer}.{part}")
}

/// The optional background sample of `layer`: both tensors or neither, each `reads × n` f32,
/// slot ids whole numbers below the slot count, weights in [0, 1].
fn read_sample(g: &Gguf, layer: usize, c: &MemoryConfig) -> Result<BackgroundSample> {
    let bad = |m: String| Error::Memory(m);
    let (slots_name, weights_name) = (
        tensor_name(layer, "background.sample.slots"),
        tensor_name(layer, "background.sample.weights"),
    );
    let (ids, weights) = match (g.tensor(&slots_name), g.tensor(&weights_name)) {
        (None, None) => return Ok(BackgroundSample::default()),
        (Some(a), Some(b)) => (a, b),
        _ => {
            return Err(bad(format!(
                "only one of {slots_name} and {weights_name} is present"
            )));
        }
    };
    let reads = (c.heads * c.top_k) as u64;
    for t in [ids, weights] {
        if t.dtype != GgmlType::F32 || t.dims.len() != 2 || t.dims[0] != reads {
            return Err(bad(format!(
                "tensor {} is {} {:?}, the config needs f32 [{reads}, tokens]",
                t.name, t.dtype, t.dims
            )));
        }
    }
    if ids.dims != weights.dims {
        return Err(bad(format!(
            "{slots_name} {:?} and {weights_name} {:?} differ in shape",
            ids.dims, weights.dims
        )));
    }
    let slots = c.slots();
    let ids = g
        .tensor_f32(ids)
        .into_iter()
        .enumerate()
        .map(|(i, x)| {
            if x.fract() == 0.0 && x >= 0.0 && (x as usize) < slots {
                Ok(x as u32)
            } else {
                Err(bad(format!(
                    "{slots_name}[{i}] = {x} is not a slot of this memory (0..{slots})"
                )))
            }
        })
        .collect::<Result<Vec<u32>>>()?;
    let weights = g.tensor_f32(weights);
    if let Some(i) = weights.iter().position(|w| !(0.0..=1.0).contains(w)) {
        return Err(bad(format!(
            "{weights_name}[{i}] = {} is not a softmax weight in [0, 1]",
            weights[i]
        )));
    }
    Ok(BackgroundSample {
        slots: ids,
        weights,
    })
}

impl MemoryStore {
    /// Hash of the parameters that learning never changes (query, keys, gates) and the config.
    pub fn compute_init_fingerprint(config: &MemoryConfig, layers: &[MemoryLayerParams]) -> String {
        let mut h = Xxh3::new();
        h.update(format!("{config:?}").as_bytes());
        let mut put = |v: &[f32]| {
            h.update(&(v.len() as u64).to_le_bytes());
            for x in v {
                h.update(&x.to_le_bytes());
            }
        };
        for l in layers {
            put(&l.query);
            put(&l.query_bias);
            put(&l.keys);
            put(l.gate_in.as_deref().unwrap_or(&[]));
            put(l.gate_out.as_deref().unwrap_or(&[]));
        }
        format!("{:032x}", h.digest128())
    }

    /// Expected element count and GGUF dims (innermost first) of each tensor of a layer.
    fn tensor_shapes(&self) -> Vec<(&'static str, Vec<u64>)> {
        let c = &self.config;
        let (d, qk, slots) = (
            self.dim as u64,
            (c.heads * c.k_dim) as u64,
            c.slots() as u64,
        );
        let mut v = vec![
            ("query.weight", vec![d, qk]),
            ("query.bias", vec![qk]),
            (
                "keys",
                vec![c.half_dim() as u64, c.n_keys as u64, 2 * c.heads as u64],
            ),
            ("values", vec![d, slots]),
            ("background.count", vec![slots]),
            ("background.df", vec![slots]),
        ];
        if c.gated {
            v.push(("gate_in.weight", vec![d, d]));
            v.push(("gate_out.weight", vec![d, d]));
        }
        v
    }

    /// Checks the config against the model and the fingerprint against the model's.
    pub fn check_model(&self, model: &ModelConfig, model_fingerprint: &str) -> Result<()> {
        self.config.validate(model.n_layers)?;
        if self.dim != model.dim {
            return Err(Error::Memory(format!(
                "the store's value rows have {} columns but the model's width is {}",
                self.dim, model.dim
            )));
        }
        if self.base_fingerprint != model_fingerprint {
            return Err(Error::Memory(format!(
                "the store was made for another base model (fingerprint {}, this model {}); \
                 retrofit a new store for this model",
                self.base_fingerprint, model_fingerprint
            )));
        }
        Ok(())
    }

    /// Serializes the store (values and statistics included) into a GGUF writer.
    pub fn to_writer(&self) -> Result<GgufWriter<'_>> {
        let values: Vec<&[f32]> = self.layers.iter().map(|l| &l.values[..]).collect();
        self.writer_with_values(&values)
    }

    /// [`Self::to_writer`] with each layer's values given apart (borrowed from where the model
    /// reads them): a save then needs no copy of the values in the store.
    pub fn writer_with_values<'a>(&'a self, values: &[&'a [f32]]) -> Result<GgufWriter<'a>> {
        let wanted = self.config.slots() * self.dim;
        if values.len() != self.layers.len() || values.iter().any(|v| v.len() != wanted) {
            return Err(Error::Memory(format!(
                "values for {} layers of {} given, the store has {} layers of {wanted}",
                values.len(),
                values.first().map_or(0, |v| v.len()),
                self.layers.len()
            )));
        }
        let c = &self.config;
        let mut w = GgufWriter::new();
        let s = |v: &str| Value::String(v.to_owned());
        let u = |v: usize| Value::U64(v as u64);
        w.set("general.architecture", s("engram-memory"));
        w.set("engram.kind", s(STORE_KIND));
        w.set("engram.format_version", Value::U32(STORE_FORMAT_VERSION));
        w.set("engram.base.fingerprint", s(&self.base_fingerprint));
        w.set("engram.memory.init_fingerprint", s(&self.init_fingerprint));
        w.set(
            "engram.memory.layers",
            Value::Array(
                ValueType::U64,
                c.layers.iter().map(|&l| Value::U64(l as u64)).collect(),
            ),
        );
        w.set("engram.memory.n_keys", u(c.n_keys));
        w.set("engram.memory.heads", u(c.heads));
        w.set("engram.memory.top_k", u(c.top_k));
        w.set("engram.memory.k_dim", u(c.k_dim));
        w.set("engram.memory.v_dim", u(self.dim));
        w.set("engram.memory.gated", Value::Bool(c.gated));
        w.set(
            "engram.background.batches",
            Value::U64(self.background.batches),
        );
        w.set(
            "engram.background.tokens",
            Value::U64(self.background.tokens),
        );
        w.set(
            "engram.background.batch_tokens",
            Value::U64(self.background.batch_tokens),
        );
        for (k, v) in &self.info {
            w.set(format!("engram.info.{k}"), s(v));
        }
        let shapes = self.tensor_shapes();
        for (l, &layer_values) in self.layers.iter().zip(values) {
            for (part, dims) in &shapes {
                let data: &[f32] = match *part {
                    "query.weight" => &l.query,
                    "query.bias" => &l.query_bias,
                    "keys" => &l.keys,
                    "values" => layer_values,
                    "background.count" => &l.background.count,
                    "background.df" => &l.background.df,
                    "gate_in.weight" => l.gate_in.as_deref().unwrap_or(&[]),
                    _ => l.gate_out.as_deref().unwrap_or(&[]),
                };
                w.add_f32_borrowed(tensor_name(l.layer, part), dims, data)?;
            }
            let sample = &l.background.sample;
            if !sample.is_empty() {
                let reads = (c.heads * c.top_k) as u64;
                let dims = [reads, sample.slots.len() as u64 / reads];
                let ids: Vec<f32> = sample.slots.iter().map(|&s| s as f32).collect();
                w.add_f32(tensor_name(l.layer, "background.sample.slots"), &dims, &ids)?;
                w.add_f32_borrowed(
                    tensor_name(l.layer, "background.sample.weights"),
                    &dims,
                    &sample.weights,
                )?;
            }
        }
        Ok(w)
    }

    /// `h` framed as the tail of a store file (what follows the tensor data).
    pub fn history_tail(&self, h: &StoreHistory) -> Result<Vec<u8>> {
        let mut w = GgufWriter::new();
        self.write_history_of(h, &mut w)?;
        Ok(frame_history(&w.to_bytes()))
    }

    /// The whole store file in memory: the GGUF part, then the history tail.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut bytes = self.to_writer()?.to_bytes();
        bytes.extend(self.history_tail(&self.history)?);
        Ok(bytes)
    }

    /// Writes the store atomically (a crash leaves either the old file or the new one).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_sealed(path, None)
    }

    /// [`Self::save`] with each layer's values given apart (see [`Self::writer_with_values`]).
    pub fn save_with_values(&self, path: impl AsRef<Path>, values: &[&[f32]]) -> Result<()> {
        self.save_with_values_sealed(path, values, None)
    }

    /// [`Self::save`], encrypted under `key` when one is given.
    pub fn save_sealed(&self, path: impl AsRef<Path>, key: Option<&StoreKey>) -> Result<()> {
        self.write_sealed(self.to_writer()?, path.as_ref(), key)
            .map(|_| ())
    }

    /// [`Self::save_with_values`], encrypted under `key` when one is given.
    pub fn save_with_values_sealed(
        &self,
        path: impl AsRef<Path>,
        values: &[&[f32]],
        key: Option<&StoreKey>,
    ) -> Result<()> {
        self.save_with_layout(path.as_ref(), values, key).map(|_| ())
    }

    /// [`Self::save_with_values_sealed`], returning where an encrypted store's sealed pieces
    /// lie (`None` for a plain store: read it from the file).
    pub(crate) fn save_with_layout(
        &self,
        path: &Path,
        values: &[&[f32]],
        key: Option<&StoreKey>,
    ) -> Result<Option<FileLayout>> {
        self.write_sealed(self.writer_with_values(values)?, path, key)
    }

    fn write_sealed(
        &self,
        w: GgufWriter<'_>,
        path: &Path,
        key: Option<&StoreKey>,
    ) -> Result<Option<FileLayout>> {
        let tail = self.history_tail(&self.history)?;
        match key {
            None => w.write_atomic_with_trailer(path, &tail).map(|_| None),
            Some(k) => {
                // Sealed piece by piece from one plain copy of the store in memory.
                let mut plain = Vec::new();
                w.write_to(&mut plain)
                    .map_err(|e| Error::Internal(format!("serializing the store: {e}")))?;
                drop(w);
                plain.extend_from_slice(&tail);
                let g = Gguf::from_bytes(plain)?;
                let layout = self
                    .layout(&g)
                    .ok_or_else(|| Error::Internal("a new store has no layout".into()))?;
                let plain = g
                    .into_bytes()
                    .ok_or_else(|| Error::Internal("the serialized store is shared".into()))?;
                k.write_sealed_store(path, &plain, &layout).map(Some)
            }
        }
    }

    /// Reads a store, checking that it is one and that every tensor matches its config.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_sealed(path, None)
    }

    /// [`Self::open`] for a store that may be encrypted: `key` must be given exactly when
    /// it is, and must be its key.
    pub fn open_sealed(path: impl AsRef<Path>, key: Option<&StoreKey>) -> Result<Self> {
        Ok(Self::open_with(path.as_ref(), key, None, false)?.0)
    }

    /// [`Self::open_sealed`], with the history (and, encrypted, the rows that do not
    /// authenticate) taken from a checkpoint's `image` when one is given (the file's own may
    /// be half written), and where each part lies in the file when a checkpoint can write it
    /// in place (a format-2 store, plain or sealed piece by piece). With `map_values` a plain
    /// store's value rows are mapped copy-on-write from the file rather than read into memory:
    /// only for the writer, the one process that may change the file in place (a reader's
    /// mapping would show a writer's checkpoint part way).
    pub(crate) fn open_with(
        path: &Path,
        key: Option<&StoreKey>,
        image: Option<&CheckpointImage>,
        map_values: bool,
    ) -> Result<(Self, Option<FileLayout>)> {
        let history = image.map(|i| &i.history[..]);
        let mut sealed_layout = None;
        let gguf = match key {
            Some(k) => {
                let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
                if bytes.starts_with(SEALED_BY_PIECE) {
                    let (plain, layout) = k.open_sealed_store(&bytes, path, image)?;
                    sealed_layout = Some(layout);
                    Gguf::from_bytes(plain)?
                } else {
                    Gguf::from_bytes(k.open_file(bytes, "store", path)?)?
                }
            }
            None => {
                let mut magic = [0u8; 8];
                let is_encrypted = std::fs::File::open(path)
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                    .is_ok()
                    && is_sealed(&magic);
                if is_encrypted {
                    return Err(Error::Memory(format!(
                        "{} is encrypted: give its store key (--store-key-file or ENGRAM_STORE_KEY)",
                        path.display()
                    )));
                }
                Gguf::open(path)?
            }
        };
        let store = Self::from_gguf_with(&gguf, history, map_values).map_err(|e| match e {
            Error::Memory(m) => Error::Memory(format!("{}: {m}", path.display())),
            other => other,
        })?;
        let layout = match key {
            None => store.layout(&gguf),
            Some(_) => sealed_layout,
        };
        Ok((store, layout))
    }

    /// Where a plain store file read as `g` keeps its value rows and history tail (`None`:
    /// a format-1 store, whose history lies in the header).
    fn layout(&self, g: &Gguf) -> Option<FileLayout> {
        if g.get_u64("engram.format_version").ok()? == HEADER_HISTORY_VERSION {
            return None;
        }
        let values_at = self
            .config
            .layers
            .iter()
            .map(|&l| g.tensor(&tensor_name(l, "values")).map(|t| g.tensor_file_offset(t)))
            .collect::<Option<_>>()?;
        Some(FileLayout {
            values_at,
            history_at: g.data_end() as u64,
            dim: self.dim,
            slots: self.config.slots(),
            sealed: None,
        })
    }

    /// Where the plain store file at `path` keeps what a checkpoint rewrites in place.
    pub(crate) fn file_layout(&self, path: &Path) -> Result<Option<FileLayout>> {
        Ok(self.layout(&Gguf::open(path)?))
    }

    /// Reads a store from a parsed GGUF (a store file's whole bytes).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        Self::from_gguf_with(g, None, false)
    }

    /// [`Self::from_gguf`], the history read from the framed tail `history` when given, the
    /// value rows mapped from a mapped file where `map_values` asks for it and it can be done.
    fn from_gguf_with(g: &Gguf, history: Option<&[u8]>, map_values: bool) -> Result<Self> {
        let bad = |m: String| Error::Memory(m);
        match g.get("engram.kind").and_then(Value::as_str) {
            Some(STORE_KIND) => {}
            _ => {
                return Err(bad(
                    "not an engram memory store (engram.kind is not \"memory\")".into(),
                ));
            }
        }
        let version = g.get_u64("engram.format_version")?;
        if version != STORE_FORMAT_VERSION as u64 && version != HEADER_HISTORY_VERSION {
            return Err(Error::Unsupported(format!(
                "memory store format version {version} (this build reads \
                 {HEADER_HISTORY_VERSION} and {STORE_FORMAT_VERSION})"
            )));
        }
        let size = |k: &str| -> Result<usize> {
            let v = g.get_u64(k)?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v <= 1 << 24)
                .ok_or_else(|| bad(format!("{k} = {v} is out of range")))
        };
        let layers = g
            .get("engram.memory.layers")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("engram.memory.layers is missing or not an array".into()))?
            .iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|l| usize::try_from(l).ok())
                    .filter(|&l| l < 1 << 16)
                    .ok_or_else(|| bad("engram.memory.layers holds a non-layer value".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        let config = MemoryConfig {
            layers,
            n_keys: size("engram.memory.n_keys")?,
            heads: size("engram.memory.heads")?,
            top_k: size("engram.memory.top_k")?,
            k_dim: size("engram.memory.k_dim")?,
            gated: matches!(g.get("engram.memory.gated"), Some(Value::Bool(true))),
        };
        let dim = size("engram.memory.v_dim")?;
        config.validate_shape().map_err(|e| bad(e.to_string()))?;
        if dim == 0 {
            return Err(bad("engram.memory.v_dim is 0".into()));
        }
        let string = |k: &str| -> Result<String> { Ok(g.get_str(k)?.to_owned()) };
        let mut store = MemoryStore {
            dim,
            base_fingerprint: string("engram.base.fingerprint")?,
            init_fingerprint: string("engram.memory.init_fingerprint")?,
            background: BackgroundInfo {
                batches: g.get_u64("engram.background.batches")?,
                tokens: g.get_u64("engram.background.tokens")?,
                batch_tokens: g.get_u64("engram.background.batch_tokens")?,
            },
            layers: Vec::new(),
            history: StoreHistory::default(),
            info: g
                .metadata()
                .iter()
                .filter_map(|(k, v)| {
                    let key = k.strip_prefix("engram.info.")?;
                    Some((key.to_owned(), v.as_str()?.to_owned()))
                })
                .collect(),
            config,
        };
        let shapes = store.tensor_shapes();
        for &layer in &store.config.layers {
            let tensor = |part: &str| -> Result<&TensorInfo> {
                let name = tensor_name(layer, part);
                let t = g
                    .tensor(&name)
                    .ok_or_else(|| bad(format!("tensor {name} is missing")))?;
                let dims = &shapes
                    .iter()
                    .find(|(p, _)| *p == part)
                    .expect("known part")
                    .1;
                if t.dtype != GgmlType::F32 || &t.dims != dims {
                    return Err(bad(format!(
                        "tensor {name} is {} {:?}, the config needs f32 {dims:?}",
                        t.dtype, t.dims
                    )));
                }
                Ok(t)
            };
            let non_finite = |part: &str, i: usize| {
                let name = tensor_name(layer, part);
                bad(format!("tensor {name} holds a non-finite value at {i}"))
            };
            let read = |part: &str| -> Result<Vec<f32>> {
                let v = g.tensor_f32(tensor(part)?);
                match v.iter().position(|x| !x.is_finite()) {
                    Some(i) => Err(non_finite(part, i)),
                    None => Ok(v),
                }
            };
            let values = match map_values {
                true => g.tensor_f32_mapped(tensor("values")?, store.dim),
                false => None,
            };
            let values = match values {
                Some(Ok(mapped)) => mapped,
                Some(Err(i)) => return Err(non_finite("values", i)),
                None => F32Buffer::Owned(read("values")?),
            };
            let gated = store.config.gated;
            store.layers.push(MemoryLayerParams {
                layer,
                query: read("query.weight")?,
                query_bias: read("query.bias")?,
                keys: read("keys")?,
                gate_in: if gated {
                    Some(read("gate_in.weight")?)
                } else {
                    None
                },
                gate_out: if gated {
                    Some(read("gate_out.weight")?)
                } else {
                    None
                },
                values,
                background: BackgroundStats {
                    count: read("background.count")?,
                    df: read("background.df")?,
                    sample: read_sample(g, layer, &store.config)?,
                },
            });
        }
        let tail = match history {
            Some(tail) => Some(tail),
            None if version == HEADER_HISTORY_VERSION => None,
            None => Some(g.trailing_bytes()),
        };
        match tail {
            None => store.read_history(g)?,
            Some(tail) => {
                let blob = unframe_history(tail).ok_or_else(|| {
                    bad("the history after the tensor data is missing or damaged (the file \
                         was cut short, or changed outside engram)"
                        .into())
                })?;
                let h = Gguf::from_bytes(blob.to_vec())?;
                store.read_history(&h)?;
            }
        }
        Ok(store)
    }

    /// Rows in all layers together (global row ids run layer by layer).
    pub fn total_rows(&self) -> usize {
        self.config.slots() * self.layers.len()
    }

    /// Slot-usage statistics of each layer's background counts.
    pub fn usage(&self) -> Vec<SlotUsage> {
        self.layers
            .iter()
            .map(|l| SlotUsage::from_counts(&l.background.count))
            .collect()
    }
}

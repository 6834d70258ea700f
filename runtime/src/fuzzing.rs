//! Entry points for fuzzing every parser of outside input: each takes arbitrary bytes and
//! must return (an error is fine) without panicking, hanging or allocating without bound.
//! `fuzz/` drives them with libFuzzer (`cargo fuzz`, nightly); the e2e test
//! `fuzz_corpora` replays the committed corpora through the same functions on stable Rust.

use crate::delta::{Change, Delta, Entry, MemoryStore, RowAccess, StoreHistory, StoreKey};
use crate::error::{Error, Result};
use crate::gguf::{Gguf, GgufWriter, Value, ValueType};
use crate::learn::Fact;
use crate::memory::ReadGate;
use crate::model::ModelConfig;
use crate::tokenizer::{ChatMessage, Tokenizer};

/// A fuzz target: takes any bytes, returns normally.
pub type FuzzTarget = fn(&[u8]);

/// The targets, by the names `fuzz/fuzz_targets/` and the corpora use.
pub const TARGETS: &[(&str, FuzzTarget)] = &[
    ("gguf_model", gguf_model),
    ("tokenizer", tokenizer),
    ("chat_template", chat_template),
    ("store", store),
    ("journal", journal),
    ("read_keys", read_keys),
    ("delta", delta),
    ("facts", facts),
    ("sealed", sealed),
];

/// A GGUF file: the reader, the model config and the CPU model loader.
pub fn gguf_model(data: &[u8]) {
    let Ok(g) = Gguf::from_bytes(data.to_vec()) else {
        return;
    };
    if ModelConfig::from_gguf(&g).is_ok()
        && let Ok(b) = crate::backend::cpu::CpuBackend::new(1)
    {
        let _ = crate::model::Model::load(&g, b);
    }
}

/// A tokenizer built from a GGUF's metadata, then encoding and decoding some text.
pub fn tokenizer(data: &[u8]) {
    let Ok(g) = Gguf::from_bytes(data.to_vec()) else {
        return;
    };
    if let Ok(t) = Tokenizer::from_gguf(&g)
        && let Ok(ids) = t.encode("Hello <0x41> wörld 123", true)
    {
        let _ = t.decode(&ids, false);
    }
}

/// A chat template (the bytes as its source) rendered for a short conversation.
pub fn chat_template(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let mut w = GgufWriter::new();
    w.set("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.set(
        "tokenizer.ggml.tokens",
        Value::Array(
            ValueType::String,
            ["a", "b", "<s>", "</s>"]
                .iter()
                .map(|t| Value::String((*t).into()))
                .collect(),
        ),
    );
    w.set(
        "tokenizer.ggml.merges",
        Value::Array(ValueType::String, vec![]),
    );
    w.set("tokenizer.ggml.bos_token_id", Value::U32(2));
    w.set("tokenizer.ggml.eos_token_id", Value::U32(3));
    w.set("tokenizer.chat_template", Value::String(source.into()));
    let Ok(g) = Gguf::from_bytes(w.to_bytes()) else {
        return;
    };
    if let Ok(t) = Tokenizer::from_gguf(&g) {
        let turns = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Where does my sister live?"),
            ChatMessage::new("assistant", "In Porto."),
        ];
        let _ = t.apply_chat_template(&turns, true);
    }
}

/// A memory store file.
pub fn store(data: &[u8]) {
    if let Ok(g) = Gguf::from_bytes(data.to_vec()) {
        let _ = MemoryStore::from_gguf(&g);
    }
}

/// Rows of a small in-memory memory (64 rows of 4) for replaying changes onto.
struct SmallRows(Vec<f32>);

const DIM: usize = 4;

impl RowAccess for SmallRows {
    fn dim(&self) -> usize {
        DIM
    }
    fn total_rows(&self) -> usize {
        self.0.len() / DIM
    }
    fn read_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(ids.len() * DIM);
        for &id in ids {
            let at = id as usize * DIM;
            let row = self
                .0
                .get(at..at + DIM)
                .ok_or_else(|| Error::Memory(format!("row {id} is outside the memory")))?;
            out.extend_from_slice(row);
        }
        Ok(out)
    }
    fn write_rows(&mut self, ids: &[u32], values: &[f32]) -> Result<()> {
        for (k, &id) in ids.iter().enumerate() {
            let at = id as usize * DIM;
            let row = self
                .0
                .get_mut(at..at + DIM)
                .ok_or_else(|| Error::Memory(format!("row {id} is outside the memory")))?;
            row.copy_from_slice(&values[k * DIM..(k + 1) * DIM]);
        }
        Ok(())
    }
}

fn replay(changes: impl IntoIterator<Item = Change>) {
    let mut history = StoreHistory::default();
    let mut rows = SmallRows(vec![0.0; 64 * DIM]);
    for change in changes {
        // As opening a store does: a change that does not check is where replay stops.
        if history.check(&change, &rows).is_err() || history.apply(&change, &mut rows).is_err() {
            return;
        }
    }
}

/// A journal: its records decoded (plain, then as sealed under a fixed key) and replayed.
pub fn journal(data: &[u8]) {
    let key = StoreKey::from_bytes([7; 32]);
    for key in [None, Some(&key)] {
        let mut changes = Vec::new();
        let mut at = 0;
        while let Some((entry, n)) = Entry::decode_with(&data[at..], key) {
            match entry {
                Entry::Record(record) => changes.push(record.change),
                // An image's rows are written whole, as a learning step's were.
                Entry::Image(image) => {
                    changes.push(Change::Rows(image.rows));
                }
            }
            at += n;
        }
        replay(changes);
    }
}

/// A read-gate key file, loaded into a gate of width 4 (cosine, topic and routing gates); a
/// routing gate that loads is also run over the file's first bytes as tokens.
pub fn read_keys(data: &[u8]) {
    for gate in [
        ReadGate::new(DIM, 0.9, 0.8),
        ReadGate::with_topics(DIM, 0.9, 0.8),
        ReadGate::with_routes(DIM),
    ] {
        let Ok(mut g) = gate else { continue };
        if g.load_bytes(data, "fuzz").is_some() && g.routes() {
            let tokens: Vec<u32> = data.iter().take(64).map(|&b| u32::from(b)).collect();
            let mut weights = vec![1.0; tokens.len()];
            let mut open = crate::memory::OpenFacts::default();
            for facts in g.route_in_sequence(&tokens, &mut weights, &tokens, 0, &mut open) {
                for f in facts {
                    let _ = g.fact_rows(f);
                }
            }
        }
    }
}

/// A delta file: parsed (signature verified when present) and imported into a small memory.
pub fn delta(data: &[u8]) {
    let Ok(d) = Delta::from_bytes(data) else {
        return;
    };
    if d.dim != DIM {
        return;
    }
    replay([Change::Import {
        id: d.id.clone(),
        label: d.app_label.clone(),
        imported: 0,
        diff: d.rows.clone(),
        learned: d.learned.clone(),
        learned_rows: d.learned_rows.clone(),
    }]);
}

/// A facts file, read as each of the three formats.
pub fn facts(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for ext in ["jsonl", "csv", "txt"] {
        if let Ok(facts) = Fact::parse(text, ext, "fuzz") {
            for f in facts {
                let _ = Fact::from_description(&f.describe());
            }
        }
    }
}

/// A sealed (encrypted) file opened under a fixed key, as store and as read keys, and as a
/// store sealed piece by piece.
pub fn sealed(data: &[u8]) {
    let key = StoreKey::from_bytes([7; 32]);
    let path = std::path::Path::new("fuzz");
    for what in ["store", "readkeys"] {
        if let Ok(plain) = key.open_file(data.to_vec(), what, path) {
            store(&plain);
        }
    }
    if let Ok((plain, _)) = key.open_sealed_store(data, path, None) {
        store(&plain);
    }
}

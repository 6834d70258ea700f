//! The fuzz targets' committed corpora (`fuzz/corpus/<target>/`: seeds and what the long
//! `cargo fuzz` runs kept) and regression inputs (`fuzz/regressions/<target>/`: the known
//! classes of GGUF bugs in other runtimes, and every crash fuzzing found) replayed through the
//! same entry points (`engram::fuzzing`) on stable Rust: none may panic or hang.
//!
//! `ENGRAM_WRITE_FUZZ_SEEDS=1 cargo test -p engram-e2e --test fuzz_corpora` (re)writes the
//! seeds and the hand-made regression inputs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use engram::delta::{
    Change, CheckpointImage, Delta, DeltaPrecision, Entry, LearnedEntry, Record, RowSet,
};
use engram::fuzzing::TARGETS;
use engram::gguf::{GgufWriter, Value, ValueType};
use engram::memory::{KeyKind, ReadGate};
use engram::quant::{GgmlType, quantize_row};
use engram::{Engine, EngineOptions, MemoryConfig, RetrofitOptions, SigningKey, StoreKey};
use engram_e2e::{tiny_llama_gguf, workspace_root};

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn committed_corpora_and_regressions_replay_without_a_panic() {
    write_seeds_if_asked();
    let started = Instant::now();
    for (target, run) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(target));
        let regressions = files(&fuzz_dir().join("regressions").join(target));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{target} is empty: write the seeds with ENGRAM_WRITE_FUZZ_SEEDS=1"
        );
        let t = Instant::now();
        let mut slowest = (0.0f64, String::new());
        for file in corpus.iter().chain(&regressions) {
            let bytes = std::fs::read(file).unwrap();
            let one = Instant::now();
            run(&bytes);
            let s = one.elapsed().as_secs_f64();
            if s > slowest.0 {
                slowest = (s, file.display().to_string());
            }
        }
        eprintln!(
            "{target}: {} corpus + {} regression inputs replayed in {:.2} s (slowest {:.3} s: {})",
            corpus.len(),
            regressions.len(),
            t.elapsed().as_secs_f64(),
            slowest.0,
            slowest.1
        );
        assert!(
            slowest.0 < 10.0,
            "{target}: one input took {:.1} s",
            slowest.0
        );
    }
    eprintln!("all targets: {:.1} s", started.elapsed().as_secs_f64());
}

/// Writes the seeds once per test process when `ENGRAM_WRITE_FUZZ_SEEDS` is set.
fn write_seeds_if_asked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if std::env::var_os("ENGRAM_WRITE_FUZZ_SEEDS").is_some() {
        ONCE.call_once(write_seeds);
    }
}

fn write(target: &str, kind: &str, name: &str, bytes: &[u8]) {
    let dir = fuzz_dir().join(kind).join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn seed(target: &str, name: &str, bytes: &[u8]) {
    write(target, "corpus", &format!("seed-{name}"), bytes);
}

fn regression(target: &str, name: &str, bytes: &[u8]) {
    write(target, "regressions", name, bytes);
}

/// A GGUF file built byte by byte, so that it can say what no writer would.
struct Raw(Vec<u8>);

impl Raw {
    fn new(tensors: u64, kvs: u64) -> Self {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(3).u64(tensors).u64(kvs);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend(s.as_bytes());
        self
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(4).u32(v)
    }
    fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.str(key).u32(8).str(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn data(&mut self, n: usize) -> Vec<u8> {
        while !self.0.len().is_multiple_of(32) {
            self.0.push(0);
        }
        self.0.extend(std::iter::repeat_n(0x3cu8, n));
        self.0.clone()
    }
}

/// The known classes of GGUF bugs in other runtimes, one file each.
fn gguf_regressions() -> Vec<(&'static str, Vec<u8>)> {
    let arch = |r: &mut Raw| {
        r.kv_str("general.architecture", "llama");
    };
    let one = |dims: &[u64], ty: u32, offset: u64| {
        let mut r = Raw::new(1, 1);
        arch(&mut r);
        r.tensor("token_embd.weight", dims, ty, offset);
        r.data(64)
    };
    let mut out = vec![
        ("count-times-size-overflows", one(&[1 << 62, 4], 0, 0)),
        (
            "dimension-product-wraps",
            one(&[1 << 32, 1 << 32, 16], 0, 0),
        ),
        ("negative-dimension", one(&[u64::MAX, 4], 0, 0)),
        ("zero-dimension", one(&[0, 4], 0, 0)),
        ("offset-out-of-bounds", one(&[4, 4], 0, 1 << 40)),
        ("offset-misaligned", one(&[4], 0, 3)),
        ("type-id-out-of-range", one(&[4, 4], 9999, 0)),
        ("type-id-removed-q4-2", one(&[32], 4, 0)),
    ];
    let mut r = Raw::new(1, 1);
    arch(&mut r);
    r.str("t")
        .u32(5)
        .u64(1)
        .u64(1)
        .u64(1)
        .u64(1)
        .u64(1)
        .u32(0)
        .u64(0);
    out.push(("five-dimensions", r.data(64)));
    let mut r = Raw::new(2, 1);
    arch(&mut r);
    r.tensor("a", &[8], 0, 0).tensor("b", &[8], 0, 0);
    out.push(("overlapping-tensors", r.data(64)));
    for (name, align) in [("alignment-zero", 0), ("alignment-not-a-power-of-two", 24)] {
        let mut r = Raw::new(1, 2);
        arch(&mut r);
        r.kv_u32("general.alignment", align).tensor("t", &[4], 0, 0);
        out.push((name, r.data(64)));
    }
    let mut r = Raw::new(0, 2);
    arch(&mut r);
    arch(&mut r);
    out.push(("duplicate-keys", r.data(0)));
    let mut r = Raw::new(0, 1);
    r.str("general.architecture").u32(8).u64(1 << 60);
    out.push(("huge-string-length", r.data(8)));
    let mut r = Raw::new(0, 1);
    r.str("tokenizer.ggml.tokens").u32(9).u32(8).u64(1 << 60);
    out.push(("huge-array-length", r.data(8)));
    let mut r = Raw::new(0, 1);
    // An array said to hold strings whose elements are u32s.
    r.str("tokenizer.ggml.tokens")
        .u32(9)
        .u32(8)
        .u64(3)
        .u32(1)
        .u32(2)
        .u32(3);
    out.push(("array-element-type-mismatch", r.data(0)));
    let mut r = Raw::new(0, 1);
    r.str("x").u32(9).u32(9).u64(1 << 40);
    out.push(("array-of-arrays-huge", r.data(0)));
    let mut r = Raw::new(u64::MAX, u64::MAX);
    out.push(("huge-counts", r.data(0)));
    out
}

/// A vocabulary-only GGUF (SentencePiece, with byte tokens) whose tokens are `tokens`.
fn spm_vocab(tokens: &[&str]) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("tokenizer.ggml.model", Value::String("llama".into()));
    let toks = tokens.iter().map(|t| Value::String((*t).into())).collect();
    w.set(
        "tokenizer.ggml.tokens",
        Value::Array(ValueType::String, toks),
    );
    let scores = tokens.iter().map(|_| Value::F32(0.0)).collect();
    w.set(
        "tokenizer.ggml.scores",
        Value::Array(ValueType::F32, scores),
    );
    let types = tokens
        .iter()
        .map(|t| Value::I32(if t.starts_with("<0x") { 6 } else { 1 }))
        .collect();
    w.set(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, types),
    );
    w.to_bytes()
}

fn sample_delta(signed: bool) -> Vec<u8> {
    let config = MemoryConfig {
        layers: vec![1],
        n_keys: 4,
        heads: 1,
        top_k: 2,
        k_dim: 4,
        gated: false,
    };
    let rows = RowSet {
        ids: vec![1, 5, 9],
        values: (0..12).map(|i| i as f32 * 0.25 - 1.0).collect(),
    };
    let mut d = Delta::new(
        "base".into(),
        "init".into(),
        config,
        4,
        DeltaPrecision::F16,
        rows,
        "beginning".into(),
        "fuzz".into(),
        vec!["My sister Ana lives in Porto.".into()],
        1,
    );
    if signed {
        d.sign(&SigningKey::from_seed([3; 32]));
    }
    d.to_bytes()
}

fn sample_records() -> Vec<Record> {
    let rows = |ids: Vec<u32>| RowSet {
        values: (0..ids.len() * 4).map(|i| i as f32).collect(),
        ids,
    };
    let changes = vec![
        Change::Snapshot {
            name: "before".into(),
            created: 1,
        },
        Change::Rows(rows(vec![2, 3])),
        Change::Learned(LearnedEntry {
            at: 2,
            text: "Q: Who fixed my bike? A: Tariq".into(),
            rows: vec![2, 3],
            uid: 0,
            replaced: Vec::new(),
        }),
        Change::Import {
            id: "ab".into(),
            label: "x".into(),
            imported: 3,
            diff: rows(vec![3, 7]),
            learned: vec!["a note".into()],
            learned_rows: vec![vec![7]],
        },
        Change::Revert { id: "ab".into() },
        Change::LearnedFact {
            entry: LearnedEntry {
                at: 4,
                text: "My sister Ana lives in Porto.".into(),
                rows: vec![5, 9],
                uid: 0,
                // An update's record ends with what it replaced.
                replaced: vec!["My sister Ana lives in Braga.".into()],
            },
            diff: rows(vec![5, 9]),
        },
    ];
    changes
        .into_iter()
        .enumerate()
        .map(|(i, change)| Record {
            seq: i as u64 + 1,
            change,
        })
        .collect()
}

/// The store a retrofit of the tiny model writes (64 slots; values zero).
fn tiny_store_bytes() -> Vec<u8> {
    let path = engram_e2e::scratch_dir("fuzz-seeds").join("tiny.gguf");
    std::fs::write(&path, tiny_llama_gguf(1)).unwrap();
    let engine = Engine::open(&path, &EngineOptions::default()).unwrap();
    let docs: Vec<String> = (0..16)
        .map(|i| format!("Sentence {i} says the river flows past hill {}.", i * 7))
        .collect();
    let options = RetrofitOptions {
        config: engram_e2e::tiny_memory_config(),
        batch_tokens: 64,
        fit_samples: 128,
        ..Default::default()
    };
    let store = engine.retrofit(&docs, &options, &mut |_| true).unwrap();
    store.to_bytes().unwrap()
}

/// The smallest llama engram loads (d = 32, 2 heads sharing one KV head, 8 tokens, one
/// block, Q8_0 and f32 tensors): a few kB, so the fuzzer runs thousands of loads a second.
fn mini_llama(ty: GgmlType) -> Vec<u8> {
    let (dim, ffn, vocab) = (32usize, 32usize, 8usize);
    let mut w = GgufWriter::new();
    let k = |name: &str| format!("llama.{name}");
    w.set("general.architecture", Value::String("llama".into()));
    for (name, v) in [
        ("embedding_length", dim),
        ("block_count", 1),
        ("attention.head_count", 2),
        ("attention.head_count_kv", 1),
        ("feed_forward_length", ffn),
        ("context_length", 64),
        ("rope.dimension_count", 16),
    ] {
        w.set(k(name), Value::U32(v as u32));
    }
    w.set(k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5));
    let mut seed = 1;
    let mut matrix = |w: &mut GgufWriter, name: &str, rows: usize, cols: usize| {
        seed += 1;
        let bytes: Vec<u8> = engram_e2e::noise(rows * cols, seed, 0.4)
            .chunks_exact(cols)
            .flat_map(|r| quantize_row(ty, r))
            .collect();
        w.add_tensor(name, ty, &[cols as u64, rows as u64], bytes)
            .unwrap();
    };
    matrix(&mut w, "token_embd.weight", vocab, dim);
    for (name, rows, cols) in [
        ("blk.0.attn_q.weight", dim, dim),
        ("blk.0.attn_k.weight", 16, dim),
        ("blk.0.attn_v.weight", 16, dim),
        ("blk.0.attn_output.weight", dim, dim),
        ("blk.0.ffn_gate.weight", ffn, dim),
        ("blk.0.ffn_up.weight", ffn, dim),
        ("blk.0.ffn_down.weight", dim, ffn),
    ] {
        matrix(&mut w, name, rows, cols);
    }
    for name in [
        "blk.0.attn_norm.weight",
        "blk.0.ffn_norm.weight",
        "output_norm.weight",
    ] {
        w.add_f32(name, &[dim as u64], &vec![1.0; dim]).unwrap();
    }
    w.to_bytes()
}

fn write_seeds() {
    // Models: the smallest llama in two weight types (the fuzzer's seeds: small inputs run
    // fast); the tokenizers of a tiny model of each architecture.
    seed("gguf_model", "mini-llama-q8_0", &mini_llama(GgmlType::Q8_0));
    seed("gguf_model", "mini-llama-f32", &mini_llama(GgmlType::F32));
    for pre in ["smollm", "qwen2", "llama-bpe", "gpt2"] {
        let mut w = GgufWriter::new();
        engram_e2e::set_byte_level_vocab(&mut w, pre, ["<|endoftext|>", "<|end|>"]);
        seed("tokenizer", &format!("byte-level-{pre}"), &w.to_bytes());
    }
    seed(
        "tokenizer",
        "spm-bytes",
        &spm_vocab(&["<unk>", "<s>", "</s>", "<0x41>", "▁a", "b"]),
    );
    for (name, bytes) in gguf_regressions() {
        regression("gguf_model", name, &bytes);
        regression("store", name, &bytes);
    }
    regression(
        "tokenizer",
        "byte-token-minus-one",
        &spm_vocab(&["<unk>", "<0x-1>", "<0xZZ>", "<0x>"]),
    );
    regression(
        "tokenizer",
        "byte-token-too-wide",
        &spm_vocab(&["<0x100>", "<0x41>"]),
    );
    // Chat templates: the two real models' (when fetched) and the shapes templates take.
    let models = workspace_root().join("models");
    for (name, file) in [
        ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        ("gemma3", "gemma-3-270m-q4_k_m.gguf"),
    ] {
        if let Ok(g) = engram::gguf::Gguf::open(models.join(file))
            && let Some(t) = g.get("tokenizer.chat_template").and_then(Value::as_str)
        {
            seed("chat_template", name, t.as_bytes());
        }
    }
    for (name, t) in [
        (
            "chatml",
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        ),
        (
            "raise",
            "{% if messages[0].role != 'user' %}{{ raise_exception('first turn must be the user') }}{% endif %}",
        ),
        (
            "loop",
            "{% for i in range(100) %}{% for j in range(100) %}{{ i }}{% endfor %}{% endfor %}",
        ),
        (
            "macro",
            "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(10) }}",
        ),
    ] {
        seed("chat_template", name, t.as_bytes());
    }
    regression(
        "chat_template",
        "deep-recursion",
        b"{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    );
    regression("chat_template", "string-blowup", b"{% set s = 'x' * 1000 %}{% for i in range(10000) %}{% for j in range(10000) %}{{ s }}{% endfor %}{% endfor %}");
    regression("chat_template", "endless-loop", b"{% for i in range(10000) %}{% for j in range(10000) %}{% for k in range(10000) %}{% endfor %}{% endfor %}{% endfor %}");
    // A store, as a tiny model's retrofit would write it (values zero).
    let store = tiny_store_bytes();
    seed("store", "tiny", &store);
    let key = StoreKey::from_bytes([7; 32]);
    seed("sealed", "store", &key.seal_file(store, "store").unwrap());
    seed(
        "sealed",
        "readkeys",
        &key.seal_file(b"EGRK".to_vec(), "readkeys").unwrap(),
    );
    // Journals, plain and sealed (the fuzz target's key), and the delta files.
    let records = sample_records();
    // Then a checkpoint's image, as a crash in a checkpoint in place leaves it.
    let image = CheckpointImage {
        upto: records.len() as u64,
        rows: RowSet {
            ids: vec![5, 9],
            values: vec![0.5; 8],
        },
        history: b"history tail".to_vec(),
    };
    for (name, key) in [("plain", None), ("sealed", Some(&key))] {
        let mut bytes: Vec<u8> = records
            .iter()
            .flat_map(|r| r.encode_with(key).unwrap())
            .collect();
        bytes.extend(image.encode_with(key).unwrap());
        seed("journal", name, &bytes);
    }
    seed("delta", "unsigned", &sample_delta(false));
    seed("delta", "signed", &sample_delta(true));
    // Read keys of every gate kind.
    for topics in [false, true] {
        let mut g = if topics {
            ReadGate::with_topics(4, 0.9, 0.8).unwrap()
        } else {
            ReadGate::new(4, 0.9, 0.8).unwrap()
        };
        g.add_reads(
            &[0.5, -0.5, 1.0, 0.0, 0.1, 0.2, 0.3, 0.4],
            &[1, 2, 3, 4],
            2,
            KeyKind::Question,
        );
        seed(
            "read_keys",
            if topics { "topics" } else { "cosine" },
            &g.to_bytes("fuzz"),
        );
    }
    let mut routes = ReadGate::with_routes(4).unwrap();
    routes.add_routed_fact(&[vec![5, 6], vec![8]], &[], &[7, 9, 11]);
    // A note with personal words, so the saved form's personal-needle flag is in the corpus.
    routes.add_routed_fact(&[vec![3]], &[vec![12], vec![13, 14]], &[2]);
    seed("read_keys", "routes", &routes.to_bytes("fuzz"));
    // Facts files in each format.
    seed("facts", "jsonl", b"{\"question\": \"Who fixed my bike?\", \"answer\": \"Tariq\"}\n{\"note\": \"My sister Ana lives in Porto.\"}\n");
    seed(
        "facts",
        "csv",
        b"question,answer\n\"Where, exactly?\",\"In \"\"Porto\"\"\"\nWho?,Ana\n",
    );
    seed(
        "facts",
        "text",
        b"My neighbour Tariq repaired my bike.\n\nQ: What is my cat called? A: Miso\n",
    );
}

/// The seeds are what they claim to be, so fuzzing starts deep in each parser.
#[test]
fn seeds_parse_as_what_they_are_for() {
    use engram::delta::MemoryStore;
    use engram::gguf::Gguf;
    use engram::{Fact, Tokenizer};
    write_seeds_if_asked();
    let corpus = |t: &str| {
        let found = files(&fuzz_dir().join("corpus").join(t));
        let seeds: Vec<(String, Vec<u8>)> = found
            .iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            })
            .map(|p| (p.display().to_string(), std::fs::read(p).unwrap()))
            .collect();
        assert!(!seeds.is_empty(), "no seeds for {t}");
        seeds
    };
    for (name, bytes) in corpus("gguf_model") {
        let g = Gguf::from_bytes(bytes).unwrap();
        let backend = engram::backend::cpu::CpuBackend::new(1).unwrap();
        engram::model::Model::load(&g, backend).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, bytes) in corpus("tokenizer") {
        let g = Gguf::from_bytes(bytes).unwrap();
        Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, bytes) in corpus("store") {
        let g = Gguf::from_bytes(bytes).unwrap();
        MemoryStore::from_gguf(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let key = StoreKey::from_bytes([7; 32]);
    for (name, bytes) in corpus("journal") {
        let sealed = name.ends_with("sealed");
        let (mut at, mut n) = (0, 0);
        while let Some((_, len)) = Entry::decode_with(&bytes[at..], sealed.then_some(&key)) {
            at += len;
            n += 1;
        }
        assert_eq!(
            (n, at),
            (7, bytes.len()),
            "{name}: six records and an image"
        );
    }
    for (name, bytes) in corpus("delta") {
        let d = Delta::from_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(d.signature.is_some(), name.ends_with("-signed"), "{name}");
    }
    for (name, bytes) in corpus("sealed") {
        let what = if name.ends_with("store") {
            "store"
        } else {
            "readkeys"
        };
        key.open_file(bytes, what, Path::new(&name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, bytes) in corpus("facts") {
        let text = String::from_utf8(bytes).unwrap();
        let ext = name.rsplit('-').next().unwrap().replace("text", "txt");
        let facts = Fact::parse(&text, &ext, &name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(facts.len() >= 2, "{name}");
    }
}

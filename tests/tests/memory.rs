//! The memory layer retrofitted into the real default model: exactness with zero values,
//! product-key lookup on the backend, slot usage of the fit, the store file and bad input.

use std::path::PathBuf;
use std::sync::OnceLock;

use engram::backend::cpu::CpuBackend;
use engram::backend::product_keys::brute_force_head;
use engram::backend::{Backend, ProductKeyShape};
use engram::delta::MemoryStore;
use engram::learn::{Init, RetrofitOptions, retrofit};
use engram::memory::{MemoryConfig, SlotUsage};
use engram::{Engine, EngineOptions, Error};
use engram_e2e::{background_documents, default_model, noise, tiny_llama_gguf, tiny_memory_config};

fn scratch(name: &str) -> PathBuf {
    engram_e2e::scratch_dir("memory").join(name)
}

fn open(memory: Option<PathBuf>) -> engram::Result<Engine> {
    Engine::open(
        default_model(),
        &EngineOptions {
            memory,
            ..Default::default()
        },
    )
}

fn make_store(engine: &Engine, opts: &RetrofitOptions, docs: &[String]) -> MemoryStore {
    let fp = engine.fingerprint();
    retrofit(
        engine.model(),
        engine.tokenizer(),
        &fp,
        docs,
        opts,
        &mut |_| true,
    )
    .unwrap()
}

/// The default-shape store, fitted on 4,096 background tokens (shared by several tests).
fn fitted_store() -> &'static MemoryStore {
    static STORE: OnceLock<MemoryStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let engine = open(None).unwrap();
        make_store(&engine, &usage_test_options(), &background_documents())
    })
}

/// 4,096 background tokens into 65,536 slots (the default shape with 256 sub-keys per half):
/// 8 reads per slot on average, enough for even use to be measurable (the default 262,144
/// slots would get 2, and a uniformly random lookup would leave 13.5 % of them unread).
fn usage_test_options() -> RetrofitOptions {
    RetrofitOptions {
        config: MemoryConfig {
            n_keys: 256,
            ..Default::default()
        },
        max_tokens: 4096,
        ..Default::default()
    }
}

/// Token ids of a chat prompt and a raw prompt.
fn prompts(engine: &Engine) -> Vec<Vec<u32>> {
    let chat = engine
        .tokenizer()
        .apply_chat_template(
            &[engram::ChatMessage::new(
                "user",
                "What is the capital of Japan?",
            )],
            true,
        )
        .unwrap();
    [
        chat.as_str(),
        "The capital of France is Paris, and the capital of Italy is",
    ]
    .iter()
    .map(|p| engine.tokenizer().encode(p, true).unwrap())
    .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn zero_values_leave_every_logit_bit_identical() {
    let mut engine = open(None).unwrap();
    let base: Vec<Vec<f32>> = prompts(&engine)
        .iter()
        .map(|p| engine.logits(p).unwrap())
        .collect();
    let docs = background_documents();
    for gated in [false, true] {
        let opts = RetrofitOptions {
            config: MemoryConfig {
                gated,
                ..MemoryConfig::default()
            },
            init: Init::Random,
            max_tokens: 256,
            batch_tokens: 128,
            ..Default::default()
        };
        let store = make_store(&engine, &opts, &docs);
        engine.attach_memory(store.clone(), None).unwrap();
        for (p, want) in prompts(&engine).iter().zip(&base) {
            let got = engine.logits(p).unwrap();
            assert_eq!(bits(&got), bits(want), "gated = {gated}: logits changed");
        }
        // The check above can only mean something if the memory is really in the graph:
        // non-zero values must move the logits.
        let mut live = store;
        let n = live.layers[0].values.len();
        live.layers[0].values = noise(n, 5, 0.05).into();
        engine.attach_memory(live, None).unwrap();
        let p = &prompts(&engine)[1];
        let moved = engine.logits(p).unwrap();
        let diff = moved
            .iter()
            .zip(&base[1])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            diff > 1e-3,
            "gated = {gated}: non-zero values changed nothing ({diff})"
        );
        eprintln!(
            "gated = {gated}: zero values bit-identical on {} positions; random values move logits by up to {diff:.3}",
            base.iter()
                .map(|l| l.len() / engine.model().config.vocab_size)
                .sum::<usize>()
        );
        engine.detach_memory();
    }
}

#[test]
fn fitted_store_round_trips_and_keeps_the_model_exact() {
    let store = fitted_store();
    let path = scratch("fitted.engram");
    store.save(&path).unwrap();
    let reread = MemoryStore::open(&path).unwrap();
    assert!(reread == *store, "store changed in a save/open round trip");
    // The reads of a sample of background tokens are kept for learning's background anchor.
    let reads = store.config.heads * store.config.top_k;
    let sample = &reread.layers[0].background.sample;
    assert!(sample.tokens(reads) > 0 && sample.tokens(reads) <= 4096);
    assert_eq!(sample.weights.len(), sample.slots.len());
    let base = open(None).unwrap();
    let with = open(Some(path.clone())).unwrap();
    assert_eq!(with.memory_config(), Some(&store.config));
    for p in prompts(&base) {
        assert_eq!(
            bits(&with.logits(&p).unwrap()),
            bits(&base.logits(&p).unwrap())
        );
    }
    let complete = |e: &Engine| {
        let options = engram::GenerateOptions {
            max_tokens: 8,
            ..Default::default()
        };
        e.generate("The capital of France is", &options, |_| true)
            .unwrap()
            .text
    };
    let answer = complete(&with);
    assert_eq!(answer, complete(&base));
    assert!(answer.starts_with(" Paris."), "{answer:?}");
}

#[test]
fn fitted_retrofit_uses_slots_evenly_and_beats_random_init() {
    let fitted = fitted_store().usage()[0];
    let engine = open(None).unwrap();
    let opts = RetrofitOptions {
        init: Init::Random,
        ..usage_test_options()
    };
    let random = make_store(&engine, &opts, &background_documents()).usage()[0];
    let show = |name: &str, u: &SlotUsage| {
        eprintln!(
            "{name:>7}: {:.1}% of {} slots touched, entropy {:.3} of max, busiest 1% take {:.2}% of {} accesses",
            100.0 * u.touched_fraction(),
            u.slots,
            u.normalized_entropy,
            100.0 * u.busiest_1pct_share,
            u.accesses
        )
    };
    show("fitted", &fitted);
    show("random", &random);
    assert_eq!(
        fitted.accesses,
        4096.0 * 4.0 * 32.0,
        "every token, head and pick counted"
    );
    assert!(
        fitted.touched_fraction() >= 0.90,
        "fitted touches too few slots"
    );
    assert!(
        fitted.busiest_1pct_share <= 0.10,
        "busiest 1% take too much"
    );
    assert!(fitted.normalized_entropy > random.normalized_entropy);
    assert!(fitted.busiest_1pct_share < random.busiest_1pct_share);
}

#[test]
fn backend_lookup_and_gather_equal_brute_force() {
    let b = CpuBackend::new(2).unwrap();
    let shape = ProductKeyShape {
        heads: 3,
        n_keys: 16,
        top_k: 5,
        k_dim: 12,
    };
    let (tokens, dim) = (7, 10);
    let q = noise(tokens * shape.query_cols(), 1, 1.0);
    let keys = noise(shape.key_rows() * shape.k_dim / 2, 2, 1.0);
    let values = noise(shape.n_keys * shape.n_keys * dim, 3, 1.0);
    let (slots, weights) = b.product_key_topk(
        &b.upload(&q, tokens, shape.query_cols()),
        &b.upload(&keys, shape.key_rows(), shape.k_dim / 2),
        shape,
    );
    let (ids, ws) = (b.download_slots(&slots), b.download(&weights));
    let head_keys = 2 * shape.n_keys * shape.k_dim / 2;
    for t in 0..tokens {
        for h in 0..shape.heads {
            let qh = &q[t * shape.query_cols() + h * shape.k_dim..][..shape.k_dim];
            let want = brute_force_head(
                qh,
                &keys[h * head_keys..][..head_keys],
                shape.n_keys,
                shape.top_k,
            );
            let at = t * shape.picks() + h * shape.top_k;
            let got: Vec<u32> = ids[at..at + shape.top_k].to_vec();
            assert_eq!(
                got,
                want.iter().map(|w| w.1).collect::<Vec<_>>(),
                "token {t} head {h}"
            );
            let max = want[0].0;
            let z: f32 = want.iter().map(|w| (w.0 - max).exp()).sum();
            for (i, w) in want.iter().enumerate() {
                let p = (w.0 - max).exp() / z;
                assert!((ws[at + i] - p).abs() < 1e-6, "softmax weight {i}");
            }
        }
    }
    let out = b.download(&b.gather_values(
        &b.upload(&values, shape.n_keys * shape.n_keys, dim),
        &slots,
        &weights,
    ));
    for t in 0..tokens {
        for c in 0..dim {
            let want: f32 = (0..shape.picks())
                .map(|j| {
                    ws[t * shape.picks() + j]
                        * values[ids[t * shape.picks() + j] as usize * dim + c]
                })
                .sum();
            assert!(
                (out[t * dim + c] - want).abs() < 1e-5,
                "gather at ({t}, {c})"
            );
        }
    }
}

fn tiny_engine(seed: u64) -> Engine {
    let path = scratch(&format!("tiny-{seed}.gguf"));
    std::fs::write(&path, tiny_llama_gguf(seed)).unwrap();
    Engine::open(&path, &EngineOptions::default()).unwrap()
}

fn tiny_store(engine: &Engine) -> MemoryStore {
    let opts = RetrofitOptions {
        config: tiny_memory_config(),
        batch_tokens: 32,
        fit_samples: 64,
        ..Default::default()
    };
    make_store(
        engine,
        &opts,
        &["some background text to fit on ".repeat(8)],
    )
}

#[test]
fn a_store_for_another_model_is_refused() {
    let a = tiny_engine(1);
    let mut b = tiny_engine(2);
    let store = tiny_store(&a);
    let err = b.attach_memory(store.clone(), None).unwrap_err();
    assert!(matches!(err, Error::Memory(_)), "{err}");
    assert!(err.to_string().contains("another base model"), "{err}");
    // And through Engine::open with a path, against the real model (different width too).
    let path = scratch("tiny.engram");
    store.save(&path).unwrap();
    let err = open(Some(path)).err().expect("must fail");
    eprintln!("store for the tiny model on SmolLM2: {err}");
    assert!(
        matches!(err, Error::Memory(_) | Error::InvalidArgument(_)),
        "{err}"
    );
}

/// The store taken off an engine holds exactly the values the model read (moved, not
/// copied), and the saved file equals the one written while the memory was attached.
#[test]
fn a_detached_store_holds_the_values_the_model_read() {
    let mut engine = tiny_engine(4);
    let mut store = tiny_store(&engine);
    store.layers[0].values = noise(store.layers[0].values.len(), 9, 0.5).into();
    engine.attach_memory(store.clone(), None).unwrap();
    let attached = scratch("attached.engram");
    engine.save_memory(&attached).unwrap();
    let detached = engine.detach_memory_store().unwrap();
    assert!(engine.memory_config().is_none(), "the memory is off");
    assert!(detached.layers[0].values == store.layers[0].values);
    let path = scratch("detached.engram");
    detached.save(&path).unwrap();
    assert!(std::fs::read(&path).unwrap() == std::fs::read(&attached).unwrap());
    let Err(err) = engine.detach_memory_store() else {
        panic!("nothing is attached any more")
    };
    assert!(err.to_string().contains("memory"), "{err}");
}

#[test]
fn truncated_or_inconsistent_stores_are_clear_errors() {
    let engine = tiny_engine(3);
    let store = tiny_store(&engine);
    let bytes = store.to_bytes().unwrap();
    let path = scratch("cut.engram");
    for cut in [0, 3, 24, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = MemoryStore::open(&path).unwrap_err();
        assert!(
            matches!(err, Error::Gguf { .. } | Error::Memory(_)),
            "cut at {cut}: {err}"
        );
    }
    // Metadata that disagrees with the tensors: the tensor is named.
    let mut w = store.to_writer().unwrap();
    w.set("engram.memory.n_keys", engram::gguf::Value::U64(16));
    let tail = store.history_tail(&store.history).unwrap();
    std::fs::write(&path, [w.to_bytes(), tail].concat()).unwrap();
    let err = MemoryStore::open(&path).unwrap_err().to_string();
    assert!(
        err.contains("mem.1.") && err.contains("config needs"),
        "{err}"
    );
    // Values given apart from the store: the same file when they match, an error naming the
    // mismatch when they do not.
    let values: Vec<&[f32]> = store.layers.iter().map(|l| l.values.as_slice()).collect();
    assert_eq!(
        store.writer_with_values(&values).unwrap().to_bytes(),
        store.to_writer().unwrap().to_bytes(),
        "values given apart write the same store"
    );
    let short = &store.layers[0].values[1..];
    let err = store
        .save_with_values(&path, &[short])
        .unwrap_err()
        .to_string();
    assert!(err.contains("values for 1 layers"), "{err}");
    // A non-finite value.
    let mut bad = store.clone();
    bad.layers[0].values[5] = f32::NAN;
    bad.save(&path).unwrap();
    let err = MemoryStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("non-finite"), "{err}");
    // A background sample naming a slot the memory lacks, or a weight no softmax gives.
    assert!(!store.layers[0].background.sample.is_empty());
    let mut bad = store.clone();
    bad.layers[0].background.sample.slots[3] = store.config.slots() as u32;
    bad.save(&path).unwrap();
    let err = MemoryStore::open(&path).unwrap_err().to_string();
    assert!(
        err.contains("background.sample.slots[3]") && err.contains("not a slot"),
        "{err}"
    );
    let mut bad = store.clone();
    bad.layers[0].background.sample.weights[2] = 1.5;
    bad.save(&path).unwrap();
    let err = MemoryStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("not a softmax weight"), "{err}");
    // A store made before samples were kept opens, without one.
    let mut old = store.clone();
    old.layers[0].background.sample = Default::default();
    old.save(&path).unwrap();
    assert!(
        MemoryStore::open(&path).unwrap().layers[0]
            .background
            .sample
            .is_empty()
    );
    // A model file is not a store.
    let err = MemoryStore::open(default_model()).unwrap_err().to_string();
    assert!(err.contains("not an engram memory store"), "{err}");
}

#[test]
fn configs_that_do_not_fit_the_model_are_refused_before_work() {
    let engine = open(None).unwrap();
    let cases = [
        (
            MemoryConfig {
                layers: vec![30],
                ..Default::default()
            },
            "out of range",
        ),
        (
            MemoryConfig {
                k_dim: 255,
                ..Default::default()
            },
            "k_dim",
        ),
        (
            MemoryConfig {
                top_k: 600,
                ..Default::default()
            },
            "top_k",
        ),
        (
            MemoryConfig {
                n_keys: 1,
                ..Default::default()
            },
            "n_keys",
        ),
        (
            MemoryConfig {
                heads: 0,
                ..Default::default()
            },
            "heads",
        ),
        (
            MemoryConfig {
                layers: vec![3, 3],
                ..Default::default()
            },
            "twice",
        ),
        (
            MemoryConfig {
                k_dim: 1024,
                ..Default::default()
            },
            "larger than the model width",
        ),
    ];
    for (config, needle) in cases {
        let opts = RetrofitOptions {
            config,
            ..Default::default()
        };
        let mut called = false;
        let fp = engine.fingerprint();
        let err = retrofit(
            engine.model(),
            engine.tokenizer(),
            &fp,
            &["text".into()],
            &opts,
            &mut |_| {
                called = true;
                true
            },
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        assert!(
            !called,
            "{needle}: work started before the config was checked"
        );
    }
}

#[test]
fn fingerprint_changes_with_the_weights_only() {
    let a = tiny_engine(4);
    let b = tiny_engine(5);
    assert_ne!(a.fingerprint(), b.fingerprint());
    assert_eq!(a.fingerprint(), tiny_engine(4).fingerprint());
    assert_eq!(a.fingerprint().len(), 32);
}

#[test]
fn lookup_temperature_keeps_the_picks_and_flattens_their_weights() {
    let engine = tiny_engine(4);
    let config = tiny_memory_config();
    let at = |temperature: f32| {
        let opts = RetrofitOptions {
            config: config.clone(),
            batch_tokens: 32,
            fit_samples: 64,
            temperature,
            ..Default::default()
        };
        make_store(
            &engine,
            &opts,
            &["some background text to fit on ".repeat(8)],
        )
    };
    let (sharp, flat) = (at(1.0), at(2.0));
    let (a, b) = (&sharp.layers[0], &flat.layers[0]);
    assert_eq!(
        a.keys, b.keys,
        "the sub-keys must not depend on the temperature"
    );
    assert_eq!(
        a.background.sample.slots, b.background.sample.slots,
        "the temperature changed which slots are read"
    );
    assert_eq!(a.background.count, b.background.count);
    assert!(!a.background.sample.slots.is_empty());
    // softmax(s / 2) over a head's picks is softmax(s) with every weight square-rooted and
    // renormalized.
    let mut top = (0f32, 0f32);
    for (wa, wb) in a
        .background
        .sample
        .weights
        .chunks_exact(4)
        .zip(b.background.sample.weights.chunks_exact(4))
    {
        let root: Vec<f32> = wa.iter().map(|w| w.sqrt()).collect();
        let sum: f32 = root.iter().sum();
        for (r, &w) in root.iter().zip(wb) {
            assert!((r / sum - w).abs() < 1e-4, "{wa:?} at T 2 gave {wb:?}");
        }
        top.0 += wa.iter().copied().fold(0.0, f32::max);
        top.1 += wb.iter().copied().fold(0.0, f32::max);
    }
    assert!(top.1 < top.0, "T 2 did not flatten the weights: {top:?}");
    for bad in [0.0, -1.0, f32::NAN, 1000.0] {
        let opts = RetrofitOptions {
            config: config.clone(),
            temperature: bad,
            ..Default::default()
        };
        let err = opts.validate(&engine.model().config).unwrap_err();
        assert!(err.to_string().contains("temperature"), "{bad}: {err}");
    }
}

//! The default model with a fitted memory, as the learning tests start from.

use engram::backend::Backend;
use engram::delta::MemoryStore;
use engram::learn::{RetrofitOptions, retrofit};
use engram::{Engine, EngineOptions};

use crate::{background_documents, default_model};

/// The default model with a default-shape memory fitted on 4,096 background tokens.
pub fn engine_with_memory() -> Engine {
    let (mut engine, store) = engine_and_store();
    engine.attach_memory(store, None).unwrap();
    engine
}

/// The default model and a default-shape memory store fitted on 4,096 background tokens. The
/// fit is deterministic, so it runs once per test binary and each test gets a copy.
pub fn engine_and_store() -> (Engine, MemoryStore) {
    static FITTED: std::sync::OnceLock<MemoryStore> = std::sync::OnceLock::new();
    let engine = Engine::open(default_model(), &EngineOptions::default()).unwrap();
    let store = FITTED.get_or_init(|| fit_memory(&engine));
    (engine, store.clone())
}

/// A default-shape memory for `engine`'s model fitted on 4,096 background tokens (the CPU is
/// the fast place for it).
pub fn fit_memory(engine: &Engine) -> MemoryStore {
    let opts = RetrofitOptions {
        max_tokens: 4096,
        ..Default::default()
    };
    retrofit(
        engine.model(),
        engine.tokenizer(),
        &engine.fingerprint(),
        &background_documents(),
        &opts,
        &mut |_| true,
    )
    .unwrap()
}

/// The values of the engine's first memory layer, downloaded from its backend.
pub fn values(engine: &Engine) -> Vec<f32> {
    let b = engine.model().backend();
    b.download(&engine.model().memory()[0].values)
}

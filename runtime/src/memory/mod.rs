//! The memory layer: its shape, parameters, product-key lookup, background statistics, slot
//! selection and read gate. Its store file lives in `delta` beside the journal, and
//! the retrofit that fits it into a model in `learn`, since both sit above the model.

mod config;
mod layer;
mod params;
pub mod read_gate;
mod selection;
mod usage;

pub use crate::backend::ProductKeyShape;
pub use config::{MAX_KEYS, MemoryConfig};
pub use layer::{GateTape, MemoryBlock, MemoryLookup, SlotLookup};
pub use params::{
    BackgroundInfo, BackgroundSample, BackgroundStats, MAX_SAMPLED_SLOTS, MemoryLayerParams,
};
pub use read_gate::{
    DEFAULT_NOTE_READ_GATE, DEFAULT_READ_GATE, KeyKind, KeyedPhrasing, OpenFacts, ReadGate,
    SpeakerTokens, WordStart,
};
pub use selection::{SlotScoring, count_accesses, select_slots};
pub use usage::SlotUsage;

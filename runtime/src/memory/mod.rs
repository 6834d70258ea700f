//! The memory layer: product-key lookup, its parameters and store file, and the retrofit that
//! fits it into a pretrained model without changing what the model computes.

mod config;
mod layer;
mod linalg;
pub mod product_keys;
pub mod read_gate;
mod retrofit;
mod selection;
mod store;
mod usage;

pub use config::{MAX_KEYS, MemoryConfig};
pub use layer::{GateTape, MemoryBlock, MemoryLookup, SlotLookup};
pub use product_keys::ProductKeyShape;
pub use read_gate::{DEFAULT_NOTE_READ_GATE, DEFAULT_READ_GATE, KeyKind, ReadGate};
pub use retrofit::{Init, RetrofitOptions, RetrofitProgress, retrofit};
pub use selection::{SlotScoring, count_accesses, select_slots};
pub use store::{
    BackgroundInfo, BackgroundSample, BackgroundStats, MAX_SAMPLED_SLOTS, MemoryLayerParams,
    MemoryStore, STORE_FORMAT_VERSION, STORE_KIND,
};
pub use usage::SlotUsage;

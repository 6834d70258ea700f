//! What a user taught, made durable and portable: the store's journal and checkpoints,
//! snapshots, and delta files that carry learned rows to another device.
//!
//! A store `my.engram` (the checkpoint) has two companions: `my.engram.journal`, where every
//! change is appended and fsynced before it is reported done, and `my.engram.lock`, which the
//! one writer holds. Opening replays the journal over the checkpoint; a checkpoint writes a
//! new store atomically and then empties the journal.

mod durable;
mod file;
mod history;
mod journal;

pub use durable::{DurableMemory, MemoryAccess, lock_path, open_store};
pub use file::{DELTA_FORMAT_VERSION, Delta, DeltaPrecision, write_atomic};
pub use history::{
    Applied, Change, ImportedDelta, LearnedEntry, RowAccess, RowSet, Snapshot, StoreHistory,
    unix_now,
};
pub use journal::{Journal, JournalContents, Record, journal_path, read_journal};

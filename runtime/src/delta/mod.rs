//! What a user taught, made durable and portable: the store's journal and checkpoints,
//! snapshots, and delta files that carry learned rows to another device.
//!
//! A store `my.engram` (the checkpoint) has three companions: `my.engram.journal`, where every
//! change is appended and fsynced before it is reported done (a learned fact as one record
//! holding its rows' net change), `my.engram.facts`, which keeps each learned fact's net
//! change so it can be forgotten exactly later (see `fact_log.rs`), and `my.engram.lock`,
//! which the one writer holds. Opening
//! replays the journal over the checkpoint; a checkpoint writes the rows changed since the
//! last one and the history in place, after logging them to the journal (see `in_place.rs`),
//! then empties the journal. An encrypted store is sealed whole, so its checkpoint writes a
//! new store atomically instead.
//!
//! ```no_run
//! use engram::{Delta, DeltaPrecision, Engine, EngineOptions, Fact, LearnOptions, MemoryAccess};
//!
//! let model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
//! // The phone: learn, then hand what was learned since "synced" to another device.
//! let mut phone = Engine::open(model, &EngineOptions::default())?;
//! phone.open_memory("phone.engram", MemoryAccess::Write)?; // journaled, locked
//! phone.snapshot("synced")?;
//! let facts = [Fact::note("My sister Ana lives in Porto.")];
//! phone.learn(&facts, &LearnOptions::default(), &mut |_, _, _| true)?; // each fact durable
//! phone.checkpoint()?; // fold the journal into phone.engram
//! let delta = phone.export_delta(Some("synced"), DeltaPrecision::F16, "phone")?;
//! delta.write("ana.delta")?;
//!
//! // The laptop: a copy of the same retrofit store.
//! let mut laptop = Engine::open(model, &EngineOptions::default())?;
//! laptop.open_memory("laptop.engram", MemoryAccess::Write)?;
//! let report = laptop.import_delta(&Delta::read("ana.delta")?)?;
//! println!("{} rows, {} shared with earlier imports", report.rows, report.overlapping);
//! println!("{}", laptop.ask("Where does my sister Ana live?", 32)?);
//! laptop.revert_delta(&report.id)?; // changed its mind: rows back exactly
//! laptop.checkpoint()?;
//! # Ok::<(), engram::Error>(())
//! ```

mod durable;
mod fact_log;
mod file;
mod history;
mod in_place;
mod journal;
mod sealed;
mod sealed_store;
mod signing;
mod store;
mod store_history;

pub use durable::{CheckpointReport, DurableMemory, MemoryAccess, lock_path, open_store};
pub use fact_log::{FactLog, fact_log_path};
pub use file::{DELTA_FORMAT_VERSION, Delta, DeltaPrecision, write_atomic, write_key_file};
pub use history::{
    Applied, Change, ImportedDelta, LearnedEntry, RowAccess, RowSet, Snapshot, StoreHistory,
    add_diff, unix_now,
};
pub use in_place::{CRASH_POINT_VAR, CheckpointImage};
pub use journal::{Entry, Journal, JournalContents, Record, journal_path, read_journal};
pub use sealed::{StoreKey, is_sealed};
pub use signing::{
    DeltaSignature, PublicKey, SignaturePolicy, SigningKey, TrustedSigners, generate_key_files,
    sign_delta_file, verify_delta_file,
};
pub use store::{MemoryStore, STORE_FORMAT_VERSION, STORE_KIND};

//! `engram delta …`: move what a user taught between stores.

use std::path::PathBuf;

use clap::Subcommand;
use engram::delta::{Delta, DeltaPrecision, MemoryAccess};

use crate::{Placement, open_with};

/// Subcommands of `engram delta`.
#[derive(Subcommand)]
pub enum DeltaCommand {
    /// Write what was learned (since the beginning or a snapshot) to a delta file.
    Export {
        /// The delta file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Only what changed after this snapshot (see `engram snapshot`).
        #[arg(long)]
        since: Option<String>,
        /// Store differences as f16 (half the size, not bit-exact).
        #[arg(long)]
        f16: bool,
        /// A label naming the app or person the delta comes from.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Add a delta's differences to the store (importing it again changes nothing).
    Import {
        /// The delta file.
        file: PathBuf,
    },
    /// Undo an imported delta, given its file or its id (a unique prefix is enough).
    Revert {
        /// Delta file or id.
        delta: String,
    },
    /// Print what a delta file holds.
    Inspect {
        /// The delta file.
        file: PathBuf,
    },
    /// List the store's imported deltas, snapshots and learned facts.
    List,
}

fn need_memory(memory: Option<PathBuf>, what: &str) -> Result<PathBuf, String> {
    memory.ok_or_else(|| format!("delta {what} needs --memory STORE"))
}

/// Runs one `engram delta` subcommand.
pub fn run(
    model: Option<PathBuf>,
    memory: Option<PathBuf>,
    place: Placement,
    command: DeltaCommand,
) -> Result<(), String> {
    let err = |e: engram::Error| e.to_string();
    match command {
        DeltaCommand::Inspect { file } => {
            print!("{}", Delta::read(&file).map_err(err)?.describe());
            Ok(())
        }
        DeltaCommand::Export {
            output,
            since,
            f16,
            label,
        } => {
            let memory = need_memory(memory, "export")?;
            let mut engine = open_with(model, Some(memory), MemoryAccess::Read, place, 0)?;
            let precision = if f16 {
                DeltaPrecision::F16
            } else {
                DeltaPrecision::F32
            };
            let delta = engine
                .export_delta(since.as_deref(), precision, &label)
                .map_err(err)?;
            delta.write(&output).map_err(err)?;
            println!(
                "wrote {} ({} rows, {} facts, {} bytes): delta {}",
                output.display(),
                delta.rows.len(),
                delta.learned.len(),
                std::fs::metadata(&output).map_or(0, |m| m.len()),
                delta.id
            );
            Ok(())
        }
        DeltaCommand::Import { file } => {
            let memory = need_memory(memory, "import")?;
            // Read and check the file before taking the store's lock.
            let delta = Delta::read(&file).map_err(err)?;
            let mut engine = open_with(model, Some(memory.clone()), MemoryAccess::Write, place, 0)?;
            let r = engine.import_delta(&delta).map_err(err)?;
            if r.already_imported {
                println!(
                    "delta {} is already imported into {}; nothing changed",
                    r.id,
                    memory.display()
                );
            } else {
                engine.checkpoint().map_err(err)?;
                println!(
                    "imported delta {} into {}: {} rows ({} also changed by earlier imports; differences added)",
                    r.id,
                    memory.display(),
                    r.rows,
                    r.overlapping
                );
            }
            Ok(())
        }
        DeltaCommand::Revert { delta } => {
            let memory = need_memory(memory, "revert")?;
            let mut engine = open_with(model, Some(memory.clone()), MemoryAccess::Write, place, 0)?;
            let r = engine.revert_delta_or_file(&delta).map_err(err)?;
            engine.checkpoint().map_err(err)?;
            println!(
                "reverted delta {} in {}: {} rows restored exactly, {} changed since (its difference subtracted)",
                r.id,
                memory.display(),
                r.exact,
                r.adjusted
            );
            Ok(())
        }
        DeltaCommand::List => {
            let memory = need_memory(memory, "list")?;
            let engine = open_with(model, Some(memory), MemoryAccess::Read, place, 0)?;
            println!("imported deltas: {}", engine.imported_deltas().len());
            for d in engine.imported_deltas() {
                println!(
                    "  {}  {} rows  label {:?}  imported {}",
                    d.id,
                    d.previous.len(),
                    d.label,
                    d.imported
                );
            }
            println!("snapshots: {}", engine.snapshots().len());
            for s in engine.snapshots() {
                println!(
                    "  {:?}  taken {}  {} rows changed since",
                    s.name,
                    s.created,
                    s.before.len()
                );
            }
            println!("learned facts: {}", engine.learned_facts().len());
            for f in engine.learned_facts() {
                println!("  {}", f.text);
            }
            Ok(())
        }
    }
}

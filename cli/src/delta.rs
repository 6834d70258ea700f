//! `engram delta …`: move what a user taught between stores.

use std::path::PathBuf;

use clap::Subcommand;
use engram::delta::{Delta, DeltaPrecision, MemoryAccess, SignaturePolicy};
use engram::{SigningKey, sign_delta_file, verify_delta_file};

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
        /// Sign the delta with this secret-key file (from `engram keys generate`).
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
    },
    /// Add a delta's differences to the store (importing it again changes nothing).
    Import {
        /// The delta file.
        file: PathBuf,
        /// Import only a delta signed by a key in this file (public-key lines, `#` comments).
        #[arg(long, value_name = "FILE")]
        trusted_signers: Option<PathBuf>,
    },
    /// Sign a delta file with a secret-key file (rewritten atomically, or written to -o).
    Sign {
        /// The delta file.
        file: PathBuf,
        /// The secret-key file (from `engram keys generate`).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// Where to write the signed delta (default: replace FILE).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Check a delta file's checksum and signature; with --trusted-signers also that its
    /// signer is trusted (exit status 1 otherwise).
    Verify {
        /// The delta file.
        file: PathBuf,
        /// Public keys to trust.
        #[arg(long, value_name = "FILE")]
        trusted_signers: Option<PathBuf>,
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
        DeltaCommand::Sign { file, key, output } => {
            let delta = sign_delta_file(&file, &key, output.as_deref()).map_err(err)?;
            let signer = delta.signature.map(|s| s.signer.to_string());
            println!(
                "signed delta {} by {}: {}",
                delta.id,
                signer.unwrap_or_default(),
                output.unwrap_or(file).display()
            );
            Ok(())
        }
        DeltaCommand::Verify {
            file,
            trusted_signers,
        } => {
            let delta = verify_delta_file(&file, trusted_signers.as_deref()).map_err(err)?;
            match &delta.signature {
                Some(s) if trusted_signers.is_some() => {
                    println!("delta {}: signed by {} (trusted)", delta.id, s.signer)
                }
                Some(s) => println!("delta {}: signed by {} (verified)", delta.id, s.signer),
                None => println!("delta {}: unsigned (checksum verified)", delta.id),
            }
            Ok(())
        }
        DeltaCommand::Inspect { file } => {
            print!("{}", Delta::read(&file).map_err(err)?.describe());
            Ok(())
        }
        DeltaCommand::Export {
            output,
            since,
            f16,
            label,
            sign,
        } => {
            let memory = need_memory(memory, "export")?;
            // Read the key first: a bad key file must not cost the export.
            let key = sign
                .map(|k| SigningKey::read(&k))
                .transpose()
                .map_err(err)?;
            let mut engine = open_with(model, Some(memory), MemoryAccess::Read, place, 0)?;
            let precision = if f16 {
                DeltaPrecision::F16
            } else {
                DeltaPrecision::F32
            };
            let mut delta = engine
                .export_delta(since.as_deref(), precision, &label)
                .map_err(err)?;
            if let Some(key) = &key {
                delta.sign(key);
            }
            delta.write(&output).map_err(err)?;
            println!(
                "wrote {} ({} rows, {} facts, {} bytes{}): delta {}",
                output.display(),
                delta.rows.len(),
                delta.learned.len(),
                std::fs::metadata(&output).map_or(0, |m| m.len()),
                key.map(|k| format!(", signed by {}", k.public()))
                    .unwrap_or_default(),
                delta.id
            );
            Ok(())
        }
        DeltaCommand::Import {
            file,
            trusted_signers,
        } => {
            let memory = need_memory(memory, "import")?;
            // Read and check the file and its signer before taking the store's lock.
            let delta = Delta::read(&file).map_err(err)?;
            let policy = SignaturePolicy::from_file(trusted_signers.as_deref()).map_err(err)?;
            policy
                .check(&delta.id, delta.signature.as_ref())
                .map_err(err)?;
            let mut engine = open_with(model, Some(memory.clone()), MemoryAccess::Write, place, 0)?;
            engine.set_delta_policy(policy);
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

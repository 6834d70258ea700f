//! `engram keys …`: signing keys for deltas and the signers a store trusts.

use std::path::PathBuf;

use clap::Subcommand;
use engram::{SigningKey, StoreKey, TrustedSigners};

/// Subcommands of `engram keys`.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a new signing key: KEY (secret, owner-only) and KEY.pub (the public line to hand
    /// to whoever should trust your deltas).
    Generate {
        /// The secret-key file to write (never overwritten).
        #[arg(short, long)]
        output: PathBuf,
        /// A label for the public key (e.g. "Ana's phone").
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Print the public-key line of a secret-key file.
    Public {
        /// The secret-key file.
        key: PathBuf,
        /// A label for the public key.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List the signers a trusted-signers file holds.
    List {
        /// The trusted-signers file.
        file: PathBuf,
    },
    /// Make a new random store key file (owner-only; never overwritten) for encrypting a
    /// memory store at rest; keep it apart from the store (an app keeps it in the OS keychain).
    StoreKey {
        /// The key file to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Encrypt a plain memory store (--memory) under the store key (--store-key-file or
    /// $ENGRAM_STORE_KEY), journal and read keys included.
    EncryptStore,
    /// Decrypt an encrypted memory store (--memory, its key from --store-key-file or
    /// $ENGRAM_STORE_KEY) back to a plain one.
    DecryptStore,
}

/// Runs one `engram keys` subcommand; `memory` and `store_key` are the global options.
pub fn run(
    command: KeysCommand,
    memory: Option<PathBuf>,
    store_key: Option<StoreKey>,
) -> Result<(), String> {
    let err = |e: engram::Error| e.to_string();
    match command {
        KeysCommand::StoreKey { output } => {
            StoreKey::generate()
                .and_then(|k| k.write(&output))
                .map_err(err)?;
            println!(
                "wrote store key {} (keep it apart from the store: without it the store cannot be read)",
                output.display()
            );
            Ok(())
        }
        KeysCommand::EncryptStore | KeysCommand::DecryptStore => {
            let encrypt = matches!(command, KeysCommand::EncryptStore);
            let path = memory.ok_or("this needs --memory STORE")?;
            let key = store_key
                .ok_or("this needs the store key: --store-key-file FILE or $ENGRAM_STORE_KEY")?;
            let (from, to) = if encrypt {
                (None, Some(&key))
            } else {
                (Some(&key), None)
            };
            engram::reseal_store_file(&path, from, to).map_err(err)?;
            println!(
                "{} {}",
                if encrypt { "encrypted" } else { "decrypted" },
                path.display()
            );
            Ok(())
        }
        KeysCommand::Generate { output, label } => {
            let public = engram::generate_key_files(&output, &label).map_err(err)?;
            println!(
                "wrote secret key {} (keep it private) and public key {}.pub: {public}",
                output.display(),
                output.display()
            );
            Ok(())
        }
        KeysCommand::Public { key, label } => {
            print!(
                "{}",
                SigningKey::read(&key)
                    .map_err(err)?
                    .public()
                    .to_line(&label)
            );
            Ok(())
        }
        KeysCommand::List { file } => {
            let set = TrustedSigners::read(&file).map_err(err)?;
            println!("{} trusted signers in {}", set.keys().len(), file.display());
            for (key, label) in set.keys() {
                println!("  {key}  {label}");
            }
            Ok(())
        }
    }
}

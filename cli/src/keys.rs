//! `engram keys …`: signing keys for deltas and the signers a store trusts.

use std::path::PathBuf;

use clap::Subcommand;
use engram::{SigningKey, TrustedSigners};

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
}

/// Runs one `engram keys` subcommand.
pub fn run(command: KeysCommand) -> Result<(), String> {
    let err = |e: engram::Error| e.to_string();
    match command {
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

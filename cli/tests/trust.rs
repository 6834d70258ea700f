//! What a user taught can be trusted: stores encrypted at rest under the app's key, deltas
//! signed and imported only from trusted signers. Real `engram` processes on the default model.

mod common;

use std::path::Path;

use common::*;
use engram::delta::{MemoryAccess, journal_path, open_store};
use engram::{StoreKey, read_keys_path};

/// Every file of the store at `store` (store, journal, fact log, read keys), as bytes.
fn store_files(store: &Path) -> Vec<(String, Vec<u8>)> {
    [
        store.to_owned(),
        journal_path(store),
        engram::delta::fact_log_path(store),
        read_keys_path(store),
    ]
    .into_iter()
    .filter_map(|p| Some((p.display().to_string(), std::fs::read(&p).ok()?)))
    .collect()
}

fn holds(files: &[(String, Vec<u8>)], text: &str) -> Vec<String> {
    files
        .iter()
        .filter(|(_, b)| b.windows(text.len()).any(|w| w == text.as_bytes()))
        .map(|(n, _)| n.clone())
        .collect()
}

fn values(store: &Path, key: Option<&StoreKey>) -> Vec<u32> {
    let (s, _) = open_store(store, MemoryAccess::Read, key).unwrap();
    s.layers
        .into_iter()
        .flat_map(|l| l.values)
        .map(f32::to_bits)
        .collect()
}

#[test]
fn an_encrypted_store_holds_no_plain_text_and_opens_only_with_its_key() {
    let key_file = scratch("store.key");
    let _ = std::fs::remove_file(&key_file);
    let key_arg = key_file.to_str().unwrap();
    ok(&["keys", "store-key", "-o", key_arg]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "store key readable by others: {mode:o}");
    }
    let key = StoreKey::read(&key_file).unwrap();
    let note = "My dentist is Dr Okafor on Harbour Street.";
    let facts = facts_file("enc-facts.txt", &[note]);
    let learn = |store: &Path, with_key: bool| {
        let extra: &[&str] = if with_key {
            &["--store-key-file", key_arg]
        } else {
            &[]
        };
        learn_into(store, &facts, extra);
    };

    // The control: a plain store keeps the note's text (its history) where anyone can read it.
    let plain = fresh("enc-plain.engram");
    learn(&plain, false);
    assert!(
        !holds(&store_files(&plain), "Okafor").is_empty(),
        "the check cannot fail"
    );

    // Retrofit writes an encrypted store under the key; learning keeps everything sealed.
    let sealed = scratch("enc-sealed.engram");
    for p in [
        sealed.clone(),
        journal_path(&sealed),
        read_keys_path(&sealed),
    ] {
        let _ = std::fs::remove_file(p);
    }
    let o = small_store_with(&sealed, &["--store-key-file", key_arg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    learn(&sealed, true);
    let files = store_files(&sealed);
    assert!(
        files.len() >= 2,
        "store and read keys written: {files:?}",
        files = files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for word in ["Okafor", "Harbour", "dentist", "engram.history"] {
        assert!(
            holds(&files, word).is_empty(),
            "{word:?} readable in {:?}",
            holds(&files, word)
        );
    }
    let s = sealed.to_str().unwrap();
    ok(&[
        "ask",
        "--memory",
        s,
        "--store-key-file",
        key_arg,
        "-n",
        "8",
        "Who is my dentist?",
    ]);

    let info = ok(&["info", s, "--store-key-file", key_arg]);
    assert!(info.contains("engram memory store"), "{info}");
    assert_one_line_error(&run_on(model(), &["info", s]), "encrypted store");
    // Without the key, with another key, and with a changed byte: refused, nothing changed.
    let before = std::fs::read(&sealed).unwrap();
    let o = run_on(
        model(),
        &["ask", "--memory", s, "-n", "4", "Who is my dentist?"],
    );
    assert_one_line_error(&o, "is encrypted");
    let o = engram()
        .args(["ask", "--memory", s, "-n", "4", "hi", "-m"])
        .arg(model())
        .env("ENGRAM_STORE_KEY", "11".repeat(32))
        .output()
        .unwrap();
    assert_one_line_error(&o, "wrong store key");
    let mut flipped = before.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    std::fs::write(&sealed, &flipped).unwrap();
    let o = run_on(
        model(),
        &[
            "learn",
            "--memory",
            s,
            "--store-key-file",
            key_arg,
            "--facts",
            facts.to_str().unwrap(),
            "--steps",
            "1",
        ],
    );
    assert_one_line_error(&o, "tampered");
    assert!(
        std::fs::read(&sealed).unwrap() == flipped,
        "a refused store was rewritten"
    );
    std::fs::write(&sealed, &before).unwrap();
    let o = run_on(
        model(),
        &[
            "ask",
            "--memory",
            plain.to_str().unwrap(),
            "--store-key-file",
            key_arg,
            "hi",
        ],
    );
    assert_one_line_error(&o, "not encrypted");

    // Decrypting and encrypting again keep every value bit for bit.
    let encrypted_values = values(&sealed, Some(&key));
    ok(&[
        "keys",
        "decrypt-store",
        "--memory",
        s,
        "--store-key-file",
        key_arg,
    ]);
    assert_eq!(values(&sealed, None), encrypted_values);
    assert!(!holds(&store_files(&sealed), "Okafor").is_empty());
    ok(&[
        "keys",
        "encrypt-store",
        "--memory",
        s,
        "--store-key-file",
        key_arg,
    ]);
    assert_eq!(values(&sealed, Some(&key)), encrypted_values);
    assert!(holds(&store_files(&sealed), "Okafor").is_empty());
}

#[test]
fn only_deltas_signed_by_a_trusted_key_import_under_a_signature_policy() {
    let a = store_that_learned("sig-a.engram", "My sister Ana lives in Porto.");
    let a_str = a.to_str().unwrap();
    // Ana signs; Eve has a key too, but nobody trusts it.
    let (ana, eve) = (scratch("ana.key"), scratch("eve.key"));
    for (key, label) in [(&ana, "Ana's phone"), (&eve, "Eve")] {
        let _ = std::fs::remove_file(key);
        let _ = std::fs::remove_file(key.with_extension("key.pub"));
        ok(&[
            "keys",
            "generate",
            "-o",
            key.to_str().unwrap(),
            "--label",
            label,
        ]);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ana).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "secret key readable by others: {mode:o}");
    }
    let o = run_on(model(), &["keys", "generate", "-o", ana.to_str().unwrap()]);
    assert_one_line_error(&o, "never overwritten");
    let trusted = ana.with_extension("key.pub");
    let listed = ok(&["keys", "list", trusted.to_str().unwrap()]);
    assert!(
        listed.contains("1 trusted signers") && listed.contains("Ana's phone"),
        "{listed}"
    );

    let export = |name: &str, key: Option<&Path>| {
        let path = scratch(name);
        let mut args = vec![
            "delta",
            "export",
            "--memory",
            a_str,
            "-o",
            path.to_str().unwrap(),
        ];
        if let Some(k) = key {
            args.extend(["--sign", k.to_str().unwrap()]);
        }
        ok(&args);
        path
    };
    let signed = export("signed.delta", Some(&ana));
    let by_eve = export("by-eve.delta", Some(&eve));
    let unsigned = export("unsigned.delta", None);
    let described = ok(&["delta", "inspect", signed.to_str().unwrap()]);
    assert!(described.contains("(verified)"), "{described}");
    let mut flipped = std::fs::read(&signed).unwrap();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let flipped_path = scratch("flipped-signed.delta");
    std::fs::write(&flipped_path, &flipped).unwrap();

    let target = fresh("sig-target.engram");
    let t_str = target.to_str().unwrap();
    let before = std::fs::read(&target).unwrap();
    let policy = ["--trusted-signers", trusted.to_str().unwrap()];
    for (what, file, needle) in [
        ("signed by an untrusted key", &by_eve, "not among"),
        ("unsigned", &unsigned, "unsigned"),
        ("signed, then a byte flipped", &flipped_path, "checksum"),
    ] {
        let mut args = vec!["delta", "import", "--memory", t_str, file.to_str().unwrap()];
        args.extend(policy);
        let o = run_on(model(), &args);
        assert_one_line_error(&o, needle);
        assert!(
            std::fs::read(&target).unwrap() == before,
            "{what}: store changed"
        );
        assert!(
            std::fs::read(journal_path(&target)).map_or(true, |j| j.is_empty()),
            "{what}: journal written"
        );
        eprintln!(
            "refused ({what}): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    // `delta verify` applies the same policy without touching a store.
    let o = run_on(
        model(),
        &[
            "delta",
            "verify",
            by_eve.to_str().unwrap(),
            "--trusted-signers",
            trusted.to_str().unwrap(),
        ],
    );
    assert_one_line_error(&o, "not among");
    let verified = ok(&[
        "delta",
        "verify",
        signed.to_str().unwrap(),
        "--trusted-signers",
        trusted.to_str().unwrap(),
    ]);
    assert!(verified.contains("(trusted)"), "{verified}");
    // Signing afterwards works the same as signing at export.
    let late = scratch("late-signed.delta");
    ok(&[
        "delta",
        "sign",
        unsigned.to_str().unwrap(),
        "--key",
        ana.to_str().unwrap(),
        "-o",
        late.to_str().unwrap(),
    ]);
    let mut args = vec!["delta", "import", "--memory", t_str, late.to_str().unwrap()];
    args.extend(policy);
    ok(&args);
    assert!(std::fs::read(&target).unwrap() != before);
    // Without a policy an unsigned delta still imports (the app allows it).
    let open = fresh("sig-open.engram");
    ok(&[
        "delta",
        "import",
        "--memory",
        open.to_str().unwrap(),
        unsigned.to_str().unwrap(),
    ]);
}

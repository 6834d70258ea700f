//! Helpers shared by the CLI test files: run the real binary on the default model.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use engram::delta::{journal_path, lock_path};
use engram::gguf::{GgufWriter, Value};

#[path = "../../../tests/src/scratch.rs"]
mod scratch;

/// The `engram` binary under test, with no model from the environment.
pub fn engram() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_engram"));
    c.env_remove("ENGRAM_MODEL");
    c
}

/// The default model (fetched by scripts/fetch-model).
pub fn model() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "default model missing: run scripts/fetch-model"
    );
    p
}

/// A path in this test process's scratch directory.
pub fn scratch(name: &str) -> PathBuf {
    scratch::scratch_dir("cli").join(name)
}

/// A minimal GGUF declaring `arch` with one 4-element tensor `t`.
pub fn minimal_gguf(arch: &str) -> GgufWriter<'static> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String(arch.into()));
    w.add_f32("t", &[4], &[0.0; 4]).unwrap();
    w
}

/// Runs `engram ARGS -m MODEL` to completion.
pub fn run_on(model: impl AsRef<Path>, args: &[&str]) -> Output {
    engram()
        .args(args)
        .arg("-m")
        .arg(model.as_ref())
        .output()
        .unwrap()
}

/// A run's stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a failed run whose stderr ends in exactly one `error:` line mentioning `needle`.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, stderr: {err}");
    assert!(!errors[0].contains('\n'));
    assert!(
        errors[0].to_lowercase().contains(&needle.to_lowercase()),
        "error {:?} does not mention {needle:?}",
        errors[0]
    );
}

/// The background corpus (scripts/build-background).
pub fn background() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/background.txt");
    assert!(
        p.is_file(),
        "background corpus missing: run scripts/build-background"
    );
    p
}

/// A small fitted store (4,096 slots over 512 background tokens) at `out`.
pub fn small_store(out: &Path) -> Output {
    small_store_with(out, &[])
}

/// [`small_store`] with more arguments for retrofit (e.g. a store key).
pub fn small_store_with(out: &Path, extra: &[&str]) -> Output {
    let bg = background();
    let mut args = vec![
        "retrofit",
        "--background",
        bg.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--max-tokens",
        "512",
        "--batch-tokens",
        "128",
        "--n-keys",
        "64",
        "--fit-samples",
        "512",
    ];
    args.extend(extra);
    run_on(model(), &args)
}

/// A data file made by `scripts/SCRIPT`.
pub fn data(name: &str, script: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data")
        .join(name);
    assert!(p.is_file(), "{} missing: run scripts/{script}", p.display());
    p
}

/// A small fitted store made once for this test process (4,096 slots).
pub fn initial_store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| {
        let p = scratch("initial.engram");
        let o = small_store(&p);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        p
    })
}

/// A fresh copy of the initial store at `name` (no journal, no lock).
pub fn fresh(name: &str) -> PathBuf {
    let p = scratch(name);
    for extra in [journal_path(&p), lock_path(&p)] {
        let _ = std::fs::remove_file(extra);
    }
    std::fs::copy(initial_store(), &p).unwrap();
    p
}

pub fn facts_file(name: &str, lines: &[&str]) -> PathBuf {
    let p = scratch(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

/// Runs `engram ARGS` on the default model and asserts success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let o = run_on(model(), args);
    assert!(
        o.status.success(),
        "engram {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

/// Runs `engram learn` of the facts file `facts` into `store` (2 steps), with `extra`
/// arguments (e.g. a store key); asserts success.
pub fn learn_into(store: &Path, facts: &Path, extra: &[&str]) {
    let mut args = vec![
        "learn",
        "--memory",
        store.to_str().unwrap(),
        "--facts",
        facts.to_str().unwrap(),
        "--steps",
        "2",
    ];
    args.extend(extra);
    ok(&args);
}

/// A fresh copy of the initial store at `name` that learned `note` (2 steps).
pub fn store_that_learned(name: &str, note: &str) -> PathBuf {
    let store = fresh(name);
    let facts = facts_file(&format!("{name}.facts.txt"), &[note]);
    learn_into(&store, &facts, &[]);
    store
}

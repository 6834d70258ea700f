//! Helpers shared by the binding tests of `ffi/c` and `ffi/uniffi` (included with `#[path]`).

use std::path::{Path, PathBuf};
use std::process::Command;

use engram::RetrofitOptions;
use engram::memory::MemoryConfig;
use engram::{Engine, EngineOptions};

#[path = "../tests/src/scratch.rs"]
mod scratch;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The cargo profile directory this test binary was built in (target/release or target/debug).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_owned()
}

/// Builds `cargo build -p <package> <args>` with this test's profile, once per process:
/// `cargo test` builds only the rlib, not the libraries other languages load.
pub fn cargo_build(package: &str, args: &[&str]) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let dir = profile_dir();
    let mut done = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let key = format!("{package} {}", args.join(" "));
    if !done.contains(&key) {
        let mut cargo = Command::new(env!("CARGO"));
        // The same engram build the tests themselves use (they enable its inner modules
        // through the e2e crate), so it is not compiled a second time.
        cargo
            .args(["build", "-p", package, "--features", "engram/internals"])
            .args(args);
        if dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let o = cargo.output().expect("cargo runs");
        assert!(
            o.status.success(),
            "cargo build -p {key} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        done.push(key);
    }
    dir
}

/// The default model (scripts/fetch-model puts it there).
pub fn model() -> PathBuf {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "default model missing: run scripts/fetch-model"
    );
    p
}

/// A scratch directory for this test process.
pub fn scratch(tag: &str) -> PathBuf {
    scratch::scratch_dir(tag)
}

/// A small fitted store (4,096 slots) from the background corpus, made once per process.
pub fn make_store(dir: &Path) -> PathBuf {
    static STORE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    STORE.get_or_init(|| build_store(dir)).clone()
}

fn build_store(dir: &Path) -> PathBuf {
    let bg = root().join("data/background.txt");
    let text = std::fs::read_to_string(&bg)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-background)", bg.display()));
    let docs: Vec<String> = text.split("\n\n").take(200).map(str::to_owned).collect();
    let engine = Engine::open(model(), &EngineOptions::default()).unwrap();
    let opts = RetrofitOptions {
        config: MemoryConfig {
            n_keys: 64,
            ..Default::default()
        },
        max_tokens: 1024,
        batch_tokens: 128,
        fit_samples: 1024,
        ..Default::default()
    };
    fitted_store(&engine, &docs, &opts, &dir.join("fresh.engram"))
}

/// Retrofits a memory into `engine`'s model on `docs` and saves it at `path`.
pub fn fitted_store(
    engine: &Engine,
    docs: &[String],
    opts: &RetrofitOptions,
    path: &Path,
) -> PathBuf {
    let store = engine.retrofit(docs, opts, &mut |_| true).unwrap();
    store.save(path).unwrap();
    path.to_owned()
}

/// Copies the fresh store to `dir/<name>.engram` for one test to change.
pub fn store_copy(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(format!("{name}.engram"));
    std::fs::copy(make_store(dir), &p).unwrap();
    p
}

/// Runs a notebook example (`examples/notebook`) given as `program` on a fresh store: adds a
/// note, asks about it and exports a delta; checks each step printed and the delta is one.
pub fn run_notebook(mut program: Command, dir: &Path, tag: &str) -> String {
    let store = store_copy(dir, &format!("notebook-{tag}"));
    let delta = dir.join(format!("notebook-{tag}.delta"));
    let o = program
        .arg(model())
        .arg(&store)
        .args(["add", "My neighbour's parrot is called Captain Biscuit."])
        .args(["ask", "What is my neighbour's parrot called?"])
        .arg("export")
        .arg(&delta)
        .output()
        .expect("the notebook example runs");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!(
        "--- notebook ({tag}) ---\n{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "the {tag} notebook failed");
    assert!(out.contains("step 1: loss"), "no learning progress printed");
    assert!(out.contains("\nA: "), "no answer printed");
    let bytes = std::fs::read(&delta).expect("the notebook wrote its delta");
    assert!(
        bytes.starts_with(b"ENGRAMD\0"),
        "the export is not a delta file"
    );
    engram::delta::Delta::read(&delta).expect("the exported delta reads back");
    out
}

/// Runs a chat example (`examples/chat`) given as `program` on a fresh store, fed a script on
/// a pipe: the statement is learned and reported, a new conversation answers it from the
/// memory, and it is forgotten on request.
pub fn run_chat_example(mut program: Command, dir: &Path, tag: &str) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let store = store_copy(dir, &format!("chat-{tag}"));
    let mut child = program
        .arg(model())
        .arg(&store)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the chat example starts");
    child
        .stdin
        .take()
        .expect("a pipe")
        .write_all(
            b"My hamster is called Pistachio.\n/reset\nWhat is my hamster called?\n\
              /forget Pistachio\nWhat is my hamster called?\n/quit\n",
        )
        .expect("the chat example reads its script");
    let o = child.wait_with_output().expect("the chat example ends");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!(
        "--- chat example ({tag}) ---\n{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "the {tag} chat example failed");
    assert!(
        out.contains("[learned #1: \"My hamster is called Pistachio.\""),
        "the statement was not reported learned"
    );
    // The reply to the `n`th time the script asks (from 1): the line after the question.
    let reply = |n: usize| {
        out.split("> What is my hamster called?")
            .nth(n)
            .and_then(|rest| rest.lines().nth(1))
            .unwrap_or_else(|| panic!("question {n} got no reply"))
    };
    let answer = reply(1);
    assert!(answer.contains("Pistachio"), "{answer:?}: not recalled");
    assert!(
        out.contains("[forgot #1: \"My hamster is called Pistachio.\"]"),
        "the fact was not forgotten"
    );
    // Forgotten, it is declined rather than invented (the example turns abstention on).
    assert_eq!(
        reply(2).trim(),
        "You haven't told me that.",
        "after forgetting"
    );
    out
}

//! The uniffi bindings, each exercised for real on the default model:
//! - the committed bindings in `bindings/` equal what uniffi generates from this library;
//! - Python: `bindings/python/test_engram.py` under pytest;
//! - Kotlin/JVM: `bindings/kotlin/TestEngram.kt` compiled with kotlinc, run with JNA;
//! - Swift (no Swift toolchain on Linux): the generated file parses with tree-sitter-swift and
//!   every FFI symbol it calls exists in the built library.
//!
//! Tools: `pip install pytest tree-sitter tree-sitter-swift`, `npm install kotlin-compiler`
//! (found through `KOTLINC`, `PATH` or `.ci/tools`), Debian `libjna-java` (or `JNA_JAR`);
//! `.ci/run` installs them all. A missing tool fails the test with the install line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../test_support.rs"]
mod support;
use support::{model, root, scratch, store_copy};

/// The built library and the bindgen next to it.
fn built() -> PathBuf {
    let dir = support::cargo_build("engram-uniffi", &["--features", "cli"]);
    assert!(dir.join("libengram_uniffi.so").is_file());
    dir
}

/// Generates the bindings for `language` into `out` from the built library.
fn generate(language: &str, out: &Path) {
    let dir = built();
    let o = Command::new(dir.join("uniffi-bindgen"))
        .args([
            "generate",
            "--no-format",
            "--language",
            language,
            "--library",
        ])
        .arg(dir.join("libengram_uniffi.so"))
        .arg("--out-dir")
        .arg(out)
        .output()
        .expect("uniffi-bindgen runs");
    assert!(
        o.status.success(),
        "uniffi-bindgen {language}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Generated files, relative to `bindings/<language>`.
const GENERATED: [(&str, &str); 5] = [
    ("python", "engram.py"),
    ("kotlin", "uniffi/engram/engram.kt"),
    ("swift", "engram.swift"),
    ("swift", "engramFFI.h"),
    ("swift", "engramFFI.modulemap"),
];

#[test]
fn committed_bindings_match_the_library() {
    let tmp = scratch("uniffi-gen");
    let update = std::env::var_os("ENGRAM_UPDATE_BINDINGS").is_some();
    let mut stale = Vec::new();
    for language in ["python", "kotlin", "swift"] {
        generate(language, &tmp.join(language));
    }
    for (language, file) in GENERATED {
        let fresh = std::fs::read_to_string(tmp.join(language).join(file)).unwrap();
        let committed = root().join("bindings").join(language).join(file);
        if std::fs::read_to_string(&committed).ok().as_deref() != Some(fresh.as_str()) {
            if update {
                std::fs::create_dir_all(committed.parent().unwrap()).unwrap();
                std::fs::write(&committed, &fresh).unwrap();
            }
            stale.push(committed.display().to_string());
        }
    }
    assert!(
        update || stale.is_empty(),
        "generated bindings differ from the committed ones: {stale:?}\n\
         regenerate with scripts/generate-bindings (or ENGRAM_UPDATE_BINDINGS=1 cargo test -p engram-uniffi)"
    );
}

/// A directory with the committed module for `language` and the library beside it.
fn staged(language: &str, tag: &str) -> PathBuf {
    let dir = scratch(tag);
    let lib = built().join("libengram_uniffi.so");
    std::fs::copy(&lib, dir.join("libengram_uniffi.so")).unwrap();
    if language == "python" {
        // The test goes beside the module: pytest puts the test's own directory first on
        // sys.path, and the module loads the library from its own directory.
        for file in ["engram.py", "test_engram.py"] {
            std::fs::copy(root().join("bindings/python").join(file), dir.join(file)).unwrap();
        }
        for (example, file) in [("notebook", "notebook.py"), ("chat", "chat.py")] {
            std::fs::copy(
                root().join("examples").join(example).join(file),
                dir.join(file),
            )
            .unwrap();
        }
    }
    dir
}

fn show(what: &str, o: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("--- {what} ---\n{text}");
    text
}

fn need(tool: &str, found: bool, install: &str) {
    assert!(
        found,
        "{tool} is not installed ({install}); the bindings test cannot run"
    );
}

#[test]
fn python_binding_passes_pytest_on_the_real_model() {
    let dir = staged("python", "uniffi-py");
    let has_pytest = Command::new("python3")
        .args(["-c", "import pytest"])
        .output()
        .is_ok_and(|o| o.status.success());
    need("pytest", has_pytest, "pip install pytest");
    let o = Command::new("python3")
        .args(["-m", "pytest", "-v", "-s", "-p", "no:cacheprovider"])
        .arg(dir.join("test_engram.py"))
        .env("ENGRAM_MODEL", model())
        .env("ENGRAM_STORE_A", store_copy(&dir, "py-a"))
        .env("ENGRAM_STORE_B", store_copy(&dir, "py-b"))
        .env("ENGRAM_SCRATCH", &dir)
        .output()
        .expect("python3 runs");
    let text = show("pytest", &o);
    assert!(o.status.success(), "pytest failed");
    assert!(
        text.contains(" passed") && !text.contains(" failed") && !text.contains(" skipped"),
        "pytest did not pass every test"
    );
    let mut notebook = Command::new("python3");
    notebook.arg(dir.join("notebook.py"));
    support::run_notebook(notebook, &dir, "python");
    let mut chat = Command::new("python3");
    chat.arg(dir.join("chat.py"));
    support::run_chat_example(chat, &dir, "python");
}

/// kotlinc: `KOTLINC`, then `.ci/tools` (where `.ci/run` installs it), then `PATH`.
fn kotlinc() -> PathBuf {
    let candidates = [
        std::env::var_os("KOTLINC").map(PathBuf::from),
        Some(root().join(".ci/tools/node_modules/kotlin-compiler/bin/kotlinc")),
        Some(PathBuf::from("kotlinc")),
    ];
    let found = candidates.into_iter().flatten().find(|c| {
        Command::new(c)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    need(
        "kotlinc",
        found.is_some(),
        "npm install --prefix .ci/tools kotlin-compiler",
    );
    found.unwrap()
}

fn jna_jar() -> PathBuf {
    let jar = std::env::var_os("JNA_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/java/jna.jar"));
    need("JNA", jar.is_file(), "apt-get install libjna-java");
    jar
}

/// Compiles the binding and `sources` into a jar (kotlinc bundles the Kotlin runtime).
fn kotlin_jar(dir: &Path, name: &str, sources: &[PathBuf]) -> PathBuf {
    let jar = dir.join(format!("{name}.jar"));
    let o = Command::new(kotlinc())
        .arg(root().join("bindings/kotlin/uniffi/engram/engram.kt"))
        .args(sources)
        .arg("-cp")
        .arg(jna_jar())
        .arg("-include-runtime")
        .arg("-d")
        .arg(&jar)
        .output()
        .expect("kotlinc runs");
    show("kotlinc", &o);
    assert!(o.status.success(), "kotlinc failed");
    jar
}

/// `java` running `main_class` from `jar`, with JNA and the library on their paths.
fn java_command(dir: &Path, jar: &Path, main_class: &str) -> Command {
    let classpath = format!("{}:{}", jar.display(), jna_jar().display());
    let mut java = Command::new("java");
    java.arg(format!("-Djna.library.path={}", dir.display()))
        .arg("-cp")
        .arg(classpath)
        .arg(main_class);
    java
}

#[test]
fn kotlin_binding_test_program_passes_on_the_real_model() {
    let dir = staged("kotlin", "uniffi-kt");
    // One compilation for the test and the examples (kotlinc is slow to start).
    let jar = kotlin_jar(
        &dir,
        "test",
        &[
            root().join("bindings/kotlin/TestEngram.kt"),
            root().join("examples/notebook/Notebook.kt"),
            root().join("examples/chat/Chat.kt"),
        ],
    );
    let (a, b) = (store_copy(&dir, "kt-a"), store_copy(&dir, "kt-b"));
    let o = java_command(&dir, &jar, "TestEngramKt")
        .arg(model())
        .args([&a, &b, &dir.join("kt.delta")])
        .output()
        .expect("java runs");
    let text = show("Kotlin test", &o);
    assert!(o.status.success(), "the Kotlin test failed");
    assert!(text.contains(", 0 failed"), "no pass/fail count printed");
    support::run_notebook(
        java_command(&dir, &jar, "engram.examples.NotebookKt"),
        &dir,
        "kotlin",
    );
    support::run_chat_example(
        java_command(&dir, &jar, "engram.examples.ChatKt"),
        &dir,
        "kotlin",
    );
}

#[test]
fn swift_binding_parses_and_calls_only_symbols_the_library_exports() {
    let dir = staged("swift", "uniffi-swift");
    let has_parser = Command::new("python3")
        .args(["-c", "import tree_sitter, tree_sitter_swift"])
        .output()
        .is_ok_and(|o| o.status.success());
    need(
        "tree-sitter-swift",
        has_parser,
        "pip install tree-sitter tree-sitter-swift",
    );
    let swift = root().join("bindings/swift/engram.swift");
    let o = Command::new("python3")
        .arg(root().join("bindings/swift/check_swift.py"))
        .arg(&swift)
        .output()
        .expect("python3 runs");
    assert!(
        o.status.success(),
        "engram.swift does not parse: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let calls: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let nm = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(dir.join("libengram_uniffi.so"))
        .output()
        .expect("nm runs (binutils)");
    assert!(nm.status.success());
    let exported: std::collections::HashSet<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    let header = std::fs::read_to_string(root().join("bindings/swift/engramFFI.h")).unwrap();
    let missing: Vec<&String> = calls.iter().filter(|c| !exported.contains(*c)).collect();
    let undeclared: Vec<&String> = calls.iter().filter(|c| !header.contains(*c)).collect();
    eprintln!(
        "engram.swift parses; it calls {} FFI symbols, all exported: {}",
        calls.len(),
        missing.is_empty()
    );
    // Every exported method (ask, learn_qa, import_delta, …) must be among the calls.
    for method in [
        "ask",
        "generate",
        "learn_qa",
        "learn_note",
        "export_delta",
        "import_delta",
    ] {
        let symbol = format!("uniffi_engram_uniffi_fn_method_engram_{method}");
        assert!(calls.contains(&symbol), "engram.swift never calls {symbol}");
    }
    assert!(calls.len() > 20, "too few FFI calls found: {calls:?}");
    assert!(missing.is_empty(), "called but not exported: {missing:?}");
    assert!(
        undeclared.is_empty(),
        "called but not in engramFFI.h: {undeclared:?}"
    );
}

/// The Swift chat example (no Swift toolchain here to build or run it): it parses, and every
/// call it makes on the binding's types is a function of the generated `engram.swift` with the
/// same first argument label.
#[test]
fn swift_chat_example_parses_and_calls_the_generated_api() {
    let example = root().join("examples/chat/Chat.swift");
    let o = Command::new("python3")
        .arg(root().join("bindings/swift/check_swift.py"))
        .arg(&example)
        .output()
        .expect("python3 runs");
    assert!(
        o.status.success(),
        "Chat.swift does not parse (pip install tree-sitter tree-sitter-swift): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let source = std::fs::read_to_string(&example).unwrap();
    let binding = std::fs::read_to_string(root().join("bindings/swift/engram.swift")).unwrap();
    let mut checked = Vec::new();
    for receiver in ["chat.", "Engram."] {
        for (at, _) in source.match_indices(receiver) {
            let rest = &source[at + receiver.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '`')
                .collect();
            let after = &rest[name.len()..];
            if !after.starts_with('(') {
                continue;
            }
            let label: String = after[1..]
                .chars()
                .take_while(|c| c.is_alphanumeric())
                .collect();
            let labelled = after[1 + label.len()..].starts_with(':');
            let name = name.trim_matches('`');
            let wanted = if labelled {
                format!("func `{name}`({label}:")
            } else {
                format!("func {name}()")
            };
            let plain = wanted.replace('`', "");
            assert!(
                binding.contains(&wanted) || binding.contains(&plain),
                "Chat.swift calls {receiver}{name}({}) but engram.swift has no {plain}",
                if labelled {
                    format!("{label}:")
                } else {
                    String::new()
                }
            );
            checked.push(format!("{receiver}{name}"));
        }
    }
    eprintln!(
        "Chat.swift parses; {} calls checked against engram.swift (not compiled or run: no \
         Swift toolchain here): {checked:?}",
        checked.len()
    );
    for needed in [
        "chat.say",
        "chat.setAbstention",
        "chat.forget",
        "Engram.open",
    ] {
        assert!(checked.iter().any(|c| c == needed), "{needed} not found");
    }
}

//! The runtime's modules import one way: a lower floor never names a higher one.
//!
//! error → quant → gguf → tokenizer, backend → memory → model, sampling → delta → learn →
//! engine, fuzzing. A module may use its own floor's other modules only where the table says so
//! (none today), and everything reaches `Error` through `crate::error`, not through `lib.rs`.

use std::path::{Path, PathBuf};

/// Each top-level module of `runtime/src` and its floor; a file may name only lower floors.
const FLOORS: &[(&str, u32)] = &[
    ("error", 0),
    ("quant", 1),
    ("gguf", 2),
    ("tokenizer", 3),
    ("backend", 3),
    ("memory", 4),
    ("model", 5),
    ("sampling", 5),
    ("delta", 6),
    ("learn", 7),
    ("engine", 8),
    // Entry points that feed outside bytes to every parser, beside the engine.
    ("fuzzing", 8),
];

fn floor_of(module: &str) -> Option<u32> {
    FLOORS.iter().find(|(m, _)| *m == module).map(|(_, f)| *f)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("runtime/src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules a source text names as `crate::NAME`, with the line they are on.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let tail = &rest[at + "crate::".len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '{')
                .collect();
            // `crate::{a, b}` names several: take each of them.
            if let Some(group) = tail.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for part in inner.split(',') {
                    let m = part.trim().split("::").next().unwrap_or("").to_string();
                    if !m.is_empty() {
                        found.push((n + 1, m));
                    }
                }
            } else if !name.is_empty() {
                found.push((n + 1, name));
            }
            rest = tail;
        }
    }
    found
}

fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file under `src` belongs to (`backend/cpu/mod.rs` → `backend`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("file under src");
    let first = rel.components().next().expect("non-empty path");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

#[test]
fn no_module_imports_a_higher_floor() {
    let src = source_root();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut upward = Vec::new();
    let mut checked = 0;
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" {
            continue;
        }
        let own = floor_of(&module)
            .unwrap_or_else(|| panic!("{module} (from {}) has no floor in FLOORS", file.display()));
        let text = std::fs::read_to_string(file).expect("source is readable");
        for (line, target) in crate_paths(&text) {
            checked += 1;
            if target == module || target == "self" {
                continue;
            }
            let Some(theirs) = floor_of(&target) else {
                upward.push(format!(
                    "{}:{line}: names crate::{target}, which is not a module with a floor \
                     (re-exports through lib.rs hide the direction)",
                    file.display()
                ));
                continue;
            };
            if theirs >= own {
                upward.push(format!(
                    "{}:{line}: {module} (floor {own}) names crate::{target} (floor {theirs})",
                    file.display()
                ));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} crate paths found: is the scan broken?"
    );
    assert!(
        upward.is_empty(),
        "imports that do not flow down:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_scan_sees_grouped_and_plain_paths() {
    let text =
        "use crate::{error::Result, quant::GgmlType};\nlet x = crate::model::f(); // crate::engine";
    let names: Vec<String> = crate_paths(text).into_iter().map(|(_, m)| m).collect();
    assert_eq!(names, ["error", "quant", "model"]);
}

#[test]
fn every_module_of_lib_rs_has_a_floor() {
    let lib = std::fs::read_to_string(source_root().join("lib.rs")).expect("lib.rs");
    let mut names = Vec::new();
    for line in lib.lines() {
        let decl = line
            .trim()
            .trim_start_matches("pub ")
            .trim_start_matches("pub(crate) ");
        if let Some(name) = decl.strip_prefix("mod ") {
            names.push(name.trim_end_matches(';').to_string());
        }
        // The inner modules are declared through a macro: inner_modules!(a, b, …);
        if let Some(list) = decl.strip_prefix("inner_modules!(") {
            let list = list.trim_end_matches(';').trim_end_matches(')');
            names.extend(list.split(',').map(|n| n.trim().to_string()));
        }
    }
    // The macro's own `mod $name;` is a pattern, not a module.
    names.retain(|n| !n.starts_with('$') && !n.is_empty());
    assert!(names.len() >= 10, "only {names:?} found in lib.rs");
    for name in names {
        assert!(
            floor_of(&name).is_some(),
            "module {name} of lib.rs has no floor"
        );
    }
}

//! Compiles `bindings/c/test_engram.c` with `gcc -Wall -Wextra -Werror` against the shared and
//! the static library, runs the shared one on the default model, the static one on a tiny
//! random model (the same code, linked statically), and the shared one under
//! valgrind (no leaks, no errors) on a tiny random model of the same architecture: under
//! valgrind the default model runs about 200 times slower than natively (21 minutes for this
//! test), the tiny one takes every C call through the same engine code in seconds. Needs gcc
//! and valgrind (`.ci/run` installs valgrind).

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../test_support.rs"]
mod support;
use engram::learn::RetrofitOptions;
use engram::{Engine, EngineOptions};
use support::{make_store, model, root};

/// Where cargo put libengram_c.{so,a}, after building them.
fn lib_dir() -> PathBuf {
    let dir = support::cargo_build("engram-c", &["--lib"]);
    for lib in ["libengram_c.so", "libengram_c.a"] {
        assert!(
            dir.join(lib).is_file(),
            "{} is missing after building engram-c",
            dir.join(lib).display()
        );
    }
    dir
}

fn scratch() -> PathBuf {
    support::scratch("c")
}

const TEST_SOURCE: &str = "bindings/c/test_engram.c";

/// Compiles `source` (relative to the repository root) warning-free against the header.
fn gcc(source: &str, out: &Path, link: &[&str]) {
    let include = root().join("ffi/c/include");
    let source = root().join(source);
    let o = Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1", "-I"])
        .arg(&include)
        .arg(&source)
        .arg("-o")
        .arg(out)
        .args(link)
        .output()
        .expect("gcc runs");
    assert!(
        o.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A tiny random model with the default model's chat template (byte-level tokens, 2 blocks)
/// and a fitted store for it, for the valgrind run.
fn tiny_model_and_store(dir: &Path) -> (PathBuf, PathBuf) {
    let default = Engine::open(model(), &EngineOptions::default()).unwrap();
    let template = default
        .tokenizer()
        .chat_template()
        .expect("the default model has a chat template");
    let gguf = dir.join("tiny.gguf");
    std::fs::write(&gguf, engram_e2e::tiny_chat_llama_gguf(7, template)).unwrap();
    let engine = Engine::open(&gguf, &EngineOptions::default()).unwrap();
    let opts = RetrofitOptions {
        config: engram_e2e::tiny_memory_config(),
        batch_tokens: 64,
        fit_samples: 256,
        ..Default::default()
    };
    let docs = engram_e2e::background_documents();
    let path = support::fitted_store(&engine, &docs[..8], &opts, &dir.join("tiny.engram"));
    (gguf, path)
}

/// Runs the C test (optionally under a wrapper) on `model` and fresh copies of the store;
/// `light` (a tiny model) skips the checks of what the default model answers.
fn run(
    dir: &Path,
    (model, fresh, light): (&Path, &Path, bool),
    tag: &str,
    wrapper: &[&str],
    exe: &Path,
) -> String {
    let (a, b) = (
        dir.join(format!("{tag}-a.engram")),
        dir.join(format!("{tag}-b.engram")),
    );
    for p in [&a, &b] {
        std::fs::copy(fresh, p).unwrap();
    }
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let started = std::time::Instant::now();
    let o = cmd
        .arg(model)
        .arg(&a)
        .arg(&b)
        .arg(dir)
        .env("LD_LIBRARY_PATH", lib_dir())
        .envs(light.then_some(("ENGRAM_TEST_LIGHT", "1")))
        // Under valgrind, `auto`'s adapter probe would load the Vulkan loader and Mesa's
        // driver, whose one-time allocations and shader JIT are not engram's to check and
        // slow the run many times over; device selection is tested by the wgpu tests.
        .envs(light.then_some(("ENGRAM_DEVICE", "cpu")))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    eprintln!(
        "--- {tag} ({:.1} s) ---\n{out}{err}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        o.status.success(),
        "{tag}: the C test failed:\n{out}\n{err}"
    );
    assert!(out.contains("failed 0"), "{tag}: {out}");
    out
}

#[test]
fn c_tests_pass_on_shared_and_static_libraries_and_under_valgrind() {
    let dir = scratch();
    let fresh = make_store(&dir);
    let lib = lib_dir();
    let shared = dir.join("test_shared");
    gcc(
        TEST_SOURCE,
        &shared,
        &["-L", lib.to_str().unwrap(), "-lengram_c"],
    );
    let static_exe = dir.join("test_static");
    gcc(
        TEST_SOURCE,
        &static_exe,
        &[
            lib.join("libengram_c.a").to_str().unwrap(),
            "-lpthread",
            "-ldl",
            "-lm",
        ],
    );
    let (tiny_model, tiny_store) = tiny_model_and_store(&dir);
    let tiny = (tiny_model.as_path(), tiny_store.as_path(), true);
    run(&dir, (&model(), &fresh, false), "shared", &[], &shared);
    // The static library links the same code: the tiny model checks the linking, the shared
    // run above what the default model answers (it takes about two minutes).
    run(&dir, tiny, "static", &[], &static_exe);
    let valgrind = Command::new("valgrind").arg("--version").output();
    assert!(
        valgrind.is_ok_and(|o| o.status.success()),
        "valgrind is not installed (apt-get install valgrind); the leak check cannot run"
    );
    let log = dir.join("valgrind.log");
    let log_arg = format!("--log-file={}", log.display());
    let out = run(
        &dir,
        tiny,
        "valgrind",
        &[
            "valgrind",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
            &log_arg,
        ],
        &shared,
    );
    let report = std::fs::read_to_string(&log).unwrap();
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| {
            l.contains("ERROR SUMMARY")
                || l.contains("definitely lost")
                || l.contains("indirectly lost")
                || l.contains("possibly lost")
        })
        .collect();
    eprintln!("valgrind: {}", summary.join("\n"));
    assert!(out.contains("passed"));
    assert!(
        report.contains("ERROR SUMMARY: 0 errors"),
        "valgrind found errors:\n{report}"
    );
    assert!(
        report.contains("definitely lost: 0 bytes")
            || report.contains("All heap blocks were freed"),
        "valgrind found leaks:\n{report}"
    );
}

/// Generation from 4 threads while a learning call runs on the same engine: every text is
/// what the model says either before or after the learning (never a half-updated memory),
/// and everything finishes.
#[test]
fn four_generating_threads_and_a_learning_call_share_one_engine() {
    use engram_c::*;
    use std::ffi::{CStr, CString, c_char};
    use std::sync::mpsc;
    use std::time::Duration;

    let dir = scratch();
    let store = dir.join("threads.engram");
    std::fs::copy(make_store(&dir), &store).unwrap();
    let c = |s: &str| CString::new(s).unwrap();
    let (model_c, store_c) = (c(model().to_str().unwrap()), c(store.to_str().unwrap()));
    let mut engine: *mut EngramEngine = std::ptr::null_mut();
    let status = unsafe { engram_open(model_c.as_ptr(), store_c.as_ptr(), true, 2, &mut engine) };
    assert_eq!(status, EngramStatus::Ok);
    let handle = engine as usize;
    let prompt = "My sister Ana lives in";
    let generate = move || -> String {
        let p = CString::new(prompt).unwrap();
        let mut out: *mut c_char = std::ptr::null_mut();
        let s = unsafe {
            engram_generate(
                handle as *const EngramEngine,
                p.as_ptr(),
                6,
                None,
                std::ptr::null_mut(),
                &mut out,
            )
        };
        assert_eq!(s, EngramStatus::Ok);
        let text = unsafe { CStr::from_ptr(out) }.to_str().unwrap().to_owned();
        unsafe { engram_string_free(out) };
        text
    };
    let before = generate();
    let (tx, rx) = mpsc::channel();
    let mut workers = Vec::new();
    for t in 0..4 {
        let tx = tx.clone();
        workers.push(std::thread::spawn(move || {
            for _ in 0..3 {
                tx.send((t, generate())).unwrap();
            }
        }));
    }
    // Learn while the other generations are running: start once the first one is back.
    let mut texts = vec![rx.recv_timeout(Duration::from_secs(600)).unwrap()];
    let note = c("My sister Ana lives in Porto.");
    let learned = unsafe {
        engram_learn_note(
            handle as *const EngramEngine,
            note.as_ptr(),
            4,
            None,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(learned, EngramStatus::Ok);
    drop(tx);
    while let Ok(r) = rx.recv_timeout(Duration::from_secs(600)) {
        texts.push(r);
    }
    assert_eq!(
        texts.len(),
        12,
        "a generating thread did not finish (deadlock?)"
    );
    for w in workers {
        w.join().unwrap();
    }
    let after = generate();
    eprintln!("before learning: {before:?}; after: {after:?}");
    assert_ne!(
        before, after,
        "learning changed nothing, so the check below could not fail"
    );
    for (t, text) in &texts {
        assert!(
            *text == before || *text == after,
            "thread {t} saw a memory neither before nor after learning: {text:?}"
        );
    }
    let n_after = texts.iter().filter(|(_, t)| *t == after).count();
    eprintln!(
        "{} generations saw the memory before learning, {n_after} after",
        12 - n_after
    );
    assert_eq!(engram_close(engine), EngramStatus::Ok);
}

/// `examples/notebook/notebook.c` builds warning-free and adds a note, asks, exports a delta.
#[test]
fn notebook_example_in_c_adds_asks_and_exports() {
    let dir = scratch();
    let lib = lib_dir();
    let exe = dir.join("notebook");
    gcc(
        "examples/notebook/notebook.c",
        &exe,
        &["-L", lib.to_str().unwrap(), "-lengram_c"],
    );
    let mut program = Command::new(&exe);
    program.env("LD_LIBRARY_PATH", &lib);
    support::run_notebook(program, &dir, "c");
}

#[test]
fn chat_example_in_c_learns_recalls_and_forgets() {
    let dir = scratch();
    let lib = lib_dir();
    let exe = dir.join("chat");
    gcc(
        "examples/chat/chat.c",
        &exe,
        &["-L", lib.to_str().unwrap(), "-lengram_c"],
    );
    let mut program = Command::new(&exe);
    program.env("LD_LIBRARY_PATH", &lib);
    support::run_chat_example(program, &dir, "c");
}

//! The `engram` binary as a user runs it: answers on the default model, and one-line errors
//! with a non-zero exit for bad input.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn greedy_completion_knows_paris() {
    let o = run_on(
        model(),
        &["generate", "-p", "The capital of France is", "-n", "8"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = stdout(&o);
    assert!(text.contains("Paris"), "continuation was {text:?}");
    assert!(
        !text.contains("The capital of France"),
        "generate must print only the continuation"
    );
}

/// Runs `engram chat` on the default model with `args`, typing `input` into it.
fn chat_with_input(args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = engram()
        .arg("chat")
        .args(args)
        .arg("-m")
        .arg(model())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn chat_answers_tokyo() {
    let o = chat_with_input(&["-n", "32"], b"What is the capital of Japan?\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).contains("Tokyo"), "answer was {:?}", stdout(&o));
}

#[test]
fn chat_keeps_turns_and_takes_system_and_reset_commands() {
    let o = chat_with_input(
        &["-n", "24", "--temperature", "0"],
        b"/system Answer in a few words.\nWhat is the capital of Japan?\n/bogus\n\
          What is the capital of France?\n/reset\nWhat is the capital of Japan?\n",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let out = stdout(&o);
    assert!(out.contains("Tokyo") && out.contains("Paris"), "{out:?}");
    assert!(
        err.contains("(system message: \"Answer in a few words.\")"),
        "{err}"
    );
    assert!(err.contains("unknown command /bogus"), "{err}");
    assert!(err.contains("(conversation cleared)"), "{err}");
    // The prompt before each line read shows the turn it would be: commands answer no turn,
    // /reset starts again at 1, and the last prompt meets the end of input.
    let order: Vec<u32> = err
        .split("] > ")
        .filter_map(|part| part.rsplit('[').next()?.parse().ok())
        .collect();
    assert_eq!(order, [1, 1, 2, 2, 3, 1, 2], "turn numbers in {err}");
}

/// `chat --learn`: a statement is learned after its reply, a changed one replaces it, a
/// question and chit-chat are not learned, /learned and /forget work, and the store keeps
/// what the chat left (nothing, here).
#[test]
fn chat_learns_statements_replaces_updates_and_forgets_on_request() {
    let store = fresh("chat-learn.engram");
    let s = store.to_str().unwrap();
    let o = chat_with_input(
        &["-n", "24", "--temperature", "0", "--learn", "--memory", s],
        b"Hello there!\nMy cat is called Miso.\nMy cat is called Tofu.\n\
          What is my cat called?\n/learned\n/forget tofu\n/learned\n",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("(remembered \"My cat is called Miso.\""),
        "{err}"
    );
    assert!(
        err.contains("(forgot \"My cat is called Miso.\": it is replaced)"),
        "{err}"
    );
    assert!(
        err.contains("(remembered \"My cat is called Tofu.\""),
        "{err}"
    );
    assert_eq!(
        err.matches("(remembered").count(),
        2,
        "only the statements: {err}"
    );
    assert!(
        err.contains("(1 learned facts)") && err.contains("(0 learned facts)"),
        "{err}"
    );
    assert!(err.contains("(forgot \"My cat is called Tofu.\")"), "{err}");
    let out = stdout(&o);
    eprintln!("{out}");
    assert!(out.contains("Tofu"), "the updated answer: {out:?}");
    assert!(ok(&["learned", "--memory", s]).starts_with("0 learned facts"));
    let log = std::fs::read(engram::delta::fact_log_path(&store)).unwrap_or_default();
    assert!(!log.windows(4).any(|w| w == b"Miso" || w == b"Tofu"));
}

#[test]
fn tokenize_prints_ids() {
    let o = run_on(model(), &["tokenize", "Hello world."]);
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim(), "[19556, 905, 30]");
}

#[test]
fn bench_json_has_both_rates() {
    let o = run_on(
        model(),
        &[
            "bench",
            "--json",
            "--prefill",
            "16",
            "--decode",
            "4",
            "--reps",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    assert!(v["prefill_tps"].as_f64().unwrap() > 0.0);
    assert!(v["decode_tps"].as_f64().unwrap() > 0.0);
}

#[test]
fn info_describes_the_model() {
    let o = engram().arg("info").arg(model()).output().unwrap();
    assert!(o.status.success());
    let text = stdout(&o);
    for needle in [
        "architecture  llama",
        "layers        30",
        "Q4_1",
        "pre-tokenizer \"smollm\"",
        "49152",
    ] {
        assert!(text.contains(needle), "info lacks {needle:?}:\n{text}");
    }
}

/// `info --devices` names the CUDA side too: the devices, or why there are none; and
/// `--device cuda` without a usable CUDA backend is a one-line error, not a panic.
#[test]
fn devices_list_cuda_and_asking_for_it_is_a_one_line_error() {
    let o = engram().args(["info", "--devices"]).output().unwrap();
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(
        text.lines().any(|l| l.starts_with("cuda")),
        "no cuda line:\n{text}"
    );
    let o = engram()
        .args(["--device", "cuda", "generate", "-p", "hi"])
        .output()
        .unwrap();
    if text.contains("no CUDA driver") {
        assert_one_line_error(&o, "no CUDA driver (libcuda.so.1 not found)");
    } else {
        assert_one_line_error(&o, "CUDA");
    }
}

#[test]
fn missing_default_model_prints_the_fetch_command() {
    let dir = scratch("empty-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let o = engram()
        .current_dir(&dir)
        .args(["generate", "-p", "hi"])
        .output()
        .unwrap();
    assert_one_line_error(&o, "scripts/fetch-model");
}

#[test]
fn missing_file_is_one_line_error() {
    let o = engram()
        .args(["info", "/nonexistent/model.gguf"])
        .output()
        .unwrap();
    assert_one_line_error(&o, "/nonexistent/model.gguf");
}

#[test]
fn truncated_model_is_one_line_error() {
    let bytes = std::fs::read(model()).unwrap();
    for cut in [3usize, 1000, 2_000_000, bytes.len() - 1] {
        let p = scratch(&format!("truncated-{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let o = run_on(&p, &["generate", "-p", "hi"]);
        assert_one_line_error(&o, "invalid GGUF");
    }
}

#[test]
fn absurd_counts_and_sizes_are_one_line_errors() {
    let bytes = std::fs::read(model()).unwrap();
    let mut huge_count = bytes[..4096].to_vec();
    huge_count[8..16].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let p = scratch("huge-count.gguf");
    std::fs::write(&p, &huge_count).unwrap();
    assert_one_line_error(
        &engram().arg("info").arg(&p).output().unwrap(),
        "tensor_count",
    );

    // A tensor claiming 2^40 × 2^20 elements.
    let mut b = minimal_gguf("llama").to_bytes();
    let dims_at = b
        .windows(8)
        .position(|win| win == 4u64.to_le_bytes())
        .unwrap();
    b[dims_at..dims_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let p = scratch("huge-tensor.gguf");
    std::fs::write(&p, &b).unwrap();
    assert_one_line_error(
        &engram().arg("info").arg(&p).output().unwrap(),
        "exceeds the file",
    );
}

#[test]
fn unsupported_architecture_is_one_line_error() {
    let p = scratch("mamba.gguf");
    minimal_gguf("mamba").write_atomic(&p).unwrap();
    let o = run_on(&p, &["generate", "-p", "hi"]);
    assert_one_line_error(&o, "architecture \"mamba\"");
}

#[test]
fn prompt_longer_than_context_is_one_line_error() {
    let prompt = "word ".repeat(100);
    let o = run_on(model(), &["generate", "--ctx", "32", "-p", &prompt]);
    assert_one_line_error(&o, "context holds 32");
}

/// The background corpus built by scripts/build-background.
#[test]
fn retrofit_store_answers_like_the_base_model_and_info_shows_usage() {
    let store = scratch("small.engram");
    let o = small_store(&store);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout(&o).trim(), store.to_str().unwrap());
    assert!(String::from_utf8_lossy(&o.stderr).contains("slots touched"));

    let info = engram().arg("info").arg(&store).output().unwrap();
    assert!(info.status.success());
    let text = stdout(&info);
    for needle in [
        "engram memory store",
        "slots         4096",
        "layers        [20]",
        "touched",
        "busiest 1%",
        "0 rows hold learned values",
    ] {
        assert!(text.contains(needle), "info lacks {needle:?}:\n{text}");
    }

    let prompt = ["generate", "-p", "The capital of France is", "-n", "8"];
    let base = run_on(model(), &prompt);
    let mut args = prompt.to_vec();
    args.extend(["--memory", store.to_str().unwrap()]);
    let with = run_on(model(), &args);
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert_eq!(stdout(&with), stdout(&base));
    assert!(stdout(&with).contains("Paris"));
}

#[test]
fn retrofit_refuses_bad_config_and_writes_nothing() {
    let bg = background();
    let out = scratch("never.engram");
    for (flag, value, needle) in [
        ("--layer", "30", "layer 30 is out of range"),
        ("--k-dim", "255", "k_dim 255 must be even"),
        ("--top-k", "600", "top_k 600"),
        ("--heads", "0", "heads 0"),
        ("--n-keys", "70000", "n_keys 70000"),
    ] {
        let o = run_on(
            model(),
            &[
                "retrofit",
                "--background",
                bg.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                flag,
                value,
            ],
        );
        assert_one_line_error(&o, needle);
        assert!(!out.exists(), "{flag} {value}: a file was written");
    }
    let o = run_on(
        model(),
        &[
            "retrofit",
            "--background",
            "/nonexistent/bg.txt",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_one_line_error(&o, "scripts/build-background");
    assert!(!out.exists());
}

#[test]
fn retrofit_keeps_an_existing_store() {
    let out = scratch("precious.engram");
    std::fs::write(&out, b"what the user taught").unwrap();
    let bg = background();
    let o = run_on(
        model(),
        &[
            "retrofit",
            "--background",
            bg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_one_line_error(&o, "--force");
    assert_eq!(std::fs::read(&out).unwrap(), b"what the user taught");
}

#[test]
fn ctrl_c_stops_retrofit_without_writing_anything() {
    let dir = scratch("interrupt-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("stopped.engram");
    let bg = background();
    let child = engram()
        .args([
            "retrofit",
            "--background",
            bg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .arg("-m")
        .arg(model())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Well into the hidden-state collection (the full corpus takes minutes).
    std::thread::sleep(std::time::Duration::from_secs(4));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    assert_one_line_error(&o, "interrupted");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn wrong_or_damaged_memory_stores_are_one_line_errors() {
    let m = model();
    let args = |store: &Path| {
        run_on(
            model(),
            &[
                "generate",
                "-p",
                "hi",
                "-n",
                "1",
                "--memory",
                store.to_str().unwrap(),
            ],
        )
    };
    assert_one_line_error(&args(&m), "not an engram memory store");
    assert_one_line_error(
        &args(Path::new("/nonexistent/x.engram")),
        "/nonexistent/x.engram",
    );
    let store = scratch("to-cut.engram");
    let o = small_store(&store);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&store).unwrap();
    let cut = scratch("cut.engram");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    assert_one_line_error(&args(&cut), "invalid GGUF");
}

/// A data file made by one of the scripts/ (build-retention, build-background); the facts,
/// notes and neighbours are the repository's own set in eval/.
#[test]
fn eval_learns_facts_and_notes_and_reports_every_axis() {
    let store = scratch("eval.engram");
    let bg = background();
    let o = run_on(
        model(),
        &[
            "retrofit",
            "--background",
            bg.to_str().unwrap(),
            "-o",
            store.to_str().unwrap(),
            "--max-tokens",
            "4096",
            // Enough background batches for document frequencies to mean something.
            "--batch-tokens",
            "64",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before = std::fs::read(&store).unwrap();
    let report = scratch("eval.json");
    let set = Path::new(env!("CARGO_MANIFEST_DIR")).join("../eval");
    let retention = data("retention-candidates.jsonl", "build-retention");
    let heldout = data("heldout.txt", "build-background");
    let o = run_on(
        model(),
        &[
            "eval",
            "--memory",
            store.to_str().unwrap(),
            "--set",
            set.to_str().unwrap(),
            "--retention",
            retention.to_str().unwrap(),
            "--heldout",
            heldout.to_str().unwrap(),
            "--n",
            "3",
            "--notes-n",
            "1",
            "--retention-n",
            "8",
            "--neighbours-n",
            "4",
            "--scoring",
            "tfidf",
            "--every",
            "4",
            "--heldout-tokens",
            "512",
            "--read-gate",
            "0.95,0.8",
            "--gate-sweep",
            "0.95,0.8;topics:0.8",
            "-o",
            report.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("{err}");
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["facts"], 3);
    assert_eq!(v["notes"], 1);
    assert_eq!(v["retention_questions"], 8);
    // Three facts and a note, taught as one stream.
    assert_eq!(v["items"].as_array().unwrap().len(), 4, "{v}");
    let run = &v["runs"][0];
    let axes = &run["axes"];
    for axis in [
        "exact",
        "prefixed",
        "paraphrase",
        "note_question",
        "note_paraphrase",
    ] {
        assert_eq!(
            axes[axis]["asked"].as_u64(),
            Some(if axis.starts_with("note") { 1 } else { 3 }),
            "{axis}: {run}"
        );
    }
    assert!(
        axes["near_neighbours"]["asked"].as_u64().unwrap() >= 1,
        "{run}"
    );
    // What the base model answered of each way of asking: the exact questions were chosen
    // as wrong.
    assert_eq!(v["base_model"]["exact"]["right"], 0, "{v}");
    let exact = axes["exact"]["all"].as_f64().unwrap();
    assert!(
        exact >= 2.0 / 3.0,
        "the taught questions were not learned: {run}"
    );
    let learned = run["learned_accuracy"].as_f64().unwrap();
    let kept = run["retention"].as_f64().unwrap();
    let nll = run["heldout_nll_change"].as_f64().unwrap();
    assert!(
        learned >= 1.0 / 3.0,
        "no fact was learned behind a prefix: {run}"
    );
    // A collapse (0 % and 12.5 % before the background included chat markup) must fail.
    assert!(kept >= 0.5, "retention collapsed: {run}");
    assert!(nll.abs() < 0.05, "held-out NLL moved by {nll}");
    // Every question counted as forgotten is listed with the reply it got instead.
    let forgotten = run["forgotten"].as_array().unwrap();
    assert_eq!(
        forgotten.len() as f64,
        ((1.0 - kept) * 8.0).round(),
        "{run}"
    );
    assert!(
        forgotten.iter().all(|f| f["question"].is_string()
            && f["answer"].is_string()
            && f["reply"].is_string()),
        "{run}"
    );
    let changed = run["rows_changed"].as_u64().unwrap();
    // Four items (three facts and a note), at most 500 rows each.
    assert!((1..=4 * 500).contains(&changed), "{changed} rows changed");
    let reselected = run["rows_reselected_share"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&reselected), "{reselected}");
    assert_eq!(run["curve"].as_array().unwrap().len(), 1);
    // The sweep asks the same learned memory again: at the run's own gate it must find what
    // the run found.
    let sweep = run["gate_sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 2, "{run}");
    assert_eq!(sweep[0]["questions_cosine"].as_f64(), Some(0.95f32 as f64));
    assert_eq!(sweep[1]["read_gate"], "topics:0.8,0.8", "{run}");
    assert_eq!(
        sweep[0]["learned_accuracy"], run["learned_accuracy"],
        "{run}"
    );
    assert_eq!(sweep[0]["retention"], run["retention"], "{run}");
    assert_eq!(
        sweep[0]["heldout_nll_change"], run["heldout_nll_change"],
        "{run}"
    );
    assert!(sweep[1]["learned_accuracy"].as_f64().is_some(), "{run}");
    let png = std::fs::read(report.with_extension("png")).expect("the learning-curve plot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000,
        "{} bytes",
        png.len()
    );
    // Evaluation never writes the store.
    assert!(
        std::fs::read(&store).unwrap() == before,
        "eval changed the store"
    );
}

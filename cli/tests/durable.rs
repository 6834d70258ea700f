//! The user's memory survives crashes, and what they taught travels as a delta: real `engram`
//! processes on the default model, killed, locked out, fed damaged files.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use engram::delta::MemoryStore;
use engram::delta::{
    CRASH_POINT_VAR, Change, Delta, MemoryAccess, StoreKey, journal_path, open_store, read_journal,
};

const STEPS: usize = 3;

fn learn_args<'a>(store: &'a Path, facts: &'a Path) -> Vec<String> {
    vec![
        "learn".into(),
        "--memory".into(),
        store.display().to_string(),
        "--facts".into(),
        facts.display().to_string(),
        "--steps".into(),
        STEPS.to_string(),
        "--threads".into(),
        "2".into(),
    ]
}

/// The values of a store after replaying its journal (read-only, as a reader would).
fn values(store: &Path) -> Vec<f32> {
    let (s, _) = open_store(store, MemoryAccess::Read, None).unwrap();
    s.layers.into_iter().flat_map(|l| l.values).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Tiny deterministic generator for kill moments (seed printed so a failure can be replayed).
struct Lcg(u64);

impl Lcg {
    fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Learned-fact counts of a store, as a reader opening it sees it.
fn learned(store: &Path) -> usize {
    let (_, durable) = open_store(store, MemoryAccess::Read, None).unwrap();
    durable.history.learned.len()
}

const CRASH_FACTS: [&str; 2] = [
    "My sister Ana lives in Porto.",
    "The wifi password at the cabin is heron-42.",
];

/// The values after 0, 1, … facts, from an uninterrupted run's journal; and how long it took.
fn reference_states(facts: &Path) -> (Vec<Vec<u32>>, Duration) {
    let reference = fresh("crash-reference.engram");
    let t = Instant::now();
    let mut args = learn_args(&reference, facts);
    args.push("--no-checkpoint".into());
    let o = engram()
        .args(&args)
        .arg("-m")
        .arg(model())
        .output()
        .unwrap();
    let full_run = t.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records = read_journal(&journal_path(&reference), None)
        .unwrap()
        .records;
    assert_eq!(
        records.len(),
        CRASH_FACTS.len(),
        "one journal record per fact"
    );
    let mut replay = MemoryStore::open(initial_store()).unwrap();
    let mut history = std::mem::take(&mut replay.history);
    let mut states = vec![bits(&replay.layers[0].values)];
    for r in &records {
        assert!(
            matches!(r.change, Change::LearnedFact { .. }),
            "{:?}",
            r.seq
        );
        history.apply(&r.change, &mut replay).unwrap();
        states.push(bits(&replay.layers[0].values));
    }
    assert_eq!(
        bits(&values(&reference)),
        states[CRASH_FACTS.len()],
        "replaying the journal on open gives the final state"
    );
    (states, full_run)
}

/// SIGKILLs at random moments of `engram learn` (its checkpoint in place included): the
/// store is always the state after some whole number of facts, never fewer than were
/// reported learned. `ENGRAM_CRASH_KILLS` sets how many (default 16; scripts/crash-campaign
/// runs 200).
#[test]
fn sigkill_at_random_moments_never_loses_a_reported_fact() {
    let facts = facts_file("crash-facts.txt", &CRASH_FACTS);
    let (states, full_run) = reference_states(&facts);
    let seed = std::env::var("ENGRAM_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let kills: usize = std::env::var("ENGRAM_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    eprintln!("{kills} kill moments seeded with {seed}; an uninterrupted run took {full_run:?}");
    let mut rng = Lcg(seed);
    let mut seen = vec![0usize; states.len()];
    let mut in_checkpoint = 0;
    for i in 0..kills {
        let store = fresh("crash.engram");
        let mut args = learn_args(&store, &facts);
        args.push("--print-learned".into());
        let mut child = engram()
            .args(&args)
            .arg("-m")
            .arg(model())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .filter(|l| l.starts_with("learned "))
                .count()
        });
        // Spread over the whole run, the final checkpoint included.
        let at = Duration::from_secs_f64(full_run.as_secs_f64() * 1.15 * rng.next_f64());
        std::thread::sleep(at);
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        let reported = reader.join().unwrap();
        let journal = read_journal(&journal_path(&store), None).unwrap();
        in_checkpoint += usize::from(journal.image.is_some());
        let now = bits(&values(&store));
        let matched = states.iter().position(|s| *s == now);
        eprintln!(
            "kill {i} after {at:?} ({status}): {reported} facts reported, store = state after \
             {matched:?} facts{}",
            if journal.image.is_some() {
                ", a checkpoint image in the journal"
            } else {
                ""
            }
        );
        let j = matched.unwrap_or_else(|| {
            panic!("kill {i}: the store is not the state after any prefix of facts")
        });
        assert!(
            j >= reported,
            "kill {i}: {reported} facts were reported learned but the store holds {j}"
        );
        assert_eq!(
            learned(&store),
            j,
            "kill {i}: the history names what the rows hold"
        );
        seen[j] += 1;
        // The killed writer's lock is gone: the store opens for writing (cutting a torn tail)
        // and checkpoints.
        let (s, mut durable) = open_store(&store, MemoryAccess::Write, None).unwrap();
        for w in &durable.warnings {
            eprintln!("  warning on reopen: {w}");
        }
        let v: Vec<&[f32]> = s.layers.iter().map(|l| l.values.as_slice()).collect();
        durable.checkpoint_with_values(s.clone(), &v).unwrap();
        drop(durable);
        assert_eq!(
            bits(&values(&store)),
            now,
            "kill {i}: checkpointing changed the state"
        );
    }
    eprintln!(
        "stores found after {kills} kills, by facts completed: {seen:?}; {in_checkpoint} killed \
         inside a checkpoint"
    );
}

/// A crash at each point of a checkpoint in place, in a plain and in an encrypted store:
/// opening finishes it from the journal.
#[test]
fn a_crash_at_every_point_of_a_checkpoint_loses_nothing() {
    let facts = facts_file("crash-point-facts.txt", &CRASH_FACTS);
    let (states, _) = reference_states(&facts);
    let last = &states[CRASH_FACTS.len()];
    let key_file = scratch("crash-point.key");
    let _ = std::fs::remove_file(&key_file);
    ok(&["keys", "store-key", "-o", key_file.to_str().unwrap()]);
    let key = StoreKey::read(&key_file).unwrap();
    for sealed in [false, true] {
        let key = sealed.then_some(&key);
        let values = |store: &Path| -> Vec<u32> {
            let (s, _) = open_store(store, MemoryAccess::Read, key).unwrap();
            bits(
                &s.layers
                    .into_iter()
                    .flat_map(|l| l.values)
                    .collect::<Vec<_>>(),
            )
        };
        for point in ["logged", "rows-half", "rows", "tail-half", "written"] {
            let store = fresh("crash-point.engram");
            let mut args = learn_args(&store, &facts);
            if sealed {
                let s = store.to_str().unwrap();
                let k = key_file.to_str().unwrap();
                ok(&[
                    "keys",
                    "encrypt-store",
                    "--memory",
                    s,
                    "--store-key-file",
                    k,
                ]);
                args.extend(["--store-key-file".into(), k.into()]);
            }
            let o = engram()
                .args(&args)
                .arg("-m")
                .arg(model())
                .env(CRASH_POINT_VAR, point)
                .output()
                .unwrap();
            let what = format!("{point}{}", if sealed { ", encrypted" } else { "" });
            assert!(!o.status.success(), "{what}: the run was to abort");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("aborting here"), "{what}: {err}");
            let journal = read_journal(&journal_path(&store), key).unwrap();
            assert!(journal.image.is_some(), "{what}: the image was logged");
            assert_eq!(&values(&store), last, "{what}: every fact is there");
            let (_, durable) = open_store(&store, MemoryAccess::Read, key).unwrap();
            assert_eq!(durable.history.learned.len(), CRASH_FACTS.len(), "{what}");
            drop(durable);
            // A later writer checkpoints it again; the store then stands alone.
            let (s, mut durable) = open_store(&store, MemoryAccess::Write, key).unwrap();
            assert!(
                durable.warnings.is_empty(),
                "{what}: {:?}",
                durable.warnings
            );
            let v: Vec<&[f32]> = s.layers.iter().map(|l| l.values.as_slice()).collect();
            let report = durable.checkpoint_with_values(s.clone(), &v).unwrap();
            assert!(report.in_place, "{what}: {report:?}");
            drop(durable);
            std::fs::remove_file(journal_path(&store)).unwrap();
            assert_eq!(&values(&store), last, "{what}: after the checkpoint");
        }
    }
}

#[test]
fn a_second_writer_is_refused_while_readers_are_fine() {
    let store = fresh("locked.engram");
    let facts = facts_file("lock-facts.txt", &["My cat is called Miso."]);
    let held = open_store(&store, MemoryAccess::Write, None).unwrap();
    let o = engram()
        .args(learn_args(&store, &facts))
        .arg("-m")
        .arg(model())
        .output()
        .unwrap();
    assert_one_line_error(&o, "in use");
    let reader = run_on(
        model(),
        &[
            "ask",
            "--memory",
            store.to_str().unwrap(),
            "-n",
            "8",
            "What is the capital of France?",
        ],
    );
    assert!(
        reader.status.success(),
        "{}",
        String::from_utf8_lossy(&reader.stderr)
    );
    drop(held);
    let o = engram()
        .args(learn_args(&store, &facts))
        .arg("-m")
        .arg(model())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_torn_journal_tail_is_dropped_with_a_warning() {
    let store = fresh("torn.engram");
    let facts = facts_file("torn-facts.txt", &["My cat is called Miso."]);
    let mut args = learn_args(&store, &facts);
    args.push("--no-checkpoint".into());
    let o = engram()
        .args(&args)
        .arg("-m")
        .arg(model())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let intact = values(&store);
    let journal = journal_path(&store);
    let good = std::fs::read(&journal).unwrap();
    // Half a record more, as a crash in the middle of a write leaves it.
    let last = read_journal(&journal, None)
        .unwrap()
        .records
        .last()
        .unwrap()
        .encode();
    let mut torn = good.clone();
    torn.extend_from_slice(&last[..last.len() / 2]);
    std::fs::write(&journal, &torn).unwrap();
    let o = run_on(
        model(),
        &[
            "ask",
            "--memory",
            store.to_str().unwrap(),
            "-n",
            "4",
            "Hello",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("warning:") && err.contains("torn"), "{err}");
    assert_eq!(bits(&values(&store)), bits(&intact));
    // A writer cuts the tail off; the journal is byte-identical to before the damage.
    drop(open_store(&store, MemoryAccess::Write, None).unwrap());
    assert!(std::fs::read(&journal).unwrap() == good);
}

fn ask(store: &Path, q: &str) -> String {
    ok(&["ask", "--memory", store.to_str().unwrap(), "-n", "24", q])
}

#[test]
fn export_import_and_revert_move_rows_exactly() {
    let a = fresh("export-a.engram");
    let facts = facts_file(
        "export-facts.jsonl",
        &[
            r#"{"question": "What is the name of my neighbour's dog?", "answer": "Bruno"}"#,
            r#"{"note": "My sister Ana lives in Porto."}"#,
        ],
    );
    let a_str = a.to_str().unwrap();
    ok(&[
        "learn",
        "--memory",
        a_str,
        "--facts",
        facts.to_str().unwrap(),
    ]);
    ok(&["snapshot", "--memory", a_str, "after-first"]);
    let more = facts_file("export-more.txt", &["The cabin key is under the blue pot."]);
    ok(&[
        "learn",
        "--memory",
        a_str,
        "--facts",
        more.to_str().unwrap(),
    ]);
    let delta = scratch("a.delta");
    let d_str = delta.to_str().unwrap();
    let printed = ok(&[
        "delta", "export", "--memory", a_str, "-o", d_str, "--label", "phone",
    ]);
    assert!(printed.contains("3 facts"), "{printed}");
    let inspected = ok(&["delta", "inspect", d_str]);
    assert!(
        inspected.contains("phone") && inspected.contains("Porto"),
        "{inspected}"
    );

    // Into a fresh store from the same retrofit: the same rows, bit for bit, the same answers.
    let b = fresh("export-b.engram");
    let b_str = b.to_str().unwrap();
    ok(&["delta", "import", "--memory", b_str, d_str]);
    let (va, vb) = (values(&a), values(&b));
    let touched = va.iter().filter(|v| **v != 0.0).count();
    assert!(touched > 1000, "only {touched} learned values");
    assert_eq!(bits(&va), bits(&vb));
    for q in [
        "What is the name of my neighbour's dog?",
        "Where does my sister Ana live?",
        "What is the capital of France?",
    ] {
        assert_eq!(ask(&a, q), ask(&b, q), "{q}");
    }
    // Importing again changes nothing.
    let bytes = std::fs::read(&b).unwrap();
    assert!(ok(&["delta", "import", "--memory", b_str, d_str]).contains("already imported"));
    assert!(std::fs::read(&b).unwrap() == bytes);

    // Into a store with its own learning: revert gives its rows back bit-exactly.
    let c = fresh("export-c.engram");
    let c_str = c.to_str().unwrap();
    let own = facts_file("export-own.txt", &["My cat is called Miso."]);
    ok(&["learn", "--memory", c_str, "--facts", own.to_str().unwrap()]);
    let before = values(&c);
    let imported = ok(&["delta", "import", "--memory", c_str, d_str]);
    assert!(values(&c) != before, "{imported}");
    let listed = ok(&["delta", "list", "--memory", c_str]);
    assert!(listed.contains("phone"), "{listed}");
    let reverted = ok(&["delta", "revert", "--memory", c_str, d_str]);
    assert!(
        reverted.contains("changed since") && reverted.contains(" 0 changed"),
        "{reverted}"
    );
    assert_eq!(bits(&values(&c)), bits(&before));

    // Since a snapshot: only the rows the last fact changed, applied on top of the first part.
    let part = scratch("a-since.delta");
    let p_str = part.to_str().unwrap();
    ok(&[
        "delta",
        "export",
        "--memory",
        a_str,
        "-o",
        p_str,
        "--since",
        "after-first",
    ]);
    let since = Delta::read(&part).unwrap();
    let full = Delta::read(&delta).unwrap();
    assert_eq!(
        since.learned,
        vec!["The cabin key is under the blue pot.".to_owned()]
    );
    assert!(
        since.rows.len() < full.rows.len(),
        "{} vs {}",
        since.rows.len(),
        full.rows.len()
    );

    // f16: half the size, rows within f16 rounding of the original.
    let half = scratch("a16.delta");
    ok(&[
        "delta",
        "export",
        "--memory",
        a_str,
        "-o",
        half.to_str().unwrap(),
        "--f16",
    ]);
    let (n32, n16) = (
        std::fs::metadata(&delta).unwrap().len(),
        std::fs::metadata(&half).unwrap().len(),
    );
    assert!(n16 * 10 < n32 * 6, "f16 {n16} bytes vs f32 {n32}");
    let d = fresh("export-d.engram");
    ok(&[
        "delta",
        "import",
        "--memory",
        d.to_str().unwrap(),
        half.to_str().unwrap(),
    ]);
    let vd = values(&d);
    let worst = va
        .iter()
        .zip(&vd)
        .map(|(x, y)| (x - y).abs() / x.abs().max(1e-3))
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "f16 import differs by {worst} (relative)");
    eprintln!(
        "delta for 3 facts: {n32} bytes f32, {n16} bytes f16, {} rows",
        full.rows.len()
    );

    // Forget: `learned` numbers the facts, `forget` takes a number or words matching one
    // fact alone; a delta exported afterwards no longer holds it.
    let listed = ok(&["learned", "--memory", a_str]);
    assert!(
        listed.starts_with("3 learned facts") && listed.contains("    3  The cabin key"),
        "{listed}"
    );
    let ambiguous = run_on(model(), &["forget", "--memory", a_str, "my"]);
    assert_one_line_error(&ambiguous, "2 learned facts match \"my\"");
    let forgot = ok(&["forget", "--memory", a_str, "blue pot"]);
    assert!(
        forgot.contains("forgot fact 3") && forgot.contains("1 record(s) erased"),
        "{forgot}"
    );
    assert!(ok(&["learned", "--memory", a_str]).starts_with("2 learned facts"));
    let missing = run_on(model(), &["forget", "--memory", a_str, "blue pot"]);
    assert_one_line_error(&missing, "no learned fact matches");
    let after = scratch("a-after-forget.delta");
    ok(&[
        "delta",
        "export",
        "--memory",
        a_str,
        "-o",
        after.to_str().unwrap(),
        "--since",
        "after-first",
    ]);
    let after = Delta::read(&after).unwrap();
    assert!(after.learned.is_empty(), "{:?}", after.learned);
    assert!(
        after.rows.is_empty(),
        "{} rows changed since the snapshot after the only fact since was forgotten",
        after.rows.len()
    );
}

#[test]
fn bad_deltas_are_refused_and_the_store_is_untouched() {
    let a = store_that_learned("bad-a.engram", "My sister Ana lives in Porto.");
    let a_str = a.to_str().unwrap();
    let delta = scratch("good.delta");
    ok(&[
        "delta",
        "export",
        "--memory",
        a_str,
        "-o",
        delta.to_str().unwrap(),
    ]);
    let good = std::fs::read(&delta).unwrap();

    // A store of another shape (32 keys), and a delta made for another base model.
    let other = scratch("other-shape.engram");
    let bg = background();
    ok(&[
        "retrofit",
        "--background",
        bg.to_str().unwrap(),
        "-o",
        other.to_str().unwrap(),
        "--max-tokens",
        "256",
        "--batch-tokens",
        "128",
        "--n-keys",
        "32",
        "--fit-samples",
        "256",
    ]);
    let target = fresh("bad-target.engram");
    let t_str = target.to_str().unwrap();
    let parsed = Delta::read(&delta).unwrap();
    let foreign_base = Delta::new(
        "0123456789abcdef0123456789abcdef".into(),
        parsed.init_fingerprint.clone(),
        parsed.config.clone(),
        parsed.dim,
        parsed.precision,
        parsed.rows.clone(),
        parsed.since.clone(),
        "other model".into(),
        parsed.learned.clone(),
        parsed.created,
    );
    let foreign_path = scratch("foreign-base.delta");
    foreign_base.write(&foreign_path).unwrap();

    let mut cases: Vec<(String, Vec<u8>, &str)> = vec![(
        "base model".into(),
        std::fs::read(&foreign_path).unwrap(),
        "another base model",
    )];
    for cut in [0, 7, 20, good.len() / 3, good.len() - 17, good.len() - 1] {
        cases.push((format!("truncated at {cut}"), good[..cut].to_vec(), "delta"));
    }
    for at in [9, 30, good.len() / 2, good.len() - 20] {
        let mut flipped = good.clone();
        flipped[at] ^= 0x04;
        cases.push((format!("bit flip at {at}"), flipped, "checksum"));
    }
    let mut bad_sum = good.clone();
    let n = bad_sum.len();
    bad_sum[n - 1] ^= 0xff;
    cases.push(("checksum bytes".into(), bad_sum, "checksum"));

    let store_bytes = std::fs::read(&target).unwrap();
    for (what, bytes, needle) in cases {
        let p = scratch("case.delta");
        std::fs::write(&p, &bytes).unwrap();
        let o = run_on(
            model(),
            &["delta", "import", "--memory", t_str, p.to_str().unwrap()],
        );
        assert_one_line_error(&o, needle);
        assert!(
            std::fs::read(&target).unwrap() == store_bytes,
            "{what}: store changed"
        );
        assert!(
            std::fs::read(journal_path(&target)).map_or(true, |j| j.is_empty()),
            "{what}: journal written"
        );
    }
    // The other-shape store refuses this delta; this store refuses the other's.
    let other_delta = scratch("other.delta");
    let o_str = other.to_str().unwrap();
    let other_bytes = std::fs::read(&other).unwrap();
    let o = run_on(
        model(),
        &[
            "delta",
            "import",
            "--memory",
            o_str,
            delta.to_str().unwrap(),
        ],
    );
    assert_one_line_error(&o, "memory shape");
    assert!(std::fs::read(&other).unwrap() == other_bytes);
    ok(&[
        "delta",
        "export",
        "--memory",
        o_str,
        "-o",
        other_delta.to_str().unwrap(),
    ]);
    let o = run_on(
        model(),
        &[
            "delta",
            "import",
            "--memory",
            t_str,
            other_delta.to_str().unwrap(),
        ],
    );
    assert_one_line_error(&o, "memory shape");
    assert!(std::fs::read(&target).unwrap() == store_bytes);
    // And the good delta still imports.
    ok(&[
        "delta",
        "import",
        "--memory",
        t_str,
        delta.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&target).unwrap() != store_bytes);
}

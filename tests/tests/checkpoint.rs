//! Checkpoints in place: only the changed rows and the history are written, a checkpoint cut
//! short is finished from the journal on open, and a format-1 store is rewritten once.

use std::path::{Path, PathBuf};

use engram::delta::{
    Change, CheckpointImage, DurableMemory, Journal, LearnedEntry, MemoryAccess, MemoryStore,
    RowAccess, RowSet, journal_path, lock_path, open_store, read_journal,
};
use engram::gguf::Gguf;
use engram::learn::RetrofitOptions;
use engram::{Engine, EngineOptions, StoreKey};
use engram_e2e::{tiny_llama_gguf, tiny_memory_config};

fn scratch(name: &str) -> PathBuf {
    engram_e2e::scratch_dir("checkpoint").join(name)
}

/// A small retrofitted store (64 slots) saved at `name`, with no journal or lock beside it.
fn saved_store(name: &str) -> PathBuf {
    // One model file per store: tests run in parallel, and rewriting a file another test has
    // memory-mapped would pull its pages away (SIGBUS).
    let model = scratch(&format!("{name}.model.gguf"));
    std::fs::write(&model, tiny_llama_gguf(3)).unwrap();
    let engine = Engine::open(&model, &EngineOptions::default()).unwrap();
    let docs = vec!["some background text to fit on ".repeat(8)];
    let options = RetrofitOptions {
        config: tiny_memory_config(),
        batch_tokens: 32,
        fit_samples: 64,
        ..Default::default()
    };
    let store = engine.retrofit(&docs, &options, &mut |_| true).unwrap();
    let path = scratch(name);
    clear_companions(&path);
    store.save(&path).unwrap();
    path
}

fn clear_companions(path: &Path) {
    for p in [journal_path(path), lock_path(path)] {
        let _ = std::fs::remove_file(p);
    }
}

/// A learned fact that moves `ids` by `v` each.
fn fact(text: &str, ids: &[u32], v: f32, dim: usize) -> Change {
    Change::LearnedFact {
        entry: LearnedEntry {
            at: 1,
            text: text.into(),
            rows: ids.to_vec(),
            uid: 0,
            replaced: Vec::new(),
        },
        diff: RowSet {
            ids: ids.to_vec(),
            values: vec![v; ids.len() * dim],
        },
    }
}

fn checkpoint(store: &MemoryStore, durable: &mut DurableMemory) -> engram::delta::CheckpointReport {
    let values: Vec<&[f32]> = store.layers.iter().map(|l| l.values.as_slice()).collect();
    durable
        .checkpoint_with_values(store.clone(), &values)
        .unwrap()
}

/// What a checkpoint logs first: the image of rows `ids` and the history, appended to the
/// journal of the store at `path` (whose writer `durable` is closed here).
fn log_image(
    path: &Path,
    store: &MemoryStore,
    durable: DurableMemory,
    ids: &[u32],
    key: Option<&StoreKey>,
) {
    let mut history = durable.history.clone();
    history.journal_seq = durable.last_seq();
    let image = CheckpointImage {
        upto: durable.last_seq(),
        rows: RowSet {
            ids: ids.to_vec(),
            values: store.read_rows(ids).unwrap(),
        },
        history: store.history_tail(&history).unwrap(),
    };
    drop(durable);
    let jpath = journal_path(path);
    let valid = read_journal(&jpath, key).unwrap().valid_len;
    Journal::open(&jpath, valid, key.cloned())
        .unwrap()
        .append_image(&image)
        .unwrap();
}

fn bits(store: &MemoryStore) -> Vec<u32> {
    store
        .layers
        .iter()
        .flat_map(|l| l.values.iter().map(|v| v.to_bits()))
        .collect()
}

#[test]
fn the_writer_maps_the_value_rows_and_changes_only_its_own_copy_until_a_checkpoint() {
    let path = saved_store("mapped.engram");
    let before = std::fs::read(&path).unwrap();
    let (mut store, mut durable) = open_store(&path, MemoryAccess::Write, None).unwrap();
    let dim = store.dim;
    assert!(
        store.layers[0].values.is_mapped(),
        "the writer maps its values"
    );
    let (reader, _) = open_store(&path, MemoryAccess::Read, None).unwrap();
    assert!(
        !reader.layers[0].values.is_mapped(),
        "a reader copies them (a writer may checkpoint in place under it)"
    );
    assert!(store.layers[0].values.nonzero_rows(dim).iter().all(|&n| !n));
    durable
        .commit(
            fact("My cat is called Miso.", &[2, 5, 6], 0.5, dim),
            &mut store,
        )
        .unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a change reaches the file only through the journal and a checkpoint"
    );
    let nonzero: Vec<usize> = (store.layers[0].values.nonzero_rows(dim).iter())
        .enumerate()
        .filter_map(|(i, &n)| n.then_some(i))
        .collect();
    assert_eq!(nonzero, vec![2, 5, 6]);
    assert_eq!(store.read_rows(&[5]).unwrap(), vec![0.5; dim]);
    checkpoint(&store, &mut durable);
    let (reopened, _) = open_store(&path, MemoryAccess::Read, None).unwrap();
    assert_eq!(
        bits(&reopened),
        bits(&store),
        "the checkpoint wrote what the writer holds"
    );
    assert_eq!(store.read_rows(&[5]).unwrap(), vec![0.5; dim]);
}

#[test]
fn a_checkpoint_writes_the_changed_rows_and_history_in_place() {
    let path = saved_store("in-place.engram");
    let before = std::fs::read(&path).unwrap();
    let (mut store, mut durable) = open_store(&path, MemoryAccess::Write, None).unwrap();
    let dim = store.dim;
    durable
        .commit(
            fact("My cat is called Miso.", &[2, 5, 6], 0.5, dim),
            &mut store,
        )
        .unwrap();
    let report = checkpoint(&store, &mut durable);
    assert!(report.in_place, "{report:?}");
    assert_eq!(report.rows, 3);
    assert_eq!(durable.journal_len(), 0, "the journal is emptied");
    let after = std::fs::read(&path).unwrap();
    // Every byte outside the three rows and the history tail is the file's as it was.
    let g = Gguf::open(&path).unwrap();
    let values_at = g.tensor_file_offset(g.tensor("mem.1.values").unwrap()) as usize;
    let row = dim * 4;
    let changed: Vec<usize> = (0..g.data_end())
        .filter(|&i| before[i] != after[i])
        .collect();
    assert!(
        changed
            .iter()
            .all(|&i| [2, 5, 6].contains(&((i - values_at) / row)) && i >= values_at),
        "bytes outside the changed rows were written: {:?}",
        &changed[..changed.len().min(8)]
    );
    assert!(!changed.is_empty());
    assert!(
        report.bytes_written < before.len() as u64 / 4,
        "{} bytes written for a {}-byte store",
        report.bytes_written,
        before.len()
    );
    drop(durable);
    let (reopened, durable) = open_store(&path, MemoryAccess::Read, None).unwrap();
    assert_eq!(bits(&reopened), bits(&store));
    assert_eq!(durable.history.learned.len(), 1);
    assert_eq!(durable.history.learned[0].rows, vec![2, 5, 6]);
    assert!(durable.warnings.is_empty(), "{:?}", durable.warnings);
}

#[test]
fn a_checkpoint_cut_short_is_finished_from_the_journal_on_open() {
    let path = saved_store("cut.engram");
    let (mut store, mut durable) = open_store(&path, MemoryAccess::Write, None).unwrap();
    let dim = store.dim;
    durable
        .commit(fact("Q: a? A: b", &[1, 9], -0.25, dim), &mut store)
        .unwrap();
    checkpoint(&store, &mut durable);
    durable
        .commit(
            fact("My sister Ana lives in Porto.", &[9, 10], 0.75, dim),
            &mut store,
        )
        .unwrap();
    // The first half of a checkpoint: its image logged, then a crash while the store was
    // written — row 9 half new, the history tail cut short. The writer's values are kept
    // aside and its mapping let go first: its process would be gone after a crash, and
    // rewriting a file under a live mapping of it takes the mapping's pages away.
    log_image(&path, &store, durable, &[9, 10], None);
    let want = bits(&store);
    drop(store);
    let jpath = journal_path(&path);
    let g = Gguf::open(&path).unwrap();
    let row9 = g.tensor_file_offset(g.tensor("mem.1.values").unwrap()) as usize + 9 * dim * 4;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[row9..row9 + dim * 2].fill(0x7f);
    bytes.truncate(bytes.len() - 7);
    std::fs::write(&path, &bytes).unwrap();

    let (reopened, reader) = open_store(&path, MemoryAccess::Read, None).unwrap();
    assert_eq!(bits(&reopened), want, "the image's rows are the store's");
    assert_eq!(reader.history.learned.len(), 2);
    assert!(reader.warnings.is_empty(), "{:?}", reader.warnings);
    // A writer finishes the checkpoint; the store then stands without its journal.
    let (reopened, mut durable) = open_store(&path, MemoryAccess::Write, None).unwrap();
    let report = checkpoint(&reopened, &mut durable);
    assert_eq!(report.rows, 2, "the image's rows are written again");
    drop(durable);
    std::fs::remove_file(&jpath).unwrap();
    let (alone, durable) = open_store(&path, MemoryAccess::Read, None).unwrap();
    assert_eq!(bits(&alone), want);
    assert_eq!(durable.history.learned.len(), 2);

    // Without the image, a cut tail is a clear error, not an empty history.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 7);
    std::fs::write(&path, &bytes).unwrap();
    let err = open_store(&path, MemoryAccess::Read, None)
        .err()
        .expect("a damaged history must not open")
        .to_string();
    assert!(err.contains("history") && err.contains("damaged"), "{err}");
}

#[test]
fn a_format_1_store_opens_and_its_first_checkpoint_rewrites_it_whole() {
    let seed = engram_e2e::workspace_root().join("fuzz/corpus/store/seed-tiny-format1");
    let path = scratch("format1.engram");
    clear_companions(&path);
    std::fs::copy(&seed, &path).unwrap();
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.get_u64("engram.format_version").unwrap(), 1);
    let (mut store, mut durable) = open_store(&path, MemoryAccess::Write, None).unwrap();
    let dim = store.dim;
    durable
        .commit(fact("Q: c? A: d", &[3], 1.0, dim), &mut store)
        .unwrap();
    let first = checkpoint(&store, &mut durable);
    assert!(!first.in_place, "{first:?}");
    let g = Gguf::open(&path).unwrap();
    assert_eq!(
        g.get_u64("engram.format_version").unwrap(),
        u64::from(engram::delta::STORE_FORMAT_VERSION)
    );
    durable
        .commit(fact("Q: e? A: f", &[4], 2.0, dim), &mut store)
        .unwrap();
    let second = checkpoint(&store, &mut durable);
    assert!(second.in_place && second.rows == 1, "{second:?}");
    drop(durable);
    let (reopened, durable) = open_store(&path, MemoryAccess::Read, None).unwrap();
    assert_eq!(bits(&reopened), bits(&store));
    assert_eq!(durable.history.learned.len(), 2);
}

#[test]
fn an_encrypted_store_is_checkpointed_in_place_sealed_row_by_row() {
    let key = StoreKey::from_bytes([5; 32]);
    let plain_path = saved_store("sealed-source.engram");
    let store = MemoryStore::open(&plain_path).unwrap();
    let path = scratch("sealed.engram");
    clear_companions(&path);
    store.save_sealed(&path, Some(&key)).unwrap();
    let before = std::fs::read(&path).unwrap();
    assert!(before.starts_with(b"ENGRAMX2"));
    let (mut store, mut durable) = open_store(&path, MemoryAccess::Write, Some(&key)).unwrap();
    let dim = store.dim;
    durable
        .commit(
            fact("My dentist is Dr Okafor.", &[3, 4, 40], 0.5, dim),
            &mut store,
        )
        .unwrap();
    let report = checkpoint(&store, &mut durable);
    assert!(report.in_place && report.rows == 3, "{report:?}");
    assert!(report.bytes_written < before.len() as u64 / 4, "{report:?}");
    drop(durable);
    let after = std::fs::read(&path).unwrap();
    assert!(
        !after.windows(6).any(|w| w == b"Okafor"),
        "the history is sealed"
    );
    // Only the three rows' sealed pieces and the history changed (one memory layer: the
    // header is 48 bytes, its last 8 the static part's length).
    let row = 24 + dim * 4 + 16;
    let static_len = u64::from_le_bytes(before[40..48].try_into().unwrap()) as usize;
    let rows_at = 48 + 24 + 16 + static_len + 16;
    let tail_at = rows_at + store.total_rows() * row;
    let piece = |i: usize| (i >= rows_at && i < tail_at).then(|| (i - rows_at) / row);
    let outside: Vec<usize> = (0..tail_at)
        .filter(|&i| before[i] != after[i] && !matches!(piece(i), Some(3 | 4 | 40)))
        .collect();
    assert!(
        outside.is_empty(),
        "bytes written outside: {:?}",
        &outside[..outside.len().min(8)]
    );
    assert!((0..tail_at).any(|i| before[i] != after[i]));
    let (reopened, d) = open_store(&path, MemoryAccess::Read, Some(&key)).unwrap();
    assert_eq!(bits(&reopened), bits(&store));
    assert_eq!(d.history.learned[0].text, "My dentist is Dr Okafor.");
    let other = StoreKey::from_bytes([6; 32]);
    let err = open_store(&path, MemoryAccess::Read, Some(&other))
        .err()
        .unwrap();
    assert!(err.to_string().contains("wrong store key"), "{err}");

    // A row and the history a crash left half written: opened from the image, else refused.
    let (mut store, mut durable) = open_store(&path, MemoryAccess::Write, Some(&key)).unwrap();
    durable
        .commit(fact("Q: g? A: h", &[4, 5], -1.0, dim), &mut store)
        .unwrap();
    log_image(&path, &store, durable, &[4, 5], Some(&key));
    let jpath = journal_path(&path);
    let mut torn = std::fs::read(&path).unwrap();
    torn[rows_at + 4 * row + 30] ^= 0xff;
    torn.truncate(torn.len() - 5);
    std::fs::write(&path, &torn).unwrap();
    let (reopened, d) = open_store(&path, MemoryAccess::Read, Some(&key)).unwrap();
    assert_eq!(bits(&reopened), bits(&store));
    assert_eq!(d.history.learned.len(), 2);
    std::fs::remove_file(&jpath).unwrap();
    let err = open_store(&path, MemoryAccess::Read, Some(&key))
        .err()
        .unwrap();
    assert!(err.to_string().contains("tampered"), "{err}");
}

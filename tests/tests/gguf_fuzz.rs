//! Thousands of random mutations of a small GGUF against the reader and the model loader.
//! Kept in its own test binary so the allocation tracker sees only this test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use engram::backend::cpu::CpuBackend;
use engram::gguf::Gguf;
use engram::model::{Logits, Model};
use engram::{Error, Tokenizer};
use engram_e2e::tiny_llama_gguf;

/// Records the largest single allocation so the fuzz test can prove no file-chosen size is
/// ever allocated.
struct Tracking;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Thousands of mutated files: every one parses or fails with an error, never panics, never
/// hangs, and never allocates more than a small multiple of the file's size.
#[test]
fn mutated_files_never_panic_hang_or_overallocate() {
    let seed_file = tiny_llama_gguf(3);
    let len = seed_file.len();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // What a valid file costs end to end is the baseline; mutations may not exceed it by more
    // than a small multiple of the file size.
    run_pipeline(seed_file.clone());
    let baseline = LARGEST.swap(0, Ordering::Relaxed);
    let (mut parsed, mut rejected, mut loaded) = (0, 0, 0);
    let mut slowest = Duration::ZERO;
    for i in 0..4000 {
        let mut bytes = seed_file.clone();
        match i % 4 {
            // Flip bytes, concentrated in the header where counts and lengths live.
            0 | 1 => {
                for _ in 0..1 + next() % 8 {
                    let span = if next() % 2 == 0 { 4096.min(len) } else { len };
                    let at = (next() as usize) % span;
                    bytes[at] = next() as u8;
                }
            }
            // Overwrite 8 bytes with an extreme integer (counts, lengths, dims, offsets).
            2 => {
                let at = (next() as usize) % 4096.min(len - 8);
                let v: u64 = match next() % 4 {
                    0 => u64::MAX,
                    1 => 1 << (next() % 64),
                    2 => next() % 1_000_000,
                    _ => next(),
                };
                bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            // Truncate anywhere.
            _ => bytes.truncate((next() as usize) % len),
        }
        let start = Instant::now();
        match run_pipeline(bytes) {
            None => rejected += 1,
            Some(ran) => {
                parsed += 1;
                loaded += ran as usize;
            }
        }
        slowest = slowest.max(start.elapsed());
    }
    let largest = LARGEST.load(Ordering::Relaxed);
    println!(
        "4000 mutations: {rejected} rejected with an error, {parsed} parsed ({loaded} ran a forward pass); \
         slowest {slowest:?}; largest allocation {largest} bytes for a {len}-byte file (valid file: {baseline})"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "a mutated file took {slowest:?}"
    );
    assert!(
        largest <= baseline + 16 * len,
        "an allocation of {largest} bytes for a {len}-byte file"
    );
}

/// Parses, touches every tensor, loads the model and tokenizer and runs a forward pass.
/// `None` when the file is rejected; `Some(true)` when a forward pass ran.
fn run_pipeline(bytes: Vec<u8>) -> Option<bool> {
    let g = match Gguf::from_bytes(bytes) {
        Ok(g) => g,
        Err(e) => {
            assert!(
                matches!(e, Error::Gguf { .. } | Error::Unsupported(_)),
                "unexpected error kind: {e}"
            );
            return None;
        }
    };
    for t in g.tensors() {
        let _ = g.tensor_data(t).len();
    }
    let model = Model::load(&g, CpuBackend::new(1).unwrap()).ok();
    let tokenizer = Tokenizer::from_gguf(&g).ok();
    if let (Some(model), Some(_)) = (model, tokenizer) {
        let mut cache = model.new_cache(8);
        return Some(model.forward(&[1, 2, 3], &mut cache, Logits::Last).is_ok());
    }
    Some(false)
}

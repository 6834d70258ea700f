//! Freed activation buffers kept for the next op that needs one of about the same size.
//!
//! A 512-token prompt allocates and frees about 25 MB of activations per layer; fresh from
//! the allocator those are new pages (glibc maps buffers of this size, and its per-thread
//! arenas hand freed pages back to the kernel), and faulting them in cost about a sixth of
//! a long prefill. Reusing them costs a memset.

use std::sync::Mutex;

/// Smaller buffers come cheaply from the allocator's own free lists.
const MIN_FLOATS: usize = 16 * 1024;
/// Larger ones are tables (a memory's values), not activations: never kept.
const MAX_FLOATS: usize = 4 << 20;
/// At most 16 MiB of freed buffers are held, and only while ops run (see [`release_all`]):
/// enough for one layer's worth of a 512-token prompt's activations.
const MAX_KEPT_FLOATS: usize = 4 << 20;

static FREE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

fn free_list() -> std::sync::MutexGuard<'static, Vec<Vec<f32>>> {
    // The list holds only spare buffers: one left by a panicking thread is still usable.
    FREE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `len` zeros, in a kept buffer of at least that capacity (and at most twice) if there is one.
pub(super) fn zeroed(len: usize) -> Vec<f32> {
    if (MIN_FLOATS..=MAX_FLOATS).contains(&len) {
        let kept = take_from(&mut free_list(), len);
        if let Some(mut buf) = kept {
            buf.clear();
            buf.resize(len, 0.0);
            return buf;
        }
    }
    vec![0f32; len]
}

/// Keeps `buf` for [`zeroed`] if it is activation-sized and there is room; else frees it.
pub(super) fn recycle(buf: Vec<f32>) {
    if (MIN_FLOATS..=MAX_FLOATS).contains(&buf.capacity()) {
        keep_in(&mut free_list(), buf);
    }
}

/// Frees every kept buffer: called when no [`crate::backend::Backend::run`] is under way, so
/// that an idle engine holds no spare activations.
pub(super) fn release_all() {
    free_list().clear();
}

/// The smallest buffer in `free` that holds `len` floats without wasting half of itself.
fn take_from(free: &mut Vec<Vec<f32>>, len: usize) -> Option<Vec<f32>> {
    let best = free
        .iter()
        .enumerate()
        .filter(|(_, b)| (len..=2 * len).contains(&b.capacity()))
        .min_by_key(|(_, b)| b.capacity())
        .map(|(i, _)| i)?;
    Some(free.swap_remove(best))
}

/// Adds `buf` to `free` unless that would hold more than [`MAX_KEPT_FLOATS`].
fn keep_in(free: &mut Vec<Vec<f32>>, buf: Vec<f32>) {
    let kept: usize = free.iter().map(Vec::capacity).sum();
    if kept + buf.capacity() <= MAX_KEPT_FLOATS {
        free.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_fitting_buffer_is_reused_and_the_list_stays_bounded() {
        let mut free = Vec::new();
        keep_in(&mut free, vec![1f32; 3 * MIN_FLOATS]);
        keep_in(&mut free, vec![2f32; MIN_FLOATS + 10]);
        let small = free[1].as_ptr();
        let got = take_from(&mut free, MIN_FLOATS).expect("a kept buffer fits");
        assert_eq!(got.as_ptr(), small, "the smaller of two fitting buffers is taken");
        assert!(
            take_from(&mut free, MIN_FLOATS).is_none(),
            "one three times the request is not taken"
        );
        assert!(take_from(&mut free, 2 * MIN_FLOATS).is_some());
        for _ in 0..MAX_KEPT_FLOATS / MAX_FLOATS + 2 {
            keep_in(&mut free, Vec::with_capacity(MAX_FLOATS));
        }
        let kept: usize = free.iter().map(Vec::capacity).sum();
        assert!(kept <= MAX_KEPT_FLOATS, "{kept} floats kept");
    }

    #[test]
    fn a_reused_buffer_comes_back_zeroed() {
        // A size no other test asks for, so that the buffer kept here is the one given back.
        let len = MIN_FLOATS + 12_345;
        recycle(vec![7f32; len]);
        let again = zeroed(len);
        assert_eq!(again.len(), len);
        assert!(again.iter().all(|&v| v == 0.0), "a reused buffer must be zeroed");
    }
}

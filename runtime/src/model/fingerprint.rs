//! A cheap identity for a base model's weights, so a memory store is never used with
//! another model.

use xxhash_rust::xxh3::Xxh3;

use crate::gguf::Gguf;

/// Hex xxh3-128 over every tensor's name, type, shape and bytes, in file order.
///
/// Metadata (chat template, name) is left out on purpose: editing it does not change what a
/// memory layer learned against. Any change to a weight byte changes the fingerprint. Hashing
/// runs at memory bandwidth (about 10 ms for a 100 MB model whose pages are cached).
pub fn fingerprint(gguf: &Gguf) -> String {
    let mut h = Xxh3::new();
    for t in gguf.tensors() {
        h.update(&(t.name.len() as u64).to_le_bytes());
        h.update(t.name.as_bytes());
        h.update(&t.dtype.id().to_le_bytes());
        h.update(&(t.dims.len() as u64).to_le_bytes());
        for d in &t.dims {
            h.update(&d.to_le_bytes());
        }
        h.update(gguf.tensor_data(t));
    }
    format!("{:032x}", h.digest128())
}

//! The memory layer's ops on the device: product-key top-k, value gather, value gradients,
//! row reads and writes, and the sparse SGD step (`memory.wgsl`).

use std::collections::HashMap;

use super::dispatch::*;
use super::params::*;
use super::*;
use crate::backend::{Backend, ProductKeyShape};

pub(super) fn product_key_topk<C: Compute>(
    backend: &GpuBackend<C>,
    q: &GpuTensor<C>,
    keys: &GpuTensor<C>,
    shape: ProductKeyShape,
) -> (GpuSlots<C>, GpuTensor<C>) {
    assert_eq!(q.cols, shape.query_cols(), "product_key_topk: query width");
    assert!(
        shape.n_keys <= MAX_KEYS && shape.top_k <= MAX_TOP_K,
        "the wgpu product-key shader holds at most {MAX_KEYS} keys and top-{MAX_TOP_K}"
    );
    let picks = shape.picks();
    let ids = backend.storage(q.rows * picks * 4);
    let weights = backend.storage(q.rows * picks * 4);
    let p = MemoryParams {
        n: u(q.rows),
        picks: u(picks),
        heads: u(shape.heads),
        n_keys: u(shape.n_keys),
        top_k: u(shape.top_k),
        k_dim: u(shape.k_dim),
        ..Default::default()
    };
    backend.dispatch(
        ("product_key_topk", 0),
        &p,
        &[(1, q.buf()), (2, keys.buf()), (3, &ids), (4, &weights)],
        grid(q.rows * shape.heads),
    );
    (
        GpuSlots {
            buf: ids,
            rows: q.rows,
            cols: picks,
        },
        backend.tensor(weights, q.rows, picks),
    )
}

pub(super) fn download_slots<C: Compute>(backend: &GpuBackend<C>, slots: &GpuSlots<C>) -> Vec<u32> {
    let bytes = backend.read_back(&slots.buf, slots.rows * slots.cols * 4);
    bytemuck::pod_collect_to_vec(&bytes)
}

pub(super) fn gather_values<C: Compute>(
    backend: &GpuBackend<C>,
    values: &GpuTensor<C>,
    slots: &GpuSlots<C>,
    weights: &GpuTensor<C>,
) -> GpuTensor<C> {
    assert_eq!(
        (slots.rows, slots.cols),
        (weights.rows, weights.cols),
        "gather_values: slots and weights differ in shape"
    );
    let out = backend.storage(slots.rows * values.cols * 4);
    for part in &values.parts {
        let fields = MemoryParams {
            n: u(slots.rows),
            dim: u(values.cols),
            picks: u(slots.cols),
            row0: u(part.row0),
            part_rows: u(part.rows),
            ..Default::default()
        };
        backend.memory_op(
            "gather_values",
            &fields,
            &[
                (5, &slots.buf),
                (6, weights.buf()),
                (7, &part.buf),
                (8, &out),
            ],
        );
    }
    backend.tensor(out, slots.rows, values.cols)
}

pub(super) fn value_grads<C: Compute>(
    backend: &GpuBackend<C>,
    slots: &GpuSlots<C>,
    weights: &GpuTensor<C>,
    dy: &GpuTensor<C>,
    rows: &[u32],
) -> GpuTensor<C> {
    // Which (token, pick) positions hit each selected row, built on the host from the slot
    // ids (a few kB): the sums then run in the CPU backend's order, with no atomics.
    let ids = backend.download_slots(slots);
    let index: HashMap<u32, usize> = rows.iter().enumerate().map(|(i, &r)| (r, i)).collect();
    let mut hits: Vec<Vec<u32>> = vec![Vec::new(); rows.len()];
    for (pos, id) in ids.iter().enumerate() {
        if let Some(&i) = index.get(id) {
            hits[i].push(pos as u32);
        }
    }
    let mut offsets = vec![0u32];
    for h in &hits {
        offsets.push(offsets.last().copied().unwrap_or(0) + h.len() as u32);
    }
    let flat: Vec<u32> = hits.concat();
    let (offsets, flat) = (backend.u32s(&offsets), backend.u32s(&flat));
    let out = backend.storage(rows.len() * dy.cols * 4);
    let fields = MemoryParams {
        n: u(rows.len()),
        dim: u(dy.cols),
        picks: u(slots.cols),
        ..Default::default()
    };
    backend.memory_op(
        "value_grads",
        &fields,
        &[
            (5, &flat),
            (6, weights.buf()),
            (7, dy.buf()),
            (8, &out),
            (9, &offsets),
        ],
    );
    backend.tensor(out, rows.len(), dy.cols)
}

pub(super) fn read_rows<C: Compute>(backend: &GpuBackend<C>, t: &GpuTensor<C>, rows: &[u32]) -> GpuTensor<C> {
    let out = backend.storage(rows.len() * t.cols * 4);
    let ids = backend.u32s(rows);
    for part in &t.parts {
        let fields = MemoryParams {
            n: u(rows.len()),
            dim: u(t.cols),
            row0: u(part.row0),
            part_rows: u(part.rows),
            ..Default::default()
        };
        backend.memory_op(
            "read_rows",
            &fields,
            &[(5, &ids), (7, &part.buf), (8, &out)],
        );
    }
    backend.tensor(out, rows.len(), t.cols)
}

pub(super) fn write_rows<C: Compute>(
    backend: &GpuBackend<C>,
    t: &mut GpuTensor<C>,
    rows: &[u32],
    src: &GpuTensor<C>,
) {
    assert_eq!(
        (src.rows, src.cols),
        (rows.len(), t.cols),
        "write_rows: source shape"
    );
    let ids = backend.u32s(rows);
    for part in &t.parts {
        let fields = MemoryParams {
            n: u(rows.len()),
            dim: u(t.cols),
            row0: u(part.row0),
            part_rows: u(part.rows),
            ..Default::default()
        };
        backend.memory_op(
            "write_rows",
            &fields,
            &[(5, &ids), (7, src.buf()), (8, &part.buf)],
        );
    }
}

pub(super) fn sgd_rows<C: Compute>(
    backend: &GpuBackend<C>,
    values: &mut GpuTensor<C>,
    rows: &[u32],
    grads: &GpuTensor<C>,
    lr: f32,
) {
    assert_eq!(
        (grads.rows, grads.cols),
        (rows.len(), values.cols),
        "sgd_rows: gradient shape"
    );
    let ids = backend.u32s(rows);
    for part in &values.parts {
        let fields = MemoryParams {
            n: u(rows.len()),
            dim: u(values.cols),
            row0: u(part.row0),
            part_rows: u(part.rows),
            lr,
            ..Default::default()
        };
        backend.memory_op(
            "sgd_rows",
            &fields,
            &[(5, &ids), (7, grads.buf()), (8, &part.buf)],
        );
    }
}

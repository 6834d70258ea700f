//! The memory layer's ops: product-key top-k, value gather, value gradients, row reads
//! and writes, and the sparse SGD step.

use rayon::prelude::*;

use super::*;
use crate::backend::ProductKeyShape;
use crate::backend::product_keys::{lookup_head, softmax};

pub(super) use crate::quant::axpy_f32 as axpy;

pub(super) fn product_key_topk(
    backend: &CpuBackend,
    q: &CpuTensor,
    keys: &CpuTensor,
    shape: ProductKeyShape,
) -> (CpuSlots, CpuTensor) {
    let ProductKeyShape {
        heads,
        n_keys,
        top_k,
        k_dim,
    } = shape;
    assert_eq!(q.cols, shape.query_cols(), "product_key_topk: query width");
    assert_eq!(
        (keys.rows, keys.cols),
        (shape.key_rows(), k_dim / 2),
        "product_key_topk: sub-key table shape"
    );
    let picks = shape.picks();
    let mut ids = vec![0u32; q.rows * picks];
    let mut weights = vec![0f32; q.rows * picks];
    let head_keys = 2 * n_keys * (k_dim / 2);
    backend.pool.install(|| {
        ids.par_chunks_mut(top_k)
            .zip(weights.par_chunks_mut(top_k))
            .enumerate()
            .for_each(|(idx, (ids, ws))| {
                let (t, h) = (idx / heads, idx % heads);
                let qh = &q.data[t * q.cols + h * k_dim..][..k_dim];
                let kh = &keys.data[h * head_keys..][..head_keys];
                let best = lookup_head(qh, kh, n_keys, top_k);
                for ((id, w), (score, slot)) in ids.iter_mut().zip(ws.iter_mut()).zip(best) {
                    *id = slot;
                    *w = score;
                }
                softmax(ws);
            });
    });
    (
        CpuSlots {
            ids,
            rows: q.rows,
            cols: picks,
        },
        CpuTensor {
            data: weights.into(),
            rows: q.rows,
            cols: picks,
        },
    )
}

pub(super) fn download_slots(_backend: &CpuBackend, slots: &CpuSlots) -> Vec<u32> {
    slots.ids.clone()
}

pub(super) fn gather_values(
    backend: &CpuBackend,
    values: &CpuTensor,
    slots: &CpuSlots,
    weights: &CpuTensor,
) -> CpuTensor {
    assert_eq!(
        (slots.rows, slots.cols),
        (weights.rows, weights.cols),
        "gather_values: slots and weights differ in shape"
    );
    let d = values.cols;
    let mut data = buffers::zeroed(slots.rows * d);
    let row = |t: usize, out: &mut [f32]| {
        let ids = &slots.ids[t * slots.cols..][..slots.cols];
        let ws = &weights.data[t * slots.cols..][..slots.cols];
        for (&id, &w) in ids.iter().zip(ws) {
            // A read the gate closed, or of a row known to be zero, adds nothing; skipping it
            // leaves the row's page unread (a mapped value table then takes memory only for
            // the rows that hold something).
            if w == 0.0 || !values.data.row_may_be_nonzero(id as usize) {
                continue;
            }
            let v = &values.data[id as usize * d..][..d];
            for (o, x) in out.iter_mut().zip(v) {
                *o += w * x;
            }
        }
    };
    if slots.rows == 1 {
        row(0, &mut data);
    } else {
        backend.pool.install(|| {
            data.par_chunks_mut(d)
                .enumerate()
                .for_each(|(t, out)| row(t, out));
        });
    }
    CpuTensor {
        data: data.into(),
        rows: slots.rows,
        cols: d,
    }
}

pub(super) fn value_grads(
    _backend: &CpuBackend,
    slots: &CpuSlots,
    weights: &CpuTensor,
    dy: &CpuTensor,
    rows: &[u32],
) -> CpuTensor {
    let d = dy.cols;
    let index: std::collections::HashMap<u32, usize> =
        rows.iter().enumerate().map(|(i, &r)| (r, i)).collect();
    let mut data = vec![0f32; rows.len() * d];
    for t in 0..slots.rows {
        let g = &dy.data[t * d..(t + 1) * d];
        for j in 0..slots.cols {
            if let Some(&i) = index.get(&slots.ids[t * slots.cols + j]) {
                axpy(
                    &mut data[i * d..(i + 1) * d],
                    weights.data[t * slots.cols + j],
                    g,
                );
            }
        }
    }
    CpuTensor {
        data: data.into(),
        rows: rows.len(),
        cols: d,
    }
}

pub(super) fn read_rows(_backend: &CpuBackend, t: &CpuTensor, rows: &[u32]) -> CpuTensor {
    let d = t.cols;
    let mut data = Vec::with_capacity(rows.len() * d);
    for &r in rows {
        data.extend_from_slice(&t.data[r as usize * d..(r as usize + 1) * d]);
    }
    CpuTensor {
        data: data.into(),
        rows: rows.len(),
        cols: d,
    }
}

pub(super) fn write_rows(_backend: &CpuBackend, t: &mut CpuTensor, rows: &[u32], src: &CpuTensor) {
    let d = t.cols;
    assert_eq!(
        (src.rows, src.cols),
        (rows.len(), d),
        "write_rows: source shape"
    );
    for (&r, row) in rows.iter().zip(src.data.chunks_exact(d)) {
        t.data[r as usize * d..(r as usize + 1) * d].copy_from_slice(row);
    }
    t.data.note_written(rows, d);
}

pub(super) fn sgd_rows(
    _backend: &CpuBackend,
    values: &mut CpuTensor,
    rows: &[u32],
    grads: &CpuTensor,
    lr: f32,
) {
    let d = values.cols;
    assert_eq!(
        (grads.rows, grads.cols),
        (rows.len(), d),
        "sgd_rows: gradient shape"
    );
    for (&r, g) in rows.iter().zip(grads.data.chunks_exact(d)) {
        axpy(
            &mut values.data[r as usize * d..(r as usize + 1) * d],
            -lr,
            g,
        );
    }
    values.data.note_written(rows, d);
}

//! How an op reaches the device: kernel parameters, dispatches, buffers and read-backs,
//! over whichever [`Compute`] the backend runs on.

use super::params::{ElementwiseParams, MatmulParams, MemoryParams, RowsParams, ShaderParams};
use super::*;
use crate::quant::GgmlType;

pub(super) fn dtype_code(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::BF16 => 2,
        GgmlType::Q8_0 => 3,
        GgmlType::Q4_0 => 4,
        GgmlType::Q4_1 => 5,
        GgmlType::Q4_K => 6,
        GgmlType::Q6_K => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q2_K => 10,
        GgmlType::Q3_K => 11,
        GgmlType::Q5_K => 12,
    }
}

/// A shader parameter from a size or count: every one fits a u32 on the sizes engram runs.
pub(super) fn u(v: usize) -> u32 {
    u32::try_from(v).expect("shader parameter exceeds u32")
}

/// Workgroup counts for `groups` workgroups, folded into 2-D past the per-dimension limit.
pub(super) fn grid(groups: usize) -> (u32, u32) {
    let groups = u32::try_from(groups.max(1)).expect("dispatch too large");
    if groups <= MAX_GROUPS {
        (groups, 1)
    } else {
        (MAX_GROUPS, groups.div_ceil(MAX_GROUPS))
    }
}

impl<C: Compute> GpuBackend<C> {
    /// Runs `entry` of `T`'s module once with `params` and `bufs` at their bindings (the
    /// kernel's arguments, in binding order), over `groups` workgroups (blocks).
    pub(super) fn dispatch<T: ShaderParams>(
        &self,
        (entry, dtype): (&'static str, u32),
        params: &T,
        bufs: &[(u32, &C::Buffer)],
        groups: (u32, u32),
    ) {
        let params: [u8; 64] = bytemuck::cast(*params);
        self.compute
            .dispatch(T::MODULE, entry, dtype, &params, bufs, groups);
    }

    /// A zeroed buffer of at least `bytes` (never empty: an empty tensor still binds).
    pub(super) fn storage(&self, bytes: usize) -> C::Buffer {
        self.compute.storage(bytes.max(4).div_ceil(4) * 4)
    }

    /// Copies `bytes` bytes from `src` at `src_off` to `dst` at `dst_off`, in issue order.
    pub(super) fn copy(
        &self,
        src: &C::Buffer,
        src_off: usize,
        dst: &C::Buffer,
        dst_off: usize,
        bytes: usize,
    ) {
        if bytes > 0 {
            self.compute.copy(src, src_off, dst, dst_off, bytes);
        }
    }

    /// The first `bytes` bytes of `buf`, after every op issued before.
    pub(super) fn read_back(&self, buf: &C::Buffer, bytes: usize) -> Vec<u8> {
        if bytes == 0 {
            return Vec::new();
        }
        self.compute.read_back(buf, bytes)
    }

    /// A buffer holding `bytes`, zero-padded to whole 4-byte words (kernels read words).
    pub(super) fn storage_init(&self, bytes: &[u8]) -> C::Buffer {
        let buf = self.storage(bytes.len());
        if bytes.len().is_multiple_of(4) {
            self.compute.write(&buf, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4) * 4, 0);
            self.compute.write(&buf, &padded);
        }
        buf
    }

    pub(super) fn u32s(&self, data: &[u32]) -> C::Buffer {
        self.storage_init(bytemuck::cast_slice(data))
    }

    /// A zeroed tensor (wgpu zero-fills new buffers), split where it exceeds a binding.
    pub(super) fn zeros(&self, rows: usize, cols: usize) -> GpuTensor<C> {
        let row_bytes = (cols * 4).max(4);
        let per_part = ((self.max_binding as usize) / row_bytes).max(1);
        let mut parts = Vec::new();
        let mut row0 = 0;
        loop {
            let n = per_part.min(rows - row0);
            parts.push(Part {
                buf: self.storage(n * cols * 4),
                row0,
                rows: n,
            });
            row0 += n;
            if row0 >= rows {
                break;
            }
        }
        GpuTensor { parts, rows, cols }
    }

    pub(super) fn tensor(&self, buf: C::Buffer, rows: usize, cols: usize) -> GpuTensor<C> {
        GpuTensor {
            parts: vec![Part { buf, row0: 0, rows }],
            rows,
            cols,
        }
    }

    pub(super) fn elementwise(
        &self,
        entry: &'static str,
        n: usize,
        cols: usize,
        bufs: &[(u32, &C::Buffer)],
    ) {
        self.dispatch(
            (entry, 0),
            &ElementwiseParams {
                n: u(n),
                cols: u(cols),
                ..Default::default()
            },
            bufs,
            grid(n.div_ceil(256)),
        );
    }

    /// Runs a per-element memory op (64 per workgroup) over `n × dim` elements.
    pub(super) fn memory_op(
        &self,
        entry: &'static str,
        params: &MemoryParams,
        bufs: &[(u32, &C::Buffer)],
    ) {
        let elements = params.n as usize * params.dim as usize;
        self.dispatch((entry, 0), params, bufs, grid(elements.div_ceil(64)));
    }

    pub(super) fn rope_op(
        &self,
        x: &mut GpuTensor<C>,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        rope: &Rope,
        direction: f32,
    ) {
        let half = rope.dims / 2;
        let total = x.rows * n_heads * half;
        let p = RowsParams {
            rows: u(x.rows),
            cols: u(x.cols),
            n_heads: u(n_heads),
            head_dim: u(head_dim),
            half_dims: u(half),
            pos0: u(pos0),
            step: rope.base.powf(-2.0 / rope.dims as f32),
            direction,
            halves: u(usize::from(rope.layout == RopeLayout::Halves)),
            ..Default::default()
        };
        self.dispatch(("rope", 0), &p, &[(4, x.buf())], grid(total.div_ceil(64)));
    }

    /// `x` as 8-bit blocks of 32 (10 words each), exactly as the cpu backend quantizes
    /// activations for integer weight formats, so both backends sum the same integers.
    pub(super) fn quantize_activations(&self, x: &GpuTensor<C>) -> C::Buffer {
        assert!(
            x.cols.is_multiple_of(32),
            "activations of width {} are not whole 32-blocks",
            x.cols
        );
        let blocks = x.cols / 32;
        let xq = self.storage(x.rows * blocks * 10 * 4);
        let p = MatmulParams {
            cols: u(x.cols),
            n: u(x.rows),
            ..Default::default()
        };
        self.dispatch(
            ("quantize_q8", 0),
            &p,
            &[(2, x.buf()), (5, &xq)],
            (blocks.div_ceil(64) as u32, x.rows.max(1) as u32),
        );
        xq
    }

    pub(super) fn grow_cache(&self, cache: &mut GpuKvCache<C>, needed: usize) {
        if needed <= cache.allocated {
            return;
        }
        let size = needed
            .max(cache.allocated * 2)
            .min(cache.capacity.max(needed));
        let bytes = size * cache.kv_dim * 4;
        for (layer, len) in cache.len.clone().into_iter().enumerate() {
            for bufs in [&mut cache.k, &mut cache.v] {
                let bigger = self.storage(bytes);
                self.copy(&bufs[layer], 0, &bigger, 0, len * cache.kv_dim * 4);
                bufs[layer] = bigger;
            }
        }
        cache.allocated = size;
    }
}

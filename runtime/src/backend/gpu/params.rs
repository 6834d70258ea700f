//! The kernel modules both GPU backends run, and the 64-byte parameter block each module's
//! kernels take: a WGSL uniform on wgpu, a by-value argument on CUDA.

/// One kernel module: `name.wgsl` on wgpu, `name.cu` on CUDA, with the same entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    /// Quantized and float matrix products, embedding lookup, activation quantization
    /// (`matmul` after `quant`, specialised per weight block format).
    Matmul,
    /// Per-element ops over rows (`elementwise`).
    Elementwise,
    /// Per-row ops: RMSNorm, RoPE, argmax, cross-entropy (`rows`).
    Rows,
    /// Attention over the KV cache and its backward (`attention`).
    Attention,
    /// The memory layer: product-key top-k, value gather, gradients, sparse SGD (`memory`).
    Memory,
}

impl Module {
    /// Every module.
    pub const ALL: [Module; 5] = [
        Module::Matmul,
        Module::Elementwise,
        Module::Rows,
        Module::Attention,
        Module::Memory,
    ];

    /// The file name without extension, for messages and labels.
    pub fn name(self) -> &'static str {
        match self {
            Module::Matmul => "matmul",
            Module::Elementwise => "elementwise",
            Module::Rows => "rows",
            Module::Attention => "attention",
            Module::Memory => "memory",
        }
    }
}

/// The parameters of one kernel module: `#[repr(C)]` and padded to the 64 bytes every
/// module's `struct Params` has, field for field in the kernels' order, so a mismatch is a
/// compile error here and not a silent misread on the device.
pub(crate) trait ShaderParams: bytemuck::Pod {
    /// The module whose `struct Params` this mirrors.
    const MODULE: Module;
}

macro_rules! shader_params {
    ($(#[$doc:meta])* $name:ident for $shader:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty,)* } pad $pad:literal) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        pub(crate) struct $name {
            $($(#[$fdoc])* pub(crate) $field: $ty,)*
            /// Up to the 64 bytes every module's parameters take.
            pub(crate) _pad: [u32; $pad],
        }

        impl ShaderParams for $name {
            const MODULE: Module = Module::$shader;
        }

        const _: () = assert!(std::mem::size_of::<$name>() == 64);
    };
}

shader_params!(
    /// `attention.wgsl`.
    AttentionParams for Attention {
        /// Query tokens.
        n: u32,
        /// Position of the first query (cached tokens before it).
        pos0: u32,
        /// n_heads · head_dim.
        q_cols: u32,
        /// n_kv_heads · head_dim.
        kv_cols: u32,
        /// Query heads.
        n_heads: u32,
        /// Query heads per kv head.
        group: u32,
        /// Width of a head.
        head_dim: u32,
        /// 1/√head_dim.
        scale: f32,
        /// Sliding window (positions a query sees, itself included); 0: all.
        window: u32,
    } pad 7
);

shader_params!(
    /// `elementwise.wgsl`.
    ElementwiseParams for Elementwise {
        /// Elements.
        n: u32,
        /// Row width (add_row).
        cols: u32,
        /// Multiplier (scale).
        factor: f32,
    } pad 13
);

shader_params!(
    /// `matmul.wgsl` (after `quant.wgsl`).
    MatmulParams for Matmul {
        /// Weight rows in this part.
        rows: u32,
        /// Elements per weight row.
        cols: u32,
        /// Tokens.
        n: u32,
        /// Bytes per weight row.
        row_bytes: u32,
        /// All weight rows (width of y and dy).
        out_cols: u32,
        /// First weight row of this part.
        row0: u32,
    } pad 10
);

shader_params!(
    /// `memory.wgsl`.
    MemoryParams for Memory {
        /// Tokens (top-k, gather) or selected rows (row ops).
        n: u32,
        /// Value width.
        dim: u32,
        /// Slots per token (all heads).
        picks: u32,
        /// First value row of this part.
        row0: u32,
        /// Value rows in this part.
        part_rows: u32,
        /// Learning rate of the SGD step.
        lr: f32,
        /// Product-key heads.
        heads: u32,
        /// Sub-keys per half.
        n_keys: u32,
        /// Picks per head.
        top_k: u32,
        /// Query width per head.
        k_dim: u32,
    } pad 6
);

shader_params!(
    /// `rows.wgsl`.
    RowsParams for Rows {
        /// Rows.
        rows: u32,
        /// Row width.
        cols: u32,
        /// RMSNorm epsilon.
        eps: f32,
        /// RoPE: heads.
        n_heads: u32,
        /// RoPE: width of a head.
        head_dim: u32,
        /// RoPE: rotated pairs per head.
        half_dims: u32,
        /// RoPE: position of the first row.
        pos0: u32,
        /// RoPE: base^(−2/dims).
        step: f32,
        /// RoPE: 1 forward, −1 for the gradient.
        direction: f32,
        /// RoPE: 1 pairs (i, i + dims/2); 0 pairs (2i, 2i+1).
        halves: u32,
    } pad 6
);

//! The WGSL shader modules, each a file beside this one, and the source each compiles from.

/// One WGSL module of the wgpu backend; each op names the module and entry point it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Shader {
    /// Quantized and float matrix products, embedding lookup, activation quantization
    /// (`matmul.wgsl` after `quant.wgsl`, specialised per weight block format).
    Matmul,
    /// Per-element ops over rows (`elementwise.wgsl`).
    Elementwise,
    /// Per-row ops: RMSNorm, RoPE, argmax, cross-entropy (`rows.wgsl`).
    Rows,
    /// Attention over the KV cache and its backward (`attention.wgsl`).
    Attention,
    /// The memory layer: product-key top-k, value gather, gradients, sparse SGD (`memory.wgsl`).
    Memory,
}

const QUANT: &str = include_str!("quant.wgsl");
const MATMUL: &str = include_str!("matmul.wgsl");
const ELEMENTWISE: &str = include_str!("elementwise.wgsl");
const ROWS: &str = include_str!("rows.wgsl");
const ATTENTION: &str = include_str!("attention.wgsl");
const MEMORY: &str = include_str!("memory.wgsl");

impl Shader {
    /// The module's WGSL; `dtype` (a block-format code) specialises the matmul module and is
    /// ignored by the others.
    pub(super) fn source(self, dtype: u32) -> String {
        match self {
            Shader::Matmul => format!("const DTYPE: u32 = {dtype}u;\n{QUANT}\n{MATMUL}"),
            Shader::Elementwise => ELEMENTWISE.to_string(),
            Shader::Rows => ROWS.to_string(),
            Shader::Attention => ATTENTION.to_string(),
            Shader::Memory => MEMORY.to_string(),
        }
    }

    /// A label for wgpu's validation messages.
    pub(super) fn label(self) -> &'static str {
        match self {
            Shader::Matmul => "matmul.wgsl",
            Shader::Elementwise => "elementwise.wgsl",
            Shader::Rows => "rows.wgsl",
            Shader::Attention => "attention.wgsl",
            Shader::Memory => "memory.wgsl",
        }
    }
}

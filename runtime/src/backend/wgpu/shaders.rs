//! The WGSL source of each kernel module, each a file beside this one.

use crate::backend::gpu::Module;

const QUANT: &str = include_str!("quant.wgsl");
const MATMUL: &str = include_str!("matmul.wgsl");
const ELEMENTWISE: &str = include_str!("elementwise.wgsl");
const ROWS: &str = include_str!("rows.wgsl");
const ATTENTION: &str = include_str!("attention.wgsl");
const MEMORY: &str = include_str!("memory.wgsl");

/// The module's WGSL; `dtype` (a block-format code) specialises the matmul module and is
/// ignored by the others.
pub(super) fn wgsl(module: Module, dtype: u32) -> String {
    match module {
        Module::Matmul => format!("const DTYPE: u32 = {dtype}u;\n{QUANT}\n{MATMUL}"),
        Module::Elementwise => ELEMENTWISE.to_string(),
        Module::Rows => ROWS.to_string(),
        Module::Attention => ATTENTION.to_string(),
        Module::Memory => MEMORY.to_string(),
    }
}

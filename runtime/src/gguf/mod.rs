//! The GGUF container: one reader and one writer for base models, memory stores and deltas.

mod f32_buffer;
mod reader;
mod value;
mod writer;

pub use f32_buffer::{F32Buffer, MappedF32};
pub use reader::{Gguf, Storage, TensorBytes, TensorInfo};
pub use value::{Value, ValueType};
pub use writer::GgufWriter;

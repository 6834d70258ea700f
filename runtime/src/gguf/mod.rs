//! The GGUF container: one reader and one writer for base models, memory stores and deltas.

mod reader;
mod value;
mod writer;

pub use reader::{Gguf, Storage, TensorBytes, TensorInfo};
pub use value::{Value, ValueType};
pub use writer::GgufWriter;

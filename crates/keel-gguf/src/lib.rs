//! GGUF: the single-file model format of llama.cpp and Ollama.
//!
//! [`GgufFile::open`] memory-maps a file and parses its header, metadata and
//! tensor table, checking every count, length and offset against the file's
//! real size before it allocates anything, so a lying header gives an
//! [`Error`] that names the field instead of a panic or a giant allocation.
//! [`dequantize`] turns a tensor's blocks into `f32`, bit-exact with the
//! `gguf` Python package, and [`quantize`] `f32` into the legacy block types
//! and the K-quants Q4_K, Q5_K and Q6_K, bit-exact with llama.cpp.
//!
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.

mod dequant;
mod error;
mod ggml_type;
mod quantize;
mod quantize_k;
mod reader;
mod value;
mod writer;

pub use dequant::{dequantize, dequantize_into};
pub use error::{Error, ErrorKind};
pub use ggml_type::{GgmlType, OtherType};
pub use quantize::quantize;
pub use reader::{GgufFile, TensorInfo};
pub use value::{Metadata, Value};
pub use writer::GgufWriter;

//! Model file formats: GGUF (with its quantized tensor types) and the pieces of the
//! Hugging Face layout that are not plain safetensors.

pub mod gguf;
pub mod quant;

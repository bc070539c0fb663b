//! ftedit: edit the facts a language model knows, by fine-tuning, and measure how well
//! each edit took.
//!
//! The crate is layered; dependencies point downwards only:
//! - [`formats`]: reading model files (GGUF and its quantized types).
//! - [`tokenizer`]: text to token ids, from what the model file carries.
//! - [`model`]: architectures behind one [`model::Model`], loading, forward passes
//!   built for editing (logits only where needed, frozen layers without autograd,
//!   MLP hooks), generation.
//! - [`runtime`]: devices and the libtorch runtime.

pub mod error;
pub mod formats;
pub mod model;
pub mod runtime;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
pub use model::{Input, LoadOptions, LogitsAt, Model, load};
pub use tokenizer::Tokenizer;

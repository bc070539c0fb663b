//! ftedit: edit the facts a language model knows, by fine-tuning, and measure how well
//! each edit took.
//!
//! The crate is layered; dependencies point downwards only:
//! - [`formats`]: reading model files (GGUF and its quantized types).
//! - [`tokenizer`]: text to token ids, from what the model file carries.
//! - [`model`]: architectures behind one [`model::Model`], loading, forward passes
//!   built for editing (logits only where needed, frozen layers without autograd,
//!   MLP hooks), generation.
//! - [`train`]: the conditional-likelihood loss and the optimiser.
//! - [`data`]: edit data sets (CounterFact, zsRE, KnowEdit, EasyEdit, JSONL; one file
//!   per format) as one record type.
//! - [`edit`]: editing methods behind one trait, each owning its configuration (a TOML
//!   recipe) and listed by one registry; the locate-then-edit core they share.
//! - [`eval`]: the literature's metrics, the model's health, and the run folder they are
//!   written to.
//! - [`protocols`]: an editor and then the evaluator (single, batch, sequential), and
//!   sweeps over settings, with the checks around an edit as a list; the only layer that
//!   uses both `edit` and `eval`.
//! - [`report`]: what runs wrote, read back: the HTML page, SVG plots, merged shards.
//!
//! The manual (`docs/`, an mdBook) describes the layers and how to add a method or an
//! architecture.
//! - [`runtime`], [`progress`], [`cache`], [`output`]: devices and the libtorch runtime;
//!   progress bars; the on-disk cache; writing files without losing a user's (unique
//!   temporaries, held signals, run-folder locks).
//!
//! ```
//! use ftedit::model::{ArchConfig, Model};
//! use ftedit::{Input, LogitsAt};
//!
//! // A tiny random llama; `ftedit::load(path, &LoadOptions::default())` loads a real one.
//! let config = ArchConfig::from_hf(&serde_json::json!({
//!     "model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
//!     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
//! }))?;
//! let model = Model::random(config, 0, 0.02, tch::Kind::Float, tch::Device::Cpu)?;
//!
//! // A right-padded batch; logits for each row's last token only.
//! let input = Input::right_padded(&[vec![1, 2, 3], vec![4, 5]], model.device())?;
//! assert_eq!(model.forward(&input, &LogitsAt::Last)?.size(), [2, 100]);
//! // Or at chosen (row, position) pairs: the vocabulary projection runs only there.
//! let some = model.forward(&input, &LogitsAt::Positions(vec![(0, 1), (1, 0)]))?;
//! assert_eq!(some.size(), [2, 100]);
//!
//! // Train layer 1's MLP: layer 0 then runs without an autograd graph.
//! model.params.set_trainable("model.layers.1.mlp.*", true)?;
//! assert_eq!(model.grad_from(), 2);
//! # Ok::<(), ftedit::Error>(())
//! ```

pub mod cache;
pub mod data;
pub mod edit;
pub mod error;
pub mod eval;
pub mod formats;
pub mod model;
pub mod output;
pub mod progress;
pub mod protocols;
pub mod report;
pub mod runtime;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
pub use model::{Input, LoadOptions, LogitsAt, Model, load};
pub use tokenizer::Tokenizer;

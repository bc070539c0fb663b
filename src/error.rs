//! The library's one error type. Every variant names the file, tensor or field that went
//! wrong, so a user can act on the message without a backtrace.

use std::path::PathBuf;

/// Errors from loading, tokenising and running models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not a model we can read: {reason}")]
    Format { path: PathBuf, reason: String },

    #[error("{path}: file is truncated or corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    #[error("tensor {name}: unsupported tensor type {dtype}")]
    UnsupportedType { name: String, dtype: String },

    #[error(
        "unknown or unsupported architecture '{0}' (supported: llama, mistral, qwen2, qwen3, phi3, gemma3 (gemma3_text), gpt2, gptj, gpt_neox (GGUF: gptneox))"
    )]
    UnknownArchitecture(String),

    #[error("model config: {0}")]
    Config(String),

    #[error("tensor {name} is missing from the checkpoint")]
    MissingTensor { name: String },

    #[error("tensor {name}: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },

    #[error("{path}: record {index}: field '{field}': {reason}")]
    Record {
        path: PathBuf,
        index: usize,
        field: String,
        reason: String,
    },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("input of {len} tokens is longer than the model's context of {max} tokens")]
    ContextOverflow { len: usize, max: usize },

    #[error("--set {key}: {reason}")]
    Setting { key: String, reason: String },

    #[error("invalid input: {0}")]
    Input(String),

    #[error("no parameter matches '{0}'")]
    NoMatch(String),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result with the library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

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

    #[error("{path}: {reason}")]
    Data { path: PathBuf, reason: String },

    #[error("{path}: {reason}")]
    Output { path: PathBuf, reason: String },

    #[error("{path} is being written by another ftedit run{}; wait for it to finish or use another --out", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { path: PathBuf, pid: Option<i32> },

    #[error("interrupted by {}; nothing was left half-written", signal_name(*.signal))]
    Interrupted { signal: i32 },

    /// Training stopped on a non-finite or runaway loss; the message names the setting
    /// to lower.
    #[error("training diverged: {0}; the model is left unchanged")]
    Diverged(String),

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

    #[error("record {id}: {inner}")]
    AtRecord { id: String, inner: Box<Error> },

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

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT (Ctrl-C)".into(),
        libc::SIGTERM => "SIGTERM".into(),
        s => format!("signal {s}"),
    }
}

impl Error {
    /// The exit status the command line gives this error: 128 + the signal for an
    /// interruption (as a shell reports a process the signal ended), else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Interrupted { signal } => 128 + signal,
            _ => 1,
        }
    }

    /// This error, said of the record `id` (once: an error already about a record is
    /// kept as it is).
    pub fn at_record(self, id: &str) -> Self {
        match self {
            Error::AtRecord { .. } | Error::Record { .. } | Error::Interrupted { .. } => self,
            inner => Error::AtRecord {
                id: id.to_owned(),
                inner: Box::new(inner),
            },
        }
    }

    pub(crate) fn data(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn output(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Output {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

//! The default models that `./setup.sh` fetches, by short name.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Short name → file name inside the models folder.
pub const DEFAULT_MODELS: &[(&str, &str)] = &[
    ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("gemma3", "gemma-3-270m-q4_k_m.gguf"),
    ("qwen2", "qwen2.5-coder-0.5b-instruct.gguf"),
    ("qwen2-1.5b", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
];

/// The models `./setup.sh` fetches unless `FTEDIT_MODELS` names others.
const FETCHED_BY_DEFAULT: &[&str] = &["smollm2", "gemma3"];

/// The models folder: `$FTEDIT_MODELS`, else `./models`, else the repository's `models/`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FTEDIT_MODELS") {
        return PathBuf::from(dir);
    }
    let local = PathBuf::from("models");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// Resolves `--model`: an existing path as is, or a default model's short name.
pub fn resolve(name: &str) -> Result<PathBuf> {
    let path = Path::new(name);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    match DEFAULT_MODELS.iter().find(|(short, _)| *short == name) {
        Some((short, file)) => {
            let p = models_dir().join(file);
            if p.exists() {
                Ok(p)
            } else {
                Err(Error::Input(format!(
                    "default model '{short}' is not in {} (run ./setup.sh{})",
                    models_dir().display(),
                    if FETCHED_BY_DEFAULT.contains(short) {
                        String::new()
                    } else {
                        format!(" with FTEDIT_MODELS=\"smollm2 gemma3 {short}\"")
                    }
                )))
            }
        }
        None => Err(Error::Input(format!(
            "model '{name}' is neither an existing path nor a default model ({})",
            DEFAULT_MODELS
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

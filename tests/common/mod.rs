//! Shared helpers of the integration tests: where the default models and the
//! reference values live.
#![allow(dead_code)]

use std::path::PathBuf;

use ftedit::model::registry;
use ftedit::{LoadOptions, Model, Tokenizer};

/// `../shared` next to the repository, or `$FTEDIT_SHARED`.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("FTEDIT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

pub fn reference(model: &str, file: &str) -> serde_json::Value {
    let path = shared_dir().join("reference").join(model).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Loads a default model (fetched by ./setup.sh); fails loudly when it is missing,
/// since CI must run these tests.
pub fn load(name: &str) -> (Model, Tokenizer) {
    let path = registry::resolve(name).unwrap_or_else(|e| panic!("{e}"));
    ftedit::load(&path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

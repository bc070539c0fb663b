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

use ftedit::model::{ArchConfig, gemma3, gpt2, llama};
use tch::{Device, Kind};

/// The device tests run on: `$FTEDIT_TEST_DEVICE` (cpu, cuda), cpu by default.
pub fn test_device() -> Device {
    let name = std::env::var("FTEDIT_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    ftedit::runtime::parse_device(&name).unwrap()
}

pub fn tiny_llama(bias: bool) -> ArchConfig {
    ArchConfig::Llama(llama::Config {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 64,
        tie_word_embeddings: !bias,
        attention_bias: bias,
        sliding_window: None,
    })
}

pub fn tiny_gemma3(window: usize, all_sliding: bool) -> ArchConfig {
    let layers = 6;
    ArchConfig::Gemma3(gemma3::Config {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: layers,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 16,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        rope_local_base_freq: 10_000.0,
        sliding_window: window,
        layer_types: (0..layers).map(|i| all_sliding || i % 6 != 5).collect(),
        query_pre_attn_scalar: 16.0,
        max_position_embeddings: 64,
        tie_word_embeddings: true,
    })
}

pub fn tiny_gpt2() -> ArchConfig {
    ArchConfig::Gpt2(gpt2::Config {
        vocab_size: 64,
        n_positions: 64,
        n_embd: 32,
        n_layer: 2,
        n_head: 4,
        n_inner: 128,
        layer_norm_epsilon: 1e-5,
        tie_word_embeddings: true,
    })
}

/// One tiny configuration of every architecture.
pub fn tiny_configs() -> Vec<ArchConfig> {
    vec![tiny_llama(false), tiny_llama(true), tiny_gemma3(4, false), tiny_gpt2()]
}

pub fn random_model(config: ArchConfig, kind: Kind) -> Model {
    Model::random(config, 7, 0.2, kind, test_device()).unwrap()
}

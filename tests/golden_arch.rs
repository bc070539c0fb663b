//! Architectures against transformers: tiny random checkpoints that transformers wrote
//! (tools/make_arch_fixtures.py, committed under tests/fixtures/arch/) load in ftedit
//! and give transformers' float32 next-token log-probabilities within 1e-4 at every
//! position (reference.json, computed by the same script).

use ftedit::model::{Input, LogitsAt};
use ftedit::{LoadOptions, load};
use tch::{Kind, Tensor};

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/arch")
        .join(name)
}

/// ftedit's log-probabilities `[T, V]` for the fixture's ids, and transformers'.
fn logprobs(name: &str) -> (Tensor, Tensor) {
    let dir = fixture(name);
    let (m, _) = load(&dir, &LoadOptions::default()).unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let ids: Vec<u32> = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let want: Vec<Vec<f64>> = serde_json::from_value(r["logprobs"].clone()).unwrap();
    let want = Tensor::from_slice2(&want);
    let got = m
        .forward(
            &Input::right_padded(&[&ids], m.device()).unwrap(),
            &LogitsAt::All,
        )
        .unwrap()
        .squeeze_dim(0)
        .log_softmax(-1, Kind::Double);
    (got, want)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn llama3_and_linear_rope_scaling_match_transformers() {
    let (l3, l3_want) = logprobs("llama3-rope");
    let (lin, lin_want) = logprobs("linear-rope");
    assert!(
        max_diff(&l3, &l3_want) < 1e-4,
        "llama3: {}",
        max_diff(&l3, &l3_want)
    );
    assert!(
        max_diff(&lin, &lin_want) < 1e-4,
        "linear: {}",
        max_diff(&lin, &lin_want)
    );
    // The two fixtures share their weights (same seed): only the scaling differs, and
    // it moves the outputs, so the test sees a wrong scaling.
    assert!(max_diff(&l3_want, &lin_want) > 1e-3);
}

/// Qwen3's per-head q/k RMSNorms carry random weights in the fixture, so leaving them
/// out, or applying them after the rotary embedding, misses by far more than 1e-4.
#[test]
fn qwen3_matches_transformers() {
    let (got, want) = logprobs("qwen3");
    assert!(
        max_diff(&got, &want) < 1e-4,
        "qwen3: {}",
        max_diff(&got, &want)
    );
}

/// Phi-3: fused qkv_proj and gate_up_proj, and a sliding window of 8 over 12 tokens.
#[test]
fn phi3_matches_transformers() {
    let (got, want) = logprobs("phi3");
    assert!(
        max_diff(&got, &want) < 1e-4,
        "phi3: {}",
        max_diff(&got, &want)
    );
}

/// GPT-J: parallel attention and MLP, interleaved rotary on 4 of 8 head dimensions,
/// a biased head (biases and LayerNorm weights random in the fixture).
#[test]
fn gptj_matches_transformers() {
    let (got, want) = logprobs("gptj");
    assert!(
        max_diff(&got, &want) < 1e-4,
        "gptj: {}",
        max_diff(&got, &want)
    );
}

/// GPT-NeoX with its parallel residual and with the sequential one: the fused per-head
/// QKV and rotate-half rotary on half of each head. The two fixtures share weights, so
/// the residual kind is seen.
#[test]
fn gpt_neox_matches_transformers() {
    let (par, par_want) = logprobs("gpt_neox");
    let (seq, seq_want) = logprobs("gpt_neox-sequential");
    assert!(
        max_diff(&par, &par_want) < 1e-4,
        "parallel: {}",
        max_diff(&par, &par_want)
    );
    assert!(
        max_diff(&seq, &seq_want) < 1e-4,
        "sequential: {}",
        max_diff(&seq, &seq_want)
    );
    assert!(max_diff(&par_want, &seq_want) > 1e-3);
}

#[test]
fn an_unsupported_rope_scaling_is_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("ftedit-yarn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("llama3-rope").join(f), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("llama3-rope").join("config.json")).unwrap(),
    )
    .unwrap();
    cfg["rope_parameters"]["rope_type"] = "dynamic".into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let err = load(&dir, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("'dynamic' is not supported"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

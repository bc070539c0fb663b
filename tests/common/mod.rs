//! Shared helpers of the integration tests: where the default models and the
//! reference values live.
#![allow(dead_code)]

use std::path::PathBuf;

use ftedit::data::{EditRecord, Suite};
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
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

use ftedit::model::{ArchConfig, gemma3, gpt_neox, gpt2, gptj, llama};
use tch::{Device, Kind};

/// The device tests run on: `$FTEDIT_TEST_DEVICE` (cpu, cuda), cpu by default.
pub fn test_device() -> Device {
    let name = std::env::var("FTEDIT_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    ftedit::runtime::parse_device(&name).unwrap()
}

pub fn tiny_llama(bias: bool) -> ArchConfig {
    ArchConfig::Llama(llama::Config {
        vocab_size: 260,
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
        rope_scaling: Default::default(),
        qk_norm: false,
        fused: false,
    })
}

/// Phi-3: the Llama block with fused qkv_proj and gate_up_proj.
pub fn tiny_phi3() -> ArchConfig {
    let ArchConfig::Llama(mut c) = tiny_llama(false) else {
        unreachable!()
    };
    c.fused = true;
    c.tie_word_embeddings = false;
    ArchConfig::Llama(c)
}

/// Qwen3: the Llama block with per-head q/k norms.
pub fn tiny_qwen3() -> ArchConfig {
    let ArchConfig::Llama(mut c) = tiny_llama(false) else {
        unreachable!()
    };
    c.qk_norm = true;
    ArchConfig::Llama(c)
}

pub fn tiny_gemma3(window: usize, all_sliding: bool) -> ArchConfig {
    let layers = 6;
    ArchConfig::Gemma3(gemma3::Config {
        vocab_size: 260,
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
        vocab_size: 260,
        n_positions: 64,
        n_embd: 32,
        n_layer: 2,
        n_head: 4,
        n_inner: 128,
        layer_norm_epsilon: 1e-5,
        tie_word_embeddings: true,
    })
}

pub fn tiny_gptj() -> ArchConfig {
    ArchConfig::Gptj(gptj::Config {
        vocab_size: 260,
        n_positions: 64,
        n_embd: 32,
        n_layer: 2,
        n_head: 4,
        rotary_dim: 4,
        n_inner: 64,
        layer_norm_epsilon: 1e-5,
    })
}

pub fn tiny_gpt_neox(parallel: bool) -> ArchConfig {
    ArchConfig::GptNeox(gpt_neox::Config {
        vocab_size: 260,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 64,
        layer_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rotary_ndims: 4,
        use_parallel_residual: parallel,
        attention_bias: true,
        gelu_tanh: false,
    })
}

/// One tiny configuration of every architecture.
pub fn tiny_configs() -> Vec<ArchConfig> {
    vec![
        tiny_llama(false),
        tiny_llama(true),
        tiny_qwen3(),
        tiny_phi3(),
        tiny_gemma3(4, false),
        tiny_gpt2(),
        tiny_gptj(),
        tiny_gpt_neox(true),
        tiny_gpt_neox(false),
    ]
}

pub fn random_model(config: ArchConfig, kind: Kind) -> Model {
    Model::random(config, 7, 0.2, kind, test_device()).unwrap()
}

use ftedit::formats::gguf::{GgufWriter, Value};
use ftedit::formats::quant::GgmlType;
use tch::Tensor;

/// GPT-2's byte → printable-character table, which byte-level BPE vocabularies use.
pub fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).unwrap();
    }
    table
}

/// A byte-level BPE vocabulary of the 256 bytes plus two merges ("Ġt", "he").
pub fn tiny_bpe_metadata() -> Vec<(String, Value)> {
    let mut tokens: Vec<Value> = bytes_to_unicode()
        .iter()
        .map(|c| Value::String(c.to_string()))
        .collect();
    tokens.push(Value::String("Ġt".into()));
    tokens.push(Value::String("he".into()));
    let merges = vec![Value::String("Ġ t".into()), Value::String("h e".into())];
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ]
}

/// The GGUF name of a Hugging Face parameter and the change of layout on the way,
/// written out independently of the loader so that a round trip tests its table.
fn to_gguf(arch: &str, name: &str, t: &Tensor, heads: i64, kv_heads: i64) -> (String, Tensor) {
    let global = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        ("transformer.wte.weight", "token_embd.weight"),
        ("transformer.wpe.weight", "position_embd.weight"),
        ("transformer.ln_f.weight", "output_norm.weight"),
        ("transformer.ln_f.bias", "output_norm.bias"),
        ("lm_head.bias", "output.bias"),
        ("gpt_neox.embed_in.weight", "token_embd.weight"),
        ("gpt_neox.final_layer_norm.weight", "output_norm.weight"),
        ("gpt_neox.final_layer_norm.bias", "output_norm.bias"),
        ("embed_out.weight", "output.weight"),
    ];
    let layer = [
        ("input_layernorm", "attn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("self_attn.qkv_proj", "attn_qkv"),
        ("mlp.gate_up_proj", "ffn_up"),
        ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"),
        (
            "post_attention_layernorm",
            if arch == "gemma3" {
                "post_attention_norm"
            } else {
                "ffn_norm"
            },
        ),
        ("pre_feedforward_layernorm", "ffn_norm"),
        ("post_feedforward_layernorm", "post_ffw_norm"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
        ("ln_1", "attn_norm"),
        ("attn.c_attn", "attn_qkv"),
        ("attn.c_proj", "attn_output"),
        ("ln_2", "ffn_norm"),
        ("mlp.c_fc", "ffn_up"),
        ("mlp.c_proj", "ffn_down"),
        ("attn.q_proj", "attn_q"),
        ("attn.k_proj", "attn_k"),
        ("attn.v_proj", "attn_v"),
        ("attn.out_proj", "attn_output"),
        ("mlp.fc_in", "ffn_up"),
        ("mlp.fc_out", "ffn_down"),
        ("attention.query_key_value", "attn_qkv"),
        ("attention.dense", "attn_output"),
        ("mlp.dense_h_to_4h", "ffn_up"),
        ("mlp.dense_4h_to_h", "ffn_down"),
    ];
    if let Some((_, g)) = global.iter().find(|(h, _)| *h == name) {
        let t = if arch == "gemma3" && name == "model.norm.weight" {
            t + 1.0
        } else {
            t.shallow_clone()
        };
        return (g.to_string(), t);
    }
    let rest = name
        .strip_prefix("model.layers.")
        .or_else(|| name.strip_prefix("transformer.h."))
        .or_else(|| name.strip_prefix("gpt_neox.layers."))
        .unwrap();
    let (l, field) = rest.split_once('.').unwrap();
    let (base, suffix) = field.rsplit_once('.').unwrap();
    let g = layer
        .iter()
        .find(|(h, _)| *h == base)
        .unwrap_or_else(|| panic!("{name}"))
        .1;
    let permute = |t: &Tensor, n: i64| {
        let (rows, cols) = (t.size()[0], t.size()[1]);
        t.reshape([n, 2, rows / n / 2, cols])
            .transpose(1, 2)
            .reshape([rows, cols])
    };
    let t = match (arch, base, suffix) {
        ("llama", "self_attn.q_proj", "weight") => permute(t, heads),
        ("llama", "self_attn.k_proj", "weight") => permute(t, kv_heads),
        ("gemma3", b, _) if b.ends_with("norm") => t + 1.0,
        ("gpt2", b, "weight") if !b.starts_with("ln_") => t.tr().contiguous(),
        // llama.cpp's convert_hf_to_gguf.py: each head's [q k v] rows regrouped as all
        // q rows, then all k, then all v (weight and bias alike).
        ("gptneox", "attention.query_key_value", _) => {
            let per_head = t.reshape([heads, 3, -1]);
            Tensor::cat(&[0, 1, 2].map(|j| per_head.select(1, j).reshape([-1])), 0)
                .reshape(t.size().as_slice())
        }
        _ => t.shallow_clone(),
    };
    (format!("blk.{l}.{g}.{suffix}"), t)
}

fn f32_bytes(t: &Tensor) -> Vec<u8> {
    let v = Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().view(-1)).unwrap();
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Integer and float metadata keys, heads and KV heads of an architecture.
type Meta = (Vec<(&'static str, i64)>, Vec<(&'static str, f64)>, i64, i64);

/// Writes `model` (Hugging Face layout) as an F32 GGUF file in llama.cpp's layout,
/// with the tiny byte-level tokenizer.
pub fn write_gguf(model: &Model, path: &std::path::Path, context: u64) {
    let arch = model.config().gguf_name();
    let mut w = GgufWriter::new();
    let a = |k: &str| format!("{arch}.{k}");
    w.add_metadata("general.architecture", Value::String(arch.into()));
    let (ints, floats, heads, kv_heads): Meta = match model.config() {
        ArchConfig::Llama(c) => (
            vec![
                ("block_count", c.num_hidden_layers),
                ("embedding_length", c.hidden_size),
                ("feed_forward_length", c.intermediate_size),
                ("attention.head_count", c.num_attention_heads),
                ("attention.head_count_kv", c.num_key_value_heads),
            ],
            vec![
                ("attention.layer_norm_rms_epsilon", c.rms_norm_eps),
                ("rope.freq_base", c.rope_theta),
            ],
            c.num_attention_heads,
            c.num_key_value_heads,
        ),
        ArchConfig::Gemma3(c) => (
            vec![
                ("block_count", c.num_hidden_layers),
                ("embedding_length", c.hidden_size),
                ("feed_forward_length", c.intermediate_size),
                ("attention.head_count", c.num_attention_heads),
                ("attention.head_count_kv", c.num_key_value_heads),
                ("attention.key_length", c.head_dim),
                ("attention.sliding_window", c.sliding_window as i64),
            ],
            vec![
                ("attention.layer_norm_rms_epsilon", c.rms_norm_eps),
                ("rope.freq_base", c.rope_theta),
            ],
            c.num_attention_heads,
            c.num_key_value_heads,
        ),
        ArchConfig::Gpt2(c) => (
            vec![
                ("block_count", c.n_layer),
                ("embedding_length", c.n_embd),
                ("feed_forward_length", c.n_inner),
                ("attention.head_count", c.n_head),
            ],
            vec![("attention.layer_norm_epsilon", c.layer_norm_epsilon)],
            c.n_head,
            c.n_head,
        ),
        ArchConfig::Gptj(c) => (
            vec![
                ("block_count", c.n_layer),
                ("embedding_length", c.n_embd),
                ("feed_forward_length", c.n_inner),
                ("attention.head_count", c.n_head),
                ("rope.dimension_count", c.rotary_dim),
            ],
            vec![("attention.layer_norm_epsilon", c.layer_norm_epsilon)],
            c.n_head,
            c.n_head,
        ),
        ArchConfig::GptNeox(c) => {
            w.add_metadata(
                a("use_parallel_residual"),
                Value::Bool(c.use_parallel_residual),
            );
            (
                vec![
                    ("block_count", c.num_hidden_layers),
                    ("embedding_length", c.hidden_size),
                    ("feed_forward_length", c.intermediate_size),
                    ("attention.head_count", c.num_attention_heads),
                    ("rope.dimension_count", c.rotary_ndims),
                ],
                vec![
                    ("attention.layer_norm_epsilon", c.layer_norm_eps),
                    ("rope.freq_base", c.rope_theta),
                ],
                c.num_attention_heads,
                c.num_attention_heads,
            )
        }
    };
    for (k, v) in ints {
        w.add_metadata(a(k), Value::U32(v as u32));
    }
    for (k, v) in floats {
        w.add_metadata(a(k), Value::F32(v as f32));
    }
    w.add_metadata(a("context_length"), Value::U32(context as u32));
    for (k, v) in tiny_bpe_metadata() {
        w.add_metadata(k, v);
    }
    for (name, t) in model.params.iter() {
        let (g, t) = to_gguf(arch, name, t, heads, kv_heads);
        let dims = t.size().iter().rev().map(|&d| d as u64).collect();
        w.add_tensor(g, dims, GgmlType::F32, f32_bytes(&t));
    }
    w.write(path).unwrap();
}

/// A fresh temporary directory, unique to this call (tests run in parallel).
pub fn temp_dir(tag: &str) -> PathBuf {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ftedit-test-{tag}-{}-{k}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A CounterFact-style edit with only its prompt, subject and targets (id = subject).
pub fn cf_edit(subject: &str, prompt: &str, new: &str, truth: &str) -> EditRecord {
    EditRecord {
        id: subject.into(),
        suite: Suite::CounterFact,
        prompt: prompt.into(),
        subject: subject.into(),
        target_new: new.into(),
        target_true: Some(truth.into()),
        paraphrases: vec![],
        neighborhood: vec![],
        attribute_prompts: vec![],
        generation_prompts: vec![],
        relation_id: None,
        target_new_id: None,
        portability: Vec::new(),
    }
}

/// A built-in fine-tuning recipe with `sets` applied.
pub fn recipe(name: &str, sets: &[&str]) -> ftedit::edit::ft::recipe::Recipe {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    ftedit::edit::MethodConfig::load(name, None, &sets)
        .unwrap()
        .recipe()
        .unwrap_or_else(|| panic!("{name} is not a fine-tuning recipe"))
        .clone()
}

/// `n` CounterFact-style JSONL records in the tiny model's vocabulary.
pub fn counterfact_jsonl(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let data = dir.join("edits.jsonl");
    let line = |i: usize| {
        format!(
            "{{\"id\": \"r{i}\", \"prompt\": \"{{}} is in\", \"subject\": \"the {i}\", \"target_new\": \"the tea\", \"target_true\": \"the hat\", \"paraphrases\": [\"so the {i} is in\"], \"neighborhood\": [{{\"prompt\": \"the ten is in\", \"target\": \"the hat\"}}], \"generation_prompts\": [\"the {i}\"]}}\n"
        )
    };
    std::fs::write(&data, (0..n).map(line).collect::<String>()).unwrap();
    data
}

/// The `ftedit` binary of this build.
pub fn ftedit_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ftedit"))
}

/// Runs `ftedit args` to the end: (exit code, stdout, stderr). A panic fails the test
/// whatever the exit code, since every error is meant to reach the user as a message.
pub fn run_ftedit<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    args: &[S],
) -> (i32, String, String) {
    let out = std::process::Command::new(ftedit_bin())
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "ftedit {args:?} panicked:\n{stderr}"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

/// The model's most likely next token after `prompt` (with the start token).
pub fn top_token(m: &Model, tok: &Tokenizer, prompt: &str) -> u32 {
    m.next_token_logprobs(&tok.encode(prompt, true).unwrap())
        .unwrap()
        .argmax(-1, false)
        .int64_value(&[]) as u32
}

/// Starts `ftedit args`, waits until `ready` (polled every few milliseconds; the run
/// must not end first), then sends it `signal`; returns the exit code (minus the signal
/// when it killed the process) and stderr.
pub fn signal_when(
    args: &[String],
    ready: impl Fn() -> bool,
    signal: libc::c_int,
) -> (i32, String) {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let mut child = std::process::Command::new(ftedit_bin())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !ready() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was ready to be stopped"
        );
        assert!(start.elapsed().as_secs() < 120, "the run never got ready");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: signals a child process of this test.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-status.signal().unwrap_or(0)), err)
}

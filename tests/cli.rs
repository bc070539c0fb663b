//! Loading GGUF files written from known weights, and the command line on good and bad
//! input: every failure is a clear message and a non-zero exit, never a panic.

mod common;

use std::path::Path;

use common::{
    counterfact_jsonl, random_model, run_ftedit, temp_dir, tiny_configs, tiny_llama, write_gguf,
};
use ftedit::formats::gguf::{GgufFile, GgufWriter, Value};
use ftedit::formats::quant::GgmlType;
use ftedit::{Input, LoadOptions, LogitsAt};
use tch::Kind;

#[test]
fn gguf_round_trip_gives_the_same_model_for_every_architecture() {
    let dir = temp_dir("roundtrip");
    for cfg in tiny_configs() {
        let m = random_model(cfg.clone(), Kind::Float);
        let path = dir.join(format!("{}.gguf", cfg.name()));
        write_gguf(&m, &path, 64);
        let (loaded, tok) = ftedit::load(&path, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.config(), m.config(), "{}", cfg.name());
        assert_eq!(loaded.params.len(), m.params.len());
        for (name, t) in m.params.iter() {
            let got = loaded.params.get(name).unwrap().to_device(t.device());
            let d = (got - t).abs().max().double_value(&[]);
            assert!(d < 1e-6, "{}: {name} differs by {d}", cfg.name());
        }
        let ids = tok.encode("the tether", true).unwrap();
        assert_eq!(
            ids,
            vec![116, 257, 256, 101, 116, 257, 114],
            "t·he Ġt·e·t·he·r"
        );
        let input = Input::right_padded(&[&ids], m.device()).unwrap();
        let a = m.forward(&input, &LogitsAt::All).unwrap();
        let b = loaded
            .forward(&input, &LogitsAt::All)
            .unwrap()
            .to_device(a.device());
        assert!((a - b).abs().max().double_value(&[]) < 1e-5);
        // Changed tensors are written back in llama.cpp's layout (the inverse fixes):
        // the saved file loads as the changed model.
        let changed = loaded;
        {
            let _g = tch::no_grad_guard();
            for (_, t) in changed.params.iter() {
                let _ = t.shallow_clone().g_add_(&(t.randn_like() * 0.1));
            }
        }
        let saved = dir.join(format!("{}-changed.gguf", cfg.name()));
        ftedit::model::save::save_gguf(&changed, &path, &saved, false).unwrap();
        let (back, _) = ftedit::load(&saved, &LoadOptions::default()).unwrap();
        for (name, t) in changed.params.iter() {
            let d = (back.params.get(name).unwrap() - t)
                .abs()
                .max()
                .double_value(&[]);
            assert!(d < 1e-6, "{}: saved {name} differs by {d}", cfg.name());
        }
    }
}

#[test]
fn the_reader_keeps_metadata_and_tensor_tables() {
    let dir = temp_dir("reader");
    let path = dir.join("meta.gguf");
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("llama".into()));
    w.add_metadata("x.list", Value::Array(vec![Value::I32(-1), Value::I32(7)]));
    w.add_metadata("x.f64", Value::F64(0.25));
    w.add_tensor(
        "a",
        vec![3, 2],
        GgmlType::F32,
        (0..6)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect::<Vec<u8>>(),
    );
    w.add_tensor("b", vec![32], GgmlType::Q8_0, vec![0u8; 34]);
    w.write(&path).unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(
        g.get("x.list"),
        Some(&Value::Array(vec![Value::I32(-1), Value::I32(7)]))
    );
    assert_eq!(g.get_f64("x.f64").unwrap(), 0.25);
    let a = g.tensor_info("a").unwrap();
    assert_eq!(a.torch_shape(), vec![2, 3]);
    assert_eq!(g.dequantize(a).unwrap(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(g.data_offset % 32, 0);
    assert_eq!(g.tensor_info("b").unwrap().offset % 32, 0);
}

fn tiny_model_file(dir: &Path, context: u64) -> String {
    let path = dir.join("tiny.gguf");
    write_gguf(
        &random_model(tiny_llama(false), Kind::Float),
        &path,
        context,
    );
    path.to_string_lossy().into_owned()
}

#[test]
fn predict_and_generate_print_json() {
    let dir = temp_dir("cli-ok");
    let model = tiny_model_file(&dir, 64);
    let (code, out, err) = run_ftedit(&[
        "predict", "--model", &model, "--prompt", "the tea", "--top-k", "5", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["input_ids"].as_array().unwrap().len(), 5, "t·he, Ġt·e·a");
    let top = j["top_k"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    let probs: Vec<f64> = top.iter().map(|c| c["prob"].as_f64().unwrap()).collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]) && probs.iter().sum::<f64>() <= 1.0 + 1e-9);
    for c in top {
        assert!((c["prob"].as_f64().unwrap().ln() - c["logprob"].as_f64().unwrap()).abs() < 1e-9);
    }

    let (code, out, err) = run_ftedit(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "the",
        "--max-tokens",
        "6",
        "--ignore-eos",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["output_ids"].as_array().unwrap().len(), 6);
    let sampled = |seed: &str| {
        run_ftedit(&[
            "generate",
            "--model",
            &model,
            "--prompt",
            "the",
            "--max-tokens",
            "8",
            "--top-k",
            "5",
            "--seed",
            seed,
            "--ignore-eos",
            "--json",
        ])
        .1
    };
    assert_eq!(sampled("3"), sampled("3"));
}

fn expect_failure<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S], needle: &str) {
    let (code, _, err) = run_ftedit(args);
    assert_ne!(code, 0, "ftedit {args:?} should fail");
    assert!(
        err.contains(needle),
        "ftedit {args:?}: expected '{needle}' in:\n{err}"
    );
}

#[test]
fn bad_input_is_a_clear_error_never_a_panic() {
    let dir = temp_dir("cli-bad");
    let good = tiny_model_file(&dir, 16);
    let bytes = std::fs::read(&good).unwrap();

    expect_failure(
        &["predict", "--model", "/no/such/model.gguf", "--prompt", "x"],
        "/no/such/model.gguf",
    );
    // The tiny model ships no chat template.
    expect_failure(
        &["generate", "--model", &good, "--prompt", "x", "--chat"],
        "no chat template",
    );

    let truncated = dir.join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    expect_failure(
        &[
            "predict",
            "--model",
            truncated.to_str().unwrap(),
            "--prompt",
            "x",
        ],
        "truncated or corrupt",
    );
    let cut_header = dir.join("cut-header.gguf");
    std::fs::write(&cut_header, &bytes[..100]).unwrap();
    expect_failure(
        &[
            "predict",
            "--model",
            cut_header.to_str().unwrap(),
            "--prompt",
            "x",
        ],
        "truncated or corrupt",
    );

    let not_gguf = dir.join("notes.txt");
    std::fs::write(&not_gguf, "hello").unwrap();
    expect_failure(
        &[
            "predict",
            "--model",
            not_gguf.to_str().unwrap(),
            "--prompt",
            "x",
        ],
        "expected a GGUF file",
    );

    // A tensor of a type we cannot decode (IQ2_XXS, id 16).
    let g = GgufFile::open(&good).unwrap();
    let mut w = GgufWriter::new();
    w.metadata = g.metadata.clone();
    for t in &g.tensors {
        let data = g.tensor_bytes(t).unwrap().to_vec();
        if t.name == "blk.0.ffn_up.weight" {
            w.add_tensor(t.name.clone(), t.dims.clone(), GgmlType::Other(16), data);
        } else {
            w.add_tensor(t.name.clone(), t.dims.clone(), t.ty, data);
        }
    }
    let odd = dir.join("odd-type.gguf");
    w.write(&odd).unwrap();
    expect_failure(
        &["predict", "--model", odd.to_str().unwrap(), "--prompt", "x"],
        "blk.0.ffn_up.weight: unsupported tensor type ggml type 16",
    );

    // An architecture we do not know.
    let mut w = GgufWriter::new();
    w.metadata = g.metadata.clone();
    w.metadata[0].1 = Value::String("mamba".into());
    let mamba = dir.join("mamba.gguf");
    w.write(&mamba).unwrap();
    expect_failure(
        &[
            "predict",
            "--model",
            mamba.to_str().unwrap(),
            "--prompt",
            "x",
        ],
        "unknown or unsupported architecture 'mamba'",
    );

    // A prompt longer than the 16-token context.
    let long = "the ".repeat(20);
    expect_failure(
        &["predict", "--model", &good, "--prompt", &long],
        "longer than the model's context of 16",
    );
    expect_failure(
        &["generate", "--model", &good, "--prompt", &long],
        "longer than the model's context of 16",
    );

    expect_failure(
        &["predict", "--model", &good, "--prompt", ""],
        "tokenizes to nothing",
    );
    expect_failure(
        &[
            "predict", "--model", &good, "--prompt", "x", "--device", "tpu",
        ],
        "unknown device",
    );
    expect_failure(
        &["predict", "--model", "nosuchmodel", "--prompt", "x"],
        "neither an existing path nor a default model",
    );
}

/// Writes `m` as a Hugging Face folder: config.json, model.safetensors, tokenizer.json.
fn write_hf_folder(m: &ftedit::Model, dir: &Path) {
    use ftedit::model::ArchConfig;
    use serde_json::json;
    let config = match m.config() {
        ArchConfig::Llama(c) => json!({
            "model_type": if c.fused { "phi3" } else if c.qk_norm { "qwen3" } else if c.attention_bias { "qwen2" } else { "llama" },
            "head_dim": c.head_dim,
            "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
            "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings, "bos_token_id": 0, "eos_token_id": [1],
        }),
        ArchConfig::Gemma3(c) => json!({
            "model_type": "gemma3_text",
            "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim, "rms_norm_eps": c.rms_norm_eps,
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": c.rope_theta},
                "sliding_attention": {"rope_type": "default", "rope_theta": c.rope_local_base_freq},
            },
            "sliding_window": c.sliding_window,
            "layer_types": c.layer_types.iter().map(|&s| if s { "sliding_attention" } else { "full_attention" }).collect::<Vec<_>>(),
            "query_pre_attn_scalar": c.query_pre_attn_scalar,
            "max_position_embeddings": c.max_position_embeddings,
            "final_logit_softcapping": null, "attn_logit_softcapping": null,
        }),
        ArchConfig::Gpt2(c) => json!({
            "model_type": "gpt2", "vocab_size": c.vocab_size, "n_positions": c.n_positions,
            "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
            "layer_norm_epsilon": c.layer_norm_epsilon, "activation_function": "gelu_new",
        }),
        ArchConfig::Gptj(c) => json!({
            "model_type": "gptj", "vocab_size": c.vocab_size, "n_positions": c.n_positions,
            "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": c.n_inner,
            "rotary_dim": c.rotary_dim, "layer_norm_epsilon": c.layer_norm_epsilon,
        }),
        // transformers 5's layout: rotary settings in rope_parameters.
        ArchConfig::GptNeox(c) => json!({
            "model_type": "gpt_neox", "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
            "intermediate_size": c.intermediate_size, "max_position_embeddings": c.max_position_embeddings,
            "layer_norm_eps": c.layer_norm_eps, "use_parallel_residual": c.use_parallel_residual,
            "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta,
                "partial_rotary_factor": c.rotary_ndims as f64 / c.head_dim() as f64},
        }),
    };
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    // The original GPT-2 checkpoints name tensors without "transformer.".
    let tensors: Vec<(String, tch::Tensor)> = m
        .params
        .iter()
        .map(|(n, t)| {
            (
                match m.config() {
                    ArchConfig::Gpt2(_) => n.strip_prefix("transformer.").unwrap_or(n),
                    _ => n,
                }
                .to_string(),
                t.to_device(tch::Device::Cpu),
            )
        })
        .collect();
    tch::Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();

    use tokenizers::models::bpe::BPE;
    let mut vocab: tokenizers::models::bpe::Vocab = common::bytes_to_unicode()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i as u32))
        .collect();
    vocab.insert("Ġt".into(), 256);
    vocab.insert("he".into(), 257);
    let merges = vec![
        ("Ġ".to_string(), "t".to_string()),
        ("h".to_string(), "e".to_string()),
    ];
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(
        tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true),
    ));
    tok.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    tok.save(dir.join("tokenizer.json"), false).unwrap();
}

#[test]
fn hugging_face_folders_load_with_their_names_and_layouts() {
    for cfg in tiny_configs() {
        let dir = temp_dir(&format!("hf-{}", cfg.name()));
        let m = random_model(cfg.clone(), Kind::Float);
        write_hf_folder(&m, &dir);
        let (loaded, tok) = ftedit::load(&dir, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.config(), m.config(), "{}", cfg.name());
        for (name, t) in m.params.iter() {
            let got = loaded.params.get(name).unwrap().to_device(t.device());
            assert!(got.equal(t), "{}: {name}", cfg.name());
        }
        assert_eq!(
            tok.encode("the tether", true).unwrap(),
            vec![116, 257, 256, 101, 116, 257, 114]
        );
        assert_eq!(tok.decode(&[116, 257, 256]), "the t");
        // A missing tokenizer is named.
        std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
        let err = ftedit::load(&dir, &LoadOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }
}

/// Real checkpoints are sharded and half precision: a folder whose weights are bf16
/// shards listed in `model.safetensors.index.json` loads every tensor from its shard,
/// as f32 (the bf16 values exactly) or kept in bf16; a shard the index names but the
/// folder lacks is named.
#[test]
fn sharded_bf16_folders_load_from_their_index() {
    for cfg in [tiny_llama(false), common::tiny_gptj()] {
        let dir = temp_dir(&format!("sharded-{}", cfg.name()));
        let m = random_model(cfg.clone(), Kind::Float);
        write_hf_folder(&m, &dir);
        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        let names: Vec<String> = m.params.iter().map(|(n, _)| n.to_string()).collect();
        let (first, second) = names.split_at(names.len() / 2);
        let mut map = serde_json::Map::new();
        for (shard, part) in [
            ("model-00001-of-00002.safetensors", first),
            ("model-00002-of-00002.safetensors", second),
        ] {
            let tensors: Vec<(String, tch::Tensor)> = part
                .iter()
                .map(|n| (n.clone(), m.params.get(n).unwrap().to_kind(Kind::BFloat16)))
                .collect();
            tch::Tensor::write_safetensors(&tensors, dir.join(shard)).unwrap();
            for n in part {
                map.insert(n.clone(), serde_json::json!(shard));
            }
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let (f32s, _) = ftedit::load(&dir, &LoadOptions::default()).unwrap();
        let bf16 = LoadOptions {
            kind: Kind::BFloat16,
            ..LoadOptions::default()
        };
        let (halves, _) = ftedit::load(&dir, &bf16).unwrap();
        for (name, t) in m.params.iter() {
            let want = t.to_kind(Kind::BFloat16);
            let got = f32s.params.get(name).unwrap();
            assert_eq!(got.kind(), Kind::Float, "{name}");
            assert!(
                got.equal(&want.to_kind(Kind::Float)),
                "{}: {name}",
                cfg.name()
            );
            let half = halves.params.get(name).unwrap();
            assert_eq!(half.kind(), Kind::BFloat16, "{name}");
            assert!(half.equal(&want), "{}: {name}", cfg.name());
        }
        std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
        let err = ftedit::load(&dir, &LoadOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
    }
}

#[test]
fn eval_writes_reports_and_shards_merge() {
    let dir = temp_dir("cli-eval");
    let model = tiny_model_file(&dir, 64);
    let data = counterfact_jsonl(&dir, 4);
    let (d, m) = (data.to_str().unwrap(), model.as_str());
    let out = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (code, stdout, err) = run_ftedit(&[
        "eval",
        "--model",
        m,
        "--data",
        d,
        "--out",
        &out("all"),
        "--quiet",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("| ES |"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("all/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["n"], 4);
    // The run's peak memory: at least the model's weights and libtorch.
    let peak = summary["peak_rss_mb"].as_f64().expect("peak_rss_mb");
    assert!(peak > 50.0 && peak < 24_000.0, "{peak}");
    for k in [
        "ES", "PS", "NS", "EM", "PM", "NM", "S", "GE", "RS", "EM_exact",
    ] {
        assert!(
            summary["metrics"].get(k).is_some(),
            "{k} missing from {summary}"
        );
    }
    assert!(summary["metrics"]["RS"].is_null());
    assert!(summary["notes"].to_string().contains("RS not computed"));
    assert_eq!(
        std::fs::read_to_string(dir.join("all/records.jsonl"))
            .unwrap()
            .lines()
            .count(),
        4
    );

    for i in 0..2 {
        let shard = format!("{i}/2");
        let (code, _, err) = run_ftedit(&[
            "eval",
            "--model",
            m,
            "--data",
            d,
            "--shard",
            &shard,
            "--out",
            &out(&format!("s{i}")),
            "--quiet",
        ]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = run_ftedit(&[
        "report",
        "merge",
        &out("s0"),
        &out("s1"),
        "--out",
        &out("merged"),
    ]);
    assert_eq!(code, 0, "{err}");
    let merged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("merged/summary.json")).unwrap())
            .unwrap();
    assert_eq!(merged["metrics"], summary["metrics"]);

    expect_failure(
        &["eval", "--model", m, "--data", "/no/such/data.json"],
        "/no/such/data.json",
    );
    expect_failure(
        &["eval", "--model", m, "--data", d, "--method", "bogus"],
        "unknown method 'bogus'",
    );
    expect_failure(
        &["eval", "--model", m, "--data", d, "--shard", "2/2"],
        "bad shard",
    );
    // A folder holding another run's results is not mixed with a new one.
    expect_failure(
        &[
            "eval",
            "--model",
            m,
            "--data",
            d,
            "--n",
            "2",
            "--out",
            &out("all"),
            "--quiet",
        ],
        "different run",
    );
}

/// Two JSONL edits in the tiny model's vocabulary.
fn two_edits(dir: &Path) -> std::path::PathBuf {
    let edits = dir.join("edits.jsonl");
    std::fs::write(
        &edits,
        "{\"prompt\": \"{} is in\", \"subject\": \"the tea\", \"target_new\": \"the hat\"}\n{\"prompt\": \"{} is on\", \"subject\": \"the het\", \"target_new\": \"the tet\"}\n",
    )
    .unwrap();
    edits
}

#[test]
fn edit_writes_gguf_with_untouched_tensors_byte_identical_and_folders_that_reload() {
    let dir = temp_dir("cli-edit");
    let model = tiny_model_file(&dir, 64);
    let edits = two_edits(&dir);
    let out = dir.join("edited.gguf");
    let common = [
        "--edits",
        edits.to_str().unwrap(),
        "--set",
        "augment.facts=none",
        "--set",
        "augment.prefix_lengths=[[2, 3]]",
        "--set",
        "train.layers=1..1",
        "--quiet",
    ];
    // `edit` of the tiny model into `to`, with the common flags and `extra`.
    let edit_args = |to: &Path, extra: &[&str]| -> Vec<String> {
        [
            "edit",
            "--model",
            model.as_str(),
            "--out",
            to.to_str().unwrap(),
        ]
        .iter()
        .chain(&common)
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    let args = edit_args(&out, &[]);
    let (code, _, err) = run_ftedit(&args);
    assert_eq!(code, 0, "{err}");
    let (src, dst) = (
        GgufFile::open(&model).unwrap(),
        GgufFile::open(&out).unwrap(),
    );
    assert_eq!(src.metadata, dst.metadata);
    let mut changed = 0;
    for (a, b) in src.tensors.iter().zip(&dst.tensors) {
        assert_eq!((&a.name, &a.dims), (&b.name, &b.dims));
        let same = src.tensor_bytes(a).unwrap() == dst.tensor_bytes(b).unwrap();
        // Exactly the MLP of layer 1 was trained.
        assert_eq!(
            !same,
            a.name.starts_with("blk.1.ffn_") && !a.name.contains("norm"),
            "{}",
            a.name
        );
        changed += !same as usize;
    }
    assert_eq!(changed, 3);
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("edited.gguf.report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["saved"]["changed"].as_array().unwrap().len(), 3);
    assert_eq!(
        report["training"]["runs"][0]["examples"],
        serde_json::json!([2, 4, 0])
    );
    // The before/after check: one row per edit, `took` as the continuation says.
    let rows = report["check"]["edits"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let mut not_taken = 0;
    for r in rows {
        let (b, a) = (
            r["p_new_before"].as_f64().unwrap(),
            r["p_new_after"].as_f64().unwrap(),
        );
        assert!((0.0..=1.0).contains(&b) && (0.0..=1.0).contains(&a), "{r}");
        let target = r["target_new"].as_str().unwrap();
        let took = r["continuation"]
            .as_str()
            .unwrap()
            .trim_start()
            .starts_with(target);
        assert_eq!(r["took"].as_bool(), Some(took), "{r}");
        not_taken += !took as u64;
    }
    assert_eq!(report["check"]["not_taken"].as_u64(), Some(not_taken));
    for phase in ["load", "edit", "save"] {
        assert!(report["timing"][phase].as_f64().unwrap() >= 0.0, "{phase}");
    }

    expect_failure(
        &edit_args(&dir.join("fp8.gguf"), &["--precision", "fp8"]),
        "unknown precision 'fp8'",
    );
    // augment.subject adds one subject-spelling example per edit (both subjects here
    // are several tokens long).
    let spelled = dir.join("spelled.gguf");
    let args = edit_args(&spelled, &["--set", "augment.subject=true"]);
    let (code, _, err) = run_ftedit(&args);
    assert_eq!(code, 0, "{err}");
    let spelled: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("spelled.gguf.report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(spelled["training"]["runs"][0]["subject_examples"], 2);

    // An edit that cannot take (a learning rate of 1e-12) still writes the model, says
    // so in its one line, and with --require-success exits 3.
    let weak = dir.join("weak.gguf");
    let args = edit_args(&weak, &["--set", "optim.lr=1e-12", "--require-success"]);
    let (code, out_text, err) = run_ftedit(&args);
    assert_eq!(code, 3, "{out_text}{err}");
    assert!(out_text.contains("did not take"), "{out_text}");
    assert!(weak.exists());

    // The same edit written as a folder loads back with the same weights as the GGUF.
    let folder = dir.join("edited-hf");
    let args = edit_args(&folder, &[]);
    let (code, _, err) = run_ftedit(&args);
    assert_eq!(code, 0, "{err}");
    let (a, _) = ftedit::load(&out, &LoadOptions::default()).unwrap();
    let (b, tok) = ftedit::load(&folder, &LoadOptions::default()).unwrap();
    for (name, t) in a.params.iter() {
        assert!(b.params.get(name).unwrap().equal(t), "{name}");
    }
    assert_eq!(
        tok.encode("the tether", true).unwrap(),
        vec![116, 257, 256, 101, 116, 257, 114]
    );

    expect_failure(
        &[
            "edit",
            "--model",
            folder.to_str().unwrap(),
            "--edits",
            edits.to_str().unwrap(),
            "--out",
            dir.join("from-folder.gguf").to_str().unwrap(),
        ],
        "needs a GGUF input",
    );
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    expect_failure(
        &[
            "edit",
            "--model",
            model.as_str(),
            "--edits",
            empty.to_str().unwrap(),
            "--out",
            "x.gguf",
            "--format",
            "jsonl",
        ],
        "no records selected",
    );
    let blank = dir.join("blank.jsonl");
    std::fs::write(
        &blank,
        "{\"prompt\": \"{} is\", \"subject\": \"a\", \"target_new\": \"  \"}\n",
    )
    .unwrap();
    expect_failure(
        &[
            "edit",
            "--model",
            model.as_str(),
            "--edits",
            blank.to_str().unwrap(),
            "--out",
            "x.gguf",
        ],
        "target_new",
    );
    // A diverging run stops with a clear message and writes nothing.
    let nan = dir.join("nan.gguf");
    let args = edit_args(&nan, &["--set", "optim.lr=1e30", "--set", "optim.clip=0"]);
    let (code, _, err) = run_ftedit(&args);
    assert_ne!(code, 0);
    assert!(err.contains("training diverged"), "{err}");
    assert!(!nan.exists());
}

#[test]
fn rome_memit_and_alphaedit_edit_exactly_their_mlp_output_projections() {
    let dir = temp_dir("cli-locate");
    let model = tiny_model_file(&dir, 64);
    let edits = two_edits(&dir);
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "the hat is in the tea and the tet is on the het. ".repeat(40),
    )
    .unwrap();
    let cache = dir.join("cache");
    // One small ROME/MEMIT edit (tiny statistics, 5 value steps); returns its report.
    let edit = |method: &str, sets: &[&str], out: &Path| -> serde_json::Value {
        let (stats_text, stats_cache) = (
            format!("stats.text={}", text.display()),
            format!("stats.cache_dir={}", cache.display()),
        );
        let mut args = vec![
            "edit",
            "--model",
            model.as_str(),
            "--edits",
            edits.to_str().unwrap(),
            "--method",
            method,
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        for kv in [
            "stats.samples=300",
            "value.steps=5",
            stats_text.as_str(),
            stats_cache.as_str(),
        ]
        .iter()
        .chain(sets)
        {
            args.extend(["--set", kv]);
        }
        let (code, _, err) = run_ftedit(&args);
        assert_eq!(code, 0, "{method} {sets:?}: {err}");
        serde_json::from_str(
            &std::fs::read_to_string(format!("{}.report.json", out.display())).unwrap(),
        )
        .unwrap()
    };
    for (method, layers, changed) in [
        ("rome", "layer=1", vec!["blk.1.ffn_down.weight"]),
        (
            "memit",
            "layers=1..2",
            vec!["blk.1.ffn_down.weight", "blk.2.ffn_down.weight"],
        ),
    ] {
        let out = dir.join(format!("{method}.gguf"));
        let report = edit(method, &[layers], &out);
        let (src, dst) = (
            GgufFile::open(&model).unwrap(),
            GgufFile::open(&out).unwrap(),
        );
        for (a, b) in src.tensors.iter().zip(&dst.tensors) {
            let same = src.tensor_bytes(a).unwrap() == dst.tensor_bytes(b).unwrap();
            assert_eq!(
                !same,
                changed.contains(&a.name.as_str()),
                "{method}: {}",
                a.name
            );
        }
        assert_eq!(report["method"], method);
        assert_eq!(report["training"]["runs"][0]["edits"], 2);
        if method == "memit" {
            assert_eq!(report["training"]["runs"][0]["values_from_cache"], 0);
        }
    }
    // ROME's layer 1 statistics were cached and reused by MEMIT; MEMIT added layer 2's,
    // and its targets z.
    let cached = |prefix: &str| {
        std::fs::read_dir(&cache)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(prefix)
            })
            .count()
    };
    assert_eq!((cached("mom2-"), cached("memit-z-")), (2, 1));
    // Later runs read every z from the cache (no new file): the same λ twice writes the
    // same bytes, another λ still changes the update.
    let memit = |lambda: &str, out: &Path| {
        let report = edit("memit", &["layers=1..2", lambda], out);
        assert_eq!(report["training"]["runs"][0]["values_from_cache"], 2);
        std::fs::read(out).unwrap()
    };
    let first = memit("lambda=15000", &dir.join("memit-a.gguf"));
    assert_eq!(memit("lambda=15000", &dir.join("memit-b.gguf")), first);
    assert_ne!(memit("lambda=10", &dir.join("memit-l10.gguf")), first);
    assert_eq!((cached("mom2-"), cached("memit-z-")), (2, 1));
    // AlphaEdit changes the same two matrices. Its null space is set to all of the tiny
    // model's keys (their statistics barely reach a threshold of 2e-2 from 300 tokens);
    // its projections are cached beside the statistics.
    let out = dir.join("alphaedit.gguf");
    let report = edit(
        "alphaedit",
        &["layers=1..2", "nullspace_threshold=1e9"],
        &out,
    );
    let (src, dst) = (
        GgufFile::open(&model).unwrap(),
        GgufFile::open(&out).unwrap(),
    );
    for (a, b) in src.tensors.iter().zip(&dst.tensors) {
        let same = src.tensor_bytes(a).unwrap() == dst.tensor_bytes(b).unwrap();
        assert_eq!(
            !same,
            a.name.ends_with("ffn_down.weight") && !a.name.starts_with("blk.0"),
            "alphaedit: {}",
            a.name
        );
    }
    let inner = report["training"]["null_space_dims"][0].as_u64().unwrap();
    assert!(inner > 0, "{report}");
    assert_eq!(
        report["training"]["null_space_dims"][1].as_u64(),
        Some(inner)
    );
    assert_eq!(cached("alphaedit-p-"), 2);
    expect_failure(
        &[
            "edit",
            "--model",
            model.as_str(),
            "--edits",
            edits.to_str().unwrap(),
            "--method",
            "rome",
            "--set",
            "optim.lr=1",
            "--out",
            dir.join("x.gguf").to_str().unwrap(),
        ],
        "rome has no section 'optim' (settings: description, layer, value.*, stats.*, post.*)",
    );
}

#[test]
fn sweep_runs_every_combination_once_and_resumes() {
    let dir = temp_dir("cli-sweep");
    let model = tiny_model_file(&dir, 64);
    let data = counterfact_jsonl(&dir, 3);
    let out = dir.join("sweep");
    let args = [
        "sweep",
        "--model",
        model.as_str(),
        "--data",
        data.to_str().unwrap(),
        "--method",
        "ft-l",
        "--grid",
        "optim.clamp=1e-3,1e-1",
        "--grid",
        "optim.epochs=1,3",
        "--no-generation",
        "--no-exact-match",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    let (code, stdout, err) = run_ftedit(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("4 combinations (4 run now, 0 already done)"),
        "{stdout}"
    );
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap();
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(table["key_metric"], "S");
    assert_eq!(rows.iter().filter(|r| r["best"] == true).count(), 1);
    let best_s = rows
        .iter()
        .find(|r| r["best"] == true)
        .map(|r| r["metrics"]["S"].as_f64().unwrap())
        .unwrap();
    for r in rows {
        assert!(r["metrics"]["S"].as_f64().unwrap() <= best_s);
        assert!(r["seconds_per_edit"].as_f64().unwrap() > 0.0);
        assert_eq!(r["n"], 3);
    }
    assert_eq!(rows[1]["settings"][0], "optim.clamp=1e-3");
    assert_eq!(rows[1]["settings"][1], "optim.epochs=3");
    // Each combination's folder holds its effective recipe, and that file repeats the run.
    let combo = out.join(rows[3]["dir"].as_str().unwrap());
    let recipe = std::fs::read_to_string(combo.join("recipe.toml")).unwrap();
    assert!(recipe.contains("method = \"ft-l\""), "{recipe}");
    assert!(
        recipe.contains("clamp = 0.1") && recipe.contains("epochs = 3"),
        "{recipe}"
    );
    let records = std::fs::read_to_string(combo.join("records.jsonl")).unwrap();
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(md.contains("| optim.clamp | optim.epochs | S |"), "{md}");

    // Rerun: nothing runs again, nothing is rewritten.
    let (code, stdout, err) = run_ftedit(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("4 combinations (0 run now, 4 already done)"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(combo.join("records.jsonl")).unwrap(),
        records
    );

    // The recipe a run wrote reproduces its config exactly.
    let again = dir.join("again");
    let (code, _, err) = run_ftedit(&[
        "eval",
        "--model",
        model.as_str(),
        "--data",
        data.to_str().unwrap(),
        "--recipe",
        combo.join("recipe.toml").to_str().unwrap(),
        "--no-generation",
        "--no-exact-match",
        "--out",
        again.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(code, 0, "{err}");
    let config = |d: &Path| -> serde_json::Value {
        let run: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("run.json")).unwrap()).unwrap();
        run["settings"]["config"].clone()
    };
    assert_eq!(config(&again), config(&combo));
    assert_eq!(config(&again)["optim"]["clamp"], 0.1);

    // A key the method does not have stops the sweep before any run.
    let bad = dir.join("bad");
    let mut bad_args = args.to_vec();
    bad_args[8] = "optim.nope=1,2";
    bad_args[14] = bad.to_str().unwrap();
    expect_failure(
        &bad_args,
        "--set optim.nope: ft-l has no setting 'optim.nope' (settings in optim: lr,",
    );
    assert!(!bad.exists());

    let (code, stdout, _) = run_ftedit(&["methods"]);
    assert_eq!(code, 0);
    for m in ["none", "ft", "ft-naive", "ft-l", "ft-m", "rome", "memit"] {
        assert!(
            stdout.contains(&format!("\n{m}: ")) || stdout.starts_with(&format!("{m}: ")),
            "{m}"
        );
    }
    assert!(stdout.contains("--recipe paper-mass"), "{stdout}");
}

#[test]
fn a_sequential_eval_writes_its_curve_and_report_plot_draws_it() {
    let dir = temp_dir("cli-curve");
    let model = tiny_model_file(&dir, 64);
    let data = counterfact_jsonl(&dir, 4);
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "the sea is in the city and the tea is on the hat\n".repeat(8),
    )
    .unwrap();
    let (m, d, t) = (
        model.as_str(),
        data.to_str().unwrap(),
        text.to_str().unwrap(),
    );
    let out = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let eval = |protocol: &str, folder: &str| {
        run_ftedit(&[
            "eval",
            "--model",
            m,
            "--data",
            d,
            "--method",
            "ft-l",
            "--set",
            "optim.clamp=0.1",
            "--protocol",
            protocol,
            "--batch-size",
            "2",
            "--eval-every",
            "1",
            "--health-text",
            t,
            "--health-tokens",
            "40",
            "--no-generation",
            "--out",
            &out(folder),
            "--quiet",
        ])
    };
    let (code, stdout, err) = eval("sequential", "seq");
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("health: PPL"), "{stdout}");
    let curve = std::fs::read_to_string(dir.join("seq/curve.jsonl")).unwrap();
    let points: Vec<serde_json::Value> = curve
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Before editing, after the first of two steps, and the final evaluation.
    let edits: Vec<u64> = points
        .iter()
        .map(|p| p["edits"].as_u64().unwrap())
        .collect();
    assert_eq!(edits, [0, 2, 4]);
    assert!(
        points
            .iter()
            .all(|p| p["health"]["PPL"].as_f64().unwrap() > 1.0)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("seq/summary.json")).unwrap())
            .unwrap();
    assert!(summary["metrics"]["PPL_before"].as_f64().unwrap() > 1.0);
    assert!(summary["health"]["collapsed"].is_boolean());
    // A batch run beside it is one point.
    let (code, _, err) = eval("batch", "batch");
    assert_eq!(code, 0, "{err}");
    let svg = dir.join("plot/curves.svg");
    let (code, stdout, err) = run_ftedit(&[
        "report",
        "plot",
        &out("seq"),
        &out("batch"),
        "--label",
        "in turn",
        "--out",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    // The suite's three, the first batch's ES, PPL, known facts, and the general mean
    // of the default sample of downstream tasks.
    assert!(stdout.contains("2 runs, 7 metrics"), "{stdout}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains(">general.mean<"), "no general-ability panel");
    // A curve kept on its own (as bench/results keeps them) draws the same lines, named
    // after the file.
    let kept = dir.join("kept-curve.jsonl");
    std::fs::copy(dir.join("seq/curve.jsonl"), &kept).unwrap();
    let from_file = dir.join("plot/from-file.svg");
    let (code, stdout, err) = run_ftedit(&[
        "report",
        "plot",
        kept.to_str().unwrap(),
        &out("batch"),
        "--label",
        "in turn",
        "--out",
        from_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("2 runs, 7 metrics"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&from_file).unwrap(), svg);
    let (code, _, err) = run_ftedit(&[
        "report",
        "plot",
        kept.to_str().unwrap(),
        "--out",
        from_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read_to_string(&from_file)
            .unwrap()
            .contains(">kept-curve<")
    );
    std::fs::write(dir.join("empty.jsonl"), "").unwrap();
    expect_failure(
        &[
            "report",
            "plot",
            &out("empty.jsonl"),
            "--out",
            &out("x.svg"),
        ],
        "no checkpoint",
    );
    // Seven panels; the sequential run is a line in each, but in the known facts' only
    // if the random tiny model knew any of them; the batch run is a ring in each but the
    // first batch's (a mass edit has none).
    let knew = summary["health"]["known_facts"].as_u64().unwrap() > 0;
    assert_eq!(svg.matches("<polyline").count(), 6 + knew as usize, "{svg}");
    assert_eq!(svg.matches(r#"r="5""#).count(), 5 + knew as usize, "{svg}");
    for needle in [
        "in turn",
        ">batch<",
        ">edits<",
        ">NS<",
        ">PPL<",
        "ES, first batch",
    ] {
        assert!(svg.contains(needle), "{needle} missing");
    }

    // The report page puts both runs side by side, with the loss curves and the
    // sequential run's curve.
    let page = dir.join("page/report.html");
    let (code, stdout, err) = run_ftedit(&[
        "report",
        "html",
        &out("seq"),
        &out("batch"),
        "--out",
        page.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("2 runs, 8 records"), "{stdout}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(
        html.matches("<svg").count(),
        2,
        "loss and sequential charts"
    );
    assert!(html.contains("<h2>Sequential editing</h2>"));
    assert!(html.contains("<th>seq</th><th>batch</th>"), "side by side");
    assert!(html.contains(&format!(
        ">{:.2}<",
        summary["metrics"]["PPL_before"].as_f64().unwrap()
    )));
    expect_failure(
        &["report", "html", &dir.to_string_lossy(), "--out", "x.html"],
        "not a run",
    );

    // Bad input is refused before any editing.
    expect_failure(
        &[
            "eval",
            "--model",
            m,
            "--data",
            d,
            "--protocol",
            "sequential",
            "--batch-size",
            "0",
        ],
        "--batch-size 0",
    );
    expect_failure(
        &[
            "eval",
            "--model",
            m,
            "--data",
            d,
            "--protocol",
            "sequential",
            "--batch-size",
            "2",
            "--eval-every",
            "3",
        ],
        "--eval-every 3 is more than the run's 2 steps",
    );
    expect_failure(
        &[
            "eval",
            "--model",
            m,
            "--data",
            d,
            "--health-text",
            t,
            "--health-tokens",
            "100000",
        ],
        "fewer than the 100000",
    );
    expect_failure(
        &["report", "plot", &out("seq"), "--out", &out("x.png")],
        "written as SVG",
    );
    expect_failure(
        &["report", "plot", &out("nothing"), "--out", &out("x.svg")],
        "no curve.jsonl",
    );
}

/// The dtype of every tensor in a safetensors file, read from its header.
fn safetensors_dtypes(path: &Path) -> std::collections::BTreeSet<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| v["dtype"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn written_folders_keep_the_chat_template_generation_config_and_dtype() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("cli-folder-out");
    let model = tiny_model_file(&dir, 64);
    let edits = two_edits(&dir);
    let edit = |from: &str, to: &Path, extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "edit",
            "--model",
            from,
            "--edits",
            edits.to_str().unwrap(),
            "--out",
            to.to_str().unwrap(),
            "--set",
            "augment.facts=none",
            "--set",
            "train.layers=1..1",
            "--set",
            "optim.epochs=1",
            "--no-health",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect()
    };
    // GGUF in, bf16 asked for.
    let a = dir.join("a");
    let (code, _, err) = run_ftedit(&edit(&model, &a, &["--out-dtype", "bf16"]));
    assert_eq!(code, 0, "{err}");
    let st = a.join("model.safetensors");
    assert_eq!(safetensors_dtypes(&st), ["BF16".to_string()].into());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    // Without a source generation config, one from the tokenizer's BOS and EOS.
    let generation: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("generation_config.json")).unwrap())
            .unwrap();
    assert_eq!(generation["eos_token_id"], config["eos_token_id"]);
    // The weights file gets the mode every other file gets (the umask's), not 0600.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let plain = dir.join("plain.txt");
    std::fs::write(&plain, "x").unwrap();
    assert_eq!(mode(&st), mode(&plain));
    assert_eq!(mode(&st), mode(&a.join("tokenizer.json")));
    let (bf, _) = ftedit::load(&a, &LoadOptions::default()).unwrap();

    // A folder with a chat template and its own generation config, edited again: the
    // template, the generation config and the bf16 dtype (the input's) survive.
    let template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}";
    let tc = a.join("tokenizer_config.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tc).unwrap()).unwrap();
    j["chat_template"] = template.into();
    std::fs::write(&tc, j.to_string()).unwrap();
    std::fs::write(
        a.join("generation_config.json"),
        r#"{"eos_token_id": [2, 3], "temperature": 0.7}"#,
    )
    .unwrap();
    let b = dir.join("b");
    let (code, _, err) = run_ftedit(&edit(a.to_str().unwrap(), &b, &[]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        safetensors_dtypes(&b.join("model.safetensors")),
        ["BF16".to_string()].into()
    );
    assert_eq!(
        std::fs::read_to_string(b.join("chat_template.jinja")).unwrap(),
        template
    );
    let (reloaded, tok) = ftedit::load(&b, &LoadOptions::default()).unwrap();
    assert_eq!(tok.chat_template.as_deref(), Some(template));
    let generation: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("generation_config.json")).unwrap())
            .unwrap();
    assert_eq!(generation["temperature"], 0.7);
    // The layers the edit did not touch hold the same bf16 values.
    let name = "model.layers.0.self_attn.q_proj.weight";
    assert!(
        reloaded
            .params
            .get(name)
            .unwrap()
            .equal(&bf.params.get(name).unwrap())
    );

    // f16 on request; a .gguf output has no dtype to choose.
    let c = dir.join("c");
    let (code, _, err) = run_ftedit(&edit(&model, &c, &["--out-dtype", "f16"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        safetensors_dtypes(&c.join("model.safetensors")),
        ["F16".to_string()].into()
    );
    expect_failure(
        &edit(&model, &dir.join("d.gguf"), &["--out-dtype", "bf16"]),
        "--out-dtype is for folder output",
    );
    expect_failure(
        &edit(&model, &dir.join("e"), &["--out-dtype", "fp8"]),
        "unknown dtype 'fp8'",
    );

    // llama.cpp's per-frequency rope factors have no config.json form: refused, nothing
    // written.
    let ftedit::model::ArchConfig::Llama(mut c) = tiny_llama(false) else {
        unreachable!()
    };
    c.rope_scaling = ftedit::model::nn::RopeScaling::Factors(vec![1.0; (c.head_dim / 2) as usize]);
    let scaled = random_model(ftedit::model::ArchConfig::Llama(c), Kind::Float);
    let (_, tok) = ftedit::load(&model, &LoadOptions::default()).unwrap();
    let to = dir.join("factors");
    let err = ftedit::model::save::save_hf(&scaled, &tok, &to, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("rope_freqs"), "{err}");
    assert!(!to.exists());
}

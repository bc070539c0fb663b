//! Golden tests against ../shared/reference: values computed by PyTorch + transformers in
//! float32 on the same dequantized weights (see that folder's README for how).
//! Tolerances are the manual's (docs/src/design.md, Testing): token ids exact, log-probabilities within 1e-3 absolute,
//! losses and gradient norms within 1e-3 relative.

mod common;

use common::{ids, load, reference};
use ftedit::train::{AdamW, AdamWConfig, Example, Reduction, conditional_nll, target_token_nlls};
use tch::Kind;

fn check_tokenizer(model: &str) {
    let (_, tok) = load(model);
    let r = reference(model, "tokenize.json");
    assert_eq!(tok.adds_bos(), r["bos_added_by_default"].as_bool().unwrap());
    for item in r["items"].as_array().unwrap() {
        let text = item["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&item["ids"]),
            "ids of {text:?}"
        );
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&item["ids_with_special"]),
            "model input of {text:?}"
        );
        let decoded = tok.decode(&ids(&item["ids"]));
        assert_eq!(
            decoded,
            item["decoded"].as_str().unwrap(),
            "decode of {text:?}"
        );
    }
}

fn check_next_token(model: &str) {
    let (m, tok) = load(model);
    let r = reference(model, "next_token.json");
    let mut worst = 0f64;
    for p in r["prompts"].as_array().unwrap() {
        let prompt = p["prompt"].as_str().unwrap();
        let input = tok.encode(prompt, true).unwrap();
        assert_eq!(input, ids(&p["input_ids"]), "input ids of {prompt:?}");
        let lp = Vec::<f64>::try_from(m.next_token_logprobs(&input).unwrap()).unwrap();
        let top = p["top10"].as_array().unwrap();
        // The argmax must agree exactly, and every reference top-10 log-prob within 1e-3.
        let argmax = lp
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(
            argmax as u64,
            top[0]["id"].as_u64().unwrap(),
            "top-1 of {prompt:?}"
        );
        for t in top {
            let id = t["id"].as_u64().unwrap() as usize;
            let diff = (lp[id] - t["logprob"].as_f64().unwrap()).abs();
            worst = worst.max(diff);
            assert!(diff < 1e-3, "{prompt:?}: token {id} log-prob off by {diff}");
            assert_eq!(tok.decode(&[id as u32]), t["token"].as_str().unwrap());
        }
    }
    eprintln!("{model}: largest |Δ log-prob| over reference top-10s: {worst:.2e}");
}

#[test]
fn smollm2_tokenizer_matches_reference() {
    check_tokenizer("smollm2");
}

#[test]
fn gemma3_tokenizer_matches_reference() {
    check_tokenizer("gemma3");
}

#[test]
fn smollm2_next_token_logprobs_match_reference() {
    check_next_token("smollm2");
}

#[test]
fn gemma3_next_token_logprobs_match_reference() {
    check_next_token("gemma3");
}

fn rel_close(got: f64, want: f64, what: &str) {
    let rel = (got - want).abs() / want.abs().max(1e-12);
    assert!(
        rel < 1e-3,
        "{what}: got {got}, reference {want} (relative error {rel:.2e})"
    );
}

fn train_pairs(r: &serde_json::Value) -> Vec<Example> {
    r["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Example {
            prompt: ids(&p["prompt_ids"]),
            target: ids(&p["target_ids"]),
        })
        .collect()
}

#[test]
fn smollm2_training_step_matches_reference() {
    let r = reference("smollm2", "train_step.json");
    let batch = train_pairs(&r);
    let (m, tok) = load("smollm2");
    for (ex, p) in batch.iter().zip(r["pairs"].as_array().unwrap()) {
        assert_eq!(
            tok.encode(p["prompt"].as_str().unwrap(), true).unwrap(),
            ex.prompt
        );
        assert_eq!(
            tok.encode(p["target"].as_str().unwrap(), false).unwrap(),
            ex.target
        );
    }

    // Per-token NLLs of a right-padded batch.
    let nlls = target_token_nlls(&m, &batch).unwrap();
    for (got, want) in nlls
        .iter()
        .zip(r["per_example_target_token_nll"].as_array().unwrap())
    {
        for (g, w) in got.iter().zip(want.as_array().unwrap()) {
            assert!(
                (g - w.as_f64().unwrap()).abs() < 1e-3,
                "token NLL {g} vs {w}"
            );
        }
    }

    // Losses and gradient norms with every parameter trainable.
    for (reduction, loss_key, grad_key) in [
        (
            Reduction::TokenMean,
            "loss_token_mean",
            "grad_l2_norm_token_mean_loss",
        ),
        (
            Reduction::ExampleMean,
            "loss_example_mean",
            "grad_l2_norm_example_mean_loss",
        ),
    ] {
        m.params.set_trainable("*", true).unwrap();
        for (_, t) in m.params.iter() {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let loss = conditional_nll(&m, &batch, reduction).unwrap();
        rel_close(
            loss.double_value(&[]),
            r[loss_key].as_f64().unwrap(),
            loss_key,
        );
        loss.backward();
        for (name, want) in r[grad_key].as_object().unwrap() {
            let g = m.params.get(name).unwrap().grad();
            let norm = g.to_kind(Kind::Double).norm().double_value(&[]);
            rel_close(norm, want.as_f64().unwrap(), &format!("{grad_key} {name}"));
        }
    }

    // One AdamW step on the down projections of layers 3-5, from a fresh model.
    let (m, _) = load("smollm2");
    let adam = &r["adamw"];
    m.params
        .set_trainable("model.layers.{3..5}.mlp.down_proj.weight", true)
        .unwrap();
    let before = m
        .params
        .get("model.layers.3.mlp.down_proj.weight")
        .unwrap()
        .copy();
    let mut opt = AdamW::new(
        &m.params,
        AdamWConfig {
            lr: adam["lr"].as_f64().unwrap(),
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    opt.zero_grad().unwrap();
    conditional_nll(&m, &batch, Reduction::TokenMean)
        .unwrap()
        .backward();
    opt.step().unwrap();
    let after = m.params.get("model.layers.3.mlp.down_proj.weight").unwrap();
    let update = (after.detach() - before).to_kind(Kind::Double);
    let per = &adam["per_param"]["model.layers.3.mlp.down_proj.weight"];
    rel_close(
        update.norm().double_value(&[]),
        per["update_l2"].as_f64().unwrap(),
        "update L2",
    );
    let _g = tch::no_grad_guard();
    let loss_after = conditional_nll(&m, &batch, Reduction::TokenMean).unwrap();
    rel_close(
        loss_after.double_value(&[]),
        adam["loss_token_mean_after"].as_f64().unwrap(),
        "loss after the step",
    );
}

#[test]
fn benchmark_configs_describe_the_default_models() {
    // bench/configs/*.json stand in for the models where the files cannot travel (GPU runs).
    for name in ["smollm2", "gemma3"] {
        let (m, _) = load(name);
        let path = format!("{}/bench/configs/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(
            &ftedit::model::ArchConfig::from_hf(&j).unwrap(),
            m.config(),
            "{name}"
        );
    }
}

#[test]
fn gemma3_tokenizer_converted_to_tokenizer_json_encodes_the_same() {
    // Edited models are written with a tokenizer.json for transformers: the SentencePiece
    // vocabulary becomes a byte-fallback BPE. It must tokenise exactly as the original.
    let (_, tok) = load("gemma3");
    let dir = std::env::temp_dir().join(format!("ftedit-gemma3-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    tok.save_hf(&dir).unwrap();
    let hf =
        ftedit::Tokenizer::from_file(&dir.join("tokenizer.json"), tok.bos_id, tok.eos_id).unwrap();
    let mut texts: Vec<String> = reference("gemma3", "tokenize.json")["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["text"].as_str().unwrap().to_owned())
        .collect();
    let wiki =
        std::fs::read_to_string(common::shared_dir().join("data/aux/wikitext-2-raw/wiki.test.raw"))
            .unwrap();
    texts.extend(
        wiki.lines()
            .filter(|l| !l.trim().is_empty())
            .take(200)
            .map(str::to_owned),
    );
    for t in &texts {
        assert_eq!(
            hf.encode(t, true).unwrap(),
            tok.encode(t, true).unwrap(),
            "{t:?}"
        );
        assert_eq!(
            hf.encode(t, false).unwrap(),
            tok.encode(t, false).unwrap(),
            "{t:?}"
        );
    }
    assert!(hf.adds_bos());
}

/// `--chat` on SmolLM2-Instruct: its GGUF template renders ChatML, and each of the
/// template's control tokens becomes its single id (<|im_start|> 1, <|im_end|> 2, as
/// the GGUF vocabulary numbers them) instead of being spelt out in bytes; decoding gives
/// the rendered text back. Generation in a chat stops at <|im_end|>.
#[test]
fn smollm2_chat_prompt_uses_its_template_and_control_tokens() {
    let (_, tok) = common::load("smollm2");
    let ids = tok.chat_prompt("Where is the Eiffel Tower?").unwrap();
    let text = tok.decode(&ids);
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhere is the Eiffel Tower?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 3, "{ids:?}");
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 2, "{ids:?}");
    assert_eq!(ids[0], 1);
    assert_eq!(
        &ids[ids.len() - 3..],
        &tok.encode("assistant\n", false).unwrap()[..]
    );
    assert!(tok.turn_ends().contains(&2));
    // Plain encoding is unchanged: the same text spells the control tokens out.
    assert!(tok.encode(&text, false).unwrap().len() > ids.len());
}

/// The frame of SmolLM2-Instruct's template around a user turn: ChatML up to `user⏎`
/// before, `<|im_end|>⏎<|im_start|>assistant⏎` after; it finds a question's own tokens in
/// its chat prompt.
#[test]
fn smollm2_chat_frame_finds_the_users_text() {
    let (_, tok) = common::load("smollm2");
    let frame = tok.chat_frame().unwrap().unwrap();
    assert_eq!(
        tok.decode(&frame.before),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n"
    );
    assert_eq!(
        tok.decode(&frame.after),
        "<|im_end|>\n<|im_start|>assistant\n"
    );
    let q = "Where is the Eiffel Tower?";
    let ids = tok.chat_prompt(q).unwrap();
    let span = frame.text_span(&ids).unwrap();
    assert_eq!(ids[span], tok.encode(q, false).unwrap()[..]);
    assert_eq!(frame.text_span(&tok.encode(q, true).unwrap()), None);
}

/// The chat metric on the unedited SmolLM2-Instruct: asked "The Eiffel Tower is located
/// in the city of" as a user turn, it answers with Paris (so `chat_exact` holds for
/// target Paris and fails for Rome) in a clean sentence that spells the subject intact.
#[test]
fn smollm2_chat_answers_are_scored_as_a_user_reads_them() {
    let (m, tok) = common::load("smollm2");
    let paris = common::cf_edit(
        "The Eiffel Tower",
        "{} is located in the city of",
        "Paris",
        "Rome",
    );
    let rome = common::cf_edit(
        "The Eiffel Tower",
        "{} is located in the city of",
        "Rome",
        "Paris",
    );
    let s = ftedit::eval::chat::chat_scores(&m, &tok, &[paris, rome]).unwrap();
    assert!(s[0].exact, "{:?}", s[0].answer);
    assert!(!s[1].exact, "{:?}", s[1].answer);
    assert_eq!(s[0].answer, s[1].answer, "the same question");
    assert!(s[0].clean && !s[0].repeats, "{:?}", s[0]);
}

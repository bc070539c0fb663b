//! GRACE on a real model: an edit takes, lives in the model's adapter (the weights stay
//! as they were, bit for bit), leaves an input the codebook does not cover unchanged bit
//! for bit, is written beside the model by `ftedit edit` and applied again when the
//! model is loaded, and is undone by the single protocol like a weight edit.

mod common;

use std::path::Path;

use common::{cf_edit, load, run_ftedit, top_token};
use ftedit::edit::{Editor, MethodConfig};

fn grace(sets: &[&str], tok: &ftedit::Tokenizer) -> Box<dyn Editor> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let config = MethodConfig::load("grace", None, &sets).unwrap();
    ftedit::edit::build(&config, tok, &Default::default()).unwrap()
}

#[test]
fn a_grace_edit_takes_beside_the_weights_and_leaves_other_inputs_alone() {
    let (mut m, tok) = load("smollm2");
    let rec = cf_edit(
        "The Eiffel Tower",
        "{} is located in the city of",
        "Rome",
        "Paris",
    );
    let rome = tok.encode(" Rome", false).unwrap()[0];
    assert_ne!(top_token(&m, &tok, &rec.rewrite_prompt()), rome);
    let other = "Michael Jordan plays the sport of";
    let other_before = m
        .next_token_logprobs(&tok.encode(other, true).unwrap())
        .unwrap();
    let weights = m.params.value_hashes().unwrap();

    let mut editor = grace(&["iterations=40"], &tok);
    editor
        .edit(&mut m, &tok, std::slice::from_ref(&rec))
        .unwrap();
    assert_eq!(
        top_token(&m, &tok, &rec.rewrite_prompt()),
        rome,
        "the edit did not take"
    );
    assert_eq!(
        m.params.value_hashes().unwrap(),
        weights,
        "GRACE changed a weight"
    );
    let other_after = m
        .next_token_logprobs(&tok.encode(other, true).unwrap())
        .unwrap();
    assert!(
        other_after.equal(&other_before),
        "an uncovered input changed"
    );
    let report = editor.report().unwrap();
    let e = &report["edits"][0];
    assert_eq!(
        (e["action"].as_str(), e["keys"].as_u64()),
        (Some("added"), Some(1))
    );
    assert!(e["loss"].as_f64().unwrap() < 0.1, "{report}");
    // The same edit again is covered by its key: no new key.
    editor
        .edit(&mut m, &tok, std::slice::from_ref(&rec))
        .unwrap();
    let report = editor.report().unwrap();
    assert_eq!(report["edits"][1]["action"], "covered");
    assert_eq!(report["edits"][1]["keys"], 1);
}

#[test]
fn edit_writes_the_adapter_and_loading_the_model_applies_it() {
    let dir = common::temp_dir("grace-cli");
    let edits = dir.join("edits.jsonl");
    std::fs::write(
        &edits,
        "{\"prompt\": \"{} is located in the city of\", \"subject\": \"The Eiffel Tower\", \"target_new\": \"Rome\", \"target_true\": \"Paris\"}\n",
    )
    .unwrap();
    let out = dir.join("edited.gguf");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let (code, _, err) = run_ftedit(&[
        "edit",
        "--model",
        "smollm2",
        "--edits",
        &s(&edits),
        "--method",
        "grace",
        "--set",
        "iterations=40",
        "--out",
        &s(&out),
        "--no-health",
        "--quiet",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("the edit lives in an adapter"), "{err}");
    let base = dir.join("edited.gguf.adapter");
    assert!(
        base.with_extension("adapter.json").is_file()
            && base.with_extension("adapter.safetensors").is_file()
    );
    let predict = |model: &Path| {
        let (code, stdout, err) = run_ftedit(&[
            "predict",
            "--model",
            &s(model),
            "--prompt",
            "The Eiffel Tower is located in the city of",
            "--top-k",
            "1",
            "--json",
        ]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        (
            v["top_k"][0]["token"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            err,
        )
    };
    let (token, err) = predict(&out);
    assert_eq!(token.trim(), "Rome", "{err}");
    assert!(err.contains("with the adapter beside it"), "{err}");
    // Without the adapter the file is the unedited model.
    std::fs::remove_file(base.with_extension("adapter.json")).unwrap();
    let (token, _) = predict(&out);
    assert_ne!(token.trim(), "Rome");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The single protocol undoes each GRACE edit as it undoes weight edits (the model ends
/// without a codebook); a sequential run's checkpoint keeps the codebook, so a resumed
/// run goes on from it.
#[test]
fn protocols_undo_and_keep_the_codebook_like_weights() {
    use ftedit::eval::EvalOptions;
    use ftedit::eval::run_dir::OutputDir;
    use ftedit::protocols::{self, Protocol};
    let (mut m, tok) = load("smollm2");
    let recs = vec![
        cf_edit(
            "The Eiffel Tower",
            "{} is located in the city of",
            "Rome",
            "Paris",
        ),
        cf_edit(
            "Danielle Darrieux",
            "The mother tongue of {} is",
            "English",
            "French",
        ),
    ];
    let opts = EvalOptions {
        generation: false,
        exact_match: false,
        locality: false,
        ..EvalOptions::default()
    };
    let dir = common::temp_dir("grace-protocols");
    let out = OutputDir::open(dir.join("single"), None).unwrap();
    let mut editor = grace(&["iterations=20"], &tok);
    protocols::run(
        &mut m,
        &tok,
        &recs,
        editor.as_mut(),
        Protocol::Single,
        &opts,
        &out,
    )
    .unwrap();
    assert!(m.adapter().is_none(), "the single protocol left a codebook");
    let summary = out.records().unwrap();
    assert_eq!(summary.len(), 2);

    // Sequential, one record a step with a checkpoint after each: the checkpoint holds
    // the codebook; restored into a fresh model it predicts the first edit.
    let seq = dir.join("seq");
    let out = OutputDir::open(&seq, None).unwrap();
    let mut editor = grace(&["iterations=20"], &tok);
    let protocol = Protocol::parse("sequential", 1, Some(1)).unwrap();
    protocols::run(&mut m, &tok, &recs, editor.as_mut(), protocol, &opts, &out).unwrap();
    let book = m
        .adapter()
        .expect("the codebook stays on the model")
        .saved();
    assert_eq!(book.tensors[0].1.size()[0], 2, "two keys");
    let saved = seq.join("checkpoint/ftedit_adapter.json");
    assert!(saved.is_file(), "the checkpoint has no codebook");
    let (mut fresh, _) = load("smollm2");
    let loaded = ftedit::model::adapter::read_adapter(&seq.join("checkpoint/ftedit_adapter"))
        .unwrap()
        .unwrap();
    fresh.set_adapter(Some(
        ftedit::edit::registry::adapter_from_saved(&loaded, fresh.device()).unwrap(),
    ));
    let rome = tok.encode(" Rome", false).unwrap()[0];
    assert_eq!(top_token(&fresh, &tok, &recs[0].rewrite_prompt()), rome);
    std::fs::remove_dir_all(&dir).unwrap();
}

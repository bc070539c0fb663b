//! WISE on a real model: three edits take in the side memory (the weights stay as they
//! were, bit for bit), an unrelated input is routed to the main memory (its logits bit
//! for bit), the single protocol undoes each edit, and `ftedit edit` writes the side
//! memory beside the model (its report's check reading the routed model), which loading
//! the model applies again.

mod common;

use std::path::Path;

use common::{load, run_ftedit, top_token};
use ftedit::edit::{BuildOptions, Editor, MethodConfig};

/// WISE with fewer steps than the recipe's 70, to keep the tests short.
fn wise(tok: &ftedit::Tokenizer, records: &[ftedit::data::EditRecord]) -> Box<dyn Editor> {
    let config = MethodConfig::load("wise", None, &["iterations=30".into()]).unwrap();
    let opts = BuildOptions {
        exclude: records,
        ..Default::default()
    };
    ftedit::edit::build(&config, tok, &opts).unwrap()
}

#[test]
fn three_wise_edits_take_beside_the_weights_and_unrelated_inputs_run_unchanged() {
    let (mut m, tok) = load("smollm2");
    let records = ftedit::data::load("examples/edits.jsonl", None).unwrap();
    let unrelated = [
        "The capital of Japan is",
        "Water is made of hydrogen and",
        "The first president of the United States was",
    ];
    let before: Vec<_> = unrelated
        .iter()
        .map(|p| {
            m.next_token_logprobs(&tok.encode(p, true).unwrap())
                .unwrap()
        })
        .collect();
    let weights = m.params.value_hashes().unwrap();
    let mut editor = wise(&tok, &records);
    editor.edit(&mut m, &tok, &records).unwrap();
    for r in &records {
        let want = tok.encode(&format!(" {}", r.target_new), false).unwrap()[0];
        assert_eq!(
            top_token(&m, &tok, &r.rewrite_prompt()),
            want,
            "{} did not take",
            r.target_new
        );
    }
    assert_eq!(
        m.params.value_hashes().unwrap(),
        weights,
        "WISE changed a weight"
    );
    for (p, b) in unrelated.iter().zip(&before) {
        let after = m
            .next_token_logprobs(&tok.encode(p, true).unwrap())
            .unwrap();
        assert!(after.equal(b), "'{p}' was not routed to the main memory");
    }
    let report = editor.report().unwrap();
    let edits = report["edits"].as_array().unwrap();
    assert_eq!(edits.len(), 3);
    for e in edits {
        assert!(
            e["act"].as_f64().unwrap() > e["act_out"].as_f64().unwrap(),
            "the edit's gap is not above the unrelated fact's: {e}"
        );
    }
    assert_eq!(edits[2]["edits"], 3, "one side memory holds the three");
    // The single protocol restores the model without the side memory.
    use ftedit::eval::EvalOptions;
    use ftedit::eval::run_dir::OutputDir;
    let dir = common::temp_dir("wise-single");
    let out = OutputDir::open(&dir, None).unwrap();
    m.set_adapter(None);
    let opts = EvalOptions {
        generation: false,
        exact_match: false,
        locality: false,
        ..EvalOptions::default()
    };
    let mut editor = wise(&tok, &records);
    ftedit::protocols::run(
        &mut m,
        &tok,
        &records[..1],
        editor.as_mut(),
        ftedit::protocols::Protocol::Single,
        &opts,
        &out,
    )
    .unwrap();
    assert!(
        m.adapter().is_none(),
        "the single protocol left a side memory"
    );
    let recs = out.records().unwrap();
    assert_eq!(recs.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn edit_writes_the_side_memory_and_loading_the_model_applies_it() {
    let dir = common::temp_dir("wise-cli");
    let edits = dir.join("edits.jsonl");
    std::fs::write(
        &edits,
        "{\"prompt\": \"{} is located in the city of\", \"subject\": \"The Eiffel Tower\", \"target_new\": \"Rome\", \"target_true\": \"Paris\"}\n",
    )
    .unwrap();
    let out = dir.join("edited");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let (code, _, err) = run_ftedit(&[
        "edit",
        "--model",
        "smollm2",
        "--edits",
        &s(&edits),
        "--method",
        "wise",
        "--set",
        "iterations=30",
        "--out",
        &s(&out),
        "--no-health",
        "--quiet",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("the edit lives in an adapter"), "{err}");
    // The report's check reads the routed model: the subject's own NLL, read at earlier
    // positions of the same prompt, must not decide the target's route.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ftedit_report.json")).unwrap())
            .unwrap();
    let e = &report["check"]["edits"][0];
    assert!(e["p_new_after"].as_f64().unwrap() > 0.5, "{e}");
    assert!(e["p_new_before"].as_f64().unwrap() < 0.1, "{e}");
    let json = out.join("ftedit_adapter.json");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(saved["method"], "wise");
    assert_eq!(saved["config"]["edits"], 1);
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
        v["top_k"][0]["token"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    assert_eq!(predict(&out), "Rome");
    // Without the adapter the folder is the unedited model.
    std::fs::remove_file(&json).unwrap();
    assert_ne!(predict(&out), "Rome");
    std::fs::remove_dir_all(&dir).unwrap();
}

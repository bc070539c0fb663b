//! SERAC: the router on a tiny random model (an empty memory and a query out of scope run
//! the base model bit for bit; a query in scope gets the logits of its edit in context
//! followed by the query; a similarity equal to the threshold stays with the base model),
//! and on SmolLM2 the whole path: a classifier trained by `ftedit train-editor`, three
//! edits written beside the model by `ftedit edit`, and `predict` answering with them.

mod common;

use std::path::Path;
use std::rc::Rc;

use common::{random_model, run_ftedit, tiny_llama};
use ftedit::edit::serac::{Classifier, SeracMemory};
use ftedit::model::{Input, LogitsAt};
use ftedit::tokenizer::ChatFrame;
use tch::{Kind, Tensor};

/// A memory with one edit whose key is `key` (projected space = standardised
/// embeddings of layer 1, the identity projection).
fn memory(m: &ftedit::Model, key: Tensor, context: Vec<u32>, threshold: f64) -> SeracMemory {
    let hidden = 32;
    let classifier = Classifier {
        layer: 1,
        mean: Tensor::zeros([hidden], (Kind::Float, m.device())),
        std: Tensor::ones([hidden], (Kind::Float, m.device())),
        proj: Tensor::eye(hidden, (Kind::Float, m.device())),
        model_id: m.fingerprint(&[]).unwrap(),
    };
    SeracMemory {
        classifier: Rc::new(classifier),
        threshold,
        contexts: vec![context],
        texts: vec!["context".into()],
        keys: key.view([1, hidden]),
        bos: None,
        frame: None,
    }
}

#[test]
fn the_router_answers_in_scope_queries_with_their_edit_in_context() {
    let mut m = random_model(tiny_llama(false), Kind::Float);
    let query: Vec<u32> = vec![5, 17, 42, 99, 7];
    let other: Vec<u32> = vec![200, 3, 3, 150];
    let context: Vec<u32> = vec![11, 12, 13];
    let at = LogitsAt::Positions(vec![(0, 3), (0, 4), (1, 2), (1, 3)]);
    let input = Input::right_padded(&[&query, &other], m.device()).unwrap();
    let before = m.forward(&input, &at).unwrap();
    // The query's embedding (layer 1, mean over its tokens up to its first read, 0..=3).
    let e = ftedit::edit::serac::embed(&m, 1, &[query[..4].to_vec()]).unwrap();
    let e_other = ftedit::edit::serac::embed(&m, 1, &[other[..3].to_vec()]).unwrap();
    let d2 = |a: &Tensor, b: &Tensor| (a - b).square().sum(Kind::Double).double_value(&[]);
    assert!(d2(&e, &e_other) > 5.0, "the test needs two distant queries");

    // Empty of edits: the base model, bit for bit.
    let mut empty = memory(&m, e.copy(), context.clone(), 0.5);
    empty.contexts.clear();
    empty.texts.clear();
    empty.keys = Tensor::zeros([0, 32], (Kind::Float, m.device()));
    m.set_adapter(Some(Rc::new(empty)));
    assert!(m.forward(&input, &at).unwrap().equal(&before));

    // The query's own key: in scope (similarity 1); the other query is not.
    m.set_adapter(Some(Rc::new(memory(&m, e.copy(), context.clone(), 0.5))));
    let after = m.forward(&input, &at).unwrap();
    assert!(
        after.narrow(0, 2, 2).equal(&before.narrow(0, 2, 2)),
        "out of scope changed"
    );
    m.set_adapter(None);
    let joined: Vec<u32> = context.iter().chain(&query).copied().collect();
    let direct = m
        .forward(
            &Input::right_padded(&[&joined], m.device()).unwrap(),
            &LogitsAt::Positions(vec![(0, 6), (0, 7)]),
        )
        .unwrap();
    let diff = (after.narrow(0, 0, 2) - &direct)
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 1e-5, "in scope: {diff} from the edit in context");
    assert!(
        (&direct - before.narrow(0, 0, 2))
            .abs()
            .max()
            .double_value(&[])
            > 1e-3
    );

    // A similarity equal to the threshold stays with the base model (s > threshold).
    let key = &e + Tensor::full([1, 32], 0.05, (Kind::Float, m.device()));
    let probe = memory(&m, key.copy(), context.clone(), 0.5);
    // The router's own batch of queries (each sequence up to its first read), so that
    // the similarity is computed exactly as it will be.
    let queries = [query[..4].to_vec(), other[..3].to_vec()];
    let s = probe.nearest(&m, &queries).unwrap()[0].unwrap().1;
    assert!(s > 0.0 && s < 1.0, "{s}");
    m.set_adapter(Some(Rc::new(memory(&m, key.copy(), context.clone(), s))));
    assert!(m.forward(&input, &at).unwrap().equal(&before));
    m.set_adapter(Some(Rc::new(memory(&m, key, context.clone(), s * 0.999))));
    assert!(!m.forward(&input, &at).unwrap().equal(&before));

    // Generation routes each prompt once, on the prompt: the same tokens as greedy
    // decoding of the edit in context, though the generated tokens would move the
    // sequence's embedding away from the key; an unrouted prompt batched beside it
    // continues as the model alone continues it.
    m.set_adapter(Some(Rc::new(memory(&m, e.copy(), context.clone(), 0.5))));
    let opts = ftedit::model::GenerateOptions {
        max_new_tokens: 4,
        sampling: ftedit::model::Sampling::Greedy,
        ..Default::default()
    };
    let got =
        ftedit::model::generate(&m, &[query[..4].to_vec(), other[..3].to_vec()], &opts).unwrap();
    m.set_adapter(None);
    let mut in_context = context.clone();
    in_context.extend(&query[..4]);
    let want = ftedit::model::generate(&m, &[in_context], &opts).unwrap();
    assert_eq!(got[0], want[0]);
    let plain = ftedit::model::generate(&m, &[other[..3].to_vec()], &opts).unwrap();
    assert_eq!(got[1], plain[0]);
    assert_ne!(
        got[0],
        ftedit::model::generate(&m, &[query[..4].to_vec()], &opts).unwrap()[0]
    );

    // The same query as a chat turn: the classifier reads the user's text alone (the
    // same similarity as the bare query), and the edit goes inside the turn, before it.
    let frame = ChatFrame {
        before: vec![250, 251],
        after: vec![252],
    };
    let turn: Vec<u32> = [&frame.before[..], &query[..4], &frame.after[..]].concat();
    let mut chat = memory(&m, e.copy(), context.clone(), 0.5);
    chat.frame = Some(frame.clone());
    let near = chat
        .nearest(&m, &[turn.clone(), query[..4].to_vec()])
        .unwrap();
    let (s_turn, s_bare) = (near[0].unwrap().1, near[1].unwrap().1);
    assert!(
        (s_turn - s_bare).abs() < 1e-6 && s_bare > 0.999,
        "{s_turn} vs {s_bare}"
    );
    m.set_adapter(Some(Rc::new(chat)));
    let got = ftedit::model::generate(&m, std::slice::from_ref(&turn), &opts).unwrap();
    m.set_adapter(None);
    let inside: Vec<u32> = [&frame.before[..], &context, &query[..4], &frame.after[..]].concat();
    assert_eq!(
        got[0],
        ftedit::model::generate(&m, &[inside], &opts).unwrap()[0]
    );
    assert_ne!(
        got[0],
        ftedit::model::generate(&m, &[turn], &opts).unwrap()[0]
    );
}

#[test]
fn a_trained_classifier_edits_three_facts_beside_smollm2() {
    let dir = common::temp_dir("serac-cli");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let data = common::shared_dir().join("data/counterfact/easyedit_mend_format");
    // Without a classifier: the error names the command that trains one.
    let (code, _, err) = run_ftedit(&[
        "edit",
        "--model",
        "smollm2",
        "--edits",
        "examples/edits.jsonl",
        "--method",
        "serac",
        "--out",
        &s(&dir.join("no")),
        "--no-health",
        "--quiet",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("ftedit train-editor --method serac"), "{err}");
    let editor = dir.join("editor");
    let (code, out, err) = run_ftedit(&[
        "train-editor",
        "--method",
        "serac",
        "--model",
        "smollm2",
        "--data",
        &s(&data.join("counterfact-train.json")),
        "--n",
        "60",
        "--val",
        &s(&data.join("counterfact-val.json")),
        "--set",
        "train.steps=40",
        "--set",
        "train.val_every=20",
        "--set",
        "train.val_records=20",
        "--out",
        &s(&editor),
        "--quiet",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("balanced accuracy"), "{out}");
    let curve = std::fs::read_to_string(editor.join("train_curve.jsonl")).unwrap();
    assert_eq!(curve.lines().count(), 2, "{curve}");
    let recipe = editor.join("recipe.toml");
    let edited = dir.join("edited");
    let (code, _, err) = run_ftedit(&[
        "edit",
        "--model",
        "smollm2",
        "--edits",
        "examples/edits.jsonl",
        "--recipe",
        &s(&recipe),
        "--out",
        &s(&edited),
        "--no-health",
        "--quiet",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("the edit lives in an adapter"), "{err}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(edited.join("ftedit_adapter.json")).unwrap())
            .unwrap();
    assert_eq!(saved["method"], "serac");
    assert_eq!(saved["config"]["texts"].as_array().unwrap().len(), 3);
    // The edited model answers an edit's prompt as SmolLM2 answers it after the edit's
    // context (whether that flips the fact is the small model's in-context ability, which
    // the results measure), and an unrelated prompt as before.
    let top = |model: &Path, prompt: &str| {
        let (code, stdout, err) = run_ftedit(&[
            "predict",
            "--model",
            &s(model),
            "--prompt",
            prompt,
            "--top-k",
            "3",
            "--json",
        ]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        v["top_k"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["id"].as_u64().unwrap(), t["logprob"].as_f64().unwrap()))
            .collect::<Vec<_>>()
    };
    let same = |a: &[(u64, f64)], b: &[(u64, f64)]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() < 1e-5)
    };
    let base = Path::new("smollm2");
    for (prompt, target) in [
        ("The Eiffel Tower is located in the city of", "Rome"),
        ("Michael Jordan plays the sport of", "tennis"),
    ] {
        let got = top(&edited, prompt);
        let want = top(base, &format!("{prompt} {target}.\n{prompt}"));
        assert!(same(&got, &want), "{prompt}: {got:?} vs {want:?}");
        assert!(!same(&got, &top(base, prompt)), "{prompt}: not routed");
    }
    let unrelated = "The capital of Japan is";
    assert!(same(&top(&edited, unrelated), &top(base, unrelated)));
    std::fs::remove_dir_all(&dir).unwrap();
}

//! The fine-tuning editor on a real model: a 3-fact edit of SmolLM2 makes the new targets
//! the top token while unrelated facts keep theirs.

mod common;

use common::{load, shared_dir};
use ftedit::data::{EditRecord, Suite};
use ftedit::edit::augment;
use ftedit::edit::ft::FtEditor;
use ftedit::edit::recipe::Recipe;

fn edit(subject: &str, prompt: &str, new: &str, truth: &str) -> EditRecord {
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
    }
}

fn top(m: &ftedit::Model, tok: &ftedit::Tokenizer, prompt: &str) -> u32 {
    let lp = m
        .next_token_logprobs(&tok.encode(prompt, true).unwrap())
        .unwrap();
    lp.argmax(-1, false).int64_value(&[]) as u32
}

#[test]
fn a_three_fact_edit_of_smollm2_sticks_and_leaves_unrelated_facts() {
    let (mut m, tok) = load("smollm2");
    let edits = vec![
        edit(
            "The Eiffel Tower",
            "{} is located in the city of",
            "Rome",
            "Paris",
        ),
        edit(
            "Michael Jordan",
            "{} plays the sport of",
            "tennis",
            "basketball",
        ),
        edit(
            "Danielle Darrieux",
            "The mother tongue of {} is",
            "English",
            "French",
        ),
    ];
    // Facts SmolLM2 states with a clear top token, unrelated to the edits.
    let unrelated = [
        "The capital of Japan is",
        "The chemical symbol for gold is",
        "Water is made of hydrogen and",
    ];
    let before: Vec<u32> = unrelated.iter().map(|p| top(&m, &tok, p)).collect();
    for e in &edits {
        let first = tok.encode(&format!(" {}", e.target_new), false).unwrap()[0];
        assert_ne!(
            top(&m, &tok, &e.rewrite_prompt()),
            first,
            "{} is already known",
            e.target_new
        );
    }

    let recipe = Recipe::load("layers", &[]).unwrap();
    let pool_file =
        shared_dir().join("data/counterfact/easyedit_mend_format/counterfact-train.json");
    let pool = augment::fact_pool(&pool_file, None, &edits).unwrap();
    let mut ft = FtEditor::new("ft", recipe, pool, None, &tok).unwrap();
    let report = ft.train(&mut m, &tok, &edits).unwrap();
    assert_eq!(
        report.examples,
        [3, 45, 60],
        "E, P (15 per edit), R (20 per edit)"
    );
    assert!(report.loss.last().unwrap() < &report.loss[0]);
    assert!(report.trained_params.iter().all(|n| n.contains(".mlp.")));

    for e in &edits {
        let first = tok.encode(&format!(" {}", e.target_new), false).unwrap()[0];
        assert_eq!(
            top(&m, &tok, &e.rewrite_prompt()),
            first,
            "{:?} does not say {}",
            e.rewrite_prompt(),
            e.target_new
        );
    }
    for (p, b) in unrelated.iter().zip(before) {
        assert_eq!(top(&m, &tok, p), b, "{p:?} changed its answer");
    }
    // Only the MLPs of layers 3-5 moved.
    let (fresh, _) = load("smollm2");
    for (name, t) in m.params.iter() {
        let same = fresh.params.get(name).unwrap().equal(t);
        let trained = [
            "model.layers.3.mlp.",
            "model.layers.4.mlp.",
            "model.layers.5.mlp.",
        ]
        .iter()
        .any(|p| name.starts_with(p));
        assert_eq!(!same, trained, "{name}");
    }
}

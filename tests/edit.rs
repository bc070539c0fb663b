//! The fine-tuning editor end to end: a 3-fact edit of SmolLM2 makes the new targets
//! the top token while unrelated facts keep theirs, and the same recipe on a tiny random
//! model on the test device (the GPU check).

mod common;

use common::{cf_edit as edit, load, recipe, shared_dir};
use ftedit::edit::augment;
use ftedit::edit::ft::FtEditor;

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

    let recipe = recipe("layers", &[]);
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
    // 108 examples in batches of 32 are 12 steps over 3 epochs; min_steps raises that
    // to 30, and the convergence rule (optim.converge_loss) stops once the three edits
    // stay learnt, no earlier than the epochs' end.
    assert!(
        (12..30).contains(&report.steps),
        "{} steps: the convergence rule did not stop the min_steps floor",
        report.steps
    );
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

#[test]
fn lora_adapters_start_neutral_and_merge_into_the_same_model() {
    let mut m = common::random_model(common::tiny_llama(true), tch::Kind::Double);
    let n = m.params.len();
    let input = ftedit::Input::right_padded(&[vec![3u32, 17, 42, 5, 9]], m.device()).unwrap();
    let base = m.forward(&input, &ftedit::LogitsAt::All).unwrap();
    let targets: Vec<String> = m
        .params
        .names()
        .filter(|n| n.ends_with("q_proj.weight") || n.ends_with("mlp.down_proj.weight"))
        .map(str::to_owned)
        .collect();
    let adapters = m.add_lora(&targets, 4, 8.0, 0).unwrap();
    assert_eq!(adapters.len(), 2 * targets.len());
    assert!(
        adapters
            .iter()
            .all(|a| m.params.get(a).unwrap().requires_grad())
    );
    assert_eq!(
        m.params.trainable().len(),
        adapters.len(),
        "only the adapters train"
    );
    let same = m.forward(&input, &ftedit::LogitsAt::All).unwrap();
    assert!(
        (&same - &base).abs().max().double_value(&[]) < 1e-12,
        "B = 0: no change"
    );
    {
        let _g = tch::no_grad_guard();
        for a in adapters.iter().filter(|a| a.contains("lora_B")) {
            let mut b = m.params.get(a).unwrap();
            let r = b.randn_like() * 0.1;
            b.copy_(&r);
        }
    }
    let adapted = m.forward(&input, &ftedit::LogitsAt::All).unwrap();
    assert!((&adapted - &base).abs().max().double_value(&[]) > 1e-3);
    m.merge_lora().unwrap();
    assert_eq!(m.params.len(), n);
    let merged = m.forward(&input, &ftedit::LogitsAt::All).unwrap();
    assert!(
        (&merged - &adapted).abs().max().double_value(&[]) < 1e-10,
        "merging keeps the function"
    );
}

/// Per edit, the share of its target's tokens ranked first after the prompt and the
/// tokens before them (the zsRE token accuracy, `eval::zsre`).
fn token_accuracy(
    m: &ftedit::Model,
    tok: &ftedit::Tokenizer,
    edits: &[ftedit::data::EditRecord],
) -> Vec<f64> {
    let records: Vec<_> = edits.iter().collect();
    ftedit::eval::zsre::score(m, tok, &records)
        .unwrap()
        .iter()
        .map(|a| a.efficacy.unwrap())
        .collect()
}

/// The recipe end to end on the test device (`FTEDIT_TEST_DEVICE=cuda` makes it the GPU
/// check bench/device.sh runs): three edits of a tiny random llama, with sampled prefixes
/// (generation on that device) and unedited facts, take — every target token ranked first
/// after its prompt — and only the trained MLPs move, still on that device.
#[test]
fn the_recipe_flips_three_facts_of_a_tiny_model_on_the_test_device() {
    let dir = common::temp_dir("edit-tiny");
    let path = dir.join("tiny.gguf");
    let device = common::test_device();
    // Written from the CPU, loaded onto the device as a user's file would be.
    let random = ftedit::Model::random(
        common::tiny_llama(false),
        7,
        0.2,
        tch::Kind::Float,
        tch::Device::Cpu,
    )
    .unwrap();
    common::write_gguf(&random, &path, 64);
    let options = ftedit::LoadOptions {
        device,
        ..Default::default()
    };
    let (mut m, tok) = ftedit::load(&path, &options).unwrap();
    let edits = vec![
        edit("Tom", "{} lives in", "Rome", "Oslo"),
        edit("Ann", "{} plays", "chess", "golf"),
        edit("Bo", "{} speaks", "Dutch", "Greek"),
    ];
    let before = token_accuracy(&m, &tok, &edits);
    assert!(before.iter().all(|&a| a < 1.0), "already said: {before:?}");
    let pool = ["Sky is", "Snow is", "Grass is", "Fire is"]
        .iter()
        .zip([" blue", " white", " green", " hot"])
        .map(|(p, t)| augment::Fact {
            prompt: p.to_string(),
            target: t.to_string(),
        })
        .collect();
    // The tiny model has 3 layers; a random one needs a larger step than a trained one,
    // and more steps (its edits take from ~60, measured on the CPU).
    let recipe = recipe(
        "layers",
        &["train.layers=1..2", "optim.lr=1e-2", "optim.min_steps=200"],
    );
    let mut ft = FtEditor::new("ft", recipe, pool, None, &tok).unwrap();
    let report = ft.train(&mut m, &tok, &edits).unwrap();
    assert_eq!(report.examples[0], 3);
    assert!(
        report.examples[1] > 0 && report.examples[2] > 0,
        "{:?}",
        report.examples
    );
    let after = token_accuracy(&m, &tok, &edits);
    assert!(
        after.iter().all(|&a| a == 1.0),
        "token accuracy {after:?} after {} steps (loss {:?})",
        report.steps,
        report.loss.last()
    );
    for (name, t) in m.params.iter() {
        assert_eq!(t.device(), device, "{name}");
        let trained =
            name.starts_with("model.layers.1.mlp.") || name.starts_with("model.layers.2.mlp.");
        let before = random.params.get(name).unwrap().to_device(device);
        assert_eq!(!before.equal(t), trained, "{name}");
    }
}

/// `optim.stop_loss` as the reference loop (ROME's FT, EasyEdit's FT-L and FT-M,
/// LocFT-BF's code) applies it: a batch already under it takes no step, and the first
/// epoch whose batches average under it ends training. Three one-edit batches of a tiny
/// random model (initial losses ~ln 64 ≈ 4.2 nats each).
#[test]
fn stop_loss_skips_settled_batches_and_ends_on_a_settled_epoch() {
    let random = common::random_model(common::tiny_llama(false), tch::Kind::Float);
    let dir = common::temp_dir("stop-loss");
    let path = dir.join("tiny.gguf");
    common::write_gguf(&random, &path, 64);
    let edits = vec![
        edit("Tom", "{} lives in", "Rome", "Oslo"),
        edit("Ann", "{} plays", "chess", "golf"),
        edit("Bo", "{} speaks", "Dutch", "Greek"),
    ];
    let train = |stop: f64| {
        let (mut m, tok) = ftedit::load(&path, &Default::default()).unwrap();
        let sets = [
            "train.layers=1..2".to_string(),
            "optim.batch_size=1".into(),
            "optim.epochs=4".into(),
            "optim.lr=1e-2".into(),
            format!("optim.stop_loss={stop}"),
        ];
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let mut ft = FtEditor::new("ft", recipe("locft", &sets), Vec::new(), None, &tok).unwrap();
        let report = ft.train(&mut m, &tok, &edits).unwrap();
        let moved = m
            .params
            .iter()
            .any(|(name, t)| !random.params.get(name).unwrap().equal(t));
        (report.loss, moved)
    };
    // Off: every batch of every epoch steps.
    let (off, moved) = train(0.0);
    assert_eq!(off.len(), 12);
    assert!(moved);
    // Every batch already under it: no step at all, and the first epoch ends training.
    let (loss, moved) = train(1e9);
    assert_eq!(loss.len(), 3);
    assert!(!moved, "a batch under stop_loss took a step");
    // Under it for one batch only (the smallest starting loss): the others still train,
    // so training goes on past that batch and past the first epoch.
    let threshold = off[..3].iter().cloned().fold(f64::INFINITY, f64::min) + 1e-6;
    assert_eq!(off[..3].iter().filter(|&&l| l < threshold).count(), 1);
    let (loss, moved) = train(threshold);
    assert!(moved);
    assert!(loss.len() > 3, "one settled batch ended training: {loss:?}");
}

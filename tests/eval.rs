//! The evaluator against ../shared/reference: per-record unedited CounterFact NLLs and
//! zsRE token correctness for the first 50 dev records, computed in PyTorch float32
//! with MEMIT's formulas. NLLs within 1e-3, token ids and booleans exactly (except where
//! the reference's own margin is under 1e-3, where float rounding may flip them), and
//! the aggregates.

mod common;

use common::{ids, load, shared_dir};
use ftedit::data;
use ftedit::eval::{EvalOptions, RecordResult, Scores, Summary, evaluate};

fn reference_lines(model: &str, file: &str) -> Vec<serde_json::Value> {
    let path = shared_dir().join("reference").join(model).join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn run(model: &str, file: &str) -> (Vec<RecordResult>, Summary) {
    let (m, tok) = load(model);
    let records = data::load(shared_dir().join("data").join(file), None).unwrap();
    let sel = data::Selection {
        first: Some(50),
        ..Default::default()
    };
    let records = sel.apply(records);
    let opts = EvalOptions {
        exact_match: false,
        generation: false,
        ..EvalOptions::default()
    };
    let mut results = Vec::new();
    evaluate(&m, &tok, &records, &opts, &mut |r| {
        results.push(r);
        Ok(())
    })
    .unwrap();
    let summary = Summary::new(&results);
    (results, summary)
}

fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!((a - b).abs() <= tol, "{what}: {a} vs reference {b}");
}

fn check_counterfact(model: &str) {
    let (results, summary) = run(model, "counterfact/counterfact_rome_dev.json");
    let reference = reference_lines(model, "counterfact_unedited.jsonl");
    assert_eq!(results.len(), reference.len());
    for (got, want) in results.iter().zip(&reference) {
        assert_eq!(got.id, want["case_id"].to_string());
        let Scores::CounterFact(s) = &got.scores else {
            panic!("suite")
        };
        assert_eq!(s.target_new_ids, ids(&want["target_new_ids"]));
        assert_eq!(s.target_true_ids, ids(&want["target_true_ids"]));
        for (group, key) in [
            (&s.rewrite, "rewrite"),
            (&s.paraphrase, "paraphrase"),
            (&s.neighborhood, "neighborhood"),
        ] {
            let wants = want[key].as_array().unwrap();
            assert_eq!(group.len(), wants.len(), "{} {key}", got.id);
            for (p, w) in group.iter().zip(wants) {
                let what = format!("case {} {key} {:?}", got.id, p.prompt);
                assert_eq!(p.prompt, w["prompt"].as_str().unwrap());
                assert_eq!(p.prefix_ids, ids(&w["prefix_ids"]), "{what}");
                close(p.nll_new, w["nll_new"].as_f64().unwrap(), 1e-3, &what);
                close(p.nll_true, w["nll_true"].as_f64().unwrap(), 1e-3, &what);
                assert!(!p.boundary_mismatch, "{what}");
            }
        }
        for (name, v) in [("ES", s.es), ("PS", s.ps), ("NS", s.ns)] {
            assert_eq!(v, want[name].as_f64(), "case {} {name}", got.id);
        }
        for (name, v) in [("EM", s.em), ("PM", s.pm), ("NM", s.nm)] {
            close(
                v.unwrap(),
                want[name].as_f64().unwrap(),
                1e-4,
                &format!("case {} {name}", got.id),
            );
        }
    }
    let agg = &common::reference(model, "summary.json")["counterfact"];
    for (ours, theirs) in [("ES", "ES"), ("PS", "PS"), ("NS", "NS"), ("S", "Score")] {
        close(
            summary.metrics[ours].unwrap(),
            agg[theirs].as_f64().unwrap(),
            1e-9,
            ours,
        );
    }
    for k in ["EM", "PM", "NM"] {
        close(
            summary.metrics[k].unwrap(),
            agg[k].as_f64().unwrap(),
            1e-3,
            k,
        );
    }
    assert_eq!(summary.n, 50);
}

fn check_zsre(model: &str) {
    let (results, summary) = run(model, "zsre/zsre_eval_dev.json");
    let reference = reference_lines(model, "zsre_unedited.jsonl");
    let mut flips = 0;
    for (got, want) in results.iter().zip(&reference) {
        assert_eq!(got.id, want["index"].to_string());
        let Scores::Zsre(s) = &got.scores else {
            panic!("suite")
        };
        assert_eq!(s.target_ids, ids(&want["target_ids"]));
        for (group, key) in [
            (&s.rewrite_positions, "rewrite_positions"),
            (&s.paraphrase_positions, "paraphrase_positions"),
            (&s.specificity_positions, "specificity_positions"),
        ] {
            let wants = want[key].as_array().unwrap();
            assert_eq!(group.len(), wants.len(), "record {} {key}", got.id);
            for (p, w) in group.iter().zip(wants) {
                let what = format!("record {} {key} {:?}", got.id, p.input);
                assert_eq!(p.input, w["input"].as_str().unwrap(), "{what}");
                assert_eq!(p.input_ids, ids(&w["input_ids"]), "{what}");
                let answer = w
                    .get("answer_id")
                    .or_else(|| w.get("gold_id"))
                    .unwrap()
                    .as_u64()
                    .unwrap() as u32;
                assert_eq!(p.answer_id, answer, "{what}");
                if w["top2_margin"].as_f64().unwrap() < 1e-3 {
                    flips += (p.correct != w["correct"].as_bool().unwrap()) as usize;
                } else {
                    assert_eq!(
                        p.argmax_id as u64,
                        w["argmax_id"].as_u64().unwrap(),
                        "{what}"
                    );
                    assert_eq!(p.correct, w["correct"].as_bool().unwrap(), "{what}");
                }
            }
        }
    }
    let agg = &common::reference(model, "summary.json")["zsre"];
    if flips == 0 {
        for (ours, theirs) in [
            ("efficacy", "efficacy"),
            ("paraphrase", "paraphrase"),
            ("specificity", "specificity"),
            ("score", "Score"),
        ] {
            close(
                summary.metrics[ours].unwrap(),
                agg[theirs].as_f64().unwrap(),
                1e-9,
                ours,
            );
        }
    }
    assert!(flips <= 1, "{flips} near-tie positions flipped");
}

#[test]
fn smollm2_counterfact_matches_reference() {
    check_counterfact("smollm2");
}

#[test]
fn gemma3_counterfact_matches_reference() {
    check_counterfact("gemma3");
}

#[test]
fn smollm2_zsre_matches_reference() {
    check_zsre("smollm2");
}

#[test]
fn gemma3_zsre_matches_reference() {
    check_zsre("gemma3");
}

/// A tiny random model with the tiny byte-level tokenizer, double precision.
fn tiny() -> (ftedit::Model, ftedit::Tokenizer) {
    let dir = common::temp_dir("eval-tiny");
    let path = dir.join("tiny.gguf");
    common::write_gguf(
        &common::random_model(common::tiny_llama(false), tch::Kind::Double),
        &path,
        64,
    );
    let (m, t) = ftedit::load(
        &path,
        &ftedit::LoadOptions {
            kind: tch::Kind::Double,
            ..Default::default()
        },
    )
    .unwrap();
    (m, t)
}

/// Log-probabilities of one unpadded sequence, by a plain full forward pass.
fn logprobs(m: &ftedit::Model, ids: &[u32]) -> tch::Tensor {
    let input = ftedit::Input::right_padded(&[ids], m.device()).unwrap();
    m.forward(&input, &ftedit::LogitsAt::All)
        .unwrap()
        .get(0)
        .log_softmax(-1, tch::Kind::Double)
}

fn cf_record(prompt: &str, new: &str, truth: &str) -> data::EditRecord {
    common::cf_edit("go", prompt, new, truth)
}

#[test]
fn counterfact_nll_of_multi_token_targets_and_a_repeated_boundary_token() {
    let (m, tok) = tiny();
    // Prompt "go t" ends in token "Ġt"; the new target " t b" starts with it again.
    let r = cf_record("{} t", "t b", "he");
    let s = ftedit::eval::counterfact::score(&m, &tok, &[&r])
        .unwrap()
        .remove(0);
    let prompt = tok.encode("go t", true).unwrap();
    let new = tok.encode(" t b", false).unwrap();
    assert_eq!(new.len(), 3, "{new:?}");
    assert_eq!(
        new[0],
        *prompt.last().unwrap(),
        "the boundary token repeats"
    );
    let full = [prompt.clone(), new.clone()].concat();
    assert_eq!(tok.encode("go t t b", true).unwrap(), full);
    let lp = logprobs(&m, &full);
    let want: Vec<f64> = (0..3)
        .map(|j| -lp.double_value(&[(prompt.len() + j - 1) as i64, new[j] as i64]))
        .collect();
    let got = &s.rewrite[0];
    for (g, w) in got.token_nll_new.iter().zip(&want) {
        assert!((g - w).abs() < 1e-9, "{g} vs {w}");
    }
    assert!((got.nll_new - want.iter().sum::<f64>() / 3.0).abs() < 1e-9);
    // ES compares the mean NLLs; EM their exp(-NLL) difference.
    assert_eq!(s.es, Some((got.nll_new < got.nll_true) as u8 as f64));
    assert!((s.em.unwrap() - ((-got.nll_new).exp() - (-got.nll_true).exp())).abs() < 1e-12);
}

#[test]
fn zsre_accuracy_of_a_multi_token_target() {
    let (m, tok) = tiny();
    let mut r = cf_record("{} t", "the tea", "");
    r.suite = data::Suite::Zsre;
    r.target_true = None;
    let s = ftedit::eval::zsre::score(&m, &tok, &[&r])
        .unwrap()
        .remove(0);
    let t = tok.encode(" the tea", false).unwrap();
    assert_eq!(s.rewrite_positions.len(), t.len());
    let mut correct = 0;
    for (i, p) in s.rewrite_positions.iter().enumerate() {
        // Input i is the prompt followed by the first i target tokens, re-tokenized.
        let input = format!("go t{}", tok.decode(&t[..i]));
        assert_eq!(p.input, input);
        let ids = tok.encode(&input, true).unwrap();
        assert_eq!(p.input_ids, ids);
        let lp = logprobs(&m, &ids);
        let argmax = lp
            .get(ids.len() as i64 - 1)
            .argmax(-1, false)
            .int64_value(&[]) as u32;
        assert_eq!(p.argmax_id, argmax);
        assert_eq!(
            p.answer_id,
            tok.encode(&tok.decode(&t[i..=i]), false).unwrap()[0]
        );
        correct += (argmax == p.answer_id) as usize;
    }
    assert_eq!(s.efficacy, Some(correct as f64 / t.len() as f64));
}

//! MEND's invariants (EDITORS.md, "MEND"): the gradient rows it reads make autograd's
//! weight gradient; an identity editor takes the plain gradient step; only label
//! positions reach the last block; no change means no locality loss; the network's
//! gradient matches finite differences; the change applied in the forward pass equals
//! the one written into the weights; editors for another model, and a missing one, are
//! refused; `ftedit train-editor` writes its folder, resumes exactly after a kill and
//! refuses bad input.

mod common;

use std::path::Path;
use std::process::Command;

use common::{random_model, tiny_gpt2, tiny_llama};
use ftedit::edit::MethodConfig;
use ftedit::edit::mend::net::MendNet;
use ftedit::edit::mend::{Mend, MendConfig, matrices, model_id};
use ftedit::model::Model;
use ftedit::train::{Example, Reduction, conditional_nll};
use tch::{Kind, Tensor};

fn config(sets: &[&str]) -> MendConfig {
    let mut sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    sets.push("layers=last 2".into());
    match MethodConfig::load("mend", None, &sets).unwrap() {
        MethodConfig::Mend(c) => c,
        _ => unreachable!(),
    }
}

fn mend_for(model: &Model, norm: bool, alpha: f64) -> Mend {
    let c = config(&[]);
    let mats = matrices(model, &c).unwrap();
    let id = model_id(model, &mats).unwrap();
    tch::manual_seed(3);
    let net = MendNet::new(
        mats,
        16,
        norm,
        alpha,
        model.arch_name(),
        &id,
        model.device(),
    );
    Mend::new(net, model).unwrap()
}

fn ex(prompt: &[u32], target: &[u32]) -> Example {
    Example {
        prompt: prompt.to_vec(),
        target: target.to_vec(),
    }
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).norm().double_value(&[]);
    d / b.norm().double_value(&[]).max(1e-30)
}

/// Each matrix's `Σ δ xᵀ` over the rows MEND keeps, as the weight is stored.
fn outer_sums(mend: &Mend, model: &Model, e: &Example) -> Vec<(String, Tensor)> {
    let rows = mend.gradient_rows(model, std::slice::from_ref(e)).unwrap();
    let mut sums: Vec<(String, Tensor)> = Vec::new();
    for (m, x, d) in rows {
        let mat = &mend.net.meta.matrices[m];
        let g = d.tr().matmul(&x);
        let g = if mat.transposed { g.tr() } else { g };
        match sums.iter_mut().find(|(n, _)| *n == mat.name) {
            Some((_, s)) => *s = &*s + g,
            None => sums.push((mat.name.clone(), g)),
        }
    }
    sums
}

fn autograd(model: &mut Model, names: &[String], e: &Example) -> Vec<Tensor> {
    for n in names {
        model.params.set_trainable(n, true).unwrap();
    }
    let loss = conditional_nll(model, std::slice::from_ref(e), Reduction::TokenMean).unwrap();
    loss.backward();
    let grads = names
        .iter()
        .map(|n| model.params.get(n).unwrap().grad().copy())
        .collect();
    for n in names {
        model.params.set_trainable(n, false).unwrap();
    }
    grads
}

/// The core invariant, for `[out, in]` (Llama) and `[in, out]` (GPT-2 Conv1D) storage:
/// with the rows MEND reads, `Σ δ xᵀ` is the weight gradient of gate, up and down
/// (relative error < 1e-5 in f32).
#[test]
fn the_rows_mend_reads_make_the_weight_gradient() {
    for cfg in [tiny_llama(false), tiny_gpt2()] {
        let mut model = random_model(cfg, Kind::Float);
        let mend = mend_for(&model, false, 1e-4);
        let e = ex(&[5, 17, 33, 9], &[40, 41]);
        let sums = outer_sums(&mend, &model, &e);
        let names: Vec<String> = sums.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(names.len(), mend.net.meta.matrices.len());
        let grads = autograd(&mut model, &names, &e);
        for ((name, s), g) in sums.iter().zip(&grads) {
            let err = rel_err(s, g);
            assert!(
                err < 1e-5,
                "{} {name}: relative error {err}",
                model.arch_name()
            );
        }
    }
}

/// The network at initialisation, without normalisation, is the identity: the edit is
/// the plain gradient step `ΔW = α ∇W` (this sign: training learns the direction).
#[test]
fn an_untrained_editor_takes_the_plain_gradient_step() {
    let mut model = random_model(tiny_llama(false), Kind::Float);
    // α = 1: a change the size of the gradient, so f32 rounding of W + ΔW stays small.
    let alpha = 1.0;
    let mut mend = mend_for(&model, false, alpha);
    let e = ex(&[3, 8, 21], &[50]);
    let names: Vec<String> = mend
        .net
        .meta
        .matrices
        .iter()
        .map(|m| m.name.clone())
        .collect();
    let before: Vec<Tensor> = names
        .iter()
        .map(|n| model.params.get(n).unwrap().copy())
        .collect();
    let grads = autograd(&mut model, &names, &e);
    let rows = mend
        .gradient_rows(&model, std::slice::from_ref(&e))
        .unwrap();
    let f = {
        let _g = tch::no_grad_guard();
        mend.factors(&rows).unwrap()
    };
    mend.write(&mut model, &f).unwrap();
    for ((n, b), g) in names.iter().zip(&before).zip(&grads) {
        let change = model.params.get(n).unwrap() - b;
        let err = rel_err(&change, &(g * alpha));
        assert!(err < 1e-4, "{n}: relative error {err}");
    }
}

/// In the last block only the positions that predict a target token have a gradient.
#[test]
fn the_last_block_keeps_the_label_positions_only() {
    let model = random_model(tiny_llama(false), Kind::Float);
    let mend = mend_for(&model, false, 1e-4);
    let e = ex(&[3, 8, 21, 22, 23], &[50, 51, 52]);
    let last = model.num_layers() - 1;
    let rows = mend
        .gradient_rows(&model, std::slice::from_ref(&e))
        .unwrap();
    let mut seen = 0;
    for (m, x, _) in &rows {
        let name = &mend.net.meta.matrices[*m].name;
        let rows_here = x.size()[0];
        if model.layer_of(name) == Some(last) {
            assert_eq!(rows_here, 3, "{name}");
            seen += 1;
        } else {
            // Lower blocks see every position up to the last label (attention).
            assert_eq!(rows_here, 7, "{name}");
        }
    }
    assert_eq!(seen, 3, "gate, up and down of the last block");
}

/// A zero step size changes nothing: the edited model's predictions are the unedited
/// model's, bit for bit, so the locality loss is zero.
#[test]
fn no_change_leaves_the_predictions_exactly() {
    let model = random_model(tiny_llama(false), Kind::Float);
    let mut mend = mend_for(&model, false, 0.0);
    let e = ex(&[3, 8, 21], &[50]);
    let loc = ex(&[9, 10, 11, 12], &[13, 14]);
    let rows = mend
        .gradient_rows(&model, std::slice::from_ref(&e))
        .unwrap();
    let _g = tch::no_grad_guard();
    let f = mend.factors(&rows).unwrap();
    let lower = mend.lower(&model, &loc).unwrap();
    let base = mend.target_logprobs(&model, &loc, None, None).unwrap();
    for low in [None, lower.as_ref()] {
        let edited = mend.target_logprobs(&model, &loc, Some(&f), low).unwrap();
        assert!(edited.equal(&base));
    }
}

/// The edit loss's gradient along a random direction of the first layer's `U` matches
/// central finite differences (a unit direction, step 1e-2; f32: relative error < 1e-2).
#[test]
fn the_network_gradient_matches_finite_differences() {
    let model = random_model(tiny_llama(false), Kind::Float);
    let mut mend = mend_for(&model, false, 0.5);
    let params = mend.net.parameters();
    // U, b nonzero so that the ReLU passes some of U·V·h (at U = 0 its gradient is 0).
    {
        let _g = tch::no_grad_guard();
        tch::manual_seed(11);
        for i in [0, 2] {
            let mut p = params[i].shallow_clone();
            let r = p.randn_like() * 0.05;
            p.copy_(&r);
        }
    }
    let u = params[0].copy();
    let dir = u.randn_like();
    let dir = &dir / dir.norm();
    let e = ex(&[3, 8, 21], &[50]);
    let rephrase = ex(&[4, 8, 21, 7], &[50]);
    let rows = mend
        .gradient_rows(&model, std::slice::from_ref(&e))
        .unwrap();
    let loss = |mend: &mut Mend| -> Tensor {
        let f = mend.factors(&rows).unwrap();
        mend.edited_nll(&model, std::slice::from_ref(&rephrase), &f)
            .unwrap()
    };
    mend.net.set_requires_grad(true);
    let u_grad = mend.net.parameters()[0].shallow_clone();
    loss(&mut mend).backward();
    let analytic = (u_grad.grad() * &dir).sum(Kind::Double).double_value(&[]);
    mend.net.set_requires_grad(false);
    let h = 1e-2;
    let at = |s: f64, mend: &mut Mend| -> f64 {
        let _g = tch::no_grad_guard();
        let mut p = mend.net.parameters()[0].shallow_clone();
        let moved = &u + &dir * s;
        p.copy_(&moved);
        loss(mend).double_value(&[])
    };
    let plus = at(h, &mut mend);
    let minus = at(-h, &mut mend);
    let numeric = (plus - minus) / (2.0 * h);
    let err = (analytic - numeric).abs() / numeric.abs().max(1e-6);
    assert!(
        analytic.abs() > 1e-3 && err < 1e-2,
        "analytic {analytic}, numeric {numeric}"
    );
}

/// The change the forward pass applies (meta-training) and the one written into the
/// weights (an edit) give the same logits (1e-5), for both storage orders.
#[test]
fn the_applied_change_equals_the_written_one() {
    for cfg in [tiny_llama(false), tiny_gpt2()] {
        let mut model = random_model(cfg, Kind::Float);
        let mut mend = mend_for(&model, true, 1e-2);
        mend.net.training = true;
        let e = ex(&[3, 8, 21], &[50, 51]);
        let probe = ex(&[30, 31, 32, 33], &[34, 35, 36]);
        let rows = mend
            .gradient_rows(&model, std::slice::from_ref(&e))
            .unwrap();
        let _g = tch::no_grad_guard();
        let f = mend.factors(&rows).unwrap();
        let applied = mend
            .target_logprobs(&model, &probe, Some(&f), None)
            .unwrap();
        let base = mend.target_logprobs(&model, &probe, None, None).unwrap();
        mend.write(&mut model, &f).unwrap();
        let written = mend.target_logprobs(&model, &probe, None, None).unwrap();
        let diff = (&applied - &written).abs().max().double_value(&[]);
        let moved = (&applied - &base).abs().max().double_value(&[]);
        assert!(
            diff < 1e-5 && moved > 1e-3,
            "{cfg:?}: diff {diff}, moved {moved}",
            cfg = model.arch_name()
        );
    }
}

/// Without a trained editor MEND names the command that trains one; an editor trained
/// for another model (other weights) is refused, naming its file.
#[test]
fn a_missing_or_foreign_editor_is_refused() {
    let (_, tok) = common::load("smollm2");
    let model = random_model(tiny_llama(false), Kind::Float);
    let untrained = MethodConfig::load("mend", None, &[]).unwrap();
    let err = ftedit::edit::build(&untrained, &tok, &Default::default())
        .unwrap()
        .begin(&model, &tok)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("ftedit train-editor --method mend"), "{err}");

    let dir = common::temp_dir("mend-foreign");
    let path = dir.join("editor.safetensors");
    let c = config(&[]);
    let other = Model::random(tiny_llama(false), 99, 0.2, Kind::Float, model.device()).unwrap();
    let mats = matrices(&other, &c).unwrap();
    let id = model_id(&other, &mats).unwrap();
    MendNet::new(mats, 8, true, 1e-4, other.arch_name(), &id, other.device())
        .save(&path)
        .unwrap();
    let path_s = path.display().to_string();
    let mut config = MethodConfig::load(
        "mend",
        None,
        &[format!("editor={path_s}"), "layers=last 2".into()],
    )
    .unwrap();
    let mut e = ftedit::edit::build(&config, &tok, &Default::default()).unwrap();
    let err = e.begin(&model, &tok).err().unwrap().to_string();
    assert!(
        err.contains("trained for another model") && err.contains(&path_s),
        "{err}"
    );
    // The model it was trained for is accepted.
    assert!(e.begin(&other, &tok).is_ok());
    // A truncated file is an error naming it.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    if let MethodConfig::Mend(c) = &mut config {
        c.editor = path_s.clone();
    }
    let err = ftedit::edit::build(&config, &tok, &Default::default())
        .unwrap()
        .begin(&other, &tok)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(&path_s), "{err}");
}

fn ftedit_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ftedit"))
}

fn cf_train() -> std::path::PathBuf {
    common::shared_dir().join("data/counterfact/easyedit_mend_format/counterfact-train.json")
}

fn train_args(out: &Path, steps: usize) -> Vec<String> {
    [
        "train-editor",
        "--data",
        &cf_train().display().to_string(),
        "-n",
        "60",
        "--out",
        &out.display().to_string(),
        "--set",
        &format!("train.steps={steps}"),
        "--set",
        "train.val_every=6",
        "--set",
        "train.val_records=3",
        "--set",
        "train.accumulate=3",
        "--set",
        "rank=64",
        "--threads",
        "1",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A short training run writes the editor, its recipe and the curve; the recipe edits;
/// a run stopped by SIGINT and started again ends with the same editor and curve (less
/// seconds) as one that was not.
#[test]
fn train_editor_writes_its_folder_and_resumes_exactly() {
    let dir = common::temp_dir("mend-train");
    let whole = dir.join("whole");
    let out = ftedit_cmd().args(train_args(&whole, 24)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["editor.safetensors", "recipe.toml", "train_curve.jsonl"] {
        assert!(whole.join(f).is_file(), "{f}");
    }
    assert!(!whole.join("train-resume").exists());
    let curve = |d: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(d.join("train_curve.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("seconds");
                v
            })
            .collect()
    };
    assert_eq!(
        curve(&whole)
            .iter()
            .filter(|v| v.get("val").is_some())
            .count(),
        4
    );

    // Stopped once its first resume point is there (step 6), then run again.
    let split = dir.join("split");
    let point = split.join("train-resume").join("state.json");
    let (code, err) =
        common::signal_when(&train_args(&split, 24), || point.is_file(), libc::SIGINT);
    assert_eq!(code, 130, "{err}");
    let out = ftedit_cmd().args(train_args(&split, 24)).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("resuming MEND's training"),
        "{err}"
    );
    assert_eq!(curve(&split), curve(&whole));
    assert_eq!(
        std::fs::read(split.join("editor.safetensors")).unwrap(),
        std::fs::read(whole.join("editor.safetensors")).unwrap()
    );

    // Its recipe edits the model it was trained for.
    let edits = dir.join("edits.jsonl");
    std::fs::write(&edits, "{\"prompt\": \"{} is located in the city of\", \"subject\": \"The Eiffel Tower\", \"target_new\": \"Rome\"}\n").unwrap();
    let out = ftedit_cmd()
        .args(["edit", "--recipe"])
        .arg(whole.join("recipe.toml"))
        .arg("--edits")
        .arg(&edits)
        .arg("--out")
        .arg(dir.join("edited"))
        .args(["--quiet", "--allow-collapse", "--no-health"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("edited").join("model.safetensors").is_file());
}

/// Bad input: a training file with no usable records, no validation edits, and an
/// output folder of other files: one-line errors naming the problem, nothing written.
#[test]
fn train_editor_refuses_bad_input() {
    let dir = common::temp_dir("mend-bad");
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "{\"prompt\": \"{} is in\", \"subject\": \"X\", \"target_new\": \"Y\"}\n{\"prompt\": \"{} is in\", \"subject\": \"Z\", \"target_new\": \"W\"}\n").unwrap();
    let out_dir = dir.join("out");
    let run = |args: &[&str]| {
        let o = ftedit_cmd().args(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (ok, err) = run(&[
        "train-editor",
        "--data",
        empty.to_str().unwrap(),
        "--val",
        empty.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(
        !ok && err.contains("empty.jsonl") && err.contains("usable records"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{err}"
    );
    let (ok, err) = run(&[
        "train-editor",
        "--data",
        cf_train().to_str().unwrap(),
        "-n",
        "20",
        "--out",
        out_dir.to_str().unwrap(),
        "--set",
        "train.val_records=0",
        "--quiet",
    ]);
    assert!(!ok && err.contains("val_records = 0"), "{err}");
    assert!(!out_dir.join("editor.safetensors").exists());
    let full = dir.join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("notes.txt"), "mine").unwrap();
    let (ok, err) = run(&[
        "train-editor",
        "--data",
        cf_train().to_str().unwrap(),
        "-n",
        "20",
        "--out",
        full.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(!ok && err.contains("notes.txt"), "{err}");
    assert_eq!(std::fs::read_dir(&full).unwrap().count(), 1);
}

/// A run that loses more than 1 % of its steps to non-finite values stops with an error
/// at its next validation (a huge step size makes every edited loss infinite).
#[test]
fn a_run_that_skips_its_steps_fails() {
    let dir = common::temp_dir("mend-skip");
    let path = dir.join("tiny.gguf");
    common::write_gguf(&random_model(tiny_llama(false), Kind::Float), &path, 64);
    let (model, tok) = ftedit::load(&path, &Default::default()).unwrap();
    let data = common::counterfact_jsonl(&dir, 6);
    let records = ftedit::data::load(&data, None).unwrap();
    let c = config(&[
        "train.alpha_init=1e30",
        "train.steps=20",
        "train.val_every=5",
        "train.val_records=2",
    ]);
    let opts = ftedit::edit::mend::train::TrainOptions {
        out: dir.join("out"),
        checkpoint_every: std::time::Duration::ZERO,
        progress: false,
    };
    let err = ftedit::edit::mend::train::train_editor(
        &model,
        &tok,
        &c,
        (&records[..4], &data),
        (&records[4..], &data),
        &opts,
    )
    .expect_err("the run should fail")
    .to_string();
    assert!(err.contains("skipped 5 of 5 steps"), "{err}");
}

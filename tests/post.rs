//! RECT, 1-LI and SAUL on real edits (FT-M on a tiny random model): α = 0 restores the
//! original weights bit for bit, the default changes nothing, α = ½ lands half way, and
//! RECT leaves exactly its share of the update's entries changed.

mod common;

use common::{counterfact_jsonl, random_model, temp_dir, tiny_llama, write_gguf};
use ftedit::edit::MethodConfig;
use tch::{Kind, Tensor};

/// The tiny model and its tokenizer, loaded from a GGUF file, and three edits.
fn setup() -> (
    ftedit::Model,
    ftedit::Tokenizer,
    Vec<ftedit::data::EditRecord>,
) {
    let dir = temp_dir("post");
    let path = dir.join("tiny.gguf");
    write_gguf(&random_model(tiny_llama(false), Kind::Float), &path, 64);
    let (model, tok) = ftedit::load(&path, &Default::default()).unwrap();
    let records = ftedit::data::load(counterfact_jsonl(&dir, 3), None).unwrap();
    (model, tok, records)
}

/// FT-M on layer 1 with `sets`; returns the edited matrix and the editor's report.
fn edit(sets: &[&str]) -> (Tensor, Tensor, serde_json::Value) {
    // The tests compare edits bit for bit, and run in parallel: with several libtorch
    // threads each, a reduction's split (and so its rounding) can differ between runs.
    tch::set_num_threads(1);
    let (mut model, tok, records) = setup();
    let mut all: Vec<String> = ["optim.epochs=3", "train.layers=1"]
        .iter()
        .chain(sets)
        .map(|s| s.to_string())
        .collect();
    all.push("augment.facts=none".into());
    let config = MethodConfig::load("ft-m", Some(model.arch_name()), &all).unwrap();
    let mut editor = ftedit::edit::build(&config, &tok, &Default::default()).unwrap();
    let name = editor.writes(&model).unwrap().unwrap()[0].clone();
    let before = model.params.get(&name).unwrap().copy();
    editor.edit(&mut model, &tok, &records).unwrap();
    let after = model.params.get(&name).unwrap().copy();
    (before, after, editor.report().unwrap())
}

#[test]
fn interpolation_and_rect_shape_the_edit() {
    let (w0, plain, _) = edit(&[]);
    assert!(!plain.equal(&w0), "the edit changed nothing");
    // α = 1 (and RECT at 1) is the edit as made: post-processing does not run at all
    // (src/edit/post.rs tests the arithmetic bit for bit). The two edits are separate
    // training runs, which can differ in the last bit when the machine is loaded (a GEMM
    // kernel's choice, failed twice beside other test binaries), so they compare within
    // f32 rounding.
    let (_, same, report) = edit(&["post.interpolate=1", "post.rect=1"]);
    let err = (&same - &plain).abs().max().double_value(&[]);
    assert!(err < 1e-6, "{err}");
    assert!(report.get("post").is_none(), "inactive post-processing ran");
    // α = 0 restores the original, bit for bit.
    let (_, back, report) = edit(&["post.interpolate=0"]);
    assert!(back.equal(&w0));
    assert_eq!(report["post"]["interpolate"], 0.0);
    // α = ½: half way (f32 rounding).
    let (_, half, _) = edit(&["post.interpolate=0.5"]);
    let want = &w0 + (&plain - &w0) * 0.5;
    let err = (&half - &want).abs().max().double_value(&[]);
    assert!(err < 1e-6, "{err}");
    // RECT at 40 %: N − ⌊0.6 N⌋ entries keep their change, the largest relative ones.
    let (_, sparse, report) = edit(&["post.rect=0.4"]);
    let n = w0.numel() as i64;
    let kept = sparse.ne_tensor(&w0).sum(Kind::Int64).int64_value(&[]);
    let changed_by_edit = plain.ne_tensor(&w0).sum(Kind::Int64).int64_value(&[]);
    let share = n - (0.6 * n as f64).floor() as i64;
    assert_eq!(kept, share.min(changed_by_edit), "of {n}");
    assert_eq!(report["post"]["edits"][0]["entries_changed"], kept);
    let rel = ((&plain - &w0) / &w0).abs();
    let kept_mask = sparse.ne_tensor(&w0);
    let least_kept = rel.masked_select(&kept_mask).min().double_value(&[]);
    let most_dropped = rel
        .masked_select(&kept_mask.logical_not())
        .max()
        .double_value(&[]);
    assert!(least_kept >= most_dropped, "{least_kept} < {most_dropped}");
}

#[test]
fn bad_settings_name_the_key() {
    let err = MethodConfig::load("rome", None, &["post.rect=2".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("post.rect"), "{err}");
    let err = MethodConfig::load("memit", None, &["post.bogus=1".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("bogus"), "{err}");
    assert!(MethodConfig::load("grace", None, &["post.rect=0.4".into()]).is_err());
}

/// SAUL's data (`--recipe saul`): one example per edit and drawn fact, the edit's new
/// target followed by `" " + fact prompt + " " + fact target`, and no fact trained
/// apart (the training set as `--dump-examples` writes it).
#[test]
fn saul_joins_a_fact_to_each_edit_sentence() {
    let dir = temp_dir("saul");
    let model = dir.join("tiny.gguf");
    write_gguf(&random_model(tiny_llama(false), Kind::Float), &model, 64);
    let (_, tok) = ftedit::load(&model, &Default::default()).unwrap();
    let edits = dir.join("edits.jsonl");
    std::fs::write(
        &edits,
        "{\"prompt\": \"{} is in\", \"subject\": \"the hat\", \"target_new\": \"the tea\"}\n",
    )
    .unwrap();
    let pool = dir.join("facts.jsonl");
    std::fs::write(
        &pool,
        "{\"prompt\": \"{} is on\", \"subject\": \"the cat\", \"target_new\": \"the mat\", \"target_true\": \"the mat\"}\n",
    )
    .unwrap();
    let dump = dir.join("examples.json");
    let out = std::process::Command::new(common::ftedit_bin())
        .args(["edit", "--recipe", "saul", "--model"])
        .arg(&model)
        .arg("--edits")
        .arg(&edits)
        .arg("--pool")
        .arg(&pool)
        .arg("--out")
        .arg(dir.join("out.gguf"))
        .args([
            "--set",
            "augment.prefixes=false",
            "--set",
            "optim.epochs=1",
            "--set",
            "train.layers=1",
        ])
        .args(["--no-health", "--quiet", "--dump-examples"])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dump).unwrap()).unwrap();
    assert_eq!(v["counts"], serde_json::json!([1, 0, 0]), "{v}");
    let ex = &v["examples"][0];
    let ids = |s: &str, special: bool| -> Vec<u32> { tok.encode(s, special).unwrap() };
    let prompt: Vec<u32> = serde_json::from_value(ex["prompt"].clone()).unwrap();
    let target: Vec<u32> = serde_json::from_value(ex["target"].clone()).unwrap();
    assert_eq!(prompt, ids("the hat is in", true));
    let want = [ids(" the tea", false), ids(" the cat is on the mat", false)].concat();
    assert_eq!(target, want);
}

/// `ftedit edit` applies `[post]` too (it builds the fine-tuning editor itself): with
/// α = 0 the written model's weights are the input's and the report says so.
#[test]
fn edit_applies_post_to_the_written_model() {
    let dir = temp_dir("post-edit");
    let model = dir.join("tiny.gguf");
    write_gguf(&random_model(tiny_llama(false), Kind::Float), &model, 64);
    let data = counterfact_jsonl(&dir, 2);
    let out = dir.join("out.gguf");
    let o = std::process::Command::new(common::ftedit_bin())
        .args(["edit", "--method", "ft-m", "--model"])
        .arg(&model)
        .arg("--edits")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args(["--set", "train.layers=1", "--set", "optim.epochs=2"])
        .args(["--set", "post.interpolate=0", "--no-health", "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out.gguf.report.json")).unwrap())
            .unwrap();
    assert_eq!(report["training"]["post"]["interpolate"], 0.0, "{report}");
    let (a, _) = ftedit::load(&model, &Default::default()).unwrap();
    let (b, _) = ftedit::load(&out, &Default::default()).unwrap();
    assert_eq!(
        a.params.value_hashes().unwrap(),
        b.params.value_hashes().unwrap()
    );
}

//! The baselines: ROME's and MEMIT's closed forms on random matrices, the key
//! statistics against a direct computation, FT-L's L∞ box, MEMIT through Gemma 3's
//! post-MLP norm, and every method flipping a simple fact of SmolLM2.

mod common;

use common::{cf_edit, load, recipe, shared_dir};
use ftedit::data::EditRecord;
use ftedit::edit::ft::FtEditor;
use ftedit::edit::locate::spread::through_norm;
use ftedit::edit::locate::stats::{StatsOptions, second_moments};
use ftedit::edit::memit::memit_delta;
use ftedit::edit::rome::rome_delta;
use ftedit::edit::{Editor, MethodConfig};
use ftedit::model::nn::RmsNorm;
use ftedit::model::{CaptureKeys, Input};
use tch::{Kind, Tensor};

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// A random symmetric positive-definite matrix, like a second moment.
fn spd(n: i64) -> Tensor {
    let a = Tensor::randn([n, n], (Kind::Double, tch::Device::Cpu));
    a.mm(&a.transpose(0, 1)) / n as f64 + Tensor::eye(n, (Kind::Double, tch::Device::Cpu)) * 0.1
}

fn randn(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Double, tch::Device::Cpu))
}

#[test]
fn rome_update_is_rank_one_hits_the_value_and_spares_c_inverse_orthogonal_keys() {
    tch::manual_seed(1);
    let (d, i) = (6, 10);
    let (w, c, k, v) = (randn(&[d, i]), spd(i), randn(&[i]), randn(&[d]));
    let delta = rome_delta(&w, &c, &k, &v);
    assert_eq!(delta.size(), [d, i]);
    let (_, sv, _) = delta.svd(true, false);
    let s = Vec::<f64>::try_from(sv).unwrap();
    assert!(s[1] / s[0] < 1e-12, "singular values {s:?}");
    // (W + ΔW) k = v.
    assert!(max_abs(&((&w + &delta).mv(&k) - &v)) < 1e-10);
    // A key orthogonal to C⁻¹k is mapped as before.
    let u = Tensor::linalg_solve(&c, &k, true);
    for _ in 0..5 {
        let x = randn(&[i]);
        let k_orth = &x - &u * (u.dot(&x) / u.dot(&u));
        assert!(u.dot(&k_orth).double_value(&[]).abs() < 1e-10);
        assert!(max_abs(&delta.mv(&k_orth)) < 1e-10);
    }
}

#[test]
fn memit_with_one_edit_and_one_layer_is_rome_up_to_its_regulariser() {
    tch::manual_seed(2);
    let (d, i) = (5, 8);
    let (w, c, k, v) = (randn(&[d, i]), spd(i), randn(&[i]), randn(&[d]));
    let rome = rome_delta(&w, &c, &k, &v);
    let r = &v - w.mv(&k);
    let kck = Tensor::linalg_solve(&c, &k, true).dot(&k).double_value(&[]);
    // Sherman–Morrison: (λC + kkᵀ)⁻¹k = C⁻¹k / (λ + kᵀC⁻¹k), so MEMIT's update is
    // ROME's scaled by kᵀC⁻¹k / (λ + kᵀC⁻¹k), and equal to it as λ → 0.
    for lambda in [1e-3, 0.5, 15_000.0] {
        let memit = memit_delta(&c, &k.unsqueeze(1), &r.unsqueeze(1), lambda);
        let scaled = &memit * ((lambda + kck) / kck);
        assert!(
            max_abs(&(&scaled - &rome)) < 1e-9 * max_abs(&rome),
            "λ = {lambda}"
        );
    }
    let memit = memit_delta(&c, &k.unsqueeze(1), &r.unsqueeze(1), 1e-6);
    assert!(max_abs(&(&memit - &rome)) < 1e-5 * max_abs(&rome));
}

fn wikitext() -> std::path::PathBuf {
    shared_dir().join("data/aux/wikitext-2-raw/wiki.test.raw")
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ftedit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn key_statistics_match_a_direct_computation_and_are_cached() {
    let (m, tok) = load("smollm2");
    let cache = temp_dir("stats");
    // One block exactly: BOS and the text's first 127 tokens; the BOS key is left out.
    let mut opts = StatsOptions::new(wikitext(), 127);
    opts.cache_dir = Some(cache.clone());
    let c = second_moments(&m, &tok, &[2, 5], &opts).unwrap();

    let text = std::fs::read_to_string(wikitext()).unwrap();
    let ids = tok.encode(&text, false).unwrap();
    let block: Vec<u32> = tok
        .document_start()
        .into_iter()
        .chain(ids[..127].iter().copied())
        .collect();
    let mut capture = CaptureKeys {
        layers: vec![2, 5],
        keys: vec![],
    };
    let _g = tch::no_grad_guard();
    m.run_hooks(
        &Input::right_padded(&[block], m.device()).unwrap(),
        &mut capture,
    )
    .unwrap();
    for (j, (layer, key)) in capture.keys.iter().enumerate() {
        let k = key.get(0).narrow(0, 1, 127).to_kind(Kind::Double);
        let direct = k.transpose(0, 1).mm(&k) / 127.0;
        let got = c[j].to_kind(Kind::Double);
        let scale = max_abs(&direct);
        assert!(
            max_abs(&(&got - &direct)) < 1e-5 * scale,
            "layer {layer}: off by {}",
            max_abs(&(&got - &direct))
        );
        assert!(max_abs(&(&got - got.transpose(0, 1))) < 1e-6 * scale);
    }
    // Cached by model, layer and sample count: a second call reads the same numbers.
    let files = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(files, 2);
    let again = second_moments(&m, &tok, &[5], &opts).unwrap();
    assert_eq!(max_abs(&(&again[0] - &c[1])), 0.0);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);
    opts.samples = 200;
    second_moments(&m, &tok, &[5], &opts).unwrap();
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 3);
    // Measured in bf16-mixed (emulated on CPUs without bf16 units): within bf16's
    // rounding of the f32 statistics, not equal to them, and cached apart.
    opts.samples = 127;
    opts.precision = ftedit::model::Precision::Bf16Mixed;
    let b = second_moments(&m, &tok, &[5], &opts).unwrap();
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 4);
    let off = max_abs(&(&b[0] - &c[1]));
    let scale = max_abs(&c[1]);
    assert!(
        off > 0.0 && off < 3e-2 * scale,
        "bf16 statistics off by {off} (scale {scale})"
    );
    assert_eq!(
        m.precision(),
        ftedit::model::Precision::F32,
        "the model's precision restored"
    );
    let _ = std::fs::remove_dir_all(&cache);
}

fn eiffel() -> EditRecord {
    cf_edit(
        "The Eiffel Tower",
        "{} is located in the city of",
        "Rome",
        "Paris",
    )
}

/// Key statistics from 10,000 WikiText positions, cached in a fresh temporary folder
/// (returned too, for removal), in f32, as `--set` overrides.
fn small_stats(tag: &str) -> (std::path::PathBuf, Vec<String>) {
    let cache = temp_dir(tag);
    let sets = vec![
        format!("stats.text={}", wikitext().display()),
        "stats.samples=10000".into(),
        format!("stats.cache_dir={}", cache.display()),
        // f32 on every CPU, so that the comparisons below are as tight as they are here.
        "stats.precision=f32".into(),
        "value.precision=f32".into(),
    ];
    (cache, sets)
}

/// A built-in method's editor with `sets` applied, through the registry.
fn editor(method: &str, sets: &[String], tok: &ftedit::Tokenizer) -> Box<dyn Editor> {
    let config = MethodConfig::load(method, None, sets).unwrap();
    ftedit::edit::build(&config, tok, &Default::default()).unwrap()
}

fn next_logprobs(m: &ftedit::Model, tok: &ftedit::Tokenizer, prompt: &str) -> Tensor {
    m.next_token_logprobs(&tok.encode(prompt, true).unwrap())
        .unwrap()
}

fn top(m: &ftedit::Model, tok: &ftedit::Tokenizer, prompt: &str) -> u32 {
    next_logprobs(m, tok, prompt)
        .argmax(-1, false)
        .int64_value(&[]) as u32
}

fn ft_editor(name: &str, tok: &ftedit::Tokenizer) -> FtEditor {
    FtEditor::new(name, recipe(name, &[]), vec![], None, tok).unwrap()
}

#[test]
fn ft_l_moves_no_weight_more_than_epsilon() {
    let (mut m, tok) = load("smollm2");
    let name = m.mlp_out_proj(0);
    let before = m.params.get(&name).unwrap().copy();
    let other = m.params.get(&m.mlp_out_proj(1)).unwrap().copy();
    let mut ft = ft_editor("ft-l", &tok);
    let eps = ft.recipe.optim.clamp;
    assert!(eps > 0.0);
    ft.edit(&mut m, &tok, &[eiffel()]).unwrap();
    let moved = max_abs(&(m.params.get(&name).unwrap() - &before));
    assert!(moved > 0.0, "FT-L did not train");
    // The box is enforced in f32: allow the rounding of the largest weight.
    let ulp = 2.0 * f64::from(f32::EPSILON) * max_abs(&before);
    assert!(moved <= eps + ulp, "moved {moved} > ε = {eps}");
    assert!(
        moved >= eps - ulp,
        "moved only {moved}: the box was not reached"
    );
    assert_eq!(
        max_abs(&(m.params.get(&m.mlp_out_proj(1)).unwrap() - &other)),
        0.0
    );
}

#[test]
fn every_baseline_flips_a_simple_fact_of_smollm2() {
    let (cache, stats) = small_stats("baselines");
    let rec = eiffel();
    let (m0, tok) = load("smollm2");
    let rome_first = tok.encode(" Rome", false).unwrap()[0];
    assert_ne!(top(&m0, &tok, &rec.rewrite_prompt()), rome_first);
    drop(m0);
    // FT-L's default box (ε = 5e-4, GPT-2 XL's) is too tight for a model this small: it
    // flipped one of examples/edits.jsonl's three facts; ε = 2e-3 flips all three.
    let mut ft_l = ft_editor("ft-l", &tok);
    ft_l.recipe.optim.clamp = 2e-3;
    let editors: Vec<Box<dyn Editor>> = vec![
        Box::new(ft_l),
        Box::new(ft_editor("ft-m", &tok)),
        editor("rome", &stats, &tok),
        editor("memit", &stats, &tok),
        // The value optimisation in bf16-mixed (emulated where the CPU lacks bf16 units).
        editor(
            "rome",
            &[stats.clone(), vec!["value.precision=bf16-mixed".into()]].concat(),
            &tok,
        ),
    ];
    for mut editor in editors {
        let (mut m, _) = load("smollm2");
        editor
            .edit(&mut m, &tok, std::slice::from_ref(&rec))
            .unwrap();
        assert_eq!(
            top(&m, &tok, &rec.rewrite_prompt()),
            rome_first,
            "{} did not flip the fact",
            editor.name()
        );
    }
    let _ = std::fs::remove_dir_all(&cache);
}

/// Edits whose tails differ in length (so a joint batch is padded), with two-token
/// targets among them.
fn edits_of_several_lengths() -> [EditRecord; 4] {
    [
        eiffel(),
        cf_edit(
            "Danielle Darrieux",
            "The mother tongue of {} is",
            "English",
            "French",
        ),
        cf_edit("Toko Yasuda", "{}, who plays the", "piano", "guitar"),
        cf_edit(
            "Autonomous University of Madrid",
            "{}, which is located in",
            "Sweden",
            "Spain",
        ),
    ]
}

/// A copy of every MLP output projection.
fn out_projs(m: &ftedit::Model) -> Vec<Tensor> {
    (0..m.num_layers())
        .map(|l| m.params.get(&m.mlp_out_proj(l)).unwrap().copy())
        .collect()
}

/// Every MLP output projection's change since `before` ([`out_projs`]).
fn out_proj_changes(m: &ftedit::Model, before: &[Tensor]) -> Vec<Tensor> {
    (0..m.num_layers())
        .map(|l| m.params.get(&m.mlp_out_proj(l)).unwrap() - &before[l])
        .collect()
}

#[test]
fn memit_values_optimised_together_equal_those_optimised_one_at_a_time() {
    let (cache, mut sets) = small_stats("memit-value-batch");
    sets.push("cache_z=false".into());
    let records = edits_of_several_lengths();
    let (m0, tok) = load("smollm2");
    let before = out_projs(&m0);
    drop(m0);
    let deltas = |batch: usize| -> Vec<Tensor> {
        let mut sets = sets.clone();
        sets.push(format!("value.batch={batch}"));
        let (mut m, _) = load("smollm2");
        editor("memit", &sets, &tok)
            .edit(&mut m, &tok, &records)
            .unwrap();
        out_proj_changes(&m, &before)
    };
    let (alone, together) = (deltas(1), deltas(4));
    let mut edited = 0;
    for (l, (a, t)) in alone.iter().zip(&together).enumerate() {
        let scale = max_abs(a);
        if scale == 0.0 {
            assert_eq!(max_abs(t), 0.0, "layer {l} moved only in the joint run");
            continue;
        }
        edited += 1;
        // f32 rounding of the padded batch, carried through 25 Adam steps.
        let diff = max_abs(&(a - t));
        assert!(diff < 1e-3 * scale, "layer {l}: {diff} against {scale}");
    }
    assert_eq!(edited, 6, "MEMIT's llama range is six layers of SmolLM2");
    let _ = std::fs::remove_dir_all(&cache);
}

/// The largest difference between two sets of changes, against the largest change.
fn relative_gap(a: &[Tensor], b: &[Tensor]) -> f64 {
    let scale = a.iter().map(max_abs).fold(0.0, f64::max);
    assert!(scale > 0.0, "nothing was edited");
    let gap = a
        .iter()
        .zip(b)
        .map(|(x, y)| max_abs(&(x - y)))
        .fold(0.0, f64::max);
    gap / scale
}

fn values_ahead(editor: &dyn Editor) -> Vec<u64> {
    editor.report().unwrap()["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["values_from_cache"].as_u64().unwrap())
        .collect()
}

#[test]
fn rome_values_prepared_together_equal_one_edit_at_a_time_and_go_stale_with_the_weights() {
    let (cache, mut stats) = small_stats("rome-prepare");
    // Fewer value steps keep the test short; the paths are the same.
    stats.push("value.steps=8".into());
    let all = edits_of_several_lengths();
    let records = &all[..3];
    let (mut m, tok) = load("smollm2");
    let snapshot = m.params.snapshot();
    let before = out_projs(&m);
    let mut alone = editor("rome", &stats, &tok);
    let mut ahead = editor("rome", &stats, &tok);
    ahead.prepare(&m, &tok, records).unwrap();
    // The single protocol: every edit from the unedited model.
    for r in records {
        alone.edit(&mut m, &tok, std::slice::from_ref(r)).unwrap();
        let a = out_proj_changes(&m, &before);
        m.params.restore(&snapshot).unwrap();
        ahead.edit(&mut m, &tok, std::slice::from_ref(r)).unwrap();
        let b = out_proj_changes(&m, &before);
        m.params.restore(&snapshot).unwrap();
        // f32 rounding of the padded batch, carried through the Adam steps.
        let gap = relative_gap(&a, &b);
        assert!(gap < 1e-3, "record {}: {gap}", r.id);
    }
    assert_eq!(values_ahead(alone.as_ref()), [0, 0, 0]);
    assert_eq!(values_ahead(ahead.as_ref()), [1, 1, 1]);

    // Edits that follow one another: the second starts from the first's model, so the
    // values prepared on the unedited one must not be used.
    let mut ahead = editor("rome", &stats, &tok);
    ahead.prepare(&m, &tok, &records[..2]).unwrap();
    ahead.edit(&mut m, &tok, &records[..1]).unwrap();
    ahead.edit(&mut m, &tok, &records[1..2]).unwrap();
    let b = out_proj_changes(&m, &before);
    m.params.restore(&snapshot).unwrap();
    alone.edit(&mut m, &tok, &records[..2]).unwrap();
    let a = out_proj_changes(&m, &before);
    assert!(relative_gap(&a, &b) < 1e-3);
    assert_eq!(values_ahead(ahead.as_ref()), [1, 0]);
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn memit_carries_a_residual_change_through_a_post_mlp_norm() {
    tch::manual_seed(3);
    // Gemma-like gains: stored as gain − 1, one of them zero (a dead component).
    let w = randn(&[8]) * 0.5;
    let _ = w.get(2).fill_(-1.0);
    let norm = RmsNorm {
        weight: w,
        eps: 1e-14,
        plus_one: true,
    };
    let rms = |t: &Tensor| t.square().mean_dim(-1, false, Kind::Double).sqrt();
    let dist = |a: &Tensor, b: &Tensor| rms(&(a - b));
    let m = randn(&[3, 8]) * 4.0;
    // A reachable target (another input's output) is hit exactly, at m's RMS.
    let reachable = norm.forward(&randn(&[3, 8]));
    let delta = through_norm(&norm, &m, &(&reachable - norm.forward(&m)));
    assert!(max_abs(&(norm.forward(&(&m + &delta)) - &reachable)) < 1e-9);
    assert!(max_abs(&(rms(&(&m + &delta)) - rms(&m))) < 1e-9);
    // No change asked, none made.
    assert!(max_abs(&through_norm(&norm, &m, &(&m * 0.0))) < 1e-9);
    // An unreachable one is approached closer than by writing resid in directly (what
    // MEMIT does without a norm) or by any other input of m's RMS tried.
    let resid = randn(&[3, 8]) * 2.0;
    let want = norm.forward(&m) + &resid;
    let got = dist(
        &norm.forward(&(&m + through_norm(&norm, &m, &resid))),
        &want,
    );
    let naive = dist(&norm.forward(&(&m + &resid)), &want);
    assert!(
        Vec::<f64>::try_from(&got - &naive)
            .unwrap()
            .iter()
            .all(|&x| x < 0.0)
    );
    for _ in 0..200 {
        let other = dist(&norm.forward(&randn(&[3, 8])), &want);
        let worse = Vec::<f64>::try_from(&got - &other).unwrap();
        assert!(worse.iter().all(|&x| x <= 1e-9), "{worse:?}");
    }
}

#[test]
fn memit_on_gemma3_moves_the_edit_and_leaves_another_fact_alone() {
    let (cache, stats) = small_stats("memit-gemma3");
    let rec = eiffel();
    let other = "The capital of Japan is the city of";
    let (mut m, tok) = load("gemma3");
    let rome = tok.encode(" Rome", false).unwrap()[0] as i64;
    let logprob = |m: &ftedit::Model, prompt: &str, id: i64| {
        next_logprobs(m, &tok, prompt).double_value(&[id])
    };
    let before = logprob(&m, &rec.rewrite_prompt(), rome);
    let other_top = top(&m, &tok, other);
    let other_before = logprob(&m, other, other_top as i64);
    editor("memit", &stats, &tok)
        .edit(&mut m, &tok, std::slice::from_ref(&rec))
        .unwrap();
    let after = logprob(&m, &rec.rewrite_prompt(), rome);
    let other_after = logprob(&m, other, other_top as i64);
    eprintln!("log p(Rome) {before} -> {after}; other {other_before} -> {other_after}");
    // Written in without the norm carried through, this edit wrecked the model.
    assert_eq!(top(&m, &tok, other), other_top);
    assert!(after > before + 3.0, "log p(Rome) {before} -> {after}");
    let _ = std::fs::remove_dir_all(&cache);
}

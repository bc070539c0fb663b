//! Meta-training MEND's network (EDITORS.md, "MEND", the authors' loop): each step
//! makes one edit with the network in training mode and asks two things of the edited
//! model (its weights as a function of the network): the target after a paraphrase of
//! the edit prompt (`L_edit`, NLL) and an unrelated record's locality prompt unchanged
//! (`L_loc`, KL from the unedited model). `L = w_e·L_edit + w_l·L_loc`; gradients add up
//! over `accumulate` steps, then Adam steps the network and step sizes, and a second
//! Adam the step sizes alone. Validation on fixed edits keeps the best network and
//! stops the run after `patience` steps without a better one.
//!
//! The output folder holds `editor.safetensors` (the best network), `recipe.toml` (the
//! recipe that edits with it) and `train_curve.jsonl`; `train-resume/` holds the last
//! resume point (network, both Adams, step, curve) until the run finishes, saved every
//! `checkpoint_every`, at every validation and on SIGINT/SIGTERM. The data order and
//! every random choice are functions of the seed and the step, so a resumed run takes
//! the same steps.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::net::MendNet;
use super::{Mend, MendConfig, example, matrices, model_id};
use crate::data::EditRecord;
use crate::edit::augment::Rng;
use crate::error::{Error, Result};
use crate::model::{Model, Precision};
use crate::tokenizer::Tokenizer;
use crate::train::{AdamW, AdamWConfig, AdamWState, Example};

/// Where and how a training run writes.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The output folder.
    pub out: PathBuf,
    /// Wall-clock time between resume points (zero: only at validations and signals).
    pub checkpoint_every: Duration,
    pub progress: bool,
}

/// One record's examples for meta-training.
struct Item {
    edit: Example,
    /// Paraphrases with the new target (the edit prompt itself when there are none).
    rephrases: Vec<Example>,
    /// Its locality prompts with their answers (other records' steps use them).
    locality: Vec<Example>,
}

fn items(tok: &Tokenizer, records: &[EditRecord], what: &Path) -> Result<Vec<Item>> {
    let mut out = Vec::new();
    for r in records {
        let Ok(edit) = example(tok, &r.rewrite_prompt(), &r.target_new) else {
            continue;
        };
        let mut rephrases: Vec<Example> = r
            .paraphrases
            .iter()
            .filter_map(|p| example(tok, p, &r.target_new).ok())
            .collect();
        if rephrases.is_empty() {
            rephrases.push(edit.clone());
        }
        let locality = r
            .neighborhood
            .iter()
            .filter_map(|n| example(tok, &n.prompt, &n.target).ok())
            .collect();
        out.push(Item {
            edit,
            rephrases,
            locality,
        });
    }
    if out.len() < 2 || out.iter().all(|i| i.locality.is_empty()) {
        return Err(Error::data(
            what,
            format!(
                "{} usable records ({} in the file): MEND's training needs at least two, with locality prompts",
                out.len(),
                records.len()
            ),
        ));
    }
    Ok(out)
}

/// The loop's state in a resume point.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    fingerprint: String,
    step: usize,
    best: Option<f64>,
    best_step: usize,
    skipped: usize,
    seconds: f64,
    curve: Vec<serde_json::Value>,
    adam_steps: i64,
    adam_alpha_steps: i64,
    /// Steps whose gradients are gathered but not yet stepped on, and the running sums
    /// of the curve's next point.
    pending: usize,
    sums: (f64, f64, usize),
}

/// What `ftedit train-editor` reports when done.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub steps: usize,
    pub best_step: usize,
    pub best_val_loss: Option<f64>,
    /// Steps skipped for a non-finite loss or gradient.
    pub skipped: usize,
    pub seconds: f64,
    pub stopped_early: bool,
    pub resumed_from: Option<usize>,
    pub editor: PathBuf,
    pub recipe: PathBuf,
}

/// The step's draw: which record edits, which of its paraphrases, whose locality.
fn draw(
    n: usize,
    step: usize,
    seed: u64,
    order: &mut (usize, Vec<usize>),
    loc_ok: &[usize],
) -> (usize, u64, usize) {
    let epoch = step / n;
    if order.0 != epoch || order.1.is_empty() {
        let mut v: Vec<usize> = (0..n).collect();
        Rng(seed ^ (epoch as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)).shuffle(&mut v);
        *order = (epoch, v);
    }
    let i = order.1[step % n];
    let mut rng = Rng(seed.wrapping_add((step as u64).wrapping_mul(0x9E37_79B9)));
    let r = rng.next_u64();
    // Locality from another record (the authors'), one that has locality prompts.
    let mut j = loc_ok[rng.below(loc_ok.len())];
    if j == i && loc_ok.len() > 1 {
        j = loc_ok[(loc_ok.iter().position(|&x| x == i).unwrap_or(0) + 1) % loc_ok.len()];
    }
    (i, r, j)
}

/// KL(p_base ‖ p_edited), averaged over positions (both `[N, V]` log-probabilities).
fn kl(base: &Tensor, edited: &Tensor) -> Tensor {
    (base.exp() * (base - edited))
        .sum_dim_intlist(-1, false, Kind::Float)
        .mean(Kind::Float)
}

/// Validation numbers on fixed edits: the loss the run minimises, edit success on the
/// prompt and its paraphrase (every target token top-1), locality (top-1 unchanged).
fn validate(
    mend: &mut Mend,
    model: &Model,
    val: &[Item],
    cfg: &MendConfig,
) -> Result<serde_json::Value> {
    let training = mend.net.training;
    mend.net.training = false;
    let (mut loss, mut es, mut ps, mut loc) = (0.0, 0.0, 0.0, 0.0);
    let n = val.len();
    for (i, it) in val.iter().enumerate() {
        let rows = mend.gradient_rows(model, std::slice::from_ref(&it.edit))?;
        let _g = tch::no_grad_guard();
        let f = mend.factors(&rows)?;
        let rephrase = &it.rephrases[0];
        let other = &val[(i + 1) % n];
        let loc_ex = other.locality.first().unwrap_or(&other.edit);
        let l_edit = mend.edited_nll(model, std::slice::from_ref(rephrase), &f)?;
        let lower = mend.lower(model, loc_ex)?;
        let base = mend.target_logprobs(model, loc_ex, None, lower.as_ref())?;
        let edited = mend.target_logprobs(model, loc_ex, Some(&f), lower.as_ref())?;
        let l_loc = kl(&base, &edited);
        loss += cfg.train.edit_weight * l_edit.double_value(&[])
            + cfg.train.loc_weight * l_loc.double_value(&[]);
        let hits = |ex: &Example| -> Result<f64> {
            let lp = mend.target_logprobs(model, ex, Some(&f), None)?;
            let want = Tensor::from_slice(&ex.target.iter().map(|&t| t as i64).collect::<Vec<_>>());
            Ok(f64::from(
                lp.argmax(-1, false)
                    .to_device(tch::Device::Cpu)
                    .eq_tensor(&want)
                    .all()
                    .int64_value(&[]) as u8,
            ))
        };
        es += hits(&it.edit)?;
        ps += hits(rephrase)?;
        loc += base
            .argmax(-1, false)
            .eq_tensor(&edited.argmax(-1, false))
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
    }
    mend.net.training = training;
    let n = n as f64;
    Ok(serde_json::json!({
        "loss": loss / n,
        "edit_success": 100.0 * es / n,
        "paraphrase_success": 100.0 * ps / n,
        "locality": 100.0 * loc / n,
    }))
}

const RESUME: &str = "train-resume";

/// What a resume point gives back: the network, the loop's state, both Adams' states
/// and the gradients gathered since the last optimizer step.
type Resumed = (MendNet, State, AdamWState, AdamWState, Vec<(usize, Tensor)>);

/// Meta-trains MEND's network for `model` on `train`, validating on `val`; writes the
/// output folder described in the module doc.
pub fn train_editor(
    model: &Model,
    tok: &Tokenizer,
    config: &MendConfig,
    (train, train_path): (&[EditRecord], &Path),
    (val, val_path): (&[EditRecord], &Path),
    opts: &TrainOptions,
) -> Result<TrainReport> {
    let t = config.train.clone();
    let _p = model.precision_for(Precision::F32);
    if t.val_records == 0 {
        return Err(Error::Input(
            "train.val_records = 0: validation needs at least one edit".into(),
        ));
    }
    let train_items = items(tok, train, train_path)?;
    let mut val_items = items(tok, val, val_path)?;
    val_items.truncate(t.val_records.max(2));
    let mats = matrices(model, config)?;
    let id = model_id(model, &mats)?;
    let fingerprint = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        // What shapes the training only: not the description, the editor file or what
        // happens after an edit (`post`).
        let mut c = config.clone();
        c.editor.clear();
        c.description.clear();
        let mut table = toml::Table::try_from(&c).expect("serialisable");
        table.remove("post");
        toml::to_string(&table).expect("serialisable").hash(&mut h);
        id.hash(&mut h);
        for it in train_items.iter().chain(&val_items) {
            (&it.edit.prompt, &it.edit.target).hash(&mut h);
        }
        format!("{:016x}", h.finish())
    };
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let _lock = crate::output::Lock::acquire(&opts.out)?;
    let resume_dir = opts.out.join(RESUME);
    let editor_path = opts.out.join("editor.safetensors");
    let recipe_path = opts.out.join("recipe.toml");
    let curve_path = opts.out.join("train_curve.jsonl");

    // A new network, or the resume point's.
    let device = model.device();
    let mut resumed: Option<Resumed> = None;
    let state_file = resume_dir.join("state.json");
    if state_file.is_file() {
        let text = std::fs::read_to_string(&state_file).map_err(|e| Error::io(&state_file, e))?;
        let s: State = serde_json::from_str(&text)
            .map_err(|e| Error::data(&state_file, format!("not a resume point: {e}")))?;
        if s.fingerprint == fingerprint {
            let net = MendNet::load(&resume_dir.join("editor.safetensors"), device)?;
            let adam_file = resume_dir.join("adam.safetensors");
            let named: std::collections::HashMap<String, Tensor> =
                Tensor::read_safetensors(&adam_file)?.into_iter().collect();
            let n = net.parameters().len();
            let take = |kind: &str, count: usize, steps: i64| -> Result<AdamWState> {
                let (mut m, mut v) = (Vec::new(), Vec::new());
                for i in (0..count).filter(|_| steps > 0) {
                    for (which, out) in [("m", &mut m), ("v", &mut v)] {
                        let name = format!("{kind}.{which}.{i}");
                        let t = named
                            .get(&name)
                            .ok_or_else(|| Error::data(&adam_file, format!("no tensor {name}")))?;
                        out.push(t.to_device(device));
                    }
                }
                Ok(AdamWState {
                    steps,
                    exp_avg: m,
                    exp_avg_sq: v,
                })
            };
            let a = take("net", n, s.adam_steps)?;
            let b = take("alpha", 1, s.adam_alpha_steps)?;
            let grads = (0..n)
                .filter_map(|i| {
                    named
                        .get(&format!("grad.{i}"))
                        .map(|g| (i, g.to_device(device)))
                })
                .collect();
            resumed = Some((net, s, a, b, grads));
        } else {
            eprintln!(
                "note: {} holds the resume point of another training run; starting afresh",
                resume_dir.display()
            );
        }
    }
    let (mut net, mut state, adam_state, alpha_state, grads) = match resumed {
        Some((net, s, a, b, grads)) => {
            eprintln!(
                "note: resuming MEND's training at step {} from {}",
                s.step,
                resume_dir.display()
            );
            (net, s, Some(a), Some(b), grads)
        }
        None => {
            tch::manual_seed(t.seed as i64);
            let net = MendNet::new(
                mats,
                config.rank,
                config.norm,
                t.alpha_init,
                model.arch_name(),
                &id,
                device,
            );
            let s = State {
                fingerprint,
                step: 0,
                best: None,
                best_step: 0,
                skipped: 0,
                seconds: 0.0,
                curve: Vec::new(),
                adam_steps: 0,
                adam_alpha_steps: 0,
                pending: 0,
                sums: (0.0, 0.0, 0),
            };
            (net, s, None, None, Vec::new())
        }
    };
    let resumed_from = adam_state.as_ref().map(|_| state.step);
    net.set_requires_grad(true);
    net.training = true;
    let mut mend = Mend::new(net, model)?;
    let params = mend.net.parameters();
    let alphas = mend.net.alphas.shallow_clone();
    let plain = |lr| AdamWConfig {
        lr,
        weight_decay: 0.0,
        ..AdamWConfig::default()
    };
    let mut adam = AdamW::over(
        params.iter().map(Tensor::shallow_clone).collect(),
        plain(t.lr),
    )?;
    let mut adam_alpha = AdamW::over(vec![alphas], plain(t.lr_alpha))?;
    if let Some(s) = adam_state {
        adam.set_state(s)?;
    }
    if let Some(s) = alpha_state {
        adam_alpha.set_state(s)?;
    }
    if !grads.is_empty() {
        // The gradients gathered since the last optimizer step: made to exist (zero),
        // then filled.
        let zero: Vec<Tensor> = params.iter().map(|p| (p * 0.0).sum(Kind::Float)).collect();
        Tensor::stack(&zero, 0).sum(Kind::Float).backward();
        let _g = tch::no_grad_guard();
        for (i, g) in &grads {
            params[*i].grad().copy_(g);
        }
    }

    let save_outputs = |mend: &Mend, state: &State, best_now: bool| -> Result<()> {
        if best_now {
            mend.net.save(&editor_path)?;
            let mut c = config.clone();
            let abs = std::fs::canonicalize(&editor_path).unwrap_or(editor_path.clone());
            c.editor = abs.display().to_string();
            let text = crate::edit::MethodConfig::Mend(c).to_toml();
            crate::output::write_atomic(&recipe_path, text.as_bytes())?;
        }
        let mut lines = String::new();
        for v in &state.curve {
            lines.push_str(&serde_json::to_string(v).expect("serialisable"));
            lines.push('\n');
        }
        crate::output::write_atomic(&curve_path, lines.as_bytes())
    };
    let save_resume =
        |mend: &Mend, state: &State, adam: &AdamW, adam_alpha: &AdamW| -> Result<()> {
            let tmp = crate::output::temp_path(&resume_dir);
            let write = || -> Result<()> {
                let _ = std::fs::remove_dir_all(&tmp);
                std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
                mend.net.save(&tmp.join("editor.safetensors"))?;
                let mut named: Vec<(String, Tensor)> = Vec::new();
                for (kind, st) in [("net", adam.state()), ("alpha", adam_alpha.state())] {
                    for (i, (m, v)) in st.exp_avg.iter().zip(&st.exp_avg_sq).enumerate() {
                        named.push((format!("{kind}.m.{i}"), m.to_device(tch::Device::Cpu)));
                        named.push((format!("{kind}.v.{i}"), v.to_device(tch::Device::Cpu)));
                    }
                }
                for (i, p) in params.iter().enumerate() {
                    let g = p.grad();
                    if g.defined() {
                        named.push((format!("grad.{i}"), g.to_device(tch::Device::Cpu)));
                    }
                }
                let refs: Vec<(&str, &Tensor)> =
                    named.iter().map(|(n, t)| (n.as_str(), t)).collect();
                Tensor::write_safetensors(&refs, tmp.join("adam.safetensors"))?;
                let mut s = state.clone();
                s.adam_steps = adam.state().steps;
                s.adam_alpha_steps = adam_alpha.state().steps;
                let p = tmp.join("state.json");
                std::fs::write(&p, serde_json::to_string(&s).expect("serialisable"))
                    .map_err(|e| Error::io(&p, e))?;
                crate::output::swap_dir(&tmp, &resume_dir)
            };
            write().inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&tmp);
            })
        };

    let start = Instant::now();
    let seconds_before = state.seconds;
    let mut last_save = Instant::now();
    let loc_ok: Vec<usize> = (0..train_items.len())
        .filter(|&i| !train_items[i].locality.is_empty())
        .collect();
    let mut order = (usize::MAX, Vec::new());
    let pb = crate::progress::bar(opts.progress, t.steps, "train mend");
    pb.set_position(state.step as u64);
    let (mut sum_edit, mut sum_loc, mut sum_n) = state.sums;
    let mut stopped_early = false;
    let mut pending = state.pending;
    let _hold = crate::output::HoldSignals::new();
    while state.step < t.steps {
        let step = state.step;
        let (i, r, j) = draw(train_items.len(), step, t.seed, &mut order, &loc_ok);
        let it = &train_items[i];
        let rephrase = &it.rephrases[(r % it.rephrases.len() as u64) as usize];
        let locs = &train_items[j].locality;
        let loc_ex = &locs[((r >> 32) % locs.len() as u64) as usize];
        let lower = mend.lower(model, loc_ex)?;
        let base = {
            let _g = tch::no_grad_guard();
            mend.target_logprobs(model, loc_ex, None, lower.as_ref())?
        };
        let rows = mend.gradient_rows(model, std::slice::from_ref(&it.edit))?;
        let f = mend.factors(&rows)?;
        let l_edit = mend.edited_nll(model, std::slice::from_ref(rephrase), &f)?;
        let l_loc = kl(
            &base,
            &mend.target_logprobs(model, loc_ex, Some(&f), lower.as_ref())?,
        );
        let loss = (&l_edit * t.edit_weight + &l_loc * t.loc_weight) / t.accumulate as f64;
        let (le, ll) = (l_edit.double_value(&[]), l_loc.double_value(&[]));
        // A non-finite loss is skipped here; a non-finite gradient shows in the norm at
        // the optimizer step, which then skips the steps it gathered.
        if le.is_finite() && ll.is_finite() {
            loss.backward();
            sum_edit += le;
            sum_loc += ll;
            sum_n += 1;
            pending += 1;
        } else {
            state.skipped += 1;
        }
        state.step += 1;
        pb.inc(1);
        if state.step % t.accumulate == 0 {
            let _g = tch::no_grad_guard();
            let grads: Vec<Tensor> = params
                .iter()
                .map(Tensor::grad)
                .filter(Tensor::defined)
                .collect();
            if !grads.is_empty() {
                let norm = Tensor::stack(&grads.iter().map(|g| g.norm()).collect::<Vec<_>>(), 0)
                    .norm()
                    .double_value(&[]);
                if !norm.is_finite() {
                    state.skipped += pending;
                } else {
                    if norm > t.clip {
                        for g in &grads {
                            let _ = g.shallow_clone().g_mul_scalar_(t.clip / norm);
                        }
                    }
                    adam.step()?;
                    adam_alpha.step()?;
                }
            }
            pending = 0;
            adam.zero_grad()?;
            adam_alpha.zero_grad()?;
        }
        if state.step % 100 == 0 && sum_n > 0 {
            state.curve.push(serde_json::json!({
                "step": state.step,
                "l_edit": sum_edit / sum_n as f64,
                "l_loc": sum_loc / sum_n as f64,
                "skipped": state.skipped,
                "seconds": seconds_before + start.elapsed().as_secs_f64(),
            }));
            pb.set_message(format!(
                "L_edit {:.3} L_loc {:.4}",
                sum_edit / sum_n as f64,
                sum_loc / sum_n as f64
            ));
            (sum_edit, sum_loc, sum_n) = (0.0, 0.0, 0);
        }
        let validating = state.step % t.val_every == 0;
        if validating {
            let v = validate(&mut mend, model, &val_items, config)?;
            let l = v["loss"].as_f64().unwrap_or(f64::INFINITY);
            let better = state.best.is_none_or(|b| l < b);
            if better {
                state.best = Some(l);
                state.best_step = state.step;
            }
            state
                .curve
                .push(serde_json::json!({"step": state.step, "val": v, "best": better}));
            state.seconds = seconds_before + start.elapsed().as_secs_f64();
            save_outputs(&mend, &state, better)?;
            if state.step - state.best_step >= t.patience {
                stopped_early = true;
            }
        }
        let interrupted = crate::output::interrupted();
        let due = !opts.checkpoint_every.is_zero() && last_save.elapsed() >= opts.checkpoint_every;
        if validating || due || interrupted.is_err() {
            state.pending = pending;
            state.sums = (sum_edit, sum_loc, sum_n);
            state.seconds = seconds_before + start.elapsed().as_secs_f64();
            save_resume(&mend, &state, &adam, &adam_alpha)?;
            last_save = Instant::now();
        }
        if let Err(e) = interrupted {
            pb.abandon();
            eprintln!(
                "note: stopped at step {}; the same command resumes from {}",
                state.step,
                resume_dir.display()
            );
            return Err(e);
        }
        if stopped_early {
            break;
        }
        // More than 1 % of the steps lost to non-finite values is a broken run (EasyEdit
        // #525 trained on, every step skipped), not one to keep.
        if validating && state.skipped * 100 > state.step {
            pb.abandon();
            return Err(Error::data(
                &opts.out,
                format!(
                    "MEND's training skipped {} of {} steps for a loss or gradient that was not \
                     finite (over 1 %); lower train.lr, train.lr_alpha or train.alpha_init",
                    state.skipped, state.step
                ),
            ));
        }
    }
    pb.finish_and_clear();
    state.seconds = seconds_before + start.elapsed().as_secs_f64();
    if state.best.is_none() {
        // Fewer steps than one validation interval: validate the end.
        let v = validate(&mut mend, model, &val_items, config)?;
        state.best = v["loss"].as_f64();
        state.best_step = state.step;
        state
            .curve
            .push(serde_json::json!({"step": state.step, "val": v, "best": true}));
        save_outputs(&mend, &state, true)?;
    } else {
        save_outputs(&mend, &state, false)?;
    }
    let _ = std::fs::remove_dir_all(&resume_dir);
    Ok(TrainReport {
        steps: state.step,
        best_step: state.best_step,
        best_val_loss: state.best,
        skipped: state.skipped,
        seconds: state.seconds,
        stopped_early,
        resumed_from,
        editor: editor_path,
        recipe: recipe_path,
    })
}

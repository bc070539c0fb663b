//! The fine-tuning editor (METHOD.md): conditional likelihood on the edits (E), their
//! random-prefix paraphrases (P) and unedited facts (R), optionally with a plain
//! language-model loss, all edits of a call in one shuffled training set.

pub mod recipe;
pub mod resume;

use std::time::Instant;

use serde::Serialize;
use tch::{Kind, Tensor};

use super::augment::{self, Fact, Rng};
use super::editor::{Editor, EditorState};
use super::layers::layer_range;
use crate::data::EditRecord;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use crate::train::{AdamW, AdamWConfig, Example, backward_in_slices, target_token_nlls};
use recipe::{FactMode, LossKind, Recipe};
use resume::{ResumePoint, Saved};

/// What a training run did, for the run report.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub edits: usize,
    /// Examples by kind: edits, prefixed edits, unedited facts.
    pub examples: [usize; 3],
    /// Subject-spelling examples (`augment.subject`).
    pub subject_examples: usize,
    pub steps: usize,
    pub trained_params: Vec<String>,
    pub trained_numel: usize,
    /// Loss after each step.
    pub loss: Vec<f64>,
    pub seconds: f64,
    pub examples_per_s: f64,
    pub tokens_per_s: f64,
    /// How training computed (`f32` or `bf16-mixed`; `optim.precision = "auto"` picks by
    /// the device) and why.
    pub precision: String,
    pub precision_reason: String,
    /// The prefixes used (P), so a run can be repeated.
    pub prefixes: Vec<String>,
}

/// Fine-tuning editor.
pub struct FtEditor {
    pub recipe: Recipe,
    name: String,
    /// Pool of unedited facts (R).
    pool: Vec<Fact>,
    /// Tokenised plain text for the LM loss.
    lm_tokens: Vec<u32>,
    /// Prefixes sampled from the unedited model at the first edit, then reused.
    prefixes: Option<Vec<String>>,
    pub progress: bool,
    /// Reports of every `edit` call.
    pub reports: Vec<TrainReport>,
    /// Write the shuffled training set (token ids) here, e.g. to train the same set
    /// elsewhere for comparison.
    pub dump_examples: Option<std::path::PathBuf>,
    /// Save a resume point of each training run here, and continue from one found there
    /// ([`resume`]); `None`: a run interrupted starts again.
    pub resume: Option<ResumePoint>,
    /// Tokenized pool facts, by pool index.
    fact_cache: std::cell::RefCell<std::collections::HashMap<usize, Vec<Example>>>,
}

impl FtEditor {
    /// `pool`: unedited facts (needed when the recipe draws them); `lm_text`: text for
    /// the LM loss (needed when `lm_gamma > 0`).
    pub fn new(
        name: &str,
        recipe: Recipe,
        pool: Vec<Fact>,
        lm_text: Option<&str>,
        tok: &Tokenizer,
    ) -> Result<Self> {
        if recipe.augment.facts != FactMode::None
            && recipe.augment.facts_per_edit > 0
            && pool.is_empty()
        {
            return Err(Error::Input(
                "the recipe draws unedited facts but there is no fact pool: set augment.fact_pool=FILE or augment.facts=none"
                    .into(),
            ));
        }
        if recipe.optim.clamp > 0.0 && recipe.train.lora_rank > 0 {
            return Err(Error::Input(
                "optim.clamp bounds the trained weights themselves; it cannot be combined with LoRA (train.lora_rank > 0)".into(),
            ));
        }
        let lm_tokens = match (recipe.augment.lm_gamma > 0.0, lm_text) {
            (false, _) => Vec::new(),
            (true, Some(t)) => tok.encode(t, false)?,
            (true, None) => {
                return Err(Error::Input(
                    "augment.lm_gamma > 0 needs a text file (augment.lm_text)".into(),
                ));
            }
        };
        if recipe.augment.lm_gamma > 0.0 && lm_tokens.len() < recipe.augment.lm_block + 1 {
            return Err(Error::Input("the LM text is shorter than one block".into()));
        }
        Ok(FtEditor {
            recipe,
            name: name.to_owned(),
            pool,
            lm_tokens,
            prefixes: None,
            progress: false,
            reports: Vec::new(),
            dump_examples: None,
            resume: None,
            fact_cache: Default::default(),
        })
    }

    /// Samples the random prefixes (P) from `model` unless they are there already: once,
    /// from the unedited model, and reused by every later edit.
    fn sample_prefixes(&mut self, model: &Model, tok: &Tokenizer) -> Result<()> {
        let a = &self.recipe.augment;
        if a.prefixes && self.prefixes.is_none() {
            self.prefixes = Some(augment::sample_prefixes(
                model,
                tok,
                &a.prefix_lengths,
                self.recipe.optim.seed,
            )?);
        }
        Ok(())
    }

    /// The parameters the recipe trains, by name.
    fn selected(&self, model: &Model) -> Result<Vec<String>> {
        let t = &self.recipe.train;
        let mut patterns = t.params.clone();
        if !t.layers.trim().is_empty() {
            let (a, b) = layer_range(t.layers.trim(), model.num_layers())?;
            patterns.extend(model.config().module_patterns(a, b, &t.modules)?);
        }
        let names: Vec<String> = model
            .params
            .names()
            .filter(|n| patterns.iter().any(|p| crate::model::glob_match(p, n)))
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            return Err(Error::NoMatch(patterns.join(", ")));
        }
        Ok(names)
    }

    /// Tokenised training examples of `records`, by kind.
    fn examples(
        &self,
        tok: &Tokenizer,
        records: &[EditRecord],
        prefixes: &[String],
        max_positions: usize,
    ) -> Result<[Vec<Example>; 4]> {
        let r = &self.recipe;
        let target = |t: &str| -> Result<Vec<u32>> {
            let mut ids = tok.encode(&format!(" {t}"), false)?;
            if ids.is_empty() {
                return Err(Error::Input(format!("target {t:?} tokenizes to nothing")));
            }
            if r.loss.eos {
                ids.extend(tok.eos_id);
            }
            Ok(ids)
        };
        let example = |prompt: &str, tgt: &[u32]| -> Result<Vec<Example>> {
            let p = tok.encode(prompt, true)?;
            if p.is_empty() {
                return Err(Error::Input(format!(
                    "prompt {prompt:?} tokenizes to nothing"
                )));
            }
            if p.len() + tgt.len() > max_positions {
                return Err(Error::ContextOverflow {
                    len: p.len() + tgt.len(),
                    max: max_positions,
                });
            }
            Ok(match r.loss.kind {
                LossKind::Conditional => vec![Example {
                    prompt: p,
                    target: tgt.to_vec(),
                }],
                // Naive fine-tuning: every token after the first is a target.
                LossKind::Full => {
                    let all = [p, tgt.to_vec()].concat();
                    vec![Example {
                        prompt: all[..1].to_vec(),
                        target: all[1..].to_vec(),
                    }]
                }
                // One example per target token, each predicted from the whole prompt.
                LossKind::PromptLast => tgt
                    .iter()
                    .map(|&t| Example {
                        prompt: p.clone(),
                        target: vec![t],
                    })
                    .collect(),
            })
        };
        let picks = match r.augment.facts {
            FactMode::None => vec![Vec::new(); records.len()],
            FactMode::Random => augment::random_facts(
                self.pool.len(),
                records.len(),
                r.augment.facts_per_edit,
                r.optim.seed ^ 0xFAC7,
            ),
            FactMode::Nearest => {
                augment::nearest_facts(&self.pool, records, r.augment.facts_per_edit)
            }
        };
        let (mut e, mut p, mut f, mut s) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (rec, picks) in records.iter().zip(picks) {
            let mut one = |rec: &EditRecord| -> Result<()> {
                let new = target(&rec.target_new)?;
                let prompt = rec.rewrite_prompt();
                if r.augment.concat && !picks.is_empty() {
                    // SAUL: the edit sentence carries each fact after it.
                    for &i in &picks {
                        let fact = &self.pool[i];
                        let mut joined = new.clone();
                        joined.extend(
                            tok.encode(&format!(" {} {}", fact.prompt, fact.target), false)?,
                        );
                        e.extend(example(&prompt, &joined)?);
                    }
                } else {
                    e.extend(example(&prompt, &new)?);
                }
                if r.augment.subject {
                    s.extend(subject_example(tok, rec)?);
                }
                for pre in prefixes {
                    p.extend(example(&format!("{pre}{prompt}"), &new)?);
                }
                for &i in picks.iter().filter(|_| !r.augment.concat) {
                    // A fact drawn for several edits is tokenized once.
                    let cached = self.fact_cache.borrow().get(&i).cloned();
                    let ex = match cached {
                        Some(ex) => ex,
                        None => {
                            let fact = &self.pool[i];
                            let ex = example(&fact.prompt, &target(&fact.target)?)?;
                            self.fact_cache.borrow_mut().insert(i, ex.clone());
                            ex
                        }
                    };
                    f.extend(ex);
                }
                Ok(())
            };
            one(rec).map_err(|err| err.at_record(&rec.id))?;
        }
        Ok([e, p, f, s])
    }

    /// Trains `records` into `model`.
    pub fn train(
        &mut self,
        model: &mut Model,
        tok: &Tokenizer,
        records: &[EditRecord],
    ) -> Result<TrainReport> {
        if records.is_empty() {
            return Err(Error::Input("no edits to make".into()));
        }
        let r = self.recipe.clone();
        self.sample_prefixes(model, tok)?;
        let prefixes = self.prefixes.clone().unwrap_or_default();
        let [e, p, f, s] = self.examples(tok, records, &prefixes, model.max_positions())?;
        let counts = [e.len(), p.len(), f.len()];
        let subject_examples = s.len();
        // The edits' own examples, for the convergence check (before shuffling).
        let own = if r.optim.converge_loss > 0.0 {
            e.clone()
        } else {
            Vec::new()
        };
        let mut all: Vec<Example> = e.into_iter().chain(p).chain(f).chain(s).collect();
        let mut rng = Rng(r.optim.seed);
        rng.shuffle(&mut all);
        if let Some(path) = &self.dump_examples {
            let ex: Vec<_> = all
                .iter()
                .map(|e| serde_json::json!({"prompt": e.prompt, "target": e.target}))
                .collect();
            let text =
                serde_json::to_string(&serde_json::json!({"examples": ex, "counts": counts}))
                    .map_err(|e| Error::Input(e.to_string()))?;
            std::fs::write(path, text).map_err(|e| Error::io(path, e))?;
        }

        let mut selected = self.selected(model)?;
        model.params.freeze_all();
        let lora = r.train.lora_rank > 0;
        if lora {
            // Adapters go beside linear weights only (not biases or norms).
            selected.retain(|n| {
                n.ends_with(".weight") && model.params.get(n).is_ok_and(|t| t.dim() == 2)
            });
        }
        let trained = if lora {
            model.add_lora(
                &selected,
                r.train.lora_rank,
                r.train.lora_alpha,
                r.optim.seed as i64,
            )?
        } else {
            for n in &selected {
                model.params.set_trainable(n, true)?;
            }
            selected
        };
        let numel = trained
            .iter()
            .map(|n| model.params.get(n).map_or(0, |t| t.numel()))
            .sum();
        // Only what trains can change: a copy of it restores the model if training fails.
        let snapshot = model.params.snapshot_of(&trained)?;
        let (precision, precision_reason) = r.optim.precision.resolve(model.device());
        crate::runtime::warn_if_emulated(precision, model.device());
        let profile = crate::runtime::OpProfile::from_env()?;
        let before = model.set_precision(precision);
        let result = {
            let _lowered = model.frozen_in_bf16();
            self.run(model, &all, &own, &r, &trained)
        };
        model.set_precision(before);
        if let Some(p) = profile {
            p.finish()?;
        }
        model.params.freeze_all();
        let Run {
            loss,
            seconds,
            seen,
            tokens,
        } = match result {
            Ok(v) => v,
            Err(e) => {
                // A run that failed (not one that was stopped) has nothing to resume.
                if !matches!(e, Error::Interrupted { .. })
                    && let Some(point) = &self.resume
                {
                    point.remove();
                }
                model.params.restore(&snapshot)?;
                if lora {
                    model.merge_lora()?;
                }
                return Err(e);
            }
        };
        if lora {
            model.merge_lora()?;
        }
        let report = TrainReport {
            edits: records.len(),
            examples: counts,
            subject_examples,
            steps: loss.len(),
            trained_params: trained,
            trained_numel: numel,
            loss,
            seconds,
            examples_per_s: seen as f64 / seconds,
            tokens_per_s: tokens as f64 / seconds,
            precision: precision.name().to_owned(),
            precision_reason,
            prefixes,
        };
        self.reports.push(report.clone());
        Ok(report)
    }

    /// The optimisation loop. `own`: the edits' own examples, checked for convergence
    /// past the recipe's epochs (`optim.converge_loss`).
    fn run(
        &self,
        model: &Model,
        all: &[Example],
        own: &[Example],
        r: &Recipe,
        trained: &[String],
    ) -> Result<Run> {
        let bs = if r.optim.batch_size == 0 {
            all.len()
        } else {
            r.optim.batch_size
        };
        let batches: Vec<&[Example]> = all.chunks(bs).collect();
        let scheduled = batches.len() * r.optim.epochs;
        let mut total = scheduled.max(r.optim.min_steps);
        if r.optim.max_steps > 0 {
            total = total.min(r.optim.max_steps);
        }
        let mut opt = AdamW::new(
            &model.params,
            AdamWConfig {
                lr: r.optim.lr,
                weight_decay: r.optim.weight_decay,
                ..AdamWConfig::default()
            },
        )?;
        let pb = crate::progress::bar(self.progress, total, "train");
        // FT-L's box: the trained weights as they were before the first step.
        let originals: Vec<Tensor> = if r.optim.clamp > 0.0 {
            opt.params().iter().map(|p| p.detach().copy()).collect()
        } else {
            Vec::new()
        };
        let gamma = r.augment.lm_gamma;
        let mut lm_rng = Rng(r.optim.seed ^ 0x11);
        let start = Instant::now();
        let mut curve = Vec::with_capacity(total);
        // Examples and tokens trained on (min_steps may repeat batches).
        let (mut seen, mut tokens) = (0, 0);
        // Steps in a row with every edit under `converge_loss`.
        let mut settled = 0;
        let mut guard = DivergenceGuard::new(
            r.optim.diverge_factor,
            batches.len(),
            starting_loss(model, &batches, r.optim.diverge_factor)?,
        );
        // Everything above is measured on the weights before training; a resume point
        // puts the loop's state back on top of it.
        let fingerprint = match &self.resume {
            Some(_) => fingerprint(model, all, r, trained)?,
            None => String::new(),
        };
        let mut first = 0;
        let mut offset = 0.0;
        if let Some(found) = match &self.resume {
            Some(point) => point.load(&fingerprint)?,
            None => None,
        } {
            let s = found.saved;
            if s.total != total || s.params != trained {
                return Err(Error::Input("a resume point of another schedule".into()));
            }
            {
                let _g = tch::no_grad_guard();
                for (p, w) in opt.params().iter().zip(&found.weights) {
                    p.shallow_clone().copy_(w);
                }
            }
            opt.set_state(found.adam)?;
            (first, curve, seen, tokens, settled) = (s.step, s.loss, s.seen, s.tokens, s.settled);
            guard.start = s.guard_start;
            guard.recent = s.guard_recent.into();
            lm_rng.0 = s.lm_rng;
            offset = s.seconds;
            pb.set_position(first as u64);
            eprintln!(
                "resuming training at step {first} of {total} from {}",
                self.resume.as_ref().expect("found").dir.display()
            );
        }
        // With a resume point, SIGINT and SIGTERM stop training at the next step
        // boundary after saving it.
        let _held = self
            .resume
            .as_ref()
            .map(|_| crate::output::HoldSignals::new());
        let mut last_save = Instant::now();
        for step in first..total {
            // Checks start early enough that a run converged by the end of its epochs
            // stops right there.
            if step + r.optim.converge_steps > scheduled && !own.is_empty() {
                let worst = target_token_nlls(model, own)?
                    .iter()
                    .map(|t| t.iter().sum::<f64>() / t.len().max(1) as f64)
                    .fold(0.0, f64::max);
                settled = if worst < r.optim.converge_loss {
                    settled + 1
                } else {
                    0
                };
                if settled >= r.optim.converge_steps {
                    break;
                }
            }
            let batch = batches[step % batches.len()];
            opt.set_lr(r.lr_at(step, total))?;
            opt.zero_grad()?;
            let edits = backward_in_slices(model, batch, SLICE_TOKENS, 1.0 - gamma)?;
            let mut value = edits;
            if gamma > 0.0 {
                let lm = self.lm_batch(&mut lm_rng, (batch.len() / 8).max(1), r.augment.lm_block);
                value += backward_in_slices(model, &lm, SLICE_TOKENS, gamma)?;
            }
            // The guard watches the edits' own loss (the LM part has a scale of its own).
            let watched = if gamma < 1.0 {
                edits / (1.0 - gamma)
            } else {
                value
            };
            if let Err(e) = guard
                .check(step, watched)
                .and_then(|_| guard.check_finite(step, value))
            {
                pb.finish_and_clear();
                return Err(e);
            }
            // The reference loop (ROME's FT, EasyEdit's FT-L/FT-M, LocFT-BF): a batch
            // already under `stop_loss` takes no step, and an epoch whose batches average
            // under it ends training.
            if value >= r.optim.stop_loss {
                if r.optim.clip > 0.0 {
                    clip_grad_norm(opt.params(), r.optim.clip);
                }
                opt.step()?;
                if r.optim.clamp > 0.0 {
                    let _g = tch::no_grad_guard();
                    for (p, w0) in opt.params().iter().zip(&originals) {
                        p.shallow_clone().copy_(
                            &p.clamp_tensor(Some(w0 - r.optim.clamp), Some(w0 + r.optim.clamp)),
                        );
                    }
                }
            }
            curve.push(value);
            seen += batch.len();
            tokens += batch
                .iter()
                .map(|x| x.prompt.len() + x.target.len())
                .sum::<usize>();
            pb.set_message(format!("loss {value:.4}"));
            pb.inc(1);
            if r.optim.stop_loss > 0.0 && (step + 1) % batches.len() == 0 {
                let epoch = &curve[curve.len().saturating_sub(batches.len())..];
                if epoch.iter().sum::<f64>() / (epoch.len() as f64) < r.optim.stop_loss {
                    break;
                }
            }
            if let Some(point) = &self.resume {
                let stop = crate::output::interrupted();
                if stop.is_err() || last_save.elapsed() >= point.every {
                    let saved = Saved {
                        fingerprint: fingerprint.clone(),
                        step: step + 1,
                        total,
                        loss: curve.clone(),
                        seen,
                        tokens,
                        settled,
                        guard_start: guard.start,
                        guard_recent: guard.recent.iter().copied().collect(),
                        lm_rng: lm_rng.0,
                        seconds: offset + start.elapsed().as_secs_f64(),
                        adam_steps: opt.state().steps,
                        params: trained.to_vec(),
                    };
                    point.save(&saved, opt.params(), &opt.state())?;
                    last_save = Instant::now();
                }
                if let Err(e) = stop {
                    pb.finish_and_clear();
                    eprintln!(
                        "training stopped after step {} of {total}; its resume point is in {}: \
                         the same command again continues from there",
                        step + 1,
                        point.dir.display()
                    );
                    return Err(e);
                }
            } else if let Err(e) = crate::output::interrupted() {
                // Held signals without a resume point (the Python module): stop here,
                // and the caller restores the weights.
                pb.finish_and_clear();
                return Err(e);
            }
        }
        pb.finish_and_clear();
        if let Some(point) = &self.resume {
            point.remove();
        }
        Ok(Run {
            loss: curve,
            seconds: offset + start.elapsed().as_secs_f64(),
            seen,
            tokens,
        })
    }

    /// Random blocks of the LM text, each predicted from its first token.
    fn lm_batch(&self, rng: &mut Rng, n: usize, block: usize) -> Vec<Example> {
        (0..n)
            .map(|_| {
                let s = rng.below(self.lm_tokens.len() - block);
                let b = &self.lm_tokens[s..s + block + 1];
                Example {
                    prompt: b[..1].to_vec(),
                    target: b[1..].to_vec(),
                }
            })
            .collect()
    }
}

/// The subject-spelling example of an edit (`augment.subject`): the rewrite prompt's
/// tokens through the subject's first token, then the subject's other tokens. `None`
/// when the subject is one token or does not start on a token boundary.
fn subject_example(tok: &Tokenizer, rec: &EditRecord) -> Result<Option<Example>> {
    Ok(rec.subject_span(tok)?.and_then(|span| {
        let split = span.start + 1;
        (span.ids.len() > split).then(|| Example {
            prompt: span.ids[..split].to_vec(),
            target: span.ids[split..].to_vec(),
        })
    }))
}

/// The token-mean loss of the first batches (as many as the divergence guard's window)
/// before any step, for [`DivergenceGuard`]; `None` when one batch holds everything (the
/// first step's own loss is then measured before any update) or the guard is off.
fn starting_loss(model: &Model, batches: &[&[Example]], factor: f64) -> Result<Option<f64>> {
    if batches.len() < 2 || factor <= 0.0 {
        return Ok(None);
    }
    let (mut sum, mut tokens) = (0.0, 0);
    for batch in &batches[..batches.len().min(GUARD_WINDOW)] {
        for t in target_token_nlls(model, batch)? {
            sum += t.iter().sum::<f64>();
            tokens += t.len();
        }
    }
    Ok(Some(sum / tokens.max(1) as f64))
}

/// What a resume point must match: the training set in its order, the recipe, the
/// trained parameters' names and values before training, and the precision.
fn fingerprint(model: &Model, all: &[Example], r: &Recipe, trained: &[String]) -> Result<String> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for e in all {
        (&e.prompt, &e.target).hash(&mut h);
    }
    serde_json::to_string(r).expect("serialisable").hash(&mut h);
    for name in trained {
        name.hash(&mut h);
        model.params.value_hash(name)?.hash(&mut h);
    }
    model.precision().name().hash(&mut h);
    Ok(format!("{:016x}", h.finish()))
}

/// Steps whose mean loss the divergence guard compares with the start.
const GUARD_WINDOW: usize = 8;

/// Stops a training run whose loss diverges: a loss that is not finite, or a mean loss
/// over the last steps (a window of up to [`GUARD_WINDOW`] batches, so that one hard
/// batch does not trip it) above `factor` times the loss at the start (of those same
/// first batches, before any update). A start under one nat counts as one, so that a run
/// that starts near zero (an edit the model nearly states already) is not stopped by
/// noise.
struct DivergenceGuard {
    factor: f64,
    window: usize,
    start: Option<f64>,
    recent: std::collections::VecDeque<f64>,
}

impl DivergenceGuard {
    /// `start`: the starting loss, when measured apart ([`starting_loss`]); otherwise the
    /// first step's.
    fn new(factor: f64, batches: usize, start: Option<f64>) -> Self {
        let window = batches.clamp(1, GUARD_WINDOW);
        DivergenceGuard {
            factor,
            window,
            start,
            recent: std::collections::VecDeque::with_capacity(window),
        }
    }

    /// An error if `loss` (all of the step's) is not finite.
    fn check_finite(&self, step: usize, loss: f64) -> Result<()> {
        if loss.is_finite() {
            return Ok(());
        }
        Err(Error::Diverged(format!(
            "the loss became {loss} at step {step} (try a lower optim.lr)"
        )))
    }

    /// Takes the watched loss of `step`; an error when the run is diverging.
    fn check(&mut self, step: usize, loss: f64) -> Result<()> {
        self.check_finite(step, loss)?;
        let start = *self.start.get_or_insert(loss);
        if self.factor <= 0.0 {
            return Ok(());
        }
        if self.recent.len() == self.window {
            self.recent.pop_front();
        }
        self.recent.push_back(loss);
        let mean = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        if self.recent.len() == self.window && mean > self.factor * start.max(1.0) {
            let steps = if self.window == 1 {
                format!("at step {step}")
            } else {
                format!("mean of steps {}–{step}", step + 1 - self.window)
            };
            return Err(Error::Diverged(format!(
                "the loss rose from {start:.3} at the start to {mean:.3} ({steps}), over \
                 ×{} (try a lower optim.lr; optim.diverge_factor 0 turns the check off)",
                self.factor
            )));
        }
        Ok(())
    }
}

/// What the optimisation loop did.
struct Run {
    /// Loss before each step.
    loss: Vec<f64>,
    seconds: f64,
    /// Examples and tokens the steps trained on.
    seen: usize,
    tokens: usize,
}

/// Tokens a training slice holds at most ([`backward_in_slices`]): bounds the memory of
/// full-batch recipes (FT-L, FT-M) whatever the number of edits.
const SLICE_TOKENS: usize = 2048;

/// Scales gradients so their global L2 norm is at most `max`.
fn clip_grad_norm(params: &[tch::Tensor], max: f64) {
    let _g = tch::no_grad_guard();
    let grads: Vec<tch::Tensor> = params
        .iter()
        .map(|p| p.grad())
        .filter(|g| g.defined())
        .collect();
    let total = grads
        .iter()
        .map(|g| {
            g.to_kind(Kind::Float)
                .square()
                .sum(Kind::Float)
                .double_value(&[])
        })
        .sum::<f64>()
        .sqrt();
    if total > max {
        let scale = max / (total + 1e-6);
        for mut g in grads {
            let _ = g.g_mul_scalar_(scale);
        }
    }
}

impl Editor for FtEditor {
    fn name(&self) -> &str {
        &self.name
    }

    fn edit(&mut self, model: &mut Model, tok: &Tokenizer, records: &[EditRecord]) -> Result<()> {
        self.train(model, tok, records).map(|_| ())
    }

    fn writes(&self, model: &Model) -> Result<Option<Vec<String>>> {
        self.selected(model).map(Some)
    }

    fn begin(&mut self, model: &Model, tok: &Tokenizer) -> Result<()> {
        self.sample_prefixes(model, tok)
    }

    fn state(&self) -> EditorState {
        EditorState {
            tensors: Vec::new(),
            values: serde_json::json!({ "prefixes": self.prefixes }),
        }
    }

    fn set_state(&mut self, state: EditorState) -> Result<()> {
        if let Some(p) = state.values.get("prefixes").filter(|p| !p.is_null()) {
            self.prefixes = Some(serde_json::from_value(p.clone()).map_err(|e| {
                Error::Input(format!("a checkpoint's editor state: prefixes: {e}"))
            })?);
        }
        Ok(())
    }

    fn report(&self) -> Option<serde_json::Value> {
        serde_json::to_value(serde_json::json!({"recipe": self.recipe, "runs": self.reports})).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `losses` to a guard; the step it stops at, if any.
    fn stops_at(losses: &[f64], batches: usize, start: Option<f64>) -> Option<usize> {
        let mut g = DivergenceGuard::new(3.0, batches, start);
        losses
            .iter()
            .enumerate()
            .find_map(|(i, &l)| g.check(i, l).err().map(|_| i))
    }

    #[test]
    fn the_guard_stops_a_rising_loss_and_lets_a_noisy_falling_one_run() {
        // One batch: the first step's loss is the start (SmolLM2 at lr 1e4: 5.8 → 22.6).
        assert_eq!(stops_at(&[5.81, 22.56, 16.2], 1, None), Some(1));
        assert_eq!(stops_at(&[5.81, 4.0, 2.0, 1.0], 1, None), None);
        // Mini-batches: the mean of the last four against the measured start; one hard
        // batch among easy ones does not trip it, a sustained rise does.
        let noisy = [2.0, 7.0, 1.0, 1.5, 6.5, 1.0, 1.2, 5.0];
        assert_eq!(stops_at(&noisy, 4, Some(3.0)), None);
        assert_eq!(
            stops_at(&[3.5, 12.0, 15.0, 21.3, 20.0], 4, Some(3.5)),
            Some(3)
        );
        // A start near zero counts as one nat.
        assert_eq!(stops_at(&[0.01, 0.05, 0.2, 0.04], 1, None), None);
        // Not finite: at once, whatever the factor.
        let mut off = DivergenceGuard::new(0.0, 1, None);
        assert!(off.check(0, 3.0).is_ok() && off.check(1, 1e9).is_ok());
        assert!(off.check(2, f64::NAN).is_err());
    }
}

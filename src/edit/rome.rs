//! ROME (Meng et al., 2022): a rank-one update of one MLP output projection that maps
//! the subject's key to a value that states the new target (METHOD.md).
//!
//! 1. key k*: the MLP output projection's input at the subject's last token, averaged
//!    over the prompt and random-prefix contexts;
//! 2. value v*: the layer's MLP output there plus a vector δ optimised so the model
//!    predicts the target (NLL over the contexts + KL on "{subject} is a" + a norm
//!    penalty, δ's norm clamped);
//! 3. ΔW = (v* − W k*) (C⁻¹k*)ᵀ / ((C⁻¹k*)ᵀ k*), C the keys' second moment
//!    ([`super::stats`]).
//!
//! The pieces (keys, value optimisation, closed forms) are shared with MEMIT
//! ([`super::memit`]).

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{COptimizer, Kind, Tensor};

use super::Editor;
use super::augment;
use super::config::layer_range;
use super::stats::{StatsOptions, second_moments};
use crate::data::EditRecord;
use crate::error::{Error, Result};
use crate::model::{Input, LogitsAt, Model, Probe, Site};
use crate::tokenizer::Tokenizer;

/// How v* (ROME) or z (MEMIT) is optimised (`[value]` in their recipes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueConfig {
    /// Adam steps.
    pub steps: usize,
    pub lr: f64,
    /// Weight of KL(p_edited ‖ p_unedited) on "{subject} is a".
    pub kl_factor: f64,
    /// Weight of ‖δ‖² / ‖v‖².
    pub weight_decay: f64,
    /// ‖δ‖ is kept at most this times ‖v‖.
    pub clamp_norm_factor: f64,
    /// Stop once the target NLL is below this.
    pub stop_nll: f64,
    /// `[count, tokens]` of random-prefix contexts (besides the bare prompt).
    pub contexts: Vec<[usize; 2]>,
    pub seed: u64,
}

impl ValueConfig {
    pub(crate) fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(format!("recipe: {m}")));
        if self.lr.is_nan() || self.lr <= 0.0 {
            return bad(format!("value.lr must be positive, not {}", self.lr));
        }
        if self.clamp_norm_factor.is_nan() || self.clamp_norm_factor <= 0.0 {
            return bad(format!(
                "value.clamp_norm_factor must be positive, not {}",
                self.clamp_norm_factor
            ));
        }
        if self.kl_factor < 0.0 || self.weight_decay < 0.0 {
            return bad("value.kl_factor and value.weight_decay must not be negative".into());
        }
        Ok(())
    }
}

/// Where the key statistics C = E[k kᵀ] come from (`[stats]` in ROME's and MEMIT's
/// recipes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    /// Plain text file the keys are read from; empty: the WikiText sample in the data
    /// folder ([`crate::data::default_text`]).
    pub text: String,
    /// Token positions sampled.
    pub samples: usize,
    /// Cache the statistics (by the model's weights hash, layer and sample count).
    pub cache: bool,
    /// The cache folder; empty: `$FTEDIT_CACHE`, else `~/.cache/ftedit`.
    pub cache_dir: String,
}

impl StatsConfig {
    pub(crate) fn options(&self, progress: bool) -> StatsOptions {
        let text = if self.text.is_empty() {
            crate::data::default_text()
        } else {
            PathBuf::from(&self.text)
        };
        let mut o = StatsOptions::new(text, self.samples);
        o.cache_dir = self.cache_dir();
        o.progress = progress;
        o
    }

    /// The cache folder, when caching.
    pub(crate) fn cache_dir(&self) -> Option<PathBuf> {
        self.cache.then(|| {
            if self.cache_dir.is_empty() {
                crate::cache::dir()
            } else {
                PathBuf::from(&self.cache_dir)
            }
        })
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.samples == 0 {
            return Err(Error::Input(
                "recipe: stats.samples must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// ROME's settings (`recipes/rome.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RomeConfig {
    #[serde(default)]
    pub description: String,
    /// The edited layer: a number or a depth fraction (`1/5`: a fifth of the way up).
    pub layer: String,
    pub value: ValueConfig,
    pub stats: StatsConfig,
}

impl RomeConfig {
    pub(crate) fn check(&self) -> Result<()> {
        // Any depth will do to check the spec's form.
        let (lo, hi) = layer_range(&self.layer, 1 << 20)?;
        if lo != hi {
            return Err(Error::Input(format!(
                "recipe: ROME edits one layer, not '{}'",
                self.layer
            )));
        }
        self.value.check()?;
        self.stats.check()
    }
}

/// A token sequence with the position of the subject's last token.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    pub ids: Vec<u32>,
    pub subject_last: usize,
}

/// `context` + the record's prompt, tokenized so that the subject's last token has a
/// known position; `tail` tokens follow the prompt. A prompt without `{}` (some zsRE
/// questions do not contain their subject) is read at its last token.
pub(crate) fn locate(
    tok: &Tokenizer,
    context: &str,
    record: &EditRecord,
    tail: &[u32],
) -> Result<Located> {
    let (head, rest) = match record.prompt.split_once("{}") {
        Some((before, after)) => (format!("{context}{before}{}", record.subject), after),
        None => (format!("{context}{}", record.prompt), ""),
    };
    let mut ids = tok.encode(&head, true)?;
    if ids.is_empty() {
        return Err(Error::Input(format!(
            "record {}: the prompt tokenizes to nothing",
            record.id
        )));
    }
    let subject_last = ids.len() - 1;
    if !rest.is_empty() {
        ids.extend(tok.encode(rest, false)?);
    }
    ids.extend_from_slice(tail);
    Ok(Located { ids, subject_last })
}

/// The target's tokens (with a leading space, as every editor scores them).
pub(crate) fn target_ids(tok: &Tokenizer, record: &EditRecord) -> Result<Vec<u32>> {
    let ids = tok.encode(&format!(" {}", record.target_new), false)?;
    if ids.is_empty() {
        return Err(Error::Input(format!(
            "record {}: target {:?} tokenizes to nothing",
            record.id, record.target_new
        )));
    }
    Ok(ids)
}

/// Random-prefix contexts sampled from the model, after the bare prompt ("").
pub(crate) fn contexts(model: &Model, tok: &Tokenizer, cfg: &ValueConfig) -> Result<Vec<String>> {
    let mut out = vec![String::new()];
    out.extend(augment::sample_prefixes(
        model,
        tok,
        &cfg.contexts,
        cfg.seed,
    )?);
    Ok(out)
}

/// The mean key `[records, intermediate]` of each record at `layer`, over `contexts`.
/// Records run together, up to [`KEY_BATCH`] sequences a pass, each pass stopping at
/// `layer`.
pub(crate) fn mean_keys(
    model: &Model,
    tok: &Tokenizer,
    records: &[EditRecord],
    layer: usize,
    contexts: &[String],
) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let per_pass = (KEY_BATCH / contexts.len().max(1)).max(1);
    let mut means = Vec::with_capacity(records.len());
    for chunk in records.chunks(per_pass) {
        let mut located = Vec::with_capacity(chunk.len() * contexts.len());
        for rec in chunk {
            for c in contexts {
                located.push(locate(tok, c, rec, &[])?);
            }
        }
        let seqs: Vec<&[u32]> = located.iter().map(|l| l.ids.as_slice()).collect();
        let input = Input::right_padded(&seqs, model.device())?;
        let t = input.seq_len();
        let mut capture = crate::model::CaptureKeys {
            layers: vec![layer],
            keys: Vec::new(),
        };
        model.run_hooks(&input, &mut capture)?;
        let (_, key) = capture
            .keys
            .pop()
            .ok_or_else(|| Error::Input(format!("layer {layer} produced no key")))?;
        let width = key.size()[2];
        let idx: Vec<i64> = located
            .iter()
            .enumerate()
            .map(|(r, l)| (r * t + l.subject_last) as i64)
            .collect();
        let picked = key
            .reshape([-1, width])
            .index_select(0, &Tensor::from_slice(&idx).to_device(key.device()));
        means.push(
            picked
                .to_kind(Kind::Double)
                .view([chunk.len() as i64, contexts.len() as i64, width])
                .mean_dim(1, false, Kind::Double),
        );
    }
    Ok(Tensor::cat(&means, 0))
}

/// Sequences per forward pass when collecting keys: big enough that the matrix products
/// run near their peak, small enough that the activations stay well under a gigabyte.
const KEY_BATCH: usize = 192;

/// Optimises the vector added at `site` of `layer` at the subject's last token so the
/// model states the record's target; returns `(original value, optimised value)`, both
/// `[hidden]` in f64, the original read from the bare prompt.
pub(crate) fn optimize_value(
    model: &Model,
    tok: &Tokenizer,
    record: &EditRecord,
    layer: usize,
    site: Site,
    contexts: &[String],
    cfg: &ValueConfig,
) -> Result<(Tensor, Tensor)> {
    let target = target_ids(tok, record)?;
    let tail = &target[..target.len() - 1];
    let mut seqs = Vec::new();
    let mut subject = Vec::new();
    let mut at = Vec::new();
    let mut labels = Vec::new();
    for (row, c) in contexts.iter().enumerate() {
        let l = locate(tok, c, record, tail)?;
        let prompt_len = l.ids.len() - tail.len();
        for (j, &t) in target.iter().enumerate() {
            at.push((row, prompt_len - 1 + j));
            labels.push(t as i64);
        }
        subject.push(l.subject_last);
        seqs.push(l.ids);
    }
    // The KL prompt keeps the subject's other properties ("{subject} is a").
    let kl_record = EditRecord {
        prompt: "{} is a".into(),
        ..record.clone()
    };
    let kl = locate(tok, "", &kl_record, &[])?;
    let kl_row = seqs.len();
    at.push((kl_row, kl.ids.len() - 1));
    subject.push(kl.subject_last);
    seqs.push(kl.ids);

    // Nothing before the subject's last token depends on δ: those tokens run once, and
    // each step runs only what follows (from the subject's last token on).
    let mut batch = model.prefill(&seqs, &subject)?;
    batch.start_at(model, layer)?;
    let t = batch.tails.seq_len();
    let positions: Vec<i64> = (0..seqs.len()).map(|r| (r * t) as i64).collect();
    let at = LogitsAt::Positions(at.into_iter().map(|(r, p)| (r, p - subject[r])).collect());
    let device = model.device();
    let labels = Tensor::from_slice(&labels).to_device(device);
    let n_tok = target.len() as f64;
    let n_ctx = contexts.len() as f64;
    // The graph starts at the probed layer: nothing below it depends on δ.
    let stage = layer + 1;

    // The unedited value and KL distribution.
    let mut probe = Probe {
        layer,
        site,
        positions,
        delta: None,
        seen: None,
    };
    let (v0, kl_init) = {
        let _g = tch::no_grad_guard();
        let logits = batch.forward(model, &at, Some(&mut probe), None)?;
        let v0 = probe
            .seen
            .take()
            .expect("probe ran")
            .get(0)
            .to_kind(Kind::Double);
        let last = logits.size()[0] - 1;
        let kl_init = logits
            .get(last)
            .to_kind(Kind::Float)
            .log_softmax(-1, Kind::Float);
        (v0, kl_init)
    };
    let v0_norm = v0.norm().double_value(&[]);
    let max_norm = cfg.clamp_norm_factor * v0_norm;
    let delta = Tensor::zeros([v0.size()[0]], (Kind::Float, device)).set_requires_grad(true);
    let mut opt = COptimizer::adam(cfg.lr, 0.9, 0.999, 0.0, 1e-8, false)?;
    opt.add_parameters(&delta, 0)?;
    for _ in 0..cfg.steps {
        opt.zero_grad()?;
        probe.delta = Some(delta.shallow_clone());
        let logits = batch
            .forward(model, &at, Some(&mut probe), Some(stage))?
            .to_kind(Kind::Float);
        let n = labels.size()[0];
        let logp = logits.narrow(0, 0, n).log_softmax(-1, Kind::Float);
        let tok_nll = -logp.gather(1, &labels.unsqueeze(1), false).squeeze_dim(1);
        let nll = tok_nll.sum(Kind::Float) / (n_tok * n_ctx);
        let kl_new = logits.get(n).log_softmax(-1, Kind::Float);
        let kl = (kl_new.exp() * (&kl_new - &kl_init)).sum(Kind::Float);
        let wd = delta.square().sum(Kind::Float) / (v0_norm * v0_norm);
        let nll_value = nll.double_value(&[]);
        if !nll_value.is_finite() {
            return Err(Error::Input(format!(
                "record {}: the value optimisation diverged (NLL {nll_value})",
                record.id
            )));
        }
        if nll_value < cfg.stop_nll {
            break;
        }
        let loss = nll + kl * cfg.kl_factor + wd * cfg.weight_decay;
        loss.backward();
        opt.step()?;
        let _g = tch::no_grad_guard();
        let norm = delta.norm().double_value(&[]);
        if norm > max_norm {
            let _ = delta.shallow_clone().g_mul_scalar_(max_norm / norm);
        }
    }
    let v = &v0 + delta.detach().to_kind(Kind::Double);
    Ok((v0, v))
}

/// ROME's closed form: ΔW `[out, in]` = (v − W k)(C⁻¹k)ᵀ / ((C⁻¹k)ᵀ k), so that
/// (W + ΔW) k = v and ΔW k' = 0 for every k' with (C⁻¹k)ᵀ k' = 0. `w` `[out, in]`,
/// `c` `[in, in]`, `k` `[in]`, `v` `[out]`; computed in f64.
pub fn rome_delta(w: &Tensor, c: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let (w, c, k, v) = (
        w.to_kind(Kind::Double),
        c.to_kind(Kind::Double),
        k.to_kind(Kind::Double),
        v.to_kind(Kind::Double),
    );
    let u = Tensor::linalg_solve(&c, &k, true);
    let r = v - w.mv(&k);
    r.outer(&u) / u.dot(&k)
}

/// MEMIT's closed form for one layer: ΔW `[out, in]` = R Kᵀ (λC + K Kᵀ)⁻¹, `k` `[in,
/// n]` the keys, `r` `[out, n]` the residuals; computed in f64.
pub fn memit_delta(c: &Tensor, k: &Tensor, r: &Tensor, lambda: f64) -> Tensor {
    let (c, k, r) = (
        c.to_kind(Kind::Double),
        k.to_kind(Kind::Double),
        r.to_kind(Kind::Double),
    );
    let a = c * lambda + k.mm(&k.transpose(0, 1));
    let adj = Tensor::linalg_solve(&a, &k, true);
    r.mm(&adj.transpose(0, 1))
}

/// Adds `delta` (`[out, in]`) to layer `layer`'s MLP output projection, whatever the
/// architecture's storage layout.
pub(crate) fn add_to_out_proj(model: &Model, layer: usize, delta: &Tensor) -> Result<()> {
    let _g = tch::no_grad_guard();
    let name = model.mlp_out_proj(layer);
    let w = model.params.get(&name)?;
    let delta = if model.config().mlp_out_proj_transposed() {
        delta.transpose(0, 1)
    } else {
        delta.shallow_clone()
    };
    let _ = w
        .shallow_clone()
        .g_add_(&delta.to_kind(w.kind()).to_device(w.device()));
    Ok(())
}

/// Layer `layer`'s MLP output projection as `[out, in]`.
pub(crate) fn out_proj(model: &Model, layer: usize) -> Result<Tensor> {
    let w = model.params.get(&model.mlp_out_proj(layer))?;
    Ok(if model.config().mlp_out_proj_transposed() {
        w.transpose(0, 1)
    } else {
        w
    })
}

/// What ROME did, for the run report.
#[derive(Debug, Clone, Serialize)]
pub struct LocateReport {
    pub method: String,
    pub layers: Vec<usize>,
    pub edits: usize,
    pub stats_seconds: f64,
    pub edit_seconds: f64,
    pub seconds_per_edit: f64,
    /// Values read from the cache instead of optimised (MEMIT's `cache_z`).
    #[serde(default)]
    pub values_from_cache: usize,
    pub value: ValueConfig,
    pub contexts: Vec<String>,
}

impl LocateReport {
    pub(crate) fn new(
        method: &str,
        layers: Vec<usize>,
        edits: usize,
        stats_seconds: f64,
        edit_seconds: f64,
        value: &ValueConfig,
        contexts: &[String],
    ) -> Self {
        LocateReport {
            method: method.into(),
            layers,
            edits,
            stats_seconds,
            edit_seconds,
            seconds_per_edit: edit_seconds / edits as f64,
            values_from_cache: 0,
            value: value.clone(),
            contexts: contexts.to_vec(),
        }
    }
}

/// What ROME and MEMIT measure once, on the unedited model, and reuse for every later
/// edit: the key statistics of the edited layers and the random-prefix contexts.
#[derive(Default)]
pub(crate) struct Prepared {
    mom2: Option<Vec<Tensor>>,
    contexts: Option<Vec<String>>,
}

impl Prepared {
    /// Measures what is still missing; returns the seconds the statistics took.
    pub(crate) fn ensure(
        &mut self,
        model: &Model,
        tok: &Tokenizer,
        layers: &[usize],
        value: &ValueConfig,
        stats: &StatsConfig,
        progress: bool,
    ) -> Result<f64> {
        let t0 = Instant::now();
        if self.mom2.is_none() {
            self.mom2 = Some(second_moments(
                model,
                tok,
                layers,
                &stats.options(progress),
            )?);
        }
        let seconds = t0.elapsed().as_secs_f64();
        if self.contexts.is_none() {
            self.contexts = Some(contexts(model, tok, value)?);
        }
        Ok(seconds)
    }

    /// The statistics (one per layer) and the contexts, after [`Prepared::ensure`].
    pub(crate) fn get(&self) -> (&[Tensor], &[String]) {
        (
            self.mom2.as_deref().expect("ensure ran"),
            self.contexts.as_deref().expect("ensure ran"),
        )
    }
}

/// ROME, applied to the records one after another.
pub struct RomeEditor {
    pub config: RomeConfig,
    pub progress: bool,
    prepared: Prepared,
    reports: Vec<LocateReport>,
}

impl RomeEditor {
    pub fn new(config: RomeConfig) -> Self {
        RomeEditor {
            config,
            progress: false,
            prepared: Prepared::default(),
            reports: Vec::new(),
        }
    }
}

impl Editor for RomeEditor {
    fn name(&self) -> &str {
        "rome"
    }

    fn edit(&mut self, model: &mut Model, tok: &Tokenizer, records: &[EditRecord]) -> Result<()> {
        if records.is_empty() {
            return Err(Error::Input("no edits to make".into()));
        }
        let (layer, _) = layer_range(&self.config.layer, model.num_layers())?;
        let cfg = &self.config;
        let stats_seconds =
            self.prepared
                .ensure(model, tok, &[layer], &cfg.value, &cfg.stats, self.progress)?;
        let (mom2, ctx) = self.prepared.get();
        let t1 = Instant::now();
        let pb = crate::progress::bar(self.progress && records.len() > 1, records.len(), "rome");
        for rec in records {
            let k = mean_keys(model, tok, std::slice::from_ref(rec), layer, ctx)?.get(0);
            let (_, v) = optimize_value(model, tok, rec, layer, Site::MlpOutput, ctx, &cfg.value)?;
            let w = out_proj(model, layer)?;
            add_to_out_proj(model, layer, &rome_delta(&w, &mom2[0], &k, &v))?;
            pb.inc(1);
        }
        pb.finish_and_clear();
        let report = LocateReport::new(
            "rome",
            vec![layer],
            records.len(),
            stats_seconds,
            t1.elapsed().as_secs_f64(),
            &cfg.value,
            ctx,
        );
        self.reports.push(report);
        Ok(())
    }

    fn report(&self) -> Option<serde_json::Value> {
        serde_json::to_value(serde_json::json!({ "runs": self.reports })).ok()
    }
}

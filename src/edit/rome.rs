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

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::augment;
use super::config::layer_range;
use super::stats::{StatsOptions, second_moments};
use super::{Editor, EditorState};
use crate::data::EditRecord;
use crate::error::{Error, Result};
use crate::model::{Input, LogitsAt, Model, Prefilled, Probe, Site};
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
    /// Edits whose values are optimised together in one batch: MEMIT's and AlphaEdit's
    /// are independent of each other; ROME's only where each edit starts from the same
    /// model (the single protocol, [`Editor::prepare`]), not when its edits follow one
    /// another.
    #[serde(default = "default_value_batch")]
    pub batch: usize,
}

fn default_value_batch() -> usize {
    16
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
        if self.batch == 0 {
            return bad("value.batch must be at least 1".into());
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

/// How many tokens of the record's bare prompt and `target` (its [`target_ids`]) the
/// value optimisation runs each step: from the subject's last token to the target's
/// second last.
fn tail_len(tok: &Tokenizer, record: &EditRecord, target: &[u32]) -> Result<usize> {
    let l = locate(tok, "", record, &target[..target.len() - 1])?;
    Ok(l.ids.len() - l.subject_last)
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

/// Logit entries (positions × vocabulary) one batch of value optimisations may hold: a
/// few hundred megabytes of f32 with their log-softmax and gradients.
const VALUE_LOGITS: usize = 48 << 20;

/// Where and how values are optimised: δ is added at `site` of `layer` (at the subject's
/// last token), the target follows each of `contexts`, `cfg` the settings.
#[derive(Clone, Copy)]
pub(crate) struct ValueTask<'a> {
    pub layer: usize,
    pub site: Site,
    pub contexts: &'a [String],
    pub cfg: &'a ValueConfig,
}

/// The values of all `records` ([`optimize_values`]), up to `cfg.batch` records a batch
/// (fewer where their logits would pass [`VALUE_LOGITS`]), records of similar tail length
/// together so little of a batch is padding; `done(i, v)` gets record `i`'s optimised
/// value as soon as its batch is through.
pub(crate) fn values_in_batches(
    model: &Model,
    tok: &Tokenizer,
    records: &[EditRecord],
    task: ValueTask,
    mut done: impl FnMut(usize, Tensor) -> Result<()>,
) -> Result<()> {
    let mut order = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let target = target_ids(tok, r)?;
        order.push((tail_len(tok, r, &target)?, target.len(), i));
    }
    order.sort_unstable();
    let vocab = model.config().vocab_size().max(1) as usize;
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        let mut logits = 0;
        while end < order.len() && end - start < task.cfg.batch {
            let per_record = (order[end].1 * task.contexts.len() + 1) * vocab;
            if end > start && logits + per_record > VALUE_LOGITS {
                break;
            }
            logits += per_record;
            end += 1;
        }
        let group: Vec<EditRecord> = order[start..end]
            .iter()
            .map(|&(_, _, i)| records[i].clone())
            .collect();
        let values = optimize_values(model, tok, &group, task)?;
        for (&(_, _, i), (_, v)) in order[start..end].iter().zip(values) {
            done(i, v)?;
        }
        start = end;
    }
    Ok(())
}

/// Optimises the vector added at the task's site at the subject's last token so the
/// model states the record's target; returns `(original value, optimised value)`, both
/// `[hidden]` in f64, the original read from the bare prompt.
pub(crate) fn optimize_value(
    model: &Model,
    tok: &Tokenizer,
    record: &EditRecord,
    task: ValueTask,
) -> Result<(Tensor, Tensor)> {
    let mut out = optimize_values(model, tok, std::slice::from_ref(record), task)?;
    Ok(out.pop().expect("one record, one value"))
}

/// [`optimize_value`] for several records in one batch: each record has its own δ, loss,
/// Adam state and stopping point, and the sum of the losses separates by record, so every
/// δ follows the path it would follow alone, up to the float rounding of a padded batch.
/// Running records together amortises each step's fixed cost; records that have stopped
/// leave the batch (their rows taken out of the prefilled batch), so they cost nothing
/// after that.
pub(crate) fn optimize_values(
    model: &Model,
    tok: &Tokenizer,
    records: &[EditRecord],
    task: ValueTask,
) -> Result<Vec<(Tensor, Tensor)>> {
    let device = model.device();
    let (contexts, cfg) = (task.contexts, task.cfg);
    let mut batch = ValueBatch::new(model, tok, records, task)?;

    // The unedited values (each record's bare prompt) and KL distributions.
    let (v0, kl_init) = {
        let _g = tch::no_grad_guard();
        let logits = batch.forward(model, None)?;
        let seen = batch.probe.seen.take().expect("probe ran");
        let first_rows: Vec<i64> = (0..records.len() as i64)
            .map(|e| e * contexts.len() as i64)
            .collect();
        let v0 = seen
            .index_select(0, &Tensor::from_slice(&first_rows).to_device(device))
            .to_kind(Kind::Double);
        let kl_init = logits
            .narrow(0, batch.n_labels, records.len() as i64)
            .to_kind(Kind::Float)
            .log_softmax(-1, Kind::Float);
        (v0, kl_init)
    };
    let v0_sq = v0
        .square()
        .sum_dim_intlist(-1, false, Kind::Double)
        .to_kind(Kind::Float);
    let max_norm = v0_sq.sqrt() * cfg.clamp_norm_factor;
    // δ and Adam's moments, one row per record (libtorch's Adam, written out so that
    // records can leave the batch without losing their state).
    let delta = Tensor::zeros([records.len() as i64, v0.size()[1]], (Kind::Float, device));
    let (m, v) = (delta.zeros_like(), delta.zeros_like());
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    let mut active = vec![true; records.len()];
    for step in 0..cfg.steps {
        let idx = Tensor::from_slice(&batch.records_idx()).to_device(device);
        let d = delta.index_select(0, &idx).set_requires_grad(true);
        let logits = batch.forward(model, Some(&d))?.to_kind(Kind::Float);
        let edits = batch.records.len() as i64;
        let logp = logits
            .narrow(0, 0, batch.n_labels)
            .log_softmax(-1, Kind::Float);
        let tok_nll = -logp
            .gather(1, &batch.labels.unsqueeze(1), false)
            .squeeze_dim(1);
        let nll = Tensor::zeros([edits], (Kind::Float, device)).index_add(
            0,
            &batch.label_record,
            &tok_nll,
        ) / &batch.per_record;
        let kl_new = logits
            .narrow(0, batch.n_labels, edits)
            .log_softmax(-1, Kind::Float);
        let kl = (kl_new.exp() * (&kl_new - kl_init.index_select(0, &idx))).sum_dim_intlist(
            -1,
            false,
            Kind::Float,
        );
        let wd = d.square().sum_dim_intlist(-1, false, Kind::Float) / v0_sq.index_select(0, &idx);
        let nll_values = Vec::<f64>::try_from(nll.to_kind(Kind::Double).detach())?;
        let mut live = Vec::with_capacity(batch.records.len());
        for (&r, &value) in batch.records.iter().zip(&nll_values) {
            if !value.is_finite() {
                return Err(Error::Input(format!(
                    "record {}: the value optimisation diverged (NLL {value})",
                    records[r].id
                )));
            }
            // A record stops for good the first time its NLL is low enough, as alone.
            if value < cfg.stop_nll {
                active[r] = false;
            }
            live.push(active[r]);
        }
        if !live.iter().any(|&a| a) {
            break;
        }
        let live_t = Tensor::from_slice(&live).to_device(device);
        let loss = ((nll + kl * cfg.kl_factor + wd * cfg.weight_decay)
            * live_t.to_kind(Kind::Float))
        .sum(Kind::Float);
        loss.backward();
        let _g = tch::no_grad_guard();
        let g = d.grad();
        let t = (step + 1) as i32;
        let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let m_new = m.index_select(0, &idx) * b1 + &g * (1.0 - b1);
        let v_new = v.index_select(0, &idx) * b2 + g.square() * (1.0 - b2);
        let denom = v_new.sqrt() / bc2.sqrt() + eps;
        let d_new = d.detach() - &m_new / denom * (cfg.lr / bc1);
        // ‖δ‖ is clamped row by row.
        let norm = d_new.norm_scalaropt_dim(2, [-1], true);
        let scale = (max_norm.index_select(0, &idx).unsqueeze(1) / norm).clamp_max(1.0);
        let d_new = d_new * scale;
        // Only the records still running move.
        let local: Vec<i64> = (0..live.len() as i64)
            .filter(|&i| live[i as usize])
            .collect();
        let local = Tensor::from_slice(&local).to_device(device);
        let global = idx.index_select(0, &local);
        for (state, new) in [(&delta, &d_new), (&m, &m_new), (&v, &v_new)] {
            let _ = state
                .shallow_clone()
                .index_copy_(0, &global, &new.index_select(0, &local));
        }
        let running: Vec<usize> = batch
            .records
            .iter()
            .copied()
            .filter(|&r| active[r])
            .collect();
        if step + 1 < cfg.steps && running.len() < batch.records.len() {
            batch = batch.keep(model, &running)?;
        }
    }
    let v = &v0 + delta.to_kind(Kind::Double);
    Ok((0..records.len() as i64)
        .map(|e| (v0.get(e), v.get(e)))
        .collect())
}

/// The sequences of some records' value optimisation, prefilled up to the subject and
/// run through the layers below the probed one: per record, its target after each
/// context, then every record's KL prompt ("{subject} is a"), whose logits come after all
/// the target tokens'.
struct ValueBatch {
    /// The records in the batch (indices into the caller's records), in row order.
    records: Vec<usize>,
    batch: Prefilled,
    at: LogitsAt,
    probe: Probe,
    /// For every row, the record (position in `records`) whose δ it gets.
    row_record: Tensor,
    labels: Tensor,
    /// For every label, the record (position in `records`) it belongs to.
    label_record: Tensor,
    /// Each record's NLL divisor: target tokens × contexts.
    per_record: Tensor,
    n_labels: i64,
    /// The graph starts above the probed layer: nothing below it depends on δ.
    stage: usize,
    /// The rows' layout, for [`ValueBatch::keep`].
    layout: Layout,
}

/// A value batch's sequences before they run: per record its target after each context,
/// then every record's KL prompt.
struct Layout {
    /// Rows per record before the KL prompts: one per context.
    contexts: usize,
    seqs: Vec<Vec<u32>>,
    subject: Vec<usize>,
    at: Vec<(usize, usize)>,
    labels: Vec<i64>,
    label_record: Vec<i64>,
    row_record: Vec<i64>,
    per_record: Vec<f32>,
}

impl Layout {
    fn new(
        tok: &Tokenizer,
        all: &[EditRecord],
        records: &[usize],
        contexts: &[String],
    ) -> Result<Self> {
        let mut l = Layout {
            contexts: contexts.len(),
            seqs: Vec::new(),
            subject: Vec::new(),
            at: Vec::new(),
            labels: Vec::new(),
            label_record: Vec::new(),
            row_record: Vec::new(),
            per_record: Vec::with_capacity(records.len()),
        };
        for (e, &r) in records.iter().enumerate() {
            let record = &all[r];
            let target = target_ids(tok, record)?;
            let tail = &target[..target.len() - 1];
            for c in contexts {
                let row = l.seqs.len();
                let located = locate(tok, c, record, tail)?;
                let prompt_len = located.ids.len() - tail.len();
                for (j, &t) in target.iter().enumerate() {
                    l.at.push((row, prompt_len - 1 + j));
                    l.labels.push(t as i64);
                    l.label_record.push(e as i64);
                }
                l.subject.push(located.subject_last);
                l.seqs.push(located.ids);
                l.row_record.push(e as i64);
            }
            l.per_record.push((target.len() * contexts.len()) as f32);
        }
        for (e, &r) in records.iter().enumerate() {
            let kl_record = EditRecord {
                prompt: "{} is a".into(),
                ..all[r].clone()
            };
            let kl = locate(tok, "", &kl_record, &[])?;
            l.at.push((l.seqs.len(), kl.ids.len() - 1));
            l.subject.push(kl.subject_last);
            l.seqs.push(kl.ids);
            l.row_record.push(e as i64);
        }
        Ok(l)
    }

    /// The layout of the records at `local` (positions in this layout's records,
    /// ascending) and the rows of this one they keep, in order: what [`Layout::new`]
    /// gives for those records alone, without tokenizing again.
    fn select(&self, local: &[usize]) -> (Layout, Vec<usize>) {
        let n = self.per_record.len();
        let kl_first = n * self.contexts;
        let mut rows: Vec<usize> = local
            .iter()
            .flat_map(|&e| (0..self.contexts).map(move |c| e * self.contexts + c))
            .collect();
        rows.extend(local.iter().map(|&e| kl_first + e));
        let mut new_row = vec![None; self.seqs.len()];
        for (i, &r) in rows.iter().enumerate() {
            new_row[r] = Some(i);
        }
        let mut new_record = vec![0i64; n];
        for (i, &e) in local.iter().enumerate() {
            new_record[e] = i as i64;
        }
        let mut l = Layout {
            contexts: self.contexts,
            seqs: rows.iter().map(|&r| self.seqs[r].clone()).collect(),
            subject: rows.iter().map(|&r| self.subject[r]).collect(),
            at: Vec::new(),
            labels: Vec::new(),
            label_record: Vec::new(),
            row_record: rows
                .iter()
                .map(|&r| new_record[self.row_record[r] as usize])
                .collect(),
            per_record: local.iter().map(|&e| self.per_record[e]).collect(),
        };
        // The labels' positions come first, then the KL prompts', as in `new`.
        for (j, &(row, pos)) in self.at.iter().enumerate() {
            let Some(row) = new_row[row] else { continue };
            l.at.push((row, pos));
            if j < self.labels.len() {
                l.labels.push(self.labels[j]);
                l.label_record
                    .push(new_record[self.label_record[j] as usize]);
            }
        }
        (l, rows)
    }
}

impl ValueBatch {
    /// The batch of all `records`.
    fn new(
        model: &Model,
        tok: &Tokenizer,
        records: &[EditRecord],
        task: ValueTask,
    ) -> Result<Self> {
        let all: Vec<usize> = (0..records.len()).collect();
        let layout = Layout::new(tok, records, &all, task.contexts)?;
        // Nothing before the subject's last token depends on δ: those tokens run once,
        // and each step runs only what follows (from the subject's last token on).
        let mut batch = model.prefill(&layout.seqs, &layout.subject)?;
        batch.start_at(model, task.layer)?;
        Ok(Self::assemble(
            model, &all, task.layer, task.site, layout, batch,
        ))
    }

    /// The batch of `running` (a subset of its records, in order) without running the
    /// heads again: the rows are taken from this one's.
    fn keep(&self, model: &Model, running: &[usize]) -> Result<Self> {
        let local: Vec<usize> = running
            .iter()
            .map(|r| self.records.iter().position(|x| x == r).expect("a subset"))
            .collect();
        let (layout, rows) = self.layout.select(&local);
        let batch = self.batch.select_rows(&rows)?;
        let (layer, site) = (self.probe.layer, self.probe.site);
        Ok(Self::assemble(model, running, layer, site, layout, batch))
    }

    fn assemble(
        model: &Model,
        records: &[usize],
        layer: usize,
        site: Site,
        l: Layout,
        batch: Prefilled,
    ) -> Self {
        let t = batch.tails.seq_len();
        let device = model.device();
        let tensor = |v: &[i64]| Tensor::from_slice(v).to_device(device);
        let subject = &l.subject;
        ValueBatch {
            records: records.to_vec(),
            batch,
            at: LogitsAt::Positions(l.at.iter().map(|&(r, p)| (r, p - subject[r])).collect()),
            probe: Probe {
                layer,
                site,
                positions: (0..l.seqs.len()).map(|r| (r * t) as i64).collect(),
                delta: None,
                seen: None,
            },
            row_record: tensor(&l.row_record),
            labels: tensor(&l.labels),
            label_record: tensor(&l.label_record),
            per_record: Tensor::from_slice(&l.per_record).to_device(device),
            n_labels: l.labels.len() as i64,
            stage: layer + 1,
            layout: l,
        }
    }

    fn records_idx(&self) -> Vec<i64> {
        self.records.iter().map(|&r| r as i64).collect()
    }

    /// The logits at the labels' and the KL prompts' positions with `delta` (`[records,
    /// hidden]`, or none: a read without autograd) added at the subject.
    fn forward(&mut self, model: &Model, delta: Option<&Tensor>) -> Result<Tensor> {
        self.probe.delta = delta.map(|d| d.index_select(0, &self.row_record));
        let grad_from = delta.map(|_| self.stage);
        self.batch
            .forward(model, &self.at, Some(&mut self.probe), grad_from)
    }
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
    /// Values read from the cache instead of optimised (MEMIT's `cache_z`), or optimised
    /// ahead with other records' (ROME under the single protocol).
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
    /// Seconds [`Prepared::begin`] spent on statistics, charged to the next edit.
    carried: f64,
}

impl Prepared {
    /// [`Editor::begin`]: measures on the unedited model what every edit reuses.
    pub(crate) fn begin(
        &mut self,
        model: &Model,
        tok: &Tokenizer,
        layers: &[usize],
        value: &ValueConfig,
        stats: &StatsConfig,
        progress: bool,
    ) -> Result<()> {
        self.carried += self.ensure(model, tok, layers, value, stats, progress)?;
        Ok(())
    }

    /// What a checkpoint keeps: the sampled contexts (the statistics are measured again,
    /// by [`Prepared::begin`] on the unedited model, or read from their cache).
    pub(crate) fn state(&self) -> EditorState {
        EditorState {
            tensors: Vec::new(),
            values: serde_json::json!({ "contexts": self.contexts }),
        }
    }

    /// Takes back the contexts [`Prepared::state`] kept.
    pub(crate) fn set_state(&mut self, state: &EditorState) -> Result<()> {
        if let Some(c) = state.values.get("contexts").filter(|c| !c.is_null()) {
            self.contexts = Some(serde_json::from_value(c.clone()).map_err(|e| {
                Error::Input(format!("a checkpoint's editor state: contexts: {e}"))
            })?);
        }
        Ok(())
    }

    /// Measures what is still missing; returns the seconds the statistics took (with
    /// those of [`Prepared::begin`] not yet charged to an edit).
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
        let seconds = t0.elapsed().as_secs_f64() + std::mem::take(&mut self.carried);
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
    ahead: Ahead,
}

impl RomeEditor {
    pub fn new(config: RomeConfig) -> Self {
        RomeEditor {
            config,
            progress: false,
            prepared: Prepared::default(),
            reports: Vec::new(),
            ahead: Ahead::default(),
        }
    }
}

/// Keys and values of records computed together by [`Editor::prepare`], each used by
/// the one-record edit of its record while the edited matrix is still the one they were
/// computed on (the single protocol restores it after every edit).
#[derive(Default)]
struct Ahead {
    /// The hash of the edited matrix they were computed on.
    weights: u64,
    /// Each record's (k*, v*) by [`record_key`].
    entries: HashMap<String, (Tensor, Tensor)>,
    /// The preparation's time, per record, charged to each record's edit.
    seconds: f64,
    /// Key statistics time spent while preparing, charged to the first edit.
    stats_seconds: f64,
}

/// A record's identity for caches: its prompt, subject and new target.
pub(crate) fn record_key(r: &EditRecord) -> String {
    let mut h = DefaultHasher::new();
    (&r.prompt, &r.subject, &r.target_new).hash(&mut h);
    format!("r{:016x}", h.finish())
}

impl Editor for RomeEditor {
    fn name(&self) -> &str {
        "rome"
    }

    fn writes(&self, model: &Model) -> Result<Option<Vec<String>>> {
        let (layer, _) = layer_range(&self.config.layer, model.num_layers())?;
        Ok(Some(vec![model.mlp_out_proj(layer)]))
    }

    fn begin(&mut self, model: &Model, tok: &Tokenizer) -> Result<()> {
        let (layer, _) = layer_range(&self.config.layer, model.num_layers())?;
        let cfg = &self.config;
        self.prepared
            .begin(model, tok, &[layer], &cfg.value, &cfg.stats, self.progress)
    }

    fn state(&self) -> EditorState {
        self.prepared.state()
    }

    fn set_state(&mut self, state: EditorState) -> Result<()> {
        self.prepared.set_state(&state)
    }

    fn prepare(&mut self, model: &Model, tok: &Tokenizer, records: &[EditRecord]) -> Result<()> {
        self.ahead = Ahead::default();
        if records.len() < 2 || self.config.value.batch < 2 {
            return Ok(());
        }
        let (layer, _) = layer_range(&self.config.layer, model.num_layers())?;
        let cfg = &self.config;
        let stats_seconds =
            self.prepared
                .ensure(model, tok, &[layer], &cfg.value, &cfg.stats, self.progress)?;
        let (_, ctx) = self.prepared.get();
        let t = Instant::now();
        let keys = mean_keys(model, tok, records, layer, ctx)?;
        let mut entries = HashMap::with_capacity(records.len());
        let pb = crate::progress::bar(self.progress, records.len(), "rome values");
        let task = ValueTask {
            layer,
            site: Site::MlpOutput,
            contexts: ctx,
            cfg: &cfg.value,
        };
        values_in_batches(model, tok, records, task, |i, v| {
            entries.insert(record_key(&records[i]), (keys.get(i as i64), v));
            pb.inc(1);
            Ok(())
        })?;
        pb.finish_and_clear();
        self.ahead = Ahead {
            weights: model.params.value_hash(&model.mlp_out_proj(layer))?,
            entries,
            seconds: t.elapsed().as_secs_f64() / records.len() as f64,
            stats_seconds,
        };
        Ok(())
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
        let stats_seconds = stats_seconds + std::mem::take(&mut self.ahead.stats_seconds);
        let (mom2, ctx) = self.prepared.get();
        let t1 = Instant::now();
        let (mut charged, mut used) = (0.0, 0);
        let pb = crate::progress::bar(self.progress && records.len() > 1, records.len(), "rome");
        for rec in records {
            let ahead = if records.len() == 1 && !self.ahead.entries.is_empty() {
                let current = model.params.value_hash(&model.mlp_out_proj(layer))?;
                (current == self.ahead.weights)
                    .then(|| self.ahead.entries.remove(&record_key(rec)))
                    .flatten()
            } else {
                None
            };
            let (k, v) = match ahead {
                Some(kv) => {
                    charged += self.ahead.seconds;
                    used += 1;
                    kv
                }
                None => {
                    let k = mean_keys(model, tok, std::slice::from_ref(rec), layer, ctx)?.get(0);
                    let task = ValueTask {
                        layer,
                        site: Site::MlpOutput,
                        contexts: ctx,
                        cfg: &cfg.value,
                    };
                    let (_, v) = optimize_value(model, tok, rec, task)?;
                    (k, v)
                }
            };
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
            t1.elapsed().as_secs_f64() + charged,
            &cfg.value,
            ctx,
        );
        let report = LocateReport {
            values_from_cache: used,
            ..report
        };
        self.reports.push(report);
        Ok(())
    }

    fn report(&self) -> Option<serde_json::Value> {
        serde_json::to_value(serde_json::json!({ "runs": self.reports })).ok()
    }
}

//! The value optimisation of ROME (v*) and MEMIT (z): a vector δ added at the subject's
//! last token of one layer, optimised so the model predicts the new target after every
//! context (NLL + KL on "{subject} is a" + a norm penalty, δ's norm clamped); several
//! records a batch, each with its own δ, Adam state and stopping point.

use tch::{Kind, Tensor};

use super::{ValueConfig, locate, tail_len, target_ids};
use crate::data::EditRecord;
use crate::error::{Error, Result};
use crate::model::{LogitsAt, Model, Prefilled, Probe, Site};
use crate::tokenizer::Tokenizer;

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
    // The unedited values above are measured in the weights' dtype (the closed forms
    // use them); the optimisation's passes compute as the recipe says.
    let _p = model.precision_for(cfg.precision);
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

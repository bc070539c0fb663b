//! The curve of a sequential run: `curve.jsonl` in its output folder, one line per
//! checkpoint (before the first edit, every K steps, and after the last), each with
//! the metrics over the edits so far, the same metrics on the first batch alone (what
//! is forgotten), the model's health and the seconds so far.
//!
//! A run of thousands of edits cannot re-evaluate everything at every checkpoint, so a
//! checkpoint scores a fixed sample of the run's records (every k-th, at most
//! `EvalOptions::curve_sample`, those edited so far) plus the first batch, teacher-forced
//! only (no exact match, no GE); the last point is the final evaluation of every record.
//! Lines are appended as checkpoints finish, so a killed run keeps its curve; with each
//! line the run saves a [`Checkpoint`] (the weights it changed, the editor's state), and
//! a run started again in the same folder resumes from it.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::checks::Checks;
use crate::data::EditRecord;
use crate::edit::EditorState;
use crate::error::{Error, Result};
use crate::eval::health::{Health, collapse_warning};
use crate::eval::run_dir::{OutputDir, read_jsonl};
use crate::eval::{EvalOptions, RecordResult, Summary, evaluate};
use crate::model::Model;
use crate::model::adapter::ADAPTER_NAME;
use crate::tokenizer::Tokenizer;

/// One checkpoint of a sequential run: a line of `curve.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Edits applied so far.
    pub edits: usize,
    /// Sequential steps (batches) so far.
    pub steps: usize,
    /// Records scored for `metrics` (a sample of those edited so far, or all at the end).
    pub evaluated: usize,
    /// The metrics over the scored records edited so far (empty before the first edit).
    pub metrics: BTreeMap<String, Option<f64>>,
    /// The same metrics over the first batch alone.
    pub first_batch: BTreeMap<String, Option<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Since the run started, and in the editor alone.
    pub seconds: f64,
    pub edit_seconds: f64,
}

/// The file a run's curve is in.
pub fn curve_path(dir: &Path) -> PathBuf {
    dir.join("curve.jsonl")
}

/// Reads a run's curve (a folder or its `curve.jsonl`); a cut-off last line is ignored.
pub fn read_curve(path: &Path) -> Result<Vec<CurvePoint>> {
    let file = if path.is_dir() {
        curve_path(path)
    } else {
        path.to_owned()
    };
    read_jsonl(&file)
}

/// Writes a sequential run's curve as it goes.
pub(super) struct Curve<'a> {
    path: PathBuf,
    records: &'a [EditRecord],
    batch_size: usize,
    /// Indices of the records every checkpoint scores, when edited.
    sample: Vec<usize>,
    light: EvalOptions,
    collapse_factor: f64,
    collapsed_at: Option<usize>,
    start: Instant,
    /// Seconds of the runs this one resumes.
    offset: f64,
}

impl<'a> Curve<'a> {
    /// The curve of a run in `out`; [`Curve::restart`] or [`Curve::resume`] next.
    pub(super) fn new(
        out: &OutputDir,
        records: &'a [EditRecord],
        batch_size: usize,
        opts: &EvalOptions,
        start: Instant,
    ) -> Result<Self> {
        let path = curve_path(&out.path);
        let every = records.len().div_ceil(opts.curve_sample.max(1)).max(1);
        let light = EvalOptions {
            exact_match: false,
            generation: false,
            generation_ids: None,
            seed: opts.seed,
            attributes: None,
            chunk: opts.chunk,
            progress: false,
            health: None,
            curve_sample: opts.curve_sample,
            chat: false,
            // Checkpoints have no unedited predictions to compare with.
            locality: false,
        };
        Ok(Curve {
            path,
            records,
            batch_size,
            sample: (0..records.len()).step_by(every).collect(),
            light,
            collapse_factor: opts
                .health
                .as_ref()
                .map_or(f64::INFINITY, |p| p.options.collapse_factor),
            collapsed_at: None,
            start,
            offset: 0.0,
        })
    }

    /// Starts `curve.jsonl` afresh.
    pub(super) fn restart(&mut self) -> Result<()> {
        std::fs::write(&self.path, "").map_err(|e| Error::io(&self.path, e))
    }

    /// Continues after checkpoint `ck`: keeps the points up to it, its collapse and its
    /// seconds.
    pub(super) fn resume(&mut self, ck: &Checkpoint) -> Result<()> {
        let kept: Vec<CurvePoint> = if self.path.exists() {
            read_curve(&self.path)?
                .into_iter()
                .filter(|p| p.steps <= ck.steps)
                .collect()
        } else {
            Vec::new()
        };
        let text: String = kept
            .iter()
            .map(|p| serde_json::to_string(p).expect("serialisable") + "\n")
            .collect();
        std::fs::write(&self.path, text).map_err(|e| Error::io(&self.path, e))?;
        self.collapsed_at = ck.collapsed_at;
        self.offset = ck.seconds;
        Ok(())
    }

    /// The run's seconds so far, across resumes.
    pub(super) fn seconds(&self) -> f64 {
        self.offset + self.start.elapsed().as_secs_f64()
    }

    pub(super) fn collapsed_at(&self) -> Option<usize> {
        self.collapsed_at
    }

    /// Measures and appends the checkpoint after `steps` steps. `all` is the final
    /// evaluation of every record, which the last point reuses. Returns the model's
    /// health at this point.
    pub(super) fn point(
        &mut self,
        model: &Model,
        tok: &Tokenizer,
        checks: &Checks,
        steps: usize,
        edit_seconds: f64,
        all: Option<&[RecordResult]>,
    ) -> Result<Option<Health>> {
        let edits = (steps * self.batch_size).min(self.records.len());
        let first: HashSet<&str> = self.records[..self.batch_size.min(self.records.len())]
            .iter()
            .map(|r| r.id.as_str())
            .collect();
        let scored: Vec<RecordResult> = match all {
            Some(all) => all.to_vec(),
            None => {
                let mut chosen: Vec<usize> =
                    self.sample.iter().copied().filter(|&i| i < edits).collect();
                chosen.extend(0..first.len());
                chosen.sort_unstable();
                chosen.dedup();
                let subset: Vec<EditRecord> =
                    chosen.iter().map(|&i| self.records[i].clone()).collect();
                let mut results = Vec::with_capacity(subset.len());
                evaluate(model, tok, &subset, &self.light, &mut |r| {
                    results.push(r);
                    Ok(())
                })?;
                results
            }
        };
        let sample: HashSet<&str> = self
            .sample
            .iter()
            .map(|&i| self.records[i].id.as_str())
            .collect();
        let edited: HashSet<&str> = self.records[..edits]
            .iter()
            .map(|r| r.id.as_str())
            .collect();
        let so_far: Vec<RecordResult> = scored
            .iter()
            .filter(|r| {
                edited.contains(r.id.as_str()) && (all.is_some() || sample.contains(r.id.as_str()))
            })
            .cloned()
            .collect();
        let first_batch: Vec<RecordResult> = scored
            .iter()
            .filter(|r| first.contains(r.id.as_str()))
            .cloned()
            .collect();
        let mut health = checks.score_model(model, edits)?;
        if let Some(h) = health.as_mut() {
            if h.collapsed && self.collapsed_at.is_none() {
                self.collapsed_at = Some(edits);
                eprintln!("{}", collapse_warning(h, edits, self.collapse_factor));
            }
            h.collapsed_at = self.collapsed_at;
            h.collapsed |= self.collapsed_at.is_some();
        }
        let point = CurvePoint {
            edits,
            steps,
            evaluated: so_far.len(),
            metrics: if so_far.is_empty() {
                BTreeMap::new()
            } else {
                Summary::new(&so_far).metrics
            },
            first_batch: Summary::new(&first_batch).metrics,
            health: health.clone(),
            seconds: self.seconds(),
            edit_seconds,
        };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        writeln!(
            f,
            "{}",
            serde_json::to_string(&point).expect("serialisable")
        )
        .map_err(|e| Error::io(&self.path, e))?;
        Ok(health)
    }
}

impl CurvePoint {
    /// A finished run without a curve (batch protocol) as one point at its edit count.
    pub fn from_summary(file: &crate::eval::run_dir::SummaryFile) -> Self {
        CurvePoint {
            edits: file.summary.n,
            steps: 1,
            evaluated: file.summary.n,
            metrics: file.summary.metrics.clone(),
            first_batch: BTreeMap::new(),
            health: file.health.clone(),
            seconds: file.seconds.unwrap_or(0.0),
            edit_seconds: file.edit_seconds.unwrap_or(0.0),
        }
    }

    /// A value by name: a metric (`ES`, `efficacy`, …), `first_batch.NAME`, one of the
    /// health numbers ([`Health::metrics`]: `PPL`, `known_retained`, `general.mean`, …),
    /// or `PPL_ratio` (`PPL / PPL_before`, what the collapse flag measures).
    pub fn value(&self, name: &str) -> Option<f64> {
        let health = self.health.as_ref();
        if name == "PPL_ratio" {
            return health.map(Health::ratio);
        }
        if let Some(v) = health.and_then(|h| h.metrics().into_iter().find(|(k, _)| k == name)) {
            return v.1;
        }
        match name.strip_prefix("first_batch.") {
            Some(m) => self.first_batch.get(m).copied().flatten(),
            None => self.metrics.get(name).copied().flatten(),
        }
    }
}

/// What a sequential run keeps of its last checkpoint (`checkpoint/state.json`), beside
/// the weights it changed (`weights.safetensors`) and the editor's own state
/// (`editor.safetensors` and `editor.json`), so that a killed run resumes there exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Checkpoint {
    pub steps: usize,
    pub batch_size: usize,
    /// The run's records, to refuse a checkpoint of other records.
    pub records: usize,
    pub first_id: String,
    pub last_id: String,
    pub edit_seconds: f64,
    pub seconds: f64,
    pub collapsed_at: Option<usize>,
    /// The editor's reports (`runs`) so far.
    pub reports: Vec<serde_json::Value>,
}

fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

impl Checkpoint {
    /// Removes a finished run's checkpoint.
    pub(super) fn remove(out: &Path) {
        let _ = std::fs::remove_dir_all(checkpoint_dir(out));
    }

    pub(super) fn new(records: &[EditRecord], batch_size: usize) -> Self {
        Checkpoint {
            steps: 0,
            batch_size,
            records: records.len(),
            first_id: records.first().map(|r| r.id.clone()).unwrap_or_default(),
            last_id: records.last().map(|r| r.id.clone()).unwrap_or_default(),
            edit_seconds: 0.0,
            seconds: 0.0,
            collapsed_at: None,
            reports: Vec::new(),
        }
    }

    /// Writes the checkpoint with the parameters whose values differ from `original`
    /// (hashes in store order) and the editor's state; the previous checkpoint is
    /// replaced only once the new one is whole (SIGINT and SIGTERM wait meanwhile).
    pub(super) fn save(
        &self,
        out: &Path,
        model: &Model,
        original: &[u64],
        editor_state: &EditorState,
    ) -> Result<()> {
        let now = model.params.value_hashes()?;
        let changed: Vec<(&str, tch::Tensor)> = model
            .params
            .iter()
            .zip(now.iter().zip(original))
            .filter(|(_, (a, b))| a != b)
            .map(|((n, t), _)| (n, t.detach().to_device(tch::Device::Cpu)))
            .collect();
        let _held = crate::output::HoldSignals::new();
        let dir = checkpoint_dir(out);
        let tmp = crate::output::temp_path(&dir);
        let write = || -> Result<()> {
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let named: Vec<(&str, &tch::Tensor)> = changed.iter().map(|(n, t)| (*n, t)).collect();
            tch::Tensor::write_safetensors(&named, tmp.join("weights.safetensors"))?;
            crate::output::interrupted()?;
            let state: Vec<(&str, tch::Tensor)> = editor_state
                .tensors
                .iter()
                .map(|(n, t)| (n.as_str(), t.detach().to_device(tch::Device::Cpu)))
                .collect();
            let state: Vec<(&str, &tch::Tensor)> = state.iter().map(|(n, t)| (*n, t)).collect();
            tch::Tensor::write_safetensors(&state, tmp.join("editor.safetensors"))?;
            // An editor beside the weights (GRACE's codebook) keeps its edits there.
            if let Some(a) = model.adapter() {
                crate::model::adapter::write_adapter(&a.saved(), &tmp.join(ADAPTER_NAME))?;
            }
            for (name, text) in [
                ("editor.json", serde_json::to_string(&editor_state.values)),
                ("state.json", serde_json::to_string_pretty(self)),
            ] {
                let p = tmp.join(name);
                std::fs::write(&p, text.expect("serialisable")).map_err(|e| Error::io(&p, e))?;
            }
            crate::output::interrupted()?;
            crate::output::swap_dir(&tmp, &dir)
        };
        write().inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&tmp);
        })
    }

    /// The run's checkpoint in `out`, if any: puts its weights into `model` and returns
    /// it with the editor's state. A checkpoint of other records or another batch size
    /// is refused.
    pub(super) fn resume(
        out: &Path,
        model: &mut Model,
        records: &[EditRecord],
        batch_size: usize,
    ) -> Result<Option<(Self, EditorState)>> {
        let dir = checkpoint_dir(out);
        let json = dir.join("state.json");
        if !json.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&json).map_err(|e| Error::io(&json, e))?;
        let ck: Checkpoint =
            serde_json::from_str(&text).map_err(|e| Error::data(&json, e.to_string()))?;
        let mine = Checkpoint::new(records, batch_size);
        if (ck.records, &ck.first_id, &ck.last_id, ck.batch_size)
            != (mine.records, &mine.first_id, &mine.last_id, mine.batch_size)
        {
            return Err(Error::Input(format!(
                "{} is the checkpoint of another run ({} records {}..{} in batches of {}); use another --out",
                dir.display(),
                ck.records,
                ck.first_id,
                ck.last_id,
                ck.batch_size
            )));
        }
        let _g = tch::no_grad_guard();
        for (name, t) in tch::Tensor::read_safetensors(dir.join("weights.safetensors"))? {
            let mut p = model.params.get(&name)?;
            p.copy_(&t.to_device(p.device()).to_kind(p.kind()));
        }
        if let Some(saved) = crate::model::adapter::read_adapter(&dir.join(ADAPTER_NAME))? {
            drop(_g);
            let adapter = crate::edit::registry::adapter_from_saved(&saved, model.device())?;
            model.set_adapter(Some(adapter));
        }
        let tensors = tch::Tensor::read_safetensors(dir.join("editor.safetensors"))?;
        // Checkpoints from before editor.json kept tensors only.
        let values_path = dir.join("editor.json");
        let values = match std::fs::read_to_string(&values_path) {
            Ok(text) => {
                serde_json::from_str(&text).map_err(|e| Error::data(&values_path, e.to_string()))?
            }
            Err(_) => serde_json::Value::Null,
        };
        Ok(Some((ck, EditorState { tensors, values })))
    }
}

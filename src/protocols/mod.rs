//! Protocols: an editor run over records and then the evaluator, so this layer sits
//! above both [`crate::edit`] and [`crate::eval`].
//!
//! - `single`: edit one record, evaluate it, restore the original weights exactly.
//! - `batch`: apply all edits jointly, then evaluate every record (mass editing).
//! - `sequential`: apply batches of edits one after another without restoring;
//!   evaluate at the end, and optionally after every K batches, writing the curve of
//!   the metrics and the model's health to `curve.jsonl` ([`sequential`]).
//!
//! [`apply`] edits a model once with the before/after checks around it (`ftedit edit`).
//! [`sweep`] runs a protocol once per combination of settings, to tune a method.
//! What runs write is read back, drawn and merged by [`crate::report`].

pub mod apply;
pub mod checks;
pub mod sequential;
pub mod sweep;

use std::time::Instant;

use crate::data::EditRecord;
pub use crate::edit::{Editor, NoEdit};
use crate::error::{Error, Result};
use crate::eval::health::{Health, collapse_warning};
use crate::eval::run_dir::OutputDir;
pub use crate::eval::run_dir::Timing;
use crate::eval::{EvalOptions, RecordResult, evaluate};
use crate::model::Model;
use crate::model::Snapshot;
use crate::tokenizer::Tokenizer;
use checks::Checks;
use sequential::Checkpoint;

/// How edits and evaluation interleave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Single,
    Batch,
    Sequential {
        /// Edits applied together at each step.
        batch_size: usize,
        /// Evaluate all records edited so far after every this many steps.
        eval_every: Option<usize>,
    },
}

impl Protocol {
    /// The protocol called `name` (`single`, `batch`, `sequential`; the last with its
    /// batch size and checkpoint interval).
    pub fn parse(name: &str, batch_size: usize, eval_every: Option<usize>) -> Result<Self> {
        Ok(match name {
            "single" => Protocol::Single,
            "batch" => Protocol::Batch,
            "sequential" => {
                if batch_size == 0 {
                    return Err(Error::Input(
                        "--batch-size 0: a sequential step edits at least one record".into(),
                    ));
                }
                if eval_every == Some(0) {
                    return Err(Error::Input(
                        "--eval-every 0: checkpoints come every K ≥ 1 steps".into(),
                    ));
                }
                Protocol::Sequential {
                    batch_size,
                    eval_every,
                }
            }
            other => {
                return Err(Error::Input(format!(
                    "unknown protocol '{other}' (single, batch, sequential)"
                )));
            }
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Protocol::Single => "single",
            Protocol::Batch => "batch",
            Protocol::Sequential { .. } => "sequential",
        }
    }
}

/// What a run measured besides the records: its time and the model's health.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub timing: Timing,
    /// The edited model against the unedited one; `None` when the health check is off
    /// or the protocol undoes every edit (single).
    pub health: Option<Health>,
}

/// Runs `editor` over `records` under `protocol`, writing results and the editor's
/// report to `out`. Records already in `out` are not evaluated again (resume); a
/// sequential run resumes after its last checkpoint. With a health probe in `opts`,
/// the model's health is measured before and after editing (and at every sequential
/// checkpoint); a collapse is also said on stderr.
pub fn run(
    model: &mut Model,
    tok: &Tokenizer,
    records: &[EditRecord],
    editor: &mut dyn Editor,
    protocol: Protocol,
    opts: &EvalOptions,
    out: &OutputDir,
) -> Result<Outcome> {
    if let Protocol::Sequential {
        batch_size,
        eval_every: Some(k),
    } = protocol
    {
        let steps = records.len().div_ceil(batch_size.max(1));
        if k > steps {
            return Err(Error::Input(format!(
                "--eval-every {k} is more than the run's {steps} steps ({} records in batches of \
                 {batch_size}): no checkpoint would be reached",
                records.len()
            )));
        }
    }
    let start = Instant::now();
    let done = out.done_ids()?;
    let todo: Vec<EditRecord> = records
        .iter()
        .filter(|r| !done.contains(&r.id))
        .cloned()
        .collect();
    let pb = crate::progress::bar(opts.progress, records.len(), "eval");
    pb.set_position((records.len() - todo.len()) as u64);
    // Drop a cut-off last line before appending.
    out.reset_records(&out.records()?)?;
    // What the checks need from the unedited model, before any edit and before a
    // sequential run restores its checkpoint's weights (the single protocol undoes its
    // edits, so the model it leaves is the unedited one: no health).
    let mut checks = Checks::for_run(opts, protocol != Protocol::Single);
    checks.before(model, tok, records, &todo, |name| {
        pb.set_message(name.to_owned())
    })?;
    // Every result is completed by the checks before it is written.
    let write = |r: &mut RecordResult| -> Result<()> {
        checks.score_record(r);
        out.append(r)?;
        pb.inc(1);
        Ok(())
    };
    let mut editing = Editing {
        editor,
        seconds: 0.0,
    };
    // On the unedited model: a resumed sequential run restores its checkpoint's weights
    // only after this.
    if editing.editor.changes_weights() {
        pb.set_message("preparing");
        editing.timed(|e| e.begin(model, tok))?;
        pb.set_message("");
    }
    let mut health = None;
    let mut batch_reports = Vec::new();
    match protocol {
        Protocol::Batch => {
            if editing.editor.changes_weights() {
                // The edited weights are kept in the folder until the run ends, so that a
                // run killed while evaluating (thousands of records, hours) resumes there
                // instead of editing again.
                let original = model.params.value_hashes()?;
                match Checkpoint::resume(&out.path, model, records, records.len())? {
                    Some((saved, state)) => {
                        editing.editor.set_state(state)?;
                        editing.seconds = saved.edit_seconds;
                        batch_reports = saved.reports;
                        eprintln!(
                            "note: resuming after the edit saved in {}",
                            out.path.join("checkpoint").display()
                        );
                    }
                    None => {
                        pb.set_message("editing");
                        editing.edit(model, tok, records)?;
                        let mut ck = Checkpoint::new(records, records.len());
                        ck.steps = 1;
                        ck.edit_seconds = editing.seconds;
                        ck.seconds = start.elapsed().as_secs_f64();
                        if let Some(r) = editing.editor.report() {
                            ck.reports = earlier_runs(&r, &[]);
                        }
                        ck.save(&out.path, model, &original, &editing.editor.state())?;
                        pb.set_message("");
                    }
                }
            }
            evaluate(model, tok, &todo, opts, &mut |mut r| write(&mut r))?;
            let edits = if editing.editor.changes_weights() {
                records.len()
            } else {
                0
            };
            health = checks.score_model(model, edits)?;
            if let Some(h) = health.as_mut().filter(|h| h.collapsed) {
                h.collapsed_at = Some(edits);
                eprintln!("{}", collapse_warning(h, edits, checks.collapse_factor));
            }
        }
        Protocol::Single => {
            let snapshot = snapshot_for(&*editing.editor, model)?;
            let adapter_before = model.adapter().cloned();
            // A resumed run keeps the reports of the edits before it, and each edit's
            // report is written with its record, so a killed run loses neither.
            let earlier = if done.is_empty() {
                Vec::new()
            } else {
                out.train_runs()?
            };
            // The records ahead are prepared a chunk at a time, so that a run killed
            // while preparing (hours for ROME on a 1.5B model) loses one chunk's work.
            for chunk in todo.chunks(PREPARE_AHEAD) {
                editing.prepare(model, tok, chunk)?;
                for r in chunk {
                    editing.edit(model, tok, std::slice::from_ref(r))?;
                    let result =
                        evaluate(model, tok, std::slice::from_ref(r), opts, &mut |mut r| {
                            write(&mut r)
                        });
                    if let Some(s) = &snapshot {
                        model.params.restore(s)?;
                    }
                    // An editor beside the weights is undone with them.
                    model.set_adapter(adapter_before.clone());
                    result?;
                    if let Some(report) = editing.editor.report() {
                        out.write_train_report(report, &earlier)?;
                    }
                }
            }
        }
        Protocol::Sequential {
            batch_size,
            eval_every,
        } => {
            let batches: Vec<&[EditRecord]> = records.chunks(batch_size).collect();
            let original = model.params.value_hashes()?;
            let resumed = Checkpoint::resume(&out.path, model, records, batch_size)?;
            // Records are written only by the final evaluation, which resumes only from
            // the checkpoint saved after the last step.
            if !done.is_empty()
                && resumed
                    .as_ref()
                    .is_none_or(|(c, _)| c.steps < batches.len())
            {
                return Err(Error::Input(format!(
                    "{} already holds results but no checkpoint after the last step; use another --out",
                    out.path.display()
                )));
            }
            let mut curve = sequential::Curve::new(out, records, batch_size, opts, start)?;
            let mut ck = Checkpoint::new(records, batch_size);
            match resumed {
                Some((saved, state)) => {
                    editing.editor.set_state(state)?;
                    editing.seconds = saved.edit_seconds;
                    curve.resume(&saved)?;
                    pb.set_message(format!("resumed after step {}", saved.steps));
                    ck = saved;
                }
                None => {
                    curve.restart()?;
                    curve.point(model, tok, &checks, 0, 0.0, None)?;
                }
            }
            // The reports of the runs this one resumes; the editor's own start afresh.
            let base_reports = ck.reports.clone();
            let save = |ck: &mut Checkpoint,
                        editing: &Editing,
                        curve: &sequential::Curve,
                        steps: usize,
                        model: &Model|
             -> Result<()> {
                ck.steps = steps;
                ck.edit_seconds = editing.seconds;
                ck.seconds = curve.seconds();
                ck.collapsed_at = curve.collapsed_at();
                if let Some(r) = editing.editor.report() {
                    ck.reports = earlier_runs(&r, &base_reports);
                }
                ck.save(&out.path, model, &original, &editing.editor.state())
            };
            let first_step = ck.steps;
            for (step, batch) in batches.iter().enumerate().skip(first_step) {
                editing.edit(model, tok, batch)?;
                let step = step + 1;
                pb.set_message(format!("step {step}/{}", batches.len()));
                if eval_every.is_some_and(|k| step % k == 0) && step < batches.len() {
                    pb.set_message(format!("step {step}/{}: checkpoint", batches.len()));
                    curve.point(model, tok, &checks, step, editing.seconds, None)?;
                    save(&mut ck, &editing, &curve, step, model)?;
                }
            }
            if first_step < batches.len() {
                save(&mut ck, &editing, &curve, batches.len(), model)?;
            }
            let mut results = out.records()?;
            // The last point of the curve is this evaluation, checks included.
            evaluate(model, tok, &todo, opts, &mut |mut r| {
                write(&mut r)?;
                results.push(r);
                Ok(())
            })?;
            health = curve.point(
                model,
                tok,
                &checks,
                batches.len(),
                editing.seconds,
                Some(&results),
            )?;
            if let Some(report) = editing.editor.report() {
                out.write_train_report(report, &base_reports)?;
            }
        }
    }
    if protocol == Protocol::Batch {
        // A resumed run's editor did not edit: its reports are the checkpoint's.
        if let Some(report) = editing.editor.report() {
            let fresh = report["runs"].as_array().is_some_and(|r| !r.is_empty());
            let earlier = if fresh { &[][..] } else { &batch_reports[..] };
            out.write_train_report(report, earlier)?;
        }
        Checkpoint::remove(&out.path);
    }
    pb.finish_and_clear();
    Ok(Outcome {
        timing: Timing {
            seconds: start.elapsed().as_secs_f64(),
            edit_seconds: editing.seconds,
            peak_rss_mb: None,
        },
        health,
    })
}

/// A resumed run's editor reports: those saved at the checkpoint, then the new ones
/// (`report["runs"]` of an editor that started afresh).
fn earlier_runs(report: &serde_json::Value, saved: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let new = report["runs"].as_array().cloned().unwrap_or_default();
    saved.iter().cloned().chain(new).collect()
}

/// Records the single protocol tells an editor about at once ([`Editor::prepare`]).
const PREPARE_AHEAD: usize = 16;

/// A copy of what `editor` may change in `model` (every weight unless it says which),
/// to restore after its edits; none for an editor that changes nothing.
pub(crate) fn snapshot_for(editor: &dyn Editor, model: &Model) -> Result<Option<Snapshot>> {
    if !editor.changes_weights() {
        return Ok(None);
    }
    Ok(Some(match editor.writes(model)? {
        Some(names) => model.params.snapshot_of(&names)?,
        None => model.params.snapshot(),
    }))
}

/// The editor with the time spent in it.
struct Editing<'a> {
    editor: &'a mut dyn Editor,
    seconds: f64,
}

impl Editing<'_> {
    fn prepare(&mut self, model: &Model, tok: &Tokenizer, records: &[EditRecord]) -> Result<()> {
        self.timed(|e| e.prepare(model, tok, records))
    }

    fn edit(&mut self, model: &mut Model, tok: &Tokenizer, batch: &[EditRecord]) -> Result<()> {
        self.timed(|e| e.edit(model, tok, batch))
    }

    /// Runs `f` on the editor, adding its time to the editing seconds.
    fn timed(&mut self, f: impl FnOnce(&mut dyn Editor) -> Result<()>) -> Result<()> {
        let t = Instant::now();
        let r = f(&mut *self.editor);
        self.seconds += t.elapsed().as_secs_f64();
        r
    }
}

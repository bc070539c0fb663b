//! Protocols: an editor run over records and then the evaluator, so this layer sits
//! above both [`crate::edit`] and [`crate::eval`].
//!
//! - `single`: edit one record, evaluate it, restore the original weights exactly.
//! - `batch`: apply all edits jointly, then evaluate every record (mass editing).
//! - `sequential`: apply batches of edits one after another without restoring;
//!   evaluate at the end, and optionally after every K batches.
//!
//! [`sweep`] runs a protocol once per combination of settings, to tune a method.

pub mod sweep;

use std::time::Instant;

use crate::data::EditRecord;
pub use crate::edit::{Editor, NoEdit};
use crate::error::{Error, Result};
use crate::eval::report::OutputDir;
pub use crate::eval::report::Timing;
use crate::eval::{EvalOptions, RecordResult, Summary, evaluate};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

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
            "sequential" => Protocol::Sequential {
                batch_size: batch_size.max(1),
                eval_every,
            },
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

/// Runs `editor` over `records` under `protocol`, writing results and the editor's
/// report to `out`. Records already in `out` are not evaluated again (resume);
/// sequential runs start over.
pub fn run(
    model: &mut Model,
    tok: &Tokenizer,
    records: &[EditRecord],
    editor: &mut dyn Editor,
    protocol: Protocol,
    opts: &EvalOptions,
    out: &OutputDir,
) -> Result<Timing> {
    let start = Instant::now();
    let mut edit_seconds = 0.0;
    let mut timed_edit = |editor: &mut dyn Editor, model: &mut Model, batch: &[EditRecord]| {
        let t = Instant::now();
        let r = editor.edit(model, tok, batch);
        edit_seconds += t.elapsed().as_secs_f64();
        r
    };
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
    let mut write = |r: RecordResult| -> Result<()> {
        out.append(&r)?;
        pb.inc(1);
        Ok(())
    };
    match protocol {
        Protocol::Batch => {
            if editor.changes_weights() {
                pb.set_message("editing");
                timed_edit(editor, model, records)?;
                pb.set_message("");
            }
            evaluate(model, tok, &todo, opts, &mut write)?;
        }
        Protocol::Single => {
            let snapshot = editor.changes_weights().then(|| model.params.snapshot());
            // A resumed run keeps the reports of the edits before it, and each edit's
            // report is written with its record, so a killed run loses neither.
            let earlier = if done.is_empty() {
                Vec::new()
            } else {
                out.train_runs()?
            };
            for r in &todo {
                timed_edit(editor, model, std::slice::from_ref(r))?;
                let result = evaluate(model, tok, std::slice::from_ref(r), opts, &mut write);
                if let Some(s) = &snapshot {
                    model.params.restore(s)?;
                }
                result?;
                if let Some(report) = editor.report() {
                    out.write_train_report(report, &earlier)?;
                }
            }
        }
        Protocol::Sequential {
            batch_size,
            eval_every,
        } => {
            if !done.is_empty() {
                return Err(Error::Input(format!(
                    "{} already holds results; a sequential run cannot resume, use another --out",
                    out.path.display()
                )));
            }
            let batches: Vec<&[EditRecord]> = records.chunks(batch_size.max(1)).collect();
            for (step, batch) in batches.iter().enumerate() {
                timed_edit(editor, model, batch)?;
                let step = step + 1;
                if eval_every.is_some_and(|k| step % k == 0) && step < batches.len() {
                    let so_far = &records[..(step * batch_size).min(records.len())];
                    let mut results = Vec::new();
                    evaluate(model, tok, so_far, opts, &mut |r| {
                        results.push(r);
                        Ok(())
                    })?;
                    let summary = Summary::new(&results);
                    let path = out.path.join(format!("step-{step:05}.json"));
                    std::fs::write(
                        &path,
                        serde_json::to_string_pretty(&summary).expect("serialisable"),
                    )
                    .map_err(|e| Error::io(&path, e))?;
                }
                pb.set_message(format!("step {step}/{}", batches.len()));
            }
            evaluate(model, tok, records, opts, &mut write)?;
        }
    }
    if protocol != Protocol::Single
        && let Some(report) = editor.report()
    {
        out.write_train_report(report, &[])?;
    }
    pb.finish_and_clear();
    Ok(Timing {
        seconds: start.elapsed().as_secs_f64(),
        edit_seconds,
    })
}

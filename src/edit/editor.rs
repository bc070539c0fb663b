//! The one trait every editing method implements, and the state an editor keeps for a
//! checkpoint.

use crate::data::EditRecord;
use crate::error::Result;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// An editing method: changes the model's weights so it states the records' new
/// targets.
pub trait Editor {
    fn name(&self) -> &str;
    /// Whether `edit` changes weights at all (the unedited baseline does not).
    fn changes_weights(&self) -> bool {
        true
    }
    /// Told that the next `edit` calls get `records` one at a time, each on the model as
    /// it is now (the single protocol restores the weights after every edit), so that an
    /// editor can do their independent work together (ROME optimises their values in
    /// batches). Nothing by default.
    fn prepare(&mut self, _model: &Model, _tok: &Tokenizer, _records: &[EditRecord]) -> Result<()> {
        Ok(())
    }
    /// The parameters `edit` may change, by name, so that the single protocol copies and
    /// restores only those (one matrix for ROME, not the whole model); `None`, the
    /// default: any of them.
    fn writes(&self, _model: &Model) -> Result<Option<Vec<String>>> {
        Ok(None)
    }
    /// Applies the edits of `records` to `model`, in place.
    fn edit(&mut self, model: &mut Model, tok: &Tokenizer, records: &[EditRecord]) -> Result<()>;
    /// What the edits so far did (training curves, timings), for the run's report.
    fn report(&self) -> Option<serde_json::Value> {
        None
    }
    /// Measures what the method takes from the unedited model before its first edit
    /// (the recipe's random prefixes; ROME's and MEMIT's key statistics and contexts).
    /// Protocols call it on the unedited model before any edit, so that a resumed
    /// sequential run measures these on the unedited model too, not on the weights of
    /// its checkpoint; an editor used without a protocol measures them at its first
    /// edit. Nothing by default.
    fn begin(&mut self, _model: &Model, _tok: &Tokenizer) -> Result<()> {
        Ok(())
    }
    /// What a sequential run must keep besides the weights to resume exactly after a
    /// checkpoint: everything the editor sampled or accumulated (the recipe's prefixes,
    /// AlphaEdit's keys); nothing for most methods.
    fn state(&self) -> EditorState {
        EditorState::default()
    }
    /// Takes back what [`Editor::state`] gave.
    fn set_state(&mut self, _state: EditorState) -> Result<()> {
        Ok(())
    }
}

/// An editor's state for a checkpoint ([`Editor::state`]).
#[derive(Debug, Default)]
pub struct EditorState {
    /// Named tensors (AlphaEdit's accumulated key products).
    pub tensors: Vec<(String, tch::Tensor)>,
    /// Everything else, as JSON (the recipe's sampled prefixes, the contexts of ROME and
    /// MEMIT); `null` when there is nothing.
    pub values: serde_json::Value,
}

/// Runs `edit_one` on each record after the other behind a progress bar named `label`:
/// the shape of every editor that adds one edit at a time (GRACE, WISE). An error names
/// the record it came from.
pub fn in_turn(
    progress: bool,
    label: &str,
    records: &[EditRecord],
    mut edit_one: impl FnMut(&EditRecord) -> Result<()>,
) -> Result<()> {
    let pb = crate::progress::bar(progress, records.len(), label);
    for rec in records {
        edit_one(rec).map_err(|e| e.at_record(&rec.id))?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(())
}

//! What a protocol measures around an edit besides the records' own scores, as a list of
//! [`Check`]s: each records what it needs on the unedited model before any edit, then
//! completes each record's result ([`Check::score_record`]) or scores the edited model
//! ([`Check::score_model`]) after. A new measurement is one more entry in
//! [`Checks::for_run`], not another branch of each protocol.
//!
//! The record-level scores that need no "before" (exact match, generation, chat answers)
//! are the evaluator's ([`crate::eval::evaluate`]).

use std::collections::{HashMap, HashSet};

use crate::data::EditRecord;
use crate::error::Result;
use crate::eval::health::{Baseline, Health, Probe};
use crate::eval::{EvalOptions, RecordResult, check, easyedit};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// One measurement around an edit.
pub trait Check {
    /// What it measures, for progress messages.
    fn name(&self) -> &'static str;
    /// Records what it needs from the unedited model: `records` are the run's records,
    /// `todo` those still to be evaluated (a resumed run evaluates fewer).
    fn before(
        &mut self,
        model: &Model,
        tok: &Tokenizer,
        records: &[EditRecord],
        todo: &[EditRecord],
    ) -> Result<()>;
    /// Completes one record's result after its edit. Nothing by default.
    fn score_record(&self, _result: &mut RecordResult) {}
    /// Scores the edited model after `edits` edits (0: the unedited model) into `health`.
    /// Nothing by default.
    fn score_model(
        &self,
        _model: &Model,
        _edits: usize,
        _health: &mut Option<Health>,
    ) -> Result<()> {
        Ok(())
    }
}

/// `subject_nll_delta`: the subject's own tokens' NLL in the rewrite prompt before the
/// edit, which each record's result compares with its NLL after.
#[derive(Default)]
pub struct SubjectIntegrity {
    before: HashMap<String, Option<f64>>,
}

impl Check for SubjectIntegrity {
    fn name(&self) -> &'static str {
        "subject integrity"
    }

    fn before(
        &mut self,
        model: &Model,
        tok: &Tokenizer,
        records: &[EditRecord],
        _todo: &[EditRecord],
    ) -> Result<()> {
        // All records, not only those left: a resumed sequential run restores its
        // checkpoint's weights only after this.
        self.before = records
            .iter()
            .map(|r| r.id.clone())
            .zip(check::subject_nlls(model, tok, records)?)
            .collect();
        Ok(())
    }

    fn score_record(&self, result: &mut RecordResult) {
        result.subject_nll_before = self.before.get(&result.id).copied().flatten();
    }
}

/// EasyEdit's locality: the neighbours' argmax tokens before the edit, which each
/// record's result compares with those after.
#[derive(Default)]
pub struct Locality {
    before: HashMap<String, Vec<Vec<u32>>>,
}

impl Check for Locality {
    fn name(&self) -> &'static str {
        "locality"
    }

    fn before(
        &mut self,
        model: &Model,
        tok: &Tokenizer,
        _records: &[EditRecord],
        todo: &[EditRecord],
    ) -> Result<()> {
        let refs: Vec<&EditRecord> = todo.iter().collect();
        self.before = todo
            .iter()
            .map(|r| r.id.clone())
            .zip(easyedit::neighbour_argmax(model, tok, &refs)?)
            .filter_map(|(id, l)| Some((id, l?.neighbours.into_iter().map(|n| n.after).collect())))
            .collect();
        Ok(())
    }

    fn score_record(&self, result: &mut RecordResult) {
        if let (Some(l), Some(before)) = (result.locality.as_mut(), self.before.get(&result.id)) {
            l.compare(before);
        }
    }
}

/// The model's health (SCALE.md): held-out perplexity and the facts it knew, against
/// the unedited model's (cached per weights).
pub struct ModelHealth<'a> {
    probe: &'a Probe,
    baseline: Option<Baseline>,
}

impl<'a> ModelHealth<'a> {
    pub fn new(probe: &'a Probe) -> Self {
        ModelHealth {
            probe,
            baseline: None,
        }
    }
}

impl Check for ModelHealth<'_> {
    fn name(&self) -> &'static str {
        "health baseline"
    }

    fn before(
        &mut self,
        model: &Model,
        _tok: &Tokenizer,
        records: &[EditRecord],
        _todo: &[EditRecord],
    ) -> Result<()> {
        // Facts about edited subjects are expected to change: left out.
        let edited: HashSet<String> = records.iter().map(|r| r.subject.clone()).collect();
        self.baseline = Some(self.probe.baseline(model, &edited)?);
        Ok(())
    }

    fn score_model(&self, model: &Model, edits: usize, health: &mut Option<Health>) -> Result<()> {
        let base = self.baseline.as_ref().expect("Check::before ran");
        *health = Some(if edits == 0 {
            self.probe.unedited(base)
        } else {
            self.probe.measure(model, base)?
        });
        Ok(())
    }
}

/// A run's checks, in order, and what they say about collapse.
pub struct Checks<'a> {
    list: Vec<Box<dyn Check + 'a>>,
    /// `PPL / PPL_before` above which the model has collapsed.
    pub collapse_factor: f64,
}

impl<'a> Checks<'a> {
    /// The checks `opts` asks for: subject integrity always, locality when on, the
    /// model's health when a probe is given and the protocol leaves edits in the model
    /// (`keeps_edits`; the single protocol undoes each).
    pub fn for_run(opts: &'a EvalOptions, keeps_edits: bool) -> Self {
        let mut list: Vec<Box<dyn Check + 'a>> = vec![Box::new(SubjectIntegrity::default())];
        if opts.locality {
            list.push(Box::new(Locality::default()));
        }
        let mut collapse_factor = f64::INFINITY;
        if let Some(probe) = opts.health.as_ref().filter(|_| keeps_edits) {
            collapse_factor = probe.options.collapse_factor;
            list.push(Box::new(ModelHealth::new(probe)));
        }
        Checks {
            list,
            collapse_factor,
        }
    }

    /// Runs every check's [`Check::before`]; `say` gets each one's name as it starts.
    pub fn before(
        &mut self,
        model: &Model,
        tok: &Tokenizer,
        records: &[EditRecord],
        todo: &[EditRecord],
        mut say: impl FnMut(&str),
    ) -> Result<()> {
        for c in &mut self.list {
            say(c.name());
            c.before(model, tok, records, todo)?;
        }
        say("");
        Ok(())
    }

    /// Completes `result` with every check's record score.
    pub fn score_record(&self, result: &mut RecordResult) {
        for c in &self.list {
            c.score_record(result);
        }
    }

    /// The edited model's health after `edits` edits, from every model-level check;
    /// `None` when none measured it.
    pub fn score_model(&self, model: &Model, edits: usize) -> Result<Option<Health>> {
        let mut health = None;
        for c in &self.list {
            c.score_model(model, edits, &mut health)?;
        }
        Ok(health)
    }
}

//! One edit of a model in place, with what is measured around it: the model's health
//! before and after (when a probe is given) and each edit's before/after check (its
//! probabilities, the neighbours' top-1). `ftedit edit` and the Python `Model.edit`
//! both run this, then write what they write.

use std::time::Instant;

use serde_json::{Map, Value as Json};

use crate::data::EditRecord;
use crate::edit::Editor;
use crate::error::Result;
use crate::eval::check::{Before, Check};
use crate::eval::health::{Health, Probe};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// What an applied edit measured.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Each edit before and after.
    pub check: Check,
    /// The edited model against the unedited one (`None` without a probe).
    pub health: Option<Health>,
    /// The editor's own report (training losses, steps, ...).
    pub training: Option<Json>,
    /// Seconds per phase, in order: health_before, check_before, edit, health_after,
    /// check_after.
    pub timing: Map<String, Json>,
}

impl Applied {
    /// Whether the health check flagged the edited model as collapsed.
    pub fn collapsed(&self) -> bool {
        self.health.as_ref().is_some_and(|h| h.collapsed)
    }
}

/// Seconds spent in each phase, in order.
struct Phases {
    last: Instant,
    seconds: Map<String, Json>,
}

impl Phases {
    fn new() -> Self {
        Phases {
            last: Instant::now(),
            seconds: Map::new(),
        }
    }

    /// Ends the phase `name` (it began where the previous one ended).
    fn lap(&mut self, name: &str) {
        let now = Instant::now();
        let s = (now - self.last).as_secs_f64();
        self.seconds.insert(name.into(), s.into());
        self.last = now;
    }
}

/// Edits `records` into `model` with `editor`; `neighbours` neighbour prompts (the
/// records' first ones) are shown before and after. Health is measured with `probe`
/// when given; a collapse is reported in [`Applied::health`], not refused: the caller
/// decides what to write.
pub fn apply(
    model: &mut Model,
    tok: &Tokenizer,
    records: &[EditRecord],
    editor: &mut dyn Editor,
    probe: Option<&Probe>,
    neighbours: usize,
) -> Result<Applied> {
    let mut phases = Phases::new();
    // The unedited model's health first, so that the edited one can be compared.
    let baseline = match probe {
        Some(p) => {
            let edited = records.iter().map(|r| r.subject.clone()).collect();
            Some(p.baseline(model, &edited)?)
        }
        None => None,
    };
    phases.lap("health_before");
    let before = Before::take(model, tok, records, neighbours)?;
    phases.lap("check_before");
    editor.edit(model, tok, records)?;
    phases.lap("edit");
    let health = match (probe, &baseline) {
        (Some(p), Some(b)) => Some(p.measure_after(model, b, records.len())?),
        _ => None,
    };
    phases.lap("health_after");
    let check = before.check(model, tok, records)?;
    phases.lap("check_after");
    Ok(Applied {
        check,
        health,
        training: editor.report(),
        timing: phases.seconds,
    })
}

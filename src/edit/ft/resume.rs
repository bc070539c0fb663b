//! A resume point for a long training run: every `every` of wall-clock time, and when
//! SIGINT or SIGTERM arrives, the loop saves what it needs to go on exactly where it
//! was (the trained weights, AdamW's moments and step, the step, the losses so far, the
//! divergence guard, the LM-text sampler's state and the seconds spent); the data order
//! is a function of the recipe's seed and is checked through a fingerprint of the
//! training set. The same run started again finds it and continues; a finished run
//! removes it. A resume point of another run (other edits, recipe, weights or
//! precision) is ignored and replaced.
//!
//! On disk: `state.json` and `tensors.safetensors` in one folder, written beside it and
//! swapped in whole, so one complete point is always there.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::train::AdamWState;

/// Where and how often a training run saves a resume point.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumePoint {
    /// The folder (created when first saved, removed when the run finishes).
    pub dir: PathBuf,
    /// Wall-clock time between saves.
    pub every: Duration,
}

/// The loop's state after `step` steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Saved {
    /// Of the training set, recipe, trained weights and precision.
    pub fingerprint: String,
    pub step: usize,
    pub total: usize,
    pub loss: Vec<f64>,
    pub seen: usize,
    pub tokens: usize,
    pub settled: usize,
    pub guard_start: Option<f64>,
    pub guard_recent: Vec<f64>,
    pub lm_rng: u64,
    pub seconds: f64,
    pub adam_steps: i64,
    /// The trained parameters, in the optimizer's order.
    pub params: Vec<String>,
}

/// A saved point: the loop's state, the trained weights and AdamW's state.
pub(super) struct Loaded {
    pub saved: Saved,
    pub weights: Vec<Tensor>,
    pub adam: AdamWState,
}

const STATE: &str = "state.json";
const TENSORS: &str = "tensors.safetensors";

impl ResumePoint {
    /// The point saved for the run with `fingerprint`, if any. A point of another run is
    /// said on stderr and left to be replaced.
    pub(super) fn load(&self, fingerprint: &str) -> Result<Option<Loaded>> {
        let state = self.dir.join(STATE);
        if !state.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&state).map_err(|e| Error::io(&state, e))?;
        let saved: Saved = serde_json::from_str(&text)
            .map_err(|e| Error::data(&state, format!("not a resume point: {e}")))?;
        if saved.fingerprint != fingerprint {
            eprintln!(
                "note: {} holds the resume point of another training run (other edits, \
                 recipe or weights); starting afresh",
                self.dir.display()
            );
            return Ok(None);
        }
        let mut named: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(self.dir.join(TENSORS))?
                .into_iter()
                .collect();
        let mut take = |name: String| {
            named.remove(&name).ok_or_else(|| {
                Error::data(
                    self.dir.join(TENSORS),
                    format!("resume point without tensor {name}"),
                )
            })
        };
        let weights = saved
            .params
            .iter()
            .map(|n| take(format!("param.{n}")))
            .collect::<Result<Vec<_>>>()?;
        let moments = |kind: &str, take: &mut dyn FnMut(String) -> Result<Tensor>| {
            if saved.adam_steps == 0 {
                return Ok(Vec::new());
            }
            (0..saved.params.len())
                .map(|i| take(format!("{kind}.{i}")))
                .collect::<Result<Vec<_>>>()
        };
        let exp_avg = moments("exp_avg", &mut take)?;
        let exp_avg_sq = moments("exp_avg_sq", &mut take)?;
        let adam = AdamWState {
            steps: saved.adam_steps,
            exp_avg,
            exp_avg_sq,
        };
        Ok(Some(Loaded {
            saved,
            weights,
            adam,
        }))
    }

    /// Saves `saved` with the trained `weights` and AdamW's state, replacing the point
    /// there was.
    pub(super) fn save(&self, saved: &Saved, weights: &[Tensor], adam: &AdamWState) -> Result<()> {
        let cpu = |t: &Tensor| t.detach().to_device(tch::Device::Cpu);
        let mut named: Vec<(String, Tensor)> = saved
            .params
            .iter()
            .zip(weights)
            .map(|(n, t)| (format!("param.{n}"), cpu(t)))
            .collect();
        for (kind, ts) in [("exp_avg", &adam.exp_avg), ("exp_avg_sq", &adam.exp_avg_sq)] {
            named.extend(
                ts.iter()
                    .enumerate()
                    .map(|(i, t)| (format!("{kind}.{i}"), cpu(t))),
            );
        }
        let tmp = crate::output::temp_path(&self.dir);
        let write = || -> Result<()> {
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
            Tensor::write_safetensors(&refs, tmp.join(TENSORS))?;
            let state = tmp.join(STATE);
            let text = serde_json::to_string(saved).expect("serialisable");
            std::fs::write(&state, text).map_err(|e| Error::io(&state, e))?;
            crate::output::swap_dir(&tmp, &self.dir)
        };
        write().inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&tmp);
        })
    }

    /// Removes the point (the run finished).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

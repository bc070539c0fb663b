//! MEMIT (Meng et al., 2023): many edits at once, the change spread over a range of MLP
//! output projections (METHOD.md).
//!
//! For each edit, a target z for the residual stream after the range's last layer at the
//! subject's last token is optimised as in ROME ([`super::rome::optimize_value`]). Then,
//! from the lowest layer up, each layer takes its share of what is still missing,
//! R = (z − current) / (layers left), and solves ΔW = R Kᵀ (λC + K Kᵀ)⁻¹ with K the
//! edits' keys at that layer ([`super::rome::memit_delta`]).

use std::time::Instant;

use tch::{Kind, Tensor};

use super::Editor;
use super::rome::{
    LocateReport, Prepared, StatsConfig, ValueConfig, add_to_out_proj, check_layers,
    default_layers, locate, mean_keys, memit_delta, optimize_value,
};
use crate::data::EditRecord;
use crate::error::{Error, Result};
use crate::model::{Input, Model, Probe, Site};
use crate::tokenizer::Tokenizer;

/// MEMIT's value settings for GPT-J (25 steps, ‖δ‖ ≤ 0.75‖z‖, 5 contexts of 10 tokens).
pub fn memit_value_config() -> ValueConfig {
    ValueConfig {
        steps: 25,
        clamp_norm_factor: 0.75,
        contexts: vec![[5, 10]],
        ..ValueConfig::default()
    }
}

/// MEMIT over a layer range.
pub struct MemitEditor {
    /// Inclusive layer range; `None`: [`default_layers`].
    pub layers: Option<(usize, usize)>,
    /// λ, the weight of the key statistics against the new keys (GPT-J: 15,000).
    pub lambda: f64,
    pub value: ValueConfig,
    pub stats: StatsConfig,
    pub progress: bool,
    prepared: Prepared,
    reports: Vec<LocateReport>,
}

impl MemitEditor {
    pub fn new(layers: Option<(usize, usize)>, value: ValueConfig, stats: StatsConfig) -> Self {
        MemitEditor {
            layers,
            lambda: 15_000.0,
            value,
            stats,
            progress: false,
            prepared: Prepared::default(),
            reports: Vec::new(),
        }
    }
}

/// The residual stream after `layer` at each record's subject (bare prompt), `[n, hidden]`.
fn residuals(
    model: &Model,
    tok: &Tokenizer,
    records: &[EditRecord],
    layer: usize,
) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let located = records
        .iter()
        .map(|r| locate(tok, "", r, &[]))
        .collect::<Result<Vec<_>>>()?;
    let seqs: Vec<Vec<u32>> = located.iter().map(|l| l.ids.clone()).collect();
    let input = Input::right_padded(&seqs, model.device())?;
    let t = input.seq_len();
    let mut probe = Probe {
        layer,
        site: Site::BlockOutput,
        positions: located
            .iter()
            .enumerate()
            .map(|(r, l)| (r * t + l.subject_last) as i64)
            .collect(),
        delta: None,
        seen: None,
    };
    model.run_hooks(&input, &mut probe)?;
    Ok(probe.seen.expect("probe ran").to_kind(Kind::Double))
}

impl Editor for MemitEditor {
    fn name(&self) -> &str {
        "memit"
    }

    fn edit(&mut self, model: &mut Model, tok: &Tokenizer, records: &[EditRecord]) -> Result<()> {
        if records.is_empty() {
            return Err(Error::Input("no edits to make".into()));
        }
        let (lo, hi) = self.layers.unwrap_or(default_layers(model.num_layers()).1);
        check_layers("MEMIT", model, lo, hi)?;
        let layers: Vec<usize> = (lo..=hi).collect();
        let stats_seconds =
            self.prepared
                .ensure(model, tok, &layers, &self.value, &self.stats, self.progress)?;
        let (mom2, ctx) = self.prepared.get();
        let t1 = Instant::now();
        let zs = records
            .iter()
            .map(|r| optimize_value(model, tok, r, hi, Site::BlockOutput, ctx, &self.value))
            .map(|v| v.map(|(_, z)| z))
            .collect::<Result<Vec<_>>>()?;
        let zs = Tensor::stack(&zs, 0);
        for (i, &layer) in layers.iter().enumerate() {
            let keys = mean_keys(model, tok, records, layer, ctx)?;
            let current = residuals(model, tok, records, hi)?;
            let resid = (&zs - current) / (layers.len() - i) as f64;
            let delta = memit_delta(
                &mom2[i],
                &keys.transpose(0, 1),
                &resid.transpose(0, 1),
                self.lambda,
            );
            add_to_out_proj(model, layer, &delta)?;
        }
        let report = LocateReport::new(
            "memit",
            layers,
            records.len(),
            stats_seconds,
            t1.elapsed().as_secs_f64(),
            &self.value,
            ctx,
        );
        self.reports.push(report);
        Ok(())
    }

    fn report(&self) -> Option<serde_json::Value> {
        serde_json::to_value(serde_json::json!({ "runs": self.reports, "lambda": self.lambda }))
            .ok()
    }
}

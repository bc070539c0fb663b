//! MEMIT (Meng et al., 2023): many edits at once, the change spread over a range of MLP
//! output projections (METHOD.md).
//!
//! For each edit, a target z for the residual stream after the range's last layer at the
//! subject's last token is optimised as in ROME, several edits a batch
//! ([`super::locate::spread`]). Then, from the lowest layer up, each layer takes
//! its share of what is still missing, R = (z − current) / (layers left), and solves
//! ΔW = R Kᵀ (λC + K Kᵀ)⁻¹ with K the edits' keys at that layer
//! ([`memit_delta`]).
//!
//! Where the MLP output passes through a norm before it joins the residual stream
//! (Gemma 3), R is not what the output projection must add: R is carried through the
//! norm first ([`super::locate::spread::through_norm`]). Written in directly, R is rescaled by the norm and
//! breaks the model.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::editor::{Editor, EditorState};
use super::layers::{layer_list, layer_range};
use super::locate::spread::{ZOptions, spread, targets};
use super::locate::{LocateReport, Prepared, StatsConfig, ValueConfig};
use crate::data::EditRecord;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// MEMIT's settings (`recipes/memit.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemitConfig {
    #[serde(default)]
    pub description: String,
    /// The edited layers, inclusive: `A..B` or depth fractions (`1/9..2/7`).
    pub layers: String,
    /// λ, the weight of the key statistics against the new keys (GPT-J: 15,000).
    pub lambda: f64,
    /// Cache each edit's target z beside the key statistics (by the weights, the value
    /// settings, the last layer and the record), so runs that differ only in λ or the
    /// range's lower end optimise each z once.
    pub cache_z: bool,
    pub value: ValueConfig,
    pub stats: StatsConfig,
    /// RECT and 1-LI on the edit's weight change ([`crate::edit::post`]).
    #[serde(default)]
    pub post: crate::edit::post::PostConfig,
}

impl MemitConfig {
    pub(crate) fn check(&self) -> Result<()> {
        self.post.check()?;
        layer_range(&self.layers, 1 << 20)?;
        if self.lambda.is_nan() || self.lambda < 0.0 {
            return Err(Error::Input(format!(
                "recipe: lambda must not be negative, not {}",
                self.lambda
            )));
        }
        self.value.check()?;
        self.stats.check()
    }
}

/// MEMIT over a layer range.
pub struct MemitEditor {
    pub config: MemitConfig,
    pub progress: bool,
    prepared: Prepared,
    reports: Vec<LocateReport>,
}

impl MemitEditor {
    pub fn new(config: MemitConfig) -> Self {
        MemitEditor {
            config,
            progress: false,
            prepared: Prepared::default(),
            reports: Vec::new(),
        }
    }
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

impl Editor for MemitEditor {
    fn name(&self) -> &str {
        "memit"
    }

    fn begin(&mut self, model: &Model, tok: &Tokenizer) -> Result<()> {
        let layers = layer_list(&self.config.layers, model.num_layers())?;
        let cfg = &self.config;
        self.prepared
            .begin(model, tok, &layers, &cfg.value, &cfg.stats, self.progress)
    }

    fn state(&self) -> EditorState {
        self.prepared.state()
    }

    fn set_state(&mut self, state: EditorState) -> Result<()> {
        self.prepared.set_state(&state)
    }

    fn writes(&self, model: &Model) -> Result<Option<Vec<String>>> {
        let layers = layer_list(&self.config.layers, model.num_layers())?;
        Ok(Some(
            layers.into_iter().map(|l| model.mlp_out_proj(l)).collect(),
        ))
    }

    fn edit(&mut self, model: &mut Model, tok: &Tokenizer, records: &[EditRecord]) -> Result<()> {
        if records.is_empty() {
            return Err(Error::Input("no edits to make".into()));
        }
        let cfg = &self.config;
        let layers = layer_list(&cfg.layers, model.num_layers())?;
        // z is optimised at the last edited layer.
        let hi = *layers.last().expect("a layer range holds a layer");
        let stats_seconds =
            self.prepared
                .ensure(model, tok, &layers, &cfg.value, &cfg.stats, self.progress)?;
        let (mom2, ctx) = self.prepared.get();
        let t1 = Instant::now();
        let z_options = ZOptions {
            cache_dir: cfg.stats.cache_dir().filter(|_| cfg.cache_z),
            progress: self.progress,
        };
        let (zs, from_cache) = targets(model, tok, records, hi, (ctx, &cfg.value), z_options)?;
        spread(model, tok, records, &layers, ctx, &zs, |i, k, r| {
            Ok(memit_delta(&mom2[i], k, r, cfg.lambda))
        })?;
        let mut report = LocateReport::new(
            "memit",
            layers,
            records.len(),
            stats_seconds,
            t1.elapsed().as_secs_f64(),
            &cfg.value,
            ctx,
        );
        report.values_from_cache = from_cache;
        self.reports.push(report);
        Ok(())
    }

    fn report(&self) -> Option<serde_json::Value> {
        serde_json::to_value(
            serde_json::json!({ "runs": self.reports, "lambda": self.config.lambda }),
        )
        .ok()
    }
}

//! ROME (Meng et al., 2022): a rank-one update of one MLP output projection that maps
//! the subject's key to a value that states the new target (METHOD.md).
//!
//! 1. key k*: the MLP output projection's input at the subject's last token, averaged
//!    over the prompt and random-prefix contexts;
//! 2. value v*: the layer's MLP output there plus a vector δ optimised so the model
//!    predicts the target (NLL over the contexts + KL on "{subject} is a" + a norm
//!    penalty, δ's norm clamped);
//! 3. ΔW = (v* − W k*) (C⁻¹k*)ᵀ / ((C⁻¹k*)ᵀ k*), C the keys' second moment
//!    ([`super::locate::stats`]).
//!
//! The keys, the value optimisation and the key statistics are the locate-then-edit
//! core ([`super::locate`]) that MEMIT and AlphaEdit share.

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::editor::{Editor, EditorState};
use super::layers::layer_range;
use super::locate::value::{ValueTask, optimize_value, values_in_batches};
use super::locate::{
    LocateReport, Prepared, StatsConfig, ValueConfig, add_to_out_proj, mean_keys, out_proj,
    record_key,
};
use crate::data::EditRecord;
use crate::error::{Error, Result};
use crate::model::{Model, Site};
use crate::tokenizer::Tokenizer;

/// ROME's settings (`recipes/rome.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RomeConfig {
    #[serde(default)]
    pub description: String,
    /// The edited layer: a number or a depth fraction (`1/5`: a fifth of the way up).
    pub layer: String,
    pub value: ValueConfig,
    pub stats: StatsConfig,
    /// RECT and 1-LI on the edit's weight change ([`crate::edit::post`]).
    #[serde(default)]
    pub post: crate::edit::post::PostConfig,
}

impl RomeConfig {
    pub(crate) fn check(&self) -> Result<()> {
        self.post.check()?;
        // Any depth will do to check the spec's form.
        let (lo, hi) = layer_range(&self.layer, 1 << 20)?;
        if lo != hi {
            return Err(Error::Input(format!(
                "recipe: ROME edits one layer, not '{}'",
                self.layer
            )));
        }
        self.value.check()?;
        self.stats.check()
    }
}

/// ROME's closed form: ΔW `[out, in]` = (v − W k)(C⁻¹k)ᵀ / ((C⁻¹k)ᵀ k), so that
/// (W + ΔW) k = v and ΔW k' = 0 for every k' with (C⁻¹k)ᵀ k' = 0. `w` `[out, in]`,
/// `c` `[in, in]`, `k` `[in]`, `v` `[out]`; computed in f64.
pub fn rome_delta(w: &Tensor, c: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let (w, c, k, v) = (
        w.to_kind(Kind::Double),
        c.to_kind(Kind::Double),
        k.to_kind(Kind::Double),
        v.to_kind(Kind::Double),
    );
    let u = Tensor::linalg_solve(&c, &k, true);
    let r = v - w.mv(&k);
    r.outer(&u) / u.dot(&k)
}

/// ROME, applied to the records one after another.
pub struct RomeEditor {
    pub config: RomeConfig,
    pub progress: bool,
    prepared: Prepared,
    reports: Vec<LocateReport>,
    ahead: Ahead,
}

impl RomeEditor {
    pub fn new(config: RomeConfig) -> Self {
        RomeEditor {
            config,
            progress: false,
            prepared: Prepared::default(),
            reports: Vec::new(),
            ahead: Ahead::default(),
        }
    }
}

/// Keys and values of records computed together by [`Editor::prepare`], each used by
/// the one-record edit of its record while the edited matrix is still the one they were
/// computed on (the single protocol restores it after every edit).
#[derive(Default)]
struct Ahead {
    /// The hash of the edited matrix they were computed on.
    weights: u64,
    /// Each record's (k*, v*) by [`record_key`].
    entries: HashMap<String, (Tensor, Tensor)>,
    /// The preparation's time, per record, charged to each record's edit.
    seconds: f64,
    /// Key statistics time spent while preparing, charged to the first edit.
    stats_seconds: f64,
}

impl Editor for RomeEditor {
    fn name(&self) -> &str {
        "rome"
    }

    fn writes(&self, model: &Model) -> Result<Option<Vec<String>>> {
        let (layer, _) = layer_range(&self.config.layer, model.num_layers())?;
        Ok(Some(vec![model.mlp_out_proj(layer)]))
    }

    fn begin(&mut self, model: &Model, tok: &Tokenizer) -> Result<()> {
        let (layer, _) = layer_range(&self.config.layer, model.num_layers())?;
        let cfg = &self.config;
        self.prepared
            .begin(model, tok, &[layer], &cfg.value, &cfg.stats, self.progress)
    }

    fn state(&self) -> EditorState {
        self.prepared.state()
    }

    fn set_state(&mut self, state: EditorState) -> Result<()> {
        self.prepared.set_state(&state)
    }

    fn prepare(&mut self, model: &Model, tok: &Tokenizer, records: &[EditRecord]) -> Result<()> {
        self.ahead = Ahead::default();
        if records.len() < 2 || self.config.value.batch < 2 {
            return Ok(());
        }
        let (layer, _) = layer_range(&self.config.layer, model.num_layers())?;
        let cfg = &self.config;
        let stats_seconds =
            self.prepared
                .ensure(model, tok, &[layer], &cfg.value, &cfg.stats, self.progress)?;
        let (_, ctx) = self.prepared.get();
        let t = Instant::now();
        let keys = mean_keys(model, tok, records, layer, ctx)?;
        let mut entries = HashMap::with_capacity(records.len());
        let pb = crate::progress::bar(self.progress, records.len(), "rome values");
        let task = ValueTask {
            layer,
            site: Site::MlpOutput,
            contexts: ctx,
            cfg: &cfg.value,
        };
        values_in_batches(model, tok, records, task, |i, v| {
            entries.insert(record_key(&records[i]), (keys.get(i as i64), v));
            pb.inc(1);
            Ok(())
        })?;
        pb.finish_and_clear();
        self.ahead = Ahead {
            weights: model.params.value_hash(&model.mlp_out_proj(layer))?,
            entries,
            seconds: t.elapsed().as_secs_f64() / records.len() as f64,
            stats_seconds,
        };
        Ok(())
    }

    fn edit(&mut self, model: &mut Model, tok: &Tokenizer, records: &[EditRecord]) -> Result<()> {
        if records.is_empty() {
            return Err(Error::Input("no edits to make".into()));
        }
        let (layer, _) = layer_range(&self.config.layer, model.num_layers())?;
        let cfg = &self.config;
        let stats_seconds =
            self.prepared
                .ensure(model, tok, &[layer], &cfg.value, &cfg.stats, self.progress)?;
        let stats_seconds = stats_seconds + std::mem::take(&mut self.ahead.stats_seconds);
        let (mom2, ctx) = self.prepared.get();
        let t1 = Instant::now();
        let (mut charged, mut used) = (0.0, 0);
        let pb = crate::progress::bar(self.progress && records.len() > 1, records.len(), "rome");
        for rec in records {
            let ahead = if records.len() == 1 && !self.ahead.entries.is_empty() {
                let current = model.params.value_hash(&model.mlp_out_proj(layer))?;
                (current == self.ahead.weights)
                    .then(|| self.ahead.entries.remove(&record_key(rec)))
                    .flatten()
            } else {
                None
            };
            let (k, v) = match ahead {
                Some(kv) => {
                    charged += self.ahead.seconds;
                    used += 1;
                    kv
                }
                None => {
                    let k = mean_keys(model, tok, std::slice::from_ref(rec), layer, ctx)?.get(0);
                    let task = ValueTask {
                        layer,
                        site: Site::MlpOutput,
                        contexts: ctx,
                        cfg: &cfg.value,
                    };
                    let (_, v) = optimize_value(model, tok, rec, task)?;
                    (k, v)
                }
            };
            let w = out_proj(model, layer)?;
            add_to_out_proj(model, layer, &rome_delta(&w, &mom2[0], &k, &v))?;
            pb.inc(1);
        }
        pb.finish_and_clear();
        let report = LocateReport::new(
            "rome",
            vec![layer],
            records.len(),
            stats_seconds,
            t1.elapsed().as_secs_f64() + charged,
            &cfg.value,
            ctx,
        );
        let report = LocateReport {
            values_from_cache: used,
            ..report
        };
        self.reports.push(report);
        Ok(())
    }

    fn report(&self) -> Option<serde_json::Value> {
        serde_json::to_value(serde_json::json!({ "runs": self.reports })).ok()
    }
}

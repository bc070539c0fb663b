//! AlphaEdit (Fang et al., ICLR 2025): MEMIT with each layer's update projected onto the
//! null space of the preserved knowledge's keys (SCALE.md), so that what the layer does
//! to those keys is left as it was; built for lifelong (sequential) editing.
//!
//! Keys, targets z and the residual spreading are MEMIT's ([`super::locate::spread`]). Per
//! edited layer, with the batch's keys K (`[in, n]`) and residuals R (`[out, n]`):
//! - P = Û Ûᵀ, Û the left singular vectors of the key statistics C = E[k kᵀ] (ROME's and
//!   MEMIT's, uncentred) whose singular values are below `nullspace_threshold`; P is
//!   computed once per model and layer and cached beside C;
//! - ΔWᵀ = solve(P (K Kᵀ + C_prev) + λ₂ I, P K Rᵀ), with C_prev the sum of K Kᵀ over the
//!   earlier batches this editor applied (zero at first, growing with each batch of a
//!   sequential run).
//!
//! ΔWᵀ = P (…) / λ₂ lies in the range of P, so ΔW k = 0 for every key k that P removes.

use std::hash::{DefaultHasher, Hash, Hasher};
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

/// AlphaEdit's settings (`recipes/alphaedit.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlphaEditConfig {
    #[serde(default)]
    pub description: String,
    /// The edited layers, inclusive: `A..B` or depth fractions (`1/9..2/7`).
    pub layers: String,
    /// λ₂, the ridge on the projected solve (the authors' `L2`: 1).
    pub l2: f64,
    /// Singular values of C below this span the null space the updates live in
    /// (the authors': 2e-2).
    pub nullspace_threshold: f64,
    /// Cache each edit's target z as MEMIT does (shared with MEMIT's cache when the
    /// value settings are the same).
    pub cache_z: bool,
    pub value: ValueConfig,
    pub stats: StatsConfig,
    /// RECT and 1-LI on the edit's weight change ([`crate::edit::post`]).
    #[serde(default)]
    pub post: crate::edit::post::PostConfig,
}

impl AlphaEditConfig {
    pub(crate) fn check(&self) -> Result<()> {
        self.post.check()?;
        layer_range(&self.layers, 1 << 20)?;
        if self.l2.is_nan() || self.l2 <= 0.0 {
            return Err(Error::Input(format!(
                "recipe: l2 must be positive, not {}",
                self.l2
            )));
        }
        if self.nullspace_threshold.is_nan() || self.nullspace_threshold <= 0.0 {
            return Err(Error::Input(format!(
                "recipe: nullspace_threshold must be positive, not {}",
                self.nullspace_threshold
            )));
        }
        self.value.check()?;
        self.stats.check()
    }
}

/// P = Û Ûᵀ for the singular vectors of `c` (`[in, in]`, symmetric) whose singular
/// values are below `threshold`, in f64; returns P and the null space's dimension.
/// C is symmetric positive semi-definite, so its singular vectors and values are its
/// eigenvectors and eigenvalues (clamped at 0 against rounding).
pub fn null_space_projection(c: &Tensor, threshold: f64) -> (Tensor, usize) {
    let c = c.to_kind(Kind::Double);
    let (s, u) = Tensor::linalg_eigh(&((&c + c.transpose(0, 1)) / 2.0), "L");
    let s = s.clamp_min(0.0);
    let keep = s.lt(threshold);
    let dims = keep.sum(Kind::Int64).int64_value(&[]) as usize;
    let u = u.index_select(1, &keep.nonzero().squeeze_dim(1));
    (u.mm(&u.transpose(0, 1)), dims)
}

/// AlphaEdit's closed form for one layer: ΔW `[out, in]` with
/// ΔWᵀ = solve(P (K Kᵀ + C_prev) + λ₂ I, P K Rᵀ); `k` `[in, n]`, `r` `[out, n]`, f64.
pub fn alphaedit_delta(p: &Tensor, k: &Tensor, r: &Tensor, c_prev: &Tensor, l2: f64) -> Tensor {
    let (p, k, r, c_prev) = (
        p.to_kind(Kind::Double),
        k.to_kind(Kind::Double),
        r.to_kind(Kind::Double),
        c_prev.to_kind(Kind::Double),
    );
    let n = p.size()[0];
    let eye = Tensor::eye(n, (Kind::Double, p.device()));
    let a = p.mm(&(k.mm(&k.transpose(0, 1)) + c_prev)) + eye * l2;
    let b = p.mm(&k).mm(&r.transpose(0, 1));
    Tensor::linalg_solve(&a, &b, true).transpose(0, 1)
}

/// AlphaEdit over a layer range; the earlier batches' keys accumulate in the editor.
pub struct AlphaEditEditor {
    pub config: AlphaEditConfig,
    pub progress: bool,
    prepared: Prepared,
    /// P per edited layer, and the null space's dimension.
    projections: Option<Vec<(Tensor, usize)>>,
    /// Σ K Kᵀ of the batches applied so far, per edited layer.
    prev: Vec<Tensor>,
    reports: Vec<LocateReport>,
}

impl AlphaEditEditor {
    pub fn new(config: AlphaEditConfig) -> Self {
        AlphaEditEditor {
            config,
            progress: false,
            prepared: Prepared::default(),
            projections: None,
            prev: Vec::new(),
            reports: Vec::new(),
        }
    }

    /// The projections, from the cache beside the key statistics when there.
    fn projections(&mut self, mom2: &[Tensor], layers: &[usize]) -> Result<()> {
        if self.projections.is_some() {
            return Ok(());
        }
        let dir = self.config.stats.cache_dir();
        let mut out = Vec::with_capacity(layers.len());
        for (c, &layer) in mom2.iter().zip(layers) {
            // Named by C itself and the threshold: nothing else decides P.
            let cpu = c
                .to_kind(Kind::Double)
                .to_device(tch::Device::Cpu)
                .contiguous();
            let mut h = DefaultHasher::new();
            Vec::<f64>::try_from(cpu.flatten(0, -1))?
                .iter()
                .for_each(|v| v.to_bits().hash(&mut h));
            self.config.nullspace_threshold.to_bits().hash(&mut h);
            let path = dir.as_ref().map(|d| {
                d.join(format!(
                    "alphaedit-p-layer{layer}-{:016x}.safetensors",
                    h.finish()
                ))
            });
            let cached = match &path {
                Some(p) if p.exists() => Tensor::read_safetensors(p)?
                    .into_iter()
                    .find(|(n, _)| n == "p")
                    .map(|(_, t)| t),
                _ => None,
            };
            let p = match cached {
                Some(p) => p.to_device(c.device()),
                None => {
                    let (p, _) = null_space_projection(c, self.config.nullspace_threshold);
                    if let Some(path) = &path {
                        crate::cache::write_tensors(
                            path,
                            &[("p", &p.to_device(tch::Device::Cpu))],
                        )?;
                    }
                    p
                }
            };
            // The trace of a projection is its rank.
            let dims = p.trace().double_value(&[]).round() as usize;
            out.push((p, dims));
        }
        self.projections = Some(out);
        Ok(())
    }
}

impl Editor for AlphaEditEditor {
    fn name(&self) -> &str {
        "alphaedit"
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
        let layers = layer_list(&self.config.layers, model.num_layers())?;
        let hi = *layers.last().expect("a layer range holds a layer");
        let stats_seconds = self.prepared.ensure(
            model,
            tok,
            &layers,
            &self.config.value,
            &self.config.stats,
            self.progress,
        )?;
        let (mom2, ctx) = self.prepared.get();
        let (mom2, ctx): (Vec<Tensor>, Vec<String>) = (
            mom2.iter().map(Tensor::shallow_clone).collect(),
            ctx.to_vec(),
        );
        self.projections(&mom2, &layers)?;
        let t1 = Instant::now();
        let cfg = &self.config;
        let z_options = ZOptions {
            cache_dir: cfg.stats.cache_dir().filter(|_| cfg.cache_z),
            progress: self.progress,
        };
        let (zs, from_cache) = targets(model, tok, records, hi, (&ctx, &cfg.value), z_options)?;
        let projections = self.projections.as_ref().expect("computed above");
        if self.prev.is_empty() {
            self.prev = mom2
                .iter()
                .map(|c| Tensor::zeros_like(c).to_kind(Kind::Double))
                .collect();
        }
        let prev = &mut self.prev;
        let l2 = cfg.l2;
        spread(model, tok, records, &layers, &ctx, &zs, |i, k, r| {
            let delta = alphaedit_delta(&projections[i].0, k, r, &prev[i], l2);
            prev[i] += k.mm(&k.transpose(0, 1));
            Ok(delta)
        })?;
        let mut report = LocateReport::new(
            "alphaedit",
            layers,
            records.len(),
            stats_seconds,
            t1.elapsed().as_secs_f64(),
            &cfg.value,
            &ctx,
        );
        report.values_from_cache = from_cache;
        self.reports.push(report);
        Ok(())
    }

    fn begin(&mut self, model: &Model, tok: &Tokenizer) -> Result<()> {
        let layers = layer_list(&self.config.layers, model.num_layers())?;
        let cfg = &self.config;
        self.prepared
            .begin(model, tok, &layers, &cfg.value, &cfg.stats, self.progress)
    }

    fn state(&self) -> EditorState {
        let mut state = self.prepared.state();
        state.tensors = self
            .prev
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("c_prev.{i}"), c.shallow_clone()))
            .collect();
        state
    }

    fn set_state(&mut self, state: EditorState) -> Result<()> {
        self.prepared.set_state(&state)?;
        let mut prev: Vec<(usize, Tensor)> = state
            .tensors
            .into_iter()
            .filter_map(|(n, t)| Some((n.strip_prefix("c_prev.")?.parse().ok()?, t)))
            .collect();
        prev.sort_by_key(|(i, _)| *i);
        self.prev = prev
            .into_iter()
            .map(|(_, t)| t.to_kind(Kind::Double))
            .collect();
        Ok(())
    }

    fn report(&self) -> Option<serde_json::Value> {
        let dims: Option<Vec<usize>> = self
            .projections
            .as_ref()
            .map(|ps| ps.iter().map(|p| p.1).collect());
        Some(serde_json::json!({
            "runs": self.reports,
            "l2": self.config.l2,
            "nullspace_threshold": self.config.nullspace_threshold,
            "null_space_dims": dims,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::memit::memit_delta;

    /// A symmetric PSD "C" = Q diag(s) Qᵀ with singular values s from 10 down to 1e-4,
    /// its singular vectors Q (in that order), and random K, R.
    fn problem(d: i64, n: i64, seed: i64) -> (Tensor, Tensor, Tensor, Tensor) {
        tch::manual_seed(seed);
        let opts = (Kind::Double, tch::Device::Cpu);
        let (q, _) = Tensor::linalg_qr(&Tensor::randn([d, d], opts), "reduced");
        let s = Tensor::logspace(1.0, -4.0, d, 10.0, opts);
        let c = (&q * &s).mm(&q.transpose(0, 1));
        let (k, r) = (Tensor::randn([d, n], opts), Tensor::randn([d / 2, n], opts));
        (c, q, k, r)
    }

    #[test]
    fn the_update_leaves_the_preserved_keys_alone() {
        let (c, q, k, r) = problem(24, 5, 1);
        let (p, dims) = null_space_projection(&c, 2e-2);
        // logspace(1, -4, 24): 10^(1 - 5i/23) < 2e-2 for i ≥ 13, so 11 of 24.
        assert_eq!(dims, 11);
        let prev = k.mm(&k.transpose(0, 1)) * 0.5;
        let delta = alphaedit_delta(&p, &k, &r, &prev, 1.0);
        // The keys C keeps: its leading singular vectors (values ≥ the threshold).
        let kept = q.narrow(1, 0, 13);
        let moved = delta.mm(&kept).norm().double_value(&[]);
        assert!(
            moved < 1e-10 * delta.norm().double_value(&[]),
            "‖ΔW k‖ = {moved}"
        );
        // The null-space directions do move.
        assert!(delta.mm(&q.narrow(1, 13, 11)).norm().double_value(&[]) > 1e-3);
        // P is the projection onto exactly those directions.
        let want = q.narrow(1, 13, 11).mm(&q.narrow(1, 13, 11).transpose(0, 1));
        assert!((&p - want).abs().max().double_value(&[]) < 1e-9);
    }

    #[test]
    fn with_the_identity_and_no_history_it_is_memits_closed_form_with_l2() {
        // P = I, C_prev = 0: ΔW = R Kᵀ (K Kᵀ + λ₂ I)⁻¹, MEMIT's form with λC → λ₂ I.
        let (_, _, k, r) = problem(16, 4, 2);
        let eye = Tensor::eye(16, (Kind::Double, tch::Device::Cpu));
        let ours = alphaedit_delta(&eye, &k, &r, &eye.zeros_like(), 0.7);
        let memit = memit_delta(&eye, &k, &r, 0.7);
        let diff = (&ours - &memit).abs().max().double_value(&[]);
        assert!(diff < 1e-10, "differ by {diff}");
    }
}

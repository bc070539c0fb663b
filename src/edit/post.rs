//! What happens to an edit's weight change after the method has made it, for every
//! method that writes weights (EDITORS.md, "RECT" and "1-LI"):
//!
//! - RECT (Gu et al., EMNLP 2024): of each changed tensor's update `ΔW`, keep the
//!   fraction `rect` of entries with the largest relative change `|ΔW_ij / W_ij|` and
//!   zero the rest (`⌊(1 − rect)·N⌋` entries, the smallest first; `W_ij = 0` counts as
//!   an infinite change and is kept; ties go by flat index, the lower zeroed first).
//! - 1-LI (Brown et al., 2023): the edited weights mixed back with the original,
//!   `W₀ + α·ΔW` (`interpolate = α`; every changed tensor shares one α).
//!
//! RECT runs first, then the interpolation, once per `edit` call (per batch). Both
//! default to 1, which leaves the edit as the method made it.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::editor::{Editor, EditorState};
use crate::data::EditRecord;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// The `[post]` table of a recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostConfig {
    /// RECT: the fraction of each changed tensor's update kept, by relative change
    /// (1: all of it, off; the authors recommend 0.4).
    pub rect: f64,
    /// 1-LI: α in `W₀ + α·ΔW` (1: the edit as made, off; 0: the original weights).
    pub interpolate: f64,
}

impl Default for PostConfig {
    fn default() -> Self {
        PostConfig {
            rect: 1.0,
            interpolate: 1.0,
        }
    }
}

impl PostConfig {
    /// Whether it changes anything.
    pub fn is_active(&self) -> bool {
        self.rect != 1.0 || self.interpolate != 1.0
    }

    pub(crate) fn check(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.rect) {
            return Err(Error::Setting {
                key: "post.rect".into(),
                reason: format!("a fraction in [0, 1], not {}", self.rect),
            });
        }
        if !self.interpolate.is_finite() {
            return Err(Error::Setting {
                key: "post.interpolate".into(),
                reason: format!("a finite α, not {}", self.interpolate),
            });
        }
        Ok(())
    }
}

/// RECT's sparsified update: `delta` with the `⌊(1 − keep)·N⌋` entries of smallest
/// `|delta / w0|` set to zero (see the module doc for zeros and ties).
pub fn rect(w0: &Tensor, delta: &Tensor, keep: f64) -> Tensor {
    let n = delta.numel() as i64;
    let drop = ((1.0 - keep) * n as f64 + 1e-9).floor() as i64;
    if drop <= 0 {
        return delta.shallow_clone();
    }
    let kind = if delta.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let w = w0.to_kind(kind).flatten(0, -1);
    let d = delta.to_kind(kind).flatten(0, -1);
    let rel = (&d / &w).abs();
    let rel = rel.masked_fill(&w.eq(0.0), f64::INFINITY);
    // A stable sort keeps equal changes in flat-index order: the lower goes first.
    let (_, order) = rel.sort_stable(true, 0, false);
    let zeroed = order.narrow(0, 0, drop.min(n));
    d.index_fill(0, &zeroed, 0.0)
        .view(delta.size().as_slice())
        .to_kind(delta.kind())
}

/// An editor whose weight changes go through [`PostConfig`] after each edit.
pub struct PostEditor {
    inner: Box<dyn Editor>,
    config: PostConfig,
    /// Per `edit` call: tensors changed, entries of their updates, entries kept.
    log: Vec<serde_json::Value>,
}

impl PostEditor {
    pub fn new(inner: Box<dyn Editor>, config: PostConfig) -> Self {
        PostEditor {
            inner,
            config,
            log: Vec::new(),
        }
    }
}

impl Editor for PostEditor {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn changes_weights(&self) -> bool {
        self.inner.changes_weights()
    }
    fn prepare(&mut self, model: &Model, tok: &Tokenizer, records: &[EditRecord]) -> Result<()> {
        self.inner.prepare(model, tok, records)
    }
    fn writes(&self, model: &Model) -> Result<Option<Vec<String>>> {
        self.inner.writes(model)
    }
    fn begin(&mut self, model: &Model, tok: &Tokenizer) -> Result<()> {
        self.inner.begin(model, tok)
    }
    fn state(&self) -> EditorState {
        self.inner.state()
    }
    fn set_state(&mut self, state: EditorState) -> Result<()> {
        self.inner.set_state(state)
    }

    fn edit(&mut self, model: &mut Model, tok: &Tokenizer, records: &[EditRecord]) -> Result<()> {
        let names: Vec<String> = match self.inner.writes(model)? {
            Some(n) => n,
            None => model.params.names().map(str::to_owned).collect(),
        };
        let before: Vec<Tensor> = {
            let _g = tch::no_grad_guard();
            names
                .iter()
                .map(|n| model.params.get(n).map(|t| t.detach().copy()))
                .collect::<Result<_>>()?
        };
        self.inner.edit(model, tok, records)?;
        let _g = tch::no_grad_guard();
        let (mut changed, mut entries, mut kept) = (0usize, 0i64, 0i64);
        for (name, w0) in names.iter().zip(&before) {
            let mut w = model.params.get(name)?;
            if w.equal(w0) {
                continue;
            }
            let delta = &w - w0;
            let delta = if self.config.rect < 1.0 {
                rect(w0, &delta, self.config.rect)
            } else {
                delta
            };
            changed += 1;
            entries += delta.numel() as i64;
            kept += delta.ne(0.0).sum(Kind::Int64).int64_value(&[]);
            let new = if self.config.interpolate == 1.0 {
                w0 + &delta
            } else {
                w0 + delta * self.config.interpolate
            };
            w.copy_(&new);
        }
        self.log.push(serde_json::json!({
            "tensors_changed": changed,
            "entries": entries,
            "entries_changed": kept,
        }));
        Ok(())
    }

    fn report(&self) -> Option<serde_json::Value> {
        let mut r = self.inner.report().unwrap_or_else(|| serde_json::json!({}));
        if let Some(o) = r.as_object_mut() {
            o.insert(
                "post".into(),
                serde_json::json!({
                    "rect": self.config.rect,
                    "interpolate": self.config.interpolate,
                    "edits": self.log,
                }),
            );
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_slice(v)
    }

    /// N − ⌊(1 − k)N⌋ entries kept, those of largest |ΔW/W|; a zero weight counts as an
    /// infinite change; ties go by flat index.
    #[test]
    fn rect_keeps_the_largest_relative_changes() {
        let w0 = t(&[1.0, 2.0, 0.0, 4.0, 10.0]);
        let d = t(&[0.5, 0.5, 0.001, 2.0, 1.0]);
        // Relative: 0.5, 0.25, inf, 0.5, 0.1. Keep 40 %: ⌊0.6·5⌋ = 3 zeroed (0.1, 0.25,
        // then the first 0.5 by index).
        let kept = rect(&w0, &d, 0.4);
        assert_eq!(
            Vec::<f64>::try_from(&kept).unwrap(),
            [0.0, 0.0, 0.001, 2.0, 0.0]
        );
        // k = 1 keeps ΔW, k = 0 keeps none of it.
        assert!(rect(&w0, &d, 1.0).equal(&d));
        assert_eq!(
            rect(&w0, &d, 0.0).ne(0.0).sum(Kind::Int64).int64_value(&[]),
            0
        );
        // Shape and dtype survive.
        let w2 = Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu));
        let d2 = Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).view([2, 3]);
        let k2 = rect(&w2, &d2, 0.5);
        assert_eq!((k2.size(), k2.kind()), (vec![2, 3], Kind::Float));
        assert_eq!(
            Vec::<f32>::try_from(k2.flatten(0, -1)).unwrap(),
            [0.0, 0.0, 0.0, 3.0, 4.0, 5.0]
        );
    }

    #[test]
    fn settings_are_checked() {
        let bad = PostConfig {
            rect: 1.5,
            interpolate: 1.0,
        };
        assert!(bad.check().unwrap_err().to_string().contains("post.rect"));
        assert!(!PostConfig::default().is_active());
    }
}

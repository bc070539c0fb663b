//! GRACE (Hartvigsen et al., NeurIPS 2023; EDITORS.md): a key–value codebook at one
//! layer's MLP output projection, beside the weights. A key is the projection's input at
//! the edit prompt's last token; when a probed position's input lies within the radius ε
//! of its nearest key, the projection's output there is replaced by that key's value,
//! trained so the model states the new target. The weights are never changed.
//!
//! An edit (the authors' rules, GRACE-A `grace/editors/grace.py`): with the nearest key at
//! distance d, a new key is added with radius ε₀ when the codebook is empty or
//! d > ε₀ + ε_nearest; a key with another label (target) closer than that is split (its
//! radius and the new one become d/2, the old one less 1e-5); a key with the same label
//! is widened to d (`coverage`) or also moved half way (`moving_average`). Then the value
//! is trained for `iterations` Adam steps (lr 1) on the target's cross-entropy, with the
//! value replacing the output at the prompt's last token (`replace_last`). Values start
//! as U[0, 1) (`cold`) or the layer's output there (`warm`).
//!
//! Where ftedit differs from EasyEdit, it follows the authors (EDITORS.md): labels stay
//! with their keys, and the probed position is each input's own (its first logit read,
//! the last prompt token of a teacher-forced prompt + target, or each new token while
//! generating), not the last edit's.

use std::rc::Rc;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::augment::Rng;
use super::editor::Editor;
use super::layers::layer_range;
use crate::data::EditRecord;
use crate::error::{Error, Result};
use crate::model::adapter::probe_mask;
use crate::model::{Adapter, CaptureKeys, ForwardExtras, Input, LogitsAt, Model, SavedAdapter};
use crate::tokenizer::Tokenizer;
use crate::train::{AdamW, AdamWConfig};

/// How a new key's value starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueInit {
    /// Uniform in [0, 1) (the authors' default).
    Cold,
    /// The layer's output at the query.
    Warm,
}

/// What an edit near a key with the same label does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expand {
    /// Widen the radius to reach the query (the authors' default).
    Coverage,
    /// Widen it and move the key half way to the query.
    MovingAverage,
}

/// GRACE's settings (`recipes/grace.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraceConfig {
    #[serde(default)]
    pub description: String,
    /// The layer whose MLP output projection holds the codebook: a number or a depth
    /// fraction.
    pub layer: String,
    /// ε₀, a new key's radius (Euclidean distance between projection inputs).
    pub eps: f64,
    /// Adam steps on an edit's value.
    pub iterations: usize,
    /// Adam's learning rate on the values.
    pub lr: f64,
    pub init: ValueInit,
    pub expand: Expand,
    /// Seed of the cold values.
    pub seed: i64,
}

impl GraceConfig {
    pub(crate) fn check(&self) -> Result<()> {
        let (lo, hi) = layer_range(&self.layer, 1 << 20)?;
        if lo != hi {
            return Err(Error::Input(format!(
                "recipe: GRACE's codebook sits at one layer, not '{}'",
                self.layer
            )));
        }
        if !(self.eps > 0.0 && self.lr > 0.0) {
            return Err(Error::Input("recipe: eps and lr must be positive".into()));
        }
        Ok(())
    }
}

/// The codebook: keys `[n, inner]`, values `[n, hidden]`, radii and labels (the target
/// token ids of the edit that made each key).
#[derive(Debug)]
pub struct Codebook {
    pub layer: usize,
    pub keys: Tensor,
    pub values: Tensor,
    pub eps: Vec<f64>,
    pub labels: Vec<Vec<u32>>,
}

impl Codebook {
    fn empty(layer: usize, inner: i64, hidden: i64, device: tch::Device) -> Self {
        Codebook {
            layer,
            keys: Tensor::zeros([0, inner], (Kind::Float, device)),
            values: Tensor::zeros([0, hidden], (Kind::Float, device)),
            eps: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// A handle sharing this codebook's tensors (training the values in place shows in
    /// every handle).
    fn share(&self) -> Codebook {
        Codebook {
            layer: self.layer,
            keys: self.keys.shallow_clone(),
            values: self.values.shallow_clone(),
            eps: self.eps.clone(),
            labels: self.labels.clone(),
        }
    }

    fn len(&self) -> usize {
        self.eps.len()
    }

    /// The nearest key to `q` (`[inner]`) and its distance.
    fn nearest(&self, q: &Tensor) -> Option<(usize, f64)> {
        if self.len() == 0 {
            return None;
        }
        // The distance `apply` measures, so that a key placed to cover `q` covers it.
        let d = Tensor::cdist(&q.unsqueeze(0), &self.keys, 2.0, None::<i64>).squeeze_dim(0);
        let i = d.argmin(0, false).int64_value(&[]) as usize;
        Some((i, d.double_value(&[i as i64])))
    }

    /// The codebook rules for a query `q` with label `label` (GRACE-A): the key its value
    /// is trained at, and what was done (`added`, `split`, `widened`, `covered`);
    /// `fresh` gives a new key's starting value.
    pub fn place(
        &mut self,
        q: &Tensor,
        label: &[u32],
        eps0: f64,
        expand: Expand,
        fresh: impl Fn() -> Tensor,
    ) -> (usize, &'static str) {
        match self.nearest(q) {
            Some((k, d)) if d <= eps0 + self.eps[k] => {
                if !same_label(&self.labels[k], label) {
                    // Another target this close: both keys shrink to meet half way.
                    self.eps[k] = d / 2.0 - 1e-5;
                    self.push(q, &fresh(), d / 2.0, label.to_vec());
                    (self.len() - 1, "split")
                } else if d > self.eps[k] {
                    self.eps[k] = d;
                    if expand == Expand::MovingAverage {
                        let moved = (self.keys.get(k as i64) + q) / 2.0;
                        self.keys.get(k as i64).copy_(&moved);
                    }
                    (k, "widened")
                } else {
                    (k, "covered")
                }
            }
            // Empty, or no key near enough: a new one with the starting radius.
            _ => {
                self.push(q, &fresh(), eps0, label.to_vec());
                (self.len() - 1, "added")
            }
        }
    }

    fn push(&mut self, key: &Tensor, value: &Tensor, eps: f64, label: Vec<u32>) {
        self.keys = Tensor::cat(&[&self.keys, &key.unsqueeze(0)], 0);
        self.values = Tensor::cat(&[&self.values.detach(), &value.unsqueeze(0)], 0);
        self.eps.push(eps);
        self.labels.push(label);
    }
}

/// Two labels are the same edit target when their token means agree (the authors
/// compare the mean of the label ids).
fn same_label(a: &[u32], b: &[u32]) -> bool {
    let mean = |l: &[u32]| l.iter().map(|&x| f64::from(x)).sum::<f64>() / l.len().max(1) as f64;
    mean(a) == mean(b)
}

impl Adapter for Codebook {
    fn layer(&self) -> usize {
        self.layer
    }

    fn apply(&self, key: &Tensor, out: Tensor, probe: &Tensor, _groups: &Tensor) -> Tensor {
        if self.len() == 0 {
            return out;
        }
        let rows = probe.flatten(0, -1).nonzero().squeeze_dim(1);
        if rows.size()[0] == 0 {
            return out;
        }
        let inner = key.size()[2];
        let hidden = out.size()[2];
        let q = key
            .reshape([-1, inner])
            .index_select(0, &rows)
            .to_kind(Kind::Float);
        // Distances to every key, [P, n]; the nearest and whether it covers the query.
        let d = Tensor::cdist(&q, &self.keys, 2.0, None::<i64>);
        let (dist, nearest) = d.min_dim(1, false);
        let eps = Tensor::from_slice(&self.eps)
            .to_kind(Kind::Float)
            .to_device(q.device())
            .index_select(0, &nearest);
        let hit = dist.le_tensor(&eps);
        let hit_idx = hit.nonzero().squeeze_dim(1);
        if hit_idx.size()[0] == 0 {
            return out;
        }
        let targets = rows.index_select(0, &hit_idx);
        let values = self
            .values
            .index_select(0, &nearest.index_select(0, &hit_idx))
            .to_kind(out.kind());
        let shape = out.size();
        out.reshape([-1, hidden])
            .index_copy(0, &targets, &values)
            .reshape(shape)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn saved(&self) -> SavedAdapter {
        let labels: Vec<i64> = self
            .labels
            .iter()
            .flat_map(|l| std::iter::once(l.len() as i64).chain(l.iter().map(|&x| i64::from(x))))
            .collect();
        SavedAdapter {
            method: "grace".into(),
            config: serde_json::json!({"layer": self.layer, "eps": self.eps}),
            tensors: vec![
                (
                    "keys".into(),
                    self.keys.detach().to_device(tch::Device::Cpu),
                ),
                (
                    "values".into(),
                    self.values.detach().to_device(tch::Device::Cpu),
                ),
                ("labels".into(), Tensor::from_slice(&labels)),
            ],
        }
    }
}

impl Codebook {
    /// A codebook as [`Adapter::saved`] wrote it.
    pub fn from_saved(saved: &SavedAdapter, device: tch::Device) -> Result<Self> {
        let bad = |m: &str| Error::Input(format!("GRACE adapter: {m}"));
        let layer = saved.config["layer"]
            .as_u64()
            .ok_or_else(|| bad("no layer"))? as usize;
        let eps: Vec<f64> =
            serde_json::from_value(saved.config["eps"].clone()).map_err(|_| bad("no radii"))?;
        let (keys, values) = (saved.tensor("keys")?, saved.tensor("values")?);
        let flat = Vec::<i64>::try_from(saved.tensor("labels")?)?;
        let mut labels = Vec::new();
        let mut i = 0;
        while i < flat.len() {
            let n = flat[i] as usize;
            labels.push(flat[i + 1..i + 1 + n].iter().map(|&x| x as u32).collect());
            i += 1 + n;
        }
        if keys.size()[0] as usize != eps.len()
            || values.size()[0] as usize != eps.len()
            || labels.len() != eps.len()
        {
            return Err(bad("keys, values, radii and labels differ in number"));
        }
        Ok(Codebook {
            layer,
            keys: keys.to_kind(Kind::Float).to_device(device),
            values: values.to_kind(Kind::Float).to_device(device),
            eps,
            labels,
        })
    }
}

/// A cold value, uniform in [0, 1) as the authors' `torch.rand`, drawn from the recipe's
/// seed and the key's index in the codebook: the same key gets the same start in a run
/// resumed from a checkpoint, whatever else draws random numbers in the process.
fn cold_value(seed: i64, index: usize, dim: i64, device: tch::Device) -> Tensor {
    let mut rng = Rng((seed as u64) ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let v: Vec<f32> = (0..dim).map(|_| rng.uniform() as f32).collect();
    Tensor::from_slice(&v).to_device(device)
}

/// GRACE, applied to the records one after another. The codebook lives on the model (its
/// adapter), so whatever restores a model's adapter (the single protocol, a sweep, a
/// checkpoint) restores the edits; each edit copies it before changing it.
pub struct GraceEditor {
    pub config: GraceConfig,
    pub progress: bool,
    /// Per edit: the key used, what the codebook rules did, the keys after, the loss.
    log: Vec<serde_json::Value>,
    seconds: f64,
}

impl GraceEditor {
    pub fn new(config: GraceConfig) -> Self {
        GraceEditor {
            config,
            progress: false,
            log: Vec::new(),
            seconds: 0.0,
        }
    }

    /// A copy of `model`'s codebook (none yet: an empty one at the recipe's layer).
    fn codebook_of(&self, model: &Model) -> Result<Codebook> {
        if let Some(book) = model.own_adapter::<Codebook>("GRACE")? {
            return Ok(Codebook {
                layer: book.layer,
                keys: book.keys.copy(),
                values: book.values.detach().copy(),
                eps: book.eps.clone(),
                labels: book.labels.clone(),
            });
        }
        let (layer, _) = layer_range(&self.config.layer, model.num_layers())?;
        let w = crate::edit::locate::out_proj(model, layer)?;
        let (hidden, inner) = (w.size()[0], w.size()[1]);
        Ok(Codebook::empty(layer, inner, hidden, model.device()))
    }

    /// One edit: the codebook rules at the prompt's last token, then the value's training.
    fn edit_one(&mut self, model: &mut Model, tok: &Tokenizer, rec: &EditRecord) -> Result<()> {
        let cfg = self.config.clone();
        let prompt = tok.encode(&rec.rewrite_prompt(), true)?;
        let target = tok.encode(&format!(" {}", rec.target_new), false)?;
        if prompt.is_empty() || target.is_empty() {
            return Err(Error::Input("an empty prompt or target".into()));
        }
        let ids: Vec<u32> = prompt.iter().chain(&target).copied().collect();
        let t_star = prompt.len() - 1;
        let mut book = self.codebook_of(model)?;
        let layer = book.layer;
        let device = model.device();
        let input = Input::right_padded(&[&ids], device)?;
        // The query: the projection's input at t*, and (for `warm`) its output there.
        let (q, out_here) = {
            let _g = tch::no_grad_guard();
            let mut keys = CaptureKeys {
                layers: vec![layer],
                keys: Vec::new(),
            };
            model.run_hooks(&input, &mut keys)?;
            let key = keys.keys.pop().expect("hooked").1;
            let q = key.get(0).get(t_star as i64).to_kind(Kind::Float);
            let w = crate::edit::locate::out_proj(model, layer)?;
            let out = w.to_kind(Kind::Float).mv(&q);
            (q, out)
        };
        let index = book.len();
        let fresh = || -> Tensor {
            match cfg.init {
                ValueInit::Cold => cold_value(cfg.seed, index, out_here.size()[0], device),
                ValueInit::Warm => out_here.copy(),
            }
        };
        let (slot, action) = book.place(&q, &target, cfg.eps, cfg.expand, fresh);
        // Train the value: the layers below the codebook run once; the value replaces
        // the output at t* in every step.
        let values = book.values.detach().set_requires_grad(true);
        book.values = values.shallow_clone();
        model.set_adapter(Some(Rc::new(book.share())));
        let h_in = if layer == 0 {
            None
        } else {
            let _g = tch::no_grad_guard();
            let extras = ForwardExtras {
                stop_after: Some(layer - 1),
                ..Default::default()
            };
            Some((layer, model.hidden_states(&input, extras)?))
        };
        let at: Vec<(usize, usize)> = (0..target.len()).map(|i| (0, t_star + i)).collect();
        let labels = Tensor::from_slice(&target.iter().map(|&x| i64::from(x)).collect::<Vec<_>>())
            .to_device(device);
        let probe = probe_mask(1, ids.len(), Some(&[(0, t_star)]), device);
        // Adam over the values (only the trained key's row has a gradient).
        let mut adam = AdamW::over(
            vec![values.shallow_clone()],
            AdamWConfig {
                lr: cfg.lr,
                ..AdamWConfig::default()
            },
        )?;
        let mut last = f64::NAN;
        for _ in 0..cfg.iterations {
            let extras = ForwardExtras {
                resume: h_in.as_ref().map(|(l, h)| (*l, h.shallow_clone())),
                grad_from: Some(layer + 1),
                probe: Some(probe.shallow_clone()),
                ..Default::default()
            };
            let logits = model.forward_with(&input, &LogitsAt::Positions(at.clone()), extras)?;
            let loss = logits
                .to_kind(Kind::Float)
                .cross_entropy_for_logits(&labels);
            last = loss.double_value(&[]);
            if !last.is_finite() {
                return Err(Error::Diverged(format!(
                    "GRACE's value loss became {last} (try a lower lr)"
                )));
            }
            adam.zero_grad()?;
            loss.backward();
            adam.step()?;
        }
        book.values = values.detach();
        let keys = book.len();
        model.set_adapter(Some(Rc::new(book)));
        self.log.push(serde_json::json!({
            "id": rec.id, "key": slot, "action": action, "keys": keys, "loss": last,
        }));
        Ok(())
    }
}

impl Editor for GraceEditor {
    fn name(&self) -> &str {
        "grace"
    }

    /// The weights stay as they are: the edit lives in the model's adapter.
    fn writes(&self, _model: &Model) -> Result<Option<Vec<String>>> {
        Ok(Some(Vec::new()))
    }

    fn edit(&mut self, model: &mut Model, tok: &Tokenizer, records: &[EditRecord]) -> Result<()> {
        let start = std::time::Instant::now();
        let progress = self.progress;
        crate::edit::editor::in_turn(progress, "grace", records, |rec| {
            self.edit_one(model, tok, rec)
        })?;
        self.seconds += start.elapsed().as_secs_f64();
        Ok(())
    }

    fn report(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "method": "grace",
            "seconds": self.seconds,
            "edits": self.log,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cold_value_depends_on_the_seed_and_the_keys_index_alone() {
        let cpu = tch::Device::Cpu;
        let v = cold_value(0, 3, 1000, cpu);
        tch::manual_seed(99);
        let _ = Tensor::rand([7], (Kind::Float, cpu));
        assert!(v.equal(&cold_value(0, 3, 1000, cpu)));
        assert!(!v.equal(&cold_value(0, 4, 1000, cpu)));
        assert!(!v.equal(&cold_value(1, 3, 1000, cpu)));
        let (lo, hi) = (v.min().double_value(&[]), v.max().double_value(&[]));
        assert!(
            (0.0..0.01).contains(&lo) && hi < 1.0 && hi > 0.99,
            "{lo} {hi}"
        );
        assert!((v.mean(Kind::Double).double_value(&[]) - 0.5).abs() < 0.05);
    }

    fn book(keys: &[[f32; 2]], eps: &[f64], labels: &[u32]) -> Codebook {
        let n = keys.len() as i64;
        Codebook {
            layer: 0,
            keys: Tensor::from_slice(&keys.concat()).view([n, 2]),
            values: Tensor::arange(n * 3, (Kind::Float, tch::Device::Cpu)).view([n, 3]),
            eps: eps.to_vec(),
            labels: labels.iter().map(|&l| vec![l]).collect(),
        }
    }

    fn q(x: f32, y: f32) -> Tensor {
        Tensor::from_slice(&[x, y])
    }

    fn zero() -> Tensor {
        Tensor::zeros([3], (Kind::Float, tch::Device::Cpu))
    }

    /// The rules of EDITORS.md: a far query adds a key with ε₀; the same label within
    /// ε₀ + ε widens ε to d; another label splits (the radii meet at d/2).
    #[test]
    fn the_codebook_rules() {
        let mut b = book(&[[0.0, 0.0]], &[1.0], &[7]);
        // d = 3 > ε₀ + ε = 2: a new key with ε₀.
        assert_eq!(
            b.place(&q(3.0, 0.0), &[7], 1.0, Expand::Coverage, zero),
            (1, "added")
        );
        assert_eq!(b.eps[1], 1.0);
        // Same label, ε < d = 1.5 ≤ ε₀ + ε: widened to d, no new key.
        let mut b = book(&[[0.0, 0.0]], &[1.0], &[7]);
        assert_eq!(
            b.place(&q(0.0, 1.5), &[7], 1.0, Expand::Coverage, zero),
            (0, "widened")
        );
        assert_eq!((b.len(), b.eps[0]), (1, 1.5));
        // Inside the radius: covered, nothing changes.
        assert_eq!(
            b.place(&q(0.0, 1.0), &[7], 1.0, Expand::Coverage, zero),
            (0, "covered")
        );
        // Another label at d = 1.5: split, ε_old + ε_new < d and ε_new = d/2.
        let mut b = book(&[[0.0, 0.0]], &[1.0], &[7]);
        assert_eq!(
            b.place(&q(0.0, 1.5), &[8], 1.0, Expand::Coverage, zero),
            (1, "split")
        );
        assert!(b.eps[0] + b.eps[1] < 1.5 && b.eps[1] == 0.75, "{:?}", b.eps);
        // Moving average moves the key half way.
        let mut b = book(&[[0.0, 0.0]], &[1.0], &[7]);
        b.place(&q(0.0, 1.5), &[7], 1.0, Expand::MovingAverage, zero);
        assert_eq!(Vec::<f32>::try_from(b.keys.get(0)).unwrap(), [0.0, 0.75]);
    }

    /// Replacement at probed positions within the nearest key's radius, d = ε included,
    /// d = ε + 1e-6 not; unprobed positions and an empty codebook leave the output as it
    /// was, bit for bit.
    #[test]
    fn the_adapter_replaces_only_within_the_radius() {
        let b = book(&[[0.0, 0.0], [10.0, 0.0]], &[1.0, 2.0], &[1, 2]);
        let key =
            Tensor::from_slice(&[1.0f32, 0.0, 1.000001, 0.0, 8.0, 0.0, 0.0, 0.0]).view([1, 4, 2]);
        let out = Tensor::full([1, 4, 3], -1.0, (Kind::Float, tch::Device::Cpu));
        let all = Tensor::ones([1, 4], (Kind::Bool, tch::Device::Cpu));
        let groups = Tensor::zeros([1, 4], (Kind::Int64, tch::Device::Cpu));
        let got = b.apply(&key, out.copy(), &all, &groups);
        let row = |i: i64| Vec::<f32>::try_from(got.get(0).get(i)).unwrap();
        assert_eq!(row(0), [0.0, 1.0, 2.0], "d = ε replaces with key 0's value");
        assert_eq!(row(1), [-1.0; 3], "d = ε + 1e-6 does not");
        assert_eq!(row(2), [3.0, 4.0, 5.0], "key 1 within its radius 2");
        assert_eq!(row(3), [0.0, 1.0, 2.0]);
        // Only probed positions.
        let first = probe_mask(1, 4, Some(&[(0, 2)]), tch::Device::Cpu);
        let got = b.apply(&key, out.copy(), &first, &groups);
        assert_eq!(Vec::<f32>::try_from(got.get(0).get(0)).unwrap(), [-1.0; 3]);
        assert_eq!(
            Vec::<f32>::try_from(got.get(0).get(2)).unwrap(),
            [3.0, 4.0, 5.0]
        );
        // No keys: the output as it came.
        let empty = Codebook::empty(0, 2, 3, tch::Device::Cpu);
        assert!(empty.apply(&key, out.copy(), &all, &groups).equal(&out));
        // Saved and read back: the same codebook.
        let again = Codebook::from_saved(&b.saved(), tch::Device::Cpu).unwrap();
        assert!(again.keys.equal(&b.keys) && again.values.equal(&b.values));
        assert_eq!((again.eps, again.labels), (b.eps.clone(), b.labels.clone()));
    }
}

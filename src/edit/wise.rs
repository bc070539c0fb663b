//! WISE (Wang et al., NeurIPS 2024; EDITORS.md, "WISE"): edits go into a side copy of
//! one layer's MLP output projection, trained so that the activation gap between side and
//! main memory is large on the edits and small elsewhere; a router sends an input to the
//! side memory when its gap crosses a threshold, and to the untouched main memory
//! otherwise. The weights are never changed: the side memory is the model's adapter.
//!
//! An edit (EasyEdit's `WISE.py`, the code behind the paper's numbers): a batch of the
//! edit `prompt + target` alone and after ten prefixes the model generated greedily from
//! "I", "You", "Because", "Yes" and "Q: " (five of 5 tokens, five of 10), and one
//! unedited fact (prompt + answer) as the locality row. Up to `iterations` SGD steps on
//! the side memory minimise the target cross-entropy plus the margin loss on the rows'
//! mean activation gaps; the gradient is masked by a Bernoulli(`mask_ratio`) mask drawn
//! once per shard, and the side memory is clamped to the main one ± `norm_constraint`.
//! Every `save_freq` edits the side memory becomes a shard and a fresh one starts; every
//! `merge_freq` edits the last two shards are TIES-merged (retrieve mode).
//!
//! The side memory is kept as its difference Δ from the main weight, so that `W_side a`
//! is the main output plus `Δ a` (the projection's bias, where it has one, stays).
//!
//! Routing, per sequence: the gap `‖φ(W_side a) − φ(W_main a)‖` of each position,
//! averaged over the sequence up to its first probed position (the maximum beyond 100
//! positions); the side memory takes the whole sequence when its gap reaches `act_ratio`
//! × the least gap of its edits, a shard when its gap is above that of the memories
//! before it and its own threshold. EasyEdit averages over the whole teacher-forced input,
//! target included; ftedit routes on what precedes the first read logit, so the choice
//! cannot depend on the answer being scored.

use std::rc::Rc;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::augment::{Fact, Rng};
use super::editor::Editor;
use super::layers::layer_range;
use crate::data::EditRecord;
use crate::error::{Error, Result};
use crate::model::nn::Activation;
use crate::model::{
    Adapter, ForwardExtras, GenerateOptions, Input, LayerHooks, LogitsAt, Model, Sampling,
    SavedAdapter, generate,
};
use crate::tokenizer::{Tokenizer, clean};

/// A memory with no edit yet: its threshold is never reached (EasyEdit's 1e9).
const NO_EDIT: f64 = 1e9;

/// WISE's settings (`recipes/wise.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WiseConfig {
    #[serde(default)]
    pub description: String,
    /// The layer whose MLP output projection gets the side memory: a number or a depth
    /// fraction.
    pub layer: String,
    /// The margins `[α, β, γ]` of the activation loss: unrelated inputs' gaps below α,
    /// edits' above β, and edits' at least γ above unrelated ones.
    pub act_margin: [f64; 3],
    /// An input goes to a memory when its gap reaches this share of the memory's least
    /// edit gap.
    pub act_ratio: f64,
    /// Most SGD steps per edit.
    pub iterations: usize,
    /// SGD's learning rate on the side memory.
    pub lr: f64,
    /// SGD's weight decay (on the side memory's weights, all of them).
    pub weight_decay: f64,
    /// The share of the side memory's entries a shard trains (its gradient mask).
    pub mask_ratio: f64,
    /// The side memory stays within ± this of the main weights, entry by entry.
    pub norm_constraint: f64,
    /// Edits per shard.
    pub save_freq: usize,
    /// Every this many edits the last two shards are merged (0: never).
    pub merge_freq: usize,
    /// TIES merging keeps this share of each shard's largest changes.
    pub merge_density: f64,
    /// Lengths of the generated prefixes, in tokens: one prefix per start word each.
    pub prefix_tokens: Vec<usize>,
    /// Measure gaps through the MLP's activation φ (EasyEdit's code); false: raw
    /// outputs (the paper's formula).
    pub phi: bool,
    /// Seed of the gradient masks and the locality facts.
    pub seed: u64,
}

impl WiseConfig {
    pub(crate) fn check(&self) -> Result<()> {
        let (lo, hi) = layer_range(&self.layer, 1 << 20)?;
        if lo != hi {
            return Err(Error::Input(format!(
                "recipe: WISE's side memory sits at one layer, not '{}'",
                self.layer
            )));
        }
        let positive = |k: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(Error::Setting {
                    key: k.into(),
                    reason: format!("must be positive, not {v}"),
                })
            }
        };
        positive("lr", self.lr)?;
        positive("norm_constraint", self.norm_constraint)?;
        positive("act_ratio", self.act_ratio)?;
        for (k, v) in [
            ("mask_ratio", self.mask_ratio),
            ("merge_density", self.merge_density),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(Error::Setting {
                    key: k.into(),
                    reason: format!("a share in (0, 1], not {v}"),
                });
            }
        }
        if self.save_freq == 0 {
            return Err(Error::Setting {
                key: "save_freq".into(),
                reason: "at least one edit per shard".into(),
            });
        }
        Ok(())
    }
}

fn act_name(a: Activation) -> &'static str {
    match a {
        Activation::Silu => "silu",
        Activation::GeluTanh => "gelu_tanh",
        Activation::Gelu => "gelu",
    }
}

fn act_from(name: &str) -> Option<Activation> {
    Some(match name {
        "silu" => Activation::Silu,
        "gelu_tanh" => Activation::GeluTanh,
        "gelu" => Activation::Gelu,
        _ => return None,
    })
}

/// One memory beside the main one: its change from the main weight `[hidden, inner]`
/// and the least gap of its edits (its routing threshold before `act_ratio`).
#[derive(Debug)]
pub struct Memory {
    pub delta: Tensor,
    pub min_act: f64,
}

impl Memory {
    fn has_edits(&self) -> bool {
        self.min_act < NO_EDIT
    }
}

/// WISE's state at its layer: the side memory being trained, the finished shards, the
/// gradient mask of the current shard, and how many edits it holds.
#[derive(Debug)]
pub struct SideMemory {
    pub layer: usize,
    /// φ, or `None` to measure raw outputs.
    pub act: Option<Activation>,
    pub act_ratio: f64,
    pub side: Memory,
    pub shards: Vec<Memory>,
    /// Which entries the current side memory trains `[hidden, inner]` (bool).
    pub mask: Tensor,
    /// Edits so far, over every shard.
    pub edits: usize,
}

/// The entries a shard trains: Bernoulli(`ratio`), from a fixed generator so that a
/// resumed run draws the same mask.
fn draw_mask(shape: [i64; 2], ratio: f64, seed: u64, device: tch::Device) -> Tensor {
    let mut rng = Rng(seed);
    let n = (shape[0] * shape[1]) as usize;
    let bits: Vec<bool> = (0..n)
        .map(|_| ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < ratio)
        .collect();
    Tensor::from_slice(&bits).view(shape).to_device(device)
}

impl SideMemory {
    fn empty(layer: usize, act: Option<Activation>, w: &Tensor, cfg: &WiseConfig) -> Self {
        let size = w.size();
        SideMemory {
            layer,
            act,
            act_ratio: cfg.act_ratio,
            side: Memory {
                delta: Tensor::zeros([size[0], size[1]], (Kind::Float, w.device())),
                min_act: NO_EDIT,
            },
            shards: Vec::new(),
            mask: draw_mask([size[0], size[1]], cfg.mask_ratio, cfg.seed, w.device()),
            edits: 0,
        }
    }

    fn copy(&self) -> Self {
        let copy = |m: &Memory| Memory {
            delta: m.delta.detach().copy(),
            min_act: m.min_act,
        };
        SideMemory {
            layer: self.layer,
            act: self.act,
            act_ratio: self.act_ratio,
            side: copy(&self.side),
            shards: self.shards.iter().map(copy).collect(),
            mask: self.mask.shallow_clone(),
            edits: self.edits,
        }
    }

    fn phi(&self, x: &Tensor) -> Tensor {
        let x = x.to_kind(Kind::Float);
        match self.act {
            Some(a) => a.apply(&x),
            None => x,
        }
    }

    /// The per-position gap `[B, T]` between `out + key·Δᵀ` and `out`, and the former.
    fn gap(&self, key: &Tensor, out: &Tensor, delta: &Tensor) -> (Tensor, Tensor) {
        let side = out + key.linear::<Tensor>(&delta.to_kind(key.kind()), None);
        let gap = (self.phi(&side) - self.phi(out)).norm_scalaropt_dim(2.0, [-1], false);
        (gap, side)
    }

    /// Closes a shard after `save_freq` edits (a fresh side memory and mask start) and
    /// merges the last two every `merge_freq` edits.
    fn after_edit(&mut self, cfg: &WiseConfig) {
        self.edits += 1;
        if self.edits.is_multiple_of(cfg.save_freq) {
            let size = self.side.delta.size();
            let fresh = Memory {
                delta: Tensor::zeros_like(&self.side.delta),
                min_act: NO_EDIT,
            };
            self.shards.push(std::mem::replace(&mut self.side, fresh));
            let seed = cfg.seed ^ ((self.shards.len() as u64) << 40);
            self.mask = draw_mask([size[0], size[1]], cfg.mask_ratio, seed, self.mask.device());
        }
        if cfg.merge_freq > 0 && self.edits.is_multiple_of(cfg.merge_freq) && self.shards.len() >= 2
        {
            let b = self.shards.pop().expect("two shards");
            let a = self.shards.pop().expect("two shards");
            let zero = Tensor::zeros_like(&a.delta);
            self.shards.push(Memory {
                delta: ties_merge(&zero, &[a.delta, b.delta], &[0.5, 0.5], cfg.merge_density),
                min_act: a.min_act.min(b.min_act),
            });
        }
    }
}

impl Adapter for SideMemory {
    fn layer(&self) -> usize {
        self.layer
    }

    fn apply(&self, key: &Tensor, out: Tensor, probe: &Tensor, groups: &Tensor) -> Tensor {
        // Memories in routing order: the side memory, then the shards.
        let mems: Vec<&Memory> = std::iter::once(&self.side).chain(&self.shards).collect();
        if !mems.iter().any(|m| m.has_edits()) {
            return out;
        }
        let (b, t) = (out.size()[0] as usize, out.size()[1] as usize);
        let host = |x: &Tensor| x.flatten(0, -1).to_device(tch::Device::Cpu);
        let probe = Vec::<bool>::try_from(host(probe)).expect("bool probe");
        let groups = Vec::<i64>::try_from(host(groups)).expect("int64 groups");
        // A memory without edits is all zeros: its gap is 0 and it cannot take over.
        let mut outs = Vec::with_capacity(mems.len());
        let mut gaps = Vec::with_capacity(mems.len());
        for m in &mems {
            if m.has_edits() {
                let (gap, side) = self.gap(key, &out, &m.delta);
                gaps.push(Vec::<f32>::try_from(host(&gap)).expect("f32 gaps"));
                outs.push(Some(side));
            } else {
                gaps.push(vec![0.0; b * t]);
                outs.push(None);
            }
        }
        let mut choice = vec![0i64; b * t];
        for r in 0..b {
            let row = r * t..(r + 1) * t;
            // Each sequence of the row, up to its first probed position.
            let mut firsts: Vec<(i64, usize)> = Vec::new();
            for j in 0..t {
                let g = groups[row.start + j];
                if g >= 0 && probe[row.start + j] && !firsts.iter().any(|&(h, _)| h == g) {
                    firsts.push((g, j));
                }
            }
            for (g, first) in firsts {
                let at: Vec<usize> = (0..=first)
                    .filter(|&j| groups[row.start + j] == g)
                    .map(|j| row.start + j)
                    .collect();
                let stat = |gap: &[f32]| -> f64 {
                    let vals = at.iter().map(|&i| f64::from(gap[i]));
                    if at.len() > 100 {
                        vals.fold(f64::NEG_INFINITY, f64::max)
                    } else {
                        vals.sum::<f64>() / at.len() as f64
                    }
                };
                let mut pick = 0;
                let mut best = stat(&gaps[0]);
                if mems[0].has_edits() && best >= self.act_ratio * mems[0].min_act {
                    pick = 1;
                }
                for (i, m) in mems.iter().enumerate().skip(1) {
                    let d = stat(&gaps[i]);
                    if m.has_edits() && d > best && d >= self.act_ratio * m.min_act {
                        pick = i + 1;
                        best = d;
                    }
                }
                for j in 0..t {
                    if groups[row.start + j] == g {
                        choice[row.start + j] = pick as i64;
                    }
                }
            }
        }
        if choice.iter().all(|&c| c == 0) {
            return out;
        }
        let choice = Tensor::from_slice(&choice)
            .view([b as i64, t as i64, 1])
            .to_device(out.device());
        let mut routed = out;
        for (i, side) in outs.into_iter().enumerate() {
            if let Some(side) = side {
                routed = side.where_self(&choice.eq(i as i64 + 1), &routed);
            }
        }
        routed
    }

    fn saved(&self) -> SavedAdapter {
        let cpu = |t: &Tensor| t.detach().to_device(tch::Device::Cpu);
        let mut tensors = vec![
            ("side".to_string(), cpu(&self.side.delta)),
            ("mask".to_string(), cpu(&self.mask).to_kind(Kind::Uint8)),
        ];
        for (i, s) in self.shards.iter().enumerate() {
            tensors.push((format!("shard.{i}"), cpu(&s.delta)));
        }
        SavedAdapter {
            method: "wise".into(),
            config: serde_json::json!({
                "layer": self.layer,
                "act": self.act.map(act_name),
                "act_ratio": self.act_ratio,
                "side_min_act": self.side.min_act,
                "shard_min_act": self.shards.iter().map(|s| s.min_act).collect::<Vec<_>>(),
                "edits": self.edits,
            }),
            tensors,
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl SideMemory {
    /// A side memory as [`Adapter::saved`] wrote it.
    pub fn from_saved(saved: &SavedAdapter, device: tch::Device) -> Result<Self> {
        let bad = |m: &str| Error::Input(format!("WISE adapter: {m}"));
        let c = &saved.config;
        let layer = c["layer"].as_u64().ok_or_else(|| bad("no layer"))? as usize;
        let act = match &c["act"] {
            serde_json::Value::Null => None,
            v => Some(
                v.as_str()
                    .and_then(act_from)
                    .ok_or_else(|| bad(&format!("unknown activation {v}")))?,
            ),
        };
        let num = |k: &str| c[k].as_f64().ok_or_else(|| bad(&format!("no {k}")));
        let shard_min: Vec<f64> = serde_json::from_value(c["shard_min_act"].clone())
            .map_err(|_| bad("no shard_min_act"))?;
        let get = |name: &str| saved.tensor(name).map(|t| t.to_device(device));
        let side = get("side")?.to_kind(Kind::Float);
        let shards = shard_min
            .iter()
            .enumerate()
            .map(|(i, &m)| {
                let delta = get(&format!("shard.{i}"))?.to_kind(Kind::Float);
                if delta.size() != side.size() {
                    return Err(bad(&format!("shard {i} is {:?}", delta.size())));
                }
                Ok(Memory { delta, min_act: m })
            })
            .collect::<Result<Vec<_>>>()?;
        let mask = get("mask")?.to_kind(Kind::Bool);
        if mask.size() != side.size() {
            return Err(bad("the mask and the side memory differ in shape"));
        }
        Ok(SideMemory {
            layer,
            act,
            act_ratio: num("act_ratio")?,
            side: Memory {
                delta: side,
                min_act: num("side_min_act")?,
            },
            shards,
            mask,
            edits: c["edits"].as_u64().ok_or_else(|| bad("no edits"))? as usize,
        })
    }
}

/// Runs the side memory `delta` at every position of the layer while recording each
/// position's gap (the edit's training pass: every row through the side memory).
struct TrainHook<'a> {
    memory: &'a SideMemory,
    delta: &'a Tensor,
    key: Option<Tensor>,
    /// The main output and key, kept to measure the trained memory's gaps afterwards.
    main: Option<(Tensor, Tensor)>,
    gap: Option<Tensor>,
}

impl LayerHooks for TrainHook<'_> {
    fn wants(&self, layer: usize) -> bool {
        layer == self.memory.layer
    }
    fn mlp_key(&mut self, _layer: usize, key: &Tensor) {
        self.key = Some(key.shallow_clone());
    }
    fn mlp_output(&mut self, _layer: usize, out: Tensor) -> Tensor {
        let key = self.key.take().expect("the key comes before the output");
        let (gap, side) = self.memory.gap(&key, &out, self.delta);
        self.gap = Some(gap);
        self.main = Some((key.detach(), out.detach()));
        side
    }
}

/// One SGD step on the side memory's change `delta` (a leaf with its gradient): the
/// gradient masked, SGD's weight decay on the side weights `w_main + delta` (every
/// entry), then the change clamped to ± `norm_constraint`; the gradient is zeroed.
fn sgd_step(delta: &Tensor, mask: &Tensor, w_main: &Tensor, cfg: &WiseConfig) -> Result<()> {
    tch::no_grad(|| {
        let mut grad = delta.grad();
        let step = (&grad * mask + (w_main + delta) * cfg.weight_decay) * cfg.lr;
        let c = cfg.norm_constraint;
        let mut d = delta.shallow_clone();
        let _ = d.f_sub_(&step)?;
        let _ = d.f_clamp_(-c, c)?;
        let _ = grad.f_zero_()?;
        Ok(())
    })
}

/// The starts of the prefixes (EasyEdit's `get_context_templates` for WISE).
const PREFIX_STARTS: [&str; 5] = ["I", "You", "Because", "Yes", "Q: "];

/// WISE, applied to the records one after another. Its state lives on the model (the
/// adapter), so whatever restores a model's adapter restores the edits.
pub struct WiseEditor {
    pub config: WiseConfig,
    pub progress: bool,
    /// Unedited facts for the locality row.
    pool: Vec<Fact>,
    prefixes: Option<Vec<String>>,
    log: Vec<serde_json::Value>,
    seconds: f64,
}

impl WiseEditor {
    pub fn new(config: WiseConfig, pool: Vec<Fact>) -> Result<Self> {
        if pool.is_empty() {
            return Err(Error::Input(
                "WISE needs unedited facts for its locality row (a fact pool)".into(),
            ));
        }
        Ok(WiseEditor {
            config,
            progress: false,
            pool,
            prefixes: None,
            log: Vec::new(),
            seconds: 0.0,
        })
    }

    /// The prefixes, generated greedily once by the model without any adapter.
    fn prefixes(&mut self, model: &mut Model, tok: &Tokenizer) -> Result<Vec<String>> {
        if let Some(p) = &self.prefixes {
            return Ok(p.clone());
        }
        let adapter = model.set_adapter(None);
        // Each start follows the token that starts a document (BOS, or GPT's and
        // SmolLM2's `<|endoftext|>`), as a Llama tokenizer's BOS precedes it in EasyEdit.
        let doc = tok.document_start();
        let starts: Vec<Vec<u32>> = PREFIX_STARTS
            .iter()
            .map(|s| Ok(doc.into_iter().chain(tok.encode(s, false)?).collect()))
            .collect::<Result<_>>()?;
        let skip: Vec<u32> = tok
            .bos_id
            .into_iter()
            .chain(tok.eos_id)
            .chain(doc)
            .collect();
        let mut out = Vec::new();
        let mut result = Ok(());
        for &n in &self.config.prefix_tokens {
            let opts = GenerateOptions {
                max_new_tokens: n,
                sampling: Sampling::Greedy,
                ..Default::default()
            };
            match generate(model, &starts, &opts) {
                Ok(generated) => {
                    for (s, g) in starts.iter().zip(generated) {
                        let ids: Vec<u32> = s
                            .iter()
                            .chain(&g)
                            .copied()
                            .filter(|t| !skip.contains(t))
                            .collect();
                        let text = clean(&tok.decode(&ids)).replace(['{', '}'], " ");
                        out.push(format!("{}. ", text.trim()));
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        model.set_adapter(adapter);
        result?;
        self.prefixes = Some(out.clone());
        Ok(out)
    }

    /// The model's side memory to add to (a copy), or an empty one at the recipe's layer.
    fn memory_of(&self, model: &Model) -> Result<SideMemory> {
        if let Some(m) = model.own_adapter::<SideMemory>("WISE")? {
            return Ok(m.copy());
        }
        let (layer, _) = layer_range(&self.config.layer, model.num_layers())?;
        let w = crate::edit::locate::out_proj(model, layer)?;
        let act = self.config.phi.then(|| model.config().mlp_activation());
        Ok(SideMemory::empty(layer, act, &w, &self.config))
    }

    fn edit_one(&mut self, model: &mut Model, tok: &Tokenizer, rec: &EditRecord) -> Result<()> {
        let cfg = self.config.clone();
        let prefixes = self.prefixes(model, tok)?;
        let mut memory = self.memory_of(model)?;
        let layer = memory.layer;
        let device = model.device();
        // Rows: the edit alone and after each prefix, then one unedited fact.
        let target = tok.encode(&format!(" {}", rec.target_new), false)?;
        if target.is_empty() {
            return Err(Error::Input("an empty target".into()));
        }
        let prompt = rec.rewrite_prompt();
        let mut rows: Vec<Vec<u32>> = Vec::new();
        let mut at = Vec::new();
        for (r, prefix) in std::iter::once("")
            .chain(prefixes.iter().map(String::as_str))
            .enumerate()
        {
            let ids = tok.encode(&format!("{prefix}{prompt}"), true)?;
            let start = ids.len() - 1;
            at.extend((0..target.len()).map(|i| (r, start + i)));
            rows.push(ids.into_iter().chain(target.iter().copied()).collect());
        }
        let n_in = rows.len();
        let fact = &self.pool[Rng(cfg.seed ^ memory.edits as u64).below(self.pool.len())];
        let mut loc = tok.encode(&fact.prompt, true)?;
        loc.extend(tok.encode(&format!(" {}", fact.target), false)?);
        rows.push(loc);
        let input = Input::right_padded(&rows, device)?;
        let lengths =
            Tensor::from_slice(&input.lengths.iter().map(|&l| l as f32).collect::<Vec<_>>())
                .to_device(device);
        let real = Tensor::arange(input.seq_len() as i64, (Kind::Float, device))
            .unsqueeze(0)
            .lt_tensor(&lengths.unsqueeze(1))
            .to_kind(Kind::Float);
        let labels = Tensor::from_slice(
            &std::iter::repeat_n(&target, n_in)
                .flatten()
                .map(|&x| i64::from(x))
                .collect::<Vec<_>>(),
        )
        .to_device(device);
        let w_main = crate::edit::locate::out_proj(model, layer)?.to_kind(Kind::Float);
        let mask = memory.mask.to_kind(Kind::Float);
        // Without the adapter, the layers below the memory run once.
        let adapter = model.set_adapter(None);
        let result = (|| -> Result<(Tensor, serde_json::Value)> {
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
            let delta = memory.side.delta.detach().copy().set_requires_grad(true);
            let mean_gap = |gap: &Tensor| {
                (gap * &real).sum_dim_intlist(&[1i64][..], false, Kind::Float) / &lengths
            };
            let (mut last, mut steps, mut kept) = (f64::NAN, 0, None);
            let mut losses = (f64::NAN, f64::NAN);
            for _ in 0..cfg.iterations {
                let mut hook = TrainHook {
                    memory: &memory,
                    delta: &delta,
                    key: None,
                    main: None,
                    gap: None,
                };
                let extras = ForwardExtras {
                    hooks: Some(&mut hook),
                    resume: h_in.as_ref().map(|(l, h)| (*l, h.shallow_clone())),
                    grad_from: Some(layer + 1),
                    ..Default::default()
                };
                let logits =
                    model.forward_with(&input, &LogitsAt::Positions(at.clone()), extras)?;
                let s = mean_gap(&hook.gap.take().expect("the hook ran"));
                kept = hook.main.take();
                let l_ft = logits
                    .to_kind(Kind::Float)
                    .cross_entropy_for_logits(&labels);
                let l_a = margin_loss(
                    &s.narrow(0, 0, n_in as i64),
                    &s.narrow(0, n_in as i64, 1),
                    cfg.act_margin,
                );
                let loss = &l_ft + &l_a;
                let value = loss.double_value(&[]);
                if !value.is_finite() {
                    return Err(Error::Diverged(format!(
                        "WISE's loss became {value} (try a lower lr)"
                    )));
                }
                losses = (l_ft.double_value(&[]), l_a.double_value(&[]));
                steps += 1;
                // EasyEdit's stopping rule.
                let settled = (value - last).abs() <= 1e-4 && value <= 0.02;
                last = value;
                if settled {
                    break;
                }
                loss.backward();
                sgd_step(&delta, &mask, &w_main, &cfg)?;
            }
            let delta = delta.detach();
            // The edit's activation: its rows' mean gap under the trained memory.
            let (key, out) = kept.expect("one step ran");
            let (gap, _) = memory.gap(&key, &out, &delta);
            let s = mean_gap(&gap);
            let act = s
                .narrow(0, 0, n_in as i64)
                .mean(Kind::Float)
                .double_value(&[]);
            let s_out = s.double_value(&[n_in as i64]);
            let log = serde_json::json!({
                "id": rec.id, "steps": steps, "loss": last, "ft_loss": losses.0,
                "act_loss": losses.1, "act": act, "act_out": s_out,
            });
            Ok((delta, log))
        })();
        let (delta, mut log) = match result {
            Ok(r) => r,
            Err(e) => {
                model.set_adapter(adapter);
                return Err(e);
            }
        };
        let act = log["act"].as_f64().unwrap_or(NO_EDIT);
        memory.side.delta = delta;
        memory.side.min_act = memory.side.min_act.min(act);
        memory.after_edit(&cfg);
        log["shards"] = memory.shards.len().into();
        log["edits"] = memory.edits.into();
        model.set_adapter(Some(Rc::new(memory)));
        self.log.push(log);
        Ok(())
    }
}

impl Editor for WiseEditor {
    fn name(&self) -> &str {
        "wise"
    }

    /// The weights stay as they are: the edit lives in the model's adapter.
    fn writes(&self, _model: &Model) -> Result<Option<Vec<String>>> {
        Ok(Some(Vec::new()))
    }

    fn edit(&mut self, model: &mut Model, tok: &Tokenizer, records: &[EditRecord]) -> Result<()> {
        let start = std::time::Instant::now();
        let progress = self.progress;
        crate::edit::editor::in_turn(progress, "wise", records, |rec| {
            self.edit_one(model, tok, rec)
        })?;
        self.seconds += start.elapsed().as_secs_f64();
        Ok(())
    }

    fn report(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "method": "wise",
            "seconds": self.seconds,
            "prefixes": self.prefixes,
            "edits": self.log,
        }))
    }
}

/// The mean of the positive entries (0 when there are none).
fn mean_positive(x: &Tensor) -> Tensor {
    let pos = x.relu();
    let n = x.gt(0.0).sum(Kind::Float);
    // n = 0 gives 0 / 1: every entry was ≤ 0.
    pos.sum(Kind::Float) / n.clamp_min(1.0)
}

/// WISE's activation-margin loss on the gaps `s_in` (edit rows) and `s_out` (the
/// locality row) with margins `[α, β, γ]`:
/// `mean⁺(s_out − s_in + γ) + mean⁺(s_out − α) + mean⁺(β − s_in)`.
pub fn margin_loss(s_in: &Tensor, s_out: &Tensor, [alpha, beta, gamma]: [f64; 3]) -> Tensor {
    let s_in = s_in.to_kind(Kind::Float);
    let s_out = s_out.to_kind(Kind::Float);
    // Every edit row against every locality row.
    let pairs = s_out.unsqueeze(1) - s_in.unsqueeze(0) + gamma;
    mean_positive(&pairs) + mean_positive(&(s_out - alpha)) + mean_positive(&(beta - s_in))
}

/// TIES merging of the shards `weights` (each `W_i`) onto `base`: each `δ_i = W_i −
/// base` keeps its top `density` share of entries by magnitude; an entry keeps the
/// shards whose sign agrees with `sign(Σ w_i δ_i)`, averaged with their weights `w_i`;
/// entries no shard keeps stay at `base`.
pub fn ties_merge(base: &Tensor, weights: &[Tensor], w: &[f64], density: f64) -> Tensor {
    assert_eq!(weights.len(), w.len(), "one weight per shard");
    let deltas: Vec<Tensor> = weights
        .iter()
        .map(|t| {
            let d = t - base;
            let n = d.numel() as i64;
            let keep = ((density * n as f64).round() as i64).clamp(0, n);
            if keep >= n {
                return d;
            }
            let flat = d.abs().flatten(0, -1);
            let (_, order) = flat.sort(0, true);
            let mask = Tensor::zeros_like(&flat)
                .index_fill(0, &order.narrow(0, 0, keep), 1.0)
                .view(d.size().as_slice());
            d * mask
        })
        .collect();
    let total = deltas
        .iter()
        .zip(w)
        .fold(Tensor::zeros_like(base), |acc, (d, &wi)| acc + d * wi);
    let sign = total.sign();
    let (mut num, mut den) = (Tensor::zeros_like(base), Tensor::zeros_like(base));
    for (d, &wi) in deltas.iter().zip(w) {
        let agree = d
            .sign()
            .eq_tensor(&sign)
            .logical_and(&d.ne(0.0))
            .to_kind(base.kind());
        num += d * &agree * wi;
        den += agree * wi;
    }
    let merged = (num / &den).where_self(&den.gt(0.0), &Tensor::zeros_like(base));
    base + merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    /// EDITORS.md's cases with margins (5, 20, 10): s_in 25, s_out 3 → 0; s_in 12,
    /// s_out 6 → 4 + 1 + 8 = 13.
    #[test]
    fn the_margin_loss_matches_its_definition() {
        let m = [5.0, 20.0, 10.0];
        let zero = margin_loss(&t(&[25.0]), &t(&[3.0]), m).double_value(&[]);
        assert_eq!(zero, 0.0);
        let l = margin_loss(&t(&[12.0]), &t(&[6.0]), m).double_value(&[]);
        assert!((l - 13.0).abs() < 1e-6, "{l}");
        // Means over the positive entries only: s_in 12 and 30, s_out 6 →
        // pairs (4, −14) → 4; (1) → 1; (8, −10) → 8.
        let l = margin_loss(&t(&[12.0, 30.0]), &t(&[6.0]), m).double_value(&[]);
        assert!((l - 13.0).abs() < 1e-6, "{l}");
    }

    fn config() -> WiseConfig {
        match crate::edit::MethodConfig::load("wise", None, &[]).unwrap() {
            crate::edit::MethodConfig::Wise(c) => c,
            other => panic!("{}", other.method()),
        }
    }

    fn memory(side: Memory, shards: Vec<Memory>, ratio: f64) -> SideMemory {
        let size = side.delta.size();
        SideMemory {
            layer: 0,
            act: None,
            act_ratio: ratio,
            mask: Tensor::ones([size[0], size[1]], (Kind::Bool, tch::Device::Cpu)),
            side,
            shards,
            edits: 0,
        }
    }

    fn mem(delta: &[f32], min_act: f64) -> Memory {
        Memory {
            delta: t(delta).view([2, 2]),
            min_act,
        }
    }

    /// EDITORS.md: mask density 0.2 ± 0.01, the same mask for the same seed.
    #[test]
    fn the_gradient_mask_has_its_density() {
        let m = draw_mask([576, 1536], 0.2, 7, tch::Device::Cpu);
        let density = m.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        assert!((density - 0.2).abs() < 0.01, "{density}");
        assert!(m.equal(&draw_mask([576, 1536], 0.2, 7, tch::Device::Cpu)));
        assert!(!m.equal(&draw_mask([576, 1536], 0.2, 8, tch::Device::Cpu)));
    }

    /// A step moves only the masked entries but for the decay (which is exactly
    /// lr·wd·(W + Δ) on the others), and the change stays within ± norm_constraint.
    #[test]
    fn a_step_moves_masked_entries_and_stays_within_the_constraint() {
        let mut cfg = config();
        cfg.lr = 0.5;
        cfg.weight_decay = 0.1;
        cfg.norm_constraint = 1.0;
        let w = t(&[1.0, 2.0, 3.0, 4.0]).view([2, 2]);
        let delta = t(&[0.1, 0.2, 0.3, 0.4])
            .view([2, 2])
            .set_requires_grad(true);
        let mask = t(&[1.0, 0.0, 0.0, 1.0]).view([2, 2]);
        // Gradient 1 on the first three entries, 100 on the last.
        let g = t(&[1.0, 1.0, 1.0, 100.0]).view([2, 2]);
        (&delta * &g).sum(Kind::Float).backward();
        sgd_step(&delta, &mask, &w, &cfg).unwrap();
        let got = Vec::<f32>::try_from(delta.detach().flatten(0, -1)).unwrap();
        let decay = |w: f32, d: f32| 0.5 * 0.1 * (w + d);
        let want = [
            0.1 - 0.5 - decay(1.0, 0.1),
            0.2 - decay(2.0, 0.2),
            0.3 - decay(3.0, 0.3),
            -1.0, // 0.4 − 50 − decay, clamped
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        assert_eq!(
            Vec::<f32>::try_from(delta.grad().flatten(0, -1)).unwrap(),
            [0.0; 4]
        );
    }

    /// Before any edit the main memory's output comes back bit for bit; an input goes to
    /// the side memory when its gap reaches act_ratio × the least edit gap, and to the
    /// shard with the highest gap above its own threshold.
    #[test]
    fn routing_picks_the_highest_memory_above_its_threshold() {
        let key = t(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]).view([3, 1, 2]);
        let out = Tensor::full([3, 1, 2], 0.5, (Kind::Float, tch::Device::Cpu));
        let probe = Tensor::ones([3, 1], (Kind::Bool, tch::Device::Cpu));
        let groups = Tensor::zeros([3, 1], (Kind::Int64, tch::Device::Cpu));
        let empty = memory(mem(&[0.0; 4], NO_EDIT), Vec::new(), 0.5);
        assert!(empty.apply(&key, out.copy(), &probe, &groups).equal(&out));
        // Side Δ = [[2, 0], [0, 0]]: gap 2 for key (1, 0), 0 for (0, 1), 2 for (1, 1).
        // Shard Δ = [[0, 0], [0, 3]]: gap 0, 3, 3.
        let side = mem(&[2.0, 0.0, 0.0, 0.0], 2.0);
        let shard = mem(&[0.0, 0.0, 0.0, 3.0], 3.0);
        let m = memory(side, vec![shard], 0.9);
        let got = m.apply(&key, out.copy(), &probe, &groups);
        let row = |i: i64| Vec::<f32>::try_from(got.get(i).get(0)).unwrap();
        assert_eq!(row(0), [2.5, 0.5], "gap 2 ≥ 0.9·2: the side memory");
        assert_eq!(row(1), [0.5, 3.5], "the shard alone crosses its threshold");
        assert_eq!(row(2), [0.5, 3.5], "both do: the shard's gap 3 beats 2");
        // Thresholds not reached: the main output, bit for bit.
        let m = memory(
            mem(&[2.0, 0.0, 0.0, 0.0], 5.0),
            vec![mem(&[0.0, 0.0, 0.0, 3.0], 5.0)],
            0.9,
        );
        assert!(m.apply(&key, out.copy(), &probe, &groups).equal(&out));
        // Saved and read back: the same memory.
        let again = SideMemory::from_saved(&m.saved(), tch::Device::Cpu).unwrap();
        assert!(again.side.delta.equal(&m.side.delta) && again.mask.equal(&m.mask));
        assert_eq!(
            (again.shards.len(), again.shards[0].min_act, again.edits),
            (1, 5.0, 0)
        );
    }

    /// A sequence is routed on its positions up to its first probe, and the whole
    /// sequence follows; padding (group −1) and a packed neighbour keep their own.
    #[test]
    fn a_sequence_routes_on_its_positions_up_to_its_first_probe() {
        // One row, positions 0–1 sequence 0, 2–3 sequence 1, 4 padding.
        let key = t(&[1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]).view([1, 5, 2]);
        let out = Tensor::zeros([1, 5, 2], (Kind::Float, tch::Device::Cpu));
        let groups = Tensor::from_slice(&[0i64, 0, 1, 1, -1]).view([1, 5]);
        // Side Δ = [[1, 0], [0, 0]]: gap 1 at key (1, 0), 0 at (0, 1); threshold 0.9.
        let m = memory(mem(&[1.0, 0.0, 0.0, 0.0], 1.0), Vec::new(), 0.9);
        let probe = Tensor::from_slice(&[false, true, true, false, true]).view([1, 5]);
        let got = m.apply(&key, out.copy(), &probe, &groups);
        let col = Vec::<f32>::try_from(got.get(0).select(1, 0)).unwrap();
        // Sequence 0: mean gap 1 → side everywhere; sequence 1, probed at its first
        // position (gap 0), stays main though its second position's gap is 1.
        assert_eq!(col, [1.0, 1.0, 0.0, 0.0, 0.0]);
    }

    /// Every save_freq edits the side memory becomes a shard; every merge_freq edits
    /// the last two shards are merged, keeping the smaller threshold.
    #[test]
    fn shards_close_and_merge_on_schedule() {
        let mut cfg = config();
        cfg.save_freq = 2;
        cfg.merge_freq = 4;
        cfg.merge_density = 1.0;
        let mut m = memory(mem(&[1.0, 0.0, 0.0, 0.0], 3.0), Vec::new(), 0.9);
        m.after_edit(&cfg);
        assert_eq!((m.edits, m.shards.len()), (1, 0));
        m.after_edit(&cfg);
        assert_eq!(m.shards.len(), 1);
        assert_eq!(m.side.min_act, NO_EDIT);
        assert_eq!(m.side.delta.abs().sum(Kind::Float).double_value(&[]), 0.0);
        m.side = mem(&[3.0, 0.0, 0.0, 2.0], 1.5);
        m.after_edit(&cfg);
        m.after_edit(&cfg);
        assert_eq!(
            (m.edits, m.shards.len()),
            (4, 1),
            "two shards merged into one"
        );
        assert_eq!(m.shards[0].min_act, 1.5);
        // TIES at density 1 with weights ½: [1, 0, 0, 0] and [3, 0, 0, 2] → [2, 0, 0, 2].
        assert_eq!(
            Vec::<f32>::try_from(m.shards[0].delta.flatten(0, -1)).unwrap(),
            [2.0, 0.0, 0.0, 2.0]
        );
    }

    /// EDITORS.md's case: base 0, deltas [1, −2] and [3, 1], weights ½, density 1 →
    /// [2, −2]; with density ½ each shard keeps its larger entry only.
    #[test]
    fn ties_merges_by_sign_agreement() {
        let base = t(&[0.0, 0.0]);
        let shards = [t(&[1.0, -2.0]), t(&[3.0, 1.0])];
        let merged = ties_merge(&base, &shards, &[0.5, 0.5], 1.0);
        assert_eq!(Vec::<f32>::try_from(&merged).unwrap(), [2.0, -2.0]);
        // Density ½: [0, −2] and [3, 0]; the sum's signs (+, −) keep both.
        let merged = ties_merge(&base, &shards, &[0.5, 0.5], 0.5);
        assert_eq!(Vec::<f32>::try_from(&merged).unwrap(), [3.0, -2.0]);
        // An entry no shard keeps stays at the base.
        let base = t(&[1.0, 1.0]);
        let merged = ties_merge(&base, &[t(&[1.0, 2.0])], &[1.0], 1.0);
        assert_eq!(Vec::<f32>::try_from(&merged).unwrap(), [1.0, 2.0]);
    }
}

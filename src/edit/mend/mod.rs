//! MEND (Mitchell et al., ICLR 2022; EDITORS.md, "MEND"): a trained editor network
//! rewrites the fine-tuning gradient of the MLP matrices of the top layers into a
//! weight change. An edit is one forward and backward pass of the target's NLL, whose
//! per-position inputs `x` and output gradients `δ` of each edited linear map go
//! through the network ([`net::MendNet`]) and come out as `x̃`, `δ̃`;
//! `W ← W + α_W Σ δ̃ x̃ᵀ`. The network is meta-trained first ([`train`], `ftedit
//! train-editor`), so that the change makes the edit hold on paraphrases and leaves
//! unrelated inputs alone. Edits are written into the weights.

pub mod net;
pub mod train;

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::editor::Editor;
use super::layers::layer_range;
use crate::data::EditRecord;
use crate::error::{Error, Result};
use crate::model::nn::LayerHooks;
use crate::model::{ForwardExtras, Model, Precision};
use crate::tokenizer::Tokenizer;
use crate::train::{Example, Reduction, loss::conditional_nll_with};
use net::{Matrix, MendNet};

/// MEND's settings: the editor's shape and file, and how `train-editor` trains it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MendConfig {
    #[serde(default)]
    pub description: String,
    /// The layers whose MLP matrices are edited (every published config: the top three).
    pub layers: String,
    /// Rank of the network's low-rank layers (at most the input + output width).
    pub rank: i64,
    /// Normalise `x` and `δ` by their running mean and std from training.
    pub norm: bool,
    /// The trained editor (`editor.safetensors`, written by `ftedit train-editor`);
    /// empty until one is trained.
    pub editor: String,
    pub train: MendTrain,
    /// RECT and 1-LI on the edit's weight change ([`crate::edit::post`]).
    #[serde(default)]
    pub post: crate::edit::post::PostConfig,
}

/// How `ftedit train-editor` meta-trains the network (the authors' defaults, except
/// where the CPU asks for less: see the method's page).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MendTrain {
    /// At most this many steps (one edit and one locality example each).
    pub steps: usize,
    /// Adam's learning rate on the network and step sizes.
    pub lr: f64,
    /// The second Adam's learning rate, on the step sizes `α` alone.
    pub lr_alpha: f64,
    /// Every step size's initial value.
    pub alpha_init: f64,
    /// Weight of the edit loss (NLL of the target after a paraphrase).
    pub edit_weight: f64,
    /// Weight of the locality loss (KL from the unedited model's predictions).
    pub loc_weight: f64,
    /// Steps whose gradients add up before each optimizer step.
    pub accumulate: usize,
    /// Gradient-norm clip at each optimizer step.
    pub clip: f64,
    /// Validate every this many steps.
    pub val_every: usize,
    /// Validation edits (the first of the validation file).
    pub val_records: usize,
    /// Stop after this many steps without a better validation loss.
    pub patience: usize,
    /// Seed of the network's initial `V`, the data order and the paraphrase and
    /// locality choices.
    pub seed: u64,
}

impl MendConfig {
    pub(crate) fn check(&self) -> Result<()> {
        self.post.check()?;
        layer_range(&self.layers, 1 << 20)?;
        let t = &self.train;
        if self.rank < 1 || t.accumulate == 0 || t.val_every == 0 || t.lr.is_nan() || t.lr <= 0.0 {
            return Err(Error::Input(
                "recipe: rank, train.accumulate, train.val_every and train.lr must be positive"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The matrices MEND edits in `model` under `config`: every 2-D weight of the MLPs of
/// its layers, in store order.
pub fn matrices(model: &Model, config: &MendConfig) -> Result<Vec<Matrix>> {
    let (lo, hi) = layer_range(&config.layers, model.num_layers())?;
    let patterns = model.config().module_patterns(lo, hi, &["mlp".into()])?;
    let transposed = model.config().mlp_out_proj_transposed();
    let mut out = Vec::new();
    for (name, t) in model.params.iter() {
        if t.dim() == 2
            && name.ends_with(".weight")
            && patterns
                .iter()
                .any(|p| crate::model::params::glob_match(p, name))
        {
            let (a, b) = (t.size()[0], t.size()[1]);
            let (d_in, d_out) = if transposed { (a, b) } else { (b, a) };
            out.push(Matrix {
                name: name.to_owned(),
                d_in,
                d_out,
                transposed,
                shape: 0,
                mode: 0,
            });
        }
    }
    if out.is_empty() {
        return Err(Error::Input(format!(
            "MEND: no MLP matrices in layers '{}'",
            config.layers
        )));
    }
    Ok(out)
}

/// What identifies the model an editor belongs to ([`Model::fingerprint`], leaving out
/// the matrices MEND edits, so that the model MEND has edited still matches).
pub fn model_id(model: &Model, edited: &[Matrix]) -> Result<String> {
    let names: Vec<&str> = edited.iter().map(|m| m.name.as_str()).collect();
    model.fingerprint(&names)
}

/// Reads the input `x` of every edited linear map and adds a zero tensor `e` to its
/// output, whose gradient is then `δ` (a graph is built from the first edited layer
/// even though no weight is trained).
struct Capture<'a> {
    index: &'a HashMap<String, usize>,
    layers: (usize, usize),
    /// `(matrix, x [B, T, in], e [B, T, out])`.
    taps: Vec<(usize, Tensor, Tensor)>,
}

impl LayerHooks for Capture<'_> {
    fn wants(&self, layer: usize) -> bool {
        (self.layers.0..=self.layers.1).contains(&layer)
    }
    fn mlp_linear(&mut self, _layer: usize, weight: &str, x: &Tensor, y: Tensor) -> Tensor {
        match self.index.get(weight) {
            Some(&m) => {
                let e = y.zeros_like().set_requires_grad(true);
                self.taps.push((m, x.detach(), e.shallow_clone()));
                y + e
            }
            None => y,
        }
    }
}

/// Adds each edited map's change `α (x·X̃ᵀ)·Δ̃` to its output: the edited model as a
/// function of the network (for meta-training), without forming `ΔW`.
struct Apply<'a> {
    index: &'a HashMap<String, usize>,
    layers: (usize, usize),
    /// Per matrix: `(α, X̃ [n, in], Δ̃ [n, out])`.
    factors: &'a [Option<Factor>],
}

impl LayerHooks for Apply<'_> {
    fn wants(&self, layer: usize) -> bool {
        (self.layers.0..=self.layers.1).contains(&layer)
    }
    fn mlp_linear(&mut self, _layer: usize, weight: &str, x: &Tensor, y: Tensor) -> Tensor {
        match self
            .index
            .get(weight)
            .and_then(|&m| self.factors[m].as_ref())
        {
            Some(Factor {
                alpha,
                x: xt,
                delta: dt,
            }) => {
                let kind = y.kind();
                let change = x.to_kind(Kind::Float).matmul(&xt.tr()).matmul(dt) * alpha;
                y + change.to_kind(kind)
            }
            None => y,
        }
    }
}

/// An edit's training example: the prompt (BOS where the model wants one) and `" " +
/// target` without special tokens.
pub fn example(tok: &Tokenizer, prompt: &str, target: &str) -> Result<Example> {
    let prompt = tok.encode(prompt, true)?;
    let target = tok.encode(&format!(" {}", target.trim_start()), false)?;
    if prompt.is_empty() || target.is_empty() {
        return Err(Error::Input("an empty prompt or target".into()));
    }
    Ok(Example { prompt, target })
}

/// One matrix's change `ΔW = α Σ δ̃ x̃ᵀ`, kept factored.
pub struct Factor {
    pub alpha: Tensor,
    /// `X̃ [n, in]`
    pub x: Tensor,
    /// `Δ̃ [n, out]`
    pub delta: Tensor,
}

/// The MEND machinery bound to one model: which matrices, where.
pub struct Mend {
    pub net: MendNet,
    index: HashMap<String, usize>,
    layers: (usize, usize),
}

impl Mend {
    pub fn new(net: MendNet, model: &Model) -> Result<Self> {
        let mut layers = (usize::MAX, 0);
        let mut index = HashMap::new();
        for (i, m) in net.meta.matrices.iter().enumerate() {
            let l = model.layer_of(&m.name).ok_or_else(|| {
                Error::Input(format!("MEND edits {}, which is in no layer", m.name))
            })?;
            layers = (layers.0.min(l), layers.1.max(l));
            index.insert(m.name.clone(), i);
        }
        Ok(Mend { net, index, layers })
    }

    /// The rows `(matrix, x [n, in], δ [n, out])` of the mean target NLL of `batch`,
    /// keeping rows where both are non-zero (detached: first-order MEND).
    pub fn gradient_rows(
        &self,
        model: &Model,
        batch: &[Example],
    ) -> Result<Vec<(usize, Tensor, Tensor)>> {
        let mut cap = Capture {
            index: &self.index,
            layers: self.layers,
            taps: Vec::new(),
        };
        let loss = {
            let extras = ForwardExtras {
                hooks: Some(&mut cap),
                grad_from: Some(self.layers.0 + 1),
                ..Default::default()
            };
            conditional_nll_with(model, batch, Reduction::TokenMean, extras)?
        };
        let taps: Vec<Tensor> = cap.taps.iter().map(|(_, _, e)| e.shallow_clone()).collect();
        let grads = Tensor::run_backward(&[loss], &taps, false, false);
        let mut rows = Vec::with_capacity(taps.len());
        for ((m, x, _), g) in cap.taps.iter().zip(grads) {
            let x = x.flatten(0, 1).to_kind(Kind::Float);
            let d = g.flatten(0, 1).to_kind(Kind::Float);
            let keep = x
                .abs()
                .sum_dim_intlist(1, false, Kind::Float)
                .gt(0.0)
                .logical_and(&d.abs().sum_dim_intlist(1, false, Kind::Float).gt(0.0))
                .nonzero()
                .squeeze_dim(1);
            rows.push((*m, x.index_select(0, &keep), d.index_select(0, &keep)));
        }
        Ok(rows)
    }

    /// Each matrix's `(α, X̃, Δ̃)` from its gradient rows (rows of one matrix joined;
    /// `None` for a matrix with no rows). In training mode the rows first update the
    /// normalisation.
    pub fn factors(&mut self, rows: &[(usize, Tensor, Tensor)]) -> Result<Vec<Option<Factor>>> {
        self.net.observe(rows);
        let n = self.net.meta.matrices.len();
        let mut joined: Vec<(Vec<Tensor>, Vec<Tensor>)> =
            (0..n).map(|_| (Vec::new(), Vec::new())).collect();
        for (m, x, d) in rows {
            if x.size()[0] > 0 {
                joined[*m].0.push(x.shallow_clone());
                joined[*m].1.push(d.shallow_clone());
            }
        }
        let joined: Vec<(usize, Tensor, Tensor)> = joined
            .into_iter()
            .enumerate()
            .filter(|(_, (xs, _))| !xs.is_empty())
            .map(|(m, (xs, ds))| (m, Tensor::cat(&xs, 0), Tensor::cat(&ds, 0)))
            .collect();
        let mut out: Vec<Option<Factor>> = (0..n).map(|_| None).collect();
        for ((m, _, _), (xt, dt)) in joined.iter().zip(self.net.transform_all(&joined)?) {
            out[*m] = Some(Factor {
                alpha: self.net.alphas.get(*m as i64),
                x: xt,
                delta: dt,
            });
        }
        Ok(out)
    }

    /// The forward extras that run the model as if `factors` were written in.
    fn apply<'a>(&'a self, factors: &'a [Option<Factor>]) -> Apply<'a> {
        Apply {
            index: &self.index,
            layers: self.layers,
            factors,
        }
    }

    /// The mean target NLL of `batch` on the model with `factors` applied.
    pub fn edited_nll(
        &self,
        model: &Model,
        batch: &[Example],
        factors: &[Option<Factor>],
    ) -> Result<Tensor> {
        let mut hooks = self.apply(factors);
        let extras = ForwardExtras {
            hooks: Some(&mut hooks),
            grad_from: Some(self.layers.0 + 1),
            ..Default::default()
        };
        conditional_nll_with(model, batch, Reduction::TokenMean, extras)
    }

    /// The input of the first edited layer for `ex` (no graph): the unedited and the
    /// edited passes share the layers below it. `None` when editing starts at layer 0.
    pub fn lower(&self, model: &Model, ex: &Example) -> Result<Option<(usize, Tensor)>> {
        if self.layers.0 == 0 {
            return Ok(None);
        }
        let _g = tch::no_grad_guard();
        let ids: Vec<u32> = ex.prompt.iter().chain(&ex.target).copied().collect();
        let input = crate::model::Input::right_padded(&[&ids], model.device())?;
        let extras = ForwardExtras {
            stop_after: Some(self.layers.0 - 1),
            ..Default::default()
        };
        Ok(Some((self.layers.0, model.hidden_states(&input, extras)?)))
    }

    /// Log-probabilities `[targets, V]` at the positions that predict `ex`'s target
    /// tokens, on the model with `factors` applied (`None`: unedited), from `lower`
    /// ([`Mend::lower`]) when given.
    pub fn target_logprobs(
        &self,
        model: &Model,
        ex: &Example,
        factors: Option<&[Option<Factor>]>,
        lower: Option<&(usize, Tensor)>,
    ) -> Result<Tensor> {
        let ids: Vec<u32> = ex.prompt.iter().chain(&ex.target).copied().collect();
        let input = crate::model::Input::right_padded(&[&ids], model.device())?;
        let at: Vec<(usize, usize)> = (0..ex.target.len())
            .map(|j| (0, ex.prompt.len() - 1 + j))
            .collect();
        let at = crate::model::LogitsAt::Positions(at);
        let mut hooks = factors.map(|f| self.apply(f));
        let extras = ForwardExtras {
            grad_from: hooks.is_some().then_some(self.layers.0 + 1),
            hooks: hooks.as_mut().map(|h| h as &mut dyn LayerHooks),
            resume: lower.map(|(l, h)| (*l, h.shallow_clone())),
            ..Default::default()
        };
        let logits = model.forward_with(&input, &at, extras)?;
        Ok(logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float))
    }

    /// Writes `factors` into the weights: `W += α Δ̃ᵀ X̃` (transposed for `[in, out]`
    /// storage).
    pub fn write(&self, model: &mut Model, factors: &[Option<Factor>]) -> Result<()> {
        let _g = tch::no_grad_guard();
        for (m, f) in factors.iter().enumerate() {
            let Some(Factor {
                alpha,
                x: xt,
                delta: dt,
            }) = f
            else {
                continue;
            };
            let mat = &self.net.meta.matrices[m];
            let mut w = model.params.get(&mat.name)?;
            let delta = dt.tr().matmul(xt) * alpha;
            let delta = if mat.transposed { delta.tr() } else { delta };
            let _ = w.g_add_(&delta.to_kind(w.kind()));
        }
        Ok(())
    }
}

/// The editor of `--method mend`: loads the trained network named by the recipe and
/// applies it to each batch of edits.
pub struct MendEditor {
    config: MendConfig,
    mend: Option<Mend>,
    pub progress: bool,
    seconds: f64,
    edits: usize,
}

impl MendEditor {
    pub fn new(config: MendConfig) -> Self {
        MendEditor {
            config,
            mend: None,
            progress: false,
            seconds: 0.0,
            edits: 0,
        }
    }

    /// The trained network for `model`, refused when it was trained for another.
    fn load(&mut self, model: &Model) -> Result<&mut Mend> {
        if self.mend.is_none() {
            if self.config.editor.is_empty() {
                return Err(Error::Input(
                    "MEND needs a trained editor: run `ftedit train-editor --method mend --model M \
                     --data TRAIN --out DIR`, then edit with `--recipe DIR/recipe.toml`"
                        .into(),
                ));
            }
            let path = PathBuf::from(&self.config.editor);
            let net = MendNet::load(&path, model.device())?;
            let want = matrices(model, &self.config)?;
            let id = model_id(model, &want)?;
            let same_shapes = want.len() == net.meta.matrices.len()
                && want.iter().zip(&net.meta.matrices).all(|(a, b)| {
                    (a.name.as_str(), a.d_in, a.d_out) == (b.name.as_str(), b.d_in, b.d_out)
                });
            if !same_shapes || net.meta.arch != model.arch_name() || net.meta.model_id != id {
                return Err(Error::Input(format!(
                    "{}: a MEND editor trained for another model ({} {}, this is {} {}{})",
                    path.display(),
                    net.meta.arch,
                    net.meta.model_id,
                    model.arch_name(),
                    id,
                    if same_shapes {
                        ""
                    } else {
                        "; the edited matrices differ"
                    }
                )));
            }
            self.mend = Some(Mend::new(net, model)?);
        }
        Ok(self.mend.as_mut().expect("loaded"))
    }
}

impl Editor for MendEditor {
    fn name(&self) -> &str {
        "mend"
    }

    fn writes(&self, model: &Model) -> Result<Option<Vec<String>>> {
        Ok(Some(
            matrices(model, &self.config)?
                .into_iter()
                .map(|m| m.name)
                .collect(),
        ))
    }

    fn begin(&mut self, model: &Model, _tok: &Tokenizer) -> Result<()> {
        self.load(model).map(drop)
    }

    fn edit(&mut self, model: &mut Model, tok: &Tokenizer, records: &[EditRecord]) -> Result<()> {
        let start = std::time::Instant::now();
        let _p = model.precision_for(Precision::F32);
        let batch = records
            .iter()
            .map(|r| {
                example(tok, &r.rewrite_prompt(), &r.target_new).map_err(|e| e.at_record(&r.id))
            })
            .collect::<Result<Vec<_>>>()?;
        let factors = {
            let mend = self.load(model)?;
            mend.net.training = false;
            // One backward per edit, all rows summed into one change per matrix.
            let mut rows = Vec::new();
            for ex in &batch {
                rows.extend(mend.gradient_rows(model, std::slice::from_ref(ex))?);
            }
            let _g = tch::no_grad_guard();
            mend.factors(&rows)?
        };
        drop(_p);
        self.mend.as_ref().expect("loaded").write(model, &factors)?;
        self.edits += records.len();
        self.seconds += start.elapsed().as_secs_f64();
        Ok(())
    }

    fn report(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "method": "mend",
            "editor": self.config.editor,
            "edits": self.edits,
            "seconds": self.seconds,
        }))
    }
}

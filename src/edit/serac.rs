//! SERAC (Mitchell et al., ICML 2022; EDITORS.md, "SERAC"), as ftedit builds it. Edits
//! are kept as text in a memory beside the model; a scope classifier embeds each query and
//! each edit's prompt, and a query whose similarity to its nearest edit is above the
//! threshold is answered by the counterfactual model, every other query by the base
//! model exactly as before.
//!
//! Two parts are choices made here (EDITORS.md, "ftedit's variant"): the counterfactual
//! model is the base model itself with the edit in context (the authors' `freeze_cntr`:
//! no smaller sibling of ftedit's models shares their tokenizer), and the classifier is
//! the base model's hidden state after `layer`, mean-pooled over the query and
//! standardised by statistics of the training prompts, then a trained linear projection
//! `P` (distilbert is not among the project's models). Similarity, as the authors':
//! `sim(c, x) = exp(−‖P e(c) − P e(x)‖²)`, routed hard (`> threshold`, the authors' test
//! rule). `ftedit train-editor --method serac` trains `P` with the authors' balanced
//! binary cross-entropy: `−log s` over (paraphrase, its edit) and `−log(1 − s)` over
//! (neighbourhood prompt, edit) and (another record's prompt, edit).
//!
//! A question asked through the model's chat template is routed on the user's text
//! alone (the template's tokens around it, [`ChatFrame`], would move every chat query
//! far from every edit), and its edit goes inside the user's turn, before the question:
//! the authors' "edit, then query" in the form a chat model reads.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::augment::Rng;
use super::editor::Editor;
use super::layers::layer_range;
use crate::data::EditRecord;
use crate::error::{Error, Result};
use crate::model::adapter::{Route, SequenceRouter, named_tensor};
use crate::model::{Adapter, ForwardExtras, Input, Model, SavedAdapter};
use crate::tokenizer::{ChatFrame, Tokenizer};
use crate::train::{AdamW, AdamWConfig};

/// SERAC's settings (`recipes/serac.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeracConfig {
    #[serde(default)]
    pub description: String,
    /// The trained scope classifier (`classifier.safetensors`, written by `ftedit
    /// train-editor --method serac`); empty until one is trained.
    pub classifier: String,
    /// The layer whose output, mean-pooled over a query, embeds it (a number or a depth
    /// fraction).
    pub layer: String,
    /// A query goes to its nearest edit when their similarity is above this.
    pub threshold: f64,
    /// How an edit is put before an in-scope query (`{prompt}`, `{target}`).
    pub template: String,
    pub train: SeracTrain,
}

/// How `ftedit train-editor` trains the classifier's projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeracTrain {
    /// Width of the projection.
    pub dim: i64,
    /// At most this many steps.
    pub steps: usize,
    /// (edit, query) pairs per step, half of them in scope.
    pub batch: usize,
    /// Adam's learning rate on the projection.
    pub lr: f64,
    /// Validate every this many steps.
    pub val_every: usize,
    /// Stop after this many validations without a better loss.
    pub patience: usize,
    /// Records held out of --data for validation when no --val is given (and the most a
    /// --val file contributes).
    pub val_records: usize,
    pub seed: u64,
}

impl SeracConfig {
    pub(crate) fn check(&self) -> Result<()> {
        let (lo, hi) = layer_range(&self.layer, 1 << 20)?;
        if lo != hi {
            return Err(Error::Input(format!(
                "recipe: SERAC embeds at one layer, not '{}'",
                self.layer
            )));
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(Error::Setting {
                key: "threshold".into(),
                reason: format!("a similarity in (0, 1), not {}", self.threshold),
            });
        }
        if !self.template.contains("{prompt}") || !self.template.contains("{target}") {
            return Err(Error::Setting {
                key: "template".into(),
                reason: "must hold {prompt} and {target}".into(),
            });
        }
        let t = &self.train;
        if t.dim < 1 || t.batch < 2 || t.val_every == 0 || t.lr <= 0.0 || t.lr.is_nan() {
            return Err(Error::Input(
                "recipe: train.dim ≥ 1, train.batch ≥ 2, train.val_every ≥ 1 and train.lr > 0"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Mean of layer `layer`'s output over each sequence's tokens, `[N, hidden]` (f32), in
/// chunks, without autograd and without the model's adapter.
pub fn embed(model: &Model, layer: usize, seqs: &[Vec<u32>]) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let device = model.device();
    let mut out = Vec::new();
    for chunk in seqs.chunks(64) {
        let input = Input::right_padded(chunk, device)?;
        let extras = ForwardExtras {
            stop_after: Some(layer),
            ..Default::default()
        };
        let h = model.hidden_states(&input, extras)?.to_kind(Kind::Float);
        let lens: Vec<f32> = input.lengths.iter().map(|&l| l as f32).collect();
        let lens = Tensor::from_slice(&lens).to_device(device);
        let real = Tensor::arange(input.seq_len() as i64, (Kind::Float, device))
            .unsqueeze(0)
            .lt_tensor(&lens.unsqueeze(1))
            .to_kind(Kind::Float)
            .unsqueeze(-1);
        out.push((h * real).sum_dim_intlist(&[1i64][..], false, Kind::Float) / lens.unsqueeze(1));
    }
    Ok(Tensor::cat(&out, 0))
}

/// The scope classifier: embeddings standardised by `mean` and `std`, then `proj`.
#[derive(Debug)]
pub struct Classifier {
    pub layer: usize,
    pub mean: Tensor,
    pub std: Tensor,
    /// `[dim, hidden]`
    pub proj: Tensor,
    /// The model it was trained on ([`Model::fingerprint`]).
    pub model_id: String,
}

impl Classifier {
    fn project(&self, e: &Tensor) -> Tensor {
        ((e - &self.mean) / &self.std).matmul(&self.proj.tr())
    }

    /// The projection of the difference of two embeddings (the projection is affine).
    fn project_difference(&self, d: &Tensor) -> Tensor {
        (d / &self.std).matmul(&self.proj.tr())
    }

    /// `exp(−‖a − b‖²)` between every row of `a` and of `b` (projected), `[A, B]`.
    fn similarity(a: &Tensor, b: &Tensor) -> Tensor {
        let d = Tensor::cdist(a, b, 2.0, None::<i64>);
        (-(&d * &d)).exp()
    }

    fn tensors(&self) -> Vec<(String, Tensor)> {
        let cpu = |t: &Tensor| t.detach().to_device(tch::Device::Cpu);
        vec![
            ("classifier.mean".into(), cpu(&self.mean)),
            ("classifier.std".into(), cpu(&self.std)),
            ("classifier.proj".into(), cpu(&self.proj)),
        ]
    }

    fn meta(&self) -> serde_json::Value {
        serde_json::json!({"layer": self.layer, "model_id": self.model_id})
    }

    fn from_parts(
        meta: &serde_json::Value,
        tensors: &[(String, Tensor)],
        device: tch::Device,
        what: &str,
    ) -> Result<Self> {
        let bad = |m: String| Error::Input(format!("{what}: {m}"));
        let get = |name: &str| {
            named_tensor(tensors, name, what).map(|t| t.to_kind(Kind::Float).to_device(device))
        };
        let (mean, std, proj) = (
            get("classifier.mean")?,
            get("classifier.std")?,
            get("classifier.proj")?,
        );
        let hidden = mean.size()[0];
        if std.size() != [hidden] || proj.dim() != 2 || proj.size()[1] != hidden {
            return Err(bad(format!(
                "classifier shapes mean {:?}, std {:?}, proj {:?}",
                mean.size(),
                std.size(),
                proj.size()
            )));
        }
        Ok(Classifier {
            layer: meta["layer"]
                .as_u64()
                .ok_or_else(|| bad("no layer".into()))? as usize,
            mean,
            std,
            proj,
            model_id: meta["model_id"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// Writes `path` (safetensors) and `path.json` (its layer and model).
    pub fn save(&self, path: &Path) -> Result<()> {
        let named = self.tensors();
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let tmp = crate::output::temp_path(path);
        Tensor::write_safetensors(&refs, &tmp)?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        let json = meta_path(path);
        crate::output::write_atomic(
            &json,
            serde_json::to_string_pretty(&self.meta())
                .expect("serialisable")
                .as_bytes(),
        )
    }

    /// Reads a classifier [`Classifier::save`] wrote, refusing one trained for another
    /// model.
    pub fn load(path: &Path, model: &Model) -> Result<Self> {
        let json = meta_path(path);
        let text = std::fs::read_to_string(&json).map_err(|e| Error::io(&json, e))?;
        let meta: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::data(&json, e.to_string()))?;
        let tensors = Tensor::read_safetensors(path)?;
        let c = Self::from_parts(&meta, &tensors, model.device(), &path.display().to_string())?;
        let id = model.fingerprint(&[])?;
        let hidden = model_hidden(model, c.layer)?;
        if c.model_id != id || c.mean.size()[0] != hidden {
            return Err(Error::Input(format!(
                "{}: a SERAC classifier trained for another model (model {} of width {}, this one {id} of width {hidden}); train one for this model with `ftedit train-editor --method serac`",
                path.display(),
                c.model_id,
                c.mean.size()[0]
            )));
        }
        Ok(c)
    }
}

fn meta_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.json", path.display()))
}

/// The width of layer `layer`'s output.
fn model_hidden(model: &Model, layer: usize) -> Result<i64> {
    if layer >= model.num_layers() {
        return Err(Error::Input(format!(
            "SERAC embeds at layer {layer} of a {}-layer model",
            model.num_layers()
        )));
    }
    Ok(crate::edit::locate::out_proj(model, layer)?.size()[0])
}

/// The edit memory: each edit's context tokens and its prompt's projected embedding,
/// with the classifier that embeds queries.
#[derive(Debug)]
pub struct SeracMemory {
    pub classifier: Rc<Classifier>,
    pub threshold: f64,
    /// Per edit, the tokens put before an in-scope query.
    pub contexts: Vec<Vec<u32>>,
    /// Per edit, its context as text (for reading the adapter file).
    pub texts: Vec<String>,
    /// Projected embeddings of the edit prompts, `[n, dim]`.
    pub keys: Tensor,
    /// A query's first token, dropped when its context brings its own (BOS).
    pub bos: Option<u32>,
    /// The chat template's tokens around a user turn: the classifier reads a chat
    /// prompt's user text alone, and an edit's context goes inside the turn.
    pub frame: Option<ChatFrame>,
}

impl SeracMemory {
    fn empty(
        classifier: Rc<Classifier>,
        threshold: f64,
        bos: Option<u32>,
        frame: Option<ChatFrame>,
    ) -> Self {
        let dim = classifier.proj.size()[0];
        let device = classifier.proj.device();
        SeracMemory {
            classifier,
            threshold,
            contexts: Vec::new(),
            texts: Vec::new(),
            keys: Tensor::zeros([0, dim], (Kind::Float, device)),
            bos,
            frame,
        }
    }

    fn copy(&self) -> Self {
        SeracMemory {
            classifier: self.classifier.clone(),
            threshold: self.threshold,
            contexts: self.contexts.clone(),
            texts: self.texts.clone(),
            keys: self.keys.copy(),
            bos: self.bos,
            frame: self.frame.clone(),
        }
    }

    /// For each query, its nearest edit and their similarity (`None` without edits).
    pub fn nearest(
        &self,
        model: &Model,
        queries: &[Vec<u32>],
    ) -> Result<Vec<Option<(usize, f64)>>> {
        if self.contexts.is_empty() || queries.is_empty() {
            return Ok(vec![None; queries.len()]);
        }
        let texts: Vec<Vec<u32>> = queries.iter().map(|q| self.query_text(q)).collect();
        let e = embed(model, self.classifier.layer, &texts)?;
        let s = Classifier::similarity(&self.classifier.project(&e), &self.keys);
        let (best, idx) = s.max_dim(1, false);
        let best = Vec::<f64>::try_from(best.to_kind(Kind::Double).to_device(tch::Device::Cpu))?;
        let idx = Vec::<i64>::try_from(idx.to_device(tch::Device::Cpu))?;
        Ok(idx
            .into_iter()
            .zip(best)
            .map(|(i, s)| Some((i as usize, s)))
            .collect())
    }

    /// Where a query's user text begins, when it is a chat prompt in the memory's frame.
    fn turn_start(&self, q: &[u32]) -> Option<usize> {
        Some(self.frame.as_ref()?.text_span(q)?.start)
    }

    /// What the classifier reads of a query: a chat prompt's user text, led by BOS as
    /// the edit prompts were; any other query whole.
    fn query_text(&self, q: &[u32]) -> Vec<u32> {
        match self.frame.as_ref().and_then(|f| f.text_span(q)) {
            Some(span) => self
                .bos
                .iter()
                .copied()
                .chain(q[span].iter().copied())
                .collect(),
            None => q.to_vec(),
        }
    }
}

impl SequenceRouter for SeracMemory {
    fn contexts(&self, model: &Model, queries: &[Vec<u32>]) -> Result<Vec<Option<Route>>> {
        Ok(self
            .nearest(model, queries)?
            .into_iter()
            .zip(queries)
            .map(|(n, q)| {
                let (i, s) = n?;
                (s > self.threshold).then(|| {
                    let context = &self.contexts[i];
                    let bos = self.bos.as_ref();
                    let leads = bos.is_some() && context.first() == bos;
                    match self.turn_start(q) {
                        // Inside a chat turn, before the user's text, without its BOS.
                        Some(at) => Route {
                            at,
                            context: context[usize::from(leads)..].to_vec(),
                            replaces: 0,
                        },
                        // Its own BOS replaces the query's.
                        None => Route {
                            at: 0,
                            context: context.clone(),
                            replaces: usize::from(leads && q.first() == bos),
                        },
                    }
                })
            })
            .collect())
    }
}

impl Adapter for SeracMemory {
    fn layer(&self) -> usize {
        self.classifier.layer
    }

    /// SERAC acts before the model ([`SequenceRouter`]), not at its layer.
    fn apply(&self, _key: &Tensor, out: Tensor, _probe: &Tensor, _groups: &Tensor) -> Tensor {
        out
    }

    fn router(&self) -> Option<&dyn SequenceRouter> {
        Some(self)
    }

    fn saved(&self) -> SavedAdapter {
        let mut tensors = self.classifier.tensors();
        tensors.push((
            "keys".into(),
            self.keys.detach().to_device(tch::Device::Cpu),
        ));
        SavedAdapter {
            method: "serac".into(),
            config: serde_json::json!({
                "classifier": self.classifier.meta(),
                "threshold": self.threshold,
                "contexts": self.contexts,
                "texts": self.texts,
                "bos": self.bos,
                "frame": self.frame,
            }),
            tensors,
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl SeracMemory {
    /// A memory as [`Adapter::saved`] wrote it.
    pub fn from_saved(saved: &SavedAdapter, device: tch::Device) -> Result<Self> {
        let bad = |m: &str| Error::Input(format!("SERAC adapter: {m}"));
        let c = &saved.config;
        let classifier =
            Classifier::from_parts(&c["classifier"], &saved.tensors, device, "SERAC adapter")?;
        let contexts: Vec<Vec<u32>> =
            serde_json::from_value(c["contexts"].clone()).map_err(|_| bad("no contexts"))?;
        let texts: Vec<String> =
            serde_json::from_value(c["texts"].clone()).map_err(|_| bad("no texts"))?;
        let keys = saved.tensor("keys")?.to_kind(Kind::Float).to_device(device);
        if keys.size()[0] as usize != contexts.len() || texts.len() != contexts.len() {
            return Err(bad("keys, contexts and texts differ in number"));
        }
        Ok(SeracMemory {
            classifier: Rc::new(classifier),
            threshold: c["threshold"].as_f64().ok_or_else(|| bad("no threshold"))?,
            contexts,
            texts,
            keys,
            bos: c["bos"].as_u64().map(|b| b as u32),
            // Memories saved before chat frames have none.
            frame: match &c["frame"] {
                serde_json::Value::Null => None,
                f => Some(serde_json::from_value(f.clone()).map_err(|_| bad("bad chat frame"))?),
            },
        })
    }
}

/// SERAC's edits: each record's context joins the model's memory (no weight changes).
pub struct SeracEditor {
    pub config: SeracConfig,
    pub progress: bool,
    classifier: Option<Rc<Classifier>>,
    log: Vec<serde_json::Value>,
    seconds: f64,
}

impl SeracEditor {
    pub fn new(config: SeracConfig) -> Self {
        SeracEditor {
            config,
            progress: false,
            classifier: None,
            log: Vec::new(),
            seconds: 0.0,
        }
    }

    /// The model's memory to add to (a copy), or an empty one with the recipe's
    /// classifier.
    fn memory_of(&mut self, model: &Model, tok: &Tokenizer) -> Result<SeracMemory> {
        if let Some(m) = model.own_adapter::<SeracMemory>("SERAC")? {
            return Ok(m.copy());
        }
        let classifier = match &self.classifier {
            Some(c) => c.clone(),
            None => {
                if self.config.classifier.is_empty() {
                    return Err(Error::Input(
                        "SERAC needs a trained scope classifier: run `ftedit train-editor --method serac --model M \
                         --data TRAIN --out DIR`, then edit with `--recipe DIR/recipe.toml`"
                            .into(),
                    ));
                }
                let c = Rc::new(Classifier::load(Path::new(&self.config.classifier), model)?);
                self.classifier = Some(c.clone());
                c
            }
        };
        let bos = tok.bos_id.filter(|_| tok.adds_bos());
        Ok(SeracMemory::empty(
            classifier,
            self.config.threshold,
            bos,
            tok.chat_frame()?,
        ))
    }
}

/// An edit's context text.
fn context_text(template: &str, rec: &EditRecord) -> String {
    template
        .replace("{prompt}", &rec.rewrite_prompt())
        .replace("{target}", rec.target_new.trim())
}

impl Editor for SeracEditor {
    fn name(&self) -> &str {
        "serac"
    }

    /// The weights stay as they are: the edit lives in the model's adapter.
    fn writes(&self, _model: &Model) -> Result<Option<Vec<String>>> {
        Ok(Some(Vec::new()))
    }

    fn edit(&mut self, model: &mut Model, tok: &Tokenizer, records: &[EditRecord]) -> Result<()> {
        let start = std::time::Instant::now();
        let mut memory = self.memory_of(model, tok)?;
        let prompts: Vec<Vec<u32>> = records
            .iter()
            .map(|r| tok.encode(&r.rewrite_prompt(), true))
            .collect::<Result<_>>()?;
        let e = embed(model, memory.classifier.layer, &prompts)?;
        let keys = memory.classifier.project(&e);
        memory.keys = Tensor::cat(&[&memory.keys, &keys], 0);
        for r in records {
            let text = context_text(&self.config.template, r);
            memory.contexts.push(tok.encode(&text, true)?);
            memory.texts.push(text);
            self.log
                .push(serde_json::json!({"id": r.id, "edits": memory.contexts.len()}));
        }
        model.set_adapter(Some(Rc::new(memory)));
        self.seconds += start.elapsed().as_secs_f64();
        Ok(())
    }

    fn report(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "method": "serac",
            "classifier": self.config.classifier,
            "seconds": self.seconds,
            "edits": self.log,
        }))
    }
}

/// One validation of the classifier: its loss and balanced accuracy at the threshold.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    pub step: usize,
    pub loss: f64,
    /// Mean of the in-scope and out-of-scope accuracies at the recipe's threshold.
    pub accuracy: f64,
    pub in_scope: f64,
    pub out_of_scope: f64,
}

/// What training wrote and how it went.
#[derive(Debug)]
pub struct TrainReport {
    pub steps: usize,
    pub seconds: f64,
    pub best: Validation,
    pub classifier: PathBuf,
    pub recipe: PathBuf,
}

/// The training pairs of a set of records, as indices into a list of unique prompts:
/// each record's edit prompt, its paraphrases (in scope) and its neighbourhood prompts
/// (out of scope).
struct Pairs {
    prompts: Vec<Vec<u32>>,
    /// Per record: (edit, paraphrases, neighbours).
    records: Vec<(usize, Vec<usize>, Vec<usize>)>,
}

fn pairs(tok: &Tokenizer, records: &[EditRecord]) -> Result<Pairs> {
    let mut index = std::collections::HashMap::new();
    let mut prompts = Vec::new();
    let mut id = |text: &str| -> Result<usize> {
        if let Some(&i) = index.get(text) {
            return Ok(i);
        }
        prompts.push(tok.encode(text, true)?);
        index.insert(text.to_owned(), prompts.len() - 1);
        Ok(prompts.len() - 1)
    };
    let mut out = Vec::new();
    for r in records {
        let edit = id(&r.rewrite_prompt())?;
        let para = r
            .paraphrases
            .iter()
            .map(|p| id(p))
            .collect::<Result<Vec<_>>>()?;
        let neigh = r
            .neighborhood
            .iter()
            .map(|n| id(&n.prompt))
            .collect::<Result<Vec<_>>>()?;
        out.push((edit, para, neigh));
    }
    Ok(Pairs {
        prompts,
        records: out,
    })
}

/// Balanced BCE of similarities: `mean(−log s)` in scope, `mean(−log(1 − s))` out of
/// scope, from squared distances (`−log s = d²`; `−log(1 − e^{−d²})` computed stably).
fn balanced_bce(d2_in: &Tensor, d2_out: &Tensor) -> Tensor {
    // 1 − e^{−x} as −expm1(−x), exact for small x; x ≥ 1e-6 keeps it from 0 when an
    // out-of-scope text equals its edit's.
    let out = -(-(d2_out.clamp_min(1e-6))).expm1().neg().log();
    d2_in.mean(Kind::Float) + out.mean(Kind::Float)
}

/// Trains the classifier's projection on `train` (validating on `val`) and writes
/// `out/classifier.safetensors`, `out/recipe.toml` and `out/train_curve.jsonl`. The
/// embeddings of the training prompts are kept in `out/embeddings.safetensors`, so that
/// a rerun after a kill starts training again without the forward passes.
pub fn train_classifier(
    model: &Model,
    tok: &Tokenizer,
    config: &SeracConfig,
    train: &[EditRecord],
    val: &[EditRecord],
    out: &Path,
    progress: bool,
) -> Result<TrainReport> {
    let start = std::time::Instant::now();
    let t = &config.train;
    let (layer, _) = layer_range(&config.layer, model.num_layers())?;
    let train_pairs = pairs(tok, train)?;
    let val_pairs = pairs(tok, val)?;
    if !train_pairs.records.iter().any(|(_, p, _)| !p.is_empty()) {
        return Err(Error::Input(
            "SERAC's classifier trains on paraphrases: the training records have none".into(),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let _lock = crate::output::Lock::acquire(out)?;
    let model_id = model.fingerprint(&[])?;
    // The embeddings, from an earlier run of the same data when there is one.
    let cache = out.join("embeddings.safetensors");
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (layer, &model_id, &train_pairs.prompts, &val_pairs.prompts).hash(&mut h);
        format!("{:016x}", h.finish())
    };
    let cached = Tensor::read_safetensors(&cache).ok().and_then(|named| {
        let get = |n: &str| {
            named
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, t)| t.shallow_clone())
        };
        let k = get("key")?;
        let want: Vec<u8> = key.bytes().collect();
        if Vec::<u8>::try_from(&k).ok()? != want {
            return None;
        }
        Some((get("train")?, get("val")?))
    });
    let (e_train, e_val) = match cached {
        Some((a, b)) => {
            eprintln!(
                "note: embeddings of the training prompts from {}",
                cache.display()
            );
            (a.to_device(model.device()), b.to_device(model.device()))
        }
        None => {
            let pb = crate::progress::bar(progress, 2, "embedding");
            let a = embed(model, layer, &train_pairs.prompts)?;
            pb.inc(1);
            let b = embed(model, layer, &val_pairs.prompts)?;
            pb.finish_and_clear();
            let k = Tensor::from_slice(key.as_bytes());
            let cpu = |t: &Tensor| t.to_device(tch::Device::Cpu);
            let named = [("key", k), ("train", cpu(&a)), ("val", cpu(&b))];
            let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (*n, t)).collect();
            Tensor::write_safetensors(&refs, &cache)?;
            (a, b)
        }
    };
    let hidden = e_train.size()[1];
    let mean = e_train.mean_dim(&[0i64][..], false, Kind::Float);
    let std = e_train.std_dim(&[0i64][..], false, false).clamp_min(1e-6);
    tch::manual_seed(t.seed as i64);
    // Scaled so that a typical pair starts near d² ≈ 1 (similarity ≈ 0.4).
    let proj = (Tensor::randn([t.dim, hidden], (Kind::Float, model.device()))
        / ((t.dim * hidden) as f64).sqrt())
    .set_requires_grad(true);
    let mut classifier = Classifier {
        layer,
        mean,
        std,
        proj: proj.shallow_clone(),
        model_id,
    };
    let mut adam = AdamW::over(
        vec![proj.shallow_clone()],
        AdamWConfig {
            lr: t.lr,
            ..AdamWConfig::default()
        },
    )?;
    let mut rng = Rng(t.seed);
    let recs = &train_pairs.records;
    let with_para: Vec<usize> = (0..recs.len()).filter(|&i| !recs[i].1.is_empty()).collect();
    let index = |v: &[i64]| Tensor::from_slice(v).to_device(model.device());
    let curve_path = out.join("train_curve.jsonl");
    let mut curve = String::new();
    let mut best: Option<(Validation, Tensor)> = None;
    let mut since_best = 0;
    let pb = crate::progress::bar(progress, t.steps, "serac");
    let mut steps = 0;
    for step in 1..=t.steps {
        // Half in scope (an edit and one of its paraphrases), half out: a neighbour of
        // the edit, or another record's prompt.
        let n = t.batch / 2;
        let (mut a_in, mut b_in, mut a_out, mut b_out) = (vec![], vec![], vec![], vec![]);
        for _ in 0..n {
            let (e, para, _) = &recs[with_para[rng.below(with_para.len())]];
            a_in.push(*e as i64);
            b_in.push(para[rng.below(para.len())] as i64);
            let r = rng.below(recs.len());
            let (e, _, neigh) = &recs[r];
            a_out.push(*e as i64);
            let other = if !neigh.is_empty() && rng.below(2) == 0 {
                neigh[rng.below(neigh.len())]
            } else {
                let mut o = rng.below(recs.len());
                if o == r {
                    o = (o + 1) % recs.len();
                }
                recs[o].0
            };
            b_out.push(other as i64);
        }
        // Only the batch's rows are projected.
        let d2 = |a: &[i64], b: &[i64]| {
            let diff = classifier.project_difference(
                &(e_train.index_select(0, &index(a)) - e_train.index_select(0, &index(b))),
            );
            (&diff * &diff).sum_dim_intlist(&[1i64][..], false, Kind::Float)
        };
        let loss = balanced_bce(&d2(&a_in, &b_in), &d2(&a_out, &b_out));
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            return Err(Error::Diverged(format!(
                "SERAC's classifier loss became {value} (try a lower train.lr)"
            )));
        }
        adam.zero_grad()?;
        loss.backward();
        adam.step()?;
        steps = step;
        pb.inc(1);
        if step % t.val_every == 0 || step == t.steps {
            let v =
                tch::no_grad(|| validate(&classifier, &e_val, &val_pairs, config.threshold, step));
            curve.push_str(
                &serde_json::to_string(&serde_json::json!({
                    "step": step, "train_loss": value, "val": v,
                }))
                .expect("serialisable"),
            );
            curve.push('\n');
            crate::output::write_atomic(&curve_path, curve.as_bytes())?;
            if best.as_ref().is_none_or(|(b, _)| v.loss < b.loss) {
                best = Some((v, proj.detach().copy()));
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= t.patience {
                    break;
                }
            }
        }
    }
    pb.finish_and_clear();
    let (best, p) = best.expect("validated at least once");
    classifier.proj = p;
    let classifier_path = out.join("classifier.safetensors");
    classifier.save(&classifier_path)?;
    let absolute = std::fs::canonicalize(&classifier_path).unwrap_or(classifier_path.clone());
    let mut recipe = config.clone();
    recipe.classifier = absolute.display().to_string();
    recipe.description = format!(
        "SERAC with the scope classifier trained in {} (best validation at step {})",
        out.display(),
        best.step
    );
    let recipe_path = out.join("recipe.toml");
    let text = crate::edit::MethodConfig::Serac(recipe).to_toml();
    crate::output::write_atomic(&recipe_path, text.as_bytes())?;
    Ok(TrainReport {
        steps,
        seconds: start.elapsed().as_secs_f64(),
        best,
        classifier: classifier_path,
        recipe: recipe_path,
    })
}

/// Loss and accuracy on every validation record: (edit, each paraphrase) in scope,
/// (edit, each neighbour) and (edit, the next record's edit) out of scope.
fn validate(c: &Classifier, e: &Tensor, pairs: &Pairs, threshold: f64, step: usize) -> Validation {
    let z = c.project(e);
    let recs = &pairs.records;
    let (mut a_in, mut b_in, mut a_out, mut b_out) = (vec![], vec![], vec![], vec![]);
    for (i, (edit, para, neigh)) in recs.iter().enumerate() {
        for &p in para {
            a_in.push(*edit as i64);
            b_in.push(p as i64);
        }
        for &n in neigh {
            a_out.push(*edit as i64);
            b_out.push(n as i64);
        }
        if recs.len() > 1 {
            a_out.push(*edit as i64);
            b_out.push(recs[(i + 1) % recs.len()].0 as i64);
        }
    }
    let device = z.device();
    let d2 = |a: &[i64], b: &[i64]| {
        if a.is_empty() {
            return Tensor::zeros([0], (Kind::Float, device));
        }
        let ia = Tensor::from_slice(a).to_device(device);
        let ib = Tensor::from_slice(b).to_device(device);
        let diff = z.index_select(0, &ia) - z.index_select(0, &ib);
        (&diff * &diff).sum_dim_intlist(&[1i64][..], false, Kind::Float)
    };
    let (din, dout) = (d2(&a_in, &b_in), d2(&a_out, &b_out));
    let acc = |d: &Tensor, inside: bool| -> f64 {
        if d.numel() == 0 {
            return f64::NAN;
        }
        let s = (-d).exp();
        let hit = if inside {
            s.gt(threshold)
        } else {
            s.le(threshold)
        };
        hit.to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[])
    };
    let (i, o) = (acc(&din, true), acc(&dout, false));
    Validation {
        step,
        loss: balanced_bce(&din, &dout).double_value(&[]),
        accuracy: 100.0 * (i + o) / 2.0,
        in_scope: 100.0 * i,
        out_of_scope: 100.0 * o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `−log(1 − e^{−d²})` against its direct formula where that is exact enough, and
    /// `−log s = d²` in scope.
    #[test]
    fn the_balanced_loss_matches_its_definition() {
        let d_in = Tensor::from_slice(&[0.5f32, 2.0]);
        let d_out = Tensor::from_slice(&[0.3f32, 3.0]);
        let got = balanced_bce(&d_in, &d_out).double_value(&[]);
        let want = (0.5 + 2.0) / 2.0
            + (-(1.0 - (-0.3f64).exp()).ln() - (1.0 - (-3.0f64).exp()).ln()) / 2.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // An out-of-scope text equal to its edit's (d² = 0) stays finite.
        let zero = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu));
        assert!(balanced_bce(&d_in, &zero).double_value(&[]).is_finite());
    }

    /// sim(x, x) = 1; sim ∈ (0, 1].
    #[test]
    fn similarity_is_one_on_itself_and_within_zero_one() {
        let a = Tensor::from_slice(&[0.0f32, 0.0, 1.0, 0.5]).view([2, 2]);
        let s = Classifier::similarity(&a, &a);
        let v = Vec::<f32>::try_from(s.flatten(0, -1)).unwrap();
        assert_eq!((v[0], v[3]), (1.0, 1.0));
        assert!(v.iter().all(|&x| x > 0.0 && x <= 1.0), "{v:?}");
        assert!((v[1] - (-1.25f32).exp()).abs() < 1e-6);
    }
}

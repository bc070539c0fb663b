//! The locate-then-edit core that ROME, MEMIT and AlphaEdit share (METHOD.md): where a
//! fact is read (the subject's last token, [`locate`]), the keys there ([`mean_keys`],
//! their statistics in [`stats`]), the value that states the new target ([`value`]),
//! MEMIT's spreading of a target over several layers ([`spread`]), and the one matrix
//! these methods write, the MLP output projection ([`add_to_out_proj`]).
//! Each method's own file holds only its settings, its closed form and its editor.

pub mod spread;
pub mod stats;
pub mod value;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::augment;
use super::editor::EditorState;
use crate::data::EditRecord;
use crate::error::{Error, Result};
use crate::model::{Input, Model};
use crate::tokenizer::Tokenizer;
use stats::{StatsOptions, second_moments};

/// How v* (ROME) or z (MEMIT) is optimised (`[value]` in their recipes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueConfig {
    /// Adam steps.
    pub steps: usize,
    pub lr: f64,
    /// Weight of KL(p_edited ‖ p_unedited) on "{subject} is a".
    pub kl_factor: f64,
    /// Weight of ‖δ‖² / ‖v‖².
    pub weight_decay: f64,
    /// ‖δ‖ is kept at most this times ‖v‖.
    pub clamp_norm_factor: f64,
    /// Stop once the target NLL is below this.
    pub stop_nll: f64,
    /// `[count, tokens]` of random-prefix contexts (besides the bare prompt).
    pub contexts: Vec<[usize; 2]>,
    pub seed: u64,
    /// Edits whose values are optimised together in one batch: MEMIT's and AlphaEdit's
    /// are independent of each other; ROME's only where each edit starts from the same
    /// model (the single protocol, [`Editor::prepare`]), not when its edits follow one
    /// another.
    #[serde(default = "default_value_batch")]
    pub batch: usize,
    /// How the optimisation's forward and backward passes compute: `auto` (bf16-mixed
    /// where the device multiplies bf16 matrices in hardware, f32 elsewhere), `f32` or
    /// `bf16-mixed`; δ, its optimiser and the closed forms stay in f32 / f64.
    #[serde(default)]
    pub precision: crate::runtime::Precision,
}

fn default_value_batch() -> usize {
    16
}

impl ValueConfig {
    pub(crate) fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(format!("recipe: {m}")));
        if self.lr.is_nan() || self.lr <= 0.0 {
            return bad(format!("value.lr must be positive, not {}", self.lr));
        }
        if self.clamp_norm_factor.is_nan() || self.clamp_norm_factor <= 0.0 {
            return bad(format!(
                "value.clamp_norm_factor must be positive, not {}",
                self.clamp_norm_factor
            ));
        }
        if self.kl_factor < 0.0 || self.weight_decay < 0.0 {
            return bad("value.kl_factor and value.weight_decay must not be negative".into());
        }
        if self.batch == 0 {
            return bad("value.batch must be at least 1".into());
        }
        Ok(())
    }
}

/// Where the key statistics C = E[k kᵀ] come from (`[stats]` in ROME's and MEMIT's
/// recipes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    /// Plain text file the keys are read from; empty: the WikiText sample in the data
    /// folder ([`crate::data::default_text`]).
    pub text: String,
    /// Token positions sampled.
    pub samples: usize,
    /// Cache the statistics (by the model's weights hash, layer and sample count).
    pub cache: bool,
    /// The cache folder; empty: `$FTEDIT_CACHE`, else `~/.cache/ftedit`.
    pub cache_dir: String,
    /// How the forward passes that collect the keys compute (`auto`, `f32`,
    /// `bf16-mixed`); k kᵀ is summed in f64 either way, and bf16 statistics are cached
    /// apart from f32 ones.
    #[serde(default)]
    pub precision: crate::runtime::Precision,
}

impl StatsConfig {
    pub(crate) fn options(&self, progress: bool) -> StatsOptions {
        let text = if self.text.is_empty() {
            crate::data::default_text()
        } else {
            PathBuf::from(&self.text)
        };
        let mut o = StatsOptions::new(text, self.samples);
        o.cache_dir = self.cache_dir();
        o.progress = progress;
        o.precision = self.precision;
        o
    }

    /// The cache folder, when caching.
    pub(crate) fn cache_dir(&self) -> Option<PathBuf> {
        self.cache.then(|| {
            if self.cache_dir.is_empty() {
                crate::cache::dir()
            } else {
                PathBuf::from(&self.cache_dir)
            }
        })
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.samples == 0 {
            return Err(Error::Input(
                "recipe: stats.samples must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// A token sequence with the position of the subject's last token.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    pub ids: Vec<u32>,
    pub subject_last: usize,
}

/// `context` + the record's prompt, tokenized so that the subject's last token has a
/// known position; `tail` tokens follow the prompt. A prompt without `{}` (some zsRE
/// questions do not contain their subject) is read at its last token.
pub(crate) fn locate(
    tok: &Tokenizer,
    context: &str,
    record: &EditRecord,
    tail: &[u32],
) -> Result<Located> {
    let (head, rest) = match record.prompt.split_once("{}") {
        Some((before, after)) => (format!("{context}{before}{}", record.subject), after),
        None => (format!("{context}{}", record.prompt), ""),
    };
    let mut ids = tok.encode(&head, true)?;
    if ids.is_empty() {
        return Err(Error::Input(format!(
            "record {}: the prompt tokenizes to nothing",
            record.id
        )));
    }
    let subject_last = ids.len() - 1;
    if !rest.is_empty() {
        ids.extend(tok.encode(rest, false)?);
    }
    ids.extend_from_slice(tail);
    Ok(Located { ids, subject_last })
}

/// How many tokens of the record's bare prompt and `target` (its [`target_ids`]) the
/// value optimisation runs each step: from the subject's last token to the target's
/// second last.
pub(crate) fn tail_len(tok: &Tokenizer, record: &EditRecord, target: &[u32]) -> Result<usize> {
    let l = locate(tok, "", record, &target[..target.len() - 1])?;
    Ok(l.ids.len() - l.subject_last)
}

/// The target's tokens (with a leading space, as every editor scores them).
pub(crate) fn target_ids(tok: &Tokenizer, record: &EditRecord) -> Result<Vec<u32>> {
    let ids = tok.encode(&format!(" {}", record.target_new), false)?;
    if ids.is_empty() {
        return Err(Error::Input(format!(
            "record {}: target {:?} tokenizes to nothing",
            record.id, record.target_new
        )));
    }
    Ok(ids)
}

/// Random-prefix contexts sampled from the model, after the bare prompt ("").
pub(crate) fn contexts(model: &Model, tok: &Tokenizer, cfg: &ValueConfig) -> Result<Vec<String>> {
    let mut out = vec![String::new()];
    out.extend(augment::sample_prefixes(
        model,
        tok,
        &cfg.contexts,
        cfg.seed,
    )?);
    Ok(out)
}

/// The mean key `[records, intermediate]` of each record at `layer`, over `contexts`.
/// Records run together, up to [`KEY_BATCH`] sequences a pass, each pass stopping at
/// `layer`.
pub(crate) fn mean_keys(
    model: &Model,
    tok: &Tokenizer,
    records: &[EditRecord],
    layer: usize,
    contexts: &[String],
) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let per_pass = (KEY_BATCH / contexts.len().max(1)).max(1);
    let mut means = Vec::with_capacity(records.len());
    for chunk in records.chunks(per_pass) {
        let mut located = Vec::with_capacity(chunk.len() * contexts.len());
        for rec in chunk {
            for c in contexts {
                located.push(locate(tok, c, rec, &[])?);
            }
        }
        let seqs: Vec<&[u32]> = located.iter().map(|l| l.ids.as_slice()).collect();
        let input = Input::right_padded(&seqs, model.device())?;
        let t = input.seq_len();
        let mut capture = crate::model::CaptureKeys {
            layers: vec![layer],
            keys: Vec::new(),
        };
        model.run_hooks(&input, &mut capture)?;
        let (_, key) = capture
            .keys
            .pop()
            .ok_or_else(|| Error::Input(format!("layer {layer} produced no key")))?;
        let width = key.size()[2];
        let idx: Vec<i64> = located
            .iter()
            .enumerate()
            .map(|(r, l)| (r * t + l.subject_last) as i64)
            .collect();
        let picked = key
            .reshape([-1, width])
            .index_select(0, &Tensor::from_slice(&idx).to_device(key.device()));
        means.push(
            picked
                .to_kind(Kind::Double)
                .view([chunk.len() as i64, contexts.len() as i64, width])
                .mean_dim(1, false, Kind::Double),
        );
    }
    Ok(Tensor::cat(&means, 0))
}

/// Sequences per forward pass when collecting keys: big enough that the matrix products
/// run near their peak, small enough that the activations stay well under a gigabyte.
const KEY_BATCH: usize = 192;

/// Adds `delta` (`[out, in]`) to layer `layer`'s MLP output projection, whatever the
/// architecture's storage layout.
pub(crate) fn add_to_out_proj(model: &Model, layer: usize, delta: &Tensor) -> Result<()> {
    let _g = tch::no_grad_guard();
    let name = model.mlp_out_proj(layer);
    let w = model.params.get(&name)?;
    let delta = if model.config().mlp_out_proj_transposed() {
        delta.transpose(0, 1)
    } else {
        delta.shallow_clone()
    };
    let _ = w
        .shallow_clone()
        .g_add_(&delta.to_kind(w.kind()).to_device(w.device()));
    Ok(())
}

/// Layer `layer`'s MLP output projection as `[out, in]`.
pub(crate) fn out_proj(model: &Model, layer: usize) -> Result<Tensor> {
    let w = model.params.get(&model.mlp_out_proj(layer))?;
    Ok(if model.config().mlp_out_proj_transposed() {
        w.transpose(0, 1)
    } else {
        w
    })
}

/// What ROME did, for the run report.
#[derive(Debug, Clone, Serialize)]
pub struct LocateReport {
    pub method: String,
    pub layers: Vec<usize>,
    pub edits: usize,
    pub stats_seconds: f64,
    pub edit_seconds: f64,
    pub seconds_per_edit: f64,
    /// Values read from the cache instead of optimised (MEMIT's `cache_z`), or optimised
    /// ahead with other records' (ROME under the single protocol).
    #[serde(default)]
    pub values_from_cache: usize,
    pub value: ValueConfig,
    pub contexts: Vec<String>,
}

impl LocateReport {
    pub(crate) fn new(
        method: &str,
        layers: Vec<usize>,
        edits: usize,
        stats_seconds: f64,
        edit_seconds: f64,
        value: &ValueConfig,
        contexts: &[String],
    ) -> Self {
        LocateReport {
            method: method.into(),
            layers,
            edits,
            stats_seconds,
            edit_seconds,
            seconds_per_edit: edit_seconds / edits as f64,
            values_from_cache: 0,
            value: value.clone(),
            contexts: contexts.to_vec(),
        }
    }
}

/// What ROME and MEMIT measure once, on the unedited model, and reuse for every later
/// edit: the key statistics of the edited layers and the random-prefix contexts.
#[derive(Default)]
pub(crate) struct Prepared {
    mom2: Option<Vec<Tensor>>,
    contexts: Option<Vec<String>>,
    /// Seconds [`Prepared::begin`] spent on statistics, charged to the next edit.
    carried: f64,
}

impl Prepared {
    /// [`Editor::begin`]: measures on the unedited model what every edit reuses.
    pub(crate) fn begin(
        &mut self,
        model: &Model,
        tok: &Tokenizer,
        layers: &[usize],
        value: &ValueConfig,
        stats: &StatsConfig,
        progress: bool,
    ) -> Result<()> {
        self.carried += self.ensure(model, tok, layers, value, stats, progress)?;
        Ok(())
    }

    /// What a checkpoint keeps: the sampled contexts (the statistics are measured again,
    /// by [`Prepared::begin`] on the unedited model, or read from their cache).
    pub(crate) fn state(&self) -> EditorState {
        EditorState {
            tensors: Vec::new(),
            values: serde_json::json!({ "contexts": self.contexts }),
        }
    }

    /// Takes back the contexts [`Prepared::state`] kept.
    pub(crate) fn set_state(&mut self, state: &EditorState) -> Result<()> {
        if let Some(c) = state.values.get("contexts").filter(|c| !c.is_null()) {
            self.contexts = Some(serde_json::from_value(c.clone()).map_err(|e| {
                Error::Input(format!("a checkpoint's editor state: contexts: {e}"))
            })?);
        }
        Ok(())
    }

    /// Measures what is still missing; returns the seconds the statistics took (with
    /// those of [`Prepared::begin`] not yet charged to an edit).
    pub(crate) fn ensure(
        &mut self,
        model: &Model,
        tok: &Tokenizer,
        layers: &[usize],
        value: &ValueConfig,
        stats: &StatsConfig,
        progress: bool,
    ) -> Result<f64> {
        let t0 = Instant::now();
        if self.mom2.is_none() {
            self.mom2 = Some(second_moments(
                model,
                tok,
                layers,
                &stats.options(progress),
            )?);
        }
        let seconds = t0.elapsed().as_secs_f64() + std::mem::take(&mut self.carried);
        if self.contexts.is_none() {
            self.contexts = Some(contexts(model, tok, value)?);
        }
        Ok(seconds)
    }

    /// The statistics (one per layer) and the contexts, after [`Prepared::ensure`].
    pub(crate) fn get(&self) -> (&[Tensor], &[String]) {
        (
            self.mom2.as_deref().expect("ensure ran"),
            self.contexts.as_deref().expect("ensure ran"),
        )
    }
}

/// A record's identity for caches: its prompt, subject and new target.
pub(crate) fn record_key(r: &EditRecord) -> String {
    let mut h = DefaultHasher::new();
    (&r.prompt, &r.subject, &r.target_new).hash(&mut h);
    format!("r{:016x}", h.finish())
}

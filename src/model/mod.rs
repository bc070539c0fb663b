//! Models: loading real checkpoints (GGUF files, Hugging Face folders) into one
//! abstraction, and running them the way editing needs.
//!
//! - [`load`] opens a GGUF file or a Hugging Face folder and returns a [`Model`] whose
//!   parameters carry their Hugging Face names, plus its [`crate::Tokenizer`].
//! - [`Model::forward`] runs right-padded batches and computes logits only at the
//!   positions asked for; layers below the lowest trainable parameter run without an
//!   autograd graph; [`LayerHooks`] read and change the MLP of any layer;
//!   [`Model::prefill`] runs fixed heads once so only the tails run again.
//! - [`generate`] samples greedily or top-k with a KV cache.

pub mod adapter;
pub mod config;
pub mod gemma3;
pub mod generate;
pub mod gpt2;
pub mod gpt_neox;
pub mod gptj;
pub mod llama;
mod load;
pub mod lora;
pub mod nn;
pub mod params;
pub mod registry;
pub mod save;

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

pub use adapter::{Adapter, SavedAdapter, SharedAdapter};
pub use generate::{GenerateOptions, Sampling, generate};
pub use load::{LoadOptions, from_hf_tensors, load, stored_dtype};
pub use nn::{CaptureKeys, KvCache, LayerHooks, Probe, Site};
pub use params::{ParamStore, Snapshot, glob_match};

use crate::error::{Error, Result};
use crate::runtime::Autocast;
pub use crate::runtime::Precision;
use nn::Ctx;

/// What every architecture provides to the shared forward driver; everything else
/// about an architecture (names, sizes) is read off its [`ArchConfig`].
pub trait Architecture: Send {
    /// The embedding and all blocks: hidden states `[B, T, D]` before the final norm.
    fn hidden_states(&self, ids: &Tensor, ctx: &mut Ctx) -> Tensor;
    fn final_norm(&self, h: &Tensor) -> Tensor;
    /// The output projection `[vocab, D]` (the embedding itself when tied).
    fn lm_head(&self) -> &Tensor;
    /// The output projection's bias, where it has one (GPT-J).
    fn lm_head_bias(&self) -> Option<&Tensor> {
        None
    }
}

/// The supported architectures, with their hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchConfig {
    /// Llama, Mistral, SmolLM2 and (with `attention_bias`) Qwen2.
    Llama(llama::Config),
    Gemma3(gemma3::Config),
    Gpt2(gpt2::Config),
    Gptj(gptj::Config),
    GptNeox(gpt_neox::Config),
}

impl ArchConfig {
    /// From a Hugging Face `config.json`, by its `model_type`.
    pub fn from_hf(j: &serde_json::Value) -> Result<Self> {
        let model_type = j
            .get("model_type")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        Ok(match model_type {
            "llama" | "mistral" | "qwen2" | "qwen3" | "phi3" => {
                ArchConfig::Llama(llama::Config::from_hf(j)?)
            }
            "gemma3_text" => ArchConfig::Gemma3(gemma3::Config::from_hf(j)?),
            "gpt2" => ArchConfig::Gpt2(gpt2::Config::from_hf(j)?),
            "gptj" => ArchConfig::Gptj(gptj::Config::from_hf(j)?),
            "gpt_neox" => ArchConfig::GptNeox(gpt_neox::Config::from_hf(j)?),
            "gemma3" => {
                return Err(Error::Config(
                    "multimodal gemma3 checkpoints are not supported; use a text-only (gemma3_text) model".into(),
                ));
            }
            other => return Err(Error::UnknownArchitecture(other.into())),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            ArchConfig::Llama(c) if c.fused => "phi3",
            ArchConfig::Llama(c) if c.qk_norm => "qwen3",
            ArchConfig::Llama(c) if c.attention_bias => "qwen2",
            ArchConfig::Llama(_) => "llama",
            ArchConfig::Gemma3(_) => "gemma3",
            ArchConfig::Gpt2(_) => "gpt2",
            ArchConfig::Gptj(_) => "gptj",
            ArchConfig::GptNeox(_) => "gpt_neox",
        }
    }

    /// The architecture's name in GGUF's `general.architecture` (llama.cpp's).
    pub fn gguf_name(&self) -> &'static str {
        match self {
            ArchConfig::GptNeox(_) => "gptneox",
            other => other.name(),
        }
    }

    /// Every parameter with its shape, under Hugging Face names.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        match self {
            ArchConfig::Llama(c) => c.param_specs(),
            ArchConfig::Gemma3(c) => c.param_specs(),
            ArchConfig::Gpt2(c) => c.param_specs(),
            ArchConfig::Gptj(c) => c.param_specs(),
            ArchConfig::GptNeox(c) => c.param_specs(),
        }
    }

    pub fn num_layers(&self) -> usize {
        match self {
            ArchConfig::Llama(c) => c.num_hidden_layers as usize,
            ArchConfig::Gemma3(c) => c.num_hidden_layers as usize,
            ArchConfig::Gpt2(c) => c.n_layer as usize,
            ArchConfig::Gptj(c) => c.n_layer as usize,
            ArchConfig::GptNeox(c) => c.num_hidden_layers as usize,
        }
    }

    /// The MLP's hidden activation (WISE measures its activation gaps through it).
    pub fn mlp_activation(&self) -> nn::Activation {
        match self {
            ArchConfig::Llama(_) => nn::Activation::Silu,
            ArchConfig::Gemma3(_) | ArchConfig::Gpt2(_) | ArchConfig::Gptj(_) => {
                nn::Activation::GeluTanh
            }
            ArchConfig::GptNeox(c) if c.gelu_tanh => nn::Activation::GeluTanh,
            ArchConfig::GptNeox(_) => nn::Activation::Gelu,
        }
    }

    pub fn max_positions(&self) -> usize {
        match self {
            ArchConfig::Llama(c) => c.max_position_embeddings as usize,
            ArchConfig::Gemma3(c) => c.max_position_embeddings as usize,
            ArchConfig::Gpt2(c) => c.n_positions as usize,
            ArchConfig::Gptj(c) => c.n_positions as usize,
            ArchConfig::GptNeox(c) => c.max_position_embeddings as usize,
        }
    }

    /// Parameter-name prefix of the blocks, followed by the layer number.
    fn layer_prefix(&self) -> &'static str {
        match self {
            ArchConfig::Llama(_) | ArchConfig::Gemma3(_) => "model.layers.",
            ArchConfig::Gpt2(_) | ArchConfig::Gptj(_) => "transformer.h.",
            ArchConfig::GptNeox(_) => "gpt_neox.layers.",
        }
    }

    /// Whether a parameter is used only after the blocks (final norm, untied head).
    fn is_head_param(&self, name: &str) -> bool {
        let final_norm = match self {
            ArchConfig::Llama(_) | ArchConfig::Gemma3(_) => name == "model.norm.weight",
            ArchConfig::Gpt2(_) | ArchConfig::Gptj(_) => name.starts_with("transformer.ln_f."),
            ArchConfig::GptNeox(_) => name.starts_with("gpt_neox.final_layer_norm."),
        };
        final_norm || name.starts_with("lm_head.") || name == "embed_out.weight"
    }

    /// Parameter-name patterns of module kinds (`mlp`, `mlp_out`: the MLP output
    /// projection's weight, `attn`, `norm`) in layers
    /// `first..=last`, e.g. `model.layers.{3..5}.mlp.*`.
    pub fn module_patterns(
        &self,
        first: usize,
        last: usize,
        modules: &[String],
    ) -> Result<Vec<String>> {
        if last < first || last >= self.num_layers() {
            return Err(Error::Input(format!(
                "layers {first}..{last} are outside the model's {} layers",
                self.num_layers()
            )));
        }
        let base = format!("{}{{{first}..{last}}}", self.layer_prefix());
        // Per architecture: the MLP output projection, attention and norm names.
        let (mlp_out, attn, norm) = match self {
            ArchConfig::Llama(_) | ArchConfig::Gemma3(_) => {
                ("mlp.down_proj.weight", "self_attn.*_proj.*", "*norm*")
            }
            ArchConfig::Gpt2(_) => ("mlp.c_proj.weight", "attn.*", "ln_*"),
            ArchConfig::Gptj(_) => ("mlp.fc_out.weight", "attn.*", "ln_*"),
            ArchConfig::GptNeox(_) => ("mlp.dense_4h_to_h.weight", "attention.*", "*layernorm*"),
        };
        modules
            .iter()
            .map(|m| {
                Ok(match m.as_str() {
                    "mlp" => format!("{base}.mlp.*"),
                    "mlp_out" => format!("{base}.{mlp_out}"),
                    "attn" => format!("{base}.{attn}"),
                    "norm" => format!("{base}.{norm}"),
                    other => {
                        return Err(Error::Input(format!(
                            "unknown module kind '{other}' (mlp, mlp_out, attn, norm)"
                        )));
                    }
                })
            })
            .collect()
    }

    /// Name of layer `layer`'s MLP output-projection weight (ROME and MEMIT edit it).
    pub fn mlp_out_proj(&self, layer: usize) -> String {
        match self {
            ArchConfig::Llama(_) | ArchConfig::Gemma3(_) => {
                format!("model.layers.{layer}.mlp.down_proj.weight")
            }
            ArchConfig::Gpt2(_) => format!("transformer.h.{layer}.mlp.c_proj.weight"),
            ArchConfig::Gptj(_) => format!("transformer.h.{layer}.mlp.fc_out.weight"),
            ArchConfig::GptNeox(_) => format!("gpt_neox.layers.{layer}.mlp.dense_4h_to_h.weight"),
        }
    }

    /// The RMS norm between layer `layer`'s MLP output projection and the residual
    /// stream, if the architecture has one (Gemma 3's `post_feedforward_layernorm`),
    /// loaded from `params`. MEMIT writes residual changes through it.
    pub fn mlp_out_norm(&self, params: &ParamStore, layer: usize) -> Result<Option<nn::RmsNorm>> {
        match self {
            ArchConfig::Gemma3(c) => nn::RmsNorm::load(
                params,
                &format!("model.layers.{layer}.post_feedforward_layernorm.weight"),
                c.hidden_size,
                c.rms_norm_eps,
                true,
            )
            .map(Some),
            ArchConfig::Llama(_)
            | ArchConfig::Gpt2(_)
            | ArchConfig::Gptj(_)
            | ArchConfig::GptNeox(_) => Ok(None),
        }
    }

    /// Whether the MLP output-projection weight is stored `[in, out]` (GPT-2's Conv1D)
    /// rather than `[out, in]`.
    pub fn mlp_out_proj_transposed(&self) -> bool {
        matches!(self, ArchConfig::Gpt2(_))
    }

    pub fn vocab_size(&self) -> i64 {
        match self {
            ArchConfig::Llama(c) => c.vocab_size,
            ArchConfig::Gemma3(c) => c.vocab_size,
            ArchConfig::Gpt2(c) => c.vocab_size,
            ArchConfig::Gptj(c) => c.vocab_size,
            ArchConfig::GptNeox(c) => c.vocab_size,
        }
    }

    fn build(&self, params: &ParamStore) -> Result<Box<dyn Architecture>> {
        Ok(match self {
            ArchConfig::Llama(c) => Box::new(llama::Model::load(params, c.clone())?),
            ArchConfig::Gemma3(c) => Box::new(gemma3::Model::load(params, c.clone())?),
            ArchConfig::Gpt2(c) => Box::new(gpt2::Model::load(params, c.clone())?),
            ArchConfig::Gptj(c) => Box::new(gptj::Model::load(params, c.clone())?),
            ArchConfig::GptNeox(c) => Box::new(gpt_neox::Model::load(params, c.clone())?),
        })
    }
}

/// How a parameter is initialised in a random model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Normal,
    Ones,
    Zeros,
}

/// A parameter's name, shape and random initialisation.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<i64>,
    pub init: Init,
}

impl ParamSpec {
    pub fn new(name: impl Into<String>, shape: impl Into<Vec<i64>>) -> Self {
        ParamSpec {
            name: name.into(),
            shape: shape.into(),
            init: Init::Normal,
        }
    }
    pub fn ones(mut self) -> Self {
        self.init = Init::Ones;
        self
    }
    pub fn zeros(mut self) -> Self {
        self.init = Init::Zeros;
        self
    }
}

/// A batch of token sequences, right-padded to a common length.
pub struct Input {
    /// Token ids `[B, T]` (int64).
    pub ids: Tensor,
    /// Real length of each row.
    pub lengths: Vec<usize>,
    /// Key mask `[B, past + T]`, true for real tokens; `None` when right padding is the
    /// only padding (causal attention never looks right, so it needs no mask).
    pub key_mask: Option<Tensor>,
    /// Positions `[B, T]`; `None` means `past + 0..T` for every row.
    pub positions: Option<Tensor>,
    /// Segment ids `[B, T]` when several sequences are packed into one row: a token
    /// attends only to earlier tokens of its own segment (see [`Input::packed`]).
    pub segments: Option<Tensor>,
}

impl Input {
    /// Right-pads `seqs` into one batch on `device`.
    pub fn right_padded<S: AsRef<[u32]>>(seqs: &[S], device: Device) -> Result<Self> {
        let lengths: Vec<usize> = seqs.iter().map(|s| s.as_ref().len()).collect();
        let t = lengths.iter().copied().max().unwrap_or(0);
        if seqs.is_empty() || lengths.contains(&0) {
            return Err(Error::Input("empty batch or empty sequence".into()));
        }
        let mut flat = vec![0i64; seqs.len() * t];
        for (row, s) in seqs.iter().enumerate() {
            for (j, &id) in s.as_ref().iter().enumerate() {
                flat[row * t + j] = id as i64;
            }
        }
        Ok(Input {
            ids: Tensor::from_slice(&flat)
                .view([seqs.len() as i64, t as i64])
                .to_device(device),
            lengths,
            key_mask: None,
            positions: None,
            segments: None,
        })
    }

    /// Packs sequences into as few rows as possible (first-fit by decreasing length),
    /// each sequence attending only to itself with positions from 0, so almost no
    /// compute is spent on padding. Rows hold up to [`Input::PACK_ROW`] tokens, or the
    /// longest sequence. Returns the batch and where each sequence landed, as
    /// `(row, offset)`.
    pub fn packed<S: AsRef<[u32]>>(
        seqs: &[S],
        device: Device,
    ) -> Result<(Self, Vec<(usize, usize)>)> {
        Self::packed_into(seqs, Self::PACK_ROW, device)
    }

    /// Row length [`Input::packed`] aims for: long enough to pack short sequences
    /// tightly, short enough that attention over a row stays cheap next to the MLPs.
    pub const PACK_ROW: usize = 64;

    /// Like [`Input::packed`], with rows of up to `cap` tokens (or the longest sequence).
    pub fn packed_into<S: AsRef<[u32]>>(
        seqs: &[S],
        cap: usize,
        device: Device,
    ) -> Result<(Self, Vec<(usize, usize)>)> {
        let lens: Vec<usize> = seqs.iter().map(|s| s.as_ref().len()).collect();
        if seqs.is_empty() || lens.contains(&0) {
            return Err(Error::Input("empty batch or empty sequence".into()));
        }
        let cap = cap.max(*lens.iter().max().unwrap());
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
        let mut fill: Vec<usize> = Vec::new();
        let mut place = vec![(0, 0); seqs.len()];
        for i in order {
            let row = match fill.iter().position(|&f| f + lens[i] <= cap) {
                Some(r) => r,
                None => {
                    fill.push(0);
                    fill.len() - 1
                }
            };
            place[i] = (row, fill[row]);
            fill[row] += lens[i];
        }
        let rows = fill.len();
        // Rows end where their last sequence ends.
        let cap = fill.iter().copied().max().unwrap_or(cap);
        let mut ids = vec![0i64; rows * cap];
        let mut pos = vec![0i64; rows * cap];
        let mut seg = vec![-1i64; rows * cap];
        for (i, s) in seqs.iter().enumerate() {
            let (r, off) = place[i];
            for (j, &id) in s.as_ref().iter().enumerate() {
                ids[r * cap + off + j] = id as i64;
                pos[r * cap + off + j] = j as i64;
                seg[r * cap + off + j] = i as i64;
            }
        }
        let shape = [rows as i64, cap as i64];
        let t = |v: &[i64]| Tensor::from_slice(v).view(shape).to_device(device);
        Ok((
            Input {
                ids: t(&ids),
                lengths: fill,
                key_mask: None,
                positions: Some(t(&pos)),
                segments: Some(t(&seg)),
            },
            place,
        ))
    }

    pub fn batch_size(&self) -> usize {
        self.lengths.len()
    }

    pub fn seq_len(&self) -> usize {
        self.ids.size()[1] as usize
    }
}

/// Sequences run in two parts: each row's head once, without autograd, into a frozen
/// KV cache ([`Model::prefill`]), then its tail as often as wanted against that cache.
/// ROME and MEMIT optimise a vector added at the subject's last token; nothing before
/// it depends on that vector, so each step needs only the tails.
pub struct Prefilled {
    cache: Option<KvCache>,
    /// The tails, right-padded, with their positions and a key mask over head + tail:
    /// position `p` of row `r` is tail position `p - split[r]`.
    pub tails: Input,
    /// The tails' input to a layer, once [`Prefilled::start_at`] ran.
    start: Option<(usize, Tensor)>,
}

impl Prefilled {
    /// Runs the tails through the layers below `layer` once, without autograd, so that
    /// later passes start at `layer`: what ROME and MEMIT add inside `layer` cannot reach
    /// those layers, and skipping them saves their share of every optimisation step.
    pub fn start_at(&mut self, model: &Model, layer: usize) -> Result<()> {
        if layer > model.num_layers() {
            return Err(Error::Input(format!(
                "start at layer {layer} of a {}-layer model",
                model.num_layers()
            )));
        }
        self.start = None;
        if layer == 0 {
            return Ok(());
        }
        let _g = tch::no_grad_guard();
        let extras = ForwardExtras {
            cache: self.cache.as_mut(),
            stop_after: Some(layer - 1),
            ..Default::default()
        };
        let h = model.hidden_states(&self.tails, extras)?;
        self.start = Some((layer, h));
        Ok(())
    }

    /// The same batch for some of its rows, in the order of `rows`, without running
    /// anything again (a value optimisation drops the records that have stopped).
    pub fn select_rows(&self, rows: &[usize]) -> Result<Prefilled> {
        let b = self.tails.lengths.len();
        if let Some(&r) = rows.iter().find(|&&r| r >= b) {
            return Err(Error::Input(format!("select row {r} of a {b}-row batch")));
        }
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx = Tensor::from_slice(&idx).to_device(self.tails.ids.device());
        let pick = |t: &Tensor| t.index_select(0, &idx);
        Ok(Prefilled {
            cache: self.cache.as_ref().map(|c| c.select_rows(&idx)),
            tails: Input {
                ids: pick(&self.tails.ids),
                lengths: rows.iter().map(|&r| self.tails.lengths[r]).collect(),
                key_mask: self.tails.key_mask.as_ref().map(pick),
                positions: self.tails.positions.as_ref().map(pick),
                segments: self.tails.segments.as_ref().map(pick),
            },
            start: self.start.as_ref().map(|(l, h)| (*l, pick(h))),
        })
    }

    /// Logits of the tails at `at` (tail coordinates), with hooks; `grad_from` as in
    /// [`ForwardExtras`].
    pub fn forward<'a>(
        &'a mut self,
        model: &Model,
        at: &LogitsAt,
        hooks: Option<&'a mut dyn LayerHooks>,
        grad_from: Option<usize>,
    ) -> Result<Tensor> {
        let extras = ForwardExtras {
            hooks,
            cache: self.cache.as_mut(),
            grad_from,
            resume: self.start.as_ref().map(|(l, h)| (*l, h.shallow_clone())),
            stop_after: None,
            probe: None,
        };
        model.forward_with(&self.tails, at, extras)
    }
}

/// Where to compute logits: the vocabulary projection is most of the cost of a small
/// model, so compute it only where it is needed.
#[derive(Debug, Clone, PartialEq)]
pub enum LogitsAt {
    /// Every position: `[B, T, V]`.
    All,
    /// The last real token of each row: `[B, V]`.
    Last,
    /// Chosen `(row, position)` pairs: `[N, V]`.
    Positions(Vec<(usize, usize)>),
}

/// Optional extras of a forward pass.
#[derive(Default)]
pub struct ForwardExtras<'a> {
    pub hooks: Option<&'a mut dyn LayerHooks>,
    pub cache: Option<&'a mut KvCache>,
    /// Build the autograd graph from this stage on (0 = embedding, `i + 1` = layer `i`)
    /// even where no parameter is trainable: ROME and MEMIT optimise a vector added
    /// inside layer `i`, not a weight.
    pub grad_from: Option<usize>,
    /// Start at layer `i` from its input `[B, T, hidden]` instead of at the embedding
    /// (what [`Prefilled::start_at`] keeps: layers below the one ROME and MEMIT probe do
    /// not depend on the vector they optimise).
    pub resume: Option<(usize, Tensor)>,
    /// Stop after this layer: the returned hidden states are its output (only hooks that
    /// read early layers use it; [`Model::run_hooks`] sets it from [`LayerHooks::last_layer`]).
    pub stop_after: Option<usize>,
    /// Where the model's adapter probes, `[B, T]` bool; `None`: where the logits are
    /// asked for ([`Model::forward_with`]), nowhere in passes without logits.
    pub probe: Option<Tensor>,
}

/// A loaded causal language model.
pub struct Model {
    arch: Box<dyn Architecture>,
    config: ArchConfig,
    pub params: ParamStore,
    /// Where it was loaded from (empty for random models).
    pub source: PathBuf,
    /// How forward passes compute ([`Precision`] as a `u8`; atomic so that `&Model`
    /// can switch it for the length of an edit).
    precision: std::sync::atomic::AtomicU8,
    /// A module beside the weights applied in every forward pass ([`adapter`]).
    adapter: Option<SharedAdapter>,
    /// A bf16 copy of the frozen vocabulary projection while [`Model::frozen_in_bf16`]
    /// holds one.
    lowered_head: std::sync::Mutex<Option<Tensor>>,
}

impl Model {
    /// Builds a model from parameters that match `config`.
    pub fn from_params(
        config: ArchConfig,
        params: ParamStore,
        source: impl AsRef<Path>,
    ) -> Result<Self> {
        Ok(Model {
            arch: config.build(&params)?,
            config,
            params,
            source: source.as_ref().to_path_buf(),
            precision: Default::default(),
            adapter: None,
            lowered_head: Default::default(),
        })
    }

    /// A model with random weights (normal, std `std`) from a seed, for tests.
    pub fn random(
        config: ArchConfig,
        seed: i64,
        std: f64,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        tch::manual_seed(seed);
        let mut params = ParamStore::new();
        for spec in config.param_specs() {
            let opts = (kind, device);
            let t = match spec.init {
                Init::Normal => Tensor::randn(spec.shape.as_slice(), opts) * std,
                Init::Ones => Tensor::ones(spec.shape.as_slice(), opts),
                Init::Zeros => Tensor::zeros(spec.shape.as_slice(), opts),
            };
            params.insert(spec.name, t);
        }
        Self::from_params(config, params, "")
    }

    /// Rebuilds the architecture from the parameter store (after adding or removing
    /// parameters, e.g. LoRA adapters).
    pub fn rebuild(&mut self) -> Result<()> {
        self.arch = self.config.build(&self.params)?;
        Ok(())
    }

    /// A copy of the model on another device and/or in another dtype.
    pub fn to(&self, device: Device, kind: Kind) -> Result<Self> {
        let mut params = ParamStore::new();
        for (name, t) in self.params.iter() {
            params.insert(name, t.detach().to_device(device).to_kind(kind));
        }
        params.lora_scale = self.params.lora_scale;
        Self::from_params(self.config.clone(), params, &self.source)
    }

    pub fn config(&self) -> &ArchConfig {
        &self.config
    }

    pub fn arch_name(&self) -> &'static str {
        self.config.name()
    }

    pub fn num_layers(&self) -> usize {
        self.config.num_layers()
    }

    pub fn max_positions(&self) -> usize {
        self.config.max_positions()
    }

    pub fn device(&self) -> Device {
        self.arch.lm_head().device()
    }

    pub fn kind(&self) -> Kind {
        self.arch.lm_head().kind()
    }

    /// Name of layer `layer`'s MLP output-projection weight.
    pub fn mlp_out_proj(&self, layer: usize) -> String {
        self.config.mlp_out_proj(layer)
    }

    /// The norm applied to layer `layer`'s MLP output before the residual stream, if any
    /// ([`ArchConfig::mlp_out_norm`]).
    pub fn mlp_out_norm(&self, layer: usize) -> Result<Option<nn::RmsNorm>> {
        self.config.mlp_out_norm(&self.params, layer)
    }

    /// The layer a parameter belongs to (`None` for embeddings, final norm, head).
    pub fn layer_of(&self, name: &str) -> Option<usize> {
        let rest = name.strip_prefix(self.config.layer_prefix())?;
        rest.split('.').next()?.parse().ok()
    }

    /// The first forward stage that needs an autograd graph: 0 = embedding, `i + 1` =
    /// layer `i`, `num_layers + 1` = only the final norm and head (or nothing).
    pub fn grad_from(&self) -> usize {
        let n = self.num_layers();
        let mut first = n + 1;
        for (name, t) in self.params.iter() {
            if t.requires_grad() {
                let stage = match self.layer_of(name) {
                    Some(l) => l + 1,
                    None if self.config.is_head_param(name) => n + 1,
                    None => 0,
                };
                first = first.min(stage);
            }
        }
        first
    }

    /// How forward passes compute.
    pub fn precision(&self) -> Precision {
        match self.precision.load(std::sync::atomic::Ordering::Relaxed) {
            0 => Precision::F32,
            _ => Precision::Bf16Mixed,
        }
    }

    /// Switches how forward passes compute; returns what it was. Editors set their
    /// config's precision for the length of an edit and put the old one back.
    pub fn set_precision(&self, p: Precision) -> Precision {
        let old = self.precision();
        let v = match p.resolve(self.device()).0 {
            Precision::Bf16Mixed => 1,
            _ => 0,
        };
        self.precision
            .store(v, std::sync::atomic::Ordering::Relaxed);
        old
    }

    /// Computes in `p` (resolved against the device) until the guard is dropped, then as
    /// before.
    pub fn precision_for(&self, p: Precision) -> PrecisionGuard<'_> {
        PrecisionGuard {
            model: self,
            before: self.set_precision(p),
        }
    }

    /// Holds the frozen f32 weight matrices of the layers in bf16 until the guard is
    /// dropped, when a bf16-mixed pass would cast them anyway: autocast caches its casts
    /// of trained weights only, so every forward pass of a training run would cast every
    /// frozen matrix again (a tenth of a bf16 step on SmolLM2). Products compute exactly
    /// as under autocast alone; the f32 originals come back untouched. A frozen
    /// vocabulary projection gets a bf16 copy beside it, which logits use while the guard
    /// lives: for the few target positions of a step its product reads the whole matrix,
    /// and Gemma 3's 262k-token head in f32 is a third of a bf16 step. A no-op in f32.
    pub fn frozen_in_bf16(&self) -> FrozenBf16<'_> {
        let mut held = Vec::new();
        if self.precision() == Precision::Bf16Mixed {
            let _g = tch::no_grad_guard();
            let head = self.arch.lm_head();
            if head.kind() == Kind::Float && !head.requires_grad() {
                *self.lowered_head.lock().expect("lowered head") =
                    Some(head.to_kind(Kind::BFloat16));
            }
            for (name, t) in self.params.iter() {
                if t.dim() == 2
                    && t.kind() == Kind::Float
                    && !t.requires_grad()
                    && self.layer_of(name).is_some()
                {
                    // `detach` keeps the f32 storage under a tensor of its own; `set_data`
                    // swaps what the store's (shared) tensor holds.
                    let original = t.detach();
                    let mut t = t.shallow_clone();
                    t.set_data(&original.to_kind(Kind::BFloat16));
                    held.push((t, original));
                }
            }
        }
        FrozenBf16 { held, model: self }
    }

    /// Installs `adapter` (or removes the one there), returning the one it replaces.
    pub fn set_adapter(&mut self, adapter: Option<SharedAdapter>) -> Option<SharedAdapter> {
        if let Some(a) = &adapter {
            assert!(
                a.layer() < self.num_layers(),
                "adapter at layer {} of {}",
                a.layer(),
                self.num_layers()
            );
        }
        std::mem::replace(&mut self.adapter, adapter)
    }

    /// The model's adapter when it is a `T` (an editor adding to its own), `None` when
    /// it carries none; an error when it carries another method's (`method` names the
    /// one asking).
    pub fn own_adapter<T: 'static>(&self, method: &str) -> Result<Option<&T>> {
        match &self.adapter {
            None => Ok(None),
            Some(a) => a.as_any().downcast_ref::<T>().map(Some).ok_or_else(|| {
                Error::Input(format!(
                    "the model carries another method's adapter; {method} adds to its own only"
                ))
            }),
        }
    }

    /// The adapter every forward pass applies, if any.
    pub fn adapter(&self) -> Option<&SharedAdapter> {
        self.adapter.as_ref()
    }

    /// Logits at the chosen positions.
    pub fn forward(&self, input: &Input, at: &LogitsAt) -> Result<Tensor> {
        self.forward_with(input, at, ForwardExtras::default())
    }

    /// Logits at the chosen positions, with hooks and/or a KV cache. An adapter that
    /// routes whole sequences ([`adapter::SequenceRouter`]) is asked first.
    pub fn forward_with(
        &self,
        input: &Input,
        at: &LogitsAt,
        extras: ForwardExtras,
    ) -> Result<Tensor> {
        if let Some(adapter) = self.adapter.clone()
            && let Some(router) = adapter.router()
        {
            if extras.cache.is_some() || extras.resume.is_some() {
                return Err(Error::Input(
                    "an adapter that routes whole sequences (SERAC) needs them whole: no KV cache, no resumed pass".into(),
                ));
            }
            return self.forward_routed(router, input, at, extras);
        }
        self.forward_plain(input, at, extras)
    }

    /// What identifies this model for an editor trained on it: every parameter's name
    /// and shape and the values of the first layer's parameters, but for `skip` (the
    /// matrices an editor changes, so that an edited model still matches).
    pub fn fingerprint(&self, skip: &[&str]) -> Result<String> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (name, t) in self.params.iter() {
            name.hash(&mut h);
            t.size().hash(&mut h);
            if self.layer_of(name) == Some(0) && !skip.contains(&name) {
                self.params.value_hash(name)?.hash(&mut h);
            }
        }
        Ok(format!("{:016x}", h.finish()))
    }

    /// [`Model::forward_with`] through `router`: each sequence (a row, or a segment of a
    /// packed row) up to its first read is a query; the reads of a sequence the router
    /// puts a context before are computed on context + sequence instead.
    fn forward_routed(
        &self,
        router: &dyn adapter::SequenceRouter,
        input: &Input,
        at: &LogitsAt,
        extras: ForwardExtras,
    ) -> Result<Tensor> {
        let (b, t) = (input.batch_size(), input.seq_len());
        let reads: Vec<(usize, usize)> = match at {
            LogitsAt::All => (0..b).flat_map(|r| (0..t).map(move |p| (r, p))).collect(),
            LogitsAt::Last => input
                .lengths
                .iter()
                .enumerate()
                .map(|(r, &l)| (r, l - 1))
                .collect(),
            LogitsAt::Positions(p) => p.clone(),
        };
        let cpu = |x: &Tensor| x.flatten(0, -1).to_device(Device::Cpu);
        let ids = Vec::<i64>::try_from(cpu(&input.ids))?;
        let seg = match &input.segments {
            Some(s) => Some(Vec::<i64>::try_from(cpu(s))?),
            None => None,
        };
        let real = match &input.key_mask {
            Some(m) => Some(Vec::<bool>::try_from(cpu(&m
                .narrow(1, m.size()[1] - t as i64, t as i64)
                .to_kind(Kind::Bool)))?),
            None => None,
        };
        let group_of = |r: usize, p: usize| -> Option<i64> {
            let real = match &real {
                Some(m) => m[r * t + p],
                None => p < input.lengths[r],
            };
            let g = seg.as_ref().map_or(0, |s| s[r * t + p]);
            (real && g >= 0).then_some(g)
        };
        // Each sequence's positions and its first read.
        let mut groups: Vec<((usize, i64), usize)> = Vec::new();
        for &(r, p) in &reads {
            if r >= b || p >= t {
                return Err(Error::Input(format!(
                    "logit position ({r}, {p}) outside a {b}×{t} batch"
                )));
            }
            if let Some(g) = group_of(r, p) {
                match groups.iter_mut().find(|(k, _)| *k == (r, g)) {
                    Some((_, first)) => *first = (*first).min(p),
                    None => groups.push(((r, g), p)),
                }
            }
        }
        let positions = |(r, g): (usize, i64)| -> Vec<usize> {
            (0..t).filter(|&p| group_of(r, p) == Some(g)).collect()
        };
        let queries: Vec<Vec<u32>> = groups
            .iter()
            .map(|&(k, first)| {
                positions(k)
                    .into_iter()
                    .filter(|&p| p <= first)
                    .map(|p| ids[k.0 * t + p] as u32)
                    .collect()
            })
            .collect();
        let contexts = router.contexts(self, &queries)?;
        let grad_from = extras.grad_from;
        let base = self.forward_plain(input, at, extras)?;
        if contexts.iter().all(Option::is_none) {
            return Ok(base);
        }
        // The routed sequences with their contexts, and where each of their reads lands.
        let mut seqs: Vec<Vec<u32>> = Vec::new();
        let mut slot = std::collections::HashMap::new();
        for (&(k, _), ctx) in groups.iter().zip(&contexts) {
            if let Some(route) = ctx {
                let all = positions(k);
                let seq: Vec<u32> = all.iter().map(|&p| ids[k.0 * t + p] as u32).collect();
                slot.insert(k, (seqs.len(), all, route.clone()));
                seqs.push(route.continued(&seq));
            }
        }
        let (mut rows, mut new_reads) = (Vec::new(), Vec::new());
        for (i, &(r, p)) in reads.iter().enumerate() {
            let Some(g) = group_of(r, p) else { continue };
            if let Some((row, all, route)) = slot.get(&(r, g))
                && let Some(j) = all.iter().position(|&q| q == p)
                && let Some(j) = route.position(j)
            {
                rows.push(i as i64);
                new_reads.push((*row, j));
            }
        }
        if seqs.is_empty() || rows.is_empty() {
            return Ok(base);
        }
        let routed = Input::right_padded(&seqs, self.device())?;
        let extras = ForwardExtras {
            grad_from,
            ..Default::default()
        };
        let logits = self.forward_plain(&routed, &LogitsAt::Positions(new_reads), extras)?;
        let shape = base.size();
        let v = shape[shape.len() - 1];
        let rows = Tensor::from_slice(&rows).to_device(base.device());
        Ok(base
            .reshape([-1, v])
            .index_copy(0, &rows, &logits.to_kind(base.kind()))
            .reshape(shape))
    }

    /// [`Model::forward_with`] without routing.
    fn forward_plain(&self, input: &Input, at: &LogitsAt, extras: ForwardExtras) -> Result<Tensor> {
        let (b, t) = (input.batch_size(), input.seq_len());
        if extras.stop_after.is_some() {
            return Err(Error::Input(
                "logits need every layer: stop_after is for hooks only".into(),
            ));
        }
        let grad_from = extras
            .grad_from
            .map_or(self.grad_from(), |g| g.min(self.grad_from()));
        let mut extras = extras;
        if self.adapter.is_some() && extras.probe.is_none() {
            let device = self.device();
            extras.probe = Some(match at {
                LogitsAt::All => adapter::probe_mask(b, t, None, device),
                LogitsAt::Last => {
                    let last: Vec<(usize, usize)> = input
                        .lengths
                        .iter()
                        .enumerate()
                        .map(|(r, &l)| (r, l - 1))
                        .collect();
                    adapter::probe_mask(b, t, Some(&last), device)
                }
                LogitsAt::Positions(pos) => {
                    // Each row's first read is probed; packed rows hold several
                    // sequences, and each of those has its own.
                    let seg = match &input.segments {
                        Some(s) => {
                            Vec::<i64>::try_from(s.flatten(0, -1).to_device(tch::Device::Cpu))?
                        }
                        None => vec![0; b * t],
                    };
                    let mut first: std::collections::HashMap<(usize, i64), usize> =
                        std::collections::HashMap::new();
                    for &(r, p) in pos {
                        if r < b && p < t {
                            let e = first.entry((r, seg[r * t + p])).or_insert(p);
                            *e = (*e).min(p);
                        }
                    }
                    let firsts: Vec<(usize, usize)> =
                        first.into_iter().map(|((r, _), p)| (r, p)).collect();
                    adapter::probe_mask(b, t, Some(&firsts), device)
                }
            });
        }
        let h = self.hidden_states(input, extras)?;
        let d = h.size()[2];
        let selected = match at {
            LogitsAt::All => h,
            LogitsAt::Last => {
                let idx: Vec<i64> = input
                    .lengths
                    .iter()
                    .enumerate()
                    .map(|(r, &l)| (r * t + l - 1) as i64)
                    .collect();
                h.reshape([-1, d])
                    .index_select(0, &Tensor::from_slice(&idx).to_device(h.device()))
            }
            LogitsAt::Positions(pos) => {
                let mut idx = Vec::with_capacity(pos.len());
                for &(r, p) in pos {
                    if r >= b || p >= t {
                        return Err(Error::Input(format!(
                            "logit position ({r}, {p}) outside a {b}×{t} batch"
                        )));
                    }
                    idx.push((r * t + p) as i64);
                }
                h.reshape([-1, d])
                    .index_select(0, &Tensor::from_slice(&idx).to_device(h.device()))
            }
        };
        // The final norm is per position, so it runs only where logits are wanted, in the
        // head's dtype (outside autocast). The projection uses the bf16 copy a bf16-mixed
        // training run holds (logits rounded to bf16, as autocast would give them), else
        // the weights as they are.
        let _g = (grad_from > self.num_layers() + 1).then(tch::no_grad_guard);
        let selected = selected.to_kind(self.arch.lm_head().kind());
        let normed = self.arch.final_norm(&selected);
        let lowered = match self.precision() {
            Precision::Bf16Mixed => self
                .lowered_head
                .lock()
                .ok()
                .and_then(|h| h.as_ref().map(Tensor::shallow_clone)),
            _ => None,
        };
        Ok(match lowered {
            Some(w) => {
                let bias = self.arch.lm_head_bias().map(|b| b.to_kind(Kind::BFloat16));
                normed
                    .to_kind(Kind::BFloat16)
                    .linear(&w, bias.as_ref())
                    .to_kind(normed.kind())
            }
            None => normed.linear(self.arch.lm_head(), self.arch.lm_head_bias()),
        })
    }

    /// Runs the layers only for what `hooks` record (keys, values); no logits.
    pub fn run_hooks(&self, input: &Input, hooks: &mut dyn LayerHooks) -> Result<()> {
        // Layers after the last one the hooks read cannot change what they see.
        let stop_after = hooks.last_layer();
        let extras = ForwardExtras {
            hooks: Some(hooks),
            stop_after,
            ..Default::default()
        };
        self.hidden_states(input, extras).map(drop)
    }

    /// Hidden states `[B, T, D]` before the final norm.
    pub fn hidden_states(&self, input: &Input, extras: ForwardExtras) -> Result<Tensor> {
        let past = extras.cache.as_ref().map_or(0, |c| c.len());
        let has_cache = extras.cache.is_some();
        let t = input.seq_len();
        if past + t > self.max_positions() {
            return Err(Error::ContextOverflow {
                len: past + t,
                max: self.max_positions(),
            });
        }
        let device = self.device();
        let positions = match &input.positions {
            Some(p) => p.shallow_clone(),
            None => Tensor::arange_start(past as i64, (past + t) as i64, (Kind::Int64, device))
                .unsqueeze(0)
                .expand([input.batch_size() as i64, t as i64], false),
        };
        if input.segments.is_some() && has_cache {
            return Err(Error::Input("packed inputs cannot use a KV cache".into()));
        }
        let ForwardExtras {
            hooks,
            cache,
            grad_from,
            resume,
            stop_after,
            probe,
        } = extras;
        if let Some((layer, h)) = &resume
            && (*layer > self.num_layers()
                || h.size()[..2] != [input.batch_size() as i64, t as i64])
        {
            return Err(Error::Input(format!(
                "resume at layer {layer} of {} with hidden states {:?} for a [{}, {t}] input",
                self.num_layers(),
                h.size(),
                input.batch_size()
            )));
        }
        let grad_from = grad_from.map_or(self.grad_from(), |g| g.min(self.grad_from()));
        let masks = nn::MaskInputs {
            key_mask: input.key_mask.as_ref().map(Tensor::shallow_clone),
            segments: input.segments.as_ref().map(Tensor::shallow_clone),
        };
        let mut ctx = Ctx::new(positions, past, masks, cache, hooks, grad_from);
        ctx.resume = resume;
        ctx.stop_after = stop_after;
        if let (Some(a), Some(p)) = (&self.adapter, probe) {
            ctx.adapter = Some((a.clone(), p));
        }
        // `precision()` is resolved: never `Auto`.
        let _autocast = match self.precision() {
            Precision::Bf16Mixed => Some(Autocast::bf16(device)?),
            Precision::F32 | Precision::Auto => None,
        };
        let h = self.arch.hidden_states(&input.ids, &mut ctx);
        if let Some(c) = ctx.cache {
            c.advance(t);
        }
        Ok(h)
    }
}

impl Model {
    /// Runs the first `split[r]` tokens of each row of `seqs` once, without autograd,
    /// and returns the rest ready to run against them ([`Prefilled`]). Every tail must
    /// keep at least one token. Heads are left-padded, so that index distances equal
    /// position distances (what sliding-window masks measure).
    pub fn prefill<S: AsRef<[u32]>>(&self, seqs: &[S], split: &[usize]) -> Result<Prefilled> {
        let b = seqs.len();
        if b == 0 || split.len() != b {
            return Err(Error::Input(format!(
                "prefill: {b} sequences and {} split points",
                split.len()
            )));
        }
        let lens: Vec<usize> = seqs.iter().map(|s| s.as_ref().len()).collect();
        if let Some(r) = (0..b).find(|&r| split[r] >= lens[r]) {
            return Err(Error::Input(format!(
                "prefill: row {r} splits at {} but has {} tokens",
                split[r], lens[r]
            )));
        }
        let device = self.device();
        let p = split.iter().copied().max().unwrap_or(0);
        let t = (0..b).map(|r| lens[r] - split[r]).max().unwrap_or(0);
        let tensor = |v: Vec<i64>, w: usize| Tensor::from_slice(&v).view([b as i64, w as i64]);
        let (mut ids, mut pos) = (vec![0i64; b * t], vec![0i64; b * t]);
        let mut head_ids = vec![0i64; b * p];
        let mut head_pos = vec![0i64; b * p];
        let mut mask = vec![true; b * (p + t)];
        for (r, s) in seqs.iter().enumerate() {
            let s = s.as_ref();
            let pad = p - split[r];
            for j in 0..p {
                let real = j >= pad;
                mask[r * (p + t) + j] = real;
                if real {
                    head_ids[r * p + j] = s[j - pad] as i64;
                    head_pos[r * p + j] = (j - pad) as i64;
                }
            }
            for j in 0..t {
                pos[r * t + j] = (split[r] + j) as i64;
                if let Some(&id) = s.get(split[r] + j) {
                    ids[r * t + j] = id as i64;
                }
            }
        }
        let key_mask = tensor(mask.iter().map(|&m| m as i64).collect(), p + t)
            .to_kind(Kind::Bool)
            .to_device(device);
        let cache = if p == 0 {
            None
        } else {
            let heads = Input {
                ids: tensor(head_ids, p).to_device(device),
                lengths: vec![p; b],
                key_mask: Some(key_mask.narrow(1, 0, p as i64)),
                positions: Some(tensor(head_pos, p).to_device(device)),
                segments: None,
            };
            let mut cache = KvCache::new();
            let _g = tch::no_grad_guard();
            let extras = ForwardExtras {
                cache: Some(&mut cache),
                ..Default::default()
            };
            self.hidden_states(&heads, extras).map(drop)?;
            cache.freeze();
            Some(cache)
        };
        let tails = Input {
            ids: tensor(ids, t).to_device(device),
            lengths: (0..b).map(|r| lens[r] - split[r]).collect(),
            key_mask: (p > 0).then_some(key_mask),
            positions: Some(tensor(pos, t).to_device(device)),
            segments: None,
        };
        Ok(Prefilled {
            cache,
            tails,
            start: None,
        })
    }

    /// Log-probabilities (f64, `[vocab]`) of the token after `ids`, computed from the
    /// model's logits in double precision.
    pub fn next_token_logprobs(&self, ids: &[u32]) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let input = Input::right_padded(&[ids], self.device())?;
        let logits = self.forward(&input, &LogitsAt::Last)?;
        Ok(logits
            .get(0)
            .to_kind(Kind::Double)
            .log_softmax(-1, Kind::Double))
    }
}

/// Puts the f32 weights [`Model::frozen_in_bf16`] lowered back when dropped.
pub struct FrozenBf16<'a> {
    held: Vec<(Tensor, Tensor)>,
    model: &'a Model,
}

impl Drop for FrozenBf16<'_> {
    fn drop(&mut self) {
        for (t, original) in &mut self.held {
            t.set_data(original);
        }
        if let Ok(mut h) = self.model.lowered_head.lock() {
            *h = None;
        }
    }
}

/// Puts a model's precision back when dropped ([`Model::precision_for`]).
pub struct PrecisionGuard<'a> {
    model: &'a Model,
    before: Precision,
}

impl Drop for PrecisionGuard<'_> {
    fn drop(&mut self) {
        self.model.set_precision(self.before);
    }
}

//! Gemma 3 (text): a decoder with four norms per block and local/global attention.
//!
//! Embeddings are scaled by `√hidden_size`. Each block: RMSNorm → attention (per-head
//! RMSNorm on queries and keys before rotary embeddings, scale `query_pre_attn_scalar^-½`)
//! → post-attention RMSNorm → residual, then pre-feedforward RMSNorm → GeGLU MLP
//! (`down(gelu_tanh(gate(x)) · up(x))`) → post-feedforward RMSNorm → residual. Most
//! layers attend within a sliding window with rotary base `rope_local_base_freq`; every
//! `sliding_window_pattern`-th layer is global with base `rope_theta`. Norm weights are
//! offsets from one, as in the Hugging Face checkpoints (GGUF stores `1 + w`; the loader
//! subtracts the one).

use serde_json::Value as Json;
use tch::Tensor;

use super::config::{JsonConfig, rope_theta};
use super::nn::{
    Activation, Ctx, GatedMlp, Linear, RmsNorm, Rope, apply_rope, attention, merge_heads,
    shared_matmul_input, split_heads,
};
use super::params::ParamStore;
use super::{Architecture, ParamSpec};
use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;

/// Hyper-parameters under their Hugging Face `config.json` names.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    /// Rotary base of the global layers.
    pub rope_theta: f64,
    /// Rotary base of the sliding-window layers.
    pub rope_local_base_freq: f64,
    pub sliding_window: usize,
    /// Per layer: true for sliding-window attention, false for global.
    pub layer_types: Vec<bool>,
    pub query_pre_attn_scalar: f64,
    pub max_position_embeddings: i64,
    pub tie_word_embeddings: bool,
}

/// Gemma 3's layer pattern when a checkpoint does not list it: five local, one global.
const SLIDING_WINDOW_PATTERN: i64 = 6;

fn default_layer_types(n: i64, pattern: i64) -> Vec<bool> {
    (0..n).map(|i| (i + 1) % pattern != 0).collect()
}

impl Config {
    pub fn from_hf(j: &Json) -> Result<Self> {
        let c = JsonConfig(j);
        c.check_rope_scaling()?;
        for cap in ["final_logit_softcapping", "attn_logit_softcapping"] {
            if c.float_or(cap, 0.0) != 0.0 {
                return Err(Error::Config(format!(
                    "config.json: {cap} is not supported"
                )));
            }
        }
        let n = c.int("num_hidden_layers")?;
        let layer_types = match j.get("layer_types").and_then(Json::as_array) {
            Some(types) => types
                .iter()
                .map(|t| t.as_str() == Some("sliding_attention"))
                .collect(),
            None => default_layer_types(
                n,
                c.int_or("sliding_window_pattern", SLIDING_WINDOW_PATTERN),
            ),
        };
        let heads = c.int("num_attention_heads")?;
        let head_dim = c.int_or("head_dim", 256);
        Ok(Config {
            vocab_size: c.int("vocab_size")?,
            hidden_size: c.int("hidden_size")?,
            intermediate_size: c.int("intermediate_size")?,
            num_hidden_layers: n,
            num_attention_heads: heads,
            num_key_value_heads: c.int_or("num_key_value_heads", heads),
            head_dim,
            rms_norm_eps: c.float_or("rms_norm_eps", 1e-6),
            rope_theta: rope_theta(j, Some("full_attention"), 1_000_000.0),
            rope_local_base_freq: j
                .get("rope_local_base_freq")
                .and_then(Json::as_f64)
                .unwrap_or_else(|| rope_theta(j, Some("sliding_attention"), 10_000.0)),
            sliding_window: c.int_or("sliding_window", 512) as usize,
            layer_types,
            query_pre_attn_scalar: c.float_or("query_pre_attn_scalar", head_dim as f64),
            max_position_embeddings: c.int_or("max_position_embeddings", 32768),
            tie_word_embeddings: c.bool_or("tie_word_embeddings", true),
        })
    }

    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let key = |k: &str| format!("gemma3.{k}");
        let n = g.get_u64(&key("block_count"))? as i64;
        let head_dim = g
            .get_u64(&key("attention.key_length"))
            .map_or(256, |v| v as i64);
        let heads = g.get_u64(&key("attention.head_count"))? as i64;
        if let Some(t) = g.get(&key("rope.scaling.type")).and_then(|v| v.as_str())
            && t != "none"
        {
            return Err(Error::Config(format!(
                "rope scaling '{t}' is not supported"
            )));
        }
        Ok(Config {
            vocab_size: g
                .tensor_info("token_embd.weight")
                .map_or(0, |t| t.dims[1] as i64),
            hidden_size: g.get_u64(&key("embedding_length"))? as i64,
            intermediate_size: g.get_u64(&key("feed_forward_length"))? as i64,
            num_hidden_layers: n,
            num_attention_heads: heads,
            num_key_value_heads: g
                .get_u64(&key("attention.head_count_kv"))
                .map_or(heads, |v| v as i64),
            head_dim,
            rms_norm_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: g.get_f64(&key("rope.freq_base")).unwrap_or(1_000_000.0),
            // Not in the metadata; llama.cpp hard-codes it too.
            rope_local_base_freq: 10_000.0,
            sliding_window: g
                .get_u64(&key("attention.sliding_window"))
                .map_or(512, |v| v as usize),
            layer_types: default_layer_types(n, SLIDING_WINDOW_PATTERN),
            query_pre_attn_scalar: head_dim as f64,
            max_position_embeddings: g
                .get_u64(&key("context_length"))
                .map_or(32768, |v| v as i64),
            tie_word_embeddings: g.tensor_info("output.weight").is_none(),
        })
    }

    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let (d, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (self.num_attention_heads * hd, self.num_key_value_heads * hd);
        let mut specs = vec![ParamSpec::new(
            "model.embed_tokens.weight",
            [self.vocab_size, d],
        )];
        for l in 0..self.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            specs.push(ParamSpec::new(p("input_layernorm.weight"), [d]).zeros());
            specs.push(ParamSpec::new(p("self_attn.q_proj.weight"), [q, d]));
            specs.push(ParamSpec::new(p("self_attn.k_proj.weight"), [kv, d]));
            specs.push(ParamSpec::new(p("self_attn.v_proj.weight"), [kv, d]));
            specs.push(ParamSpec::new(p("self_attn.o_proj.weight"), [d, q]));
            specs.push(ParamSpec::new(p("self_attn.q_norm.weight"), [hd]).zeros());
            specs.push(ParamSpec::new(p("self_attn.k_norm.weight"), [hd]).zeros());
            specs.push(ParamSpec::new(p("post_attention_layernorm.weight"), [d]).zeros());
            specs.push(ParamSpec::new(p("pre_feedforward_layernorm.weight"), [d]).zeros());
            specs.push(ParamSpec::new(p("post_feedforward_layernorm.weight"), [d]).zeros());
            specs.push(ParamSpec::new(p("mlp.gate_proj.weight"), [i, d]));
            specs.push(ParamSpec::new(p("mlp.up_proj.weight"), [i, d]));
            specs.push(ParamSpec::new(p("mlp.down_proj.weight"), [d, i]));
        }
        specs.push(ParamSpec::new("model.norm.weight", [d]).zeros());
        if !self.tie_word_embeddings {
            specs.push(ParamSpec::new("lm_head.weight", [self.vocab_size, d]));
        }
        specs
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    scale: f64,
}

impl Attention {
    fn load(p: &ParamStore, prefix: &str, c: &Config) -> Result<Self> {
        let (d, hd) = (c.hidden_size, c.head_dim);
        let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        Ok(Attention {
            q_proj: Linear::load(p, &format!("{prefix}.q_proj"), d, q, false)?,
            k_proj: Linear::load(p, &format!("{prefix}.k_proj"), d, kv, false)?,
            v_proj: Linear::load(p, &format!("{prefix}.v_proj"), d, kv, false)?,
            o_proj: Linear::load(p, &format!("{prefix}.o_proj"), q, d, false)?,
            q_norm: RmsNorm::load(
                p,
                &format!("{prefix}.q_norm.weight"),
                hd,
                c.rms_norm_eps,
                true,
            )?,
            k_norm: RmsNorm::load(
                p,
                &format!("{prefix}.k_norm.weight"),
                hd,
                c.rms_norm_eps,
                true,
            )?,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: hd,
            scale: c.query_pre_attn_scalar.powf(-0.5),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        cos_sin: &(Tensor, Tensor),
        window: Option<usize>,
        ctx: &mut Ctx,
    ) -> Tensor {
        let x = &shared_matmul_input(x);
        let q = self.q_norm.forward(&split_heads(
            &self.q_proj.forward(x),
            self.heads,
            self.head_dim,
        ));
        let k = self.k_norm.forward(&split_heads(
            &self.k_proj.forward(x),
            self.kv_heads,
            self.head_dim,
        ));
        let v = split_heads(&self.v_proj.forward(x), self.kv_heads, self.head_dim);
        let (cos, sin) = cos_sin;
        let (q, k) = (apply_rope(&q, cos, sin), apply_rope(&k, cos, sin));
        let (k, v) = ctx.cached_kv(layer, k, v);
        let mask = ctx.mask(window);
        self.o_proj
            .forward(&merge_heads(&attention(&q, &k, &v, &mask, self.scale)))
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    mlp: GatedMlp,
    post_feedforward_layernorm: RmsNorm,
    sliding: bool,
}

impl Block {
    fn load(p: &ParamStore, l: i64, c: &Config) -> Result<Self> {
        let prefix = format!("model.layers.{l}");
        let norm = |n: &str| {
            RmsNorm::load(
                p,
                &format!("{prefix}.{n}.weight"),
                c.hidden_size,
                c.rms_norm_eps,
                true,
            )
        };
        Ok(Block {
            input_layernorm: norm("input_layernorm")?,
            self_attn: Attention::load(p, &format!("{prefix}.self_attn"), c)?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            pre_feedforward_layernorm: norm("pre_feedforward_layernorm")?,
            mlp: GatedMlp::load(
                p,
                &format!("{prefix}.mlp"),
                c.hidden_size,
                c.intermediate_size,
                Activation::GeluTanh,
                false,
            )?,
            post_feedforward_layernorm: norm("post_feedforward_layernorm")?,
            sliding: c.layer_types.get(l as usize).copied().unwrap_or(true),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        cos_sin: &(Tensor, Tensor),
        window: Option<usize>,
        ctx: &mut Ctx,
    ) -> Tensor {
        let a = self.self_attn.forward(
            &self.input_layernorm.forward(x),
            layer,
            cos_sin,
            window,
            ctx,
        );
        let h = x + self.post_attention_layernorm.forward(&a);
        let m = self
            .mlp
            .forward(&self.pre_feedforward_layernorm.forward(&h), layer, ctx);
        &h + self.post_feedforward_layernorm.forward(&m)
    }
}

/// A Gemma 3 causal language model.
pub struct Model {
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    rope_global: Rope,
    rope_local: Rope,
    config: Config,
}

impl Model {
    pub fn load(p: &ParamStore, config: Config) -> Result<Self> {
        let c = &config;
        if c.layer_types.len() != c.num_hidden_layers as usize {
            return Err(Error::Config(format!(
                "layer_types lists {} layers, num_hidden_layers is {}",
                c.layer_types.len(),
                c.num_hidden_layers
            )));
        }
        let embed_tokens =
            p.get_shaped("model.embed_tokens.weight", &[c.vocab_size, c.hidden_size])?;
        let lm_head = if c.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            p.get_shaped("lm_head.weight", &[c.vocab_size, c.hidden_size])?
        };
        let device = embed_tokens.device();
        Ok(Model {
            layers: (0..c.num_hidden_layers)
                .map(|l| Block::load(p, l, c))
                .collect::<Result<_>>()?,
            norm: RmsNorm::load(p, "model.norm.weight", c.hidden_size, c.rms_norm_eps, true)?,
            rope_global: Rope::new(c.head_dim, c.rope_theta, device),
            rope_local: Rope::new(c.head_dim, c.rope_local_base_freq, device),
            embed_tokens,
            lm_head,
            config,
        })
    }
}

impl Architecture for Model {
    fn hidden_states(&self, ids: &Tensor, ctx: &mut Ctx) -> Tensor {
        let (start, mut h) = ctx.start(|| {
            let e = Tensor::embedding(&self.embed_tokens, ids, -1, false, false);
            // transformers multiplies by the scale rounded to the activation dtype.
            let scale = Tensor::from((self.config.hidden_size as f64).sqrt())
                .to_kind(e.kind())
                .to_device(e.device());
            e * scale
        });
        let kind = h.kind();
        let global = self.rope_global.cos_sin(&ctx.positions, kind);
        let local = self.rope_local.cos_sin(&ctx.positions, kind);
        let end = ctx.end(self.layers.len());
        for (i, block) in self.layers.iter().enumerate().take(end).skip(start) {
            let _g = ctx.layer_guard(i);
            let (cos_sin, window) = if block.sliding {
                (&local, Some(self.config.sliding_window))
            } else {
                (&global, None)
            };
            h = block.forward(&h, i, cos_sin, window, ctx);
            h = ctx.hook_block(i, h);
        }
        h
    }

    fn final_norm(&self, h: &Tensor) -> Tensor {
        self.norm.forward(h)
    }

    fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }
}

//! GPT-NeoX (Pythia, MEMIT's GPT-NeoX-20B): LayerNorm blocks with a parallel residual
//! (`x + attn(ln₁(x)) + mlp(ln₂(x))`, or sequential when `use_parallel_residual` is
//! false), a fused `query_key_value` projection laid out per head (`[q k v]` of each
//! head in turn), rotary embeddings on the first `partial_rotary_factor` (`rotary_pct`)
//! of each head in the rotate-half layout, biased projections, a GELU MLP and an untied
//! `embed_out` head.

use serde_json::Value as Json;
use tch::Tensor;

use super::config::{JsonConfig, rope_theta};
use super::nn::{
    Ctx, GeluMlp, LayerNorm, Linear, Rope, apply_partial_rope, attention, merge_heads, split_heads,
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
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub max_position_embeddings: i64,
    pub layer_norm_eps: f64,
    /// `rotary_emb_base`, or `rope_theta` in transformers 5's `rope_parameters`.
    pub rope_theta: f64,
    /// Rotated dimensions of each head: `int(head_dim · partial_rotary_factor)`.
    pub rotary_ndims: i64,
    pub use_parallel_residual: bool,
    pub attention_bias: bool,
    /// `gelu` (exact) or the tanh approximation.
    pub gelu_tanh: bool,
}

impl Config {
    pub fn from_hf(j: &Json) -> Result<Self> {
        let c = JsonConfig(j);
        let gelu_tanh = match c.str_or("hidden_act", "gelu") {
            "gelu" => false,
            "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" => true,
            other => {
                return Err(Error::Config(format!(
                    "activation '{other}' is not supported for gpt_neox"
                )));
            }
        };
        if c.bool_or("tie_word_embeddings", false) {
            return Err(Error::Config(
                "gpt_neox with tied word embeddings is not supported".into(),
            ));
        }
        c.check_rope_scaling()?;
        let (d, heads) = (c.int("hidden_size")?, c.int("num_attention_heads")?);
        if heads == 0 || d % heads != 0 {
            return Err(Error::Config(format!(
                "hidden_size {d} is not a multiple of num_attention_heads {heads}"
            )));
        }
        let params = j.get("rope_parameters");
        let factor = params
            .and_then(|p| p.get("partial_rotary_factor"))
            .or_else(|| j.get("rotary_pct"))
            .and_then(Json::as_f64)
            .unwrap_or(0.25);
        let head_dim = d / heads;
        let rotary_ndims = (head_dim as f64 * factor) as i64;
        if rotary_ndims <= 0 || rotary_ndims % 2 != 0 {
            return Err(Error::Config(format!(
                "partial rotary factor {factor} gives {rotary_ndims} rotated dimensions of \
                 {head_dim}; an even, positive number is needed"
            )));
        }
        let base = j
            .get("rotary_emb_base")
            .and_then(Json::as_f64)
            .unwrap_or(10_000.0);
        Ok(Config {
            vocab_size: c.int("vocab_size")?,
            hidden_size: d,
            num_hidden_layers: c.int("num_hidden_layers")?,
            num_attention_heads: heads,
            intermediate_size: c.int_or("intermediate_size", 4 * d),
            max_position_embeddings: c.int_or("max_position_embeddings", 2048),
            layer_norm_eps: c.float_or("layer_norm_eps", 1e-5),
            rope_theta: rope_theta(j, None, base),
            rotary_ndims,
            use_parallel_residual: c.bool_or("use_parallel_residual", true),
            attention_bias: c.bool_or("attention_bias", true),
            gelu_tanh,
        })
    }

    /// From llama.cpp's `gptneox` metadata. GGUF does not say which GELU the model
    /// uses; Pythia's (exact) is taken. llama.cpp stores the fused QKV as all heads' q,
    /// then k, then v; the loader puts it back per head.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let key = |k: &str| format!("gptneox.{k}");
        let d = g.get_u64(&key("embedding_length"))? as i64;
        let heads = g.get_u64(&key("attention.head_count"))? as i64;
        if heads == 0 || d % heads != 0 {
            return Err(Error::Config(format!(
                "hidden_size {d} is not a multiple of num_attention_heads {heads}"
            )));
        }
        let head_dim = d / heads;
        Ok(Config {
            vocab_size: g
                .tensor_info("token_embd.weight")
                .map_or(0, |t| t.dims[1] as i64),
            hidden_size: d,
            num_hidden_layers: g.get_u64(&key("block_count"))? as i64,
            num_attention_heads: heads,
            intermediate_size: g
                .get_u64(&key("feed_forward_length"))
                .map_or(4 * d, |i| i as i64),
            max_position_embeddings: g.get_u64(&key("context_length"))? as i64,
            layer_norm_eps: g
                .get_f64(&key("attention.layer_norm_epsilon"))
                .unwrap_or(1e-5),
            rope_theta: g.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
            rotary_ndims: g
                .get_u64(&key("rope.dimension_count"))
                .map_or(head_dim / 4, |r| r as i64),
            use_parallel_residual: !matches!(
                g.get(&key("use_parallel_residual")),
                Some(crate::formats::gguf::Value::Bool(false))
            ),
            attention_bias: g.tensor_info("blk.0.attn_qkv.bias").is_some(),
            gelu_tanh: false,
        })
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let (d, i) = (self.hidden_size, self.intermediate_size);
        let mut specs = vec![ParamSpec::new(
            "gpt_neox.embed_in.weight",
            [self.vocab_size, d],
        )];
        for l in 0..self.num_hidden_layers {
            let p = |s: &str| format!("gpt_neox.layers.{l}.{s}");
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                specs.push(ParamSpec::new(p(&format!("{norm}.weight")), [d]).ones());
                specs.push(ParamSpec::new(p(&format!("{norm}.bias")), [d]).zeros());
            }
            specs.push(ParamSpec::new(
                p("attention.query_key_value.weight"),
                [3 * d, d],
            ));
            specs.push(ParamSpec::new(p("attention.dense.weight"), [d, d]));
            if self.attention_bias {
                specs.push(ParamSpec::new(p("attention.query_key_value.bias"), [3 * d]));
                specs.push(ParamSpec::new(p("attention.dense.bias"), [d]));
            }
            specs.push(ParamSpec::new(p("mlp.dense_h_to_4h.weight"), [i, d]));
            specs.push(ParamSpec::new(p("mlp.dense_h_to_4h.bias"), [i]));
            specs.push(ParamSpec::new(p("mlp.dense_4h_to_h.weight"), [d, i]));
            specs.push(ParamSpec::new(p("mlp.dense_4h_to_h.bias"), [d]));
        }
        specs.push(ParamSpec::new("gpt_neox.final_layer_norm.weight", [d]).ones());
        specs.push(ParamSpec::new("gpt_neox.final_layer_norm.bias", [d]).zeros());
        specs.push(ParamSpec::new("embed_out.weight", [self.vocab_size, d]));
        specs
    }
}

struct Attention {
    query_key_value: Linear,
    dense: Linear,
    heads: i64,
    head_dim: i64,
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        cos_sin: &(Tensor, Tensor),
        ctx: &mut Ctx,
    ) -> Tensor {
        let (cos, sin) = cos_sin;
        // Per head: its q, k and v side by side.
        let qkv = split_heads(
            &self.query_key_value.forward(x),
            self.heads,
            3 * self.head_dim,
        );
        let parts = qkv.chunk(3, -1);
        let q = apply_partial_rope(&parts[0], cos, sin, false);
        let k = apply_partial_rope(&parts[1], cos, sin, false);
        let (k, v) = ctx.cached_kv(layer, k, parts[2].shallow_clone());
        let mask = ctx.mask(None);
        let y = attention(&q, &k, &v, &mask, 1.0 / (self.head_dim as f64).sqrt());
        self.dense.forward(&merge_heads(&y))
    }
}

struct Block {
    input_layernorm: LayerNorm,
    attention: Attention,
    post_attention_layernorm: LayerNorm,
    mlp: GeluMlp,
    parallel: bool,
}

impl Block {
    fn load(p: &ParamStore, l: i64, c: &Config) -> Result<Self> {
        let (d, i, eps, bias) = (
            c.hidden_size,
            c.intermediate_size,
            c.layer_norm_eps,
            c.attention_bias,
        );
        let pre = |s: &str| format!("gpt_neox.layers.{l}.{s}");
        Ok(Block {
            input_layernorm: LayerNorm::load(p, &pre("input_layernorm"), d, eps)?,
            attention: Attention {
                query_key_value: Linear::load(
                    p,
                    &pre("attention.query_key_value"),
                    d,
                    3 * d,
                    bias,
                )?,
                dense: Linear::load(p, &pre("attention.dense"), d, d, bias)?,
                heads: c.num_attention_heads,
                head_dim: c.head_dim(),
            },
            post_attention_layernorm: LayerNorm::load(p, &pre("post_attention_layernorm"), d, eps)?,
            mlp: GeluMlp::load(
                p,
                &pre("mlp"),
                ["dense_h_to_4h", "dense_4h_to_h"],
                d,
                i,
                c.gelu_tanh,
            )?,
            parallel: c.use_parallel_residual,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        cos_sin: &(Tensor, Tensor),
        ctx: &mut Ctx,
    ) -> Tensor {
        let a = self
            .attention
            .forward(&self.input_layernorm.forward(x), layer, cos_sin, ctx);
        if self.parallel {
            let m = self
                .mlp
                .forward(&self.post_attention_layernorm.forward(x), layer, ctx);
            x + a + m
        } else {
            let h = x + a;
            let m = self
                .mlp
                .forward(&self.post_attention_layernorm.forward(&h), layer, ctx);
            h + m
        }
    }
}

/// A GPT-NeoX causal language model.
pub struct Model {
    embed_in: Tensor,
    layers: Vec<Block>,
    final_layer_norm: LayerNorm,
    embed_out: Tensor,
    rope: Rope,
}

impl Model {
    pub fn load(p: &ParamStore, config: Config) -> Result<Self> {
        let c = &config;
        let embed_in = p.get_shaped("gpt_neox.embed_in.weight", &[c.vocab_size, c.hidden_size])?;
        Ok(Model {
            rope: Rope::new(c.rotary_ndims, c.rope_theta, embed_in.device()),
            layers: (0..c.num_hidden_layers)
                .map(|l| Block::load(p, l, c))
                .collect::<Result<_>>()?,
            final_layer_norm: LayerNorm::load(
                p,
                "gpt_neox.final_layer_norm",
                c.hidden_size,
                c.layer_norm_eps,
            )?,
            embed_out: p.get_shaped("embed_out.weight", &[c.vocab_size, c.hidden_size])?,
            embed_in,
        })
    }
}

impl Architecture for Model {
    fn hidden_states(&self, ids: &Tensor, ctx: &mut Ctx) -> Tensor {
        let (start, mut h) = ctx.start(|| Tensor::embedding(&self.embed_in, ids, -1, false, false));
        let cos_sin = self.rope.cos_sin(&ctx.positions, h.kind());
        let end = ctx.end(self.layers.len());
        for (i, block) in self.layers.iter().enumerate().take(end).skip(start) {
            let _g = ctx.layer_guard(i);
            h = block.forward(&h, i, &cos_sin, ctx);
            h = ctx.hook_block(i, h);
        }
        h
    }

    fn final_norm(&self, h: &Tensor) -> Tensor {
        self.final_layer_norm.forward(h)
    }

    fn lm_head(&self) -> &Tensor {
        &self.embed_out
    }
}

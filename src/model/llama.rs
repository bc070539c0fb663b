//! The Llama family of decoders: Llama, Mistral, SmolLM2, Qwen2 (which adds biases to
//! the query, key and value projections) and Qwen3 (which RMS-normalises each head's
//! query and key before the rotary embedding) and Phi-3 (query, key and value in one
//! `qkv_proj`, gate and up in one `gate_up_proj`).
//!
//! Pre-norm blocks: RMSNorm → grouped-query attention with rotary embeddings →
//! residual, RMSNorm → SwiGLU MLP (`down(silu(gate(x)) · up(x))`) → residual; a final
//! RMSNorm and the output projection, often tied to the embedding.

use serde_json::Value as Json;
use tch::Tensor;

use super::config::{JsonConfig, rope_theta};
use super::nn::{
    Activation, Ctx, GatedMlp, Linear, RmsNorm, Rope, RopeScaling, apply_rope, attention,
    merge_heads, shared_matmul_input, split_heads,
};
use super::params::ParamStore;
use super::{Architecture, ParamSpec};
use crate::error::Result;
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
    pub rope_theta: f64,
    pub max_position_embeddings: i64,
    pub tie_word_embeddings: bool,
    /// Biases on q, k and v (Qwen2).
    pub attention_bias: bool,
    /// Mistral's sliding window, if any.
    pub sliding_window: Option<usize>,
    /// Rotary frequency scaling (Llama 3.x `llama3`, `linear`).
    pub rope_scaling: RopeScaling,
    /// Per-head RMSNorm of queries and keys (Qwen3's `q_norm`, `k_norm`).
    pub qk_norm: bool,
    /// Phi-3's fused projections: `self_attn.qkv_proj` (q, k, v rows in that order)
    /// and `mlp.gate_up_proj` (gate rows, then up rows).
    pub fused: bool,
}

/// llama.cpp's rope scaling: `rope.scaling.type` linear (with `rope.scaling.factor`),
/// or Llama 3's per-frequency divisors in the `rope_freqs.weight` tensor.
fn gguf_rope_scaling(g: &GgufFile, arch: &str) -> Result<RopeScaling> {
    if let Some(t) = g.tensor_info("rope_freqs.weight") {
        let f = super::load::gguf_tensor(g, t)?.to_kind(tch::Kind::Double);
        return Ok(RopeScaling::Factors(Vec::<f64>::try_from(
            f.flatten(0, -1),
        )?));
    }
    let kind = g
        .get(&format!("{arch}.rope.scaling.type"))
        .and_then(crate::formats::gguf::Value::as_str)
        .unwrap_or("none");
    match kind {
        "none" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: g.get_f64(&format!("{arch}.rope.scaling.factor"))?,
        }),
        other => Err(crate::error::Error::Config(format!(
            "GGUF: rope scaling '{other}' is not supported (supported: none, linear, llama3's rope_freqs)"
        ))),
    }
}

impl Config {
    pub fn from_hf(j: &Json) -> Result<Self> {
        let c = JsonConfig(j);
        let model_type = c.str_or("model_type", "llama");
        let hidden_size = c.int("hidden_size")?;
        let heads = c.int("num_attention_heads")?;
        let use_window = c.bool_or(
            "use_sliding_window",
            matches!(model_type, "mistral" | "phi3"),
        );
        let rope_scaling = c.rope_scaling()?;
        // transformers 5 moves it into rope_parameters.
        let nested = j
            .get("rope_parameters")
            .and_then(|p| p.get("partial_rotary_factor"))
            .and_then(Json::as_f64);
        let rotary = c.float_or("partial_rotary_factor", nested.unwrap_or(1.0));
        if rotary != 1.0 {
            return Err(crate::error::Error::Config(format!(
                "config.json: partial_rotary_factor {rotary} is not supported for {model_type}"
            )));
        }
        Ok(Config {
            vocab_size: c.int("vocab_size")?,
            hidden_size,
            intermediate_size: c.int("intermediate_size")?,
            num_hidden_layers: c.int("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: c.int_or("num_key_value_heads", heads),
            head_dim: c.int_or("head_dim", hidden_size / heads),
            rms_norm_eps: c.float_or("rms_norm_eps", 1e-6),
            rope_theta: rope_theta(j, None, 10_000.0),
            max_position_embeddings: c.int_or("max_position_embeddings", 2048),
            tie_word_embeddings: c.bool_or("tie_word_embeddings", false),
            attention_bias: c.bool_or("attention_bias", model_type == "qwen2"),
            sliding_window: c
                .opt_int("sliding_window")
                .filter(|_| use_window)
                .map(|w| w as usize),
            rope_scaling,
            qk_norm: model_type == "qwen3",
            fused: model_type == "phi3",
        })
    }

    /// From GGUF metadata (`arch` is `llama`, `mistral`, `qwen2`, `qwen3` or `phi3`).
    pub fn from_gguf(g: &GgufFile, arch: &str) -> Result<Self> {
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = g.get_u64(&key("embedding_length"))? as i64;
        let heads = g.get_u64(&key("attention.head_count"))? as i64;
        let vocab_size = match g.get_u64(&key("vocab_size")) {
            Ok(v) => v as i64,
            Err(_) => g
                .tensor_info("token_embd.weight")
                .map_or(0, |t| t.dims[1] as i64),
        };
        Ok(Config {
            vocab_size,
            hidden_size,
            intermediate_size: g.get_u64(&key("feed_forward_length"))? as i64,
            num_hidden_layers: g.get_u64(&key("block_count"))? as i64,
            num_attention_heads: heads,
            num_key_value_heads: g
                .get_u64(&key("attention.head_count_kv"))
                .map_or(heads, |v| v as i64),
            head_dim: g
                .get_u64(&key("attention.key_length"))
                .map_or(hidden_size / heads, |v| v as i64),
            rms_norm_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: g.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
            max_position_embeddings: g.get_u64(&key("context_length")).map_or(2048, |v| v as i64),
            tie_word_embeddings: g.tensor_info("output.weight").is_none(),
            attention_bias: g.tensor_info("blk.0.attn_q.bias").is_some(),
            sliding_window: None,
            rope_scaling: gguf_rope_scaling(g, arch)?,
            qk_norm: g.tensor_info("blk.0.attn_q_norm.weight").is_some(),
            fused: arch == "phi3",
        })
    }

    /// Every parameter with its shape, under Hugging Face names.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let (d, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (self.num_attention_heads * hd, self.num_key_value_heads * hd);
        let mut specs = vec![ParamSpec::new(
            "model.embed_tokens.weight",
            [self.vocab_size, d],
        )];
        for l in 0..self.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            specs.push(ParamSpec::new(p("input_layernorm.weight"), [d]).ones());
            if self.fused {
                specs.push(ParamSpec::new(
                    p("self_attn.qkv_proj.weight"),
                    [q + 2 * kv, d],
                ));
            } else {
                specs.push(ParamSpec::new(p("self_attn.q_proj.weight"), [q, d]));
                specs.push(ParamSpec::new(p("self_attn.k_proj.weight"), [kv, d]));
                specs.push(ParamSpec::new(p("self_attn.v_proj.weight"), [kv, d]));
            }
            if self.attention_bias {
                specs.push(ParamSpec::new(p("self_attn.q_proj.bias"), [q]));
                specs.push(ParamSpec::new(p("self_attn.k_proj.bias"), [kv]));
                specs.push(ParamSpec::new(p("self_attn.v_proj.bias"), [kv]));
            }
            specs.push(ParamSpec::new(p("self_attn.o_proj.weight"), [d, q]));
            if self.qk_norm {
                specs.push(ParamSpec::new(p("self_attn.q_norm.weight"), [hd]).ones());
                specs.push(ParamSpec::new(p("self_attn.k_norm.weight"), [hd]).ones());
            }
            specs.push(ParamSpec::new(p("post_attention_layernorm.weight"), [d]).ones());
            if self.fused {
                specs.push(ParamSpec::new(p("mlp.gate_up_proj.weight"), [2 * i, d]));
            } else {
                specs.push(ParamSpec::new(p("mlp.gate_proj.weight"), [i, d]));
                specs.push(ParamSpec::new(p("mlp.up_proj.weight"), [i, d]));
            }
            specs.push(ParamSpec::new(p("mlp.down_proj.weight"), [d, i]));
        }
        specs.push(ParamSpec::new("model.norm.weight", [d]).ones());
        if !self.tie_word_embeddings {
            specs.push(ParamSpec::new("lm_head.weight", [self.vocab_size, d]));
        }
        specs
    }
}

/// The query, key and value projections: separate, or Phi-3's one fused matrix.
enum Qkv {
    Separate {
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
    },
    Fused(Linear),
}

struct Attention {
    qkv: Qkv,
    o_proj: Linear,
    /// Qwen3's per-head norms.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn load(p: &ParamStore, prefix: &str, c: &Config) -> Result<Self> {
        let (d, hd) = (c.hidden_size, c.head_dim);
        let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let b = c.attention_bias;
        let qkv = if c.fused {
            Qkv::Fused(Linear::load(
                p,
                &format!("{prefix}.qkv_proj"),
                d,
                q + 2 * kv,
                b,
            )?)
        } else {
            Qkv::Separate {
                q_proj: Linear::load(p, &format!("{prefix}.q_proj"), d, q, b)?,
                k_proj: Linear::load(p, &format!("{prefix}.k_proj"), d, kv, b)?,
                v_proj: Linear::load(p, &format!("{prefix}.v_proj"), d, kv, b)?,
            }
        };
        Ok(Attention {
            qkv,
            o_proj: Linear::load(p, &format!("{prefix}.o_proj"), q, d, false)?,
            qk_norm: if c.qk_norm {
                let norm = |n: &str| {
                    RmsNorm::load(
                        p,
                        &format!("{prefix}.{n}.weight"),
                        hd,
                        c.rms_norm_eps,
                        false,
                    )
                };
                Some((norm("q_norm")?, norm("k_norm")?))
            } else {
                None
            },
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: hd,
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
        let (q, k, v) = match &self.qkv {
            Qkv::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => (q_proj.forward(x), k_proj.forward(x), v_proj.forward(x)),
            Qkv::Fused(qkv) => {
                let y = qkv.forward(x);
                let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
                let parts = y.split_with_sizes([q, kv, kv], -1);
                (
                    parts[0].shallow_clone(),
                    parts[1].shallow_clone(),
                    parts[2].shallow_clone(),
                )
            }
        };
        let q = split_heads(&q, self.heads, self.head_dim);
        let k = split_heads(&k, self.kv_heads, self.head_dim);
        let v = split_heads(&v, self.kv_heads, self.head_dim);
        let (q, k) = match &self.qk_norm {
            Some((qn, kn)) => (qn.forward(&q), kn.forward(&k)),
            None => (q, k),
        };
        let (cos, sin) = cos_sin;
        let (q, k) = (apply_rope(&q, cos, sin), apply_rope(&k, cos, sin));
        let (k, v) = ctx.cached_kv(layer, k, v);
        let mask = ctx.mask(window);
        let y = attention(&q, &k, &v, &mask, 1.0 / (self.head_dim as f64).sqrt());
        self.o_proj.forward(&merge_heads(&y))
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
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
                false,
            )
        };
        Ok(Block {
            input_layernorm: norm("input_layernorm")?,
            self_attn: Attention::load(p, &format!("{prefix}.self_attn"), c)?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            mlp: GatedMlp::load(
                p,
                &format!("{prefix}.mlp"),
                c.hidden_size,
                c.intermediate_size,
                Activation::Silu,
                c.fused,
            )?,
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
        let h = x + self.self_attn.forward(
            &self.input_layernorm.forward(x),
            layer,
            cos_sin,
            window,
            ctx,
        );
        let m = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&h), layer, ctx);
        h + m
    }
}

/// A Llama-family causal language model.
pub struct Model {
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    rope: Rope,
    config: Config,
}

impl Model {
    pub fn load(p: &ParamStore, config: Config) -> Result<Self> {
        let c = &config;
        let embed_tokens =
            p.get_shaped("model.embed_tokens.weight", &[c.vocab_size, c.hidden_size])?;
        let lm_head = if c.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            p.get_shaped("lm_head.weight", &[c.vocab_size, c.hidden_size])?
        };
        Ok(Model {
            layers: (0..c.num_hidden_layers)
                .map(|l| Block::load(p, l, c))
                .collect::<Result<_>>()?,
            norm: RmsNorm::load(p, "model.norm.weight", c.hidden_size, c.rms_norm_eps, false)?,
            rope: Rope::scaled(
                c.head_dim,
                c.rope_theta,
                &c.rope_scaling,
                embed_tokens.device(),
            ),
            embed_tokens,
            lm_head,
            config,
        })
    }
}

impl Architecture for Model {
    fn hidden_states(&self, ids: &Tensor, ctx: &mut Ctx) -> Tensor {
        let (start, mut h) =
            ctx.start(|| Tensor::embedding(&self.embed_tokens, ids, -1, false, false));
        let cos_sin = self.rope.cos_sin(&ctx.positions, h.kind());
        let end = ctx.end(self.layers.len());
        for (i, block) in self.layers.iter().enumerate().take(end).skip(start) {
            let _g = ctx.layer_guard(i);
            h = block.forward(&h, i, &cos_sin, self.config.sliding_window, ctx);
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

//! GPT-2: learned position embeddings, pre-LayerNorm blocks, a fused QKV projection and
//! a GELU (tanh) MLP, output projection tied to the token embedding.
//!
//! Hugging Face stores GPT-2's projections as `Conv1D` weights of shape `(in, out)`
//! (`y = x·W + b`); we keep that layout so names and shapes match the checkpoints.

use serde_json::Value as Json;
use tch::Tensor;

use super::config::JsonConfig;
use super::nn::{Ctx, LayerNorm, attention, merge_heads, split_heads};
use super::params::ParamStore;
use super::{Architecture, ParamSpec};
use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;

/// Hyper-parameters under their Hugging Face `config.json` names.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vocab_size: i64,
    pub n_positions: i64,
    pub n_embd: i64,
    pub n_layer: i64,
    pub n_head: i64,
    pub n_inner: i64,
    pub layer_norm_epsilon: f64,
    pub tie_word_embeddings: bool,
}

impl Config {
    pub fn from_hf(j: &Json) -> Result<Self> {
        let c = JsonConfig(j);
        let act = c.str_or("activation_function", "gelu_new");
        if act != "gelu_new" && act != "gelu_pytorch_tanh" {
            return Err(Error::Config(format!(
                "activation '{act}' is not supported for gpt2"
            )));
        }
        let n_embd = c.int("n_embd")?;
        Ok(Config {
            vocab_size: c.int("vocab_size")?,
            n_positions: c.int_or("n_positions", 1024),
            n_embd,
            n_layer: c.int("n_layer")?,
            n_head: c.int("n_head")?,
            n_inner: c.int_or("n_inner", 4 * n_embd),
            layer_norm_epsilon: c.float_or("layer_norm_epsilon", 1e-5),
            tie_word_embeddings: c.bool_or("tie_word_embeddings", true),
        })
    }

    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let key = |k: &str| format!("gpt2.{k}");
        Ok(Config {
            vocab_size: g
                .tensor_info("token_embd.weight")
                .map_or(0, |t| t.dims[1] as i64),
            n_positions: g.get_u64(&key("context_length"))? as i64,
            n_embd: g.get_u64(&key("embedding_length"))? as i64,
            n_layer: g.get_u64(&key("block_count"))? as i64,
            n_head: g.get_u64(&key("attention.head_count"))? as i64,
            n_inner: g.get_u64(&key("feed_forward_length"))? as i64,
            layer_norm_epsilon: g
                .get_f64(&key("attention.layer_norm_epsilon"))
                .unwrap_or(1e-5),
            tie_word_embeddings: g.tensor_info("output.weight").is_none(),
        })
    }

    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let (d, i) = (self.n_embd, self.n_inner);
        let mut specs = vec![
            ParamSpec::new("transformer.wte.weight", [self.vocab_size, d]),
            ParamSpec::new("transformer.wpe.weight", [self.n_positions, d]),
        ];
        for l in 0..self.n_layer {
            let p = |s: &str| format!("transformer.h.{l}.{s}");
            specs.push(ParamSpec::new(p("ln_1.weight"), [d]).ones());
            specs.push(ParamSpec::new(p("ln_1.bias"), [d]).zeros());
            specs.push(ParamSpec::new(p("attn.c_attn.weight"), [d, 3 * d]));
            specs.push(ParamSpec::new(p("attn.c_attn.bias"), [3 * d]));
            specs.push(ParamSpec::new(p("attn.c_proj.weight"), [d, d]));
            specs.push(ParamSpec::new(p("attn.c_proj.bias"), [d]));
            specs.push(ParamSpec::new(p("ln_2.weight"), [d]).ones());
            specs.push(ParamSpec::new(p("ln_2.bias"), [d]).zeros());
            specs.push(ParamSpec::new(p("mlp.c_fc.weight"), [d, i]));
            specs.push(ParamSpec::new(p("mlp.c_fc.bias"), [i]));
            specs.push(ParamSpec::new(p("mlp.c_proj.weight"), [i, d]));
            specs.push(ParamSpec::new(p("mlp.c_proj.bias"), [d]));
        }
        specs.push(ParamSpec::new("transformer.ln_f.weight", [d]).ones());
        specs.push(ParamSpec::new("transformer.ln_f.bias", [d]).zeros());
        if !self.tie_word_embeddings {
            specs.push(ParamSpec::new("lm_head.weight", [self.vocab_size, d]));
        }
        specs
    }
}

/// `y = x·W + b` with `W` stored `(in, out)`.
struct Conv1D {
    name: String,
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    fn load(p: &ParamStore, prefix: &str, in_dim: i64, out_dim: i64) -> Result<Self> {
        Ok(Conv1D {
            name: format!("{prefix}.weight"),
            weight: p.get_shaped(&format!("{prefix}.weight"), &[in_dim, out_dim])?,
            bias: p.get_shaped(&format!("{prefix}.bias"), &[out_dim])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.weight) + &self.bias
    }
}

struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    heads: i64,
    head_dim: i64,
}

impl Attention {
    fn forward(&self, x: &Tensor, layer: usize, ctx: &mut Ctx) -> Tensor {
        let qkv = self.c_attn.forward(x).split(self.heads * self.head_dim, -1);
        let q = split_heads(&qkv[0], self.heads, self.head_dim);
        let k = split_heads(&qkv[1], self.heads, self.head_dim);
        let v = split_heads(&qkv[2], self.heads, self.head_dim);
        let (k, v) = ctx.cached_kv(layer, k, v);
        let mask = ctx.mask(None);
        let y = attention(&q, &k, &v, &mask, 1.0 / (self.head_dim as f64).sqrt());
        self.c_proj.forward(&merge_heads(&y))
    }
}

struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
}

impl Mlp {
    fn forward(&self, x: &Tensor, layer: usize, ctx: &mut Ctx) -> Tensor {
        let fc = ctx.hook_linear(layer, &self.c_fc.name, x, self.c_fc.forward(x));
        let key = fc.gelu("tanh");
        ctx.hook_key(layer, &key);
        let out = ctx.hook_linear(layer, &self.c_proj.name, &key, self.c_proj.forward(&key));
        ctx.hook_output(layer, out)
    }
}

struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn load(p: &ParamStore, l: i64, c: &Config) -> Result<Self> {
        let (d, i, eps) = (c.n_embd, c.n_inner, c.layer_norm_epsilon);
        let pre = |s: &str| format!("transformer.h.{l}.{s}");
        Ok(Block {
            ln_1: LayerNorm::load(p, &pre("ln_1"), d, eps)?,
            attn: Attention {
                c_attn: Conv1D::load(p, &pre("attn.c_attn"), d, 3 * d)?,
                c_proj: Conv1D::load(p, &pre("attn.c_proj"), d, d)?,
                heads: c.n_head,
                head_dim: d / c.n_head,
            },
            ln_2: LayerNorm::load(p, &pre("ln_2"), d, eps)?,
            mlp: Mlp {
                c_fc: Conv1D::load(p, &pre("mlp.c_fc"), d, i)?,
                c_proj: Conv1D::load(p, &pre("mlp.c_proj"), i, d)?,
            },
        })
    }

    fn forward(&self, x: &Tensor, layer: usize, ctx: &mut Ctx) -> Tensor {
        let h = x + self.attn.forward(&self.ln_1.forward(x), layer, ctx);
        let m = self.mlp.forward(&self.ln_2.forward(&h), layer, ctx);
        h + m
    }
}

/// A GPT-2 causal language model.
pub struct Model {
    wte: Tensor,
    wpe: Tensor,
    h: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Tensor,
}

impl Model {
    pub fn load(p: &ParamStore, config: Config) -> Result<Self> {
        let c = &config;
        if c.n_embd % c.n_head != 0 {
            return Err(Error::Config(format!(
                "n_embd {} is not a multiple of n_head {}",
                c.n_embd, c.n_head
            )));
        }
        let wte = p.get_shaped("transformer.wte.weight", &[c.vocab_size, c.n_embd])?;
        let lm_head = if c.tie_word_embeddings {
            wte.shallow_clone()
        } else {
            p.get_shaped("lm_head.weight", &[c.vocab_size, c.n_embd])?
        };
        Ok(Model {
            wpe: p.get_shaped("transformer.wpe.weight", &[c.n_positions, c.n_embd])?,
            h: (0..c.n_layer)
                .map(|l| Block::load(p, l, c))
                .collect::<Result<_>>()?,
            ln_f: LayerNorm::load(p, "transformer.ln_f", c.n_embd, c.layer_norm_epsilon)?,
            wte,
            lm_head,
        })
    }
}

impl Architecture for Model {
    fn hidden_states(&self, ids: &Tensor, ctx: &mut Ctx) -> Tensor {
        let positions = ctx.positions.shallow_clone();
        let (start, mut h) = ctx.start(|| {
            Tensor::embedding(&self.wte, ids, -1, false, false)
                + Tensor::embedding(&self.wpe, &positions, -1, false, false)
        });
        let end = ctx.end(self.h.len());
        for (i, block) in self.h.iter().enumerate().take(end).skip(start) {
            let _g = ctx.layer_guard(i);
            h = block.forward(&h, i, ctx);
            h = ctx.hook_block(i, h);
        }
        h
    }

    fn final_norm(&self, h: &Tensor) -> Tensor {
        self.ln_f.forward(h)
    }

    fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }
}

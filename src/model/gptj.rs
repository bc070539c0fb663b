//! GPT-J (the paper's own model family): one LayerNorm per block feeding attention and
//! MLP in parallel (`x + attn(ln(x)) + mlp(ln(x))`), rotary embeddings on the first
//! `rotary_dim` dimensions of each head in GPT-J's interleaved-pair layout, unbiased
//! attention projections, a biased GELU (tanh) MLP and a biased, untied output head.

use serde_json::Value as Json;
use tch::Tensor;

use super::config::JsonConfig;
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
    pub n_positions: i64,
    pub n_embd: i64,
    pub n_layer: i64,
    pub n_head: i64,
    /// Rotated dimensions of each head (the whole head when absent).
    pub rotary_dim: i64,
    pub n_inner: i64,
    pub layer_norm_epsilon: f64,
}

impl Config {
    pub fn from_hf(j: &Json) -> Result<Self> {
        let c = JsonConfig(j);
        let act = c.str_or("activation_function", "gelu_new");
        if act != "gelu_new" && act != "gelu_pytorch_tanh" {
            return Err(Error::Config(format!(
                "activation '{act}' is not supported for gptj"
            )));
        }
        if c.bool_or("tie_word_embeddings", false) {
            return Err(Error::Config(
                "gptj with tied word embeddings is not supported (its head has a bias)".into(),
            ));
        }
        c.check_rope_scaling()?;
        let (n_embd, n_head) = (c.int("n_embd")?, c.int("n_head")?);
        if n_head == 0 || n_embd % n_head != 0 {
            return Err(Error::Config(format!(
                "n_embd {n_embd} is not a multiple of n_head {n_head}"
            )));
        }
        let head_dim = n_embd / n_head;
        let rotary_dim = c.opt_int("rotary_dim").unwrap_or(head_dim);
        if rotary_dim <= 0 || rotary_dim > head_dim || rotary_dim % 2 != 0 {
            return Err(Error::Config(format!(
                "rotary_dim {rotary_dim} must be even and at most the head size {head_dim}"
            )));
        }
        Ok(Config {
            vocab_size: c.int("vocab_size")?,
            n_positions: c.int_or("n_positions", 2048),
            n_embd,
            n_layer: c.int("n_layer")?,
            n_head,
            rotary_dim,
            n_inner: c.opt_int("n_inner").unwrap_or(4 * n_embd),
            layer_norm_epsilon: c.float_or("layer_norm_epsilon", 1e-5),
        })
    }

    /// From llama.cpp's `gptj` metadata. Its rotary layout (adjacent pairs) is GPT-J's
    /// own, so no tensor is reordered.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let key = |k: &str| format!("gptj.{k}");
        let n_embd = g.get_u64(&key("embedding_length"))? as i64;
        let n_head = g.get_u64(&key("attention.head_count"))? as i64;
        if n_head == 0 || n_embd % n_head != 0 {
            return Err(Error::Config(format!(
                "n_embd {n_embd} is not a multiple of n_head {n_head}"
            )));
        }
        Ok(Config {
            vocab_size: g
                .tensor_info("token_embd.weight")
                .map_or(0, |t| t.dims[1] as i64),
            n_positions: g.get_u64(&key("context_length"))? as i64,
            n_embd,
            n_layer: g.get_u64(&key("block_count"))? as i64,
            n_head,
            rotary_dim: g
                .get_u64(&key("rope.dimension_count"))
                .map_or(n_embd / n_head, |d| d as i64),
            n_inner: g
                .get_u64(&key("feed_forward_length"))
                .map_or(4 * n_embd, |d| d as i64),
            layer_norm_epsilon: g
                .get_f64(&key("attention.layer_norm_epsilon"))
                .unwrap_or(1e-5),
        })
    }

    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let (d, i) = (self.n_embd, self.n_inner);
        let mut specs = vec![ParamSpec::new(
            "transformer.wte.weight",
            [self.vocab_size, d],
        )];
        for l in 0..self.n_layer {
            let p = |s: &str| format!("transformer.h.{l}.{s}");
            specs.push(ParamSpec::new(p("ln_1.weight"), [d]).ones());
            specs.push(ParamSpec::new(p("ln_1.bias"), [d]).zeros());
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                specs.push(ParamSpec::new(p(&format!("attn.{proj}.weight")), [d, d]));
            }
            specs.push(ParamSpec::new(p("mlp.fc_in.weight"), [i, d]));
            specs.push(ParamSpec::new(p("mlp.fc_in.bias"), [i]));
            specs.push(ParamSpec::new(p("mlp.fc_out.weight"), [d, i]));
            specs.push(ParamSpec::new(p("mlp.fc_out.bias"), [d]));
        }
        specs.push(ParamSpec::new("transformer.ln_f.weight", [d]).ones());
        specs.push(ParamSpec::new("transformer.ln_f.bias", [d]).zeros());
        specs.push(ParamSpec::new("lm_head.weight", [self.vocab_size, d]));
        specs.push(ParamSpec::new("lm_head.bias", [self.vocab_size]).zeros());
        specs
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
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
        let q = split_heads(&self.q_proj.forward(x), self.heads, self.head_dim);
        let k = split_heads(&self.k_proj.forward(x), self.heads, self.head_dim);
        let v = split_heads(&self.v_proj.forward(x), self.heads, self.head_dim);
        let q = apply_partial_rope(&q, cos, sin, true);
        let k = apply_partial_rope(&k, cos, sin, true);
        let (k, v) = ctx.cached_kv(layer, k, v);
        let mask = ctx.mask(None);
        let y = attention(&q, &k, &v, &mask, 1.0 / (self.head_dim as f64).sqrt());
        self.out_proj.forward(&merge_heads(&y))
    }
}

struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    mlp: GeluMlp,
}

impl Block {
    fn load(p: &ParamStore, l: i64, c: &Config) -> Result<Self> {
        let (d, i) = (c.n_embd, c.n_inner);
        let pre = |s: &str| format!("transformer.h.{l}.{s}");
        let proj = |s: &str| Linear::load(p, &pre(&format!("attn.{s}")), d, d, false);
        Ok(Block {
            ln_1: LayerNorm::load(p, &pre("ln_1"), d, c.layer_norm_epsilon)?,
            attn: Attention {
                q_proj: proj("q_proj")?,
                k_proj: proj("k_proj")?,
                v_proj: proj("v_proj")?,
                out_proj: proj("out_proj")?,
                heads: c.n_head,
                head_dim: d / c.n_head,
            },
            mlp: GeluMlp::load(p, &pre("mlp"), ["fc_in", "fc_out"], d, i, true)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        cos_sin: &(Tensor, Tensor),
        ctx: &mut Ctx,
    ) -> Tensor {
        let h = self.ln_1.forward(x);
        let a = self.attn.forward(&h, layer, cos_sin, ctx);
        let m = self.mlp.forward(&h, layer, ctx);
        x + a + m
    }
}

/// A GPT-J causal language model.
pub struct Model {
    wte: Tensor,
    h: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Tensor,
    lm_head_bias: Tensor,
    rope: Rope,
}

impl Model {
    pub fn load(p: &ParamStore, config: Config) -> Result<Self> {
        let c = &config;
        let wte = p.get_shaped("transformer.wte.weight", &[c.vocab_size, c.n_embd])?;
        Ok(Model {
            rope: Rope::new(c.rotary_dim, 10_000.0, wte.device()),
            h: (0..c.n_layer)
                .map(|l| Block::load(p, l, c))
                .collect::<Result<_>>()?,
            ln_f: LayerNorm::load(p, "transformer.ln_f", c.n_embd, c.layer_norm_epsilon)?,
            lm_head: p.get_shaped("lm_head.weight", &[c.vocab_size, c.n_embd])?,
            lm_head_bias: p.get_shaped("lm_head.bias", &[c.vocab_size])?,
            wte,
        })
    }
}

impl Architecture for Model {
    fn hidden_states(&self, ids: &Tensor, ctx: &mut Ctx) -> Tensor {
        let (start, mut h) = ctx.start(|| Tensor::embedding(&self.wte, ids, -1, false, false));
        let cos_sin = self.rope.cos_sin_interleaved(&ctx.positions, h.kind());
        let end = ctx.end(self.h.len());
        for (i, block) in self.h.iter().enumerate().take(end).skip(start) {
            let _g = ctx.layer_guard(i);
            h = block.forward(&h, i, &cos_sin, ctx);
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

    fn lm_head_bias(&self) -> Option<&Tensor> {
        Some(&self.lm_head_bias)
    }
}

//! Loading checkpoints into a [`Model`] with Hugging Face parameter names and layouts.
//!
//! GGUF tensors are dequantized to f32, renamed (`blk.3.ffn_down.weight` →
//! `model.layers.3.mlp.down_proj.weight`) and brought back to the Hugging Face layout:
//! llama's Q/K rows un-permuted (llama.cpp permutes them for its interleaved RoPE),
//! Gemma's norm weights stored as `1 + w` shifted back to `w`, GPT-2's projections
//! transposed to `Conv1D`'s `(in, out)`. Hugging Face folders load as they are.

use std::collections::HashMap;
use std::path::Path;

use safetensors::SafeTensors;
use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};

use super::config::token_id;
use super::params::ParamStore;
use super::{ArchConfig, Model, gemma3, gpt_neox, gpt2, gptj, llama};
use crate::error::{Error, Result};
use crate::formats::gguf::{GgufFile, TensorInfo};
use crate::tokenizer::Tokenizer;

/// Where and in what precision to put the weights.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub device: Device,
    /// Parameter dtype (f32 trains on CPU; bf16/f16 halve memory on GPU).
    pub kind: Kind,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            kind: Kind::Float,
        }
    }
}

/// Loads a model and its tokenizer from a GGUF file or a Hugging Face folder
/// (`config.json`, `*.safetensors`, `tokenizer.json`).
pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<(Model, Tokenizer)> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return load_hf(path, opts);
    }
    let mut magic = [0u8; 4];
    use std::io::Read;
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|e| Error::io(path, e))?;
    if n == 4 && &magic == b"GGUF" {
        return load_gguf(path, opts);
    }
    let hint = if path.extension().is_some_and(|e| e == "safetensors") {
        "a lone .safetensors file: pass the folder that holds it with config.json and tokenizer.json"
    } else {
        "expected a GGUF file or a Hugging Face model folder"
    };
    Err(Error::Format {
        path: path.into(),
        reason: hint.into(),
    })
}

/// How a GGUF tensor becomes its Hugging Face counterpart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fix {
    None,
    /// Undo llama.cpp's Q/K row permutation for `n` heads.
    Unpermute(i64),
    /// Gemma norms: GGUF holds `1 + w`.
    MinusOne,
    /// GPT-2 Conv1D weights are `(in, out)`.
    Transpose,
    /// GPT-NeoX's fused QKV (weight or bias) for `n` heads: llama.cpp stores all q rows,
    /// then all k, then all v; transformers lays them out per head (q, k, v of head 0,
    /// then head 1, …).
    QkvPerHead(i64),
}

/// The Hugging Face name and fix for a GGUF tensor name, per architecture.
pub(crate) fn hf_name(config: &ArchConfig, gguf_arch: &str, name: &str) -> Option<(String, Fix)> {
    let (layer, field) = match name.strip_prefix("blk.") {
        Some(rest) => {
            let (l, f) = rest.split_once('.')?;
            (Some(l.parse::<usize>().ok()?), f)
        }
        None => (None, name),
    };
    let (base, suffix) = field.rsplit_once('.')?;
    let mut fix = Fix::None;
    let hf = match (config, layer) {
        (ArchConfig::Llama(c), Some(l)) => {
            // llama.cpp permutes Q/K rows for llama and mistral only.
            let permute = matches!(gguf_arch, "llama" | "mistral") && suffix == "weight";
            let m = match base {
                "attn_norm" => "input_layernorm",
                "attn_q" => {
                    fix = if permute {
                        Fix::Unpermute(c.num_attention_heads)
                    } else {
                        Fix::None
                    };
                    "self_attn.q_proj"
                }
                "attn_k" => {
                    fix = if permute {
                        Fix::Unpermute(c.num_key_value_heads)
                    } else {
                        Fix::None
                    };
                    "self_attn.k_proj"
                }
                "attn_v" => "self_attn.v_proj",
                "attn_qkv" => "self_attn.qkv_proj",
                "attn_output" => "self_attn.o_proj",
                "attn_q_norm" => "self_attn.q_norm",
                "attn_k_norm" => "self_attn.k_norm",
                "ffn_norm" => "post_attention_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                // llama.cpp keeps Phi-3's fused gate and up as one ffn_up.
                "ffn_up" if c.fused => "mlp.gate_up_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{l}.{m}")
        }
        (ArchConfig::Gemma3(_), Some(l)) => {
            let m = match base {
                "attn_norm" => "input_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "attn_q_norm" => "self_attn.q_norm",
                "attn_k_norm" => "self_attn.k_norm",
                "post_attention_norm" => "post_attention_layernorm",
                "ffn_norm" => "pre_feedforward_layernorm",
                "post_ffw_norm" => "post_feedforward_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            if base.ends_with("norm") {
                fix = Fix::MinusOne;
            }
            format!("model.layers.{l}.{m}")
        }
        (ArchConfig::Gpt2(_), Some(l)) => {
            let m = match base {
                "attn_norm" => "ln_1",
                "attn_qkv" => "attn.c_attn",
                "attn_output" => "attn.c_proj",
                "ffn_norm" => "ln_2",
                "ffn_up" => "mlp.c_fc",
                "ffn_down" => "mlp.c_proj",
                _ => return None,
            };
            if suffix == "weight" && !base.ends_with("norm") {
                fix = Fix::Transpose;
            }
            format!("transformer.h.{l}.{m}")
        }
        (ArchConfig::Gptj(_), Some(l)) => {
            let m = match base {
                "attn_norm" => "ln_1",
                "attn_q" => "attn.q_proj",
                "attn_k" => "attn.k_proj",
                "attn_v" => "attn.v_proj",
                "attn_output" => "attn.out_proj",
                "ffn_up" => "mlp.fc_in",
                "ffn_down" => "mlp.fc_out",
                _ => return None,
            };
            format!("transformer.h.{l}.{m}")
        }
        (ArchConfig::GptNeox(c), Some(l)) => {
            let m = match base {
                "attn_norm" => "input_layernorm",
                "attn_qkv" => {
                    fix = Fix::QkvPerHead(c.num_attention_heads);
                    "attention.query_key_value"
                }
                "attn_output" => "attention.dense",
                "ffn_norm" => "post_attention_layernorm",
                "ffn_up" => "mlp.dense_h_to_4h",
                "ffn_down" => "mlp.dense_4h_to_h",
                _ => return None,
            };
            format!("gpt_neox.layers.{l}.{m}")
        }
        (ArchConfig::GptNeox(_), None) => match base {
            "token_embd" => "gpt_neox.embed_in".into(),
            "output_norm" => "gpt_neox.final_layer_norm".into(),
            "output" => "embed_out".into(),
            _ => return None,
        },
        // GPT-J has no position embedding; the rest is named as GPT-2's.
        (ArchConfig::Gpt2(_) | ArchConfig::Gptj(_), None) => match base {
            "token_embd" => "transformer.wte".into(),
            "position_embd" => "transformer.wpe".into(),
            "output_norm" => "transformer.ln_f".into(),
            "output" => "lm_head".into(),
            _ => return None,
        },
        (_, None) => match base {
            "token_embd" => "model.embed_tokens".into(),
            "output_norm" => {
                if matches!(config, ArchConfig::Gemma3(_)) {
                    fix = Fix::MinusOne;
                }
                "model.norm".into()
            }
            "output" => "lm_head".into(),
            _ => return None,
        },
    };
    Some((format!("{hf}.{suffix}"), fix))
}

/// `t`'s rows (a `[3·heads·head_dim, …]` weight or bias) regrouped from `from` blocks
/// of `to` blocks to `to` blocks of `from` (the swap of the two leading groupings).
fn swap_row_groups(t: Tensor, from: i64, to: i64) -> Tensor {
    let s = t.size();
    let mut shape = vec![from, to, s[0] / from / to];
    shape.extend_from_slice(&s[1..]);
    t.reshape(shape.as_slice())
        .transpose(0, 1)
        .contiguous()
        .reshape(s.as_slice())
}

/// The inverse of [`apply_fix`]: from the Hugging Face layout back to llama.cpp's.
pub(crate) fn undo_fix(t: Tensor, fix: Fix) -> Tensor {
    match fix {
        Fix::QkvPerHead(heads) => swap_row_groups(t, heads, 3),
        Fix::None => t,
        Fix::MinusOne => t + 1.0,
        Fix::Transpose => t.tr().contiguous(),
        Fix::Unpermute(heads) => {
            let s = t.size();
            let (rows, cols) = (s[0], s[1]);
            t.reshape([heads, 2, rows / heads / 2, cols])
                .transpose(1, 2)
                .reshape([rows, cols])
        }
    }
}

pub(crate) fn apply_fix(t: Tensor, fix: Fix) -> Tensor {
    match fix {
        Fix::QkvPerHead(heads) => swap_row_groups(t, 3, heads),
        Fix::None => t,
        Fix::MinusOne => t - 1.0,
        Fix::Transpose => t.tr().contiguous(),
        Fix::Unpermute(heads) => {
            let s = t.size();
            let (rows, cols) = (s[0], s[1]);
            t.reshape([heads, rows / heads / 2, 2, cols])
                .transpose(1, 2)
                .reshape([rows, cols])
        }
    }
}

pub(crate) fn gguf_tensor(g: &GgufFile, t: &TensorInfo) -> Result<Tensor> {
    let out = Tensor::empty(t.torch_shape().as_slice(), (Kind::Float, Device::Cpu));
    // SAFETY: `out` is a fresh contiguous f32 CPU tensor of exactly numel elements,
    // and nothing else refers to it while the slice lives.
    let buf =
        unsafe { std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, t.numel() as usize) };
    g.dequantize_into(t, buf)?;
    Ok(out)
}

fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<(Model, Tokenizer)> {
    let g = GgufFile::open(path)?;
    let arch = g.get_str("general.architecture")?;
    let config = match arch {
        "llama" | "mistral" | "qwen2" | "qwen3" | "phi3" => {
            ArchConfig::Llama(llama::Config::from_gguf(&g, arch)?)
        }
        "gemma3" => ArchConfig::Gemma3(gemma3::Config::from_gguf(&g)?),
        "gpt2" => ArchConfig::Gpt2(gpt2::Config::from_gguf(&g)?),
        "gptj" => ArchConfig::Gptj(gptj::Config::from_gguf(&g)?),
        "gptneox" => ArchConfig::GptNeox(gpt_neox::Config::from_gguf(&g)?),
        other => return Err(Error::UnknownArchitecture(other.into())),
    };
    let specs: HashMap<String, Vec<i64>> = config
        .param_specs()
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    let mut params = ParamStore::new();
    for t in &g.tensors {
        let Some((name, fix)) = hf_name(&config, arch, &t.name) else {
            continue;
        };
        let Some(shape) = specs.get(&name) else {
            continue;
        };
        let tensor = apply_fix(gguf_tensor(&g, t)?, fix);
        if &tensor.size() != shape {
            return Err(Error::ShapeMismatch {
                name,
                expected: shape.clone(),
                found: tensor.size(),
            });
        }
        params.insert(name, tensor.to_kind(opts.kind).to_device(opts.device));
    }
    check_complete(&config, &params)?;
    let tokenizer = Tokenizer::from_gguf(&g)?;
    check_vocab(&config, &tokenizer, path)?;
    Ok((Model::from_params(config, params, path)?, tokenizer))
}

fn check_complete(config: &ArchConfig, params: &ParamStore) -> Result<()> {
    match config
        .param_specs()
        .into_iter()
        .find(|s| !params.contains(&s.name))
    {
        Some(s) => Err(Error::MissingTensor { name: s.name }),
        None => Ok(()),
    }
}

/// A tokenizer that can produce ids past the embedding would crash the forward pass.
fn check_vocab(config: &ArchConfig, tokenizer: &Tokenizer, path: &Path) -> Result<()> {
    if tokenizer.vocab_size() as i64 > config.vocab_size() {
        return Err(Error::Format {
            path: path.into(),
            reason: format!(
                "the tokenizer has {} tokens but the model's vocabulary has {}",
                tokenizer.vocab_size(),
                config.vocab_size()
            ),
        });
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Format {
        path: path.into(),
        reason: format!("invalid JSON: {e}"),
    })
}

fn load_hf(dir: &Path, opts: &LoadOptions) -> Result<(Model, Tokenizer)> {
    let cfg_path = dir.join("config.json");
    let j = read_json(&cfg_path)?;
    let config = ArchConfig::from_hf(&j)?;
    let files = safetensors_files(dir)?;
    let mut params = HfParams::new(&config);
    for file in &files {
        let mmap = map(file)?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| Error::Corrupt {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        for (name, view) in st.tensors() {
            let Some(name) = params.wanted(name) else {
                continue;
            };
            let Some(kind) = kind_of(view.dtype()) else {
                return Err(Error::UnsupportedType {
                    name,
                    dtype: format!("{:?}", view.dtype()),
                });
            };
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
            params.insert(name, t, opts)?;
        }
    }
    let params = params.finish(&config)?;
    let tokenizer = Tokenizer::from_file(
        &dir.join("tokenizer.json"),
        token_id(&j, "bos_token_id"),
        token_id(&j, "eos_token_id"),
    )?;
    Ok((Model::from_params(config, params, dir)?, tokenizer))
}

/// Builds a model over tensors already in memory, named and laid out as a Hugging Face
/// checkpoint of the architecture `config_json` (a `config.json`) describes: a loaded
/// `transformers` model's `state_dict()`. A tensor already of the asked dtype and device
/// is used as it is (its storage shared, not copied); tensors the model does not use
/// are ignored. `source` names the model in reports.
pub fn from_hf_tensors(
    config_json: &Json,
    tensors: impl IntoIterator<Item = (String, Tensor)>,
    opts: &LoadOptions,
    source: &Path,
) -> Result<Model> {
    let config = ArchConfig::from_hf(config_json)?;
    let mut params = HfParams::new(&config);
    for (name, t) in tensors {
        let Some(name) = params.wanted(name) else {
            continue;
        };
        if !matches!(t.kind(), Kind::Float | Kind::Half | Kind::BFloat16) {
            return Err(Error::UnsupportedType {
                name,
                dtype: format!("{:?}", t.kind()),
            });
        }
        params.insert(name, t, opts)?;
    }
    let params = params.finish(&config)?;
    Model::from_params(config, params, source)
}

/// Hugging Face-named tensors gathered into a parameter store, each checked against the
/// architecture's names and shapes.
struct HfParams {
    specs: HashMap<String, Vec<i64>>,
    gpt2: bool,
    params: ParamStore,
}

impl HfParams {
    fn new(config: &ArchConfig) -> Self {
        HfParams {
            specs: config
                .param_specs()
                .into_iter()
                .map(|s| (s.name, s.shape))
                .collect(),
            gpt2: matches!(config, ArchConfig::Gpt2(_)),
            params: ParamStore::new(),
        }
    }

    /// The parameter name a checkpoint tensor loads into, or `None` for one the model
    /// does not use.
    fn wanted(&self, name: String) -> Option<String> {
        // The original GPT-2 checkpoints omit the `transformer.` prefix.
        let name = if self.gpt2 && !name.starts_with("transformer.") && name != "lm_head.weight" {
            format!("transformer.{name}")
        } else {
            name
        };
        self.specs.contains_key(&name).then_some(name)
    }

    fn insert(&mut self, name: String, t: Tensor, opts: &LoadOptions) -> Result<()> {
        let found = t.size();
        let expected = &self.specs[&name];
        if &found != expected {
            return Err(Error::ShapeMismatch {
                name,
                expected: expected.clone(),
                found,
            });
        }
        self.params
            .insert(name, t.to_kind(opts.kind).to_device(opts.device));
        Ok(())
    }

    fn finish(self, config: &ArchConfig) -> Result<ParamStore> {
        check_complete(config, &self.params)?;
        Ok(self.params)
    }
}

/// The dtype a checkpoint stores its weights in: that of most tensors of a folder's
/// safetensors files (read from their headers), f32 for GGUF (whose quantized tensors
/// load as f32).
pub fn stored_dtype(path: &Path) -> Result<Kind> {
    if !path.is_dir() {
        return Ok(Kind::Float);
    }
    let mut counts: HashMap<Kind, usize> = HashMap::new();
    for file in safetensors_files(path)? {
        let mmap = map(&file)?;
        let (_, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| Error::Corrupt {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        for info in meta.tensors().values() {
            if let Some(kind) = kind_of(info.dtype) {
                *counts.entry(kind).or_default() += 1;
            }
        }
    }
    // Ties go to f32, then f16, so a mixed folder is not narrowed.
    let width = |k: Kind| match k {
        Kind::Float => 2,
        Kind::Half => 1,
        _ => 0,
    };
    Ok(counts
        .into_iter()
        .max_by_key(|&(k, n)| (n, width(k)))
        .map_or(Kind::Float, |(k, _)| k))
}

/// The tensor kind of a safetensors dtype ftedit reads (floating point only).
fn kind_of(dtype: safetensors::Dtype) -> Option<Kind> {
    match dtype {
        safetensors::Dtype::F32 => Some(Kind::Float),
        safetensors::Dtype::F16 => Some(Kind::Half),
        safetensors::Dtype::BF16 => Some(Kind::BFloat16),
        _ => None,
    }
}

/// A read-only map of a checkpoint file.
fn map(file: &Path) -> Result<memmap2::Mmap> {
    let f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    // SAFETY: read-only map of a file we do not modify.
    unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(file, e))
}

fn safetensors_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let j = read_json(&index)?;
        let map = j
            .get("weight_map")
            .and_then(Json::as_object)
            .ok_or_else(|| Error::Format {
                path: index.clone(),
                reason: "no weight_map".into(),
            })?;
        let mut files: Vec<_> = map
            .values()
            .filter_map(Json::as_str)
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Format {
            path: dir.into(),
            reason: "no *.safetensors files in the model folder".into(),
        });
    }
    Ok(files)
}

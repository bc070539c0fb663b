//! Writing an (edited) model back in formats other tools load.
//!
//! - [`save_gguf`]: GGUF in, GGUF out. Every tensor the edit did not change keeps its
//!   original bytes (and quantization); changed tensors are written in F32 (or Q8_0 if
//!   asked) in llama.cpp's layout, so llama.cpp runs the result.
//! - [`save_to`]: either, as a [`Destination`] says, with an adapter beside it.
//! - [`save_hf`]: a Hugging Face folder (`config.json`, `generation_config.json`,
//!   `model.safetensors` in the dtype asked for, `tokenizer.json`, `tokenizer_config.json`
//!   and `chat_template.jinja` with the model's chat template) that transformers loads.
//!
//! Both write to a unique temporary name and rename at the end, holding SIGINT and
//! SIGTERM meanwhile: an interrupted save leaves neither a half-written model under the
//! final name nor a temporary. [`Destination`] checks an output path before the work
//! that fills it; a folder with files ftedit did not write is never replaced.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::load::{gguf_tensor, hf_name, undo_fix};
use super::nn::RopeScaling;
use super::{ArchConfig, Model};
use crate::error::{Error, Result};
use crate::formats::gguf::{GgufFile, GgufWriter};
use crate::formats::quant::{GgmlType, quantize_q8_0};
use crate::tokenizer::Tokenizer;

/// What [`save_to`] wrote.
#[derive(Debug)]
pub struct Written {
    /// The GGUF save's report, or the folder's format and dtype.
    pub report: serde_json::Value,
    /// The base path of the adapter files written beside the model (an editor that
    /// lives beside the weights, GRACE), if the model carries one.
    pub adapter: Option<PathBuf>,
}

/// Writes `model`, loaded from `source`, where `dest` says: a GGUF (changed tensors as
/// Q8_0 with `quantize`) or a folder with tensors of `dtype`. The adapter the model
/// carries is written beside it; one an earlier output left there is removed.
pub fn save_to(
    model: &Model,
    tok: &Tokenizer,
    dest: &Destination,
    source: &Path,
    dtype: Kind,
    quantize: bool,
) -> Result<Written> {
    let report = if dest.format == OutputFormat::Gguf {
        serde_json::to_value(save_gguf(model, source, &dest.path, quantize)?)
            .map_err(|e| Error::output(&dest.path, e.to_string()))?
    } else {
        let opts = HfSaveOptions {
            dtype: Some(dtype),
            source: source.exists().then(|| source.to_path_buf()),
            replace: dest.replaces,
        };
        save_hf(model, tok, &dest.path, &opts)?;
        json!({"format": "safetensors", "dtype": format!("{dtype:?}")})
    };
    let base = super::adapter::adapter_base(&dest.path);
    let adapter = match model.adapter() {
        Some(a) => {
            super::adapter::write_adapter(&a.saved(), &base)?;
            Some(base)
        }
        None => {
            for ext in ["json", "safetensors"] {
                let _ = std::fs::remove_file(format!("{}.{ext}", base.display()));
            }
            None
        }
    };
    Ok(Written { report, adapter })
}

/// What a GGUF save did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GgufSaveReport {
    /// Tensors rewritten (GGUF names).
    pub changed: Vec<String>,
    /// Tensors copied byte for byte.
    pub unchanged: usize,
}

/// A tensor's values as little-endian bytes of `kind` (f32, bf16 or f16).
fn tensor_bytes(t: &Tensor, kind: Kind) -> Result<Vec<u8>> {
    if kind == Kind::Float {
        return f32_bytes(t);
    }
    // Half-precision values reinterpreted as i16 keep their bits.
    let bits = Vec::<i16>::try_from(
        t.to_device(Device::Cpu)
            .to_kind(kind)
            .contiguous()
            .view(-1)
            .view_dtype(Kind::Int16),
    )?;
    Ok(bits.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// The safetensors dtype and transformers' name for a tensor kind ftedit writes.
fn dtype_names(kind: Kind) -> Result<(safetensors::Dtype, &'static str)> {
    match kind {
        Kind::Float => Ok((safetensors::Dtype::F32, "float32")),
        Kind::BFloat16 => Ok((safetensors::Dtype::BF16, "bfloat16")),
        Kind::Half => Ok((safetensors::Dtype::F16, "float16")),
        other => Err(Error::Input(format!(
            "cannot write tensors as {other:?} (f32, bf16 or f16)"
        ))),
    }
}

fn f32_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let v = Vec::<f32>::try_from(
        t.to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .view(-1),
    )?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// Writes `model` as a GGUF file shaped like `source` (the GGUF it was loaded from).
/// `quantize`: store changed tensors as Q8_0 instead of F32 (where their rows allow).
/// An existing file at `out` is replaced (check it first with [`Destination`]), but
/// never `source` itself.
pub fn save_gguf(
    model: &Model,
    source: &Path,
    out: &Path,
    quantize: bool,
) -> Result<GgufSaveReport> {
    if resolve(out)? == resolve(source)? {
        return Err(Error::output(
            out,
            "is the input model; write the edited model elsewhere",
        ));
    }
    let g = GgufFile::open(source)?;
    let arch = g.get_str("general.architecture")?.to_owned();
    let mut w = GgufWriter::new();
    w.metadata = g.metadata.clone();
    w.alignment = g.alignment;
    let mut changed = Vec::new();
    let mut unchanged = 0;
    let _g = tch::no_grad_guard();
    for t in &g.tensors {
        let raw = g.tensor_bytes(t).map(Cow::Borrowed);
        let mapped =
            hf_name(model.config(), &arch, &t.name).filter(|(n, _)| model.params.contains(n));
        let Some((name, fix)) = mapped else {
            w.add_tensor(t.name.clone(), t.dims.clone(), t.ty, raw?);
            unchanged += 1;
            continue;
        };
        let current = model
            .params
            .get(&name)?
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float);
        let original = super::load::apply_fix(gguf_tensor(&g, t)?, fix);
        if current.size() == original.size() && current.equal(&original) {
            w.add_tensor(t.name.clone(), t.dims.clone(), t.ty, raw?);
            unchanged += 1;
            continue;
        }
        let back = undo_fix(current, fix);
        let values = f32_bytes(&back)?;
        let (ty, data) = if quantize && t.dims[0] % 32 == 0 {
            let floats: Vec<f32> = values
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (GgmlType::Q8_0, quantize_q8_0(&floats))
        } else {
            (GgmlType::F32, values)
        };
        w.add_tensor(t.name.clone(), t.dims.clone(), ty, data);
        changed.push(t.name.clone());
    }
    w.write(out)?;
    Ok(GgufSaveReport { changed, unchanged })
}

/// transformers' `rope_scaling` object (`null` without scaling; `Factors` never gets
/// here, see [`save_hf`]).
fn rope_scaling_json(r: &RopeScaling) -> serde_json::Value {
    match r {
        RopeScaling::None | RopeScaling::Factors(_) => serde_json::Value::Null,
        RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => json!({
            "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": *original_max_position_embeddings as i64,
        }),
    }
}

/// `config.json` for transformers.
pub fn hf_config(config: &ArchConfig, tok: &Tokenizer) -> serde_json::Value {
    let (bos, eos) = (tok.bos_id, tok.eos_id);
    match config {
        ArchConfig::Llama(c) => {
            let (class, model_type) = match (c.fused, c.qk_norm, c.attention_bias) {
                (true, _, _) => ("Phi3ForCausalLM", "phi3"),
                (_, true, _) => ("Qwen3ForCausalLM", "qwen3"),
                (_, _, true) => ("Qwen2ForCausalLM", "qwen2"),
                _ => ("LlamaForCausalLM", "llama"),
            };
            json!({
                "architectures": [class],
                "model_type": model_type,
                "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
                "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
                "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
                "head_dim": c.head_dim, "hidden_act": "silu", "rms_norm_eps": c.rms_norm_eps,
                "rope_theta": c.rope_theta, "max_position_embeddings": c.max_position_embeddings,
                "tie_word_embeddings": c.tie_word_embeddings, "attention_bias": c.attention_bias,
                "use_sliding_window": c.sliding_window.is_some(), "sliding_window": c.sliding_window,
                "rope_scaling": rope_scaling_json(&c.rope_scaling),
                "bos_token_id": bos, "eos_token_id": eos, "torch_dtype": "float32",
            })
        }
        ArchConfig::Gemma3(c) => json!({
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim, "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta, "rope_local_base_freq": c.rope_local_base_freq,
            "sliding_window": c.sliding_window,
            // transformers wants an integer here.
            "query_pre_attn_scalar": if c.query_pre_attn_scalar.fract() == 0.0 { json!(c.query_pre_attn_scalar as i64) } else { json!(c.query_pre_attn_scalar) },
            "layer_types": c.layer_types.iter().map(|&s| if s { "sliding_attention" } else { "full_attention" }).collect::<Vec<_>>(),
            "max_position_embeddings": c.max_position_embeddings, "tie_word_embeddings": c.tie_word_embeddings,
            "final_logit_softcapping": null, "attn_logit_softcapping": null,
            "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": 0, "torch_dtype": "float32",
        }),
        ArchConfig::Gpt2(c) => json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2", "vocab_size": c.vocab_size, "n_positions": c.n_positions,
            "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": c.n_inner,
            "layer_norm_epsilon": c.layer_norm_epsilon, "activation_function": "gelu_new",
            "tie_word_embeddings": c.tie_word_embeddings,
            "bos_token_id": bos, "eos_token_id": eos, "torch_dtype": "float32",
        }),
        ArchConfig::Gptj(c) => json!({
            "architectures": ["GPTJForCausalLM"],
            "model_type": "gptj", "vocab_size": c.vocab_size, "n_positions": c.n_positions,
            "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": c.n_inner,
            "rotary_dim": c.rotary_dim, "layer_norm_epsilon": c.layer_norm_epsilon,
            "activation_function": "gelu_new", "tie_word_embeddings": false,
            "bos_token_id": bos, "eos_token_id": eos, "torch_dtype": "float32",
        }),
        ArchConfig::GptNeox(c) => json!({
            "architectures": ["GPTNeoXForCausalLM"],
            "model_type": "gpt_neox", "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
            "intermediate_size": c.intermediate_size,
            "max_position_embeddings": c.max_position_embeddings, "layer_norm_eps": c.layer_norm_eps,
            "rotary_pct": c.rotary_ndims as f64 / c.head_dim() as f64, "rotary_emb_base": c.rope_theta,
            "use_parallel_residual": c.use_parallel_residual, "attention_bias": c.attention_bias,
            "hidden_act": if c.gelu_tanh { "gelu_new" } else { "gelu" }, "tie_word_embeddings": false,
            "bos_token_id": bos, "eos_token_id": eos, "torch_dtype": "float32",
        }),
    }
}

/// How [`save_hf`] writes a folder.
#[derive(Debug, Clone, Default)]
pub struct HfSaveOptions {
    /// The tensors' dtype (f32, bf16 or f16); `None`: f32.
    pub dtype: Option<Kind>,
    /// The checkpoint the model came from: a folder's `generation_config.json` is carried
    /// over (otherwise one is written from the tokenizer's BOS and EOS).
    pub source: Option<PathBuf>,
    /// Replace an earlier output of ftedit at the folder (one with its report and nothing
    /// else); without it only a new path or an empty folder is written. A folder with
    /// other files in it is refused either way.
    pub replace: bool,
}

/// Writes a Hugging Face folder for `model`. Files are created as any other file would
/// be (the process's umask decides their mode).
pub fn save_hf(model: &Model, tok: &Tokenizer, dir: &Path, opts: &HfSaveOptions) -> Result<()> {
    if let ArchConfig::Llama(c) = model.config()
        && matches!(c.rope_scaling, RopeScaling::Factors(_))
    {
        return Err(Error::Input(
            "this GGUF stores its rope scaling as llama.cpp's rope_freqs factors, which a \
             transformers config.json cannot express; write a .gguf instead"
                .into(),
        ));
    }
    let kind = opts.dtype.unwrap_or(Kind::Float);
    let (st_dtype, dtype_name) = dtype_names(kind)?;
    // Refused before the work, so that nothing is written over a folder we must keep.
    if dir.exists() {
        folder_to_replace(dir, opts.replace)?;
    }
    let _held = crate::output::HoldSignals::new();
    let tmp = crate::output::temp_path(dir);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = write_hf_files(model, tok, &tmp, opts, kind, st_dtype, dtype_name)
        .and_then(|_| crate::output::interrupted())
        .and_then(|_| commit_folder(&tmp, dir));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// The files of `save_hf` into the (temporary) folder `tmp`.
fn write_hf_files(
    model: &Model,
    tok: &Tokenizer,
    tmp: &Path,
    opts: &HfSaveOptions,
    kind: Kind,
    st_dtype: safetensors::Dtype,
    dtype_name: &str,
) -> Result<()> {
    let write = |name: &str, text: String| {
        let p = tmp.join(name);
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))
    };
    let mut config = hf_config(model.config(), tok);
    config["torch_dtype"] = json!(dtype_name);
    write(
        "config.json",
        serde_json::to_string_pretty(&config).expect("json"),
    )?;
    let carried = opts
        .source
        .as_ref()
        .map(|s| s.join("generation_config.json"))
        .filter(|p| p.is_file());
    let generation = match carried {
        Some(p) => std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?,
        None => serde_json::to_string_pretty(&json!({
            "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "_from_model_config": true,
        }))
        .expect("json"),
    };
    write("generation_config.json", generation)?;
    let _g = tch::no_grad_guard();
    let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (name, t) in model.params.iter() {
        crate::output::interrupted()?;
        data.push((
            name.to_owned(),
            tensor_bytes(t, kind)?,
            t.size().iter().map(|&d| d as usize).collect(),
        ));
    }
    let views = data
        .iter()
        .map(|(n, bytes, shape)| {
            safetensors::tensor::TensorView::new(st_dtype, shape.clone(), bytes)
                .map(|v| (n.as_str(), v))
                .map_err(|e| Error::Input(format!("{n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let st = tmp.join("model.safetensors");
    safetensors::serialize_to_file(views, Some(meta), &st)
        .map_err(|e| Error::output(&st, e.to_string()))?;
    // safetensors creates its file private (0600); give it the mode the umask gives
    // every other file of the folder.
    let like = tmp.join("config.json");
    let mode = std::fs::metadata(&like)
        .map_err(|e| Error::io(&like, e))?
        .permissions();
    std::fs::set_permissions(&st, mode).map_err(|e| Error::io(&st, e))?;
    tok.save_hf(tmp)
}

/// The files a model folder written by ftedit holds: [`save_hf`]'s and the report and
/// recipe `ftedit edit` puts beside them.
pub const FOLDER_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    REPORT_FILE,
    RECIPE_FILE,
    "ftedit_adapter.json",
    "ftedit_adapter.safetensors",
];

/// The report `ftedit edit` writes in a model folder (beside a GGUF: `NAME.report.json`);
/// its presence marks an output ftedit wrote.
pub const REPORT_FILE: &str = "ftedit_report.json";
/// The effective recipe `ftedit edit` writes beside its report.
pub const RECIPE_FILE: &str = "ftedit_recipe.toml";

/// The names in `dir`, a run folder's lock left out.
fn entries(dir: &Path) -> Result<Vec<String>> {
    let mut names = crate::output::names_in(dir)?;
    names.retain(|n| n != crate::output::LOCK_FILE);
    Ok(names)
}

/// Whether the existing folder `dir` may take a model: it is empty, or it is an earlier
/// output of ftedit (its report and nothing but ftedit's files) and `replace` is set. A
/// folder with anything else in it is never replaced. Returns whether it is empty.
fn folder_to_replace(dir: &Path, replace: bool) -> Result<bool> {
    if !dir.is_dir() {
        return Err(Error::output(
            dir,
            "exists and is not a folder; a folder output needs a new path or an empty folder",
        ));
    }
    let names = entries(dir)?;
    if names.is_empty() {
        return Ok(true);
    }
    let foreign: Vec<&String> = names
        .iter()
        .filter(|n| !FOLDER_FILES.contains(&n.as_str()))
        .collect();
    if !foreign.is_empty() || !names.iter().any(|n| n == REPORT_FILE) {
        let shown = if foreign.is_empty() {
            crate::output::some_names(&names)
        } else {
            crate::output::some_names(&foreign)
        };
        return Err(Error::output(
            dir,
            format!(
                "is a folder with files ftedit did not write ({shown}); ftedit never replaces \
                 such a folder: choose another --out"
            ),
        ));
    }
    if !replace {
        return Err(Error::output(
            dir,
            format!(
                "holds an earlier ftedit output (its {REPORT_FILE}); pass --force to replace it"
            ),
        ));
    }
    Ok(false)
}

/// Puts the finished folder `tmp` at `dir`: a rename when `dir` is new; otherwise each
/// file is renamed into it (an empty folder, or an earlier output [`folder_to_replace`]
/// allowed), and the earlier output's files the new one lacks are removed. No folder is
/// ever deleted.
fn commit_folder(tmp: &Path, dir: &Path) -> Result<()> {
    if !dir.exists() {
        return std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e));
    }
    let new = entries(tmp)?;
    for name in &new {
        let to = dir.join(name);
        std::fs::rename(tmp.join(name), &to).map_err(|e| Error::io(&to, e))?;
    }
    for old in entries(dir)? {
        if FOLDER_FILES.contains(&old.as_str())
            && ![REPORT_FILE, RECIPE_FILE].contains(&old.as_str())
            && !new.contains(&old)
        {
            let p = dir.join(&old);
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    std::fs::remove_dir(tmp).map_err(|e| Error::io(tmp, e))
}

/// The format of an edited model's output path: GGUF for `*.gguf`, else a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Gguf,
    Folder,
}

/// Where an edited model will be written, checked before the work that makes it: not
/// the input model, not a file or folder the user has (an earlier output of ftedit only
/// with `force`; a folder with other files never), a writable place with room for it.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The path as given, for messages.
    pub given: PathBuf,
    /// The path written: absolute, with `.` and `..` resolved.
    pub path: PathBuf,
    pub format: OutputFormat,
    /// Something is there now that the output replaces (with `force`).
    pub replaces: bool,
    /// Temporaries of earlier, killed runs to this path that were removed.
    pub stale_removed: Vec<PathBuf>,
}

/// `path` made absolute with symbolic links, `.` and `..` resolved as far as it exists.
fn resolve(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
    if let Ok(c) = abs.canonicalize() {
        return Ok(c);
    }
    // A new name: resolve the folder it goes in (which may not exist either).
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) if name != ".." => Ok(resolve(parent)?.join(name)),
        _ => Ok(abs),
    }
}

impl Destination {
    /// Checks `out` for a model edited from `input` (a file or a folder). Creates the
    /// folders above `out` and removes stale temporaries of earlier runs to it.
    pub fn check(out: &Path, input: &Path, force: bool) -> Result<Self> {
        let format = if out.extension().is_some_and(|e| e == "gguf") {
            OutputFormat::Gguf
        } else {
            OutputFormat::Folder
        };
        let path = resolve(out)?;
        let source = resolve(input)?;
        if path == source || (source.is_dir() && source.starts_with(&path)) {
            return Err(Error::output(
                out,
                "is the input model (or holds it); write the edited model elsewhere",
            ));
        }
        if path.parent().is_none() {
            return Err(Error::output(out, "is the root folder; choose a new path"));
        }
        let replaces = match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io(out, e)),
            Ok(meta) if meta.is_dir() => {
                if format == OutputFormat::Gguf {
                    return Err(Error::output(
                        out,
                        "is a folder; a .gguf output is a file: choose a new path",
                    ));
                }
                !folder_to_replace(&path, force)?
            }
            Ok(_) if format == OutputFormat::Folder => {
                return Err(Error::output(
                    out,
                    "is a file; a folder output (any path not ending in .gguf) needs a new \
                     path or an empty folder",
                ));
            }
            Ok(_) => {
                let report = beside(&path, "report.json");
                if !force {
                    return Err(Error::output(
                        out,
                        if report.exists() {
                            "holds an earlier ftedit output (its .report.json is beside it); \
                             pass --force to replace it"
                        } else {
                            "exists and ftedit did not write it; pass --force to replace it"
                        },
                    ));
                }
                true
            }
        };
        let parent = path.parent().expect("checked").to_owned();
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let stale_removed = crate::output::remove_stale_temps(&path);
        // Writable: the temporary the output is written under can be made.
        let probe = crate::output::temp_path(&path);
        std::fs::write(&probe, b"")
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| Error::output(out, format!("cannot be written: {e}")))?;
        Ok(Destination {
            given: out.to_owned(),
            path,
            format,
            replaces,
            stale_removed,
        })
    }

    /// Fails unless the file system has room for about `bytes` more.
    pub fn check_space(&self, bytes: u64) -> Result<()> {
        let parent = self.path.parent().expect("checked");
        if let Some(free) = crate::output::free_bytes(parent)
            && free < bytes
        {
            let mb = |b: u64| b as f64 / (1u64 << 20) as f64;
            return Err(Error::output(
                &self.given,
                format!(
                    "the edited model needs about {:.0} MiB but only {:.0} MiB are free there",
                    mb(bytes),
                    mb(free)
                ),
            ));
        }
        Ok(())
    }

    /// Where `ftedit edit`'s report goes: in the folder, or beside the GGUF.
    pub fn report_path(&self) -> PathBuf {
        self.companion(&self.path, REPORT_FILE, "report.json")
    }

    /// [`Destination::report_path`] as the user named the output, for messages.
    pub fn given_report_path(&self) -> PathBuf {
        self.companion(&self.given, REPORT_FILE, "report.json")
    }

    /// Where the effective recipe goes.
    pub fn recipe_path(&self) -> PathBuf {
        self.companion(&self.path, RECIPE_FILE, "recipe.toml")
    }

    /// Where a training run keeps its resume point until the model is written: beside
    /// the output (`x.gguf.ftedit-resume`, `DIR.ftedit-resume`), outside a folder
    /// output so that the folder stays empty until the model is in it.
    pub fn resume_dir(&self) -> PathBuf {
        beside(&self.path, "ftedit-resume")
    }

    /// A file that goes with the model at `base`: `name` in the folder, or
    /// `base.suffix` beside the GGUF.
    fn companion(&self, base: &Path, name: &str, suffix: &str) -> PathBuf {
        match self.format {
            OutputFormat::Gguf => beside(base, suffix),
            OutputFormat::Folder => base.join(name),
        }
    }
}

/// `path.suffix`, beside `path`.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}.{suffix}", path.display()))
}

/// About how many bytes writing `model` takes: a folder holds every tensor in `dtype`;
/// a GGUF copies `source` and stores the tensors in `changed` (all when `None`) as F32.
pub fn estimate_bytes(
    model: &Model,
    format: OutputFormat,
    source: &Path,
    dtype: Kind,
    changed: Option<&[String]>,
) -> u64 {
    let numel = |t: &Tensor| t.numel() as u64;
    match format {
        OutputFormat::Folder => {
            let per = if dtype == Kind::Float { 4 } else { 2 };
            model.params.iter().map(|(_, t)| numel(t) * per).sum()
        }
        OutputFormat::Gguf => {
            let base = std::fs::metadata(source).map_or(0, |m| m.len());
            let extra: u64 = model
                .params
                .iter()
                .filter(|(n, _)| changed.is_none_or(|c| c.iter().any(|x| x == n)))
                .map(|(_, t)| numel(t) * 4)
                .sum();
            base + extra
        }
    }
}

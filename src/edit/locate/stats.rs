//! Second-moment statistics C = E[k kᵀ] of the MLP output projection's inputs (the keys
//! ROME and MEMIT edit), measured on ordinary text and cached on disk.
//!
//! The papers take C from 100,000 Wikipedia samples and spend hours; any general text
//! serves (METHOD.md), so ftedit reads a local file (WikiText by default) and counts
//! token positions: 100,000 keys of SmolLM2 take a few minutes on two CPU cores.

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::{CaptureKeys, Input, Model};
use crate::runtime::Precision;
use crate::tokenizer::Tokenizer;

/// Where the keys come from and how many.
#[derive(Debug, Clone)]
pub struct StatsOptions {
    /// Plain text file.
    pub text: PathBuf,
    /// Number of keys (token positions) to average over.
    pub samples: usize,
    /// Tokens per text block (the first, a document start, is not counted), at most the
    /// model's context.
    pub block: usize,
    /// Cache folder; `None` computes every time.
    pub cache_dir: Option<PathBuf>,
    pub progress: bool,
    /// How the forward passes compute (resolved against the model's device).
    pub precision: Precision,
}

impl StatsOptions {
    /// `samples` keys from `text`, cached in [`crate::cache::dir`].
    pub fn new(text: impl Into<PathBuf>, samples: usize) -> Self {
        StatsOptions {
            text: text.into(),
            samples,
            block: 128,
            cache_dir: Some(crate::cache::dir()),
            progress: false,
            precision: Precision::F32,
        }
    }
}

/// The cache file of one layer's statistics; those measured in bf16-mixed apart (f32
/// ones keep the name they always had).
fn cache_path(dir: &Path, print: u64, layer: usize, samples: usize, p: Precision) -> PathBuf {
    let tag = match p {
        Precision::Bf16Mixed => "-bf16",
        _ => "",
    };
    dir.join(format!(
        "mom2-{print:016x}-layer{layer}-n{samples}{tag}.safetensors"
    ))
}

/// C for each of `layers`, `[intermediate, intermediate]` in the model's device, f32.
pub fn second_moments(
    model: &Model,
    tok: &Tokenizer,
    layers: &[usize],
    opts: &StatsOptions,
) -> Result<Vec<Tensor>> {
    let text = std::fs::read_to_string(&opts.text).map_err(|e| Error::io(&opts.text, e))?;
    let precision = opts.precision.resolve(model.device()).0;
    // Hashing every weight costs a pass over the model: only done when caching.
    let cache = match &opts.cache_dir {
        Some(dir) => Some((dir, model.params.fingerprint(&text)?)),
        None => None,
    };
    let mut out: Vec<Option<Tensor>> = layers.iter().map(|_| None).collect();
    if let Some((dir, print)) = cache {
        for (slot, &l) in out.iter_mut().zip(layers) {
            let path = cache_path(dir, print, l, opts.samples, precision);
            if path.exists() {
                let t = Tensor::read_safetensors(&path)?;
                *slot = t
                    .into_iter()
                    .next()
                    .map(|(_, t)| t.to_device(model.device()));
            }
        }
    }
    let missing: Vec<usize> = layers
        .iter()
        .zip(&out)
        .filter(|(_, c)| c.is_none())
        .map(|(&l, _)| l)
        .collect();
    if !missing.is_empty() {
        let computed = compute(model, tok, &text, &missing, opts)?;
        for (l, c) in missing.iter().zip(computed) {
            if let Some((dir, print)) = cache {
                let path = cache_path(dir, print, *l, opts.samples, precision);
                crate::cache::write_tensors(&path, &[("mom2", &c.to_device(tch::Device::Cpu))])?;
            }
            let i = layers
                .iter()
                .position(|x| x == l)
                .expect("a requested layer");
            out[i] = Some(c);
        }
    }
    Ok(out.into_iter().map(|c| c.expect("computed")).collect())
}

/// Runs blocks of the text through the model and averages k kᵀ over `opts.samples`
/// positions per layer (accumulated in f64).
fn compute(
    model: &Model,
    tok: &Tokenizer,
    text: &str,
    layers: &[usize],
    opts: &StatsOptions,
) -> Result<Vec<Tensor>> {
    let _g = tch::no_grad_guard();
    let _p = model.precision_for(opts.precision);
    let ids = tok.encode(text, false)?;
    let per_block = opts.block.min(model.max_positions()).max(2) - 1;
    let blocks: Vec<Vec<u32>> = ids
        .chunks(per_block)
        .filter(|c| c.len() == per_block)
        .map(|c| {
            tok.document_start()
                .into_iter()
                .chain(c.iter().copied())
                .collect()
        })
        .collect();
    let start = usize::from(tok.document_start().is_some());
    let available = blocks.len() * per_block;
    if available < opts.samples {
        return Err(Error::Input(format!(
            "{} holds {available} tokens in full blocks, fewer than the {} samples asked for",
            opts.text.display(),
            opts.samples
        )));
    }
    let pb = crate::progress::bar(opts.progress, opts.samples, "key statistics");
    let mut sums: Vec<Option<Tensor>> = layers.iter().map(|_| None).collect();
    let mut count = 0usize;
    for batch in blocks.chunks(16) {
        let input = Input::right_padded(batch, model.device())?;
        let mut hooks = CaptureKeys {
            layers: layers.to_vec(),
            keys: Vec::new(),
        };
        model.run_hooks(&input, &mut hooks)?;
        let take = (opts.samples - count).min(batch.len() * per_block);
        for (layer, key) in hooks.keys {
            let i = layers
                .iter()
                .position(|&l| l == layer)
                .expect("hooked layer");
            let width = key.size()[2];
            // Drop the document-start position: its activations are no ordinary key.
            let k = key
                .narrow(1, start as i64, per_block as i64)
                .reshape([-1, width])
                .narrow(0, 0, take as i64)
                .to_kind(Kind::Float);
            let gram = k.transpose(0, 1).mm(&k).to_kind(Kind::Double);
            sums[i] = Some(match sums[i].take() {
                Some(s) => s + gram,
                None => gram,
            });
        }
        count += take;
        pb.set_position(count as u64);
        if count >= opts.samples {
            break;
        }
    }
    pb.finish_and_clear();
    Ok(sums
        .into_iter()
        .map(|s| (s.expect("one batch at least") / count as f64).to_kind(Kind::Float))
        .collect())
}

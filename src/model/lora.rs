//! LoRA adapters on the linear maps of a model (PEFT's naming: the adapter of
//! `…q_proj.weight` is `…q_proj.lora_A.weight` `[r, in]` and `…q_proj.lora_B.weight`
//! `[out, r]`, scaled by `alpha / r`), and merging them into the weights.

use tch::{Kind, Tensor};

use super::{ArchConfig, Model};
use crate::error::{Error, Result};

impl Model {
    /// Adds rank-`rank` adapters beside every 2-D `…weight` in `weights` (names of
    /// linear maps), B zero so the model is unchanged, A random (Kaiming-uniform like
    /// PEFT); freezes everything but the adapters. Returns the adapter names.
    pub fn add_lora(
        &mut self,
        weights: &[String],
        rank: i64,
        alpha: f64,
        seed: i64,
    ) -> Result<Vec<String>> {
        if matches!(self.config(), ArchConfig::Gpt2(_)) {
            return Err(Error::Input(
                "LoRA is not supported for gpt2 (its projections are Conv1D)".into(),
            ));
        }
        if self.params.lora_scale.is_some() {
            return Err(Error::Input("the model already has LoRA adapters".into()));
        }
        tch::manual_seed(seed);
        self.params.freeze_all();
        let mut names = Vec::new();
        for w in weights {
            let t = self.params.get(w)?;
            let prefix = w
                .strip_suffix(".weight")
                .filter(|_| t.dim() == 2)
                .ok_or_else(|| {
                    Error::Input(format!(
                        "LoRA needs 2-D linear weights; {w} has shape {:?}",
                        t.size()
                    ))
                })?;
            let (out, inp) = (t.size()[0], t.size()[1]);
            let bound = 1.0 / (inp as f64).sqrt();
            let a = Tensor::empty([rank, inp], (t.kind(), t.device())).uniform_(-bound, bound);
            let b = Tensor::zeros([out, rank], (t.kind(), t.device()));
            for (suffix, v) in [("lora_A.weight", a), ("lora_B.weight", b)] {
                let name = format!("{prefix}.{suffix}");
                self.params.insert(&name, v);
                self.params.set_trainable(&name, true)?;
                names.push(name);
            }
        }
        self.params.lora_scale = Some(alpha / rank as f64);
        self.rebuild()?;
        Ok(names)
    }

    /// Folds every adapter into its weight (`W += scale · B·A`) and removes it.
    pub fn merge_lora(&mut self) -> Result<()> {
        let Some(scale) = self.params.lora_scale else {
            return Ok(());
        };
        let adapters: Vec<String> = self
            .params
            .names()
            .filter_map(|n| n.strip_suffix(".lora_A.weight").map(str::to_owned))
            .collect();
        {
            let _g = tch::no_grad_guard();
            for prefix in &adapters {
                let a = self.params.get(&format!("{prefix}.lora_A.weight"))?;
                let b = self.params.get(&format!("{prefix}.lora_B.weight"))?;
                let mut w = self.params.get(&format!("{prefix}.weight"))?;
                // At least f32 (bf16 weights); f64 stays f64.
                let kind = if w.kind() == Kind::Double {
                    Kind::Double
                } else {
                    Kind::Float
                };
                let delta = b.to_kind(kind).matmul(&a.to_kind(kind)) * scale;
                let _ = w.g_add_(&delta.to_kind(w.kind()));
            }
        }
        for prefix in &adapters {
            self.params.remove(&format!("{prefix}.lora_A.weight"));
            self.params.remove(&format!("{prefix}.lora_B.weight"));
        }
        self.params.lora_scale = None;
        self.rebuild()
    }
}

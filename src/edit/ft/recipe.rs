//! The fine-tuning editor's settings: every choice of the paper's recipe, its ablations
//! and the FT-L / FT-M baselines, loaded from a recipe file ([`crate::edit::config`]).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which loss the edits are trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// −log p(target | prompt): target tokens only, masked by position.
    Conditional,
    /// Language-model loss on the whole edited sentence (naive fine-tuning).
    Full,
    /// ROME's FT-L objective: every target token scored at the last prompt position
    /// (the prompt alone is the input).
    #[serde(rename = "prompt-last")]
    PromptLast,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    pub kind: LossKind,
    /// Append EOS to every target, so the model learns to stop after the answer.
    pub eos: bool,
}

/// How unedited facts are chosen for each edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FactMode {
    None,
    /// `facts_per_edit` facts drawn at random from the pool.
    Random,
    /// The `facts_per_edit` pool facts whose prompts are most similar to the edit's
    /// (TF-IDF cosine over word tokens, IDF from the pool: works offline).
    Nearest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Train on random-prefix paraphrases (P) of each edit.
    pub prefixes: bool,
    /// `[count, tokens]` pairs: how many prefixes of how many tokens to sample.
    pub prefix_lengths: Vec<[usize; 2]>,
    /// Unedited facts (R) with their true targets.
    pub facts: FactMode,
    pub facts_per_edit: usize,
    /// SAUL (Wang et al., 2024): each drawn fact is joined to its edit's sentence, `edit
    /// prompt + " " + new target + " " + fact prompt + " " + fact target`, one example
    /// per fact, the loss over the new target and the whole fact (with `loss.kind =
    /// "full"` over the prompt too), instead of training the facts apart.
    #[serde(default)]
    pub concat: bool,
    /// Data file of unedited facts (CounterFact records, zsRE questions, JSONL); empty:
    /// chosen from the evaluated data set (see the CLI).
    #[serde(default)]
    pub fact_pool: String,
    /// Also train each edit's subject on its own spelling (S): the rewrite prompt up to
    /// the subject's first token predicts the subject's other tokens, so an edit that
    /// lands at the subject does not re-spell it ("The Eiffel TA …").
    #[serde(default)]
    pub subject: bool,
    /// Weight γ of the plain language-model loss: (1−γ)·L_edit + γ·L_LM.
    pub lm_gamma: f64,
    /// Text file for the LM loss; empty: the WikiText sample beside the repository.
    #[serde(default)]
    pub lm_text: String,
    /// Tokens per LM training block.
    pub lm_block: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Layer range `A..B` (inclusive), one layer, `all`, or a depth fraction such as
    /// `2/3` (the layer two thirds up the model) whose `modules` are trained, or empty.
    pub layers: String,
    /// Module kinds inside those layers: `mlp`, `attn`, `norm`.
    pub modules: Vec<String>,
    /// Parameter-name patterns to train as well (`*`: everything).
    pub params: Vec<String>,
    /// LoRA rank; 0 trains the selected weights themselves.
    pub lora_rank: i64,
    pub lora_alpha: f64,
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    /// Warm-up, as a fraction of all steps.
    pub warmup: f64,
    pub epochs: usize,
    /// At least this many steps (more epochs for small edit sets).
    #[serde(default)]
    pub min_steps: usize,
    /// At most this many steps, a budget over epochs and `min_steps` (0 = none).
    #[serde(default)]
    pub max_steps: usize,
    /// Examples per step; 0 = all examples in one batch.
    pub batch_size: usize,
    /// Clip the gradient's global L2 norm to this (0 = off).
    pub clip: f64,
    pub seed: u64,
    /// Keep every trained weight within ±clamp of its original value after each step
    /// (FT-L's L∞ constraint; 0 = off).
    #[serde(default)]
    pub clamp: f64,
    /// A batch whose loss is below this takes no step, and training ends after the first
    /// epoch whose batches average below it (0 = never), as in the reference fine-tuning
    /// loop of ROME, EasyEdit (FT-L, FT-M) and LocFT-BF.
    #[serde(default)]
    pub stop_loss: f64,
    /// Trims the steps `min_steps` adds beyond the recipe's epochs: from the end of the
    /// epochs on, stop once every edit's own target loss (mean NLL of its target tokens
    /// given its prompt, one no-grad forward of the edit prompts per step) has stayed
    /// below this for `converge_steps` steps in a row (0 = off). Few edits then take as
    /// many steps as they need instead of the floor; runs whose epochs exceed
    /// `min_steps` are not affected.
    #[serde(default)]
    pub converge_loss: f64,
    /// How the training steps compute: `f32`, `bf16-mixed` (bf16 matrix products, f32
    /// master weights, optimizer state, norms and losses, as PyTorch's autocast), or
    /// `auto` (the default): bf16-mixed where the device has bf16 matrix instructions
    /// (AMX, AVX512-BF16, a CUDA GPU), f32 elsewhere. The report says which ran and why.
    #[serde(default)]
    pub precision: crate::runtime::Precision,
    /// Consecutive steps the edits must stay under `converge_loss`.
    #[serde(default = "default_converge_steps")]
    pub converge_steps: usize,
    /// Stop training, with the model left unchanged, once the edits' mean loss over the
    /// last steps (up to 8) exceeds this factor times their loss before training (a loss
    /// under 1 counting as 1): a learning rate too high for the model (0 = only a loss
    /// that is not finite stops it).
    #[serde(default = "default_diverge_factor")]
    pub diverge_factor: f64,
}

fn default_converge_steps() -> usize {
    3
}

fn default_diverge_factor() -> f64 {
    3.0
}

/// A complete fine-tuning recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    #[serde(default)]
    pub description: String,
    pub loss: LossConfig,
    pub augment: AugmentConfig,
    pub train: TrainConfig,
    pub optim: OptimConfig,
    /// RECT and 1-LI on the edit's weight change ([`crate::edit::post`]).
    #[serde(default)]
    pub post: crate::edit::post::PostConfig,
}

impl Recipe {
    pub(crate) fn check(&self) -> Result<()> {
        self.post.check()?;
        let bad = |m: String| Err(Error::Input(format!("recipe: {m}")));
        if self.optim.lr.is_nan() || self.optim.lr <= 0.0 {
            return bad(format!("optim.lr must be positive, not {}", self.optim.lr));
        }
        if self.optim.diverge_factor.is_nan()
            || (self.optim.diverge_factor != 0.0 && self.optim.diverge_factor <= 1.0)
        {
            return bad(format!(
                "optim.diverge_factor must be above 1 (or 0 for off), not {}",
                self.optim.diverge_factor
            ));
        }
        if self.optim.epochs == 0 {
            return bad("optim.epochs must be at least 1".into());
        }
        if self.optim.converge_loss > 0.0 && self.optim.converge_steps == 0 {
            return bad(
                "optim.converge_steps must be at least 1 when optim.converge_loss is set".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.augment.lm_gamma) {
            return bad(format!(
                "augment.lm_gamma must lie in [0, 1], not {}",
                self.augment.lm_gamma
            ));
        }
        if !(0.0..1.0).contains(&self.optim.warmup) {
            return bad(format!(
                "optim.warmup is a fraction of the steps in [0, 1), not {}",
                self.optim.warmup
            ));
        }
        if self.train.lora_rank < 0 {
            return bad("train.lora_rank must be 0 (off) or positive".into());
        }
        if self.train.layers.is_empty() && self.train.params.is_empty() {
            return bad(
                "nothing to train: set train.layers (with train.modules) or train.params".into(),
            );
        }
        Ok(())
    }

    /// The learning rate at `step` of `total`.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        let o = &self.optim;
        let warm = (o.warmup * total as f64).round() as usize;
        if step < warm {
            return o.lr * (step + 1) as f64 / warm as f64;
        }
        match o.schedule {
            Schedule::Constant => o.lr,
            Schedule::Cosine => {
                let span = (total - warm).max(1) as f64;
                let t = (step - warm) as f64 / span;
                o.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let mut r = crate::edit::MethodConfig::load("layers", None, &[])
            .unwrap()
            .recipe()
            .unwrap()
            .clone();
        r.optim.lr = 1.0;
        assert!((r.lr_at(0, 10) - 1.0).abs() < 1e-12);
        assert!((r.lr_at(5, 10) - 0.5).abs() < 1e-12);
        assert!(r.lr_at(9, 10) < 0.03);
        r.optim.warmup = 0.2;
        assert!((r.lr_at(0, 10) - 0.5).abs() < 1e-12);
        assert!((r.lr_at(2, 10) - 1.0).abs() < 1e-12);
        r.optim.schedule = Schedule::Constant;
        assert_eq!(r.lr_at(7, 10), 1.0);
    }
}

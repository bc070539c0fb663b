//! Choosing an editing method from the command line (shared by `edit`, `eval` and
//! `sweep`): the flags only; the library resolves and builds the method.

use std::path::PathBuf;

use clap::Args;
use ftedit::Model;
use ftedit::data::EditRecord;
use ftedit::edit::ft::resume::ResumePoint;
use ftedit::edit::{BuildOptions, MethodConfig};

#[derive(Args, Clone)]
pub struct MethodArgs {
    /// Editing method (`ftedit methods` lists them): none, ft, ft-naive, ft-l, ft-m,
    /// rome, memit, alphaedit, mend, grace, serac, wise [default: the recipe's, else none for eval and ft for edit].
    #[arg(long)]
    pub method: Option<String>,
    /// A built-in recipe (`ftedit methods`) or a TOML file, such as a run's recipe.toml
    /// [default: the method's own].
    #[arg(long)]
    pub recipe: Option<String>,
    /// Override a recipe setting, e.g. --set optim.lr=1e-4 or
    /// --set value.clamp_norm_factor=4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Fine-tuning recipes: how training computes, auto (bf16-mixed where the device has
    /// bf16 matrix instructions, else f32), f32 or bf16-mixed (shorthand for
    /// --set optim.precision=…).
    #[arg(long)]
    pub precision: Option<String>,
    /// Data file of unedited facts for augmentation (default: the recipe's, else the
    /// train split that matches the evaluated data).
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// Fine-tuning: save a resume point of the training run every this many minutes
    /// (and on Ctrl-C / SIGTERM) beside the output; the same command again continues
    /// from it (0: never).
    #[arg(long, default_value_t = 10.0, value_name = "MINUTES")]
    pub checkpoint_every: f64,
}

impl MethodArgs {
    /// The effective config for `model`; `fallback` is the method when neither
    /// `--method` nor `--recipe` is given.
    pub fn config(&self, fallback: &str, model: &Model) -> anyhow::Result<MethodConfig> {
        let mut set = self.set.clone();
        if let Some(p) = &self.precision {
            let p = ftedit::model::Precision::parse(p)?;
            set.push(format!("optim.precision={}", p.name()));
        }
        Ok(MethodConfig::select(
            self.method.as_deref(),
            self.recipe.as_deref(),
            fallback,
            Some(model.arch_name()),
            &set,
        )?)
    }

    /// What the editor needs besides its config; `records` are the edits and everything
    /// evaluated, which the fact pool must not contain.
    /// `resume_dir`: where a training run's resume point goes (none for sweeps).
    pub fn build_options<'a>(
        &self,
        records: &'a [EditRecord],
        progress: bool,
        resume_dir: Option<PathBuf>,
    ) -> anyhow::Result<BuildOptions<'a>> {
        if !(self.checkpoint_every >= 0.0 && self.checkpoint_every.is_finite()) {
            anyhow::bail!(
                "--checkpoint-every {}: minutes between resume points, 0 for none",
                self.checkpoint_every
            );
        }
        let resume = resume_dir
            .filter(|_| self.checkpoint_every > 0.0)
            .map(|dir| ResumePoint {
                dir,
                every: std::time::Duration::from_secs_f64(self.checkpoint_every * 60.0),
            });
        Ok(BuildOptions {
            exclude: records,
            pool: self.pool.clone(),
            progress,
            resume,
        })
    }
}

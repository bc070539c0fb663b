//! The one place that knows the editing methods: their names, default recipes, and how
//! a [`MethodConfig`] becomes an [`Editor`]. The command line and library users build
//! editors the same way:
//!
//! ```
//! use ftedit::edit::{self, BuildOptions, MethodConfig};
//!
//! let path = ftedit::model::registry::resolve("smollm2")?;
//! let (mut model, tok) = ftedit::load(&path, &Default::default())?;
//! let records = ftedit::data::load("examples/edits.jsonl", None)?;
//! // A method by name (FT-M, three steps to keep the example quick), its editor, the edit:
//! let config = MethodConfig::load("ft-m", Some(model.arch_name()), &["optim.epochs=3".into()])?;
//! let mut editor = edit::build(&config, &tok, &BuildOptions::default())?;
//! editor.edit(&mut model, &tok, &records)?;
//! # Ok::<(), ftedit::Error>(())
//! ```

use std::path::PathBuf;

use super::alphaedit::AlphaEditEditor;
use super::augment;
use super::config::MethodConfig;
use super::ft::FtEditor;
use super::memit::MemitEditor;
use super::recipe::FactMode;
use super::rome::RomeEditor;
use super::{Editor, NoEdit};
use crate::data::{self, EditRecord};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// A registered method.
#[derive(Debug, Clone, Copy)]
pub struct MethodInfo {
    /// Its `--method` name and the `method` field of its recipes.
    pub name: &'static str,
    /// One line on what it does.
    pub about: &'static str,
    /// The built-in recipe it runs with when none is named.
    pub default_recipe: &'static str,
}

/// Every method, in the order the paper's tables list them.
pub const METHODS: &[MethodInfo] = &[
    MethodInfo {
        name: "none",
        about: "the unedited model",
        default_recipe: "none",
    },
    MethodInfo {
        name: "ft",
        about: "the paper's fine-tuning: conditional likelihood on edits, random-prefix paraphrases and unedited facts",
        default_recipe: "layers",
    },
    MethodInfo {
        name: "ft-naive",
        about: "fine-tuning on the whole edited sentence, no augmentation",
        default_recipe: "ft-naive",
    },
    MethodInfo {
        name: "ft-l",
        about: "ROME's FT-L baseline: one MLP matrix, weights clamped to ±ε",
        default_recipe: "ft-l",
    },
    MethodInfo {
        name: "ft-m",
        about: "EasyEdit's FT-M baseline: one MLP matrix, target-only loss",
        default_recipe: "ft-m",
    },
    MethodInfo {
        name: "rome",
        about: "ROME: a rank-one update of one MLP output projection per edit",
        default_recipe: "rome",
    },
    MethodInfo {
        name: "memit",
        about: "MEMIT: all edits at once, spread over a range of MLP output projections",
        default_recipe: "memit",
    },
    MethodInfo {
        name: "alphaedit",
        about: "AlphaEdit: MEMIT's update in the null space of the preserved keys, for lifelong editing",
        default_recipe: "alphaedit",
    },
];

/// The method names.
pub fn names() -> Vec<&'static str> {
    METHODS.iter().map(|m| m.name).collect()
}

/// The method called `name`.
pub fn info(name: &str) -> Result<&'static MethodInfo> {
    METHODS.iter().find(|m| m.name == name).ok_or_else(|| {
        Error::Input(format!(
            "unknown method '{name}' (available: {})",
            names().join(", ")
        ))
    })
}

/// The built-in recipes whose `method` is `name`, default first.
pub fn recipes_of(name: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = super::config::BUILTIN
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| MethodConfig::load(n, None, &[]).is_ok_and(|c| c.method() == name))
        .collect();
    if let Ok(m) = info(name) {
        out.sort_by_key(|n| *n != m.default_recipe);
    }
    out
}

/// What building an editor needs besides its config.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions<'a> {
    /// Records that must not serve as unedited facts (the edits, and everything that is
    /// evaluated); their suite also picks the default fact pool.
    pub exclude: &'a [EditRecord],
    /// The fact pool file, over the recipe's `augment.fact_pool`.
    pub pool: Option<PathBuf>,
    /// Show progress bars.
    pub progress: bool,
}

/// The editor `config` describes.
pub fn build(
    config: &MethodConfig,
    tok: &Tokenizer,
    opts: &BuildOptions,
) -> Result<Box<dyn Editor>> {
    Ok(match config {
        MethodConfig::None(_) => Box::new(NoEdit),
        MethodConfig::Rome(c) => {
            let mut e = RomeEditor::new(c.clone());
            e.progress = opts.progress;
            Box::new(e)
        }
        MethodConfig::Memit(c) => {
            let mut e = MemitEditor::new(c.clone());
            e.progress = opts.progress;
            Box::new(e)
        }
        MethodConfig::AlphaEdit(c) => {
            let mut e = AlphaEditEditor::new(c.clone());
            e.progress = opts.progress;
            Box::new(e)
        }
        _ => Box::new(build_ft(config, tok, opts)?),
    })
}

/// The fine-tuning editor of a fine-tuning method's config.
pub fn build_ft(config: &MethodConfig, tok: &Tokenizer, opts: &BuildOptions) -> Result<FtEditor> {
    let recipe = config
        .recipe()
        .ok_or_else(|| Error::Input(format!("method '{}' does not fine-tune", config.method())))?;
    let aug = &recipe.augment;
    let pool = if aug.facts == FactMode::None || aug.facts_per_edit == 0 {
        Vec::new()
    } else {
        let path = match (&opts.pool, aug.fact_pool.as_str()) {
            (Some(p), _) => p.clone(),
            (None, p) if !p.is_empty() => PathBuf::from(p),
            (None, _) => data::default_fact_pool(
                opts.exclude
                    .first()
                    .map_or(data::Suite::CounterFact, |r| r.suite),
            ),
        };
        augment::fact_pool(&path, None, opts.exclude)?
    };
    let lm_text = if aug.lm_gamma > 0.0 {
        let path = if aug.lm_text.is_empty() {
            data::default_text()
        } else {
            PathBuf::from(&aug.lm_text)
        };
        Some(std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?)
    } else {
        None
    };
    let mut ft = FtEditor::new(
        config.method(),
        recipe.clone(),
        pool,
        lm_text.as_deref(),
        tok,
    )?;
    ft.progress = opts.progress;
    Ok(ft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_its_default_recipe_and_every_recipe_a_method() {
        for m in METHODS {
            let recipes = recipes_of(m.name);
            assert_eq!(recipes.first(), Some(&m.default_recipe), "{}", m.name);
        }
        let listed: usize = METHODS.iter().map(|m| recipes_of(m.name).len()).sum();
        assert_eq!(listed, super::super::config::BUILTIN.len());
        assert!(recipes_of("ft").contains(&"paper-mass"));
        let e = info("mend").unwrap_err().to_string();
        assert!(
            e.contains("unknown method 'mend'") && e.contains("alphaedit"),
            "{e}"
        );
    }
}

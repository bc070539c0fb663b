//! Choosing an editing method from the command line (shared by `eval` and `edit`).

use std::path::PathBuf;

use clap::Args;
use ftedit::Tokenizer;
use ftedit::data::{self, EditRecord, Suite};
use ftedit::edit::augment;
use ftedit::edit::ft::FtEditor;
use ftedit::edit::recipe::{FactMode, Recipe};
use ftedit::edit::{Editor, NoEdit};

#[derive(Args, Clone)]
pub struct MethodArgs {
    /// Editing method: none (unedited), ft (the paper's fine-tuning), ft-naive (loss on
    /// the whole sentence, no augmentation).
    #[arg(long, default_value = "none")]
    pub method: String,
    /// Recipe for ft: a built-in name (layers, full, paper-mass, single) or a TOML file.
    #[arg(long, default_value = "layers")]
    pub recipe: String,
    /// Override a recipe field, e.g. --set optim.lr=1e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Data file of unedited facts for augmentation (default: the recipe's, else the
    /// train split that matches the evaluated data).
    #[arg(long)]
    pub pool: Option<PathBuf>,
}

/// The effective recipe of a method.
pub fn recipe(args: &MethodArgs) -> anyhow::Result<Recipe> {
    let mut set = args.set.clone();
    if args.method == "ft-naive" {
        // Naive fine-tuning: the whole sentence, no prefixes, no facts.
        set.splice(
            0..0,
            [
                "loss.kind=full",
                "augment.prefixes=false",
                "augment.facts=none",
            ]
            .map(String::from),
        );
    }
    Ok(Recipe::load(&args.recipe, &set)?)
}

/// Builds the editor; `records` are the edits (and everything evaluated), which the
/// fact pool must not contain.
pub fn editor(
    args: &MethodArgs,
    tok: &Tokenizer,
    records: &[EditRecord],
    progress: bool,
) -> anyhow::Result<Box<dyn Editor>> {
    Ok(match ft_editor(args, tok, records, progress)? {
        Some(ft) => Box::new(ft),
        None => Box::new(NoEdit),
    })
}

/// The fine-tuning editor of `args`, or `None` for `--method none`.
pub fn ft_editor(
    args: &MethodArgs,
    tok: &Tokenizer,
    records: &[EditRecord],
    progress: bool,
) -> anyhow::Result<Option<FtEditor>> {
    match args.method.as_str() {
        "none" => return Ok(None),
        "ft" | "ft-naive" => {}
        other => anyhow::bail!("unknown method '{other}' (available: none, ft, ft-naive)"),
    }
    let recipe = recipe(args)?;
    let pool = if recipe.augment.facts == FactMode::None || recipe.augment.facts_per_edit == 0 {
        Vec::new()
    } else {
        let path = match (&args.pool, recipe.augment.fact_pool.as_str()) {
            (Some(p), _) => p.clone(),
            (None, p) if !p.is_empty() => PathBuf::from(p),
            (None, _) => match records.first().map(|r| r.suite) {
                Some(Suite::Zsre) => data::data_dir().join("zsre/zsre_mend_train-1k.json"),
                _ => {
                    data::data_dir().join("counterfact/easyedit_mend_format/counterfact-train.json")
                }
            },
        };
        augment::fact_pool(&path, None, records)?
    };
    let lm_text = if recipe.augment.lm_gamma > 0.0 {
        let path = if recipe.augment.lm_text.is_empty() {
            data::data_dir().join("aux/wikitext-2-raw/wiki.test.raw")
        } else {
            PathBuf::from(&recipe.augment.lm_text)
        };
        Some(
            std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        )
    } else {
        None
    };
    let mut ft = FtEditor::new(&args.method, recipe, pool, lm_text.as_deref(), tok)?;
    ft.progress = progress;
    Ok(Some(ft))
}

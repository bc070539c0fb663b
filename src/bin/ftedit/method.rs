//! Choosing an editing method from the command line (shared by `eval` and `edit`).

use std::path::PathBuf;

use clap::Args;
use ftedit::Tokenizer;
use ftedit::data::{self, EditRecord, Suite};
use ftedit::edit::augment;
use ftedit::edit::ft::FtEditor;
use ftedit::edit::memit::{MemitEditor, memit_value_config};
use ftedit::edit::recipe::{FactMode, Recipe};
use ftedit::edit::rome::{RomeEditor, StatsConfig, ValueConfig};
use ftedit::edit::stats;
use ftedit::edit::{Editor, NoEdit};

#[derive(Args, Clone)]
pub struct MethodArgs {
    /// Editing method: none (unedited), ft (the paper's fine-tuning), ft-naive (loss on
    /// the whole sentence, no augmentation), ft-l, ft-m (one-matrix baselines), rome,
    /// memit.
    #[arg(long, default_value = "none")]
    pub method: String,
    /// Recipe of a fine-tuning method: a built-in name (layers, full, paper-mass, single,
    /// ft-l, ft-m) or a TOML file [default: layers; ft-l and ft-m: their own].
    #[arg(long)]
    pub recipe: Option<String>,
    /// Override a recipe field, e.g. --set optim.lr=1e-4, or set a ROME/MEMIT option,
    /// e.g. --set layers=3..8 (repeatable).
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
    let name = match (&args.recipe, args.method.as_str()) {
        (Some(r), _) => r.as_str(),
        (None, m @ ("ft-l" | "ft-m")) => m,
        (None, _) => "layers",
    };
    Ok(Recipe::load(name, &set)?)
}

/// Builds the editor; `records` are the edits (and everything evaluated), which the
/// fact pool must not contain.
pub fn editor(
    args: &MethodArgs,
    tok: &Tokenizer,
    records: &[EditRecord],
    progress: bool,
) -> anyhow::Result<Box<dyn Editor>> {
    if let Some(e) = locate_editor(args, progress)? {
        return Ok(e);
    }
    Ok(match ft_editor(args, tok, records, progress)? {
        Some(ft) => Box::new(ft),
        None => Box::new(NoEdit),
    })
}

/// ROME or MEMIT, configured by `--set` keys: `layers` (ROME: one layer, MEMIT: `A..B`),
/// `lambda` (MEMIT), `steps`, `lr`, `kl_factor`, `weight_decay`, `clamp_norm_factor`
/// (the value optimisation), `samples`, `text`, `cache` (the key statistics).
pub fn locate_editor(args: &MethodArgs, progress: bool) -> anyhow::Result<Option<Box<dyn Editor>>> {
    let rome = match args.method.as_str() {
        "rome" => true,
        "memit" => false,
        _ => return Ok(None),
    };
    let mut value = if rome {
        ValueConfig::default()
    } else {
        memit_value_config()
    };
    let mut stats = StatsConfig {
        text: default_text(),
        samples: 100_000,
        cache_dir: Some(stats::default_cache_dir()),
    };
    let (mut layers, mut lambda) = (None, 15_000.0);
    for kv in &args.set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--set {kv}: expected KEY=VALUE"))?;
        let num = || {
            v.parse::<f64>()
                .map_err(|_| anyhow::anyhow!("--set {k}: '{v}' is not a number"))
        };
        match k {
            "layers" => layers = Some(v.to_owned()),
            "lambda" => lambda = num()?,
            "steps" => value.steps = num()? as usize,
            "lr" => value.lr = num()?,
            "kl_factor" => value.kl_factor = num()?,
            "weight_decay" => value.weight_decay = num()?,
            "clamp_norm_factor" => value.clamp_norm_factor = num()?,
            "samples" => stats.samples = num()? as usize,
            "text" => stats.text = PathBuf::from(v),
            "cache" => stats.cache_dir = (!v.is_empty()).then(|| PathBuf::from(v)),
            other => anyhow::bail!(
                "--set {other}: {} takes layers, lambda, steps, lr, kl_factor, weight_decay, clamp_norm_factor, samples, text, cache",
                args.method
            ),
        }
    }
    Ok(Some(if rome {
        let layer = layers
            .map(|l| {
                l.parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("--set layers={l}: ROME edits one layer"))
            })
            .transpose()?;
        let mut e = RomeEditor::new(layer, value, stats);
        e.progress = progress;
        Box::new(e)
    } else {
        let range = layers
            .map(|l| data::Selection::parse_range(&l))
            .transpose()?;
        let mut e = MemitEditor::new(range, value, stats);
        e.lambda = lambda;
        e.progress = progress;
        Box::new(e)
    }))
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
        "ft" | "ft-naive" | "ft-l" | "ft-m" => {}
        other => anyhow::bail!(
            "unknown method '{other}' (available: none, ft, ft-naive, ft-l, ft-m, rome, memit)"
        ),
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
            default_text()
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

/// The plain text used when a method needs some and none is named (γ·LM, ROME/MEMIT
/// key statistics): the WikiText sample in the data folder.
fn default_text() -> PathBuf {
    data::data_dir().join("aux/wikitext-2-raw/wiki.test.raw")
}

//! `ftedit train-editor`: train an editor that learns from edit records before it
//! edits (MEND's network, SERAC's scope classifier), validating as it goes; the same
//! command again resumes an interrupted run.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ftedit::edit::MethodConfig;
use ftedit::edit::mend::train::{TrainOptions, train_editor};

use crate::{ModelArgs, RecordArgs};

/// Files the output folder may hold: the run's own.
const OWN: &[&str] = &[
    "editor.safetensors",
    "classifier.safetensors",
    "classifier.safetensors.json",
    "embeddings.safetensors",
    "recipe.toml",
    "train_curve.jsonl",
    "train-resume",
    ftedit::output::LOCK_FILE,
];

#[derive(Args)]
pub struct TrainEditorArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The editor to train: mend or serac.
    #[arg(long, default_value = "mend")]
    method: String,
    /// A recipe of that method (built-in or TOML file) [default: the method's own].
    #[arg(long)]
    recipe: Option<String>,
    /// Override a recipe setting, e.g. --set train.steps=5000 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Edit records to train on: CounterFact, zsRE or JSONL with paraphrases and
    /// locality prompts (what `eval --data` reads).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    records: RecordArgs,
    /// Records never to train on (those you will evaluate on): dropped from --data by id
    /// and by subject and new target (repeatable).
    #[arg(long, value_name = "FILE")]
    exclude: Vec<PathBuf>,
    /// Records to validate on [default: the last `train.val_records` of --data, held
    /// out of training].
    #[arg(long)]
    val: Option<PathBuf>,
    /// The output folder: editor.safetensors, recipe.toml (edit with `--recipe
    /// DIR/recipe.toml`) and train_curve.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Minutes between resume points (also saved at each validation and on Ctrl-C /
    /// SIGTERM; the same command again continues; 0: only those).
    #[arg(long, default_value_t = 10.0, value_name = "MINUTES")]
    checkpoint_every: f64,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: TrainEditorArgs) -> anyhow::Result<()> {
    if args.method != "mend" && args.method != "serac" {
        anyhow::bail!(
            "--method {}: only mend and serac are trained this way (the other methods edit without training)",
            args.method
        );
    }
    if !(args.checkpoint_every >= 0.0 && args.checkpoint_every.is_finite()) {
        anyhow::bail!(
            "--checkpoint-every {}: minutes, 0 for none",
            args.checkpoint_every
        );
    }
    if args.out.is_file() {
        anyhow::bail!("--out {}: a file, not a folder", args.out.display());
    }
    if args.out.is_dir() {
        let other: Vec<String> = ftedit::output::names_in(&args.out)?
            .into_iter()
            .filter(|n| !OWN.contains(&n.as_str()) && !n.starts_with('.'))
            .collect();
        if !other.is_empty() {
            anyhow::bail!(
                "--out {}: the folder holds files train-editor did not write ({}); choose a new or empty folder",
                args.out.display(),
                ftedit::output::some_names(&other)
            );
        }
    }
    let mut train = args.records.load(&args.data, None)?;
    if !args.exclude.is_empty() {
        let mut ids = std::collections::HashSet::new();
        let mut pairs = std::collections::HashSet::new();
        for p in &args.exclude {
            for r in ftedit::data::load(p, None)? {
                pairs.insert((r.subject.clone(), r.target_new.clone()));
                // Only CounterFact's case ids name a fact; zsRE's are positions in a file.
                if r.suite == ftedit::data::Suite::CounterFact {
                    ids.insert(r.id);
                }
            }
        }
        let before = train.len();
        train.retain(|r| {
            let same_id = r.suite == ftedit::data::Suite::CounterFact && ids.contains(&r.id);
            !same_id && !pairs.contains(&(r.subject.clone(), r.target_new.clone()))
        });
        eprintln!(
            "excluded {} of {before} training records (in --exclude)",
            before - train.len()
        );
    }
    let (model, tok) = args.model.load()?;
    let config = MethodConfig::select(
        Some(&args.method),
        args.recipe.as_deref(),
        &args.method,
        Some(model.arch_name()),
        &args.set,
    )?;
    let val_records = match &config {
        MethodConfig::Mend(c) => c.train.val_records,
        MethodConfig::Serac(c) => c.train.val_records,
        _ => unreachable!("select checked the method"),
    };
    let (val, val_path) = match &args.val {
        Some(p) => {
            let v = ftedit::data::load(p, None)?;
            if v.is_empty() {
                anyhow::bail!("--val {}: no records", p.display());
            }
            (v, p.clone())
        }
        None => {
            let k = val_records;
            if k == 0 {
                anyhow::bail!("train.val_records = 0: validation needs at least one edit");
            }
            if train.len() < k + 2 {
                anyhow::bail!(
                    "{}: {} records, too few to hold out {k} for validation and train on the rest (give --val)",
                    args.data.display(),
                    train.len()
                );
            }
            let v = train.split_off(train.len() - k);
            (v, args.data.clone())
        }
    };
    let config = match config {
        MethodConfig::Mend(c) => c,
        MethodConfig::Serac(c) => return serac(&args, &model, &tok, &c, &train, &val, &val_path),
        _ => unreachable!("select checked the method"),
    };
    eprintln!(
        "training MEND on {} records of {} (validating on {} of {}), up to {} steps",
        train.len(),
        args.data.display(),
        config.train.val_records.min(val.len()),
        val_path.display(),
        config.train.steps
    );
    let opts = TrainOptions {
        out: args.out.clone(),
        checkpoint_every: Duration::from_secs_f64(args.checkpoint_every * 60.0),
        progress: !args.quiet,
    };
    let report = train_editor(
        &model,
        &tok,
        &config,
        (&train, &args.data),
        (&val, &val_path),
        &opts,
    )?;
    println!(
        "{} steps in {:.0} s{}; best validation loss {:.4} at step {}{}",
        report.steps,
        report.seconds,
        report
            .resumed_from
            .map_or(String::new(), |s| format!(" (resumed at step {s})")),
        report.best_val_loss.unwrap_or(f64::NAN),
        report.best_step,
        if report.skipped > 0 {
            format!("; {} steps skipped (non-finite)", report.skipped)
        } else {
            String::new()
        }
    );
    written(&args, &report.editor, &report.recipe);
    Ok(())
}

/// SERAC's classifier: embeddings of the records' prompts once, then the projection.
fn serac(
    args: &TrainEditorArgs,
    model: &ftedit::Model,
    tok: &ftedit::Tokenizer,
    config: &ftedit::edit::serac::SeracConfig,
    train: &[ftedit::data::EditRecord],
    val: &[ftedit::data::EditRecord],
    val_path: &std::path::Path,
) -> anyhow::Result<()> {
    let val = &val[..val.len().min(config.train.val_records.max(2))];
    eprintln!(
        "training SERAC's scope classifier on {} records of {} (validating on {} of {}), up to {} steps",
        train.len(),
        args.data.display(),
        val.len(),
        val_path.display(),
        config.train.steps
    );
    let report = ftedit::edit::serac::train_classifier(
        model,
        tok,
        config,
        train,
        val,
        &args.out,
        !args.quiet,
    )?;
    let b = &report.best;
    println!(
        "{} steps in {:.0} s; best validation at step {}: loss {:.4}, balanced accuracy {:.1} % (in scope {:.1}, out of scope {:.1})",
        report.steps, report.seconds, b.step, b.loss, b.accuracy, b.in_scope, b.out_of_scope
    );
    written(args, &report.classifier, &report.recipe);
    Ok(())
}

/// Where the trained editor went and how to edit with it.
fn written(args: &TrainEditorArgs, editor: &std::path::Path, recipe: &std::path::Path) {
    println!(
        "wrote {}, {} and {}",
        editor.display(),
        recipe.display(),
        args.out.join("train_curve.jsonl").display()
    );
    println!(
        "edit with: ftedit edit --recipe {} --model {} ...",
        recipe.display(),
        args.model.model
    );
}

//! `ftedit edit`: edit a model's facts and write the edited model.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use ftedit::edit::{self, Editor, registry};
use ftedit::model::save;
use ftedit::protocols::apply::apply;

use crate::health::HealthArgs;
use crate::method::MethodArgs;
use crate::{ModelArgs, RecordArgs};

#[derive(Args)]
pub struct EditArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The edits: CounterFact, zsRE or JSONL (`{"prompt": "... {} ...", "subject", "target_new"}`).
    #[arg(long)]
    edits: PathBuf,
    #[command(flatten)]
    records: RecordArgs,
    #[command(flatten)]
    method: MethodArgs,
    /// Where to write the edited model: a `.gguf` file (GGUF input only: unchanged
    /// tensors keep their bytes) or a folder for transformers (safetensors). A new path
    /// or an empty folder; checked before the edit.
    #[arg(long)]
    out: PathBuf,
    /// Replace what is at --out: an earlier output of ftedit, or a file. A folder with
    /// files ftedit did not write is never replaced.
    #[arg(long)]
    force: bool,
    /// Write the model even when the health check says editing collapsed it
    /// (otherwise nothing is written and the exit status is 4).
    #[arg(long)]
    allow_collapse: bool,
    /// GGUF output: store changed tensors as Q8_0 instead of F32.
    #[arg(long)]
    quantize: bool,
    /// Folder output: the tensors' dtype, f32, bf16 or f16 (default: the input folder's
    /// dtype; f32 for GGUF input).
    #[arg(long)]
    out_dtype: Option<String>,
    /// No progress bar, no table: one line.
    #[arg(long)]
    quiet: bool,
    /// Exit with status 3 when an edit did not take (the model is still written).
    #[arg(long)]
    require_success: bool,
    /// Neighbour prompts (the records' own, first of each) whose top-1 is shown before
    /// and after.
    #[arg(long, default_value_t = 5)]
    neighbours: usize,
    /// Edits shown in the table (all of them are in the report).
    #[arg(long, default_value_t = 20)]
    rows: usize,
    /// Also write the shuffled training set (token ids) to this JSON file.
    #[arg(long)]
    dump_examples: Option<PathBuf>,
    #[command(flatten)]
    health: HealthArgs,
}

pub fn run(args: EditArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let records = args.records.load(&args.edits, None)?;
    let problems = ftedit::data::edit_problems(&records);
    if !problems.is_empty() {
        anyhow::bail!(
            "{}: {}",
            args.edits.display(),
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let source = ftedit::model::registry::resolve(&args.model.model)?;
    // Where the model goes is checked before anything is loaded or trained.
    let dest = save::Destination::check(&args.out, &source, args.force)?;
    for stale in &dest.stale_removed {
        eprintln!(
            "note: removed {}, left by an earlier run that was killed",
            stale.display()
        );
    }
    let gguf_out = dest.format == save::OutputFormat::Gguf;
    if gguf_out && !is_gguf(&source) {
        anyhow::bail!("a .gguf output needs a GGUF input model; write a folder instead");
    }
    let out_dtype = match &args.out_dtype {
        Some(_) if gguf_out => anyhow::bail!(
            "--out-dtype is for folder output; a .gguf keeps its tensors' types (see --quantize)"
        ),
        Some(name) => ftedit::runtime::parse_kind(name)?,
        None => ftedit::model::stored_dtype(&source)?,
    };
    let (mut model, tok) = args.model.load()?;
    let load_seconds = start.elapsed().as_secs_f64();
    let config = args.method.config("ft", &model)?;
    if config.method() == "none" {
        anyhow::bail!("--method none does not edit; pick a method (ftedit methods)");
    }
    let build = args
        .method
        .build_options(&records, !args.quiet, Some(dest.resume_dir()))?;
    let mut editor: Box<dyn Editor> = if config.recipe().is_some() {
        let mut ft = registry::build_ft(&config, &tok, &build)?;
        ft.dump_examples = args.dump_examples.clone();
        registry::with_post(&config, Box::new(ft))
    } else {
        edit::build(&config, &tok, &build)?
    };
    let changed = editor.writes(&model)?;
    dest.check_space(save::estimate_bytes(
        &model,
        dest.format,
        &source,
        out_dtype,
        changed.as_deref(),
    ))?;
    let probe = args.health.probe(&tok, model.max_positions())?;
    let applied = apply(
        &mut model,
        &tok,
        &records,
        editor.as_mut(),
        probe.as_ref(),
        args.neighbours,
    )?;
    let (check, health) = (&applied.check, &applied.health);
    if let Some(h) = health.as_ref().filter(|h| h.collapsed)
        && !args.allow_collapse
    {
        if !args.quiet {
            print!("{}", check.table(args.rows));
        }
        return Err(crate::Exit {
            code: 4,
            message: format!(
                "the edit collapsed the model ({}); nothing was written. Lower optim.lr or \
                 edit fewer facts at once, or pass --allow-collapse to write it anyway",
                h.line()
            ),
        }
        .into());
    }
    let saved_at = Instant::now();
    let written = save::save_to(&model, &tok, &dest, &source, out_dtype, args.quantize)?;
    if let Some(base) = &written.adapter {
        eprintln!(
            "note: the edit lives in an adapter beside the model ({}.json, .safetensors): \
             ftedit applies it; llama.cpp and transformers run the model without it",
            base.display()
        );
    }
    let save_seconds = saved_at.elapsed().as_secs_f64();
    let mut timing = serde_json::Map::new();
    timing.insert("load".into(), load_seconds.into());
    timing.extend(applied.timing.clone());
    timing.insert("save".into(), save_seconds.into());
    let report = serde_json::json!({
        "model": source.display().to_string(),
        "edits": args.edits.display().to_string(),
        "n_edits": records.len(),
        "method": config.method(),
        "config": serde_json::to_value(&config)?,
        "training": applied.training,
        "health": health,
        "check": check,
        "saved": written.report,
        "seconds": start.elapsed().as_secs_f64(),
        "timing": timing,
        "peak_rss_mb": ftedit::runtime::peak_rss_mb(),
    });
    let report_path = dest.report_path();
    ftedit::output::write_atomic(
        &report_path,
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    // The effective recipe: `--recipe` with this file repeats the edit.
    ftedit::output::write_atomic(&dest.recipe_path(), config.to_toml().as_bytes())?;
    if !args.quiet {
        print!("{}", check.table(args.rows));
        if let Some(h) = health {
            println!("health: {}", h.line());
        }
    }
    println!(
        "edited {} facts in {:.1} s ({}); model in {}, report in {}",
        records.len(),
        start.elapsed().as_secs_f64(),
        check.line(),
        args.out.display(),
        dest.given_report_path().display()
    );
    if args.require_success && check.not_taken > 0 {
        std::process::exit(3);
    }
    Ok(())
}

fn is_gguf(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

//! `ftedit sweep`: tune a method on your own model, one run per combination of settings.

use std::path::{Path, PathBuf};

use clap::Args;
use ftedit::protocols::sweep::{self, Grid, Sweep};

use crate::eval::{EvalFlags, stem};
use crate::method::MethodArgs;
use crate::{ModelArgs, RecordArgs};

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The data file (as for eval); tune on records you do not report.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    records: RecordArgs,
    #[command(flatten)]
    method: MethodArgs,
    /// A setting and its values, e.g. --grid value.clamp_norm_factor=0.75,2,4
    /// (repeatable; every combination is run).
    #[arg(long, required = true, value_name = "KEY=V1,V2,…")]
    grid: Vec<String>,
    #[command(flatten)]
    eval: EvalFlags,
    /// Output folder: one folder per combination, sweep.md and sweep.json; rerunning
    /// skips the combinations already finished there.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    let grid = Grid::parse(&args.grid)?;
    let protocol = args.eval.protocol()?;
    let records = args.records.load(&args.data, None)?;
    let mut opts = args.eval.options(&records)?;
    let (mut model, tok) = args.model.load()?;
    args.eval
        .for_model(&mut opts, &tok, model.max_positions())?;
    let name = args
        .method
        .method
        .clone()
        .or_else(|| args.method.recipe.as_deref().map(|r| stem(Path::new(r))))
        .unwrap_or_default();
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "sweep-{}-{}-{name}",
            stem(Path::new(&args.model.model)),
            stem(&args.data),
        ))
    });
    let spec = Sweep {
        method: args.method.method.as_deref(),
        recipe: args.method.recipe.as_deref(),
        overrides: &args.method.set,
        grid: &grid,
        protocol,
        run: args.eval.run_info(
            &args.model,
            &args.data,
            &args.records,
            None,
            &name,
            protocol,
        ),
        progress: !args.eval.quiet,
    };
    let table = sweep::sweep(
        &mut model,
        &tok,
        &records,
        &spec,
        &opts,
        &args
            .method
            .build_options(&records, !args.eval.quiet, None)?,
        &out,
    )?;
    println!("{}", table.markdown());
    println!(
        "{} combinations ({} run now, {} already done) on {} records; table in {}",
        table.rows.len(),
        table.ran,
        table.skipped,
        records.len(),
        out.join("sweep.md").display()
    );
    Ok(())
}

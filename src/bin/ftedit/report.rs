//! `ftedit report`: work with evaluation output folders.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ftedit::eval::report;

#[derive(Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    command: ReportCommand,
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Combine the output folders of shards (`eval --shard i/N`) into one report.
    Merge {
        /// The shards' output folders.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Where the merged records.jsonl, summary.json and summary.md go.
        #[arg(long, default_value = "runs/merged")]
        out: PathBuf,
    },
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    match args.command {
        ReportCommand::Merge { dirs, out } => {
            let file = report::merge(&dirs, &out)?;
            println!("{}", file.summary.markdown());
            println!("merged {} folders into {}", dirs.len(), out.display());
        }
    }
    Ok(())
}

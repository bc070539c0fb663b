//! `ftedit report`: work with evaluation output folders.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ftedit::output::write_atomic;
use ftedit::report::{self, curves, page};

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
    /// Draw the curves of runs (metrics against edits, one line per run) as SVG: a
    /// sequential run's curve.jsonl, or a finished run's summary as one point.
    Plot {
        /// The runs' output folders, or curve files kept on their own (a run's
        /// `curve.jsonl` copied elsewhere).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The SVG file to write.
        #[arg(long)]
        out: PathBuf,
        /// Metrics to draw, comma-separated: ES, NS, efficacy, first_batch.ES, PPL,
        /// known_retained, … [default: the suite's three, the first batch's efficacy,
        /// PPL, known_retained].
        #[arg(long, value_delimiter = ',')]
        metrics: Vec<String>,
        /// A run's name in the legend, in the order of the runs [default: its folder's].
        #[arg(long)]
        label: Vec<String>,
        /// Draw against this metric instead of the number of edits, e.g. `--x PPL_ratio
        /// --metrics S` over a sweep's runs: a trade-off, one point per finished run.
        #[arg(long, value_name = "METRIC")]
        x: Option<String>,
        /// The chart's title.
        #[arg(long, default_value = "Editing over time")]
        title: String,
    },
    /// Write one self-contained HTML page for runs (evaluation folders, or the report
    /// `ftedit edit` writes beside a model): the summaries side by side, every record
    /// (sortable, filterable to the edits that did not take), the loss and sequential
    /// curves as inline SVG.
    Html {
        /// The runs: evaluation output folders or `ftedit edit` reports.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The HTML file to write.
        #[arg(long, default_value = "runs/report.html")]
        out: PathBuf,
        /// A run's name, in the order of the runs [default: its folder's or file's].
        #[arg(long)]
        label: Vec<String>,
        /// The page's title.
        #[arg(long, default_value = "ftedit report")]
        title: String,
    },
}

/// A run's name: its label if given, else its folder's (or model's) name.
fn run_name(labels: &[String], i: usize, dir: &std::path::Path) -> String {
    labels
        .get(i)
        .cloned()
        .unwrap_or_else(|| page::Run::default_name(dir))
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    match args.command {
        ReportCommand::Merge { dirs, out } => {
            let file = report::merge(&dirs, &out)?;
            println!("{}", file.summary.markdown());
            println!("merged {} folders into {}", dirs.len(), out.display());
        }
        ReportCommand::Plot {
            runs,
            out,
            metrics,
            label,
            x,
            title,
        } => {
            if out.extension().is_none_or(|e| e != "svg") {
                anyhow::bail!(
                    "--out {}: plots are written as SVG (FILE.svg)",
                    out.display()
                );
            }
            if label.len() > runs.len() {
                anyhow::bail!("{} --label for {} runs", label.len(), runs.len());
            }
            let mut curves = Vec::new();
            for (i, dir) in runs.iter().enumerate() {
                curves.push((run_name(&label, i, dir), curves::plot_points(dir)?));
            }
            let metrics = if metrics.is_empty() {
                curves::default_plot_metrics(&curves)
            } else {
                metrics
            };
            let chart = curves::chart(&title, &curves, &metrics, x.as_deref());
            if let Some(m) = chart
                .panels
                .iter()
                .zip(&metrics)
                .find(|(p, _)| p.series.iter().all(Option::is_none))
                .map(|(_, m)| m)
            {
                eprintln!("note: no run has '{m}'; its panel is empty");
            }
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            write_atomic(&out, chart.svg().as_bytes())?;
            println!(
                "{} runs, {} metrics: {}",
                curves.len(),
                metrics.len(),
                out.display()
            );
        }
        ReportCommand::Html {
            runs,
            out,
            label,
            title,
        } => {
            if label.len() > runs.len() {
                anyhow::bail!("{} --label for {} runs", label.len(), runs.len());
            }
            let runs = runs
                .iter()
                .enumerate()
                .map(|(i, p)| page::Run::open(p, run_name(&label, i, p)))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            write_atomic(&out, page::render(&title, &runs).as_bytes())?;
            let records: usize = runs.iter().map(|r| r.rows.len()).sum();
            let missed = runs
                .iter()
                .flat_map(|r| &r.rows)
                .filter(|r| r.took == Some(false))
                .count();
            println!(
                "{} runs, {records} records ({missed} did not take): {}",
                runs.len(),
                out.display()
            );
        }
    }
    Ok(())
}

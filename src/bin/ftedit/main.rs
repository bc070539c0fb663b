//! The `ftedit` command line.

mod edit;
mod eval;
mod generate;
mod health;
mod method;
mod methods;
mod predict;
mod report;
mod sweep;
mod train_editor;

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ftedit::data::{self, EditRecord, Format, Selection};
use ftedit::model::registry;
use ftedit::{LoadOptions, Model, Tokenizer, runtime};

/// Edit the facts a language model knows, by fine-tuning, and measure how well each
/// edit took.
#[derive(Parser)]
#[command(name = "ftedit", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the next-token distribution after a prompt.
    Predict(predict::PredictArgs),
    /// Continue a prompt, greedily or by top-k sampling.
    Generate(generate::GenerateArgs),
    /// Edit facts into a model and write the edited model.
    Edit(Box<edit::EditArgs>),
    /// Evaluate edits on CounterFact, zsRE or your own records.
    Eval(Box<eval::EvalArgs>),
    /// Tune a method: run a grid of settings and tabulate the results.
    Sweep(Box<sweep::SweepArgs>),
    /// List the editing methods and their built-in recipes.
    Methods(methods::MethodsArgs),
    /// Merge evaluation reports.
    Report(report::ReportArgs),
    /// A model's general abilities on downstream tasks (lm-eval's scoring), alone or
    /// against the unedited model.
    Health(Box<health::HealthCmdArgs>),
    /// Train an editor that learns to edit (MEND) on edit records.
    TrainEditor(Box<train_editor::TrainEditorArgs>),
}

/// Which model to load, and where.
#[derive(Args, Clone)]
struct ModelArgs {
    /// A GGUF file, a Hugging Face folder, or a default model: smollm2, gemma3 (qwen2 if fetched).
    #[arg(long, short, default_value = "smollm2")]
    model: String,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Parameter dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// CPU threads for libtorch (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
}

impl ModelArgs {
    fn load(&self) -> anyhow::Result<(Model, Tokenizer)> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if self.threads < 0 || self.threads as usize > cores {
            anyhow::bail!(
                "--threads {}: this machine has {cores} cores available (use 1 to {cores}, or 0 \
                 for libtorch's default)",
                self.threads
            );
        }
        if self.threads > 0 {
            tch::set_num_threads(self.threads);
        }
        let opts = LoadOptions {
            device: runtime::parse_device(&self.device)?,
            kind: runtime::parse_kind(&self.dtype)?,
        };
        let path = registry::resolve(&self.model)?;
        let (mut model, tok) = ftedit::load(&path, &opts)?;
        // An adapter an editor beside the weights (GRACE) wrote goes with the model.
        if ftedit::edit::registry::load_adapter(&mut model, &path)? {
            eprintln!(
                "note: with the adapter beside it ({}.json)",
                ftedit::model::adapter::adapter_base(&path).display()
            );
        }
        Ok((model, tok))
    }
}

/// Which records of a data file to use (`edit` and `eval` share these flags).
#[derive(Args, Clone)]
struct RecordArgs {
    /// The data format (detected when absent): counterfact, counterfact-mend, zsre, jsonl.
    #[arg(long)]
    format: Option<Format>,
    /// Use only the first N records.
    #[arg(long, short)]
    n: Option<usize>,
    /// Use records A..B (0-based, B excluded).
    #[arg(long, value_parser = Selection::parse_range)]
    range: Option<(usize, usize)>,
}

impl RecordArgs {
    /// The selected records of `path`, in file order; `shard` (`i`, `N`) keeps every N-th.
    fn load(&self, path: &Path, shard: Option<(usize, usize)>) -> anyhow::Result<Vec<EditRecord>> {
        let selection = Selection {
            first: self.n,
            range: self.range,
            shard,
        };
        let records = selection.apply(data::load(path, self.format)?);
        if records.is_empty() {
            anyhow::bail!("no records selected from {}", path.display());
        }
        Ok(records)
    }
}

/// An error with its own exit status (4: the edit collapsed the model).
#[derive(Debug)]
struct Exit {
    code: u8,
    message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// An error and its causes on one line, each cause said once (an error that already
/// quotes its source, as an I/O error with its path does, is not followed by it again).
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) || line.contains(&format!("{text}:")) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The exit status for `e`: its own ([`Exit`]), 128 + the signal for an interruption,
/// else 1.
fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(exit) = e.downcast_ref::<Exit>() {
        return exit.code;
    }
    e.chain()
        .find_map(|c| c.downcast_ref::<ftedit::Error>())
        .map_or(1, |f| f.exit_code() as u8)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Predict(args) => predict::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Edit(args) => edit::run(*args),
        Command::Eval(args) => eval::run(*args),
        Command::Sweep(args) => sweep::run(*args),
        Command::Methods(args) => methods::run(args),
        Command::Report(args) => report::run(args),
        Command::TrainEditor(args) => train_editor::run(*args),
        Command::Health(args) => health::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

//! `ftedit eval`: score a model's knowledge of edit records, after editing them.

use std::path::PathBuf;

use clap::Args;
use ftedit::data::Selection;
use ftedit::eval::EvalOptions;
use ftedit::eval::generation::Attributes;
use ftedit::eval::protocol::{self, Protocol};
use ftedit::eval::report::{OutputDir, RunInfo};

use crate::method::{self, MethodArgs};
use crate::{ModelArgs, RecordArgs};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The data file: CounterFact (ROME or EasyEdit format), zsRE (MEND format) or JSONL.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    records: RecordArgs,
    /// Evaluate every N-th record starting at i (after --n/--range), as `i/N`.
    #[arg(long, value_parser = Selection::parse_shard)]
    shard: Option<(usize, usize)>,
    #[command(flatten)]
    method: MethodArgs,
    /// single (edit, evaluate, restore), batch (edit all, then evaluate) or sequential.
    #[arg(long, default_value = "batch")]
    protocol: String,
    /// Sequential protocol: edits applied together at each step.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Sequential protocol: also evaluate everything edited so far every K steps.
    #[arg(long)]
    eval_every: Option<usize>,
    /// Output folder (records.jsonl, summary.json, summary.md); resumes if it has records.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip CounterFact fluency (GE), which samples 10 texts of 100 tokens per record.
    #[arg(long)]
    no_generation: bool,
    /// Compute GE only for the first N selected records.
    #[arg(long)]
    generation_n: Option<usize>,
    /// Skip exact match (greedy generation from the rewrite and paraphrase prompts).
    #[arg(long)]
    no_exact_match: bool,
    /// Folder with MEMIT's attribute_snippets.json, idf.npy, tfidf_vocab.json (for RS).
    #[arg(long)]
    attributes: Option<PathBuf>,
    /// Seed of the samplers.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Records scored together per round of forward passes.
    #[arg(long, default_value_t = 16)]
    chunk: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn protocol(args: &EvalArgs) -> anyhow::Result<Protocol> {
    Ok(match args.protocol.as_str() {
        "single" => Protocol::Single,
        "batch" => Protocol::Batch,
        "sequential" => Protocol::Sequential {
            batch_size: args.batch_size.max(1),
            eval_every: args.eval_every,
        },
        other => anyhow::bail!("unknown protocol '{other}' (single, batch, sequential)"),
    })
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let protocol = protocol(&args)?;
    let records = args.records.load(&args.data, args.shard)?;
    let attributes = args
        .attributes
        .as_deref()
        .map(Attributes::load)
        .transpose()?;
    let (mut model, tok) = args.model.load()?;
    let mut editor = method::editor(&args.method, &tok, &records, !args.quiet)?;
    let stem = |p: &std::path::Path| {
        p.file_stem()
            .map_or("data".into(), |s| s.to_string_lossy().into_owned())
    };
    let model_name = stem(std::path::Path::new(&args.model.model));
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "eval-{model_name}-{}-{}-{}",
            stem(&args.data),
            args.method.method,
            protocol.name()
        ))
    });
    let run = RunInfo {
        model: args.model.model.clone(),
        data: args.data.display().to_string(),
        method: editor.name().to_owned(),
        protocol: protocol.name().to_owned(),
        settings: serde_json::json!({
            "n": args.records.n, "range": args.records.range, "shard": args.shard,
            "batch_size": args.batch_size, "eval_every": args.eval_every,
            "generation": !args.no_generation, "generation_n": args.generation_n, "exact_match": !args.no_exact_match,
            "seed": args.seed, "dtype": args.model.dtype,
            "recipe": (args.method.method.starts_with("ft")).then(|| method::recipe(&args.method)).transpose()?,
        }),
    };
    let dir = OutputDir::open(&out, Some(&run))?;
    let opts = EvalOptions {
        exact_match: !args.no_exact_match,
        generation: !args.no_generation,
        generation_ids: args
            .generation_n
            .map(|n| records.iter().take(n).map(|r| r.id.clone()).collect()),
        seed: args.seed,
        attributes,
        chunk: args.chunk,
        progress: !args.quiet,
    };
    let seconds = protocol::run(
        &mut model,
        &tok,
        &records,
        editor.as_mut(),
        protocol,
        &opts,
        &dir,
    )?;
    let file = dir.write_summary(Some(run), Some(seconds))?;
    println!("{}", file.summary.markdown());
    println!(
        "{} records in {seconds:.1} s; results in {}",
        records.len(),
        dir.path.display()
    );
    Ok(())
}

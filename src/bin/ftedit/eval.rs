//! `ftedit eval`: score a model's knowledge of edit records, after editing them.

use std::path::{Path, PathBuf};

use clap::Args;
use ftedit::data::{EditRecord, Selection};
use ftedit::edit;
use ftedit::eval::EvalOptions;
use ftedit::eval::generation::Attributes;
use ftedit::eval::run_dir::{OutputDir, RunInfo, Timing};
use ftedit::protocols::{self, Protocol};

use crate::health::HealthArgs;
use crate::method::MethodArgs;
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
    #[command(flatten)]
    eval: EvalFlags,
    /// Output folder (records.jsonl, summary.json, summary.md, recipe.toml); resumes if
    /// it has records.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// How edits are applied and scored (`eval` and `sweep` share these flags).
#[derive(Args, Clone)]
pub struct EvalFlags {
    /// single (edit, evaluate, restore), batch (edit all, then evaluate) or sequential.
    #[arg(long, default_value = "batch")]
    protocol: String,
    /// Sequential protocol: edits applied together at each step.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Sequential protocol: a checkpoint every K steps (a line of curve.jsonl, scored
    /// on a sample of the edits so far, and a saved state the run resumes from).
    #[arg(long)]
    eval_every: Option<usize>,
    /// Skip CounterFact fluency (GE), which samples 10 texts of 100 tokens per record.
    #[arg(long)]
    no_generation: bool,
    /// Compute GE only for the first N selected records.
    #[arg(long)]
    generation_n: Option<usize>,
    /// Skip exact match (greedy generation from the rewrite and paraphrase prompts).
    #[arg(long)]
    no_exact_match: bool,
    /// Skip EasyEdit's locality (the neighbours' predictions before and after the edit).
    #[arg(long)]
    no_locality: bool,
    /// Folder with MEMIT's attribute_snippets.json, idf.npy, tfidf_vocab.json (for RS).
    #[arg(long)]
    attributes: Option<PathBuf>,
    /// Seed of the samplers.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Records scored together per round of forward passes.
    #[arg(long, default_value_t = 16)]
    chunk: usize,
    /// Sequential protocol: records a checkpoint scores at most (a fixed sample of
    /// the run, plus the first batch; the final evaluation scores all).
    #[arg(long, default_value_t = 200)]
    curve_sample: usize,
    /// Ask each edit's question through the model's chat template (chat_exact,
    /// chat_clean); on by default for models with a template, unless generation is off.
    #[arg(long, conflicts_with = "no_chat")]
    chat: bool,
    /// No chat-template questions.
    #[arg(long)]
    no_chat: bool,
    #[command(flatten)]
    pub health: HealthArgs,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl EvalFlags {
    pub fn protocol(&self) -> anyhow::Result<Protocol> {
        Ok(Protocol::parse(
            &self.protocol,
            self.batch_size,
            self.eval_every,
        )?)
    }

    pub fn options(&self, records: &[EditRecord]) -> anyhow::Result<EvalOptions> {
        Ok(EvalOptions {
            exact_match: !self.no_exact_match,
            generation: !self.no_generation,
            generation_ids: self
                .generation_n
                .map(|n| records.iter().take(n).map(|r| r.id.clone()).collect()),
            seed: self.seed,
            attributes: self
                .attributes
                .as_deref()
                .map(Attributes::load)
                .transpose()?,
            chunk: self.chunk,
            progress: !self.quiet,
            // Set once the model is loaded (`for_model`).
            health: None,
            curve_sample: self.curve_sample,
            chat: false,
            locality: !self.no_locality,
        })
    }

    /// What `options` leaves to the loaded model: the health probe (with the default
    /// sample of downstream tasks) and the chat questions.
    pub fn for_model(
        &self,
        opts: &mut EvalOptions,
        tok: &ftedit::Tokenizer,
        max_positions: usize,
    ) -> anyhow::Result<()> {
        opts.health = self.health.probe_with(
            tok,
            max_positions,
            ftedit::eval::health::GeneralOptions::default().items,
        )?;
        opts.chat = self.chat(tok)?;
        Ok(())
    }

    /// Whether to ask the chat questions of a model with this tokenizer.
    pub fn chat(&self, tok: &ftedit::Tokenizer) -> anyhow::Result<bool> {
        let has = tok.chat_template.is_some();
        if self.chat && !has {
            anyhow::bail!("--chat: this model has no chat template");
        }
        Ok(self.chat || (has && !self.no_chat && !self.no_generation))
    }

    /// The run's description for `method` under `protocol`, without the method's
    /// config, which callers add.
    pub fn run_info(
        &self,
        model: &ModelArgs,
        data: &Path,
        records: &RecordArgs,
        shard: Option<(usize, usize)>,
        method: &str,
        protocol: Protocol,
    ) -> RunInfo {
        RunInfo {
            model: model.model.clone(),
            data: data.display().to_string(),
            method: method.to_owned(),
            protocol: protocol.name().to_owned(),
            settings: serde_json::json!({
                "n": records.n, "range": records.range, "shard": shard,
                "batch_size": self.batch_size, "eval_every": self.eval_every,
                "generation": !self.no_generation, "generation_n": self.generation_n,
                "exact_match": !self.no_exact_match, "seed": self.seed, "dtype": model.dtype,
                "curve_sample": self.curve_sample,
            }),
        }
    }
}

/// A file's stem, for default output names.
pub fn stem(p: &Path) -> String {
    p.file_stem()
        .map_or("data".into(), |s| s.to_string_lossy().into_owned())
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let protocol = args.eval.protocol()?;
    let records = args.records.load(&args.data, args.shard)?;
    // Published data sets have a few such records: said, not refused.
    let problems = ftedit::data::edit_problems(&records);
    for p in problems.iter().take(5) {
        eprintln!("warning: {}: {p}", args.data.display());
    }
    if problems.len() > 5 {
        eprintln!(
            "warning: {}: {} more records that contradict another or change nothing",
            args.data.display(),
            problems.len() - 5
        );
    }
    let mut opts = args.eval.options(&records)?;
    let (mut model, tok) = args.model.load()?;
    args.eval
        .for_model(&mut opts, &tok, model.max_positions())?;
    let config = args.method.config("none", &model)?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "eval-{}-{}-{}-{}",
            stem(Path::new(&args.model.model)),
            stem(&args.data),
            config.method(),
            protocol.name()
        ))
    });
    let build = args.method.build_options(
        &records,
        !args.eval.quiet,
        Some(out.join(ftedit::eval::run_dir::TRAIN_RESUME)),
    )?;
    let mut editor = edit::build(&config, &tok, &build)?;
    let mut run = args.eval.run_info(
        &args.model,
        &args.data,
        &args.records,
        args.shard,
        editor.name(),
        protocol,
    );
    run.settings["config"] = serde_json::to_value(&config)?;
    let dir = OutputDir::open(&out, Some(&run))?;
    dir.write_file("recipe.toml", &config.to_toml())?;
    let outcome = protocols::run(
        &mut model,
        &tok,
        &records,
        editor.as_mut(),
        protocol,
        &opts,
        &dir,
    )?;
    let timing = Timing {
        peak_rss_mb: ftedit::runtime::peak_rss_mb(),
        ..outcome.timing
    };
    let file = dir.write_summary(Some(run), Some(timing), outcome.health.clone())?;
    println!("{}", file.summary.markdown());
    if let Some(h) = &outcome.health {
        println!("health: {}", h.line());
    }
    println!(
        "{} records in {:.1} s; results in {}",
        records.len(),
        outcome.timing.seconds,
        dir.path.display()
    );
    Ok(())
}

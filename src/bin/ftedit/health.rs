//! The model-health flags (shared by `edit`, `eval` and `sweep`).

use std::path::PathBuf;

use clap::Args;
use ftedit::Tokenizer;
use ftedit::eval::health::{HealthOptions, Probe};

#[derive(Args, Clone)]
pub struct HealthArgs {
    /// Skip the health check (perplexity of held-out text and retention of known
    /// facts, before and after editing).
    #[arg(long)]
    no_health: bool,
    /// Plain text for perplexity [default: WikiText-2's validation text in the data
    /// folder, which the key statistics do not read].
    #[arg(long, value_name = "FILE")]
    health_text: Option<PathBuf>,
    /// Tokens of that text scored (its first ones) [default: 1024].
    #[arg(long, value_name = "N")]
    health_tokens: Option<usize>,
    /// Facts for retention: ROME's known_1000.json format, or edit records with true
    /// targets [default: known_1000.json in the data folder].
    #[arg(long, value_name = "FILE")]
    known: Option<PathBuf>,
    /// Use the first N facts of --known [default: 500].
    #[arg(long, value_name = "N")]
    known_n: Option<usize>,
    /// Flag a collapse when perplexity grows by more than this factor [default: 1.5].
    #[arg(long, value_name = "X")]
    collapse_factor: Option<f64>,
    /// Also score general abilities: the first N items of each downstream task, before
    /// and after editing (0: none; `ftedit health` has the task list).
    #[arg(long, value_name = "N", default_value_t = 0)]
    general: usize,
    /// The downstream tasks, comma-separated [default: all eight].
    #[arg(long, value_delimiter = ',', value_name = "TASKS")]
    general_tasks: Vec<String>,
    /// The tasks' data folder [default: general/ in the data folder].
    #[arg(long, value_name = "DIR")]
    general_dir: Option<PathBuf>,
    /// Flag a collapse when the general-ability mean drops by more than this many
    /// points [default: 5].
    #[arg(long, value_name = "POINTS")]
    general_drop: Option<f64>,
}

impl HealthArgs {
    /// The health probe, or `None` with `--no-health`. A default file that is missing
    /// turns its part off with a note; a named file that is missing is an error.
    pub fn probe(&self, tok: &Tokenizer, max_positions: usize) -> anyhow::Result<Option<Probe>> {
        if self.no_health {
            return Ok(None);
        }
        let d = HealthOptions::default();
        let text = match &self.health_text {
            Some(p) => p.clone(),
            None if d.text.exists() => d.text,
            None => {
                eprintln!(
                    "note: no health check: {} is missing (--health-text FILE, or --no-health)",
                    d.text.display()
                );
                return Ok(None);
            }
        };
        let known = match &self.known {
            Some(p) => Some(p.clone()),
            None => d.known.filter(|p| p.exists()),
        };
        let options = HealthOptions {
            text,
            tokens: self.health_tokens.unwrap_or(d.tokens),
            window: d.window,
            known,
            known_n: self.known_n.unwrap_or(d.known_n),
            collapse_factor: self.collapse_factor.unwrap_or(d.collapse_factor),
            cache_dir: d.cache_dir,
            general: (self.general > 0).then(|| {
                let g = ftedit::eval::health::GeneralOptions::default();
                ftedit::eval::health::GeneralOptions {
                    dir: self.general_dir.clone().unwrap_or(g.dir),
                    items: self.general,
                    tasks: if self.general_tasks.is_empty() {
                        g.tasks
                    } else {
                        self.general_tasks.clone()
                    },
                    drop_threshold: self.general_drop.unwrap_or(g.drop_threshold),
                }
            }),
        };
        Ok(Some(Probe::new(tok, options, max_positions)?))
    }
}

/// `ftedit health`: a model's general abilities on downstream tasks, scored as
/// lm-evaluation-harness scores them, and against another model's when asked.
#[derive(Args)]
pub struct HealthCmdArgs {
    #[command(flatten)]
    model: crate::ModelArgs,
    /// Compare with this model (the unedited one): each task's scores for both and the
    /// drop.
    #[arg(long, value_name = "MODEL")]
    against: Option<String>,
    /// Items per task (the first of each file; more than a file holds means all of it).
    #[arg(long, value_name = "N", default_value_t = 100)]
    general: usize,
    /// The tasks, comma-separated [default: all: arc_easy, arc_challenge, hellaswag,
    /// piqa, winogrande, boolq, mmlu, lambada].
    #[arg(long, value_delimiter = ',', value_name = "TASKS")]
    general_tasks: Vec<String>,
    /// The tasks' data folder [default: general/ in the data folder].
    #[arg(long, value_name = "DIR")]
    general_dir: Option<PathBuf>,
    /// Print the scores as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: HealthCmdArgs) -> anyhow::Result<()> {
    use ftedit::eval::general::{self, tasks};
    let dir = args
        .general_dir
        .clone()
        .unwrap_or_else(|| ftedit::data::data_dir().join("general"));
    let names: Vec<String> = if args.general_tasks.is_empty() {
        tasks::TASKS.iter().map(|s| s.to_string()).collect()
    } else {
        args.general_tasks.clone()
    };
    let loaded = names
        .iter()
        .map(|n| tasks::load(n, &dir, Some(args.general)))
        .collect::<ftedit::Result<Vec<_>>>()?;
    let score_all =
        |model: &ftedit::Model, tok: &Tokenizer| -> anyhow::Result<Vec<general::TaskScore>> {
            let mut out = Vec::new();
            for t in &loaded {
                let start = std::time::Instant::now();
                let s = general::score(model, tok, t)?;
                if !args.json {
                    eprintln!(
                        "{}: {} items in {:.1} s",
                        t.name,
                        s.n,
                        start.elapsed().as_secs_f64()
                    );
                }
                out.push(s);
            }
            Ok(out)
        };
    let (model, tok) = args.model.load()?;
    let scores = score_all(&model, &tok)?;
    drop(model);
    let base = match &args.against {
        Some(b) => {
            let mut m = args.model.clone();
            m.model = b.clone();
            let (bm, bt) = m.load()?;
            Some(score_all(&bm, &bt)?)
        }
        None => None,
    };
    let mean =
        |s: &[general::TaskScore]| s.iter().map(|x| x.main).sum::<f64>() / s.len().max(1) as f64;
    if args.json {
        let mut out = serde_json::Map::new();
        for (t, s) in loaded.iter().zip(&scores) {
            out.insert(t.name.clone(), serde_json::to_value(s)?);
        }
        out.insert("mean".into(), mean(&scores).into());
        if let Some(b) = &base {
            let mut before = serde_json::Map::new();
            for (t, s) in loaded.iter().zip(b) {
                before.insert(t.name.clone(), serde_json::to_value(s)?);
            }
            before.insert("mean".into(), mean(b).into());
            out.insert("before".into(), before.into());
            out.insert("mean_drop".into(), (mean(b) - mean(&scores)).into());
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "| task | items | acc | acc_norm | main |{}",
        if base.is_some() {
            " before | drop |"
        } else {
            ""
        }
    );
    println!(
        "|---|---:|---:|---:|---:|{}",
        if base.is_some() { "---:|---:|" } else { "" }
    );
    for (i, (t, s)) in loaded.iter().zip(&scores).enumerate() {
        let norm = s.acc_norm.map_or("—".into(), |v| format!("{v:.1}"));
        let extra = base.as_ref().map_or(String::new(), |b| {
            format!(" {:.1} | {:+.1} |", b[i].main, b[i].main - s.main)
        });
        println!(
            "| {} | {} | {:.1} | {norm} | {:.1} |{extra}",
            t.name, s.n, s.acc, s.main
        );
    }
    match &base {
        Some(b) => println!(
            "general mean {:.1} (before {:.1}, drop {:+.1})",
            mean(&scores),
            mean(b),
            mean(b) - mean(&scores)
        ),
        None => println!("general mean {:.1}", mean(&scores)),
    }
    Ok(())
}

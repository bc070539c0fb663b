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
    /// Also score general abilities: the first N items of each downstream task (of a
    /// task read from several files, MMLU's subjects, ⌈N/files⌉ of each), before and
    /// after editing (0: none) [default: `eval` and `sweep` 10, `edit` 0, `health` 100].
    #[arg(long, value_name = "N")]
    general: Option<usize>,
    /// The downstream tasks, comma-separated; `glue` adds AlphaEdit's six GLUE-style
    /// checks [default: the eight lm-eval tasks].
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
        self.probe_with(tok, max_positions, 0)
    }

    /// [`HealthArgs::probe`] with `general` items per task unless `--general` says; a
    /// default sample whose tasks' folder is missing is left out with a note.
    pub fn probe_with(
        &self,
        tok: &Tokenizer,
        max_positions: usize,
        general: usize,
    ) -> anyhow::Result<Option<Probe>> {
        if self.no_health {
            return Ok(None);
        }
        let g = ftedit::eval::health::GeneralOptions::default();
        let general_dir = self.general_dir.clone().unwrap_or(g.dir);
        let general = match self.general {
            Some(n) => n,
            None if general > 0 && !general_dir.exists() => {
                eprintln!(
                    "note: no general abilities: {} is missing (--general-dir DIR, or --general 0)",
                    general_dir.display()
                );
                0
            }
            None => general,
        };
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
            general: (general > 0).then(|| ftedit::eval::health::GeneralOptions {
                dir: general_dir,
                items: general,
                tasks: if self.general_tasks.is_empty() {
                    g.tasks
                } else {
                    self.general_tasks.clone()
                },
                drop_threshold: self.general_drop.unwrap_or(g.drop_threshold),
            }),
        };
        Ok(Some(Probe::new(tok, options, max_positions)?))
    }
}

/// `ftedit health`: a model's health (perplexity, known facts, general abilities on
/// downstream tasks scored as lm-evaluation-harness does), alone or against the model it
/// was edited from.
#[derive(Args)]
pub struct HealthCmdArgs {
    #[command(flatten)]
    model: crate::ModelArgs,
    /// Compare with this model (the unedited one): its numbers are the "before".
    #[arg(long, value_name = "MODEL")]
    against: Option<String>,
    #[command(flatten)]
    health: HealthArgs,
    /// Print the health report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: HealthCmdArgs) -> anyhow::Result<()> {
    let (model, tok) = args.model.load()?;
    let probe = args
        .health
        .probe_with(&tok, model.max_positions(), 100)?
        .ok_or_else(|| {
            anyhow::anyhow!("nothing to check (--no-health, or the default files are missing)")
        })?;
    let none = std::collections::HashSet::new();
    let health = match &args.against {
        Some(b) => {
            let mut m = args.model.clone();
            m.model = b.clone();
            let (base_model, base_tok) = m.load()?;
            if base_tok.vocab_size() != tok.vocab_size() {
                anyhow::bail!(
                    "--against {b}: its tokenizer ({} tokens) is not the model's ({})",
                    base_tok.vocab_size(),
                    tok.vocab_size()
                );
            }
            let base = probe.baseline(&base_model, &none)?;
            drop(base_model);
            probe.measure(&model, &base)?
        }
        None => probe.unedited(&probe.baseline(&model, &none)?),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&health)?);
        return Ok(());
    }
    match &args.against {
        Some(_) => println!("health: {}", health.line()),
        None => println!(
            "perplexity {:.2}; known facts {} (top-1 at the first answer token)",
            health.ppl, health.known_facts
        ),
    }
    if let Some(g) = &health.general {
        let against = args.against.is_some();
        println!(
            "| task | items | acc | acc_norm | main |{}",
            if against { " before | change |" } else { "" }
        );
        println!(
            "|---|---:|---:|---:|---:|{}",
            if against { "---:|---:|" } else { "" }
        );
        for (name, s) in &g.tasks {
            let norm = s.acc_norm.map_or("—".into(), |v| format!("{v:.1}"));
            let extra = match (against, g.before.get(name)) {
                (true, Some(b)) => format!(" {:.1} | {:+.1} |", b.main, s.main - b.main),
                _ => String::new(),
            };
            println!(
                "| {name} | {} | {:.1} | {norm} | {:.1} |{extra}",
                s.n, s.acc, s.main
            );
        }
        if against {
            println!(
                "general mean {:.1} (before {:.1}, drop {:+.1}){}",
                g.mean,
                g.mean_before,
                g.mean_drop,
                if health.collapsed {
                    "; flagged as collapsed"
                } else {
                    ""
                }
            );
        } else {
            println!("general mean {:.1}", g.mean);
        }
    }
    Ok(())
}

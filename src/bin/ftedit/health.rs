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
        };
        Ok(Some(Probe::new(tok, options, max_positions)?))
    }
}

//! `ftedit generate`: continue a prompt.

use clap::Args;
use ftedit::model::{GenerateOptions, Sampling, generate};
use serde::Serialize;

use crate::ModelArgs;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    #[arg(long, short)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Sample among the k most probable tokens (greedy when absent).
    #[arg(long)]
    top_k: Option<usize>,
    /// Sampling temperature (with --top-k).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Seed of the sampler (with --top-k).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep going past the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Ask the prompt as a user turn through the model's chat template (instruct
    /// models), so the answer is the assistant's.
    #[arg(long)]
    chat: bool,
    /// Print one JSON object instead of the text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Generation<'a> {
    model: String,
    prompt: &'a str,
    input_ids: Vec<u32>,
    output_ids: Vec<u32>,
    text: String,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let (model, tokenizer) = args.model.load()?;
    let ids = if args.chat {
        tokenizer.chat_prompt(&args.prompt)?
    } else {
        tokenizer.encode(&args.prompt, true)?
    };
    if ids.is_empty() {
        anyhow::bail!("the prompt tokenizes to nothing");
    }
    let opts = GenerateOptions {
        max_new_tokens: args.max_tokens,
        sampling: match args.top_k {
            Some(k) => Sampling::TopK {
                k,
                temperature: args.temperature,
            },
            None => Sampling::Greedy,
        },
        seed: args.seed,
        row_seeds: None,
        stop: match (args.ignore_eos, args.chat) {
            (true, _) => Vec::new(),
            (false, true) => tokenizer.turn_ends(),
            (false, false) => tokenizer.eos_id.into_iter().collect(),
        },
    };
    let output_ids = generate(&model, std::slice::from_ref(&ids), &opts)?.remove(0);
    let text = tokenizer.decode(&output_ids);
    if args.json {
        let out = Generation {
            model: model.source.display().to_string(),
            prompt: &args.prompt,
            input_ids: ids,
            output_ids,
            text,
        };
        println!("{}", serde_json::to_string(&out)?);
    } else if args.chat {
        println!("{text}");
    } else {
        println!("{}{}", args.prompt, text);
    }
    Ok(())
}

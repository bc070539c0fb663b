//! `ftedit predict`: the next-token distribution after a prompt.

use clap::Args;
use serde::Serialize;

use crate::ModelArgs;

#[derive(Args)]
pub struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    #[arg(long, short)]
    prompt: String,
    /// How many of the most probable tokens to show.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Ask the prompt as a user turn through the model's chat template (instruct
    /// models), so the answer is the assistant's.
    #[arg(long)]
    chat: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Candidate {
    id: u32,
    token: String,
    prob: f64,
    logprob: f64,
}

#[derive(Serialize)]
struct Prediction<'a> {
    model: String,
    prompt: &'a str,
    input_ids: Vec<u32>,
    top_k: Vec<Candidate>,
}

pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let (model, tokenizer) = args.model.load()?;
    let ids = if args.chat {
        tokenizer.chat_prompt(&args.prompt)?
    } else {
        tokenizer.encode(&args.prompt, true)?
    };
    if ids.is_empty() {
        anyhow::bail!("the prompt tokenizes to nothing");
    }
    let logprobs = model.next_token_logprobs(&ids)?;
    let k = args.top_k.clamp(1, logprobs.size()[0] as usize);
    let (vals, idx) = logprobs.topk(k as i64, -1, true, true);
    let vals = Vec::<f64>::try_from(vals)?;
    let idx = Vec::<i64>::try_from(idx)?;
    let top_k: Vec<Candidate> = idx
        .iter()
        .zip(&vals)
        .map(|(&id, &lp)| Candidate {
            id: id as u32,
            token: tokenizer.decode(&[id as u32]),
            prob: lp.exp(),
            logprob: lp,
        })
        .collect();
    let out = Prediction {
        model: model.source.display().to_string(),
        prompt: &args.prompt,
        input_ids: ids,
        top_k,
    };
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("{} ({} tokens)", out.prompt, out.input_ids.len());
        println!("{:>4}  {:>8}  {:>9}  token", "rank", "prob", "logprob");
        for (i, c) in out.top_k.iter().enumerate() {
            println!(
                "{:>4}  {:>8.4}  {:>9.4}  {:?} ({})",
                i + 1,
                c.prob,
                c.logprob,
                c.token,
                c.id
            );
        }
    }
    Ok(())
}

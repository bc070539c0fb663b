//! Foundation benchmark: load time, forward latency of a 16-token prompt, and one
//! training step (forward + backward + AdamW on the MLPs of layers 3-5, batch of 32
//! ~20-token CounterFact paraphrase prompts with their new targets), medians of
//! several runs. Writes the batch it trained on so bench/foundation_torch.py times the
//! same step in PyTorch. Run through bench/foundation.sh (CPU) or bench/device.sh (GPU,
//! where the model files cannot travel: `--config` builds random weights of the same
//! shapes, `--batch-in` reads the batch the CPU run wrote).

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use ftedit::model::registry;
use ftedit::train::{AdamW, AdamWConfig, Example, Reduction, conditional_nll};
use ftedit::{Input, LoadOptions, LogitsAt, runtime};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Default model name or path.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// CounterFact file (ROME schema) the batch comes from.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/counterfact/counterfact_rome_dev.json"))]
    data: PathBuf,
    /// Where to write the batch (token ids) for the PyTorch script.
    #[arg(long)]
    batch_out: Option<PathBuf>,
    /// Timed repetitions of each measurement.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// CPU threads.
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Device: cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Batch size of the training step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// A Hugging Face config.json: random weights of that shape instead of a model file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Read the training batch (token ids) from this file instead of tokenizing data.
    #[arg(long)]
    batch_in: Option<PathBuf>,
    /// Parameter dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Cargo's bench harness flag (ignored).
    #[arg(long, hide = true)]
    bench: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}

fn sync(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    let opts = LoadOptions {
        device: runtime::parse_device(&args.device)?,
        kind: runtime::parse_kind(&args.dtype)?,
    };
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };

    let (model, tok, load_s) = match &args.config {
        Some(cfg) => {
            let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(cfg)?)?;
            let config = ftedit::model::ArchConfig::from_hf(&j)?;
            (
                ftedit::Model::random(config, 0, 0.02, opts.kind, opts.device)?,
                None,
                None,
            )
        }
        None => {
            let path = registry::resolve(&args.model)?;
            let mut loads = Vec::new();
            for _ in 0..3 {
                let (_, secs) = time(|| ftedit::load(&path, &opts));
                loads.push(secs);
            }
            let (model, tok) = ftedit::load(&path, &opts)?;
            (model, Some(tok), Some(median(loads)))
        }
    };
    let device = model.device();

    // The training batch: 32 CounterFact paraphrase prompts with their new targets.
    let batch: Vec<Example> = match (&args.batch_in, &tok) {
        (Some(file), _) => {
            let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file)?)?;
            j["examples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| Example {
                    prompt: ids(&e["prompt"]),
                    target: ids(&e["target"]),
                })
                .collect()
        }
        (None, Some(tok)) => {
            let records: Vec<serde_json::Value> =
                serde_json::from_str(&std::fs::read_to_string(&args.data)?)?;
            records
                .iter()
                .take(args.batch)
                .map(|r| {
                    let prompt = r["paraphrase_prompts"][0].as_str().unwrap();
                    let target = format!(
                        " {}",
                        r["requested_rewrite"]["target_new"]["str"]
                            .as_str()
                            .unwrap()
                    );
                    Ok(Example {
                        prompt: tok.encode(prompt, true)?,
                        target: tok.encode(&target, false)?,
                    })
                })
                .collect::<anyhow::Result<_>>()?
        }
        (None, None) => anyhow::bail!("--config needs --batch-in"),
    };

    // Forward latency: the first 16 tokens of the batch's prompts, next-token logits.
    let prompt16: Vec<u32> = batch
        .iter()
        .flat_map(|e| e.prompt.iter().copied())
        .take(16)
        .collect();
    let input = Input::right_padded(&[&prompt16], device)?;
    let mut fwd = Vec::new();
    {
        let _g = tch::no_grad_guard();
        for i in 0..args.runs + 3 {
            let (_, secs) = time(|| {
                let l = model.forward(&input, &LogitsAt::Last).unwrap();
                sync(device);
                l
            });
            if i >= 3 {
                fwd.push(secs);
            }
        }
    }

    // Training step on the MLPs of layers 3-5.
    let tokens: usize = batch.iter().map(|e| e.prompt.len() + e.target.len()).sum();
    model
        .params
        .set_trainable("model.layers.{3..5}.mlp.*", true)?;
    let mut opt = AdamW::new(
        &model.params,
        AdamWConfig {
            lr: 1e-5,
            ..AdamWConfig::default()
        },
    )?;
    let mut steps = Vec::new();
    let mut first_loss = None;
    for i in 0..args.runs + 2 {
        let (loss, secs) = time(|| -> anyhow::Result<f64> {
            opt.zero_grad()?;
            let loss = conditional_nll(&model, &batch, Reduction::TokenMean)?;
            loss.backward();
            opt.step()?;
            sync(device);
            Ok(loss.double_value(&[]))
        });
        first_loss.get_or_insert(loss?);
        if i >= 2 {
            steps.push(secs);
        }
    }
    if let Some(out) = &args.batch_out {
        let b: Vec<_> = batch
            .iter()
            .map(|e| json!({"prompt": e.prompt, "target": e.target}))
            .collect();
        std::fs::write(
            out,
            serde_json::to_string(
                &json!({"examples": b, "trainable": "model.layers.{3..5}.mlp.*", "lr": 1e-5}),
            )?,
        )?;
    }
    println!(
        "{}",
        json!({
            "impl": "ftedit",
            "model": args.config.as_ref().map_or(args.model.clone(), |c| c.display().to_string()),
            "device": format!("{device:?}"),
            "threads": args.threads,
            "load_s": load_s,
            "dtype": args.dtype,
            "prompt16": prompt16,
            "forward16_ms": median(fwd) * 1e3,
            "train_step_ms": median(steps) * 1e3,
            "batch": batch.len(),
            "mean_tokens": tokens as f64 / batch.len() as f64,
            "first_loss": first_loss,
            "runs": args.runs,
        })
    );
    Ok(())
}

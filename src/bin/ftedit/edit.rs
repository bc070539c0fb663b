//! `ftedit edit`: edit a model's facts and write the edited model.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use ftedit::edit::Editor;
use ftedit::model::save;

use crate::method::{self, MethodArgs};
use crate::{ModelArgs, RecordArgs};

#[derive(Args)]
pub struct EditArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The edits: CounterFact, zsRE or JSONL (`{"prompt": "... {} ...", "subject", "target_new"}`).
    #[arg(long)]
    edits: PathBuf,
    #[command(flatten)]
    records: RecordArgs,
    #[command(flatten)]
    method: MethodArgs,
    /// Where to write the edited model: a `.gguf` file (GGUF input only: unchanged
    /// tensors keep their bytes) or a folder for transformers (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// GGUF output: store changed tensors as Q8_0 instead of F32.
    #[arg(long)]
    quantize: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Also write the shuffled training set (token ids) to this JSON file.
    #[arg(long)]
    dump_examples: Option<PathBuf>,
}

pub fn run(mut args: EditArgs) -> anyhow::Result<()> {
    if args.method.method == "none" {
        args.method.method = "ft".into();
    }
    let start = Instant::now();
    let records = args.records.load(&args.edits, None)?;
    let gguf_out = args.out.extension().is_some_and(|e| e == "gguf");
    let source = ftedit::model::registry::resolve(&args.model.model)?;
    if gguf_out && !is_gguf(&source) {
        anyhow::bail!("a .gguf output needs a GGUF input model; write a folder instead");
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let (mut model, tok) = args.model.load()?;
    let mut editor: Box<dyn Editor> = match method::locate_editor(&args.method, !args.quiet)? {
        Some(e) => e,
        None => {
            let mut ft = method::ft_editor(&args.method, &tok, &records, !args.quiet)?
                .expect("edit uses a method");
            ft.dump_examples = args.dump_examples.clone();
            Box::new(ft)
        }
    };
    editor.edit(&mut model, &tok, &records)?;
    let saved = if gguf_out {
        serde_json::to_value(save::save_gguf(&model, &source, &args.out, args.quantize)?)?
    } else {
        save::save_hf(&model, &tok, &args.out)?;
        serde_json::json!({"format": "safetensors"})
    };
    let report = serde_json::json!({
        "model": source.display().to_string(),
        "edits": args.edits.display().to_string(),
        "n_edits": records.len(),
        "method": args.method.method,
        "training": editor.report(),
        "saved": saved,
        "seconds": start.elapsed().as_secs_f64(),
        "peak_rss_mb": peak_rss_mb(),
    });
    let report_path = if gguf_out {
        PathBuf::from(format!("{}.report.json", args.out.display()))
    } else {
        args.out.join("ftedit_report.json")
    };
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)?)?;
    println!(
        "edited {} facts in {:.1} s; model in {}, report in {}",
        records.len(),
        start.elapsed().as_secs_f64(),
        args.out.display(),
        report_path.display()
    );
    Ok(())
}

/// The process's peak resident memory (Linux), in MiB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn is_gguf(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

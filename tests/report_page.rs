//! `ftedit report html` checked as a person would: a small run's page rendered in
//! headless Chromium, its screenshot not blank (the loss curve's colour on it), and the
//! rendered text carrying the run's summary numbers. Chromium is installed by
//! `tools/install_chromium.sh` when missing (Debian's `chromium`); the screenshot stays
//! in the temporary folder.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{counterfact_jsonl, random_model, temp_dir, tiny_llama, write_gguf};
use tch::Kind;

fn ftedit(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ftedit"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ftedit {args:?}:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chromium() -> PathBuf {
    let find = || {
        ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find_map(|b| {
                let out = Command::new("sh")
                    .args(["-c", &format!("command -v {b}")])
                    .output()
                    .ok()?;
                let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                (out.status.success() && !p.is_empty()).then(|| PathBuf::from(p))
            })
    };
    if let Some(p) = find() {
        return p;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/install_chromium.sh");
    let status = Command::new(&script).status().unwrap();
    assert!(status.success(), "{} failed", script.display());
    find().expect("chromium installed but not on PATH")
}

/// Runs headless Chromium on `page` with `args` (a fresh profile in `dir`).
fn headless(dir: &Path, page: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            &format!("--user-data-dir={}", dir.join("profile").display()),
            "--window-size=1280,1600",
        ])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn the_report_page_renders_in_chromium_with_the_runs_numbers() {
    let dir = temp_dir("report-page");
    let model = dir.join("tiny.gguf");
    write_gguf(&random_model(tiny_llama(false), Kind::Float), &model, 64);
    let data = counterfact_jsonl(&dir, 4);
    let run = dir.join("run");
    ftedit(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--method",
        "ft-l",
        "--set",
        "optim.clamp=0.1",
        "--no-generation",
        "--no-health",
        "--out",
        run.to_str().unwrap(),
        "--quiet",
    ]);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let page = dir.join("report.html");
    let stdout = ftedit(&[
        "report",
        "html",
        run.to_str().unwrap(),
        "--out",
        page.to_str().unwrap(),
        "--title",
        "Tiny run",
    ]);
    assert!(stdout.contains("1 runs, 4 records"), "{stdout}");

    // The text as rendered (after the page's script ran).
    let dom = String::from_utf8(headless(&dir, &page, &["--dump-dom"])).unwrap();
    assert!(dom.contains("<h1>Tiny run</h1>"), "{dom}");
    for m in ["ES", "PS", "NS", "S"] {
        let v = summary["metrics"][m].as_f64().unwrap();
        let shown = format!(">{v:.2}<");
        assert!(dom.contains(&shown), "{m} {shown} not on the page");
    }
    assert_eq!(
        dom.matches("<tr").count() - dom.matches("<tr><th").count(),
        4
    );

    let shot = dir.join("page.png");
    headless(&dir, &page, &[&format!("--screenshot={}", shot.display())]);
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    assert_eq!(pixels.len(), (info.width * info.height) as usize);
    let ink = pixels
        .iter()
        .filter(|p| p[..3].iter().any(|&c| c < 200))
        .count();
    let share = ink as f64 / pixels.len() as f64;
    assert!(share > 0.005, "the screenshot is blank ({share:.4} inked)");
    // The loss curve's line (the first series colour, #0072B2) is drawn.
    let blue = pixels
        .iter()
        .filter(|p| p[0] < 30 && (100..130).contains(&p[1]) && (165..190).contains(&p[2]))
        .count();
    assert!(
        blue > 50,
        "no loss curve on the screenshot ({blue} blue pixels)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

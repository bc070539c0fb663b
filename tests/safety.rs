//! Never losing a user's files, and never writing a wrong result silently: output paths,
//! temporaries, interrupted writes, locked run folders, exact resume, the divergence
//! guard and the collapse gate, and input that contradicts itself. One test per defect
//! found by trying ftedit as a careful new user would.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{counterfact_jsonl, random_model, temp_dir, tiny_llama, write_gguf};
use ftedit::model::save;
use ftedit::output;
use tch::Kind;

fn ftedit<S: AsRef<std::ffi::OsStr>>(args: &[S], cwd: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ftedit"));
    cmd.args(args);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "panicked:\n{stderr}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

/// The tiny random model, the same in every test: libtorch's generator is global, so
/// tests running side by side draw their models one at a time.
fn tiny() -> ftedit::Model {
    static DRAW: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = DRAW.lock().unwrap_or_else(|e| e.into_inner());
    random_model(tiny_llama(false), Kind::Float)
}

fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    write_gguf(&tiny(), &path, 64);
    path
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `ftedit edit` of two small edits into `out`, quickly (layer 1's MLP, no facts).
fn edit_args(model: &Path, edits: &Path, out: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "edit",
        "--model",
        &s(model),
        "--edits",
        &s(edits),
        "--out",
        out,
        "--set",
        "augment.facts=none",
        "--set",
        "augment.prefix_lengths=[[2, 3]]",
        "--set",
        "train.layers=1..1",
        "--no-health",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// `ftedit edit` of SmolLM2 (no fact pool) with `extra`.
fn smollm2_edit_args(edits: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "edit",
        "--model",
        "smollm2",
        "--edits",
        &s(edits),
        "--out",
        &s(out),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend(
        ["--set", "augment.facts=none", "--quiet"]
            .iter()
            .chain(extra)
            .map(|x| x.to_string()),
    );
    a
}

fn two_edits(dir: &Path) -> PathBuf {
    let edits = dir.join("edits.jsonl");
    std::fs::write(
        &edits,
        "{\"prompt\": \"{} is in\", \"subject\": \"the tea\", \"target_new\": \"the hat\"}\n\
         {\"prompt\": \"{} is on\", \"subject\": \"the het\", \"target_new\": \"the tet\"}\n",
    )
    .unwrap();
    edits
}

/// The user's folder: a file and a file in a subfolder.
fn users_folder(dir: &Path) -> PathBuf {
    let d = dir.join("mine");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    std::fs::write(d.join("mydata.txt"), "precious").unwrap();
    std::fs::write(d.join("sub/keep.txt"), "also precious").unwrap();
    d
}

fn intact(d: &Path) {
    assert_eq!(
        std::fs::read_to_string(d.join("mydata.txt")).unwrap(),
        "precious"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("sub/keep.txt")).unwrap(),
        "also precious"
    );
}

#[test]
fn edit_never_replaces_a_folder_of_the_users() {
    let dir = temp_dir("safe-folder");
    let (model, edits) = (tiny_model(&dir), two_edits(&dir));
    let mine = users_folder(&dir);
    for force in [false, true] {
        let extra: &[&str] = if force { &["--force"] } else { &[] };
        let (code, _, err) = ftedit(&edit_args(&model, &edits, &s(&mine), extra), None);
        assert_ne!(code, 0, "--force {force}");
        assert!(err.contains("files ftedit did not write"), "{err}");
        intact(&mine);
        // `--out .` from inside it, the case that emptied the folder.
        let (code, _, err) = ftedit(&edit_args(&model, &edits, ".", extra), Some(&mine));
        assert_ne!(code, 0);
        assert!(err.contains("files ftedit did not write"), "{err}");
        intact(&mine);
    }
    // An empty folder takes the model; that earlier output is replaced only with --force.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, _, err) = ftedit(&edit_args(&model, &edits, &s(&empty), &[]), None);
    assert_eq!(code, 0, "{err}");
    assert!(empty.join("model.safetensors").exists() && empty.join("ftedit_report.json").exists());
    let (code, _, err) = ftedit(&edit_args(&model, &edits, &s(&empty), &[]), None);
    assert_ne!(code, 0);
    assert!(
        err.contains("earlier ftedit output") && err.contains("--force"),
        "{err}"
    );
    let (code, _, err) = ftedit(&edit_args(&model, &edits, &s(&empty), &["--force"]), None);
    assert_eq!(code, 0, "{err}");
    // A file the user put into an earlier output makes it theirs.
    std::fs::write(empty.join("notes.md"), "mine now").unwrap();
    let (code, _, err) = ftedit(&edit_args(&model, &edits, &s(&empty), &["--force"]), None);
    assert_ne!(code, 0);
    assert!(err.contains("notes.md"), "{err}");
    assert!(empty.join("notes.md").exists() && empty.join("model.safetensors").exists());
}

#[test]
fn edit_overwrites_no_file_without_force_and_never_its_input() {
    let dir = temp_dir("safe-file");
    let (model, edits) = (tiny_model(&dir), two_edits(&dir));
    let model_bytes = std::fs::read(&model).unwrap();
    // A user's file at --out, and a user's x.tmp beside it.
    let x = dir.join("x.gguf");
    std::fs::write(&x, "user's").unwrap();
    std::fs::write(dir.join("x.tmp"), "user's tmp").unwrap();
    let (code, _, err) = ftedit(&edit_args(&model, &edits, &s(&x), &[]), None);
    assert_ne!(code, 0);
    assert!(
        err.contains("ftedit did not write it") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&x).unwrap(), "user's");
    let (code, _, err) = ftedit(&edit_args(&model, &edits, &s(&x), &["--force"]), None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(&std::fs::read(&x).unwrap()[..4], b"GGUF");
    assert_eq!(
        std::fs::read_to_string(dir.join("x.tmp")).unwrap(),
        "user's tmp"
    );
    // Now an earlier output: refused by name without --force.
    let (code, _, err) = ftedit(&edit_args(&model, &edits, &s(&x), &[]), None);
    assert_ne!(code, 0);
    assert!(err.contains("earlier ftedit output"), "{err}");
    // The input model itself, --force or not, also through another spelling of its path.
    for extra in [&[][..], &["--force"][..]] {
        let other = format!(
            "{}/../{}/tiny.gguf",
            s(&dir),
            dir.file_name().unwrap().to_string_lossy()
        );
        let (code, _, err) = ftedit(&edit_args(&model, &edits, &other, extra), None);
        assert_ne!(code, 0);
        assert!(err.contains("is the input model"), "{err}");
    }
    assert_eq!(std::fs::read(&model).unwrap(), model_bytes);
}

#[test]
fn edit_checks_where_it_writes_before_training() {
    let dir = temp_dir("safe-early");
    let (model, edits) = (tiny_model(&dir), two_edits(&dir));
    let dump = dir.join("examples.json");
    let blocker = dir.join("a-file");
    std::fs::write(&blocker, "").unwrap();
    // A folder that cannot be made (its parent is a file), and one that cannot be
    // written even by root.
    for out in [
        s(&blocker.join("x.gguf")),
        "/proc/ftedit-x.gguf".to_string(),
    ] {
        let (code, _, err) = ftedit(
            &edit_args(&model, &edits, &out, &["--dump-examples", &s(&dump)]),
            None,
        );
        assert_ne!(code, 0);
        assert!(err.contains("x.gguf") || err.contains("a-file"), "{err}");
        // The training set is written when training starts: it never did.
        assert!(!dump.exists(), "trained before refusing {out}");
    }
}

#[test]
fn interrupted_writes_remove_their_temporaries() {
    let dir = temp_dir("safe-signal");
    let m = tiny();
    let model = tiny_model(&dir);
    let (_, tok) = ftedit::load(&model, &Default::default()).unwrap();
    // A signal that arrives during the write: the writer stops, removes its temporary,
    // says which signal; nothing is left under either name.
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let gguf = dir.join("int.gguf");
        let folder = dir.join("hf");
        let held = output::HoldSignals::new();
        // SAFETY: the signal is held: it only sets the flag the writers check.
        unsafe { libc::raise(signal) };
        let e = save::save_gguf(&m, &model, &gguf, false).unwrap_err();
        assert!(matches!(e, ftedit::Error::Interrupted { .. }), "{e}");
        assert_eq!(e.exit_code(), code);
        unsafe { libc::raise(signal) };
        let e = save::save_hf(&m, &tok, &folder, &Default::default()).unwrap_err();
        assert!(e.to_string().contains("interrupted"), "{e}");
        drop(held);
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["tiny.gguf"], "{left:?}");
    }
    // A temporary a killed run left (its pid is gone) is removed by the next run.
    let edits = two_edits(&dir);
    let out = dir.join("out.gguf");
    let stale = dir.join(".out.gguf.ftedit-2147483646.tmp");
    std::fs::write(&stale, "half a model").unwrap();
    let (code, _, err) = ftedit(&edit_args(&model, &edits, &s(&out), &[]), None);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("left by an earlier run"), "{err}");
    assert!(!stale.exists() && out.exists());
}

/// `ftedit eval` without generation or health checks; `--method` goes in `extra`
/// (none: the unedited model).
fn eval_args(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "eval",
        "--model",
        &s(model),
        "--data",
        &s(data),
        "--no-generation",
        "--no-health",
        "--quiet",
        "--out",
        &s(out),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn two_runs_never_write_one_folder() {
    let dir = temp_dir("safe-lock");
    let model = tiny_model(&dir);
    let data = counterfact_jsonl(&dir, 3);
    let out = dir.join("run");
    std::fs::create_dir_all(&out).unwrap();
    // Another run holds the folder: refused, naming it.
    let held = output::Lock::acquire(&out).unwrap();
    let (code, _, err) = ftedit(&eval_args(&model, &data, &out, &["--method", "ft-l"]), None);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    assert!(!out.join("records.jsonl").exists());
    drop(held);
    // The lock of a process that is gone is taken over.
    std::fs::write(out.join(output::LOCK_FILE), "2147483646\n").unwrap();
    let (code, _, err) = ftedit(&eval_args(&model, &data, &out, &[]), None);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("taking it over"), "{err}");
    let records = std::fs::read_to_string(out.join("records.jsonl")).unwrap();
    assert_eq!(records.lines().count(), 3);
}

/// A curve without its times, which differ between runs.
fn curve_without_seconds(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("curve.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("seconds");
            o.remove("edit_seconds");
            v
        })
        .collect()
}

#[test]
fn a_resumed_sequential_run_gives_the_uninterrupted_runs_numbers() {
    let dir = temp_dir("safe-resume");
    let model = tiny_model(&dir);
    let data = counterfact_jsonl(&dir, 6);
    let good = std::fs::read_to_string(&data).unwrap();
    // The recipe samples its prefixes from the unedited model; a resumed run must use
    // those, not new ones sampled from its checkpoint's weights.
    let extra = [
        "--method",
        "ft",
        "--set",
        "augment.facts=none",
        "--set",
        "augment.prefix_lengths=[[3, 4]]",
        "--set",
        "optim.lr=1e-2",
        "--set",
        "optim.min_steps=4",
        "--set",
        "train.layers=1..1",
        "--set",
        "optim.converge_loss=0",
        "--protocol",
        "sequential",
        "--batch-size",
        "2",
        "--eval-every",
        "1",
    ];
    let whole = dir.join("whole");
    let (code, _, err) = ftedit(&eval_args(&model, &data, &whole, &extra), None);
    assert_eq!(code, 0, "{err}");
    // Killed in its third step: the same records, the fifth one too long to train.
    let cut = good.replacen(
        "\"{} is in\", \"subject\": \"the 4\"",
        &format!(
            "\"{{}} is in {}\", \"subject\": \"the 4\"",
            "the tea ".repeat(40)
        ),
        1,
    );
    assert_ne!(cut, good);
    std::fs::write(&data, cut).unwrap();
    let resumed = dir.join("resumed");
    let (code, _, err) = ftedit(&eval_args(&model, &data, &resumed, &extra), None);
    assert_ne!(code, 0);
    assert!(
        err.contains("record r4"),
        "the error names the record: {err}"
    );
    assert!(resumed.join("checkpoint").exists());
    std::fs::write(&data, &good).unwrap();
    let (code, _, err) = ftedit(&eval_args(&model, &data, &resumed, &extra), None);
    assert_eq!(code, 0, "{err}");
    let summary = |d: &Path| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(d.join("summary.json")).unwrap(),
        )
        .unwrap()["metrics"]
            .clone()
    };
    assert_eq!(summary(&resumed), summary(&whole));
    assert_eq!(
        std::fs::read_to_string(resumed.join("records.jsonl")).unwrap(),
        std::fs::read_to_string(whole.join("records.jsonl")).unwrap()
    );
    assert_eq!(
        curve_without_seconds(&resumed),
        curve_without_seconds(&whole)
    );
}

#[test]
fn a_diverging_loss_stops_the_edit_with_nothing_written() {
    let dir = temp_dir("safe-diverge");
    let edits = two_edits(&dir);
    let out = dir.join("wrecked.gguf");
    // SmolLM2 at a learning rate far too high: the loss jumps from 5.8 to 22.6 and stays
    // finite (the model it would write has a perplexity a million times its own).
    let args = |extra: &[&str]| {
        let mut a = vec!["--no-health"];
        a.extend(extra);
        smollm2_edit_args(&edits, &out, &a)
    };
    let (code, _, err) = ftedit(&args(&["--set", "optim.lr=1e4"]), None);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("training diverged") && err.contains("rose from"),
        "{err}"
    );
    assert!(!out.exists());
    // A factor that would stop every run is refused by name.
    let (code, _, err) = ftedit(&args(&["--set", "optim.diverge_factor=0.5"]), None);
    assert_ne!(code, 0);
    assert!(err.contains("optim.diverge_factor"), "{err}");
}

#[test]
fn a_collapsed_model_is_not_written_unless_allowed() {
    let dir = temp_dir("safe-collapse");
    let edits = two_edits(&dir);
    let out = dir.join("collapsed.gguf");
    // SmolLM2 trained two steps at a learning rate that wrecks it, the divergence guard
    // off: only the health check stands between the wreck and the user.
    let args = |extra: &[&str]| {
        let mut a = vec![
            "--set",
            "optim.lr=1e4",
            "--set",
            "optim.diverge_factor=0",
            "--set",
            "optim.min_steps=2",
            "--set",
            "optim.epochs=1",
            "--health-tokens",
            "256",
            "--known-n",
            "20",
        ];
        a.extend(extra);
        smollm2_edit_args(&edits, &out, &a)
    };
    let (code, _, err) = ftedit(&args(&[]), None);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("collapsed the model") && err.contains("PPL"),
        "{err}"
    );
    assert!(!out.exists() && !dir.join("collapsed.gguf.report.json").exists());
    let (code, _, err) = ftedit(&args(&["--allow-collapse"]), None);
    assert_eq!(code, 0, "{err}");
    assert!(out.exists());
}

#[test]
fn threads_are_bounded_by_the_machines_cores() {
    let dir = temp_dir("safe-threads");
    let model = tiny_model(&dir);
    for bad in ["100000", "-2"] {
        let (code, _, err) = ftedit(
            &[
                "predict",
                "--model",
                &s(&model),
                "--prompt",
                "the",
                &format!("--threads={bad}"),
            ],
            None,
        );
        assert_ne!(code, 0);
        assert!(err.contains("cores"), "{err}");
    }
}

#[test]
fn edits_that_contradict_or_change_nothing_are_refused_by_name() {
    let dir = temp_dir("safe-contradict");
    let model = tiny_model(&dir);
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let both = write(
        "both.jsonl",
        "{\"id\": \"a\", \"prompt\": \"{} is in\", \"subject\": \"the tea\", \"target_new\": \"the hat\"}\n\
         {\"id\": \"b\", \"prompt\": \"{} is in\", \"subject\": \"the tea\", \"target_new\": \"the sea\"}\n",
    );
    let same = write(
        "same.jsonl",
        "{\"id\": \"c\", \"prompt\": \"{} is in\", \"subject\": \"the tea\", \"target_new\": \"the hat\", \"target_true\": \"the hat\"}\n",
    );
    let slots = write(
        "slots.jsonl",
        "{\"id\": \"d\", \"prompt\": \"{} is in {}\", \"subject\": \"the tea\", \"target_new\": \"the hat\"}\n",
    );
    let out = s(&dir.join("o.gguf"));
    for (file, needles) in [
        (
            &both,
            &["records a and b", "\"the hat\"", "\"the sea\""][..],
        ),
        (&same, &["record c", "true target"][..]),
        (&slots, &["record 0", "2 {} slots"][..]),
    ] {
        let (code, _, err) = ftedit(&edit_args(&model, file, &out, &[]), None);
        assert_ne!(code, 0);
        for n in needles {
            assert!(err.contains(n), "{n} not in {err}");
        }
    }
    // An evaluation of a published data set with such records warns by name and runs.
    let (code, _, err) = ftedit(
        &eval_args(&model, &both, &dir.join("ev"), &["--method", "none"]),
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning") && err.contains("records a and b"),
        "{err}"
    );
}

#[test]
fn errors_name_the_file_record_or_setting_once() {
    let dir = temp_dir("safe-words");
    let model = tiny_model(&dir);
    let data = counterfact_jsonl(&dir, 2);
    // A byte-order mark is accepted.
    let bom = dir.join("bom.jsonl");
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend(std::fs::read(&data).unwrap());
    std::fs::write(&bom, bytes).unwrap();
    assert_eq!(ftedit::data::load(&bom, None).unwrap().len(), 2);
    // A data file that is not JSON is not called a model.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{oops").unwrap();
    let e = ftedit::data::load(&bad, None).unwrap_err().to_string();
    assert!(e.contains("bad.json") && e.contains("invalid JSON"), "{e}");
    assert!(!e.contains("model"), "{e}");
    // An OS error is said once.
    let (_, _, err) = ftedit(
        &eval_args(&model, &dir.join("none.jsonl"), &dir.join("r0"), &[]),
        None,
    );
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // A range the wrong way round says why.
    let (_, _, err) = ftedit(
        &eval_args(&model, &data, &dir.join("r1"), &["--range", "10..5"]),
        None,
    );
    assert!(err.contains("selects no record"), "{err}");
    // A prompt longer than the context names its record.
    let long = dir.join("long.jsonl");
    std::fs::write(
        &long,
        format!(
            "{{\"id\": \"far\", \"prompt\": \"{{}} is {}\", \"subject\": \"the tea\", \"target_new\": \"the hat\", \"target_true\": \"the sea\"}}\n",
            "the tea ".repeat(40)
        ),
    )
    .unwrap();
    let (code, _, err) = ftedit(
        &eval_args(&model, &long, &dir.join("r2"), &["--method", "none"]),
        None,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("record far") && err.contains("context"),
        "{err}"
    );
    // A folder of another run says which setting differs.
    let run = dir.join("r3");
    let (code, _, err) = ftedit(&eval_args(&model, &data, &run, &["--method", "ft-l"]), None);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ftedit(
        &eval_args(
            &model,
            &data,
            &run,
            &["--method", "ft-l", "--set", "optim.lr=0.5"],
        ),
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("optim.lr"), "{err}");
    // --out naming a file.
    let file = dir.join("file.txt");
    std::fs::write(&file, "x").unwrap();
    let (code, _, err) = ftedit(&eval_args(&model, &data, &file, &[]), None);
    assert_ne!(code, 0);
    assert!(err.contains("is a file"), "{err}");
    assert!(!err.contains("os error 17"), "{err}");
}

/// The losses of the report `ftedit edit` wrote beside `out`.
fn report_losses(out: &Path) -> Vec<f64> {
    let path = PathBuf::from(format!("{}.report.json", out.display()));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    report["training"]["runs"][0]["loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Whether the training resume point in `point` is past step 20.
fn resume_point_past_20(point: &Path) -> bool {
    std::fs::read_to_string(point.join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["step"].as_u64())
        .is_some_and(|step| step > 20)
}

#[test]
fn a_killed_training_run_resumes_where_it_stopped() {
    let dir = temp_dir("safe-train-resume");
    let model = tiny_model(&dir);
    let edits = two_edits(&dir);
    // Long enough to stop in the middle; a resume point every few milliseconds; one
    // thread and f32 so that two runs agree to the bit.
    let run = |out: &Path| {
        edit_args(
            &model,
            &edits,
            &s(out),
            &[
                "--set",
                "optim.min_steps=1500",
                "--set",
                "optim.converge_loss=0",
                "--set",
                "optim.diverge_factor=0",
                "--precision",
                "f32",
                "--threads",
                "1",
                "--checkpoint-every",
                "0.0002",
            ],
        )
    };
    let whole = dir.join("whole.gguf");
    let (code, _, err) = ftedit(&run(&whole), None);
    assert_eq!(code, 0, "{err}");
    let expected = report_losses(&whole);
    assert_eq!(expected.len(), 1500);
    assert!(
        !dir.join("whole.gguf.ftedit-resume").exists(),
        "a finished run keeps no point"
    );

    // SIGKILL (nothing can be saved at the kill) and SIGINT (saved on the way out).
    for (signal, name) in [(libc::SIGKILL, "killed"), (libc::SIGINT, "interrupted")] {
        let out = dir.join(format!("{name}.gguf"));
        let point = dir.join(format!("{name}.gguf.ftedit-resume"));
        let (code, err) = common::signal_when(&run(&out), || resume_point_past_20(&point), signal);
        if signal == libc::SIGINT {
            assert_eq!(code, 130, "{err}");
            assert!(err.contains("resume point is in"), "{err}");
        } else {
            assert_eq!(code, -libc::SIGKILL, "{err}");
        }
        assert!(!out.exists(), "{name}: a model was written");
        assert!(
            point.join("state.json").is_file(),
            "{name}: no resume point"
        );
        // The same command again continues and ends where the whole run did.
        let (code, _, err) = ftedit(&run(&out), None);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("resuming training at step"), "{name}: {err}");
        assert!(
            !point.exists(),
            "{name}: the finished run left its resume point"
        );
        assert_eq!(report_losses(&out), expected, "{name}: the losses differ");
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(&whole).unwrap(),
            "{name}: the weights differ"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_mass_edit_killed_while_evaluating_resumes_without_editing_again() {
    let dir = temp_dir("safe-batch-resume");
    let model = tiny_model(&dir);
    let data = counterfact_jsonl(&dir, 600);
    let run = |out: &Path| {
        eval_args(
            &model,
            &data,
            out,
            &[
                "--method",
                "ft",
                "--set",
                "augment.facts=none",
                "--set",
                "augment.prefix_lengths=[[2, 3]]",
                "--set",
                "train.layers=1..1",
                "--set",
                "optim.epochs=1",
                "--precision",
                "f32",
                "--threads",
                "1",
                "--no-exact-match",
                "--chunk",
                "4",
            ],
        )
    };
    let whole = dir.join("whole");
    let (code, _, err) = ftedit(&run(&whole), None);
    assert_eq!(code, 0, "{err}");
    assert!(
        !whole.join("checkpoint").exists(),
        "a finished run keeps its checkpoint"
    );

    let cut = dir.join("cut");
    let records = cut.join("records.jsonl");
    let written = || std::fs::read_to_string(&records).map_or(0, |t| t.lines().count()) >= 20;
    let (code, _) = common::signal_when(&run(&cut), written, libc::SIGKILL);
    assert_eq!(code, -libc::SIGKILL);
    assert!(
        cut.join("checkpoint/state.json").is_file(),
        "no checkpoint of the edit"
    );
    let (code, _, err) = ftedit(&run(&cut), None);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming after the edit"), "{err}");
    assert!(!cut.join("checkpoint").exists());
    // The same records with the same numbers, and the training report of the one edit.
    let records = |d: &Path| -> Vec<serde_json::Value> {
        let mut v: Vec<serde_json::Value> = std::fs::read_to_string(d.join("records.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        v.sort_by_key(|r| r["id"].as_str().unwrap().to_owned());
        v
    };
    assert_eq!(records(&cut), records(&whole));
    let train = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("train_report.json")).unwrap())
            .unwrap()
    };
    assert_eq!(
        train(&cut)["runs"][0]["loss"],
        train(&whole)["runs"][0]["loss"]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

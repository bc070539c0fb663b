//! The output folder of an evaluation: `records.jsonl` (every prompt's numbers, one
//! record per line, appended as records finish), `train_report.json` (what the editor
//! did), `summary.json` and `summary.md`.
//! A run pointed at a folder that already has records resumes after them
//! ([`crate::report::merge`] combines the folders of shards into one).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::health::Health;
use super::{RecordResult, Summary};
use crate::error::{Error, Result};

/// What a run was, stored beside its results so a resumed run can check it matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub model: String,
    pub data: String,
    pub method: String,
    pub protocol: String,
    /// The selection and options that change results.
    pub settings: serde_json::Value,
}

impl RunInfo {
    /// Where `other` differs from this run (the recipe's description aside), as
    /// `field: this → other`, at most `max` of them.
    pub fn differences(&self, other: &RunInfo, max: usize) -> Vec<String> {
        let (a, b) = (self.comparable(), other.comparable());
        let mut out = Vec::new();
        diff_json(
            "",
            &serde_json::to_value(a).expect("serialisable"),
            &serde_json::to_value(b).expect("serialisable"),
            &mut out,
        );
        out.truncate(max);
        out
    }

    fn comparable(&self) -> RunInfo {
        let mut r = self.clone();
        if let Some(c) = r.settings.get_mut("config").and_then(|c| c.as_object_mut()) {
            c.remove("description");
        }
        r
    }

    /// Whether `other` would give the same results: the method config's `description`
    /// is prose (rewording a recipe must not strand the runs made with it).
    pub fn same_results(&self, other: &RunInfo) -> bool {
        self.comparable() == other.comparable()
    }
}

/// The leaves where `a` and `b` differ, as `path: a → b` (settings flattened with dots).
fn diff_json(at: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    let key = |k: &str| {
        let k = k.strip_prefix("settings.").unwrap_or(k);
        let k = k.strip_prefix("config.").unwrap_or(k);
        k.to_owned()
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            let null = Value::Null;
            for k in keys {
                let sub = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                diff_json(
                    &sub,
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{}: {a} → {b}", key(at))),
        _ => {}
    }
}

/// How long a run took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    /// The whole run, evaluation included.
    pub seconds: f64,
    /// In the editor alone (all its calls).
    pub edit_seconds: f64,
    /// The process's peak resident memory in MiB, where the run had the process to
    /// itself (`ftedit eval`; not a sweep's runs, which share one).
    pub peak_rss_mb: Option<f64>,
}

/// `summary.json`: the run, its aggregates and its speed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SummaryFile {
    #[serde(flatten)]
    pub summary: Summary,
    pub run: Option<RunInfo>,
    pub seconds: Option<f64>,
    /// Seconds spent editing (not evaluating).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit_seconds: Option<f64>,
    /// The process's peak resident memory, MiB ([`Timing::peak_rss_mb`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
    /// The edited model's health against the unedited one (`health.rs`); its perplexity
    /// and retention are also in `metrics` as `PPL_before`, `PPL`, `known_retained`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// An evaluation's output folder.
pub struct OutputDir {
    pub path: PathBuf,
    /// Held while this run writes the folder ([`OutputDir::open`]).
    _lock: Option<crate::output::Lock>,
}

/// Where a run's training keeps its resume point (removed when training finishes).
pub const TRAIN_RESUME: &str = "train-resume";

/// The files that mark a folder as an evaluation's output.
const RUN_FILES: &[&str] = &[
    "run.json",
    "records.jsonl",
    "summary.json",
    "curve.jsonl",
    "checkpoint",
    TRAIN_RESUME,
    "sweep.json",
    crate::output::LOCK_FILE,
];

pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<()> {
    crate::output::write_atomic(path, text.as_bytes())
}

/// Reads a JSON-lines file, one value per line; a cut-off last line (an interrupted
/// write) is ignored, any other bad line names the file and line.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => {
                return Err(Error::data(path, format!("line {}: {e}", i + 1)));
            }
        }
    }
    Ok(out)
}

/// Reads and parses a JSON file, naming it in the error.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::data(path, e.to_string()))
}

impl OutputDir {
    /// Opens (creating) the folder for a run to write, locked against other runs while
    /// the value lives. A file, or a folder holding files of something other than an
    /// evaluation, is refused; with `run` given, so is a folder of a different run's
    /// results (the message names the settings that differ).
    pub fn open(path: impl Into<PathBuf>, run: Option<&RunInfo>) -> Result<Self> {
        let path = path.into();
        if path.exists() && !path.is_dir() {
            return Err(Error::output(
                &path,
                "is a file; --out names the folder a run writes its results in",
            ));
        }
        if path.is_dir() {
            let names = crate::output::names_in(&path)?;
            if !names.is_empty() && !names.iter().any(|n| RUN_FILES.contains(&n.as_str())) {
                return Err(Error::output(
                    &path,
                    format!(
                        "is a folder with other files in it ({}), not a run's results; \
                         choose a new or empty folder",
                        crate::output::some_names(&names)
                    ),
                ));
            }
        }
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        let lock = crate::output::Lock::acquire(&path)?;
        let dir = OutputDir {
            path,
            _lock: Some(lock),
        };
        let info = dir.path.join("run.json");
        if let Some(run) = run {
            if info.exists() {
                let old: RunInfo = read_json(&info)?;
                // A sequential run's checkpoint is results too, before any record is.
                let has_results =
                    !dir.records()?.is_empty() || dir.path.join("checkpoint").exists();
                if !old.same_results(run) && has_results {
                    return Err(Error::Input(format!(
                        "{} holds results of a different run ({} on {}, {} / {}), which differs in {}; \
                         use another --out",
                        dir.path.display(),
                        old.model,
                        old.data,
                        old.method,
                        old.protocol,
                        old.differences(run, 4).join("; ")
                    )));
                }
            }
            write_atomic(
                &info,
                &serde_json::to_string_pretty(run).expect("serialisable"),
            )?;
        }
        Ok(dir)
    }

    /// A finished run's folder, to read (not locked).
    pub fn read(path: impl Into<PathBuf>) -> Self {
        OutputDir {
            path: path.into(),
            _lock: None,
        }
    }

    fn records_path(&self) -> PathBuf {
        self.path.join("records.jsonl")
    }

    /// The results already written (a cut-off last line, from an interrupted write, is
    /// ignored and will be redone).
    pub fn records(&self) -> Result<Vec<RecordResult>> {
        let p = self.records_path();
        if !p.exists() {
            return Ok(Vec::new());
        }
        read_jsonl(&p)
    }

    /// Ids of the records already done.
    pub fn done_ids(&self) -> Result<HashSet<String>> {
        Ok(self.records()?.into_iter().map(|r| r.id).collect())
    }

    /// Rewrites `records.jsonl` with exactly `results` (drops a cut-off line).
    pub fn reset_records(&self, results: &[RecordResult]) -> Result<()> {
        let mut text = String::new();
        for r in results {
            text.push_str(&serde_json::to_string(r).expect("serialisable"));
            text.push('\n');
        }
        write_atomic(&self.records_path(), &text)
    }

    /// Appends one result.
    pub fn append(&self, r: &RecordResult) -> Result<()> {
        let p = self.records_path();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| Error::io(&p, e))?;
        writeln!(f, "{}", serde_json::to_string(r).expect("serialisable"))
            .map_err(|e| Error::io(&p, e))
    }

    fn train_report_path(&self) -> PathBuf {
        self.path.join("train_report.json")
    }

    /// The editor's per-edit reports (`runs`) already in `train_report.json`, for a
    /// resumed run to keep.
    pub fn train_runs(&self) -> Result<Vec<serde_json::Value>> {
        let p = self.train_report_path();
        if !p.exists() {
            return Ok(Vec::new());
        }
        let report: serde_json::Value = read_json(&p)?;
        Ok(report["runs"].as_array().cloned().unwrap_or_default())
    }

    /// Writes the editor's `report` as `train_report.json`, its `runs` preceded by
    /// `earlier` (those of the run this one resumes).
    pub fn write_train_report(
        &self,
        mut report: serde_json::Value,
        earlier: &[serde_json::Value],
    ) -> Result<()> {
        if let Some(runs) = report.get_mut("runs").and_then(|r| r.as_array_mut()) {
            runs.splice(0..0, earlier.iter().cloned());
        }
        write_atomic(
            &self.train_report_path(),
            &serde_json::to_string_pretty(&report).expect("serialisable"),
        )
    }

    /// Writes `name` in the folder (whole or not at all).
    pub fn write_file(&self, name: &str, text: &str) -> Result<()> {
        write_atomic(&self.path.join(name), text)
    }

    /// The folder's `summary.json`, if a finished run wrote one.
    pub fn summary(&self) -> Result<Option<SummaryFile>> {
        let p = self.path.join("summary.json");
        if !p.exists() {
            return Ok(None);
        }
        read_json(&p).map(Some)
    }

    /// Writes `summary.json` and `summary.md` from every record in the folder, with the
    /// run's timing and the model's health.
    pub fn write_summary(
        &self,
        run: Option<RunInfo>,
        timing: Option<Timing>,
        health: Option<Health>,
    ) -> Result<SummaryFile> {
        let mut summary = Summary::new(&self.records()?);
        if let Some(h) = &health {
            let m = &mut summary.metrics;
            m.extend(h.metrics());
            if h.known_retained.is_none() {
                summary
                    .notes
                    .push("known_retained not computed: no facts the unedited model knew".into());
            }
            if let Some(at) = h.collapsed_at {
                summary.notes.push(format!(
                    "collapsed: perplexity ×{:.1} after {at} edits",
                    h.ratio()
                ));
            }
        }
        let file = SummaryFile {
            summary,
            run,
            seconds: timing.map(|t| t.seconds),
            edit_seconds: timing.map(|t| t.edit_seconds),
            peak_rss_mb: timing.and_then(|t| t.peak_rss_mb),
            health,
        };
        write_atomic(
            &self.path.join("summary.json"),
            &serde_json::to_string_pretty(&file).expect("serialisable"),
        )?;
        let mut md = String::new();
        if let Some(run) = &file.run {
            md.push_str(&format!(
                "# {} on {}\n\nmethod `{}`, protocol `{}`\n\n",
                run.model, run.data, run.method, run.protocol
            ));
        }
        md.push_str(&file.summary.markdown());
        write_atomic(&self.path.join("summary.md"), &md)?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_differing_only_in_a_recipes_description_are_the_same_run() {
        let run = |desc: &str, lr: f64| RunInfo {
            model: "m".into(),
            data: "d".into(),
            method: "ft-m".into(),
            protocol: "batch".into(),
            settings: serde_json::json!({"n": 3, "config": {"description": desc, "lr": lr}}),
        };
        assert!(run("old words", 1e-4).same_results(&run("new words", 1e-4)));
        assert!(!run("same", 1e-4).same_results(&run("same", 5e-4)));
        let dir = std::env::temp_dir().join(format!("ftedit-runinfo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        OutputDir::open(&dir, Some(&run("a", 1e-4))).unwrap();
        std::fs::create_dir_all(dir.join("checkpoint")).unwrap();
        assert!(OutputDir::open(&dir, Some(&run("b", 1e-4))).is_ok());
        let err = OutputDir::open(&dir, Some(&run("b", 5e-4))).err().unwrap();
        assert!(err.to_string().contains("different run"), "{err}");
        // It says which setting differs.
        assert!(err.to_string().contains("lr: 0.0001 → 0.0005"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

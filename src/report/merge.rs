//! `ftedit report merge`: the output folders of shards (`eval --shard i/N`) combined
//! into one report.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::eval::health::Health;
use crate::eval::run_dir::{OutputDir, RunInfo, SummaryFile, write_atomic};

/// Merges the records of several output folders (shards) into `out`; a record present
/// in more than one folder counts once.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<SummaryFile> {
    let mut seen = HashSet::new();
    let mut all = Vec::new();
    let mut run = None;
    for d in dirs {
        if !d.join("records.jsonl").exists() {
            return Err(Error::Input(format!(
                "{} has no records.jsonl",
                d.display()
            )));
        }
        let dir = OutputDir::read(d.clone());
        for r in dir.records()? {
            if seen.insert(r.id.clone()) {
                all.push(r);
            }
        }
        let info = d.join("run.json");
        if run.is_none() && info.exists() {
            run = std::fs::read_to_string(&info)
                .ok()
                .and_then(|t| serde_json::from_str::<RunInfo>(&t).ok());
        }
    }
    // Each shard edited its own copy of the model: their health is one number only when
    // the shards agree (an unedited baseline).
    let healths: Vec<Option<Health>> = dirs
        .iter()
        .map(|d| {
            OutputDir::read(d.clone())
                .summary()
                .map(|f| f.and_then(|f| f.health))
        })
        .collect::<Result<_>>()?;
    let health = healths
        .first()
        .cloned()
        .flatten()
        .filter(|h| healths.iter().all(|o| o.as_ref() == Some(h)));
    let dir = OutputDir::open(out, None)?;
    dir.reset_records(&all)?;
    if let Some(run) = &run {
        write_atomic(
            &dir.path.join("run.json"),
            &serde_json::to_string_pretty(run).expect("serialisable"),
        )?;
    }
    let mut file = dir.write_summary(run.clone(), None, health.clone())?;
    if health.is_none() && healths.iter().any(Option::is_some) {
        file.summary
            .notes
            .push("health differs between the shards (each edited its own model): see each shard's summary".into());
        write_atomic(
            &dir.path.join("summary.json"),
            &serde_json::to_string_pretty(&file).expect("serialisable"),
        )?;
    }
    Ok(file)
}

//! Tuning a method on your own model: one protocol run per combination of settings (a
//! grid of `--set` values), each into its own folder under the sweep's, and a table of
//! the results with the best combination marked (by S on CounterFact, Score on zsRE)
//! among those that kept the model healthy: a setting that scores best by breaking the
//! model (its run tripped the collapse flag, see `eval::health`) is not a default to keep.
//!
//! A sweep resumes: a combination whose folder holds a finished summary is not run
//! again, and one that was cut short resumes as [`super::run`] does.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Protocol, run};
use crate::data::EditRecord;
use crate::edit::{self, BuildOptions, MethodConfig};
use crate::error::{Error, Result};
use crate::eval::EvalOptions;
use crate::eval::run_dir::{OutputDir, RunInfo, SummaryFile};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// The settings a sweep varies: `(key, values)` axes, combined in full.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub axes: Vec<(String, Vec<String>)>,
}

impl Grid {
    /// Parses `key=v1,v2,…` specs; commas inside brackets or quotes belong to a value
    /// (`value.contexts=[[5,10]],[[10,10]]` has two values).
    pub fn parse(specs: &[String]) -> Result<Self> {
        let mut axes: Vec<(String, Vec<String>)> = Vec::new();
        for spec in specs {
            let bad = |why: &str| Error::Input(format!("--grid {spec}: {why}"));
            let (key, values) = spec
                .split_once('=')
                .ok_or_else(|| bad("expected KEY=V1,V2,…"))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(bad("empty key"));
            }
            if axes.iter().any(|(k, _)| k == key) {
                return Err(bad("the key is already on the grid"));
            }
            let values = split_values(values);
            if values.iter().any(|v| v.is_empty()) {
                return Err(bad("empty value"));
            }
            axes.push((key.to_owned(), values));
        }
        if axes.is_empty() {
            return Err(Error::Input("a sweep needs at least one --grid".into()));
        }
        Ok(Grid { axes })
    }

    /// Every combination as `key=value` overrides, the first axis varying slowest.
    pub fn combinations(&self) -> Vec<Vec<String>> {
        let mut out = vec![Vec::new()];
        for (key, values) in &self.axes {
            out = out
                .into_iter()
                .flat_map(|c: Vec<String>| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push(format!("{key}={v}"));
                        c
                    })
                })
                .collect();
        }
        out
    }
}

/// Splits at the commas outside brackets and quotes.
fn split_values(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quoted) = (Vec::new(), String::new(), 0i32, false);
    for ch in s.chars() {
        match ch {
            '"' => quoted = !quoted,
            '[' | '{' if !quoted => depth += 1,
            ']' | '}' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(cur.trim().to_owned());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    out.push(cur.trim().to_owned());
    out
}

/// A combination's folder name: its overrides, with path-unsafe characters replaced.
fn folder_name(combo: &[String]) -> String {
    combo
        .join(",")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._=,+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What to sweep.
pub struct Sweep<'a> {
    /// `--method` and `--recipe` as for `eval` (at least one).
    pub method: Option<&'a str>,
    pub recipe: Option<&'a str>,
    /// Fixed overrides, applied before each combination's.
    pub overrides: &'a [String],
    pub grid: &'a Grid,
    pub protocol: Protocol,
    /// The run description each combination's folder records; its method and protocol
    /// are set from the combination's config and `protocol`, its settings gain the
    /// combination's `config`.
    pub run: RunInfo,
    /// Show the sweep's bar (and the runs' own).
    pub progress: bool,
}

/// One combination's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The combination's overrides, `key=value`.
    pub settings: Vec<String>,
    /// Its folder, relative to the sweep's.
    pub dir: String,
    pub n: usize,
    /// The suite's metrics, in percent.
    pub metrics: BTreeMap<String, Option<f64>>,
    pub seconds_per_edit: Option<f64>,
    /// The run tripped the health check's collapse flag (or diverged).
    #[serde(default)]
    pub collapsed: bool,
    /// Training diverged and stopped ([`Error::Diverged`]): no metrics, never chosen.
    #[serde(default)]
    pub diverged: bool,
    /// The best row by the key metric among the healthy ones (among all, if none is).
    pub best: bool,
}

/// The note a combination whose training diverged leaves in its folder, so that a
/// resumed sweep does not run it again.
const DIVERGED_FILE: &str = "diverged.txt";

impl Row {
    /// The row of a combination whose run finished with `file`, over `records` edits.
    fn finished(settings: Vec<String>, dir: String, file: &SummaryFile, records: usize) -> Self {
        Row {
            settings,
            dir,
            n: file.summary.n,
            metrics: file.summary.metrics.clone(),
            seconds_per_edit: file.edit_seconds.map(|s| s / records.max(1) as f64),
            collapsed: file.health.as_ref().is_some_and(|h| h.collapsed),
            diverged: false,
            best: false,
        }
    }

    /// The row of a combination whose training diverged.
    fn diverged(settings: Vec<String>, dir: String) -> Self {
        Row {
            settings,
            dir,
            n: 0,
            metrics: BTreeMap::new(),
            seconds_per_edit: None,
            collapsed: true,
            diverged: true,
            best: false,
        }
    }
}

/// A sweep's results: `sweep.json` and `sweep.md` in its folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table {
    pub axes: Vec<String>,
    /// The metric the best row is chosen by: `S` (CounterFact) or `score` (zsRE).
    pub key_metric: String,
    pub rows: Vec<Row>,
    /// Combinations run by this call, and found finished.
    pub ran: usize,
    pub skipped: usize,
}

/// The metrics a table shows, where the runs have them.
const COLUMNS: &[&str] = &[
    "S",
    "ES",
    "PS",
    "NS",
    "GE",
    "EM_exact",
    "score",
    "efficacy",
    "paraphrase",
    "specificity",
    "efficacy_exact",
    "PPL",
    "known_retained",
    "subject_nll_delta",
    "chat_exact",
    "chat_clean",
];

impl Table {
    fn new(axes: Vec<String>, mut rows: Vec<Row>, ran: usize, skipped: usize) -> Self {
        let has = |m: &str| {
            rows.iter()
                .any(|r| r.metrics.get(m).is_some_and(|v| v.is_some()))
        };
        let key_metric = if has("S") { "S" } else { "score" }.to_owned();
        let key = |r: &Row| r.metrics.get(&key_metric).copied().flatten();
        let best_of = |healthy_only: bool| {
            // Reversed, so that a tie goes to the combination listed first.
            rows.iter()
                .enumerate()
                .filter(|(_, r)| !(healthy_only && r.collapsed))
                .filter_map(|(i, r)| key(r).map(|v| (i, v)))
                .rev()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i)
        };
        let best = best_of(true).or_else(|| best_of(false));
        for (i, r) in rows.iter_mut().enumerate() {
            r.best = Some(i) == best;
        }
        Table {
            axes,
            key_metric,
            rows,
            ran,
            skipped,
        }
    }

    /// The best row, if any has the key metric.
    pub fn best(&self) -> Option<&Row> {
        self.rows.iter().find(|r| r.best)
    }

    /// A markdown table: the grid's settings, the metrics, seconds per edit; the best
    /// row in bold.
    pub fn markdown(&self) -> String {
        let cols: Vec<&str> = COLUMNS
            .iter()
            .copied()
            .filter(|m| {
                self.rows
                    .iter()
                    .any(|r| r.metrics.get(*m).is_some_and(|v| v.is_some()))
            })
            .collect();
        let collapsed = self.rows.iter().filter(|r| r.collapsed).count();
        let mut s = String::from("|");
        for a in &self.axes {
            s.push_str(&format!(" {a} |"));
        }
        for c in &cols {
            s.push_str(&format!(" {c} |"));
        }
        if collapsed > 0 {
            s.push_str(" collapsed |");
        }
        s.push_str(" s / edit |\n|");
        s.push_str(&"---|".repeat(self.axes.len()));
        s.push_str(&"---:|".repeat(cols.len()));
        if collapsed > 0 {
            s.push_str("---|");
        }
        s.push_str("---:|\n");
        for r in &self.rows {
            let cell = |v: String| {
                if r.best {
                    format!(" **{v}** |")
                } else {
                    format!(" {v} |")
                }
            };
            s.push('|');
            for kv in &r.settings {
                s.push_str(&cell(kv.split_once('=').map_or("", |(_, v)| v).to_owned()));
            }
            for c in &cols {
                let v = r.metrics.get(*c).copied().flatten();
                s.push_str(&cell(v.map_or("—".into(), |v| format!("{v:.1}"))));
            }
            if collapsed > 0 {
                let state = match (r.diverged, r.collapsed) {
                    (true, _) => "diverged",
                    (_, true) => "yes",
                    _ => "no",
                };
                s.push_str(&cell(state.into()));
            }
            s.push_str(&cell(
                r.seconds_per_edit.map_or("—".into(), |v| format!("{v:.2}")),
            ));
            s.push('\n');
        }
        if let Some(b) = self.best() {
            s.push_str(&format!(
                "\nbest by {}: {} (n = {})\n",
                self.key_metric,
                b.settings.join(" "),
                b.n
            ));
        }
        if collapsed == self.rows.len() && collapsed > 0 {
            s.push_str("every combination tripped the collapse flag\n");
        } else if collapsed > 0 {
            s.push_str(&format!(
                "{collapsed} of {} combinations tripped the collapse flag and are not chosen\n",
                self.rows.len()
            ));
        }
        s
    }
}

/// Runs `sweep` over `records` on `model` (whose weights are restored after every
/// combination), writing each combination's results under `out` and the table to
/// `out/sweep.{json,md}`.
pub fn sweep(
    model: &mut Model,
    tok: &Tokenizer,
    records: &[EditRecord],
    sweep: &Sweep,
    opts: &EvalOptions,
    build: &BuildOptions,
    out: &Path,
) -> Result<Table> {
    if sweep.method.is_none() && sweep.recipe.is_none() {
        return Err(Error::Input(
            "a sweep needs --method or --recipe (see ftedit methods)".into(),
        ));
    }
    let arch = model.arch_name();
    // Every combination's config first, so a bad key stops the sweep before any run.
    let combos: Vec<(Vec<String>, MethodConfig)> = sweep
        .grid
        .combinations()
        .into_iter()
        .map(|combo| {
            let sets: Vec<String> = sweep.overrides.iter().chain(&combo).cloned().collect();
            let config =
                MethodConfig::select(sweep.method, sweep.recipe, "none", Some(arch), &sets)?;
            Ok((combo, config))
        })
        .collect::<Result<_>>()?;
    let top = OutputDir::open(out, None)?;
    let axes: Vec<String> = sweep.grid.axes.iter().map(|(k, _)| k.clone()).collect();
    let pb = crate::progress::bar(sweep.progress, combos.len(), "sweep");
    let (mut rows, mut ran, mut skipped) = (Vec::new(), 0, 0);
    for (combo, config) in &combos {
        let name = folder_name(combo);
        pb.set_message(combo.join(" "));
        let mut info = sweep.run.clone();
        info.method = config.method().to_owned();
        info.protocol = sweep.protocol.name().to_owned();
        if let serde_json::Value::Object(m) = &mut info.settings {
            m.insert(
                "config".into(),
                serde_json::to_value(config).expect("serialisable"),
            );
        }
        let dir = OutputDir::open(out.join(&name), Some(&info))?;
        // A combination an earlier sweep finished is taken as it is.
        let (row, fresh) = if dir.path.join(DIVERGED_FILE).exists() {
            (Row::diverged(combo.clone(), name), false)
        } else if let Some(file) = dir.summary()? {
            (
                Row::finished(combo.clone(), name, &file, records.len()),
                false,
            )
        } else {
            dir.write_file("recipe.toml", &config.to_toml())?;
            let mut editor = edit::build(config, tok, build)?;
            let snapshot = super::snapshot_for(editor.as_ref(), model)?;
            let adapter_before = model.adapter().cloned();
            let result = run(
                model,
                tok,
                records,
                editor.as_mut(),
                sweep.protocol,
                opts,
                &dir,
            );
            if let Some(s) = &snapshot {
                model.params.restore(s)?;
            }
            model.set_adapter(adapter_before.clone());
            match result {
                // A learning rate too high for the model is an answer of the sweep, not a
                // reason to stop it.
                Err(Error::Diverged(why)) => {
                    dir.write_file(DIVERGED_FILE, &format!("training diverged: {why}\n"))?;
                    (Row::diverged(combo.clone(), name), true)
                }
                other => {
                    let outcome = other?;
                    let file =
                        dir.write_summary(Some(info), Some(outcome.timing), outcome.health)?;
                    (
                        Row::finished(combo.clone(), name, &file, records.len()),
                        true,
                    )
                }
            }
        };
        if fresh {
            ran += 1;
        } else {
            skipped += 1;
        }
        rows.push(row);
        let table = Table::new(axes.clone(), rows.clone(), ran, skipped);
        write_table(&top, &table)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(Table::new(axes, rows, ran, skipped))
}

fn write_table(dir: &OutputDir, table: &Table) -> Result<()> {
    dir.write_file(
        "sweep.json",
        &serde_json::to_string_pretty(table).expect("serialisable"),
    )?;
    dir.write_file("sweep.md", &table.markdown())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_split_values_and_combine_in_full() {
        let g = Grid::parse(&[
            "lambda=1,2".into(),
            "value.contexts=[[5, 10]],[[10,5],[5,5]]".into(),
            "stats.text=\"a,b\",c".into(),
        ])
        .unwrap();
        assert_eq!(g.axes[1].1, vec!["[[5, 10]]", "[[10,5],[5,5]]"]);
        assert_eq!(g.axes[2].1, vec!["\"a,b\"", "c"]);
        let c = g.combinations();
        assert_eq!(c.len(), 8);
        assert_eq!(
            c[0],
            vec!["lambda=1", "value.contexts=[[5, 10]]", "stats.text=\"a,b\""]
        );
        assert_eq!(c[7][0], "lambda=2");
        assert_eq!(
            folder_name(&c[0]),
            "lambda=1,value.contexts=__5,_10__,stats.text=_a,b_"
        );
        for bad in ["lambda", "=1", "lambda=1,", ""] {
            assert!(Grid::parse(&[bad.into()]).is_err(), "{bad:?}");
        }
        assert!(Grid::parse(&["a=1".into(), "a=2".into()]).is_err());
        assert!(Grid::parse(&[]).is_err());
    }

    #[test]
    fn the_best_row_is_marked_by_the_suites_key_metric() {
        let row = |v: &str, s: Option<f64>| Row {
            settings: vec![format!("lambda={v}")],
            dir: v.into(),
            n: 2,
            metrics: [("S".to_string(), s), ("ES".to_string(), Some(1.0))].into(),
            seconds_per_edit: Some(0.5),
            collapsed: false,
            diverged: false,
            best: false,
        };
        let t = Table::new(
            vec!["lambda".into()],
            vec![
                row("1", Some(40.0)),
                row("2", Some(60.0)),
                row("3", None),
                row("4", Some(60.0)),
            ],
            4,
            0,
        );
        assert_eq!(t.key_metric, "S");
        // The tie of "2" and "4" goes to the first.
        assert_eq!(t.best().unwrap().settings, vec!["lambda=2"]);
        let md = t.markdown();
        assert!(
            md.contains("| **2** | **60.0** | **1.0** | **0.50** |"),
            "{md}"
        );
        assert!(md.contains("| 3 | — | 1.0 | 0.50 |"), "{md}");
        assert!(!md.contains("collapse"), "{md}");

        // A row that scores best by breaking the model is not chosen, and is marked.
        let mut rows = t.rows.clone();
        rows[1].collapsed = true;
        let t = Table::new(vec!["lambda".into()], rows.clone(), 4, 0);
        assert_eq!(t.best().unwrap().settings, vec!["lambda=4"]);
        let md = t.markdown();
        assert!(md.contains("| 2 | 60.0 | 1.0 | yes | 0.50 |"), "{md}");
        assert!(
            md.contains("| **4** | **60.0** | **1.0** | **no** | **0.50** |"),
            "{md}"
        );
        assert!(
            md.contains("1 of 4 combinations tripped the collapse flag"),
            "{md}"
        );
        // A combination whose training diverged has no numbers, is marked, never chosen.
        let mut with_diverged = rows.clone();
        with_diverged.push(Row::diverged(vec!["lambda=9".into()], "9".into()));
        let t = Table::new(vec!["lambda".into()], with_diverged, 5, 0);
        assert_eq!(t.best().unwrap().settings, vec!["lambda=4"]);
        assert!(
            t.markdown().contains("| 9 | — | — | diverged | — |"),
            "{}",
            t.markdown()
        );
        // When every row collapsed, the best of them is still marked, and the table says so.
        for r in &mut rows {
            r.collapsed = true;
        }
        let t = Table::new(vec!["lambda".into()], rows, 4, 0);
        assert_eq!(t.best().unwrap().settings, vec!["lambda=2"]);
        assert!(
            t.markdown().contains("every combination tripped"),
            "{}",
            t.markdown()
        );
    }
}

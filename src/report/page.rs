//! One self-contained HTML page for one or more runs (`ftedit report html`): the
//! summaries side by side, every record with whether its edit took (sortable, and
//! filterable to the edits that did not), the editors' loss curves and, for sequential
//! runs, their curves. No network: the CSS and the script are inline and the plots are
//! inline SVG ([`super::plot`]).
//!
//! A run is an evaluation's output folder (`summary.json`, `records.jsonl`,
//! `train_report.json`, `curve.jsonl`) or the report `ftedit edit` writes beside the
//! model (`MODEL.gguf.report.json`, or `ftedit_report.json` in a transformers folder).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::curves;
use super::plot::{Chart, Panel, Series};
use crate::error::{Error, Result};
use crate::eval::check::Check;
use crate::eval::health::Health;
use crate::eval::run_dir::{OutputDir, SummaryFile};
use crate::eval::{RecordResult, Scores};
use crate::protocols::sequential::CurvePoint;

/// One row of a run's record table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub prompt: String,
    pub target_new: String,
    pub target_true: Option<String>,
    /// Whether the edit took (see [`took`]); `None` when the run cannot tell.
    pub took: Option<bool>,
    /// Further columns, in [`Run::columns`] order (empty text where absent).
    pub cells: Vec<String>,
}

/// What the page shows of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub name: String,
    pub path: PathBuf,
    /// Model, data, method, protocol and the like.
    pub info: Vec<(String, String)>,
    /// Aggregate metrics, by METRICS.md name.
    pub metrics: BTreeMap<String, Option<f64>>,
    pub notes: Vec<String>,
    /// The names of [`Row::cells`].
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
    /// The editor's loss after each step, every edit call in turn.
    pub loss: Vec<f64>,
    /// A sequential run's checkpoints.
    pub curve: Vec<CurvePoint>,
}

/// Whether a record's edit took: the rewrite prompt's greedy continuation starts with
/// the new target (exact match); where generation was off, the teacher-forced score
/// (CounterFact: P(new) > P(true); zsRE: every target token top-1).
pub fn took(r: &RecordResult) -> Option<bool> {
    if let Some(e) = r.exact.as_ref().and_then(|e| e.efficacy) {
        return Some(e >= 1.0);
    }
    match &r.scores {
        Scores::CounterFact(s) => s.es.map(|v| v >= 1.0),
        Scores::Zsre(s) => s.efficacy.map(|v| v >= 1.0),
    }
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or(String::new(), |v| format!("{v:.digits$}"))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Format {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Every step's loss in an editor's report (`{"runs": [{"loss": […]}, …]}`).
fn losses(report: &serde_json::Value) -> Vec<f64> {
    report["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["loss"].as_array().into_iter().flatten())
        .filter_map(|v| v.as_f64())
        .collect()
}

impl Run {
    /// The name a run goes by when none is given: its folder's, its model's for an
    /// edit report (`edited.gguf.report.json` → `edited.gguf`), a curve file's stem.
    pub fn default_name(path: &Path) -> String {
        let name = path.file_name().map_or(path.display().to_string(), |n| {
            n.to_string_lossy().into_owned()
        });
        name.strip_suffix(".report.json")
            .or_else(|| name.strip_suffix(".jsonl"))
            .filter(|n| !n.is_empty())
            .map_or(name.clone(), str::to_owned)
    }

    /// Reads a run from an evaluation folder or an edit report, named `name`.
    pub fn open(path: &Path, name: String) -> Result<Run> {
        let edit_report = if path.is_file() {
            Some(path.to_owned())
        } else {
            Some(path.join("ftedit_report.json")).filter(|p| p.exists())
        };
        match edit_report {
            Some(file) => Self::from_edit_report(&file, name),
            None if path.join("summary.json").exists() || path.join("records.jsonl").exists() => {
                Self::from_eval_dir(path, name)
            }
            None => Err(Error::Input(format!(
                "{}: not a run (no summary.json or records.jsonl, and not the report of `ftedit edit`)",
                path.display()
            ))),
        }
    }

    fn from_eval_dir(dir: &Path, name: String) -> Result<Run> {
        let out = OutputDir::read(dir);
        let records = out.records()?;
        let summary = match out.summary()? {
            Some(s) => s,
            // A run still going (or killed): its records so far.
            None => SummaryFile {
                summary: crate::eval::Summary::new(&records),
                run: None,
                seconds: None,
                edit_seconds: None,
                peak_rss_mb: None,
                health: None,
            },
        };
        let mut info = Vec::new();
        if let Some(run) = &summary.run {
            info.push(("model".into(), run.model.clone()));
            info.push(("data".into(), run.data.clone()));
            info.push(("method".into(), run.method.clone()));
            info.push(("protocol".into(), run.protocol.clone()));
        }
        info.push(("records".into(), summary.summary.n.to_string()));
        if let Some(s) = summary.seconds {
            info.push(("seconds".into(), format!("{s:.1}")));
        }
        if let Some(s) = summary.edit_seconds {
            info.push(("editing seconds".into(), format!("{s:.1}")));
        }
        if let Some(mb) = summary.peak_rss_mb {
            info.push(("peak memory (MiB)".into(), format!("{mb:.0}")));
        }
        let zsre = records.iter().any(|r| matches!(r.scores, Scores::Zsre(_)));
        let mut columns: Vec<String> = if zsre {
            vec!["efficacy".into(), "paraphrase".into(), "specificity".into()]
        } else {
            vec!["ES".into(), "PS".into(), "NS".into()]
        };
        columns.extend(["continuation".into(), "subject ΔNLL".into()]);
        let chat = records.iter().any(|r| r.chat.is_some());
        if chat {
            columns.push("chat answer".into());
        }
        let rows = records
            .iter()
            .map(|r| {
                let (a, b, c) = match &r.scores {
                    Scores::CounterFact(s) => (s.es, s.ps, s.ns),
                    Scores::Zsre(s) => (s.efficacy, s.paraphrase, s.specificity),
                };
                let mut cells = vec![fmt(a, 2), fmt(b, 2), fmt(c, 2)];
                cells.push(
                    r.exact
                        .as_ref()
                        .and_then(|e| e.rewrite.first())
                        .map_or(String::new(), |i| i.output.clone()),
                );
                cells.push(fmt(
                    r.subject_nll.zip(r.subject_nll_before).map(|(a, b)| a - b),
                    2,
                ));
                if chat {
                    cells.push(r.chat.as_ref().map_or(String::new(), |c| c.answer.clone()));
                }
                Row {
                    id: r.id.clone(),
                    prompt: r.prompt.clone(),
                    target_new: r.target_new.clone(),
                    target_true: r.target_true.clone(),
                    took: took(r),
                    cells,
                }
            })
            .collect();
        let train = dir.join("train_report.json");
        let loss = if train.exists() {
            losses(&read_json(&train)?)
        } else {
            Vec::new()
        };
        let curve = if dir.join("curve.jsonl").exists() {
            curves::plot_points(dir)?
        } else {
            Vec::new()
        };
        Ok(Run {
            name,
            path: dir.to_owned(),
            info,
            metrics: summary.summary.metrics,
            notes: summary.summary.notes,
            columns,
            rows,
            loss,
            curve,
        })
    }

    fn from_edit_report(file: &Path, name: String) -> Result<Run> {
        let report = read_json(file)?;
        let bad = |reason: String| Error::Format {
            path: file.to_owned(),
            reason,
        };
        let check: Check = report
            .get("check")
            .filter(|c| c.is_object())
            .ok_or_else(|| {
                bad("no 'check': not the report of `ftedit edit` (or one from before the check was added)".into())
            })
            .and_then(|c| serde_json::from_value(c.clone()).map_err(|e| bad(format!("check: {e}"))))?;
        let health: Option<Health> = match report.get("health").filter(|h| h.is_object()) {
            Some(h) => {
                Some(serde_json::from_value(h.clone()).map_err(|e| bad(format!("health: {e}")))?)
            }
            None => None,
        };
        let mut info = Vec::new();
        for (key, label) in [
            ("model", "model"),
            ("edits", "edit file"),
            ("method", "method"),
        ] {
            if let Some(v) = report[key].as_str() {
                info.push((label.into(), v.to_owned()));
            }
        }
        if let Some(s) = report["seconds"].as_f64() {
            info.push(("seconds".into(), format!("{s:.1}")));
        }
        let n = check.edits.len();
        let mut metrics = BTreeMap::new();
        metrics.insert("edits".into(), Some(n as f64));
        metrics.insert(
            "took %".into(),
            (n > 0).then(|| 100.0 * (n - check.not_taken) as f64 / n as f64),
        );
        metrics.insert("subject_nll_delta".into(), check.subject_nll_delta);
        if let Some(h) = &health {
            metrics.extend(h.metrics());
        }
        let columns = [
            "P(new) before",
            "P(new) after",
            "P(old) before",
            "P(old) after",
            "continuation",
            "subject ΔNLL",
        ]
        .map(String::from)
        .to_vec();
        let rows = check
            .edits
            .iter()
            .enumerate()
            .map(|(i, e)| Row {
                id: (i + 1).to_string(),
                prompt: e.prompt.clone(),
                target_new: e.target_new.clone(),
                target_true: e.target_true.clone(),
                took: Some(e.took),
                cells: vec![
                    fmt(Some(e.p_new_before), 3),
                    fmt(Some(e.p_new_after), 3),
                    fmt(e.p_old_before, 3),
                    fmt(e.p_old_after, 3),
                    e.continuation.clone(),
                    fmt(e.subject_nll_delta(), 2),
                ],
            })
            .collect();
        let notes = check
            .neighbours
            .iter()
            .map(|nb| {
                format!(
                    "neighbour {:?}: {:?} → {:?}",
                    nb.prompt, nb.before, nb.after
                )
            })
            .collect();
        Ok(Run {
            name,
            path: file.to_owned(),
            info,
            metrics,
            notes,
            columns,
            rows,
            loss: losses(&report["training"]),
            curve: Vec::new(),
        })
    }
}

/// Metrics in the order people read them; any others follow by name.
const ORDER: &[&str] = &[
    "S",
    "ES",
    "PS",
    "NS",
    "GE",
    "RS",
    "EM",
    "PM",
    "NM",
    "EM_exact",
    "PS_exact",
    "score",
    "efficacy",
    "paraphrase",
    "specificity",
    "portability",
    "locality",
    "efficacy_exact",
    "paraphrase_exact",
    "edits",
    "took %",
    "chat_exact",
    "chat_clean",
    "subject_nll_delta",
    "PPL_before",
    "PPL",
    "known_retained",
];

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#111;background:#fff}\
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:3px 8px;\
text-align:left;vertical-align:top;max-width:30em;overflow-wrap:anywhere}td.n{text-align:right;font-variant-numeric:tabular-nums}\
th{background:#f3f3f3}table.records th{cursor:pointer;user-select:none}\
tr.miss td{background:#fdecea}.mark{font-weight:bold}.ok{color:#1a7f37}.bad{color:#c62828}\
.note{color:#555;font-size:.9em}label{margin-right:1em}";

/// Sorting by a clicked header (numbers as numbers) and the "did not take" filter.
const SCRIPT: &str = "function sortBy(th){const t=th.closest('table'),b=t.tBodies[0],\
i=[...th.parentNode.children].indexOf(th),up=th.dataset.dir!=='up';th.dataset.dir=up?'up':'down';\
const v=r=>{const s=r.children[i].dataset.v??r.children[i].textContent;const x=parseFloat(s);\
return isNaN(x)?s:x};[...b.rows].sort((a,c)=>{const x=v(a),y=v(c);\
const o=typeof x==='number'&&typeof y==='number'?x-y:String(x).localeCompare(String(y));\
return up?o:-o}).forEach(r=>b.appendChild(r))}\
function filt(box){const t=document.getElementById(box.dataset.table);\
for(const r of t.tBodies[0].rows){r.hidden=box.checked&&!r.classList.contains('miss')}}";

fn summary_table(runs: &[Run], s: &mut String) {
    let mut names: Vec<&str> = ORDER
        .iter()
        .copied()
        .filter(|m| runs.iter().any(|r| r.metrics.contains_key(*m)))
        .collect();
    let mut rest: Vec<&str> = runs
        .iter()
        .flat_map(|r| r.metrics.keys().map(String::as_str))
        .filter(|m| !ORDER.contains(m))
        .collect();
    rest.sort_unstable();
    rest.dedup();
    // A metric's sub-sets (`portability.Reasoning`) follow it; other names follow all.
    for m in names.clone() {
        let at = names.iter().position(|n| *n == m).unwrap_or(0) + 1;
        let subs: Vec<&str> = rest
            .iter()
            .copied()
            .filter(|r| r.strip_prefix(m).is_some_and(|t| t.starts_with('.')))
            .collect();
        rest.retain(|r| !subs.contains(r));
        names.splice(at..at, subs);
    }
    names.extend(rest);
    let mut info: Vec<&str> = Vec::new();
    for r in runs {
        for (k, _) in &r.info {
            if !info.contains(&k.as_str()) {
                info.push(k);
            }
        }
    }
    s.push_str("<table class=\"summary\"><thead><tr><th></th>");
    for r in runs {
        let _ = write!(s, "<th>{}</th>", escape(&r.name));
    }
    s.push_str("</tr></thead><tbody>");
    for k in info {
        let _ = write!(s, "<tr><th>{}</th>", escape(k));
        for r in runs {
            let v = r.info.iter().find(|(n, _)| n == k).map_or("", |(_, v)| v);
            let _ = write!(s, "<td>{}</td>", escape(v));
        }
        s.push_str("</tr>");
    }
    for m in names {
        let _ = write!(s, "<tr><th>{}</th>", escape(m));
        for r in runs {
            let v = match r.metrics.get(m) {
                Some(Some(v)) => format!("{v:.2}"),
                Some(None) => "—".into(),
                None => String::new(),
            };
            let _ = write!(s, "<td class=\"n\">{v}</td>");
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
}

fn record_table(i: usize, run: &Run, s: &mut String) {
    let missed = run.rows.iter().filter(|r| r.took == Some(false)).count();
    let id = format!("records-{i}");
    let _ = write!(
        s,
        "<p><label><input type=\"checkbox\" data-table=\"{id}\" onchange=\"filt(this)\"> \
         only the edits that did not take ({missed} of {})</label>\
         <span class=\"note\">click a header to sort</span></p>",
        run.rows.len()
    );
    let _ = write!(
        s,
        "<table class=\"records\" id=\"{id}\"><thead><tr><th onclick=\"sortBy(this)\">id</th>\
         <th onclick=\"sortBy(this)\">took</th><th onclick=\"sortBy(this)\">prompt</th>\
         <th onclick=\"sortBy(this)\">new</th><th onclick=\"sortBy(this)\">old</th>"
    );
    for c in &run.columns {
        let _ = write!(s, "<th onclick=\"sortBy(this)\">{}</th>", escape(c));
    }
    s.push_str("</tr></thead><tbody>");
    for r in &run.rows {
        let (mark, class, v) = match r.took {
            Some(true) => ("✓", "ok", "1"),
            Some(false) => ("✗", "bad", "0"),
            None => ("", "", ""),
        };
        let _ = write!(
            s,
            "<tr{}><td>{}</td><td class=\"mark {class}\" data-v=\"{v}\">{mark}</td><td>{}</td><td>{}</td><td>{}</td>",
            if r.took == Some(false) {
                " class=\"miss\""
            } else {
                ""
            },
            escape(&r.id),
            escape(&r.prompt),
            escape(&r.target_new),
            escape(r.target_true.as_deref().unwrap_or(""))
        );
        for c in &r.cells {
            let numeric = c.parse::<f64>().is_ok();
            let _ = write!(
                s,
                "<td{}>{}</td>",
                if numeric { " class=\"n\"" } else { "" },
                escape(c)
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
}

/// The loss curves of every run with an editor's report, one line per run.
fn loss_chart(runs: &[Run]) -> Option<Chart> {
    if runs.iter().all(|r| r.loss.is_empty()) {
        return None;
    }
    let series = runs
        .iter()
        .map(|r| {
            (!r.loss.is_empty()).then(|| Series {
                points: r
                    .loss
                    .iter()
                    .enumerate()
                    .map(|(i, l)| ((i + 1) as f64, *l))
                    .collect(),
            })
        })
        .collect();
    Some(Chart {
        title: "Training loss".into(),
        x_label: "step".into(),
        legend: runs.iter().map(|r| r.name.clone()).collect(),
        panels: vec![Panel {
            y_label: "loss".into(),
            series,
            log_y: false,
            y_range: None,
        }],
    })
}

/// The whole page.
pub fn render(title: &str, runs: &[Run]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>{STYLE}</style><script>{SCRIPT}</script></head><body><h1>{t}</h1>\
         <p class=\"note\">ftedit {} · {} run{}</p>",
        env!("CARGO_PKG_VERSION"),
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        t = escape(title),
    );
    s.push_str("<h2>Summary</h2>");
    summary_table(runs, &mut s);
    for r in runs {
        for n in &r.notes {
            let _ = write!(
                s,
                "<p class=\"note\">{}: {}</p>",
                escape(&r.name),
                escape(n)
            );
        }
    }
    if let Some(chart) = loss_chart(runs) {
        s.push_str("<h2>Training loss</h2>");
        s.push_str(&chart.svg());
    }
    let curves: Vec<(String, Vec<CurvePoint>)> = runs
        .iter()
        .filter(|r| !r.curve.is_empty())
        .map(|r| (r.name.clone(), r.curve.clone()))
        .collect();
    if !curves.is_empty() {
        s.push_str("<h2>Sequential editing</h2>");
        let metrics = curves::default_plot_metrics(&curves);
        s.push_str(&curves::chart("Editing over time", &curves, &metrics, None).svg());
    }
    for (i, r) in runs.iter().enumerate() {
        let _ = write!(
            s,
            "<h2>Records: {}</h2><p class=\"note\">{}</p>",
            escape(&r.name),
            escape(&r.path.display().to_string())
        );
        record_table(i, r, &mut s);
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, took: &[Option<bool>]) -> Run {
        Run {
            name: name.into(),
            path: PathBuf::from(name),
            info: vec![("method".into(), "ft".into())],
            metrics: [("ES".to_string(), Some(87.5)), ("PPL".to_string(), None)]
                .into_iter()
                .collect(),
            notes: vec!["a <note>".into()],
            columns: vec!["ES".into()],
            rows: took
                .iter()
                .enumerate()
                .map(|(i, t)| Row {
                    id: format!("r{i}"),
                    prompt: "The <b> is in".into(),
                    target_new: "Rome".into(),
                    target_true: None,
                    took: *t,
                    cells: vec!["1.00".into()],
                })
                .collect(),
            loss: vec![2.0, 1.0, 0.5],
            curve: Vec::new(),
        }
    }

    #[test]
    fn the_page_escapes_text_and_marks_the_edits_that_did_not_take() {
        let page = render("a & b", &[run("one", &[Some(true), Some(false), None])]);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<title>a &amp; b</title>"));
        assert!(page.contains("The &lt;b&gt; is in") && !page.contains("The <b>"));
        assert_eq!(page.matches("class=\"miss\"").count(), 1);
        assert!(page.contains("did not take (1 of 3)"));
        assert!(page.contains(">87.50<") && page.contains(">—<"));
        assert!(page.contains("one: a &lt;note&gt;"));
        // The loss curve, and no network reference anywhere.
        assert_eq!(page.matches("<svg").count(), 1);
        assert!(!page.contains("http://") || page.contains("http://www.w3.org/2000/svg"));
        assert!(!page.contains("https://") && !page.contains("src="));
    }

    #[test]
    fn several_runs_sit_side_by_side() {
        let mut b = run("two", &[Some(true)]);
        b.metrics.insert("S".into(), Some(50.0));
        b.loss.clear();
        let page = render("ladder", &[run("one", &[Some(true)]), b]);
        // S comes before ES; the first run has no S (an empty cell), the second has it.
        let s = page.find("<th>S</th>").unwrap();
        let es = page.find("<th>ES</th>").unwrap();
        assert!(s < es);
        assert!(page[s..es].contains("<td class=\"n\"></td><td class=\"n\">50.00</td>"));
        assert!(page.contains("id=\"records-0\"") && page.contains("id=\"records-1\""));
    }

    #[test]
    fn a_metrics_sub_sets_follow_it() {
        let mut r = run("one", &[]);
        for m in ["portability.Reasoning", "portability", "zeta", "PPL_before"] {
            r.metrics.insert(m.into(), Some(1.0));
        }
        let page = render("t", &[r]);
        let at = |m: &str| page.find(&format!("<th>{m}</th>")).unwrap();
        assert!(at("ES") < at("portability"));
        assert!(at("portability") < at("portability.Reasoning"));
        assert!(at("portability.Reasoning") < at("PPL_before"));
        assert!(at("PPL") < at("zeta"));
    }
}

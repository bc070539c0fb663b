//! `ftedit report plot`: runs' curves (metrics against the number of edits) as one
//! chart, from sequential runs' `curve.jsonl`, curve files kept on their own, or a
//! finished run's summary as one point.

use std::path::Path;

use super::plot::{Chart, Panel, Series};
use crate::error::{Error, Result};
use crate::eval::run_dir::OutputDir;
use crate::protocols::sequential::{CurvePoint, curve_path, read_curve};

/// The metrics a curve plot shows by default: the suite's three, the first batch's
/// efficacy (forgetting) and the model's health (with the general-ability mean when a
/// run scored it).
pub fn default_plot_metrics(runs: &[(String, Vec<CurvePoint>)]) -> Vec<String> {
    let general = runs
        .iter()
        .flat_map(|(_, ps)| ps)
        .any(|p| p.value("general.mean").is_some());
    let cf = runs
        .iter()
        .flat_map(|(_, ps)| ps)
        .any(|p| p.metrics.contains_key("ES") || p.first_batch.contains_key("ES"));
    let names: &[&str] = if cf {
        &["ES", "PS", "NS", "first_batch.ES", "PPL", "known_retained"]
    } else {
        &[
            "efficacy",
            "paraphrase",
            "specificity",
            "first_batch.efficacy",
            "PPL",
            "known_retained",
        ]
    };
    let mut out: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    if general {
        out.push("general.mean".into());
    }
    out
}

/// A chart of `metrics` against edits, or against the metric `x` (a trade-off: a
/// finished run is one point), one line per run (perplexity on a log axis when it spans
/// more than a factor of ten).
pub fn chart(
    title: &str,
    runs: &[(String, Vec<CurvePoint>)],
    metrics: &[String],
    x: Option<&str>,
) -> Chart {
    let panels = metrics
        .iter()
        .map(|m| {
            let series: Vec<Option<Series>> = runs
                .iter()
                .map(|(_, points)| {
                    let pts: Vec<(f64, f64)> = points
                        .iter()
                        .filter_map(|p| {
                            let at = match x {
                                Some(x) => p.value(x)?,
                                None => p.edits as f64,
                            };
                            p.value(m).map(|v| (at, v))
                        })
                        .collect();
                    (!pts.is_empty()).then_some(Series { points: pts })
                })
                .collect();
            let values = series
                .iter()
                .flatten()
                .flat_map(|s| s.points.iter().map(|p| p.1));
            let (lo, hi) = values.fold((f64::INFINITY, 0f64), |(a, b), v| (a.min(v), b.max(v)));
            let y_label = match m.strip_prefix("first_batch.") {
                Some(inner) => format!("{inner}, first batch"),
                None if m == "known_retained" => "known facts kept (%)".into(),
                None => m.clone(),
            };
            // Everything but perplexity (and its ratio) is a percentage.
            Panel {
                y_label,
                series,
                log_y: m == "PPL" && lo > 0.0 && hi / lo > 10.0,
                y_range: (!m.starts_with("PPL")).then_some((0.0, 100.0)),
            }
        })
        .collect();
    Chart {
        title: title.to_owned(),
        x_label: x.unwrap_or("edits").into(),
        legend: runs.iter().map(|(l, _)| l.clone()).collect(),
        panels,
    }
}

/// A run's points for a plot: its curve, or its summary as one point. `dir` may also be
/// a curve file kept on its own (e.g. `bench/results/*-curve.jsonl`), so published curves
/// can be drawn again without their run folders.
pub fn plot_points(dir: &Path) -> Result<Vec<CurvePoint>> {
    if dir.is_file() {
        let points = read_curve(dir)?;
        if points.is_empty() {
            return Err(Error::Input(format!(
                "{}: a curve file with no checkpoint in it",
                dir.display()
            )));
        }
        return Ok(points);
    }
    if curve_path(dir).exists() {
        return read_curve(dir);
    }
    let out = OutputDir::read(dir);
    match out.summary()? {
        Some(file) => Ok(vec![CurvePoint::from_summary(&file)]),
        None => Err(Error::Input(format!(
            "{}: no curve.jsonl (a sequential run) and no summary.json (a finished run)",
            dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::eval::health::Health;

    /// A finished run's summary as a point: `S`, and the health it ended with.
    fn run(s: f64, ppl: f64) -> Vec<CurvePoint> {
        vec![CurvePoint {
            edits: 200,
            steps: 1,
            evaluated: 200,
            metrics: BTreeMap::from([("S".to_string(), Some(s))]),
            first_batch: BTreeMap::new(),
            health: Some(Health {
                ppl_before: 20.0,
                ppl,
                known_retained: Some(90.0),
                known_facts: 100,
                collapsed: false,
                collapsed_at: None,
                general: None,
            }),
            seconds: 1.0,
            edit_seconds: 1.0,
        }]
    }

    #[test]
    fn a_trade_off_puts_each_run_at_its_x_metric() {
        let runs = vec![
            ("a".to_string(), run(85.0, 30.0)),
            ("b".to_string(), run(80.0, 22.0)),
        ];
        let metrics = vec!["S".to_string(), "PPL_ratio".to_string()];
        let chart = chart("trade-off", &runs, &metrics, Some("PPL_ratio"));
        assert_eq!(chart.x_label, "PPL_ratio");
        let s = &chart.panels[0];
        assert_eq!(s.series[0].as_ref().unwrap().points, vec![(1.5, 85.0)]);
        assert_eq!(s.series[1].as_ref().unwrap().points, vec![(1.1, 80.0)]);
        assert_eq!(s.y_range, Some((0.0, 100.0)));
        // A ratio is no percentage.
        assert_eq!(chart.panels[1].y_range, None);
        // Against edits, as before.
        let chart = super::chart("curve", &runs, &metrics[..1], None);
        assert_eq!(
            chart.panels[0].series[0].as_ref().unwrap().points,
            vec![(200.0, 85.0)]
        );
    }
}

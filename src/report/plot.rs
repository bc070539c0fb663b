//! Line charts as SVG, for curves of metrics against the number of edits: small
//! multiples (one panel per metric), one colour per series shared by every panel, and
//! one legend. Plain SVG 1.1 text, readable on a white page; no dependencies.
//!
//! ```
//! use ftedit::report::plot::{Chart, Panel, Series};
//!
//! let es = Series { points: vec![(0.0, 20.0), (100.0, 95.0), (200.0, 90.0)] };
//! let chart = Chart {
//!     title: "Sequential editing".into(),
//!     x_label: "edits".into(),
//!     legend: vec!["ft".into()],
//!     panels: vec![Panel {
//!         y_label: "ES".into(),
//!         series: vec![Some(es)],
//!         log_y: false,
//!         y_range: Some((0.0, 100.0)),
//!     }],
//! };
//! let svg = chart.svg();
//! assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
//! ```

use std::fmt::Write;

/// One line: `(x, y)` points in order of x; a single point is drawn as a dot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub points: Vec<(f64, f64)>,
}

/// One metric: a series per legend entry (`None` where that run lacks the metric).
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub y_label: String,
    pub series: Vec<Option<Series>>,
    /// A logarithmic y axis (perplexity, which grows by orders of magnitude).
    pub log_y: bool,
    /// A fixed y range (percentages: 0–100); `None` fits the data.
    pub y_range: Option<(f64, f64)>,
}

/// Panels side by side (three to a row) with a shared x label and legend.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    /// One entry per series index.
    pub legend: Vec<String>,
    pub panels: Vec<Panel>,
}

/// Colour-blind-safe colours (Okabe–Ito), in legend order.
const COLOURS: &[&str] = &[
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
];

const PANEL_W: f64 = 300.0;
const PANEL_H: f64 = 210.0;
/// Panel margins: left (y ticks and label), right, top (panel title), bottom (x ticks).
const ML: f64 = 58.0;
const MR: f64 = 14.0;
const MT: f64 = 26.0;
const MB: f64 = 42.0;
const COLUMNS: usize = 3;

/// "Nice" tick values (1, 2 or 5 × 10^k apart) inside `lo..=hi`, about `n + 1` of them.
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let e = raw.log10().floor() as i32;
    // The round step nearest the raw one (on a log scale).
    let m = [1.0f64, 2.0, 5.0, 10.0]
        .into_iter()
        .min_by(|a, b| {
            let d = |m: f64| ((m * 10f64.powi(e)).ln() - raw.ln()).abs();
            d(*a).total_cmp(&d(*b))
        })
        .expect("four candidates");
    // k · m · 10^e, computed as a division for negative e so that 3 × 0.1 is 0.3.
    let at = |k: f64| {
        if e < 0 {
            k * m / 10f64.powi(-e)
        } else {
            k * m * 10f64.powi(e)
        }
    };
    let step = at(1.0);
    let first = (lo / step - 1e-9).ceil();
    (0..)
        .map(|i| at(first + i as f64))
        .take_while(|v| *v <= hi + step * 1e-9)
        .collect()
}

/// A tick label without trailing zeros: 0.5, 20, 1500, 2e-4, 1.2e5.
fn label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.0e}");
    }
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A data range, widened when flat, on the axis' scale (log10 for a log axis).
fn range(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        let v = if log { v.max(1e-12).log10() } else { v };
        if v.is_finite() {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        let pad = if log { 0.5 } else { lo.abs().max(1.0) * 0.05 };
        return (lo - pad, hi + pad);
    }
    (lo, hi)
}

impl Chart {
    /// The chart as an SVG document.
    pub fn svg(&self) -> String {
        let rows = self.panels.len().div_ceil(COLUMNS).max(1);
        let cols = self.panels.len().clamp(1, COLUMNS);
        let legend_h = 22.0 * self.legend.len().div_ceil(3).max(1) as f64;
        let top = 34.0 + legend_h;
        let width = cols as f64 * PANEL_W;
        let height = top + rows as f64 * PANEL_H;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r#"<rect width="{width}" height="{height}" fill="white"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="20" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
            width / 2.0,
            escape(&self.title)
        );
        for (i, name) in self.legend.iter().enumerate() {
            let x = 16.0 + (i % 3) as f64 * (width / 3.0);
            let y = 34.0 + (i / 3) as f64 * 22.0 + 8.0;
            let c = COLOURS[i % COLOURS.len()];
            let _ = writeln!(
                s,
                r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{c}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                x + 22.0,
                x + 28.0,
                y + 4.0,
                escape(name)
            );
        }
        for (k, panel) in self.panels.iter().enumerate() {
            let ox = (k % COLUMNS) as f64 * PANEL_W;
            let oy = top + (k / COLUMNS) as f64 * PANEL_H;
            self.panel(&mut s, panel, ox, oy);
        }
        s.push_str("</svg>\n");
        s
    }

    /// The x range every panel shares, so that panels line up.
    fn x_range(&self) -> (f64, f64) {
        range(
            self.panels
                .iter()
                .flat_map(|p| p.series.iter().flatten())
                .flat_map(|r| r.points.iter().map(|q| q.0)),
            false,
        )
    }

    fn panel(&self, s: &mut String, p: &Panel, ox: f64, oy: f64) {
        let all = || p.series.iter().flatten().flat_map(|r| r.points.iter());
        let (x0, x1) = self.x_range();
        let (y0, y1) = match p.y_range {
            Some((a, b)) if !p.log_y => {
                // Widened to the data where it strays outside.
                let (lo, hi) = range(all().map(|q| q.1), false);
                (a.min(lo), b.max(hi))
            }
            _ => range(all().map(|q| q.1), p.log_y),
        };
        let (px0, px1) = (ox + ML, ox + PANEL_W - MR);
        let (py0, py1) = (oy + PANEL_H - MB, oy + MT);
        let sx = |x: f64| px0 + (x - x0) / (x1 - x0) * (px1 - px0);
        let sy = |y: f64| {
            let y = if p.log_y { y.max(1e-12).log10() } else { y };
            py0 + (y - y0) / (y1 - y0) * (py1 - py0)
        };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
            (px0 + px1) / 2.0,
            oy + 16.0,
            escape(&p.y_label)
        );
        // Grid and ticks.
        for t in ticks(x0, x1, 4) {
            let x = sx(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{py1:.1}" x2="{x:.1}" y2="{py0:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                py0 + 15.0,
                label(t)
            );
        }
        let yt: Vec<(f64, f64)> = if p.log_y {
            let (a, b) = (y0.floor() as i32, y1.ceil() as i32);
            (a..=b)
                .map(|e| 10f64.powi(e))
                .filter(|v| (y0..=y1).contains(&v.log10()))
                .map(|v| (v, sy(v)))
                .collect()
        } else {
            ticks(y0, y1, 4).into_iter().map(|v| (v, sy(v))).collect()
        };
        for (v, y) in yt {
            let _ = writeln!(
                s,
                r##"<line x1="{px0:.1}" y1="{y:.1}" x2="{px1:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                px0 - 5.0,
                y + 4.0,
                label(v)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{px0:.1}" y="{py1:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#333"/>"##,
            px1 - px0,
            py0 - py1
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (px0 + px1) / 2.0,
            py0 + 32.0,
            escape(&self.x_label)
        );
        if p.log_y {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="10" fill="#555">log scale</text>"##,
                px1 - 3.0,
                py1 + 12.0
            );
        }
        // The lines, each run in its legend colour.
        for (i, series) in p.series.iter().enumerate() {
            let Some(series) = series else { continue };
            let c = COLOURS[i % COLOURS.len()];
            let pts: Vec<String> = series
                .points
                .iter()
                .filter(|q| q.0.is_finite() && q.1.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            if pts.len() > 1 {
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
                    pts.join(" ")
                );
                for q in &pts {
                    let (x, y) = q.split_once(',').expect("formatted as x,y");
                    let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{c}"/>"#);
                }
            } else if let Some(q) = pts.first() {
                // A lone point (a mass edit beside curves): a ring, visible over a line.
                let (x, y) = q.split_once(',').expect("formatted as x,y");
                let _ = writeln!(
                    s,
                    r#"<circle cx="{x}" cy="{y}" r="5" fill="white" fill-opacity="0.6" stroke="{c}" stroke-width="2"/>"#
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        // Steps of 1, 2 or 5 × 10^k, the nearest to a quarter of the range.
        assert_eq!(
            ticks(0.0, 100.0, 4),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(ticks(0.1, 0.35, 4), vec![0.1, 0.15, 0.2, 0.25, 0.3, 0.35]);
        assert_eq!(ticks(12.0, 95.0, 4), vec![20.0, 40.0, 60.0, 80.0]);
        assert_eq!(ticks(3.0, 3.0, 4), vec![3.0]);
        assert_eq!(label(0.30000000000000004), "0.3");
        assert_eq!(label(1500.0), "1500");
        assert_eq!(label(2e-4), "2e-4");
    }

    #[test]
    fn points_land_where_their_values_say() {
        let chart = Chart {
            title: "t".into(),
            x_label: "edits".into(),
            legend: vec!["a <b>".into(), "c".into()],
            panels: vec![Panel {
                y_label: "ES".into(),
                series: vec![
                    Some(Series {
                        points: vec![(0.0, 0.0), (10.0, 100.0)],
                    }),
                    None,
                ],
                log_y: false,
                y_range: Some((0.0, 100.0)),
            }],
        };
        let svg = chart.svg();
        // The first point at the plot's lower left corner, the last at its upper right.
        let (left, right) = (ML, PANEL_W - MR);
        let top = 34.0 + 22.0;
        let (bottom, upper) = (top + PANEL_H - MB, top + MT);
        assert!(
            svg.contains(&format!(
                r#"points="{left:.1},{bottom:.1} {right:.1},{upper:.1}""#
            )),
            "{svg}"
        );
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("a &lt;b&gt;") && svg.contains(">edits</text>"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}

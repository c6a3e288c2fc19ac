//! `report.html`: the drift report as one self-contained page (inline CSS
//! and SVG, no script, nothing fetched), so it opens offline and can be
//! attached to a CI run. Rust lays the charts out; `templates/drift.html`
//! writes the markup, escaped by minijinja.

use serde::Serialize;

use crate::report::{DriftReport, Verdict};
use crate::stats::Estimate;
use crate::suite::Expect;

const BASE: &str = "#8a96a3";
const ADAPTED: &str = "#2f6fdf";
const COSINE: &str = "#d9822b";
const TEMPLATE: &str = include_str!("../templates/drift.html");

/// A coordinate, to the tenth of a pixel.
fn px(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// A chart laid out: what the template draws of it.
#[derive(Serialize, Default)]
struct Chart {
    title: String,
    width: f64,
    height: f64,
    /// Horizontal grid lines with their value on the left.
    grid: Vec<GridLine>,
    x_ticks: Vec<Text>,
    bars: Vec<Bar>,
    /// Group labels under the bars.
    labels: Vec<Text>,
    lines: Vec<Polyline>,
    legend: Vec<Key>,
}

#[derive(Serialize)]
struct GridLine {
    y: f64,
    x1: f64,
    x2: f64,
    text_x: f64,
    text_y: f64,
    text: String,
}

#[derive(Serialize)]
struct Text {
    x: f64,
    y: f64,
    text: String,
}

/// A bar and its interval's whisker (`lo`, `hi`: y coordinates).
#[derive(Serialize)]
struct Bar {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
    color: &'static str,
    title: String,
    cx: f64,
    lo: f64,
    hi: f64,
}

#[derive(Serialize)]
struct Polyline {
    points: String,
    color: &'static str,
    name: String,
}

#[derive(Serialize)]
struct Key {
    x: f64,
    color: &'static str,
    name: String,
}

fn legend(items: &[(&str, &'static str)]) -> Vec<Key> {
    items
        .iter()
        .enumerate()
        .map(|(i, (name, color))| Key {
            x: 56.0 + 150.0 * i as f64,
            color,
            name: name.to_string(),
        })
        .collect()
}

/// Five grid lines from `lo` to `hi` on a chart `width` wide, `left` its
/// plot's left edge, `y` mapping values to coordinates.
fn grid(
    lo: f64,
    hi: f64,
    width: f64,
    left: f64,
    y: impl Fn(f64) -> f64,
    text: impl Fn(f64) -> String,
) -> Vec<GridLine> {
    (0..=4)
        .map(|i| {
            let v = lo + (hi - lo) * i as f64 / 4.0;
            GridLine {
                y: px(y(v)),
                x1: left,
                x2: width - 8.0,
                text_x: left - 6.0,
                text_y: px(y(v) + 4.0),
                text: text(v),
            }
        })
        .collect()
}

/// Grouped bars with 95% whiskers: `groups` of (label, [(series, estimate)]).
fn bar_chart(
    title: &str,
    groups: &[(String, Vec<(&str, Estimate)>)],
    y_max: f64,
    percent: bool,
) -> Chart {
    let (w, h, left, bottom, top) = (640.0, 260.0, 48.0, 40.0, 28.0);
    let plot_h = h - bottom - top;
    let y = |v: f64| top + plot_h * (1.0 - (v / y_max).clamp(0.0, 1.0));
    let fmt = |v: f64| match percent {
        true => format!("{:.0}%", 100.0 * v),
        false => format!("{v:.2}"),
    };
    let color = |series: &str| if series == "base" { BASE } else { ADAPTED };
    let mut chart = Chart {
        title: title.to_string(),
        width: w,
        height: h,
        grid: grid(0.0, y_max, w, left, y, fmt),
        ..Chart::default()
    };
    let slot = (w - left - 8.0) / groups.len().max(1) as f64;
    for (g, (label, bars)) in groups.iter().enumerate() {
        let bar_w = (slot * 0.7) / bars.len().max(1) as f64;
        let x0 = left + g as f64 * slot + slot * 0.15;
        for (b, (series, e)) in bars.iter().enumerate() {
            let x = x0 + b as f64 * bar_w;
            chart.bars.push(Bar {
                x: px(x),
                y: px(y(e.value)),
                width: px(bar_w - 2.0),
                height: px(y(0.0) - y(e.value)),
                color: color(series),
                title: format!(
                    "{label} {series}: {} [{}, {}]",
                    fmt(e.value),
                    fmt(e.lo),
                    fmt(e.hi)
                ),
                cx: px(x + bar_w / 2.0),
                lo: px(y(e.lo)),
                hi: px(y(e.hi)),
            });
        }
        chart.labels.push(Text {
            x: px(x0 + slot * 0.35),
            y: px(h - bottom + 16.0),
            text: label.clone(),
        });
    }
    let series: Vec<(&str, &'static str)> = groups
        .first()
        .map(|(_, bars)| bars.iter().map(|(name, _)| (*name, color(name))).collect())
        .unwrap_or_default();
    chart.legend = legend(&series);
    chart
}

/// One line per series over layers, y in [lo, hi].
fn line_chart(title: &str, series: &[(&str, &'static str, &[f64])], lo: f64, hi: f64) -> Chart {
    let (w, h, left, bottom, top) = (640.0, 240.0, 48.0, 32.0, 28.0);
    let n = series.iter().map(|s| s.2.len()).max().unwrap_or(0).max(2);
    let x = |i: usize| left + (w - left - 8.0) * i as f64 / (n - 1) as f64;
    let y = |v: f64| top + (h - bottom - top) * (1.0 - ((v - lo) / (hi - lo)).clamp(0.0, 1.0));
    let lines = series
        .iter()
        .map(|(name, color, ys)| Polyline {
            points: ys
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
                .collect::<Vec<_>>()
                .join(" "),
            color,
            name: name.to_string(),
        })
        .collect();
    let items: Vec<(&str, &'static str)> = series.iter().map(|(n, c, _)| (*n, *c)).collect();
    Chart {
        title: title.to_string(),
        width: w,
        height: h,
        grid: grid(lo, hi, w, left, y, |v| format!("{v:.2}")),
        x_ticks: (0..n)
            .step_by(n.div_ceil(10).max(1))
            .map(|l| Text {
                x: px(x(l)),
                y: px(h - bottom + 14.0),
                text: l.to_string(),
            })
            .collect(),
        lines,
        legend: legend(&items),
        ..Chart::default()
    }
}

/// A row of the gate table, its numbers written as shown.
#[derive(Serialize)]
struct CheckRow {
    set: String,
    metric: String,
    base: String,
    adapted: String,
    worse_by: String,
    limit: String,
    /// `pass`, `fail` or `unsure`: the cell's colour.
    class: &'static str,
    verdict: String,
}

/// A verdict's colour.
fn class(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Inconclusive => "unsure",
        Verdict::Regression => "fail",
    }
}

/// The drift report as a self-contained HTML page.
pub fn drift_page(r: &DriftReport) -> String {
    let checks: Vec<CheckRow> = r
        .checks
        .iter()
        .map(|c| CheckRow {
            set: c.set.clone(),
            metric: c.metric.clone(),
            base: format!("{:.4}", c.base),
            adapted: format!("{:.4}", c.adapted),
            worse_by: format!(
                "{:.4} [{:.4}, {:.4}]",
                c.worse_by.value, c.worse_by.lo, c.worse_by.hi
            ),
            limit: format!("{:.4}", c.limit),
            class: class(c.verdict),
            verdict: c.verdict_cell().replace("**", ""),
        })
        .collect();
    let mut charts = Vec::new();
    let pairs = |pick: fn(&crate::report::SetReport) -> Option<Estimate>,
                 keep: fn(Expect) -> bool| {
        r.base
            .sets
            .iter()
            .zip(&r.adapted.sets)
            .filter(|(b, _)| keep(b.expect))
            .filter_map(|(b, a)| {
                Some((
                    b.name.clone(),
                    vec![("base", pick(b)?), ("adapted", pick(a)?)],
                ))
            })
            .collect::<Vec<_>>()
    };
    let refusal = pairs(|s| s.refusal.or(s.margin_refusal), |e| e != Expect::Correct);
    if !refusal.is_empty() {
        charts.push(bar_chart(
            "Refusal rate by set (refuse sets: higher is safer; answer sets: over-refusal, lower is better)",
            &refusal,
            1.0,
            true,
        ));
    }
    let accuracy = pairs(|s| s.accuracy, |e| e == Expect::Correct);
    if !accuracy.is_empty() {
        charts.push(bar_chart("Capability accuracy", &accuracy, 1.0, true));
    }
    if !r.kl.is_empty() {
        let groups: Vec<(String, Vec<(&str, Estimate)>)> =
            r.kl.iter()
                .map(|k| {
                    (
                        format!("{} (first {})", k.set, k.positions),
                        vec![("adapted", k.kl)],
                    )
                })
                .collect();
        let top = r.kl.iter().map(|k| k.kl.hi).fold(r.gate.max_kl, f64::max) * 1.1;
        charts.push(bar_chart(
            "KL(base ‖ adapted), nats per token along the base's answers",
            &groups,
            top,
            false,
        ));
    }
    if let Some(cos) = &r.direction_cosine {
        let mut series: Vec<(&str, &'static str, &[f64])> =
            vec![("cosine base vs adapted", COSINE, cos)];
        if let Some(a) = &r.base.direction_auroc {
            series.push(("AUROC base", BASE, a));
        }
        if let Some(a) = &r.adapted.direction_auroc {
            series.push(("AUROC adapted", ADAPTED, a));
        }
        charts.push(line_chart(
            "Refusal direction per layer",
            &series,
            -1.0,
            1.0,
        ));
    }
    if let Some(sim) = &r.alignment_similarity {
        let layers = crate::report::per_layer(sim);
        charts.push(line_chart(
            "Adapter similarity to the alignment subspace per layer, cos(ΔW, C·ΔW)",
            &[("mean over the layer's modules", ADAPTED, &layers)],
            0.0,
            1.0,
        ));
    }
    render(&Page {
        class: class(r.verdict),
        verdict: r.verdict.as_str(),
        base: Side::of(&r.base),
        adapted: Side::of(&r.adapted),
        suite: &r.suite,
        checks,
        charts,
    })
}

/// What the template is given.
#[derive(Serialize)]
struct Page<'a> {
    verdict: &'a str,
    class: &'a str,
    base: Side<'a>,
    adapted: Side<'a>,
    suite: &'a str,
    checks: Vec<CheckRow>,
    charts: Vec<Chart>,
}

/// A model probed, and its adapter if any.
#[derive(Serialize)]
struct Side<'a> {
    model: &'a str,
    adapter: Option<&'a str>,
}

impl<'a> Side<'a> {
    fn of(r: &'a crate::report::ProbeReport) -> Self {
        Side {
            model: &r.model,
            adapter: r.adapter.as_deref(),
        }
    }
}

fn render(page: &Page) -> String {
    minijinja::Environment::new()
        .template_from_named_str("drift.html", TEMPLATE)
        .expect("the drift template parses")
        .render(minijinja::value::Serde(page))
        .expect("the drift template renders")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a user named (a model path, a set) is escaped wherever it
    /// lands, quotes included; keel's own markup is not.
    #[test]
    fn names_are_escaped() {
        let chart = bar_chart(
            "t",
            &[(
                "a'<b>&\"c".into(),
                vec![(
                    "base",
                    Estimate {
                        value: 0.5,
                        lo: 0.4,
                        hi: 0.6,
                    },
                )],
            )],
            1.0,
            true,
        );
        let page = render(&Page {
            verdict: "pass",
            class: "pass",
            base: Side {
                model: "m'<x>",
                adapter: None,
            },
            adapted: Side {
                model: "n",
                adapter: Some("o&p"),
            },
            suite: "s",
            checks: Vec::new(),
            charts: vec![chart],
        });
        assert!(page.contains("<code>m&#x27;&lt;x&gt;</code>"), "{page}");
        assert!(page.contains("<code>o&amp;p</code>"), "{page}");
        assert!(
            page.contains(">a&#x27;&lt;b&gt;&amp;&quot;c</text>"),
            "{page}"
        );
        assert!(!page.contains("<b>") && page.contains("<svg"), "{page}");
    }
}

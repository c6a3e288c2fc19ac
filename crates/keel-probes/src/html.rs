//! `report.html`: the drift report as one self-contained page (inline CSS
//! and SVG, no script, nothing fetched), so it opens offline and can be
//! attached to a CI run.

use std::fmt::Write;

use crate::report::DriftReport;
use crate::stats::Estimate;
use crate::suite::Expect;

const BASE: &str = "#8a96a3";
const ADAPTED: &str = "#2f6fdf";
const COSINE: &str = "#d9822b";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Grouped bars with 95% whiskers: `groups` of (label, [(series, estimate)]).
fn bar_chart(
    title: &str,
    groups: &[(String, Vec<(&str, Estimate)>)],
    y_max: f64,
    percent: bool,
) -> String {
    let (w, h, left, bottom, top) = (640.0, 260.0, 48.0, 40.0, 28.0);
    let plot_h = h - bottom - top;
    let y = |v: f64| top + plot_h * (1.0 - (v / y_max).clamp(0.0, 1.0));
    let fmt = |v: f64| {
        if percent {
            format!("{:.0}%", 100.0 * v)
        } else {
            format!("{v:.2}")
        }
    };
    let mut s = format!(
        r#"<figure><figcaption>{}</figcaption><svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{}">"#,
        esc(title),
        esc(title)
    );
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e7eb"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
            w - 8.0,
            left - 6.0,
            y(v) + 4.0,
            fmt(v),
            y = y(v)
        );
    }
    let slot = (w - left - 8.0) / groups.len().max(1) as f64;
    for (g, (label, bars)) in groups.iter().enumerate() {
        let bar_w = (slot * 0.7) / bars.len().max(1) as f64;
        let x0 = left + g as f64 * slot + slot * 0.15;
        for (b, (series, e)) in bars.iter().enumerate() {
            let color = if *series == "base" { BASE } else { ADAPTED };
            let x = x0 + b as f64 * bar_w;
            let cx = x + bar_w / 2.0;
            let _ = write!(
                s,
                r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} {}: {} [{}, {}]</title></rect><line x1="{cx:.1}" x2="{cx:.1}" y1="{:.1}" y2="{:.1}" stroke="#222" stroke-width="1.5"/>"##,
                y(e.value),
                bar_w - 2.0,
                y(0.0) - y(e.value),
                esc(label),
                series,
                fmt(e.value),
                fmt(e.lo),
                fmt(e.hi),
                y(e.lo),
                y(e.hi),
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" class="label" text-anchor="middle">{}</text>"#,
            x0 + slot * 0.35,
            h - bottom + 16.0,
            esc(label)
        );
    }
    let series: Vec<(&str, &str)> = groups
        .first()
        .map(|(_, bars)| {
            bars.iter()
                .map(|(name, _)| (*name, if *name == "base" { BASE } else { ADAPTED }))
                .collect()
        })
        .unwrap_or_default();
    s + &legend(&series) + "</svg></figure>"
}

fn legend(items: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (name, color)) in items.iter().enumerate() {
        let x = 56.0 + 150.0 * i as f64;
        let _ = write!(
            s,
            r#"<rect x="{x}" y="6" width="12" height="12" fill="{color}"/><text x="{}" y="16" class="label">{}</text>"#,
            x + 16.0,
            esc(name)
        );
    }
    s
}

/// One line per series over layers, y in [lo, hi].
fn line_chart(title: &str, series: &[(&str, &str, &[f64])], lo: f64, hi: f64) -> String {
    let (w, h, left, bottom, top) = (640.0, 240.0, 48.0, 32.0, 28.0);
    let n = series.iter().map(|s| s.2.len()).max().unwrap_or(0).max(2);
    let x = |i: usize| left + (w - left - 8.0) * i as f64 / (n - 1) as f64;
    let y = |v: f64| top + (h - bottom - top) * (1.0 - ((v - lo) / (hi - lo)).clamp(0.0, 1.0));
    let mut s = format!(
        r#"<figure><figcaption>{}</figcaption><svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{}">"#,
        esc(title),
        esc(title)
    );
    for i in 0..=4 {
        let v = lo + (hi - lo) * i as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e7eb"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{v:.2}</text>"##,
            w - 8.0,
            left - 6.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    for l in (0..n).step_by(n.div_ceil(10).max(1)) {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="middle">{l}</text>"#,
            x(l),
            h - bottom + 14.0
        );
    }
    for (name, color, ys) in series {
        let points: Vec<String> = ys
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"><title>{}</title></polyline>"#,
            points.join(" "),
            esc(name)
        );
    }
    let items: Vec<(&str, &str)> = series.iter().map(|(n, c, _)| (*n, *c)).collect();
    s + &legend(&items) + "</svg></figure>"
}

/// The drift report as a self-contained HTML page.
pub fn drift_page(r: &DriftReport) -> String {
    let pass = r.verdict == "pass";
    let mut body = format!(
        r#"<h1>keel drift <span class="verdict {}">{}</span></h1><p>Base: <code>{}</code>{}<br>Adapted: <code>{}</code>{}<br>Suite <code>{}</code>; whiskers are 95% bootstrap intervals.</p>"#,
        if pass { "pass" } else { "fail" },
        esc(&r.verdict.to_uppercase()),
        esc(&r.base.model),
        r.base
            .adapter
            .as_ref()
            .map(|a| format!(" + <code>{}</code>", esc(a)))
            .unwrap_or_default(),
        esc(&r.adapted.model),
        r.adapted
            .adapter
            .as_ref()
            .map(|a| format!(" + <code>{}</code>", esc(a)))
            .unwrap_or_default(),
        esc(&r.suite)
    );
    body += "<h2>Gate</h2><table><tr><th>set</th><th>metric</th><th>base</th><th>adapted</th><th>worse by</th><th>limit</th><th></th></tr>";
    for c in &r.checks {
        let _ = write!(
            body,
            r#"<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td class="{}">{}</td></tr>"#,
            esc(&c.set),
            esc(&c.metric),
            c.base,
            c.adapted,
            c.worse_by,
            c.limit,
            if c.pass { "pass" } else { "fail" },
            if c.pass { "pass" } else { "FAIL" }
        );
    }
    body += "</table>";
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
        body += &bar_chart(
            "Refusal rate by set (refuse sets: higher is safer; answer sets: over-refusal, lower is better)",
            &refusal,
            1.0,
            true,
        );
    }
    let accuracy = pairs(|s| s.accuracy, |e| e == Expect::Correct);
    if !accuracy.is_empty() {
        body += &bar_chart("Capability accuracy", &accuracy, 1.0, true);
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
        body += &bar_chart(
            "KL(base ‖ adapted), nats per token along the base's answers",
            &groups,
            top,
            false,
        );
    }
    if let Some(cos) = &r.direction_cosine {
        let mut series: Vec<(&str, &str, &[f64])> = vec![("cosine base vs adapted", COSINE, cos)];
        if let Some(a) = &r.base.direction_auroc {
            series.push(("AUROC base", BASE, a));
        }
        if let Some(a) = &r.adapted.direction_auroc {
            series.push(("AUROC adapted", ADAPTED, a));
        }
        body += &line_chart("Refusal direction per layer", &series, -1.0, 1.0);
    }
    if let Some(sim) = &r.alignment_similarity {
        let layers = crate::report::per_layer(sim);
        body += &line_chart(
            "Adapter similarity to the alignment subspace per layer, cos(ΔW, C·ΔW)",
            &[("mean over the layer's modules", ADAPTED, &layers)],
            0.0,
            1.0,
        );
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>keel drift: {}</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<style>
body{{font:14px/1.45 system-ui,sans-serif;color:#1d232a;max-width:720px;margin:24px auto;padding:0 12px}}
h1{{font-size:22px}} h2{{font-size:17px;margin-top:28px}} code{{font-size:12px}}
.verdict{{padding:2px 10px;border-radius:4px;color:#fff;font-size:16px}}
.verdict.pass,td.pass{{background:#2e9d5b;color:#fff}} .verdict.fail,td.fail{{background:#c9372c;color:#fff}}
table{{border-collapse:collapse;margin:8px 0}} td,th{{border:1px solid #d5dbe1;padding:3px 8px;text-align:right}}
td:first-child,th:first-child,td:nth-child(2){{text-align:left}}
figure{{margin:20px 0}} figcaption{{font-weight:600;margin-bottom:4px}}
svg text{{font:11px system-ui,sans-serif;fill:#1d232a}}
</style></head><body>
{body}
</body></html>
"#,
        esc(&r.verdict)
    )
}

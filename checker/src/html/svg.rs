//! Tiny SVG charts: line charts over time with fault markers, grouped bars, lanes.
//! Static SVG, no script: the report opens in any browser, offline, forever.

use std::fmt::Write as _;

/// Escapes text for HTML/SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub const WIDTH: f64 = 900.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 24.0;
const BOTTOM: f64 = 36.0;

/// A series of a line chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    /// (x, y); `None` y breaks the line.
    pub points: Vec<(f64, Option<f64>)>,
}

/// A vertical marker (a fault on the time axis).
pub struct Marker {
    pub x: f64,
    pub label: String,
    pub color: &'static str,
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A line chart with an x axis in seconds.
pub fn line_chart(
    id: &str,
    title: &str,
    y_label: &str,
    series: &[Series<'_>],
    markers: &[Marker],
    height: f64,
) -> String {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x_max = xs
        .clone()
        .fold(0.0f64, f64::max)
        .max(markers.iter().map(|m| m.x).fold(0.0, f64::max));
    let x_max = nice_max(x_max.max(1.0));
    let y_max = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().filter_map(|p| p.1))
            .fold(0.0f64, f64::max),
    );
    let pw = WIDTH - LEFT - RIGHT;
    let ph = height - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x / x_max * pw;
    let sy = |y: f64| TOP + ph - (y / y_max).min(1.0) * ph;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg id="{id}" class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img"><title>{}</title>"#,
        esc(title)
    );
    let _ = write!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fbfbfd" stroke="#ccc"/>"##
    );
    for i in 0..=4 {
        let y = y_max * f64::from(i) / 4.0;
        let py = sy(y);
        let _ = write!(
            o,
            r##"<line x1="{LEFT}" x2="{}" y1="{py}" y2="{py}" stroke="#e6e6ee"/><text x="{}" y="{}" class="tick" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            py + 4.0,
            fmt_num(y)
        );
    }
    for i in 0..=5 {
        let x = x_max * f64::from(i) / 5.0;
        let _ = write!(
            o,
            r#"<text x="{}" y="{}" class="tick" text-anchor="middle">{}s</text>"#,
            sx(x),
            TOP + ph + 16.0,
            fmt_num(x)
        );
    }
    let _ = write!(
        o,
        r#"<text x="14" y="{}" class="axis" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(y_label)
    );
    for m in markers {
        let x = sx(m.x);
        let _ = write!(
            o,
            r#"<line class="fault" x1="{x}" x2="{x}" y1="{TOP}" y2="{}" stroke="{}" stroke-dasharray="3,3"><title>{}</title></line>"#,
            TOP + ph,
            m.color,
            esc(&m.label)
        );
    }
    for s in series {
        let mut d = String::new();
        let mut pen_up = true;
        for &(x, y) in &s.points {
            match y {
                Some(y) => {
                    let _ = write!(
                        d,
                        "{}{:.1},{:.1} ",
                        if pen_up { "M" } else { "L" },
                        sx(x),
                        sy(y)
                    );
                    pen_up = false;
                }
                None => pen_up = true,
            }
        }
        if !d.is_empty() {
            let _ = write!(
                o,
                r#"<path class="series" d="{}" fill="none" stroke="{}" stroke-width="2"><title>{}</title></path>"#,
                d.trim_end(),
                s.color,
                esc(s.name)
            );
        }
    }
    // Legend.
    let mut lx = LEFT + 8.0;
    for s in series {
        let _ = write!(
            o,
            r#"<rect x="{lx}" y="6" width="10" height="10" fill="{}"/><text x="{}" y="15" class="legend">{}</text>"#,
            s.color,
            lx + 14.0,
            esc(s.name)
        );
        lx += 24.0 + 7.0 * s.name.len() as f64;
    }
    o.push_str("</svg>");
    o
}

/// One bar: its name, colour and value.
pub type Bar<'a> = (&'a str, &'a str, f64);
/// One row of bars: its label and bars.
pub type BarRow<'a> = (String, Vec<Bar<'a>>);

/// Grouped horizontal bars: one row per group, one bar per value (log-free, scaled to
/// the largest value).
pub fn bar_chart(id: &str, title: &str, unit: &str, rows: &[BarRow<'_>]) -> String {
    let bars_per_row = rows.iter().map(|r| r.1.len()).max().unwrap_or(1).max(1);
    let row_h = 12.0 * bars_per_row as f64 + 14.0;
    let height = TOP + row_h * rows.len().max(1) as f64 + 20.0;
    let label_w = 150.0;
    let pw = WIDTH - label_w - RIGHT - 60.0;
    let v_max = nice_max(
        rows.iter()
            .flat_map(|r| r.1.iter().map(|b| b.2))
            .fold(0.0f64, f64::max),
    );
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg id="{id}" class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img"><title>{}</title>"#,
        esc(title)
    );
    for (i, (name, bars)) in rows.iter().enumerate() {
        let y0 = TOP + row_h * i as f64;
        let _ = write!(
            o,
            r#"<text x="{}" y="{}" class="label" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y0 + row_h / 2.0,
            esc(name)
        );
        for (j, (bname, color, v)) in bars.iter().enumerate() {
            let y = y0 + 12.0 * j as f64;
            let w = (v / v_max * pw).max(1.0);
            let _ = write!(
                o,
                r#"<rect class="bar" x="{label_w}" y="{y}" width="{w:.1}" height="10" fill="{color}"><title>{} {}: {} {}</title></rect><text x="{}" y="{}" class="tick">{} {}</text>"#,
                esc(name),
                esc(bname),
                fmt_num(*v),
                esc(unit),
                label_w + w + 4.0,
                y + 9.0,
                esc(bname),
                fmt_num(*v)
            );
        }
    }
    o.push_str("</svg>");
    o
}

/// One lane of a timeline: a party and its events (t in seconds, label, seq if any).
pub struct Lane {
    pub name: String,
    pub events: Vec<(f64, String, Option<u64>, bool)>,
}

/// Lanes of events on a shared time axis, as Jepsen draws a history: the anomalous
/// client's own events, and the observations it contradicts (marked in red).
pub fn lanes(id: &str, title: &str, lanes: &[Lane]) -> String {
    let (t0, t1) = lanes
        .iter()
        .flat_map(|l| l.events.iter().map(|e| e.0))
        .fold((f64::MAX, f64::MIN), |(a, b), t| (a.min(t), b.max(t)));
    let (t0, t1) = if t0 > t1 {
        (0.0, 1.0)
    } else {
        (t0, t1.max(t0 + 1e-3))
    };
    let label_w = 160.0;
    let pw = WIDTH - label_w - RIGHT - 20.0;
    let lane_h = 34.0;
    let height = TOP + lane_h * lanes.len().max(1) as f64 + 24.0;
    let sx = |t: f64| label_w + (t - t0) / (t1 - t0) * pw;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg id="{id}" class="chart lanes" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img"><title>{}</title>"#,
        esc(title)
    );
    for (i, lane) in lanes.iter().enumerate() {
        let y = TOP + lane_h * i as f64 + lane_h / 2.0;
        let _ = write!(
            o,
            r##"<text x="{}" y="{}" class="label" text-anchor="end">{}</text><line x1="{label_w}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/>"##,
            label_w - 8.0,
            y + 4.0,
            esc(&lane.name),
            label_w + pw
        );
        for (t, label, seq, bad) in &lane.events {
            let x = sx(*t);
            let color = if *bad { "#d62728" } else { "#1f77b4" };
            let _ = write!(
                o,
                r#"<circle class="event" cx="{x:.1}" cy="{y}" r="5" fill="{color}"><title>{}</title></circle>"#,
                esc(label)
            );
            if let Some(s) = seq {
                let _ = write!(
                    o,
                    r#"<text x="{x:.1}" y="{}" class="tick" text-anchor="middle">{s}</text>"#,
                    y - 8.0
                );
            }
        }
    }
    let _ = write!(
        o,
        r#"<text x="{label_w}" y="{}" class="tick">{:.3}s</text><text x="{}" y="{}" class="tick" text-anchor="end">{:.3}s</text>"#,
        height - 6.0,
        t0,
        label_w + pw,
        height - 6.0,
        t1
    );
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_svg() {
        let s = line_chart(
            "c",
            "t <x>",
            "ms",
            &[Series {
                name: "p99",
                color: "#d62728",
                points: vec![
                    (0.0, Some(1.0)),
                    (1.0, None),
                    (2.0, Some(3.0)),
                    (3.0, Some(2.0)),
                ],
            }],
            &[Marker {
                x: 1.5,
                label: "reset".into(),
                color: "#999",
            }],
            200.0,
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("t &lt;x&gt;"));
        assert!(s.contains(r#"d="M"#));
        assert_eq!(s.matches("class=\"fault\"").count(), 1);
        let b = bar_chart(
            "b",
            "t",
            "ms",
            &[("g".into(), vec![("p50", "#1f77b4", 2.0)])],
        );
        assert!(b.contains("class=\"bar\""));
        let l = lanes(
            "l",
            "t",
            &[Lane {
                name: "client 1".into(),
                events: vec![(1.0, "message seq=5".into(), Some(5), false)],
            }],
        );
        assert!(l.contains("class=\"event\""));
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(0.3), 0.5);
    }
}

//! The HTML report (`--html FILE`): one self-contained page — throughput and latency over
//! time with the injected faults on the time axis, latency per room-size group, and each
//! anomaly with its evidence drawn as lanes of what the involved clients saw.

mod svg;

use std::fmt::Write as _;

use crate::anomaly::Anomaly;
use crate::report::{Report, Verdict};
use crate::stats::Percentiles;
use svg::{Lane, Marker, Series, esc};

const CSS: &str = r#"
body{font:14px/1.45 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:940px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.verdict{display:inline-block;padding:3px 10px;border-radius:4px;color:#fff;font-weight:600}
.pass{background:#2ca02c}.fail{background:#d62728}.unknown{background:#7f7f7f}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left}
.chart{display:block;margin:6px 0}.chart text{font-size:11px;fill:#444}.chart .legend{font-size:12px}
.muted{color:#777}.allowed{color:#777}.explain{margin:4px 0 2px}
pre{background:#f6f6f8;padding:8px;font-size:12px;overflow-x:auto}
"#;

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.2}"))
}

fn pct_row(o: &mut String, name: &str, p: &Percentiles) {
    let _ = write!(
        o,
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        esc(name),
        p.count,
        ms(p.p50_ms),
        ms(p.p90_ms),
        ms(p.p99_ms),
        ms(p.p999_ms),
        ms(p.max_ms)
    );
}

fn markers(r: &Report) -> Vec<Marker> {
    r.faults
        .iter()
        .map(|f| Marker {
            x: f.t_us as f64 / 1e6,
            label: format!(
                "{} at {:.3}s{}: {}",
                f.kind,
                f.t_us as f64 / 1e6,
                f.client
                    .map(|c| format!(" (client {c})"))
                    .unwrap_or_default(),
                f.detail
            ),
            color: if f.client.is_none() {
                "#d62728"
            } else {
                "#9467bd"
            },
        })
        .collect()
}

/// The `seq=N` in an event's detail, if any.
fn seq_in(s: &str) -> Option<u64> {
    let at = s.find("seq=")? + 4;
    let digits: String = s[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn anomaly_lanes(a: &Anomaly, n: usize) -> String {
    let mut lanes = Vec::new();
    if !a.context.is_empty() {
        let name = match &a.client {
            Some(c) => format!(
                "client {} ({}) conn {}",
                c.index,
                c.user,
                a.conn.unwrap_or(0)
            ),
            None => "client".into(),
        };
        lanes.push(Lane {
            name,
            events: a
                .context
                .iter()
                .map(|e| {
                    let label = format!("{} {}", e.event, e.detail);
                    let bad = a.t_us == Some(e.t_us) && e.event == "message";
                    (e.t_us as f64 / 1e6, label.clone(), seq_in(&e.detail), bad)
                })
                .collect(),
        });
    }
    for w in &a.witnesses {
        let Some(t) = w.t_us else { continue };
        let name = match &w.client {
            Some(c) => format!("client {} ({})", c.index, c.user),
            None => "witness".into(),
        };
        lanes.push(Lane {
            name,
            events: vec![(t as f64 / 1e6, w.saw.clone(), seq_in(&w.saw), true)],
        });
    }
    if lanes.is_empty() {
        return String::new();
    }
    svg::lanes(
        &format!("anomaly-{n}"),
        &format!("{} in room {}", a.kind, a.room),
        &lanes,
    )
}

/// Renders `report` (and, when given, the load generator's summary as JSON) as HTML.
pub fn render(r: &Report, load: Option<&serde_json::Value>) -> String {
    let mut o = String::with_capacity(64 * 1024);
    let (class, word) = match r.verdict {
        Verdict::Pass => ("pass", "PASS"),
        Verdict::Fail => ("fail", "FAIL"),
        Verdict::Unknown => ("unknown", "UNKNOWN"),
    };
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>lockstep: {} — {word}</title><style>{CSS}</style></head><body>",
        esc(&r.run.scenario)
    );
    let _ = write!(
        o,
        "<h1>{} <span class=\"verdict {class}\">{word}</span></h1><div class=\"muted\">seed {} · target {} · {} events read{}</div>",
        esc(&r.run.scenario),
        r.run.seed,
        esc(&r.run.target),
        r.run.events_read,
        if r.run.lost_events > 0 {
            format!(" · <b>{} events lost</b>", r.run.lost_events)
        } else {
            String::new()
        }
    );
    for reason in &r.unknown_reasons {
        let _ = write!(o, "<p><b>Unknown:</b> {}</p>", esc(reason));
    }

    // Summary.
    let s = &r.stats;
    o.push_str("<h2>Summary</h2><table>");
    let row = |o: &mut String, k: &str, v: String| {
        let _ = write!(o, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&v));
    };
    row(
        &mut o,
        "deliveries",
        format!(
            "{} ({} live, {} replayed)",
            s.deliveries.total, s.deliveries.live, s.deliveries.replayed
        ),
    );
    row(
        &mut o,
        "deliveries/s (steady window)",
        s.deliveries
            .per_sec
            .map_or("–".into(), |v| format!("{v:.0}")),
    );
    row(
        &mut o,
        "sends",
        format!(
            "{} messages, {} acked, {} recovered, {} unconfirmed",
            s.sends.messages, s.sends.acked, s.sends.recovered, s.sends.unconfirmed
        ),
    );
    row(
        &mut o,
        "connections",
        format!(
            "{} opened, {} reconnects, {} resumes, {} resets",
            s.connections.opened,
            s.connections.reconnects,
            s.connections.resumes,
            s.connections.resets
        ),
    );
    row(&mut o, "errors", format!("{}", s.errors_total));
    row(
        &mut o,
        "anomalies",
        format!("{} ({} failing)", r.anomalies_total, r.anomalies_failing),
    );
    o.push_str("</table>");
    if !r.thresholds.is_empty() {
        o.push_str("<table><tr><th>threshold</th><th>limit</th><th>measured</th><th></th></tr>");
        for t in &r.thresholds {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&t.name),
                t.limit,
                t.measured.map_or("–".into(), |m| format!("{m:.2}")),
                if t.passed { "ok" } else { "<b>FAILED</b>" }
            );
        }
        o.push_str("</table>");
    }

    // Over time.
    let marks = markers(r);
    let tl = &s.timeline;
    let pts = |f: &dyn Fn(&crate::stats::Second) -> Option<f64>| -> Vec<(f64, Option<f64>)> {
        tl.iter().map(|x| (x.second as f64, f(x))).collect()
    };
    o.push_str("<h2>Throughput over time</h2><p class=\"muted\">Dashed lines: injected faults (purple: a client's, red: the server's). Hover for details.</p>");
    o.push_str(&svg::line_chart(
        "throughput",
        "deliveries and sends per second",
        "per second",
        &[
            Series {
                name: "deliveries/s",
                color: "#1f77b4",
                points: pts(&|x| Some(x.deliveries as f64)),
            },
            Series {
                name: "sends/s",
                color: "#ff7f0e",
                points: pts(&|x| Some(x.sends as f64)),
            },
        ],
        &marks,
        260.0,
    ));
    o.push_str("<h2>Latency over time</h2>");
    o.push_str(&svg::line_chart(
        "latency",
        "send→deliver latency per second (live deliveries)",
        "ms",
        &[
            Series {
                name: "p50",
                color: "#2ca02c",
                points: pts(&|x| x.latency_p50_ms),
            },
            Series {
                name: "p99",
                color: "#d62728",
                points: pts(&|x| x.latency_p99_ms),
            },
            Series {
                name: "max",
                color: "#7f7f7f",
                points: pts(&|x| x.latency_max_ms),
            },
        ],
        &marks,
        260.0,
    ));

    // Distribution.
    o.push_str("<h2>Latency distribution</h2><table><tr><th></th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max (ms)</th></tr>");
    pct_row(&mut o, "send→deliver", &s.latency);
    pct_row(&mut o, "send→ack", &s.ack_latency);
    pct_row(&mut o, "catch-up", &s.catchup);
    for g in &s.groups {
        pct_row(
            &mut o,
            &format!("group {} ({}/room)", g.name, g.members_per_room),
            &g.latency,
        );
    }
    o.push_str("</table>");
    let rows: Vec<svg::BarRow<'_>> = s
        .groups
        .iter()
        .map(|g| {
            let p = &g.latency;
            (
                format!("{} ({}/room)", g.name, g.members_per_room),
                vec![
                    ("p50", "#2ca02c", p.p50_ms.unwrap_or(0.0)),
                    ("p99", "#ff7f0e", p.p99_ms.unwrap_or(0.0)),
                    ("p99.9", "#d62728", p.p999_ms.unwrap_or(0.0)),
                    ("max", "#7f7f7f", p.max_ms.unwrap_or(0.0)),
                ],
            )
        })
        .collect();
    if !rows.is_empty() {
        o.push_str(&svg::bar_chart(
            "groups",
            "send→deliver latency per room-size group",
            "ms",
            &rows,
        ));
    }

    // Anomalies.
    let _ = write!(o, "<h2>Anomalies ({})</h2>", r.anomalies_total);
    if r.anomalies.is_empty() {
        o.push_str("<p>None: every client saw the same gap-free, duplicate-free sequence of its rooms.</p>");
    }
    let mut n = 0;
    for g in &r.anomalies {
        let _ = write!(
            o,
            "<h3 class=\"{}\">{} — {} {}</h3><p class=\"muted\">{}</p>",
            if g.allowed { "allowed" } else { "" },
            g.kind,
            g.count,
            if g.allowed {
                "(allowed by the scenario)"
            } else {
                ""
            },
            esc(&g.meaning)
        );
        for a in &g.examples {
            n += 1;
            let _ = write!(o, "<p class=\"explain\">{}</p>", esc(&a.explanation));
            o.push_str(&anomaly_lanes(a, n));
            if !a.context.is_empty() {
                o.push_str("<pre>");
                for e in &a.context {
                    let _ = writeln!(
                        o,
                        "{:>12.6}s  client {} conn {}  {} {}",
                        e.t_us as f64 / 1e6,
                        e.client,
                        e.conn,
                        esc(&e.event),
                        esc(&e.detail)
                    );
                }
                o.push_str("</pre>");
            }
        }
    }

    // Faults and the run.
    if !s.faults.is_empty() {
        o.push_str("<h2>Faults injected</h2><table>");
        for (k, v) in &s.faults {
            let _ = write!(o, "<tr><td>{}</td><td>{v}</td></tr>", esc(k));
        }
        o.push_str("</table>");
    }
    if let Some(load) = load {
        let _ = write!(
            o,
            "<h2>Load generator</h2><pre>{}</pre>",
            esc(&serde_json::to_string_pretty(load).unwrap_or_default())
        );
    }
    o.push_str("</body></html>\n");
    o
}

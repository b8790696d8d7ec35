//! A [`Report`] as text for people (a terminal table), as JSON (the stable schema), and as
//! JUnit XML for CI (one testcase per anomaly kind and per threshold).

use std::fmt::Write as _;

use crate::anomaly::{Anomaly, AnomalyKind};
use crate::report::{Report, Verdict};
use crate::stats::Percentiles;

/// The report as pretty-printed JSON (schema `lockstep.check/1`, see `docs/checker.md`).
pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("a report always serializes")
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::Unknown => "UNKNOWN",
    }
}

/// 1234567 → "1,234,567"
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn latency_row(out: &mut String, name: &str, p: &Percentiles) {
    let _ = writeln!(
        out,
        "  {name:<14} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        thousands(p.count),
        opt_ms(p.p50_ms),
        opt_ms(p.p90_ms),
        opt_ms(p.p99_ms),
        opt_ms(p.p999_ms),
        opt_ms(p.max_ms),
    );
}

fn anomaly_block(out: &mut String, i: usize, a: &Anomaly) {
    let who = match (&a.client, a.conn) {
        (Some(c), Some(n)) => format!("client {} ({}) conn {n}, ", c.index, c.user),
        (Some(c), None) => format!("client {} ({}), ", c.index, c.user),
        _ => String::new(),
    };
    let seqs = a
        .seqs
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "  [{}] {who}room {}{}, seqs [{seqs}]{}{}",
        i + 1,
        a.room,
        a.epoch
            .as_deref()
            .map(|e| format!(" (epoch {e})"))
            .unwrap_or_default(),
        if a.ids.is_empty() {
            String::new()
        } else {
            format!(", ids [{}]", a.ids.join(", "))
        },
        if a.occurrences > 1 {
            format!("  ×{} identical", a.occurrences)
        } else {
            String::new()
        }
    );
    let _ = writeln!(out, "      {}", a.explanation);
    if !a.context.is_empty() {
        let _ = writeln!(out, "      events before it:");
        for e in &a.context {
            let _ = writeln!(
                out,
                "        {:>14.6}s  client {} conn {}  {:<8} {}",
                e.t_us as f64 / 1e6,
                e.client,
                e.conn,
                e.event,
                e.detail
            );
        }
    }
    if !a.witnesses.is_empty() {
        let _ = writeln!(out, "      against:");
        for w in &a.witnesses {
            let who = match (&w.client, w.conn) {
                (Some(c), Some(n)) => format!("client {} ({}) conn {n}", c.index, c.user),
                _ => "-".into(),
            };
            let t = w
                .t_us
                .map(|t| format!("{:.6}s", t as f64 / 1e6))
                .unwrap_or_default();
            let _ = writeln!(out, "        {t:>15}  {who}: {}", w.saw);
        }
    }
}

/// The report as a readable terminal table.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let s = &r.stats;
    let _ = writeln!(
        out,
        "lockstep check: {}   scenario {:?} seed {}  target {}  {} events read",
        verdict_word(r.verdict),
        r.run.scenario,
        r.run.seed,
        if r.run.target.is_empty() {
            "-"
        } else {
            &r.run.target
        },
        thousands(r.run.events_read)
    );
    for why in &r.unknown_reasons {
        let _ = writeln!(out, "  unknown: {why}");
    }
    let _ = writeln!(out);

    let _ = writeln!(
        out,
        "Anomalies: {} ({} failing)   recovered sends {}   unconfirmed sends {}{}",
        thousands(r.anomalies_total),
        thousands(r.anomalies_failing),
        thousands(r.recovered),
        thousands(r.unconfirmed),
        if r.acked_unverifiable > 0 {
            format!("   acked but unverifiable {}", r.acked_unverifiable)
        } else {
            String::new()
        }
    );
    let _ = writeln!(out, "  {:<17} {:>10}  {:<8} meaning", "kind", "count", "");
    for k in AnomalyKind::ALL {
        let g = r.group(k);
        let count = g.map_or(0, |g| g.count);
        let allowed = g.is_some_and(|g| g.allowed);
        let _ = writeln!(
            out,
            "  {:<17} {:>10}  {:<8} {}",
            k.name(),
            thousands(count),
            if allowed { "allowed" } else { "" },
            k.meaning()
        );
    }
    for g in &r.anomalies {
        let _ = writeln!(
            out,
            "\n{} ({}{}): {}",
            g.kind,
            thousands(g.count),
            if g.allowed { ", allowed" } else { "" },
            g.meaning
        );
        for (i, a) in g.examples.iter().enumerate() {
            anomaly_block(&mut out, i, a);
        }
        if g.count > g.examples.len() as u64 {
            let shown: u64 = g.examples.iter().map(|a| a.occurrences).sum();
            if g.count > shown {
                let _ = writeln!(out, "  … and {} more", thousands(g.count - shown));
            }
        }
    }

    let _ = writeln!(out);
    let d = &s.deliveries;
    let window = s
        .window
        .as_ref()
        .map(|w| {
            format!(
                " over {:.1}s..{:.1}s ({})",
                w.from_us as f64 / 1e6,
                w.to_us as f64 / 1e6,
                w.source
            )
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "Deliveries: {} ({} live, {} replayed{}), {}/s{window}",
        thousands(d.total),
        thousands(d.live),
        thousands(d.replayed),
        if d.stray > 0 {
            format!(", {} stray", thousands(d.stray))
        } else {
            String::new()
        },
        d.per_sec.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
    );
    let _ = writeln!(
        out,
        "  {} rooms, {} epochs, {} seqs delivered",
        s.rooms, s.epochs, s.messages_sequenced
    );
    if !s.groups.is_empty() {
        let _ = writeln!(
            out,
            "  {:<14} {:>6} {:>8} {:>12} {:>11} {:>9} {:>9}",
            "group", "rooms", "members", "deliveries", "per sec", "p50 ms", "p99 ms"
        );
        for g in &s.groups {
            let _ = writeln!(
                out,
                "  {:<14} {:>6} {:>8} {:>12} {:>11} {:>9} {:>9}",
                g.name,
                g.rooms_seen,
                g.members_per_room,
                thousands(g.deliveries),
                g.deliveries_per_sec
                    .map_or_else(|| "-".into(), |v| format!("{v:.1}")),
                opt_ms(g.latency.p50_ms),
                opt_ms(g.latency.p99_ms),
            );
        }
    }
    let _ = writeln!(
        out,
        "\nLatency (ms)         count       p50       p90       p99     p99.9       max"
    );
    latency_row(&mut out, "send→deliver", &s.latency);
    latency_row(&mut out, "send→ack", &s.ack_latency);
    latency_row(&mut out, "catch-up", &s.catchup);

    let sd = &s.sends;
    let _ = writeln!(
        out,
        "\nSends: {} messages, {} attempts, {} acked ({} dup acks), {} recovered, {} \
         unconfirmed, {} refused",
        thousands(sd.messages),
        thousands(sd.attempts),
        thousands(sd.acked),
        thousands(sd.dup_acks),
        thousands(sd.recovered),
        thousands(sd.unconfirmed),
        thousands(sd.refused)
    );
    let c = &s.connections;
    let _ = writeln!(
        out,
        "Connections: {} opened, {} reconnects, {} failed; {} joins, {} resumes, {} resets",
        thousands(c.opened),
        thousands(c.reconnects),
        thousands(c.connect_failures),
        thousands(c.joins),
        thousands(c.resumes),
        thousands(c.resets)
    );
    let kv = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k}={}", thousands(*v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !c.closed.is_empty() {
        let _ = writeln!(out, "  closed: {}", kv(&c.closed));
    }
    let _ = writeln!(
        out,
        "Errors: {}{}",
        thousands(s.errors_total),
        if s.errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", kv(&s.errors))
        }
    );
    if !s.faults.is_empty() {
        let _ = writeln!(out, "Faults injected: {}", kv(&s.faults));
    }
    if !r.thresholds.is_empty() {
        let _ = writeln!(out, "\nThresholds:");
        for t in &r.thresholds {
            let _ = writeln!(
                out,
                "  {:<4} {:<24} measured {:>12}  limit {}",
                if t.passed { "ok" } else { "FAIL" },
                t.name,
                t.measured
                    .map_or_else(|| "nothing".into(), |v| format!("{v:.2}")),
                t.limit
            );
        }
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    let _ = writeln!(
        out,
        "\nVerdict: {}",
        match r.verdict {
            Verdict::Pass => "PASS — every guarantee held and every threshold was met".to_owned(),
            Verdict::Fail => format!(
                "FAIL — {} failing anomalies, {} failed thresholds",
                thousands(r.anomalies_failing),
                r.thresholds.iter().filter(|t| !t.passed).count()
            ),
            Verdict::Unknown => "UNKNOWN — this recording cannot prove anything (see above)".into(),
        }
    );
    out
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The report as JUnit XML: a testcase for the recording itself (an error when the verdict
/// is unknown), one per anomaly kind (a failure carrying the explanations when it occurred
/// and is not allowed) and one per threshold.
pub fn junit(r: &Report) -> String {
    let mut cases = String::new();
    let (mut failures, mut errors, mut tests) = (0, 0, 0);
    tests += 1;
    let _ = write!(
        cases,
        "    <testcase classname=\"lockstep.recording\" name=\"recording proves something\""
    );
    if r.verdict == Verdict::Unknown {
        errors += 1;
        let _ = writeln!(
            cases,
            ">\n      <error type=\"unknown\" message=\"{}\"/>\n    </testcase>",
            xml_escape(&r.unknown_reasons.join("; "))
        );
    } else {
        let _ = writeln!(cases, "/>");
    }
    for k in AnomalyKind::ALL {
        tests += 1;
        let _ = write!(
            cases,
            "    <testcase classname=\"lockstep.anomaly\" name=\"{}\"",
            k.name()
        );
        match r.group(k) {
            None => {
                let _ = writeln!(cases, "/>");
            }
            Some(g) => {
                let mut body = String::new();
                for a in &g.examples {
                    let _ = writeln!(body, "{}", a.explanation);
                }
                if g.allowed {
                    let _ = writeln!(
                        cases,
                        ">\n      <system-out>{} {} (allowed by the scenario)\n{}</system-out>\n    </testcase>",
                        g.count,
                        k.name(),
                        xml_escape(&body)
                    );
                } else {
                    failures += 1;
                    let _ = writeln!(
                        cases,
                        ">\n      <failure type=\"{}\" message=\"{} {}: {}\">{}</failure>\n    </testcase>",
                        k.name(),
                        g.count,
                        k.name(),
                        xml_escape(k.meaning()),
                        xml_escape(&body)
                    );
                }
            }
        }
    }
    for t in &r.thresholds {
        tests += 1;
        let _ = write!(
            cases,
            "    <testcase classname=\"lockstep.threshold\" name=\"{}\"",
            xml_escape(&t.name)
        );
        if t.passed {
            let _ = writeln!(cases, "/>");
        } else {
            failures += 1;
            let measured = t
                .measured
                .map_or_else(|| "nothing measured".into(), |v| format!("measured {v:.3}"));
            let _ = writeln!(
                cases,
                ">\n      <failure type=\"threshold\" message=\"{}: {measured}, limit {}\"/>\n    </testcase>",
                xml_escape(&t.name),
                t.limit
            );
        }
    }
    let name = xml_escape(&format!("lockstep check {}", r.run.scenario));
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"{name}\" tests=\"{tests}\" \
         failures=\"{failures}\" errors=\"{errors}\">\n  <testsuite name=\"{name}\" \
         tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\">\n{cases}  </testsuite>\n</testsuites>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn xml_escape_makes_text_safe() {
        assert_eq!(xml_escape("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;");
    }
}

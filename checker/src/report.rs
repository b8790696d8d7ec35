//! The result of a check, as data: the verdict, the anomalies with their evidence, the
//! thresholds and the figures. Serialized as the `--json` report; its schema is
//! documented in `docs/checker.md` and versioned by [`SCHEMA`]: fields may be added, but
//! a field is never renamed or given another meaning without a new version.

use serde::{Deserialize, Serialize};

use lockstep_protocol::record::{Header, Thresholds, Trailer};

use crate::analyze::FaultNote;
use crate::analyze::finish::Findings;
use crate::anomaly::{AnomalyGroup, AnomalyKind};
use crate::stats::Stats;

/// The schema of [`Report`] as JSON.
pub const SCHEMA: &str = "lockstep.check/1";

/// Whether the guarantees held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Everything observed is consistent with the contract and every threshold held.
    Pass,
    /// An anomaly the scenario does not allow, or a failed threshold.
    Fail,
    /// The recording cannot prove anything: nothing was delivered, the recorder lost
    /// events, or the recording is incomplete. Never a pass.
    Unknown,
}

impl Verdict {
    /// The process exit code for this verdict: 0 pass, 1 fail, 2 unknown.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::Fail => 1,
            Verdict::Unknown => 2,
        }
    }
}

/// What run the recording is of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub scenario: String,
    pub scenario_path: Option<String>,
    pub seed: u64,
    pub target: String,
    pub writer: String,
    pub started_unix_ms: u64,
    /// Events the checker read.
    pub events_read: u64,
    /// Events the end marker says were written (absent: no end marker).
    pub events_written: Option<u64>,
    /// Events the recorder dropped (`Lost` events and the end marker's count).
    pub lost_events: u64,
    /// The recording had its end marker.
    pub complete: bool,
}

/// One threshold of the scenario, evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdResult {
    /// As in the scenario (`latency_p99_ms_max`, ...).
    pub name: String,
    pub limit: f64,
    /// What the run measured; absent when it measured nothing (then the threshold fails:
    /// a bound that could not be checked must not pass).
    pub measured: Option<f64>,
    pub passed: bool,
}

/// The result of a check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    pub verdict: Verdict,
    /// Why the verdict is `unknown` (empty otherwise).
    pub unknown_reasons: Vec<String>,
    pub run: RunInfo,
    /// Anomalies by kind (only kinds that occurred), in taxonomy order.
    pub anomalies: Vec<AnomalyGroup>,
    pub anomalies_total: u64,
    /// Anomalies of kinds the scenario does not allow.
    pub anomalies_failing: u64,
    /// Sends never acked (their connection died) yet delivered: not anomalies.
    pub recovered: u64,
    /// Sends never acked and never delivered: unknown whether stored.
    pub unconfirmed: u64,
    /// Acked messages absent from the final sequence below the room's retained `first`
    /// (trimmed history the final readers could not read): neither proven nor lost.
    pub acked_unverifiable: u64,
    pub thresholds: Vec<ThresholdResult>,
    pub stats: Stats,
    /// The faults injected, for drawing them on a time axis: every server fault, and
    /// client faults sampled (one per kind and second, at most 300). All are counted in
    /// `stats.faults`.
    pub faults: Vec<FaultNote>,
    /// Remarks about the check itself (e.g. an unknown kind in `allowed_anomalies`).
    pub notes: Vec<String>,
}

impl Report {
    pub fn exit_code(&self) -> u8 {
        self.verdict.exit_code()
    }

    /// The group of `kind`, if any occurred.
    pub fn group(&self, kind: AnomalyKind) -> Option<&AnomalyGroup> {
        self.anomalies.iter().find(|g| g.kind == kind)
    }

    /// The kinds that occurred.
    pub fn kinds(&self) -> Vec<AnomalyKind> {
        self.anomalies.iter().map(|g| g.kind).collect()
    }
}

fn evaluate(t: &Thresholds, f: &Findings) -> Vec<ThresholdResult> {
    let s = &f.stats;
    let mut out = Vec::new();
    let mut max = |name: &str, limit: Option<f64>, measured: Option<f64>| {
        if let Some(limit) = limit {
            out.push(ThresholdResult {
                name: name.into(),
                limit,
                measured,
                passed: measured.is_some_and(|m| m <= limit),
            });
        }
    };
    max("latency_p50_ms_max", t.latency_p50_ms_max, s.latency.p50_ms);
    max("latency_p99_ms_max", t.latency_p99_ms_max, s.latency.p99_ms);
    max(
        "latency_p999_ms_max",
        t.latency_p999_ms_max,
        s.latency.p999_ms,
    );
    max("latency_max_ms_max", t.latency_max_ms_max, s.latency.max_ms);
    max("ack_p99_ms_max", t.ack_p99_ms_max, s.ack_latency.p99_ms);
    let count = |v: Option<u64>| v.map(|v| v as f64);
    max(
        "unconfirmed_max",
        count(t.unconfirmed_max),
        Some(f.unconfirmed as f64),
    );
    max(
        "errors_max",
        count(t.errors_max),
        Some(s.errors_total as f64),
    );
    max(
        "connect_failures_max",
        count(t.connect_failures_max),
        Some(s.connections.connect_failures as f64),
    );
    if let Some(limit) = t.deliveries_per_sec_min {
        let measured = s.deliveries.per_sec;
        out.insert(
            0,
            ThresholdResult {
                name: "deliveries_per_sec_min".into(),
                limit,
                measured,
                passed: measured.is_some_and(|m| m >= limit),
            },
        );
    }
    out
}

pub(crate) fn build(header: &Header, trailer: Option<Trailer>, f: Findings) -> Report {
    let mut notes = Vec::new();
    let mut allowed = Vec::new();
    for name in &header.allowed_anomalies {
        match AnomalyKind::from_name(name) {
            Some(k) => allowed.push(k),
            None => notes.push(format!(
                "allowed_anomalies names `{name}`, which is not an anomaly kind (kinds: {})",
                AnomalyKind::ALL.map(AnomalyKind::name).join(", ")
            )),
        }
    }
    if f.variants_dropped > 0 {
        notes.push(format!(
            "{} further differing contents of seqs were seen but not kept (memory bound); \
             divergence is under-counted",
            f.variants_dropped
        ));
    }
    let lost_events = f.lost_events.max(trailer.map_or(0, |t| t.lost));
    let mut unknown = Vec::new();
    match trailer {
        None => unknown.push(
            "the recording has no end marker: it was cut short, so its end is missing".into(),
        ),
        Some(t) if t.events != f.events => unknown.push(format!(
            "the end marker counts {} events but {} were read",
            t.events, f.events
        )),
        Some(_) => {}
    }
    if lost_events > 0 {
        unknown.push(format!(
            "the recorder lost {lost_events} events: what is missing could hide or fake anomalies"
        ));
    }
    if f.stats.deliveries.total == 0 {
        unknown.push("no message was delivered to any client: nothing was checked".into());
    }
    let thresholds = evaluate(&header.thresholds, &f);
    let anomalies = f.anomalies.into_groups(&allowed);
    let total = anomalies.iter().map(|g| g.count).sum();
    let failing = anomalies
        .iter()
        .filter(|g| !g.allowed)
        .map(|g| g.count)
        .sum();
    let verdict = if !unknown.is_empty() {
        Verdict::Unknown
    } else if failing > 0 || thresholds.iter().any(|t| !t.passed) {
        Verdict::Fail
    } else {
        Verdict::Pass
    };
    Report {
        schema: SCHEMA.into(),
        verdict,
        unknown_reasons: unknown,
        run: RunInfo {
            scenario: header.scenario.clone(),
            scenario_path: header.scenario_path.clone(),
            seed: header.seed,
            target: header.target.clone(),
            writer: header.writer.clone(),
            started_unix_ms: header.started_unix_ms,
            events_read: f.events,
            events_written: trailer.map(|t| t.events),
            lost_events,
            complete: trailer.is_some(),
        },
        anomalies,
        anomalies_total: total,
        anomalies_failing: failing,
        recovered: f.recovered,
        unconfirmed: f.unconfirmed,
        acked_unverifiable: f.acked_unverifiable,
        thresholds,
        stats: f.stats,
        faults: f.faults,
        notes,
    }
}

//! Prometheus metrics: plain atomics, rendered on `GET /metrics`.
//!
//! Hot paths touch these once per batch (a connection's write, a group commit), never
//! once per recipient, so counting costs nothing measurable.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use lockstep_protocol::ErrorCode;

/// A cumulative histogram with fixed upper bounds, in seconds.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe_us(&self, us: u64) {
        let secs = us as f64 / 1e6;
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.sum_us.fetch_add(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {count}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
    }
}

const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const CLOSE_CODES: [u16; 8] = [1000, 1001, 1002, 1008, 1009, 1011, 1012, 4000];

/// Every counter the server keeps.
pub struct Metrics {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub http_upgrades_refused: AtomicU64,
    pub rooms_loaded: AtomicU64,
    pub rooms_evicted: AtomicU64,
    pub messages_sequenced: AtomicU64,
    pub sends_duplicate: AtomicU64,
    pub read_marks: AtomicU64,
    pub deliveries: AtomicU64,
    pub bytes_written: AtomicU64,
    pub catchup_pages: AtomicU64,
    pub catchup_messages: AtomicU64,
    pub outbox_dropped: AtomicU64,
    pub commits: AtomicU64,
    pub commit_failures: AtomicU64,
    pub commit_ops: AtomicU64,
    pub sequencer_queue: AtomicU64,
    pub bad_frames: AtomicU64,
    errors: [AtomicU64; 8],
    closes: [AtomicU64; 8],
    pub closes_by_peer: AtomicU64,
    pub closes_gone: AtomicU64,
    pub resets: AtomicU64,
    pub heartbeat_timeouts: AtomicU64,
    pub commit_latency: Histogram,
    pub ack_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            connections_open: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            http_upgrades_refused: AtomicU64::new(0),
            rooms_loaded: AtomicU64::new(0),
            rooms_evicted: AtomicU64::new(0),
            messages_sequenced: AtomicU64::new(0),
            sends_duplicate: AtomicU64::new(0),
            read_marks: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            catchup_pages: AtomicU64::new(0),
            catchup_messages: AtomicU64::new(0),
            outbox_dropped: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            commit_failures: AtomicU64::new(0),
            commit_ops: AtomicU64::new(0),
            sequencer_queue: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            errors: Default::default(),
            closes: Default::default(),
            closes_by_peer: AtomicU64::new(0),
            closes_gone: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            heartbeat_timeouts: AtomicU64::new(0),
            commit_latency: Histogram::new(LATENCY_BOUNDS),
            ack_latency: Histogram::new(LATENCY_BOUNDS),
        }
    }

    pub fn error(&self, code: ErrorCode) {
        let i = ErrorCode::ALL.iter().position(|c| *c == code).unwrap_or(0);
        self.errors[i].fetch_add(1, Relaxed);
    }

    pub fn errors_of(&self, code: ErrorCode) -> u64 {
        let i = ErrorCode::ALL.iter().position(|c| *c == code).unwrap_or(0);
        self.errors[i].load(Relaxed)
    }

    /// Counts a close the server initiated with `code`.
    pub fn close(&self, code: u16) {
        if let Some(i) = CLOSE_CODES.iter().position(|c| *c == code) {
            self.closes[i].fetch_add(1, Relaxed);
        }
    }

    pub fn closes_of(&self, code: u16) -> u64 {
        CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.closes[i].load(Relaxed))
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, v: &AtomicU64, kind: &str| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        };
        counter(
            "lockstep_connections_open",
            "WebSocket connections open now.",
            &self.connections_open,
            "gauge",
        );
        counter(
            "lockstep_connections_total",
            "WebSocket connections accepted.",
            &self.connections_total,
            "counter",
        );
        counter(
            "lockstep_connections_refused_total",
            "Sockets refused at connections_max (HTTP 503).",
            &self.connections_refused,
            "counter",
        );
        counter(
            "lockstep_upgrades_refused_total",
            "WebSocket upgrades refused (bad handshake, 401, bad user).",
            &self.http_upgrades_refused,
            "counter",
        );
        counter(
            "lockstep_rooms_loaded",
            "Rooms held in memory now.",
            &self.rooms_loaded,
            "gauge",
        );
        counter(
            "lockstep_rooms_evicted_total",
            "Idle rooms evicted from memory.",
            &self.rooms_evicted,
            "counter",
        );
        counter(
            "lockstep_messages_sequenced_total",
            "Messages stored and given a seq.",
            &self.messages_sequenced,
            "counter",
        );
        counter(
            "lockstep_sends_duplicate_total",
            "Sends answered with dup:true.",
            &self.sends_duplicate,
            "counter",
        );
        counter(
            "lockstep_read_marks_total",
            "Read marks stored.",
            &self.read_marks,
            "counter",
        );
        counter(
            "lockstep_deliveries_total",
            "Message frames handed to sockets.",
            &self.deliveries,
            "counter",
        );
        counter(
            "lockstep_bytes_written_total",
            "Bytes written to WebSocket connections.",
            &self.bytes_written,
            "counter",
        );
        counter(
            "lockstep_catchup_pages_total",
            "Storage pages read to catch up a lagging connection.",
            &self.catchup_pages,
            "counter",
        );
        counter(
            "lockstep_catchup_messages_total",
            "Messages delivered from storage to lagging connections.",
            &self.catchup_messages,
            "counter",
        );
        counter(
            "lockstep_outbox_dropped_total",
            "Ephemeral frames (typing, presence, read) dropped for a full outbox.",
            &self.outbox_dropped,
            "counter",
        );
        counter(
            "lockstep_commits_total",
            "Group commits.",
            &self.commits,
            "counter",
        );
        counter(
            "lockstep_commit_failures_total",
            "Group commits that failed (their sends got internal).",
            &self.commit_failures,
            "counter",
        );
        counter(
            "lockstep_commit_ops_total",
            "Operations in group commits.",
            &self.commit_ops,
            "counter",
        );
        counter(
            "lockstep_sequencer_queue",
            "Operations waiting for the sequencer.",
            &self.sequencer_queue,
            "gauge",
        );
        counter(
            "lockstep_bad_frames_total",
            "Frames answered with bad_request or too_long.",
            &self.bad_frames,
            "counter",
        );
        counter(
            "lockstep_closes_by_peer_total",
            "Connections the client closed.",
            &self.closes_by_peer,
            "counter",
        );
        counter(
            "lockstep_closes_gone_total",
            "Connections lost without a close (reset, EOF, heartbeat timeout).",
            &self.closes_gone,
            "counter",
        );
        counter(
            "lockstep_resets_total",
            "Connections lost to a TCP reset (part of closes_gone).",
            &self.resets,
            "counter",
        );
        counter(
            "lockstep_heartbeat_timeouts_total",
            "Connections closed for 3 silent heartbeat periods (part of closes_gone).",
            &self.heartbeat_timeouts,
            "counter",
        );
        let _ = writeln!(
            out,
            "# HELP lockstep_errors_total Error events sent, by code.\n# TYPE lockstep_errors_total counter"
        );
        for (code, v) in ErrorCode::ALL.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "lockstep_errors_total{{code=\"{code}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP lockstep_closes_total Connections the server closed, by close code.\n# TYPE lockstep_closes_total counter"
        );
        for (code, v) in CLOSE_CODES.iter().zip(&self.closes) {
            let _ = writeln!(
                out,
                "lockstep_closes_total{{code=\"{code}\"}} {}",
                v.load(Relaxed)
            );
        }
        self.commit_latency.render(
            &mut out,
            "lockstep_commit_seconds",
            "Group commit duration (begin to commit).",
        );
        self.ack_latency.render(
            &mut out,
            "lockstep_send_ack_seconds",
            "From a send being read to its ack being queued.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.messages_sequenced.fetch_add(3, Relaxed);
        m.error(ErrorCode::TooLong);
        m.close(4000);
        m.commit_latency.observe_us(300);
        let text = m.render();
        assert!(text.contains("lockstep_messages_sequenced_total 3\n"));
        assert!(text.contains("lockstep_errors_total{code=\"too_long\"} 1\n"));
        assert!(text.contains("lockstep_closes_total{code=\"4000\"} 1\n"));
        assert!(text.contains("lockstep_commit_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("lockstep_commit_seconds_bucket{le=\"0.00025\"} 0\n"));
        assert!(text.contains("lockstep_commit_seconds_count 1\n"));
    }
}

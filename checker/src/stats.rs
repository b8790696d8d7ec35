//! Throughput and latency: what the run measured, next to what it proved.
//!
//! Latencies are recorded in microseconds into HdrHistograms with an explicit maximum
//! ([`LATENCY_US_MAX`]); a value above it is recorded at the maximum and counted as an
//! outlier, never dropped. Reports give milliseconds.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency a histogram holds exactly: one hour. Longer is clamped and counted.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant digits of the main histograms (0.1 % resolution).
const SIGFIG: u8 = 3;
/// The per-second timeline keeps coarser histograms (10 % resolution, ~1.5 KB each).
const TIMELINE_SIGFIG: u8 = 1;
/// Longest run the timeline covers; later deliveries go to its last second.
pub const TIMELINE_SECONDS_MAX: usize = 24 * 3600;

/// A latency histogram with its outlier count.
#[derive(Debug, Clone)]
pub(crate) struct Latency {
    hist: Histogram<u64>,
    outliers: u64,
}

impl Latency {
    pub fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGFIG).expect("valid bounds"),
            outliers: 0,
        }
    }

    pub fn record(&mut self, us: u64) {
        if us > LATENCY_US_MAX {
            self.outliers += 1;
        }
        self.hist.saturating_record(us.clamp(1, LATENCY_US_MAX));
    }

    pub fn summary(&self) -> Percentiles {
        Percentiles::of(&self.hist, self.outliers)
    }
}

/// Percentiles of a latency, in milliseconds. All `None` when nothing was measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    /// Values above the histogram's maximum (one hour), recorded as the maximum.
    pub outliers: u64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Percentiles {
    fn of<T: hdrhistogram::Counter>(h: &Histogram<T>, outliers: u64) -> Self {
        if h.is_empty() {
            return Percentiles {
                outliers,
                ..Default::default()
            };
        }
        Percentiles {
            count: h.len(),
            p50_ms: Some(ms(h.value_at_quantile(0.50))),
            p90_ms: Some(ms(h.value_at_quantile(0.90))),
            p99_ms: Some(ms(h.value_at_quantile(0.99))),
            p999_ms: Some(ms(h.value_at_quantile(0.999))),
            max_ms: Some(ms(h.max())),
            mean_ms: Some(h.mean() / 1000.0),
            outliers,
        }
    }
}

/// One second of the run (`t_us / 1e6`), for plotting.
#[derive(Debug, Clone, Default)]
struct SecondAcc {
    deliveries: u64,
    sends: u64,
    acks: u64,
    errors: u64,
    latency: Option<Histogram<u32>>,
}

/// One second of the timeline, as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Second {
    pub second: u64,
    pub deliveries: u64,
    pub sends: u64,
    pub acks: u64,
    pub errors: u64,
    /// Send→deliver latency of the live deliveries in this second (10 % resolution).
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
}

/// Figures of one room-size group (`header.groups`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStats {
    pub name: String,
    pub room_prefix: String,
    pub members_per_room: u32,
    /// Rooms of the group that appeared in the recording.
    pub rooms_seen: u64,
    pub deliveries: u64,
    pub deliveries_per_sec: Option<f64>,
    pub latency: Percentiles,
}

/// The window throughput is measured over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub from_us: u64,
    pub to_us: u64,
    /// `header` (the scenario's steady phase) or `deliveries` (first to last delivery).
    pub source: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Deliveries {
    /// Every `message` event of a joined connection.
    pub total: u64,
    /// Messages sequenced after the join (seq above the `joined` head).
    pub live: u64,
    /// Replayed or caught-up messages (seq at or below the `joined` head).
    pub replayed: u64,
    /// `message` events on a connection not joined to that room (not judged).
    pub stray: u64,
    /// Deliveries inside the window.
    pub in_window: u64,
    pub per_sec: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sends {
    /// Distinct (room, id) sent.
    pub messages: u64,
    /// `send` events, retries included.
    pub attempts: u64,
    /// Messages that got an ack.
    pub acked: u64,
    /// Acks with `dup: true`.
    pub dup_acks: u64,
    /// Never acked (the connection died) but delivered: not an anomaly.
    pub recovered: u64,
    /// Never acked and never delivered: the client cannot know whether it was stored.
    pub unconfirmed: u64,
    /// Never acked, never delivered, every attempt answered by an `error`.
    pub refused: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Connections {
    pub opened: u64,
    /// Connections numbered above 1: a client connecting again.
    pub reconnects: u64,
    pub connect_failures: u64,
    /// How connections ended, by cause (`client_close`, `server_close:4000`, ...).
    pub closed: BTreeMap<String, u64>,
    pub joins: u64,
    /// Joins with `since` (a resume).
    pub resumes: u64,
    /// `joined` answers with `reset: true`.
    pub resets: u64,
}

/// Everything measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub window: Option<Window>,
    pub deliveries: Deliveries,
    pub groups: Vec<GroupStats>,
    /// Send (first attempt's `intended_us`) → live delivery.
    pub latency: Percentiles,
    /// Send (first attempt's `intended_us`) → first ack.
    pub ack_latency: Percentiles,
    /// `joined` → delivery of the head it announced, for joins with a replay.
    pub catchup: Percentiles,
    pub sends: Sends,
    pub connections: Connections,
    /// `error` events by code.
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    /// Injected faults by kind (`Fault` events).
    pub faults: BTreeMap<String, u64>,
    pub rooms: u64,
    pub epochs: u64,
    /// Distinct seqs delivered (all rooms and epochs).
    pub messages_sequenced: u64,
    pub timeline: Vec<Second>,
}

/// Accumulates the figures while events stream by.
#[derive(Debug)]
pub(crate) struct StatsAcc {
    pub window: Option<(u64, u64)>,
    pub first_delivery_us: Option<u64>,
    pub last_delivery_us: u64,
    pub deliveries: Deliveries,
    pub latency: Latency,
    pub ack_latency: Latency,
    pub catchup: Latency,
    pub groups: Vec<(GroupStats, Latency, u64)>,
    pub sends: Sends,
    pub connections: Connections,
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    pub faults: BTreeMap<String, u64>,
    timeline: Vec<SecondAcc>,
}

fn second_of(t_us: u64) -> usize {
    ((t_us / 1_000_000) as usize).min(TIMELINE_SECONDS_MAX - 1)
}

impl StatsAcc {
    pub fn new(header: &lockstep_protocol::record::Header) -> Self {
        let window = match (header.steady_from_us, header.steady_to_us) {
            (Some(a), Some(b)) if b > a => Some((a, b)),
            _ => None,
        };
        let groups = header
            .groups
            .iter()
            .map(|g| {
                (
                    GroupStats {
                        name: g.name.clone(),
                        room_prefix: g.room_prefix.clone(),
                        members_per_room: g.members_per_room,
                        rooms_seen: 0,
                        deliveries: 0,
                        deliveries_per_sec: None,
                        latency: Percentiles::default(),
                    },
                    Latency::new(),
                    0,
                )
            })
            .collect();
        Self {
            window,
            first_delivery_us: None,
            last_delivery_us: 0,
            deliveries: Deliveries::default(),
            latency: Latency::new(),
            ack_latency: Latency::new(),
            catchup: Latency::new(),
            groups,
            sends: Sends::default(),
            connections: Connections::default(),
            errors: BTreeMap::new(),
            errors_total: 0,
            faults: BTreeMap::new(),
            timeline: Vec::new(),
        }
    }

    /// The group of a room: the longest matching `room_prefix`.
    pub fn group_of(&mut self, room: &str) -> Option<u16> {
        let g = self
            .groups
            .iter()
            .enumerate()
            .filter(|(_, (g, _, _))| room.starts_with(&g.room_prefix))
            .max_by_key(|(_, (g, _, _))| g.room_prefix.len())
            .map(|(i, _)| i as u16)?;
        self.groups[g as usize].0.rooms_seen += 1;
        Some(g)
    }

    fn second(&mut self, t_us: u64) -> &mut SecondAcc {
        let s = second_of(t_us);
        if self.timeline.len() <= s {
            self.timeline.resize_with(s + 1, SecondAcc::default);
        }
        &mut self.timeline[s]
    }

    /// A delivery to a joined connection.
    pub fn delivery(&mut self, t_us: u64, live: bool, group: Option<u16>) {
        let d = &mut self.deliveries;
        d.total += 1;
        if live {
            d.live += 1;
        } else {
            d.replayed += 1;
        }
        if self.first_delivery_us.is_none() {
            self.first_delivery_us = Some(t_us);
        }
        self.last_delivery_us = self.last_delivery_us.max(t_us);
        let in_window = self.window.is_none_or(|(a, b)| t_us >= a && t_us < b);
        if in_window {
            d.in_window += 1;
        }
        if let Some(g) = group {
            let g = &mut self.groups[g as usize];
            g.0.deliveries += 1;
            g.2 += u64::from(in_window);
        }
        self.second(t_us).deliveries += 1;
    }

    /// Send→deliver latency of a live delivery at `t_us`.
    pub fn delivery_latency(&mut self, t_us: u64, us: u64, group: Option<u16>) {
        self.latency.record(us);
        if let Some(g) = group {
            self.groups[g as usize].1.record(us);
        }
        let s = self.second(t_us);
        let h = s.latency.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, LATENCY_US_MAX, TIMELINE_SIGFIG).expect("valid bounds")
        });
        h.saturating_record(us.clamp(1, LATENCY_US_MAX));
    }

    pub fn send(&mut self, t_us: u64) {
        self.sends.attempts += 1;
        self.second(t_us).sends += 1;
    }

    pub fn ack(&mut self, t_us: u64, dup: bool) {
        if dup {
            self.sends.dup_acks += 1;
        }
        self.second(t_us).acks += 1;
    }

    pub fn error(&mut self, t_us: u64, code: &str) {
        self.errors_total += 1;
        match self.errors.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                self.errors.insert(code.to_owned(), 1);
            }
        }
        self.second(t_us).errors += 1;
    }

    /// The figures, with per-second rates over the window.
    pub fn finish(mut self, rooms: u64, epochs: u64, messages_sequenced: u64) -> Stats {
        let window = match (self.window, self.first_delivery_us) {
            (Some((a, b)), _) => Some(Window {
                from_us: a,
                to_us: b,
                source: "header".into(),
            }),
            (None, Some(a)) => Some(Window {
                from_us: a,
                to_us: self.last_delivery_us,
                source: "deliveries".into(),
            }),
            (None, None) => None,
        };
        let secs = window
            .as_ref()
            .map(|w| w.to_us.saturating_sub(w.from_us) as f64 / 1e6)
            .filter(|s| *s > 0.0);
        let rate = |n: u64| secs.map(|s| n as f64 / s);
        self.deliveries.per_sec = rate(self.deliveries.in_window);
        let groups = self
            .groups
            .into_iter()
            .map(|(mut g, lat, in_window)| {
                g.deliveries_per_sec = rate(in_window);
                g.latency = lat.summary();
                g
            })
            .collect();
        let timeline = self
            .timeline
            .iter()
            .enumerate()
            .map(|(i, s)| Second {
                second: i as u64,
                deliveries: s.deliveries,
                sends: s.sends,
                acks: s.acks,
                errors: s.errors,
                latency_p50_ms: s.latency.as_ref().map(|h| ms(h.value_at_quantile(0.5))),
                latency_p99_ms: s.latency.as_ref().map(|h| ms(h.value_at_quantile(0.99))),
                latency_max_ms: s.latency.as_ref().map(|h| ms(h.max())),
            })
            .collect();
        Stats {
            window,
            deliveries: self.deliveries,
            groups,
            latency: self.latency.summary(),
            ack_latency: self.ack_latency.summary(),
            catchup: self.catchup.summary(),
            sends: self.sends,
            connections: self.connections,
            errors: self.errors,
            errors_total: self.errors_total,
            faults: self.faults,
            rooms,
            epochs,
            messages_sequenced,
            timeline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outliers_are_clamped_and_counted_not_dropped() {
        // Goal: a latency above the histogram's range still counts (at the maximum).
        let mut l = Latency::new();
        l.record(5_000);
        l.record(LATENCY_US_MAX * 2);
        let p = l.summary();
        assert_eq!(p.count, 2);
        assert_eq!(p.outliers, 1);
        assert!(p.max_ms.unwrap() >= LATENCY_US_MAX as f64 / 1000.0 * 0.99);
    }

    #[test]
    fn empty_latency_has_no_percentiles() {
        // Goal: "nothing measured" is None, never a misleading 0 ms.
        let p = Latency::new().summary();
        assert_eq!(p.count, 0);
        assert!(p.p99_ms.is_none());
    }
}

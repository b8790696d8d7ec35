//! Live counters and latency histograms of a run, as the load generator sees it. (The
//! checker computes the authoritative figures from the recording; these drive the
//! progress line and the load generator's own summary.)

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;
use lockstep_protocol::ErrorCode;
use parking_lot::Mutex;
use serde::Serialize;

/// Latency histograms cover 1 µs .. 10 min with 2 significant digits (1% precision,
/// 64 KiB per histogram: small enough to stay in cache on the delivery path); values
/// above are clamped to the top and counted in `outliers`. The checker's figures, from
/// the recording, are the authoritative ones; these feed the live summary.
const HIST_LOW_US: u64 = 1;
const HIST_HIGH_US: u64 = 600_000_000;

/// A latency histogram per worker thread, merged on read: recording a value touches
/// only the current thread's histogram (its mutex is never contended).
pub struct Latency {
    id: usize,
    registry: Mutex<Vec<Shared>>,
    outliers: AtomicU64,
}

static NEXT_LATENCY_ID: AtomicU64 = AtomicU64::new(0);

/// A histogram one thread records into and a reader merges.
type Shared = Arc<Mutex<Histogram<u64>>>;

thread_local! {
    /// This thread's histogram of each `Latency` (by id).
    static LOCAL: RefCell<Vec<(usize, Shared)>> = const { RefCell::new(Vec::new()) };
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, 2).expect("valid histogram bounds")
}

impl Latency {
    pub fn new() -> Self {
        Self {
            id: NEXT_LATENCY_ID.fetch_add(1, Relaxed) as usize,
            registry: Mutex::new(Vec::new()),
            outliers: AtomicU64::new(0),
        }
    }

    pub fn record(&self, us: u64) {
        let v = if us > HIST_HIGH_US {
            self.outliers.fetch_add(1, Relaxed);
            HIST_HIGH_US
        } else {
            us.max(HIST_LOW_US)
        };
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let h = match local.iter().find(|(id, _)| *id == self.id) {
                Some((_, h)) => h.clone(),
                None => {
                    let h = Arc::new(Mutex::new(new_histogram()));
                    self.registry.lock().push(h.clone());
                    local.push((self.id, h.clone()));
                    h
                }
            };
            let _ = h.lock().record(v);
        });
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for s in self.registry.lock().iter() {
            let _ = h.add(&*s.lock());
        }
        h
    }

    pub fn outliers(&self) -> u64 {
        self.outliers.load(Relaxed)
    }
}

/// Counters of a run.
#[derive(Default)]
pub struct Stats {
    pub connected: AtomicI64,
    pub joined: AtomicI64,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub reconnects: AtomicU64,
    pub sent: AtomicU64,
    pub resent: AtomicU64,
    pub acked: AtomicU64,
    pub dup_acks: AtomicU64,
    pub delivered: AtomicU64,
    pub errors: AtomicU64,
    errors_by_code: [AtomicU64; 9],
    pub late_sends: AtomicU64,
    pub skipped_sends: AtomicU64,
    pub pending: AtomicI64,
    pub resets: AtomicU64,
    pub half_opens: AtomicU64,
    pub clean_closes: AtomicU64,
    pub slow_closes: AtomicU64,
    pub data_limits: AtomicU64,
    pub server_closes: AtomicU64,
    pub lost_connections: AtomicU64,
    pub deliver_latency: Latency,
    pub ack_latency: Latency,
}

impl Stats {
    pub fn error(&self, code: &str) {
        self.errors.fetch_add(1, Relaxed);
        let i = ErrorCode::ALL
            .iter()
            .position(|c| c.as_str() == code)
            .unwrap_or(ErrorCode::ALL.len());
        self.errors_by_code[i].fetch_add(1, Relaxed);
    }

    pub fn errors_by_code(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = ErrorCode::ALL
            .iter()
            .map(|c| c.as_str().to_owned())
            .chain(std::iter::once("other".to_owned()))
            .zip(&self.errors_by_code)
            .map(|(c, n)| (c, n.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        v.sort();
        v
    }
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

/// CPU seconds (user + system) this process has used.
pub fn process_cpu_secs() -> f64 {
    proc_cpu_secs("self")
}

/// Name prefix of the load generator's threads (its runtime's workers, the recorder).
/// Its own CPU is theirs alone, so a server or checker in the same process (`lockstep
/// run`) is not counted as load-generator cost. Thread names are cut at 15 bytes.
pub const THREAD_PREFIX: &str = "lockstep-load";

/// CPU seconds of this process's threads named with [`THREAD_PREFIX`]; the whole
/// process when there are none (a caller that did not name its runtime's threads).
pub fn load_cpu_secs() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return process_cpu_secs();
    };
    let (mut secs, mut named) = (0.0, false);
    for t in tasks.flatten() {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let comm = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map_or("", |(c, _)| c);
        if comm.starts_with(THREAD_PREFIX) {
            named = true;
            secs += stat_cpu_secs(&stat);
        }
    }
    if named { secs } else { process_cpu_secs() }
}

/// CPU seconds of process `pid` (or `self`), from /proc; 0 when unavailable.
pub fn proc_cpu_secs(pid: &str) -> f64 {
    stat_cpu_secs(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// utime + stime of a /proc `stat` line, in seconds.
fn stat_cpu_secs(stat: &str) -> f64 {
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / clock_ticks_per_sec()
}

fn clock_ticks_per_sec() -> f64 {
    // USER_HZ is 100 on every Linux architecture the toolchain targets.
    100.0
}

/// Resident set size of process `pid` (or `self`) in KiB; 0 when unavailable.
pub fn proc_rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Peak resident set size of process `pid` (or `self`) in KiB.
pub fn proc_peak_rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

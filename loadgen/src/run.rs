//! A whole run: ramp-up, load, quiet period, final readers, summary.

use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use base64::Engine as _;
use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};
use lockstep_protocol::record::{Event, Header, RoomGroup};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

use crate::client::{Client, ConnectGate, Phase, RunCtx, Target};
use crate::reader::final_read;
use crate::recorder::{Recorder, Sinks};
use crate::scenario::Scenario;
use crate::schedule;
use crate::stats::{self, Percentiles, Stats};

/// File descriptors kept free for everything that is not a client socket.
const FD_MARGIN: u64 = 64;
/// The quiet period ends early once nothing is pending and deliveries stopped for this
/// long.
const SETTLED_FOR: Duration = Duration::from_millis(500);
/// How long clients get to record `Finished` and close at the end.
const FINISH_GRACE: Duration = Duration::from_secs(10);
/// Above this CPU use per worker the load generator says it may be the bottleneck.
const CPU_PER_WORKER_WARN: f64 = 80.0;

/// What to run against and where to record.
pub struct LoadOptions {
    /// `ws://host:port/path` of the server.
    pub target: String,
    /// Write the recording here.
    pub record: Option<PathBuf>,
    /// Also hand raw recording blocks to an in-process consumer (the checker).
    pub live: Option<SyncSender<crate::recorder::Live>>,
    /// Draw a progress line (only when stderr is a terminal).
    pub progress: bool,
    /// The scenario's file, for the recording header.
    pub scenario_path: Option<String>,
    /// Worker threads of the runtime the run is in (for the CPU warning).
    pub workers: usize,
    /// Called when the load phase starts and ends, with the run's `t_us` (server faults
    /// are scheduled from these by `lockstep run`).
    pub on_phase: Option<Box<dyn Fn(Phase, u64) + Send + Sync>>,
    /// Shared with the caller: events of the run itself (server faults) are recorded
    /// through it.
    pub recorder_out: Option<tokio::sync::oneshot::Sender<Arc<Recorder>>>,
    /// Where final readers connect, when not `target` (e.g. straight to the server while
    /// the clients go through a fault proxy: the final readers are the ground truth).
    pub final_read_target: Option<String>,
    /// Suffix of this run's room names (default: a fresh random tag, so rooms start
    /// empty even on a server that ran the scenario before; `Some("")`: no suffix).
    pub room_tag: Option<String>,
}

impl LoadOptions {
    /// Options for a run against `target` with nothing extra: no recording, no live
    /// consumer, no progress line, 2 workers.
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            record: None,
            live: None,
            progress: false,
            scenario_path: None,
            workers: 2,
            on_phase: None,
            recorder_out: None,
            final_read_target: None,
            room_tag: None,
        }
    }
}

/// A short random tag for this run's room names.
fn run_tag() -> String {
    format!("r{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad target {target:?}: {why}")]
    Target { target: String, why: String },
    #[error(
        "the scenario needs {needed} connections at once ({clients} clients + {readers} final readers), but this process may open only {limit} files (nofile); raise the limit (ulimit -n) or split the clients over several `lockstep load` processes"
    )]
    TooManyConnections {
        needed: u64,
        clients: u64,
        readers: u64,
        limit: u64,
    },
    #[error("cannot reach the server at {target}: {why}")]
    Unreachable { target: String, why: String },
    #[error("recording: {0}")]
    Record(#[from] std::io::Error),
}

/// Counts of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    pub connects: u64,
    pub connect_failures: u64,
    pub reconnects: u64,
    pub sent: u64,
    pub resent: u64,
    pub acked: u64,
    pub dup_acks: u64,
    pub delivered: u64,
    pub errors: u64,
    pub late_sends: u64,
    pub skipped_sends: u64,
    pub unacked_at_end: i64,
}

/// Faults the clients injected.
#[derive(Debug, Clone, Serialize)]
pub struct FaultCounts {
    pub reset_peer: u64,
    pub timeout: u64,
    pub close: u64,
    pub slow_close: u64,
    pub limit_data: u64,
    pub server_closes: u64,
    pub connections_lost: u64,
}

/// What the load generator reports about a run (the checker's report is separate).
#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    pub scenario: String,
    pub seed: u64,
    pub target: String,
    pub clients: u64,
    pub rooms: u64,
    pub ramp_s: f64,
    pub load_s: f64,
    pub quiet_s: f64,
    pub counts: Counts,
    pub faults: FaultCounts,
    pub errors_by_code: Vec<(String, u64)>,
    /// Deliveries per second over the load phase.
    pub deliveries_per_sec: f64,
    /// Send→receive, from the intended send time, as the clients measured it.
    pub deliver_latency: Percentiles,
    pub ack_latency: Percentiles,
    /// The send→receive histogram, HdrHistogram V2 + deflate, base64: merge runs of
    /// several load generator processes with `hdrhistogram` deserialization.
    pub deliver_latency_hdr: String,
    pub cpu_percent: f64,
    pub cpu_per_worker_percent: f64,
    pub workers: usize,
    pub rss_peak_kib: u64,
    pub recorded_events: u64,
    pub lost_events: u64,
    pub recording: Option<String>,
    pub closed_loop_groups: Vec<String>,
    pub warnings: Vec<String>,
}

/// `ws://host:port/path` → where to connect.
pub fn parse_target(url: &str) -> Result<Target, LoadError> {
    let bad = |why: &str| LoadError::Target {
        target: url.to_owned(),
        why: why.to_owned(),
    };
    let rest = url.strip_prefix("ws://").ok_or_else(|| {
        bad("only ws:// URLs are supported (put TLS in front of the server with a proxy)")
    })?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/ws"),
    };
    if path.contains('?') {
        return Err(bad("the path must not carry a query; clients add ?user="));
    }
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| bad(&format!("cannot resolve {hostport}: {e}")))?
        .next()
        .ok_or_else(|| bad("resolves to no address"))?;
    Ok(Target {
        addr,
        host: hostport.to_owned(),
        path: path.to_owned(),
    })
}

fn nofile_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().filter_map(|v| v.parse::<u64>().ok());
            Some(it.next()?.abs_diff(it.next()?) + 1)
        })
        .unwrap_or(28_000)
}

/// Source addresses to spread connections over when one address's ephemeral ports would
/// run short (reconnects leave ports in TIME_WAIT). Loopback targets only.
fn source_ips(target: SocketAddr, connections: u64) -> Vec<IpAddr> {
    let ports = ephemeral_ports();
    // Leave half of each address's ports for TIME_WAIT churn.
    let per_ip = (ports / 2).max(1);
    if connections <= per_ip || !target.ip().is_loopback() || !target.is_ipv4() {
        return Vec::new();
    }
    let n = connections.div_ceil(per_ip).min(250);
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect()
}

/// Runs a scenario against `opts.target`.
pub async fn run(scenario: Scenario, opts: LoadOptions) -> Result<LoadSummary, LoadError> {
    let target = parse_target(&opts.target)?;
    // One connection first: an unreachable or non-WebSocket target is an error now, not
    // thousands of failed connections for the length of the run.
    let probe = tokio::time::timeout(
        Duration::from_secs(5),
        crate::wire::connect(
            target.addr,
            &target.host,
            &format!("{}?user=lockstep-preflight", target.path),
        ),
    )
    .await;
    match probe {
        Ok(Ok((stream, _))) => crate::wire::close_gracefully(stream, Duration::from_secs(1)).await,
        Ok(Err(e)) => {
            return Err(LoadError::Unreachable {
                target: opts.target.clone(),
                why: e.to_string(),
            });
        }
        Err(_) => {
            return Err(LoadError::Unreachable {
                target: opts.target.clone(),
                why: "no WebSocket handshake within 5 s".into(),
            });
        }
    }
    let tag = opts.room_tag.clone().unwrap_or_else(run_tag);
    let plans = schedule::clients(&scenario, &tag);
    let clients = plans.len() as u64;
    let rooms: u64 = scenario.groups.iter().map(|g| u64::from(g.rooms)).sum();
    let readers = if scenario.final_read { rooms } else { 0 };
    let limit = nofile_limit();
    // Final readers run after the clients closed, but be conservative: both at once.
    if clients + readers + FD_MARGIN > limit {
        return Err(LoadError::TooManyConnections {
            needed: clients + readers,
            clients,
            readers,
            limit,
        });
    }
    let ramp = Duration::from_secs_f64(clients as f64 / scenario.ramp.connect_rate);
    let load_start_us = ramp.as_micros() as u64;
    let load_end_us = load_start_us + scenario.duration.as_us();
    let header = Header {
        scenario: scenario.name.clone(),
        scenario_path: opts.scenario_path.clone(),
        seed: scenario.seed,
        started_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        target: opts.target.clone(),
        writer: format!("lockstep-loadgen {}", env!("CARGO_PKG_VERSION")),
        allowed_anomalies: scenario.allowed_anomalies.clone(),
        thresholds: scenario.thresholds.clone(),
        groups: scenario
            .groups
            .iter()
            .map(|g| RoomGroup {
                name: g.name.clone(),
                room_prefix: format!("{}-", g.name),
                rooms: g.rooms,
                members_per_room: g.members,
            })
            .collect(),
        steady_from_us: Some(load_start_us),
        steady_to_us: Some(load_end_us),
        settings: serde_json::json!({
            "groups": scenario.groups,
            "faults": scenario.faults,
            "ramp": scenario.ramp,
            "reconnect": scenario.reconnect,
            "duration": scenario.duration,
            "quiet": scenario.quiet,
        }),
    };
    let start = Instant::now();
    let file = match &opts.record {
        Some(p) => Some(Recorder::create_file(p)?),
        None => None,
    };
    let recorder = Arc::new(Recorder::start(
        &header,
        start.into_std(),
        Sinks {
            file,
            live: opts.live,
        },
    )?);
    if let Some(tx) = opts.recorder_out {
        let _ = tx.send(recorder.clone());
    }
    let ips = source_ips(target.addr, clients + readers);
    let mut warnings = Vec::new();
    if !ips.is_empty() {
        warnings.push(format!(
            "{} connections exceed half of one address's {} ephemeral ports; spreading them over {} source addresses 127.0.0.2..",
            clients + readers,
            ephemeral_ports(),
            ips.len()
        ));
    }
    let ctx = Arc::new(RunCtx {
        gate: ConnectGate::new(scenario.ramp.connect_rate),
        scenario,
        target: target.clone(),
        recorder: recorder.clone(),
        stats: Stats::default(),
        source_ips: ips,
        load_start_us,
        start,
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Ramp);
    let mut tasks = JoinSet::new();
    for plan in plans {
        let c = Client::new(ctx.clone(), plan, phase_rx.clone());
        tasks.spawn(c.run());
    }
    let progress = Progress::start(ctx.clone(), opts.progress, phase_rx.clone());

    // Ramp, then load.
    sleep_until(start + ramp).await;
    let _ = phase_tx.send(Phase::Load);
    if let Some(f) = &opts.on_phase {
        f(Phase::Load, recorder.now_us());
    }
    let cpu0 = stats::load_cpu_secs();
    let delivered0 = ctx.stats.delivered.load(Relaxed);
    let load_started = Instant::now();
    sleep_until(start + Duration::from_micros(load_end_us)).await;
    let load_s = load_started.elapsed().as_secs_f64();
    let delivered1 = ctx.stats.delivered.load(Relaxed);
    let cpu1 = stats::load_cpu_secs();

    // Quiet: no sends, no faults; wait until everyone settled or the bound.
    let _ = phase_tx.send(Phase::Quiet);
    if let Some(f) = &opts.on_phase {
        f(Phase::Quiet, recorder.now_us());
    }
    let quiet_started = Instant::now();
    let quiet_end = quiet_started + ctx.scenario.quiet.0;
    let mut last = ctx.stats.delivered.load(Relaxed);
    let mut still_since = Instant::now();
    while Instant::now() < quiet_end {
        sleep(Duration::from_millis(50)).await;
        let d = ctx.stats.delivered.load(Relaxed);
        if d != last {
            last = d;
            still_since = Instant::now();
        }
        let settled = ctx.stats.pending.load(Relaxed) <= 0
            && ctx.stats.joined.load(Relaxed) as u64 == clients
            && still_since.elapsed() >= SETTLED_FOR;
        if settled {
            break;
        }
    }
    let quiet_s = quiet_started.elapsed().as_secs_f64();

    // Done: clients record Finished and close.
    let _ = phase_tx.send(Phase::Done);
    let finish_deadline = Instant::now() + FINISH_GRACE;
    while !tasks.is_empty() {
        match tokio::time::timeout_at(finish_deadline, tasks.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                warnings.push(format!(
                    "{} clients did not finish within {} s and were stopped",
                    tasks.len(),
                    FINISH_GRACE.as_secs()
                ));
                tasks.abort_all();
                break;
            }
        }
    }
    let unacked = ctx.stats.pending.load(Relaxed);

    // Final readers: the complete history of every room, for the checker.
    let reader_target = match &opts.final_read_target {
        Some(t) => parse_target(t)?,
        None => ctx.target.clone(),
    };
    if ctx.scenario.final_read {
        let mut readers = JoinSet::new();
        let mut index = clients as u32;
        for g in &ctx.scenario.groups {
            for r in 0..g.rooms {
                let room = schedule::room_name(&g.name, r, &tag);
                readers.spawn(final_read(ctx.clone(), index, room, reader_target.clone()));
                index += 1;
            }
        }
        while let Some(r) = readers.join_next().await {
            if let Ok(Err(why)) = r {
                warnings.push(why);
            }
        }
    }
    progress.stop();
    let rec = recorder.clone();
    let trailer = tokio::task::spawn_blocking(move || rec.finish())
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;

    let s = &ctx.stats;
    let cpu = cpu1 - cpu0;
    let cpu_percent = if load_s > 0.0 {
        cpu / load_s * 100.0
    } else {
        0.0
    };
    let workers = opts.workers.max(1);
    let cpu_per_worker_percent = cpu_percent / workers as f64;
    if cpu_per_worker_percent > CPU_PER_WORKER_WARN {
        warnings.push(format!(
            "the load generator used {cpu_per_worker_percent:.0}% of each of its {workers} workers during the load: it, not the server, may be the bottleneck"
        ));
    }
    if trailer.lost > 0 {
        warnings.push(format!(
            "the recorder lost {} events (it could not keep up); the recording cannot prove anything",
            trailer.lost
        ));
    }
    let deliver = s.deliver_latency.merged();
    let mut hdr = Vec::new();
    let _ = V2DeflateSerializer::new().serialize(&deliver, &mut hdr);
    let closed_loop_groups = ctx
        .scenario
        .groups
        .iter()
        .filter(|g| g.window.is_some())
        .map(|g| g.name.clone())
        .collect();
    Ok(LoadSummary {
        scenario: ctx.scenario.name.clone(),
        seed: ctx.scenario.seed,
        target: opts.target,
        clients,
        rooms,
        ramp_s: ramp.as_secs_f64(),
        load_s,
        quiet_s,
        counts: Counts {
            connects: s.connects.load(Relaxed),
            connect_failures: s.connect_failures.load(Relaxed),
            reconnects: s.reconnects.load(Relaxed),
            sent: s.sent.load(Relaxed),
            resent: s.resent.load(Relaxed),
            acked: s.acked.load(Relaxed),
            dup_acks: s.dup_acks.load(Relaxed),
            delivered: s.delivered.load(Relaxed),
            errors: s.errors.load(Relaxed),
            late_sends: s.late_sends.load(Relaxed),
            skipped_sends: s.skipped_sends.load(Relaxed),
            unacked_at_end: unacked,
        },
        faults: FaultCounts {
            reset_peer: s.resets.load(Relaxed),
            timeout: s.half_opens.load(Relaxed),
            close: s.clean_closes.load(Relaxed),
            slow_close: s.slow_closes.load(Relaxed),
            limit_data: s.data_limits.load(Relaxed),
            server_closes: s.server_closes.load(Relaxed),
            connections_lost: s.lost_connections.load(Relaxed),
        },
        errors_by_code: s.errors_by_code(),
        deliveries_per_sec: if load_s > 0.0 {
            (delivered1 - delivered0) as f64 / load_s
        } else {
            0.0
        },
        deliver_latency: Percentiles::of(&deliver),
        ack_latency: Percentiles::of(&s.ack_latency.merged()),
        deliver_latency_hdr: base64::engine::general_purpose::STANDARD.encode(&hdr),
        cpu_percent,
        cpu_per_worker_percent,
        workers,
        rss_peak_kib: stats::proc_peak_rss_kib("self"),
        recorded_events: trailer.events,
        lost_events: trailer.lost,
        recording: opts.record.map(|p| p.display().to_string()),
        closed_loop_groups,
        warnings,
    })
}

/// The live progress line.
struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn start(ctx: Arc<RunCtx>, want: bool, phase: watch::Receiver<Phase>) -> Progress {
        if !want || !std::io::stderr().is_terminal() {
            return Progress {
                task: None,
                bar: None,
            };
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .expect("valid progress template"),
        );
        let b = bar.clone();
        let task = tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                sleep(Duration::from_millis(250)).await;
                let s = &ctx.stats;
                let delivered = s.delivered.load(Relaxed);
                let now = Instant::now();
                let rate = (delivered - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
                last = (now, delivered);
                b.set_message(format!(
                    "{:?} conns {} sent {} acked {} delivered {} ({:.0}/s) reconnects {} errors {}",
                    *phase.borrow(),
                    s.connected.load(Relaxed),
                    s.sent.load(Relaxed),
                    s.acked.load(Relaxed),
                    delivered,
                    rate,
                    s.reconnects.load(Relaxed),
                    s.errors.load(Relaxed),
                ));
                b.tick();
            }
        });
        Progress {
            task: Some(task),
            bar: Some(bar),
        }
    }

    fn stop(self) {
        if let Some(t) = self.task {
            t.abort();
        }
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// Records a run-level event (server faults) on the shared recorder.
pub fn record_server_fault(recorder: &Recorder, kind: &str, detail: &str) {
    let t_us = recorder.now_us();
    recorder.record(
        u32::MAX,
        &Event::Fault {
            t_us,
            client: u32::MAX,
            kind,
            detail,
        },
    );
}

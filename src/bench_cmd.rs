//! `lockstep bench fanout`: the sustainable fan-out rate at several room sizes.
//!
//! For each room size the server runs as a child process (so its CPU and memory are its
//! own) and the load generator runs here. The offered rate doubles until deliveries stop
//! keeping up or p99 latency exceeds the bound, then is bisected; the best rate that
//! held is reported, with the figures at half that rate beside it.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use lockstep_loadgen::client::Phase;
use lockstep_loadgen::run::{LoadOptions, LoadSummary};
use lockstep_loadgen::scenario::{Dur, Group, Ramp, Reconnect, Scenario};
use lockstep_loadgen::stats::{proc_cpu_secs, proc_rss_kib};
use lockstep_server::Config;
use parking_lot::Mutex;
use serde::Serialize;

use crate::run_cmd::ChildServer;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: Bench,
}

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Fan-out: deliveries/s one server sustains at each room size.
    Fanout(FanoutArgs),
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Room sizes (members per room), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,5000",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub sizes: Vec<u32>,
    /// Clients per probe: rooms of a size are added until they hold this many (a room
    /// larger than this is one room of its size).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// Publishers per 1,000 clients (at least one per room).
    #[arg(long, default_value_t = 10)]
    pub publishers: u32,
    /// Seconds of load per probe.
    #[arg(long, default_value_t = 5.0)]
    pub probe_secs: f64,
    /// A rate is sustainable while send→receive p99 stays under this (ms) ...
    #[arg(long, default_value_t = 100.0)]
    pub p99_ms: f64,
    /// ... and deliveries keep up with this fraction of the offered rate.
    #[arg(long, default_value_t = 0.97)]
    pub keep_up: f64,
    /// Text bytes per message.
    #[arg(long, default_value_t = 64)]
    pub text_bytes: u32,
    /// Durability of the server's commits.
    #[arg(long, default_value = "normal")]
    pub sync: lockstep_server::SyncMode,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One probe at one offered rate.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub offered_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub server_cpu_percent: f64,
    pub server_us_per_delivery: f64,
    pub loadgen_cpu_percent: f64,
    pub loadgen_us_per_delivery: f64,
    pub server_rss_kib: u64,
    pub sustainable: bool,
}

/// The result for one room size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    pub room_size: u32,
    pub rooms: u32,
    pub clients: u32,
    pub publishers: u32,
    /// The best sustainable probe (absent when even the first rate did not hold).
    pub best: Option<Probe>,
    /// The same at half that rate.
    pub half: Option<Probe>,
    pub server_rss_idle_kib: u64,
    /// (RSS under load at the best rate − RSS before clients) / clients.
    pub rss_per_connection_kib: Option<f64>,
    pub probes: Vec<Probe>,
}

#[derive(Debug, Serialize)]
struct BenchJson<'a> {
    schema: &'static str,
    machine: String,
    p99_bound_ms: f64,
    keep_up: f64,
    probe_secs: f64,
    sizes: &'a [SizeResult],
}

fn scenario(size: u32, rooms: u32, senders: u32, rate: f64, args: &FanoutArgs) -> Scenario {
    Scenario {
        name: format!("bench-fanout-{size}"),
        seed: u64::from(size),
        duration: Dur(Duration::from_secs_f64(args.probe_secs)),
        quiet: Dur(Duration::from_secs(3)),
        final_read: false,
        allowed_anomalies: Vec::new(),
        ramp: Ramp {
            connect_rate: 2000.0,
        },
        reconnect: Reconnect::default(),
        groups: vec![Group {
            name: format!("fan{size}"),
            rooms,
            members: size,
            senders,
            rate: Some(rate),
            window: None,
            text_bytes: [args.text_bytes, args.text_bytes],
            read_receipts: 0.0,
            typing: 0.0,
            history: 0,
        }],
        faults: Vec::new(),
        thresholds: Default::default(),
        server_faults: Vec::new(),
        server: Default::default(),
    }
}

fn cpu_of(pid: u32) -> f64 {
    proc_cpu_secs(&pid.to_string())
}

/// Runs one probe against the server, measuring its CPU over the load phase.
fn probe(
    rt: &tokio::runtime::Runtime,
    server: &ChildServer,
    s: Scenario,
    args: &FanoutArgs,
    workers: usize,
) -> anyhow::Result<(Probe, LoadSummary)> {
    let members = s.groups[0].members;
    let pid = server.pid().context("the server is not running")?;
    let marks: Arc<Mutex<Vec<(f64, std::time::Instant, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let m = marks.clone();
    let summary = rt.block_on(lockstep_loadgen::run::run(
        s,
        LoadOptions {
            target: format!("ws://{}/ws", server.addr),
            workers,
            on_phase: Some(Box::new(move |phase, _| {
                if matches!(phase, Phase::Load | Phase::Quiet) {
                    m.lock().push((
                        cpu_of(pid),
                        std::time::Instant::now(),
                        proc_rss_kib(&pid.to_string()),
                    ));
                }
            })),
            ..LoadOptions::new("")
        },
    ))?;
    let marks = marks.lock().clone();
    let (cpu, secs, rss) = match marks.as_slice() {
        [(c0, t0, _), (c1, t1, r1), ..] => (c1 - c0, (*t1 - *t0).as_secs_f64(), *r1),
        _ => (0.0, summary.load_s, 0),
    };
    let delivered = summary.deliveries_per_sec * summary.load_s;
    let p = &summary.deliver_latency;
    // Keeping up means delivering what was actually sent (Poisson arrivals make the
    // sends of a short probe differ from the nominal rate by a few percent).
    let owed = summary.counts.sent as f64 * f64::from(members);
    let sustainable = delivered >= args.keep_up * owed && p.p99_ms <= args.p99_ms;
    let offered = summary.counts.sent as f64 * f64::from(members) / summary.load_s.max(1e-3);
    Ok((
        Probe {
            offered_per_sec: offered,
            deliveries_per_sec: summary.deliveries_per_sec,
            p50_ms: p.p50_ms,
            p99_ms: p.p99_ms,
            p999_ms: p.p999_ms,
            max_ms: p.max_ms,
            server_cpu_percent: cpu / secs.max(1e-3) * 100.0,
            server_us_per_delivery: cpu * 1e6 / delivered.max(1.0),
            loadgen_cpu_percent: summary.cpu_percent,
            loadgen_us_per_delivery: summary.cpu_percent / 100.0 * summary.load_s * 1e6
                / delivered.max(1.0),
            server_rss_kib: rss,
            sustainable,
        },
        summary,
    ))
}

fn bench_size(
    rt: &tokio::runtime::Runtime,
    size: u32,
    args: &FanoutArgs,
    cfg: &Config,
    workers: usize,
    dir: &Path,
) -> anyhow::Result<SizeResult> {
    let rooms = (args.clients / size).max(1);
    let clients = rooms * size;
    let senders = ((u64::from(args.publishers) * u64::from(size) / u64::from(args.clients.max(1)))
        as u32)
        .clamp(1, size);
    let publishers = senders * rooms;
    let sub = dir.join(format!("size-{size}"));
    std::fs::create_dir_all(&sub)?;
    let mut server = ChildServer::new(&sub, cfg)?;
    server.start()?;
    std::thread::sleep(Duration::from_millis(300));
    let idle = proc_rss_kib(&server.pid().context("server pid")?.to_string());
    let per_delivery_rate = |offered: f64| offered / f64::from(publishers) / f64::from(size);
    let mut probes = Vec::new();
    let run = |offered: f64, probes: &mut Vec<Probe>| -> anyhow::Result<Probe> {
        let s = scenario(size, rooms, senders, per_delivery_rate(offered), args);
        let (p, _) = probe(rt, &server, s, args, workers)?;
        eprintln!(
            "  size {size}: offered {:>9.0}/s → {:>9.0}/s  p99 {:>7.2} ms  server {:>3.0}% {:.2} µs/delivery  loadgen {:>3.0}%  {}",
            p.offered_per_sec,
            p.deliveries_per_sec,
            p.p99_ms,
            p.server_cpu_percent,
            p.server_us_per_delivery,
            p.loadgen_cpu_percent,
            if p.sustainable { "ok" } else { "not sustained" }
        );
        probes.push(p.clone());
        Ok(p)
    };
    // Double from 50k deliveries/s until it breaks, then bisect twice. Rates here are
    // nominal (what the schedule aims at); each probe reports what was actually sent.
    let mut good: Option<(f64, Probe)> = None;
    let mut bad: Option<f64> = None;
    let mut nominal = 50_000.0;
    for _ in 0..8 {
        let p = run(nominal, &mut probes)?;
        if p.sustainable {
            good = Some((nominal, p));
            nominal *= 2.0;
        } else {
            bad = Some(nominal);
            break;
        }
    }
    if let Some(hi) = bad {
        let mut lo = good.as_ref().map_or(hi / 4.0, |g| g.0);
        let mut hi = hi;
        for _ in 0..2 {
            let mid = (lo + hi) / 2.0;
            let p = run(mid, &mut probes)?;
            if p.sustainable {
                lo = mid;
                good = Some((mid, p));
            } else {
                hi = mid;
            }
        }
    }
    let half = match &good {
        Some((rate, _)) => Some(run(rate / 2.0, &mut probes)?),
        None => None,
    };
    let good = good.map(|g| g.1);
    if let Err(e) = server.terminate(Duration::from_secs(15)) {
        tracing::warn!("stopping the bench server: {e:#}");
    }
    let rss_per_connection_kib = good
        .as_ref()
        .map(|g| g.server_rss_kib.saturating_sub(idle) as f64 / f64::from(clients));
    Ok(SizeResult {
        room_size: size,
        rooms,
        clients,
        publishers,
        best: good,
        half,
        server_rss_idle_kib: idle,
        rss_per_connection_kib,
        probes,
    })
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1).map(|m| m.trim().to_owned()))
        })
        .unwrap_or_default();
    format!("{cpus} CPUs, {model}")
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let Bench::Fanout(args) = args.what;
    crate::cli::raise_nofile();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(lockstep_loadgen::stats::THREAD_PREFIX)
        .enable_all()
        .build()?;
    // A benchmark measures capacity: no per-connection rate limits.
    let cfg = Config {
        sync: args.sync,
        send_rate_per_sec: 1e9,
        send_burst: 1_000_000,
        event_rate_per_sec: 1e9,
        event_burst: 1_000_000,
        ..Config::default()
    };
    let dir = tempfile::Builder::new()
        .prefix("lockstep-bench-")
        .tempdir()?;
    let mut results = Vec::new();
    for &size in &args.sizes {
        eprintln!("room size {size}:");
        results.push(bench_size(&rt, size, &args, &cfg, workers, dir.path())?);
    }
    #[allow(clippy::print_stdout)]
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&BenchJson {
                schema: "lockstep.bench.fanout/1",
                machine: machine(),
                p99_bound_ms: args.p99_ms,
                keep_up: args.keep_up,
                probe_secs: args.probe_secs,
                sizes: &results,
            })?
        );
    } else {
        print!("{}", table(&results, &args));
    }
    Ok(ExitCode::SUCCESS)
}

fn table(results: &[SizeResult], args: &FanoutArgs) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "fan-out: sustainable deliveries/s (p99 ≤ {} ms, deliveries ≥ {:.0}% of offered), {}",
        args.p99_ms,
        args.keep_up * 100.0,
        machine()
    );
    let _ = writeln!(
        o,
        "{:>6} {:>6} {:>7} {:>11} {:>16} {:>16} {:>8} {:>9} {:>8} {:>9} {:>10} {:>8}",
        "size",
        "rooms",
        "pubs",
        "deliv/s",
        "p50/p99/p99.9",
        "@50%: p50/p99",
        "srv CPU",
        "srv µs/d",
        "lg CPU",
        "lg µs/d",
        "srv RSS",
        "KiB/conn"
    );
    for r in results {
        match (&r.best, &r.half) {
            (Some(b), h) => {
                let half = h
                    .as_ref()
                    .map_or("-".into(), |h| format!("{:.1}/{:.1}", h.p50_ms, h.p99_ms));
                let _ = writeln!(
                    o,
                    "{:>6} {:>6} {:>7} {:>11.0} {:>16} {:>16} {:>7.0}% {:>9.3} {:>7.0}% {:>9.3} {:>8}Ki {:>8.1}",
                    r.room_size,
                    r.rooms,
                    r.publishers,
                    b.deliveries_per_sec,
                    format!("{:.1}/{:.1}/{:.1}", b.p50_ms, b.p99_ms, b.p999_ms),
                    half,
                    b.server_cpu_percent,
                    b.server_us_per_delivery,
                    b.loadgen_cpu_percent,
                    b.loadgen_us_per_delivery,
                    b.server_rss_kib,
                    r.rss_per_connection_kib.unwrap_or(0.0)
                );
            }
            (None, _) => {
                let _ = writeln!(
                    o,
                    "{:>6} {:>6} {:>7}   no rate sustained (see probes)",
                    r.room_size, r.rooms, r.publishers
                );
            }
        }
    }
    o
}

//! `lockstep load`: run a scenario against a server and record what clients saw.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use lockstep_loadgen::run::{LoadOptions, LoadSummary};
use lockstep_loadgen::scenario::Scenario;

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Scenario file (TOML).
    pub scenario: PathBuf,
    /// The server's WebSocket URL, e.g. ws://127.0.0.1:8080/ws.
    #[arg(long)]
    pub target: String,
    /// Write the recording (for `lockstep check`) to this file.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Print the summary as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Worker threads for the simulated clients [default: number of CPUs].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Never draw the progress line (it is drawn only on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let scenario = Scenario::load(&args.scenario)?;
    crate::cli::raise_nofile();
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(lockstep_loadgen::stats::THREAD_PREFIX)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = runtime.block_on(lockstep_loadgen::run::run(
        scenario,
        LoadOptions {
            target: args.target.clone(),
            record: args.record.clone(),
            progress: !args.no_progress,
            scenario_path: Some(args.scenario.display().to_string()),
            workers,
            ..LoadOptions::new("")
        },
    ))?;
    print_summary(&summary, args.json)?;
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)]
pub fn print_summary(s: &LoadSummary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    let c = &s.counts;
    let f = &s.faults;
    println!(
        "load: {} (seed {}) against {}",
        s.scenario, s.seed, s.target
    );
    println!(
        "  clients {}  rooms {}  ramp {:.1}s  load {:.1}s  quiet {:.1}s",
        s.clients, s.rooms, s.ramp_s, s.load_s, s.quiet_s
    );
    println!(
        "  connects {}  failed {}  reconnects {}",
        c.connects, c.connect_failures, c.reconnects
    );
    println!(
        "  sent {}  re-sent {}  acked {} ({} dup)  delivered {}  unacked at end {}",
        c.sent, c.resent, c.acked, c.dup_acks, c.delivered, c.unacked_at_end
    );
    println!(
        "  deliveries/s {:.0} over the load phase{}",
        s.deliveries_per_sec,
        if s.closed_loop_groups.is_empty() {
            String::new()
        } else {
            format!(" (closed loop: {})", s.closed_loop_groups.join(", "))
        }
    );
    let p = &s.deliver_latency;
    println!(
        "  send→receive ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} samples)",
        p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms, p.count
    );
    let a = &s.ack_latency;
    println!(
        "  send→ack ms      p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        a.p50_ms, a.p90_ms, a.p99_ms, a.p999_ms, a.max_ms
    );
    println!(
        "  faults: reset_peer {}  timeout {}  close {}  slow_close {}  limit_data {}  server closes {}  connections lost {}",
        f.reset_peer,
        f.timeout,
        f.close,
        f.slow_close,
        f.limit_data,
        f.server_closes,
        f.connections_lost
    );
    if c.late_sends + c.skipped_sends > 0 {
        println!(
            "  late sends {} (>100 ms behind schedule)  skipped sends {}",
            c.late_sends, c.skipped_sends
        );
    }
    if !s.errors_by_code.is_empty() {
        let e: Vec<String> = s
            .errors_by_code
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!("  errors: {}", e.join("  "));
    }
    println!(
        "  load generator: CPU {:.0}% ({:.0}% per worker, {} workers), peak RSS {} MiB",
        s.cpu_percent,
        s.cpu_per_worker_percent,
        s.workers,
        s.rss_peak_kib / 1024
    );
    match &s.recording {
        Some(p) => println!(
            "  recording: {p} ({} events, {} lost)",
            s.recorded_events, s.lost_events
        ),
        None => println!(
            "  recording: none (--record FILE to keep one); {} events, {} lost",
            s.recorded_events, s.lost_events
        ),
    }
    for w in &s.warnings {
        println!("  warning: {w}");
    }
    Ok(())
}

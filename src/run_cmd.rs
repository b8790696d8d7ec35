//! `lockstep run SCENARIO`: server + load + live check in one go — the main job.
//!
//! The server runs in this process (on its own runtime threads) unless the scenario
//! kills or restarts it (then it is a child process, `lockstep serve`, restarted on the
//! same database and port) or the connections would not fit in one process (then also
//! a child), or `--target` names an external server (then server faults are skipped,
//! with a warning). The load generator streams its recording to the checker as it runs;
//! the report and the exit code are the checker's (0 pass, 1 fail, 2 could not run or
//! unknown).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::mpsc::sync_channel;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use lockstep_checker::{Checker, Report, render};
use lockstep_loadgen::client::Phase;
use lockstep_loadgen::mitm::{Bug, Mitm};
use lockstep_loadgen::recorder::{Live, Recorder};
use lockstep_loadgen::run::{LoadOptions, LoadSummary, record_server_fault};
use lockstep_loadgen::scenario::{Scenario, ServerFaultKind};
use lockstep_server::Config;
use serde::Serialize;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenario file (TOML).
    pub scenario: PathBuf,
    /// Test an external server at this WebSocket URL instead of starting one (server
    /// faults are then skipped, with a warning).
    #[arg(long)]
    pub target: Option<String>,
    /// Also write the recording to this file (for `lockstep check` later).
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Print the result as JSON (schema `lockstep.run/1`: the check report and the load
    /// summary) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Write a JUnit XML report to this file (for CI).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write a self-contained HTML report to this file.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Put a fault proxy between the clients and the server that breaks the server's
    /// guarantees on purpose: drop:N, duplicate:N, reorder:N, corrupt:N or skip_replay
    /// (to see the checker catch it).
    #[arg(long, value_name = "BUG")]
    pub inject: Option<String>,
    /// Worker threads for the simulated clients [default: number of CPUs].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Never draw the progress line.
    #[arg(long)]
    pub no_progress: bool,
}

/// The server of a run.
enum ServerUnderTest {
    InProcess(InProcess),
    Child(Arc<parking_lot::Mutex<ChildServer>>),
    External,
}

struct InProcess {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    /// Starts the server on its own runtime (2 threads), as a separate process would be.
    fn start(cfg: Config) -> anyhow::Result<(InProcess, SocketAddr)> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("lockstep-server".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("lockstep-server-rt")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    match lockstep_server::Server::start(cfg).await {
                        Ok(server) => {
                            let _ = addr_tx.send(Ok(server.addr()));
                            let _ = stop_rx.await;
                            if let Err(e) = server.shutdown().await {
                                tracing::warn!(error = %e, "server shutdown");
                            }
                        }
                        Err(e) => {
                            let _ = addr_tx.send(Err(e.to_string()));
                        }
                    }
                });
            })?;
        let addr = addr_rx
            .recv()
            .context("the server thread ended before it started")?
            .map_err(|e| anyhow::anyhow!("starting the server: {e}"))?;
        Ok((
            InProcess {
                stop: Some(stop_tx),
                thread: Some(thread),
            },
            addr,
        ))
    }

    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `lockstep serve` as a child process, restartable on the same database and port.
pub struct ChildServer {
    exe: PathBuf,
    pub addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl ChildServer {
    pub fn new(dir: &Path, cfg: &Config) -> anyhow::Result<ChildServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut cfg = cfg.clone();
        cfg.listen = addr;
        cfg.db = dir.join("lockstep.db");
        std::fs::write(dir.join("server.toml"), toml::to_string(&cfg)?)?;
        Ok(ChildServer {
            exe: std::env::current_exe().context("finding the lockstep binary")?,
            addr,
            dir: dir.to_owned(),
            child: None,
            starts: 0,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server and waits until it answers `/healthz`.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("server-{}.log", self.starts)))?;
        let child = Command::new(&self.exe)
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join("server.toml"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting `lockstep serve`")?;
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if healthy(self.addr) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "the server exited at start ({status}); see {}",
                    self.dir
                        .join(format!("server-{}.log", self.starts))
                        .display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the server did not answer /healthz within 15 s")
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the graceful shutdown (SIGKILL after `grace`). An error
    /// says the shutdown was not graceful: the signal could not be sent, the server did
    /// not exit within `grace` (it was then killed), or it exited with a failure.
    pub fn terminate(&mut self, grace: Duration) -> anyhow::Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        let pid = rustix::process::Pid::from_raw(c.id() as i32)
            .context("the server's process id is not valid")?;
        if let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::TERM) {
            let _ = c.kill();
            let _ = c.wait();
            bail!("could not send SIGTERM to the server: {e}");
        }
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            match c.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => bail!("the server exited with {status} on SIGTERM"),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => bail!("waiting for the server: {e}"),
            }
        }
        let _ = c.kill();
        let _ = c.wait();
        bail!(
            "the server did not exit within {} ms of SIGTERM; killed",
            grace.as_millis()
        )
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Err(e) = self.terminate(Duration::from_secs(15)) {
            tracing::warn!("stopping the server: {e:#}");
        }
    }
}

fn healthy(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && buf.starts_with(b"HTTP/1.1 200"))
}

/// The server configuration a scenario asks for: defaults, then its `[server]` table.
pub fn server_config(scenario: &Scenario, path: &Path) -> anyhow::Result<Config> {
    let mut table = toml::Table::try_from(Config::default())?;
    for (k, v) in &scenario.server {
        table.insert(k.clone(), v.clone());
    }
    let cfg: Config = table.try_into().map_err(|e: toml::de::Error| {
        anyhow::anyhow!("{}: [server]: {}", path.display(), e.message())
    })?;
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("{}: [server]: {e}", path.display()))?;
    Ok(cfg)
}

#[derive(Serialize)]
struct RunJson<'a> {
    schema: &'static str,
    check: &'a Report,
    load: &'a LoadSummary,
    server: &'a str,
    injected: Option<String>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let scenario = Scenario::load(&args.scenario)?;
    let nofile = crate::cli::raise_nofile();
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let dir = tempfile::Builder::new()
        .prefix("lockstep-run-")
        .tempdir()
        .context("creating a temporary directory for the server's database")?;
    let mut warnings = Vec::new();
    // Reasons the run did not happen as specified; any of them makes the exit code 2.
    let mut unrun: Vec<String> = Vec::new();
    let connections: u64 = scenario.clients()
        + scenario
            .groups
            .iter()
            .map(|g| u64::from(g.rooms))
            .sum::<u64>();

    // The server under test.
    let (server, server_addr, server_kind) = match &args.target {
        Some(t) => {
            if !scenario.server_faults.is_empty() {
                warnings.push(format!(
                    "{} server fault(s) skipped: the server at {t} is not ours to kill",
                    scenario.server_faults.len()
                ));
            }
            if !scenario.server.is_empty() {
                warnings.push("[server] settings ignored: the server is external".into());
            }
            (ServerUnderTest::External, None, format!("external {t}"))
        }
        None => {
            let cfg = server_config(&scenario, &args.scenario)?;
            // Both ends of every connection in one process would need twice the sockets.
            let fits = 2 * connections + 128 <= nofile;
            if scenario.server_faults.is_empty() && fits {
                let mut cfg = cfg;
                cfg.listen = "127.0.0.1:0".parse()?;
                cfg.db = dir.path().join("lockstep.db");
                let (srv, addr) = InProcess::start(cfg)?;
                (
                    ServerUnderTest::InProcess(srv),
                    Some(addr),
                    "in-process".to_owned(),
                )
            } else {
                let why = if scenario.server_faults.is_empty() {
                    format!(
                        "{connections} connections need {} sockets in one process, more than its limit of {nofile}",
                        2 * connections
                    )
                } else {
                    "the scenario kills or restarts the server".to_owned()
                };
                let mut child = ChildServer::new(dir.path(), &cfg)?;
                child.start()?;
                let addr = child.addr;
                tracing::info!(%addr, why, "server runs as a child process");
                (
                    ServerUnderTest::Child(Arc::new(parking_lot::Mutex::new(child))),
                    Some(addr),
                    format!("child process ({why})"),
                )
            }
        }
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(lockstep_loadgen::stats::THREAD_PREFIX)
        .enable_all()
        .build()
        .context("starting the async runtime")?;

    // Optional fault proxy in front of the server.
    let bug = match &args.inject {
        Some(b) => Some(Bug::from_str(b)?),
        None => None,
    };
    let server_url = match (&args.target, server_addr) {
        (Some(t), _) => t.clone(),
        (None, Some(a)) => format!("ws://{a}/ws"),
        (None, None) => unreachable!("a run without --target starts a server"),
    };
    let mitm = match bug {
        Some(bug) => {
            let target = lockstep_loadgen::run::parse_target(&server_url)?.addr;
            Some(runtime.block_on(Mitm::start(target, bug))?)
        }
        None => None,
    };
    let client_url = match &mitm {
        Some(m) => format!("ws://{}/ws", m.addr),
        None => server_url.clone(),
    };

    // The checker, fed live.
    let (live_tx, live_rx) = sync_channel::<Live>(64);
    let checker = std::thread::Builder::new()
        .name("lockstep-checker".into())
        .spawn(move || {
            let mut checker: Option<Checker> = None;
            let mut error = None;
            for msg in live_rx {
                match msg {
                    Live::Header(h) => checker = Some(Checker::new(&h)),
                    Live::Block(raw) => {
                        if let Some(c) = checker.as_mut()
                            && let Err(e) = c.observe_block(&raw)
                        {
                            error = Some(e.to_string());
                        }
                    }
                    Live::End(t) => return (checker.map(|c| c.finish(Some(t))), error),
                }
            }
            (checker.map(|c| c.finish(None)), error)
        })?;

    // Server faults, timed from the start of the load phase.
    let (phase_tx, mut phase_rx) = tokio::sync::watch::channel::<Option<u64>>(None);
    let (rec_tx, rec_rx) = tokio::sync::oneshot::channel::<Arc<Recorder>>();
    let fault_task = match (&server, scenario.server_faults.is_empty()) {
        (ServerUnderTest::Child(child), false) => {
            let child = child.clone();
            let faults = scenario.server_faults.clone();
            let grace = Duration::from_millis(
                server_config(&scenario, &args.scenario)?.shutdown_grace_ms + 5000,
            );
            Some(runtime.spawn(async move {
                let Ok(recorder) = rec_rx.await else {
                    return Ok(());
                };
                let load_start = loop {
                    if let Some(t) = *phase_rx.borrow() {
                        break t;
                    }
                    if phase_rx.changed().await.is_err() {
                        return Ok(());
                    }
                };
                let mut faults = faults;
                faults.sort_by_key(|f| f.at);
                for f in faults {
                    let due = load_start + f.at.as_us();
                    let now = recorder.now_us();
                    if due > now {
                        tokio::time::sleep(Duration::from_micros(due - now)).await;
                    }
                    let (kind, detail) = match f.kind {
                        ServerFaultKind::Kill => {
                            ("server_kill", "SIGKILL, restart on the same database")
                        }
                        ServerFaultKind::Restart => {
                            ("server_restart", "SIGTERM (graceful), restart")
                        }
                    };
                    record_server_fault(&recorder, kind, detail);
                    let c = child.clone();
                    let down = f.down.0;
                    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                        let mut c = c.lock();
                        let stopped = match f.kind {
                            ServerFaultKind::Kill => {
                                c.kill();
                                Ok(())
                            }
                            ServerFaultKind::Restart => c.terminate(grace),
                        };
                        // Restart even when the shutdown was not graceful, so the rest
                        // of the run has a server; the failure still ends the run as
                        // not run as specified.
                        std::thread::sleep(down);
                        c.start()?;
                        stopped
                    })
                    .await??;
                    record_server_fault(&recorder, "server_up", "restarted");
                }
                Ok::<_, anyhow::Error>(())
            }))
        }
        _ => None,
    };

    let summary = runtime.block_on(lockstep_loadgen::run::run(
        scenario,
        LoadOptions {
            target: client_url,
            record: args.record.clone(),
            live: Some(live_tx),
            progress: !args.no_progress,
            scenario_path: Some(args.scenario.display().to_string()),
            workers,
            on_phase: Some(Box::new(move |phase, t_us| {
                if phase == Phase::Load {
                    let _ = phase_tx.send(Some(t_us));
                }
            })),
            recorder_out: Some(rec_tx),
            final_read_target: mitm.as_ref().map(|_| server_url.clone()),
            room_tag: None,
        },
    ));
    if let Some(t) = fault_task {
        match runtime.block_on(t) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => unrun.push(format!("a server fault failed: {e:#}")),
            Err(e) => unrun.push(format!("the server fault task failed: {e}")),
        }
    }
    let injected = mitm
        .as_ref()
        .map(|m| format!("{} ({} frames)", m.bug(), m.injected()));
    drop(mitm);
    match server {
        ServerUnderTest::InProcess(mut s) => s.stop(),
        ServerUnderTest::Child(c) => {
            if let Err(e) = c.lock().terminate(Duration::from_secs(15)) {
                warnings.push(format!("stopping the server at the end: {e:#}"));
            }
        }
        ServerUnderTest::External => {}
    }
    let summary = summary?;
    let (report, check_error) = checker
        .join()
        .map_err(|_| anyhow::anyhow!("the checker thread panicked"))?;
    let Some(report) = report else {
        bail!("the checker received no recording");
    };
    if let Some(e) = check_error {
        unrun.push(format!("the live recording was unreadable: {e}"));
    }

    if let Some(path) = &args.junit {
        std::fs::write(path, render::junit(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(
            path,
            lockstep_checker::html::render(&report, Some(&serde_json::to_value(&summary)?)),
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    #[allow(clippy::print_stdout)]
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&RunJson {
                schema: "lockstep.run/1",
                check: &report,
                load: &summary,
                server: &server_kind,
                injected: injected.clone(),
            })?
        );
    } else {
        crate::load_cmd::print_summary(&summary, false)?;
        println!("  server: {server_kind}");
        if let Some(i) = &injected {
            println!("  fault proxy: {i}");
        }
        for w in &warnings {
            println!("  warning: {w}");
        }
        println!();
        print!("{}", render::text(&report));
    }
    if args.json {
        for w in &warnings {
            eprintln!("lockstep: warning: {w}");
        }
    }
    // The run did not go as the scenario said (a server fault failed, the live recording
    // broke): whatever the checker saw, the result is unknown, exit 2, as for a
    // truncated recording in `lockstep check`.
    for why in &unrun {
        eprintln!("lockstep: could not run as specified: {why}");
    }
    if !unrun.is_empty() {
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::from(report.exit_code()))
}

//! Argument parsing and the `serve` command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use lockstep_server::{Config, SyncMode};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "lockstep",
    version,
    about = "WebSocket chat server with per-room total order, plus the tools that prove it"
)]
struct Cli {
    /// Log format on stderr (level via RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "LOCKSTEP_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the chat server.
    Serve(ServeArgs),
    /// Generate load from a scenario against a running server, recording what every
    /// simulated client saw.
    Load(crate::load_cmd::LoadArgs),
    /// The main job: start a server, run a scenario's load against it with live
    /// checking, report, and exit 0 (valid), 1 (anomalies or failed thresholds) or 2.
    Run(crate::run_cmd::RunArgs),
    /// Benchmarks: `lockstep bench fanout` finds the sustainable fan-out rate per room size.
    Bench(crate::bench_cmd::BenchArgs),
    /// Check a recording against the protocol's guarantees.
    Check(crate::check_cmd::CheckArgs),
}

/// Flags override environment variables, which override the config file, which
/// overrides the built-in defaults.
#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file (keys as in `--print-config`).
    #[arg(long, env = "LOCKSTEP_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "LOCKSTEP_LISTEN")]
    listen: Option<SocketAddr>,
    /// SQLite database file [default: ./lockstep.db].
    #[arg(long, env = "LOCKSTEP_DB")]
    db: Option<PathBuf>,
    /// Durability of each commit: normal (survives a process crash) or full (also an OS
    /// crash or power loss) [default: normal].
    #[arg(long, env = "LOCKSTEP_SYNC")]
    sync: Option<SyncMode>,
    /// Name of this node, reported in `welcome` [default: n1].
    #[arg(long, env = "LOCKSTEP_NODE_ID")]
    node_id: Option<String>,
    /// Enables JWT auth (HS256) with this secret.
    #[arg(long, env = "LOCKSTEP_AUTH_SECRET", hide_env_values = true)]
    auth_secret: Option<String>,
    /// Server ping period in milliseconds [default: 15000].
    #[arg(long, env = "LOCKSTEP_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    /// Longest text a send may carry [default: 4096].
    #[arg(long, env = "LOCKSTEP_MAX_TEXT_BYTES")]
    max_text_bytes: Option<usize>,
    /// Most sockets held at once [default: 19000].
    #[arg(long, env = "LOCKSTEP_CONNECTIONS_MAX")]
    connections_max: Option<usize>,
    /// Print the merged configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

pub fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // The server logs its lifecycle at info; the tools print reports, so their logs
    // default to warnings (RUST_LOG overrides both).
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    init_logging(cli.log_format, default_level);
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => crate::check_cmd::run(args),
        Command::Load(args) => crate::load_cmd::run(args),
        Command::Run(args) => crate::run_cmd::run(args),
        Command::Bench(args) => crate::bench_cmd::run(args),
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Reads a TOML config file; errors name the file, line and key.
fn load_config_file(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn server_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => load_config_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.listen {
        cfg.listen = v;
    }
    if let Some(v) = &args.db {
        cfg.db = v.clone();
    }
    if let Some(v) = args.sync {
        cfg.sync = v;
    }
    if let Some(v) = &args.node_id {
        cfg.node_id = v.clone();
    }
    if let Some(v) = &args.auth_secret {
        cfg.auth_secret = Some(v.clone());
    }
    if let Some(v) = args.heartbeat_ms {
        cfg.heartbeat_ms = v;
    }
    if let Some(v) = args.max_text_bytes {
        cfg.max_text_bytes = v;
    }
    if let Some(v) = args.connections_max {
        cfg.connections_max = v;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Raises the soft open-files limit to the hard one; returns the limit now in force.
pub fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let cfg = server_config(&args)?;
    if args.print_config {
        let mut shown = cfg.clone();
        if shown.auth_secret.is_some() {
            shown.auth_secret = Some("<redacted>".into());
        }
        #[allow(clippy::print_stdout)]
        {
            print!("{}", toml::to_string_pretty(&shown)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let nofile = raise_nofile();
    // Each connection is one socket; keep some descriptors for the database and listener.
    if (cfg.connections_max as u64) + 64 > nofile {
        tracing::warn!(
            connections_max = cfg.connections_max,
            nofile,
            "connections_max is above what this process can open; expect refused connections"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = lockstep_server::bind(cfg.listen)?;
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; shutting down gracefully");
            on_signal.cancel();
        });
        lockstep_server::run(cfg, listener, shutdown).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

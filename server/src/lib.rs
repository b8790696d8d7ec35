//! The Lockstep chat server: WebSocket rooms with one gap-free sequence per room.
//!
//! Shape (one file per concept):
//! - [`listener`](crate::listener) accepts sockets and serves HTTP; [`http`](crate::http)
//!   routes requests and upgrades `/ws`.
//! - [`connection`](crate::connection) is one WebSocket's socket loop;
//!   [`session`](crate::session) is what each client event does.
//! - [`sequencer`](crate::sequencer) is the only place a seq grows: group commit, then
//!   publish, then ack.
//! - [`room`](crate::room) holds a room's head, its ring of recent frames and its
//!   members; [`hub`](crate::hub) is the registry of rooms in memory.
//! - [`resume`](crate::resume) decides where a join starts; [`store`](crate::store) is
//!   durable storage (SQLite).
//!
//! Entry points: [`run`] (serve on a listener until a token is cancelled) and
//! [`Server::start`] (bind, serve in the background, return a handle).

pub mod auth;
pub mod clock;
pub mod config;
mod connection;
mod http;
pub mod hub;
mod listener;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod ratelimit;
pub mod reads;
pub mod resume;
pub mod room;
pub mod sequencer;
mod session;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, SyncMode};

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::reads::ReadPool;
use crate::room::{RingBudget, RingLimits};
use crate::sequencer::Sequencer;
use crate::store::{StoreError, StoreReader, sqlite};

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// How often idle rooms are looked for, and how long a room must be idle to go.
const ROOM_SWEEP_EVERY: Duration = Duration::from_secs(30);
const ROOM_IDLE_EVICT_MS: u64 = 60_000;

/// A server whose storage is open and whose sequencer runs, not yet serving.
struct Prepared {
    node: Arc<Node>,
    sequencer_thread: std::thread::JoinHandle<()>,
}

fn prepare(cfg: Config, shutdown: CancellationToken) -> Result<Prepared, ServerError> {
    cfg.validate()?;
    let metrics = Arc::new(Metrics::new());
    let writer = sqlite::open_writer(&cfg.db, cfg.sync)?;
    let db = cfg.db.clone();
    let reads = Arc::new(ReadPool::new(cfg.read_pool_size, move || {
        Ok(Box::new(sqlite::open_reader(&db)?) as Box<dyn StoreReader>)
    })?);
    let (sequencer, sequencer_thread) = Sequencer::start(
        Box::new(writer),
        cfg.sequencer_queue_max,
        cfg.commit_batch_max,
        metrics.clone(),
    );
    let hub = Hub::new(
        reads.clone(),
        RingLimits {
            messages_max: cfg.ring_messages_max,
            bytes_max: cfg.ring_bytes_max,
            budget: Arc::new(RingBudget {
                used: std::sync::atomic::AtomicUsize::new(0),
                max: cfg.ring_bytes_total_max,
            }),
        },
        cfg.rooms_loaded_max,
        metrics.clone(),
    );
    let node = Arc::new(Node::new(
        cfg,
        hub,
        sequencer,
        reads,
        metrics,
        shutdown,
        TaskTracker::new(),
    ));
    Ok(Prepared {
        node,
        sequencer_thread,
    })
}

impl Prepared {
    async fn serve(self, listener: TcpListener) -> Result<(), ServerError> {
        let node = self.node;
        tracing::info!(
            addr = %listener.local_addr()?,
            db = %node.cfg.db.display(),
            sync = ?node.cfg.sync,
            node = %node.cfg.node_id,
            auth = node.auth.is_some(),
            "lockstep serving"
        );
        let sweeper = {
            let node = node.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(ROOM_SWEEP_EVERY);
                loop {
                    tokio::select! {
                        _ = node.shutdown.cancelled() => break,
                        _ = every.tick() => { node.hub.sweep(ROOM_IDLE_EVICT_MS); }
                    }
                }
            })
        };
        listener::accept_loop(listener, node.clone(), http::router(node.clone())).await;

        // Shutdown: connections deliver the acks of accepted sends, send 1001 and end;
        // then the sequencer finishes its queue and the database is closed.
        tracing::info!(
            connections = node.tracker.len(),
            "shutting down: draining connections"
        );
        node.tracker.close();
        let grace = Duration::from_millis(node.cfg.shutdown_grace_ms) + Duration::from_secs(3);
        if tokio::time::timeout(grace, node.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = node.tracker.len(),
                "connections still open after the grace period; closing anyway"
            );
        }
        let _ = sweeper.await;
        node.sequencer.stop().await;
        let thread = self.sequencer_thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Serves on `listener` until `shutdown` is cancelled, then drains gracefully.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    prepare(cfg, shutdown)?.serve(listener).await
}

/// Pending connections the kernel may queue before `accept` (clamped by
/// `net.core.somaxconn`). tokio's default of 1024 overflows when thousands of clients
/// connect at once, and an overflowing accept queue drops handshakes.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listening socket with `SO_REUSEADDR` and a deep accept queue.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let bind_err = |source| ServerError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(bind_err)?;
    socket.set_reuseaddr(true).map_err(bind_err)?;
    socket.bind(addr).map_err(bind_err)?;
    socket.listen(LISTEN_BACKLOG).map_err(bind_err)
}

/// A server running in the background of the current runtime.
pub struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl Server {
    /// Opens storage, binds `cfg.listen` (port 0 picks a free port) and serves.
    pub async fn start(cfg: Config) -> Result<Server, ServerError> {
        let shutdown = CancellationToken::new();
        let prepared = prepare(cfg.clone(), shutdown.clone())?;
        let listener = bind(cfg.listen)?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(prepared.serve(listener));
        Ok(Server {
            addr,
            shutdown,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Gracefully shuts down and waits until the server has stopped.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.shutdown.cancel();
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Io(std::io::Error::other(e))),
        }
    }
}

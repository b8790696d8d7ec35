//! The node: what every connection and request shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::reads::ReadPool;
use crate::sequencer::Sequencer;

pub struct Node {
    pub cfg: Config,
    pub hub: Hub,
    pub sequencer: Sequencer,
    pub reads: Arc<ReadPool>,
    pub metrics: Arc<Metrics>,
    pub auth: Option<Auth>,
    /// One permit per open socket (`connections_max`).
    pub sockets: Arc<Semaphore>,
    /// Cancelled when the server begins shutting down.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them (axum's graceful shutdown
    /// does not track upgraded WebSocket tasks).
    pub tracker: TaskTracker,
    conn_seq: AtomicU64,
    anon_seq: AtomicU64,
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Config,
        hub: Hub,
        sequencer: Sequencer,
        reads: Arc<ReadPool>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        let auth = cfg.auth_secret.as_deref().map(Auth::new);
        let sockets = Arc::new(Semaphore::new(cfg.connections_max));
        Self {
            cfg,
            hub,
            sequencer,
            reads,
            metrics,
            auth,
            sockets,
            shutdown,
            tracker,
            conn_seq: AtomicU64::new(0),
            anon_seq: AtomicU64::new(0),
        }
    }

    /// A new connection number (shown as `c-<hex>` in `welcome`).
    pub fn next_conn(&self) -> u64 {
        self.conn_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A new anonymous user name.
    pub fn next_anon(&self) -> String {
        format!("anon-{}", self.anon_seq.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

//! Server configuration: every tunable limit in one place, with its reason and what
//! happens at the limit.
//!
//! Precedence (merged by the binary): built-in defaults, then a TOML file
//! (`--config`), then `LOCKSTEP_*` environment variables, then command-line flags.
//! `lockstep serve --print-config` prints the merged result.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// SQLite `synchronous` setting for the WAL.
///
/// Both survive a crash of the server *process* once a transaction committed (the WAL
/// write is in the OS page cache). `Full` also survives an OS crash or power loss, at the
/// cost of one `fsync` per group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    #[default]
    Normal,
    Full,
}

impl std::str::FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "normal" => Ok(SyncMode::Normal),
            "full" => Ok(SyncMode::Full),
            other => Err(format!(
                "unknown sync mode {other:?}: expected normal or full"
            )),
        }
    }
}

impl SyncMode {
    pub fn pragma(self) -> &'static str {
        match self {
            SyncMode::Normal => "NORMAL",
            SyncMode::Full => "FULL",
        }
    }
}

/// Everything the server can be told. Field names are the TOML keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// SQLite database file (created if missing).
    pub db: PathBuf,
    /// Durability of each group commit.
    pub sync: SyncMode,
    /// Name of this node, reported in `welcome`.
    pub node_id: String,
    /// HS256 secret; when set, every connection and `/rooms` request needs a JWT.
    pub auth_secret: Option<String>,

    /// Server ping period; a connection silent for 3 periods is closed.
    pub heartbeat_ms: u64,
    /// Longest `text` a `send` may carry; longer gets `too_long` (connection stays open).
    pub max_text_bytes: usize,
    /// Largest WebSocket message accepted. Above it the connection is closed with 1009.
    /// It is far above `max_text_bytes` so that an over-long text (even fully
    /// JSON-escaped, up to 6 bytes per byte) is reported as `too_long`, not a close.
    pub frame_bytes_max: usize,

    /// Sockets held at once (WebSocket and HTTP). At the limit new connections get
    /// HTTP 503 with `Retry-After` and are closed.
    pub connections_max: usize,
    /// Rooms one connection may be joined to; a further `join` gets `bad_request`.
    pub rooms_per_connection_max: usize,
    /// Sends accepted but not yet acked, per connection. At the limit the server stops
    /// reading that socket until acks go out (TCP back-pressure; nothing is refused).
    pub inflight_sends_per_connection_max: u32,
    /// Sustained `send` rate per connection; above it `rate_limited` with
    /// `retry_after_ms` (the send is not accepted; retrying it later is safe).
    pub send_rate_per_sec: f64,
    /// Burst of sends allowed above the sustained rate.
    pub send_burst: u32,
    /// Sustained rate of all other client events per connection (typing, read, join,
    /// history, ping...); above it `rate_limited`.
    pub event_rate_per_sec: f64,
    /// Burst of other events above the sustained rate.
    pub event_burst: u32,
    /// Refusals for rate per minute after which a client is closed with 1008 (abuse).
    pub rate_limited_per_minute_max: u32,

    /// Queued control frames (acks, errors, typing, presence, read) per connection.
    /// Acks and errors are bounded by `inflight_sends_per_connection_max` and never
    /// dropped; at this limit ephemeral frames (typing, presence, read notifications)
    /// are dropped and counted in `lockstep_outbox_dropped_total`.
    pub outbox_frames_max: usize,
    /// Bytes a connection gathers into its write buffer before writing. A connection
    /// whose socket does not drain stops taking messages at this point; they wait in the
    /// room log or in storage (its memory stays bounded; see `ring_*`).
    pub write_buffer_bytes_max: usize,
    /// Recent messages kept in memory per room (already encoded as frames) so live
    /// delivery and short catch-ups never touch storage. A reader further behind is
    /// caught up from storage, page by page.
    pub ring_messages_max: usize,
    /// Byte bound of the same per-room ring.
    pub ring_bytes_max: usize,
    /// Bound of all rooms' rings together. Above it, rings shrink to a sixteenth of
    /// `ring_bytes_max` as they are written (more catch-ups read from storage).
    pub ring_bytes_total_max: usize,
    /// Messages read from storage per catch-up page.
    pub catchup_page_messages: usize,
    /// Rooms held in memory. Idle rooms (no members) are evicted first; when every
    /// loaded room is busy a `join` of a new room gets `overloaded`.
    pub rooms_loaded_max: usize,
    /// Rooms with more members than this do not get per-user `presence` events (every
    /// join would otherwise cost a frame to every member, quadratic in room size);
    /// `GET /rooms/{room}/presence` still lists them.
    pub presence_events_members_max: usize,

    /// Operations (sends, read marks) one group commit may hold.
    pub commit_batch_max: usize,
    /// Operations waiting for the sequencer. When full, connections wait to submit
    /// (back-pressure) rather than fail.
    pub sequencer_queue_max: usize,
    /// SQLite read connections for history, catch-up and HTTP reads.
    pub read_pool_size: usize,
    /// How long a graceful shutdown waits for in-flight sends to be acked and buffers to
    /// drain before connections are closed with 1001.
    pub shutdown_grace_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            db: PathBuf::from("lockstep.db"),
            sync: SyncMode::Normal,
            node_id: "n1".into(),
            auth_secret: None,
            heartbeat_ms: lockstep_protocol::limits::HEARTBEAT_MS_DEFAULT,
            max_text_bytes: lockstep_protocol::limits::TEXT_BYTES_MAX_DEFAULT,
            frame_bytes_max: 64 * 1024,
            connections_max: 19_000,
            rooms_per_connection_max: 256,
            inflight_sends_per_connection_max: 256,
            send_rate_per_sec: 500.0,
            send_burst: 1000,
            event_rate_per_sec: 500.0,
            event_burst: 1000,
            rate_limited_per_minute_max: 6000,
            outbox_frames_max: 1024,
            write_buffer_bytes_max: 256 * 1024,
            ring_messages_max: 1024,
            ring_bytes_max: 512 * 1024,
            ring_bytes_total_max: 256 * 1024 * 1024,
            catchup_page_messages: 256,
            rooms_loaded_max: 100_000,
            presence_events_members_max: 1000,
            commit_batch_max: 4096,
            sequencer_queue_max: 65_536,
            read_pool_size: 4,
            shutdown_grace_ms: 10_000,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl Config {
    /// Checks values that would make the server misbehave rather than fail loudly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason: &str| {
            Err(ConfigError {
                field,
                reason: reason.to_owned(),
            })
        };
        if !(100..=86_400_000).contains(&self.heartbeat_ms) {
            return err("heartbeat_ms", "must be in 100..=86400000 (1 day)");
        }
        if self.shutdown_grace_ms > 3_600_000 {
            return err("shutdown_grace_ms", "must be at most 3600000 (1 hour)");
        }
        if self.max_text_bytes == 0 {
            return err("max_text_bytes", "must be positive");
        }
        if self.frame_bytes_max < self.max_text_bytes * 6 + 1024 {
            return err(
                "frame_bytes_max",
                "must be at least 6 × max_text_bytes + 1024 so over-long texts get too_long",
            );
        }
        if self.connections_max == 0 {
            return err("connections_max", "must be positive");
        }
        if self.inflight_sends_per_connection_max == 0 {
            return err("inflight_sends_per_connection_max", "must be positive");
        }
        if self.outbox_frames_max < self.inflight_sends_per_connection_max as usize {
            return err(
                "outbox_frames_max",
                "must be at least inflight_sends_per_connection_max",
            );
        }
        for (field, rate) in [
            ("send_rate_per_sec", self.send_rate_per_sec),
            ("event_rate_per_sec", self.event_rate_per_sec),
        ] {
            if !(0.001..=1e12).contains(&rate) {
                return err(field, "must be in 0.001..=1e12 per second");
            }
        }
        if self.ring_messages_max == 0 || self.ring_bytes_max == 0 {
            return err("ring_messages_max", "ring bounds must be positive");
        }
        if self.catchup_page_messages == 0 || self.catchup_page_messages > 10_000 {
            return err("catchup_page_messages", "must be in 1..=10000");
        }
        if self.commit_batch_max == 0 || self.sequencer_queue_max == 0 {
            return err("commit_batch_max", "must be positive");
        }
        if self.read_pool_size == 0 || self.read_pool_size > 64 {
            return err("read_pool_size", "must be in 1..=64");
        }
        if self.write_buffer_bytes_max < 16 * 1024 {
            return err("write_buffer_bytes_max", "must be at least 16 KiB");
        }
        if self.node_id.is_empty() || self.node_id.len() > 64 {
            return err("node_id", "must be 1..=64 bytes");
        }
        Ok(())
    }
}

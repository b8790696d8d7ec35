//! Durable storage of room histories.
//!
//! # Contract (every engine)
//!
//! - Messages are keyed by (room, seq) and unique by (room, id). Inserting a second
//!   message with an existing (room, id) stores nothing and reports the original seq and
//!   ts: that is how `send` is idempotent across retries and restarts.
//! - Writes happen inside a transaction ([`StoreWriter::begin`] .. [`StoreWriter::commit`])
//!   that is atomic: after `commit` returns `Ok` every write of it survives a crash of
//!   the server process; after an error none of them is visible.
//! - A reader sees only committed writes. The server publishes a seq to clients only
//!   after the commit holding it returned, so a seq a client has seen is always readable.
//! - Seqs are chosen by the caller (the sequencer); the store refuses to store two
//!   messages at one (room, seq) rather than overwrite one.
//!
//! The writer is used by exactly one thread (the sequencer); readers are pooled.

pub mod sqlite;

use lockstep_protocol::{Epoch, MessageId, RoomName, Seq, UserName};

/// Storage's own key for a room (smaller than its name in every message row).
pub type RoomId = i64;

/// What storage knows of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    pub rid: RoomId,
    pub epoch: Epoch,
    /// Lowest stored seq (1 for an empty room).
    pub first: Seq,
    /// Highest stored seq (0 for an empty room).
    pub head: Seq,
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: Seq,
    pub id: MessageId,
    pub from: UserName,
    pub text: String,
    pub ts: u64,
}

/// The most message bytes one history answer (WebSocket `history` or HTTP page) carries.
/// `limit` counts messages, and 500 messages of 4 KiB text can encode to 12 MiB; beyond
/// this the answer holds fewer messages than asked (a client pages on from the last one
/// it got, and `first`/`head` tell it whether more exist).
pub const HISTORY_REPLY_BYTES_MAX: usize = 1024 * 1024;

/// Trims `rows` (ascending) to about [`HISTORY_REPLY_BYTES_MAX`], keeping at least one.
/// `keep_newest` drops from the old end (a `before` page), else from the new end (an
/// `after` page).
pub fn fit_reply(rows: &mut Vec<StoredMessage>, keep_newest: bool) {
    let cost = |m: &StoredMessage| m.text.len() + m.id.as_str().len() + m.from.as_str().len() + 96;
    let mut total = 0;
    let mut keep = 0;
    let order: Box<dyn Iterator<Item = &StoredMessage>> = if keep_newest {
        Box::new(rows.iter().rev())
    } else {
        Box::new(rows.iter())
    };
    for m in order {
        total += cost(m);
        if keep > 0 && total > HISTORY_REPLY_BYTES_MAX {
            break;
        }
        keep += 1;
    }
    if keep_newest {
        rows.drain(..rows.len() - keep);
    } else {
        rows.truncate(keep);
    }
}

/// Result of inserting a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Stored at the seq the caller chose.
    New,
    /// (room, id) was already stored, at this seq and ts; nothing was written.
    Existing { seq: Seq, ts: u64 },
}

/// A storage failure. The server answers the affected requests with `internal`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("storage is corrupt: {0}")]
    Corrupt(String),
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
}

/// The write side, owned by the sequencer thread.
pub trait StoreWriter: Send + 'static {
    fn begin(&mut self) -> Result<(), StoreError>;
    /// The room's id, creating its record with `epoch` if it has none yet.
    fn ensure_room(&mut self, room: &RoomName, epoch: &Epoch) -> Result<RoomId, StoreError>;
    fn insert_message(
        &mut self,
        rid: RoomId,
        seq: Seq,
        id: &MessageId,
        from: &UserName,
        text: &str,
        ts: u64,
    ) -> Result<Inserted, StoreError>;
    /// Raises the user's read mark to `seq` (never lowers it); returns the stored mark.
    fn raise_read_mark(
        &mut self,
        rid: RoomId,
        user: &UserName,
        seq: Seq,
    ) -> Result<Seq, StoreError>;
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Discards the open transaction, if any.
    fn rollback(&mut self);
}

/// The read side; cheap to call from a blocking thread pool.
pub trait StoreReader: Send + 'static {
    fn load_room(&mut self, room: &RoomName) -> Result<Option<RoomRecord>, StoreError>;
    /// Messages with `after < seq <= upto`, ascending, at most `limit`.
    fn messages_after(
        &mut self,
        rid: RoomId,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// The `limit` messages just below `before`, ascending.
    fn messages_before(
        &mut self,
        rid: RoomId,
        before: Seq,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    fn read_mark(&mut self, rid: RoomId, user: &UserName) -> Result<Option<Seq>, StoreError>;
    /// Cheap liveness probe for `/readyz`.
    fn check(&mut self) -> Result<(), StoreError>;
}

#[cfg(test)]
pub(crate) mod conformance;

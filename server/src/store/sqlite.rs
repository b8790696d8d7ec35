//! The embedded engine: SQLite in WAL mode.
//!
//! One write connection (the sequencer's) and a pool of read connections; WAL lets
//! readers run beside the writer without blocking it. Rooms get a small integer id so
//! message rows and their indexes stay compact. Messages live in a `WITHOUT ROWID` table
//! clustered by (rid, seq), so a replay or catch-up is one sequential range scan.

use std::path::Path;
use std::time::Duration;

use lockstep_protocol::{Epoch, MessageId, RoomName, Seq, UserName};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{Inserted, RoomId, RoomRecord, StoreError, StoreReader, StoreWriter, StoredMessage};
use crate::config::SyncMode;

/// Bumped when the schema changes incompatibly.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rooms (
    rid        INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    epoch      TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    rid    INTEGER NOT NULL,
    seq    INTEGER NOT NULL,
    id     TEXT NOT NULL,
    sender TEXT NOT NULL,
    text   TEXT NOT NULL,
    ts     INTEGER NOT NULL,
    PRIMARY KEY (rid, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_id ON messages (rid, id);
CREATE TABLE IF NOT EXISTS read_marks (
    rid  INTEGER NOT NULL,
    user TEXT NOT NULL,
    seq  INTEGER NOT NULL,
    PRIMARY KEY (rid, user)
) WITHOUT ROWID;
";

/// How long a connection waits on a lock held by another (checkpoints, mostly).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn open(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })
}

/// Opens (creating if needed) the database and returns its write connection.
pub fn open_writer(path: &Path, sync: SyncMode) -> Result<SqliteWriter, StoreError> {
    let conn = open(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!(
            "could not switch {} to WAL (journal_mode is {mode})",
            path.display()
        )));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous={}; PRAGMA temp_store=MEMORY; PRAGMA cache_size=-16384;",
        sync.pragma()
    ))?;
    conn.execute_batch(SCHEMA)?;
    let version: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key='schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match version {
        None => {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION.to_string()],
            )?;
        }
        Some(v) if v == SCHEMA_VERSION.to_string() => {}
        Some(v) => {
            return Err(StoreError::Corrupt(format!(
                "{} has schema version {v}; this build reads version {SCHEMA_VERSION}",
                path.display()
            )));
        }
    }
    Ok(SqliteWriter {
        conn,
        in_txn: false,
    })
}

/// Opens a read-only connection to a database [`open_writer`] created.
pub fn open_reader(path: &Path) -> Result<SqliteReader, StoreError> {
    let conn = open(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch("PRAGMA cache_size=-8192;")?;
    Ok(SqliteReader { conn })
}

/// The sequencer's connection.
pub struct SqliteWriter {
    conn: Connection,
    in_txn: bool,
}

impl StoreWriter for SqliteWriter {
    fn begin(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.in_txn = true;
        Ok(())
    }

    fn ensure_room(&mut self, room: &RoomName, epoch: &Epoch) -> Result<RoomId, StoreError> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO rooms (name, epoch, created_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO NOTHING",
        )?;
        st.execute(params![
            room.as_str(),
            epoch.as_str(),
            crate::clock::now_ms() as i64
        ])?;
        let mut st = self
            .conn
            .prepare_cached("SELECT rid, epoch FROM rooms WHERE name = ?1")?;
        let (rid, stored): (RoomId, String) =
            st.query_row([room.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if stored != epoch.as_str() {
            return Err(StoreError::Corrupt(format!(
                "room {room} is stored with epoch {stored}, but the server holds {epoch}"
            )));
        }
        Ok(rid)
    }

    fn insert_message(
        &mut self,
        rid: RoomId,
        seq: Seq,
        id: &MessageId,
        from: &UserName,
        text: &str,
        ts: u64,
    ) -> Result<Inserted, StoreError> {
        // Only the (rid, id) conflict is expected; a (rid, seq) conflict is a sequencer bug
        // and fails the whole batch instead of overwriting a stored message.
        let mut st = self.conn.prepare_cached(
            "INSERT INTO messages (rid, seq, id, sender, text, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (rid, id) DO NOTHING",
        )?;
        let changed = st.execute(params![
            rid,
            seq as i64,
            id.as_str(),
            from.as_str(),
            text,
            ts as i64
        ])?;
        if changed == 1 {
            return Ok(Inserted::New);
        }
        let mut st = self
            .conn
            .prepare_cached("SELECT seq, ts FROM messages WHERE rid = ?1 AND id = ?2")?;
        let (seq, ts): (i64, i64) =
            st.query_row(params![rid, id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(Inserted::Existing {
            seq: seq as Seq,
            ts: ts as u64,
        })
    }

    fn raise_read_mark(
        &mut self,
        rid: RoomId,
        user: &UserName,
        seq: Seq,
    ) -> Result<Seq, StoreError> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO read_marks (rid, user, seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (rid, user) DO UPDATE SET seq = max(seq, excluded.seq)
             RETURNING seq",
        )?;
        let stored: i64 = st.query_row(params![rid, user.as_str(), seq as i64], |r| r.get(0))?;
        Ok(stored as Seq)
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT")?;
        self.in_txn = false;
        Ok(())
    }

    fn rollback(&mut self) {
        if (self.in_txn || !self.conn.is_autocommit())
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %e, "rollback failed");
        }
        self.in_txn = false;
    }
}

/// A pooled read connection.
pub struct SqliteReader {
    conn: Connection,
}

fn row_to_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_message(
    (seq, id, from, text, ts): (i64, String, String, String, i64),
) -> Result<StoredMessage, StoreError> {
    Ok(StoredMessage {
        seq: seq as Seq,
        id: MessageId::new(id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        from: UserName::new(from).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        text,
        ts: ts as u64,
    })
}

impl StoreReader for SqliteReader {
    fn load_room(&mut self, room: &RoomName) -> Result<Option<RoomRecord>, StoreError> {
        let row: Option<(RoomId, String)> = self
            .conn
            .prepare_cached("SELECT rid, epoch FROM rooms WHERE name = ?1")?
            .query_row([room.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((rid, epoch)) = row else {
            return Ok(None);
        };
        // Two index seeks: `min(seq), max(seq)` in one query scans the room's rows.
        let min: Option<i64> = self
            .conn
            .prepare_cached("SELECT seq FROM messages WHERE rid = ?1 ORDER BY seq ASC LIMIT 1")?
            .query_row([rid], |r| r.get(0))
            .optional()?;
        let max: Option<i64> = self
            .conn
            .prepare_cached("SELECT seq FROM messages WHERE rid = ?1 ORDER BY seq DESC LIMIT 1")?
            .query_row([rid], |r| r.get(0))
            .optional()?;
        let epoch = Epoch::new(epoch).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some(RoomRecord {
            rid,
            epoch,
            first: min.unwrap_or(1) as Seq,
            head: max.unwrap_or(0) as Seq,
        }))
    }

    fn messages_after(
        &mut self,
        rid: RoomId,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT seq, id, sender, text, ts FROM messages
             WHERE rid = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4",
        )?;
        let rows = st.query_map(
            params![
                rid,
                after as i64,
                upto.min(i64::MAX as u64) as i64,
                limit as i64
            ],
            row_to_message,
        )?;
        rows.map(|r| to_message(r?)).collect()
    }

    fn messages_before(
        &mut self,
        rid: RoomId,
        before: Seq,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT seq, id, sender, text, ts FROM messages
             WHERE rid = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![rid, before.min(i64::MAX as u64) as i64, limit as i64],
            row_to_message,
        )?;
        let mut out = rows
            .map(|r| to_message(r?))
            .collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    fn read_mark(&mut self, rid: RoomId, user: &UserName) -> Result<Option<Seq>, StoreError> {
        let seq: Option<i64> = self
            .conn
            .prepare_cached("SELECT seq FROM read_marks WHERE rid = ?1 AND user = ?2")?
            .query_row(params![rid, user.as_str()], |r| r.get(0))
            .optional()?;
        Ok(seq.map(|s| s as Seq))
    }

    fn check(&mut self) -> Result<(), StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM meta", [], |r| r.get::<_, i64>(0))?;
        Ok(())
    }
}

//! Recordings: what every simulated client saw and did, as a compact streaming file
//! (`.lsr`) that the load generator writes and the checker reads.
//!
//! It lives here, beside the wire types, because it is the contract between the load
//! generator and the checker: the checker depends on nothing else, so it knows nothing
//! of how the load generator (or the server) works.
//!
//! # Format (version 1)
//!
//! ```text
//! file   := magic header block* end
//! magic  := "LOCKSTEP-LSR" u16le(version)
//! header := u32le(len) JSON(Header)
//! block  := u32le(raw_len > 0) u32le(stored_len) u8(codec) bytes(stored_len)
//! end    := u32le(0) u64le(events) u64le(lost)
//! ```
//!
//! A block holds whole events (never half of one), encoded as below, compressed with
//! LZ4 (codec 1) or stored raw (codec 0). A file without `end` was cut short (the
//! recorder crashed or the disk filled): readers report it as truncated, never as a
//! complete history. The same blocks, uncompressed, are what `lockstep run` streams from
//! the load generator to the checker in memory.
//!
//! Each event is a tag byte followed by its fields: integers as LEB128 varints, strings as
//! a varint length and UTF-8 bytes, options as a 0/1 byte then the value, booleans as a
//! byte. Times are microseconds since the run started (`t_us`), on the load generator's
//! monotonic clock.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The first bytes of every recording.
pub const MAGIC: &[u8; 12] = b"LOCKSTEP-LSR";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Events are gathered into blocks of about this many raw bytes.
pub const BLOCK_BYTES: usize = 64 * 1024;
/// A block larger than this is corrupt (a writer never makes one).
pub const BLOCK_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The largest header accepted.
const HEADER_BYTES_MAX: usize = 1024 * 1024;

/// What the run was; written once at the start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Header {
    /// Scenario name.
    pub scenario: String,
    /// The scenario file it came from, if any.
    #[serde(default)]
    pub scenario_path: Option<String>,
    pub seed: u64,
    /// Wall-clock time of `t_us = 0`, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// The server under test (`ws://...`).
    pub target: String,
    /// The tool and version that wrote the file.
    pub writer: String,
    /// Anomaly kinds the scenario declares acceptable (the checker still lists them).
    #[serde(default)]
    pub allowed_anomalies: Vec<String>,
    /// Pass/fail bounds from the scenario.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// Room groups, so reports can break figures down by room size.
    #[serde(default)]
    pub groups: Vec<RoomGroup>,
    /// Phases of the run on the `t_us` clock, when known: figures like deliveries/s are
    /// taken over the steady window `[steady_from_us, steady_to_us)`.
    #[serde(default)]
    pub steady_from_us: Option<u64>,
    #[serde(default)]
    pub steady_to_us: Option<u64>,
    /// Free-form settings of the run worth keeping with it (faults, rates...).
    #[serde(default)]
    pub settings: serde_json::Value,
}

/// A group of rooms of one size: rooms whose name starts with `room_prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomGroup {
    pub name: String,
    pub room_prefix: String,
    pub rooms: u32,
    pub members_per_room: u32,
}

/// Pass/fail bounds a scenario sets for CI. Unknown keys are an error everywhere (a
/// misspelled threshold must never silently pass). Every field is optional; an absent
/// bound is not checked, except that any anomaly not declared allowed always fails.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Deliveries per second over the steady window, at least.
    pub deliveries_per_sec_min: Option<f64>,
    /// Send→deliver latency percentiles, at most (milliseconds).
    pub latency_p50_ms_max: Option<f64>,
    pub latency_p99_ms_max: Option<f64>,
    pub latency_p999_ms_max: Option<f64>,
    pub latency_max_ms_max: Option<f64>,
    /// Send→ack latency at the 99th percentile, at most (milliseconds).
    pub ack_p99_ms_max: Option<f64>,
    /// Sends never acked nor delivered (the connection died), at most.
    pub unconfirmed_max: Option<u64>,
    /// `error` events received, at most (all codes).
    pub errors_max: Option<u64>,
    /// Connections that failed to open, at most.
    pub connect_failures_max: Option<u64>,
}

impl Thresholds {
    /// The names a scenario may use, for error messages.
    pub const NAMES: [&'static str; 9] = [
        "deliveries_per_sec_min",
        "latency_p50_ms_max",
        "latency_p99_ms_max",
        "latency_p999_ms_max",
        "latency_max_ms_max",
        "ack_p99_ms_max",
        "unconfirmed_max",
        "errors_max",
        "connect_failures_max",
    ];
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseCause {
    /// The client closed it with a close handshake.
    ClientClose = 0,
    /// The client dropped it without a close frame (injected reset).
    ClientReset = 1,
    /// The client went silent and then dropped it (injected half-open).
    ClientSilent = 2,
    /// The server sent a close frame (its code is recorded).
    ServerClose = 3,
    /// The connection ended without a close frame from the server (EOF or reset).
    Lost = 4,
    /// The run ended with the connection open; the client closed it.
    RunEnd = 5,
}

impl CloseCause {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => CloseCause::ClientClose,
            1 => CloseCause::ClientReset,
            2 => CloseCause::ClientSilent,
            3 => CloseCause::ServerClose,
            4 => CloseCause::Lost,
            5 => CloseCause::RunEnd,
            _ => return None,
        })
    }
}

/// One thing a client saw or did. Strings borrow from the block being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// A simulated client exists, with this user name.
    Client { client: u32, user: &'a str },
    /// Connection number `conn` (counting from 1 per client) completed its handshake.
    Connected { t_us: u64, client: u32, conn: u32 },
    /// A connection attempt failed.
    ConnectFailed {
        t_us: u64,
        client: u32,
        reason: &'a str,
    },
    /// The client sent `join`.
    JoinSent {
        t_us: u64,
        client: u32,
        conn: u32,
        room: &'a str,
        since: Option<u64>,
        epoch: Option<&'a str>,
        history: Option<u32>,
    },
    /// The server answered `joined`.
    Joined {
        t_us: u64,
        client: u32,
        conn: u32,
        room: &'a str,
        epoch: &'a str,
        head: u64,
        first: u64,
        reset: bool,
    },
    /// A `message` arrived.
    Message {
        t_us: u64,
        client: u32,
        conn: u32,
        room: &'a str,
        seq: u64,
        id: &'a str,
        from: &'a str,
        text_hash: u64,
        ts: u64,
    },
    /// The client sent `send`. `intended_us` is when the schedule wanted it sent (open
    /// loop); latency is measured from there.
    Send {
        t_us: u64,
        client: u32,
        conn: u32,
        room: &'a str,
        id: &'a str,
        text_hash: u64,
        intended_us: u64,
    },
    /// An `ack` arrived.
    Ack {
        t_us: u64,
        client: u32,
        conn: u32,
        room: &'a str,
        id: &'a str,
        seq: u64,
        ts: u64,
        dup: bool,
    },
    /// An `error` arrived.
    Error {
        t_us: u64,
        client: u32,
        conn: u32,
        code: &'a str,
        id: Option<&'a str>,
        room: Option<&'a str>,
    },
    /// The client sent `leave`.
    LeaveSent {
        t_us: u64,
        client: u32,
        conn: u32,
        room: &'a str,
    },
    /// The server answered `left`.
    Left {
        t_us: u64,
        client: u32,
        conn: u32,
        room: &'a str,
    },
    /// The connection ended.
    Closed {
        t_us: u64,
        client: u32,
        conn: u32,
        cause: CloseCause,
        code: Option<u16>,
    },
    /// A fault was injected (for reports); `client` is `u32::MAX` for server faults.
    Fault {
        t_us: u64,
        client: u32,
        kind: &'a str,
        detail: &'a str,
    },
    /// The run's quiet period ended: from here the client observes nothing more. Rooms
    /// it is still joined to must be complete up to their heads by now.
    Finished { t_us: u64, client: u32 },
    /// The recorder lost this many events (it could not keep up). A recording with lost
    /// events cannot prove anything.
    Lost { count: u64 },
}

/// Writes events into blocks.
pub struct Encoder {
    buf: Vec<u8>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

fn put_uv(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uv(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
        None => out.push(0),
    }
}

fn put_opt_uv(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => {
            out.push(1);
            put_uv(out, v);
        }
        None => out.push(0),
    }
}

mod tag {
    pub const CLIENT: u8 = 1;
    pub const CONNECTED: u8 = 2;
    pub const CONNECT_FAILED: u8 = 3;
    pub const JOIN_SENT: u8 = 4;
    pub const JOINED: u8 = 5;
    pub const MESSAGE: u8 = 6;
    pub const SEND: u8 = 7;
    pub const ACK: u8 = 8;
    pub const ERROR: u8 = 9;
    pub const LEAVE_SENT: u8 = 10;
    pub const LEFT: u8 = 11;
    pub const CLOSED: u8 = 12;
    pub const FAULT: u8 = 13;
    pub const FINISHED: u8 = 14;
    pub const LOST: u8 = 15;
}

/// Appends one encoded event to `out`.
pub fn encode_event(out: &mut Vec<u8>, ev: &Event<'_>) {
    match *ev {
        Event::Client { client, user } => {
            out.push(tag::CLIENT);
            put_uv(out, client.into());
            put_str(out, user);
        }
        Event::Connected { t_us, client, conn } => {
            out.push(tag::CONNECTED);
            put_uv(out, t_us);
            put_uv(out, client.into());
            put_uv(out, conn.into());
        }
        Event::ConnectFailed {
            t_us,
            client,
            reason,
        } => {
            out.push(tag::CONNECT_FAILED);
            put_uv(out, t_us);
            put_uv(out, client.into());
            put_str(out, reason);
        }
        Event::JoinSent {
            t_us,
            client,
            conn,
            room,
            since,
            epoch,
            history,
        } => {
            out.push(tag::JOIN_SENT);
            put_uv(out, t_us);
            put_uv(out, client.into());
            put_uv(out, conn.into());
            put_str(out, room);
            put_opt_uv(out, since);
            put_opt_str(out, epoch);
            put_opt_uv(out, history.map(u64::from));
        }
        Event::Joined {
            t_us,
            client,
            conn,
            room,
            epoch,
            head,
            first,
            reset,
        } => {
            out.push(tag::JOINED);
            put_uv(out, t_us);
            put_uv(out, client.into());
            put_uv(out, conn.into());
            put_str(out, room);
            put_str(out, epoch);
            put_uv(out, head);
            put_uv(out, first);
            out.push(reset as u8);
        }
        Event::Message {
            t_us,
            client,
            conn,
            room,
            seq,
            id,
            from,
            text_hash,
            ts,
        } => {
            out.push(tag::MESSAGE);
            put_uv(out, t_us);
            put_uv(out, client.into());
            put_uv(out, conn.into());
            put_str(out, room);
            put_uv(out, seq);
            put_str(out, id);
            put_str(out, from);
            out.extend_from_slice(&text_hash.to_le_bytes());
            put_uv(out, ts);
        }
        Event::Send {
            t_us,
            client,
            conn,
            room,
            id,
            text_hash,
            intended_us,
        } => {
            out.push(tag::SEND);
            put_uv(out, t_us);
            put_uv(out, client.into());
            put_uv(out, conn.into());
            put_str(out, room);
            put_str(out, id);
            out.extend_from_slice(&text_hash.to_le_bytes());
            put_uv(out, intended_us);
        }
        Event::Ack {
            t_us,
            client,
            conn,
            room,
            id,
            seq,
            ts,
            dup,
        } => {
            out.push(tag::ACK);
            put_uv(out, t_us);
            put_uv(out, client.into());
            put_uv(out, conn.into());
            put_str(out, room);
            put_str(out, id);
            put_uv(out, seq);
            put_uv(out, ts);
            out.push(dup as u8);
        }
        Event::Error {
            t_us,
            client,
            conn,
            code,
            id,
            room,
        } => {
            out.push(tag::ERROR);
            put_uv(out, t_us);
            put_uv(out, client.into());
            put_uv(out, conn.into());
            put_str(out, code);
            put_opt_str(out, id);
            put_opt_str(out, room);
        }
        Event::LeaveSent {
            t_us,
            client,
            conn,
            room,
        } => {
            out.push(tag::LEAVE_SENT);
            put_uv(out, t_us);
            put_uv(out, client.into());
            put_uv(out, conn.into());
            put_str(out, room);
        }
        Event::Left {
            t_us,
            client,
            conn,
            room,
        } => {
            out.push(tag::LEFT);
            put_uv(out, t_us);
            put_uv(out, client.into());
            put_uv(out, conn.into());
            put_str(out, room);
        }
        Event::Closed {
            t_us,
            client,
            conn,
            cause,
            code,
        } => {
            out.push(tag::CLOSED);
            put_uv(out, t_us);
            put_uv(out, client.into());
            put_uv(out, conn.into());
            out.push(cause as u8);
            put_opt_uv(out, code.map(u64::from));
        }
        Event::Fault {
            t_us,
            client,
            kind,
            detail,
        } => {
            out.push(tag::FAULT);
            put_uv(out, t_us);
            put_uv(out, client.into());
            put_str(out, kind);
            put_str(out, detail);
        }
        Event::Finished { t_us, client } => {
            out.push(tag::FINISHED);
            put_uv(out, t_us);
            put_uv(out, client.into());
        }
        Event::Lost { count } => {
            out.push(tag::LOST);
            put_uv(out, count);
        }
    }
}

impl Encoder {
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(BLOCK_BYTES + 1024),
        }
    }

    /// Appends an event; returns true when the block is full and should be taken.
    pub fn push(&mut self, ev: &Event<'_>) -> bool {
        encode_event(&mut self.buf, ev);
        self.buf.len() >= BLOCK_BYTES
    }

    /// Appends events already encoded with [`encode_event`]; returns true when the block
    /// is full.
    pub fn push_encoded(&mut self, raw: &[u8]) -> bool {
        self.buf.extend_from_slice(raw);
        self.buf.len() >= BLOCK_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Takes the encoded events gathered so far (a block's raw contents).
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK_BYTES + 1024))
    }
}

/// Why a recording could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a Lockstep recording (bad magic)")]
    BadMagic,
    #[error("recording format version {0}; this build reads version {VERSION}")]
    Version(u16),
    #[error("bad header: {0}")]
    Header(String),
    #[error("truncated at byte {offset}: {what}")]
    Truncated { offset: u64, what: &'static str },
    #[error("corrupt at byte {offset}: {what}")]
    Corrupt { offset: u64, what: String },
    #[error("io: {0}")]
    Io(#[from] io::Error),
}

/// Decodes the events of one raw block.
pub struct BlockEvents<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// An event could not be decoded from a block (corrupt block).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad event at offset {at} of its block: {what}")]
pub struct EventError {
    pub at: usize,
    pub what: &'static str,
}

impl<'a> BlockEvents<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn byte(&mut self) -> Result<u8, &'static str> {
        let b = *self.buf.get(self.pos).ok_or("event cut short")?;
        self.pos += 1;
        Ok(b)
    }

    fn uv(&mut self) -> Result<u64, &'static str> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            if shift >= 64 || (shift == 63 && b > 1) {
                return Err("varint overflows 64 bits");
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
        }
    }

    fn u32v(&mut self) -> Result<u32, &'static str> {
        u32::try_from(self.uv()?).map_err(|_| "value over u32")
    }

    fn str(&mut self) -> Result<&'a str, &'static str> {
        let len = usize::try_from(self.uv()?).map_err(|_| "string length")?;
        let end = self.pos.checked_add(len).ok_or("string length")?;
        let bytes = self.buf.get(self.pos..end).ok_or("string cut short")?;
        self.pos = end;
        std::str::from_utf8(bytes).map_err(|_| "string is not UTF-8")
    }

    fn opt<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, &'static str>,
    ) -> Result<Option<T>, &'static str> {
        match self.byte()? {
            0 => Ok(None),
            1 => f(self).map(Some),
            _ => Err("bad option flag"),
        }
    }

    fn bool(&mut self) -> Result<bool, &'static str> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err("bad boolean"),
        }
    }

    fn u64le(&mut self) -> Result<u64, &'static str> {
        let end = self.pos + 8;
        let b = self.buf.get(self.pos..end).ok_or("event cut short")?;
        self.pos = end;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn event(&mut self) -> Result<Event<'a>, &'static str> {
        let ev = match self.byte()? {
            tag::CLIENT => Event::Client {
                client: self.u32v()?,
                user: self.str()?,
            },
            tag::CONNECTED => Event::Connected {
                t_us: self.uv()?,
                client: self.u32v()?,
                conn: self.u32v()?,
            },
            tag::CONNECT_FAILED => Event::ConnectFailed {
                t_us: self.uv()?,
                client: self.u32v()?,
                reason: self.str()?,
            },
            tag::JOIN_SENT => Event::JoinSent {
                t_us: self.uv()?,
                client: self.u32v()?,
                conn: self.u32v()?,
                room: self.str()?,
                since: self.opt(Self::uv)?,
                epoch: self.opt(Self::str)?,
                history: self.opt(Self::u32v)?,
            },
            tag::JOINED => Event::Joined {
                t_us: self.uv()?,
                client: self.u32v()?,
                conn: self.u32v()?,
                room: self.str()?,
                epoch: self.str()?,
                head: self.uv()?,
                first: self.uv()?,
                reset: self.bool()?,
            },
            tag::MESSAGE => Event::Message {
                t_us: self.uv()?,
                client: self.u32v()?,
                conn: self.u32v()?,
                room: self.str()?,
                seq: self.uv()?,
                id: self.str()?,
                from: self.str()?,
                text_hash: self.u64le()?,
                ts: self.uv()?,
            },
            tag::SEND => Event::Send {
                t_us: self.uv()?,
                client: self.u32v()?,
                conn: self.u32v()?,
                room: self.str()?,
                id: self.str()?,
                text_hash: self.u64le()?,
                intended_us: self.uv()?,
            },
            tag::ACK => Event::Ack {
                t_us: self.uv()?,
                client: self.u32v()?,
                conn: self.u32v()?,
                room: self.str()?,
                id: self.str()?,
                seq: self.uv()?,
                ts: self.uv()?,
                dup: self.bool()?,
            },
            tag::ERROR => Event::Error {
                t_us: self.uv()?,
                client: self.u32v()?,
                conn: self.u32v()?,
                code: self.str()?,
                id: self.opt(Self::str)?,
                room: self.opt(Self::str)?,
            },
            tag::LEAVE_SENT => Event::LeaveSent {
                t_us: self.uv()?,
                client: self.u32v()?,
                conn: self.u32v()?,
                room: self.str()?,
            },
            tag::LEFT => Event::Left {
                t_us: self.uv()?,
                client: self.u32v()?,
                conn: self.u32v()?,
                room: self.str()?,
            },
            tag::CLOSED => Event::Closed {
                t_us: self.uv()?,
                client: self.u32v()?,
                conn: self.u32v()?,
                cause: CloseCause::from_u8(self.byte()?).ok_or("bad close cause")?,
                code: self
                    .opt(Self::uv)?
                    .map(|c| u16::try_from(c).map_err(|_| "close code over u16"))
                    .transpose()?,
            },
            tag::FAULT => Event::Fault {
                t_us: self.uv()?,
                client: self.u32v()?,
                kind: self.str()?,
                detail: self.str()?,
            },
            tag::FINISHED => Event::Finished {
                t_us: self.uv()?,
                client: self.u32v()?,
            },
            tag::LOST => Event::Lost { count: self.uv()? },
            _ => return Err("unknown event tag"),
        };
        Ok(ev)
    }
}

impl<'a> Iterator for BlockEvents<'a> {
    type Item = Result<Event<'a>, EventError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let at = self.pos;
        match self.event() {
            Ok(ev) => Some(Ok(ev)),
            Err(what) => {
                self.pos = self.buf.len();
                Some(Err(EventError { at, what }))
            }
        }
    }
}

/// Codec byte of a block.
const CODEC_RAW: u8 = 0;
const CODEC_LZ4: u8 = 1;

/// Writes a recording file: header, then blocks, then the end marker.
pub struct FileWriter<W: Write> {
    out: W,
    events: u64,
    lost: u64,
    compress: bool,
}

impl<W: Write> FileWriter<W> {
    /// Writes the magic and header.
    pub fn new(mut out: W, header: &Header, compress: bool) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        let json = serde_json::to_vec(header).map_err(io::Error::other)?;
        out.write_all(&(json.len() as u32).to_le_bytes())?;
        out.write_all(&json)?;
        Ok(Self {
            out,
            events: 0,
            lost: 0,
            compress,
        })
    }

    /// Writes one block of encoded events; `events` is how many it holds (for the end
    /// marker's count).
    pub fn write_block(&mut self, raw: &[u8], events: u64) -> io::Result<()> {
        if raw.is_empty() {
            return Ok(());
        }
        let (codec, stored): (u8, std::borrow::Cow<'_, [u8]>) = if self.compress {
            (CODEC_LZ4, lz4_flex::block::compress(raw).into())
        } else {
            (CODEC_RAW, raw.into())
        };
        self.out.write_all(&(raw.len() as u32).to_le_bytes())?;
        self.out.write_all(&(stored.len() as u32).to_le_bytes())?;
        self.out.write_all(&[codec])?;
        self.out.write_all(&stored)?;
        self.events += events;
        Ok(())
    }

    /// Counts events the recorder had to drop (also recorded as a `Lost` event).
    pub fn add_lost(&mut self, n: u64) {
        self.lost += n;
    }

    /// Writes the end marker and flushes; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&0u32.to_le_bytes())?;
        self.out.write_all(&self.events.to_le_bytes())?;
        self.out.write_all(&self.lost.to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// How a recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub events: u64,
    pub lost: u64,
}

/// Reads a recording file block by block, in bounded memory.
pub struct FileReader<R: Read> {
    input: R,
    offset: u64,
    header: Header,
    stored: Vec<u8>,
    raw: Vec<u8>,
    trailer: Option<Trailer>,
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> FileReader<R> {
    /// Reads and checks the magic and header.
    pub fn new(mut input: R) -> Result<Self, RecordError> {
        let mut magic = [0u8; 14];
        let n = read_full(&mut input, &mut magic)?;
        if n < 12 || &magic[..12] != MAGIC {
            return Err(RecordError::BadMagic);
        }
        if n < 14 {
            return Err(RecordError::Truncated {
                offset: n as u64,
                what: "in the version",
            });
        }
        let version = u16::from_le_bytes([magic[12], magic[13]]);
        if version != VERSION {
            return Err(RecordError::Version(version));
        }
        let mut len = [0u8; 4];
        if read_full(&mut input, &mut len)? < 4 {
            return Err(RecordError::Truncated {
                offset: 14,
                what: "in the header length",
            });
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > HEADER_BYTES_MAX {
            return Err(RecordError::Header(format!(
                "header of {len} bytes is too large"
            )));
        }
        let mut json = vec![0u8; len];
        if read_full(&mut input, &mut json)? < len {
            return Err(RecordError::Truncated {
                offset: 18,
                what: "in the header",
            });
        }
        let header: Header =
            serde_json::from_slice(&json).map_err(|e| RecordError::Header(e.to_string()))?;
        Ok(Self {
            input,
            offset: 18 + len as u64,
            header,
            stored: Vec::new(),
            raw: Vec::new(),
            trailer: None,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Byte offset of the next block.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The end marker, once [`next_block`](Self::next_block) returned `None`.
    pub fn trailer(&self) -> Option<Trailer> {
        self.trailer
    }

    /// The next block's raw event bytes, or `None` at the end marker. A file that stops
    /// before its end marker is an error ([`RecordError::Truncated`]).
    pub fn next_block(&mut self) -> Result<Option<&[u8]>, RecordError> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        let at = self.offset;
        let mut head = [0u8; 4];
        if read_full(&mut self.input, &mut head)? < 4 {
            return Err(RecordError::Truncated {
                offset: at,
                what: "before the end marker (the recorder did not finish)",
            });
        }
        let raw_len = u32::from_le_bytes(head) as usize;
        if raw_len == 0 {
            let mut end = [0u8; 16];
            if read_full(&mut self.input, &mut end)? < 16 {
                return Err(RecordError::Truncated {
                    offset: at,
                    what: "in the end marker",
                });
            }
            self.trailer = Some(Trailer {
                events: u64::from_le_bytes(end[..8].try_into().expect("8")),
                lost: u64::from_le_bytes(end[8..].try_into().expect("8")),
            });
            self.offset += 20;
            return Ok(None);
        }
        let mut rest = [0u8; 5];
        if read_full(&mut self.input, &mut rest)? < 5 {
            return Err(RecordError::Truncated {
                offset: at,
                what: "in a block header",
            });
        }
        let stored_len = u32::from_le_bytes(rest[..4].try_into().expect("4")) as usize;
        let codec = rest[4];
        if raw_len > BLOCK_BYTES_MAX || stored_len > BLOCK_BYTES_MAX {
            return Err(RecordError::Corrupt {
                offset: at,
                what: format!("block of {raw_len} bytes ({stored_len} stored) is too large"),
            });
        }
        self.stored.resize(stored_len, 0);
        if read_full(&mut self.input, &mut self.stored)? < stored_len {
            return Err(RecordError::Truncated {
                offset: at,
                what: "inside a block",
            });
        }
        self.offset += 9 + stored_len as u64;
        match codec {
            CODEC_RAW => {
                if stored_len != raw_len {
                    return Err(RecordError::Corrupt {
                        offset: at,
                        what: "raw block with mismatched lengths".into(),
                    });
                }
                std::mem::swap(&mut self.raw, &mut self.stored);
            }
            CODEC_LZ4 => {
                self.raw.resize(raw_len, 0);
                let n =
                    lz4_flex::block::decompress_into(&self.stored, &mut self.raw).map_err(|e| {
                        RecordError::Corrupt {
                            offset: at,
                            what: format!("LZ4 block: {e}"),
                        }
                    })?;
                if n != raw_len {
                    return Err(RecordError::Corrupt {
                        offset: at,
                        what: "LZ4 block decompressed to the wrong size".into(),
                    });
                }
            }
            other => {
                return Err(RecordError::Corrupt {
                    offset: at,
                    what: format!("unknown block codec {other}"),
                });
            }
        }
        Ok(Some(&self.raw))
    }
}

/// A 64-bit hash of a message text: how recordings compare texts without storing them.
/// Fixed forever (it is in every recording): 8 bytes at a time, multiply-xor-shift
/// mixing, then the length folded in. Not cryptographic; it only has to make a changed
/// text look changed.
pub fn text_hash(text: &str) -> u64 {
    text_hash_bytes(text.as_bytes())
}

/// [`text_hash`] of raw bytes.
pub fn text_hash_bytes(text: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h: u64 = 0x243f_6a88_85a3_08d3;
    let mut chunks = text.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(K);
        h ^= h >> 29;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut tail = [0u8; 8];
        tail[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
        h ^= h >> 29;
    }
    h = (h ^ text.len() as u64).wrapping_mul(K);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Event<'static>> {
        vec![
            Event::Client {
                client: 7,
                user: "u7",
            },
            Event::Connected {
                t_us: 5,
                client: 7,
                conn: 1,
            },
            Event::JoinSent {
                t_us: 6,
                client: 7,
                conn: 1,
                room: "r",
                since: Some(3),
                epoch: Some("e-1"),
                history: None,
            },
            Event::Joined {
                t_us: 9,
                client: 7,
                conn: 1,
                room: "r",
                epoch: "e-1",
                head: 10,
                first: 1,
                reset: false,
            },
            Event::Message {
                t_us: 10,
                client: 7,
                conn: 1,
                room: "r",
                seq: 4,
                id: "c1-1",
                from: "u1",
                text_hash: text_hash("hi"),
                ts: 1_700_000_000_000,
            },
            Event::Send {
                t_us: 11,
                client: 7,
                conn: 1,
                room: "r",
                id: "c7-1",
                text_hash: 42,
                intended_us: 10,
            },
            Event::Ack {
                t_us: 12,
                client: 7,
                conn: 1,
                room: "r",
                id: "c7-1",
                seq: 11,
                ts: 1,
                dup: true,
            },
            Event::Error {
                t_us: 13,
                client: 7,
                conn: 1,
                code: "rate_limited",
                id: Some("c7-2"),
                room: None,
            },
            Event::LeaveSent {
                t_us: 14,
                client: 7,
                conn: 1,
                room: "r",
            },
            Event::Left {
                t_us: 15,
                client: 7,
                conn: 1,
                room: "r",
            },
            Event::Closed {
                t_us: 16,
                client: 7,
                conn: 1,
                cause: CloseCause::ServerClose,
                code: Some(4000),
            },
            Event::ConnectFailed {
                t_us: 17,
                client: 7,
                reason: "refused",
            },
            Event::Fault {
                t_us: 18,
                client: u32::MAX,
                kind: "kill",
                detail: "SIGKILL",
            },
            Event::Finished {
                t_us: 19,
                client: 7,
            },
            Event::Lost { count: 3 },
        ]
    }

    #[test]
    fn events_roundtrip_through_a_file() {
        for compress in [false, true] {
            let mut enc = Encoder::new();
            for e in sample() {
                enc.push(&e);
            }
            let header = Header {
                scenario: "t".into(),
                seed: 9,
                ..Default::default()
            };
            let mut w = FileWriter::new(Vec::new(), &header, compress).unwrap();
            w.write_block(&enc.take(), sample().len() as u64).unwrap();
            let bytes = w.finish().unwrap();
            let mut r = FileReader::new(&bytes[..]).unwrap();
            assert_eq!(r.header(), &header);
            let block = r.next_block().unwrap().unwrap().to_vec();
            let got: Vec<_> = BlockEvents::new(&block).map(Result::unwrap).collect();
            assert_eq!(got, sample());
            assert!(r.next_block().unwrap().is_none());
            assert_eq!(
                r.trailer(),
                Some(Trailer {
                    events: sample().len() as u64,
                    lost: 0
                })
            );
        }
    }

    #[test]
    fn a_cut_file_is_truncated_never_complete() {
        let mut enc = Encoder::new();
        for e in sample() {
            enc.push(&e);
        }
        let mut w = FileWriter::new(Vec::new(), &Header::default(), true).unwrap();
        w.write_block(&enc.take(), 1).unwrap();
        let bytes = w.finish().unwrap();
        let body = FileReader::new(&bytes[..]).unwrap().offset() as usize;
        assert!(FileReader::new(&bytes[..body - 1]).is_err());
        for cut in [body, body + 3, bytes.len() - 25, bytes.len() - 1] {
            let mut r = FileReader::new(&bytes[..cut]).unwrap();
            let mut res = Ok(None);
            for _ in 0..3 {
                res = r.next_block().map(|b| b.map(<[u8]>::to_vec));
                if !matches!(res, Ok(Some(_))) {
                    break;
                }
            }
            assert!(
                matches!(res, Err(RecordError::Truncated { .. })),
                "cut at {cut}: {res:?}"
            );
        }
        assert!(matches!(
            FileReader::new(&b"garbage-file-here"[..]),
            Err(RecordError::BadMagic)
        ));
    }

    #[test]
    fn text_hash_is_stable_and_sensitive() {
        // Pinned: recordings made today must compare equal tomorrow.
        assert_eq!(text_hash(""), text_hash_bytes(b""));
        let a = text_hash("hello world, this is a message");
        assert_ne!(a, text_hash("hello world, this is a messagf"));
        assert_ne!(text_hash("ab"), text_hash("ab\0"));
        assert_ne!(text_hash("abcdefgh"), text_hash("abcdefg"));
        assert_eq!(text_hash("hello, lockstep"), 0xed1b_ad14_4fe3_3fe0);
    }

    #[test]
    fn corrupt_events_are_errors_not_panics() {
        let mut enc = Encoder::new();
        for e in sample() {
            enc.push(&e);
        }
        let raw = enc.take();
        for cut in 0..raw.len() {
            for r in BlockEvents::new(&raw[..cut]) {
                let _ = r;
            }
        }
        let bad = [200u8, 1, 2, 3];
        assert!(BlockEvents::new(&bad).next().unwrap().is_err());
    }
}

//! One WebSocket connection: its socket, its two buffers, and the loop that moves bytes.
//!
//! One task per connection, owning the socket outright (no split halves, no locks). Each
//! turn of the loop it gathers everything it owes the client into its write buffer (the
//! outbox's control frames, then room messages after each room's cursor), writes it with
//! as few `write` calls as the kernel allows, and then waits for whichever comes first:
//! the socket readable, the socket writable (only while bytes are pending), a wake from
//! the outbox, the heartbeat tick, or shutdown.
//!
//! Memory per connection is bounded and mostly zero when idle: the read buffer holds at
//! most one partial frame (frames are bounded by `frame_bytes_max`) and is freed when
//! empty; the write buffer stops growing at `write_buffer_bytes_max` (a connection that
//! does not drain simply stops advancing its cursors) and is freed at each heartbeat
//! tick when empty.

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use lockstep_protocol::event::close_code;
use lockstep_protocol::ws::{
    self, Decoded, Decoder, Frame, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, Role,
};
use lockstep_protocol::{
    ClientEvent, MessageRef, Rejected, Seq, Tagged, Welcome, decode_client, encode_event_into,
};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};

use crate::auth::Identity;
use crate::node::Node;
use crate::outbox::{Outbox, room_key};
use crate::ratelimit::{TokenBucket, WindowCounter};
use crate::reads::Priority;
use crate::room::{Copied, Room};

/// Bytes read from the socket per wake-up before frames are handled, so one busy client
/// cannot monopolize its worker thread.
const READ_BYTES_PER_WAKE: usize = 64 * 1024;
/// Read buffer growth step.
const READ_CHUNK_BYTES: usize = 4096;
/// A write buffer larger than this is freed as soon as it has been written; smaller ones
/// are kept while the connection is busy and freed at the next heartbeat tick.
const WRITE_BUFFER_KEEP_BYTES: usize = 64 * 1024;
/// A write buffer this small is freed as soon as it has been written: cheap to make
/// again, and it is what idle connections would otherwise hold.
const WRITE_BUFFER_FREE_BELOW_BYTES: usize = 4 * 1024;
/// Heartbeat checks per heartbeat period (see `serve`).
const HEARTBEAT_TICKS_PER_PERIOD: u32 = 4;
/// How long a closing connection may take to flush its last bytes and close frame.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// A room this connection is joined to, and the last seq it was given.
pub(crate) struct Joined {
    pub room: Arc<Room>,
    pub cursor: Seq,
    pub key: usize,
}

/// Why the connection loop ended.
#[derive(Debug)]
pub(crate) enum Exit {
    /// The peer went away without a close handshake (EOF, reset, heartbeat timeout).
    Gone(&'static str),
    Io(std::io::Error),
    /// The peer sent a close frame.
    PeerClosed(Option<u16>),
    /// The server closes with this code and reason.
    Close(u16, String),
    /// The server is shutting down.
    Shutdown,
}

/// A frame, decoded to something owned so the buffers can be used again.
enum Inbound {
    Event(Box<Result<ClientEvent, Rejected>>),
    Binary,
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

pub(crate) struct Connection {
    pub(crate) node: Arc<Node>,
    stream: TcpStream,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) id: Identity,
    dec: Decoder,
    rbuf: Vec<u8>,
    rpos: usize,
    /// Complete frames may be waiting in `rbuf` (handling paused at the in-flight limit).
    frames_waiting: bool,
    peer_eof: bool,
    pub(crate) wbuf: Vec<u8>,
    wpos: usize,
    pub(crate) rooms: Vec<Joined>,
    /// Read-mark fan-outs taken from the outbox (kept to reuse its allocation).
    fanouts: Vec<crate::outbox::FanOut>,
    /// Which room `fill` starts with, rotated for fairness between busy rooms.
    next_room: usize,
    last_heard: Instant,
    /// When the socket last took bytes from us (or had nothing to take).
    last_written: Instant,
    pub(crate) bad_frames: WindowCounter,
    pub(crate) rate_refusals: WindowCounter,
    pub(crate) send_bucket: TokenBucket,
    pub(crate) event_bucket: TokenBucket,
    /// Set by a handler that decided the connection must close.
    pub(crate) close_with: Option<(u16, String)>,
    _socket_permit: OwnedSemaphorePermit,
}

impl Connection {
    pub(crate) fn new(
        node: Arc<Node>,
        stream: TcpStream,
        preread: Bytes,
        id: Identity,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let now = Instant::now();
        let cfg = &node.cfg;
        let outbox = Arc::new(Outbox::new(
            id.user.clone(),
            node.next_conn(),
            cfg.outbox_frames_max,
        ));
        let minute = Duration::from_millis(lockstep_protocol::limits::BAD_FRAME_WINDOW_MS);
        Self {
            dec: Decoder::new(Role::Server, cfg.frame_bytes_max),
            rbuf: preread.to_vec(),
            rpos: 0,
            frames_waiting: !preread.is_empty(),
            peer_eof: false,
            wbuf: Vec::new(),
            wpos: 0,
            rooms: Vec::new(),
            fanouts: Vec::new(),
            next_room: 0,
            last_heard: now,
            last_written: now,
            bad_frames: WindowCounter::new(minute, now.into_std()),
            rate_refusals: WindowCounter::new(minute, now.into_std()),
            send_bucket: TokenBucket::new(cfg.send_rate_per_sec, cfg.send_burst, now.into_std()),
            event_bucket: TokenBucket::new(cfg.event_rate_per_sec, cfg.event_burst, now.into_std()),
            close_with: None,
            _socket_permit: permit,
            outbox,
            id,
            stream,
            node,
        }
    }

    /// Serves the connection until it ends, then cleans up after it.
    pub(crate) async fn run(mut self) {
        let m = self.node.metrics.clone();
        m.connections_open.fetch_add(1, Relaxed);
        m.connections_total.fetch_add(1, Relaxed);
        let welcome = Welcome {
            user: self.id.user.clone(),
            conn: format!("c-{:x}", self.outbox.conn),
            node: self.node.cfg.node_id.clone(),
            heartbeat_ms: self.node.cfg.heartbeat_ms,
            max_text_bytes: self.node.cfg.max_text_bytes as u64,
        };
        self.queue(&welcome);
        tracing::debug!(conn = self.outbox.conn, user = %self.id.user, "connected");
        let exit = self.serve().await;
        self.finish(exit).await;
        self.leave_all();
        self.outbox.close();
        m.connections_open.fetch_sub(1, Relaxed);
    }

    async fn serve(&mut self) -> Exit {
        // The ticker runs at a quarter period: pings go out every 4th tick, and a silent
        // connection is closed at most a quarter period after its 3 periods ran out.
        let heartbeat = Duration::from_millis(self.node.cfg.heartbeat_ms);
        let tick = heartbeat / HEARTBEAT_TICKS_PER_PERIOD;
        let mut ticker = interval_at(Instant::now() + tick, tick);
        let mut ticks = 0u32;
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Created once: each `cancelled()` future registers with the token under a lock
        // shared by every connection, which is not something to do on every turn.
        let shutdown = self.node.shutdown.clone();
        let shutdown = shutdown.cancelled();
        tokio::pin!(shutdown);
        let write_max = self.node.cfg.write_buffer_bytes_max;
        loop {
            if let Some((code, reason)) = self.close_with.take() {
                return Exit::Close(code, reason);
            }
            if self.frames_waiting && self.input_open() {
                if let Err(exit) = self.handle_frames().await {
                    return exit;
                }
                continue;
            }
            self.outbox.arm();
            if let Err(exit) = self.fill().await {
                return exit;
            }
            if let Err(exit) = self.flush() {
                return exit;
            }
            let unsent = self.wbuf.len() - self.wpos;
            let can_read = !self.frames_waiting && self.input_open();
            tokio::select! {
                biased;
                _ = &mut shutdown => return Exit::Shutdown,
                r = self.stream.writable(), if unsent > 0 => {
                    if let Err(e) = r {
                        return Exit::Io(e);
                    }
                }
                r = self.stream.readable(), if can_read => {
                    if let Err(e) = r {
                        return Exit::Io(e);
                    }
                    if let Err(exit) = self.read_socket() {
                        return exit;
                    }
                }
                _ = self.outbox.notified(), if unsent < write_max => {}
                _ = ticker.tick() => {
                    ticks = ticks.wrapping_add(1);
                    let ping = ticks.is_multiple_of(HEARTBEAT_TICKS_PER_PERIOD);
                    if let Err(exit) = self.heartbeat(heartbeat, ping) {
                        return exit;
                    }
                }
            }
        }
    }

    /// Reads what the socket has (up to [`READ_BYTES_PER_WAKE`]).
    fn read_socket(&mut self) -> Result<(), Exit> {
        let mut total = 0;
        loop {
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK_BYTES / 2 {
                self.rbuf.reserve(READ_CHUNK_BYTES);
            }
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(0) => {
                    self.peer_eof = true;
                    break;
                }
                Ok(n) => {
                    total += n;
                    if total >= READ_BYTES_PER_WAKE {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(Exit::Io(e)),
            }
        }
        if total > 0 {
            self.last_heard = Instant::now();
        }
        self.frames_waiting = total > 0 || self.peer_eof;
        Ok(())
    }

    /// Whether the connection takes more input: below the in-flight send limit, and
    /// with less than `write_buffer_bytes_max` unsent. A client that does not read its
    /// answers (history pages, pongs, errors) stops being read: TCP back-pressure, not
    /// server memory.
    fn input_open(&self) -> bool {
        self.outbox.inflight() < self.node.cfg.inflight_sends_per_connection_max
            && self.wbuf.len() - self.wpos < self.node.cfg.write_buffer_bytes_max
    }

    /// Decodes and handles complete frames in the read buffer, stopping when input
    /// closes (the rest wait in the buffer).
    async fn handle_frames(&mut self) -> Result<(), Exit> {
        self.frames_waiting = false;
        loop {
            if self.close_with.is_some() {
                break;
            }
            if !self.input_open() {
                self.frames_waiting = true;
                break;
            }
            let (inbound, used) = match self.dec.decode(&mut self.rbuf[self.rpos..]) {
                Err(e) => {
                    return Err(Exit::Close(e.close_code(), e.to_string()));
                }
                Ok(Decoded::NeedMore(_)) => break,
                Ok(Decoded::Fragment(n)) => {
                    self.rpos += n;
                    continue;
                }
                Ok(Decoded::Frame(frame, n)) => (
                    match frame {
                        Frame::Text(p) => Inbound::Event(Box::new(decode_client(p))),
                        Frame::Binary(_) => Inbound::Binary,
                        Frame::Ping(p) => Inbound::Ping(p.to_vec()),
                        Frame::Pong(_) => Inbound::Pong,
                        Frame::Close { code, .. } => Inbound::Close(code),
                    },
                    n,
                ),
            };
            self.rpos += used;
            match inbound {
                // Boxed: event handling is the deepest await in the task, and keeping it
                // out of line keeps every idle connection's task small.
                Inbound::Event(ev) => match *ev {
                    Ok(ev) => Box::pin(self.on_event(ev)).await?,
                    Err(rej) => self.reject_frame(rej),
                },
                Inbound::Binary => self.reject_binary(),
                Inbound::Ping(payload) => self.on_ping(&payload),
                Inbound::Pong => {}
                Inbound::Close(code) => return Err(Exit::PeerClosed(code)),
            }
        }
        // Keep only the unconsumed tail, and no buffer at all when nothing is left: most
        // connections read rarely, and an empty buffer costs nothing.
        if self.rpos == self.rbuf.len() {
            self.rbuf = Vec::new();
        } else if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
        }
        self.rpos = 0;
        if self.peer_eof && !self.frames_waiting {
            return Err(Exit::Gone(
                "peer closed the TCP connection without a close frame",
            ));
        }
        Ok(())
    }

    /// Gathers what the client is owed into the write buffer: control frames, then each
    /// room's messages after its cursor, until the buffer holds `write_buffer_bytes_max`.
    /// When it stops at that bound with messages still owed, it wakes its own task, so
    /// the loop comes back for the rest once the socket has taken what is buffered
    /// (nobody else will: the room published those messages long ago).
    async fn fill(&mut self) -> Result<(), Exit> {
        let max = self.node.cfg.write_buffer_bytes_max;
        let rooms = &self.rooms;
        let mut fanouts = std::mem::take(&mut self.fanouts);
        self.outbox
            .drain_into(&mut self.wbuf, self.wpos + max, &mut fanouts, |key| {
                rooms.iter().any(|j| room_key(&j.room) == key)
            });
        for (room, frame, user) in fanouts.drain(..) {
            room.broadcast_read(&frame, user);
        }
        self.fanouts = fanouts;
        if !self.outbox.is_empty() {
            // More waits than fits now; come back once the socket took this.
            self.outbox.wake();
        }
        let n = self.rooms.len();
        let mut delivered = 0u64;
        let mut result = Ok(());
        'rooms: for k in 0..n {
            let i = (self.next_room + k) % n;
            loop {
                let j = &self.rooms[i];
                if self.wbuf.len() - self.wpos >= max {
                    if self.rooms.iter().any(|j| j.cursor < j.room.head()) {
                        self.outbox.wake();
                    }
                    break 'rooms;
                }
                if j.cursor >= j.room.head() {
                    break;
                }
                match j.room.copy_after(j.cursor, &mut self.wbuf, self.wpos + max) {
                    Copied::UpToDate => break,
                    Copied::Frames { cursor, count } => {
                        self.rooms[i].cursor = cursor;
                        delivered += count as u64;
                    }
                    Copied::NeedStorage { upto } => match self.catch_up(i, upto).await {
                        Ok(count) => delivered += count as u64,
                        Err(exit) => {
                            result = Err(exit);
                            break 'rooms;
                        }
                    },
                }
            }
        }
        if n > 0 {
            self.next_room = (self.next_room + 1) % n;
        }
        if delivered > 0 {
            self.node.metrics.deliveries.fetch_add(delivered, Relaxed);
        }
        result
    }

    /// Reads the next page after room `i`'s cursor from storage (it fell out of the ring)
    /// and appends it. If storage no longer has the next seq the connection cannot be
    /// caught up gap-free, and is closed with 4000 so the client resumes (and gets
    /// `reset`).
    async fn catch_up(&mut self, i: usize, upto: Seq) -> Result<usize, Exit> {
        let room = self.rooms[i].room.clone();
        let after = self.rooms[i].cursor;
        let slow = |why: String| Exit::Close(close_code::SLOW_CONSUMER, why);
        let Some(rid) = room.rid() else {
            return Err(slow(format!(
                "room {} has no stored history to catch up from",
                room.name
            )));
        };
        let limit = self.node.cfg.catchup_page_messages;
        let rows = self
            .node
            .reads
            .run(Priority::Bulk, move |r| {
                r.messages_after(rid, after, upto, limit)
            })
            .await
            .map_err(|e| slow(format!("catching up from storage failed: {e}")))?;
        if rows.first().is_none_or(|m| m.seq != after + 1) {
            return Err(slow(format!(
                "seq {} of room {} is no longer stored; resume with since",
                after + 1,
                room.name
            )));
        }
        // Append up to the write budget; rows past it are read again next time.
        let budget = self.wpos + self.node.cfg.write_buffer_bytes_max;
        let mut last = after;
        for (k, m) in rows.iter().enumerate() {
            if m.seq != after + 1 + k as Seq {
                return Err(slow(format!(
                    "seq {} of room {} is no longer stored; resume with since",
                    after + 1 + k as Seq,
                    room.name
                )));
            }
            if k > 0 && self.wbuf.len() >= budget {
                break;
            }
            ws::append_frame_with(&mut self.wbuf, OP_TEXT, None, |b| {
                encode_event_into(
                    b,
                    &MessageRef {
                        room: &room.name,
                        seq: m.seq,
                        id: &m.id,
                        from: &m.from,
                        text: &m.text,
                        ts: m.ts,
                    },
                )
            });
            last = m.seq;
        }
        let count = (last - after) as usize;
        self.rooms[i].cursor = last;
        let m = &self.node.metrics;
        m.catchup_pages.fetch_add(1, Relaxed);
        m.catchup_messages.fetch_add(count as u64, Relaxed);
        Ok(count)
    }

    /// Writes as much of the write buffer as the socket takes without blocking.
    fn flush(&mut self) -> Result<(), Exit> {
        let start = self.wpos;
        while self.wpos < self.wbuf.len() {
            match self.stream.try_write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(Exit::Gone("socket accepted no bytes")),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(Exit::Io(e)),
            }
        }
        if self.wpos > start || self.wpos == self.wbuf.len() {
            self.last_written = Instant::now();
        }
        if self.wpos > start {
            self.node
                .metrics
                .bytes_written
                .fetch_add((self.wpos - start) as u64, Relaxed);
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
            // Small buffers (a connection that got a few events) and very large ones are
            // freed; mid-sized ones belong to busy connections and are kept for reuse.
            let cap = self.wbuf.capacity();
            if cap <= WRITE_BUFFER_FREE_BELOW_BYTES || cap > WRITE_BUFFER_KEEP_BYTES {
                self.wbuf = Vec::new();
            }
        } else if self.wpos > self.wbuf.len() / 2 {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        Ok(())
    }

    /// Flushes until the buffer is empty or the deadline passes.
    async fn flush_until(&mut self, deadline: Instant) {
        loop {
            if self.flush().is_err() || self.wpos == self.wbuf.len() {
                return;
            }
            if timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.stream.writable(),
            )
            .await
            .is_err()
            {
                return;
            }
        }
    }

    fn heartbeat(&mut self, period: Duration, ping: bool) -> Result<(), Exit> {
        let limit = period * lockstep_protocol::limits::HEARTBEAT_MISSES_MAX as u32;
        if self.input_open() {
            if self.last_heard.elapsed() > limit {
                self.node.metrics.heartbeat_timeouts.fetch_add(1, Relaxed);
                return Err(Exit::Gone("no frame or pong for 3 heartbeats"));
            }
        } else if self.wpos < self.wbuf.len() && self.last_written.elapsed() > limit {
            // We stopped reading this client because it does not read what we send
            // (its frames wait unread, so its silence is ours, not its). A client that
            // takes none of our bytes for 3 periods cannot be caught up: close it, and
            // it resumes with `since`.
            return Err(Exit::Close(
                close_code::SLOW_CONSUMER,
                "took no data for 3 heartbeat periods; resume with since".into(),
            ));
        }
        if let Some(exp) = self.id.expires_at
            && crate::clock::now_ms() / 1000 >= exp
        {
            return Err(Exit::Close(close_code::POLICY, "token expired".into()));
        }
        if !ping {
            return Ok(());
        }
        // Idle connections hold no buffers.
        if self.rbuf.is_empty() {
            self.rbuf = Vec::new();
        }
        if self.wbuf.is_empty() {
            self.wbuf = Vec::new();
        }
        ws::append_frame(&mut self.wbuf, OP_PING, b"", None);
        Ok(())
    }

    /// Says goodbye as the exit requires.
    async fn finish(&mut self, exit: Exit) {
        let m = self.node.metrics.clone();
        let (code, reason) = match exit {
            Exit::Gone(why) => {
                m.closes_gone.fetch_add(1, Relaxed);
                tracing::debug!(conn = self.outbox.conn, why, "connection gone");
                return;
            }
            Exit::Io(e) => {
                m.closes_gone.fetch_add(1, Relaxed);
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) {
                    m.resets.fetch_add(1, Relaxed);
                }
                tracing::debug!(conn = self.outbox.conn, error = %e, "connection failed");
                return;
            }
            Exit::PeerClosed(code) => {
                m.closes_by_peer.fetch_add(1, Relaxed);
                // Echo the peer's code (RFC 6455 §5.5.1); no code, empty close; a code no
                // endpoint may send (1005, 1006, 1015, unassigned) is a protocol error.
                match code {
                    Some(c) if ws::close_code_is_valid(c) => {
                        ws::append_frame(&mut self.wbuf, OP_CLOSE, &c.to_be_bytes(), None)
                    }
                    Some(_) => ws::append_frame(
                        &mut self.wbuf,
                        OP_CLOSE,
                        &ws::close_payload(close_code::PROTOCOL_ERROR, "invalid close code"),
                        None,
                    ),
                    None => ws::append_frame(&mut self.wbuf, OP_CLOSE, b"", None),
                }
                self.flush_until(Instant::now() + CLOSE_FLUSH).await;
                return;
            }
            Exit::Close(code, reason) => (code, reason),
            Exit::Shutdown => {
                self.drain_for_shutdown().await;
                (
                    close_code::GOING_AWAY,
                    "server shutting down; reconnect and resume".into(),
                )
            }
        };
        m.close(code);
        tracing::debug!(conn = self.outbox.conn, code, %reason, "closing");
        ws::append_frame(
            &mut self.wbuf,
            OP_CLOSE,
            &ws::close_payload(code, &reason),
            None,
        );
        self.flush_until(Instant::now() + CLOSE_FLUSH).await;
    }

    /// On shutdown: stop reading, but deliver the acks of sends already accepted (their
    /// commits are under way) and what is buffered, within the grace period.
    async fn drain_for_shutdown(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(self.node.cfg.shutdown_grace_ms);
        loop {
            self.outbox.arm();
            if self.fill().await.is_err() || self.flush().is_err() {
                return;
            }
            let unsent = self.wbuf.len() - self.wpos;
            if self.outbox.inflight() == 0 && self.outbox.is_empty() && unsent == 0 {
                return;
            }
            tokio::select! {
                _ = sleep_until(deadline) => return,
                _ = self.outbox.notified() => {}
                r = self.stream.writable(), if unsent > 0 => if r.is_err() { return },
            }
        }
    }

    /// Answers a WebSocket ping, within the event rate: a client flooding pings is
    /// refused like any other flood (and closed with 1008 past the limit).
    fn on_ping(&mut self, payload: &[u8]) {
        let now = std::time::Instant::now();
        match self.event_bucket.take(now) {
            Ok(()) => ws::append_frame(&mut self.wbuf, OP_PONG, payload, None),
            Err(_) => {
                self.node
                    .metrics
                    .error(lockstep_protocol::ErrorCode::RateLimited);
                let max = self.node.cfg.rate_limited_per_minute_max;
                if self.rate_refusals.hit(now) > max {
                    self.close_with = Some((
                        close_code::POLICY,
                        format!("more than {max} rate-limited events in a minute"),
                    ));
                }
            }
        }
    }

    /// Appends one event frame to the write buffer.
    pub(crate) fn queue<T: Tagged>(&mut self, ev: &T) {
        ws::append_frame_with(&mut self.wbuf, OP_TEXT, None, |b| encode_event_into(b, ev));
    }

    pub(crate) fn joined_index(&self, room: &lockstep_protocol::RoomName) -> Option<usize> {
        self.rooms.iter().position(|j| &j.room.name == room)
    }
}

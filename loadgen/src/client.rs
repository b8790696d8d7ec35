//! One simulated client: behaves like a correct real client while faults are injected.
//!
//! What "correct" means here (and what the checker relies on): it keeps the last seq it
//! holds and the room's epoch; after any disconnect it reconnects (after a seeded random
//! delay) and re-joins with `since` and `epoch`; it re-sends every un-acked message with
//! the same id, in the original order; it drops what it holds on `reset`; it answers
//! pings; it honours `retry_after_ms`. Everything it sees or does is recorded.
//!
//! One task per client, owning its socket (no split halves). Writes never block the task:
//! bytes go to a write buffer flushed when the socket is writable, so a server applying
//! back-pressure can never deadlock a client that must keep reading.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use lockstep_protocol::record::{CloseCause, Event, text_hash};
use lockstep_protocol::ws::{Decoded, Decoder, Frame, OP_CLOSE, OP_PONG, Role};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::parse::{self, Kind};
use crate::recorder::Recorder;
use crate::scenario::{Direction, FaultKind, Scenario};
use crate::schedule::{Action, ClientPlan, Dice, Schedule, message_text};
use crate::stats::Stats;
use crate::wire;

/// Largest server message a client accepts (history answers can be large).
const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Sends waiting for an ack (or for the connection to come back) per client. Beyond it,
/// scheduled sends are skipped and counted: the run cannot keep up and the report says so.
const PENDING_MAX: usize = crate::scenario::WINDOW_MAX;
/// How long a TCP connect plus handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a clean close waits for the server's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Default pause after `overloaded` or `internal` without `retry_after_ms`.
const RETRY_PAUSE_DEFAULT: Duration = Duration::from_millis(250);
/// Bytes read per wake-up.
const READ_CHUNK: usize = 64 * 1024;
/// A bandwidth-limited (slow) reader reads once it may take this many bytes, rather than
/// a few bytes at a time.
const SLOW_READ_BYTES_MIN: usize = 1024;

/// Phases of a run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Clients connect at the ramp rate; nothing is sent yet.
    Ramp,
    /// The schedule runs: sends, typing, read marks, faults.
    Load,
    /// No new sends, no faults: clients reconnect, re-send what is un-acked, catch up.
    Quiet,
    /// Stop observing: record `Finished`, close.
    Done,
}

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Host header value.
    pub host: String,
    /// Path of the WebSocket endpoint, e.g. `/ws`.
    pub path: String,
}

/// Paces the ramp: at most `rate` new connections per second across all clients.
pub struct ConnectGate {
    next: parking_lot::Mutex<Instant>,
    interval: Duration,
}

impl ConnectGate {
    pub fn new(rate_per_sec: f64) -> Self {
        Self {
            next: parking_lot::Mutex::new(Instant::now()),
            interval: Duration::from_secs_f64(1.0 / rate_per_sec),
        }
    }

    pub async fn wait(&self) {
        let at = {
            let mut n = self.next.lock();
            let at = (*n).max(Instant::now());
            *n = at + self.interval;
            at
        };
        sleep_until(at).await;
    }
}

/// What every client of a run shares.
pub struct RunCtx {
    pub scenario: Scenario,
    pub target: Target,
    pub recorder: Arc<Recorder>,
    pub stats: Stats,
    pub gate: ConnectGate,
    pub source_ips: Vec<IpAddr>,
    /// `t_us` at which the load phase starts: schedule times are relative to it.
    pub load_start_us: u64,
    /// Instant of `t_us = 0`.
    pub start: Instant,
}

impl RunCtx {
    fn at_us(&self, t_us: u64) -> Instant {
        self.start + Duration::from_micros(t_us)
    }
}

/// A send not yet acked.
struct Pending {
    id: String,
    text: String,
    text_hash: u64,
    intended_us: u64,
    /// Written on the current connection and not refused.
    in_flight: bool,
    attempts: u32,
}

/// Connection shaping from the client's shaping faults.
#[derive(Debug, Clone, Default)]
struct Shaping {
    up_latency: Option<(Duration, Duration)>,
    down_latency: Option<(Duration, Duration)>,
    up_bytes_per_sec: Option<f64>,
    down_bytes_per_sec: Option<f64>,
    slice: Option<(u32, u32, Duration)>,
    up_limit: Option<u64>,
    down_limit: Option<u64>,
}

impl Shaping {
    fn of(s: &Scenario, plan: &ClientPlan) -> Self {
        let mut sh = Shaping::default();
        for &f in &plan.shaping {
            let fault = &s.faults[f];
            let up = matches!(fault.direction, Direction::Upstream | Direction::Both);
            let down = matches!(fault.direction, Direction::Downstream | Direction::Both);
            match fault.kind {
                FaultKind::Latency => {
                    let l = (
                        fault.latency.map_or(Duration::ZERO, |d| d.0),
                        fault.jitter.map_or(Duration::ZERO, |d| d.0),
                    );
                    if up {
                        sh.up_latency = Some(l);
                    }
                    if down {
                        sh.down_latency = Some(l);
                    }
                }
                FaultKind::Bandwidth => {
                    let bps = fault.rate_kbps.unwrap_or(1.0) * 1024.0;
                    if up {
                        sh.up_bytes_per_sec = Some(bps);
                    }
                    if down {
                        sh.down_bytes_per_sec = Some(bps);
                    }
                }
                FaultKind::Slicer => {
                    sh.slice = Some((
                        fault.average_size.unwrap_or(16),
                        fault.size_variation.unwrap_or(0),
                        fault.delay.map_or(Duration::ZERO, |d| d.0),
                    ));
                }
                FaultKind::LimitData => {
                    let b = fault.bytes.unwrap_or(u64::MAX);
                    if up {
                        sh.up_limit = Some(b);
                    }
                    if down {
                        sh.down_limit = Some(b);
                    }
                }
                _ => {}
            }
        }
        sh
    }
}

/// Why a session ended.
enum End {
    /// The connection is gone; reconnect after a delay.
    Disconnected,
    /// Could not connect; retry after a delay.
    ConnectFailed,
    /// The run is over for this client.
    Finished,
}

/// One simulated client.
pub struct Client {
    ctx: Arc<RunCtx>,
    plan: ClientPlan,
    sched: Schedule,
    next_action: Option<(u64, Action)>,
    dice: Dice,
    phase: watch::Receiver<Phase>,
    shaping: Shaping,
    held_epoch: Option<String>,
    held_last: u64,
    joined_once: bool,
    pending: VecDeque<Pending>,
    pause_until: Option<Instant>,
    conn: u32,
    finished: bool,
    /// Events encoded since the last hand-over to the recorder (one lock per batch).
    logbuf: Log,
    /// Messages received (all connections); added to the shared counter per batch.
    delivered: u64,
}

impl Client {
    pub fn new(ctx: Arc<RunCtx>, plan: ClientPlan, phase: watch::Receiver<Phase>) -> Self {
        let mut sched = Schedule::new(&ctx.scenario, &plan);
        let next_action = sched.next_action();
        let dice = Dice::new(ctx.scenario.seed, plan.index);
        let shaping = Shaping::of(&ctx.scenario, &plan);
        ctx.recorder.record(
            plan.index,
            &Event::Client {
                client: plan.index,
                user: &plan.user,
            },
        );
        Self {
            ctx,
            plan,
            sched,
            next_action,
            dice,
            phase,
            shaping,
            held_epoch: None,
            held_last: 0,
            joined_once: false,
            pending: VecDeque::new(),
            pause_until: None,
            conn: 0,
            finished: false,
            logbuf: Log::default(),
            delivered: 0,
        }
    }

    /// Hands buffered events to the recorder.
    fn flush_log(&mut self) {
        self.logbuf.flush(&self.ctx.recorder, self.plan.index);
    }

    /// Runs the client until the run is done.
    pub async fn run(mut self) {
        self.ctx.gate.wait().await;
        loop {
            if *self.phase.borrow() >= Phase::Done {
                break;
            }
            let end = self.session().await;
            match end {
                End::Finished => break,
                End::Disconnected | End::ConnectFailed => {
                    if *self.phase.borrow() >= Phase::Done {
                        break;
                    }
                    let delay = self.dice.reconnect_delay(&self.ctx.scenario);
                    let wake = Instant::now() + delay;
                    loop {
                        tokio::select! {
                            _ = sleep_until(wake) => break,
                            r = self.phase.changed() => {
                                if r.is_err() || *self.phase.borrow() >= Phase::Done {
                                    break;
                                }
                            }
                        }
                    }
                    self.ctx.stats.reconnects.fetch_add(1, Relaxed);
                }
            }
        }
        self.finish_record();
        self.flush_log();
        let left = self.pending.len() as i64;
        self.ctx.stats.pending.fetch_sub(left, Relaxed);
    }

    fn now_us(&self) -> u64 {
        self.ctx.recorder.now_us()
    }

    fn finish_record(&mut self) {
        if !self.finished {
            self.finished = true;
            let t_us = self.now_us();
            self.logbuf.put(&Event::Finished {
                t_us,
                client: self.plan.index,
            });
        }
    }

    async fn connect(&self) -> Result<(TcpStream, Vec<u8>), String> {
        let t = &self.ctx.target;
        let socket = if t.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| format!("socket: {e}"))?;
        if !self.ctx.source_ips.is_empty() {
            let ip = self.ctx.source_ips[self.plan.index as usize % self.ctx.source_ips.len()];
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let path = format!("{}?user={}", t.path, self.plan.user);
        let fut = async {
            let mut stream = socket
                .connect(t.addr)
                .await
                .map_err(|e| format!("connect {}: {e}", t.addr))?;
            let _ = stream.set_nodelay(true);
            let rest = wire::handshake(&mut stream, t.addr, &t.host, &path)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((stream, rest))
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("connect to {} timed out", t.addr)),
        }
    }

    async fn session(&mut self) -> End {
        let (stream, leftover) = match self.connect().await {
            Ok(s) => s,
            Err(reason) => {
                self.ctx.stats.connect_failures.fetch_add(1, Relaxed);
                let t_us = self.now_us();
                self.logbuf.put(&Event::ConnectFailed {
                    t_us,
                    client: self.plan.index,
                    reason: &reason,
                });
                self.flush_log();
                return End::ConnectFailed;
            }
        };
        self.conn += 1;
        self.ctx.stats.connects.fetch_add(1, Relaxed);
        self.ctx.stats.connected.fetch_add(1, Relaxed);
        let t_us = self.now_us();
        self.logbuf.put(&Event::Connected {
            t_us,
            client: self.plan.index,
            conn: self.conn,
        });
        for p in &mut self.pending {
            p.in_flight = false;
        }
        let mut s = Session::new(stream, leftover, &self.shaping);
        let end = self.drive(&mut s).await;
        self.flush_log();
        self.ctx.stats.connected.fetch_sub(1, Relaxed);
        if s.joined {
            self.ctx.stats.joined.fetch_sub(1, Relaxed);
        }
        end
    }

    /// Writes `join` for the client's room: resuming with `since`/`epoch` once it has
    /// joined before, asking for `history` the first time.
    fn send_join(&mut self, s: &mut Session) {
        let room = &self.plan.room;
        let (since, epoch, history) = if self.joined_once {
            (Some(self.held_last), self.held_epoch.clone(), None)
        } else {
            let h = self.ctx.scenario.groups[self.plan.group].history;
            (None, None, (h > 0).then_some(h))
        };
        let mut json = format!(r#"{{"type":"join","room":"{room}""#);
        if let Some(since) = since {
            json.push_str(&format!(r#","since":{since}"#));
        }
        if let Some(e) = &epoch {
            json.push_str(&format!(
                r#","epoch":{}"#,
                serde_json::to_string(e).unwrap_or_default()
            ));
        }
        if let Some(h) = history {
            json.push_str(&format!(r#","history":{h}"#));
        }
        json.push('}');
        s.send_text(json.as_bytes(), &mut self.dice);
        let t_us = self.now_us();
        self.logbuf.put(&Event::JoinSent {
            t_us,
            client: self.plan.index,
            conn: self.conn,
            room,
            since,
            epoch: epoch.as_deref(),
            history,
        });
    }

    /// Writes a pending send (first attempt or retry) and records it.
    fn transmit(&mut self, s: &mut Session, i: usize) {
        let p = &mut self.pending[i];
        let room = &self.plan.room;
        let json = format!(
            r#"{{"type":"send","room":"{room}","id":"{}","text":{}}}"#,
            p.id,
            serde_json::to_string(&p.text).unwrap_or_default()
        );
        p.in_flight = true;
        p.attempts += 1;
        let retry = p.attempts > 1;
        let (id, th, intended) = (p.id.clone(), p.text_hash, p.intended_us);
        s.send_text(json.as_bytes(), &mut self.dice);
        let t_us = self.now_us();
        if retry {
            self.ctx.stats.resent.fetch_add(1, Relaxed);
        } else {
            self.ctx.stats.sent.fetch_add(1, Relaxed);
            if t_us.saturating_sub(intended) > 100_000 {
                self.ctx.stats.late_sends.fetch_add(1, Relaxed);
            }
        }
        self.logbuf.put(&Event::Send {
            t_us,
            client: self.plan.index,
            conn: self.conn,
            room,
            id: &id,
            text_hash: th,
            intended_us: intended,
        });
    }

    /// Sends what can be sent now: pending messages not in flight, in order.
    fn pump(&mut self, s: &mut Session) {
        if !s.joined || s.silent_until.is_some() || s.closing.is_some() {
            return;
        }
        if let Some(p) = self.pause_until {
            if Instant::now() < p {
                return;
            }
            self.pause_until = None;
        }
        for i in 0..self.pending.len() {
            if !self.pending[i].in_flight {
                self.transmit(s, i);
            }
        }
    }

    /// Adds message number `n` to the pending queue.
    fn enqueue(&mut self, n: u64, text_len: u32, intended_us: u64) {
        if self.pending.len() >= PENDING_MAX {
            self.ctx.stats.skipped_sends.fetch_add(1, Relaxed);
            return;
        }
        let id = format!("c{}-{n}", self.plan.index);
        let mut text = String::with_capacity(text_len as usize + 32);
        message_text(
            &mut text,
            intended_us,
            &id,
            text_len,
            u64::from(self.plan.index) << 32 | n,
        );
        self.pending.push_back(Pending {
            text_hash: text_hash(&text),
            id,
            text,
            intended_us,
            in_flight: false,
            attempts: 0,
        });
        self.ctx.stats.pending.fetch_add(1, Relaxed);
    }

    fn record_closed(&mut self, cause: CloseCause, code: Option<u16>) {
        let t_us = self.now_us();
        self.logbuf.put(&Event::Closed {
            t_us,
            client: self.plan.index,
            conn: self.conn,
            cause,
            code,
        });
    }

    fn record_fault(&mut self, kind: &str, detail: &str) {
        let t_us = self.now_us();
        self.logbuf.put(&Event::Fault {
            t_us,
            client: self.plan.index,
            kind,
            detail,
        });
    }

    /// The session loop: one connection from handshake to end.
    async fn drive(&mut self, s: &mut Session) -> End {
        self.send_join(s);
        let window = self.ctx.scenario.groups[self.plan.group].window;
        let mut timer: std::pin::Pin<Box<Sleep>> = Box::pin(sleep_until(Instant::now()));
        let mut armed_at: Option<Instant> = None;
        loop {
            let phase = *self.phase.borrow();
            if phase >= Phase::Done {
                return self.finish_session(s).await;
            }
            // Closed loop: keep the window full during the load phase.
            if let Some(w) = window
                && self.plan.sender
                && phase == Phase::Load
                && s.joined
                && s.silent_until.is_none()
            {
                while self.pending.len() < w as usize {
                    if let Action::Send { n, text_len } = self.sched.next_send() {
                        let now = self.now_us();
                        self.enqueue(n, text_len, now);
                    }
                }
            }
            self.pump(s);
            if let Err(end) = s.flush() {
                return self.lost(s, end);
            }
            // The next moment something is due.
            let mut due: Option<Instant> = None;
            let mut consider = |t: Option<Instant>| {
                if let Some(t) = t {
                    due = Some(due.map_or(t, |d: Instant| d.min(t)));
                }
            };
            if phase == Phase::Load
                && let Some((t, _)) = &self.next_action
            {
                consider(Some(self.ctx.at_us(self.ctx.load_start_us + t)));
            }
            consider(self.pause_until);
            consider(s.next_wake());
            consider(s.silent_until);
            consider(s.closing);
            if due != armed_at {
                if let Some(d) = due {
                    timer.as_mut().reset(d);
                }
                armed_at = due;
            }
            let readable = s.can_read();
            let writable = s.wants_write();
            tokio::select! {
                r = self.phase.changed() => {
                    if r.is_err() {
                        return self.finish_session(s).await;
                    }
                    if *self.phase.borrow() >= Phase::Quiet && s.silent_until.is_some() {
                        // The quiet period injects no faults, and a client still silent
                        // when the run ends would be reported incomplete for our own
                        // silence: end the spell now (drop, reconnect, resume).
                        s.reset();
                        self.record_closed(CloseCause::ClientSilent, None);
                        return End::Disconnected;
                    }
                }
                r = s.stream.readable(), if readable => {
                    if r.is_err() {
                        return self.lost(s, SessionEnd::Lost);
                    }
                    match s.read(&mut self.dice) {
                        Ok(()) => {}
                        Err(e) => return self.lost(s, e),
                    }
                }
                r = s.stream.writable(), if writable => {
                    if r.is_err() {
                        return self.lost(s, SessionEnd::Lost);
                    }
                }
                _ = &mut timer, if due.is_some() => {
                    armed_at = None;
                }
            }
            // Deliver what is due from the shaping delay lines, then handle frames.
            s.release_due();
            if let Some(end) = self.handle_frames(s) {
                return end;
            }
            if let Some(end) = self.due_actions(s).await {
                return end;
            }
            self.flush_log();
        }
    }

    /// Handles complete frames in the session's read buffer. The buffer and decoder are
    /// taken out of the session meanwhile, so frames are handled in place (no copy per
    /// delivery) while handlers write to the session.
    fn handle_frames(&mut self, s: &mut Session) -> Option<End> {
        let mut rbuf = std::mem::take(&mut s.rbuf);
        let mut dec = std::mem::replace(&mut s.dec, Decoder::new(Role::Client, 0));
        let mut pos = 0;
        // Everything in one read arrived at once: one clock reading for the batch.
        let t_us = self.now_us();
        let delivered_before = self.delivered;
        let result = loop {
            match dec.decode(&mut rbuf[pos..]) {
                Ok(Decoded::NeedMore(_)) => break None,
                Ok(Decoded::Fragment(n)) => pos += n,
                Ok(Decoded::Frame(frame, n)) => {
                    pos += n;
                    match frame {
                        Frame::Text(p) => {
                            if let Some(end) = self.on_text(s, p, t_us) {
                                break Some(end);
                            }
                        }
                        Frame::Ping(p) => {
                            if s.silent_until.is_none() {
                                let p = p.to_vec();
                                s.send_control(OP_PONG, &p, &mut self.dice);
                            }
                        }
                        Frame::Close { code, .. } => {
                            self.ctx.stats.server_closes.fetch_add(1, Relaxed);
                            if s.closing.is_some() && s.slow_close {
                                // slow_close (toxiproxy's): the close handshake is done,
                                // but the TCP socket stays open, unread, until the delay
                                // is over (`due_actions` ends it then).
                                s.close_answered = Some(code);
                                break None;
                            }
                            if s.closing.is_none() {
                                // Echo the close and go.
                                let payload =
                                    code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
                                s.send_control(OP_CLOSE, &payload, &mut self.dice);
                                let _ = s.flush();
                                self.record_closed(CloseCause::ServerClose, code);
                            } else {
                                self.record_closed(CloseCause::ClientClose, code);
                            }
                            break Some(End::Disconnected);
                        }
                        Frame::Binary(_) | Frame::Pong(_) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(client = self.plan.index, error = %e, "server broke WebSocket framing");
                    self.record_closed(CloseCause::Lost, None);
                    break Some(End::Disconnected);
                }
            }
        };
        rbuf.drain(..pos);
        let delivered = self.delivered - delivered_before;
        if delivered > 0 {
            self.ctx.stats.delivered.fetch_add(delivered, Relaxed);
        }
        // Bytes released by the latency line while we were busy belong after ours.
        rbuf.extend_from_slice(&s.rbuf);
        s.rbuf = rbuf;
        s.dec = dec;
        // The server's EOF counts once every byte before it is out of the latency line
        // (TCP delivers the FIN after the data); after a completed slow-close handshake
        // it is expected.
        if result.is_none() && s.peer_eof && s.down_line.is_empty() && s.close_answered.is_none() {
            self.ctx.stats.lost_connections.fetch_add(1, Relaxed);
            self.record_closed(CloseCause::Lost, None);
            return Some(End::Disconnected);
        }
        result
    }

    /// Handles one server event that arrived at `t_us`.
    fn on_text(&mut self, s: &mut Session, payload: &[u8], t_us: u64) -> Option<End> {
        let ev = match parse::parse(payload) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(client = self.plan.index, error = %e, "unreadable server event");
                return None;
            }
        };
        let (client, conn) = (self.plan.index, self.conn);
        match ev.kind {
            Kind::Message => {
                self.logbuf.put(&ev.recorded_message(t_us, client, conn));
                self.delivered += 1;
                if let Some(i) = ev.intended_us {
                    self.ctx
                        .stats
                        .deliver_latency
                        .record(t_us.saturating_sub(i));
                }
                if *ev.room == *self.plan.room && ev.seq > self.held_last {
                    self.held_last = ev.seq;
                }
            }
            Kind::Ack => {
                let id = ev.id.as_deref().unwrap_or("");
                self.logbuf.put(&Event::Ack {
                    t_us,
                    client,
                    conn,
                    room: &ev.room,
                    id,
                    seq: ev.seq,
                    ts: ev.ts,
                    dup: ev.dup,
                });
                self.ctx.stats.acked.fetch_add(1, Relaxed);
                if ev.dup {
                    self.ctx.stats.dup_acks.fetch_add(1, Relaxed);
                }
                if let Some(i) = self.pending.iter().position(|p| p.id == id) {
                    let p = self.pending.remove(i).expect("index found");
                    self.ctx.stats.pending.fetch_sub(1, Relaxed);
                    self.ctx
                        .stats
                        .ack_latency
                        .record(t_us.saturating_sub(p.intended_us));
                }
            }
            Kind::Joined => {
                self.logbuf.put(&ev.recorded_joined(t_us, client, conn));
                if *ev.room == *self.plan.room {
                    let epoch_changed = self.held_epoch.as_deref() != Some(&*ev.epoch);
                    if ev.reset || (epoch_changed && self.held_epoch.is_some()) {
                        // Drop what we hold; the replay starts at `first`.
                        self.held_last = ev.first.saturating_sub(1);
                    } else if !self.joined_once {
                        // A plain first join starts at the head (or the history asked for).
                        let h = u64::from(self.ctx.scenario.groups[self.plan.group].history);
                        self.held_last = ev.head.saturating_sub(h).max(ev.first.saturating_sub(1));
                    }
                    self.held_epoch = Some(ev.epoch.to_string());
                    self.joined_once = true;
                    if !s.joined {
                        s.joined = true;
                        self.ctx.stats.joined.fetch_add(1, Relaxed);
                    }
                }
            }
            Kind::Error => {
                let code = ev.code.to_string();
                self.logbuf.put(&Event::Error {
                    t_us,
                    client,
                    conn,
                    code: &code,
                    id: ev.id.as_deref(),
                    room: (!ev.room.is_empty()).then_some(&*ev.room),
                });
                self.ctx.stats.error(&code);
                let pause = ev.retry_after_ms.map(Duration::from_millis);
                if let Some(id) = ev.id.as_deref()
                    && let Some(i) = self.pending.iter().position(|p| p.id == id)
                {
                    match code.as_str() {
                        "rate_limited" | "overloaded" | "internal" => {
                            // Not stored: send it again, same id, after the pause.
                            self.pending[i].in_flight = false;
                            let until = Instant::now() + pause.unwrap_or(RETRY_PAUSE_DEFAULT);
                            self.pause_until =
                                Some(self.pause_until.map_or(until, |p| p.max(until)));
                        }
                        _ => {
                            // The server will never take it (bad_request, too_long...).
                            self.pending.remove(i);
                            self.ctx.stats.pending.fetch_sub(1, Relaxed);
                        }
                    }
                } else if code == "rate_limited" || code == "overloaded" {
                    let until = Instant::now() + pause.unwrap_or(RETRY_PAUSE_DEFAULT);
                    self.pause_until = Some(self.pause_until.map_or(until, |p| p.max(until)));
                }
            }
            Kind::Left => {
                self.logbuf.put(&Event::Left {
                    t_us,
                    client,
                    conn,
                    room: &ev.room,
                });
            }
            _ => {}
        }
        None
    }

    /// Runs scheduled actions that are due, and ends silences and closes that expired.
    async fn due_actions(&mut self, s: &mut Session) -> Option<End> {
        let now = Instant::now();
        if let Some(until) = s.silent_until
            && now >= until
        {
            // End of a half-open spell: drop the connection without a close.
            s.reset();
            self.record_closed(CloseCause::ClientSilent, None);
            return Some(End::Disconnected);
        }
        if let Some(until) = s.closing
            && now >= until
        {
            // The close frame went out; the server did not answer in time (or, for a
            // slow close, the delay is over): let TCP close.
            self.record_closed(CloseCause::ClientClose, s.close_answered.flatten());
            return Some(End::Disconnected);
        }
        if *self.phase.borrow() != Phase::Load {
            return None;
        }
        while let Some((t, _)) = &self.next_action {
            let at = self.ctx.at_us(self.ctx.load_start_us + t);
            if at > now {
                break;
            }
            let (t, action) = self.next_action.take().expect("peeked");
            self.next_action = self.sched.next_action();
            let intended = self.ctx.load_start_us + t;
            match action {
                Action::Send { n, text_len } => self.enqueue(n, text_len, intended),
                Action::Typing => {
                    if s.joined && s.silent_until.is_none() {
                        let json = format!(
                            r#"{{"type":"typing","room":"{}","active":true}}"#,
                            self.plan.room
                        );
                        s.send_text(json.as_bytes(), &mut self.dice);
                    }
                }
                Action::Read => {
                    if s.joined && s.silent_until.is_none() && self.held_last > 0 {
                        let json = format!(
                            r#"{{"type":"read","room":"{}","seq":{}}}"#,
                            self.plan.room, self.held_last
                        );
                        s.send_text(json.as_bytes(), &mut self.dice);
                    }
                }
                Action::Fault { fault } => {
                    if let Some(end) = self.inject(s, fault) {
                        return Some(end);
                    }
                }
            }
        }
        None
    }

    /// Injects moment fault `f` into the current connection.
    fn inject(&mut self, s: &mut Session, f: usize) -> Option<End> {
        if s.silent_until.is_some() || s.closing.is_some() {
            return None;
        }
        let fault = self.ctx.scenario.faults[f].clone();
        let stats = &self.ctx.stats;
        match fault.kind {
            FaultKind::ResetPeer => {
                stats.resets.fetch_add(1, Relaxed);
                self.record_fault("reset_peer", "TCP reset, no close frame");
                s.reset();
                self.record_closed(CloseCause::ClientReset, None);
                Some(End::Disconnected)
            }
            FaultKind::Timeout => {
                stats.half_opens.fetch_add(1, Relaxed);
                let d = fault.duration.map_or(Duration::from_secs(60), |d| d.0);
                self.record_fault(
                    "timeout",
                    &format!("silent for {} ms, then dropped", d.as_millis()),
                );
                s.silent_until = Some(Instant::now() + d);
                None
            }
            FaultKind::Close => {
                stats.clean_closes.fetch_add(1, Relaxed);
                self.record_fault("close", "clean close");
                s.send_control(OP_CLOSE, &1000u16.to_be_bytes(), &mut self.dice);
                s.closing = Some(Instant::now() + CLOSE_WAIT);
                None
            }
            FaultKind::SlowClose => {
                stats.slow_closes.fetch_add(1, Relaxed);
                let d = fault.delay.map_or(Duration::from_secs(1), |d| d.0);
                self.record_fault(
                    "slow_close",
                    &format!("TCP close {} ms after the close frame", d.as_millis()),
                );
                s.send_control(OP_CLOSE, &1000u16.to_be_bytes(), &mut self.dice);
                s.closing = Some(Instant::now() + d);
                s.slow_close = true;
                None
            }
            _ => None,
        }
    }

    /// The connection failed under us: record why.
    fn lost(&mut self, s: &mut Session, why: SessionEnd) -> End {
        match why {
            SessionEnd::LimitData => {
                self.ctx.stats.data_limits.fetch_add(1, Relaxed);
                self.record_fault("limit_data", "byte limit reached, TCP reset");
                s.reset();
                self.record_closed(CloseCause::ClientReset, None);
            }
            SessionEnd::Lost => {
                self.ctx.stats.lost_connections.fetch_add(1, Relaxed);
                self.record_closed(CloseCause::Lost, None);
            }
        }
        End::Disconnected
    }

    /// The run is over: record `Finished` while still connected, then close with a
    /// proper handshake — send our close frame and read until the server's arrives —
    /// so the server sees a clean close, not a reset caused by unread bytes.
    async fn finish_session(&mut self, s: &mut Session) -> End {
        self.finish_record();
        if s.silent_until.is_none() {
            s.send_control(OP_CLOSE, &1000u16.to_be_bytes(), &mut self.dice);
            let deadline = Instant::now() + CLOSE_WAIT;
            'close: while Instant::now() < deadline {
                if s.flush().is_err() {
                    break;
                }
                let ready = if s.wants_write() {
                    tokio::time::timeout_at(deadline, s.stream.writable()).await
                } else {
                    tokio::time::timeout_at(deadline, s.stream.readable()).await
                };
                if !matches!(ready, Ok(Ok(()))) {
                    break;
                }
                // Discard what still arrives (the client stopped observing) up to the
                // server's close frame.
                let mut buf = [0u8; READ_CHUNK];
                match s.stream.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        s.rbuf.extend_from_slice(&buf[..n]);
                        let mut pos = 0;
                        loop {
                            match s.dec.decode(&mut s.rbuf[pos..]) {
                                Ok(Decoded::Frame(Frame::Close { .. }, _)) => break 'close,
                                Ok(Decoded::Frame(_, n)) | Ok(Decoded::Fragment(n)) => pos += n,
                                Ok(Decoded::NeedMore(_)) => break,
                                Err(_) => break 'close,
                            }
                        }
                        s.rbuf.drain(..pos);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
        }
        self.record_closed(CloseCause::RunEnd, None);
        End::Finished
    }
}

/// A client's recent events, encoded, waiting to go to the recorder.
#[derive(Default)]
struct Log {
    buf: Vec<u8>,
    events: u64,
}

impl Log {
    fn put(&mut self, ev: &Event<'_>) {
        lockstep_protocol::record::encode_event(&mut self.buf, ev);
        self.events += 1;
    }

    fn flush(&mut self, recorder: &Recorder, client: u32) {
        if self.events > 0 {
            recorder.record_encoded(client, &self.buf, self.events);
            self.buf.clear();
            self.events = 0;
            if self.buf.capacity() > 64 * 1024 {
                self.buf = Vec::new();
            }
        }
    }
}

/// Why the socket layer gave up.
enum SessionEnd {
    Lost,
    LimitData,
}

/// One connection's socket, buffers and shaping state.
struct Session {
    stream: TcpStream,
    dec: Decoder,
    /// Bytes received and released to the client (after any latency).
    rbuf: Vec<u8>,
    /// Bytes to write.
    wbuf: Vec<u8>,
    wpos: usize,
    joined: bool,
    peer_eof: bool,
    silent_until: Option<Instant>,
    closing: Option<Instant>,
    slow_close: bool,
    /// A slow close whose handshake the server completed (with this code): the socket
    /// is held open, unread, until `closing`.
    close_answered: Option<Option<u16>>,
    shaping: Shaping,
    /// Received chunks waiting out their latency.
    down_line: VecDeque<(Instant, Vec<u8>)>,
    /// Frames waiting out their upstream latency.
    up_line: VecDeque<(Instant, Vec<u8>)>,
    up_tokens: Tokens,
    down_tokens: Tokens,
    next_slice_at: Option<Instant>,
    bytes_in: u64,
    bytes_out: u64,
}

/// A byte token bucket (bandwidth faults).
struct Tokens {
    rate: Option<f64>,
    tokens: f64,
    at: Instant,
}

impl Tokens {
    fn new(rate: Option<f64>) -> Self {
        Self {
            rate,
            tokens: rate.map_or(0.0, |r| r.min(16384.0)),
            at: Instant::now(),
        }
    }

    /// Bytes allowed now (usize::MAX when unlimited).
    fn available(&mut self) -> usize {
        let Some(rate) = self.rate else {
            return usize::MAX;
        };
        let now = Instant::now();
        let burst = rate.clamp(1024.0, 65536.0);
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * rate).min(burst);
        self.at = now;
        self.tokens.max(0.0) as usize
    }

    fn spend(&mut self, n: usize) {
        if self.rate.is_some() {
            self.tokens -= n as f64;
        }
    }

    /// When at least `want` bytes (capped to the burst) will be available.
    fn ready_at(&self, want: usize) -> Option<Instant> {
        let rate = self.rate?;
        let need = (want as f64).min(rate.clamp(1024.0, 65536.0)) - self.tokens;
        if need <= 0.0 {
            return None;
        }
        Some(self.at + Duration::from_secs_f64(need / rate))
    }
}

impl Session {
    fn new(stream: TcpStream, leftover: Vec<u8>, shaping: &Shaping) -> Self {
        Self {
            stream,
            dec: Decoder::new(Role::Client, MESSAGE_BYTES_MAX),
            rbuf: leftover,
            wbuf: Vec::new(),
            wpos: 0,
            joined: false,
            peer_eof: false,
            silent_until: None,
            closing: None,
            slow_close: false,
            close_answered: None,
            up_tokens: Tokens::new(shaping.up_bytes_per_sec),
            down_tokens: Tokens::new(shaping.down_bytes_per_sec),
            shaping: shaping.clone(),
            down_line: VecDeque::new(),
            up_line: VecDeque::new(),
            next_slice_at: None,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Queues a masked text frame (through the upstream latency line, if any).
    fn send_text(&mut self, payload: &[u8], dice: &mut Dice) {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        wire::text_frame(&mut frame, payload);
        self.queue_out(frame, dice);
    }

    fn send_control(&mut self, op: u8, payload: &[u8], dice: &mut Dice) {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        wire::control_frame(&mut frame, op, payload);
        self.queue_out(frame, dice);
    }

    fn queue_out(&mut self, frame: Vec<u8>, dice: &mut Dice) {
        match self.shaping.up_latency {
            Some((lat, jit)) => {
                let at = Instant::now() + dice.latency(lat, jit);
                // Order-preserving, as TCP is: never released before an earlier frame.
                let at = self.up_line.back().map_or(at, |(prev, _)| at.max(*prev));
                self.up_line.push_back((at, frame));
            }
            None => self.wbuf.extend_from_slice(&frame),
        }
    }

    fn can_read(&mut self) -> bool {
        self.silent_until.is_none()
            && !self.peer_eof
            && self.close_answered.is_none()
            && self.down_tokens.available() >= SLOW_READ_BYTES_MIN
    }

    fn wants_write(&self) -> bool {
        self.silent_until.is_none()
            && self.close_answered.is_none()
            && self.wpos < self.wbuf.len()
            && self.next_slice_at.is_none()
    }

    /// The earliest moment shaping needs attention (bandwidth buckets are brought up
    /// to date first, so a wake-up is never scheduled in the past).
    fn next_wake(&mut self) -> Option<Instant> {
        let _ = self.up_tokens.available();
        let _ = self.down_tokens.available();
        let mut t: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |y: Instant| y.min(x)));
            }
        };
        consider(self.down_line.front().map(|(at, _)| *at));
        consider(self.up_line.front().map(|(at, _)| *at));
        consider(self.next_slice_at);
        if self.wpos < self.wbuf.len() {
            consider(self.up_tokens.ready_at(1));
        }
        if self.silent_until.is_none() {
            consider(self.down_tokens.ready_at(SLOW_READ_BYTES_MIN));
        }
        t
    }

    /// Moves what has waited out its latency into the buffers.
    fn release_due(&mut self) {
        let now = Instant::now();
        while let Some((at, _)) = self.down_line.front() {
            if *at > now {
                break;
            }
            let (_, chunk) = self.down_line.pop_front().expect("front exists");
            self.rbuf.extend_from_slice(&chunk);
        }
        while let Some((at, _)) = self.up_line.front() {
            if *at > now {
                break;
            }
            let (_, frame) = self.up_line.pop_front().expect("front exists");
            self.wbuf.extend_from_slice(&frame);
        }
        if self.next_slice_at.is_some_and(|t| t <= now) {
            self.next_slice_at = None;
        }
    }

    /// Reads what the socket has, within the downstream bandwidth.
    fn read(&mut self, dice: &mut Dice) -> Result<(), SessionEnd> {
        use bytes::BufMut as _;
        let allowed = self.down_tokens.available().min(READ_CHUNK);
        if allowed == 0 {
            return Ok(());
        }
        // Straight into the read buffer, unless the bytes must first wait out a latency.
        let mut delayed = Vec::new();
        let target = if self.shaping.down_latency.is_some() {
            &mut delayed
        } else {
            &mut self.rbuf
        };
        target.reserve(allowed);
        match self.stream.try_read_buf(&mut target.limit(allowed)) {
            Ok(0) => {
                self.peer_eof = true;
                Ok(())
            }
            Ok(n) => {
                self.down_tokens.spend(n);
                self.bytes_in += n as u64;
                if self.shaping.down_limit.is_some_and(|l| self.bytes_in > l) {
                    return Err(SessionEnd::LimitData);
                }
                if let Some((lat, jit)) = self.shaping.down_latency {
                    let at = Instant::now() + dice.latency(lat, jit);
                    let at = self.down_line.back().map_or(at, |(prev, _)| at.max(*prev));
                    self.down_line.push_back((at, delayed));
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(_) => Err(SessionEnd::Lost),
        }
    }

    /// Writes what the socket takes, within bandwidth and slicing.
    fn flush(&mut self) -> Result<(), SessionEnd> {
        // After a completed close handshake nothing more goes on the wire.
        if self.silent_until.is_some()
            || self.next_slice_at.is_some()
            || self.close_answered.is_some()
        {
            return Ok(());
        }
        while self.wpos < self.wbuf.len() {
            let mut n = self.wbuf.len() - self.wpos;
            n = n.min(self.up_tokens.available());
            if let Some((avg, var, _)) = self.shaping.slice {
                let lo = avg.saturating_sub(var).max(1) as usize;
                let hi = (avg + var).max(1) as usize;
                n = n.min(lo + (self.bytes_out as usize % (hi - lo + 1)));
            }
            if n == 0 {
                break;
            }
            match self.stream.try_write(&self.wbuf[self.wpos..self.wpos + n]) {
                Ok(w) => {
                    self.wpos += w;
                    self.bytes_out += w as u64;
                    self.up_tokens.spend(w);
                    if self.shaping.up_limit.is_some_and(|l| self.bytes_out > l) {
                        return Err(SessionEnd::LimitData);
                    }
                    if let Some((_, _, delay)) = self.shaping.slice
                        && !delay.is_zero()
                    {
                        self.next_slice_at = Some(Instant::now() + delay);
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(SessionEnd::Lost),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        } else if self.wpos > 64 * 1024 {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        Ok(())
    }

    /// Makes the coming drop of the socket a TCP reset (no close frame, no FIN).
    fn reset(&mut self) {
        let _ = self.stream.set_zero_linger();
    }
}

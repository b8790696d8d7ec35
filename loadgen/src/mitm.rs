//! A fault proxy: sits between clients and a real server and makes the server look buggy,
//! so end-to-end tests can show the checker catches each kind of bug — and, with
//! [`Bug::None`], that it reports nothing against the same server without one.
//!
//! It accepts TCP connections on 127.0.0.1, opens one to the target per client, passes the
//! HTTP upgrade through untouched, then reads the WebSocket frames both ways. Client frames
//! are unmasked (a copy) only to read `join` requests and are forwarded byte for byte.
//! Server frames are forwarded unchanged except the `message` frames the configured bug
//! picks: it drops, duplicates, swaps or corrupts one in N (corrupted text stays valid
//! JSON in a correctly re-framed text frame), or — `skip_replay` — drops the replay after
//! a `join` with `since` > 0 (the messages with seq ≤ the `head` of the `joined` answer).
//!
//! Exactly one kind of bug per proxy; [`Mitm::injected`] counts how often it struck.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstep_protocol::ws::{self, Decoded, Decoder, Frame, Role};
use lockstep_protocol::{
    ClientEvent, ServerEvent, decode_client, decode_server, encode_event_into,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Largest WebSocket message the proxy parses (the server's own limit is far lower).
const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Longest HTTP head read before giving up on parsing and passing bytes through raw.
const HTTP_HEAD_BYTES_MAX: usize = 64 * 1024;
/// How long `reorder` holds a message back waiting for the next one of its room; after
/// that it is delivered late but in order (nothing to swap with).
const REORDER_HOLD_MAX: Duration = Duration::from_millis(100);
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The bug the proxy adds to the server's `message` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// Forward everything unchanged.
    None,
    /// Drop every N-th message frame of a connection.
    Drop { every: u64 },
    /// Send every N-th message frame twice.
    Duplicate { every: u64 },
    /// Hold every N-th message frame back and deliver it after the next message of the
    /// same room on the connection.
    Reorder { every: u64 },
    /// Change the text of every N-th message frame.
    Corrupt { every: u64 },
    /// After a `join` with `since` > 0 (a resume), drop the replayed messages of that
    /// room. `since: 0` is left alone: it resumes nothing.
    SkipReplay,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "bad fault `{0}`: expected none, drop:N, duplicate:N, reorder:N, corrupt:N or skip_replay \
     (N at least 1)"
)]
pub struct BugParseError(String);

impl FromStr for Bug {
    type Err = BugParseError;

    fn from_str(s: &str) -> Result<Bug, BugParseError> {
        let err = || BugParseError(s.to_owned());
        let (kind, n) = match s.split_once(':') {
            Some((k, n)) => (k, Some(n.parse::<u64>().map_err(|_| err())?)),
            None => (s, None),
        };
        let every = || n.filter(|&n| n >= 1).ok_or_else(err);
        Ok(match kind {
            "none" if n.is_none() => Bug::None,
            "skip_replay" if n.is_none() => Bug::SkipReplay,
            "drop" => Bug::Drop { every: every()? },
            "duplicate" => Bug::Duplicate { every: every()? },
            "reorder" => Bug::Reorder { every: every()? },
            "corrupt" => Bug::Corrupt { every: every()? },
            _ => return Err(err()),
        })
    }
}

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bug::None => write!(f, "none"),
            Bug::Drop { every } => write!(f, "drop:{every}"),
            Bug::Duplicate { every } => write!(f, "duplicate:{every}"),
            Bug::Reorder { every } => write!(f, "reorder:{every}"),
            Bug::Corrupt { every } => write!(f, "corrupt:{every}"),
            Bug::SkipReplay => write!(f, "skip_replay"),
        }
    }
}

impl Bug {
    /// The anomaly kind a checker should report for this bug (`None` for [`Bug::None`]).
    pub fn expected_anomaly(self) -> Option<&'static str> {
        match self {
            Bug::None => None,
            Bug::Drop { .. } => Some("lost"),
            Bug::Duplicate { .. } => Some("duplicate"),
            Bug::Reorder { .. } => Some("reordered"),
            Bug::Corrupt { .. } => Some("phantom"),
            Bug::SkipReplay => Some("resume_gap"),
        }
    }
}

/// A running proxy. Dropping it stops accepting and ends every proxied connection.
pub struct Mitm {
    /// Where clients connect instead of the server.
    pub addr: SocketAddr,
    bug: Bug,
    injected: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Mitm {
    /// Listens on 127.0.0.1 (a free port) and proxies every connection to `target`.
    pub async fn start(target: SocketAddr, bug: Bug) -> io::Result<Mitm> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let injected = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn(accept_loop(listener, target, bug, injected.clone()));
        Ok(Mitm {
            addr,
            bug,
            injected,
            accept,
        })
    }

    /// How many times the bug struck so far (frames dropped, duplicated, swapped, corrupted
    /// or skipped).
    pub fn injected(&self) -> u64 {
        self.injected.load(Relaxed)
    }

    pub fn bug(&self) -> Bug {
        self.bug
    }
}

impl Drop for Mitm {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    bug: Bug,
    injected: Arc<AtomicU64>,
) {
    // Owning the connection tasks here means aborting this task ends them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, _)) => {
                    conns.spawn(proxy(sock, target, bug, injected.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "mitm: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Rooms whose latest `join` on this connection carried `since` and is not answered yet.
type SinceJoins = Arc<Mutex<HashSet<String>>>;

async fn proxy(client: TcpStream, target: SocketAddr, bug: Bug, injected: Arc<AtomicU64>) {
    let server = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, %target, "mitm: cannot reach the server");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let joins = SinceJoins::default();
    let up = upstream(cr, sw, joins.clone());
    let down = Downstream::new(cw, bug, joins, injected).run(sr);
    let _ = tokio::join!(up, down);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Client → server: forwarded unchanged; `join`s are read (before forwarding, so the
/// answer cannot overtake what we learn) to know which joins resume.
async fn upstream(
    mut cr: OwnedReadHalf,
    mut sw: OwnedWriteHalf,
    joins: SinceJoins,
) -> io::Result<()> {
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut head = Some(Vec::new());
    let mut parse: Vec<u8> = Vec::new();
    let mut dec = Decoder::new(Role::Server, MESSAGE_BYTES_MAX);
    let mut parsing = true;
    loop {
        let n = cr.read(&mut chunk).await?;
        if n == 0 {
            let _ = sw.shutdown().await;
            return Ok(());
        }
        let data = &chunk[..n];
        match &mut head {
            Some(h) => {
                h.extend_from_slice(data);
                if let Some(p) = find(h, b"\r\n\r\n") {
                    parse.extend_from_slice(&h[p + 4..]);
                    head = None;
                } else if h.len() > HTTP_HEAD_BYTES_MAX {
                    parsing = false;
                    head = None;
                }
            }
            None if parsing => parse.extend_from_slice(data),
            None => {}
        }
        let mut pos = 0;
        while parsing {
            match dec.decode(&mut parse[pos..]) {
                Ok(Decoded::NeedMore(_)) => break,
                Ok(Decoded::Fragment(k)) => pos += k,
                Ok(Decoded::Frame(f, k)) => {
                    if let Frame::Text(p) = f
                        && let Ok(ClientEvent::Join(j)) = decode_client(p)
                    {
                        let mut joins = joins.lock().expect("not poisoned");
                        // `since: 0` holds nothing, so it is no resume (and it is how
                        // the final readers read a whole room: skipping that replay
                        // would hide the history instead of breaking a resume).
                        if j.since.is_some_and(|s| s > 0) {
                            joins.insert(j.room.as_str().to_owned());
                        } else {
                            joins.remove(j.room.as_str());
                        }
                    }
                    pos += k;
                }
                Err(_) => {
                    // Not ours to judge: the server will close it. Stop reading, keep going.
                    parsing = false;
                }
            }
        }
        parse.drain(..pos.min(parse.len()));
        sw.write_all(data).await?;
    }
}

/// Server → client, with the bug.
struct Downstream {
    cw: OwnedWriteHalf,
    bug: Bug,
    joins: SinceJoins,
    injected: Arc<AtomicU64>,
    out: Vec<u8>,
    /// Message frames seen on this connection.
    messages: u64,
    /// `reorder`: the frame held back, and its room.
    held: Option<(String, Vec<u8>)>,
    /// `skip_replay`: per room, drop messages up to this seq.
    skip: HashMap<String, u64>,
}

impl Downstream {
    fn new(cw: OwnedWriteHalf, bug: Bug, joins: SinceJoins, injected: Arc<AtomicU64>) -> Self {
        Downstream {
            cw,
            bug,
            joins,
            injected,
            out: Vec::new(),
            messages: 0,
            held: None,
            skip: HashMap::new(),
        }
    }

    fn strike(&self) {
        self.injected.fetch_add(1, Relaxed);
    }

    async fn run(mut self, mut sr: OwnedReadHalf) -> io::Result<()> {
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        let mut head = Some(Vec::new());
        let mut buf: Vec<u8> = Vec::new();
        let mut dec = Decoder::new(Role::Client, MESSAGE_BYTES_MAX);
        let mut raw_mode = false;
        let mut fragmented = false;
        loop {
            let read = if self.held.is_some() {
                match tokio::time::timeout(REORDER_HOLD_MAX, sr.read(&mut chunk)).await {
                    Ok(r) => r,
                    Err(_) => {
                        // Nothing to swap with: deliver it late, in order.
                        if let Some((_, f)) = self.held.take() {
                            self.cw.write_all(&f).await?;
                        }
                        continue;
                    }
                }
            } else {
                sr.read(&mut chunk).await
            };
            let n = read?;
            if n == 0 {
                if let Some((_, f)) = self.held.take() {
                    self.out.extend_from_slice(&f);
                }
                self.out.extend_from_slice(&buf);
                self.cw.write_all(&self.out).await?;
                let _ = self.cw.shutdown().await;
                return Ok(());
            }
            let data = &chunk[..n];
            if raw_mode {
                self.cw.write_all(data).await?;
                continue;
            }
            match &mut head {
                Some(h) => {
                    h.extend_from_slice(data);
                    if let Some(p) = find(h, b"\r\n\r\n") {
                        let upgraded = h.starts_with(b"HTTP/1.1 101");
                        self.cw.write_all(&h[..p + 4]).await?;
                        buf.extend_from_slice(&h[p + 4..]);
                        head = None;
                        if !upgraded {
                            raw_mode = true;
                            self.cw.write_all(&buf).await?;
                            buf.clear();
                            continue;
                        }
                    } else if h.len() > HTTP_HEAD_BYTES_MAX {
                        raw_mode = true;
                        self.cw.write_all(h).await?;
                        head = None;
                        continue;
                    } else {
                        continue;
                    }
                }
                None => buf.extend_from_slice(data),
            }
            let mut pos = 0;
            loop {
                let start = pos;
                // What the frame is, copied out so `buf` can be borrowed again.
                let (len, text) = match dec.decode(&mut buf[pos..]) {
                    Ok(Decoded::NeedMore(_)) => break,
                    Ok(Decoded::Fragment(k)) => {
                        fragmented = true;
                        (k, None)
                    }
                    Ok(Decoded::Frame(Frame::Text(p), k)) if !fragmented => (k, Some(p.to_vec())),
                    Ok(Decoded::Frame(_, k)) => {
                        fragmented = false;
                        (k, None)
                    }
                    Err(_) => {
                        // Not a stream we understand: pass the rest through untouched.
                        raw_mode = true;
                        break;
                    }
                };
                pos += len;
                let raw = &buf[start..start + len];
                match text {
                    Some(p) => {
                        let raw = raw.to_vec();
                        self.text_frame(&p, &raw);
                    }
                    None => self.out.extend_from_slice(raw),
                }
            }
            if raw_mode {
                self.out.extend_from_slice(&buf[pos..]);
                pos = buf.len();
            }
            buf.drain(..pos);
            if !self.out.is_empty() {
                self.cw.write_all(&self.out).await?;
                self.out.clear();
            }
        }
    }

    fn text_frame(&mut self, payload: &[u8], raw: &[u8]) {
        match decode_server(payload) {
            Ok(ServerEvent::Joined(j)) => {
                let room = j.room.as_str();
                let resumed = self.joins.lock().expect("not poisoned").remove(room);
                if resumed && self.bug == Bug::SkipReplay && j.head > 0 {
                    self.skip.insert(room.to_owned(), j.head);
                }
                self.out.extend_from_slice(raw);
            }
            Ok(ServerEvent::Message(m)) => self.message(m, raw),
            _ => self.out.extend_from_slice(raw),
        }
    }

    fn message(&mut self, mut m: lockstep_protocol::Message, raw: &[u8]) {
        let room = m.room.as_str().to_owned();
        if let Some(&head) = self.skip.get(&room) {
            if m.seq <= head {
                self.strike();
                return;
            }
            self.skip.remove(&room);
        }
        self.messages += 1;
        let count = self.messages;
        let hit = |every: u64| count.is_multiple_of(every);
        match self.bug {
            Bug::None | Bug::SkipReplay => self.out.extend_from_slice(raw),
            Bug::Drop { every } => {
                if hit(every) {
                    self.strike();
                } else {
                    self.out.extend_from_slice(raw);
                }
            }
            Bug::Duplicate { every } => {
                self.out.extend_from_slice(raw);
                if hit(every) {
                    self.out.extend_from_slice(raw);
                    self.strike();
                }
            }
            Bug::Reorder { every } => match self.held.take() {
                Some((held_room, held)) if held_room == room => {
                    self.out.extend_from_slice(raw);
                    self.out.extend_from_slice(&held);
                    self.strike();
                }
                other => {
                    if let Some((_, held)) = other {
                        self.out.extend_from_slice(&held);
                    }
                    if hit(every) {
                        self.held = Some((room, raw.to_vec()));
                    } else {
                        self.out.extend_from_slice(raw);
                    }
                }
            },
            Bug::Corrupt { every } => {
                if hit(every) {
                    m.text = corrupt(&m.text);
                    ws::append_frame_with(&mut self.out, ws::OP_TEXT, None, |b| {
                        encode_event_into(b, &m)
                    });
                    self.strike();
                } else {
                    self.out.extend_from_slice(raw);
                }
            }
        }
    }
}

/// Another text, recognisably damaged, still valid UTF-8.
fn corrupt(text: &str) -> String {
    let mut t: String = text.chars().rev().collect();
    t.push_str(" [corrupted by mitm]");
    t
}

#[cfg(test)]
mod tests;

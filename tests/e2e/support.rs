//! Test harness: servers (in-process, or the real binary as a child process), WebSocket
//! clients that log what they receive, a raw HTTP/1.1 GET, a raw WebSocket handshake for
//! half-open clients, and sequence assertions.
//!
//! Every wait here has a timeout, and a timeout panics with what was awaited and the
//! last events the client saw.

// Not every test module uses every helper.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lockstep_protocol::{Message, ServerEvent};
use lockstep_server::{Config, Server};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Runs `fut`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    within_for(WAIT, what, fut).await
}

/// Runs `fut`, failing the test if it takes longer than `limit`.
pub async fn within_for<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `check` every 50 ms until it gives `Some`, failing the test after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(what, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------

/// An in-process server on a free port with its own temporary database.
pub struct TestServer {
    server: Option<Server>,
    addr: SocketAddr,
    pub cfg: Config,
    dir: TempDir,
}

impl TestServer {
    /// A server with the default configuration.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// A server whose configuration `tune` may change (listen and db are preset).
    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let mut cfg = Config {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            db: dir.path().join("t.db"),
            ..Default::default()
        };
        tune(&mut cfg);
        let server = Server::start(cfg.clone())
            .await
            .unwrap_or_else(|e| panic!("server failed to start: {e}"));
        TestServer {
            addr: server.addr(),
            server: Some(server),
            cfg,
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR/ws`
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn client(&self, user: &str) -> Client {
        Client::connect(&self.url(), user).await
    }

    /// Graceful shutdown; fails the test if it errs or hangs.
    pub async fn shutdown(&mut self) {
        let server = self.server.take().expect("server is running");
        within("graceful shutdown of the server", server.shutdown())
            .await
            .unwrap_or_else(|e| panic!("server shutdown failed: {e}"));
    }

    /// Starts a new server on the same database (after [`TestServer::shutdown`]).
    pub async fn restart(&mut self) {
        assert!(self.server.is_none(), "shut the server down first");
        let mut cfg = self.cfg.clone();
        cfg.listen = "127.0.0.1:0".parse().expect("valid address");
        let server = Server::start(cfg)
            .await
            .unwrap_or_else(|e| panic!("server failed to restart: {e}"));
        self.addr = server.addr();
        self.server = Some(server);
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// The real `lockstep` binary running `serve` as a child process. Killed on drop.
pub struct ProcServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub db: PathBuf,
    log: PathBuf,
}

impl ProcServer {
    /// Spawns `lockstep serve --listen 127.0.0.1:PORT --db DB` and waits until
    /// `GET /healthz` answers 200. Output goes to `log` (appended).
    pub async fn spawn(db: &Path, log: &Path) -> ProcServer {
        // A port picked by binding and releasing may be taken again before the child binds
        // it; try a few.
        for _ in 0..3 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
                .parse()
                .expect("valid address");
            let out = File::options()
                .create(true)
                .append(true)
                .open(log)
                .expect("open the server log");
            let err = out.try_clone().expect("clone the log handle");
            let child = Command::new(env!("CARGO_BIN_EXE_lockstep"))
                .arg("serve")
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--db")
                .arg(db)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("spawn the lockstep binary");
            let mut server = ProcServer {
                child: Some(child),
                addr,
                db: db.to_owned(),
                log: log.to_owned(),
            };
            if server.wait_ready().await {
                return server;
            }
        }
        panic!(
            "the lockstep binary never became healthy; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    /// Waits for `/healthz` 200; false if the process exited first.
    async fn wait_ready(&mut self) -> bool {
        let addr = self.addr;
        let ready = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                    let _ = status;
                    return false;
                }
                if let Ok(r) = try_http_get(addr, "/healthz").await
                    && r.status == 200
                {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match ready {
            Ok(ok) => ok,
            Err(_) => panic!(
                "timed out waiting for GET /healthz of the lockstep binary; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            ),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// SIGKILL (`Child::kill` on Unix) and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL the server");
            c.wait().expect("reap the server");
        }
    }
}

impl Drop for ProcServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `URL?user=NAME`
pub fn user_url(url: &str, user: &str) -> String {
    format!("{url}?user={user}")
}

/// The server-to-client event types of the contract.
const KNOWN_SERVER_EVENTS: [&str; 11] = [
    "welcome", "joined", "message", "ack", "typing", "read", "presence", "left", "history",
    "error", "pong",
];

/// A WebSocket client that remembers every `message` (per room), `ack` and `error` it
/// receives, whichever helper read it.
pub struct Client {
    pub user: String,
    /// The `welcome` event the connection opened with.
    pub welcome: Value,
    ws: Ws,
    /// Every `message` event received, per room, in arrival order.
    pub messages: HashMap<String, Vec<Message>>,
    /// Every `ack` received, in arrival order.
    pub acks: Vec<Value>,
    /// Every `error` received, in arrival order.
    pub errors: Vec<Value>,
    /// The last few events, for failure messages.
    recent: VecDeque<String>,
}

impl Client {
    /// Connects as `user` (`?user=NAME`) and reads the `welcome`.
    pub async fn connect(url: &str, user: &str) -> Client {
        Client::connect_url(&user_url(url, user), user).await
    }

    /// Connects to exactly `url`; `label` names the client in failure messages.
    pub async fn connect_url(url: &str, label: &str) -> Client {
        let (ws, _) = within(
            &format!("the WebSocket upgrade of {label}"),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade of {label} failed: {e}"));
        Client::opened(ws, label).await
    }

    /// Connects with a small socket receive buffer, so that not reading soon pushes back
    /// on the server.
    pub async fn connect_small_rcvbuf(addr: SocketAddr, user: &str, rcvbuf: u32) -> Client {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
        let tcp = within("TCP connect", sock.connect(addr))
            .await
            .expect("TCP connect");
        let url = user_url(&format!("ws://{addr}/ws"), user);
        let (ws, _) = within(
            &format!("the WebSocket upgrade of {user}"),
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)),
        )
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade of {user} failed: {e}"));
        Client::opened(ws, user).await
    }

    async fn opened(ws: Ws, user: &str) -> Client {
        let mut c = Client {
            user: user.to_owned(),
            welcome: Value::Null,
            ws,
            messages: HashMap::new(),
            acks: Vec::new(),
            errors: Vec::new(),
            recent: VecDeque::new(),
        };
        let w = c.next_event().await;
        assert_eq!(
            w["type"], "welcome",
            "the first event must be `welcome`: {w}"
        );
        c.welcome = w;
        c
    }

    fn note(&mut self, s: String) {
        if self.recent.len() == 12 {
            self.recent.pop_front();
        }
        let mut s = s;
        if s.len() > 300 {
            let mut end = 300;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push('…');
        }
        self.recent.push_back(s);
    }

    /// Parses one text frame, checks it against the wire types and logs it.
    fn record(&mut self, text: &str) -> Value {
        let v: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("{}: server sent invalid JSON ({e}): {text}", self.user));
        let ty = v["type"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: event without a string type: {text}", self.user));
        // Every event type of the contract must decode (new types are allowed extensions).
        let typed = if KNOWN_SERVER_EVENTS.contains(&ty) {
            Some(
                lockstep_protocol::decode_server(text.as_bytes())
                    .unwrap_or_else(|e| panic!("{}: malformed `{ty}` ({e}): {text}", self.user)),
            )
        } else {
            None
        };
        match typed {
            Some(ServerEvent::Message(m)) => {
                self.messages
                    .entry(m.room.as_str().to_owned())
                    .or_default()
                    .push(m);
            }
            Some(ServerEvent::Ack(_)) => self.acks.push(v.clone()),
            Some(ServerEvent::Error(_)) => self.errors.push(v.clone()),
            _ => {}
        }
        self.note(text.to_owned());
        v
    }

    /// The next text event; Err when the connection closed or failed. No timeout.
    async fn read_event(&mut self) -> Result<Value, String> {
        loop {
            match self.ws.next().await {
                None => return Err("the connection ended".into()),
                Some(Err(e)) => return Err(format!("the connection failed: {e}")),
                Some(Ok(WsMessage::Text(t))) => return Ok(self.record(t.as_str())),
                Some(Ok(WsMessage::Close(f))) => {
                    return Err(format!("the server closed the connection: {f:?}"));
                }
                Some(Ok(WsMessage::Binary(b))) => {
                    return Err(format!("unexpected binary frame of {} bytes", b.len()));
                }
                // Pings are answered by tungstenite itself.
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads events until `pred` accepts one, which is returned. Fails the test on
    /// timeout ([`WAIT`]), on close, and on any `error` event `pred` does not accept.
    pub async fn recv_until(&mut self, what: &str, pred: impl FnMut(&Value) -> bool) -> Value {
        self.recv_until_for(WAIT, what, pred).await
    }

    pub async fn recv_until_for(
        &mut self,
        limit: Duration,
        what: &str,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let fut = async {
            loop {
                let v = self.read_event().await?;
                if pred(&v) {
                    return Ok(v);
                }
                if v["type"] == "error" {
                    return Err(format!("unexpected error event {v}"));
                }
            }
        };
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!(
                "{}: {e} while waiting for {what}; last events: {:#?}",
                self.user, self.recent
            ),
            Err(_) => panic!(
                "{}: timed out after {limit:?} waiting for {what}; last events: {:#?}",
                self.user, self.recent
            ),
        }
    }

    /// The next event of any type (an `error` included).
    pub async fn next_event(&mut self) -> Value {
        self.recv_until("any event", |_| true).await
    }

    /// The next event, decoded into the protocol crate's type.
    pub async fn next_server_event(&mut self) -> ServerEvent {
        let v = self.next_event().await;
        lockstep_protocol::decode_server(v.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{}: not a known server event ({e}): {v}", self.user))
    }

    /// The next event, or `None` once the connection ended (closed, reset or failed).
    /// Fails the test only on timeout.
    pub async fn next_event_or_end(&mut self) -> Option<Value> {
        let user = self.user.clone();
        within(
            &format!("{user}: an event or the end of the connection"),
            async { self.read_event().await.ok() },
        )
        .await
    }

    /// The next WebSocket frame of any kind (`None` once the stream ended or failed).
    pub async fn next_ws(&mut self) -> Option<WsMessage> {
        let user = self.user.clone();
        let m = within(&format!("{user}: a WebSocket frame"), self.ws.next()).await;
        match m {
            None | Some(Err(_)) => None,
            Some(Ok(WsMessage::Text(t))) => {
                self.record(t.as_str());
                Some(WsMessage::Text(t))
            }
            Some(Ok(m)) => Some(m),
        }
    }

    /// Sends one WebSocket message and flushes.
    pub async fn send_ws(&mut self, m: WsMessage) {
        let user = self.user.clone();
        within(&format!("{user}: sending a frame"), self.ws.send(m))
            .await
            .unwrap_or_else(|e| panic!("{user}: sending a frame failed: {e}"));
    }

    /// Sends one JSON event as a text frame.
    pub async fn send_json(&mut self, v: Value) {
        self.send_ws(WsMessage::text(v.to_string())).await;
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, s: &str) {
        self.send_ws(WsMessage::text(s.to_owned())).await;
    }

    /// Queues one JSON event without flushing (see [`Client::flush`]).
    pub async fn feed_json(&mut self, v: Value) {
        let user = self.user.clone();
        within(
            &format!("{user}: queueing a frame"),
            self.ws.feed(WsMessage::text(v.to_string())),
        )
        .await
        .unwrap_or_else(|e| panic!("{user}: queueing a frame failed: {e}"));
    }

    pub async fn flush(&mut self) {
        let user = self.user.clone();
        within(&format!("{user}: flushing"), self.ws.flush())
            .await
            .unwrap_or_else(|e| panic!("{user}: flushing failed: {e}"));
    }

    /// `join` with extra fields (`since`, `history`, `epoch`); returns the `joined`.
    pub async fn join(&mut self, room: &str, extra: Value) -> Value {
        let mut req = json!({"type": "join", "room": room});
        if let Value::Object(extra) = extra {
            req.as_object_mut().expect("object").extend(extra);
        }
        self.send_json(req).await;
        self.recv_until(&format!("`joined` for room {room}"), |v| {
            v["type"] == "joined" && v["room"] == room
        })
        .await
    }

    /// `leave`; returns the `left`.
    pub async fn leave(&mut self, room: &str) -> Value {
        self.send_json(json!({"type": "leave", "room": room})).await;
        self.recv_until(&format!("`left` for room {room}"), |v| {
            v["type"] == "left" && v["room"] == room
        })
        .await
    }

    /// A `send` request as JSON.
    pub fn send_req(room: &str, id: &str, text: &str) -> Value {
        json!({"type": "send", "room": room, "id": id, "text": text})
    }

    /// Sends a `send` without waiting.
    pub async fn send_msg(&mut self, room: &str, id: &str, text: &str) {
        self.send_json(Client::send_req(room, id, text)).await;
    }

    /// Sends a `send` and waits for its `ack`.
    pub async fn send_acked(&mut self, room: &str, id: &str, text: &str) -> Value {
        self.send_msg(room, id, text).await;
        self.wait_ack(room, id).await
    }

    /// Waits for the `ack` of (room, id). A `rate_limited` (or any other) `error` fails
    /// the test with that error.
    pub async fn wait_ack(&mut self, room: &str, id: &str) -> Value {
        if let Some(a) = self
            .acks
            .iter()
            .find(|a| a["room"] == room && a["id"] == id)
        {
            return a.clone();
        }
        self.recv_until(&format!("the ack of {room}/{id}"), |v| {
            v["type"] == "ack" && v["room"] == room && v["id"] == id
        })
        .await
    }

    /// Waits until `n` acks in total have arrived on this connection.
    pub async fn wait_acks(&mut self, n: usize) {
        if self.acks.len() >= n {
            return;
        }
        let have = self.acks.len();
        let mut seen = have;
        self.recv_until(&format!("{n} acks (had {have})"), |v| {
            if v["type"] == "ack" {
                seen += 1;
            }
            seen >= n
        })
        .await;
    }

    /// Waits for the next `error` event.
    pub async fn expect_error(&mut self, what: &str) -> Value {
        self.recv_until(&format!("an error answering {what}"), |v| {
            v["type"] == "error"
        })
        .await
    }

    /// Waits until a `message` of `room` with seq >= `seq` has arrived.
    pub async fn wait_seq(&mut self, room: &str, seq: u64) {
        if self.last_seq(room) >= seq {
            return;
        }
        self.recv_until(&format!("message {room}#{seq}"), |v| {
            v["type"] == "message" && v["room"] == room && v["seq"].as_u64() >= Some(seq)
        })
        .await;
    }

    /// Waits until `n` messages of `room` have arrived on this connection.
    pub async fn wait_count(&mut self, room: &str, n: usize) {
        if self.msgs(room).len() >= n {
            return;
        }
        let mut seen = self.msgs(room).len();
        self.recv_until(&format!("{n} messages of {room}"), |v| {
            if v["type"] == "message" && v["room"] == room {
                seen += 1;
            }
            seen >= n
        })
        .await;
    }

    /// The messages of `room` received so far, in arrival order.
    pub fn msgs(&self, room: &str) -> &[Message] {
        self.messages.get(room).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn seqs(&self, room: &str) -> Vec<u64> {
        self.msgs(room).iter().map(|m| m.seq).collect()
    }

    /// The highest seq of `room` received so far (0 if none).
    pub fn last_seq(&self, room: &str) -> u64 {
        self.msgs(room).iter().map(|m| m.seq).max().unwrap_or(0)
    }

    /// Forgets the messages of `room` received so far.
    pub fn forget(&mut self, room: &str) {
        self.messages.remove(room);
    }

    /// Application ping/pong round trip: proves the connection is usable.
    pub async fn ping_pong(&mut self, t: Value) {
        self.send_json(json!({"type": "ping", "t": t})).await;
        let pong = self
            .recv_until(&format!("pong {t}"), |v| v["type"] == "pong")
            .await;
        assert_eq!(pong["t"], t, "pong must echo t: {pong}");
    }

    /// Reads until the server's close frame; returns its code (`None` when the stream
    /// ended without one). Text frames on the way are logged.
    pub async fn expect_close(&mut self) -> Option<u16> {
        let user = self.user.clone();
        within(
            &format!("{user}: the server closing the connection"),
            async {
                loop {
                    match self.ws.next().await {
                        None | Some(Err(_)) => return None,
                        Some(Ok(WsMessage::Close(f))) => return f.map(|f| u16::from(f.code)),
                        Some(Ok(WsMessage::Text(t))) => {
                            self.record(t.as_str());
                        }
                        Some(Ok(_)) => {}
                    }
                }
            },
        )
        .await
    }

    /// Drops the TCP connection without a WebSocket close frame.
    pub fn abort(self) {
        let tcp = self.ws.into_inner();
        drop(tcp);
    }

    /// A clean close handshake (best effort).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(WAIT, self.ws.close(None)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Sequence assertions
// ---------------------------------------------------------------------------------------

/// Asserts that `msgs` are exactly the seqs `first..=last`, in order, each once.
pub fn assert_seqs(msgs: &[Message], first: u64, last: u64, ctx: &str) {
    let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
    let want: Vec<u64> = (first..=last).collect();
    if seqs != want {
        let at = seqs
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .unwrap_or(seqs.len().min(want.len()));
        let lo = at.saturating_sub(3);
        panic!(
            "{ctx}: expected seqs {first}..={last} ({} messages) in order, each once; got {} \
             messages, first difference at index {at}: got {:?}, wanted {:?}",
            want.len(),
            seqs.len(),
            &seqs[lo.min(seqs.len())..(at + 3).min(seqs.len())],
            &want[lo.min(want.len())..(at + 3).min(want.len())],
        );
    }
}

/// Asserts strictly increasing seqs with no gap (whatever the first one is).
pub fn assert_gap_free(msgs: &[Message], ctx: &str) {
    if let (Some(f), Some(l)) = (msgs.first(), msgs.last()) {
        assert_seqs(msgs, f.seq, l.seq.max(f.seq), ctx);
    }
}

/// Asserts that two views of the same seq carry the same id, from, text and ts.
pub fn assert_same_message(a: &Message, b: &Message, ctx: &str) {
    assert_eq!(a.seq, b.seq, "{ctx}: comparing different seqs");
    assert!(
        a.id == b.id && a.from == b.from && a.text == b.text && a.ts == b.ts,
        "{ctx}: seq {} differs: {a:?} vs {b:?}",
        a.seq
    );
}

/// Decodes a JSON `message` object (from `history` or HTTP) into a [`Message`].
pub fn message_from_json(v: &Value) -> Message {
    let mut v = v.clone();
    if let Value::Object(o) = &mut v {
        o.insert("type".into(), json!("message"));
    }
    match lockstep_protocol::decode_server(v.to_string().as_bytes()) {
        Ok(ServerEvent::Message(m)) => m,
        other => panic!("not a message object: {v}: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// One HTTP answer.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// `GET path` over a fresh TCP connection; fails the test on error or timeout.
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    within(&format!("GET {path}"), try_http_get(addr, path))
        .await
        .unwrap_or_else(|e| panic!("GET {path} failed: {e}"))
}

/// `GET path` with HTTP/1.1 and `Connection: close`; no timeout.
pub async fn try_http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    parse_http_response(&raw)
        .ok_or_else(|| std::io::Error::other(format!("unparsable HTTP answer: {raw:?}")))
}

fn parse_http_response(raw: &[u8]) -> Option<HttpResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)?
    } else if let Some((_, len)) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        let len: usize = len.parse().ok()?;
        rest.get(..len)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_line = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// The value of a Prometheus metric (summed over its label sets), if present.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next()?.parse::<f64>().ok()?;
        *found.get_or_insert(0.0) += value;
    }
    found
}

/// Reads one metric from `GET /metrics`.
pub async fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let r = http_get(addr, "/metrics").await;
    assert_eq!(r.status, 200, "GET /metrics");
    metric_value(&r.text(), name)
}

// ---------------------------------------------------------------------------------------
// Raw WebSocket (for half-open and malformed clients)
// ---------------------------------------------------------------------------------------

/// Opens a TCP connection and completes a WebSocket upgrade by hand. Returns the stream
/// and any bytes read past the HTTP answer (the start of the WebSocket stream).
pub async fn raw_ws_handshake(addr: SocketAddr, user: &str) -> (TcpStream, Vec<u8>) {
    within(&format!("raw WebSocket upgrade of {user}"), async {
        let mut s = TcpStream::connect(addr).await.expect("TCP connect");
        let req = format!(
            "GET /ws?user={user} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write upgrade");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            let n = s.read(&mut chunk).await.expect("read upgrade answer");
            assert!(n > 0, "connection closed during the upgrade: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        (s, buf[end + 4..].to_vec())
    })
    .await
}

/// Splits server-to-client (unmasked) WebSocket frames: (opcode, payload) each. A
/// truncated last frame is left out.
pub fn parse_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 2 {
        let opcode = b[0] & 0x0f;
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if masked {
            at += 4;
        }
        if b.len() < at + len {
            break;
        }
        out.push((opcode, b[at..at + len].to_vec()));
        b = &b[at + len..];
    }
    out
}

/// A client-to-server frame (FIN set, masked with a fixed key).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

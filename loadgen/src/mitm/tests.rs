//! Each bug really happens: a real server in-process on port 0, one client talking to it
//! directly (the sender) and one through the proxy (the reader), and what the reader gets.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lockstep_server::{Config, Server};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

use super::*;

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);
/// A reader is done when nothing arrived for this long.
const QUIET: Duration = Duration::from_millis(400);

struct Setup {
    server: Option<Server>,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = Config {
            listen: "127.0.0.1:0".parse().expect("address"),
            db: dir.path().join("t.db"),
            ..Default::default()
        };
        let server = Server::start(cfg).await.expect("server starts");
        Setup {
            server: Some(server),
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().expect("running").addr()
    }

    async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.expect("clean shutdown");
        }
    }
}

async fn connect(addr: SocketAddr, user: &str) -> Client {
    let url = format!("ws://{addr}/ws?user={user}");
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("handshake");
    let welcome = next_json(&mut ws).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome");
    ws
}

async fn next_json(ws: &mut Client) -> Option<Value> {
    loop {
        match tokio::time::timeout(QUIET, ws.next()).await {
            Err(_) | Ok(None) => return None,
            Ok(Some(Ok(Ws::Text(t)))) => {
                return Some(serde_json::from_str(&t).expect("valid JSON"));
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => panic!("websocket error: {e}"),
        }
    }
}

async fn send(ws: &mut Client, v: Value) {
    ws.send(Ws::text(v.to_string())).await.expect("send");
}

/// Joins and returns the `joined` answer.
async fn join(ws: &mut Client, room: &str, since: Option<u64>) -> Value {
    let mut req = json!({"type": "join", "room": room});
    if let Some(s) = since {
        req["since"] = json!(s);
    }
    send(ws, req).await;
    loop {
        let v = next_json(ws).await.expect("joined");
        if v["type"] == "joined" {
            return v;
        }
    }
}

/// Sends `n` messages and waits for their acks.
async fn publish(ws: &mut Client, room: &str, n: u64, tag: &str) {
    for i in 1..=n {
        let msg = json!({"type": "send", "room": room, "id": format!("{tag}-{i}"), "text": format!("text {i}")});
        send(ws, msg).await;
    }
    let mut acked = 0;
    while acked < n {
        let v = next_json(ws).await.expect("acks");
        if v["type"] == "ack" {
            acked += 1;
        }
    }
}

/// Every `message` until the connection goes quiet.
async fn messages(ws: &mut Client) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(v) = next_json(ws).await {
        if v["type"] == "message" {
            out.push(v);
        }
    }
    out
}

fn seqs(ms: &[Value]) -> Vec<u64> {
    ms.iter().map(|m| m["seq"].as_u64().expect("seq")).collect()
}

/// A reader through a proxy with `bug`, after a sender published 20 messages live.
async fn live(bug: Bug) -> (Vec<Value>, u64) {
    let setup = Setup::start().await;
    let mitm = Mitm::start(setup.addr(), bug).await.expect("proxy starts");
    let mut reader = connect(mitm.addr, "reader").await;
    join(&mut reader, "r", None).await;
    let mut sender = connect(setup.addr(), "sender").await;
    join(&mut sender, "r", None).await;
    publish(&mut sender, "r", 20, "m").await;
    let got = messages(&mut reader).await;
    let injected = mitm.injected();
    drop(reader);
    drop(sender);
    drop(mitm);
    setup.stop().await;
    (got, injected)
}

#[test]
fn bugs_parse_and_print() {
    for s in [
        "none",
        "drop:1000",
        "duplicate:3",
        "reorder:2",
        "corrupt:7",
        "skip_replay",
    ] {
        let b: Bug = s.parse().unwrap();
        assert_eq!(b.to_string(), s);
    }
    for bad in [
        "drop",
        "drop:0",
        "drop:x",
        "none:3",
        "skip_replay:2",
        "explode:3",
        "",
    ] {
        assert!(bad.parse::<Bug>().is_err(), "{bad}");
    }
    assert_eq!(Bug::Drop { every: 5 }.expected_anomaly(), Some("lost"));
}

#[tokio::test]
async fn none_forwards_everything_unchanged() {
    let (got, injected) = live(Bug::None).await;
    assert_eq!(seqs(&got), (1..=20).collect::<Vec<_>>());
    assert_eq!(injected, 0);
}

#[tokio::test]
async fn drop_drops_one_in_n() {
    let (got, injected) = live(Bug::Drop { every: 5 }).await;
    let want: Vec<u64> = (1..=20).filter(|s| s % 5 != 0).collect();
    assert_eq!(seqs(&got), want);
    assert_eq!(injected, 4);
}

#[tokio::test]
async fn duplicate_sends_one_in_n_twice() {
    let (got, injected) = live(Bug::Duplicate { every: 5 }).await;
    let mut want = Vec::new();
    for s in 1..=20 {
        want.push(s);
        if s % 5 == 0 {
            want.push(s);
        }
    }
    assert_eq!(seqs(&got), want);
    assert_eq!(injected, 4);
}

#[tokio::test]
async fn reorder_swaps_one_in_n_with_the_next() {
    let (got, injected) = live(Bug::Reorder { every: 5 }).await;
    let got = seqs(&got);
    // Every message arrives exactly once...
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=20).collect::<Vec<_>>());
    // ...and 5, 10, 15 come after their successor (20 has none: delivered late, in order).
    for s in [5, 10, 15] {
        let at = |x| got.iter().position(|&y| y == x).unwrap();
        assert!(at(s) > at(s + 1), "{s} should follow {}: {got:?}", s + 1);
    }
    assert_eq!(injected, 3);
}

#[tokio::test]
async fn corrupt_changes_one_text_in_n_keeping_valid_frames() {
    let (got, injected) = live(Bug::Corrupt { every: 5 }).await;
    assert_eq!(seqs(&got), (1..=20).collect::<Vec<_>>());
    for m in &got {
        let seq = m["seq"].as_u64().unwrap();
        let text = m["text"].as_str().unwrap();
        if seq % 5 == 0 {
            assert_ne!(text, format!("text {seq}"));
            assert!(text.ends_with("[corrupted by mitm]"));
        } else {
            assert_eq!(text, format!("text {seq}"));
        }
        assert_eq!(
            m["id"],
            format!("m-{seq}"),
            "the rest of the message is intact"
        );
    }
    assert_eq!(injected, 4);
}

#[tokio::test]
async fn skip_replay_drops_the_replay_after_a_resume() {
    let setup = Setup::start().await;
    let mitm = Mitm::start(setup.addr(), Bug::SkipReplay)
        .await
        .expect("proxy starts");
    let mut sender = connect(setup.addr(), "sender").await;
    join(&mut sender, "r", None).await;
    publish(&mut sender, "r", 10, "m").await;

    // A plain join is not touched: nothing to replay, live messages pass.
    let mut plain = connect(mitm.addr, "plain").await;
    join(&mut plain, "r", None).await;
    // A resume from 3 is told head 10, but 4..=10 never come; live 11 does.
    let mut resumed = connect(mitm.addr, "resumed").await;
    let joined = join(&mut resumed, "r", Some(3)).await;
    assert_eq!(joined["head"], 10);
    publish(&mut sender, "r", 1, "live").await;
    assert_eq!(seqs(&messages(&mut resumed).await), vec![11]);
    assert_eq!(seqs(&messages(&mut plain).await), vec![11]);
    assert_eq!(mitm.injected(), 7);

    // `since: 0` resumes nothing (it is how final readers read a room): left alone.
    let mut reader = connect(mitm.addr, "final-reader").await;
    join(&mut reader, "r", Some(0)).await;
    assert_eq!(
        seqs(&messages(&mut reader).await),
        (1..=11).collect::<Vec<_>>()
    );
    assert_eq!(mitm.injected(), 7);

    // Without the bug the same resume gets its replay (the server is fine).
    let clean = Mitm::start(setup.addr(), Bug::None)
        .await
        .expect("proxy starts");
    let mut ok = connect(clean.addr, "ok").await;
    join(&mut ok, "r", Some(3)).await;
    assert_eq!(seqs(&messages(&mut ok).await), (4..=11).collect::<Vec<_>>());
    drop((sender, plain, resumed, reader, ok, mitm, clean));
    setup.stop().await;
}

//! The session: `welcome`, application ping/pong, WebSocket heartbeats, ephemeral events
//! (typing, read, presence) and graceful shutdown.

use lockstep_protocol::ServerEvent;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_names_the_user_and_announces_the_limits() {
    // Goal: `welcome` comes first and carries the user (from `?user=`, or a made-up
    // `anon-<n>`), a connection id, the node name, heartbeat_ms and max_text_bytes.
    let srv = TestServer::start_with(|c| {
        c.heartbeat_ms = 5000;
        c.max_text_bytes = 1000;
        c.node_id = "node-7".into();
    })
    .await;
    let a = srv.client("alice@example.org").await;
    let w = &a.welcome;
    assert_eq!(w["user"], "alice@example.org", "{w}");
    assert!(w["conn"].as_str().is_some_and(|c| !c.is_empty()), "{w}");
    assert_eq!(w["node"], "node-7", "{w}");
    assert_eq!(w["heartbeat_ms"], 5000, "{w}");
    assert_eq!(w["max_text_bytes"], 1000, "{w}");

    let a2 = srv.client("alice@example.org").await;
    assert_ne!(
        a.welcome["conn"], a2.welcome["conn"],
        "each connection has its own id"
    );

    let anon = Client::connect_url(&srv.url(), "anonymous").await;
    let user = anon.welcome["user"].as_str().unwrap_or_default();
    assert!(
        user.starts_with("anon-"),
        "no ?user: a made-up anon-<n>: {}",
        anon.welcome
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_answered_with_a_pong_echoing_t() {
    // Goal: `{"type":"ping","t":X}` is answered with `{"type":"pong","t":X}` for any JSON
    // value X, unknown fields ignored, before and after joining a room.
    let srv = TestServer::start().await;
    let mut c = srv.client("alice").await;
    for t in [
        json!(42),
        json!(1_710_600_000_123u64),
        json!(-7),
        json!(0.5),
        json!("abc"),
        json!(true),
        json!([1, "two", null]),
        json!({"nested": {"deep": [1.5, false]}}),
    ] {
        c.ping_pong(t).await;
    }
    c.send_json(json!({"type": "ping", "t": "x", "extra": {"ignored": 1}}))
        .await;
    match c.next_server_event().await {
        ServerEvent::Pong(p) => assert_eq!(p.t, Some(json!("x")), "{p:?}"),
        other => panic!("expected the pong, got {other:?}"),
    }
    c.join("r", json!({})).await;
    c.ping_pong(json!("after join")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pings_and_keeps_a_client_that_answers() {
    // Goal: with heartbeat_ms = 200 the server sends WebSocket pings, and a client that
    // answers them (tungstenite pongs automatically) is still connected after many more
    // than 3 periods.
    let srv = TestServer::start_with(|c| c.heartbeat_ms = 200).await;
    let mut c = srv.client("alice").await;
    assert_eq!(c.welcome["heartbeat_ms"], 200);
    let mut pings = 0;
    while pings < 8 {
        match c.next_ws().await {
            Some(WsMessage::Ping(_)) => pings += 1,
            Some(WsMessage::Close(f)) => panic!("closed while answering pings: {f:?}"),
            None => panic!("connection ended while answering pings"),
            Some(_) => {}
        }
    }
    c.ping_pong(json!("still here")).await;
    c.join("r", json!({})).await;
    let a = c.send_acked("r", "m1", "alive").await;
    assert_eq!(a["seq"], 1, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_half_open_connection_is_closed_after_missed_heartbeats() {
    // Goal: a client that completes the upgrade and then never answers anything (a
    // half-open connection) is pinged, then closed by the server, and the server stops
    // counting it as open (`lockstep_connections_open` falls back).
    let srv = TestServer::start_with(|c| c.heartbeat_ms = 200).await;
    let addr = srv.addr();
    let open = || async move {
        metric(addr, "lockstep_connections_open")
            .await
            .expect("/metrics has lockstep_connections_open")
    };
    let baseline = open().await;

    let (mut sock, mut received) = raw_ws_handshake(addr, "silent").await;
    eventually("the silent connection to be counted open", || async {
        (open().await == baseline + 1.0).then_some(())
    })
    .await;
    // Not a byte is read or written on `sock` while the server decides.
    eventually("the silent connection to be counted gone", || async {
        (open().await == baseline).then_some(())
    })
    .await;

    // The server closed its end: everything it sent, then EOF.
    within("EOF on the silent connection", async {
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let frames = parse_frames(&received);
    assert!(
        frames.first().is_some_and(|(op, p)| *op == 1
            && serde_json::from_slice::<serde_json::Value>(p)
                .is_ok_and(|v| v["type"] == "welcome")),
        "the first frame is the welcome: {frames:?}"
    );
    assert!(
        frames.iter().any(|(op, _)| *op == 9),
        "the server sent pings before giving up: {frames:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_read_and_presence_reach_the_members() {
    // Goal: `typing` goes to the other members, `read` to every member (the reader's
    // connection included), and `presence` online/offline to members as users come and go.
    const ROOM: &str = "social";
    let srv = TestServer::start().await;
    let mut a = srv.client("alice").await;
    let mut b = srv.client("bob").await;
    a.join(ROOM, json!({})).await;
    b.join(ROOM, json!({})).await;
    let p = a
        .recv_until("presence of bob", |v| {
            v["type"] == "presence" && v["user"] == "bob"
        })
        .await;
    assert_eq!(p["status"], "online", "{p}");
    assert_eq!(p["room"], ROOM, "{p}");

    a.send_json(json!({"type": "typing", "room": ROOM, "active": true}))
        .await;
    let t = b
        .recv_until("typing from alice", |v| v["type"] == "typing")
        .await;
    assert_eq!(
        (&t["room"], &t["user"], &t["active"]),
        (&json!(ROOM), &json!("alice"), &json!(true)),
        "{t}"
    );

    a.send_acked(ROOM, "m1", "hello").await;
    a.send_json(json!({"type": "read", "room": ROOM, "seq": 1}))
        .await;
    for c in [&mut a, &mut b] {
        let r = c
            .recv_until("read mark of alice", |v| v["type"] == "read")
            .await;
        assert_eq!(
            (&r["room"], &r["user"], &r["seq"]),
            (&json!(ROOM), &json!("alice"), &json!(1)),
            "{r}"
        );
    }

    b.leave(ROOM).await;
    let p = a
        .recv_until("bob going offline", |v| {
            v["type"] == "presence" && v["user"] == "bob" && v["status"] == "offline"
        })
        .await;
    assert_eq!(p["room"], ROOM, "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_with_1001_and_keeps_the_history() {
    // Goal: on shutdown connections are closed with 1001 (going away), and a server
    // started again on the same database has every acked message, in the same epoch.
    const ROOM: &str = "restart";
    let mut srv = TestServer::start().await;
    let mut a = srv.client("alice").await;
    let j = a.join(ROOM, json!({})).await;
    for i in 0..10 {
        a.send_acked(ROOM, &format!("m{i}"), &format!("text {i}"))
            .await;
    }
    let (_, code) = tokio::join!(srv.shutdown(), a.expect_close());
    assert_eq!(code, Some(1001), "shutdown closes with 1001");

    srv.restart().await;
    let mut b = srv.client("bob").await;
    let j2 = b.join(ROOM, json!({"since": 0, "epoch": j["epoch"]})).await;
    assert!(
        j2.get("reset").is_none_or(|r| r == false),
        "same history, same epoch: {j} {j2}"
    );
    assert_eq!(j2["head"], 10, "{j2}");
    b.wait_seq(ROOM, 10).await;
    assert_seqs(b.msgs(ROOM), 1, 10, "after restart");
    for (m, i) in b.msgs(ROOM).iter().zip(0..) {
        assert_eq!(m.id.as_str(), format!("m{i}"));
        assert_eq!(m.text, format!("text {i}"));
    }
    let next = b.send_acked(ROOM, "m10", "after restart").await;
    assert_eq!(next["seq"], 11, "the sequence continues: {next}");
}

//! Bad input: every kind of bad request gets the `error` code the contract names, an
//! error answering a `send` carries its `id`, and the connection stays usable; abuse
//! (more than 100 bad frames a minute) closes with 1008 and an oversized frame with 1009.

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::support::*;

/// Waits for the next `error` and checks its code is one of `codes`.
async fn expect_code(c: &mut Client, what: &str, codes: &[&str]) -> Value {
    let e = c.expect_error(what).await;
    assert!(
        codes.iter().any(|code| e["code"] == *code),
        "{what}: expected an error with code {codes:?}, got {e}"
    );
    assert!(e["message"].is_string(), "{what}: error.message: {e}");
    e
}

/// Proves the connection still works after an error.
async fn still_usable(c: &mut Client, after: &str) {
    c.ping_pong(json!(format!("usable after {after}"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json_gets_bad_request_and_the_connection_stays_usable() {
    // Goal: frames that are not a JSON object with a string `type` each get `bad_request`,
    // and the connection keeps working (a following join and send succeed).
    let srv = TestServer::start().await;
    let mut c = srv.client("alice").await;
    for raw in [
        "{nope",
        "",
        "   ",
        "[1,2]",
        "42",
        "\"hello\"",
        "null",
        r#"{"room":"a"}"#,
        r#"{"type":5,"room":"a"}"#,
        r#"{"type":"send","room":"a","id":"x","text":"unterminated"#,
        r#"{"type":"join","room":"a"} trailing"#,
    ] {
        c.send_text(raw).await;
        let e = expect_code(&mut c, &format!("{raw:?}"), &["bad_request"]).await;
        assert!(e.get("id").is_none_or(Value::is_null), "no id to echo: {e}");
        still_usable(&mut c, raw).await;
    }
    c.join("r", json!({})).await;
    let a = c.send_acked("r", "m1", "fine").await;
    assert_eq!(a["seq"], 1, "bad frames consumed no seq: {a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frame_gets_bad_request() {
    // Goal: a binary frame, even one holding a valid event, is refused with `bad_request`
    // and the connection stays usable.
    let srv = TestServer::start().await;
    let mut c = srv.client("alice").await;
    let join = json!({"type": "join", "room": "r"}).to_string();
    c.send_ws(WsMessage::binary(join.clone().into_bytes()))
        .await;
    expect_code(&mut c, "a binary frame", &["bad_request"]).await;
    c.send_ws(WsMessage::binary(vec![0u8, 159, 146, 150])).await;
    expect_code(&mut c, "a binary frame of junk", &["bad_request"]).await;
    still_usable(&mut c, "binary frames").await;
    let j = c.join("r", json!({})).await;
    assert_eq!(j["head"], 0, "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_event_types_get_bad_request() {
    // Goal: an unknown `type` (including a wrong case and a server-only event) gets
    // `bad_request`, and the connection stays usable.
    let srv = TestServer::start().await;
    let mut c = srv.client("alice").await;
    for ev in [
        json!({"type": "dance"}),
        json!({"type": "JOIN", "room": "r"}),
        json!({"type": "welcome", "user": "x"}),
        json!({"type": "message", "room": "r", "seq": 1, "id": "x", "from": "a", "text": "t", "ts": 1}),
        json!({"type": ""}),
    ] {
        c.send_json(ev.clone()).await;
        expect_code(&mut c, &ev.to_string(), &["bad_request"]).await;
        still_usable(&mut c, &ev.to_string()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_room_names_get_bad_request() {
    // Goal: room names outside 1..=64 bytes of [A-Za-z0-9._:-] get `bad_request` on join,
    // send (carrying the send's id), typing and read; names at the edge are accepted.
    let srv = TestServer::start().await;
    let mut c = srv.client("alice").await;
    let too_long = "r".repeat(65);
    for room in [
        "",
        "has space",
        "a/b",
        "é",
        "a#b",
        "a\nb",
        "alice@home",
        too_long.as_str(),
    ] {
        c.send_json(json!({"type": "join", "room": room})).await;
        expect_code(&mut c, &format!("join {room:?}"), &["bad_request"]).await;

        c.send_json(json!({"type": "send", "room": room, "id": "bad-room-send", "text": "x"}))
            .await;
        let e = expect_code(&mut c, &format!("send to {room:?}"), &["bad_request"]).await;
        assert_eq!(
            e["id"], "bad-room-send",
            "an error answering a send carries its id: {e}"
        );

        c.send_json(json!({"type": "typing", "room": room, "active": true}))
            .await;
        expect_code(&mut c, &format!("typing in {room:?}"), &["bad_request"]).await;
        c.send_json(json!({"type": "read", "room": room, "seq": 1}))
            .await;
        expect_code(&mut c, &format!("read in {room:?}"), &["bad_request"]).await;
        c.send_json(json!({"type": "history", "room": room})).await;
        expect_code(&mut c, &format!("history of {room:?}"), &["bad_request"]).await;
        still_usable(&mut c, &format!("room {room:?}")).await;
    }
    let longest = "Az09._:-".repeat(8);
    assert_eq!(longest.len(), 64);
    for room in ["x", longest.as_str()] {
        let j = c.join(room, json!({})).await;
        assert_eq!(j["room"], room, "{j}");
        let a = c.send_acked(room, "ok", "fine").await;
        assert_eq!(a["seq"], 1, "{a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_fields_get_bad_request() {
    // Goal: events with missing or ill-typed fields, or ids and limits out of range, get
    // `bad_request` (carrying the id when it answers a send that has a string id), and
    // none of them is sequenced.
    let srv = TestServer::start().await;
    let mut c = srv.client("alice").await;
    c.join("r", json!({})).await;

    // Sends with a readable id: the error carries it.
    for (ev, id) in [
        (
            json!({"type": "send", "room": "r", "id": "no-text"}),
            "no-text",
        ),
        (
            json!({"type": "send", "room": "r", "id": "num-text", "text": 5}),
            "num-text",
        ),
        (
            json!({"type": "send", "id": "no-room", "text": "x"}),
            "no-room",
        ),
    ] {
        c.send_json(ev.clone()).await;
        let e = expect_code(&mut c, &ev.to_string(), &["bad_request"]).await;
        assert_eq!(e["id"], id, "the error carries the send's id: {e}");
    }
    // Invalid ids and other events.
    let long_id = "i".repeat(65);
    for ev in [
        json!({"type": "send", "room": "r", "text": "no id"}),
        json!({"type": "send", "room": "r", "id": "", "text": "empty id"}),
        json!({"type": "send", "room": "r", "id": long_id, "text": "65-byte id"}),
        json!({"type": "send", "room": "r", "id": 7, "text": "numeric id"}),
        json!({"type": "join"}),
        json!({"type": "join", "room": 5}),
        json!({"type": "join", "room": "r2", "since": "abc"}),
        json!({"type": "join", "room": "r2", "since": -1}),
        json!({"type": "leave"}),
        json!({"type": "typing", "room": "r", "active": "yes"}),
        json!({"type": "read", "room": "r", "seq": "one"}),
        json!({"type": "history", "room": "r", "limit": 0}),
        json!({"type": "history", "room": "r", "limit": 501}),
    ] {
        c.send_json(ev.clone()).await;
        expect_code(&mut c, &ev.to_string(), &["bad_request"]).await;
        still_usable(&mut c, &ev.to_string()).await;
    }
    let a = c.send_acked("r", "good", "finally").await;
    assert_eq!(a["seq"], 1, "no refused send was sequenced: {a}");
    // The longest valid id is fine.
    let a = c.send_acked("r", &"i".repeat(64), "64-byte id").await;
    assert_eq!(a["seq"], 2, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_over_max_text_bytes_gets_too_long_with_the_send_id() {
    // Goal: a `text` longer than max_text_bytes (counted in bytes, not characters) gets
    // `too_long` carrying the send's id, is not sequenced (its id stays free), and the
    // connection stays usable; a text of exactly max_text_bytes is accepted.
    let srv = TestServer::start_with(|c| c.max_text_bytes = 100).await;
    let mut c = srv.client("alice").await;
    assert_eq!(c.welcome["max_text_bytes"], 100);
    c.join("r", json!({})).await;

    let a = c.send_acked("r", "exact", &"a".repeat(100)).await;
    assert_eq!(a["seq"], 1, "{a}");
    c.send_msg("r", "long-1", &"a".repeat(101)).await;
    let e = expect_code(&mut c, "a 101-byte text", &["too_long"]).await;
    assert_eq!(e["id"], "long-1", "{e}");
    still_usable(&mut c, "too_long").await;

    let a = c.send_acked("r", "exact-2", &"é".repeat(50)).await; // 100 bytes
    assert_eq!(a["seq"], 2, "{a}");
    c.send_msg("r", "long-2", &"é".repeat(51)).await; // 51 chars, 102 bytes
    let e = expect_code(&mut c, "a 102-byte text of 51 chars", &["too_long"]).await;
    assert_eq!(e["id"], "long-2", "{e}");

    // Nothing was stored for long-1: the id is free and the counter did not move.
    let a = c.send_acked("r", "long-1", "short now").await;
    assert_eq!(a["seq"], 3, "{a}");
    assert!(
        a.get("dup").is_none_or(|d| d == false),
        "the refused send was not stored: {a}"
    );
    c.wait_seq("r", 3).await;
    let ids: Vec<&str> = c.msgs("r").iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["exact", "exact-2", "long-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_over_the_default_limit_is_too_long_not_a_close() {
    // Goal: with the default limits, a text just over max_text_bytes that JSON-escapes to
    // a much larger frame still gets `too_long` (not a close).
    let srv = TestServer::start().await;
    let mut c = srv.client("alice").await;
    let max = c.welcome["max_text_bytes"]
        .as_u64()
        .expect("max_text_bytes") as usize;
    c.join("r", json!({})).await;
    let text = "\u{1}".repeat(max + 1); // each byte escapes to \u0001: 6 bytes on the wire
    c.send_msg("r", "escaped", &text).await;
    let e = expect_code(&mut c, "an over-long escaped text", &["too_long"]).await;
    assert_eq!(e["id"], "escaped", "{e}");
    let a = c.send_acked("r", "ok", &"\u{1}".repeat(max)).await;
    assert_eq!(a["seq"], 1, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_rooms_not_joined_get_not_member_or_unknown_room() {
    // Goal: send (with its id), typing and read to a room not joined on this connection,
    // whether it exists or not, and after leaving it, get `not_member` or `unknown_room`;
    // nothing is sequenced, and the connection stays usable.
    const CODES: &[&str] = &["not_member", "unknown_room"];
    let srv = TestServer::start().await;
    let mut bob = srv.client("bob").await;
    bob.join("busy", json!({})).await;
    let mut a = srv.client("alice").await;

    for room in ["nobody-here", "busy"] {
        a.send_msg(room, "early", "too soon").await;
        let e = expect_code(&mut a, &format!("send to {room} before join"), CODES).await;
        assert_eq!(e["id"], "early", "{e}");
        a.send_json(json!({"type": "typing", "room": room, "active": true}))
            .await;
        expect_code(&mut a, &format!("typing in {room} before join"), CODES).await;
        a.send_json(json!({"type": "read", "room": room, "seq": 1}))
            .await;
        expect_code(&mut a, &format!("read in {room} before join"), CODES).await;
        still_usable(&mut a, &format!("{room} before join")).await;
    }
    // Another connection of bob (same user, not joined on this connection).
    let mut bob2 = srv.client("bob").await;
    bob2.send_msg("busy", "other-conn", "x").await;
    let e = expect_code(&mut bob2, "send from a connection that did not join", CODES).await;
    assert_eq!(e["id"], "other-conn", "{e}");

    a.join("busy", json!({})).await;
    let ack = a.send_acked("busy", "early", "now").await;
    assert_eq!(ack["seq"], 1, "the refused sends were not stored: {ack}");
    assert!(ack.get("dup").is_none_or(|d| d == false), "{ack}");
    a.leave("busy").await;
    a.send_msg("busy", "late", "after leave").await;
    let e = expect_code(&mut a, "send after leave", CODES).await;
    assert_eq!(e["id"], "late", "{e}");
    still_usable(&mut a, "send after leave").await;

    let next = bob.send_acked("busy", "bob-1", "x").await;
    assert_eq!(next["seq"], 2, "{next}");
    bob.wait_seq("busy", 2).await;
    let ids: Vec<&str> = bob.msgs("busy").iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["early", "bob-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_100_bad_frames_a_minute_close_with_1008() {
    // Goal: 100 bad frames in a minute are each answered and tolerated; the 101st gets the
    // connection closed with 1008 (policy).
    let srv = TestServer::start().await;
    let mut c = srv.client("mallory").await;
    for i in 0..100 {
        c.feed_json(json!({"type": "garbage", "n": i})).await;
    }
    c.flush().await;
    for i in 0..100 {
        expect_code(&mut c, &format!("bad frame {i}"), &["bad_request"]).await;
    }
    still_usable(&mut c, "100 bad frames").await;
    c.send_text("{not json").await;
    let code = c.expect_close().await;
    assert_eq!(
        code,
        Some(1008),
        "the 101st bad frame within a minute closes with 1008"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_maximum_size_closes_with_1009() {
    // Goal: a WebSocket message larger than the server's maximum (64 KiB by default) gets
    // the connection closed with 1009, while a large frame under it does not.
    let srv = TestServer::start().await;
    let max = srv.cfg.frame_bytes_max;

    // Under the limit: too_long, still open.
    let mut c = srv.client("alice").await;
    c.join("r", json!({})).await;
    let text = "x".repeat(max - 200);
    c.send_msg("r", "big", &text).await;
    expect_code(&mut c, "a text under the frame limit", &["too_long"]).await;
    still_usable(&mut c, "a big frame").await;

    // Over the limit, written by hand while reading concurrently, so the close frame is
    // read even if the server stops reading our oversized frame.
    let (sock, mut received) = raw_ws_handshake(srv.addr(), "bigframe").await;
    let (mut rd, mut wr) = sock.into_split();
    let payload = json!({"type": "send", "room": "r", "id": "huge", "text": "y".repeat(max + 10)})
        .to_string();
    let frame = client_frame(1, payload.as_bytes());
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&frame).await;
        let _ = wr.flush().await;
        wr // keep our side open until the reader is done
    });
    let close = within("the server closing the oversized connection", async {
        let mut buf = [0u8; 4096];
        loop {
            if let Some((_, p)) = parse_frames(&received).into_iter().find(|(op, _)| *op == 8) {
                return Some(p);
            }
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let _ = writer.await;
    let payload = close.unwrap_or_else(|| {
        panic!(
            "the connection ended without a close frame: {:?}",
            parse_frames(&received)
        )
    });
    assert!(payload.len() >= 2, "close frame without a code");
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    assert_eq!(code, 1009, "an oversized message closes with 1009");
}

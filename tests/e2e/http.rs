//! The HTTP endpoints: health, readiness, message pages, presence, metrics.

use lockstep_protocol::Message;
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_200() {
    // Goal: GET /healthz and GET /readyz answer 200 on a running server with storage.
    let srv = TestServer::start().await;
    for path in ["/healthz", "/readyz"] {
        let r = http_get(srv.addr(), path).await;
        assert_eq!(r.status, 200, "GET {path}: {r:?}");
    }
}

/// Sends `n` messages into `room` from one client; returns the client (joined) and the
/// room's epoch.
async fn fill(srv: &TestServer, room: &str, n: usize) -> (Client, String) {
    let mut c = srv.client("writer").await;
    let j = c.join(room, json!({})).await;
    for i in 0..n {
        c.feed_json(Client::send_req(
            room,
            &format!("m{i}"),
            &format!("text {i}"),
        ))
        .await;
    }
    c.flush().await;
    c.wait_acks(n).await;
    c.wait_seq(room, n as u64).await;
    (c, j["epoch"].as_str().expect("epoch").to_owned())
}

/// `GET /rooms/{room}/messages?...` as JSON, checked for the page shape.
async fn page(srv: &TestServer, room: &str, query: &str) -> (serde_json::Value, Vec<Message>) {
    let path = format!("/rooms/{room}/messages?{query}");
    let r = http_get(srv.addr(), &path).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    let v = r.json();
    assert_eq!(v["room"], room, "{path}: {v}");
    for f in ["epoch", "first", "head", "messages"] {
        assert!(v.get(f).is_some(), "{path}: `{f}` missing");
    }
    let msgs: Vec<Message> = v["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{path}: messages is not an array"))
        .iter()
        .map(message_from_json)
        .collect();
    (v, msgs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_pages_ascend_after_s_with_at_most_limit() {
    // Goal: GET /rooms/{room}/messages answers {room, epoch, first, head, messages} with
    // the messages of seq > after, ascending, at most `limit` (≤ 500) of them, identical
    // to what was delivered; paging with `after` walks the whole room.
    const ROOM: &str = "paged";
    const N: u64 = 620;
    let srv = TestServer::start().await;
    let (writer, epoch) = fill(&srv, ROOM, N as usize).await;
    let live = writer.msgs(ROOM);

    let (v, msgs) = page(&srv, ROOM, "after=0&limit=500").await;
    assert_eq!(
        v["epoch"],
        epoch.as_str(),
        "the epoch of joined: {}",
        v["epoch"]
    );
    assert_eq!(v["first"], 1);
    assert_eq!(v["head"], N);
    assert_seqs(&msgs, 1, 500, "after=0&limit=500");
    for (a, b) in live.iter().zip(&msgs) {
        assert_same_message(a, b, "HTTP page vs live");
        assert_eq!(b.room.as_str(), ROOM);
    }

    let (_, msgs) = page(&srv, ROOM, "after=500&limit=500").await;
    assert_seqs(&msgs, 501, N, "after=500&limit=500");
    for (a, b) in live[500..].iter().zip(&msgs) {
        assert_same_message(a, b, "second page vs live");
    }
    let (_, msgs) = page(&srv, ROOM, "after=100&limit=7").await;
    assert_seqs(&msgs, 101, 107, "after=100&limit=7");
    let (_, msgs) = page(&srv, ROOM, &format!("after={N}&limit=10")).await;
    assert!(msgs.is_empty(), "nothing after the head: {msgs:?}");
    let (_, msgs) = page(&srv, ROOM, "limit=500&after=619").await;
    assert_seqs(&msgs, 620, 620, "parameters in any order");

    // Walk the room in pages of 150.
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let (v, msgs) = page(&srv, ROOM, &format!("after={after}&limit=150")).await;
        assert!(msgs.len() <= 150, "limit respected");
        let Some(last) = msgs.last() else { break };
        after = last.seq;
        all.extend(msgs);
        if after >= v["head"].as_u64().expect("head") {
            break;
        }
    }
    assert_seqs(&all, 1, N, "paged walk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_limit_over_500_is_400() {
    // Goal: `limit` above 500 is refused with 400; 500 itself is fine.
    const ROOM: &str = "limits";
    let srv = TestServer::start().await;
    let _writer = fill(&srv, ROOM, 3).await;
    let r = http_get(
        srv.addr(),
        &format!("/rooms/{ROOM}/messages?after=0&limit=501"),
    )
    .await;
    assert_eq!(r.status, 400, "limit=501: {}", r.text());
    let r = http_get(
        srv.addr(),
        &format!("/rooms/{ROOM}/messages?after=0&limit=100000"),
    )
    .await;
    assert_eq!(r.status, 400, "limit=100000: {}", r.text());
    let (_, msgs) = page(&srv, ROOM, "after=0&limit=500").await;
    assert_seqs(&msgs, 1, 3, "limit=500");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_an_unknown_room_is_404() {
    // Goal: a room that never existed answers 404.
    let srv = TestServer::start().await;
    let _writer = fill(&srv, "known", 1).await;
    let r = http_get(srv.addr(), "/rooms/never-used/messages?after=0&limit=10").await;
    assert_eq!(r.status, 404, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_the_online_users() {
    // Goal: GET /rooms/{room}/presence lists each online user once, and drops a user whose
    // last connection went away (abruptly).
    const ROOM: &str = "lobby";
    let srv = TestServer::start().await;
    let mut a1 = srv.client("alice").await;
    let mut a2 = srv.client("alice").await;
    let mut b = srv.client("bob").await;
    for c in [&mut a1, &mut a2, &mut b] {
        c.join(ROOM, json!({})).await;
    }
    let users = |v: &serde_json::Value| {
        let mut u: Vec<String> = v["users"]
            .as_array()
            .unwrap_or_else(|| panic!("users: {v}"))
            .iter()
            .map(|u| u.as_str().expect("user names are strings").to_owned())
            .collect();
        u.sort();
        u
    };
    let path = format!("/rooms/{ROOM}/presence");
    let r = http_get(srv.addr(), &path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["room"], ROOM, "{v}");
    assert_eq!(users(&v), ["alice", "bob"], "{v}");

    b.abort();
    a1.close().await;
    let addr = srv.addr();
    eventually("bob to drop out of presence", || {
        let path = path.clone();
        async move {
            let v = http_get(addr, &path).await.json();
            (users(&v) == ["alice"]).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_is_prometheus_text_with_the_sequenced_counter() {
    // Goal: GET /metrics is Prometheus text format and has
    // lockstep_messages_sequenced_total, counting the messages sequenced.
    let srv = TestServer::start().await;
    let _writer = fill(&srv, "counted", 5).await;
    let r = http_get(srv.addr(), "/metrics").await;
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "content-type: {ct}");
    let text = r.text();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not `name value`: {line:?}"));
        let bare = name.split('{').next().unwrap_or_default();
        assert!(
            !bare.is_empty()
                && bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name: {line:?}"
        );
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "metric value: {line:?}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("# TYPE lockstep_messages_sequenced_total ")),
        "a TYPE line for the counter"
    );
    let n = metric_value(&text, "lockstep_messages_sequenced_total")
        .expect("lockstep_messages_sequenced_total present");
    assert!(n >= 5.0, "5 messages were sequenced, counter says {n}");
}

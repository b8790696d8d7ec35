//! Guarantees 1-8 of the contract ("Guarantees (what the checker verifies)"), and the
//! fields of `joined` that resume depends on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use lockstep_protocol::Message;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::support::*;

/// The seq of an `ack`.
fn ack_seq(a: &Value) -> u64 {
    a["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("ack without seq: {a}"))
}

/// A `joined` field as u64.
fn field(j: &Value, name: &str) -> u64 {
    j[name]
        .as_u64()
        .unwrap_or_else(|| panic!("`{name}` missing or not a u64 in {j}"))
}

fn is_reset(j: &Value) -> bool {
    j["reset"].as_bool().unwrap_or(false)
}

// ---------------------------------------------------------------------------------------
// 1. Total order
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_concurrent_sends_get_seqs_one_to_n_each_once() {
    // Goal: concurrent senders in one room get exactly the seqs 1..=N, none skipped or
    // reused (guarantee 1), and a second room counts from 1 on its own.
    const SENDERS: usize = 5;
    const EACH: usize = 40;
    const N: u64 = (SENDERS * EACH) as u64;
    let srv = TestServer::start().await;
    let mut observer = srv.client("observer").await;
    observer.join("g1", json!({})).await;

    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let url = srv.url();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&url, &format!("s{s}")).await;
            c.join("g1", json!({})).await;
            for i in 0..EACH {
                c.feed_json(Client::send_req(
                    "g1",
                    &format!("s{s}-{i}"),
                    &format!("hi {i}"),
                ))
                .await;
            }
            c.flush().await;
            c.wait_acks(EACH).await;
            c.acks.iter().map(ack_seq).collect::<Vec<_>>()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.expect("sender task"));
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=N).collect::<Vec<_>>(),
        "the acked seqs must be exactly 1..={N}"
    );
    observer.wait_seq("g1", N).await;
    assert_seqs(observer.msgs("g1"), 1, N, "observer of g1");

    // Another room: its own sequence, from 1.
    observer.join("g1-other", json!({})).await;
    let a = observer.send_acked("g1-other", "o-1", "first").await;
    assert_eq!(ack_seq(&a), 1, "a new room starts at seq 1: {a}");
    let a = observer.send_acked("g1-other", "o-2", "second").await;
    assert_eq!(ack_seq(&a), 2, "then 2: {a}");
    let mut late = srv.client("late").await;
    let j = late.join("g1", json!({})).await;
    assert_eq!(field(&j, "head"), N, "g1 head unchanged by g1-other: {j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_g2_g7_hundred_clients_fifty_sends_each_agree_on_one_sequence() {
    // Goal: 100 clients in one room each send 50 messages concurrently; all 100 see the
    // identical sequence 1..=5000 (guarantees 1, 2), each sender's messages in the order
    // it sent them, echoed to itself (guarantee 7), and every ack's seq is the seq its
    // message was delivered with.
    const CLIENTS: usize = 100;
    const EACH: usize = 50;
    const TOTAL: u64 = (CLIENTS * EACH) as u64;
    const ROOM: &str = "crowd";
    let srv = TestServer::start().await;

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut c = srv.client(&format!("u{i}")).await;
        let j = c.join(ROOM, json!({"since": 0})).await;
        assert!(!is_reset(&j), "no reset on a fresh room: {j}");
        clients.push(c);
    }

    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                for k in 0..EACH {
                    c.feed_json(Client::send_req(
                        ROOM,
                        &format!("u{i}-{k}"),
                        &format!("message {k} of u{i}"),
                    ))
                    .await;
                }
                c.flush().await;
                // An `error` (e.g. rate_limited) fails here, naming the error.
                let mut seen = c.msgs(ROOM).len();
                let what = format!("u{i}: all {TOTAL} messages (a rate_limited error fails)");
                if seen < TOTAL as usize {
                    c.recv_until_for(Duration::from_secs(90), &what, |v| {
                        if v["type"] == "message" {
                            seen += 1;
                        }
                        seen >= TOTAL as usize
                    })
                    .await;
                }
                c.wait_acks(EACH).await;
                c
            })
        })
        .collect();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("client task"));
    }

    let reference: Vec<Message> = clients[0].msgs(ROOM).to_vec();
    assert_seqs(&reference, 1, TOTAL, "u0");
    let by_id: HashMap<&str, &Message> = reference.iter().map(|m| (m.id.as_str(), m)).collect();
    assert_eq!(
        by_id.len(),
        TOTAL as usize,
        "every message id is delivered once"
    );

    for (i, c) in clients.iter().enumerate() {
        let ctx = format!("client u{i}");
        // Guarantees 1 and 3 on this connection; guarantee 2 against u0's view.
        assert_seqs(c.msgs(ROOM), 1, TOTAL, &ctx);
        for (a, b) in reference.iter().zip(c.msgs(ROOM)) {
            assert_same_message(a, b, &ctx);
        }
        // Guarantee 7: this sender's messages in send order, from this user.
        let own: Vec<&Message> = reference
            .iter()
            .filter(|m| m.id.as_str().starts_with(&format!("u{i}-")))
            .collect();
        let order: Vec<String> = own.iter().map(|m| m.id.as_str().to_owned()).collect();
        let sent: Vec<String> = (0..EACH).map(|k| format!("u{i}-{k}")).collect();
        assert_eq!(
            order, sent,
            "{ctx}: its messages must be sequenced in send order"
        );
        for m in &own {
            assert_eq!(m.from.as_str(), format!("u{i}"), "{ctx}: `from` of {m:?}");
            assert_eq!(m.room.as_str(), ROOM);
        }
        // Every send acked once, with the seq the message was delivered with.
        assert_eq!(c.acks.len(), EACH, "{ctx}: one ack per send: {:?}", c.acks);
        assert!(c.errors.is_empty(), "{ctx}: errors: {:?}", c.errors);
        for a in &c.acks {
            let id = a["id"].as_str().expect("ack id");
            let m = by_id
                .get(id)
                .unwrap_or_else(|| panic!("{ctx}: ack for an undelivered id: {a}"));
            assert_eq!(ack_seq(a), m.seq, "{ctx}: ack seq vs delivered seq: {a}");
            assert_eq!(
                a["ts"].as_u64(),
                Some(m.ts),
                "{ctx}: ack ts vs message ts: {a}"
            );
            assert!(
                a.get("dup").is_none_or(|d| d == false),
                "{ctx}: not a dup: {a}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. Agreement
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_live_replay_history_and_http_views_agree() {
    // Goal: the same seq carries the same id, from, text and ts whether it arrives live,
    // in a join replay, in a `history` answer or from GET /rooms/{room}/messages.
    const ROOM: &str = "agree";
    let srv = TestServer::start().await;
    let mut live = srv.client("live").await;
    live.join(ROOM, json!({})).await;
    let mut alice = srv.client("alice").await;
    let mut bob = srv.client("bob").await;
    alice.join(ROOM, json!({})).await;
    bob.join(ROOM, json!({})).await;
    for i in 0..30 {
        alice
            .feed_json(Client::send_req(
                ROOM,
                &format!("a{i}"),
                &format!("from alice {i} ✓"),
            ))
            .await;
        bob.feed_json(Client::send_req(
            ROOM,
            &format!("b{i}"),
            &format!("from bob \"{i}\"\n"),
        ))
        .await;
    }
    alice.flush().await;
    bob.flush().await;
    alice.wait_acks(30).await;
    bob.wait_acks(30).await;
    live.wait_seq(ROOM, 60).await;
    let reference = live.msgs(ROOM).to_vec();
    assert_seqs(&reference, 1, 60, "live view");

    // Sender echo views.
    alice.wait_seq(ROOM, 60).await;
    bob.wait_seq(ROOM, 60).await;
    for (c, name) in [(&alice, "alice echo"), (&bob, "bob echo")] {
        assert_seqs(c.msgs(ROOM), 1, 60, name);
        for (a, b) in reference.iter().zip(c.msgs(ROOM)) {
            assert_same_message(a, b, name);
        }
    }

    // Replay view.
    let mut late = srv.client("late").await;
    late.join(ROOM, json!({"since": 0})).await;
    late.wait_seq(ROOM, 60).await;
    assert_seqs(late.msgs(ROOM), 1, 60, "replay view");
    for (a, b) in reference.iter().zip(late.msgs(ROOM)) {
        assert_same_message(a, b, "replay view");
    }

    // `history` view.
    late.send_json(json!({"type": "history", "room": ROOM, "limit": 500}))
        .await;
    let h = late
        .recv_until("the history answer", |v| v["type"] == "history")
        .await;
    assert_eq!(h["room"], ROOM, "{h}");
    assert_eq!(h["first"].as_u64(), Some(1), "history.first: {h}");
    let hist: Vec<Message> = h["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("history.messages: {h}"))
        .iter()
        .map(message_from_json)
        .collect();
    assert_seqs(&hist, 1, 60, "history view");
    for (a, b) in reference.iter().zip(&hist) {
        assert_same_message(a, b, "history view");
    }

    // HTTP view.
    let r = http_get(
        srv.addr(),
        &format!("/rooms/{ROOM}/messages?after=0&limit=500"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    let http: Vec<Message> = page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("messages: {page}"))
        .iter()
        .map(message_from_json)
        .collect();
    assert_seqs(&http, 1, 60, "HTTP view");
    for (a, b) in reference.iter().zip(&http) {
        assert_same_message(a, b, "HTTP view");
    }
}

// ---------------------------------------------------------------------------------------
// 3. Gap-free, duplicate-free, in-order delivery per connection
// ---------------------------------------------------------------------------------------

const BURST_SENDERS: usize = 3;
const BURST_BATCH: usize = 50;

/// Three senders send into `room` in pipelined batches of 50 until every joiner has
/// joined, then two more batches each; so every join lands while messages are being
/// sequenced. Joiner `i` joins (with `joins[i]`) once 100 + 150·i sends have been acked,
/// and reads nothing until the senders are done (its catch-up then includes a backlog).
/// Returns the number of messages and, per joiner, its `joined` and its client after it
/// received the last seq.
async fn join_during_burst(
    srv: &TestServer,
    room: &str,
    joins: Vec<Value>,
) -> (u64, Vec<(Value, Client)>) {
    let acked = Arc::new(AtomicU64::new(0));
    let joined = Arc::new(AtomicUsize::new(0));
    let (total_tx, total_rx) = watch::channel(0u64);
    let n_joins = joins.len();

    let senders: Vec<_> = (0..BURST_SENDERS)
        .map(|s| {
            let (url, room, acked, joined) =
                (srv.url(), room.to_owned(), acked.clone(), joined.clone());
            tokio::spawn(async move {
                let mut c = Client::connect(&url, &format!("sender{s}")).await;
                c.join(&room, json!({})).await;
                let mut sent = 0;
                let mut batches_after = 2;
                loop {
                    for _ in 0..BURST_BATCH {
                        c.feed_json(Client::send_req(&room, &format!("s{s}-{sent}"), "burst"))
                            .await;
                        sent += 1;
                    }
                    c.flush().await;
                    c.wait_acks(sent).await;
                    acked.fetch_add(BURST_BATCH as u64, Ordering::SeqCst);
                    if joined.load(Ordering::SeqCst) == n_joins {
                        batches_after -= 1;
                        if batches_after == 0 {
                            break;
                        }
                    }
                    assert!(sent < 50_000, "the joiners never joined");
                }
                c.acks.iter().map(ack_seq).collect::<Vec<_>>()
            })
        })
        .collect();

    let joiners: Vec<_> = joins
        .into_iter()
        .enumerate()
        .map(|(i, extra)| {
            let (url, room, acked, joined) =
                (srv.url(), room.to_owned(), acked.clone(), joined.clone());
            let mut total_rx = total_rx.clone();
            tokio::spawn(async move {
                let threshold = 100 + 150 * i as u64;
                eventually(&format!("{threshold} sends acked"), || {
                    let acked = acked.clone();
                    async move { (acked.load(Ordering::SeqCst) >= threshold).then_some(()) }
                })
                .await;
                let mut c = Client::connect(&url, &format!("joiner{i}")).await;
                let j = c.join(&room, extra).await;
                joined.fetch_add(1, Ordering::SeqCst);
                let total = *within("the senders finishing", total_rx.wait_for(|t| *t > 0))
                    .await
                    .expect("total published");
                c.wait_seq(&room, total).await;
                (j, c)
            })
        })
        .collect();

    let mut seqs = Vec::new();
    for t in senders {
        seqs.extend(t.await.expect("sender task"));
    }
    seqs.sort_unstable();
    let total = seqs.len() as u64;
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "acked seqs are 1..=total"
    );
    total_tx.send(total).expect("joiners listening");
    let mut out = Vec::new();
    for t in joiners {
        out.push(t.await.expect("joiner task"));
    }
    (total, out)
}

/// Rate limits are not under test in the burst tests.
fn no_rate_limits(cfg: &mut lockstep_server::Config) {
    cfg.send_rate_per_sec = 1_000_000.0;
    cfg.send_burst = 1_000_000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_g4_join_with_since_during_a_burst_has_no_gap_and_no_duplicate() {
    // Goal: joins with `since` (0 and later) while messages are being sequenced deliver
    // exactly since+1..=last across the replay-to-live seam (guarantees 3, 4).
    let srv = TestServer::start_with(no_rate_limits).await;
    let sinces = [0u64, 0, 40, 0, 90, 0];
    let joins = sinces.iter().map(|s| json!({"since": s})).collect();
    let (total, joiners) = join_during_burst(&srv, "seam-since", joins).await;
    for (i, ((j, c), since)) in joiners.iter().zip(sinces).enumerate() {
        assert!(!is_reset(j), "joiner{i}: no reset expected: {j}");
        assert!(
            field(j, "head") >= since,
            "joiner{i}: head below threshold: {j}"
        );
        assert_seqs(
            c.msgs("seam-since"),
            since + 1,
            total,
            &format!("joiner{i} (since {since})"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_join_with_history_during_a_burst_has_no_gap_and_no_duplicate() {
    // Goal: joins with `history: N` while messages are being sequenced replay the last N
    // (head-N+1..=head) and continue live with no gap and no duplicate (guarantee 3).
    let srv = TestServer::start_with(no_rate_limits).await;
    let ns = [1u64, 10, 100, 5000, 0, 37];
    let joins = ns.iter().map(|n| json!({"history": n})).collect();
    let (total, joiners) = join_during_burst(&srv, "seam-history", joins).await;
    for (i, ((j, c), n)) in joiners.iter().zip(ns).enumerate() {
        let head = field(j, "head");
        let first = (head + 1).saturating_sub(n).max(1);
        assert_seqs(
            c.msgs("seam-history"),
            first,
            total,
            &format!("joiner{i} (history {n}, head {head})"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_plain_join_during_a_burst_continues_live_from_head() {
    // Goal: a join with neither `since` nor `history` during a burst delivers exactly
    // head+1..=last: live only, nothing missing after `joined.head`, no duplicate.
    let srv = TestServer::start_with(no_rate_limits).await;
    let joins = (0..5).map(|_| json!({})).collect();
    let (total, joiners) = join_during_burst(&srv, "seam-plain", joins).await;
    for (i, (j, c)) in joiners.iter().enumerate() {
        let head = field(j, "head");
        assert_seqs(
            c.msgs("seam-plain"),
            head + 1,
            total,
            &format!("joiner{i} (head {head})"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_delivery_is_undisturbed_by_others_joining_leaving_and_failing() {
    // Goal: while other connections join, leave, close and drop abruptly, an observer's
    // delivery stays gap-free and duplicate-free, and so does every churning connection's
    // own stream while it lasts (guarantee 3).
    const ROOM: &str = "churn";
    let srv = TestServer::start_with(no_rate_limits).await;
    let mut observer = srv.client("observer").await;
    observer.join(ROOM, json!({"since": 0})).await;
    let stop = Arc::new(AtomicUsize::new(0));

    let sender = {
        let (url, stop) = (srv.url(), stop.clone());
        tokio::spawn(async move {
            let mut c = Client::connect(&url, "sender").await;
            c.join(ROOM, json!({})).await;
            let mut sent = 0;
            // Keep sending until every churner finished its rounds.
            while stop.load(Ordering::SeqCst) < 8 || sent < 500 {
                for _ in 0..25 {
                    c.feed_json(Client::send_req(ROOM, &format!("m{sent}"), "churn"))
                        .await;
                    sent += 1;
                }
                c.flush().await;
                c.wait_acks(sent).await;
                assert!(sent < 100_000, "churners never finished");
            }
            sent as u64
        })
    };

    let churners: Vec<_> = (0..8)
        .map(|i| {
            let (url, stop) = (srv.url(), stop.clone());
            tokio::spawn(async move {
                for round in 0..5 {
                    let user = format!("churn{i}");
                    let mut c = Client::connect(&url, &user).await;
                    let extra = match round % 3 {
                        0 => json!({"since": 0}),
                        1 => json!({"history": 20}),
                        _ => json!({}),
                    };
                    c.join(ROOM, extra).await;
                    c.wait_count(ROOM, 10).await;
                    assert_gap_free(c.msgs(ROOM), &format!("{user} round {round}"));
                    match (i + round) % 3 {
                        0 => {
                            c.leave(ROOM).await;
                            c.close().await;
                        }
                        1 => c.abort(),
                        _ => c.close().await,
                    }
                }
                stop.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for t in churners {
        t.await.expect("churner task");
    }
    let total = sender.await.expect("sender task");
    observer.wait_seq(ROOM, total).await;
    assert_seqs(observer.msgs(ROOM), 1, total, "observer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn g3_slow_reader_is_caught_up_without_gap_or_duplicate() {
    // Goal: a connection that stops reading while far more messages than the server keeps
    // in memory go by still gets every seq once, in order (caught up from storage), or is
    // closed with 4000 and, resuming with `since`, misses nothing (guarantees 3, 4).
    const ROOM: &str = "slow";
    const TOTAL: u64 = 3000;
    let srv = TestServer::start_with(|c| {
        no_rate_limits(c);
        c.ring_messages_max = 64;
        c.ring_bytes_max = 32 * 1024;
        c.write_buffer_bytes_max = 16 * 1024;
        c.catchup_page_messages = 50;
    })
    .await;
    let text = "x".repeat(1000);

    let mut slow = Client::connect_small_rcvbuf(srv.addr(), "slow", 4096).await;
    let j = slow.join(ROOM, json!({"since": 0})).await;
    let epoch = j["epoch"].clone();
    // Another reader keeps up, concurrently.
    let fast = {
        let url = srv.url();
        let mut fast = Client::connect(&url, "fast").await;
        fast.join(ROOM, json!({"since": 0})).await;
        tokio::spawn(async move {
            fast.wait_seq(ROOM, TOTAL).await;
            fast
        })
    };

    let mut sender = srv.client("sender").await;
    sender.join(ROOM, json!({})).await;
    // The slow client reads nothing while all of this is sequenced.
    for batch in 0..(TOTAL / 100) {
        for i in 0..100 {
            let n = batch * 100 + i;
            sender
                .feed_json(Client::send_req(ROOM, &format!("m{n}"), &text))
                .await;
        }
        sender.flush().await;
        sender.wait_acks(((batch + 1) * 100) as usize).await;
    }
    let fast = fast.await.expect("fast reader task");
    assert_seqs(fast.msgs(ROOM), 1, TOTAL, "fast reader");

    // Now read. A 4000 close means: resume with since.
    let mut held: Vec<Message> = Vec::new();
    let mut resumes = 0;
    loop {
        let ended = within("the slow reader catching up", async {
            loop {
                if slow.last_seq(ROOM) >= TOTAL {
                    return None;
                }
                match slow.next_ws().await {
                    Some(tokio_tungstenite::tungstenite::Message::Close(f)) => {
                        return Some(f.map(|f| u16::from(f.code)));
                    }
                    None => return Some(None),
                    Some(_) => {}
                }
            }
        })
        .await;
        held.extend(slow.msgs(ROOM).iter().cloned());
        assert_gap_free(&held, "slow reader so far");
        let Some(code) = ended else { break };
        assert_eq!(
            code,
            Some(4000),
            "a slow consumer may only be closed with 4000"
        );
        resumes += 1;
        assert!(resumes < 20, "closed with 4000 over and over");
        let since = held.last().map_or(0, |m| m.seq);
        slow = Client::connect_small_rcvbuf(srv.addr(), "slow", 4096).await;
        let j = slow
            .join(ROOM, json!({"since": since, "epoch": epoch}))
            .await;
        assert!(!is_reset(&j), "resume after 4000 must not reset: {j}");
    }
    assert_seqs(&held, 1, TOTAL, "slow reader");
    for (a, b) in fast.msgs(ROOM).iter().zip(&held) {
        assert_same_message(a, b, "slow vs fast reader");
    }
}

// ---------------------------------------------------------------------------------------
// 4. Resume
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g4_resume_after_abrupt_disconnect_gets_exactly_the_missing_seqs() {
    // Goal: a client that drops its TCP connection mid-stream and re-joins with `since`
    // and `epoch` gets exactly the seqs it missed, none twice, then live messages
    // (guarantee 4).
    const ROOM: &str = "resume";
    let srv = TestServer::start().await;
    let mut sender = srv.client("alice").await;
    sender.join(ROOM, json!({})).await;
    let mut bob = srv.client("bob").await;
    let j = bob.join(ROOM, json!({"since": 0})).await;
    let epoch = j["epoch"].clone();
    assert!(epoch.is_string(), "joined.epoch: {j}");

    // A stream of 200; bob drops out in the middle of it.
    for i in 0..200 {
        sender
            .feed_json(Client::send_req(ROOM, &format!("m{i}"), &format!("t{i}")))
            .await;
    }
    sender.flush().await;
    bob.wait_seq(ROOM, 40).await;
    let held = bob.msgs(ROOM).to_vec();
    assert_gap_free(&held, "bob before the drop");
    assert_eq!(held[0].seq, 1, "bob's first message");
    let since = held.last().expect("some messages").seq;
    bob.abort();
    sender.wait_acks(200).await;
    // More while bob is away.
    for i in 200..250 {
        sender
            .feed_json(Client::send_req(ROOM, &format!("m{i}"), &format!("t{i}")))
            .await;
    }
    sender.flush().await;
    sender.wait_acks(250).await;

    let mut bob = srv.client("bob").await;
    let j = bob
        .join(ROOM, json!({"since": since, "epoch": epoch}))
        .await;
    assert!(
        !is_reset(&j),
        "same epoch, since within the room: no reset: {j}"
    );
    assert_eq!(j["epoch"], epoch, "the epoch did not change: {j}");
    assert_eq!(field(&j, "head"), 250, "head at rejoin: {j}");
    bob.wait_seq(ROOM, 250).await;
    // Then live.
    for i in 250..260 {
        sender
            .send_acked(ROOM, &format!("m{i}"), &format!("t{i}"))
            .await;
    }
    bob.wait_seq(ROOM, 260).await;
    assert_seqs(bob.msgs(ROOM), since + 1, 260, "bob after resume");

    let mut all = held;
    all.extend(bob.msgs(ROOM).iter().cloned());
    assert_seqs(&all, 1, 260, "bob across the reconnect");
    sender.wait_seq(ROOM, 260).await;
    for (a, b) in sender.msgs(ROOM).iter().zip(&all) {
        assert_same_message(a, b, "bob vs alice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g4_resume_at_head_replays_nothing_then_live() {
    // Goal: `since` equal to the head (with the right epoch) replays nothing and then
    // delivers live messages from head+1 (guarantee 4).
    const ROOM: &str = "at-head";
    let srv = TestServer::start().await;
    let mut a = srv.client("alice").await;
    let j = a.join(ROOM, json!({})).await;
    let epoch = j["epoch"].clone();
    for i in 0..20 {
        a.send_acked(ROOM, &format!("m{i}"), "x").await;
    }
    let mut b = srv.client("bob").await;
    let j = b.join(ROOM, json!({"since": 20, "epoch": epoch})).await;
    assert!(!is_reset(&j), "{j}");
    assert_eq!(field(&j, "head"), 20, "{j}");
    a.send_acked(ROOM, "live-1", "live").await;
    b.wait_seq(ROOM, 21).await;
    assert_seqs(b.msgs(ROOM), 21, 21, "bob");
    assert_eq!(b.msgs(ROOM)[0].id.as_str(), "live-1");
}

// ---------------------------------------------------------------------------------------
// 5. Idempotent send
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_resend_of_an_acked_id_gets_the_same_seq_with_dup_and_is_not_redelivered() {
    // Goal: re-sending an acked (room, id) is answered with the original seq and
    // `dup:true`, is delivered to nobody again, and does not advance the seq counter
    // (guarantee 5).
    const ROOM: &str = "idem";
    let srv = TestServer::start().await;
    let mut a = srv.client("alice").await;
    a.join(ROOM, json!({})).await;
    let mut c = srv.client("carol").await;
    c.join(ROOM, json!({})).await;

    a.send_acked(ROOM, "before", "b").await;
    let first = a.send_acked(ROOM, "the-id", "hello").await;
    let seq = ack_seq(&first);
    assert_eq!(seq, 2, "{first}");
    assert!(
        first.get("dup").is_none_or(|d| d == false),
        "first ack is not a dup: {first}"
    );

    // Same connection.
    a.send_msg(ROOM, "the-id", "hello").await;
    let again = a
        .recv_until("the second ack of the-id", |v| {
            v["type"] == "ack" && v["id"] == "the-id" && v["dup"] == true
        })
        .await;
    assert_eq!(
        ack_seq(&again),
        seq,
        "dup ack carries the original seq: {again}"
    );
    assert_eq!(again["room"], ROOM);
    assert_eq!(
        again["ts"], first["ts"],
        "dup ack carries the original ts: {again}"
    );

    // Another connection of the same user (a retry after reconnecting).
    let mut a2 = srv.client("alice").await;
    a2.join(ROOM, json!({})).await;
    let third = a2.send_acked(ROOM, "the-id", "hello").await;
    assert_eq!(ack_seq(&third), seq, "{third}");
    assert_eq!(third["dup"], true, "{third}");

    // The counter did not move: the next new message gets seq + 1.
    let next = a.send_acked(ROOM, "after", "a").await;
    assert_eq!(ack_seq(&next), seq + 1, "next new message: {next}");

    c.wait_seq(ROOM, seq + 1).await;
    assert_seqs(c.msgs(ROOM), 1, seq + 1, "carol");
    let ids: Vec<&str> = c.msgs(ROOM).iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["before", "the-id", "after"], "carol sees the-id once");
    a.wait_seq(ROOM, seq + 1).await;
    assert_seqs(a.msgs(ROOM), 1, seq + 1, "alice (sender) sees the-id once");
    let r = http_get(
        srv.addr(),
        &format!("/rooms/{ROOM}/messages?after=0&limit=500"),
    )
    .await;
    assert_eq!(
        r.json()["messages"].as_array().map(Vec::len),
        Some(3),
        "stored once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_retry_after_a_lost_ack_is_safe() {
    // Goal: a client that sends and drops the connection before reading the ack, then
    // retries the same id on a new connection, gets one message stored and delivered
    // exactly once (guarantee 5: retrying after a lost ack is always safe).
    const ROOM: &str = "retry";
    let srv = TestServer::start().await;
    let mut obs = srv.client("observer").await;
    obs.join(ROOM, json!({})).await;
    let mut a = srv.client("alice").await;
    a.join(ROOM, json!({})).await;
    for i in 0..10 {
        a.feed_json(Client::send_req(
            ROOM,
            &format!("r{i}"),
            &format!("retry {i}"),
        ))
        .await;
    }
    a.flush().await;
    a.abort(); // whatever was acked, the acks are lost

    let mut a = srv.client("alice").await;
    a.join(ROOM, json!({})).await;
    for i in 0..10 {
        a.feed_json(Client::send_req(
            ROOM,
            &format!("r{i}"),
            &format!("retry {i}"),
        ))
        .await;
    }
    a.flush().await;
    a.wait_acks(10).await;
    let by_id: HashMap<&str, u64> = a
        .acks
        .iter()
        .map(|v| (v["id"].as_str().expect("ack id"), ack_seq(v)))
        .collect();
    let seqs: Vec<u64> = (0..10).map(|i| by_id[format!("r{i}").as_str()]).collect();
    assert_eq!(
        seqs,
        (1..=10).collect::<Vec<_>>(),
        "r0..r9 sequenced once each, in send order: {:?}",
        a.acks
    );
    let next = a.send_acked(ROOM, "fresh", "new").await;
    assert_eq!(ack_seq(&next), 11, "{next}");
    obs.wait_seq(ROOM, 11).await;
    assert_seqs(obs.msgs(ROOM), 1, 11, "observer");
    let ids: HashSet<&str> = obs.msgs(ROOM).iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), 11, "each id delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_pipelined_duplicate_is_sequenced_once() {
    // Goal: the same id sent twice back to back (the second before the first is acked)
    // is stored and delivered once; both acks carry the same seq and exactly one of them
    // is marked `dup` (guarantee 5).
    const ROOM: &str = "pipedup";
    let srv = TestServer::start().await;
    let mut obs = srv.client("observer").await;
    obs.join(ROOM, json!({})).await;
    let mut a = srv.client("alice").await;
    a.join(ROOM, json!({})).await;
    for _ in 0..2 {
        a.feed_json(Client::send_req(ROOM, "twice", "hello")).await;
    }
    a.feed_json(Client::send_req(ROOM, "after", "next")).await;
    a.flush().await;
    a.wait_acks(3).await;
    let acks = a.acks.clone();
    let twice: Vec<&Value> = acks.iter().filter(|v| v["id"] == "twice").collect();
    assert_eq!(twice.len(), 2, "one ack per send: {acks:?}");
    assert!(twice.iter().all(|v| ack_seq(v) == 1), "same seq: {acks:?}");
    let dups = twice.iter().filter(|v| v["dup"] == true).count();
    assert_eq!(dups, 1, "exactly one of the two acks is a dup: {acks:?}");
    let after = acks
        .iter()
        .find(|v| v["id"] == "after")
        .expect("ack of after");
    assert_eq!(ack_seq(after), 2, "{acks:?}");
    obs.wait_seq(ROOM, 2).await;
    let ids: Vec<&str> = obs.msgs(ROOM).iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["twice", "after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_the_same_id_in_another_room_is_another_message() {
    // Goal: ids are unique per room: the same id in a second room is a new message there,
    // not a duplicate.
    let srv = TestServer::start().await;
    let mut a = srv.client("alice").await;
    a.join("room-a", json!({})).await;
    a.join("room-b", json!({})).await;
    a.send_acked("room-a", "x", "1").await;
    a.send_acked("room-a", "y", "2").await;
    let b = a.send_acked("room-b", "y", "in b").await;
    assert_eq!(ack_seq(&b), 1, "{b}");
    assert!(b.get("dup").is_none_or(|d| d == false), "{b}");
    a.wait_seq("room-b", 1).await;
    assert_eq!(a.msgs("room-b")[0].text, "in b");
}

// ---------------------------------------------------------------------------------------
// 6. Ack means stored (the full version is crash::acked_messages_survive_sigkill...)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g6_a_message_acked_just_before_sigkill_is_kept() {
    // Goal: the server process killed (SIGKILL) the moment an ack arrives still has that
    // message after a restart (guarantee 6).
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("g6.db");
    let log = dir.path().join("server.log");
    let mut srv = ProcServer::spawn(&db, &log).await;
    let mut a = Client::connect(&srv.url(), "alice").await;
    let j = a.join("g6", json!({})).await;
    let ack = a.send_acked("g6", "kept", "survives").await;
    srv.kill();
    assert_eq!(ack_seq(&ack), 1);

    let srv = ProcServer::spawn(&db, &log).await;
    let mut b = Client::connect(&srv.url(), "bob").await;
    let j2 = b.join("g6", json!({"since": 0, "epoch": j["epoch"]})).await;
    assert!(
        !is_reset(&j2),
        "history survived; same epoch expected: {j} then {j2}"
    );
    assert_eq!(field(&j2, "head"), 1, "{j2}");
    b.wait_seq("g6", 1).await;
    let m = &b.msgs("g6")[0];
    assert_eq!(
        (m.id.as_str(), m.text.as_str(), m.from.as_str()),
        ("kept", "survives", "alice")
    );
    assert_eq!(Some(m.ts), ack["ts"].as_u64(), "ts as acked");
}

// ---------------------------------------------------------------------------------------
// 7. Sender FIFO and echo
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g7_pipelined_sends_are_sequenced_in_send_order_and_echoed() {
    // Goal: sends pipelined on one connection to two rooms, racing another user's sends,
    // are sequenced per room in the order sent, and the message reaches the sending
    // connection and the same user's other connection (guarantee 7).
    let srv = TestServer::start().await;
    let mut a1 = srv.client("alice").await;
    let mut a2 = srv.client("alice").await;
    let mut other = srv.client("bob").await;
    for c in [&mut a1, &mut a2, &mut other] {
        c.join("fifo-1", json!({})).await;
        c.join("fifo-2", json!({})).await;
    }
    let bob = tokio::spawn(async move {
        for i in 0..200 {
            other
                .feed_json(Client::send_req("fifo-1", &format!("b{i}"), "bob"))
                .await;
        }
        other.flush().await;
        other.wait_acks(200).await;
        other
    });
    for i in 0..300 {
        let room = if i % 3 == 0 { "fifo-2" } else { "fifo-1" };
        a1.feed_json(Client::send_req(room, &format!("a{i}"), &format!("{i}")))
            .await;
    }
    a1.flush().await;
    a1.wait_acks(300).await;
    let _bob = bob.await.expect("bob task");

    for room in ["fifo-1", "fifo-2"] {
        let acked: Vec<u64> = a1
            .acks
            .iter()
            .filter(|a| a["room"] == room)
            .map(ack_seq)
            .collect();
        assert!(
            acked.windows(2).all(|w| w[0] < w[1]),
            "{room}: acks must have increasing seqs in send order: {acked:?}"
        );
        let sent: Vec<String> = (0..300)
            .filter(|i| (i % 3 == 0) == (room == "fifo-2"))
            .map(|i| format!("a{i}"))
            .collect();
        let total = if room == "fifo-1" { 400 } else { 100 };
        for (name, c) in [
            ("sender connection", &mut a1),
            ("other connection", &mut a2),
        ] {
            c.wait_seq(room, total).await;
            assert_seqs(c.msgs(room), 1, total, &format!("{name} in {room}"));
            let echoed: Vec<String> = c
                .msgs(room)
                .iter()
                .filter(|m| m.id.as_str().starts_with('a'))
                .map(|m| m.id.as_str().to_owned())
                .collect();
            assert_eq!(
                echoed, sent,
                "{name}: alice's messages in {room}, in send order"
            );
            assert!(
                c.msgs(room)
                    .iter()
                    .filter(|m| m.id.as_str().starts_with('a'))
                    .all(|m| m.from.as_str() == "alice"),
                "from = alice"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 8. Causality
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8_a_message_sent_after_receiving_seq_n_gets_a_greater_seq() {
    // Goal: while another user keeps sending, a user who received seq N and then sends
    // (on the same connection or another one) always gets a seq greater than N
    // (guarantee 8).
    const ROOM: &str = "causal";
    let srv = TestServer::start_with(no_rate_limits).await;
    let mut reader = srv.client("carol").await;
    reader.join(ROOM, json!({})).await;
    let mut other_conn = srv.client("carol").await;
    other_conn.join(ROOM, json!({})).await;

    let noise = {
        let url = srv.url();
        tokio::spawn(async move {
            let mut c = Client::connect(&url, "noise").await;
            c.join(ROOM, json!({})).await;
            for i in 0..1000 {
                c.feed_json(Client::send_req(ROOM, &format!("n{i}"), "noise"))
                    .await;
                if i % 20 == 19 {
                    c.flush().await;
                    tokio::task::yield_now().await;
                }
            }
            c.flush().await;
            c.wait_acks(1000).await;
        })
    };

    for round in 0..40u64 {
        reader.wait_seq(ROOM, 10 + round * 20).await;
        let n = reader.last_seq(ROOM);
        let id = format!("reply{round}");
        let ack = if round % 2 == 0 {
            reader.send_acked(ROOM, &id, &format!("after {n}")).await
        } else {
            other_conn
                .send_acked(ROOM, &id, &format!("after {n}"))
                .await
        };
        assert!(
            ack_seq(&ack) > n,
            "round {round}: sent after receiving seq {n}, got {ack}"
        );
    }
    noise.await.expect("noise task");
}

// ---------------------------------------------------------------------------------------
// `joined`
// ---------------------------------------------------------------------------------------

fn members(j: &Value) -> Vec<String> {
    let mut m: Vec<String> = j["members"]
        .as_array()
        .unwrap_or_else(|| panic!("joined.members: {j}"))
        .iter()
        .map(|v| v.as_str().expect("member names are strings").to_owned())
        .collect();
    m.sort();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_reports_head_first_epoch_and_distinct_members() {
    // Goal: `joined` carries head (0 when empty, else the highest seq), first, a stable
    // epoch, and the distinct online users with their count.
    const ROOM: &str = "fields";
    let srv = TestServer::start().await;
    let mut a = srv.client("alice").await;
    let j = a.join(ROOM, json!({})).await;
    assert_eq!(field(&j, "head"), 0, "empty room: {j}");
    assert!(field(&j, "first") <= 1, "empty room first: {j}");
    let epoch = j["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("epoch: {j}"))
        .to_owned();
    assert!(!epoch.is_empty(), "{j}");
    assert_eq!(members(&j), ["alice"], "{j}");
    assert_eq!(field(&j, "member_count"), 1, "{j}");
    assert!(!is_reset(&j), "{j}");

    for i in 0..3 {
        a.send_acked(ROOM, &format!("m{i}"), "x").await;
    }
    let mut b = srv.client("bob").await;
    let j = b.join(ROOM, json!({})).await;
    assert_eq!(field(&j, "head"), 3, "{j}");
    assert_eq!(field(&j, "first"), 1, "{j}");
    assert_eq!(j["epoch"], epoch.as_str(), "same room, same epoch: {j}");
    assert_eq!(members(&j), ["alice", "bob"], "{j}");
    assert_eq!(field(&j, "member_count"), 2, "{j}");

    // A second connection of alice: still two distinct users.
    let mut a2 = srv.client("alice").await;
    let j = a2.join(ROOM, json!({})).await;
    assert_eq!(members(&j), ["alice", "bob"], "users are distinct: {j}");
    assert_eq!(field(&j, "member_count"), 2, "{j}");

    // After bob leaves, he is no longer listed.
    b.leave(ROOM).await;
    let mut c = srv.client("carol").await;
    let j = c.join(ROOM, json!({})).await;
    assert_eq!(members(&j), ["alice", "carol"], "{j}");
    assert_eq!(field(&j, "member_count"), 2, "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_members_list_is_capped_at_100_with_the_true_count() {
    // Goal: in a room with more than 100 online users, `members` lists at most 100
    // distinct names, always including the joining user, and `member_count` is the total.
    const ROOM: &str = "big";
    const USERS: usize = 104;
    let srv = TestServer::start().await;
    let mut clients = Vec::new();
    for i in 0..USERS {
        let mut c = srv.client(&format!("user{i:03}")).await;
        let j = c.join(ROOM, json!({})).await;
        assert_eq!(field(&j, "member_count"), i as u64 + 1, "{j}");
        let m = members(&j);
        assert!(m.len() <= 100, "at most 100 names listed, got {}", m.len());
        assert_eq!(m.len(), (i + 1).min(100), "as many names as fit: {j}");
        assert!(
            m.contains(&format!("user{i:03}")),
            "the joining user is listed: {j}"
        );
        let distinct: HashSet<&String> = m.iter().collect();
        assert_eq!(distinct.len(), m.len(), "names are distinct: {j}");
        clients.push(c);
    }
    let r = http_get(srv.addr(), &format!("/rooms/{ROOM}/presence")).await;
    assert_eq!(
        r.json()["users"].as_array().map(Vec::len),
        Some(USERS),
        "presence lists all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_resets_when_the_epoch_differs() {
    // Goal: a join whose `epoch` is not the room's gets `reset:true` and a replay from
    // `first`, whatever its `since` says.
    const ROOM: &str = "reset-epoch";
    let srv = TestServer::start().await;
    let mut a = srv.client("alice").await;
    let j = a.join(ROOM, json!({})).await;
    for i in 0..5 {
        a.send_acked(ROOM, &format!("m{i}"), "x").await;
    }
    let bogus = format!("{}-not-this-one", j["epoch"].as_str().expect("epoch"));
    let mut b = srv.client("bob").await;
    let j = b.join(ROOM, json!({"since": 3, "epoch": bogus})).await;
    assert_eq!(j["reset"], true, "foreign epoch must reset: {j}");
    let first = field(&j, "first");
    b.wait_seq(ROOM, 5).await;
    assert_seqs(b.msgs(ROOM), first, 5, "replay after reset starts at first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_resets_when_since_is_beyond_the_head() {
    // Goal: a `since` beyond what the room holds (the client claims seqs the room never
    // had) gets `reset:true` and a replay from `first`. (The contract names only
    // `since < first - 1` and a foreign epoch; this is its best reading: without a reset
    // the client would take new seqs for ones it already holds.)
    const ROOM: &str = "reset-since";
    let srv = TestServer::start().await;
    let mut a = srv.client("alice").await;
    let j = a.join(ROOM, json!({})).await;
    let epoch = j["epoch"].clone();
    for i in 0..5 {
        a.send_acked(ROOM, &format!("m{i}"), "x").await;
    }
    let mut b = srv.client("bob").await;
    let j = b.join(ROOM, json!({"since": 50, "epoch": epoch})).await;
    assert_eq!(j["reset"], true, "since beyond head must reset: {j}");
    let first = field(&j, "first");
    b.wait_seq(ROOM, 5).await;
    assert_seqs(b.msgs(ROOM), first, 5, "replay after reset starts at first");
}

//! Crash safety (guarantee 6, with 1 and 7 across a restart): the real `lockstep` binary is
//! killed with SIGKILL while clients are sending, restarted on the same database, and
//! must still have every acked message, at its acked seq, in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lockstep_protocol::Message;
use serde_json::{Value, json};

use crate::support::*;

const ROOMS: [&str; 2] = ["crash-a", "crash-b"];
/// Senders per cycle: (user, room).
const SENDERS: [(&str, &str); 4] = [
    ("w0", "crash-a"),
    ("w1", "crash-a"),
    ("w2", "crash-a"),
    ("w3", "crash-b"),
];
const PER_SENDER: usize = 400;
/// The server is killed as soon as this many acks (over all senders) have arrived.
const KILL_AFTER_ACKS: usize = 600;

/// What one sender saw acked before the server died: (id, seq, text), in ack order.
type Acked = Vec<(String, u64, String)>;

/// Connects the senders, pipelines their sends, and kills the server as soon as
/// [`KILL_AFTER_ACKS`] acks arrived (other sends still in flight). Returns each sender's
/// acks.
async fn send_then_kill(srv: &mut ProcServer, cycle: usize) -> Vec<(&'static str, Acked)> {
    let acks = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for (user, room) in SENDERS {
        let mut c = Client::connect(&srv.url(), user).await;
        c.join(room, json!({})).await;
        clients.push((user, room, c));
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(user, room, mut c)| {
            let acks = acks.clone();
            tokio::spawn(async move {
                for i in 0..PER_SENDER {
                    let id = format!("{user}-c{cycle}-{i}");
                    c.feed_json(Client::send_req(room, &id, &format!("{id} text")))
                        .await;
                }
                c.flush().await;
                let mut acked = Acked::new();
                while let Some(v) = c.next_event_or_end().await {
                    match v["type"].as_str() {
                        Some("ack") => {
                            let id = v["id"].as_str().expect("ack id").to_owned();
                            let seq = v["seq"].as_u64().expect("ack seq");
                            acked.push((id.clone(), seq, format!("{id} text")));
                            acks.fetch_add(1, Ordering::SeqCst);
                        }
                        Some("error") => panic!("{user}: unexpected error {v}"),
                        _ => {}
                    }
                    if acked.len() == PER_SENDER {
                        break;
                    }
                }
                (room, acked)
            })
        })
        .collect();

    eventually(&format!("{KILL_AFTER_ACKS} acks before the kill"), || {
        let acks = acks.clone();
        async move { (acks.load(Ordering::SeqCst) >= KILL_AFTER_ACKS).then_some(()) }
    })
    .await;
    srv.kill();

    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("sender task"));
    }
    out
}

/// Everything in `room` via a `join` with `since: 0` (and the old epoch).
async fn replay(srv: &ProcServer, room: &str, epoch: &Value) -> (Value, Vec<Message>) {
    let mut c = Client::connect(&srv.url(), "checker").await;
    let j = c.join(room, json!({"since": 0, "epoch": epoch})).await;
    let head = j["head"].as_u64().expect("head");
    c.wait_seq(room, head).await;
    (j, c.msgs(room).to_vec())
}

/// Everything in `room` via GET /rooms/{room}/messages, page by page.
async fn http_all(srv: &ProcServer, room: &str) -> Vec<Message> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("/rooms/{room}/messages?after={after}&limit=500");
        let r = http_get(srv.addr, &path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        let v = r.json();
        let msgs: Vec<Message> = v["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: {v}"))
            .iter()
            .map(message_from_json)
            .collect();
        assert!(msgs.len() <= 500);
        let Some(last) = msgs.last() else { break };
        after = last.seq;
        all.extend(msgs);
        if after >= v["head"].as_u64().expect("head") {
            break;
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_sigkill_and_restart() {
    // Goal: over two SIGKILL/restart cycles with sends in flight, every acked message is
    // still there after the restart at its acked seq (via `join` with `since` and via
    // GET /rooms/{room}/messages), seqs stay gap-free with no reuse, and new sends
    // continue after the old head (guarantees 6, 1, 7).
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("crash.db");
    let log = dir.path().join("server.log");
    let mut srv = ProcServer::spawn(&db, &log).await;

    // The epoch of each room, from a first join.
    let mut epochs: HashMap<&str, Value> = HashMap::new();
    for room in ROOMS {
        let mut c = Client::connect(&srv.url(), "epoch").await;
        let j = c.join(room, json!({})).await;
        epochs.insert(room, j["epoch"].clone());
    }

    // Every acked (id → seq, text) so far, per room.
    let mut acked: HashMap<&str, HashMap<String, (u64, String)>> = HashMap::new();
    for cycle in 0..2 {
        let per_sender = send_then_kill(&mut srv, cycle).await;
        let total: usize = per_sender.iter().map(|(_, a)| a.len()).sum();
        assert!(total >= KILL_AFTER_ACKS, "cycle {cycle}: {total} acks");
        for (room, list) in &per_sender {
            // Sender FIFO: one connection's acks have increasing seqs in send order.
            let seqs: Vec<u64> = list.iter().map(|(_, s, _)| *s).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{room}: {seqs:?}");
            for (id, seq, text) in list {
                let old = acked
                    .entry(room)
                    .or_default()
                    .insert(id.clone(), (*seq, text.clone()));
                assert!(old.is_none(), "id {id} acked twice");
            }
        }

        srv = ProcServer::spawn(&db, &log).await;
        for room in ROOMS {
            let ctx = format!("cycle {cycle}, room {room}");
            let (j, msgs) = replay(&srv, room, &epochs[room]).await;
            assert!(
                j.get("reset").is_none_or(|r| r == false),
                "{ctx}: history survived, so the epoch must too: {j} (was {})",
                epochs[room]
            );
            let head = j["head"].as_u64().expect("head");
            assert_seqs(&msgs, 1, head, &format!("{ctx}: replay after restart"));
            let by_seq: HashMap<u64, &Message> = msgs.iter().map(|m| (m.seq, m)).collect();
            let mut ids = std::collections::HashSet::new();
            for m in &msgs {
                assert!(ids.insert(m.id.as_str()), "{ctx}: id {} stored twice", m.id);
            }
            let room_acked = acked.get(room).cloned().unwrap_or_default();
            for (id, (seq, text)) in &room_acked {
                let m = by_seq.get(seq).unwrap_or_else(|| {
                    panic!("{ctx}: acked {id} at seq {seq} is lost (head {head})")
                });
                assert_eq!(m.id.as_str(), id, "{ctx}: seq {seq} holds another message");
                assert_eq!(&m.text, text, "{ctx}: text of {id}");
            }
            let http = http_all(&srv, room).await;
            assert_seqs(&http, 1, head, &format!("{ctx}: HTTP after restart"));
            for (a, b) in msgs.iter().zip(&http) {
                assert_same_message(a, b, &format!("{ctx}: replay vs HTTP"));
            }

            // The sequence continues after the head: no seq is reused.
            let mut c = Client::connect(&srv.url(), "after").await;
            c.join(room, json!({})).await;
            let id = format!("after-crash-{cycle}");
            let a = c.send_acked(room, &id, "after the crash").await;
            assert_eq!(a["seq"].as_u64(), Some(head + 1), "{ctx}: next seq: {a}");
            acked
                .entry(room)
                .or_default()
                .insert(id, (head + 1, "after the crash".into()));
        }
    }
}

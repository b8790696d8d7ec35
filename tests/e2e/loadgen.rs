//! The load generator against a real server: faults it injects really happen (as the
//! server saw them), clients that were reset resume to complete sequences, and bad
//! scenario files are refused with file, line and key.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

use lockstep_loadgen::run::{LoadOptions, LoadSummary, run};
use lockstep_loadgen::scenario::Scenario;
use lockstep_protocol::record::{BlockEvents, Event, FileReader};

use crate::support::{TestServer, http_get, metric_value};

const FAULTY: &str = r#"
name = "faulty"
seed = 5
duration = "4s"
quiet = "4s"
[ramp]
connect_rate = 200
[reconnect]
delay_min = "20ms"
delay_max = "100ms"
[[group]]
name = "g"
rooms = 4
members = 10
senders = 4
rate = 10.0
[[fault]]
kind = "reset_peer"
clients = 0.5
every = "1s"
[[fault]]
kind = "timeout"
clients = 0.2
every = "3s"
duration = "1500ms"
[[fault]]
kind = "close"
clients = 0.3
every = "2s"
"#;

async fn load(srv: &TestServer, text: &str, record: &Path) -> LoadSummary {
    let scenario = Scenario::parse("test.toml", text).expect("valid scenario");
    run(
        scenario,
        LoadOptions {
            target: srv.url(),
            record: Some(record.to_owned()),
            ..LoadOptions::new("")
        },
    )
    .await
    .expect("the load run completes")
}

async fn metrics(srv: &TestServer) -> String {
    http_get(srv.addr(), "/metrics").await.text()
}

fn metric(text: &str, name: &str) -> u64 {
    metric_value(text, name).unwrap_or_else(|| panic!("metric {name} missing")) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_are_seen_by_the_server() {
    // Goal: resets, half-open clients and clean closes the load generator says it
    // injected are the ones the server observed (its own counters), and every
    // connection the clients made reached the server.
    let mut srv = TestServer::start_with(|c| c.heartbeat_ms = 200).await;
    let dir = tempfile::tempdir().unwrap();
    let s = load(&srv, FAULTY, &dir.path().join("f.lsr")).await;
    assert!(
        s.faults.reset_peer > 5,
        "too few resets to prove anything: {s:?}"
    );
    assert!(s.faults.timeout > 0, "no half-open client: {:?}", s.faults);
    assert!(s.faults.close > 0, "no clean close: {:?}", s.faults);
    assert_eq!(s.lost_events, 0);
    let m = metrics(&srv).await;
    // Every connection (clients', the 4 final readers' and the one preflight check
    // made before the run) reached the server.
    assert_eq!(
        metric(&m, "lockstep_connections_total"),
        s.counts.connects + 4 + 1
    );
    // Each reset is a TCP reset the server read, and each silent client was detected
    // by the server's heartbeat (silence 1.5 s > 3 × 200 ms) — except a silence still
    // running when the quiet period began: the client cuts it short with a reset.
    let resets = metric(&m, "lockstep_resets_total");
    let timeouts = metric(&m, "lockstep_heartbeat_timeouts_total");
    assert_eq!(
        resets + timeouts,
        s.faults.reset_peer + s.faults.timeout,
        "{m}"
    );
    assert!(resets >= s.faults.reset_peer, "{m}");
    assert!(timeouts > 0 && timeouts <= s.faults.timeout, "{m}");
    // Clean closes (plus the end of the run) are closes the server saw from the peer.
    assert!(metric(&m, "lockstep_closes_by_peer_total") >= s.faults.close);
    assert_eq!(
        s.counts.reconnects,
        s.faults.reset_peer + s.faults.timeout + s.faults.close
    );
    srv.shutdown().await;
}

/// Per client: (seqs delivered in order, across its connections), per room head.
struct Observed {
    delivered: BTreeMap<u32, Vec<u64>>,
    resumes: u64,
    heads: HashMap<String, u64>,
    room_of: HashMap<u32, String>,
    readers: Vec<u32>,
    /// For each slow_close: µs from the fault (close frame sent) to the TCP close.
    slow_close_holds_us: Vec<u64>,
}

fn read_recording(path: &Path) -> Observed {
    let f = std::fs::File::open(path).unwrap();
    let mut r = FileReader::new(std::io::BufReader::new(f)).unwrap();
    let mut o = Observed {
        delivered: BTreeMap::new(),
        resumes: 0,
        heads: HashMap::new(),
        room_of: HashMap::new(),
        readers: Vec::new(),
        slow_close_holds_us: Vec::new(),
    };
    let mut slow_closing: HashMap<u32, u64> = HashMap::new();
    while let Some(block) = r.next_block().unwrap() {
        for ev in BlockEvents::new(block) {
            match ev.unwrap() {
                Event::Client { client, user } if user.starts_with("reader-") => {
                    o.readers.push(client)
                }
                Event::Message {
                    client, seq, room, ..
                } => {
                    o.delivered.entry(client).or_default().push(seq);
                    let h = o.heads.entry(room.to_owned()).or_default();
                    *h = (*h).max(seq);
                }
                Event::JoinSent {
                    client,
                    room,
                    since,
                    ..
                } => {
                    o.room_of.insert(client, room.to_owned());
                    if since.is_some() {
                        o.resumes += 1;
                    }
                }
                Event::Fault {
                    t_us,
                    client,
                    kind: "slow_close",
                    ..
                } => {
                    slow_closing.insert(client, t_us);
                }
                Event::Closed { t_us, client, .. } => {
                    if let Some(t0) = slow_closing.remove(&client) {
                        o.slow_close_holds_us.push(t_us - t0);
                    }
                }
                _ => {}
            }
        }
    }
    assert_eq!(r.trailer().map(|t| t.lost), Some(0));
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reset_mid_stream_resume_to_complete_sequences() {
    // Goal: a client that is reset (or goes half-open, or closes) and resumes with
    // `since` ends with every seq of its room from its first delivery to the head, once
    // each and in order — checked here straight from the recording.
    let mut srv = TestServer::start_with(|c| c.heartbeat_ms = 200).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.lsr");
    let s = load(&srv, FAULTY, &path).await;
    assert!(s.counts.reconnects > 5, "{:?}", s.counts);
    let o = read_recording(&path);
    assert!(o.resumes > 5, "too few resumes: {}", o.resumes);
    let mut checked = 0;
    for (client, seqs) in &o.delivered {
        if o.readers.contains(client) {
            // A final reader reads 1..=head.
            assert_eq!(seqs[0], 1, "reader {client}");
        }
        for w in seqs.windows(2) {
            assert_eq!(
                w[1],
                w[0] + 1,
                "client {client}: gap or duplicate in {seqs:?}"
            );
        }
        checked += 1;
    }
    // Each client ended at its room's head.
    for (client, seqs) in &o.delivered {
        if o.readers.contains(client) {
            continue;
        }
        let room = &o.room_of[client];
        assert_eq!(
            *seqs.last().unwrap(),
            o.heads[room],
            "client {client} did not reach the head of {room}"
        );
    }
    assert!(checked >= 40);
    srv.shutdown().await;
}

const SHAPED: &str = r#"
name = "shaped"
seed = 9
duration = "4s"
quiet = "6s"
[ramp]
connect_rate = 200
[reconnect]
delay_min = "20ms"
delay_max = "100ms"
[[group]]
name = "g"
rooms = 2
members = 10
senders = 3
rate = 20.0
text_bytes = [100, 400]
[[fault]]
kind = "latency"
direction = "both"
clients = 0.3
latency = "30ms"
jitter = "20ms"
[[fault]]
kind = "bandwidth"
direction = "downstream"
clients = 0.2
rate_kbps = 32
[[fault]]
kind = "slicer"
direction = "upstream"
clients = 0.3
average_size = 7
size_variation = 5
delay = "1ms"
[[fault]]
kind = "limit_data"
direction = "downstream"
clients = 0.2
bytes = 20000
[[fault]]
kind = "slow_close"
clients = 0.3
every = "2s"
delay = "300ms"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shaping_faults_keep_every_sequence_complete() {
    // Goal: with latency and jitter both ways, slow readers (downstream bandwidth),
    // client frames sliced into tiny writes, connections cut after a byte budget and slow
    // closes, every client still ends with a gap-free sequence up to its room's head —
    // and the byte-limit and slow-close faults really happened.
    let mut srv = TestServer::start_with(|c| c.heartbeat_ms = 1000).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.lsr");
    let s = load(&srv, SHAPED, &path).await;
    assert!(s.faults.limit_data > 0, "{:?}", s.faults);
    assert!(s.faults.slow_close > 0, "{:?}", s.faults);
    assert_eq!(s.counts.unacked_at_end, 0, "{:?}", s.counts);
    let o = read_recording(&path);
    // A slow close holds the socket open for its delay (300 ms) after the close frame,
    // even though the server answers the close at once.
    assert!(!o.slow_close_holds_us.is_empty());
    for hold in &o.slow_close_holds_us {
        assert!(*hold >= 290_000, "a slow close ended after {hold} µs");
    }
    for (client, seqs) in &o.delivered {
        for w in seqs.windows(2) {
            assert_eq!(
                w[1],
                w[0] + 1,
                "client {client}: gap or duplicate in {seqs:?}"
            );
        }
        if !o.readers.contains(client) {
            let room = &o.room_of[client];
            assert_eq!(*seqs.last().unwrap(), o.heads[room], "client {client}");
        }
    }
    srv.shutdown().await;
}

#[test]
fn bad_scenario_files_are_refused_with_file_line_and_key() {
    // Goal: `lockstep load` refuses a scenario with a misspelled threshold, naming the
    // file, line and key, and exits 2 without connecting anywhere.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "name = \"x\"\nduration = \"1s\"\n[[group]]\nname = \"g\"\nrooms = 1\nmembers = 1\n[thresholds]\nlatency_p99_ms = 5\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args([
            "load",
            path.to_str().unwrap(),
            "--target",
            "ws://127.0.0.1:9/ws",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:8:1: thresholds.latency_p99_ms: unknown field `latency_p99_ms`",
        path.display()
    );
    assert!(err.contains(&want), "stderr: {err}");
}

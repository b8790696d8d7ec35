//! The checker against a real server behind a fault proxy: for each bug the proxy adds
//! (dropped, duplicated, reordered or corrupted messages, a skipped replay on resume),
//! `lockstep load` + the checker report exactly the matching anomaly; against the same
//! server without a bug, under the same load and faults, nothing.

use std::str::FromStr;

use lockstep_checker::anomaly::AnomalyKind;
use lockstep_checker::report::Verdict;
use lockstep_loadgen::mitm::{Bug, Mitm};
use lockstep_loadgen::run::{LoadOptions, run};
use lockstep_loadgen::scenario::Scenario;

use crate::support::TestServer;

/// Small rooms, steady sends, and resets so that clients resume (for `skip_replay`).
const SCENARIO: &str = r#"
name = "bugs"
seed = 3
duration = "4s"
quiet = "4s"
[ramp]
connect_rate = 200
[reconnect]
delay_min = "20ms"
delay_max = "80ms"
[[group]]
name = "g"
rooms = 3
members = 8
senders = 4
rate = 10.0
[[fault]]
kind = "reset_peer"
clients = 0.5
every = "1s"
"#;

/// Runs the scenario through a proxy adding `bug` and checks the recording.
async fn check_with(bug: &str) -> lockstep_checker::report::Report {
    let mut srv = TestServer::start_with(|c| c.heartbeat_ms = 1000).await;
    let bug = Bug::from_str(bug).expect("a bug the proxy knows");
    let mitm = Mitm::start(srv.addr(), bug).await.expect("proxy starts");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.lsr");
    let scenario = Scenario::parse("bugs.toml", SCENARIO).unwrap();
    let summary = run(
        scenario,
        LoadOptions {
            target: format!("ws://{}/ws", mitm.addr),
            record: Some(path.clone()),
            // The final readers read the truth, straight from the server.
            final_read_target: Some(srv.url()),
            ..LoadOptions::new("")
        },
    )
    .await
    .expect("the load run completes");
    assert!(summary.counts.reconnects > 0);
    if bug != Bug::None {
        assert!(mitm.injected() > 0, "the proxy injected nothing for {bug}");
    }
    srv.shutdown().await;
    lockstep_checker::check_file(&path).expect("the recording reads")
}

async fn assert_reports(bug: &str, kind: AnomalyKind) {
    let report = check_with(bug).await;
    assert_eq!(report.verdict, Verdict::Fail, "{bug}: {:?}", report.kinds());
    let group = report
        .group(kind)
        .unwrap_or_else(|| panic!("{bug}: no {kind} reported, only {:?}", report.kinds()));
    assert!(group.count > 0);
    // Only the matching kind, and `incomplete` where the last message a still-joined
    // client should have had was the one the bug took.
    for k in report.kinds() {
        assert!(
            k == kind || k == AnomalyKind::Incomplete,
            "{bug}: unexpected {k} beside {kind}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correct_server_passes() {
    // Goal: the same load, faults and proxy path, with no bug, is judged valid.
    let report = check_with("none").await;
    assert_eq!(report.verdict, Verdict::Pass, "{:?}", report.kinds());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_messages_are_lost() {
    // Goal: a message dropped on its way to one client is reported `lost`.
    assert_reports("drop:15", AnomalyKind::Lost).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_messages_are_duplicates() {
    // Goal: a message delivered twice to one client is reported `duplicate`.
    assert_reports("duplicate:15", AnomalyKind::Duplicate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_messages_are_reordered() {
    // Goal: two messages swapped on one connection are reported `reordered`.
    assert_reports("reorder:15", AnomalyKind::Reordered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_messages_are_phantoms() {
    // Goal: a message whose text changed on the way is reported `phantom`.
    assert_reports("corrupt:15", AnomalyKind::Phantom).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_replays_are_resume_gaps() {
    // Goal: a resume whose replay never arrives is reported `resume_gap`.
    assert_reports("skip_replay", AnomalyKind::ResumeGap).await;
}

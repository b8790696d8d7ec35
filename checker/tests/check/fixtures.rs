//! One tiny history per anomaly kind, with the exact report expected: the kind, and the
//! client, room, epoch, seqs and ids it names. Plus the verdict rules (allowed anomalies,
//! recovered and unconfirmed sends, unknown).
//!
//! Every fixture has two clients, `u0` (client 0) and `u1` (client 1), in room `r`,
//! epoch `e1`, unless it says otherwise.

use lockstep_checker::{Anomaly, AnomalyKind, Report, Verdict};
use lockstep_protocol::record::{Event, Header, Trailer};

use crate::support::{H, check, check_with, th};

/// Both clients connected and joined to an empty room `r`.
fn two() -> H {
    let mut h = H::new();
    h.client(0, "u0").client(1, "u1");
    h.connect(0, 1).join(0, 1, "r", None, 0);
    h.connect(1, 1).join(1, 1, "r", None, 0);
    h
}

/// Client 0 sends m1..=mN, acked at seqs 1..=N, and receives them all.
fn sends(h: &mut H, n: u64) {
    for i in 1..=n {
        let id = format!("m{i}");
        h.send(0, 1, "r", &id).ack(0, 1, "r", &id, i, false);
    }
    for i in 1..=n {
        h.msg(0, 1, "r", i, &format!("m{i}"), "u0");
    }
}

/// The report has exactly `kind`, once, and fails; returns its example.
fn only(report: &Report, kind: AnomalyKind) -> Anomaly {
    assert_eq!(
        report.kinds(),
        vec![kind],
        "{}",
        lockstep_checker::render::text(report)
    );
    assert_eq!(report.verdict, Verdict::Fail);
    let g = report.group(kind).unwrap();
    assert_eq!(g.count, 1, "{}", lockstep_checker::render::text(report));
    g.examples[0].clone()
}

/// The report passes (shown in full when it does not).
fn passes(report: &Report) {
    assert_eq!(
        report.verdict,
        Verdict::Pass,
        "{}",
        lockstep_checker::render::text(report)
    );
}

fn who(a: &Anomaly) -> (u32, String, Option<u32>) {
    let c = a.client.clone().expect("names a client");
    (c.index, c.user, a.conn)
}

#[test]
fn a_clean_history_passes() {
    // Goal: the baseline of every fixture below is valid, so each fixture's one change is
    // what the checker reports.
    let mut h = two();
    sends(&mut h, 3);
    for i in 1..=3 {
        h.msg(1, 1, "r", i, &format!("m{i}"), "u0");
    }
    h.finished(0).finished(1);
    let r = h.check();
    passes(&r);
    assert!(r.anomalies.is_empty());
    assert_eq!(r.stats.deliveries.total, 6);
    assert_eq!(r.stats.sends.acked, 3);
    assert_eq!(r.stats.latency.count, 6);
}

#[test]
fn lost_names_the_skipped_seq() {
    let mut h = two();
    sends(&mut h, 3);
    h.msg(1, 1, "r", 1, "m1", "u0")
        .msg(1, 1, "r", 3, "m3", "u0");
    h.finished(0).finished(1);
    let a = only(&h.check(), AnomalyKind::Lost);
    assert_eq!(who(&a), (1, "u1".into(), Some(1)));
    assert_eq!((a.room.as_str(), a.epoch.as_deref()), ("r", Some("e1")));
    assert_eq!(a.seqs, vec![2, 2]);
    assert_eq!(a.ids, vec!["m2"], "the missing message is named");
    assert!(
        a.explanation.contains("received seq 1 and then seq 3"),
        "{}",
        a.explanation
    );
    assert!(
        a.context
            .iter()
            .any(|e| e.event == "message" && e.detail.contains("seq=3"))
    );
}

#[test]
fn a_late_seq_is_reordered_not_lost() {
    let mut h = two();
    sends(&mut h, 3);
    h.msg(1, 1, "r", 1, "m1", "u0")
        .msg(1, 1, "r", 3, "m3", "u0")
        .msg(1, 1, "r", 2, "m2", "u0");
    h.finished(0).finished(1);
    let a = only(&h.check(), AnomalyKind::Reordered);
    assert_eq!(who(&a), (1, "u1".into(), Some(1)));
    assert_eq!(a.seqs, vec![2, 3]);
    assert_eq!(a.ids, vec!["m2"]);
}

#[test]
fn duplicate_names_the_repeated_seq() {
    let mut h = two();
    sends(&mut h, 3);
    for s in [1, 2, 2, 3] {
        h.msg(1, 1, "r", s, &format!("m{s}"), "u0");
    }
    h.finished(0).finished(1);
    let a = only(&h.check(), AnomalyKind::Duplicate);
    assert_eq!(who(&a), (1, "u1".into(), Some(1)));
    assert_eq!(
        (a.seqs.clone(), a.ids.clone()),
        (vec![2], vec!["m2".to_owned()])
    );
}

#[test]
fn divergent_shows_both_contents() {
    let mut h = two();
    sends(&mut h, 2);
    h.msg(1, 1, "r", 1, "m1", "u0")
        .msg_full(1, 1, "r", 2, "m2", "u0", th("m2"), 999_999);
    h.finished(0).finished(1);
    let a = only(&h.check(), AnomalyKind::Divergent);
    assert_eq!(a.seqs, vec![2]);
    assert_eq!(a.witnesses.len(), 2);
    assert!(a.witnesses.iter().any(|w| w.saw.contains("ts=999999")));
    assert!(a.witnesses.iter().any(|w| w.saw.contains("ts=1002")));
}

#[test]
fn phantom_corrupted_text_blames_only_the_corrupt_copy() {
    // Goal: one corrupted delivery is `phantom` (not also `divergent`), naming the sender.
    let mut h = two();
    sends(&mut h, 2);
    h.msg(1, 1, "r", 1, "m1", "u0")
        .msg_full(1, 1, "r", 2, "m2", "u0", th("garbled"), 1002);
    h.finished(0).finished(1);
    let a = only(&h.check(), AnomalyKind::Phantom);
    assert_eq!(who(&a), (1, "u1".into(), Some(1)));
    assert_eq!(
        (a.seqs.clone(), a.ids.clone()),
        (vec![2], vec!["m2".to_owned()])
    );
    assert!(
        a.explanation.contains("client 0 (u0) sent m2"),
        "{}",
        a.explanation
    );
}

#[test]
fn phantom_never_sent() {
    let mut h = two();
    sends(&mut h, 1);
    h.msg(1, 1, "r", 1, "m1", "u0");
    h.msg(0, 1, "r", 2, "ghost", "u9")
        .msg(1, 1, "r", 2, "ghost", "u9");
    h.finished(0).finished(1);
    let r = h.check();
    assert_eq!(r.kinds(), vec![AnomalyKind::Phantom]);
    // Counted per delivery: two clients received it, one example says so.
    let g = r.group(AnomalyKind::Phantom).unwrap();
    assert_eq!((g.count, g.examples.len()), (2, 1));
    let a = &g.examples[0];
    assert_eq!(a.occurrences, 2);
    assert_eq!(
        (a.seqs.clone(), a.ids.clone()),
        (vec![2], vec!["ghost".to_owned()])
    );
    assert!(
        a.explanation.contains("no client sent ghost"),
        "{}",
        a.explanation
    );
}

#[test]
fn acked_lost_names_the_ack() {
    let mut h = two();
    h.send(0, 1, "r", "m1").ack(0, 1, "r", "m1", 1, false);
    h.send(0, 1, "r", "m2").ack(0, 1, "r", "m2", 2, false);
    h.msg(0, 1, "r", 1, "m1", "u0")
        .msg(1, 1, "r", 1, "m1", "u0");
    h.finished(0).finished(1);
    let a = only(&h.check(), AnomalyKind::AckedLost);
    assert_eq!(who(&a), (0, "u0".into(), Some(1)));
    assert_eq!(
        (a.seqs.clone(), a.ids.clone()),
        (vec![2], vec!["m2".to_owned()])
    );
    assert!(
        a.explanation.contains("nobody was delivered seq 2"),
        "{}",
        a.explanation
    );
}

#[test]
fn double_sequenced_by_a_second_non_dup_ack() {
    let mut h = two();
    sends(&mut h, 1);
    h.msg(1, 1, "r", 1, "m1", "u0");
    h.send(0, 1, "r", "m1").ack(0, 1, "r", "m1", 2, false);
    h.finished(0).finished(1);
    let a = only(&h.check(), AnomalyKind::DoubleSequenced);
    assert_eq!(
        (a.seqs.clone(), a.ids.clone()),
        (vec![1, 2], vec!["m1".to_owned()])
    );
    assert!(
        a.explanation
            .contains("acked with seq 1 and again with seq 2"),
        "{}",
        a.explanation
    );
}

#[test]
fn double_sequenced_by_an_ack_disagreeing_with_delivery() {
    let mut h = two();
    h.send(0, 1, "r", "m1").ack(0, 1, "r", "m1", 5, false);
    h.msg(0, 1, "r", 1, "m1", "u0")
        .msg(1, 1, "r", 1, "m1", "u0");
    h.finished(0).finished(1);
    let a = only(&h.check(), AnomalyKind::DoubleSequenced);
    assert_eq!(a.seqs, vec![1, 5]);
    assert!(
        a.explanation
            .contains("acked with seq 5 but delivered at seq 1"),
        "{}",
        a.explanation
    );
}

#[test]
fn fifo_names_both_sends() {
    let mut h = two();
    h.send(0, 1, "r", "m1").send(0, 1, "r", "m2");
    h.ack(0, 1, "r", "m2", 1, false)
        .ack(0, 1, "r", "m1", 2, false);
    for c in [0, 1] {
        h.msg(c, 1, "r", 1, "m2", "u0")
            .msg(c, 1, "r", 2, "m1", "u0");
    }
    h.finished(0).finished(1);
    let a = only(&h.check(), AnomalyKind::Fifo);
    assert_eq!(who(&a), (0, "u0".into(), Some(1)));
    assert_eq!(a.seqs, vec![2, 1]);
    assert_eq!(a.ids, vec!["m1", "m2"]);
}

#[test]
fn fifo_ignores_refused_attempts_and_dup_acks() {
    // Goal: m1 refused (rate_limited), m2 accepted, m1 retried and accepted later: m2 < m1
    // in seq is in the order of the *accepted* attempts, so it is fine; a dup ack is no
    // new sequencing either.
    let mut h = two();
    h.send(0, 1, "r", "m1").send(0, 1, "r", "m2");
    h.error(0, 1, "r", "m1", "rate_limited")
        .ack(0, 1, "r", "m2", 1, false);
    h.send(0, 1, "r", "m1").ack(0, 1, "r", "m1", 2, false);
    h.send(0, 1, "r", "m2").ack(0, 1, "r", "m2", 1, true);
    for c in [0, 1] {
        h.msg(c, 1, "r", 1, "m2", "u0")
            .msg(c, 1, "r", 2, "m1", "u0");
    }
    h.finished(0).finished(1);
    let r = h.check();
    passes(&r);
    assert_eq!(r.stats.errors.get("rate_limited"), Some(&1));
    assert_eq!(r.stats.sends.dup_acks, 1);
}

#[test]
fn causal_reply_sequenced_before_what_it_read() {
    // Client 1 receives seq 1 and only then sends b, which the server puts at seq 1.
    let mut h = two();
    h.msg(1, 1, "r", 1, "b", "u1");
    h.send(1, 1, "r", "b").ack(1, 1, "r", "b", 1, false);
    h.msg(0, 1, "r", 1, "b", "u1");
    h.finished(0).finished(1);
    let a = only(&h.check(), AnomalyKind::Causal);
    assert_eq!(who(&a), (1, "u1".into(), Some(1)));
    assert_eq!(
        (a.seqs.clone(), a.ids.clone()),
        (vec![1, 1], vec!["b".to_owned()])
    );
}

#[test]
fn resume_gap_after_since() {
    let mut h = two();
    sends(&mut h, 4);
    h.msg(1, 1, "r", 1, "m1", "u0")
        .msg(1, 1, "r", 2, "m2", "u0")
        .close(1, 1);
    h.connect(1, 2).join(1, 2, "r", Some(2), 4);
    h.msg(1, 2, "r", 4, "m4", "u0");
    h.finished(0).finished(1);
    let a = only(&h.check(), AnomalyKind::ResumeGap);
    assert_eq!(who(&a), (1, "u1".into(), Some(2)));
    assert_eq!(a.seqs, vec![3, 3]);
    assert!(a.explanation.contains("since=2"), "{}", a.explanation);
}

#[test]
fn resume_gap_plain_join_replays_what_it_should_not() {
    let mut h = two();
    sends(&mut h, 3);
    h.msg(1, 1, "r", 1, "m1", "u0")
        .msg(1, 1, "r", 2, "m2", "u0")
        .msg(1, 1, "r", 3, "m3", "u0");
    h.client(2, "u2").connect(2, 1).join(2, 1, "r", None, 2);
    h.msg(2, 1, "r", 2, "m2", "u0")
        .msg(2, 1, "r", 3, "m3", "u0");
    h.finished(0).finished(1).finished(2);
    let a = only(&h.check(), AnomalyKind::ResumeGap);
    assert_eq!(who(&a), (2, "u2".into(), Some(1)));
    assert_eq!(a.seqs, vec![2, 3]);
}

#[test]
fn resume_gap_when_a_promised_replay_never_comes() {
    let mut h = two();
    sends(&mut h, 2);
    h.msg(1, 1, "r", 1, "m1", "u0").close(1, 1);
    h.connect(1, 2).join(1, 2, "r", Some(1), 2);
    h.finished(0).finished(1);
    let a = only(&h.check(), AnomalyKind::ResumeGap);
    assert_eq!(a.seqs, vec![2, 2]);
    assert!(
        a.explanation.contains("replay never came"),
        "{}",
        a.explanation
    );
}

#[test]
fn incomplete_at_the_end() {
    let mut h = two();
    sends(&mut h, 2);
    h.msg(1, 1, "r", 1, "m1", "u0");
    h.finished(0).finished(1);
    let a = only(&h.check(), AnomalyKind::Incomplete);
    assert_eq!(who(&a), (1, "u1".into(), Some(1)));
    assert_eq!(a.seqs, vec![2, 2]);
}

#[test]
fn a_client_that_left_or_closed_owes_nothing() {
    // Goal: incomplete applies only to clients still joined when they finish.
    let mut h = two();
    h.client(2, "u2").connect(2, 1).join(2, 1, "r", None, 0);
    sends(&mut h, 2);
    h.msg(1, 1, "r", 1, "m1", "u0").leave(1, 1, "r");
    h.msg(2, 1, "r", 1, "m1", "u0").close(2, 1);
    h.finished(0).finished(1).finished(2);
    let r = h.check();
    passes(&r);
}

#[test]
fn allowed_anomalies_are_listed_but_pass() {
    let mut h = two();
    sends(&mut h, 3);
    h.msg(1, 1, "r", 1, "m1", "u0")
        .msg(1, 1, "r", 3, "m3", "u0");
    h.finished(0).finished(1);
    let header = Header {
        allowed_anomalies: vec!["lost".into(), "no_such_kind".into()],
        ..Default::default()
    };
    let r = check_with(&header, &h.ev);
    assert_eq!(r.verdict, Verdict::Pass);
    assert!(r.group(AnomalyKind::Lost).unwrap().allowed);
    assert_eq!((r.anomalies_total, r.anomalies_failing), (1, 0));
    assert!(r.notes.iter().any(|n| n.contains("no_such_kind")));
}

#[test]
fn recovered_and_unconfirmed_are_counted_not_anomalies() {
    // m1: connection died before the ack, but it was delivered (recovered).
    // m2: never acked, never delivered (unconfirmed). m3: refused by an error.
    let mut h = two();
    h.send(0, 1, "r", "m1").send(0, 1, "r", "m2").close(0, 1);
    h.msg(1, 1, "r", 1, "m1", "u0");
    h.send(1, 1, "r", "m3").error(1, 1, "r", "m3", "too_long");
    h.finished(0).finished(1);
    let r = h.check();
    passes(&r);
    assert_eq!(
        (r.recovered, r.unconfirmed, r.stats.sends.refused),
        (1, 1, 1)
    );
}

#[test]
fn a_reset_into_a_new_epoch_is_a_new_history() {
    // Goal: after `reset` the replay starts at `first` and seqs of the old epoch are never
    // compared with the new one's.
    let mut h = two();
    sends(&mut h, 2);
    h.msg(1, 1, "r", 1, "m1", "u0")
        .msg(1, 1, "r", 2, "m2", "u0")
        .close(1, 1);
    h.connect(1, 2)
        .join_full(1, 2, "r", Some(2), None, "e2", 2, 1, true);
    h.msg(1, 2, "r", 1, "m1", "u0")
        .msg(1, 2, "r", 2, "m2", "u0");
    h.finished(0).finished(1);
    let r = h.check();
    passes(&r);
    assert_eq!(r.stats.epochs, 2);
}

#[test]
fn nothing_observed_is_unknown() {
    let r = check(&[]);
    assert_eq!(r.verdict, Verdict::Unknown);
    assert_eq!(r.exit_code(), 2);
    let mut h = two();
    h.send(0, 1, "r", "m1").ack(0, 1, "r", "m1", 1, false);
    assert_eq!(
        h.check().verdict,
        Verdict::Unknown,
        "acks alone prove nothing"
    );
}

#[test]
fn lost_events_make_it_unknown_even_with_anomalies() {
    let mut h = two();
    sends(&mut h, 3);
    h.msg(1, 1, "r", 1, "m1", "u0")
        .msg(1, 1, "r", 3, "m3", "u0");
    h.ev.push(Event::Lost { count: 7 });
    let r = h.check();
    assert_eq!(r.verdict, Verdict::Unknown);
    assert!(r.unknown_reasons[0].contains("lost 7 events"));
    // The anomalies are still listed.
    assert_eq!(r.kinds(), vec![AnomalyKind::Lost]);
}

#[test]
fn a_stream_without_end_marker_or_with_a_wrong_count_is_unknown() {
    let mut h = two();
    sends(&mut h, 1);
    let mut c = lockstep_checker::Checker::new(&Header::default());
    for e in &h.ev {
        c.observe(e);
    }
    let r = c.finish(None);
    assert_eq!(r.verdict, Verdict::Unknown);
    assert!(r.unknown_reasons[0].contains("no end marker"));

    let mut c = lockstep_checker::Checker::new(&Header::default());
    for e in &h.ev {
        c.observe(e);
    }
    let r = c.finish(Some(Trailer {
        events: 999,
        lost: 0,
    }));
    assert_eq!(r.verdict, Verdict::Unknown);
    let r2 = {
        let mut c = lockstep_checker::Checker::new(&Header::default());
        for e in &h.ev {
            c.observe(e);
        }
        c.finish(Some(Trailer {
            events: h.ev.len() as u64,
            lost: 3,
        }))
    };
    assert_eq!(r2.verdict, Verdict::Unknown);
    assert_eq!(r2.run.lost_events, 3);
}

#[test]
fn thresholds_are_evaluated_and_fail_the_run() {
    let mut h = two();
    sends(&mut h, 2);
    h.msg(1, 1, "r", 1, "m1", "u0")
        .msg(1, 1, "r", 2, "m2", "u0");
    h.finished(0).finished(1);
    let mut header = Header::default();
    header.thresholds.latency_p99_ms_max = Some(0.001);
    header.thresholds.errors_max = Some(0);
    header.thresholds.ack_p99_ms_max = Some(1e9);
    let r = check_with(&header, &h.ev);
    assert_eq!(r.verdict, Verdict::Fail);
    let t = |n: &str| r.thresholds.iter().find(|t| t.name == n).unwrap().clone();
    assert!(!t("latency_p99_ms_max").passed);
    assert!(t("latency_p99_ms_max").measured.unwrap() > 0.001);
    assert!(t("errors_max").passed);
    assert!(t("ack_p99_ms_max").passed);
    assert!(lockstep_checker::render::junit(&r).contains("name=\"latency_p99_ms_max\">"));
}

#[test]
fn identical_anomalies_of_many_clients_group_into_one_example() {
    // Goal: seq 2 skipped for 5 clients is one example with 5 occurrences.
    let mut h = two();
    sends(&mut h, 3);
    for c in 2..7 {
        h.client(c, &format!("u{c}"))
            .connect(c, 1)
            .join(c, 1, "r", None, 0);
        h.msg(c, 1, "r", 1, "m1", "u0")
            .msg(c, 1, "r", 3, "m3", "u0");
    }
    let r = h.check();
    let g = r.group(AnomalyKind::Lost).unwrap();
    assert_eq!(g.count, 5);
    assert_eq!(g.examples.len(), 1);
    assert_eq!(g.examples[0].occurrences, 5);
}

#[test]
fn renderings_carry_the_evidence() {
    let mut h = two();
    sends(&mut h, 3);
    h.msg(1, 1, "r", 1, "m1", "u0")
        .msg(1, 1, "r", 3, "m3", "u0");
    h.finished(0).finished(1);
    let r = h.check();
    let text = lockstep_checker::render::text(&r);
    assert!(text.contains("FAIL"), "{text}");
    assert!(text.contains("received seq 1 and then seq 3"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&lockstep_checker::render::json(&r)).unwrap();
    assert_eq!(json["schema"], "lockstep.check/1");
    assert_eq!(json["verdict"], "fail");
    assert_eq!(json["anomalies"][0]["kind"], "lost");
    assert_eq!(
        json["anomalies"][0]["examples"][0]["seqs"],
        serde_json::json!([2, 2])
    );
    let back: Report = serde_json::from_value(json).unwrap();
    assert_eq!(back, r);
    let junit = lockstep_checker::render::junit(&r);
    assert!(junit.contains("<failure type=\"lost\""), "{junit}");
    assert!(junit.contains("name=\"duplicate\"/>"), "{junit}");
}

#[test]
fn a_join_sent_before_the_left_arrives_resumes_cleanly() {
    // Goal: regression — `leave`, then `join since=S` sent before `left` arrives, is a
    // valid order (the server answers in order: `left`, then `joined`, then S+1…).
    // `left` must end the join that was left, not the new one, or the replay of S+1…
    // would be judged a `resume_gap` against a join that asked for no replay.
    let mut h = two();
    sends(&mut h, 2);
    h.msg(1, 1, "r", 1, "m1", "u0");
    for e in ["leave", "join", "left", "joined"] {
        let t_us = h.t();
        let room = crate::support::s("r");
        h.ev.push(match e {
            "leave" => Event::LeaveSent {
                t_us,
                client: 1,
                conn: 1,
                room,
            },
            "join" => Event::JoinSent {
                t_us,
                client: 1,
                conn: 1,
                room,
                since: Some(1),
                epoch: None,
                history: None,
            },
            "left" => Event::Left {
                t_us,
                client: 1,
                conn: 1,
                room,
            },
            _ => Event::Joined {
                t_us,
                client: 1,
                conn: 1,
                room,
                epoch: crate::support::s("e1"),
                head: 2,
                first: 1,
                reset: false,
            },
        });
    }
    h.msg(1, 1, "r", 2, "m2", "u0");
    h.finished(0).finished(1);
    let r = h.check();
    passes(&r);
}

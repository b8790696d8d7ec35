//! Breaks a valid history in exactly one way per anomaly kind, the way a buggy server
//! would, choosing the site with `pick`. Returns `None` when the history has no place
//! where that fault can be shown (e.g. `fifo` needs two pipelined sends); the property test
//! then discards the case.
//!
//! Each fault is the smallest change that contradicts one guarantee and no other, so the
//! checker must report that kind and nothing else:
//!
//! | kind | change |
//! |---|---|
//! | lost | drop a delivery in the middle of a join's stream |
//! | duplicate | deliver one message twice in a row |
//! | reordered | swap two consecutive deliveries of a join |
//! | divergent | change the `ts` of one delivery of a seq others also received |
//! | phantom | change the text of one delivery |
//! | acked_lost | the server forgets the room's last (acked) message: no delivery of it, heads one lower |
//! | double_sequenced | an ack names a seq other than where the message was delivered |
//! | fifo | two pipelined sends of one connection are sequenced the other way round |
//! | causal | a reply is sequenced before the message its sender had already read |
//! | resume_gap | drop the first delivery after a join |
//! | incomplete | drop the last delivery of a client still joined at the end |
//!
//! The site conditions are computed here from the events, independently of the checker.

use std::collections::HashMap;

use lockstep_checker::AnomalyKind;
use lockstep_protocol::record::Event;

/// One join's deliveries.
#[derive(Debug, Default, Clone)]
struct JoinRec {
    since: Option<u64>,
    epoch: Option<&'static str>,
    msgs: Vec<usize>,
    /// Index of the client's `Finished` while this join was active.
    finished_at: Option<usize>,
}

struct View {
    joins: Vec<JoinRec>,
    /// Epoch of each `Message` / `Ack` (by event index), from its connection's join.
    epoch_at: HashMap<usize, &'static str>,
}

impl View {
    /// Deliveries of the same (room, epoch, seq) as the one at `i`, other than `i`.
    fn others(&self, ev: &[Event<'static>], i: usize) -> usize {
        let Some(ep) = self.epoch_at.get(&i) else {
            return 0;
        };
        let (room, seq) = (room_of(&ev[i]), seq_of(&ev[i]));
        self.epoch_at
            .iter()
            .filter(|&(&k, e)| {
                k != i
                    && e == ep
                    && matches!(ev[k], Event::Message { room: r, seq: q, .. } if r == room && q == seq)
            })
            .count()
    }
}

fn view(ev: &[Event<'static>]) -> View {
    let mut joins: Vec<JoinRec> = Vec::new();
    let mut active: HashMap<(u32, u32, &str), usize> = HashMap::new();
    let mut epoch_at = HashMap::new();
    for (i, e) in ev.iter().enumerate() {
        match *e {
            Event::JoinSent {
                client,
                conn,
                room,
                since,
                ..
            } => {
                joins.push(JoinRec {
                    since,
                    ..Default::default()
                });
                active.insert((client, conn, room), joins.len() - 1);
            }
            Event::Joined {
                client,
                conn,
                room,
                epoch,
                ..
            } => {
                if let Some(&j) = active.get(&(client, conn, room)) {
                    joins[j].epoch = Some(epoch);
                }
            }
            Event::Message {
                client, conn, room, ..
            }
            | Event::Ack {
                client, conn, room, ..
            } => {
                if let Some(&j) = active.get(&(client, conn, room)) {
                    if matches!(e, Event::Message { .. }) {
                        joins[j].msgs.push(i);
                    }
                    if let Some(ep) = joins[j].epoch {
                        epoch_at.insert(i, ep);
                    }
                }
            }
            Event::Left {
                client, conn, room, ..
            } => {
                active.remove(&(client, conn, room));
            }
            Event::Closed { client, conn, .. } => {
                active.retain(|&(c, n, _), _| (c, n) != (client, conn));
            }
            Event::Finished { client, .. } => {
                for (&(c, _, _), &j) in &active {
                    if c == client {
                        joins[j].finished_at = Some(i);
                    }
                }
            }
            _ => {}
        }
    }
    View { joins, epoch_at }
}

fn seq_of(e: &Event<'_>) -> u64 {
    match *e {
        Event::Message { seq, .. } | Event::Ack { seq, .. } => seq,
        _ => unreachable!("a message or ack"),
    }
}

fn room_of(e: &Event<'static>) -> &'static str {
    match *e {
        Event::Message { room, .. } | Event::Ack { room, .. } | Event::Send { room, .. } => room,
        _ => unreachable!(),
    }
}

fn choose<T: Clone>(v: &[T], pick: usize) -> Option<T> {
    (!v.is_empty()).then(|| v[pick % v.len()].clone())
}

/// The content of a seq: (id, from, text hash, ts).
type Content = (&'static str, &'static str, u64, u64);

fn content(ev: &[Event<'static>], room: &str, seq: u64) -> Option<Content> {
    ev.iter().find_map(|e| match *e {
        Event::Message {
            room: r,
            seq: s,
            id,
            from,
            text_hash,
            ts,
            ..
        } if r == room && s == seq => Some((id, from, text_hash, ts)),
        _ => None,
    })
}

/// Swaps the messages at seqs `a` and `a + 1` of `room` everywhere: deliveries and acks.
fn swap_adjacent(ev: &mut [Event<'static>], room: &str, a: u64) -> Option<()> {
    let ca = content(ev, room, a)?;
    let cb = content(ev, room, a + 1)?;
    for e in ev.iter_mut() {
        match e {
            Event::Message {
                room: r,
                seq,
                id,
                from,
                text_hash,
                ts,
                ..
            } if *r == room && (*seq == a || *seq == a + 1) => {
                let c = if *seq == a { cb } else { ca };
                (*id, *from, *text_hash, *ts) = c;
            }
            Event::Ack {
                room: r,
                id,
                seq,
                ts,
                ..
            } if *r == room && (*id == ca.0 || *id == cb.0) => {
                let mine = if *id == ca.0 { ca } else { cb };
                *seq = if *id == ca.0 { a + 1 } else { a };
                *ts = mine.3;
            }
            _ => {}
        }
    }
    Some(())
}

/// At a message's first send: (client, the epoch the client was in, the highest seq it
/// had received in it, the highest in any epoch).
type FirstSend = (u32, Option<&'static str>, u64, u64);

/// Per (room, id), what its sender had seen when first sending it; and every accepted
/// attempt: (client, conn, room, id, acked seq, index of the send event).
struct Sends {
    first_send: HashMap<(&'static str, &'static str), FirstSend>,
    accepted: Vec<(u32, u32, &'static str, &'static str, u64, usize)>,
}

fn sends(ev: &[Event<'static>]) -> Sends {
    let mut seen: HashMap<(u32, &str), (Option<&str>, u64, u64)> = HashMap::new();
    let mut first_send = HashMap::new();
    let mut last_send: HashMap<(u32, u32, &str), usize> = HashMap::new();
    let mut accepted = Vec::new();
    for (i, e) in ev.iter().enumerate() {
        match *e {
            Event::Joined {
                client,
                room,
                epoch,
                ..
            } => {
                let s = seen.entry((client, room)).or_insert((None, 0, 0));
                if s.0 != Some(epoch) {
                    s.0 = Some(epoch);
                    s.1 = 0;
                }
            }
            Event::Message {
                client, room, seq, ..
            } => {
                let s = seen.entry((client, room)).or_insert((None, 0, 0));
                s.1 = s.1.max(seq);
                s.2 = s.2.max(seq);
            }
            Event::Send {
                client,
                conn,
                room,
                id,
                ..
            } => {
                let s = seen.get(&(client, room)).copied().unwrap_or((None, 0, 0));
                first_send
                    .entry((room, id))
                    .or_insert((client, s.0, s.1, s.2));
                last_send.insert((client, conn, id), i);
            }
            Event::Ack {
                client,
                conn,
                room,
                id,
                seq,
                dup: false,
                ..
            } => {
                if let Some(&order) = last_send.get(&(client, conn, id)) {
                    accepted.push((client, conn, room, id, seq, order));
                }
            }
            _ => {}
        }
    }
    Sends {
        first_send,
        accepted,
    }
}

/// Applies one fault of `kind` at a site chosen by `pick`.
pub fn inject(
    ev: &[Event<'static>],
    kind: AnomalyKind,
    pick: usize,
) -> Option<Vec<Event<'static>>> {
    let mut ev = ev.to_vec();
    let v = view(&ev);
    match kind {
        AnomalyKind::Lost => {
            let sites: Vec<usize> = v
                .joins
                .iter()
                .filter(|j| j.msgs.len() >= 3)
                .flat_map(|j| j.msgs[1..j.msgs.len() - 1].to_vec())
                // Someone else has it, or the final sequence would lose it (acked_lost).
                .filter(|&i| v.others(&ev, i) > 0)
                .collect();
            let i = choose(&sites, pick)?;
            ev.remove(i);
        }
        AnomalyKind::Duplicate => {
            let sites: Vec<usize> = v.joins.iter().flat_map(|j| j.msgs.clone()).collect();
            let i = choose(&sites, pick)?;
            ev.insert(i + 1, ev[i].clone());
        }
        AnomalyKind::Reordered => {
            let sites: Vec<usize> = v
                .joins
                .iter()
                .flat_map(|j| {
                    j.msgs
                        .windows(2)
                        .filter(|w| w[1] == w[0] + 1)
                        .map(|w| w[0])
                        .collect::<Vec<_>>()
                })
                .collect();
            let i = choose(&sites, pick)?;
            ev.swap(i, i + 1);
        }
        AnomalyKind::Divergent | AnomalyKind::Phantom => {
            let mut count: HashMap<(&str, &str, u64), usize> = HashMap::new();
            for (&i, &ep) in &v.epoch_at {
                if matches!(ev[i], Event::Message { .. }) {
                    *count
                        .entry((room_of(&ev[i]), ep, seq_of(&ev[i])))
                        .or_default() += 1;
                }
            }
            let mut sites: Vec<usize> = v
                .joins
                .iter()
                .flat_map(|j| j.msgs.clone())
                .filter(|i| {
                    kind == AnomalyKind::Phantom
                        || v.epoch_at
                            .get(i)
                            .is_some_and(|&ep| count[&(room_of(&ev[*i]), ep, seq_of(&ev[*i]))] >= 2)
                })
                .collect();
            sites.sort_unstable();
            let i = choose(&sites, pick)?;
            if let Event::Message { ts, text_hash, .. } = &mut ev[i] {
                if kind == AnomalyKind::Divergent {
                    *ts += 1_000_000;
                } else {
                    *text_hash ^= 0xdead_beef;
                }
            }
        }
        AnomalyKind::AckedLost => {
            let mut rooms: Vec<&str> = ev
                .iter()
                .filter_map(|e| match *e {
                    Event::Joined { room, .. } => Some(room),
                    _ => None,
                })
                .collect();
            rooms.sort_unstable();
            rooms.dedup();
            let trimmed = |room: &str| {
                ev.iter()
                    .any(|e| matches!(*e, Event::Joined { room: r, first, .. } if r == room && first > 1))
            };
            let sites: Vec<(&str, u64, &str)> = rooms
                .into_iter()
                .filter(|r| !trimmed(r))
                .filter_map(|room| {
                    let head = ev
                        .iter()
                        .filter_map(|e| match *e {
                            Event::Message { room: r, seq, .. } if r == room => Some(seq),
                            _ => None,
                        })
                        .max()?;
                    let (id, ..) = content(&ev, room, head)?;
                    let acked = ev
                        .iter()
                        .any(|e| matches!(*e, Event::Ack { room: r, id: i, .. } if r == room && i == id));
                    // A `history: N` join told head H replayed the last N up to H; with H
                    // gone it would have replayed one more old message, which this edit
                    // cannot invent: skip such rooms.
                    let history_at_head = ev.iter().enumerate().any(|(i, e)| {
                        matches!(*e, Event::Joined { room: r, head: h, client, conn, .. }
                            if r == room && h >= head && ev[..i].iter().rev().any(|p| matches!(*p,
                                Event::JoinSent { room: r2, client: c2, conn: n2, history: Some(_), .. }
                                if r2 == room && c2 == client && n2 == conn)))
                    });
                    (acked && !history_at_head).then_some((room, head, id))
                })
                .collect();
            let (room, h, _) = choose(&sites, pick)?;
            ev.retain(
                |e| !matches!(*e, Event::Message { room: r, seq, .. } if r == room && seq == h),
            );
            for e in &mut ev {
                match e {
                    Event::Joined { room: r, head, .. } if *r == room && *head >= h => {
                        *head = h - 1
                    }
                    Event::JoinSent {
                        room: r,
                        since: Some(s),
                        ..
                    } if *r == room && *s >= h => *s = h - 1,
                    _ => {}
                }
            }
        }
        AnomalyKind::DoubleSequenced => {
            let mut delivered: HashMap<(&str, &str, &str), u64> = HashMap::new();
            for (&i, &ep) in &v.epoch_at {
                if let Event::Message { room, id, seq, .. } = ev[i] {
                    delivered.insert((room, ep, id), seq);
                }
            }
            let mut sites: Vec<usize> = v
                .epoch_at
                .iter()
                .filter(|&(&i, &ep)| match ev[i] {
                    Event::Ack { room, id, .. } => delivered.contains_key(&(room, ep, id)),
                    _ => false,
                })
                .map(|(&i, _)| i)
                .collect();
            sites.sort_unstable();
            let i = choose(&sites, pick)?;
            if let Event::Ack { seq, .. } = &mut ev[i] {
                *seq += 1000;
            }
        }
        AnomalyKind::Fifo => {
            let s = sends(&ev);
            let mut sites = Vec::new();
            for a in &s.accepted {
                for b in &s.accepted {
                    let same_conn = (a.0, a.1, a.2) == (b.0, b.1, b.2);
                    if !same_conn || b.4 != a.4 + 1 || b.5 <= a.5 {
                        continue;
                    }
                    // The later send must not have seen the earlier one's seq (else the
                    // swap would also break causality).
                    let (_, _, _, high_any) = s.first_send[&(b.2, b.3)];
                    if high_any < a.4 {
                        sites.push((a.2, a.4));
                    }
                }
            }
            let (room, seq) = choose(&sites, pick)?;
            swap_adjacent(&mut ev, room, seq)?;
        }
        AnomalyKind::Causal => {
            let s = sends(&ev);
            let mut by_seq: HashMap<(&str, u64), (u32, &str)> = HashMap::new();
            for e in &ev {
                if let Event::Ack {
                    client,
                    room,
                    id,
                    seq,
                    ..
                } = *e
                {
                    by_seq.insert((room, seq), (client, id));
                }
            }
            let mut sites = Vec::new();
            for (&(room, seq), &(c, _)) in &by_seq {
                let Some(&(d, id2)) = by_seq.get(&(room, seq + 1)) else {
                    continue;
                };
                let (_, ep, high, _) = s.first_send[&(room, id2)];
                // d had read exactly `seq` (in the epoch it then was in) before sending.
                let read_it = ep.is_some_and(|ep| {
                    v.epoch_at.iter().any(|(&i, &e)| {
                        e == ep
                            && matches!(ev[i], Event::Message { client, room: r, seq: q, .. }
                                if client == d && r == room && q == seq)
                    })
                });
                if c != d && high == seq && read_it && content(&ev, room, seq + 1).is_some() {
                    sites.push((room, seq));
                }
            }
            sites.sort_unstable();
            let (room, seq) = choose(&sites, pick)?;
            swap_adjacent(&mut ev, room, seq)?;
        }
        AnomalyKind::ResumeGap => {
            let with_since: Vec<&JoinRec> = v
                .joins
                .iter()
                .filter(|j| j.msgs.len() >= 2 && j.since.is_some())
                .collect();
            let sites: Vec<usize> = if with_since.is_empty() {
                v.joins
                    .iter()
                    .filter(|j| j.msgs.len() >= 2)
                    .map(|j| j.msgs[0])
                    .collect()
            } else {
                with_since.iter().map(|j| j.msgs[0]).collect()
            };
            let sites: Vec<usize> = sites
                .into_iter()
                .filter(|&i| v.others(&ev, i) > 0)
                .collect();
            let i = choose(&sites, pick)?;
            ev.remove(i);
        }
        AnomalyKind::Incomplete => {
            let sites: Vec<usize> = v
                .joins
                .iter()
                .filter(|j| j.msgs.len() >= 2)
                .filter_map(|j| {
                    let fin = j.finished_at?;
                    let last = *j.msgs.last()?;
                    let (room, seq) = (room_of(&ev[last]), seq_of(&ev[last]));
                    let ep = v.epoch_at.get(&last)?;
                    let elsewhere = v.epoch_at.iter().any(|(&i, e)| {
                        i != last
                            && i < fin
                            && e == ep
                            && matches!(ev[i], Event::Message { room: r, seq: q, .. } if r == room && q == seq)
                    });
                    elsewhere.then_some(last)
                })
                .collect();
            let i = choose(&sites, pick)?;
            ev.remove(i);
        }
    }
    Some(ev)
}

/// Re-interleaves the events of different clients (keeping each client's own order), as
/// a recorder with several shards would.
pub fn interleave(ev: &[Event<'static>], seed: u64) -> Vec<Event<'static>> {
    let client = |e: &Event<'_>| match *e {
        Event::Client { client, .. }
        | Event::Connected { client, .. }
        | Event::ConnectFailed { client, .. }
        | Event::JoinSent { client, .. }
        | Event::Joined { client, .. }
        | Event::Message { client, .. }
        | Event::Send { client, .. }
        | Event::Ack { client, .. }
        | Event::Error { client, .. }
        | Event::LeaveSent { client, .. }
        | Event::Left { client, .. }
        | Event::Closed { client, .. }
        | Event::Fault { client, .. }
        | Event::Finished { client, .. } => client,
        Event::Lost { .. } => u32::MAX,
    };
    let mut streams: Vec<(u32, std::collections::VecDeque<Event<'static>>)> = Vec::new();
    for e in ev {
        let c = client(e);
        match streams.iter_mut().find(|(k, _)| *k == c) {
            Some((_, q)) => q.push_back(e.clone()),
            None => streams.push((c, std::collections::VecDeque::from([e.clone()]))),
        }
    }
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(ev.len());
    while !streams.is_empty() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = (x % streams.len() as u64) as usize;
        // Take a short run from one client, like a shard's block.
        let run = 1 + (x >> 32) % 4;
        for _ in 0..run {
            match streams[k].1.pop_front() {
                Some(e) => out.push(e),
                None => break,
            }
        }
        if streams[k].1.is_empty() {
            streams.remove(k);
        }
    }
    out
}

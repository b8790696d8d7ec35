//! Each event of the recording, as it comes.

use lockstep_protocol::record::Event;

use super::context::{self, Recent};
use super::expected_first;
use super::{
    AckRec, Analysis, CLIENT_FAULT_NOTES_MAX, FAULT_NOTES_MAX, FaultNote, Join, JoinState, NONE,
    SeqAttempt,
};

/// Unanswered sends remembered per connection (to match acks and errors to attempts).
/// Above it the oldest is forgotten: its ack then counts, but not for FIFO.
const INFLIGHT_PER_CONN_MAX: usize = 4096;

impl Analysis {
    pub fn observe(&mut self, ev: &Event<'_>) {
        self.events += 1;
        match *ev {
            Event::Client { client, user } => {
                let c = self.client(client);
                self.clients[c as usize].user = self.user(user);
            }
            Event::Connected { t_us, client, conn } => {
                let ci = self.conn(client, conn);
                let c = &mut self.conns[ci as usize];
                c.open = true;
                c.ring.push(Recent::Connected { t: t_us });
                self.stats.connections.opened += 1;
                if conn > 1 {
                    self.stats.connections.reconnects += 1;
                }
            }
            Event::ConnectFailed { .. } => self.stats.connections.connect_failures += 1,
            Event::JoinSent {
                t_us,
                client,
                conn,
                room,
                since,
                history,
                ..
            } => {
                let ci = self.conn(client, conn);
                let r = self.room(room);
                // A join being left stays until its `left` arrives (deliveries before
                // `left` are still its own); any other join of the room is replaced.
                if let Some(j) = self.join_ix_where(ci, r, |s| s != JoinState::Leaving) {
                    self.end_join(ci, j);
                }
                self.stats.connections.joins += 1;
                if since.is_some() {
                    self.stats.connections.resumes += 1;
                }
                let c = &mut self.conns[ci as usize];
                c.joins.push(Join {
                    room: r,
                    state: JoinState::Pending,
                    since,
                    history,
                    epoch: NONE,
                    head: 0,
                    first: 0,
                    reset: false,
                    joined_t: 0,
                    expected: None,
                    first_seen: 0,
                    last: 0,
                    deliveries: 0,
                    gaps: Vec::new(),
                    catchup: false,
                });
                c.ring.push(Recent::JoinSent {
                    t: t_us,
                    room: r,
                    since,
                    history,
                });
            }
            Event::Joined {
                t_us,
                client,
                conn,
                room,
                epoch,
                head,
                first,
                reset,
            } => self.on_joined(t_us, client, conn, room, epoch, head, first, reset),
            Event::Message {
                t_us,
                client,
                conn,
                room,
                seq,
                id,
                from,
                text_hash,
                ts,
            } => self.on_message(t_us, client, conn, room, seq, id, from, text_hash, ts),
            Event::Send {
                t_us,
                client,
                conn,
                room,
                id,
                text_hash,
                intended_us,
            } => self.on_send(t_us, client, conn, room, id, text_hash, intended_us),
            Event::Ack {
                t_us,
                client,
                conn,
                room,
                id,
                seq,
                dup,
                ..
            } => self.on_ack(t_us, client, conn, room, id, seq, dup),
            Event::Error {
                t_us,
                client,
                conn,
                code,
                id,
                room,
            } => self.on_error(t_us, client, conn, code, id, room),
            Event::LeaveSent {
                t_us,
                client,
                conn,
                room,
            } => {
                let ci = self.conn(client, conn);
                let r = self.room(room);
                if let Some(j) = self.join_ix(ci, r) {
                    self.conns[ci as usize].joins[j].state = JoinState::Leaving;
                }
                self.conns[ci as usize]
                    .ring
                    .push(Recent::LeaveSent { t: t_us, room: r });
            }
            Event::Left {
                t_us,
                client,
                conn,
                room,
            } => {
                let ci = self.conn(client, conn);
                let r = self.room(room);
                self.conns[ci as usize]
                    .ring
                    .push(Recent::Left { t: t_us, room: r });
                // `left` ends the join that was left, not a new one already sent after
                // the `leave` (leave, join since=S, left, joined is a valid order).
                let j = self
                    .join_ix_where(ci, r, |s| s == JoinState::Leaving)
                    .or_else(|| self.join_ix(ci, r));
                if let Some(j) = j {
                    self.end_join(ci, j);
                }
            }
            Event::Closed {
                t_us,
                client,
                conn,
                cause,
                code,
            } => {
                let ci = self.conn(client, conn);
                let c = &mut self.conns[ci as usize];
                c.open = false;
                c.inflight.clear();
                c.ring.push(Recent::Closed {
                    t: t_us,
                    cause,
                    code,
                });
                let key = match code {
                    Some(code) => format!("{}:{code}", context::cause_name(cause)),
                    None => context::cause_name(cause).to_owned(),
                };
                *self.stats.connections.closed.entry(key).or_default() += 1;
                while !self.conns[ci as usize].joins.is_empty() {
                    self.end_join(ci, 0);
                }
            }
            Event::Fault {
                t_us,
                client,
                kind,
                detail,
            } => {
                *self.stats.faults.entry(kind.to_owned()).or_default() += 1;
                // Every server fault is listed; client faults are sampled (one per kind
                // and second) so the report can draw them along the whole run.
                let server = client == u32::MAX;
                let second = t_us / 1_000_000;
                let keep = if server {
                    self.faults.len() < FAULT_NOTES_MAX
                } else {
                    self.faults.iter().filter(|f| f.client.is_some()).count()
                        < CLIENT_FAULT_NOTES_MAX
                        && !self.faults.iter().any(|f| {
                            f.client.is_some() && f.kind == kind && f.t_us / 1_000_000 == second
                        })
                };
                if keep {
                    self.faults.push(FaultNote {
                        t_us,
                        client: (client != u32::MAX).then_some(client),
                        kind: kind.to_owned(),
                        detail: detail.to_owned(),
                    });
                }
            }
            Event::Finished { t_us, client } => self.on_finished(t_us, client),
            Event::Lost { count } => self.lost_events += count,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_joined(
        &mut self,
        t: u64,
        client: u32,
        conn: u32,
        room: &str,
        epoch: &str,
        head: u64,
        first: u64,
        reset: bool,
    ) {
        let ci = self.conn(client, conn);
        let r = self.room(room);
        let e = self.rooms[r as usize].epoch_ix(epoch);
        {
            let ep = &mut self.rooms[r as usize].epochs[e as usize];
            ep.baseline = ep.baseline.min(head);
            ep.retained_first = ep.retained_first.max(first);
            ep.last_joined_t = ep.last_joined_t.max(t);
            ep.evidence(head, t);
        }
        if reset {
            self.stats.connections.resets += 1;
        }
        let pending = self.join_ix_where(ci, r, |s| s == JoinState::Pending);
        let j = match pending.or_else(|| self.join_ix(ci, r)) {
            Some(j) if self.conns[ci as usize].joins[j].state == JoinState::Pending => j,
            other => {
                // A `joined` without a `join` of ours pending: take it as a fresh join.
                if let Some(j) = other {
                    self.end_join(ci, j);
                }
                let c = &mut self.conns[ci as usize];
                c.joins.push(Join {
                    room: r,
                    state: JoinState::Pending,
                    since: None,
                    history: None,
                    epoch: NONE,
                    head: 0,
                    first: 0,
                    reset: false,
                    joined_t: 0,
                    expected: None,
                    first_seen: 0,
                    last: 0,
                    deliveries: 0,
                    gaps: Vec::new(),
                    catchup: false,
                });
                c.joins.len() - 1
            }
        };
        let c = &mut self.conns[ci as usize];
        let join = &mut c.joins[j];
        join.state = JoinState::Joined;
        join.epoch = e;
        join.head = head;
        join.first = first;
        join.reset = reset;
        join.joined_t = t;
        join.expected = expected_first(join.since, join.history, head, first, reset);
        join.catchup = join.expected.is_some_and(|x| x <= head);
        c.ring.push(Recent::Joined {
            t,
            room: r,
            epoch: e,
            head,
            first,
            reset,
        });
        // A client that moves to another epoch drops what it held of the old one.
        let cl = c.client as usize;
        let seen = &mut self.clients[cl].seen;
        match seen.iter_mut().find(|(room, _, _)| *room == r) {
            Some(s) if s.1 != e => *s = (r, e, 0),
            Some(_) => {}
            None => seen.push((r, e, 0)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_send(
        &mut self,
        t: u64,
        client: u32,
        conn: u32,
        room: &str,
        id: &str,
        text_hash: u64,
        intended_us: u64,
    ) {
        let ci = self.conn(client, conn);
        let r = self.room(room);
        let m = self.msg(r, id);
        self.stats.send(t);
        let c = &mut self.conns[ci as usize];
        c.sends += 1;
        let order = c.sends;
        if c.inflight.len() >= INFLIGHT_PER_CONN_MAX {
            c.inflight.remove(0);
        }
        c.inflight.push((m, order));
        c.ring.push(Recent::Send { t, room: r, msg: m });
        let cl = c.client;
        let msg = &mut self.msgs[m as usize];
        msg.attempts += 1;
        if msg.sender == NONE {
            msg.sender = cl;
            msg.sent_hash = text_hash;
            msg.intended_us = intended_us;
            msg.first_send_t = t;
            msg.first_conn = ci;
            if let Some(&(_, e, high)) = self.clients[cl as usize]
                .seen
                .iter()
                .find(|(room, _, _)| *room == r)
            {
                msg.seen_epoch = e;
                msg.seen_high = high;
            }
            self.stats.sends.messages += 1;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_ack(
        &mut self,
        t: u64,
        client: u32,
        conn: u32,
        room: &str,
        id: &str,
        seq: u64,
        dup: bool,
    ) {
        let ci = self.conn(client, conn);
        let r = self.room(room);
        let m = self.msg(r, id);
        let epoch = self.epoch_for(ci, r);
        if epoch != NONE {
            self.rooms[r as usize].epochs[epoch as usize].evidence(seq, t);
        }
        self.stats.ack(t, dup);
        let c = &mut self.conns[ci as usize];
        c.ring.push(Recent::Ack {
            t,
            room: r,
            msg: m,
            seq,
            dup,
        });
        let order = c
            .inflight
            .iter()
            .position(|&(im, _)| im == m)
            .map(|i| c.inflight.remove(i).1);
        let rec = AckRec {
            epoch,
            seq,
            t,
            conn: ci,
            dup,
        };
        let msg = &mut self.msgs[m as usize];
        match msg.ack {
            None => {
                msg.ack = Some(rec);
                self.stats.sends.acked += 1;
                if msg.sender != NONE {
                    self.stats
                        .ack_latency
                        .record(t.saturating_sub(msg.intended_us));
                }
            }
            Some(a) if a.epoch == epoch && a.seq != seq && msg.ack_conflict.is_none() => {
                msg.ack_conflict = Some(rec);
            }
            Some(_) => {}
        }
        if let (false, Some(order), None) = (dup, order, msg.seq_attempt) {
            msg.seq_attempt = Some(SeqAttempt {
                conn: ci,
                order,
                epoch,
                seq,
                t,
            });
        }
    }

    fn on_error(
        &mut self,
        t: u64,
        client: u32,
        conn: u32,
        code: &str,
        id: Option<&str>,
        room: Option<&str>,
    ) {
        let ci = self.conn(client, conn);
        self.stats.error(t, code);
        let code = self.code(code);
        let mut m = NONE;
        if let Some(id) = id {
            let by_room = room
                .and_then(|room| self.room_ix.get(room))
                .and_then(|&r| self.rooms[r as usize].ids.get(id).copied());
            let c = &self.conns[ci as usize];
            let pos = match by_room {
                Some(bm) => c.inflight.iter().position(|&(im, _)| im == bm),
                None => c
                    .inflight
                    .iter()
                    .position(|&(im, _)| &*self.msgs[im as usize].id == id),
            };
            if let Some(p) = pos {
                m = self.conns[ci as usize].inflight.remove(p).0;
                self.msgs[m as usize].errors += 1;
            } else if let Some(bm) = by_room {
                m = bm;
            }
        }
        self.conns[ci as usize]
            .ring
            .push(Recent::Error { t, code, msg: m });
    }
}

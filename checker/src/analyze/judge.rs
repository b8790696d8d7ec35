//! Judgements that compare what different clients saw, against each other and against
//! what was sent: divergent, phantom, acked_lost, double_sequenced, causal, fifo. Made once
//! every event is in, so they do not depend on how clients' events were interleaved.

use super::{Analysis, NONE, Recent};
use crate::analyze::deliver::secs;
use crate::anomaly::{Anomaly, AnomalyKind, Signature, Witness};

/// One content seen for a seq, and who saw it first.
struct Content {
    msg: u32,
    from: u32,
    text_hash: u64,
    ts: u64,
    witness: u32,
    witness_t: u64,
    deliveries: u64,
    context: Vec<Recent>,
}

impl Analysis {
    /// Is this content what its sender sent? A message nobody of this run sent is only
    /// genuine below the epoch's baseline (history from before the run).
    pub(super) fn genuine(
        &self,
        from: u32,
        text_hash: u64,
        m: u32,
        seq: u64,
        baseline: u64,
    ) -> bool {
        let m = &self.msgs[m as usize];
        if m.sender == NONE {
            return seq <= baseline;
        }
        self.clients[m.sender as usize].user == from && m.sent_hash == text_hash
    }

    fn saw(&self, c: &Content, seq: u64) -> String {
        format!(
            "message seq={seq} id={} from={} text={} ts={} ({} deliveries)",
            self.msg_id(c.msg),
            self.user_name(c.from),
            super::context::hash_str(c.text_hash),
            c.ts,
            c.deliveries
        )
    }

    fn witness(&self, ci: u32, t: Option<u64>, saw: String) -> Witness {
        let (client, conn) = self.conn_ref(ci);
        Witness {
            client,
            conn,
            t_us: t,
            saw,
        }
    }

    /// Divergent and phantom: every content seen for one seq against the others and
    /// against what was sent.
    pub(super) fn judge_seq(&mut self, r: u32, e: u32, seq: u64) {
        let ep = &self.rooms[r as usize].epochs[e as usize];
        let Some(slot) = ep.slot(seq).copied() else {
            return;
        };
        let baseline = ep.baseline;
        let mut contents = vec![Content {
            msg: slot.msg,
            from: slot.from,
            text_hash: slot.text_hash,
            ts: slot.ts,
            witness: slot.witness,
            witness_t: slot.witness_t,
            deliveries: slot.deliveries,
            context: Vec::new(),
        }];
        for v in self.variants.remove(&(r, e, seq)).unwrap_or_default() {
            contents.push(Content {
                msg: v.msg,
                from: v.from,
                text_hash: v.text_hash,
                ts: v.ts,
                witness: v.witness,
                witness_t: v.witness_t,
                deliveries: v.deliveries,
                context: v.context,
            });
        }
        let mut genuine = Vec::new();
        for c in &contents {
            if self.genuine(c.from, c.text_hash, c.msg, seq, baseline) {
                genuine.push(c);
                continue;
            }
            let sig = Signature {
                kind: AnomalyKind::Phantom,
                room: r,
                epoch: e,
                seqs: (seq, seq),
                msg: c.msg,
            };
            self.report_n(sig, c.deliveries, |a| {
                let m = &a.msgs[c.msg as usize];
                let got = format!(
                    "{} received seq {seq} of room {} as id {} from {} with text {} at {}{}",
                    a.who(c.witness),
                    a.room_name(r),
                    m.id,
                    a.user_name(c.from),
                    super::context::hash_str(c.text_hash),
                    secs(c.witness_t),
                    if c.deliveries > 1 {
                        format!(" ({} deliveries of it)", c.deliveries)
                    } else {
                        String::new()
                    }
                );
                let mut witnesses = vec![a.witness(c.witness, Some(c.witness_t), a.saw(c, seq))];
                let ex = if m.sender == NONE {
                    format!(
                        "{got}, but no client sent {} to {}: a delivered message must be one a \
                         client sent",
                        m.id,
                        a.room_name(r)
                    )
                } else {
                    let sender = a.client_ref(m.sender).expect("sender exists");
                    witnesses.push(a.witness(
                        m.first_conn,
                        Some(m.first_send_t),
                        format!(
                            "send id={} text={}",
                            m.id,
                            super::context::hash_str(m.sent_hash)
                        ),
                    ));
                    format!(
                        "{got}, but client {} ({}) sent {} with text {} at {}: a message must \
                         be delivered as it was sent",
                        sender.index,
                        sender.user,
                        m.id,
                        super::context::hash_str(m.sent_hash),
                        secs(m.first_send_t)
                    )
                };
                let mut an = a.conn_anomaly(
                    AnomalyKind::Phantom,
                    c.witness,
                    r,
                    e,
                    vec![seq],
                    vec![m.id.to_string()],
                    Some(c.witness_t),
                    ex,
                    &c.context,
                );
                an.witnesses = witnesses;
                an
            });
        }
        if genuine.len() < 2 {
            return;
        }
        let sig = Signature {
            kind: AnomalyKind::Divergent,
            room: r,
            epoch: e,
            seqs: (seq, seq),
            msg: NONE,
        };
        self.report(sig, |a| {
            let views: Vec<String> = genuine
                .iter()
                .map(|c| {
                    format!(
                        "{} saw id {} from {} text {} ts {}",
                        a.who(c.witness),
                        a.msg_id(c.msg),
                        a.user_name(c.from),
                        super::context::hash_str(c.text_hash),
                        c.ts
                    )
                })
                .collect();
            let ex = format!(
                "seq {seq} of room {} was delivered with {} different contents ({}): every \
                 receiver of a seq must get the same message",
                a.room_name(r),
                genuine.len(),
                views.join("; ")
            );
            let first = genuine[1];
            let mut an = a.conn_anomaly(
                AnomalyKind::Divergent,
                first.witness,
                r,
                e,
                vec![seq],
                genuine.iter().map(|c| a.msg_id(c.msg).to_owned()).collect(),
                Some(first.witness_t),
                ex,
                &first.context,
            );
            an.witnesses = genuine
                .iter()
                .map(|c| a.witness(c.witness, Some(c.witness_t), a.saw(c, seq)))
                .collect();
            an
        });
    }

    /// An anomaly about one message id, not one connection's stream.
    fn msg_anomaly(
        &self,
        kind: AnomalyKind,
        m: u32,
        e: u32,
        seqs: Vec<u64>,
        ex: String,
    ) -> Anomaly {
        let msg = &self.msgs[m as usize];
        let (client, conn) = if msg.first_conn != NONE {
            self.conn_ref(msg.first_conn)
        } else {
            (None, None)
        };
        Anomaly {
            kind,
            explanation: ex,
            client,
            conn,
            room: self.room_name(msg.room).to_owned(),
            epoch: self.epoch_name(msg.room, e),
            seqs,
            ids: vec![msg.id.to_string()],
            t_us: (msg.sender != NONE).then_some(msg.first_send_t),
            witnesses: Vec::new(),
            context: Vec::new(),
            occurrences: 0,
        }
    }

    /// acked_lost, double_sequenced, causal for one message; its FIFO key if any.
    pub(super) fn judge_msg(
        &mut self,
        m: u32,
        recovered: &mut u64,
        unconfirmed: &mut u64,
    ) -> Option<FifoKey> {
        let msg = &self.msgs[m as usize];
        let r = msg.room;
        if msg.sender != NONE && msg.ack.is_none() {
            if msg.delivered() {
                *recovered += 1;
            } else if msg.errors >= msg.attempts {
                self.stats.sends.refused += 1;
            } else {
                *unconfirmed += 1;
            }
        }
        if let Some(ack) = msg.ack {
            let f = self.rooms[r as usize].latest_epoch();
            if f != NONE && msg.pos_in(f).is_none() {
                let ep = &self.rooms[r as usize].epochs[f as usize];
                if ep.retained_first > 1 && (ack.epoch != f || ack.seq < ep.retained_first) {
                    // Below what the final readers could read: cannot be judged.
                    self.acked_unverifiable += 1;
                } else {
                    let other = ep.slot(ack.seq).filter(|s| s.msg != NONE && ack.epoch == f);
                    let other = other.map(|s| (s.msg, s.witness, s.witness_t));
                    let sig = Signature {
                        kind: AnomalyKind::AckedLost,
                        room: r,
                        epoch: f,
                        seqs: (ack.seq, ack.seq),
                        msg: m,
                    };
                    self.report(sig, |a| {
                        let msg = &a.msgs[m as usize];
                        let there = match other {
                            Some((o, _, _)) => format!("seq {} is {}", ack.seq, a.msg_id(o)),
                            None => format!("nobody was delivered seq {}", ack.seq),
                        };
                        let ex = format!(
                            "{} got an ack for {} with seq {} in room {} at {}, but {} is not in \
                             the room's final sequence (epoch {}; {there}): an acked message \
                             must never be lost",
                            a.who(ack.conn),
                            msg.id,
                            ack.seq,
                            a.room_name(r),
                            secs(ack.t),
                            msg.id,
                            a.epoch_name(r, f).unwrap_or_default()
                        );
                        let mut an = a.msg_anomaly(AnomalyKind::AckedLost, m, f, vec![ack.seq], ex);
                        let (client, conn) = a.conn_ref(ack.conn);
                        an.client = client;
                        an.conn = conn;
                        an.t_us = Some(ack.t);
                        an.witnesses.push(a.witness(
                            ack.conn,
                            Some(ack.t),
                            format!(
                                "ack id={} seq={}{}",
                                msg.id,
                                ack.seq,
                                if ack.dup { " dup" } else { "" }
                            ),
                        ));
                        if let Some((o, w, wt)) = other {
                            an.witnesses.push(a.witness(
                                w,
                                Some(wt),
                                format!("message seq={} id={}", ack.seq, a.msg_id(o)),
                            ));
                        }
                        an
                    });
                }
            }
        }
        self.judge_double(m);
        self.judge_causal(m);
        let msg = &self.msgs[m as usize];
        let sa = msg.seq_attempt?;
        if sa.epoch == NONE {
            return None;
        }
        Some(FifoKey {
            conn: sa.conn,
            room: r,
            epoch: sa.epoch,
            order: sa.order,
            seq: msg.pos_in(sa.epoch).unwrap_or(sa.seq),
            msg: m,
            t: sa.t,
        })
    }

    fn judge_double(&mut self, m: u32) {
        let msg = &self.msgs[m as usize];
        let mut how = Vec::new();
        let mut epoch = NONE;
        let mut seqs = Vec::new();
        let all: Vec<(u32, u64)> = std::iter::once(msg.pos)
            .chain(msg.more_pos.iter().copied())
            .collect();
        for (i, &(e, s)) in all.iter().enumerate() {
            if e == NONE {
                continue;
            }
            if let Some(&(_, s2)) = all[i + 1..].iter().find(|(e2, s2)| *e2 == e && *s2 != s) {
                how.push(format!("delivered at seq {s} and at seq {s2}"));
                epoch = e;
                seqs.extend([s, s2]);
                break;
            }
        }
        if let Some(ack) = msg.ack {
            if let Some(p) = msg.pos_in(ack.epoch).filter(|&p| p != ack.seq) {
                how.push(format!(
                    "acked with seq {} but delivered at seq {p}",
                    ack.seq
                ));
                epoch = ack.epoch;
                seqs.extend([ack.seq, p]);
            }
            if let Some(c) = msg.ack_conflict {
                how.push(format!(
                    "acked with seq {} and again with seq {}",
                    ack.seq, c.seq
                ));
                epoch = ack.epoch;
                seqs.extend([ack.seq, c.seq]);
            }
        }
        if how.is_empty() {
            return;
        }
        seqs.sort_unstable();
        seqs.dedup();
        let r = msg.room;
        let sig = Signature {
            kind: AnomalyKind::DoubleSequenced,
            room: r,
            epoch,
            seqs: (seqs[0], *seqs.last().expect("non-empty")),
            msg: m,
        };
        self.report(sig, |a| {
            let msg = &a.msgs[m as usize];
            let ex = format!(
                "{} of room {} was {}: one message id must be sequenced once",
                msg.id,
                a.room_name(r),
                how.join(", and ")
            );
            let mut an = a.msg_anomaly(AnomalyKind::DoubleSequenced, m, epoch, seqs.clone(), ex);
            if let Some(ack) = msg.ack {
                an.witnesses.push(a.witness(
                    ack.conn,
                    Some(ack.t),
                    format!("ack id={} seq={}", msg.id, ack.seq),
                ));
            }
            an
        });
    }

    fn judge_causal(&mut self, m: u32) {
        let msg = &self.msgs[m as usize];
        if msg.seen_epoch == NONE || msg.seen_high == 0 {
            return;
        }
        let e = msg.seen_epoch;
        let seq = msg
            .pos_in(e)
            .or_else(|| msg.ack.filter(|a| a.epoch == e).map(|a| a.seq));
        let Some(seq) = seq.filter(|&s| s <= msg.seen_high) else {
            return;
        };
        let high = msg.seen_high;
        let sig = Signature {
            kind: AnomalyKind::Causal,
            room: msg.room,
            epoch: e,
            seqs: (seq, high),
            msg: m,
        };
        self.report(sig, |a| {
            let msg = &a.msgs[m as usize];
            let ex = format!(
                "{} had received seq {high} of room {} before it first sent {} at {}, yet {} \
                 was sequenced at seq {seq}: a message must be sequenced after everything its \
                 sender had seen",
                a.who(msg.first_conn),
                a.room_name(msg.room),
                msg.id,
                secs(msg.first_send_t),
                msg.id
            );
            a.msg_anomaly(AnomalyKind::Causal, m, e, vec![seq, high], ex)
        });
    }

    pub(super) fn judge_fifo(&mut self, mut keys: Vec<FifoKey>) {
        keys.sort_unstable_by_key(|k| (k.conn, k.room, k.epoch, k.order));
        let mut i = 0;
        while i < keys.len() {
            let k0 = keys[i];
            let mut top = k0;
            let mut j = i + 1;
            while j < keys.len()
                && (keys[j].conn, keys[j].room, keys[j].epoch) == (k0.conn, k0.room, k0.epoch)
            {
                let k = keys[j];
                if k.seq < top.seq {
                    let sig = Signature {
                        kind: AnomalyKind::Fifo,
                        room: k.room,
                        epoch: k.epoch,
                        seqs: (top.seq, k.seq),
                        msg: k.msg,
                    };
                    self.report(sig, |a| {
                        let ex = format!(
                            "{} sent {} before {} to room {}, both were accepted, but {} was \
                             sequenced at seq {} and {} at seq {}: sends of one connection must \
                             be sequenced in the order they were sent",
                            a.who(k.conn),
                            a.msg_id(top.msg),
                            a.msg_id(k.msg),
                            a.room_name(k.room),
                            a.msg_id(top.msg),
                            top.seq,
                            a.msg_id(k.msg),
                            k.seq
                        );
                        let mut an = a.msg_anomaly(
                            AnomalyKind::Fifo,
                            k.msg,
                            k.epoch,
                            vec![top.seq, k.seq],
                            ex,
                        );
                        an.ids = vec![a.msg_id(top.msg).to_owned(), a.msg_id(k.msg).to_owned()];
                        let (client, conn) = a.conn_ref(k.conn);
                        an.client = client;
                        an.conn = conn;
                        an.witnesses = [top, k]
                            .iter()
                            .map(|x| {
                                a.witness(
                                    x.conn,
                                    Some(x.t),
                                    format!(
                                        "ack id={} seq={} (send #{} on the connection)",
                                        a.msg_id(x.msg),
                                        x.seq,
                                        x.order
                                    ),
                                )
                            })
                            .collect();
                        an
                    });
                } else {
                    top = k;
                }
                j += 1;
            }
            i = j;
        }
    }
}

/// An accepted send, placed: which connection sent it, in which order, and its seq.
#[derive(Debug, Clone, Copy)]
pub(super) struct FifoKey {
    conn: u32,
    room: u32,
    epoch: u32,
    order: u32,
    seq: u64,
    msg: u32,
    t: u64,
}

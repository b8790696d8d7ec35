//! One `message` event: the canonical sequence, the connection's stream (lost, duplicate,
//! reordered, resume_gap), and the delivery figures.

use super::{Analysis, Gap, JoinState, NONE, Recent, Slot, VARIANTS_MAX, Variant};
use crate::anomaly::{Anomaly, AnomalyKind, Signature};

/// Gaps kept open per join, waiting for a late seq to fill them (then it is `reordered`,
/// not `lost`). Above this the oldest is judged `lost` at once; a seq of it arriving even
/// later is then reported as `duplicate` — acceptable for a stream already this broken.
const GAPS_PER_JOIN_MAX: usize = 16;

/// How a delivery fits the connection's stream.
enum Fit {
    InOrder,
    Duplicate,
    /// Arrived after this higher seq.
    Reordered(u64),
    /// Before the start the `joined` answer promised.
    Early(u64),
}

pub(crate) fn secs(t_us: u64) -> String {
    format!("{:.6}s", t_us as f64 / 1e6)
}

impl Analysis {
    /// "client 3 (u3) conn 2"
    pub(crate) fn who(&self, ci: u32) -> String {
        let (client, conn) = self.conn_ref(ci);
        match (client, conn) {
            (Some(c), Some(n)) => format!("client {} ({}) conn {n}", c.index, c.user),
            _ => "a client".into(),
        }
    }

    /// An anomaly about one connection, with its context.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conn_anomaly(
        &self,
        kind: AnomalyKind,
        ci: u32,
        r: u32,
        e: u32,
        seqs: Vec<u64>,
        ids: Vec<String>,
        t: Option<u64>,
        explanation: String,
        ctx: &[Recent],
    ) -> Anomaly {
        let (client, conn) = self.conn_ref(ci);
        Anomaly {
            kind,
            explanation,
            client,
            conn,
            room: self.room_name(r).to_owned(),
            epoch: self.epoch_name(r, e),
            seqs,
            ids,
            t_us: t,
            witnesses: Vec::new(),
            context: self.render_context(ci, ctx),
            occurrences: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_message(
        &mut self,
        t: u64,
        client: u32,
        conn: u32,
        room: &str,
        seq: u64,
        id: &str,
        from: &str,
        text_hash: u64,
        ts: u64,
    ) {
        let ci = self.conn(client, conn);
        let r = self.room(room);
        let j = self.conns[ci as usize]
            .joins
            .iter()
            .position(|j| j.room == r && j.state != JoinState::Pending);
        let Some(j) = j else {
            // Not joined here (before `joined`, after `left`): nothing to judge it against.
            self.stats.deliveries.stray += 1;
            let m = self.rooms[r as usize].ids.get(id).copied().unwrap_or(NONE);
            self.conns[ci as usize].ring.push(Recent::Message {
                t,
                room: r,
                seq,
                msg: m,
            });
            return;
        };
        let e = self.conns[ci as usize].joins[j].epoch;
        let (m, new_variant) = self.canonical(r, e, seq, id, from, text_hash, ts, ci, t);
        let c = &mut self.conns[ci as usize];
        c.ring.push(Recent::Message {
            t,
            room: r,
            seq,
            msg: m,
        });
        if new_variant {
            let ctx = c.ring.snapshot();
            if let Some(v) = self
                .variants
                .get_mut(&(r, e, seq))
                .and_then(|vs| vs.last_mut())
            {
                v.context = ctx;
            }
        }
        let live = seq > self.conns[ci as usize].joins[j].head;
        self.stream(ci, j, seq, t, m);

        let cl = self.conns[ci as usize].client as usize;
        let seen = &mut self.clients[cl].seen;
        match seen.iter_mut().find(|(room, _, _)| *room == r) {
            Some(s) if s.1 == e => s.2 = s.2.max(seq),
            Some(s) => *s = (r, e, seq),
            None => seen.push((r, e, seq)),
        }

        let group = self.rooms[r as usize].group;
        self.stats.delivery(t, live, group);
        if live {
            let msg = &self.msgs[m as usize];
            if msg.sender != NONE {
                let us = t.saturating_sub(msg.intended_us);
                self.stats.delivery_latency(t, us, group);
            } else {
                self.pending_latency
                    .push(super::PendingLatency { msg: m, t, group });
            }
        }
    }

    /// Puts a delivery into the canonical sequence of (room, epoch); returns the message
    /// it delivered and whether it is new content for that seq.
    #[allow(clippy::too_many_arguments)]
    fn canonical(
        &mut self,
        r: u32,
        e: u32,
        seq: u64,
        id: &str,
        from: &str,
        text_hash: u64,
        ts: u64,
        ci: u32,
        t: u64,
    ) -> (u32, bool) {
        {
            let Analysis {
                rooms, msgs, users, ..
            } = self;
            let slot = rooms[r as usize].epochs[e as usize].slot_mut(seq);
            slot.seen_t = slot.seen_t.min(t);
            if slot.msg != NONE {
                if slot.text_hash == text_hash
                    && slot.ts == ts
                    && &*msgs[slot.msg as usize].id == id
                    && &*users[slot.from as usize] == from
                {
                    slot.deliveries += 1;
                    return (slot.msg, false);
                }
            } else {
                let seen_t = slot.seen_t;
                let m = self.msg(r, id);
                let u = self.user(from);
                *self.rooms[r as usize].epochs[e as usize].slot_mut(seq) = Slot {
                    msg: m,
                    from: u,
                    text_hash,
                    ts,
                    seen_t,
                    witness: ci,
                    witness_t: t,
                    deliveries: 1,
                };
                self.msgs[m as usize].add_pos(e, seq);
                return (m, false);
            }
        }
        // Someone saw other content for this seq.
        let m = self.msg(r, id);
        let u = self.user(from);
        let vs = self.variants.entry((r, e, seq)).or_default();
        if let Some(v) = vs
            .iter_mut()
            .find(|v| v.msg == m && v.from == u && v.text_hash == text_hash && v.ts == ts)
        {
            v.deliveries += 1;
            return (m, false);
        }
        if self.variants_kept >= VARIANTS_MAX {
            self.variants_dropped += 1;
            return (m, false);
        }
        vs.push(Variant {
            msg: m,
            from: u,
            text_hash,
            ts,
            witness: ci,
            witness_t: t,
            deliveries: 1,
            context: Vec::new(),
        });
        self.variants_kept += 1;
        self.msgs[m as usize].add_pos(e, seq);
        (m, true)
    }

    /// Fits a delivery into its join's stream and reports what does not fit.
    fn stream(&mut self, ci: u32, j: usize, seq: u64, t: u64, m: u32) {
        let c = &mut self.conns[ci as usize];
        let join = &mut c.joins[j];
        join.deliveries += 1;
        let mut new_gap = None;
        let fit = if join.first_seen == 0 {
            join.first_seen = seq;
            join.last = seq;
            match join.expected {
                Some(x) if seq < x => Fit::Early(x),
                Some(x) if seq > x => {
                    new_gap = Some((x, seq - 1, true));
                    Fit::InOrder
                }
                _ => Fit::InOrder,
            }
        } else if seq == join.last + 1 {
            join.last = seq;
            Fit::InOrder
        } else if seq > join.last {
            new_gap = Some((join.last + 1, seq - 1, false));
            join.last = seq;
            Fit::InOrder
        } else if let Some(g) = join.gaps.iter().position(|g| g.lo <= seq && seq <= g.hi) {
            let gap = &mut join.gaps[g];
            if gap.lo == gap.hi {
                join.gaps.remove(g);
            } else if seq == gap.lo {
                gap.lo += 1;
            } else if seq == gap.hi {
                gap.hi -= 1;
            } else {
                let mut upper = gap.clone();
                upper.lo = seq + 1;
                gap.hi = seq - 1;
                join.gaps.insert(g + 1, upper);
            }
            Fit::Reordered(join.last)
        } else if let Some(x) = join.expected.filter(|&x| seq < x) {
            Fit::Early(x)
        } else if seq < join.first_seen {
            Fit::Reordered(join.first_seen)
        } else {
            Fit::Duplicate
        };
        if join.catchup && seq >= join.head {
            join.catchup = false;
            let us = t.saturating_sub(join.joined_t);
            self.stats.catchup.record(us);
        }
        let c = &mut self.conns[ci as usize];
        let mut overflow = None;
        if let Some((lo, hi, seam)) = new_gap {
            let context = c.ring.snapshot();
            let join = &mut c.joins[j];
            if join.gaps.len() >= GAPS_PER_JOIN_MAX {
                overflow = Some(join.gaps.remove(0));
            }
            join.gaps.push(Gap {
                lo,
                hi,
                seam,
                t,
                context,
            });
        }
        let join = &self.conns[ci as usize].joins[j];
        let (r, e) = (join.room, join.epoch);
        if let Some(g) = overflow {
            self.report_gap(ci, j, &g);
        }
        let sig = |kind, seqs| Signature {
            kind,
            room: r,
            epoch: e,
            seqs,
            msg: m,
        };
        match fit {
            Fit::InOrder => {}
            Fit::Duplicate => self.report(sig(AnomalyKind::Duplicate, (seq, seq)), |a| {
                let ex = format!(
                    "{} received seq {seq} (id {}) of room {} a second time at {}: a connection \
                     must receive each seq once",
                    a.who(ci),
                    a.msg_id(m),
                    a.room_name(r),
                    secs(t)
                );
                let ctx = a.conns[ci as usize].ring.snapshot();
                a.conn_anomaly(
                    AnomalyKind::Duplicate,
                    ci,
                    r,
                    e,
                    vec![seq],
                    vec![a.msg_id(m).to_owned()],
                    Some(t),
                    ex,
                    &ctx,
                )
            }),
            Fit::Reordered(after) => self.report(sig(AnomalyKind::Reordered, (seq, after)), |a| {
                let ex = format!(
                    "{} received seq {seq} (id {}) of room {} at {} after it had \
                             received seq {after}: a connection must receive seqs in \
                             increasing order",
                    a.who(ci),
                    a.msg_id(m),
                    a.room_name(r),
                    secs(t)
                );
                let ctx = a.conns[ci as usize].ring.snapshot();
                a.conn_anomaly(
                    AnomalyKind::Reordered,
                    ci,
                    r,
                    e,
                    vec![seq, after],
                    vec![a.msg_id(m).to_owned()],
                    Some(t),
                    ex,
                    &ctx,
                )
            }),
            Fit::Early(x) => self.report(sig(AnomalyKind::ResumeGap, (seq, x)), |a| {
                let ex = format!(
                    "{} joined room {} with {}, so its stream had to start at seq {x}, but it \
                     was delivered seq {seq} (id {}) at {}: a join must deliver exactly from \
                     where its joined answer says",
                    a.who(ci),
                    a.room_name(r),
                    a.join_desc(ci, j),
                    a.msg_id(m),
                    secs(t)
                );
                let ctx = a.conns[ci as usize].ring.snapshot();
                a.conn_anomaly(
                    AnomalyKind::ResumeGap,
                    ci,
                    r,
                    e,
                    vec![seq, x],
                    vec![a.msg_id(m).to_owned()],
                    Some(t),
                    ex,
                    &ctx,
                )
            }),
        }
    }

    /// "since=4 (joined: head=9 first=1)"
    pub(crate) fn join_desc(&self, ci: u32, j: usize) -> String {
        let join = &self.conns[ci as usize].joins[j];
        let ask = match (join.since, join.history) {
            (Some(s), _) => format!("since={s}"),
            (None, Some(h)) => format!("history={h}"),
            (None, None) => "no since (live only)".into(),
        };
        format!(
            "{ask} (joined: head={} first={}{})",
            join.head,
            join.first,
            if join.reset { " reset" } else { "" }
        )
    }

    /// A gap that was never filled: `lost`, or `resume_gap` at the seam.
    fn report_gap(&mut self, ci: u32, j: usize, g: &Gap) {
        let join = &self.conns[ci as usize].joins[j];
        let (r, e) = (join.room, join.epoch);
        let kind = if g.seam {
            AnomalyKind::ResumeGap
        } else {
            AnomalyKind::Lost
        };
        let sig = Signature {
            kind,
            room: r,
            epoch: e,
            seqs: (g.lo, g.hi),
            msg: NONE,
        };
        self.report(sig, |a| {
            let missing = if g.lo == g.hi {
                format!("seq {}", g.lo)
            } else {
                format!("seqs {}..={}", g.lo, g.hi)
            };
            let ex = if g.seam {
                format!(
                    "{} joined room {} with {}, so its stream had to start at seq {}, but its \
                     first delivery was seq {} (at {}) and {missing} never came: a join must \
                     deliver exactly from where its joined answer says",
                    a.who(ci),
                    a.room_name(r),
                    a.join_desc(ci, j),
                    g.lo,
                    g.hi + 1,
                    secs(g.t)
                )
            } else {
                format!(
                    "{} received seq {} and then seq {} of room {} (at {}), and {missing} never \
                     arrived on that join: a joined connection must receive every seq after \
                     its first",
                    a.who(ci),
                    g.lo - 1,
                    g.hi + 1,
                    a.room_name(r),
                    secs(g.t)
                )
            };
            a.conn_anomaly(
                kind,
                ci,
                r,
                e,
                vec![g.lo, g.hi],
                Vec::new(),
                Some(g.t),
                ex,
                &g.context,
            )
        });
    }

    /// Counts an anomaly; `build` runs only if it becomes a kept example.
    pub(crate) fn report(&mut self, sig: Signature, build: impl FnOnce(&Analysis) -> Anomaly) {
        self.report_n(sig, 1, build);
    }

    /// Counts `n` identical anomalies at once.
    pub(crate) fn report_n(
        &mut self,
        sig: Signature,
        n: u64,
        build: impl FnOnce(&Analysis) -> Anomaly,
    ) {
        let mut col = std::mem::take(&mut self.anomalies);
        col.add_n(sig, n, || build(self));
        self.anomalies = col;
    }

    /// A join ended (left, connection closed, re-joined, or the end): its open gaps are
    /// final.
    pub(crate) fn end_join(&mut self, ci: u32, j: usize) {
        let gaps = std::mem::take(&mut self.conns[ci as usize].joins[j].gaps);
        for g in &gaps {
            self.report_gap(ci, j, g);
        }
        self.conns[ci as usize].joins.remove(j);
    }
}

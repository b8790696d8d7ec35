//! The end of a check: what connections still joined at their client's end owe
//! (incomplete), the cross-client judgements (see `judge`), and the findings.

use super::{Analysis, FaultNote, JoinState, NONE, Recent};
use crate::analyze::deliver::secs;
use crate::anomaly::{AnomalyKind, Collector, Signature};
use crate::stats::Stats;

/// A connection still joined to a room when its client finished.
#[derive(Debug)]
pub(crate) struct Finished {
    ci: u32,
    room: u32,
    epoch: u32,
    /// The last seq it holds.
    cursor: u64,
    t: u64,
    /// Nothing was delivered on the join, though its `joined` promised a replay from here.
    replay_missing: Option<u64>,
    desc: String,
    context: Vec<Recent>,
}

/// What the analysis found, ready for the report.
pub(crate) struct Findings {
    pub anomalies: Collector,
    pub stats: Stats,
    pub events: u64,
    pub lost_events: u64,
    pub faults: Vec<FaultNote>,
    pub recovered: u64,
    pub unconfirmed: u64,
    pub acked_unverifiable: u64,
    pub variants_dropped: u64,
}

impl Analysis {
    pub(super) fn on_finished(&mut self, t: u64, client: u32) {
        let c = self.client(client);
        for ci in self.clients[c as usize].conns.clone() {
            if !self.conns[ci as usize].open {
                continue;
            }
            self.conns[ci as usize].ring.push(Recent::Finished { t });
            for j in 0..self.conns[ci as usize].joins.len() {
                let join = &self.conns[ci as usize].joins[j];
                if join.state != JoinState::Joined {
                    continue;
                }
                let (cursor, replay_missing) = if join.deliveries > 0 {
                    (join.last, None)
                } else {
                    let x = join.expected;
                    (
                        x.map_or(join.head, |x| x - 1),
                        x.filter(|&x| x <= join.head),
                    )
                };
                let f = Finished {
                    ci,
                    room: join.room,
                    epoch: join.epoch,
                    cursor,
                    t,
                    replay_missing,
                    desc: self.join_desc(ci, j),
                    context: self.conns[ci as usize].ring.snapshot(),
                };
                self.finished.push(f);
            }
        }
    }

    /// Incomplete: every connection still joined at its client's end against the room's
    /// head at that moment.
    fn judge_finished(&mut self) {
        let mut finished = std::mem::take(&mut self.finished);
        finished.sort_by_key(|f| (f.room, f.epoch));
        let mut i = 0;
        while i < finished.len() {
            let (r, e) = (finished[i].room, finished[i].epoch);
            // (earliest evidence, seq) of every delivered seq, and the running max seq.
            let ep = &self.rooms[r as usize].epochs[e as usize];
            let mut seen: Vec<(u64, u64)> = ep
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.msg != NONE)
                .map(|(q, s)| (s.seen_t, q as u64))
                .chain(
                    ep.far
                        .iter()
                        .filter(|(_, s)| s.msg != NONE)
                        .map(|(q, s)| (s.seen_t, *q)),
                )
                .collect();
            seen.sort_unstable();
            let mut top = 0;
            for s in &mut seen {
                top = top.max(s.1);
                s.1 = top;
            }
            while i < finished.len() && (finished[i].room, finished[i].epoch) == (r, e) {
                let f = &finished[i];
                let k = seen.partition_point(|&(t, _)| t < f.t);
                let required = if k == 0 { 0 } else { seen[k - 1].1 };
                if f.cursor < required {
                    self.report_incomplete(f, required);
                }
                i += 1;
            }
        }
    }

    fn report_incomplete(&mut self, f: &Finished, required: u64) {
        let (kind, lo) = match f.replay_missing {
            Some(x) => (AnomalyKind::ResumeGap, x),
            None => (AnomalyKind::Incomplete, f.cursor + 1),
        };
        let sig = Signature {
            kind,
            room: f.room,
            epoch: f.epoch,
            seqs: (lo, required),
            msg: NONE,
        };
        self.report(sig, |a| {
            let ex = if kind == AnomalyKind::ResumeGap {
                format!(
                    "{} joined room {} with {}, which promised a replay from seq {lo}, and was \
                     still joined when it finished at {} without having received anything: the \
                     replay never came",
                    a.who(f.ci),
                    a.room_name(f.room),
                    f.desc,
                    secs(f.t)
                )
            } else {
                format!(
                    "{} was still joined to room {} ({}) when it finished at {} and had received \
                     up to seq {}, but the room's head by then was seq {required}: seqs \
                     {lo}..={required} never arrived",
                    a.who(f.ci),
                    a.room_name(f.room),
                    f.desc,
                    secs(f.t),
                    f.cursor
                )
            };
            a.conn_anomaly(
                kind,
                f.ci,
                f.room,
                f.epoch,
                vec![lo, required],
                Vec::new(),
                Some(f.t),
                ex,
                &f.context,
            )
        });
    }

    /// Missing seqs were reported before the whole sequence was known; now that it is,
    /// name the messages that went missing (the first few of a range).
    fn name_missing_messages(&mut self) {
        const IDS_MAX: u64 = 8;
        let mut col = std::mem::take(&mut self.anomalies);
        for kind in [
            AnomalyKind::Lost,
            AnomalyKind::ResumeGap,
            AnomalyKind::Incomplete,
        ] {
            for (sig, a) in col.examples_mut(kind) {
                if !a.ids.is_empty() || sig.epoch == NONE {
                    continue;
                }
                let ep = &self.rooms[sig.room as usize].epochs[sig.epoch as usize];
                let (lo, hi) = (sig.seqs.0.min(sig.seqs.1), sig.seqs.0.max(sig.seqs.1));
                a.ids = (lo..=hi.min(lo + IDS_MAX - 1))
                    .filter_map(|q| ep.slot(q).filter(|s| s.msg != NONE))
                    .map(|s| self.msg_id(s.msg).to_owned())
                    .collect();
            }
        }
        self.anomalies = col;
    }

    pub(crate) fn finish(mut self) -> Findings {
        for ci in 0..self.conns.len() as u32 {
            while !self.conns[ci as usize].joins.is_empty() {
                self.end_join(ci, 0);
            }
        }
        for p in std::mem::take(&mut self.pending_latency) {
            let msg = &self.msgs[p.msg as usize];
            if msg.sender != NONE {
                let us = p.t.saturating_sub(msg.intended_us);
                self.stats.delivery_latency(p.t, us, p.group);
            }
        }
        // Seqs worth a closer look: other content seen, or not what was sent.
        let mut sequenced = 0u64;
        let mut suspects = Vec::new();
        for (r, room) in self.rooms.iter().enumerate() {
            for (e, ep) in room.epochs.iter().enumerate() {
                let far = ep.far.iter().map(|(q, s)| (*q, s));
                let dense = ep.slots.iter().enumerate().map(|(q, s)| (q as u64, s));
                for (q, s) in dense.chain(far) {
                    if s.msg == NONE {
                        continue;
                    }
                    sequenced += 1;
                    let key = (r as u32, e as u32, q);
                    let genuine = self.genuine(s.from, s.text_hash, s.msg, q, ep.baseline);
                    if !genuine || self.variants.contains_key(&key) {
                        suspects.push(key);
                    }
                }
            }
        }
        for (r, e, q) in suspects {
            self.judge_seq(r, e, q);
        }
        let (mut recovered, mut unconfirmed) = (0, 0);
        let mut fifo = Vec::new();
        for m in 0..self.msgs.len() as u32 {
            if let Some(k) = self.judge_msg(m, &mut recovered, &mut unconfirmed) {
                fifo.push(k);
            }
        }
        self.judge_fifo(fifo);
        self.judge_finished();
        self.name_missing_messages();
        self.stats.sends.recovered = recovered;
        self.stats.sends.unconfirmed = unconfirmed;
        let epochs = self.rooms.iter().map(|r| r.epochs.len() as u64).sum();
        Findings {
            stats: self
                .stats
                .finish(self.rooms.len() as u64, epochs, sequenced),
            anomalies: self.anomalies,
            events: self.events,
            lost_events: self.lost_events,
            faults: self.faults,
            recovered,
            unconfirmed,
            acked_unverifiable: self.acked_unverifiable,
            variants_dropped: self.variants_dropped,
        }
    }
}

//! The streaming analysis: one pass over the events, in file order, keeping
//!
//! - per (room, epoch) the canonical sequence: seq → (id, from, text hash, ts), from
//!   whichever client delivered it first, plus any different content other clients saw;
//! - per message id: what its sender sent, its acks, where it was delivered;
//! - per connection: its joins (the last seq delivered, open gaps) and a ring of its last
//!   few events for context — O(1) each.
//!
//! Judgements about one connection's stream (lost, duplicate, reordered, resume_gap) are
//! made as its events arrive: a client's own events are in the order it saw them.
//! Judgements that compare clients (divergent, phantom, acked_lost, double_sequenced, fifo,
//! causal, incomplete) wait for the end (`finish`, `judge`), because events of different
//! clients are interleaved only roughly in time order.
//!
//! Files: `observe` (each event), `deliver` (a `message`: canonical sequence and the
//! connection's stream), `judge` and `finish` (the end), `state` (what is kept),
//! `context` (the ring of recent events shown with an anomaly).

mod context;
mod deliver;
pub(crate) mod finish;
mod judge;
mod observe;
mod state;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use lockstep_protocol::record::Header;

use crate::anomaly::Collector;
use crate::stats::StatsAcc;

pub(crate) use context::{Recent, Ring};
pub(crate) use finish::Finished;
pub use state::FaultNote;
pub(crate) use state::{
    AckRec, Client, Conn, Gap, Join, JoinState, Msg, PendingLatency, Room, SeqAttempt, Slot,
    Variant,
};

/// "No such index" for the u32 indexes used throughout.
pub(crate) const NONE: u32 = u32::MAX;
/// Faults listed in the report (all are counted): every server fault up to this many...
pub(crate) const FAULT_NOTES_MAX: usize = 1000;
/// ...and at most this many client faults, one per kind and second.
pub(crate) const CLIENT_FAULT_NOTES_MAX: usize = 300;

/// A small, fast, non-cryptographic hasher (FxHash): keys are room names, message ids and
/// client numbers from a local file, so HashDoS is not a concern and speed is.
#[derive(Default, Clone, Copy)]
pub(crate) struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b) ^ (rest.len() as u64) << 59);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        // Fold the high bits down: plain FxHash leaves keys that differ only in their
        // high half (client << 32 | conn) in one bucket.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    }
}

impl Fx {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// The whole state of a check.
pub(crate) struct Analysis {
    pub(crate) rooms: Vec<Room>,
    room_ix: FxMap<Box<str>, u32>,
    pub(crate) users: Vec<Box<str>>,
    user_ix: FxMap<Box<str>, u32>,
    pub(crate) msgs: Vec<Msg>,
    pub(crate) clients: Vec<Client>,
    client_ix: FxMap<u32, u32>,
    pub(crate) conns: Vec<Conn>,
    conn_ix: FxMap<u64, u32>,
    pub(crate) codes: Vec<Box<str>>,
    pub(crate) anomalies: Collector,
    pub(crate) stats: StatsAcc,
    pending_latency: Vec<PendingLatency>,
    finished: Vec<Finished>,
    pub(crate) variants: FxMap<(u32, u32, u64), Vec<Variant>>,
    pub(crate) variants_kept: usize,
    pub(crate) variants_dropped: u64,
    pub(crate) events: u64,
    pub(crate) lost_events: u64,
    pub(crate) faults: Vec<FaultNote>,
    pub(crate) acked_unverifiable: u64,
}

/// Variants remembered in all (a server that corrupts everything would otherwise make
/// this grow with the deliveries); more are counted as divergent, without examples.
const VARIANTS_MAX: usize = 100_000;

impl Analysis {
    pub fn new(header: &Header) -> Self {
        Analysis {
            rooms: Vec::new(),
            room_ix: FxMap::default(),
            users: Vec::new(),
            user_ix: FxMap::default(),
            msgs: Vec::new(),
            clients: Vec::new(),
            client_ix: FxMap::default(),
            conns: Vec::new(),
            conn_ix: FxMap::default(),
            codes: Vec::new(),
            anomalies: Collector::default(),
            stats: StatsAcc::new(header),
            pending_latency: Vec::new(),
            finished: Vec::new(),
            variants: FxMap::default(),
            variants_kept: 0,
            variants_dropped: 0,
            events: 0,
            lost_events: 0,
            faults: Vec::new(),
            acked_unverifiable: 0,
        }
    }

    pub(crate) fn room(&mut self, name: &str) -> u32 {
        if let Some(&r) = self.room_ix.get(name) {
            return r;
        }
        let r = self.rooms.len() as u32;
        let group = self.stats.group_of(name);
        self.rooms.push(Room {
            name: name.into(),
            ids: FxMap::default(),
            epochs: Vec::new(),
            group,
        });
        self.room_ix.insert(name.into(), r);
        r
    }

    pub(crate) fn user(&mut self, name: &str) -> u32 {
        if let Some(&u) = self.user_ix.get(name) {
            return u;
        }
        let u = self.users.len() as u32;
        self.users.push(name.into());
        self.user_ix.insert(name.into(), u);
        u
    }

    pub(crate) fn msg(&mut self, room: u32, id: &str) -> u32 {
        let r = &mut self.rooms[room as usize];
        if let Some(&m) = r.ids.get(id) {
            return m;
        }
        let m = self.msgs.len() as u32;
        self.msgs.push(Msg::new(room, id));
        r.ids.insert(id.into(), m);
        m
    }

    fn code(&mut self, code: &str) -> u32 {
        match self.codes.iter().position(|c| &**c == code) {
            Some(i) => i as u32,
            None => {
                self.codes.push(code.into());
                (self.codes.len() - 1) as u32
            }
        }
    }

    pub(crate) fn client(&mut self, number: u32) -> u32 {
        if let Some(&c) = self.client_ix.get(&number) {
            return c;
        }
        let c = self.clients.len() as u32;
        self.clients.push(Client {
            number,
            user: NONE,
            seen: Vec::new(),
            conns: Vec::new(),
        });
        self.client_ix.insert(number, c);
        c
    }

    pub(crate) fn conn(&mut self, client: u32, number: u32) -> u32 {
        let key = (u64::from(client) << 32) | u64::from(number);
        if let Some(&ci) = self.conn_ix.get(&key) {
            return ci;
        }
        let c = self.client(client);
        let ci = self.conns.len() as u32;
        self.conns.push(Conn {
            client: c,
            number,
            open: true,
            joins: Vec::new(),
            ring: Ring::default(),
            sends: 0,
            inflight: Vec::new(),
        });
        self.clients[c as usize].conns.push(ci);
        self.conn_ix.insert(key, ci);
        ci
    }

    fn join_ix(&self, ci: u32, room: u32) -> Option<usize> {
        self.conns[ci as usize]
            .joins
            .iter()
            .position(|j| j.room == room)
    }

    /// The connection's join of `room` whose state satisfies `pred`.
    fn join_ix_where(&self, ci: u32, room: u32, pred: impl Fn(JoinState) -> bool) -> Option<usize> {
        self.conns[ci as usize]
            .joins
            .iter()
            .position(|j| j.room == room && pred(j.state))
    }

    /// The epoch a connection is in for a room: its join's; else (an ack after `left`) the
    /// epoch its client last joined the room in; else the room's latest so far. The first
    /// two depend only on the client's own events, so on nothing of the interleaving.
    fn epoch_for(&self, ci: u32, room: u32) -> u32 {
        let c = &self.conns[ci as usize];
        if let Some(j) = self.join_ix(ci, room)
            && c.joins[j].epoch != NONE
        {
            return c.joins[j].epoch;
        }
        let seen = &self.clients[c.client as usize].seen;
        match seen.iter().find(|(r, _, _)| *r == room) {
            Some(&(_, e, _)) => e,
            None => self.rooms[room as usize].latest_epoch(),
        }
    }
}

/// Where the stream of a join must start, from its request and the `joined` answer.
/// `None` when the answer is outside the contract in a way that leaves it open (a resume
/// from beyond the head without a reset).
pub(crate) fn expected_first(
    since: Option<u64>,
    history: Option<u32>,
    head: u64,
    first: u64,
    reset: bool,
) -> Option<u64> {
    let first = first.max(1);
    if reset {
        return Some(first.min(head + 1));
    }
    match (since, history) {
        (Some(s), _) if s <= head => Some(s + 1),
        (Some(_), _) => None,
        (None, Some(n)) if n > 0 => Some(first.max((head + 1).saturating_sub(u64::from(n)))),
        _ => Some(head + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_first_follows_the_contract() {
        // Goal: each kind of join promises the start PROTOCOL.md gives it.
        assert_eq!(expected_first(Some(4), None, 9, 1, false), Some(5));
        assert_eq!(expected_first(Some(9), None, 9, 1, false), Some(10));
        assert_eq!(expected_first(Some(12), None, 9, 1, false), None);
        assert_eq!(expected_first(None, None, 9, 1, false), Some(10));
        assert_eq!(expected_first(None, Some(3), 9, 1, false), Some(7));
        assert_eq!(expected_first(None, Some(30), 9, 4, false), Some(4));
        assert_eq!(expected_first(None, Some(0), 9, 1, false), Some(10));
        assert_eq!(expected_first(Some(1), None, 9, 5, true), Some(5));
        assert_eq!(expected_first(Some(1), None, 0, 1, true), Some(1));
        assert_eq!(expected_first(None, None, 0, 1, false), Some(1));
    }
}

//! The state the analysis keeps: the canonical sequences, what is known of each message,
//! and each connection's joins.

use super::context::{Recent, Ring};
use super::{FxMap, NONE};

/// Seqs are stored densely up to this far above the highest seen so far; a seq further
/// out (corrupt, or a server jumping ahead) goes to a sparse map instead of growing a
/// vector to its size.
const DENSE_SEQ_JUMP_MAX: u64 = 1 << 20;

/// One slot of a canonical sequence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    /// The message first delivered at this seq (NONE: nobody delivered it yet).
    pub msg: u32,
    pub from: u32,
    pub text_hash: u64,
    pub ts: u64,
    /// Earliest `t_us` at which anything showed this seq existed (a delivery, an ack, or
    /// a `joined` head).
    pub seen_t: u64,
    /// The connection that first delivered it, and when.
    pub witness: u32,
    pub witness_t: u64,
    pub deliveries: u64,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            msg: NONE,
            from: NONE,
            text_hash: 0,
            ts: 0,
            seen_t: u64::MAX,
            witness: NONE,
            witness_t: 0,
            deliveries: 0,
        }
    }
}

/// Content some receiver saw for a seq that differs from the slot's.
#[derive(Debug, Clone)]
pub(crate) struct Variant {
    pub msg: u32,
    pub from: u32,
    pub text_hash: u64,
    pub ts: u64,
    pub witness: u32,
    pub witness_t: u64,
    pub deliveries: u64,
    pub context: Vec<Recent>,
}

/// One incarnation of a room's history.
#[derive(Debug)]
pub(crate) struct EpochSt {
    pub name: Box<str>,
    /// Indexed by seq (slot 0 unused).
    pub slots: Vec<Slot>,
    pub far: FxMap<u64, Slot>,
    /// The lowest `head` any `joined` announced: seqs up to it existed before any client
    /// of this run joined, so nobody here sent them.
    pub baseline: u64,
    /// The highest `first` any `joined` announced: seqs below it may be gone.
    pub retained_first: u64,
    pub last_joined_t: u64,
}

impl EpochSt {
    pub fn new(name: &str) -> Self {
        EpochSt {
            name: name.into(),
            slots: Vec::new(),
            far: FxMap::default(),
            baseline: u64::MAX,
            retained_first: 1,
            last_joined_t: 0,
        }
    }

    pub fn slot_mut(&mut self, seq: u64) -> &mut Slot {
        let len = self.slots.len() as u64;
        if seq < len {
            &mut self.slots[seq as usize]
        } else if seq < len + DENSE_SEQ_JUMP_MAX {
            self.slots.resize(seq as usize + 1, Slot::default());
            &mut self.slots[seq as usize]
        } else {
            self.far.entry(seq).or_default()
        }
    }

    pub fn slot(&self, seq: u64) -> Option<&Slot> {
        match self.slots.get(seq as usize) {
            Some(s) => Some(s),
            None => self.far.get(&seq),
        }
    }

    /// Records that `seq` existed at `t`.
    pub fn evidence(&mut self, seq: u64, t: u64) {
        if seq > 0 {
            let s = self.slot_mut(seq);
            s.seen_t = s.seen_t.min(t);
        }
    }
}

#[derive(Debug)]
pub(crate) struct Room {
    pub name: Box<str>,
    pub ids: FxMap<Box<str>, u32>,
    pub epochs: Vec<EpochSt>,
    pub group: Option<u16>,
}

impl Room {
    pub fn epoch_ix(&mut self, name: &str) -> u32 {
        match self.epochs.iter().position(|e| &*e.name == name) {
            Some(i) => i as u32,
            None => {
                self.epochs.push(EpochSt::new(name));
                (self.epochs.len() - 1) as u32
            }
        }
    }

    /// The epoch the room was last joined in: its final incarnation.
    pub fn latest_epoch(&self) -> u32 {
        self.epochs
            .iter()
            .enumerate()
            .max_by_key(|(_, e)| e.last_joined_t)
            .map_or(NONE, |(i, _)| i as u32)
    }
}

/// An ack, as remembered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AckRec {
    pub epoch: u32,
    pub seq: u64,
    pub t: u64,
    pub conn: u32,
    pub dup: bool,
}

/// The attempt that got a non-dup ack: the one that sequenced the message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeqAttempt {
    pub conn: u32,
    pub order: u32,
    pub epoch: u32,
    pub seq: u64,
    pub t: u64,
}

/// Everything known about one (room, id).
#[derive(Debug)]
pub(crate) struct Msg {
    pub room: u32,
    pub id: Box<str>,
    /// The client that sent it (NONE: nobody sent it).
    pub sender: u32,
    pub sent_hash: u64,
    pub intended_us: u64,
    pub first_send_t: u64,
    pub first_conn: u32,
    pub attempts: u32,
    pub errors: u32,
    /// The sender's highest seq of the room, and its epoch, before the first attempt.
    pub seen_epoch: u32,
    pub seen_high: u64,
    pub seq_attempt: Option<SeqAttempt>,
    pub ack: Option<AckRec>,
    /// A later ack (same epoch) with a different seq.
    pub ack_conflict: Option<AckRec>,
    /// Where it was delivered: (epoch, seq), first, then any others.
    pub pos: (u32, u64),
    pub more_pos: Vec<(u32, u64)>,
}

impl Msg {
    pub fn new(room: u32, id: &str) -> Self {
        Msg {
            room,
            id: id.into(),
            sender: NONE,
            sent_hash: 0,
            intended_us: 0,
            first_send_t: 0,
            first_conn: NONE,
            attempts: 0,
            errors: 0,
            seen_epoch: NONE,
            seen_high: 0,
            seq_attempt: None,
            ack: None,
            ack_conflict: None,
            pos: (NONE, 0),
            more_pos: Vec::new(),
        }
    }

    pub fn add_pos(&mut self, epoch: u32, seq: u64) {
        if self.pos.0 == NONE {
            self.pos = (epoch, seq);
        } else if self.pos != (epoch, seq) && !self.more_pos.contains(&(epoch, seq)) {
            self.more_pos.push((epoch, seq));
        }
    }

    /// Where it was delivered in `epoch` (the first such place).
    pub fn pos_in(&self, epoch: u32) -> Option<u64> {
        std::iter::once(&self.pos)
            .chain(&self.more_pos)
            .find(|(e, _)| *e == epoch && epoch != NONE)
            .map(|(_, s)| *s)
    }

    pub fn delivered(&self) -> bool {
        self.pos.0 != NONE
    }
}

#[derive(Debug)]
pub(crate) struct Client {
    pub number: u32,
    pub user: u32,
    /// Per room: the epoch and highest seq received on any connection.
    pub seen: Vec<(u32, u32, u64)>,
    pub conns: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinState {
    Pending,
    Joined,
    Leaving,
}

/// A run of seqs a join skipped, waiting to see whether they arrive late.
#[derive(Debug, Clone)]
pub(crate) struct Gap {
    pub lo: u64,
    pub hi: u64,
    /// Between where the stream should have started and its first delivery.
    pub seam: bool,
    pub t: u64,
    pub context: Vec<Recent>,
}

/// One `join` of a room on a connection, until `left`, close, or the end.
#[derive(Debug)]
pub(crate) struct Join {
    pub room: u32,
    pub state: JoinState,
    pub since: Option<u64>,
    pub history: Option<u32>,
    pub epoch: u32,
    pub head: u64,
    pub first: u64,
    pub reset: bool,
    pub joined_t: u64,
    /// The first seq the `joined` answer promises (None: cannot be judged).
    pub expected: Option<u64>,
    pub first_seen: u64,
    pub last: u64,
    pub deliveries: u64,
    pub gaps: Vec<Gap>,
    pub catchup: bool,
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub client: u32,
    pub number: u32,
    pub open: bool,
    pub joins: Vec<Join>,
    pub ring: Ring,
    pub sends: u32,
    pub inflight: Vec<(u32, u32)>,
}

/// A fault the load generator reported.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FaultNote {
    pub t_us: u64,
    /// The client it was injected into; none for a server fault.
    pub client: Option<u32>,
    pub kind: String,
    pub detail: String,
}

/// A live delivery whose send was not seen yet (another client's events may come later).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingLatency {
    pub msg: u32,
    pub t: u64,
    pub group: Option<u16>,
}

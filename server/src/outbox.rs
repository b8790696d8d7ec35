//! What other parts of the server hand to one connection, and how they wake it.
//!
//! A connection's task owns its socket; nobody else writes to it. Room messages are not
//! pushed here at all: the task pulls them from the room's ring by cursor (see
//! `room.rs`). The outbox carries the rest: acks and errors from the sequencer, and
//! typing / presence / read notifications from other members. It also carries the one
//! wake-up signal for both, coalesced by the `pending` flag so that a burst of N
//! broadcasts costs the connection one wake, not N.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use bytes::Bytes;
use lockstep_protocol::UserName;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Whether a frame may be dropped when the connection cannot keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Acks and errors. Never dropped; their number is bounded by the connection's
    /// in-flight send limit, so the queue cannot grow without bound.
    Essential,
    /// Typing, presence and read notifications: dropped (and counted) once the queue
    /// holds `outbox_frames_max` frames.
    Ephemeral,
}

pub struct Outbox {
    pub user: UserName,
    pub conn: u64,
    queue: Mutex<VecDeque<Bytes>>,
    queued: AtomicUsize,
    pending: AtomicBool,
    notify: Notify,
    inflight: AtomicU32,
    closed: AtomicBool,
    frames_max: usize,
}

impl Outbox {
    pub fn new(user: UserName, conn: u64, frames_max: usize) -> Self {
        Self {
            user,
            conn,
            queue: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
            pending: AtomicBool::new(false),
            notify: Notify::new(),
            inflight: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            frames_max,
        }
    }

    /// Asks the connection task to look at its sources again. Cheap when it already has a
    /// wake pending: one atomic swap.
    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    /// Called by the connection before it looks at its sources: a wake arriving after
    /// this point is not lost (`Notify` keeps a permit).
    pub fn arm(&self) {
        self.pending.store(false, Ordering::Release);
    }

    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Queues a frame and wakes the connection. Returns false if it was dropped.
    pub fn push(&self, frame: Bytes, class: Class) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        {
            let mut q = self.queue.lock();
            if class == Class::Ephemeral && q.len() >= self.frames_max {
                return false;
            }
            q.push_back(frame);
            self.queued.store(q.len(), Ordering::Release);
        }
        self.wake();
        true
    }

    /// Moves every queued frame into `out`; returns how many.
    pub fn drain_into(&self, out: &mut Vec<u8>) -> usize {
        if self.queued.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let mut q = self.queue.lock();
        let n = q.len();
        for f in q.drain(..) {
            out.extend_from_slice(&f);
        }
        self.queued.store(0, Ordering::Release);
        if q.capacity() > 64 {
            q.shrink_to(16);
        }
        n
    }

    pub fn is_empty(&self) -> bool {
        self.queued.load(Ordering::Acquire) == 0
    }

    /// Sends accepted from this connection and not yet acked.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Acquire)
    }

    pub fn inflight_add(&self) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
    }

    pub fn inflight_done(&self) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
    }

    /// The connection is gone; later pushes are discarded.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.queue.lock().clear();
        self.queued.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_frames_drop_at_the_limit_essential_do_not() {
        let o = Outbox::new(UserName::new("u").unwrap(), 1, 2);
        assert!(o.push(Bytes::from_static(b"a"), Class::Ephemeral));
        assert!(o.push(Bytes::from_static(b"b"), Class::Ephemeral));
        assert!(!o.push(Bytes::from_static(b"c"), Class::Ephemeral));
        assert!(o.push(Bytes::from_static(b"d"), Class::Essential));
        let mut out = Vec::new();
        assert_eq!(o.drain_into(&mut out), 3);
        assert_eq!(out, b"abd");
        o.close();
        assert!(!o.push(Bytes::from_static(b"e"), Class::Essential));
    }

    #[tokio::test]
    async fn wakes_coalesce_and_are_never_lost() {
        let o = Outbox::new(UserName::new("u").unwrap(), 1, 8);
        o.arm();
        o.wake();
        o.wake();
        // One permit is stored; the first wait returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), o.notified())
            .await
            .unwrap();
        o.arm();
        o.wake();
        tokio::time::timeout(std::time::Duration::from_secs(1), o.notified())
            .await
            .unwrap();
    }
}

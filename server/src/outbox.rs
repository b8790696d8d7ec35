//! What other parts of the server hand to one connection, and how they wake it.
//!
//! A connection's task owns its socket; nobody else writes to it. Room messages are not
//! pushed here at all: the task pulls them from the room's ring by cursor (see
//! `room.rs`). The outbox carries the rest: acks and errors from the sequencer, typing /
//! presence / read notifications from other members, and read-mark fan-outs for the
//! connection to perform. It also carries the one wake-up signal for all of these,
//! coalesced by the `pending` flag so that a burst of N broadcasts costs the connection
//! one wake, not N.
//!
//! Bounds: acks and errors are bounded by the connection's in-flight send limit; typing
//! and presence frames are dropped (and counted) beyond `frames_max`; a read
//! notification replaces a pending one of the same user and room, so there is at most
//! one per (room, user) — bounded by the room's members, and never dropped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use bytes::Bytes;
use lockstep_protocol::UserName;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::room::Room;

/// How a queued frame may be treated when the connection cannot keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Acks and errors: never dropped.
    Essential,
    /// Typing and presence: dropped (and counted) once `frames_max` of them wait.
    Ephemeral,
    /// Read notifications: never dropped; a newer one for the same (room, user)
    /// replaces the waiting one.
    Read,
}

/// The key of a room in queued items (its address; rooms are `Arc`s).
pub fn room_key(room: &Arc<Room>) -> usize {
    Arc::as_ptr(room) as usize
}

enum Item {
    Frame {
        frame: Bytes,
        class: Class,
        /// The room the frame is about (0: none); notifications of a room the
        /// connection has left are discarded instead of sent.
        room: usize,
        /// For reads: which user's mark.
        user: u64,
    },
    /// A stored read mark to broadcast to the room (done by the connection that sent
    /// it, so the sequencer thread never iterates members).
    FanOut {
        room: Arc<Room>,
        frame: Bytes,
        user: u64,
    },
}

/// A read mark the connection must broadcast: (room, frame, user key).
pub type FanOut = (Arc<Room>, Bytes, u64);

struct Queue {
    items: VecDeque<Item>,
    ephemeral: usize,
}

pub struct Outbox {
    pub user: UserName,
    /// Hash of `user`, the key of its read notifications.
    pub user_key: u64,
    pub conn: u64,
    queue: Mutex<Queue>,
    queued: AtomicUsize,
    pending: AtomicBool,
    notify: Notify,
    inflight: AtomicU32,
    closed: AtomicBool,
    frames_max: usize,
}

fn user_key(u: &UserName) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    u.hash(&mut h);
    h.finish()
}

impl Outbox {
    pub fn new(user: UserName, conn: u64, frames_max: usize) -> Self {
        Self {
            user_key: user_key(&user),
            user,
            conn,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                ephemeral: 0,
            }),
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

    fn enqueue(&self, item: impl FnOnce(&mut Queue) -> bool) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        {
            let mut q = self.queue.lock();
            if !item(&mut q) {
                return false;
            }
            self.queued.store(q.items.len(), Ordering::Release);
        }
        self.wake();
        true
    }

    /// Queues a frame about `room` (0: none) and wakes the connection. Returns false if
    /// it was dropped.
    pub fn push(&self, frame: Bytes, class: Class, room: usize) -> bool {
        self.enqueue(|q| {
            if class == Class::Ephemeral {
                if q.ephemeral >= self.frames_max {
                    return false;
                }
                q.ephemeral += 1;
            }
            q.items.push_back(Item::Frame {
                frame,
                class,
                room,
                user: 0,
            });
            true
        })
    }

    /// Queues a read notification of `user` in `room`, replacing one still waiting.
    pub fn push_read(&self, frame: Bytes, room: usize, user: u64) {
        self.enqueue(|q| {
            for it in q.items.iter_mut() {
                if let Item::Frame {
                    frame: f,
                    class: Class::Read,
                    room: r,
                    user: u,
                } = it
                    && *r == room
                    && *u == user
                {
                    *f = frame;
                    return true;
                }
            }
            q.items.push_back(Item::Frame {
                frame,
                class: Class::Read,
                room,
                user,
            });
            true
        });
    }

    /// Asks this connection to broadcast a stored read mark.
    pub fn push_fanout(&self, room: Arc<Room>, frame: Bytes, user: u64) {
        self.enqueue(|q| {
            q.items.push_back(Item::FanOut { room, frame, user });
            true
        });
    }

    /// Moves queued frames into `out` until it holds `budget` bytes; fan-out requests go
    /// to `fanouts`. Notifications about rooms `joined` says no to are discarded.
    /// Returns how many frames were moved.
    pub fn drain_into(
        &self,
        out: &mut Vec<u8>,
        budget: usize,
        fanouts: &mut Vec<FanOut>,
        joined: impl Fn(usize) -> bool,
    ) -> usize {
        if self.queued.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let mut q = self.queue.lock();
        let mut n = 0;
        while out.len() < budget {
            let Some(item) = q.items.pop_front() else {
                break;
            };
            match item {
                Item::Frame {
                    frame, class, room, ..
                } => {
                    if class == Class::Ephemeral {
                        q.ephemeral -= 1;
                    }
                    if class != Class::Essential && room != 0 && !joined(room) {
                        continue;
                    }
                    out.extend_from_slice(&frame);
                    n += 1;
                }
                Item::FanOut { room, frame, user } => fanouts.push((room, frame, user)),
            }
        }
        self.queued.store(q.items.len(), Ordering::Release);
        if q.items.is_empty() && q.items.capacity() > 64 {
            q.items.shrink_to(16);
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
        let mut q = self.queue.lock();
        q.items.clear();
        q.ephemeral = 0;
        self.queued.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(o: &Outbox, budget: usize, joined: impl Fn(usize) -> bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut f = Vec::new();
        o.drain_into(&mut out, budget, &mut f, joined);
        out
    }

    #[test]
    fn ephemeral_frames_drop_at_the_limit_essential_do_not() {
        let o = Outbox::new(UserName::new("u").unwrap(), 1, 2);
        assert!(o.push(Bytes::from_static(b"a"), Class::Ephemeral, 0));
        assert!(o.push(Bytes::from_static(b"b"), Class::Ephemeral, 0));
        assert!(!o.push(Bytes::from_static(b"c"), Class::Ephemeral, 0));
        assert!(o.push(Bytes::from_static(b"d"), Class::Essential, 0));
        assert_eq!(drain(&o, 1000, |_| true), b"abd");
        o.close();
        assert!(!o.push(Bytes::from_static(b"e"), Class::Essential, 0));
    }

    #[test]
    fn reads_coalesce_per_room_and_user_and_are_never_dropped() {
        let o = Outbox::new(UserName::new("u").unwrap(), 1, 1);
        o.push_read(Bytes::from_static(b"r1"), 7, 1);
        o.push_read(Bytes::from_static(b"s1"), 7, 2);
        o.push_read(Bytes::from_static(b"r2"), 7, 1);
        o.push_read(Bytes::from_static(b"x1"), 8, 1);
        assert_eq!(drain(&o, 1000, |_| true), b"r2s1x1");
    }

    #[test]
    fn drain_stops_at_the_budget_and_skips_left_rooms() {
        let o = Outbox::new(UserName::new("u").unwrap(), 1, 8);
        o.push(Bytes::from_static(b"aa"), Class::Ephemeral, 5);
        o.push(Bytes::from_static(b"bb"), Class::Essential, 5);
        o.push(Bytes::from_static(b"cc"), Class::Ephemeral, 6);
        o.push(Bytes::from_static(b"dd"), Class::Ephemeral, 6);
        // Room 5 was left: its ephemeral frame goes, its ack stays.
        assert_eq!(drain(&o, 4, |r| r == 6), b"bbcc");
        assert_eq!(drain(&o, 4, |r| r == 6), b"dd");
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

//! A room in memory: its committed head, a ring of recent frames, and its members.
//!
//! The ring holds the last `ring_messages_max` messages (bounded in bytes too), each
//! already encoded as a complete WebSocket frame. The sequencer appends to it after the
//! commit holding those messages returned, so everything in the ring is durable.
//! Connections copy frames out of it by cursor. A connection that falls behind the ring
//! (slow reader) does not hold anything here: it reads the missing range from storage
//! and comes back to the ring, so a slow reader never slows the room and costs the server
//! a cursor, not a queue (guarantee 9).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use lockstep_protocol::{Epoch, RoomName, Seq, UserName};
use parking_lot::{Mutex, RwLock};
use slab::Slab;

use crate::outbox::{Class, Outbox};
use crate::store::RoomId;

/// The recent frames of a room, by seq.
struct Ring {
    frames: VecDeque<Bytes>,
    /// Seq of `frames[0]`; when empty, `head + 1`.
    first_seq: Seq,
    bytes: usize,
}

impl Ring {
    fn head(&self) -> Seq {
        self.first_seq + self.frames.len() as Seq - 1
    }
}

/// What [`Room::copy_after`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// Nothing after the cursor.
    UpToDate,
    /// Frames appended; the cursor is now `cursor`.
    Frames { cursor: Seq, count: usize },
    /// The next seq is older than the ring: read `cursor + 1 ..= upto` from storage.
    NeedStorage { upto: Seq },
}

struct Members {
    conns: Slab<Arc<Outbox>>,
    /// Distinct online users and how many of this room's connections each has.
    users: HashMap<UserName, u32>,
}

/// Ring size limits, from the config.
#[derive(Debug, Clone)]
pub struct RingLimits {
    pub messages_max: usize,
    pub bytes_max: usize,
    /// Shared by every room: when all rings together hold more than its maximum, rings
    /// shrink to a sixteenth of `bytes_max` as they are next written (readers further
    /// behind read from storage, as always).
    pub budget: Arc<RingBudget>,
}

/// Bytes held by all rooms' rings.
#[derive(Debug)]
pub struct RingBudget {
    pub used: AtomicUsize,
    pub max: usize,
}

pub struct Room {
    pub name: RoomName,
    pub epoch: Epoch,
    rid: AtomicI64,
    head: AtomicU64,
    first: AtomicU64,
    ring: RwLock<Ring>,
    members: Mutex<Members>,
    limits: RingLimits,
    last_active_ms: AtomicU64,
}

impl Room {
    /// A room whose stored history is `first ..= head` (`rid` None: nothing stored yet).
    pub fn new(
        name: RoomName,
        epoch: Epoch,
        rid: Option<RoomId>,
        first: Seq,
        head: Seq,
        limits: RingLimits,
    ) -> Self {
        Self {
            name,
            epoch,
            rid: AtomicI64::new(rid.unwrap_or(0)),
            head: AtomicU64::new(head),
            first: AtomicU64::new(first),
            ring: RwLock::new(Ring {
                frames: VecDeque::new(),
                first_seq: head + 1,
                bytes: 0,
            }),
            members: Mutex::new(Members {
                conns: Slab::new(),
                users: HashMap::new(),
            }),
            limits,
            last_active_ms: AtomicU64::new(crate::clock::now_ms()),
        }
    }

    /// Highest committed seq.
    pub fn head(&self) -> Seq {
        self.head.load(Ordering::Acquire)
    }

    /// Lowest retained seq (1 when empty).
    pub fn first(&self) -> Seq {
        self.first.load(Ordering::Acquire)
    }

    /// Storage id, once the room has a stored record.
    pub fn rid(&self) -> Option<RoomId> {
        match self.rid.load(Ordering::Acquire) {
            0 => None,
            r => Some(r),
        }
    }

    pub(crate) fn set_rid(&self, rid: RoomId) {
        self.rid.store(rid, Ordering::Release);
    }

    /// Appends committed frames (consecutive seqs from `head + 1`) and wakes every member.
    /// Only the sequencer calls this.
    pub(crate) fn publish(&self, frames: Vec<(Seq, Bytes)>) {
        let Some(&(last, _)) = frames.last() else {
            return;
        };
        {
            let budget = &self.limits.budget;
            let mut ring = self.ring.write();
            let mut added = 0;
            for (seq, f) in frames {
                debug_assert_eq!(seq, ring.first_seq + ring.frames.len() as Seq);
                added += f.len();
                ring.frames.push_back(f);
            }
            ring.bytes += added;
            let used = budget.used.fetch_add(added, Ordering::Relaxed) + added;
            let cap = if used > budget.max {
                self.limits.bytes_max / 16
            } else {
                self.limits.bytes_max
            };
            let mut removed = 0;
            while ring.frames.len() > self.limits.messages_max
                || (ring.bytes > cap && ring.frames.len() > 1)
            {
                let f = ring.frames.pop_front().expect("non-empty");
                ring.bytes -= f.len();
                removed += f.len();
                ring.first_seq += 1;
            }
            budget.used.fetch_sub(removed, Ordering::Relaxed);
            // Under the ring lock: no reader can take seq N from the ring while
            // `head()` still says N-1 (a join or read mark would then see a head behind
            // what some connection already delivered).
            self.head.store(last, Ordering::Release);
        }
        self.touch();
        self.wake_all();
    }

    /// Copies frames after `cursor` into `out` until `out` holds `budget` bytes (at least
    /// one frame is copied when there is one).
    pub fn copy_after(&self, cursor: Seq, out: &mut Vec<u8>, budget: usize) -> Copied {
        let ring = self.ring.read();
        if ring.frames.is_empty() || cursor >= ring.head() {
            // Anything committed but not in the ring is at or below `first_seq - 1`.
            return if cursor < ring.first_seq.saturating_sub(1) {
                Copied::NeedStorage {
                    upto: ring.first_seq - 1,
                }
            } else {
                Copied::UpToDate
            };
        }
        if cursor + 1 < ring.first_seq {
            return Copied::NeedStorage {
                upto: ring.first_seq - 1,
            };
        }
        let mut idx = (cursor + 1 - ring.first_seq) as usize;
        let mut count = 0;
        while idx < ring.frames.len() && (count == 0 || out.len() < budget) {
            out.extend_from_slice(&ring.frames[idx]);
            idx += 1;
            count += 1;
        }
        Copied::Frames {
            cursor: ring.first_seq + idx as Seq - 1,
            count,
        }
    }

    /// Adds a connection. Returns its member key and whether its user just came online.
    pub fn add_member(&self, outbox: &Arc<Outbox>) -> (usize, bool) {
        let mut m = self.members.lock();
        let key = m.conns.insert(outbox.clone());
        let n = m.users.entry(outbox.user.clone()).or_insert(0);
        *n += 1;
        (key, *n == 1)
    }

    /// Removes a connection. Returns whether its user went offline.
    pub fn remove_member(&self, key: usize) -> bool {
        let mut m = self.members.lock();
        let Some(outbox) = m.conns.try_remove(key) else {
            return false;
        };
        let gone = match m.users.get_mut(&outbox.user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                m.users.remove(&outbox.user);
                true
            }
            None => false,
        };
        if m.conns.is_empty() {
            drop(m);
            self.touch();
        }
        gone
    }

    fn wake_all(&self) {
        let m = self.members.lock();
        for (_, o) in m.conns.iter() {
            o.wake();
        }
    }

    /// This room's key in outbox items.
    fn key(&self) -> usize {
        self as *const Room as usize
    }

    /// Queues a notification frame about this room to every member connection for which
    /// `to` says yes. Returns how many were dropped for full outboxes.
    pub fn broadcast(&self, frame: &Bytes, class: Class, to: impl Fn(&Outbox) -> bool) -> u64 {
        let key = self.key();
        let m = self.members.lock();
        let mut dropped = 0;
        for (_, o) in m.conns.iter() {
            if to(o) && !o.push(frame.clone(), class, key) {
                dropped += 1;
            }
        }
        dropped
    }

    /// Queues `user`'s read notification to every member (replacing a waiting one).
    pub fn broadcast_read(&self, frame: &Bytes, user: u64) {
        let key = self.key();
        let m = self.members.lock();
        for (_, o) in m.conns.iter() {
            o.push_read(frame.clone(), key, user);
        }
    }

    /// Up to `max` distinct online users, `me` first, and how many there are in all.
    pub fn members_listed(&self, me: &UserName, max: usize) -> (Vec<UserName>, u64) {
        let m = self.members.lock();
        let mut names = Vec::with_capacity(m.users.len().min(max));
        if m.users.contains_key(me) {
            names.push(me.clone());
        }
        for u in m.users.keys() {
            if names.len() >= max {
                break;
            }
            if u != me {
                names.push(u.clone());
            }
        }
        (names, m.users.len() as u64)
    }

    /// Every distinct online user, sorted.
    pub fn users(&self) -> Vec<UserName> {
        let mut v: Vec<_> = self.members.lock().users.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn user_count(&self) -> usize {
        self.members.lock().users.len()
    }

    pub fn member_conns(&self) -> usize {
        self.members.lock().conns.len()
    }

    fn touch(&self) {
        self.last_active_ms
            .store(crate::clock::now_ms(), Ordering::Relaxed);
    }

    pub fn last_active_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        let bytes = self.ring.get_mut().bytes;
        self.limits.budget.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(messages_max: usize, head: Seq) -> Room {
        Room::new(
            RoomName::new("r").unwrap(),
            Epoch::new("e-1").unwrap(),
            Some(1),
            1,
            head,
            RingLimits {
                messages_max,
                bytes_max: 1 << 20,
                budget: Arc::new(RingBudget {
                    used: AtomicUsize::new(0),
                    max: 1 << 30,
                }),
            },
        )
    }

    fn frames(range: std::ops::RangeInclusive<Seq>) -> Vec<(Seq, Bytes)> {
        range.map(|s| (s, Bytes::from(format!("[{s}]")))).collect()
    }

    #[test]
    fn cursor_reads_are_exact_and_fall_back_to_storage() {
        let r = room(3, 0);
        assert_eq!(r.copy_after(0, &mut Vec::new(), 100), Copied::UpToDate);
        r.publish(frames(1..=5));
        assert_eq!(r.head(), 5);
        // Ring holds 3..=5.
        let mut out = Vec::new();
        assert_eq!(
            r.copy_after(0, &mut out, 100),
            Copied::NeedStorage { upto: 2 }
        );
        assert_eq!(
            r.copy_after(1, &mut out, 100),
            Copied::NeedStorage { upto: 2 }
        );
        assert_eq!(
            r.copy_after(2, &mut out, 100),
            Copied::Frames {
                cursor: 5,
                count: 3
            }
        );
        assert_eq!(out, b"[3][4][5]");
        out.clear();
        assert_eq!(
            r.copy_after(3, &mut out, 0),
            Copied::Frames {
                cursor: 4,
                count: 1
            }
        );
        assert_eq!(out, b"[4]");
        assert_eq!(r.copy_after(5, &mut out, 100), Copied::UpToDate);
    }

    #[test]
    fn a_room_loaded_from_storage_sends_old_seqs_to_storage() {
        let r = room(10, 7);
        assert_eq!(r.copy_after(7, &mut Vec::new(), 100), Copied::UpToDate);
        assert_eq!(
            r.copy_after(2, &mut Vec::new(), 100),
            Copied::NeedStorage { upto: 7 }
        );
        r.publish(frames(8..=8));
        assert_eq!(
            r.copy_after(2, &mut Vec::new(), 100),
            Copied::NeedStorage { upto: 7 }
        );
        let mut out = Vec::new();
        assert_eq!(
            r.copy_after(7, &mut out, 100),
            Copied::Frames {
                cursor: 8,
                count: 1
            }
        );
    }

    #[test]
    fn rings_shrink_when_all_rings_exceed_their_budget() {
        let budget = Arc::new(RingBudget {
            used: AtomicUsize::new(0),
            max: 100,
        });
        let limits = RingLimits {
            messages_max: 1000,
            bytes_max: 16 * 10,
            budget: budget.clone(),
        };
        let a = Room::new(
            RoomName::new("a").unwrap(),
            Epoch::new("e").unwrap(),
            Some(1),
            1,
            0,
            limits.clone(),
        );
        let b = Room::new(
            RoomName::new("b").unwrap(),
            Epoch::new("e").unwrap(),
            Some(2),
            1,
            0,
            limits,
        );
        let f = |range: std::ops::RangeInclusive<Seq>| {
            range
                .map(|s| (s, Bytes::from(vec![b'x'; 10])))
                .collect::<Vec<_>>()
        };
        a.publish(f(1..=8));
        assert_eq!(budget.used.load(Ordering::Relaxed), 80);
        // b pushes the total over 100: b's ring is cut to 160 / 16 = 10 bytes.
        b.publish(f(1..=5));
        assert_eq!(budget.used.load(Ordering::Relaxed), 90);
        assert_eq!(
            b.copy_after(3, &mut Vec::new(), 100),
            Copied::NeedStorage { upto: 4 }
        );
        drop(a);
        assert_eq!(budget.used.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn members_count_users_not_connections() {
        let r = room(10, 0);
        let a1 = Arc::new(Outbox::new(UserName::new("a").unwrap(), 1, 8));
        let a2 = Arc::new(Outbox::new(UserName::new("a").unwrap(), 2, 8));
        let b = Arc::new(Outbox::new(UserName::new("b").unwrap(), 3, 8));
        let (k1, on1) = r.add_member(&a1);
        let (k2, on2) = r.add_member(&a2);
        let (_k3, on3) = r.add_member(&b);
        assert!(on1 && !on2 && on3);
        let (names, count) = r.members_listed(&UserName::new("b").unwrap(), 100);
        assert_eq!(count, 2);
        assert_eq!(names[0].as_str(), "b");
        assert!(!r.remove_member(k1));
        assert!(r.remove_member(k2));
        assert_eq!(r.users(), vec![UserName::new("b").unwrap()]);
    }
}

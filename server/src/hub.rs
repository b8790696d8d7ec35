//! The registry of rooms held in memory.
//!
//! A room is loaded on first use (its epoch and stored range from storage) and stays
//! while it has members; idle rooms are evicted by a periodic sweep, and immediately when
//! the registry is at `rooms_loaded_max`. Loading is serialized per room name, so two
//! joins of a cold room cannot create two `Room`s (which would fork its sequence), while
//! loads of different rooms run in parallel.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use lockstep_protocol::{Epoch, RoomName};
use parking_lot::Mutex;

use crate::metrics::Metrics;
use crate::reads::{Priority, ReadPool};
use crate::room::{RingLimits, Room};
use crate::store::StoreError;

/// Why a room could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("{0} rooms are loaded and none is idle")]
    Full(usize),
}

pub struct Hub {
    rooms: Mutex<HashMap<RoomName, Arc<Room>>>,
    /// One lock per room being loaded right now (at most one entry per concurrent load).
    loading: Mutex<HashMap<RoomName, Arc<tokio::sync::Mutex<()>>>>,
    reads: Arc<ReadPool>,
    limits: RingLimits,
    rooms_max: usize,
    metrics: Arc<Metrics>,
}

/// A fresh random epoch name.
pub fn new_epoch() -> Epoch {
    Epoch::new(format!("e-{:016x}", rand::random::<u64>())).expect("valid epoch")
}

impl Hub {
    pub fn new(
        reads: Arc<ReadPool>,
        limits: RingLimits,
        rooms_max: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            reads,
            limits,
            rooms_max,
            metrics,
        }
    }

    /// The room if it is in memory.
    pub fn loaded(&self, name: &RoomName) -> Option<Arc<Room>> {
        self.rooms.lock().get(name).cloned()
    }

    /// The room, loading it from storage; with `create`, a room with no stored record is
    /// created (in memory; storage gets its record with its first message).
    /// Without `create`, a room nobody stored and nobody holds is `None`.
    pub async fn open(&self, name: &RoomName, create: bool) -> Result<Option<Arc<Room>>, HubError> {
        if let Some(r) = self.loaded(name) {
            return Ok(Some(r));
        }
        let lock = self
            .loading
            .lock()
            .entry(name.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        let _one_at_a_time = lock.lock().await;
        let result = self.load(name, create).await;
        // Remove the entry only if it is still ours: a load that inserted nothing (an
        // unknown room without `create`, an error) lets a newcomer make a fresh lock
        // while waiters of ours still run; theirs must not be removed under them.
        let mut loading = self.loading.lock();
        if loading.get(name).is_some_and(|l| Arc::ptr_eq(l, &lock)) {
            loading.remove(name);
        }
        result
    }

    async fn load(&self, name: &RoomName, create: bool) -> Result<Option<Arc<Room>>, HubError> {
        if let Some(r) = self.loaded(name) {
            return Ok(Some(r));
        }
        let owned = name.clone();
        let record = self
            .reads
            .run(Priority::Control, move |r| r.load_room(&owned))
            .await?;
        let room = match record {
            Some(rec) => Room::new(
                name.clone(),
                rec.epoch,
                Some(rec.rid),
                rec.first,
                rec.head,
                self.limits.clone(),
            ),
            None if create => Room::new(name.clone(), new_epoch(), None, 1, 0, self.limits.clone()),
            None => return Ok(None),
        };
        let room = Arc::new(room);
        let mut rooms = self.rooms.lock();
        // Two loads of one name can overlap (a waiter on an old loading lock and a
        // newcomer on a new one); the first to insert wins, so there is never a second
        // `Room` (a forked sequence) for one name.
        if let Some(existing) = rooms.get(name) {
            return Ok(Some(existing.clone()));
        }
        if rooms.len() >= self.rooms_max {
            let evicted = evict_idle(&mut rooms, 0, usize::MAX);
            self.metrics
                .rooms_evicted
                .fetch_add(evicted as u64, Relaxed);
            if rooms.len() >= self.rooms_max {
                return Err(HubError::Full(rooms.len()));
            }
        }
        rooms.insert(name.clone(), room.clone());
        self.metrics.rooms_loaded.store(rooms.len() as u64, Relaxed);
        Ok(Some(room))
    }

    /// Evicts rooms idle for at least `idle_ms`. Returns how many.
    pub fn sweep(&self, idle_ms: u64) -> usize {
        let cutoff = crate::clock::now_ms().saturating_sub(idle_ms);
        let mut rooms = self.rooms.lock();
        let n = evict_idle(&mut rooms, cutoff, usize::MAX);
        self.metrics.rooms_evicted.fetch_add(n as u64, Relaxed);
        self.metrics.rooms_loaded.store(rooms.len() as u64, Relaxed);
        n
    }

    /// Whether the room exists (in memory, or stored) — without loading it.
    pub async fn exists(&self, name: &RoomName) -> Result<bool, StoreError> {
        if self.loaded(name).is_some() {
            return Ok(true);
        }
        let owned = name.clone();
        let rec = self
            .reads
            .run(Priority::Control, move |r| r.load_room(&owned))
            .await?;
        Ok(rec.is_some())
    }

    pub fn loaded_count(&self) -> usize {
        self.rooms.lock().len()
    }
}

/// Removes rooms nobody references (no member, no pending send, no reader) that were last
/// active before `cutoff_ms`. A room referenced elsewhere is never dropped: the holder
/// would keep sequencing into a `Room` a later load would duplicate.
fn evict_idle(rooms: &mut HashMap<RoomName, Arc<Room>>, cutoff_ms: u64, max: usize) -> usize {
    let mut n = 0;
    rooms.retain(|_, r| {
        let idle = Arc::strong_count(r) == 1
            && r.member_conns() == 0
            && (cutoff_ms == 0 || r.last_active_ms() <= cutoff_ms);
        if idle && n < max {
            n += 1;
            false
        } else {
            true
        }
    });
    n
}

//! A pool of read connections, used from async code through the blocking thread pool.
//!
//! Two priorities so that bulk work cannot starve the server: `Bulk` reads (slow-reader
//! catch-up, history pages, HTTP pages) may hold all connections but one; `Control`
//! reads (loading a room for a join, `/readyz`) may use any, so one is always left for
//! them. Waiters queue on semaphores; their number is bounded by the callers (connection
//! tasks and HTTP requests, themselves bounded by `connections_max`).

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::store::{StoreError, StoreReader};

type Opener = dyn Fn() -> Result<Box<dyn StoreReader>, StoreError> + Send + Sync;

/// Which queue a read waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Catch-up, history, HTTP pages.
    Bulk,
    /// Room loads, readiness checks.
    Control,
}

pub struct ReadPool {
    idle: Mutex<Vec<Box<dyn StoreReader>>>,
    all: Semaphore,
    bulk: Semaphore,
    open: Arc<Opener>,
}

impl ReadPool {
    /// `size` connections (at least 2: one is kept for control reads).
    pub fn new(
        size: usize,
        open: impl Fn() -> Result<Box<dyn StoreReader>, StoreError> + Send + Sync + 'static,
    ) -> Result<Self, StoreError> {
        let size = size.max(2);
        let idle = (0..size).map(|_| open()).collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            idle: Mutex::new(idle),
            all: Semaphore::new(size),
            bulk: Semaphore::new(size - 1),
            open: Arc::new(open),
        })
    }

    /// Runs `f` with a read connection on the blocking pool.
    pub async fn run<T, F>(&self, priority: Priority, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn StoreReader) -> Result<T, StoreError> + Send + 'static,
    {
        let _bulk = match priority {
            Priority::Bulk => Some(
                self.bulk
                    .acquire()
                    .await
                    .expect("the read pool semaphores are never closed"),
            ),
            Priority::Control => None,
        };
        let _permit = self
            .all
            .acquire()
            .await
            .expect("the read pool semaphores are never closed");
        let conn = self.idle.lock().pop();
        let conn = match conn {
            Some(c) => c,
            None => (self.open)()?,
        };
        let joined = tokio::task::spawn_blocking(move || {
            let mut conn = conn;
            let r = f(conn.as_mut());
            (conn, r)
        })
        .await;
        match joined {
            Ok((conn, r)) => {
                self.idle.lock().push(conn);
                r
            }
            // The closure panicked; its connection is gone, the next caller opens another.
            Err(e) => Err(StoreError::Corrupt(format!("read task failed: {e}"))),
        }
    }
}

//! A pool of read connections, used from async code through the blocking thread pool.
//!
//! Bounded: at most `size` reads run at once; further callers wait on the semaphore
//! (each caller is a connection task or HTTP request, themselves bounded by
//! `connections_max`).

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::store::{StoreError, StoreReader};

type Opener = dyn Fn() -> Result<Box<dyn StoreReader>, StoreError> + Send + Sync;

pub struct ReadPool {
    idle: Mutex<Vec<Box<dyn StoreReader>>>,
    permits: Semaphore,
    open: Arc<Opener>,
}

impl ReadPool {
    pub fn new(
        size: usize,
        open: impl Fn() -> Result<Box<dyn StoreReader>, StoreError> + Send + Sync + 'static,
    ) -> Result<Self, StoreError> {
        let idle = (0..size).map(|_| open()).collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            idle: Mutex::new(idle),
            permits: Semaphore::new(size),
            open: Arc::new(open),
        })
    }

    /// Runs `f` with a read connection on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn StoreReader) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the read pool semaphore is never closed");
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

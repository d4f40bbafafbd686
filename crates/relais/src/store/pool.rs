//! A small blocking connection pool shared by both engines.

use std::sync::{Condvar, Mutex};

use super::StoreError;

/// Connections created on demand up to a limit, handed out one caller at a time.
pub struct Pool<C: Send + 'static> {
    idle: Mutex<(Vec<C>, usize)>,
    returned: Condvar,
    max: usize,
    connect: Box<dyn Fn() -> Result<C, StoreError> + Send + Sync>,
}

impl<C: Send + 'static> Pool<C> {
    /// A pool of at most `max` connections made by `connect`.
    pub fn new(max: usize, connect: impl Fn() -> Result<C, StoreError> + Send + Sync + 'static) -> Pool<C> {
        Pool { idle: Mutex::new((Vec::new(), 0)), returned: Condvar::new(), max, connect: Box::new(connect) }
    }

    /// Run `work` with a connection; a connection whose work failed with a
    /// database error is dropped rather than returned, in case it is broken.
    pub fn with<T>(&self, work: impl FnOnce(&mut C) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut conn = self.checkout()?;
        let result = work(&mut conn);
        let mut guard = self.idle.lock().expect("pool lock");
        if matches!(result, Err(StoreError::Database(_))) {
            guard.1 -= 1;
        } else {
            guard.0.push(conn);
        }
        drop(guard);
        self.returned.notify_one();
        result
    }

    fn checkout(&self) -> Result<C, StoreError> {
        let mut guard = self.idle.lock().expect("pool lock");
        loop {
            if let Some(conn) = guard.0.pop() {
                return Ok(conn);
            }
            if guard.1 < self.max {
                guard.1 += 1;
                drop(guard);
                return (self.connect)().inspect_err(|_| {
                    self.idle.lock().expect("pool lock").1 -= 1;
                });
            }
            guard = self.returned.wait(guard).expect("pool lock");
        }
    }
}

impl<C: Send + 'static> Drop for Pool<C> {
    fn drop(&mut self) {
        // Closing a blocking PostgreSQL client runs a small runtime of its own,
        // which panics on a thread that drives async tasks: close on a plain thread.
        let state = match self.idle.get_mut() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        let idle = std::mem::take(&mut state.0);
        if !idle.is_empty() {
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

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
        let mut lent = Lent { pool: self, conn: Some(self.checkout()?) };
        let result = work(lent.conn.as_mut().expect("a lent connection"));
        if !matches!(result, Err(StoreError::Database(_))) {
            lent.give_back();
        }
        result
    }

    /// Run `tidy` on each idle connection for which `due` holds, outside the
    /// pool's lock (a caller meanwhile waits for a connection); a connection
    /// whose tidying failed or panicked is dropped and its place freed.
    pub fn tidy_idle(&self, due: impl Fn(&C) -> bool, tidy: impl Fn(&mut C) -> Result<(), StoreError>) {
        let taken: Vec<C> = {
            let mut guard = self.idle.lock().expect("pool lock");
            let (taken, kept) = std::mem::take(&mut guard.0).into_iter().partition(|conn| due(conn));
            guard.0 = kept;
            taken
        };
        for conn in taken {
            let mut lent = Lent { pool: self, conn: Some(conn) };
            if tidy(lent.conn.as_mut().expect("a lent connection")).is_ok() {
                lent.give_back();
            }
        }
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
                    // The place is free again for a caller waiting for one.
                    self.returned.notify_one();
                });
            }
            guard = self.returned.wait(guard).expect("pool lock");
        }
    }
}

/// A connection out of the pool. Dropped while still lent (its work or its
/// tidying failed, or panicked), it is closed and its place freed, so that a
/// panic never shrinks the pool for good.
struct Lent<'p, C: Send + 'static> {
    pool: &'p Pool<C>,
    conn: Option<C>,
}

impl<C: Send + 'static> Lent<'_, C> {
    /// Put the connection back among the idle ones.
    fn give_back(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.idle.lock().expect("pool lock").0.push(conn);
            self.pool.returned.notify_one();
        }
    }
}

impl<C: Send + 'static> Drop for Lent<'_, C> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn);
            let mut guard = self.pool.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            guard.1 -= 1;
            drop(guard);
            self.pool.returned.notify_one();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn idle_connections_due_are_tidied_and_one_that_fails_makes_room_for_a_new_one() {
        // A lost place would make a caller wait forever: fail instead of hanging.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tidy_and_lend_again();
            done.send(()).unwrap();
        });
        finished.recv_timeout(std::time::Duration::from_secs(30)).expect("every caller got a connection");
    }

    fn tidy_and_lend_again() {
        let made = AtomicUsize::new(0);
        let made = std::sync::Arc::new(made);
        let counter = made.clone();
        // A connection is its number; even numbers are due, 2 fails its tidying.
        let pool = Pool::new(3, move || Ok(counter.fetch_add(1, Ordering::SeqCst)));
        let barrier = std::sync::Barrier::new(3);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    pool.with(|_| {
                        barrier.wait();
                        Ok(())
                    })
                    .expect("work")
                });
            }
        });
        let tidied = Mutex::new(Vec::new());
        pool.tidy_idle(
            |conn| conn % 2 == 0,
            |conn| {
                tidied.lock().unwrap().push(*conn);
                if *conn == 2 {
                    Err(StoreError::Database("broken".into()))
                } else {
                    Ok(())
                }
            },
        );
        let mut tidied = tidied.into_inner().unwrap();
        tidied.sort_unstable();
        assert_eq!(tidied, vec![0, 2]);
        // Connection 2 is gone: three callers at once get 0, 1 and a new one, 3.
        let used = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    pool.with(|conn| {
                        used.lock().unwrap().push(*conn);
                        barrier.wait();
                        Ok(())
                    })
                    .expect("work")
                });
            }
        });
        let mut used = used.into_inner().unwrap();
        used.sort_unstable();
        assert_eq!(used, vec![0, 1, 3]);
        assert_eq!(made.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn work_that_panics_frees_its_place_in_the_pool() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let made = AtomicUsize::new(0);
            let pool = Pool::new(1, move || Ok(made.fetch_add(1, Ordering::SeqCst)));
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.with(|_| -> Result<(), StoreError> { panic!("work broke") })
            }));
            assert!(panicked.is_err());
            // The only place is free again: a new connection, not a wait forever.
            done.send(pool.with(|conn| Ok(*conn)).expect("work")).unwrap();
        });
        let conn = finished.recv_timeout(std::time::Duration::from_secs(30)).expect("the pool still lends");
        assert_eq!(conn, 1);
    }
}

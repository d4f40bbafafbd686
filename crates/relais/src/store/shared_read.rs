//! One read serving many concurrent callers without ever answering stale.
//!
//! Every ingest request reads the saved segments once its events are
//! committed, to update the live memberships. The requests of one group commit
//! at the same instant, so they would send the same query several times in a
//! row. A read that *started* after a caller asked sees everything committed
//! before that caller asked, exactly as the caller's own read would: the caller
//! may take that read's result instead. Nothing is cached beyond that rule, so
//! another process's change is seen as soon as it would be without sharing.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::StoreError;

struct State<T> {
    /// The newest successful result, with the instant its read started.
    latest: Option<(Instant, Arc<T>)>,
    /// The start of the newest read under way, if any.
    in_flight: Option<Instant>,
}

/// A value read from the database, shared by callers that ask at once.
pub struct SharedRead<T> {
    state: Mutex<State<T>>,
    done: Condvar,
}

impl<T> Default for SharedRead<T> {
    fn default() -> Self {
        SharedRead { state: Mutex::new(State { latest: None, in_flight: None }), done: Condvar::new() }
    }
}

impl<T> SharedRead<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value as of now or later: the result of a read that started no
    /// earlier than this call, waiting for one under way or running `read`.
    pub fn get(&self, read: impl FnOnce() -> Result<T, StoreError>) -> Result<Arc<T>, StoreError> {
        self.get_as_of(Instant::now(), read)
    }

    /// `get` for a caller that asked at `asked`.
    fn get_as_of(&self, asked: Instant, read: impl FnOnce() -> Result<T, StoreError>) -> Result<Arc<T>, StoreError> {
        let mut state = self.lock();
        loop {
            if let Some((started, value)) = &state.latest {
                if *started >= asked {
                    return Ok(value.clone());
                }
            }
            match state.in_flight {
                Some(started) if started >= asked => {
                    // Its result will do; if it fails, the loop reads anew.
                    state = self.done.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                _ => break,
            }
        }
        let started = Instant::now();
        state.in_flight = Some(started);
        drop(state);
        let result = read().map(Arc::new);
        let mut state = self.lock();
        if let Ok(value) = &result {
            if state.latest.as_ref().is_none_or(|(at, _)| *at < started) {
                state.latest = Some((started, value.clone()));
            }
        }
        if state.in_flight == Some(started) {
            state.in_flight = None;
        }
        drop(state);
        self.done.notify_all();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    #[test]
    fn a_read_that_started_before_the_call_is_never_reused() {
        let shared = SharedRead::default();
        let reads = AtomicUsize::new(0);
        let read = || Ok::<_, StoreError>(reads.fetch_add(1, Ordering::SeqCst));
        assert_eq!(*shared.get(read).unwrap(), 0);
        // A later call sees a newer read, never the cached one.
        assert_eq!(*shared.get(read).unwrap(), 1);
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    /// A read that blocks until `gate` opens, counting itself in `reads`.
    fn slow_read(gate: Arc<Barrier>, reads: Arc<AtomicUsize>) -> impl FnOnce() -> Result<usize, StoreError> {
        move || {
            gate.wait();
            std::thread::sleep(std::time::Duration::from_millis(30));
            Ok(reads.fetch_add(1, Ordering::SeqCst))
        }
    }

    #[test]
    fn a_caller_that_asked_before_a_read_started_shares_its_result() {
        let shared = Arc::new(SharedRead::default());
        let reads = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Barrier::new(2));
        let asked = Instant::now();
        let first = {
            let (shared, read) = (shared.clone(), slow_read(gate.clone(), reads.clone()));
            std::thread::spawn(move || *shared.get(read).unwrap())
        };
        gate.wait(); // the first read is under way, started after `asked`
        let second = *shared.get_as_of(asked, || Ok(reads.fetch_add(1, Ordering::SeqCst) + 100)).unwrap();
        assert_eq!(first.join().unwrap(), 0);
        assert_eq!(second, 0, "the read under way started after the caller asked: its result serves");
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_caller_that_asked_after_a_read_started_reads_again() {
        let shared = Arc::new(SharedRead::default());
        let reads = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Barrier::new(2));
        let first = {
            let (shared, read) = (shared.clone(), slow_read(gate.clone(), reads.clone()));
            std::thread::spawn(move || *shared.get(read).unwrap())
        };
        gate.wait();
        let own = *shared.get(|| Ok(reads.fetch_add(1, Ordering::SeqCst) + 100)).unwrap();
        assert!(first.join().unwrap() < 100);
        assert!(own >= 100, "a read that started before the caller asked may have missed its commit");
    }

    #[test]
    fn a_failed_read_is_not_kept() {
        let shared: SharedRead<u32> = SharedRead::default();
        assert!(shared.get(|| Err(StoreError::Database("down".into()))).is_err());
        assert_eq!(*shared.get(|| Ok(7)).unwrap(), 7);
    }
}

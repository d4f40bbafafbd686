//! One read serving many concurrent callers without ever answering stale.
//!
//! Every ingest request reads the saved segments once its events are
//! committed, to update the live memberships. The requests of one group commit
//! at the same instant, so they would send the same query several times in a
//! row. A read that *started* after a caller asked sees everything committed
//! before that caller asked, exactly as the caller's own read would: the caller
//! may take that read's result instead. A writer can also take a `mark` right
//! after its commit and hand it to the requests it committed, which then
//! accept any read that started after the mark (`get_after`). Nothing is
//! cached beyond that rule, so another process's change is seen as soon as it
//! would be without sharing. Reads are numbered under the lock, not timed, so
//! "started after" is exact.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::StoreError;

struct State<T> {
    /// Reads started so far; the number of the latest one.
    started: u64,
    /// The newest successful result, with the number of its read.
    latest: Option<(u64, Arc<T>)>,
    /// The number of the newest read under way, if any.
    in_flight: Option<u64>,
}

/// A value read from the database, shared by callers that ask at once.
pub struct SharedRead<T> {
    state: Mutex<State<T>>,
    done: Condvar,
}

impl<T> Default for SharedRead<T> {
    fn default() -> Self {
        SharedRead { state: Mutex::new(State { started: 0, latest: None, in_flight: None }), done: Condvar::new() }
    }
}

/// Ends a read, even one that panicked: callers waiting on it are woken, and
/// read again themselves if it left no result.
struct Finish<'a, T> {
    shared: &'a SharedRead<T>,
    read: u64,
    result: Option<Arc<T>>,
}

impl<T> Drop for Finish<'_, T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(value) = self.result.take() {
            if state.latest.as_ref().is_none_or(|(read, _)| *read < self.read) {
                state.latest = Some((self.read, value));
            }
        }
        if state.in_flight == Some(self.read) {
            state.in_flight = None;
        }
        drop(state);
        self.shared.done.notify_all();
    }
}

impl<T> SharedRead<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value as of now or later: the result of a read that started after
    /// this call, waiting for one under way or running `read`.
    pub fn get(&self, read: impl FnOnce() -> Result<T, StoreError>) -> Result<Arc<T>, StoreError> {
        self.get_after(self.mark(), read)
    }

    /// A mark taken right after a caller's own write: reads numbered above it
    /// started after that write, so they see it and everything before it.
    pub fn mark(&self) -> u64 {
        self.lock().started
    }

    /// `get` for a caller that asked when `asked` reads had started (a `mark`).
    pub fn get_after(&self, asked: u64, read: impl FnOnce() -> Result<T, StoreError>) -> Result<Arc<T>, StoreError> {
        let mut state = self.lock();
        loop {
            if let Some((number, value)) = &state.latest {
                if *number > asked {
                    return Ok(value.clone());
                }
            }
            match state.in_flight {
                Some(number) if number > asked => {
                    // Its result will do; if it fails, the loop reads anew.
                    state = self.done.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                _ => break,
            }
        }
        state.started += 1;
        let number = state.started;
        state.in_flight = Some(number);
        drop(state);
        let mut finish = Finish { shared: self, read: number, result: None };
        let value = Arc::new(read()?);
        finish.result = Some(value.clone());
        Ok(value)
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

    #[test]
    fn a_mark_takes_only_reads_that_started_after_it_and_shares_them() {
        let shared = SharedRead::default();
        let reads = AtomicUsize::new(0);
        let read = || Ok::<_, StoreError>(reads.fetch_add(1, Ordering::SeqCst));
        assert_eq!(*shared.get(read).unwrap(), 0);
        let mark = shared.mark();
        assert_eq!(*shared.get_after(mark, read).unwrap(), 1, "a read from before the mark is not taken");
        assert_eq!(*shared.get_after(mark, read).unwrap(), 1, "one read after the mark serves every holder");
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
        let asked = shared.lock().started;
        let first = {
            let (shared, read) = (shared.clone(), slow_read(gate.clone(), reads.clone()));
            std::thread::spawn(move || *shared.get(read).unwrap())
        };
        gate.wait(); // the first read is under way, started after `asked`
        let second = *shared.get_after(asked, || Ok(reads.fetch_add(1, Ordering::SeqCst) + 100)).unwrap();
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

    #[test]
    fn callers_waiting_on_a_read_that_panicked_read_for_themselves() {
        let shared = Arc::new(SharedRead::default());
        let gate = Arc::new(Barrier::new(2));
        let asked = shared.lock().started;
        let first = {
            let (shared, gate) = (shared.clone(), gate.clone());
            std::thread::spawn(move || {
                let _ = shared.get(|| -> Result<u32, StoreError> {
                    gate.wait();
                    std::thread::sleep(std::time::Duration::from_millis(30));
                    panic!("the read broke")
                });
            })
        };
        gate.wait();
        assert_eq!(*shared.get_after(asked, || Ok(5)).unwrap(), 5);
        assert!(first.join().is_err());
    }
}

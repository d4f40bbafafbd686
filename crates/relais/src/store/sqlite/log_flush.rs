//! Acknowledged means on disk, without the writer waiting for the disk.
//!
//! The writer commits with `synchronous=NORMAL`: a commit writes its frames
//! into the WAL (the operating system's cache) and returns, and the writer
//! goes on with the next group at once. Before any caller hears that its write
//! succeeded, it waits here for an `fdatasync` of the WAL file that *began*
//! after its commit returned, so every frame of that commit is on disk. The
//! writer asks for that flush as soon as it has committed and hands its number
//! to the callers with their answers, so the disk starts working before they
//! even wake. One flush serves every caller waiting for it, while the writer already runs
//! the next transaction: the disk's latency overlaps the writer's work
//! instead of adding to it (group commit with an asynchronous flush).
//!
//! The WAL is append-only between checkpoints, a checkpoint syncs it before
//! copying frames back, and recovery replays a prefix of it up to the last
//! valid commit frame: a flushed commit survives a machine crash, and a commit
//! that is lost was never acknowledged, nor was anything committed after it.
//! Readers may see a commit a few hundred microseconds before it is flushed.
//!
//! A failed flush is final, as in PostgreSQL: after an `fdatasync` error the
//! kernel may have dropped the pages it could not write, so a later success
//! would prove nothing. Every write is refused until the process restarts and
//! SQLite recovers from what the disk holds.

use std::fs::File;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::store::StoreError;

/// Flushes of the WAL, started on demand and shared by every caller waiting.
pub(super) struct LogFlusher {
    state: Mutex<State>,
    /// Wakes the flush thread: a flush was asked for, or the engine closes.
    asked: Condvar,
    /// Wakes the callers: a flush finished or failed, or the engine closes.
    /// Separate from `asked`, so that asking for a flush wakes only the flush
    /// thread, not every caller already waiting.
    finished: Condvar,
}

#[derive(Default)]
struct State {
    /// The highest flush number asked for.
    requested: u64,
    /// Flushes begun.
    started: u64,
    /// Flushes finished (all of them succeeded).
    completed: u64,
    /// Why flushing failed, for good.
    failed: Option<String>,
    /// The engine is closing: flush what was requested, then stop.
    stop: bool,
}

impl LogFlusher {
    /// A flusher, and its thread flushing with `flush` (the WAL file's
    /// `fdatasync` in production).
    pub(super) fn start(
        mut flush: impl FnMut() -> std::io::Result<()> + Send + 'static,
    ) -> std::io::Result<(Arc<LogFlusher>, std::thread::JoinHandle<()>)> {
        let flusher = Arc::new(LogFlusher {
            state: Mutex::new(State::default()),
            asked: Condvar::new(),
            finished: Condvar::new(),
        });
        let worker = flusher.clone();
        let thread = std::thread::Builder::new().name("relais-sqlite-flush".into()).spawn(move || loop {
            let mut state = worker.lock();
            while state.requested <= state.completed && !state.stop {
                state = worker.asked.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if state.requested <= state.completed || state.failed.is_some() {
                return;
            }
            state.started += 1;
            let flush_number = state.started;
            drop(state);
            let result = flush();
            let mut state = worker.lock();
            match result {
                Ok(()) => state.completed = flush_number,
                Err(error) => {
                    tracing::error!(%error, "the SQLite log could not be flushed to disk; writes are refused until relais restarts");
                    state.failed = Some(error.to_string());
                }
            }
            worker.finished.notify_all();
        })?;
        Ok((flusher, thread))
    }

    /// The flusher for the WAL file at `path`.
    pub(super) fn for_file(path: &std::path::Path) -> std::io::Result<(Arc<LogFlusher>, std::thread::JoinHandle<()>)> {
        let file = File::open(path)?;
        LogFlusher::start(move || file.sync_data())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ask for a flush covering everything committed before this call, and
    /// return its number, to wait for with `wait_for`. The writer asks right
    /// after each commit, so the flush begins before its callers even wake.
    pub(super) fn request(&self) -> u64 {
        let mut state = self.lock();
        // A flush already under way may have begun before the commit: the next
        // one to begin covers it.
        let needed = state.started + 1;
        if state.requested < needed {
            state.requested = needed;
            self.asked.notify_one();
        }
        needed
    }

    /// Wait until everything the writer committed before this call is on disk.
    #[cfg(test)]
    pub(super) fn wait_durable(&self) -> Result<(), StoreError> {
        self.wait_for(self.request())
    }

    /// Wait until flush number `needed` (from `request`) has finished.
    pub(super) fn wait_for(&self, needed: u64) -> Result<(), StoreError> {
        let mut state = self.lock();
        loop {
            if let Some(error) = &state.failed {
                return Err(StoreError::Database(format!(
                    "the database log could not be flushed to disk ({error}); restart relais to recover from what the disk holds"
                )));
            }
            if state.completed >= needed {
                return Ok(());
            }
            if state.stop && state.requested <= state.completed {
                return Err(StoreError::Database("the SQLite engine closed before the write was flushed".into()));
            }
            state = self.finished.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Flush what callers wait for, then let the thread end.
    pub(super) fn stop(&self) {
        self.lock().stop = true;
        self.asked.notify_one();
        self.finished.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::LogFlusher;

    #[test]
    fn a_caller_waits_for_a_flush_that_began_after_it_asked() {
        // Each flush records the "commits" it covers: those made before it began.
        let committed = Arc::new(AtomicU64::new(0));
        let covered = Arc::new(AtomicU64::new(0));
        let (commits, flushed) = (committed.clone(), covered.clone());
        let (flusher, thread) = LogFlusher::start(move || {
            let upto = commits.load(Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            flushed.fetch_max(upto, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let (flusher, committed, covered) = (flusher.clone(), committed.clone(), covered.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let mine = committed.fetch_add(1, Ordering::SeqCst) + 1;
                        flusher.wait_durable().unwrap();
                        assert!(covered.load(Ordering::SeqCst) >= mine, "acknowledged before its flush");
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.join().unwrap();
        }
        flusher.stop();
        thread.join().unwrap();
    }

    #[test]
    fn a_failed_flush_refuses_every_later_write() {
        let (flusher, thread) = LogFlusher::start(|| Err(std::io::Error::other("disk gone"))).unwrap();
        let first = flusher.wait_durable().unwrap_err().to_string();
        assert!(first.contains("disk gone") && first.contains("restart"), "{first}");
        assert!(flusher.wait_durable().is_err(), "a later write is refused too");
        flusher.stop();
        thread.join().unwrap();
    }
}

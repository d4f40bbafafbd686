//! Group commit for engines with many writers (PostgreSQL): requests that
//! arrive while others are being written wait, and are then written together,
//! in one transaction, by whichever caller is free first ("flat combining").
//!
//! A transaction of ten requests costs about what one costs: the same
//! set-based statements with longer arrays, one round trip each, and one
//! commit. Under load the groups grow by themselves; a lone request is written
//! at once, with no added wait.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::thread::Thread;

use super::StoreError;

/// Requests waiting to be written, and answers waiting to be collected.
struct State<R, T> {
    /// Waiting requests with their tickets, sizes and callers, oldest first.
    queue: VecDeque<Queued<R>>,
    /// Answers by ticket, until their caller takes them.
    answers: HashMap<u64, Result<T, StoreError>>,
    /// The next request's ticket.
    next_ticket: u64,
    /// Callers writing a group right now.
    writing: usize,
}

/// A request waiting for a group.
struct Queued<R> {
    ticket: u64,
    units: usize,
    request: R,
    /// The caller's thread, woken when its answer is in or it may write.
    caller: Thread,
}

/// Combines concurrent requests of type `R` answered with `T`.
///
/// A caller sleeps until woken by name (`Thread::unpark`): a finished group
/// wakes its own callers, and the caller of the oldest waiting request to
/// write the next group, rather than every waiting caller (measured with
/// `relais bench loyalty`: a fifth fewer task switches in relais).
pub struct Combiner<R, T> {
    state: Mutex<State<R, T>>,
    /// Groups written at once, at most (each holds a connection).
    writers: usize,
    /// Units (messages) in a group, at most, so a transaction stays short; a
    /// single larger request still forms a group of its own.
    max_units: usize,
}

impl<R, T> Combiner<R, T> {
    /// A combiner writing at most `writers` groups at once, each of at most
    /// `max_units` units.
    pub fn new(writers: usize, max_units: usize) -> Self {
        Combiner {
            state: Mutex::new(State { queue: VecDeque::new(), answers: HashMap::new(), next_ticket: 0, writing: 0 }),
            writers: writers.max(1),
            max_units: max_units.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<R, T>> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Submit `request` (of `units` units) and wait for its answer. While it
    /// waits, the caller may be asked to write a group (its own request or
    /// others') with `write`, which answers each request of the group in order.
    pub fn submit(
        &self,
        request: R,
        units: usize,
        write: impl Fn(Vec<R>) -> Vec<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back(Queued { ticket, units, request, caller: std::thread::current() });
        loop {
            if let Some(answer) = state.answers.remove(&ticket) {
                return answer;
            }
            if state.writing < self.writers && !state.queue.is_empty() {
                state.writing += 1;
                let mut callers = Vec::new();
                let mut group = Vec::new();
                let mut size = 0;
                while let Some(next) = state.queue.front() {
                    if !group.is_empty() && size + next.units > self.max_units {
                        break;
                    }
                    let queued = state.queue.pop_front().expect("front exists");
                    size += queued.units;
                    callers.push((queued.ticket, queued.caller));
                    group.push(queued.request);
                }
                // With a writer free still, what this group left can go at once.
                let also = (state.writing < self.writers).then(|| state.queue.front().map(|q| q.caller.clone()));
                drop(state);
                if let Some(caller) = also.flatten() {
                    caller.unpark();
                }
                let writing = Writing { combiner: self, callers, own: ticket, answers: None };
                let answers = write(group);
                state = writing.finish(answers);
                continue;
            }
            drop(state);
            // A wake-up that came before this sleep makes it return at once;
            // one without cause only makes the loop look again.
            std::thread::park();
            state = self.lock();
        }
    }
}

/// A group being written: hands its answers over when done, and an error to
/// each of its callers when the writing panicked, so no caller waits forever.
struct Writing<'c, R, T> {
    combiner: &'c Combiner<R, T>,
    /// The group's tickets and callers, in order.
    callers: Vec<(u64, Thread)>,
    /// The writing caller's own ticket: after a panic nobody collects its answer.
    own: u64,
    answers: Option<Vec<Result<T, StoreError>>>,
}

impl<'c, R, T> Writing<'c, R, T> {
    fn finish(mut self, answers: Vec<Result<T, StoreError>>) -> MutexGuard<'c, State<R, T>> {
        let combiner = self.combiner;
        self.answers = Some(answers);
        drop(self);
        combiner.lock()
    }
}

impl<R, T> Drop for Writing<'_, R, T> {
    fn drop(&mut self) {
        let panicked = self.answers.is_none();
        let mut answers = self.answers.take().unwrap_or_default().into_iter();
        let mut state = self.combiner.lock();
        if panicked {
            // The writing caller unwinds: its request, wherever it is, must
            // neither be written later nor leave an answer nobody collects.
            let own = self.own;
            state.queue.retain(|queued| queued.ticket != own);
            state.answers.remove(&own);
        }
        let callers = std::mem::take(&mut self.callers);
        for (ticket, _) in &callers {
            if panicked && *ticket == self.own {
                continue;
            }
            let answer = answers
                .next()
                .unwrap_or_else(|| Err(StoreError::Database("the group this request was written with failed".into())));
            state.answers.insert(*ticket, answer);
        }
        state.writing -= 1;
        // The next group's writer: the caller of the oldest waiting request.
        let next_writer = state.queue.front().map(|queued| queued.caller.clone());
        drop(state);
        for (ticket, caller) in callers {
            if ticket != self.own {
                caller.unpark();
            }
        }
        if let Some(caller) = next_writer {
            caller.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn each_caller_gets_its_own_answer_and_waiting_callers_are_grouped() {
        let combiner = Arc::new(Combiner::<u32, u32>::new(1, 1_000));
        let (groups, submitted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..32u32)
            .map(|i| {
                let (combiner, groups, submitted) = (combiner.clone(), groups.clone(), submitted.clone());
                std::thread::spawn(move || {
                    submitted.fetch_add(1, Ordering::SeqCst);
                    combiner.submit(i, 1, |group| {
                        // The first group is written once every caller has
                        // arrived, so the others queue up behind it.
                        if groups.fetch_add(1, Ordering::SeqCst) == 0 {
                            while submitted.load(Ordering::SeqCst) < 32 {
                                std::thread::yield_now();
                            }
                            std::thread::sleep(std::time::Duration::from_millis(20));
                        }
                        group.into_iter().map(|r| Ok(r * 10)).collect()
                    })
                })
            })
            .collect();
        for (i, thread) in threads.into_iter().enumerate() {
            assert_eq!(thread.join().unwrap().unwrap(), i as u32 * 10);
        }
        // With one writer held up by the first group, the others shared groups.
        assert!(groups.load(Ordering::Relaxed) < 32, "{} groups", groups.load(Ordering::Relaxed));
    }

    #[test]
    fn a_group_never_exceeds_its_size_unless_one_request_does() {
        let combiner = Combiner::<usize, usize>::new(1, 10);
        let sizes = Mutex::new(Vec::new());
        let write = |group: Vec<usize>| {
            sizes.lock().unwrap().push(group.iter().sum::<usize>());
            group.into_iter().map(Ok).collect()
        };
        assert_eq!(combiner.submit(25, 25, write).unwrap(), 25);
        std::thread::scope(|s| {
            for _ in 0..20 {
                s.spawn(|| combiner.submit(4, 4, write).unwrap());
            }
        });
        let sizes = sizes.into_inner().unwrap();
        assert_eq!(sizes[0], 25);
        assert!(sizes[1..].iter().all(|&s| s <= 10), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 25 + 80);
    }

    #[test]
    fn callers_woken_by_name_all_get_their_answers_with_several_writers() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let combiner = Combiner::<u64, u64>::new(2, 5);
            std::thread::scope(|s| {
                for thread in 0..24u64 {
                    let combiner = &combiner;
                    s.spawn(move || {
                        // Callers leave at different times, some while
                        // requests still wait that only they would have written.
                        for round in 0..1 + thread % 6 {
                            let request = thread * 1_000 + round;
                            let answer = combiner.submit(request, 1, |group| {
                                std::thread::sleep(std::time::Duration::from_millis(2));
                                group.into_iter().map(|r| Ok(r + 1)).collect()
                            });
                            assert_eq!(answer.unwrap(), request + 1);
                        }
                    });
                }
            });
            done.send(()).unwrap();
        });
        // A caller nobody wakes would wait forever: fail instead of hanging.
        finished.recv_timeout(std::time::Duration::from_secs(60)).expect("every caller got its answer");
    }

    #[test]
    fn a_panicking_writer_fails_its_group_without_hanging_anyone() {
        let combiner = Arc::new(Combiner::<u32, u32>::new(1, 1_000));
        let first = {
            let combiner = combiner.clone();
            std::thread::spawn(move || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    combiner.submit(1, 1, |_| panic!("writer broke"))
                }))
            })
        };
        assert!(first.join().unwrap().is_err(), "the writer's own call unwinds");
        // The combiner still works for the next caller.
        assert_eq!(combiner.submit(2, 1, |g| g.into_iter().map(Ok).collect()).unwrap(), 2);
    }
}

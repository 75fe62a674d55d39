//! Bounded queues: [`FullPolicy`], what a submit does when a pool's queue is
//! full, and [`Room`], the count of a queue's taken places that blocked
//! submitters wait on.

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::{BuildError, BuildErrorKind, RejectReason};
use crate::sync::lock;

/// What a submit does when the pool's bounded queue is full (see
/// [`ThreadPoolBuilder::queue_capacity`](crate::ThreadPoolBuilder::queue_capacity)).
///
/// Only a pool built with a queue capacity is ever full; setting a policy
/// without one is a [`BuildError`].
///
/// A worker of the pool never waits for room in its own queue: with `Block`
/// or `BlockFor`, a task that submits into its own full pool is refused with
/// [`RejectReason::Full`] at once (if every worker waited for the others to
/// make room, none ever would).
///
/// ```
/// use std::time::Duration;
/// use executor_exporter::{FullPolicy, RejectReason, ThreadPoolExecutor};
///
/// let pool = ThreadPoolExecutor::builder()
///     .max_workers(2)
///     .queue_capacity(100)
///     .when_full(FullPolicy::BlockFor(Duration::from_millis(50)))
///     .registry(prometheus::Registry::new())
///     .build()?;
/// assert_eq!(pool.submit(|| 6 * 7)?.join()?, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum FullPolicy {
    /// Refuse the submit with [`RejectReason::Full`], handing the task back
    /// (counted in `rejected_tasks_total`). The default. A `map`'s item that
    /// finds the queue full waits for room instead, not counted.
    #[default]
    Reject,
    /// Wait until the queue has room (backpressure). A shutdown, or the pool
    /// breaking, wakes the waiting submit, which is then refused with
    /// [`RejectReason::Shutdown`] or [`RejectReason::Broken`].
    Block,
    /// As [`Block`](Self::Block), for at most this long; then the submit is
    /// refused with [`RejectReason::Full`]. Must be more than zero.
    BlockFor(Duration),
    /// Run the task on the submitting thread, now, before the submit returns
    /// (thread pools only: a process pool's task must run in a worker
    /// process). It counts as a normal task that waited about nothing.
    CallerRuns,
}

impl fmt::Display for FullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FullPolicy::Reject => f.write_str("Reject"),
            FullPolicy::Block => f.write_str("Block"),
            FullPolicy::BlockFor(d) => write!(f, "BlockFor({d:?})"),
            FullPolicy::CallerRuns => f.write_str("CallerRuns"),
        }
    }
}

/// Checks a builder's `queue_capacity` and `when_full`: the room of a
/// bounded queue, `None` for an unbounded one.
pub(crate) fn check_queue(
    capacity: Option<usize>,
    policy: Option<FullPolicy>,
) -> Result<Option<usize>, BuildError> {
    let invalid = |why: String| Err(BuildError::new(BuildErrorKind::Queue(why)));
    match (capacity, policy) {
        (Some(0), _) => invalid(
            "queue_capacity must be greater than 0; leave it unset for an unbounded queue"
                .to_owned(),
        ),
        (None, Some(policy)) => invalid(format!(
            "when_full({policy}) needs queue_capacity(n): without one the queue is unbounded \
             and never full"
        )),
        (_, Some(FullPolicy::BlockFor(d))) if d.is_zero() => {
            invalid("when_full(BlockFor(0s)) would never wait; use FullPolicy::Reject".to_owned())
        }
        (capacity, _) => Ok(capacity),
    }
}

/// Not refusing: the value of [`Room::refusal`] while the pool takes tasks.
const OPEN: u8 = 0;
const SHUTDOWN: u8 = 1;
const BROKEN: u8 = 2;

/// The places of a bounded queue: how many are taken, and the submitters
/// waiting for one.
///
/// A submit takes a place ([`try_take`](Self::try_take)) before it queues
/// its task, and whoever takes the task out of the queue gives the place
/// back ([`release`](Self::release)). The count is the queue's own, apart
/// from the channel that holds the tasks, so that nothing else that goes
/// through that channel (a worker's stop message) ever waits for room.
pub(crate) struct Room {
    capacity: usize,
    taken: AtomicUsize,
    /// Submitters waiting, or about to wait, for a place: a release only
    /// takes the lock to wake them when there is one.
    waiting: AtomicUsize,
    /// Why waiting submitters must give up ([`OPEN`] while they need not).
    refusal: AtomicU8,
    lock: Mutex<()>,
    freed: Condvar,
}

impl fmt::Debug for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Room")
            .field("capacity", &self.capacity)
            .field("taken", &self.taken.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Room {
    pub(crate) fn new(capacity: usize) -> Room {
        Room {
            capacity,
            taken: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            refusal: AtomicU8::new(OPEN),
            lock: Mutex::new(()),
            freed: Condvar::new(),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Takes a place if one is free.
    #[inline]
    pub(crate) fn try_take(&self) -> bool {
        self.taken
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a place back, waking one waiting submitter.
    #[inline]
    pub(crate) fn release(&self) {
        self.taken.fetch_sub(1, Ordering::SeqCst);
        // A waiter counts itself before it looks for a place (both SeqCst):
        // either it sees this place, or this sees it and wakes it. The lock
        // makes the wake-up wait until the waiter is asleep.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            drop(lock(&self.lock));
            self.freed.notify_one();
        }
    }

    /// Waiting submitters give up with `reason` (the pool shut down or
    /// broke), now and from now on.
    pub(crate) fn close(&self, reason: RejectReason) {
        let code = if reason == RejectReason::Broken {
            BROKEN
        } else {
            SHUTDOWN
        };
        let _ = self
            .refusal
            .compare_exchange(OPEN, code, Ordering::SeqCst, Ordering::SeqCst);
        drop(lock(&self.lock));
        self.freed.notify_all();
    }

    fn refusal(&self) -> Option<RejectReason> {
        match self.refusal.load(Ordering::SeqCst) {
            OPEN => None,
            BROKEN => Some(RejectReason::Broken),
            _ => Some(RejectReason::Shutdown),
        }
    }

    /// Waits for a place, until `timeout` (`None`: as long as it takes).
    /// Refused with `Full` when the time is up, or with the reason the pool
    /// was [closed](Self::close) with.
    #[cold]
    pub(crate) fn wait_take(&self, timeout: Option<Duration>) -> Result<(), RejectReason> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut guard = lock(&self.lock);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let outcome = loop {
            if let Some(reason) = self.refusal() {
                break Err(reason);
            }
            if self.try_take() {
                break Ok(());
            }
            guard = match (timeout, deadline) {
                (None, _) | (Some(_), None) => {
                    self.freed.wait(guard).unwrap_or_else(|e| e.into_inner())
                }
                (Some(_), Some(deadline)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break Err(RejectReason::Full);
                    }
                    self.freed
                        .wait_timeout(guard, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
        outcome
    }
}

//! [`TaskCore`]: one task's state machine, its result slot, and every move
//! of its life (start, finish, cancel, fail before starting, refuse, and a
//! joiner taking it), each recorded by the one thread that made it.

use std::cell::UnsafeCell;
use std::mem::ManuallyDrop;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;

use super::accounting::{Accounting, AcctRef};
use super::running::{running_here, RunningNode};
use super::signal::{lock, wait_signal, WaitSignal};
use crate::clock::Clock;
use crate::error::FailureReason;
use crate::error::TaskError;
use crate::sync::atomic::{AtomicU32, Ordering};
use crate::sync::Arc;

/// A task's state word: its phase in the low two bits, and flags.
pub(super) const QUEUED: u32 = 0;
pub(super) const RUNNING: u32 = 1;
pub(super) const DONE: u32 = 2;
pub(super) const CANCELLED: u32 = 3;
pub(super) const PHASE: u32 = 3;
/// The result is in the slot (written before this bit is set).
pub(super) const READY: u32 = 1 << 2;
/// The handle took the result out of the slot.
pub(super) const TAKEN: u32 = 1 << 3;
/// A thread is moving the waker in or out of the slot.
pub(super) const LOCKED: u32 = 1 << 4;
/// The slot holds a waker (only before `READY`).
pub(super) const WAKER: u32 = 1 << 5;
/// A thread blocks (or blocked) in `join` or `wait_timeout`: the end must
/// wake the task's signal. Never cleared.
pub(super) const BLOCKED: u32 = 1 << 6;
/// The task's closure, kept in its core, has an owner other than a worker
/// that starts it: a joiner that took the task out of the queue to run it
/// (set with the move to `RUNNING`), or the executor's task about to drop
/// it unrun (set while queued; a joiner then leaves the task alone). Never
/// cleared: whoever set it first has the closure.
pub(super) const CLAIMED: u32 = 1 << 7;

/// A task's slot: a waker before the result is published (`WAKER`), the
/// result after (`READY`, until `TAKEN`); which one, if any, is in the
/// state word. Sharing the storage keeps a task's allocation within the
/// allocator's 64-byte size class for small closures and results.
union Slot<T> {
    empty: (),
    /// Boxed: only awaited tasks pay for a waker.
    waker: ManuallyDrop<Box<Waker>>,
    /// The error is boxed so that the slot is one word for `T = ()`.
    result: ManuallyDrop<Result<T, Box<TaskError>>>,
}

/// The shared state of one task: its state word, its slot, and `job`: what
/// the executor runs, kept in the same allocation (the proxy stores the
/// closure there; the process pool needs nothing, `()`).
///
/// The slot is written by the thread that ends the task (once, before it
/// sets `READY`), by the handle's poller under `LOCKED` before that, and
/// read by the handle's owner after `READY`: no lock is taken to publish a
/// result nobody waits for, and a blocked `join` sleeps on a static signal.
pub(crate) struct TaskCore<T, J: ?Sized = ()> {
    state: AtomicU32,
    slot: UnsafeCell<Slot<T>>,
    acct: AcctRef,
    submitted_at: Clock,
    pub(crate) job: J,
}

// SAFETY: the slot is only accessed as described on `TaskCore`: moves of a
// `T` (hence `T: Send`) and of a waker between threads, ordered by the
// state word. The job is shared as `J` itself is.
unsafe impl<T: Send, J: ?Sized + Send> Send for TaskCore<T, J> {}
// SAFETY: as above; `&TaskCore` gives no access to a `&T`.
unsafe impl<T: Send, J: ?Sized + Sync> Sync for TaskCore<T, J> {}

/// What a handle's task runs, as a thread joining the handle sees it: the
/// proxy keeps a submitted task's closure in the task's core
/// ([`TaskCore::job`]), so a joiner can run the task itself instead of
/// waiting for a worker that may never come (see [`TaskHandle::join`]).
pub(crate) trait Help<T>: Send + Sync {
    /// Runs the task on this thread if this call takes it out of the queue
    /// ([`TaskCore::claim_to_run`]): true if it did (the task has ended
    /// then), false if the task had left the queue. `core` is the core this
    /// job is in.
    fn help(&self, core: &TaskCore<T, dyn Help<T>>) -> bool;

    /// Polls `ready` for a while before the joiner parks, for a task whose
    /// executor asked for it (the process pool's low-latency mode): true if
    /// `ready` returned true. The default parks at once.
    fn spin(&self, _ready: &mut dyn FnMut() -> bool) -> bool {
        false
    }

    /// Waits for the task's end on this thread, up to `deadline`, where the
    /// executor does better than a wake-up from the thread that ends it
    /// (the process pool's joiner reads its worker's reply itself); returns
    /// when the task ended or this way of waiting gave up. The default does
    /// nothing: the joiner parks.
    fn wait_here(&self, _deadline: Option<Instant>) {}

    /// The handle's owner does not wait on its own thread (its future is
    /// pending, or it was dropped): what [`wait_here`](Self::wait_here)
    /// would have done is left to the executor. The default does nothing.
    fn let_go(&self) {}
}

/// A task with nothing in its core to run: its joiner waits (the loom
/// models' tasks; the process pool's core holds its joiner's spin).
impl<T> Help<T> for () {
    fn help(&self, _core: &TaskCore<T, dyn Help<T>>) -> bool {
        false
    }
}

#[cfg(loom)]
impl<T> TaskCore<T> {
    /// A task `acct` has admitted ([`Accounting::admit`] returned true).
    pub(crate) fn new(acct: &Arc<Accounting>) -> TaskCore<T> {
        TaskCore::with_job(acct, ())
    }
}

impl<T, J> TaskCore<T, J> {
    /// A task `acct` has admitted ([`Accounting::admit`] returned true),
    /// with what its executor runs: it must end through this core
    /// (`finish`, `cancel` or `fail_unstarted`), exactly once.
    pub(crate) fn with_job(acct: &Arc<Accounting>, job: J) -> TaskCore<T, J> {
        TaskCore {
            state: AtomicU32::new(QUEUED),
            slot: UnsafeCell::new(Slot { empty: () }),
            acct: AcctRef::new(acct),
            submitted_at: Clock::now(),
            job,
        }
    }
}

impl<T, J: ?Sized> TaskCore<T, J> {
    fn signal(&self) -> &'static WaitSignal {
        wait_signal(self as *const TaskCore<T, J> as *const u8 as usize)
    }

    /// Takes `LOCKED`; returns the state word with it. Held for a few
    /// instructions (moving a pointer), so it spins, then yields.
    fn lock_slot(&self) -> u32 {
        let mut spins = 0u32;
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if state & LOCKED == 0 {
                match self.state.compare_exchange_weak(
                    state,
                    state | LOCKED,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return state | LOCKED,
                    Err(now) => state = now,
                }
                continue;
            }
            // Under loom each spin would be one more interleaving to explore.
            if spins < 64 && !cfg!(loom) {
                spins += 1;
                std::hint::spin_loop();
            } else {
                crate::sync::yield_now();
            }
            state = self.state.load(Ordering::Relaxed);
        }
    }

    /// Writes the result, sets `READY` (and `phase_xor` into the phase: the
    /// move to `DONE` of a finished task), and wakes whoever waits.
    fn publish(&self, phase_xor: u32, result: Result<T, TaskError>) {
        let result = result.map_err(Box::new);
        let locked = self.lock_slot();
        // SAFETY: `LOCKED` is held, and no result was written before (a
        // task ends once); the waker is in the slot iff `WAKER` is set.
        let waker = unsafe {
            let slot = &mut *self.slot.get();
            let waker = (locked & WAKER != 0).then(|| ManuallyDrop::take(&mut slot.waker));
            slot.result = ManuallyDrop::new(result);
            waker
        };
        let before = self.state.fetch_xor(
            phase_xor | READY | LOCKED | (locked & WAKER),
            Ordering::AcqRel,
        );
        if before & BLOCKED != 0 {
            let signal = self.signal();
            let _guard = lock(&signal.lock);
            signal.cv.notify_all();
        }
        // Before the waker: it is the user's code and may panic, and the
        // task must have ended by then.
        self.acct.ended();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Moves a queued task to `to`; false if it has left the queue already.
    fn leave_queue(&self, to: u32) -> bool {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & PHASE != QUEUED {
                return false;
            }
            match self.state.compare_exchange_weak(
                state,
                state | to,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => state = now,
            }
        }
    }

    /// Moves the task to running and records its wait, for a task that
    /// runs elsewhere (a worker process) and whose start is reported here:
    /// this thread is not marked as running it, and the pool reports the
    /// task's age itself (see `Series::add_age_source`). `None` when it
    /// was cancelled (or a `shutdown_now` cancels it now): it must not run.
    /// End it with [`finish_reported`](Self::finish_reported). `ago`: how
    /// long before this report the task started there (no earlier than its
    /// submit is recorded), as the worker running it reports after the fact.
    pub(crate) fn start(&self, ago: Duration) -> Option<Clock> {
        if !self.leave_queue(RUNNING) {
            return None;
        }
        self.begin_with(|| {}, Some(ago))
    }

    /// [`start`](Self::start), calling `before_cancel` before a task that
    /// a `shutdown_now` cancels here ends (the proxy drops the closure
    /// there, so that `join` returns after it is gone). Inlined into the
    /// worker's run, as [`begin`](Self::begin) is.
    #[inline(always)]
    pub(crate) fn start_or_cancel(&self, before_cancel: impl FnOnce()) -> Option<Clock> {
        // The move out of the queue comes first: a task that has ended
        // (cancelled by its handle, say) no longer holds its unit of the
        // in-flight count, and its accounting may be gone.
        if !self.leave_queue(RUNNING) {
            return None;
        }
        self.begin(before_cancel)
    }

    /// A joiner takes the task out of the queue to run it on its own
    /// thread: the move to `RUNNING` a worker's start makes, which also
    /// claims the closure (`CLAIMED`). False if the task had left the
    /// queue, or the executor's task claimed the closure to drop it.
    pub(crate) fn claim_to_run(&self) -> bool {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & (PHASE | CLAIMED) != QUEUED {
                return false;
            }
            match self.state.compare_exchange_weak(
                state,
                state | RUNNING | CLAIMED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => state = now,
            }
        }
    }

    /// The executor's task claims the closure to drop it without running
    /// it: false if a joiner claimed it first (and runs the task).
    pub(crate) fn claim_to_drop(&self) -> bool {
        self.state.fetch_or(CLAIMED, Ordering::AcqRel) & CLAIMED == 0
    }

    /// For the executor's task, once its start found the task out of the
    /// queue already: true if a joiner took it (and its closure), false if
    /// its handle cancelled it (the closure is still there).
    pub(crate) fn taken_by_joiner(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLAIMED != 0
    }

    /// Records the start of a task that left the queue for `RUNNING`, or,
    /// if a `shutdown_now` came first, cancels it (calling `before_cancel`
    /// first) and returns `None`. Inlined into the run paths: out of line,
    /// a worker's run took about 10 instructions more per task.
    ///
    /// This thread runs the task until [`finish`](Self::finish), and is
    /// marked as running it (the running age).
    #[inline(always)]
    pub(crate) fn begin(&self, before_cancel: impl FnOnce()) -> Option<Clock> {
        self.begin_with(before_cancel, None)
    }

    /// [`begin`](Self::begin); `elsewhere`: `None` when this thread runs
    /// the task, else how long ago it started where it runs.
    #[inline(always)]
    fn begin_with(
        &self,
        before_cancel: impl FnOnce(),
        elsewhere: Option<Duration>,
    ) -> Option<Clock> {
        if self.acct.cancelling_pending() {
            before_cancel();
            self.acct.series.cancelled();
            self.publish(RUNNING ^ CANCELLED, Err(TaskError::Cancelled));
            return None;
        }
        let now = Clock::now();
        let Some(ago) = elsewhere else {
            return Some(self.acct.series.started_run(self.submitted_at, now));
        };
        let at = if ago.is_zero() {
            now
        } else {
            now.earlier_by(ago, self.submitted_at)
        };
        self.acct.series.started(at.nanos_since(self.submitted_at));
        Some(at)
    }

    /// When the task was submitted.
    pub(crate) fn submitted_at(&self) -> Clock {
        self.submitted_at
    }

    /// Ends a task [`begin`](Self::begin) (or `start_or_cancel`) started,
    /// on the thread that runs it, with its result.
    pub(crate) fn finish(
        &self,
        started: Clock,
        result: Result<T, TaskError>,
        failure: Option<FailureReason>,
    ) {
        self.acct
            .series
            .finished_run(started, Clock::now(), failure);
        self.publish(RUNNING ^ DONE, result);
    }

    /// Ends a task [`start`](Self::start) started, with its result, after it ran for `ran`
    /// nanoseconds (as its reporter measured).
    pub(crate) fn finish_reported(
        &self,
        ran: u64,
        result: Result<T, TaskError>,
        failure: Option<FailureReason>,
    ) {
        self.acct.series.finished(ran, failure);
        self.publish(RUNNING ^ DONE, result);
    }

    /// True while the task has not left the queue. For the thread holding
    /// the task's only reference, once its handle is gone (see the proxy's
    /// `Queued`): nobody can move the task any more, and a queued one can
    /// then run without its state word ([`begin_alone`](Self::begin_alone)).
    pub(crate) fn is_queued(&self) -> bool {
        self.state.load(Ordering::Acquire) & PHASE == QUEUED
    }

    /// [`begin`](Self::begin) for a queued task nobody else can reach (its
    /// handle is gone): the state word is not written, as nobody reads it
    /// again. `None` if a `shutdown_now` cancels it: drop the closure, then
    /// end it with [`cancel_alone`](Self::cancel_alone).
    #[inline(always)]
    pub(crate) fn begin_alone(&self) -> Option<Clock> {
        self.acct.start_run(self.submitted_at)
    }

    /// Ends, as cancelled, a task [`begin_alone`](Self::begin_alone) did
    /// not start.
    pub(crate) fn cancel_alone(&self) {
        self.acct.series.cancelled();
        self.acct.ended();
    }

    /// [`finish`](Self::finish) for a task whose handle is gone: its
    /// result is not published (nobody could read it; the caller drops it).
    #[inline(always)]
    pub(crate) fn finish_alone(&self, started: Clock, failure: Option<FailureReason>) {
        self.acct
            .series
            .finished_run(started, Clock::now(), failure);
        self.acct.ended();
    }

    /// Cancels the task if it has not started. True if this call cancelled it.
    pub(crate) fn cancel(&self) -> bool {
        if !self.leave_queue(CANCELLED) {
            return false;
        }
        self.acct.series.cancelled();
        self.publish(0, Err(TaskError::Cancelled));
        true
    }

    /// The executor refused the task when it was handed over: it counts as
    /// rejected, not submitted, and ends without a result (its handle, if
    /// any, is dropped unseen). False if it had left the queue already.
    pub(crate) fn refuse(&self) -> bool {
        if !self.leave_queue(DONE) {
            return false;
        }
        if super::counts_refusal() {
            self.acct.series.rejected();
        }
        self.acct.ended();
        true
    }

    /// Fails a task that never started (the executor cannot run it).
    pub(crate) fn fail_unstarted(&self, error: TaskError, reason: FailureReason) -> bool {
        if !self.leave_queue(DONE) {
            return false;
        }
        self.acct.series.failed_unstarted(reason);
        self.publish(0, Err(error));
        true
    }

    pub(super) fn phase(&self) -> u32 {
        self.state.load(Ordering::Acquire) & PHASE
    }

    /// A node to mark this thread as running this task (see
    /// [`Accounting::running_node`]); the run path enters it over the whole
    /// run, the unrun closure's drop included. By address: a task its
    /// handle cancelled may reach its run after its accounting is gone.
    #[inline]
    pub(crate) fn running_node(&self) -> RunningNode {
        RunningNode::new(self.acct.addr())
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.phase() == CANCELLED
    }

    /// Moves the result out. Only the handle's owner calls it, once, after
    /// seeing `READY` without `TAKEN`.
    pub(super) fn take_result(&self) -> Result<T, TaskError> {
        self.state.fetch_or(TAKEN, Ordering::Relaxed);
        // SAFETY: `READY` was seen with `Acquire`, so the result written
        // before it is visible; nobody else touches the slot after `READY`
        // but the handle's owner (`&mut` or owned handle), and `TAKEN`
        // keeps it from being taken or dropped again.
        let result = unsafe { ManuallyDrop::take(&mut (*self.slot.get()).result) };
        result.map_err(|e| *e)
    }
}

/// Releases a task's `LOCKED` bit if dropped (by an unwinding panic).
struct Unlock<'a>(&'a AtomicU32);

impl Drop for Unlock<'_> {
    fn drop(&mut self) {
        self.0.fetch_and(!LOCKED, Ordering::Release);
    }
}

impl<T, J: ?Sized> Drop for TaskCore<T, J> {
    fn drop(&mut self) {
        let state = self.state.load(Ordering::Acquire);
        let slot = self.slot.get_mut();
        // SAFETY: the flags say which field holds a value, if any.
        unsafe {
            if state & READY != 0 {
                if state & TAKEN == 0 {
                    ManuallyDrop::drop(&mut slot.result);
                }
            } else if state & WAKER != 0 {
                ManuallyDrop::drop(&mut slot.waker);
            }
        }
    }
}

impl<T> TaskCore<T, dyn Help<T>> {
    /// Blocks until `READY`, or until `deadline`; the state word then.
    ///
    /// A task still queued is run here first if this thread runs a task of
    /// the same executor: a wait there could be a wait for this very thread
    /// (the pool's only free worker is the one waiting). Elsewhere, or once
    /// the task has left the queue, this waits as usual.
    pub(super) fn wait_ready(&self, deadline: Option<Instant>) -> u32 {
        let state = self.state.load(Ordering::Acquire);
        if state & READY != 0 {
            return state;
        }
        // The address is compared before anything is read through it: only
        // a thread running one of its tasks keeps the accounting alive.
        if state & (PHASE | CLAIMED) == QUEUED && running_here(self.acct.addr()) {
            self.job.help(self);
        }
        if !cfg!(loom) {
            self.job.wait_here(deadline);
        }
        // A result due within a few microseconds is waited for without
        // sleeping: blocking costs this thread a sleep and the worker a
        // wake-up call, each longer than a short task. Not under loom, where
        // each look would be one more interleaving to explore.
        let backoff = Backoff::new();
        loop {
            let state = self.state.load(Ordering::Acquire);
            if state & READY != 0 {
                return state;
            }
            if cfg!(loom) || backoff.is_completed() {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return state;
            }
            backoff.snooze();
        }
        let mut ended_or_late = || {
            self.state.load(Ordering::Acquire) & READY != 0
                || deadline.is_some_and(|d| Instant::now() >= d)
        };
        if !cfg!(loom) && self.job.spin(&mut ended_or_late) {
            return self.state.load(Ordering::Acquire);
        }
        let signal = self.signal();
        let mut guard = lock(&signal.lock);
        let mut state = self.state.fetch_or(BLOCKED, Ordering::AcqRel) | BLOCKED;
        while state & READY == 0 {
            guard = match deadline {
                None => signal.cv.wait(guard).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    signal
                        .cv
                        .wait_timeout(guard, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            state = self.state.load(Ordering::Acquire);
        }
        state
    }
}

impl<T, J: ?Sized> TaskCore<T, J> {
    /// The handle's `Future::poll`: the result if it is published (or
    /// `AlreadyTaken`), else the waker stored for the end to wake.
    pub(super) fn poll_result(&self, cx: &mut Context<'_>) -> Poll<Result<T, TaskError>> {
        let core = self;
        let state = core.state.load(Ordering::Acquire);
        if state & READY != 0 {
            if state & TAKEN != 0 {
                return Poll::Ready(Err(TaskError::AlreadyTaken));
            }
            return Poll::Ready(core.take_result());
        }
        let locked = core.lock_slot();
        if locked & READY != 0 {
            // Published before the lock was taken: release it and take.
            core.state.fetch_and(!LOCKED, Ordering::Release);
            return Poll::Ready(core.take_result());
        }
        // Cloning the waker runs the runtime's code: should it panic, the
        // lock is released on the way out.
        let unlock_on_unwind = Unlock(&core.state);
        // SAFETY: `LOCKED` is held and the result is not published (the
        // publisher needs the lock); the waker is there iff `WAKER` is set.
        let stale = unsafe {
            let slot = &mut *core.slot.get();
            if locked & WAKER != 0 {
                if slot.waker.will_wake(cx.waker()) {
                    None
                } else {
                    let old = ManuallyDrop::take(&mut slot.waker);
                    slot.waker = ManuallyDrop::new(Box::new(cx.waker().clone()));
                    Some(old)
                }
            } else {
                slot.waker = ManuallyDrop::new(Box::new(cx.waker().clone()));
                None
            }
        };
        // Unlock, marking the waker present.
        std::mem::forget(unlock_on_unwind);
        core.state
            .fetch_xor(LOCKED | (!locked & WAKER), Ordering::Release);
        drop(stale);
        Poll::Pending
    }
}

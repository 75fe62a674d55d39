//! [`TaskHandle`]: join, timeout, cancel and `Future` over one task, and the
//! task state machine that makes every task end exactly once.
//!
//! A task moves `QUEUED -> RUNNING -> DONE`, or `QUEUED -> CANCELLED`, or
//! `QUEUED -> DONE` when it fails without starting. Leaving the queue is one
//! compare-and-swap of the task's state word, so the worker starting a task
//! and a caller cancelling it cannot both win, and the metric of each move is
//! recorded by the one thread that made it. The end publishes the result with
//! one more read-modify-write of that word; only a thread that waits for the
//! result (or an awaited handle's waker) makes it take a lock.
//!
//! A thread that joins a task it would otherwise wait for forever (it runs a
//! task of the same executor, so it may be the worker the queued task needs)
//! takes the task out of the queue itself, with the same compare-and-swap as
//! a worker's start, and runs it ([`Help`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The clock of task timings: a TSC read where the CPU has a stable one
/// (about a third of `std::time::Instant::now`'s cost), the OS clock otherwise.
pub(crate) use crate::clock::Clock;

use crate::error::TaskError;
use crate::metrics::{FailureReason, Series};
use std::cell::UnsafeCell;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;

use crate::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use crate::sync::{Arc, Condvar, Mutex, MutexGuard};
use crossbeam_utils::{Backoff, CachePadded};

/// A task's state word: its phase in the low two bits, and flags.
const QUEUED: u32 = 0;
const RUNNING: u32 = 1;
const DONE: u32 = 2;
const CANCELLED: u32 = 3;
const PHASE: u32 = 3;
/// The result is in the slot (written before this bit is set).
const READY: u32 = 1 << 2;
/// The handle took the result out of the slot.
const TAKEN: u32 = 1 << 3;
/// A thread is moving the waker in or out of the slot.
const LOCKED: u32 = 1 << 4;
/// The slot holds a waker (only before `READY`).
const WAKER: u32 = 1 << 5;
/// A thread blocks (or blocked) in `join` or `wait_timeout`: the end must
/// wake the task's signal. Never cleared.
const BLOCKED: u32 = 1 << 6;
/// The task's closure, kept in its core, has an owner other than a worker
/// that starts it: a joiner that took the task out of the queue to run it
/// (set with the move to `RUNNING`), or the executor's task about to drop
/// it unrun (set while queued; a joiner then leaves the task alone). Never
/// cleared: whoever set it first has the closure.
const CLAIMED: u32 = 1 << 7;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here only move an `Option` in or out: a panic cannot
    // leave them half done, so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `ended` word of [`Accounting`]: the ended count in the high 40 bits
/// (wrapping: compared with the admitted count modulo 2^40), a flag set while
/// a thread waits for idleness, and in the low 23 bits the threads in
/// [`Accounting::ended`] that saw the flag and may still read the accounting.
const ONE_ENDED: u64 = 1 << 24;
const WAITING: u64 = 1 << 23;
const BUSY: u64 = 1;
const BUSY_MASK: u64 = WAITING - 1;
const COUNT_MASK: u64 = (1 << 40) - 1;

fn ended_count(word: u64) -> u64 {
    word >> 24
}

/// How many `ended` words an [`Accounting`] has: each thread that ends
/// tasks counts on one of them (its stripe), so two workers ending tasks
/// at once do not move one cache line back and forth.
#[cfg(not(loom))]
const STRIPES: usize = 8;
#[cfg(loom)]
const STRIPES: usize = 2;

/// The calling thread's stripe: threads take them in turn, the first time
/// they end a task.
#[cfg(not(loom))]
fn stripe() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    // During the thread's teardown: any stripe is correct, just shared.
    STRIPE.try_with(|s| *s).unwrap_or(0)
}

#[cfg(loom)]
fn stripe() -> usize {
    loom::lazy_static! {
        static ref NEXT: loom::sync::atomic::AtomicUsize = loom::sync::atomic::AtomicUsize::new(0);
    }
    loom::thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

#[cfg(not(loom))]
thread_local! {
    /// The innermost task this thread is running, the head of a list of
    /// [`RunningNode`]s through the run paths' stack frames, innermost
    /// first (a task can run another inline). A `Cell` of a pointer: no
    /// destructor to register and no borrow flag, so entering and leaving a
    /// task are two loads and three stores.
    static INNERMOST_TASK: std::cell::Cell<*const RunningNode> =
        const { std::cell::Cell::new(std::ptr::null()) };
}

/// One task this thread is running, in the list headed by `INNERMOST_TASK`: lives
/// in the run path's stack frame, entered with [`RunningNode::enter`] for as
/// long as the task runs.
pub(crate) struct RunningNode {
    #[cfg(not(loom))]
    acct: *const Accounting,
    #[cfg(not(loom))]
    outer: std::cell::Cell<*const RunningNode>,
}

impl RunningNode {
    #[inline]
    fn new(acct: *const Accounting) -> RunningNode {
        #[cfg(loom)]
        let _ = acct;
        RunningNode {
            #[cfg(not(loom))]
            acct,
            #[cfg(not(loom))]
            outer: std::cell::Cell::new(std::ptr::null()),
        }
    }

    /// Marks this thread as running a task of `acct` while the returned
    /// guard lives. The guard borrows the node, so the node cannot move or
    /// be dropped while the list points at it.
    #[inline]
    pub(crate) fn enter(&self) -> RunningHere<'_> {
        #[cfg(not(loom))]
        let _ = INNERMOST_TASK.try_with(|head| self.outer.set(head.replace(self)));
        RunningHere { node: self }
    }
}

/// While alive, this thread counts as running a task of one accounting.
pub(crate) struct RunningHere<'a> {
    #[cfg_attr(loom, allow(dead_code))]
    node: &'a RunningNode,
}

impl Drop for RunningHere<'_> {
    #[inline]
    fn drop(&mut self) {
        // Guards drop innermost first (each lives in its own run path's
        // frame), so this node is the head again.
        #[cfg(not(loom))]
        let _ = INNERMOST_TASK.try_with(|head| head.set(self.node.outer.get()));
    }
}

/// Where `wait_idle` and a task's `join` sleep, and what an end that they
/// wait for wakes: one of a few process-wide pairs, chosen by the address
/// of the accounting or task waited for. Static, so the task that ends last
/// never touches its accounting after the add that made it idle (the
/// waiter may then return and its owner free the accounting at once), and a
/// task needs no mutex and condvar of its own; a pair shared by two waits
/// only costs a spurious wake-up.
struct WaitSignal {
    lock: Mutex<()>,
    cv: Condvar,
}

#[cfg(not(loom))]
const WAIT_SIGNALS: usize = 16;

#[cfg(not(loom))]
fn wait_signal(addr: usize) -> &'static WaitSignal {
    #[allow(clippy::declare_interior_mutable_const)]
    const NEW: WaitSignal = WaitSignal {
        lock: Mutex::new(()),
        cv: Condvar::new(),
    };
    static SIGNALS: [WaitSignal; WAIT_SIGNALS] = [NEW; WAIT_SIGNALS];
    &SIGNALS[(addr >> 7) % WAIT_SIGNALS]
}

#[cfg(loom)]
fn wait_signal(_addr: usize) -> &'static WaitSignal {
    // Loom's primitives must be created inside each model run.
    loom::lazy_static! {
        static ref SIGNAL: WaitSignal = WaitSignal {
            lock: Mutex::new(()),
            cv: Condvar::new(),
        };
    }
    &SIGNAL
}

/// Bookkeeping shared by every task of one instrumented executor: its series,
/// how many tasks it admitted and how many ended, and the shutdown flags.
///
/// Its owners (the executor) hold it in an `Arc`; its tasks do not take a
/// reference each (a shared count changed by every submit and every task
/// end is a cache line moving between cores twice per task). A task holds
/// a plain pointer ([`AcctRef`]) instead, valid while the task is in flight:
/// dropping the last owner waits until every admitted task has ended and
/// no thread in [`ended`](Accounting::ended) may still read it.
///
/// Submitters and task ends count on separate cache lines, so a submit
/// does not wait for the line the workers last wrote; the ends are counted
/// on [`STRIPES`] lines, one per thread (see [`stripe`]), summed when read.
/// The executor is idle when the two counts are equal: read the ends first,
/// then `admitted` (both only grow, and a task ends after it is admitted, so
/// equal values mean they were equal when the last stripe was read).
#[derive(Debug)]
pub(crate) struct Accounting {
    pub(crate) series: Arc<Series>,
    /// Tasks admitted; written by submitting threads only.
    admitted: CachePadded<AtomicU64>,
    /// Per stripe: tasks ended, the waiting flag (set on every stripe) and
    /// the threads in `ended` that may still read the accounting (see
    /// [`ONE_ENDED`]); written by the threads that end tasks, each on its
    /// own stripe.
    ended: [CachePadded<AtomicU64>; STRIPES],
    closed: AtomicBool,
    cancel_pending: AtomicBool,
    /// Threads in `wait_idle`; the `WAITING` flag is set while it is not 0.
    waiters: Mutex<usize>,
}

impl Accounting {
    pub(crate) fn new(series: Arc<Series>) -> Accounting {
        Accounting {
            series,
            admitted: CachePadded::new(AtomicU64::new(0)),
            ended: std::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))),
            closed: AtomicBool::new(false),
            cancel_pending: AtomicBool::new(false),
            waiters: Mutex::new(0),
        }
    }

    fn signal(&self) -> &'static WaitSignal {
        wait_signal(self as *const Accounting as usize)
    }

    /// Reserves a place for a task about to be submitted; `false` once closed.
    pub(crate) fn admit(&self) -> bool {
        self.admitted.fetch_add(1, Ordering::SeqCst);
        crate::sync::seqcst_pair();
        if self.closed.load(Ordering::SeqCst) {
            self.ended();
            return false;
        }
        true
    }

    /// One admitted task ended (finished, cancelled, failed or rejected).
    ///
    /// When nobody waits for idleness, a load and one atomic add. When
    /// somebody does, the thread counts itself in while it may still read
    /// `self` (to see whether this end made the executor idle), and counts
    /// itself out with its last access.
    pub(crate) fn ended(&self) {
        let signal = self.signal();
        let stripe = &self.ended[stripe()];
        // Nobody waits (the usual case): count the end with one atomic add,
        // and never read `self` again: this end may leave the executor idle,
        // and its owner may then free it. A waiter that sets its flag after
        // the add sees this end when it checks for idleness.
        if stripe.load(Ordering::SeqCst) & WAITING == 0 {
            let before = stripe.fetch_add(ONE_ENDED, Ordering::SeqCst);
            if before & WAITING != 0 {
                // A waiter set its flag between the load and the add, and
                // may have found the executor busy before this end: wake it
                // (the signal is static; a wake it did not need is spurious).
                let _guard = lock(&signal.lock);
                signal.cv.notify_all();
            }
            return;
        }
        let before = stripe.fetch_add(ONE_ENDED + BUSY, Ordering::SeqCst);
        crate::sync::seqcst_pair();
        // Of two ends on different stripes, the later one (in the single
        // order of `SeqCst` operations) reads the earlier one's count here.
        let wake = before & WAITING != 0 && self.is_idle();
        stripe.fetch_sub(BUSY, Ordering::SeqCst);
        if wake {
            let _guard = lock(&signal.lock);
            signal.cv.notify_all();
        }
    }

    fn is_idle(&self) -> bool {
        self.in_flight() == 0
    }

    /// Blocks until every admitted task has ended.
    ///
    /// An end that leaves the executor idle wakes the waiters; if tasks are
    /// admitted between that end and its check, the executor is not idle
    /// any more and a later end wakes them.
    pub(crate) fn wait_idle(&self) {
        let signal = self.signal();
        {
            let mut waiters = lock(&self.waiters);
            *waiters += 1;
            if *waiters == 1 {
                for stripe in &self.ended {
                    stripe.fetch_or(WAITING, Ordering::SeqCst);
                }
            }
        }
        crate::sync::seqcst_pair();
        let mut guard = lock(&signal.lock);
        while !self.is_idle() {
            guard = signal.cv.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        drop(guard);
        let mut waiters = lock(&self.waiters);
        *waiters -= 1;
        if *waiters == 0 {
            for stripe in &self.ended {
                stripe.fetch_and(!WAITING, Ordering::SeqCst);
            }
        }
    }

    /// A node to mark this thread as running one of this accounting's tasks
    /// ([`RunningNode::enter`]).
    #[inline]
    pub(crate) fn running_node(&self) -> RunningNode {
        RunningNode::new(self)
    }

    /// True on a thread inside one of this accounting's tasks (however
    /// deeply nested in tasks of other executors run inline): waiting there
    /// for the tasks to end would wait for that one forever. Always false
    /// under loom.
    pub(crate) fn is_running_here(&self) -> bool {
        running_here(self)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// From now on, tasks that have not started are cancelled when an executor
    /// picks them up instead of running.
    pub(crate) fn cancel_pending(&self) {
        self.cancel_pending.store(true, Ordering::SeqCst);
    }

    /// True once [`cancel_pending`](Self::cancel_pending) was called: a task
    /// that has not started must not start.
    pub(crate) fn cancelling_pending(&self) -> bool {
        self.cancel_pending.load(Ordering::SeqCst)
    }

    /// Admitted tasks that have not ended.
    pub(crate) fn in_flight(&self) -> usize {
        let ended = self.ended.iter().fold(0u64, |sum, stripe| {
            sum.wrapping_add(ended_count(stripe.load(Ordering::SeqCst)))
        });
        let admitted = self.admitted.load(Ordering::SeqCst);
        // Below 2^40: fits a usize on 64-bit targets; elsewhere a count that
        // large cannot be held in memory anyway.
        (admitted.wrapping_sub(ended) & COUNT_MASK) as usize
    }
}

/// [`Accounting::is_running_here`] by address: `acct` is only compared,
/// never read, so it may be an accounting that is gone (a task that ended
/// no longer keeps it alive), which no thread then runs a task of.
#[inline]
fn running_here(acct: *const Accounting) -> bool {
    #[cfg(not(loom))]
    return INNERMOST_TASK
        .try_with(|head| {
            let mut node = head.get();
            while !node.is_null() {
                // SAFETY: every node in the list is entered, so its guard,
                // which borrows it, is alive in a frame of this thread below
                // this one (see `RunningNode::enter`).
                let n = unsafe { &*node };
                if std::ptr::eq(n.acct, acct) {
                    return true;
                }
                node = n.outer.get();
            }
            false
        })
        .unwrap_or(false);
    #[cfg(loom)]
    {
        let _ = acct;
        false
    }
}

impl Drop for Accounting {
    /// Runs when the last owner lets go: tasks still in flight point here,
    /// so wait for them (an executor's own shutdown has normally done so),
    /// then for the threads in `ended` that may still read it (a few
    /// instructions each; nothing can be admitted any more). A thread whose
    /// end found nobody waiting does not read it after its add, and may
    /// still be waking the static signal: that is not the accounting.
    fn drop(&mut self) {
        self.wait_idle();
        for stripe in &self.ended {
            while stripe.load(Ordering::SeqCst) & BUSY_MASK != 0 {
                crate::sync::yield_now();
            }
        }
    }
}

/// A task's pointer to its executor's [`Accounting`], without a reference
/// count: valid from the task's admission (its unit of the in-flight count)
/// to its [`Accounting::ended`], which is the task's last use of it.
#[derive(Clone, Copy)]
pub(crate) struct AcctRef(NonNull<Accounting>);

// SAFETY: it is used as a `&Accounting`, and `Accounting` is `Sync`.
unsafe impl Send for AcctRef {}
// SAFETY: as above.
unsafe impl Sync for AcctRef {}

impl AcctRef {
    /// For a task `acct` has admitted ([`Accounting::admit`] returned true).
    pub(crate) fn new(acct: &Arc<Accounting>) -> AcctRef {
        AcctRef(NonNull::from(&**acct))
    }

    /// The address, valid or not: for comparisons only.
    fn addr(self) -> *const Accounting {
        self.0.as_ptr()
    }
}

impl std::ops::Deref for AcctRef {
    type Target = Accounting;

    fn deref(&self) -> &Accounting {
        // SAFETY: the accounting lives until its in-flight count is zero
        // (`Accounting::drop` waits for it), and the task this pointer
        // belongs to holds a unit of that count until `ended`, after which
        // it does not use the pointer (`publish` calls it last).
        unsafe { self.0.as_ref() }
    }
}

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
}

/// A task with nothing in its core to run (the process pool's): its joiner
/// waits.
impl<T> Help<T> for () {
    fn help(&self, _core: &TaskCore<T, dyn Help<T>>) -> bool {
        false
    }
}

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

    /// Moves the task to running and records its wait. `None` when it was
    /// cancelled (or a `shutdown_now` cancels it now): it must not run.
    pub(crate) fn start(&self) -> Option<Clock> {
        self.start_or_cancel(|| {})
    }

    /// [`start`](Self::start), calling `before_cancel` before a task that
    /// a `shutdown_now` cancels here ends (the proxy drops the closure
    /// there, so that `join` returns after it is gone).
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
    #[inline(always)]
    pub(crate) fn begin(&self, before_cancel: impl FnOnce()) -> Option<Clock> {
        if self.acct.cancelling_pending() {
            before_cancel();
            self.acct.series.cancelled();
            self.publish(RUNNING ^ CANCELLED, Err(TaskError::Cancelled));
            return None;
        }
        let now = Clock::now();
        self.acct.series.started(now.nanos_since(self.submitted_at));
        Some(now)
    }

    /// Ends a started task with its result.
    pub(crate) fn finish(
        &self,
        started: Clock,
        result: Result<T, TaskError>,
        failure: Option<FailureReason>,
    ) {
        self.acct
            .series
            .finished(Clock::now().nanos_since(started), failure);
        self.publish(RUNNING ^ DONE, result);
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
        self.acct.series.rejected();
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

    fn phase(&self) -> u32 {
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
    fn take_result(&self) -> Result<T, TaskError> {
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

/// Where a task is in its life, as seen by [`TaskHandle::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskState {
    /// Accepted, not started.
    Pending,
    /// Started, not finished.
    Running,
    /// Finished, with a value or an error.
    Finished,
    /// Cancelled before it started; it never ran.
    Cancelled,
}

/// The submitter's side of one task: wait for its result, cancel it, or
/// `.await` it.
///
/// Dropping the handle does not cancel the task; it runs and is counted as
/// usual, and its result is discarded.
///
/// ```
/// use executor_exporter::ThreadPoolExecutor;
///
/// let pool = ThreadPoolExecutor::builder()
///     .max_workers(2)
///     .registry(prometheus::Registry::new())
///     .build()
///     .unwrap();
/// let handle = pool.submit(|| 6 * 7).unwrap();
/// assert_eq!(handle.join(), Ok(42));
/// ```
pub struct TaskHandle<T> {
    core: Arc<TaskCore<T, dyn Help<T>>>,
}

impl<T> TaskCore<T, dyn Help<T>> {
    /// Blocks until `READY`, or until `deadline`; the state word then.
    ///
    /// A task still queued is run here first if this thread runs a task of
    /// the same executor: a wait there could be a wait for this very thread
    /// (the pool's only free worker is the one waiting). Elsewhere, or once
    /// the task has left the queue, this waits as usual.
    fn wait_ready(&self, deadline: Option<Instant>) -> u32 {
        let state = self.state.load(Ordering::Acquire);
        if state & READY != 0 {
            return state;
        }
        // The address is compared before anything is read through it: only
        // a thread running one of its tasks keeps the accounting alive.
        if state & (PHASE | CLAIMED) == QUEUED && running_here(self.acct.addr()) {
            self.job.help(self);
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

impl<T> fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("state", &self.state())
            .finish()
    }
}

impl<T> TaskHandle<T> {
    pub(crate) fn new<J: Help<T> + 'static>(core: Arc<TaskCore<T, J>>) -> TaskHandle<T> {
        TaskHandle { core }
    }

    /// Runs the task on this thread if this call takes it out of the queue,
    /// whatever thread this is (the loom models' joiner, which no task marks
    /// as a worker).
    #[cfg(all(test, loom))]
    pub(crate) fn help(&self) -> bool {
        self.core.job.help(&self.core)
    }

    /// Waits for the task and returns its value, or why there is none
    /// ([`TaskError::AlreadyTaken`] if the handle, polled as a future, has
    /// returned it already).
    ///
    /// Called inside a task of the same executor (on one of its workers,
    /// say) for a task that has not started, it runs that task on this
    /// thread instead of waiting: on a pool whose workers are all busy,
    /// waiting there for a worker to start it could wait forever. The task
    /// is taken out of the queue (no worker runs it later) and counted like
    /// any task, its wait ending now. Tasks it submits and joins in turn
    /// run the same way. Elsewhere `join` waits, and so it does for a task
    /// that has started, and for tasks of a process pool.
    ///
    /// ```
    /// use executor_exporter::ThreadPoolExecutor;
    /// use std::sync::Arc;
    ///
    /// let pool = Arc::new(
    ///     ThreadPoolExecutor::builder()
    ///         .max_workers(1)
    ///         .registry(prometheus::Registry::new())
    ///         .build()
    ///         .unwrap(),
    /// );
    /// let p = pool.clone();
    /// // The only worker runs the outer task, and its `join` runs the inner one.
    /// let outer = pool.submit(move || p.submit(|| 6 * 7).unwrap().join()).unwrap();
    /// assert_eq!(outer.join(), Ok(Ok(42)));
    /// ```
    pub fn join(self) -> Result<T, TaskError> {
        if self.core.wait_ready(None) & TAKEN != 0 {
            return Err(TaskError::AlreadyTaken);
        }
        self.core.take_result()
    }

    /// Waits up to `timeout` for the task to end; true if it has ended.
    /// Can be called any number of times.
    ///
    /// Inside a task of the same executor, a task that has not started runs
    /// on this thread first, as with [`join`](Self::join), however long it
    /// takes: the timeout bounds only a wait for another thread's run.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        // A timeout too large for an `Instant` waits without a deadline.
        let deadline = Instant::now().checked_add(timeout);
        self.core.wait_ready(deadline) & READY != 0
    }

    /// Waits up to `timeout` and returns the task's value, or
    /// [`TaskError::TimedOut`] if it has not ended by then: the task goes on
    /// and the handle stays usable, to wait again or [`join`](Self::join).
    /// Once the value was returned, later calls give
    /// [`TaskError::AlreadyTaken`].
    ///
    /// Inside a task of the same executor, a task that has not started runs
    /// on this thread first, as with [`join`](Self::join), however long it
    /// takes: the timeout bounds only a wait for another thread's run.
    ///
    /// ```
    /// use executor_exporter::{TaskError, ThreadPoolExecutor};
    /// use std::time::Duration;
    ///
    /// let pool = ThreadPoolExecutor::builder()
    ///     .max_workers(1)
    ///     .registry(prometheus::Registry::new())
    ///     .build()
    ///     .unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel::<()>();
    /// let mut handle = pool.submit(move || rx.recv().map(|()| 42)).unwrap();
    /// assert_eq!(handle.join_timeout(Duration::ZERO), Err(TaskError::TimedOut));
    /// tx.send(()).unwrap();
    /// assert_eq!(handle.join_timeout(Duration::from_secs(60)), Ok(Ok(42)));
    /// assert_eq!(handle.join_timeout(Duration::ZERO), Err(TaskError::AlreadyTaken));
    /// ```
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<T, TaskError> {
        // A timeout too large for an `Instant` waits without a deadline.
        let deadline = Instant::now().checked_add(timeout);
        let state = self.core.wait_ready(deadline);
        if state & READY == 0 {
            return Err(TaskError::TimedOut);
        }
        if state & TAKEN != 0 {
            return Err(TaskError::AlreadyTaken);
        }
        self.core.take_result()
    }

    /// Cancels the task if it has not started: it then never runs, its
    /// `join` gives [`TaskError::Cancelled`] and it is counted as cancelled.
    /// True if the task is cancelled (now or before); false if it has
    /// started or finished.
    pub fn cancel(&self) -> bool {
        self.core.cancel() || self.core.phase() == CANCELLED
    }

    /// True once the task has ended (finished or cancelled).
    pub fn is_finished(&self) -> bool {
        matches!(self.core.phase(), DONE | CANCELLED)
    }

    /// Where the task is in its life.
    pub fn state(&self) -> TaskState {
        match self.core.phase() {
            QUEUED => TaskState::Pending,
            RUNNING => TaskState::Running,
            CANCELLED => TaskState::Cancelled,
            _ => TaskState::Finished,
        }
    }
}

/// Resolves to the task's result, like [`TaskHandle::join`], without blocking
/// a thread and without depending on any async runtime (nor running the task
/// itself). Polled again after it resolved, it resolves to
/// [`TaskError::AlreadyTaken`].
impl<T> Future for TaskHandle<T> {
    type Output = Result<T, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let core = &self.core;
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

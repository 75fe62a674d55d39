//! [`Accounting`]: what one instrumented executor admitted and ended, its
//! shutdown flags, and the series its tasks record into.

use std::ptr::NonNull;

use crossbeam_utils::CachePadded;

use super::running::{running_here, RunningNode};
use super::signal::{lock, wait_signal, WaitSignal};
use crate::clock::Clock;
use crate::metrics::Series;
use crate::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use crate::sync::{Arc, Mutex};

/// The `ended` word of [`Accounting`]: the ended count in the high 40 bits
/// (wrapping: compared with the admitted count modulo 2^40), a flag set while
/// a thread waits for idleness, and in the low 23 bits the threads in
/// [`Accounting::ended`] that saw the flag and may still read the accounting.
const ONE_ENDED: u64 = 1 << 24;
const WAITING: u64 = 1 << 23;
const BUSY: u64 = 1;
const BUSY_MASK: u64 = WAITING - 1;
const COUNT_MASK: u64 = (1 << 40) - 1;

/// The flags of [`Accounting::admit_flags`]: closed, no task is admitted.
pub(crate) const CLOSED: u32 = 1;
/// Its tasks carry exemplar labels, taken at submit.
pub(crate) const EXEMPLARS: u32 = 2;

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
    /// [`CLOSED`] once closed; [`EXEMPLARS`] when its tasks carry exemplar
    /// labels.
    flags: AtomicU32,
    cancel_pending: AtomicBool,
    /// Threads in `wait_idle`; the `WAITING` flag is set while it is not 0.
    waiters: Mutex<usize>,
}

impl Accounting {
    /// The accounting of an executor whose submits ask for exemplar labels
    /// (see [`admit_flags`](Self::admit_flags)).
    pub(crate) fn with_exemplars(self) -> Accounting {
        self.flags.fetch_or(EXEMPLARS, Ordering::Relaxed);
        self
    }

    pub(crate) fn new(series: Arc<Series>) -> Accounting {
        Accounting {
            series,
            admitted: CachePadded::new(AtomicU64::new(0)),
            ended: std::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))),
            flags: AtomicU32::new(0),
            cancel_pending: AtomicBool::new(false),
            waiters: Mutex::new(0),
        }
    }

    /// This accounting's address, the key of the running-here list.
    fn addr(&self) -> *const () {
        (self as *const Accounting).cast()
    }

    fn signal(&self) -> &'static WaitSignal {
        wait_signal(self as *const Accounting as usize)
    }

    /// Reserves a place for a task about to be submitted; `false` once closed.
    pub(crate) fn admit(&self) -> bool {
        if self.admit_flags() & CLOSED != 0 {
            self.ended();
            return false;
        }
        true
    }

    /// Reserves a place for a task about to be submitted, and returns the
    /// flags: 0 (the usual case) admits it; with [`CLOSED`] it is not
    /// admitted and the caller gives the place back ([`ended`](Self::ended));
    /// with [`EXEMPLARS`] alone it is admitted, and carries exemplar labels.
    /// Both are in the word the admission reads anyway, so a submit without
    /// exemplars tests one word against zero, as it tested `closed`.
    #[inline]
    pub(crate) fn admit_flags(&self) -> u32 {
        self.admitted.fetch_add(1, Ordering::SeqCst);
        crate::sync::seqcst_pair();
        self.flags.load(Ordering::SeqCst)
    }

    /// The submit sequence, the same for every front-end: [`admit`](Self::admit);
    /// if that fails, [`refused_unadmitted`](Self::refused_unadmitted);
    /// otherwise the task is handed to its executor, and then either
    /// [`accepted`](Self::accepted), or refused (the task's
    /// [`TaskCore::refuse`](super::TaskCore::refuse) or
    /// [`Ticket::refuse`](super::Ticket::refuse), or
    /// [`refused`](Self::refused) when no task was made).
    ///
    /// A submit [`admit`](Self::admit) turned away (closed): counted as
    /// rejected; it holds no unit of the in-flight count.
    #[cold]
    pub(crate) fn refused_unadmitted(&self) {
        self.series.rejected();
    }

    /// An admitted submit refused before its task was handed to the
    /// executor (an input that cannot be encoded, say): counted as
    /// rejected, and its unit of the in-flight count is given back.
    #[cold]
    pub(crate) fn refused(&self) {
        if super::counts_refusal() {
            self.series.rejected();
        }
        self.ended();
    }

    /// The executor took an admitted task: it counts as submitted, and as
    /// queued until it starts, is cancelled or fails without starting.
    ///
    /// Called once the hand-over has returned, so a worker may start the
    /// task first: a scrape in between sees the start and not the submit,
    /// and `queued_tasks` is clamped at zero.
    #[inline]
    pub(crate) fn accepted(&self, submitted_at: Clock) {
        self.series.accepted(submitted_at);
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
        RunningNode::new(self.addr())
    }

    /// True on a thread inside one of this accounting's tasks (however
    /// deeply nested in tasks of other executors run inline): waiting there
    /// for the tasks to end would wait for that one forever. Always false
    /// under loom.
    pub(crate) fn is_running_here(&self) -> bool {
        running_here(self.addr())
    }

    pub(crate) fn close(&self) {
        self.flags.fetch_or(CLOSED, Ordering::SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.flags.load(Ordering::SeqCst) & CLOSED != 0
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

    /// Starts a task submitted at `submitted_at` on this thread and records
    /// its wait; `None` when a `shutdown_now` cancels it instead (it must not
    /// run).
    #[inline(always)]
    pub(crate) fn start_run(&self, submitted_at: Clock) -> Option<Clock> {
        if self.cancelling_pending() {
            return None;
        }
        Some(self.series.started_run(submitted_at, Clock::now()))
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
    pub(super) fn addr(self) -> *const () {
        self.0.as_ptr().cast_const().cast()
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

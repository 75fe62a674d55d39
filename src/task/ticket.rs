//! [`Ticket`]: the life of a task submitted without a handle (fire and
//! forget). The same moves as [`TaskCore`](super::TaskCore)'s, recorded the
//! same way, with no state word and no allocation: whoever holds the ticket
//! makes its one move.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::accounting::{Accounting, AcctRef};
use super::running::RunningNode;
use crate::clock::Clock;
use crate::error::FailureReason;
use crate::metrics::Series;
use crate::sync::Arc;

/// An admitted task without a handle: its executor's accounting and its
/// submit time. Moved into the run path, which ends it once.
pub(crate) struct Ticket {
    /// Valid until this task's [`Accounting::ended`]: the task holds a unit
    /// of the in-flight count until then.
    acct: AcctRef,
    submitted_at: Clock,
}

/// Which admitted task a task is, to find it again when an executor hands
/// back another task in its place (see `Task`'s rescue in `executor.rs`).
/// A task with a handle is its shared state's address, unique while the
/// task lives. A task without one (spawned, or given through `execute`) is
/// the executor that admitted it and when; two such tasks of one executor
/// read the same clock tick only where the clock is coarse, and the rescue
/// then also compares their bodies' types.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct TaskKey {
    at: usize,
    submitted_at: u64,
}

impl TaskKey {
    /// The key of the task whose shared state is at `core`.
    pub(crate) fn of_core<C: ?Sized>(core: *const C) -> TaskKey {
        TaskKey {
            at: core.cast::<()>() as usize,
            submitted_at: 0,
        }
    }

    /// The key of the task without a handle `acct` admitted at `submitted_at`.
    pub(crate) fn of_ticket(acct: &Accounting, submitted_at: Clock) -> TaskKey {
        TaskKey {
            at: acct as *const Accounting as usize,
            submitted_at: submitted_at.raw(),
        }
    }
}

impl Ticket {
    /// This task's key. Read through the accounting's address only: a task
    /// dropped long after its executor may hold a dangling one.
    pub(crate) fn key(&self) -> TaskKey {
        TaskKey {
            at: AcctRef::addr(self.acct) as usize,
            submitted_at: self.submitted_at.raw(),
        }
    }

    /// For a task `acct` has admitted ([`Accounting::admit`] returned true).
    #[inline]
    pub(crate) fn new(acct: &Arc<Accounting>) -> Ticket {
        Ticket {
            acct: AcctRef::new(acct),
            submitted_at: Clock::now(),
        }
    }

    /// [`new`](Self::new) with the submit time given, as two submits that
    /// read the same tick of a coarse clock get.
    #[cfg(test)]
    pub(crate) fn at(acct: &Arc<Accounting>, submitted_at: Clock) -> Ticket {
        Ticket {
            acct: AcctRef::new(acct),
            submitted_at,
        }
    }

    /// When the task was submitted.
    #[inline]
    pub(crate) fn submitted_at(&self) -> Clock {
        self.submitted_at
    }

    /// A node to mark this thread as running the task while it runs, or
    /// while its closure is dropped unrun ([`RunningNode::enter`]).
    #[inline]
    pub(crate) fn running_node(&self) -> RunningNode {
        self.acct.running_node()
    }

    /// Starts the task on this thread, which runs it until
    /// [`finish`](Self::finish), and records its wait. `None` when a `shutdown_now`
    /// cancels it instead: it must not run (end it with
    /// [`cancel_on_drop`](Self::cancel_on_drop)).
    #[inline]
    pub(crate) fn start(&self) -> Option<Clock> {
        self.acct.start_run(self.submitted_at)
    }

    /// The started task ended (`failure`: why it failed, if it did).
    #[inline]
    pub(crate) fn finish(self, started: Clock, failure: Option<FailureReason>) {
        self.acct
            .series
            .finished_run(started, Clock::now(), failure);
        self.acct.ended();
    }

    /// Runs the task's body `f` on this thread, and ends the task: counted
    /// as completed, or as failed with reason `panic` if `f` panics (the
    /// panic hook has printed the message, and nobody holds a handle to
    /// read it). A task cancelled by `shutdown_now` before it starts is
    /// dropped unrun instead, counted as cancelled. `body_done` is called
    /// once `f` has returned or was dropped, before the task ends (see
    /// `Runnable::run`).
    #[inline]
    pub(crate) fn run<F: FnOnce()>(self, f: F, body_done: &dyn Fn()) {
        // The body, or its captures when it is dropped unrun, may drop the
        // last handle of this executor: see `InstrumentedExecutorProxy::drop`.
        let running = self.running_node();
        let _running = running.enter();
        let Some(started) = self.start() else {
            let end = self.cancel_on_drop();
            drop_quietly(f);
            body_done();
            return drop(end);
        };
        let outcome = catch_unwind(AssertUnwindSafe(f));
        body_done();
        let failure = outcome.is_err().then_some(FailureReason::Panic);
        if let Err(payload) = outcome {
            drop_quietly(payload);
        }
        self.finish(started, failure);
    }

    /// The executor refused the task: counted as rejected.
    pub(crate) fn refuse(self) {
        if super::counts_refusal() {
            self.acct.series.rejected();
        }
        self.acct.ended();
    }

    /// Ends the unrun task as cancelled when the returned guard drops: drop
    /// the closure first, so `join` returns only once its captures are gone,
    /// and even a closure whose drop panics is counted.
    pub(crate) fn cancel_on_drop(self) -> impl Drop {
        self.end_on_drop(Series::cancelled)
    }

    /// Ends the unrun task as failed (reason `broken`: its executor cannot
    /// run anything) when the returned guard drops, as
    /// [`cancel_on_drop`](Self::cancel_on_drop) does.
    pub(crate) fn fail_broken_on_drop(self) -> impl Drop {
        self.end_on_drop(|series| series.failed_unstarted(FailureReason::Broken))
    }

    fn end_on_drop(self, count: fn(&Series)) -> impl Drop {
        struct End(AcctRef, fn(&Series));
        impl Drop for End {
            fn drop(&mut self) {
                (self.1)(&self.0.series);
                self.0.ended();
            }
        }
        End(self.acct, count)
    }
}

/// Drops `value`, catching a panic of its `Drop` (a panic payload's, or a
/// closure's that is not run): it must not escape into the worker.
pub(crate) fn drop_quietly<X>(value: X) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(value)));
}

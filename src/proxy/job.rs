//! What the proxy hands its executor for each task: the task's body, how
//! its value is classified, and the wrappers that run it, refuse it or drop
//! it unrun, each ending the task through `task/` exactly once.

use std::any::Any;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::clock::Clock;
use crate::error::FailureReason;
use crate::error::{panic_message, TaskError};
use crate::executor::{sealed, Body, Once, Runnable, Task};
use crate::task::{drop_quietly, Accounting, Help, TaskCore, TaskKey, Ticket};

/// Decides whether a task's value counts as a failure (`reason="error"`).
/// `Copy`: a task with exemplar labels classifies its value for them too.
pub(crate) trait Classify<T>: Copy + Send + Sync + 'static {
    fn failed(&self, value: &T) -> bool;
}

/// What `map` keeps: a classifier chosen at run time.
pub(crate) type ClassifyFn<T> = fn(&T) -> bool;

impl<T: 'static> Classify<T> for ClassifyFn<T> {
    fn failed(&self, value: &T) -> bool {
        self(value)
    }
}

/// `submit`: no value is a failure. A zero-sized type, so a task does not
/// carry a classifier.
#[derive(Clone, Copy)]
pub(super) struct NeverFails;

impl<T: 'static> Classify<T> for NeverFails {
    fn failed(&self, _: &T) -> bool {
        false
    }
}

/// `submit_fallible`: an `Err` is a failure.
#[derive(Clone, Copy)]
pub(super) struct ErrFails;

impl<T: 'static, E: 'static> Classify<Result<T, E>> for ErrFails {
    fn failed(&self, value: &Result<T, E>) -> bool {
        value.is_err()
    }
}

pub(super) fn never_failed<T>(_: &T) -> bool {
    false
}

pub(super) fn is_err<T, E>(result: &Result<T, E>) -> bool {
    result.is_err()
}

/// The closure of one submitted task and how its value is classified,
/// stored inside its [`TaskCore`] so that a submit allocates once. The
/// closure has one owner, decided by the task's state word: the [`Task`]
/// handed to the executor (see [`Runnable`]), unless a thread joining the
/// task's handle takes the task out of the queue first ([`Help`]), in which
/// case that thread runs it and the `Task` finds it gone. Dropping the
/// `Task` without running it cancels the task, so no task can vanish from
/// the counts.
pub(super) struct Job<F, C> {
    f: Once<F>,
    classify: C,
}

impl<F, C> Job<F, C> {
    pub(super) fn new(f: F, classify: C) -> Job<F, C> {
        Job {
            f: Once::new(f),
            classify,
        }
    }
}

pub(super) type JobCore<F, T, C> = TaskCore<T, Job<F, C>>;

impl<F, C> Job<F, C> {
    /// Takes the closure out.
    ///
    /// # Safety
    ///
    /// Called once, by the closure's owner: the thread whose move of the
    /// task out of the queue succeeded (a worker's start, a joiner's
    /// [`TaskCore::claim_to_run`], the `Task`'s
    /// [`TaskCore::claim_to_drop`]), or the `Task` after its handle
    /// cancelled it, which no joiner claims.
    unsafe fn take_f(&self) -> F {
        // SAFETY: the caller is the closure's one owner, once.
        unsafe { self.f.take() }
    }

    /// Runs the body of a task that `core` (the core this job is in) has
    /// started, and ends it with the body's value or panic. `body_done` as
    /// in [`Runnable::run`]; `alone` tells, once the body has returned,
    /// whether the task's handle is gone (its result then has no reader,
    /// and is dropped here instead of published). Inlined into each of its
    /// two callers (a worker's run, a joiner's): called out of line, the
    /// worker's run took about 15 instructions more per task.
    #[inline(always)]
    fn run_started<T, J: ?Sized>(
        &self,
        core: &TaskCore<T, J>,
        started: Clock,
        f: F,
        body_done: &dyn Fn(),
        alone: impl Fn() -> bool,
    ) where
        F: Body<T>,
        C: Classify<T>,
    {
        let outcome = catch_unwind(AssertUnwindSafe(|| f.call()));
        body_done();
        match outcome {
            Ok(value) => {
                let failure = self.classify.failed(&value).then_some(FailureReason::Error);
                if alone() {
                    drop_quietly(value);
                    return core.finish_alone(started, failure);
                }
                core.finish(started, Ok(value), failure);
            }
            Err(payload) => {
                if alone() {
                    drop_quietly(payload);
                    return core.finish_alone(started, Some(FailureReason::Panic));
                }
                let message = panic_message(&*payload);
                drop_quietly(payload);
                core.finish(
                    started,
                    Err(TaskError::Panicked { message }),
                    Some(FailureReason::Panic),
                );
            }
        }
    }

    /// Runs a queued task whose handle is gone, on the thread holding its
    /// only reference: nobody else can cancel, claim or read it, so it runs
    /// as a task without a handle does, its state word untouched.
    #[inline(always)]
    fn run_alone<T>(&self, core: &TaskCore<T, Job<F, C>>, body_done: &dyn Fn())
    where
        F: Body<T>,
        C: Classify<T>,
    {
        let running = core.running_node();
        let _running = running.enter();
        // SAFETY: the task is queued and nobody else holds it: this thread
        // is the closure's one owner.
        let f = unsafe { self.take_f() };
        let Some(started) = core.begin_alone() else {
            drop_quietly(f);
            body_done();
            return core.cancel_alone();
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| f.call()));
        body_done();
        let failure = match &outcome {
            Ok(value) => self.classify.failed(value).then_some(FailureReason::Error),
            Err(_) => Some(FailureReason::Panic),
        };
        match outcome {
            Ok(value) => drop_quietly(value),
            Err(payload) => drop_quietly(payload),
        }
        core.finish_alone(started, failure);
    }
}

/// The executor's [`Task`]'s reference to a submitted task's core; the
/// task's handle holds the other one.
pub(super) struct Queued<F, T, C>(pub(super) Arc<JobCore<F, T, C>>);

impl<F, T, C> Queued<F, T, C> {
    /// True once the handle is gone: this is the core's only reference, and
    /// nothing can make another (the core is never shared through a weak
    /// reference), so no other thread reaches the task again. The fence
    /// orders what the handle did (a cancel, a stored waker) before what
    /// follows here, as the handle's drop released it. Always false under
    /// loom, which does not model the reference count: its models keep
    /// their handles, and check the state word's paths.
    #[inline(always)]
    fn alone(&self) -> bool {
        if cfg!(loom) || Arc::strong_count(&self.0) != 1 {
            return false;
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        true
    }
}

impl<F, T, C> Runnable for Queued<F, T, C>
where
    F: Body<T>,
    T: Send + 'static,
    C: Classify<T>,
{
    fn run(&self, body_done: &dyn Fn()) {
        if self.alone() && self.0.is_queued() {
            return self.0.job.run_alone(&self.0, body_done);
        }
        self.0.run_shared(body_done, || self.alone());
    }

    fn abandon(&self, reason: String) {
        self.0.abandon(reason)
    }

    fn discard(&self) {
        self.0.discard()
    }

    fn reject(&self) -> Option<Box<dyn Any + Send>> {
        self.0.reject()
    }

    fn key(&self) -> Option<TaskKey> {
        Some(TaskKey::of_core(Arc::as_ptr(&self.0)))
    }
}

impl<F, T, C> JobCore<F, T, C>
where
    F: Body<T>,
    T: Send + 'static,
    C: Classify<T>,
{
    /// A worker's run of a task whose handle may still be held; `alone` as
    /// in [`Job::run_started`].
    #[inline(always)]
    fn run_shared(&self, body_done: &dyn Fn(), alone: impl Fn() -> bool) {
        // The body, or its captures when it is dropped unrun, may drop the
        // last handle of this executor: see `InstrumentedExecutorProxy::drop`.
        let running = self.running_node();
        let _running = running.enter();
        let mut dropped = false;
        let started = self.start_or_cancel(|| {
            dropped = true;
            // SAFETY: this start moved the task out of the queue.
            drop_quietly(unsafe { self.job.take_f() });
        });
        let Some(started) = started else {
            // Not started: cancelled by `shutdown_now` just now (the closure
            // is gone), taken by a joiner (which has the closure), or
            // cancelled through its handle (the closure is dropped here).
            if !dropped && !self.taken_by_joiner() {
                // SAFETY: the handle's cancel moved the task out of the
                // queue, and it does not take the closure; no joiner can
                // take it any more.
                drop_quietly(unsafe { self.job.take_f() });
            }
            return body_done();
        };
        // SAFETY: this start moved the task out of the queue.
        let f = unsafe { self.job.take_f() };
        self.job.run_started(self, started, f, body_done, alone);
    }

    fn abandon(&self, reason: String) {
        if !self.claim_to_drop() {
            return;
        }
        // SAFETY: `claim_to_drop` made this task the closure's owner.
        let f = unsafe { self.job.take_f() };
        let _end = Finally::new(|| {
            self.fail_unstarted(TaskError::Broken { reason }, FailureReason::Broken);
        });
        drop(f);
    }

    fn discard(&self) {
        if !self.claim_to_drop() {
            return;
        }
        // SAFETY: `claim_to_drop` made this task the closure's owner.
        let f = unsafe { self.job.take_f() };
        let _end = Finally::new(|| {
            self.cancel();
        });
        drop(f);
    }

    fn reject(&self) -> Option<Box<dyn Any + Send>> {
        if !self.claim_to_drop() {
            return None;
        }
        // SAFETY: `claim_to_drop` made this task the closure's owner.
        let f = unsafe { self.job.take_f() };
        if self.refuse() {
            Some(Box::new(f))
        } else {
            None
        }
    }
}

/// A joiner that takes the task out of the queue runs it on its own thread,
/// counted as a worker's run would be; the `Task` still in the executor's
/// queue then finds it gone and ends nothing.
impl<F, T, C> Help<T> for Job<F, C>
where
    F: Body<T>,
    T: Send + 'static,
    C: Classify<T>,
{
    fn help(&self, core: &TaskCore<T, dyn Help<T>>) -> bool {
        if !core.claim_to_run() {
            return false;
        }
        let running = core.running_node();
        let _running = running.enter();
        // SAFETY: `claim_to_run` made this thread the closure's owner.
        let mut f = Some(unsafe { self.take_f() });
        // Not started: `shutdown_now` cancels it, dropping the closure.
        let started = core.begin(|| drop_quietly(f.take()));
        if let (Some(started), Some(f)) = (started, f) {
            self.run_started(core, started, f, &|| {}, || false);
        }
        true
    }
}

/// A task nobody holds a handle to ([`spawn`](InstrumentedExecutorProxy::spawn)):
/// its closure, its executor's accounting and its submit time, moved as one
/// value. Nothing shares it, so it needs no state word and no result slot:
/// whoever holds it ends it, once, by running it, refusing it, abandoning
/// it, or dropping it unrun (cancelled).
///
/// Handed to executors unboxed ([`sealed::Unboxed`]): rayon's pool runs it
/// from the one allocation its own `spawn` makes; the others get it as a
/// [`Task`] (inline for a closure of up to four words), with the ticket in
/// the task's own slot for it.
pub(crate) struct Detached<F> {
    f: ManuallyDrop<F>,
    ticket: ManuallyDrop<Ticket>,
}

impl<F: Body<()>> Detached<F> {
    /// A task `acct` has admitted ([`Accounting::admit`] returned true).
    pub(super) fn new(f: F, acct: &Arc<Accounting>) -> Detached<F> {
        Detached {
            f: ManuallyDrop::new(f),
            ticket: ManuallyDrop::new(Ticket::new(acct)),
        }
    }

    /// When the task was submitted.
    pub(super) fn submitted_at(&self) -> Clock {
        self.ticket.submitted_at()
    }

    /// Takes the task apart; its `Drop` (the cancel) does not run.
    fn into_parts(self) -> (F, Ticket) {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so the body and the
        // ticket are moved out exactly once.
        unsafe {
            (
                ManuallyDrop::take(&mut this.f),
                ManuallyDrop::take(&mut this.ticket),
            )
        }
    }
}

impl<F> Drop for Detached<F> {
    /// Dropped unrun: counted as cancelled, once the body is dropped (also
    /// if dropping it panics).
    fn drop(&mut self) {
        // SAFETY: `drop` runs once, and the other ways out (`into_parts`)
        // do not run it: the ticket and the body are each taken once.
        let _end = unsafe { ManuallyDrop::take(&mut self.ticket) }.cancel_on_drop();
        // SAFETY: as above.
        unsafe { ManuallyDrop::drop(&mut self.f) };
    }
}

impl<F: Body<()>> sealed::Unboxed for Detached<F> {
    fn run(self) {
        let (f, ticket) = self.into_parts();
        ticket.run(|| f.call(), &|| {})
    }

    fn into_task(self) -> Task {
        let (f, ticket) = self.into_parts();
        Task::detached(f, ticket)
    }
}

/// Runs its closure when dropped: a task's end placed after the drop of
/// its closure still happens if that drop panics.
struct Finally<G: FnOnce()>(Option<G>);

impl<G: FnOnce()> Finally<G> {
    fn new(end: G) -> Finally<G> {
        Finally(Some(end))
    }
}

impl<G: FnOnce()> Drop for Finally<G> {
    fn drop(&mut self) {
        if let Some(end) = self.0.take() {
            end();
        }
    }
}

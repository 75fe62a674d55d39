//! [`InstrumentedExecutorProxy`]: wraps any [`Executor`] and counts every task.

use std::any::Any;
use std::fmt;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::clock::Clock;
use crate::error::{panic_message, BuildError, BuildErrorKind, SubmitError, TaskError};
use crate::executor::{sealed, Executor, Once, RejectReason, Rejected, Runnable, Task};
use crate::map::Map;
use crate::metrics::{ExecutorExporter, ExecutorExporterBuilder, FailureReason};
use crate::task::{Accounting, Help, TaskCore, TaskHandle, Ticket};

/// Decides whether a task's value counts as a failure (`reason="error"`).
pub(crate) trait Classify<T>: Send + Sync + 'static {
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
struct NeverFails;

impl<T: 'static> Classify<T> for NeverFails {
    fn failed(&self, _: &T) -> bool {
        false
    }
}

/// `submit_fallible`: an `Err` is a failure.
struct ErrFails;

impl<T: 'static, E: 'static> Classify<Result<T, E>> for ErrFails {
    fn failed(&self, value: &Result<T, E>) -> bool {
        value.is_err()
    }
}

fn never_failed<T>(_: &T) -> bool {
    false
}

fn is_err<T, E>(result: &Result<T, E>) -> bool {
    result.is_err()
}

/// What a task runs: a submitted closure, or a [`Task`] given to the proxy
/// through [`Executor::execute`] (wrapped in [`RunTask`], so that a refused
/// one goes back to its caller as the same task).
pub(crate) trait Body: Send + 'static {
    type Output: Send + 'static;
    fn call(self) -> Self::Output;
}

impl<F, T> Body for F
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    type Output = T;

    fn call(self) -> T {
        self()
    }
}

/// A task given to the proxy as an [`Executor`].
struct RunTask(Task);

impl Body for RunTask {
    type Output = ();

    fn call(self) {
        self.0.run()
    }
}

/// The closure of one submitted task and how its value is classified,
/// stored inside its [`TaskCore`] so that a submit allocates once. The
/// closure has one owner, decided by the task's state word: the [`Task`]
/// handed to the executor (see [`Runnable`]), unless a thread joining the
/// task's handle takes the task out of the queue first ([`Help`]), in which
/// case that thread runs it and the `Task` finds it gone. Dropping the
/// `Task` without running it cancels the task, so no task can vanish from
/// the counts.
struct Job<F, C> {
    f: Once<F>,
    classify: C,
}

type JobCore<F, T, C> = TaskCore<T, Job<F, C>>;

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
    /// in [`Runnable::run`]. Inlined into each of its two callers (a
    /// worker's run, a joiner's): called out of line, the worker's run
    /// took about 15 instructions more per task.
    #[inline(always)]
    fn run_started<T, J: ?Sized>(
        &self,
        core: &TaskCore<T, J>,
        started: Clock,
        f: F,
        body_done: &dyn Fn(),
    ) where
        F: Body<Output = T>,
        C: Classify<T>,
    {
        let outcome = catch_unwind(AssertUnwindSafe(|| f.call()));
        body_done();
        match outcome {
            Ok(value) => {
                let failure = self.classify.failed(&value).then_some(FailureReason::Error);
                core.finish(started, Ok(value), failure);
            }
            Err(payload) => {
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
}

impl<F, T, C> Runnable for JobCore<F, T, C>
where
    F: Body<Output = T>,
    T: Send + 'static,
    C: Classify<T>,
{
    fn run(&self, body_done: &dyn Fn()) {
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
        self.job.run_started(self, started, f, body_done);
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
    F: Body<Output = T>,
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
            self.run_started(core, started, f, &|| {});
        }
        true
    }
}

/// A task nobody holds a handle to ([`spawn`](InstrumentedExecutorProxy::spawn),
/// [`Executor::execute`]): its body, its executor's accounting and its
/// submit time, moved as one value. Nothing shares it, so it needs no state
/// word and no result slot: whoever holds it ends it, once, by running it,
/// refusing it, abandoning it, or dropping it unrun (cancelled).
///
/// Handed to executors unboxed ([`sealed::Unboxed`]): rayon's pool runs it
/// from the one allocation its own `spawn` makes; the others get it in a
/// [`Task`] (inline for a closure of up to two words).
pub(crate) struct Detached<F> {
    f: ManuallyDrop<F>,
    ticket: ManuallyDrop<Ticket>,
}

impl<F: Body<Output = ()>> Detached<F> {
    /// A task `acct` has admitted ([`Accounting::admit`] returned true).
    fn new(f: F, acct: &Arc<Accounting>) -> Detached<F> {
        Detached {
            f: ManuallyDrop::new(f),
            ticket: ManuallyDrop::new(Ticket::new(acct)),
        }
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

    /// Runs the task, catching its panic (counted as failed with reason
    /// `panic`; the panic hook has printed the message). `body_done` as in
    /// [`Runnable::run`].
    fn run_then(self, body_done: &dyn Fn()) {
        let (f, ticket) = self.into_parts();
        // The body, or its captures when it is dropped unrun, may drop the
        // last handle of this executor: see `InstrumentedExecutorProxy::drop`.
        let running = ticket.running_node();
        let _running = running.enter();
        let Some(started) = ticket.start() else {
            let end = ticket.cancel_on_drop();
            drop_quietly(f);
            body_done();
            return drop(end);
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| f.call()));
        body_done();
        let failure = outcome.is_err().then_some(FailureReason::Panic);
        if let Err(payload) = outcome {
            drop_quietly(payload);
        }
        ticket.finish(started, failure);
    }

    /// The executor cannot run the task: it fails as broken (nobody holds
    /// a handle to read the reason).
    fn abandon(self) {
        let (f, ticket) = self.into_parts();
        let _end = ticket.fail_broken_on_drop();
        drop(f);
    }

    /// The executor refused the task: counted as rejected; the body comes
    /// back.
    fn refuse(self) -> F {
        let (f, ticket) = self.into_parts();
        ticket.refuse();
        f
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

impl<F: Body<Output = ()>> sealed::Unboxed for Detached<F> {
    fn run(self) {
        self.run_then(&|| {})
    }

    fn into_task(self) -> Task {
        Task::from_runnable(DetachedTask(Once::new(self)))
    }
}

/// Drops `value`, catching a panic of its `Drop` (a panic payload's, or a
/// closure's that is not run): it must not escape into the worker.
fn drop_quietly<X>(value: X) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(value)));
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

/// A [`Detached`] task inside a [`Task`] (inline for a small closure).
struct DetachedTask<F>(Once<Detached<F>>);

impl<F> DetachedTask<F> {
    fn take(&self) -> Detached<F> {
        // SAFETY: only the owning `Task` calls the `Runnable` methods that
        // call this, one of them, once.
        unsafe { self.0.take() }
    }
}

impl<F: Body<Output = ()>> Runnable for DetachedTask<F> {
    fn run(&self, body_done: &dyn Fn()) {
        self.take().run_then(body_done)
    }

    fn abandon(&self, _reason: String) {
        self.take().abandon()
    }

    fn discard(&self) {
        drop(self.take())
    }

    fn reject(&self) -> Option<Box<dyn Any + Send>> {
        Some(Box::new(self.take().refuse()))
    }
}

/// Wraps any [`Executor`] and records, for every task given to it, the
/// submit, the wait, the run and the result into an [`ExecutorExporter`].
///
/// It implements [`Executor`] itself, so it can stand wherever the wrapped
/// executor stood; tasks given through [`Executor::execute`] are counted
/// exactly like submitted ones.
///
/// ```
/// use executor_exporter::{ExecutorExporter, InstrumentedExecutorProxy, ThreadPool};
///
/// let registry = prometheus::Registry::new();
/// let exporter = ExecutorExporter::builder()
///     .exporter_id("resize")
///     .registry(registry.clone())
///     .build()
///     .unwrap();
/// let pool = ThreadPool::new(2).unwrap();
/// let proxy = InstrumentedExecutorProxy::new(pool, exporter, None);
/// let doubled: Vec<_> = proxy.map(|x: u32| x * 2, 1..=3).map(Result::unwrap).collect();
/// assert_eq!(doubled, [2, 4, 6]);
/// ```
pub struct InstrumentedExecutorProxy<E: Executor> {
    inner: E,
    exporter: ExecutorExporter,
    acct: Arc<Accounting>,
    max_workers: Option<usize>,
}

impl<E: Executor> fmt::Debug for InstrumentedExecutorProxy<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentedExecutorProxy")
            .field("exporter", &self.exporter)
            .field("max_workers", &self.max_workers)
            .field("in_flight", &self.acct.in_flight())
            .finish_non_exhaustive()
    }
}

impl<E: Executor> InstrumentedExecutorProxy<E> {
    /// Wraps `executor`. `max_workers` is added to the exporter's
    /// `max_workers_total`; with `None`, the executor's own
    /// [`Executor::max_workers`] is used, if it knows. The metrics carry the
    /// exporter's `executor_type` as built; [`from_builder`](Self::from_builder)
    /// takes the executor's own when the builder sets none.
    pub fn new(
        executor: E,
        exporter: ExecutorExporter,
        max_workers: Option<usize>,
    ) -> InstrumentedExecutorProxy<E> {
        let max_workers = max_workers.or_else(|| executor.max_workers());
        if let Some(n) = max_workers {
            exporter.add_max_workers(n);
        }
        exporter
            .series()
            .expect_failures(&FailureReason::IN_PROCESS);
        let acct = Arc::new(Accounting::new(exporter.series().clone()));
        InstrumentedExecutorProxy {
            inner: executor,
            exporter,
            acct,
            max_workers,
        }
    }

    /// Wraps `executor`, building its exporter from `exporter`, whose
    /// `executor_type` label defaults to the executor's own
    /// [`Executor::executor_type`] (`rayon` for a rayon pool, `thread_pool`
    /// for a [`ThreadPool`](crate::ThreadPool)) instead of `custom`.
    ///
    /// ```
    /// use executor_exporter::{Executor, ExecutorExporter, InstrumentedExecutorProxy, Rejected, Task};
    ///
    /// /// Runs each task on the caller.
    /// struct Inline;
    ///
    /// impl Executor for Inline {
    ///     fn execute(&self, task: Task) -> Result<(), Rejected> {
    ///         task.run();
    ///         Ok(())
    ///     }
    ///     fn executor_type(&self) -> &str {
    ///         "inline"
    ///     }
    /// }
    ///
    /// let registry = prometheus::Registry::new();
    /// let builder = ExecutorExporter::builder()
    ///     .exporter_id("checks")
    ///     .registry(registry.clone());
    /// let proxy = InstrumentedExecutorProxy::from_builder(Inline, builder, None)?;
    /// assert_eq!(proxy.exporter().executor_type(), "inline");
    /// # Ok::<(), executor_exporter::BuildError>(())
    /// ```
    pub fn from_builder(
        executor: E,
        exporter: ExecutorExporterBuilder,
        max_workers: Option<usize>,
    ) -> Result<InstrumentedExecutorProxy<E>, BuildError> {
        let exporter = exporter
            .executor_type_or(executor.executor_type())
            .build()?;
        Ok(InstrumentedExecutorProxy::new(
            executor,
            exporter,
            max_workers,
        ))
    }

    /// The wrapped executor.
    pub fn inner(&self) -> &E {
        &self.inner
    }

    /// The exporter this proxy records into.
    pub fn exporter(&self) -> &ExecutorExporter {
        &self.exporter
    }

    /// The maximum number of workers, as given or as the executor reported it.
    pub fn max_workers(&self) -> Option<usize> {
        self.max_workers
    }

    pub(crate) fn submit_classified<F, T, C: Classify<T>>(
        &self,
        f: F,
        classify: C,
    ) -> Result<TaskHandle<T>, SubmitError<F>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if !self.acct.admit() {
            return Err(self.refused_unadmitted(f));
        }
        let core = Arc::new(TaskCore::with_job(
            &self.acct,
            Job {
                f: Once::new(f),
                classify,
            },
        ));
        let handle = TaskHandle::new(core.clone());
        let accepted_if_unwinding = AcceptedIfUnwinding(&self.acct);
        let outcome = self.inner.execute(Task::from_runnable(core));
        std::mem::forget(accepted_if_unwinding);
        self.handed_over(outcome).map(|()| handle)
    }

    /// Admits and hands over a task without a handle.
    fn detach<B: Body<Output = ()>>(&self, body: B) -> Result<(), SubmitError<B>> {
        if !self.acct.admit() {
            return Err(self.refused_unadmitted(body));
        }
        let task = Detached::new(body, &self.acct);
        let accepted_if_unwinding = AcceptedIfUnwinding(&self.acct);
        let outcome = self.inner.execute_unboxed(task);
        std::mem::forget(accepted_if_unwinding);
        self.handed_over(outcome)
    }

    /// A submit refused before anything was queued (the proxy is shut down).
    #[cold]
    fn refused_unadmitted<B>(&self, body: B) -> SubmitError<B> {
        self.acct.refused_unadmitted();
        SubmitError::new(body, RejectReason::Shutdown)
    }

    /// Counts what the executor did with a task handed to it: submitted if
    /// it took it; rejected if it refused it, and then the body `B` comes
    /// back out of the task.
    fn handed_over<B: 'static>(&self, outcome: Result<(), Rejected>) -> Result<(), SubmitError<B>> {
        match outcome {
            Ok(()) => {
                self.acct.accepted();
                Ok(())
            }
            Err(rejected) => {
                // The task's own state counts it as rejected, so a task is
                // counted once even if an executor broke the contract and
                // handed back another one.
                let reason = rejected.reason();
                match rejected.into_task().reject().map(|f| f.downcast::<B>()) {
                    Some(Ok(f)) => Err(SubmitError::new(*f, reason)),
                    // An executor that hands back another task than the one
                    // it was given breaks the trait's contract; the closure
                    // is then lost with that task.
                    _ => unreachable_task(reason),
                }
            }
        }
    }

    /// Submits `f` and returns a handle to its result.
    ///
    /// The task is counted as submitted, its wait and duration are recorded,
    /// and it ends counted as completed, or as failed with reason `panic` if
    /// it panics (the panic message reaches [`TaskHandle::join`]). A refused
    /// submit hands `f` back and is counted as rejected.
    pub fn submit<F, T>(&self, f: F) -> Result<TaskHandle<T>, SubmitError<F>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.submit_classified(f, NeverFails)
    }

    /// Runs `f` without returning a handle: fire and forget, like
    /// `threadpool::ThreadPool::execute` or `rayon::spawn`, and the cheapest
    /// way in (no handle shares the task's state).
    ///
    /// The task is counted exactly as with [`submit`](Self::submit): its
    /// wait and duration are recorded, and a panic counts as failed with
    /// reason `panic` (the worker carries on). [`join`](Self::join) waits
    /// for it. A refused spawn hands `f` back and is counted as rejected.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use executor_exporter::ThreadPoolExecutor;
    ///
    /// let pool = ThreadPoolExecutor::builder()
    ///     .registry(prometheus::Registry::new())
    ///     .build()
    ///     .unwrap();
    /// let done = Arc::new(AtomicUsize::new(0));
    /// for _ in 0..10 {
    ///     let done = done.clone();
    ///     pool.spawn(move || {
    ///         done.fetch_add(1, Ordering::Relaxed);
    ///     })
    ///     .unwrap();
    /// }
    /// pool.join();
    /// assert_eq!(done.load(Ordering::Relaxed), 10);
    /// ```
    pub fn spawn<F>(&self, f: F) -> Result<(), SubmitError<F>>
    where
        F: FnOnce() + Send + 'static,
    {
        self.detach(f)
    }

    /// Submits a task that returns a `Result`: an `Err` is counted as failed
    /// with reason `error`, with no metric code in the task. The `Result`
    /// itself is returned unchanged by [`TaskHandle::join`].
    ///
    /// ```
    /// use executor_exporter::ThreadPoolExecutor;
    ///
    /// let pool = ThreadPoolExecutor::builder()
    ///     .registry(prometheus::Registry::new())
    ///     .build()
    ///     .unwrap();
    /// let handle = pool.submit_fallible(|| "x".parse::<u32>()).unwrap();
    /// assert!(handle.join().unwrap().is_err()); // counted as result="failed"
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn submit_fallible<F, T, Er>(
        &self,
        f: F,
    ) -> Result<TaskHandle<Result<T, Er>>, SubmitError<F>>
    where
        F: FnOnce() -> Result<T, Er> + Send + 'static,
        T: Send + 'static,
        Er: Send + 'static,
    {
        self.submit_classified(f, ErrFails)
    }

    /// Applies `f` to every item, each item its own task, and yields the
    /// results in input order.
    ///
    /// Items are read lazily, with at most twice `max_workers` (or 16 when
    /// unknown) submitted and not yet yielded, so an endless iterator works.
    /// Dropping the iterator cancels the items that have not started.
    pub fn map<F, I, T>(&self, f: F, items: I) -> Map<'_, E, F, I::IntoIter, T>
    where
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        I: IntoIterator,
        I::Item: Send + 'static,
        T: Send + 'static,
    {
        let in_flight = self.max_workers.map_or(16, |n| n.saturating_mul(2).max(1));
        Map::new(
            self,
            f,
            items.into_iter(),
            in_flight,
            never_failed::<T> as ClassifyFn<T>,
        )
    }

    /// Like [`map`](Self::map), with at most `in_flight` items submitted and
    /// not yet yielded. An `in_flight` of 0 is an error.
    pub fn map_in_flight<F, I, T>(
        &self,
        f: F,
        items: I,
        in_flight: usize,
    ) -> Result<Map<'_, E, F, I::IntoIter, T>, BuildError>
    where
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        I: IntoIterator,
        I::Item: Send + 'static,
        T: Send + 'static,
    {
        if in_flight == 0 {
            return Err(BuildError::new(BuildErrorKind::ZeroBound("in_flight")));
        }
        Ok(Map::new(
            self,
            f,
            items.into_iter(),
            in_flight,
            never_failed::<T> as ClassifyFn<T>,
        ))
    }

    /// Like [`map`](Self::map) for a function returning `Result`: each `Err`
    /// is counted as failed with reason `error`.
    pub fn map_fallible<F, I, T, Er>(
        &self,
        f: F,
        items: I,
    ) -> Map<'_, E, F, I::IntoIter, Result<T, Er>>
    where
        F: Fn(I::Item) -> Result<T, Er> + Send + Sync + 'static,
        I: IntoIterator,
        I::Item: Send + 'static,
        T: Send + 'static,
        Er: Send + 'static,
    {
        let in_flight = self.max_workers.map_or(16, |n| n.saturating_mul(2).max(1));
        Map::new(
            self,
            f,
            items.into_iter(),
            in_flight,
            is_err::<T, Er> as ClassifyFn<_>,
        )
    }

    /// Waits until every task accepted so far has ended. The executor stays
    /// usable (like `threadpool::ThreadPool::join`).
    pub fn join(&self) {
        self.acct.wait_idle();
    }

    /// Stops accepting tasks, waits for every accepted task to end, then shuts
    /// the inner executor down (joining its workers). Idempotent.
    ///
    /// Called from inside one of this executor's tasks, or on one of the
    /// inner executor's workers ([`Executor::is_worker_thread`]), it cannot
    /// wait for the tasks: it stops accepting tasks and shuts the inner
    /// executor down without waiting for them itself (a
    /// [`ThreadPool`](crate::ThreadPool) still joins its other workers, and
    /// this one runs what is left once the caller returns).
    pub fn shutdown(&self) {
        self.acct.close();
        self.wait_idle_unless_inside();
        self.inner.shutdown();
    }

    /// Like [`shutdown`](Self::shutdown), but tasks that have not started are
    /// cancelled (counted as cancelled; their handles give
    /// [`TaskError::Cancelled`]). Running tasks finish. Idempotent.
    pub fn shutdown_now(&self) {
        self.acct.close();
        self.acct.cancel_pending();
        self.wait_idle_unless_inside();
        self.inner.shutdown();
    }

    fn wait_idle_unless_inside(&self) {
        if !self.on_own_thread() {
            self.acct.wait_idle();
        }
    }

    /// True on a thread where waiting for this executor's tasks could wait
    /// forever: inside one of them, or on one of the inner executor's
    /// workers (which the tasks still queued may need).
    fn on_own_thread(&self) -> bool {
        self.acct.is_running_here() || self.inner.is_worker_thread()
    }

    /// True once [`shutdown`](Self::shutdown) or
    /// [`shutdown_now`](Self::shutdown_now) was called.
    pub fn is_shutdown(&self) -> bool {
        self.acct.is_closed()
    }
}

/// Counts a task as submitted when the executor's `execute` panics (its
/// drop runs only then: on the way out it is forgotten). The executor took
/// the task: it may have queued it, run it, or dropped it while unwinding
/// (which counted it cancelled), and it ends counted as whichever it was,
/// so the task must also count as submitted for the counts to add up.
/// Telling those apart to count a dropped one as rejected instead would
/// cost every submit a mark of its own; the panic goes on to the caller.
struct AcceptedIfUnwinding<'a>(&'a Accounting);

impl Drop for AcceptedIfUnwinding<'_> {
    // Inlined into the unwinding path of the caller, which then finds the
    // accounting in a register it keeps anyway: the guard adds nothing to
    // a submit that returns (not inlined, it made the caller store it).
    #[inline]
    fn drop(&mut self) {
        self.0.accepted();
    }
}

#[cold]
fn unreachable_task<F, H>(reason: RejectReason) -> Result<H, SubmitError<F>> {
    // Reaching this means an `Executor` returned a task it was not given. The
    // task it kept is counted when it ends (run, or cancelled when dropped);
    // the closure cannot be returned.
    panic!("an executor handed back a different task than it was given ({reason})")
}

impl<E: Executor> Executor for InstrumentedExecutorProxy<E> {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        // Counted like `spawn`; a refused task goes back as itself, so a
        // proxy wrapping this one gets its own task back.
        self.detach(RunTask(task)).map_err(|e| {
            let reason = e.reason();
            Rejected::new(e.into_inner().0, reason)
        })
    }

    fn max_workers(&self) -> Option<usize> {
        self.max_workers
    }

    fn executor_type(&self) -> &str {
        self.exporter.executor_type()
    }

    fn shutdown(&self) {
        InstrumentedExecutorProxy::shutdown(self)
    }

    fn is_worker_thread(&self) -> bool {
        self.inner.is_worker_thread()
    }
}

impl<E: Executor> Drop for InstrumentedExecutorProxy<E> {
    /// Same as [`shutdown`](InstrumentedExecutorProxy::shutdown): waits for
    /// accepted tasks and joins the workers.
    ///
    /// Dropped inside one of its own tasks or on one of its workers (a task,
    /// its unrun closure or its result held the last
    /// `Arc<ThreadPoolExecutor>`), it does not wait for the tasks, as
    /// `shutdown` does not there; their bookkeeping is freed by a short-lived
    /// thread once the last of them has ended.
    fn drop(&mut self) {
        self.shutdown();
        if self.on_own_thread() {
            // The last owner's drop of the accounting waits for the tasks
            // in flight, this one included: it must happen elsewhere, after
            // this proxy has dropped its own reference (when `drop` returns).
            let acct = self.acct.clone();
            let spare = self.acct.clone();
            let release = move || {
                while Arc::strong_count(&acct) > 1 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                drop(acct);
            };
            match std::thread::Builder::new()
                .name("executor-exporter-release".to_owned())
                .spawn(release)
            {
                Ok(_) => drop(spare),
                // No thread can start: the accounting (a few hundred bytes)
                // is leaked rather than this task waiting for itself.
                Err(_) => std::mem::forget(spare),
            }
        }
    }
}

#[cfg(all(test, not(loom), target_pointer_width = "64"))]
mod layout {
    use super::{DetachedTask, JobCore, NeverFails};

    fn core_size<F: FnOnce()>(_: &F) -> usize {
        std::mem::size_of::<JobCore<F, (), NeverFails>>()
    }

    /// A submitted task whose closure captures one word and returns `()` is
    /// one allocation of 16 bytes of reference counts plus its state: at
    /// most 56 bytes keeps it in the allocator's 64-byte size class
    /// (glibc's chunks carry an 8-byte header), which the empty-task
    /// throughput and the memory per queued task depend on.
    #[test]
    fn a_small_task_fits_a_64_byte_chunk() {
        let word = 7u64;
        let closure = move || {
            std::hint::black_box(word);
        };
        let size = 16 + core_size(&closure);
        assert!(size <= 56, "a small task takes {size} bytes");
    }

    /// A spawned task with the same closure (the closure, the accounting
    /// pointer and the submit time) fits inline in a [`Task`], so handing
    /// it to a queue allocates nothing; a `Task` is six words.
    #[test]
    fn a_small_spawned_task_is_stored_inline() {
        fn detached_size<F: FnOnce()>(_: &F) -> usize {
            std::mem::size_of::<DetachedTask<F>>()
        }
        let word = 7u64;
        let closure = move || {
            std::hint::black_box(word);
        };
        assert!(detached_size(&closure) <= 32, "a small spawned task spills");
        assert_eq!(std::mem::size_of::<crate::Task>(), 48);
    }
}

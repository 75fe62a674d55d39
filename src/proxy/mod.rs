//! [`InstrumentedExecutorProxy`]: wraps any [`Executor`] and counts every task.

mod execute;
mod exemplar;
mod job;
mod map;

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;

use self::exemplar::WithExemplar;
pub(crate) use self::job::Classify;
use self::job::{is_err, never_failed, ClassifyFn, Detached, ErrFails, Job, NeverFails, Queued};
pub use self::map::Map;
use crate::clock::Clock;
use crate::error::FailureReason;
use crate::error::RejectReason;
use crate::error::{BuildError, BuildErrorKind, SubmitError, TaskError};
use crate::executor::{rescue, Body, Executor, Rejected, Task, Wanted};
use crate::metrics::{Capacity, ExecutorExporter, ExecutorExporterBuilder, Pending};
use crate::task::{
    refusing, Accounting, Refused, SubmitOne, TaskCore, TaskHandle, TaskKey, CLOSED,
};
#[cfg(feature = "tracing")]
use crate::trace::InSpan;

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
    /// `max_workers` (and a bounded queue's capacity) in the exporter's
    /// gauges until shutdown.
    capacity: Capacity,
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
    /// `max_workers` gauge, and taken off again when the proxy shuts down or
    /// is dropped; with `None`, the executor's own
    /// [`Executor::max_workers`] is used, if it knows. A bounded queue's
    /// [`Executor::queue_capacity`] goes in the `queue_capacity` gauge the
    /// same way. The metrics carry the
    /// exporter's `executor_type` as built; [`from_builder`](Self::from_builder)
    /// takes the executor's own when the builder sets none.
    pub fn new(
        executor: E,
        exporter: ExecutorExporter,
        max_workers: Option<usize>,
    ) -> InstrumentedExecutorProxy<E> {
        let max_workers = max_workers.or_else(|| executor.max_workers());
        let capacity =
            Capacity::register(exporter.series().clone(), max_workers.unwrap_or(0) as u64)
                .with_queue(executor.queue_capacity());
        exporter
            .series()
            .expect_failures(&FailureReason::IN_PROCESS);
        let mut acct = Accounting::new(exporter.series().clone());
        if exporter.exemplar_hook().is_some() {
            acct = acct.with_exemplars();
        }
        let acct = Arc::new(acct);
        InstrumentedExecutorProxy {
            inner: executor,
            exporter,
            acct,
            max_workers,
            capacity,
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

    /// The counts of this proxy's exporter now ([`ExecutorExporter::snapshot`]).
    pub fn snapshot(&self) -> crate::metrics::Snapshot {
        self.exporter.snapshot()
    }

    /// The maximum number of workers, as given or as the executor reported it.
    pub fn max_workers(&self) -> Option<usize> {
        self.max_workers
    }

    /// Submits `f`, inside the current span (feature `tracing`).
    #[inline]
    pub(crate) fn submit_classified<F, T, C: Classify<T>>(
        &self,
        f: F,
        classify: C,
    ) -> Result<TaskHandle<T>, SubmitError<F>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        #[cfg(feature = "tracing")]
        if let Some(span) = crate::trace::current() {
            return self
                .submit_body(InSpan::new(span, f), classify)
                .map_err(|e| e.map(InSpan::into_inner));
        }
        self.submit_body(f, classify)
    }

    fn submit_body<F, T, C: Classify<T>>(
        &self,
        f: F,
        classify: C,
    ) -> Result<TaskHandle<T>, SubmitError<F>>
    where
        F: Body<T>,
        T: Send + 'static,
    {
        let flags = self.acct.admit_flags();
        if flags != 0 {
            return self.submit_flagged(f, classify, flags);
        }
        self.submit_admitted(f, classify)
    }

    /// A submit whose admission found a flag of `Accounting::admit_flags`:
    /// refused when closed, else admitted, with exemplar labels if the
    /// hook gives some. Cold and out of line, as the closed check was: the
    /// path of a submit without exemplars stays as it was.
    #[cold]
    #[inline(never)]
    fn submit_flagged<F, T, C: Classify<T>>(
        &self,
        f: F,
        classify: C,
        flags: u32,
    ) -> Result<TaskHandle<T>, SubmitError<F>>
    where
        F: Body<T>,
        T: Send + 'static,
    {
        if flags & CLOSED != 0 {
            self.acct.ended();
            return Err(self.refused_unadmitted(f));
        }
        match self.pending_exemplar() {
            Some(pending) => self
                .submit_admitted(WithExemplar::new(f, classify, pending), classify)
                .map_err(|e| e.map(WithExemplar::into_inner)),
            None => self.submit_admitted(f, classify),
        }
    }

    /// The exemplar labels of a task being submitted now, if the hook gives some.
    fn pending_exemplar(&self) -> Option<Pending> {
        Pending::capture(self.exporter.exemplar_hook()?, self.exporter.series())
    }

    #[inline(always)]
    fn submit_admitted<F, T, C: Classify<T>>(
        &self,
        f: F,
        classify: C,
    ) -> Result<TaskHandle<T>, SubmitError<F>>
    where
        F: Body<T>,
        T: Send + 'static,
    {
        let core = Arc::new(TaskCore::with_job(&self.acct, Job::new(f, classify)));
        let submitted_at = core.submitted_at();
        let handle = TaskHandle::new(core.clone());
        let accepted_if_unwinding = AcceptedIfUnwinding(&self.acct, submitted_at);
        let outcome = self.inner.execute(Task::from_runnable(Queued(core)));
        std::mem::forget(accepted_if_unwinding);
        let key = || (handle.key(), None);
        self.handed_over(outcome, submitted_at, key, F::QUIET_WHEN_FULL)
            .map(|()| handle)
    }

    /// Admits and hands over a task without a handle, inside the current
    /// span (feature `tracing`).
    #[inline]
    fn detach<F>(&self, f: F) -> Result<(), SubmitError<F>>
    where
        F: FnOnce() + Send + 'static,
    {
        #[cfg(feature = "tracing")]
        if let Some(span) = crate::trace::current() {
            return self
                .detach_body(InSpan::new(span, f))
                .map_err(|e| e.map(InSpan::into_inner));
        }
        self.detach_body(f)
    }

    fn detach_body<F: Body<()>>(&self, f: F) -> Result<(), SubmitError<F>> {
        let flags = self.acct.admit_flags();
        if flags != 0 {
            return self.detach_flagged(f, flags);
        }
        self.detach_admitted(f)
    }

    /// [`submit_flagged`](Self::submit_flagged) for a task without a handle.
    #[cold]
    #[inline(never)]
    fn detach_flagged<F: Body<()>>(&self, f: F, flags: u32) -> Result<(), SubmitError<F>> {
        if flags & CLOSED != 0 {
            self.acct.ended();
            return Err(self.refused_unadmitted(f));
        }
        match self.pending_exemplar() {
            Some(pending) => self
                .detach_admitted(WithExemplar::new(f, NeverFails, pending))
                .map_err(|e| e.map(WithExemplar::into_inner)),
            None => self.detach_admitted(f),
        }
    }

    #[inline(always)]
    fn detach_admitted<F: Body<()>>(&self, f: F) -> Result<(), SubmitError<F>> {
        let task = Detached::new(f, &self.acct);
        let submitted_at = task.submitted_at();
        let accepted_if_unwinding = AcceptedIfUnwinding(&self.acct, submitted_at);
        let outcome = self.inner.execute_unboxed(task);
        std::mem::forget(accepted_if_unwinding);
        let key = || {
            (
                TaskKey::of_ticket(&self.acct, submitted_at),
                Some(TypeId::of::<F>()),
            )
        };
        self.handed_over(outcome, submitted_at, key, F::QUIET_WHEN_FULL)
    }

    /// A submit refused before anything was queued (the proxy is shut down).
    #[cold]
    fn refused_unadmitted<B>(&self, body: B) -> SubmitError<B> {
        self.acct.refused_unadmitted();
        SubmitError::new(body, RejectReason::Shutdown)
    }

    /// Counts what the executor did with a task handed to it: submitted if
    /// it took it; rejected if it refused it (not counted for a `map`'s item
    /// refused because the queue is full: `quiet_full`), and then the body
    /// `B` comes back out of the task. Always inlined: the submit paths are also
    /// instantiated for bodies with exemplars, and left to itself the
    /// compiler then calls this out of line from the plain ones too (about
    /// 15 instructions more per task).
    #[inline(always)]
    fn handed_over<B: 'static>(
        &self,
        outcome: Result<(), Rejected>,
        submitted_at: Clock,
        wanted: impl FnOnce() -> Wanted,
        quiet_full: bool,
    ) -> Result<(), SubmitError<B>> {
        match outcome {
            Ok(()) => {
                self.acct.accepted(submitted_at);
                Ok(())
            }
            Err(rejected) => self.refused_body(rejected, submitted_at, wanted(), quiet_full),
        }
    }

    /// A task of `submit` or `spawn` the executor refused: counted as
    /// rejected, its body `B` handed back in the error. The task's own
    /// state counts it, so it is counted once whatever the executor did.
    #[cold]
    fn refused_body<B: 'static>(
        &self,
        rejected: Rejected,
        submitted_at: Clock,
        wanted: Wanted,
        quiet_full: bool,
    ) -> Result<(), SubmitError<B>> {
        let reason = rejected.reason();
        let Some(task) = self.own_task(rejected.into_task(), submitted_at, wanted) else {
            return Ok(());
        };
        let quiet = quiet_full && reason == RejectReason::Full;
        match refusing(quiet, || task.reject()).map(|f| f.downcast::<B>()) {
            Some(Ok(f)) => Err(SubmitError::new(*f, reason)),
            // Found by its shared state's address, or by its ticket and the
            // type of its body: the body is a `B`.
            _ => unreachable!("a task made by submit or spawn holds its body until it ends"),
        }
    }

    /// This proxy's task submitted at `submitted_at` (`wanted` names it),
    /// out of `task`, which an executor handed back refusing it: `task`
    /// itself, or, from an executor that hands back a task of its own in
    /// its place (its wrapper around this one, say), this one as that one
    /// is dropped. `None` when it is not there: the executor kept it (or ran
    /// or dropped it), so it is counted as accepted, and ends wherever the
    /// executor ends it.
    fn own_task(&self, task: Task, submitted_at: Clock, wanted: Wanted) -> Option<Task> {
        if task.is(wanted) {
            return Some(task);
        }
        // Dropping the executor's task may panic: ours, if dropped with it,
        // ends cancelled, and must count as submitted for the counts to add up.
        let accepted_if_unwinding = AcceptedIfUnwinding(&self.acct, submitted_at);
        let own = rescue(task, wanted);
        std::mem::forget(accepted_if_unwinding);
        if own.is_none() {
            self.acct.accepted(submitted_at);
        }
        own
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
    /// Dropping the iterator cancels the items that have not started. An
    /// item that finds a bounded queue full waits for room (the end of an
    /// earlier item, or of another task) and is submitted then, whatever the
    /// pool's `FullPolicy`; those tries are not counted as rejected. A submit
    /// refused for good (the pool shut down or broken) is that item's
    /// result, and the items after it are not read.
    pub fn map<F, I, T>(&self, f: F, items: I) -> Map<'_, E, F, I::IntoIter, T>
    where
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        I: IntoIterator,
        I::Item: Send + 'static,
        T: Send + 'static,
    {
        self.map_with(
            f,
            items,
            self.default_in_flight(),
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
        Ok(self.map_with(f, items, in_flight, never_failed::<T> as ClassifyFn<T>))
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
        self.map_with(
            f,
            items,
            self.default_in_flight(),
            is_err::<T, Er> as ClassifyFn<_>,
        )
    }

    /// Twice the workers (16 when unknown): enough queued to keep every
    /// worker busy while results are read in order.
    fn default_in_flight(&self) -> usize {
        self.max_workers.map_or(16, |n| n.saturating_mul(2).max(1))
    }

    fn map_with<F, I, T>(
        &self,
        f: F,
        items: I,
        in_flight: usize,
        classify: ClassifyFn<T>,
    ) -> Map<'_, E, F, I::IntoIter, T>
    where
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        I: IntoIterator,
        I::Item: Send + 'static,
        T: Send + 'static,
    {
        let submit = Submitter {
            proxy: self,
            f: Arc::new(f),
            classify,
            #[cfg(feature = "tracing")]
            span: crate::trace::current(),
        };
        Map::new(submit, items.into_iter(), in_flight)
    }

    /// Waits until every task accepted so far has ended. The executor stays
    /// usable (like `threadpool::ThreadPool::join`).
    ///
    /// Called from inside one of this executor's own tasks, it returns at
    /// once: the tasks it would wait for include the caller's, so it would
    /// wait for ever. Anywhere else it waits, a worker of the inner executor
    /// running another executor's task included.
    pub fn join(&self) {
        if !self.acct.is_running_here() {
            self.acct.wait_idle();
        }
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
        self.inner.close();
        self.wait_idle_unless_inside();
        self.inner.shutdown();
        self.capacity.release();
    }

    /// Like [`shutdown`](Self::shutdown), but tasks that have not started are
    /// cancelled (counted as cancelled; their handles give
    /// [`TaskError::Cancelled`]). Running tasks finish. Idempotent.
    pub fn shutdown_now(&self) {
        self.acct.close();
        self.inner.close();
        self.acct.cancel_pending();
        self.wait_idle_unless_inside();
        self.inner.shutdown();
        self.capacity.release();
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
struct AcceptedIfUnwinding<'a>(&'a Accounting, Clock);

impl Drop for AcceptedIfUnwinding<'_> {
    // Inlined into the unwinding path of the caller, which then finds the
    // accounting in a register it keeps anyway: the guard adds nothing to
    // a submit that returns (not inlined, it made the caller store it).
    #[inline]
    fn drop(&mut self) {
        self.0.accepted(self.1);
    }
}

/// Submits one item of a [`Map`] through its proxy.
struct Submitter<'a, E: Executor, F, T> {
    proxy: &'a InstrumentedExecutorProxy<E>,
    f: Arc<F>,
    classify: ClassifyFn<T>,
    /// The span current when `map` was called: every item runs in it,
    /// wherever the iterator is advanced.
    #[cfg(feature = "tracing")]
    span: Option<tracing::Span>,
}

impl<E, F, In, T> SubmitOne<In> for Submitter<'_, E, F, T>
where
    E: Executor,
    F: Fn(In) -> T + Send + Sync + 'static,
    In: Send + 'static,
    T: Send + 'static,
{
    type Value = T;

    fn submit_one(&mut self, input: In) -> Result<TaskHandle<T>, Refused<In>> {
        let body = Apply {
            f: self.f.clone(),
            input,
        };
        #[cfg(feature = "tracing")]
        if let Some(span) = &self.span {
            let body = InSpan::new(span.clone(), body);
            return self
                .proxy
                .submit_body(body, self.classify)
                .map_err(|e| self.refused(e.map(InSpan::into_inner)));
        }
        self.proxy
            .submit_body(body, self.classify)
            .map_err(|e| self.refused(e))
    }
}

impl<E: Executor, F, T> Submitter<'_, E, F, T> {
    /// A refused submit of one item: its input back when the queue was full,
    /// to submit again; the item's result otherwise. On a thread of the
    /// proxy's own (a task mapping over its own pool), waiting for room
    /// could wait for this very thread: the item is refused then, and
    /// counted, and the map goes on with the next.
    fn refused<In>(&self, error: SubmitError<Apply<F, In>>) -> Refused<In> {
        match error.reason() {
            RejectReason::Full if !self.proxy.on_own_thread() => {
                Refused::Full(error.into_inner().input)
            }
            RejectReason::Full => {
                // The refusal was not counted (an item of `map`): it is final here.
                self.proxy.acct.refused_unadmitted();
                Refused::Failed(TaskError::Rejected(RejectReason::Full))
            }
            reason => Refused::Failed(TaskError::Rejected(reason)),
        }
    }
}

/// One input of a `map` and the function it goes through, as one body: a
/// refused one hands the input back.
struct Apply<F, In> {
    f: Arc<F>,
    input: In,
}

impl<F, In, T> Body<T> for Apply<F, In>
where
    F: Fn(In) -> T + Send + Sync + 'static,
    In: Send + 'static,
{
    const QUIET_WHEN_FULL: bool = true;

    fn call(self) -> T {
        (self.f)(self.input)
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

/// A pool made of a proxy over an executor (in its field `proxy`): it
/// derefs to the proxy, and is an [`Executor`] as the proxy is, so it stands
/// wherever the plain pool stood.
macro_rules! instrumented_pool {
    ($pool:ty, $inner:ty) => {
        impl std::ops::Deref for $pool {
            type Target = $crate::proxy::InstrumentedExecutorProxy<$inner>;

            fn deref(&self) -> &Self::Target {
                &self.proxy
            }
        }

        impl $crate::executor::Executor for $pool {
            fn execute(
                &self,
                task: $crate::executor::Task,
            ) -> Result<(), $crate::executor::Rejected> {
                self.proxy.execute(task)
            }

            fn max_workers(&self) -> Option<usize> {
                self.proxy.max_workers()
            }

            fn queue_capacity(&self) -> Option<usize> {
                $crate::executor::Executor::queue_capacity(&self.proxy)
            }

            fn executor_type(&self) -> &str {
                self.proxy.exporter().executor_type()
            }

            fn shutdown(&self) {
                self.proxy.shutdown()
            }

            fn close(&self) {
                $crate::executor::Executor::close(&self.proxy)
            }

            fn is_worker_thread(&self) -> bool {
                self.proxy.is_worker_thread()
            }
        }
    };
}
pub(crate) use instrumented_pool;

#[cfg(all(test, not(loom), target_pointer_width = "64"))]
mod layout {
    use super::job::{JobCore, NeverFails};

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
}

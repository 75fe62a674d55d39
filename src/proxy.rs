//! [`InstrumentedExecutorProxy`]: wraps any [`Executor`] and counts every task.

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::error::{panic_message, BuildError, BuildErrorKind, SubmitError, TaskError};
use crate::executor::{Executor, Once, Rejected, Runnable, Task};
use crate::exporter::{ExecutorExporter, FailureReason};
use crate::handle::{Accounting, TaskCore, TaskHandle};
use crate::map::Map;

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
/// [`Task`] handed to the executor is the only code that takes the closure
/// (see [`Runnable`]); dropping that task without running it cancels the
/// task, so no task can vanish from the counts.
struct Job<F, C> {
    f: Once<F>,
    classify: C,
}

type JobCore<F, T, C> = TaskCore<T, Job<F, C>>;

impl<F, T, C> JobCore<F, T, C> {
    fn take_f(&self) -> F {
        // SAFETY: only the owning `Task` calls the `Runnable` methods that
        // call this, one of them, once.
        unsafe { self.job.f.take() }
    }
}

impl<F, T, C> Runnable for JobCore<F, T, C>
where
    F: Body<Output = T>,
    T: Send + 'static,
    C: Classify<T>,
{
    fn run(&self, body_done: &dyn Fn()) {
        let f = self.take_f();
        let Some(started) = self.start() else {
            drop(f);
            return body_done();
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| f.call()));
        body_done();
        match outcome {
            Ok(value) => {
                let failure = self
                    .job
                    .classify
                    .failed(&value)
                    .then_some(FailureReason::Error);
                self.finish(started, Ok(value), failure);
            }
            Err(payload) => {
                let message = panic_message(&*payload);
                // The payload may itself panic when dropped; never let that
                // escape into the worker.
                let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
                self.finish(
                    started,
                    Err(TaskError::Panicked { message }),
                    Some(FailureReason::Panic),
                );
            }
        }
    }

    fn abandon(&self, reason: String) {
        let f = self.take_f();
        self.fail_unstarted(TaskError::Broken { reason }, FailureReason::Broken);
        drop(f);
    }

    fn discard(&self) {
        let f = self.take_f();
        self.cancel();
        drop(f);
    }

    fn reject(&self) -> Option<Box<dyn Any + Send>> {
        let f = self.take_f();
        if self.refuse() {
            Some(Box::new(f))
        } else {
            None
        }
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
    /// [`Executor::max_workers`] is used, if it knows.
    pub fn new(
        executor: E,
        exporter: ExecutorExporter,
        max_workers: Option<usize>,
    ) -> InstrumentedExecutorProxy<E> {
        let max_workers = max_workers.or_else(|| executor.max_workers());
        if let Some(n) = max_workers {
            exporter.add_max_workers(n);
        }
        let acct = Arc::new(Accounting::new(exporter.series().clone()));
        InstrumentedExecutorProxy {
            inner: executor,
            exporter,
            acct,
            max_workers,
        }
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
        self.dispatch(f, classify, |core| TaskHandle::new(core.clone()))
    }

    /// Admits, builds and hands over one task; `handle` makes what the
    /// caller gets back from the task's shared state before the executor
    /// sees it (nothing, for [`spawn`](Self::spawn): the task then has a
    /// single owner and the submit changes no reference count).
    fn dispatch<F, T, C: Classify<T>, H>(
        &self,
        f: F,
        classify: C,
        handle: impl FnOnce(&Arc<JobCore<F, T, C>>) -> H,
    ) -> Result<H, SubmitError<F>>
    where
        F: Body<Output = T>,
        T: Send + 'static,
    {
        let series = &self.acct.series;
        if !self.acct.admit() {
            series.rejected_unqueued();
            return Err(SubmitError::new(f, crate::executor::RejectReason::Shutdown));
        }
        let core = Arc::new(TaskCore::with_job(
            &self.acct,
            Job {
                f: Once::new(f),
                classify,
            },
        ));
        let handle = handle(&core);
        series.enqueue();
        match self.inner.execute(Task::from_shared(core)) {
            Ok(()) => {
                series.accepted();
                Ok(handle)
            }
            Err(rejected) => {
                // The task's own state moves to refused and counts it, so a
                // task is counted once even if an executor broke the
                // contract and handed back another one.
                let reason = rejected.reason();
                match rejected.into_task().reject().map(|f| f.downcast::<F>()) {
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
        self.dispatch(f, NeverFails, |_| ())
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
    /// Do not call it from inside one of this executor's tasks: it would wait
    /// for itself.
    pub fn shutdown(&self) {
        self.acct.close();
        self.acct.wait_idle();
        self.inner.shutdown();
    }

    /// Like [`shutdown`](Self::shutdown), but tasks that have not started are
    /// cancelled (counted as cancelled; their handles give
    /// [`TaskError::Cancelled`]). Running tasks finish. Idempotent.
    pub fn shutdown_now(&self) {
        self.acct.close();
        self.acct.cancel_pending();
        self.acct.wait_idle();
        self.inner.shutdown();
    }

    /// True once [`shutdown`](Self::shutdown) or
    /// [`shutdown_now`](Self::shutdown_now) was called.
    pub fn is_shutdown(&self) -> bool {
        self.acct.is_closed()
    }
}

#[cold]
fn unreachable_task<F, H>(reason: crate::executor::RejectReason) -> Result<H, SubmitError<F>> {
    // Reaching this means an `Executor` returned a task it was not given. The
    // task it kept is counted when it ends (run, or cancelled when dropped);
    // the closure cannot be returned.
    panic!("an executor handed back a different task than it was given ({reason})")
}

impl<E: Executor> Executor for InstrumentedExecutorProxy<E> {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        // Counted like `spawn`; a refused task goes back as itself, so a
        // proxy wrapping this one gets its own task back.
        self.dispatch(RunTask(task), NeverFails, |_| ())
            .map_err(|e| {
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
}

impl<E: Executor> Drop for InstrumentedExecutorProxy<E> {
    /// Same as [`shutdown`](InstrumentedExecutorProxy::shutdown): waits for
    /// accepted tasks and joins the workers.
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(all(test, not(loom), target_pointer_width = "64"))]
mod layout {
    use super::{JobCore, NeverFails};

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

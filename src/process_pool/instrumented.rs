//! [`ProcessPoolExecutor`]: the process pool with the crate's metrics.
//!
//! Every metric is recorded in the parent process, through the same task
//! state machine ([`TaskCore`]) and series as the thread pool: the pool's
//! dispatcher reports each job's life through a [`JobSink`], and this module
//! turns those reports into the task's state moves. Wait is submit to the
//! worker's start acknowledgement; duration is that acknowledgement to the
//! result.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::Registry;

use super::job::{JobFailure, JobOutcome, JobSink, JobSpec, PoolObserver, RestartReason};
use super::pool::{ProcessPool, ProcessPoolBuilder};
use super::task::ProcessTask;
use super::SubmitError;
use crate::error::{BuildError, BuildErrorKind, TaskError};
use crate::exporter::{ExecutorExporter, ExecutorExporterBuilder, FailureReason, Series};
use crate::handle::{Accounting, Clock, TaskCore, TaskHandle};

/// What a process task's handle yields: the task's own `Result`, whose `Err`
/// is counted as failed with reason `error`.
pub type ProcessOutput<T> = Result<<T as ProcessTask>::Output, <T as ProcessTask>::Error>;

/// Reports worker start-ups and replacements into the series, once it exists.
struct Observer(Arc<OnceLock<Arc<Series>>>);

impl PoolObserver for Observer {
    fn worker_started(&self, _pid: u32) {
        if let Some(series) = self.0.get() {
            series.worker_started();
        }
    }

    fn worker_restarted(&self, _pid: u32, _reason: RestartReason) {
        if let Some(series) = self.0.get() {
            series.worker_restarted();
        }
    }
}

fn classify(failure: JobFailure) -> (TaskError, FailureReason) {
    let reason = match &failure {
        JobFailure::Panic { message } => {
            return (
                TaskError::Panicked {
                    message: message.clone(),
                },
                FailureReason::Panic,
            )
        }
        JobFailure::Broken { message } => {
            return (
                TaskError::Broken {
                    reason: message.clone(),
                },
                FailureReason::Broken,
            )
        }
        JobFailure::Error { .. } => FailureReason::Error,
        JobFailure::UnknownTask { .. } => FailureReason::UnknownTask,
        JobFailure::Serialization { .. } => FailureReason::Serialization,
        JobFailure::WorkerDied { .. } => FailureReason::WorkerDied,
        JobFailure::Timeout { .. } => FailureReason::Timeout,
        JobFailure::Protocol { .. } => FailureReason::Protocol,
        JobFailure::Killed => FailureReason::Killed,
        JobFailure::Cancelled => return (TaskError::Cancelled, FailureReason::Broken),
    };
    (
        TaskError::Failed {
            reason,
            message: failure.to_string(),
        },
        reason,
    )
}

/// One job's link to its task state: the pool's reports move the task.
struct Sink<T: ProcessTask> {
    core: Arc<TaskCore<ProcessOutput<T>>>,
    started: Option<Clock>,
    ended: bool,
}

impl<T: ProcessTask> Sink<T> {
    fn finish_failed(&self, started: Clock, failure: JobFailure) {
        let (error, reason) = classify(failure);
        self.core.finish(started, Err(error), Some(reason));
    }
}

impl<T> JobSink for Sink<T>
where
    T: ProcessTask,
    T::Output: Send,
    T::Error: Send,
{
    fn is_cancelled(&self) -> bool {
        self.core.is_cancelled()
    }

    fn started(&mut self) -> bool {
        self.started = self.core.start();
        self.started.is_some()
    }

    fn finished(mut self: Box<Self>, outcome: JobOutcome) {
        self.ended = true;
        let Some(started) = self.started else { return };
        let decode_failed = |what: &str, e: postcard::Error| JobFailure::Serialization {
            message: format!("cannot decode the {what} of task `{}`: {e}", T::NAME),
        };
        match outcome {
            Ok(bytes) => match postcard::from_bytes::<T::Output>(&bytes) {
                Ok(value) => self.core.finish(started, Ok(Ok(value)), None),
                Err(e) => self.finish_failed(started, decode_failed("output", e)),
            },
            Err(JobFailure::Error { payload, .. }) => {
                match postcard::from_bytes::<T::Error>(&payload) {
                    Ok(error) => {
                        self.core
                            .finish(started, Ok(Err(error)), Some(FailureReason::Error))
                    }
                    Err(e) => self.finish_failed(started, decode_failed("error", e)),
                }
            }
            Err(failure) => self.finish_failed(started, failure),
        }
    }

    fn refused(&mut self) {
        self.ended = true;
    }

    fn failed_unstarted(mut self: Box<Self>, failure: JobFailure) {
        self.ended = true;
        if failure == JobFailure::Cancelled {
            self.core.cancel();
            return;
        }
        let (error, reason) = classify(failure);
        self.core.fail_unstarted(error, reason);
    }
}

impl<T: ProcessTask> Drop for Sink<T> {
    /// A job the pool drops without a terminal report was cancelled by its
    /// owner (the cancel already counted it); anything else would be a lost
    /// task, so it is ended here rather than left uncounted.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        match self.started {
            None => {
                self.core.cancel();
            }
            Some(started) => self.core.finish(
                started,
                Err(TaskError::Failed {
                    reason: FailureReason::WorkerDied,
                    message: "the pool lost track of the task".to_owned(),
                }),
                Some(FailureReason::WorkerDied),
            ),
        }
    }
}

/// A process pool that is instrumented out of the box: every metric of the
/// thread pool, with `executor_type="process_pool"`, recorded in this
/// process, plus `worker_restarts_total` and the failure reasons
/// `worker_died`, `timeout`, `serialization`, `unknown_task`, `protocol` and
/// `killed`.
///
/// Tasks are [`ProcessTask`] types; call
/// [`run_if_worker`](super::run_if_worker) first thing in `main` (see the
/// [module docs](super)). A worker that crashes fails only its task, with an
/// error naming its pid and exit code or signal, and is replaced.
///
/// ```no_run
/// use executor_exporter::process_pool::{run_if_worker, ProcessPoolExecutor, ProcessTask, WorkerRegistry};
///
/// struct Fib;
/// impl ProcessTask for Fib {
///     const NAME: &'static str = "fib";
///     type Input = u32;
///     type Output = u64;
///     type Error = String;
///     fn run(n: u32) -> Result<u64, String> {
///         Ok((0..n).fold((0u64, 1u64), |(a, b), _| (b, a.wrapping_add(b))).0)
///     }
/// }
///
/// fn main() {
///     run_if_worker(&WorkerRegistry::new().register::<Fib>());
///     let pool = ProcessPoolExecutor::builder().max_workers(2).exporter_id("fib").build().unwrap();
///     let handle = pool.submit::<Fib>(&50).unwrap();
///     assert_eq!(handle.join(), Ok(Ok(12_586_269_025)));
/// }
/// ```
pub struct ProcessPoolExecutor {
    pool: ProcessPool,
    exporter: ExecutorExporter,
    acct: Arc<Accounting>,
}

impl fmt::Debug for ProcessPoolExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessPoolExecutor")
            .field("pool", &self.pool)
            .field("exporter", &self.exporter)
            .finish()
    }
}

impl ProcessPoolExecutor {
    /// Starts building a pool: the pool's options and the exporter's together.
    pub fn builder() -> ProcessPoolExecutorBuilder {
        ProcessPoolExecutorBuilder::default()
    }

    /// Submits task `T` with `input`; its handle yields the task's own
    /// `Result` (an `Err` is counted as failed with reason `error`), or a
    /// [`TaskError`] when the task could not produce one.
    ///
    /// The input is encoded here: an input that cannot be encoded, or is over
    /// the maximum frame size, is refused ([`SubmitError::Serialization`]) and
    /// counted as rejected, with nothing sent.
    pub fn submit<T>(&self, input: &T::Input) -> Result<TaskHandle<ProcessOutput<T>>, SubmitError>
    where
        T: ProcessTask,
        T::Output: Send,
        T::Error: Send,
    {
        self.submit_inner::<T>(input, None)
    }

    /// Like [`submit`](Self::submit), with a timeout for this task: on expiry
    /// its worker is killed and replaced and the task fails with reason
    /// `timeout`.
    pub fn submit_with_timeout<T>(
        &self,
        input: &T::Input,
        timeout: Duration,
    ) -> Result<TaskHandle<ProcessOutput<T>>, SubmitError>
    where
        T: ProcessTask,
        T::Output: Send,
        T::Error: Send,
    {
        self.submit_inner::<T>(input, Some(timeout))
    }

    fn submit_inner<T>(
        &self,
        input: &T::Input,
        timeout: Option<Duration>,
    ) -> Result<TaskHandle<ProcessOutput<T>>, SubmitError>
    where
        T: ProcessTask,
        T::Output: Send,
        T::Error: Send,
    {
        let series = &self.acct.series;
        if !self.acct.admit() {
            series.rejected_unqueued();
            return Err(SubmitError::Shutdown);
        }
        let payload = match postcard::to_stdvec(input) {
            Ok(payload) => payload,
            Err(e) => {
                series.rejected_unqueued();
                self.acct.ended();
                return Err(SubmitError::Serialization(format!(
                    "cannot encode the input of task `{}`: {e}",
                    T::NAME
                )));
            }
        };
        let core = Arc::new(TaskCore::new(self.acct.clone()));
        let sink = Sink::<T> {
            core: core.clone(),
            started: None,
            ended: false,
        };
        let spec = JobSpec {
            task: T::NAME.to_owned(),
            payload,
            timeout,
        };
        series.enqueue();
        match self.pool.submit_job(spec, Box::new(sink)) {
            Ok(()) => {
                series.accepted();
                Ok(TaskHandle::new(core))
            }
            Err(rejected) => {
                // The refused sink is dropped as "ended": it never held a task.
                let mut sink = rejected.sink;
                sink.refused();
                series.rejected();
                self.acct.ended();
                Err(rejected.error)
            }
        }
    }

    /// Applies task `T` to every input, each its own task, and yields the
    /// results in input order. Inputs are read lazily, with at most twice
    /// `max_workers` submitted and not yet yielded; dropping the iterator
    /// cancels the ones not yet sent to a worker.
    pub fn map<T, I>(&self, inputs: I) -> ProcessMap<'_, T, I::IntoIter>
    where
        T: ProcessTask,
        T::Output: Send,
        T::Error: Send,
        I: IntoIterator<Item = T::Input>,
    {
        ProcessMap {
            pool: self,
            inputs: Some(inputs.into_iter()),
            pending: VecDeque::new(),
            in_flight: self.pool.max_workers().saturating_mul(2).max(1),
        }
        .filled()
    }

    /// The exporter this pool records into.
    pub fn exporter(&self) -> &ExecutorExporter {
        &self.exporter
    }

    /// The uninstrumented pool inside.
    pub fn inner(&self) -> &ProcessPool {
        &self.pool
    }

    /// The most worker processes this pool runs.
    pub fn max_workers(&self) -> usize {
        self.pool.max_workers()
    }

    /// Worker processes alive now.
    pub fn workers(&self) -> usize {
        self.pool.workers()
    }

    /// The process ids of the workers alive now.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.pool.worker_pids()
    }

    /// Waits until every task accepted so far has ended; the pool stays usable.
    pub fn join(&self) {
        self.acct.wait_idle();
    }

    /// Stops accepting tasks, waits for every accepted task, then stops and
    /// reaps the workers. Idempotent; also what `Drop` does.
    pub fn shutdown(&self) {
        self.acct.close();
        self.pool.shutdown();
    }

    /// Like [`shutdown`](Self::shutdown), but tasks not yet sent to a worker
    /// are cancelled (counted as cancelled). Running tasks finish.
    pub fn shutdown_now(&self) {
        self.acct.close();
        self.pool.shutdown_now();
    }

    /// Stops everything now: every worker is killed with SIGKILL, and running
    /// and queued tasks fail with reason `killed`. Returns once every worker
    /// is reaped.
    pub fn kill(&self) {
        self.acct.close();
        self.pool.kill();
    }
}

/// Options of a [`ProcessPoolExecutor`]: the pool's and the exporter's.
#[derive(Debug, Default)]
pub struct ProcessPoolExecutorBuilder {
    pool: ProcessPoolBuilder,
    exporter: ExecutorExporterBuilder,
}

impl ProcessPoolExecutorBuilder {
    /// All the pool's options at once (timeouts, frame size, worker program...).
    pub fn pool(mut self, pool: ProcessPoolBuilder) -> Self {
        self.pool = pool;
        self
    }

    /// See [`ProcessPoolBuilder::max_workers`].
    pub fn max_workers(mut self, n: usize) -> Self {
        self.pool = self.pool.max_workers(n);
        self
    }

    /// See [`ProcessPoolBuilder::max_tasks_per_child`].
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.pool = self.pool.max_tasks_per_child(n);
        self
    }

    /// See [`ProcessPoolBuilder::task_timeout`].
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.pool = self.pool.task_timeout(timeout);
        self
    }

    /// See [`ProcessPoolBuilder::initializer`].
    pub fn initializer<T: ProcessTask>(mut self, input: &T::Input) -> Self {
        self.pool = self.pool.initializer::<T>(input);
        self
    }

    /// See [`ProcessPoolBuilder::worker_test_entry`].
    pub fn worker_test_entry(mut self, test: &str) -> Self {
        self.pool = self.pool.worker_test_entry(test);
        self
    }

    /// See [`ExecutorExporterBuilder::exporter_id`].
    pub fn exporter_id(mut self, id: impl Into<String>) -> Self {
        self.exporter = self.exporter.exporter_id(id);
        self
    }

    /// See [`ExecutorExporterBuilder::registry`].
    pub fn registry(mut self, registry: Registry) -> Self {
        self.exporter = self.exporter.registry(registry);
        self
    }

    /// All the exporter's options at once (namespace, buckets, type...);
    /// `executor_type` defaults to `process_pool`.
    pub fn exporter(mut self, exporter: ExecutorExporterBuilder) -> Self {
        self.exporter = exporter;
        self
    }

    /// Builds the pool (no worker starts until the first task), then the
    /// exporter; every series exists, at zero, when this returns.
    pub fn build(self) -> Result<ProcessPoolExecutor, BuildError> {
        let series_slot = Arc::new(OnceLock::new());
        let pool = self
            .pool
            .observer(Arc::new(Observer(series_slot.clone())))
            .build()
            .map_err(|e| BuildError::new(BuildErrorKind::Pool(Box::new(e))))?;
        let exporter = self.exporter.executor_type_or("process_pool").build()?;
        let _ = series_slot.set(exporter.series().clone());
        exporter.add_max_workers(pool.max_workers());
        let acct = Arc::new(Accounting::new(exporter.series().clone()));
        Ok(ProcessPoolExecutor {
            pool,
            exporter,
            acct,
        })
    }
}

/// Results of [`ProcessPoolExecutor::map`], in input order.
pub struct ProcessMap<'a, T: ProcessTask, I> {
    pool: &'a ProcessPoolExecutor,
    inputs: Option<I>,
    pending: VecDeque<Result<TaskHandle<ProcessOutput<T>>, TaskError>>,
    in_flight: usize,
}

impl<T, I> ProcessMap<'_, T, I>
where
    T: ProcessTask,
    T::Output: Send,
    T::Error: Send,
    I: Iterator<Item = T::Input>,
{
    fn filled(mut self) -> Self {
        self.fill();
        self
    }

    fn fill(&mut self) {
        while self.pending.len() < self.in_flight {
            let Some(input) = self.inputs.as_mut().and_then(Iterator::next) else {
                self.inputs = None;
                return;
            };
            let handle = self.pool.submit::<T>(&input).map_err(|e| match e {
                SubmitError::Serialization(message) => TaskError::Failed {
                    reason: FailureReason::Serialization,
                    message,
                },
                SubmitError::Broken(reason) => TaskError::Broken { reason },
                _ => TaskError::Rejected(crate::RejectReason::Shutdown),
            });
            if matches!(
                handle,
                Err(TaskError::Rejected(_) | TaskError::Broken { .. })
            ) {
                self.inputs = None;
            }
            self.pending.push_back(handle);
        }
    }
}

impl<T, I> Iterator for ProcessMap<'_, T, I>
where
    T: ProcessTask,
    T::Output: Send,
    T::Error: Send,
    I: Iterator<Item = T::Input>,
{
    type Item = Result<ProcessOutput<T>, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.pending.pop_front()?;
        self.fill();
        Some(next.and_then(TaskHandle::join))
    }
}

impl<T: ProcessTask, I> Drop for ProcessMap<'_, T, I> {
    fn drop(&mut self) {
        for handle in self.pending.drain(..).flatten() {
            handle.cancel();
        }
    }
}

impl<T: ProcessTask, I> fmt::Debug for ProcessMap<'_, T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessMap")
            .field("pending", &self.pending.len())
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

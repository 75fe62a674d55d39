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
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::Registry;
use serde::de::DeserializeOwned;

use super::job::{JobFailure, JobOutcome, JobSink, JobSpec, PoolObserver, RestartReason};
use super::pool::{ProcessPool, ProcessPoolBuilder};
use super::task::{chunk_name, ProcessTask, CHUNK_PREFIX};
use super::wire::{Blob, WireOutcome};
use super::SubmitError;
use crate::error::{panic_message, BuildError, BuildErrorKind, TaskError};
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

/// What one item of a task yields: the task's own `Result`, or why there is none.
type ItemResult<T> = Result<ProcessOutput<T>, TaskError>;

/// What a chunk's handle yields: one result per item sent, in order.
type ChunkValue<T> = Vec<ItemResult<T>>;

/// Turns the outcome of one run of `T` (a task, or one item of a chunk) into
/// its result and the failure reason it counts under (`None`: completed).
///
/// Runs on the pool's dispatcher thread, and `Deserialize` is the user's
/// code: a panic there fails this one result with reason `serialization`
/// (the panic's message in the error) instead of unwinding the dispatcher.
fn decode_item<T: ProcessTask>(outcome: JobOutcome) -> (ItemResult<T>, Option<FailureReason>) {
    fn decode<V: DeserializeOwned>(what: &str, name: &str, bytes: &[u8]) -> Result<V, JobFailure> {
        let message = match catch_unwind(AssertUnwindSafe(|| postcard::from_bytes::<V>(bytes))) {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => format!("cannot decode the {what} of task `{name}`: {e}"),
            Err(panic) => format!(
                "decoding the {what} of task `{name}` panicked: {}",
                panic_message(&*panic)
            ),
        };
        Err(JobFailure::Serialization { message })
    }
    let failure = match outcome {
        Ok(bytes) => match decode::<T::Output>("output", T::NAME, &bytes) {
            Ok(value) => return (Ok(Ok(value)), None),
            Err(failure) => failure,
        },
        Err(JobFailure::Error { payload, .. }) => {
            match decode::<T::Error>("error", T::NAME, &payload) {
                Ok(error) => return (Ok(Err(error)), Some(FailureReason::Error)),
                Err(failure) => failure,
            }
        }
        Err(failure) => failure,
    };
    let (error, reason) = classify(failure);
    (Err(error), Some(reason))
}

/// How a job's reports become its handle's value: one task, or a chunk.
trait Decode: Send + 'static {
    type Value: Send + 'static;
    /// The value of a job that ended (a started job's outcome) and the
    /// failure reason it counts under.
    fn decode(
        &self,
        outcome: JobOutcome,
    ) -> (Result<Self::Value, TaskError>, Option<FailureReason>);
    /// A failure the pool reports, as the user should see it.
    fn failure(&self, failure: JobFailure) -> JobFailure {
        failure
    }
}

/// One task of type `T`.
struct One<T>(PhantomData<fn() -> T>);

impl<T> Decode for One<T>
where
    T: ProcessTask,
    T::Output: Send,
    T::Error: Send,
{
    type Value = ProcessOutput<T>;

    fn decode(
        &self,
        outcome: JobOutcome,
    ) -> (Result<Self::Value, TaskError>, Option<FailureReason>) {
        decode_item::<T>(outcome)
    }
}

/// A chunk of `items` inputs of `T`, sent as one job under the derived chunk
/// name. Its reason: `panic` if an item panicked, else `serialization` if an
/// item's data could not be encoded or decoded, else `error` if an item
/// returned `Err`, else none (completed).
struct Chunk<T> {
    items: usize,
    _task: PhantomData<fn() -> T>,
}

impl<T> Decode for Chunk<T>
where
    T: ProcessTask,
    T::Output: Send,
    T::Error: Send,
{
    type Value = ChunkValue<T>;

    fn decode(
        &self,
        outcome: JobOutcome,
    ) -> (Result<Self::Value, TaskError>, Option<FailureReason>) {
        let outcomes = match outcome {
            Ok(bytes) => match postcard::from_bytes::<Vec<WireOutcome>>(&bytes) {
                Ok(outcomes) if outcomes.len() == self.items => outcomes,
                Ok(outcomes) => {
                    return fail(JobFailure::Serialization {
                        message: format!(
                            "a chunk of {} inputs of task `{}` came back with {} results",
                            self.items,
                            T::NAME,
                            outcomes.len()
                        ),
                    })
                }
                Err(e) => {
                    return fail(JobFailure::Serialization {
                        message: format!(
                            "cannot decode the results of a chunk of task `{}`: {e}",
                            T::NAME
                        ),
                    })
                }
            },
            Err(failure) => return fail(self.failure(failure)),
        };
        let mut worst: Option<FailureReason> = None;
        let results = outcomes
            .into_iter()
            .map(|outcome| {
                let (result, reason) = decode_item::<T>(outcome.into_job_outcome());
                if rank(reason) > rank(worst) {
                    worst = reason;
                }
                result
            })
            .collect();
        (Ok(results), worst)
    }

    /// The chunk's derived name is an implementation detail: an unknown chunk
    /// is reported under the task's own name.
    fn failure(&self, failure: JobFailure) -> JobFailure {
        match failure {
            JobFailure::UnknownTask { .. } => JobFailure::UnknownTask {
                name: T::NAME.to_owned(),
            },
            other => other,
        }
    }
}

/// Which item failure decides a chunk's reason: `panic` over
/// `serialization` over `error` (the only reasons an item alone can have).
fn rank(reason: Option<FailureReason>) -> u8 {
    match reason {
        None => 0,
        Some(FailureReason::Error) => 1,
        Some(FailureReason::Panic) => 3,
        Some(_) => 2,
    }
}

fn fail<V>(failure: JobFailure) -> (Result<V, TaskError>, Option<FailureReason>) {
    let (error, reason) = classify(failure);
    (Err(error), Some(reason))
}

/// One job's link to its task state: the pool's reports move the task.
struct Sink<D: Decode> {
    core: Arc<TaskCore<D::Value>>,
    decode: D,
    started: Option<Clock>,
    ended: bool,
}

impl<D: Decode> JobSink for Sink<D> {
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
        let (result, reason) = self.decode.decode(outcome);
        self.core.finish(started, result, reason);
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
        let (error, reason) = classify(self.decode.failure(failure));
        self.core.fail_unstarted(error, reason);
    }
}

impl<D: Decode> Drop for Sink<D> {
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
        let spec = JobSpec {
            task: T::NAME.to_owned(),
            payload,
            timeout,
        };
        self.enqueue(spec, One::<T>(PhantomData))
    }

    /// Queues an admitted job (`acct.admit()` already returned true): its
    /// task state, its sink, and the submit counts.
    fn enqueue<D: Decode>(
        &self,
        spec: JobSpec,
        decode: D,
    ) -> Result<TaskHandle<D::Value>, SubmitError> {
        let series = &self.acct.series;
        let core = Arc::new(TaskCore::new(&self.acct));
        let sink = Sink {
            core: core.clone(),
            decode,
            started: None,
            ended: false,
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

    /// Submits one chunk: the inputs already encoded one by one. Counted as
    /// one task.
    fn submit_chunk<T>(
        &self,
        items: Vec<Blob<'static>>,
    ) -> Result<TaskHandle<ChunkValue<T>>, SubmitError>
    where
        T: ProcessTask,
        T::Output: Send,
        T::Error: Send,
    {
        if !self.acct.admit() {
            self.acct.series.rejected_unqueued();
            return Err(SubmitError::Shutdown);
        }
        let payload = match postcard::to_stdvec(&items) {
            Ok(payload) => payload,
            Err(e) => {
                // Byte strings always encode; kept for completeness.
                self.acct.series.rejected_unqueued();
                self.acct.ended();
                return Err(SubmitError::Serialization(format!(
                    "cannot encode a chunk of task `{}`: {e}",
                    T::NAME
                )));
            }
        };
        let spec = JobSpec {
            task: chunk_name::<T>(),
            payload,
            timeout: None,
        };
        let decode = Chunk::<T> {
            items: items.len(),
            _task: PhantomData,
        };
        self.enqueue(spec, decode).map_err(|e| match e {
            // The derived name is an implementation detail (e.g. a chunk over the frame size).
            SubmitError::Serialization(m) => {
                SubmitError::Serialization(m.replace(CHUNK_PREFIX, "chunk of "))
            }
            other => other,
        })
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

    /// Like [`map`](Self::map), but sends the inputs `chunk_size` at a time:
    /// one round trip to a worker runs a whole chunk, which amortises the
    /// per-task cost of the process boundary for small tasks. Results are
    /// still one per input, in input order, each with its own `Result` or
    /// [`TaskError`]; a chunk size of 0 is an error.
    ///
    /// In the metrics **one chunk is one task**: one wait (submit of the chunk
    /// to the worker's start acknowledgement) and one duration (that
    /// acknowledgement to the chunk's last result). A chunk counts as failed
    /// with reason `panic` if any of its items panicked, else `serialization`
    /// if any item's output or error could not be encoded or decoded, else
    /// `error` if any item returned `Err`, else as completed. A panicking item
    /// fails only itself (the worker catches it and goes on with the next
    /// item). A failure of the whole chunk (its worker died, the pool was
    /// killed, the chunk was cancelled) is every item's result. The pool's
    /// [`task_timeout`](ProcessPoolExecutorBuilder::task_timeout) applies to a
    /// chunk as a whole.
    ///
    /// Inputs are read and encoded lazily, with at most twice `max_workers`
    /// chunks submitted and not yet yielded; dropping the iterator cancels
    /// the chunks not yet sent to a worker. An input that cannot be encoded
    /// fails alone, in the caller, and is counted as one rejected task, as in
    /// [`map`](Self::map).
    ///
    /// ```no_run
    /// # use executor_exporter::process_pool::{ProcessPoolExecutor, ProcessTask};
    /// # struct Square;
    /// # impl ProcessTask for Square {
    /// #     const NAME: &'static str = "square";
    /// #     type Input = u64; type Output = u64; type Error = String;
    /// #     fn run(x: u64) -> Result<u64, String> { Ok(x * x) }
    /// # }
    /// # let pool = ProcessPoolExecutor::builder().build().unwrap();
    /// let squares: Vec<u64> = pool
    ///     .map_chunked::<Square, _>(0..1000u64, 100)?
    ///     .map(|r| r.expect("ran").expect("Ok"))
    ///     .collect();
    /// assert_eq!(squares[999], 999 * 999);
    /// # Ok::<(), executor_exporter::BuildError>(())
    /// ```
    pub fn map_chunked<T, I>(
        &self,
        inputs: I,
        chunk_size: usize,
    ) -> Result<ProcessChunkedMap<'_, T, I::IntoIter>, BuildError>
    where
        T: ProcessTask,
        T::Output: Send,
        T::Error: Send,
        I: IntoIterator<Item = T::Input>,
    {
        if chunk_size == 0 {
            return Err(BuildError::new(BuildErrorKind::ZeroBound("chunk_size")));
        }
        Ok(ProcessChunkedMap {
            pool: self,
            inputs: Some(inputs.into_iter()),
            chunk_size,
            pending: VecDeque::new(),
            current: VecDeque::new(),
            in_flight: self.pool.max_workers().saturating_mul(2).max(1),
        }
        .filled())
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
            .build()?;
        let exporter = self.exporter.executor_type_or("process_pool").build()?;
        let _ = series_slot.set(exporter.series().clone());
        exporter.series().expect_failures(&FailureReason::ALL);
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
#[must_use = "the map is lazy: iterate it (`.collect()`, `for`) or only the first few inputs are submitted, and those not yet started are cancelled"]
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
            let handle = self.pool.submit::<T>(&input).map_err(map_error);
            if ends_map(&handle) {
                self.inputs = None;
            }
            self.pending.push_back(handle);
        }
    }
}

/// A submit error as the result of the input(s) `map` submitted for you.
fn map_error(e: SubmitError) -> TaskError {
    match e {
        SubmitError::Serialization(message) => TaskError::Failed {
            reason: FailureReason::Serialization,
            message,
        },
        SubmitError::Broken(reason) => TaskError::Broken { reason },
        _ => TaskError::Rejected(crate::RejectReason::Shutdown),
    }
}

/// Whether a submit failed for every later input too (shutdown, broken
/// pool), so `map` stops reading inputs.
fn ends_map<H>(submitted: &Result<H, TaskError>) -> bool {
    matches!(
        submitted,
        Err(TaskError::Rejected(_) | TaskError::Broken { .. })
    )
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

/// A chunk submitted by [`ProcessPoolExecutor::map_chunked`], with the
/// inputs that failed to encode kept in place.
struct PendingChunk<T: ProcessTask> {
    /// The chunk's handle, or why it was not submitted; `None` when no input
    /// of the chunk could be encoded (nothing was sent).
    handle: Option<Result<TaskHandle<ChunkValue<T>>, TaskError>>,
    /// One entry per input, in order: `Some` for an input that failed to
    /// encode (its result), `None` for one sent in the chunk.
    slots: Vec<Option<TaskError>>,
}

/// Results of [`ProcessPoolExecutor::map_chunked`], one per input, in input
/// order.
#[must_use = "the map is lazy: iterate it (`.collect()`, `for`) or only the first few inputs are submitted, and those not yet started are cancelled"]
pub struct ProcessChunkedMap<'a, T: ProcessTask, I> {
    pool: &'a ProcessPoolExecutor,
    inputs: Option<I>,
    chunk_size: usize,
    pending: VecDeque<PendingChunk<T>>,
    /// Results of the chunk being yielded.
    current: VecDeque<ItemResult<T>>,
    in_flight: usize,
}

impl<T, I> ProcessChunkedMap<'_, T, I>
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

    /// Reads and submits chunks until `in_flight` are pending or the inputs
    /// end.
    fn fill(&mut self) {
        while self.pending.len() < self.in_flight {
            let Some(inputs) = self.inputs.as_mut() else {
                return;
            };
            let mut items = Vec::with_capacity(self.chunk_size);
            let mut slots = Vec::with_capacity(self.chunk_size);
            for input in inputs.by_ref().take(self.chunk_size) {
                match postcard::to_stdvec(&input) {
                    Ok(bytes) => {
                        items.push(Blob(bytes.into()));
                        slots.push(None);
                    }
                    Err(e) => {
                        // Counted like `map` counts it: one task refused.
                        self.pool.acct.series.rejected_unqueued();
                        slots.push(Some(TaskError::Failed {
                            reason: FailureReason::Serialization,
                            message: format!("cannot encode the input of task `{}`: {e}", T::NAME),
                        }));
                    }
                }
            }
            if slots.len() < self.chunk_size {
                self.inputs = None;
            }
            if slots.is_empty() {
                return;
            }
            let handle = if items.is_empty() {
                None
            } else {
                let handle = self.pool.submit_chunk::<T>(items).map_err(map_error);
                if ends_map(&handle) {
                    self.inputs = None;
                }
                Some(handle)
            };
            self.pending.push_back(PendingChunk { handle, slots });
        }
    }
}

impl<T, I> Iterator for ProcessChunkedMap<'_, T, I>
where
    T: ProcessTask,
    T::Output: Send,
    T::Error: Send,
    I: Iterator<Item = T::Input>,
{
    type Item = ItemResult<T>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(next) = self.current.pop_front() {
            return Some(next);
        }
        let chunk = self.pending.pop_front()?;
        self.fill();
        let mut results = match chunk.handle {
            None => Ok(Vec::new().into_iter()),
            Some(handle) => handle.and_then(TaskHandle::join).map(Vec::into_iter),
        };
        self.current = chunk
            .slots
            .into_iter()
            .map(|slot| match (slot, &mut results) {
                (Some(error), _) => Err(error),
                (None, Ok(results)) => results.next().unwrap_or_else(|| {
                    Err(TaskError::Failed {
                        reason: FailureReason::Serialization,
                        message: format!("a chunk of task `{}` lost a result", T::NAME),
                    })
                }),
                (None, Err(error)) => Err(error.clone()),
            })
            .collect();
        self.current.pop_front()
    }
}

impl<T: ProcessTask, I> Drop for ProcessChunkedMap<'_, T, I> {
    fn drop(&mut self) {
        for chunk in self.pending.drain(..) {
            if let Some(Ok(handle)) = chunk.handle {
                handle.cancel();
            }
        }
    }
}

impl<T: ProcessTask, I> fmt::Debug for ProcessChunkedMap<'_, T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessChunkedMap")
            .field("chunk_size", &self.chunk_size)
            .field("pending_chunks", &self.pending.len())
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

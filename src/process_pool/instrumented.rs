//! [`ProcessPoolExecutor`]: the process pool with its series registered as
//! the crate's metrics.
//!
//! Every metric is recorded in the parent process, through the same task
//! state machine and series as the thread pool (see the `sink` module); the
//! plain pool records the same way, into a series registered nowhere.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use super::pool::{ProcessPool, ProcessPoolBuilder};
use super::sink::{ChunkValue, ItemResult, ProcessOutput};
use super::task::ProcessTask;
use super::wire::Blob;
use crate::error::panic_message;
use crate::error::FailureReason;
use crate::error::RejectReason;
use crate::error::SubmitError;
use crate::error::{BuildError, BuildErrorKind, TaskError};
use crate::metrics::{ExecutorExporter, ExecutorExporterBuilder};
use crate::task::{Ordered, Refused, RoomWait, SubmitOne, TaskHandle};

/// The most inputs a chunk makes room for up front; it grows past that as
/// the chunk fills.
const CHUNK_ROOM: usize = 1024;

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
    /// The input is encoded here: an input that cannot be encoded (its
    /// `Serialize` fails or panics), or is over the maximum frame size, is refused ([`RejectReason::Serialization`](crate::RejectReason::Serialization)) and
    /// counted as rejected, with nothing sent.
    pub fn submit<T>(&self, input: &T::Input) -> Result<TaskHandle<ProcessOutput<T>>, SubmitError>
    where
        T: ProcessTask,
        T::Output: Send,
        T::Error: Send,
    {
        self.pool.submit::<T>(input)
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
        self.pool.submit_with_timeout::<T>(input, timeout)
    }

    /// Applies task `T` to every input, each its own task, and yields the
    /// results in input order. Inputs are read lazily, with at most twice
    /// `max_workers` submitted and not yet yielded; dropping the iterator
    /// cancels the ones not yet sent to a worker. An input that finds a
    /// bounded queue full waits for room and is submitted then (those tries
    /// are not counted as rejected), as a chunk of
    /// [`map_chunked`](Self::map_chunked) does.
    pub fn map<T, I>(&self, inputs: I) -> ProcessMap<'_, T, I::IntoIter>
    where
        T: ProcessTask,
        T::Output: Send,
        T::Error: Send,
        I: IntoIterator<Item = T::Input>,
    {
        let in_flight = self.pool.max_workers().saturating_mul(2).max(1);
        let submit = OneInput {
            pool: self,
            _task: PhantomData,
        };
        ProcessMap {
            inner: Ordered::new(inputs.into_iter(), in_flight, submit),
        }
    }

    /// Like [`map`](Self::map), but sends the inputs `chunk_size` at a time:
    /// one round trip to a worker runs a whole chunk, which amortises the
    /// per-task cost of the process boundary for small tasks. Results are
    /// still one per input, in input order, each with its own `Result` or
    /// [`TaskError`]; a chunk size of 0 is an error.
    ///
    /// In the metrics **one chunk is one task**: one wait (submit of the chunk
    /// to its start in the worker) and one duration (that start to the end of
    /// its last item there). A chunk counts as failed
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
    /// [`map`](Self::map). A chunk that finds a bounded queue full waits for
    /// room and is submitted then (not counted as rejected).
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
            waiting: None,
        }
        .filled())
    }

    /// The exporter this pool records into.
    pub fn exporter(&self) -> &ExecutorExporter {
        &self.exporter
    }

    /// The counts of this pool's exporter now ([`ExecutorExporter::snapshot`]).
    pub fn snapshot(&self) -> crate::metrics::Snapshot {
        self.exporter.snapshot()
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

    /// The capacity of the queue of tasks not yet sent to a worker, if it
    /// is bounded.
    pub fn queue_capacity(&self) -> Option<usize> {
        self.pool.queue_capacity()
    }

    /// The process ids of the workers alive now.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.pool.worker_pids()
    }

    /// Waits until every task accepted so far has ended; the pool stays usable.
    pub fn join(&self) {
        self.pool.accounting().wait_idle();
    }

    /// Stops accepting tasks, waits for every accepted task, then stops and
    /// reaps the workers. Idempotent; also what `Drop` does.
    pub fn shutdown(&self) {
        self.pool.shutdown();
    }

    /// Like [`shutdown`](Self::shutdown), but tasks not yet sent to a worker
    /// are cancelled (counted as cancelled). Running tasks finish.
    pub fn shutdown_now(&self) {
        self.pool.shutdown_now();
    }

    /// Stops everything now: every worker is killed with SIGKILL, and running
    /// and queued tasks fail with reason `killed`. Returns once every worker
    /// is reaped.
    pub fn kill(&self) {
        self.pool.kill();
    }
}

/// Options of a [`ProcessPoolExecutor`]: the pool's and the exporter's.
///
/// ```no_run
/// use std::time::Duration;
/// use executor_exporter::ProcessPoolExecutor;
///
/// // `run_if_worker(..)` comes first in `main` (see the module docs).
/// let pool = ProcessPoolExecutor::builder()
///     .max_workers(4)
///     .task_timeout(Duration::from_secs(30))
///     .max_tasks_per_child(1000)
///     .exporter_id("parsers")
///     .build()?;
/// # Ok::<(), executor_exporter::BuildError>(())
/// ```
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

    /// See [`ProcessPoolBuilder::queue_capacity`]. The capacity is exposed
    /// as the `queue_capacity` gauge while the pool lives; a submit refused
    /// because the queue is full is counted in `rejected_tasks_total`.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.pool = self.pool.queue_capacity(n);
        self
    }

    /// See [`ProcessPoolBuilder::when_full`].
    pub fn when_full(mut self, policy: crate::bounded::FullPolicy) -> Self {
        self.pool = self.pool.when_full(policy);
        self
    }

    /// See [`ProcessPoolBuilder::initializer`].
    pub fn initializer<T: ProcessTask>(mut self, input: &T::Input) -> Self {
        self.pool = self.pool.initializer::<T>(input);
        self
    }

    /// See [`ProcessPoolBuilder::spin`]: the low-latency mode.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.pool = self.pool.spin(spin);
        self
    }

    /// See [`ProcessPoolBuilder::worker_test_entry`].
    pub fn worker_test_entry(mut self, test: &str) -> Self {
        self.pool = self.pool.worker_test_entry(test);
        self
    }

    crate::metrics::exporter_options!("process_pool");

    /// Builds the pool (no worker starts until the first task), then the
    /// exporter; every series exists, at zero, when this returns.
    pub fn build(self) -> Result<ProcessPoolExecutor, BuildError> {
        let exporter = self.exporter.executor_type_or("process_pool");
        let (mut pool, exporter) = self.pool.build_recording(|| {
            let exporter = exporter.build()?;
            Ok((exporter.series().clone(), exporter))
        })?;
        pool.exemplar = exporter.exemplar_hook().cloned();
        Ok(ProcessPoolExecutor { pool, exporter })
    }
}

/// Results of [`ProcessPoolExecutor::map`], in input order.
#[must_use = "the map is lazy: iterate it (`.collect()`, `for`) or only the first few inputs are submitted, and those not yet started are cancelled"]
pub struct ProcessMap<'a, T: ProcessTask, I: Iterator> {
    inner: Ordered<I, OneInput<'a, T>, ProcessOutput<T>>,
}

/// Submits one input of a [`ProcessMap`].
struct OneInput<'a, T> {
    pool: &'a ProcessPoolExecutor,
    _task: PhantomData<fn() -> T>,
}

impl<T> SubmitOne<T::Input> for OneInput<'_, T>
where
    T: ProcessTask,
    T::Output: Send,
    T::Error: Send,
{
    type Value = ProcessOutput<T>;

    fn submit_one(
        &mut self,
        input: T::Input,
    ) -> Result<TaskHandle<Self::Value>, Refused<T::Input>> {
        match self.pool.pool.submit_for_map::<T>(&input) {
            Ok(handle) => Ok(handle),
            // The input was only borrowed: it waits for room, as in a thread
            // pool's `map`.
            Err(e) if e.reason() == RejectReason::Full => Err(Refused::Full(input)),
            Err(e) => Err(Refused::Failed(map_error(e))),
        }
    }
}

/// A submit error as the result of the input(s) `map` submitted for you.
fn map_error(e: SubmitError) -> TaskError {
    let detail = e.detail().unwrap_or_default().to_owned();
    match e.reason() {
        RejectReason::Serialization => TaskError::Failed {
            reason: FailureReason::Serialization,
            message: detail,
        },
        RejectReason::Broken => TaskError::Broken { reason: detail },
        other => TaskError::Rejected(other),
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
        self.inner.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<T: ProcessTask, I: Iterator> fmt::Debug for ProcessMap<'_, T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessMap")
            .field("pending", &self.inner.pending())
            .field("in_flight", &self.inner.in_flight())
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
    /// The next chunk, encoded, which found the pool's queue full.
    waiting: Option<(Vec<Blob<'static>>, Vec<Option<TaskError>>)>,
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

    /// Reads and submits chunks until `in_flight` are pending, the inputs
    /// end, or the pool's queue is full (the chunk then waits in `waiting`).
    fn fill(&mut self) {
        while self.pending.len() < self.in_flight {
            let (items, slots) = match self.waiting.take() {
                Some(chunk) => chunk,
                None => match self.read_chunk() {
                    Some(chunk) => chunk,
                    None => return,
                },
            };
            let handle = if items.is_empty() {
                None
            } else {
                match self.pool.pool.submit_chunk::<T>(&items) {
                    Err(e) if e.reason() == RejectReason::Full => {
                        self.waiting = Some((items, slots));
                        return;
                    }
                    submitted => {
                        let handle = submitted.map_err(map_error);
                        if ends_map(&handle) {
                            self.inputs = None;
                        }
                        Some(handle)
                    }
                }
            };
            self.pending.push_back(PendingChunk { handle, slots });
        }
    }

    /// The next chunk of inputs, encoded (`None` once the inputs end): the
    /// items to send, and a slot per input, holding its error if it could
    /// not be encoded.
    #[allow(clippy::type_complexity)]
    fn read_chunk(&mut self) -> Option<(Vec<Blob<'static>>, Vec<Option<TaskError>>)> {
        let inputs = self.inputs.as_mut()?;
        // A chunk's size is a bound, not a size: `usize::MAX` means all inputs.
        let room = self.chunk_size.min(CHUNK_ROOM);
        let mut items = Vec::with_capacity(room);
        let mut slots = Vec::with_capacity(room);
        for input in inputs.by_ref().take(self.chunk_size) {
            // The input's `Serialize` is the user's code: a panic fails that item as an
            // error would, as `submit` refuses it.
            let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                postcard::to_stdvec(&input).map_err(|e| e.to_string())
            }))
            .unwrap_or_else(|panic| Err(format!("panicked: {}", panic_message(&*panic))));
            match encoded {
                Ok(bytes) => {
                    items.push(Blob(bytes.into()));
                    slots.push(None);
                }
                Err(e) => {
                    // Counted like `map` counts it: one task refused.
                    self.pool.pool.accounting().refused_unadmitted();
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
        (!slots.is_empty()).then_some((items, slots))
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
        let mut room = RoomWait::new();
        let chunk = loop {
            if let Some(chunk) = self.pending.pop_front() {
                break chunk;
            }
            // Nothing of ours pending: the queue is full of others' tasks.
            self.waiting.as_ref()?;
            room.sleep();
            self.fill();
        };
        // With the queue full, this chunk's end may make room: submit after it.
        let queue_full = self.waiting.is_some();
        if !queue_full {
            self.fill();
        }
        let mut results = match chunk.handle {
            None => Ok(Vec::new().into_iter()),
            Some(handle) => handle.and_then(TaskHandle::join).map(Vec::into_iter),
        };
        if queue_full {
            self.fill();
        }
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

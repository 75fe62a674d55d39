//! The plain process pool: builder, submission, and the dispatcher thread that owns the workers.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::job::{
    JobFailure, JobOutcome, JobSink, JobSpec, PoolObserver, RestartReason, WorkerExit,
};
use super::sink::{Chunk, ChunkValue, Decode, One, ProcessOutput, SeriesObserver, Sink};
use super::sys;
use super::task::{chunk_name, ProcessTask, CHUNK_PREFIX};
use super::wire::{
    self, Blob, Call, FrameReader, FromWorker, ToWorker, WireOutcome, DEFAULT_MAX_FRAME,
    MIN_MAX_FRAME, PROTOCOL_VERSION,
};
use super::worker::{forgotten_hook, CHANNEL_FD, ENV_MAX_FRAME, ENV_WORKER};
use crate::error::FailureReason;
use crate::error::SubmitError;
use crate::error::{BuildError, BuildErrorKind};
use crate::executor::RejectReason;
use crate::metrics::{ExecutorExporter, Series};
use crate::task::{Accounting, TaskCore, TaskHandle};

/// How often a job is sent again after its worker died before acknowledging it.
const MAX_ATTEMPTS: u32 = 3;
/// Room for the message framing around a task's input (tag, id, name length, payload length).
const RUN_OVERHEAD: usize = 32;
/// How long a worker that closed its channel gets to become reapable before it is killed.
const EXIT_AFTER_EOF: Duration = Duration::from_secs(2);
/// Where pidfds are unavailable (kernels before 5.3, a seccomp filter), how often busy or starting
/// workers are checked for an exit that their channel does not show (a forked child holds it open).
const EXIT_CHECK: Duration = Duration::from_millis(250);

/// Builds a [`ProcessPool`]. Setters never fail; [`build`](Self::build) validates.
///
/// ```no_run
/// use std::time::Duration;
/// use executor_exporter::process_pool::ProcessPool;
///
/// let pool = ProcessPool::builder()
///     .max_workers(4)
///     .max_tasks_per_child(1000)
///     .task_timeout(Duration::from_secs(30))
///     .build()?;
/// # Ok::<(), executor_exporter::BuildError>(())
/// ```
pub struct ProcessPoolBuilder {
    max_workers: Option<usize>,
    max_tasks_per_child: Option<u64>,
    task_timeout: Option<Duration>,
    start_timeout: Duration,
    shutdown_grace: Duration,
    max_start_failures: u32,
    max_frame: usize,
    program: PathBuf,
    args: Vec<OsString>,
    init: Option<(String, Result<Vec<u8>, String>)>,
    /// Where worker lifecycle events go instead of the pool's series (unit tests).
    observer: Option<Arc<dyn PoolObserver>>,
    thread_name: Option<String>,
}

impl Default for ProcessPoolBuilder {
    fn default() -> Self {
        Self {
            max_workers: None,
            max_tasks_per_child: None,
            task_timeout: None,
            start_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            max_start_failures: 3,
            max_frame: DEFAULT_MAX_FRAME,
            program: PathBuf::from("/proc/self/exe"),
            args: Vec::new(),
            init: None,
            observer: None,
            thread_name: None,
        }
    }
}

impl fmt::Debug for ProcessPoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessPoolBuilder")
            .field("max_workers", &self.max_workers)
            .field("max_tasks_per_child", &self.max_tasks_per_child)
            .field("task_timeout", &self.task_timeout)
            .field("start_timeout", &self.start_timeout)
            .field("max_start_failures", &self.max_start_failures)
            .field("max_frame_size", &self.max_frame)
            .field("program", &self.program)
            .field("args", &self.args)
            .field("initializer", &self.init.as_ref().map(|(name, _)| name))
            .finish_non_exhaustive()
    }
}

impl ProcessPoolBuilder {
    /// A builder with the defaults: one worker per CPU, no timeout, no recycling.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most worker processes alive at once (default: the number of CPUs). Must be at least 1.
    #[must_use]
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n);
        self
    }

    /// Retire a worker after it ran this many tasks and start a fresh one when needed (default: never).
    /// Must be at least 1.
    #[must_use]
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// Default timeout of every task (default: none). On expiry the worker is killed and replaced and the
    /// task fails with reason [`Timeout`](crate::FailureReason::Timeout). [`ProcessPool::submit_with_timeout`] overrides it per task.
    #[must_use]
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// How long a new worker may take to start and run the initializer (default: 30 s). A worker that
    /// takes longer is killed and counts as a start failure. It also bounds how long a write to a worker
    /// may stall (a worker that stops reading its channel for that long is killed).
    #[must_use]
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// How long shutdown waits for an idle worker to exit before killing it (default: 10 s).
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// After this many workers in a row fail to start, the pool is broken: queued and later tasks fail
    /// at once with [`TaskError::Broken`](crate::TaskError::Broken) (default: 3). Must be at least 1.
    #[must_use]
    pub fn max_start_failures(mut self, n: u32) -> Self {
        self.max_start_failures = n;
        self
    }

    /// The largest message, in bytes, either side accepts (default: 256 MiB). Inputs larger than this
    /// fail at submit; larger results fail the task with reason
    /// [`Serialization`](crate::FailureReason::Serialization); a worker that
    /// announces a larger frame is killed. Between 4 KiB and 4 GiB − 1.
    #[must_use]
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// The program started as a worker (default: `/proc/self/exe`, the running binary, even if the file
    /// was replaced on disk). It must call [`run_if_worker`](super::run_if_worker) first thing.
    #[must_use]
    pub fn worker_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// Arguments passed to every worker (default: none).
    #[must_use]
    pub fn worker_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Runs the workers through a test of the current test binary, for pools built under `cargo test`:
    /// the worker is started as `<test binary> <test> --exact --nocapture --test-threads=1 -q`, and that
    /// test must call [`run_if_worker`](super::run_if_worker). `test` is the test's full path in the
    /// binary, e.g. `worker_entry` in an integration test file or `my_mod::tests::worker_entry` in a unit
    /// test. The harness of each worker prints its `running 1 test` banner on stdout when it starts; the
    /// channel on descriptor 3 is untouched by it.
    #[must_use]
    pub fn worker_test_entry(self, test: &str) -> Self {
        self.worker_args([test, "--exact", "--nocapture", "--test-threads=1", "-q"])
    }

    /// Runs task `T` with `input` in every worker before it accepts tasks (its output is ignored). If it
    /// fails or panics, the worker does not start (see [`max_start_failures`](Self::max_start_failures)).
    /// `T` must be registered in the worker's registry like any task.
    #[must_use]
    pub fn initializer<T: ProcessTask>(mut self, input: &T::Input) -> Self {
        let payload = postcard::to_stdvec(input).map_err(|e| e.to_string());
        self.init = Some((T::NAME.to_owned(), payload));
        self
    }

    /// Worker lifecycle events go to `observer` instead of the pool's series.
    #[cfg(test)]
    #[must_use]
    pub(crate) fn observer(mut self, observer: Arc<dyn PoolObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The name of the dispatcher thread (default: `process-pool`).
    #[must_use]
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = Some(name.into());
        self
    }

    /// Validates the options and starts the dispatcher thread. Workers start lazily, on demand.
    pub fn build(self) -> Result<ProcessPool, BuildError> {
        let (pool, ()) = self.build_recording(|| {
            // Handles are the crate's `TaskHandle`, whose task state records into a series; the
            // plain pool's is registered nowhere.
            let exporter = ExecutorExporter::builder()
                .executor_type("process_pool")
                .registry(prometheus::Registry::new())
                .build()?;
            Ok((exporter.series().clone(), ()))
        })?;
        Ok(pool)
    }

    /// Validates the options, then asks `recorder` for the series the pool's tasks and workers are
    /// counted in (so a bad pool option is reported before anything is registered), then starts the
    /// dispatcher thread. `recorder`'s extra value is handed back with the pool.
    pub(crate) fn build_recording<X>(
        self,
        recorder: impl FnOnce() -> Result<(Arc<Series>, X), BuildError>,
    ) -> Result<(ProcessPool, X), BuildError> {
        if let Some(message) = forgotten_hook() {
            return Err(BuildError::new(BuildErrorKind::ForgottenHook(message)));
        }
        let max_workers = match self.max_workers {
            Some(0) => return Err(BuildError::new(BuildErrorKind::ZeroWorkers)),
            Some(n) => n,
            None => num_cpus::get().max(1),
        };
        let zero = |what| Err(BuildError::new(BuildErrorKind::ZeroBound(what)));
        if self.max_tasks_per_child == Some(0) {
            return zero("max_tasks_per_child");
        }
        if self.max_start_failures == 0 {
            return zero("max_start_failures");
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return zero("task_timeout");
        }
        if self.start_timeout.is_zero() {
            return zero("start_timeout");
        }
        let invalid = |why: String| BuildError::new(BuildErrorKind::Invalid(why));
        if !(MIN_MAX_FRAME..=u32::MAX as usize).contains(&self.max_frame) {
            return Err(invalid(format!(
                "max_frame_size must be between {MIN_MAX_FRAME} and {} bytes",
                u32::MAX
            )));
        }
        let init = match self.init {
            None => None,
            Some((task, Ok(payload))) => Some(Call {
                task: Cow::Owned(task),
                payload: Blob(Cow::Owned(payload)),
            }),
            Some((task, Err(e))) => {
                return Err(invalid(format!(
                    "cannot encode the input of initializer `{task}`: {e}"
                )))
            }
        };
        let hello = wire::encode_frame(
            &ToWorker::Hello {
                version: PROTOCOL_VERSION,
                init,
            },
            self.max_frame,
        )
        .map_err(|e| invalid(format!("initializer input: {e}")))?;
        let resource =
            |what| move |error| BuildError::new(BuildErrorKind::Resource { what, error });
        let wake = sys::EventFd::new().map_err(resource("create an eventfd"))?;
        let (series, extra) = recorder()?;
        let observer = self
            .observer
            .unwrap_or_else(|| Arc::new(SeriesObserver(series.clone())));
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                mode: Mode::Running,
                queue: VecDeque::new(),
                broken: None,
                pids: Vec::new(),
            }),
            wake,
        });
        let cfg = Config {
            max_workers,
            max_tasks_per_child: self.max_tasks_per_child,
            task_timeout: self.task_timeout,
            start_timeout: self.start_timeout,
            shutdown_grace: self.shutdown_grace,
            max_start_failures: self.max_start_failures,
            max_frame: self.max_frame,
            program: self.program,
            arg0: std::env::args_os().next(),
            args: self.args,
            hello,
            observer,
        };
        let max_frame = cfg.max_frame;
        let mut dispatcher = Dispatcher {
            shared: Arc::clone(&shared),
            cfg,
            workers: Vec::new(),
            queue: VecDeque::new(),
            next_id: 0,
            start_failures: 0,
            broken: None,
            next_start: None,
            scratch: vec![0; 64 << 10],
            pollfds: Vec::new(),
        };
        // PR_SET_PDEATHSIG fires when the *thread* that started a worker exits, so workers are started
        // only by this thread, which lives until every worker has been reaped.
        let thread = thread::Builder::new()
            .name(self.thread_name.unwrap_or_else(|| "process-pool".into()))
            .spawn(move || dispatcher.run())
            .map_err(resource("start the dispatcher thread"))?;
        series.expect_failures(&FailureReason::ALL);
        series.add_max_workers(max_workers as u64);
        let pool = ProcessPool {
            shared,
            thread: Mutex::new(Some(thread)),
            max_workers,
            max_frame,
            acct: Arc::new(Accounting::new(series)),
        };
        Ok((pool, extra))
    }
}

/// A pool of worker processes running [`ProcessTask`]s, with crash isolation.
///
/// Workers are the current binary re-executed with a marker and start lazily, up to
/// [`max_workers`](ProcessPoolBuilder::max_workers); the binary must call
/// [`run_if_worker`](super::run_if_worker) at the top of `main`. A worker that crashes, aborts, exits or is
/// killed fails only the task it was running (with its pid and exit code or signal) and is replaced; a
/// task its worker never acknowledged is sent to another worker. Only when workers cannot start at all
/// (N failures in a row) is the pool *broken*, and then every queued and later task fails at once.
///
/// Dropping the pool is [`shutdown`](Self::shutdown): it waits for accepted work and reaps every worker.
pub struct ProcessPool {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    max_workers: usize,
    max_frame: usize,
    /// Every task's admission and end, and the series its life is counted in.
    acct: Arc<Accounting>,
}

impl fmt::Debug for ProcessPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.shared.lock();
        f.debug_struct("ProcessPool")
            .field("max_workers", &self.max_workers)
            .field("workers", &inner.pids)
            .field("mode", &inner.mode)
            .field("broken", &inner.broken)
            .finish_non_exhaustive()
    }
}

impl ProcessPool {
    /// A pool with the default options (one worker per CPU).
    pub fn new() -> Result<Self, BuildError> {
        ProcessPoolBuilder::new().build()
    }

    /// A builder for a pool with custom options.
    pub fn builder() -> ProcessPoolBuilder {
        ProcessPoolBuilder::new()
    }

    /// Queues task `T` with `input`; its handle yields the task's own `Result`, or a
    /// [`TaskError`](crate::TaskError) when the task could not produce one (panic, crash, timeout,
    /// ...). The input is encoded here: an input that cannot be encoded (or is larger than the maximum
    /// frame size) is refused now, with nothing queued.
    pub fn submit<T>(&self, input: &T::Input) -> Result<TaskHandle<ProcessOutput<T>>, SubmitError>
    where
        T: ProcessTask,
        T::Output: Send,
        T::Error: Send,
    {
        self.submit_typed::<T>(input, None)
    }

    /// Like [`submit`](Self::submit), with a timeout for this task: on expiry its worker is killed and
    /// replaced, and the task fails with reason [`Timeout`](crate::FailureReason::Timeout). The clock
    /// starts when the task is sent to a worker.
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
        self.submit_typed::<T>(input, Some(timeout))
    }

    fn submit_typed<T>(
        &self,
        input: &T::Input,
        timeout: Option<Duration>,
    ) -> Result<TaskHandle<ProcessOutput<T>>, SubmitError>
    where
        T: ProcessTask,
        T::Output: Send,
        T::Error: Send,
    {
        if !self.acct.admit() {
            self.acct.refused_unadmitted();
            return Err(SubmitError::new((), RejectReason::Shutdown));
        }
        let payload = match postcard::to_stdvec(input) {
            Ok(payload) => payload,
            Err(e) => {
                self.acct.refused();
                return Err(SubmitError::with_detail(
                    RejectReason::Serialization,
                    format!("cannot encode the input of task `{}`: {e}", T::NAME),
                ));
            }
        };
        let spec = JobSpec {
            task: T::NAME.to_owned(),
            payload,
            timeout,
        };
        self.enqueue(spec, One::<T>::new())
    }

    /// Submits one chunk of inputs of `T`, each already encoded. Counted as one task.
    pub(crate) fn submit_chunk<T>(
        &self,
        items: Vec<Blob<'static>>,
    ) -> Result<TaskHandle<ChunkValue<T>>, SubmitError>
    where
        T: ProcessTask,
        T::Output: Send,
        T::Error: Send,
    {
        if !self.acct.admit() {
            self.acct.refused_unadmitted();
            return Err(SubmitError::new((), RejectReason::Shutdown));
        }
        let payload = match postcard::to_stdvec(&items) {
            Ok(payload) => payload,
            Err(e) => {
                // Byte strings always encode; kept for completeness.
                self.acct.refused();
                return Err(SubmitError::with_detail(
                    RejectReason::Serialization,
                    format!("cannot encode a chunk of task `{}`: {e}", T::NAME),
                ));
            }
        };
        let spec = JobSpec {
            task: chunk_name::<T>(),
            payload,
            timeout: None,
        };
        self.enqueue(spec, Chunk::<T>::new(items.len()))
            .map_err(|e| match e {
                // The derived name is an implementation detail (e.g. a chunk over the frame size).
                e if e.reason() == RejectReason::Serialization => SubmitError::with_detail(
                    RejectReason::Serialization,
                    e.detail()
                        .unwrap_or_default()
                        .replace(CHUNK_PREFIX, "chunk of "),
                ),
                other => other,
            })
    }

    /// Queues an admitted job (`acct.admit()` already returned true): its task state, its sink, and
    /// the submit counts.
    fn enqueue<D: Decode>(
        &self,
        spec: JobSpec,
        decode: D,
    ) -> Result<TaskHandle<D::Value>, SubmitError> {
        let core = Arc::new(TaskCore::new(&self.acct));
        let sink = Sink::new(core.clone(), decode);
        match self.submit_job(spec, Box::new(sink)) {
            Ok(()) => {
                self.acct.accepted();
                Ok(TaskHandle::new(core))
            }
            Err(rejected) => {
                // The refused sink is dropped as "ended": it never held a task.
                let mut sink = rejected.sink;
                sink.refused();
                self.acct.refused();
                Err(rejected.error)
            }
        }
    }

    /// The admission and end counts of this pool's tasks.
    pub(crate) fn accounting(&self) -> &Accounting {
        &self.acct
    }

    /// Queues an encoded job whose lifecycle goes to `sink`. On rejection the sink is handed back
    /// untouched, with the reason.
    pub(crate) fn submit_job(&self, spec: JobSpec, sink: Box<dyn JobSink>) -> Result<(), Rejected> {
        let size = spec.payload.len() + spec.task.len() + RUN_OVERHEAD;
        if size > self.max_frame {
            let error = SubmitError::with_detail(
                RejectReason::Serialization,
                format!(
                    "the input of task `{}` is {} bytes, over the maximum frame size of {} bytes",
                    spec.task,
                    spec.payload.len(),
                    self.max_frame
                ),
            );
            return Err(Rejected { error, sink });
        }
        if spec.timeout == Some(Duration::ZERO) {
            let error = SubmitError::with_detail(
                RejectReason::Invalid,
                "a task timeout must be greater than zero",
            );
            return Err(Rejected { error, sink });
        }
        {
            let mut inner = self.shared.lock();
            if let Some(msg) = &inner.broken {
                let error = SubmitError::with_detail(RejectReason::Broken, msg.clone());
                return Err(Rejected { error, sink });
            }
            if inner.mode != Mode::Running {
                return Err(Rejected {
                    error: SubmitError::new((), RejectReason::Shutdown),
                    sink,
                });
            }
            inner.queue.push_back(Job {
                spec,
                sink,
                attempts: 0,
            });
        }
        self.shared.wake.notify();
        Ok(())
    }

    /// The configured maximum number of worker processes.
    pub fn max_workers(&self) -> usize {
        self.max_workers
    }

    /// Worker processes alive now (starting, idle, busy or retiring).
    pub fn workers(&self) -> usize {
        self.shared.lock().pids.len()
    }

    /// The process ids of the workers alive now.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.shared.lock().pids.clone()
    }

    /// Whether the pool is broken (workers could not be started); submits then fail with
    /// [`RejectReason::Broken`](crate::RejectReason::Broken).
    pub fn is_broken(&self) -> bool {
        self.shared.lock().broken.is_some()
    }

    /// Stops accepting tasks, waits for every accepted task to end, then stops and reaps the workers.
    /// Calling it again, or after [`kill`](Self::kill), does nothing more.
    pub fn shutdown(&self) {
        self.acct.close();
        self.stop(Mode::Shutdown);
    }

    /// Stops accepting tasks, cancels the tasks not yet sent to a worker
    /// ([`TaskError::Cancelled`](crate::TaskError::Cancelled)),
    /// waits for the running ones, then stops and reaps the workers.
    pub fn shutdown_now(&self) {
        self.acct.close();
        self.stop(Mode::ShutdownNow);
    }

    /// Stops accepting tasks and kills every worker with SIGKILL now: running tasks fail with
    /// reason [`Killed`](crate::FailureReason::Killed), queued ones too. Returns once every worker is reaped.
    pub fn kill(&self) {
        self.acct.close();
        self.stop(Mode::Kill);
    }

    fn stop(&self, mode: Mode) {
        {
            let mut inner = self.shared.lock();
            if inner.mode < mode && inner.mode != Mode::Terminated {
                inner.mode = mode;
            }
        }
        self.shared.wake.notify();
        // Holding the lock while joining makes a concurrent caller wait for the end too.
        let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ProcessPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A submit the pool refused, with the sink handed back untouched.
pub(crate) struct Rejected {
    pub(crate) error: SubmitError,
    pub(crate) sink: Box<dyn JobSink>,
}

impl fmt::Debug for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Lifecycle of the pool; ordered so a stop request only ever escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Running,
    Shutdown,
    ShutdownNow,
    Kill,
    Terminated,
}

struct Shared {
    inner: Mutex<Inner>,
    wake: sys::EventFd,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Sink and observer calls happen outside this lock, so a poisoned lock still holds valid state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Inner {
    mode: Mode,
    /// Submitted jobs the dispatcher has not taken yet.
    queue: VecDeque<Job>,
    broken: Option<String>,
    pids: Vec<u32>,
}

struct Job {
    spec: JobSpec,
    sink: Box<dyn JobSink>,
    attempts: u32,
}

impl Job {
    /// Reports the end of a started job. The report may run the user's code on this thread (the
    /// `Waker` of whoever `.await`s the task): a panic there is contained, so one task's waker cannot
    /// take down the dispatcher, and with it every other task.
    fn finished(self, outcome: JobOutcome) {
        let sink = self.sink;
        let _ = catch_unwind(AssertUnwindSafe(move || sink.finished(outcome)));
    }

    /// Reports the end of a job that never started; contained as [`finished`](Self::finished) is.
    fn failed_unstarted(self, failure: JobFailure) {
        let sink = self.sink;
        let _ = catch_unwind(AssertUnwindSafe(move || sink.failed_unstarted(failure)));
    }
}

struct Config {
    max_workers: usize,
    max_tasks_per_child: Option<u64>,
    task_timeout: Option<Duration>,
    start_timeout: Duration,
    shutdown_grace: Duration,
    max_start_failures: u32,
    max_frame: usize,
    program: PathBuf,
    arg0: Option<OsString>,
    args: Vec<OsString>,
    /// The `Hello` frame, the same for every worker.
    hello: Vec<u8>,
    observer: Arc<dyn PoolObserver>,
}

enum WState {
    /// Started, handshake not done.
    Starting,
    Idle,
    Busy {
        job: Job,
        id: u64,
        /// `Started` arrived.
        started: bool,
        /// The sink said the owner cancelled it: drop the outcome.
        discard: bool,
        limit: Option<Duration>,
    },
    /// Sent `Shutdown` after `max_tasks_per_child`; waiting for it to exit.
    Retiring,
}

impl WState {
    fn name(&self) -> &'static str {
        match self {
            WState::Starting => "starting",
            WState::Idle => "idle",
            WState::Busy { started: false, .. } => "dispatched",
            WState::Busy { started: true, .. } => "running a task",
            WState::Retiring => "retiring",
        }
    }
}

/// Why a worker is being removed.
enum Death {
    /// Its channel reached end of stream (or failed): the process is gone or going.
    Eof,
    /// The process exited (seen through its pidfd), whoever still holds its channel.
    Exited,
    /// Sending to it failed (it is gone).
    SendFailed,
    /// A send to it made no progress for the stall bound: it stopped reading.
    Stalled,
    Protocol(String),
    InitFailed(String),
    /// The program does not call `run_if_worker`: no worker of it can ever start.
    HookMissing(String),
    StartTimeout,
    Timeout,
    RetireTimeout,
}

struct Worker {
    child: Child,
    pid: u32,
    sock: OwnedFd,
    /// Readable once the process exits; `None` where pidfds are unavailable (then polled by `try_wait`).
    pidfd: Option<OwnedFd>,
    reader: FrameReader,
    state: WState,
    /// Start timeout, task timeout or retire grace, depending on the state.
    deadline: Option<Instant>,
    tasks_done: u64,
    dead: Option<Death>,
}

impl Worker {
    /// Whether the process has exited (it is then reaped; `Child` keeps its status for `bury`).
    fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

struct Dispatcher {
    shared: Arc<Shared>,
    cfg: Config,
    workers: Vec<Worker>,
    /// Jobs taken from `Inner::queue`, in order, not yet sent.
    queue: VecDeque<Job>,
    next_id: u64,
    /// Consecutive failed starts; reset by a successful handshake.
    start_failures: u32,
    broken: Option<String>,
    /// After a failed start, no new start before this instant (a short backoff).
    next_start: Option<Instant>,
    scratch: Vec<u8>,
    pollfds: Vec<libc::pollfd>,
}

impl Dispatcher {
    fn run(&mut self) {
        loop {
            let mode = self.take_submissions();
            match mode {
                Mode::Kill | Mode::Terminated => {
                    self.kill_all();
                    break;
                }
                Mode::ShutdownNow => self.fail_queued(|| JobFailure::Cancelled),
                Mode::Running | Mode::Shutdown => {}
            }
            if let Some(msg) = &self.broken {
                let message = msg.clone();
                self.fail_queued(|| JobFailure::Broken {
                    message: message.clone(),
                });
            }
            self.dispatch();
            if self.sweep() {
                continue; // re-queued jobs or freed slots: dispatch again before sleeping
            }
            let busy = self
                .workers
                .iter()
                .any(|w| matches!(w.state, WState::Busy { .. }));
            if mode != Mode::Running && self.queue.is_empty() && !busy {
                self.stop_workers();
                break;
            }
            self.wait_for_events();
            self.sweep();
        }
        let leftover: Vec<Job> = {
            let mut inner = self.shared.lock();
            inner.mode = Mode::Terminated;
            inner.pids.clear();
            inner.queue.drain(..).collect()
        };
        for job in leftover.into_iter().chain(self.queue.drain(..)) {
            job.failed_unstarted(JobFailure::Cancelled);
        }
    }

    /// Moves new submissions into the local queue; returns the requested mode.
    fn take_submissions(&mut self) -> Mode {
        let mut inner = self.shared.lock();
        self.queue.extend(inner.queue.drain(..));
        inner.mode
    }

    fn publish_pids(&self) {
        let pids = self.workers.iter().map(|w| w.pid).collect();
        self.shared.lock().pids = pids;
    }

    fn fail_queued(&mut self, failure: impl Fn() -> JobFailure) {
        for job in self.queue.drain(..) {
            if !job.sink.is_cancelled() {
                job.failed_unstarted(failure());
            }
        }
    }

    /// Sends queued jobs to idle workers and starts workers for the rest, up to the maximum.
    fn dispatch(&mut self) {
        loop {
            while self.queue.front().is_some_and(|j| j.sink.is_cancelled()) {
                self.queue.pop_front();
            }
            if self.queue.is_empty() {
                break;
            }
            let Some(i) = self
                .workers
                .iter()
                .position(|w| w.dead.is_none() && matches!(w.state, WState::Idle))
            else {
                break;
            };
            let job = self.queue.pop_front().expect("queue is not empty");
            self.send_job(i, job);
        }
        if self.broken.is_some() {
            return;
        }
        if let Some(at) = self.next_start {
            if Instant::now() < at {
                return;
            }
            self.next_start = None;
        }
        let starting = self
            .workers
            .iter()
            .filter(|w| matches!(w.state, WState::Starting))
            .count();
        let mut wanted = self.queue.len().saturating_sub(starting);
        while wanted > 0
            && self.workers.len() < self.cfg.max_workers
            && self.broken.is_none()
            && self.next_start.is_none()
        {
            self.spawn();
            wanted -= 1;
        }
    }

    fn send_job(&mut self, i: usize, job: Job) {
        let id = self.next_id;
        self.next_id += 1;
        let frame = wire::encode_frame(
            &ToWorker::Run {
                id,
                call: Call {
                    task: Cow::Borrowed(&job.spec.task),
                    payload: Blob(Cow::Borrowed(&job.spec.payload)),
                },
            },
            self.cfg.max_frame,
        );
        let frame = match frame {
            Ok(f) => f,
            Err(message) => {
                job.failed_unstarted(JobFailure::Serialization { message });
                return;
            }
        };
        let limit = job.spec.timeout.or(self.cfg.task_timeout);
        let w = &mut self.workers[i];
        w.deadline = limit.and_then(after);
        if let Err(e) = sys::send_all(w.sock.as_fd(), &frame) {
            w.dead = Some(send_failure(&e));
        }
        w.state = WState::Busy {
            job,
            id,
            started: false,
            discard: false,
            limit,
        };
    }

    fn spawn(&mut self) {
        match self.start_worker() {
            Ok(w) => {
                self.workers.push(w);
                self.publish_pids();
            }
            Err(msg) => self.start_failed(msg, false),
        }
    }

    fn start_worker(&self) -> Result<Worker, String> {
        let (ours, theirs) =
            sys::socketpair().map_err(|e| format!("cannot create a socket pair: {e}"))?;
        // The dispatcher writes with blocking sends; a worker that stops reading (a program that is not a
        // worker, a wedged process) must not stall it forever: a send stuck this long fails the worker.
        sys::set_send_timeout(ours.as_fd(), self.cfg.start_timeout)
            .map_err(|e| format!("cannot set a send timeout: {e}"))?;
        let mut cmd = Command::new(&self.cfg.program);
        if let Some(arg0) = &self.cfg.arg0 {
            cmd.arg0(arg0);
        }
        cmd.args(&self.cfg.args)
            .env(ENV_WORKER, CHANNEL_FD.to_string())
            .env(ENV_MAX_FRAME, self.cfg.max_frame.to_string())
            .stdin(Stdio::null());
        let channel = theirs.as_raw_fd();
        let parent = sys::getpid();
        // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe calls
        // are allowed: `child_after_fork` makes only such calls (dup2, fcntl, prctl, getppid, _exit) and
        // allocates nothing; it captures two integers. `channel` is open in the parent across the spawn.
        // Descriptor 3 cannot be the spawn's internal error pipe: the socket pair, created just before,
        // took the lowest free descriptors, so 3 is in use (by it or by something older) during the spawn.
        unsafe {
            cmd.pre_exec(move || sys::child_after_fork(channel, CHANNEL_FD, parent));
        }
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot start worker program {}: {e}",
                self.cfg.program.display()
            )
        })?;
        drop(theirs);
        let pid = child.id();
        let pidfd = sys::pidfd_open(pid).ok();
        // A worker that dies at once makes this fail; its end of stream then reports the start failure.
        let dead = sys::send_all(ours.as_fd(), &self.cfg.hello)
            .err()
            .map(|e| send_failure(&e));
        Ok(Worker {
            child,
            pid,
            sock: ours,
            pidfd,
            reader: FrameReader::new(self.cfg.max_frame),
            state: WState::Starting,
            deadline: after(self.cfg.start_timeout),
            tasks_done: 0,
            dead,
        })
    }

    /// A worker failed to start. `certain`: every start would fail the same way (the program does not
    /// call `run_if_worker`), so the pool breaks now instead of after `max_start_failures`.
    fn start_failed(&mut self, message: String, certain: bool) {
        self.cfg.observer.worker_start_failed(&message);
        self.start_failures += 1;
        // Back off 25 ms, 50 ms, ... up to 1 s, so a transient failure (EMFILE, EAGAIN) can clear.
        let backoff = Duration::from_millis(25 << self.start_failures.min(6)) / 2;
        self.next_start = Some(Instant::now() + backoff.min(Duration::from_secs(1)));
        if (certain || self.start_failures >= self.cfg.max_start_failures) && self.broken.is_none()
        {
            let message = if certain {
                message
            } else {
                format!(
                    "{} worker processes in a row failed to start; the last one: {message}",
                    self.start_failures
                )
            };
            self.shared.lock().broken = Some(message.clone());
            self.broken = Some(message.clone());
            self.fail_queued(|| JobFailure::Broken {
                message: message.clone(),
            });
        }
    }

    /// Sleeps until a submission, a worker message or exit, or the nearest deadline, and handles what
    /// happened.
    fn wait_for_events(&mut self) {
        let now = Instant::now();
        // A pending restart after a backoff is a deadline too, but only when there is work waiting.
        let restart = self.next_start.filter(|_| !self.queue.is_empty());
        let exit_check = self
            .workers
            .iter()
            .any(|w| w.dead.is_none() && w.pidfd.is_none())
            .then(|| now + EXIT_CHECK);
        let timeout_ms = self
            .workers
            .iter()
            .filter_map(|w| w.deadline)
            .chain(restart)
            .chain(exit_check)
            .min()
            .map_or(-1, |d| {
                let ms = d.saturating_duration_since(now).as_micros().div_ceil(1000);
                ms.min(i32::MAX as u128) as i32
            });
        let mut pollfds = mem::take(&mut self.pollfds);
        pollfds.clear();
        pollfds.push(libc::pollfd {
            fd: self.shared.wake.raw(),
            events: libc::POLLIN,
            revents: 0,
        });
        // Two entries a worker: its channel, then its pidfd (-1 entries are skipped by poll).
        for w in &self.workers {
            let live = |fd: Option<&OwnedFd>| match fd {
                Some(fd) if w.dead.is_none() => fd.as_raw_fd(),
                _ => -1,
            };
            for fd in [live(Some(&w.sock)), live(w.pidfd.as_ref())] {
                pollfds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        if let Err(e) = sys::poll(&mut pollfds, timeout_ms) {
            // Only EFAULT/EINVAL/ENOMEM: back off instead of spinning.
            eprintln!("executor-exporter: process pool poll failed: {e}");
            thread::sleep(Duration::from_millis(10));
        }
        if pollfds[0].revents != 0 {
            self.shared.wake.drain();
        }
        for i in 0..self.workers.len() {
            let (channel, pidfd) = (pollfds[1 + 2 * i].revents, pollfds[2 + 2 * i].revents);
            let exited = if self.workers[i].pidfd.is_some() {
                pidfd != 0
            } else {
                exit_check.is_some() && self.workers[i].has_exited()
            };
            if channel != 0 || exited {
                // Whatever it wrote before it exited is in the channel already: read it first.
                self.read_worker(i);
            }
            let w = &mut self.workers[i];
            if exited && w.dead.is_none() {
                w.dead = Some(Death::Exited);
            }
        }
        self.pollfds = pollfds;

        let now = Instant::now();
        for w in &mut self.workers {
            if w.dead.is_some() || w.deadline.is_none_or(|d| d > now) {
                continue;
            }
            w.dead = Some(match w.state {
                WState::Starting => Death::StartTimeout,
                WState::Busy { .. } => Death::Timeout,
                WState::Retiring => Death::RetireTimeout,
                WState::Idle => continue,
            });
        }
    }

    /// Reads what worker `i` sent and handles every whole message.
    fn read_worker(&mut self, i: usize) {
        let mut eof = false;
        {
            let w = &mut self.workers[i];
            loop {
                match sys::recv_nonblocking(w.sock.as_fd(), &mut self.scratch) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => w.reader.push(&self.scratch[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
        }
        loop {
            if self.workers[i].dead.is_some() {
                return;
            }
            match self.workers[i].reader.next_message::<FromWorker>() {
                Ok(Some(msg)) => self.on_message(i, msg),
                Ok(None) => break,
                Err(e) => {
                    self.workers[i].dead = Some(Death::Protocol(e.to_string()));
                    return;
                }
            }
        }
        if eof {
            self.workers[i].dead = Some(Death::Eof);
        }
    }

    fn on_message(&mut self, i: usize, msg: FromWorker) {
        let w = &mut self.workers[i];
        let pid = w.pid;
        match (&mut w.state, msg) {
            (WState::Starting, FromWorker::Ready { version }) if version == PROTOCOL_VERSION => {
                w.state = WState::Idle;
                w.deadline = None;
                self.start_failures = 0;
                self.cfg.observer.worker_started(pid);
            }
            (WState::Starting, FromWorker::InitFailed(msg)) => {
                w.dead = Some(Death::InitFailed(msg));
            }
            (WState::Starting, FromWorker::HookMissing(msg)) => {
                w.dead = Some(Death::HookMissing(msg));
            }
            (
                WState::Busy {
                    job,
                    id,
                    started,
                    discard,
                    ..
                },
                FromWorker::Started { id: got },
            ) if *id == got && !*started => {
                *started = true;
                *discard = !job.sink.started();
            }
            (WState::Busy { id, .. }, FromWorker::Finished { id: got, outcome }) if *id == got => {
                let WState::Busy {
                    job,
                    started,
                    discard,
                    ..
                } = mem::replace(&mut w.state, WState::Idle)
                else {
                    unreachable!("matched Busy above")
                };
                w.deadline = None;
                w.tasks_done += 1;
                if self
                    .cfg
                    .max_tasks_per_child
                    .is_some_and(|n| w.tasks_done >= n)
                {
                    if let Ok(frame) = wire::encode_frame(&ToWorker::Shutdown, self.cfg.max_frame) {
                        let _ = sys::send_all(w.sock.as_fd(), &frame);
                    }
                    w.state = WState::Retiring;
                    w.deadline = after(self.cfg.shutdown_grace);
                    self.cfg
                        .observer
                        .worker_restarted(pid, RestartReason::Recycled);
                }
                deliver(job, started, discard, outcome);
            }
            (state, msg) => {
                let message = format!("unexpected message {msg:?} while {}", state.name());
                w.dead = Some(Death::Protocol(message));
            }
        }
    }

    /// Removes dead workers: reaps them, reports them, and fails or re-queues their jobs. Returns whether
    /// anything was removed.
    fn sweep(&mut self) -> bool {
        if self.workers.iter().all(|w| w.dead.is_none()) {
            return false;
        }
        let (dead, alive): (Vec<Worker>, Vec<Worker>) = mem::take(&mut self.workers)
            .into_iter()
            .partition(|w| w.dead.is_some());
        self.workers = alive;
        self.publish_pids();
        for w in dead {
            self.bury(w);
        }
        true
    }

    fn bury(&mut self, mut w: Worker) {
        let death = w.dead.take().expect("only dead workers are buried");
        let exit = match death {
            Death::Eof | Death::Exited | Death::SendFailed => reap_after_eof(&mut w.child),
            _ => kill_and_reap(&mut w.child),
        };
        let pid = w.pid;
        drop(w.sock);
        let reason = match death {
            Death::Timeout => RestartReason::Timeout,
            Death::Protocol(_) => RestartReason::Protocol,
            _ => RestartReason::Died(exit),
        };
        match w.state {
            WState::Starting => {
                let certain = matches!(death, Death::HookMissing(_));
                let message = match death {
                    Death::InitFailed(m) | Death::HookMissing(m) => {
                        format!("worker process {pid}: {m}")
                    }
                    Death::StartTimeout => format!(
                        "worker process {pid} did not complete its handshake within {:?}",
                        self.cfg.start_timeout
                    ),
                    Death::Protocol(m) => {
                        format!("worker process {pid} broke the handshake: {m}")
                    }
                    Death::Stalled => format!(
                        "worker process {pid} did not read its channel for {:?}; does the program \
                         call `run_if_worker` first thing in `main`?",
                        self.cfg.start_timeout
                    ),
                    _ => format!(
                        "worker process {pid} ended before its handshake ({exit}); does the program \
                         call `run_if_worker` first thing in `main` (under `cargo test`: is \
                         `worker_test_entry` set to a test that calls it)?"
                    ),
                };
                self.start_failed(message, certain);
            }
            WState::Idle => self.cfg.observer.worker_restarted(pid, reason),
            WState::Retiring => {}
            WState::Busy {
                mut job,
                started,
                discard,
                limit,
                ..
            } => {
                self.cfg.observer.worker_restarted(pid, reason);
                let failure = match death {
                    Death::Timeout => JobFailure::Timeout {
                        pid,
                        limit: limit.unwrap_or_default(),
                    },
                    Death::Protocol(message) => JobFailure::Protocol { pid, message },
                    _ => JobFailure::WorkerDied { pid, exit },
                };
                // Died or stalled before acknowledging: it never ran the task.
                let never_ran = !started && matches!(failure, JobFailure::WorkerDied { .. });
                if started {
                    if !discard {
                        job.finished(Err(failure));
                    }
                } else if never_ran && job.attempts + 1 < MAX_ATTEMPTS {
                    // It never acknowledged the start, so it provably did not run: try again.
                    job.attempts += 1;
                    self.queue.push_front(job);
                } else {
                    job.failed_unstarted(failure);
                }
            }
        }
    }

    /// Graceful end: asks every worker to exit, waits up to the grace period, kills the rest.
    fn stop_workers(&mut self) {
        if let Ok(frame) = wire::encode_frame(&ToWorker::Shutdown, self.cfg.max_frame) {
            for w in &self.workers {
                if !matches!(w.state, WState::Retiring) {
                    let _ = sys::send_all(w.sock.as_fd(), &frame);
                }
            }
        }
        let deadline = after(self.cfg.shutdown_grace);
        for mut w in mem::take(&mut self.workers) {
            wait_until(&mut w.child, deadline);
        }
        self.publish_pids();
    }

    /// Kills and reaps every worker; running and queued jobs fail with `Killed`.
    fn kill_all(&mut self) {
        for w in &mut self.workers {
            let _ = w.child.kill();
        }
        for mut w in mem::take(&mut self.workers) {
            let _ = w.child.wait();
            if let WState::Busy {
                job,
                started,
                discard,
                ..
            } = w.state
            {
                if !started {
                    job.failed_unstarted(JobFailure::Killed);
                } else if !discard {
                    job.finished(Err(JobFailure::Killed));
                }
            }
        }
        self.publish_pids();
        self.fail_queued(|| JobFailure::Killed);
    }
}

impl Drop for Dispatcher {
    /// Normally there is nothing left here. If the dispatcher panicked, this keeps the promises anyway:
    /// no worker outlives the pool, no job waits forever, later submits fail.
    fn drop(&mut self) {
        if !thread::panicking() {
            return;
        }
        let message = "internal error: the process pool's dispatcher thread panicked".to_owned();
        {
            let mut inner = self.shared.lock();
            inner.mode = Mode::Terminated;
            inner.broken = Some(message.clone());
            inner.pids.clear();
            self.queue.extend(inner.queue.drain(..));
        }
        self.broken = Some(message);
        self.kill_all();
    }
}

fn send_failure(e: &io::Error) -> Death {
    if e.kind() == io::ErrorKind::WouldBlock {
        Death::Stalled
    } else {
        Death::SendFailed
    }
}

/// Hands the worker's report of a job to its sink.
fn deliver(mut job: Job, started: bool, discard: bool, outcome: WireOutcome) {
    if let WireOutcome::UnknownTask(name) = outcome {
        if !started {
            return job.failed_unstarted(JobFailure::UnknownTask { name });
        }
        return job.finished(Err(JobFailure::UnknownTask { name }));
    }
    // A `Finished` without `Started` is tolerated: the start and the end are reported together.
    if discard || (!started && !job.sink.started()) {
        return;
    }
    job.finished(outcome.into_job_outcome());
}

/// Reaps a worker whose channel closed: it is exiting, so wait briefly, then kill it (it may have closed
/// the channel without exiting).
fn reap_after_eof(child: &mut Child) -> WorkerExit {
    if let Some(exit) = wait_until(child, after(EXIT_AFTER_EOF)) {
        return exit;
    }
    kill_and_reap(child)
}

fn kill_and_reap(child: &mut Child) -> WorkerExit {
    let _ = child.kill();
    match child.wait() {
        Ok(status) => WorkerExit::from_status(status),
        Err(_) => WorkerExit::Unknown,
    }
}

/// `now + d`, or `None` (no deadline) when `d` is too long for an `Instant`
/// to hold, such as `Duration::MAX` given as a timeout.
fn after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// Waits for `child` to exit until `deadline` (`None`: for as long as it takes); past it, kills
/// and reaps it. Returns the exit if it ended by itself.
fn wait_until(child: &mut Child, deadline: Option<Instant>) -> Option<WorkerExit> {
    let mut pause = Duration::from_micros(20);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(WorkerExit::from_status(status)),
            Ok(None) => {}
            Err(_) => return Some(WorkerExit::Unknown),
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            kill_and_reap(child);
            return None;
        }
        thread::sleep(deadline.map_or(pause, |d| pause.min(d - now)));
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

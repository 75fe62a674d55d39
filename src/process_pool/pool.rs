//! The plain process pool: its builder, and submission to the dispatcher
//! thread (`dispatcher.rs`) that owns the workers.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::dispatcher::{
    Ages, Config, Dispatcher, Inner, Job, Lent, Link, Mode, Place, Shared, LEND_FOR,
    PIPELINE_BELOW, UNREAD_AFTER,
};
use super::job::{JobSink, JobSpec, PoolObserver};
use super::join::ProcessJoin;
use super::sink::{Chunk, ChunkValue, Decode, One, ProcessOutput, SeriesObserver, Sink};
use super::sys;
use super::task::{chunk_name, ProcessTask, CHUNK_PREFIX};
use super::wire::{self, Blob, Call, ToWorker, DEFAULT_MAX_FRAME, MIN_MAX_FRAME, PROTOCOL_VERSION};
use super::worker::forgotten_hook;
use crate::bounded::{check_queue, FullPolicy, Room};
use crate::error::panic_message;
use crate::error::FailureReason;
use crate::error::RejectReason;
use crate::error::SubmitError;
use crate::error::{BuildError, BuildErrorKind};
use crate::metrics::AgeSource;
use crate::metrics::{Capacity, ExecutorExporter, ExemplarHook, Pending, Series};
use crate::task::{Accounting, TaskCore, TaskHandle};

/// The longest [`ProcessPoolBuilder::spin`]: spinning pays for waits of microseconds, and a longer
/// bound only burns CPU time.
const MAX_SPIN: Duration = Duration::from_secs(1);

/// The largest job a submitting thread sends to an idle worker itself: far below a socket's send
/// buffer, so the send never waits for the worker to read.
const DIRECT_MAX: usize = 16 << 10;

/// Room for the message framing around a task's input (tag, id, name length, payload length).
const RUN_OVERHEAD: usize = 32;
/// The capacity a task's input is encoded into at first: a small input takes one allocation.
const SMALL_INPUT: usize = 32;

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
    queue_capacity: Option<usize>,
    when_full: Option<FullPolicy>,
    spin: Duration,
    pipeline_below: Duration,
    lend_for: Duration,
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
            queue_capacity: None,
            when_full: None,
            spin: Duration::ZERO,
            pipeline_below: PIPELINE_BELOW,
            lend_for: LEND_FOR,
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
            .field("queue_capacity", &self.queue_capacity)
            .field("when_full", &self.when_full)
            .field("spin", &self.spin)
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
    #[cfg(all(test, not(loom)))]
    #[must_use]
    pub(crate) fn observer(mut self, observer: Arc<dyn PoolObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Bounds the tasks accepted and not yet sent to a worker to `n`
    /// (default: unbounded; 0 is an error at [`build`](Self::build)). A
    /// submit that finds that many pending does what
    /// [`when_full`](Self::when_full) says: by default it is refused with
    /// [`RejectReason::Full`](crate::RejectReason::Full). A task sent again
    /// because its worker died before starting it takes no new place.
    #[must_use]
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = Some(n);
        self
    }

    /// What a submit does when the bounded queue is full (default:
    /// [`FullPolicy::Reject`]): [`FullPolicy::Block`] and
    /// [`FullPolicy::BlockFor`] wait for room. [`FullPolicy::CallerRuns`]
    /// is an error at [`build`](Self::build): a process task runs in a
    /// worker process, never on the submitting thread. Needs a
    /// [`queue_capacity`](Self::queue_capacity).
    #[must_use]
    pub fn when_full(mut self, policy: FullPolicy) -> Self {
        self.when_full = Some(policy);
        self
    }

    /// Low-latency mode: each side of a round trip to a worker polls for up to `spin` for the next
    /// message before it blocks (default: zero, off). The worker polls its channel after each task, the
    /// dispatcher thread its events after each wake-up, and a thread in
    /// [`TaskHandle::join`](crate::TaskHandle::join) the task's end. A small task's round trip then
    /// costs no wake-up of an idle CPU (tens of microseconds each on a virtual machine), for up to
    /// `spin` of CPU time per wait on each side. Nothing spins while the machine has more runnable
    /// threads than CPUs (the kernel's count in `/proc/loadavg`, looked at every 10 ms), and a side that
    /// finds itself preempted while it spins stops spinning for a time that grows with how long it lost
    /// its CPU (a second after losing it for the few milliseconds of a CPU-bound competitor's time
    /// slice), so a loaded machine gets the blocking behaviour back. Tens of microseconds suit a caller
    /// that submits and joins in a loop; more than one second is an error.
    #[must_use]
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Jobs are sent behind a worker's current one whenever they wait, however long its tasks run
    /// (the pipelining paths are then taken deterministically).
    #[cfg(all(test, not(loom)))]
    #[must_use]
    pub(crate) fn always_pipeline(mut self) -> Self {
        self.pipeline_below = Duration::MAX;
        self
    }

    /// A joiner reads its worker's reply itself for up to `d`, instead of [`LEND_FOR`] (a task's
    /// whole run is then read by its joiner, so the races with a stop or a death can be hit).
    #[cfg(all(test, not(loom)))]
    #[must_use]
    pub(crate) fn lend_for(mut self, d: Duration) -> Self {
        self.lend_for = d;
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
        let queue_capacity = check_queue(self.queue_capacity, self.when_full)?;
        let when_full = self.when_full.unwrap_or_default();
        if when_full == FullPolicy::CallerRuns {
            return Err(BuildError::new(BuildErrorKind::Queue(
                "when_full(CallerRuns) is not available for a process pool: its tasks run in \
                 worker processes, never on the submitting thread; use Reject, Block or BlockFor"
                    .to_owned(),
            )));
        }
        if let Some(name) = self.thread_name.as_ref().filter(|n| n.contains('\0')) {
            return Err(BuildError::new(BuildErrorKind::ThreadName(
                "thread_name",
                name.clone(),
            )));
        }
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
        if self.spin > MAX_SPIN {
            return Err(invalid(format!("spin must be at most {MAX_SPIN:?}")));
        }
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
        let timer = sys::TimerFd::new().map_err(resource("create a timerfd"))?;
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
                links: Vec::new(),
                idle: Vec::new(),
                backlog: false,
                timer_armed: false,
            }),
            wake,
            timer,
            lend_for: self.lend_for,
            room: queue_capacity.map(|n| Arc::new(Room::new(n))),
            ages: Ages::default(),
            next_id: AtomicU64::new(0),
        });
        series.add_age_source(Arc::downgrade(&shared) as Weak<dyn AgeSource>);
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
            spin: self.spin,
            pipeline_below: self.pipeline_below,
        };
        let max_frame = cfg.max_frame;
        let task_timeout = cfg.task_timeout.is_some();
        let mut dispatcher = Dispatcher::new(Arc::clone(&shared), cfg);
        // PR_SET_PDEATHSIG fires when the *thread* that started a worker exits, so workers are started
        // only by this thread, which lives until every worker has been reaped.
        let thread = thread::Builder::new()
            .name(self.thread_name.unwrap_or_else(|| "process-pool".into()))
            .spawn(move || dispatcher.run())
            .map_err(resource("start the dispatcher thread"))?;
        series.expect_failures(&FailureReason::ALL);
        let capacity =
            Capacity::register(series.clone(), max_workers as u64).with_queue(queue_capacity);
        let pool = ProcessPool {
            shared,
            dispatcher: thread.thread().id(),
            when_full,
            thread: Mutex::new(Some(thread)),
            max_workers,
            max_frame,
            acct: Arc::new(Accounting::new(series)),
            capacity,
            spin: self.spin,
            task_timeout,
            exemplar: None,
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
    /// The dispatcher thread, which never waits for room (it makes it).
    dispatcher: thread::ThreadId,
    when_full: FullPolicy,
    thread: Mutex<Option<JoinHandle<()>>>,
    max_workers: usize,
    max_frame: usize,
    /// Every task's admission and end, and the series its life is counted in.
    acct: Arc<Accounting>,
    /// `max_workers` in the series' gauge until the pool stops.
    capacity: Capacity,
    /// How long a joiner of this pool's tasks spins before it parks.
    spin: Duration,
    /// Whether the pool has a default task timeout.
    task_timeout: bool,
    /// The exporter's exemplar hook (`ProcessPoolExecutor`), called at
    /// each submit.
    pub(crate) exemplar: Option<ExemplarHook>,
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
    /// ...). The input is encoded here: an input that cannot be encoded (its `Serialize` fails or
    /// panics, or it is larger than the maximum frame size) is refused now, with nothing queued.
    pub fn submit<T>(&self, input: &T::Input) -> Result<TaskHandle<ProcessOutput<T>>, SubmitError>
    where
        T: ProcessTask,
        T::Output: Send,
        T::Error: Send,
    {
        self.submit_typed::<T>(input, None, false)
    }

    /// [`submit`](Self::submit) of an input of `map`: refused because the queue is full, it is not
    /// counted as rejected (the map submits it again).
    pub(crate) fn submit_for_map<T>(
        &self,
        input: &T::Input,
    ) -> Result<TaskHandle<ProcessOutput<T>>, SubmitError>
    where
        T: ProcessTask,
        T::Output: Send,
        T::Error: Send,
    {
        self.submit_typed::<T>(input, None, true)
    }

    /// Like [`submit`](Self::submit), with a timeout for this task: on expiry its worker is killed and
    /// replaced, and the task fails with reason [`Timeout`](crate::FailureReason::Timeout). The clock
    /// starts when the task is sent to a worker (for a task sent behind another one, when that one
    /// ends).
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
        self.submit_typed::<T>(input, Some(timeout), false)
    }

    fn submit_typed<T>(
        &self,
        input: &T::Input,
        timeout: Option<Duration>,
        quiet_full: bool,
    ) -> Result<TaskHandle<ProcessOutput<T>>, SubmitError>
    where
        T: ProcessTask,
        T::Output: Send,
        T::Error: Send,
    {
        let encode = || {
            postcard::to_extend(input, Vec::with_capacity(SMALL_INPUT))
                .map_err(|e| format!("cannot encode the input of task `{}`: {e}", T::NAME))
        };
        self.submit_encoded(T::NAME.into(), timeout, One::<T>::new(), encode, quiet_full)
    }

    /// Submits one chunk of inputs of `T`, each already encoded, for `map_chunked`. Counted as one
    /// task; refused because the queue is full, not counted (the map submits it again).
    pub(crate) fn submit_chunk<T>(
        &self,
        items: &[Blob<'static>],
    ) -> Result<TaskHandle<ChunkValue<T>>, SubmitError>
    where
        T: ProcessTask,
        T::Output: Send,
        T::Error: Send,
    {
        // Byte strings always encode; the error is kept for completeness.
        let encode = || {
            postcard::to_stdvec(&items)
                .map_err(|e| format!("cannot encode a chunk of task `{}`: {e}", T::NAME))
        };
        self.submit_encoded(
            chunk_name::<T>().into(),
            None,
            Chunk::<T>::new(items.len()),
            encode,
            true,
        )
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

    /// The submit sequence of every process task: admission, the input encoded (a failure or a panic
    /// refuses the submit, counted as rejected, with nothing sent), then the job queued.
    fn submit_encoded<D: Decode>(
        &self,
        task: Cow<'static, str>,
        timeout: Option<Duration>,
        decode: D,
        encode: impl FnOnce() -> Result<Vec<u8>, String>,
        quiet_full: bool,
    ) -> Result<TaskHandle<D::Value>, SubmitError> {
        if !self.acct.admit() {
            self.acct.refused_unadmitted();
            return Err(SubmitError::new((), RejectReason::Shutdown));
        }
        // The input's `Serialize` is the user's code: a panic in it refuses the submit like an
        // error, so the admitted task is not left in flight for ever.
        let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(encode))
            .unwrap_or_else(|panic| {
                Err(format!(
                    "encoding the input of task `{task}` panicked: {}",
                    panic_message(&*panic)
                ))
            });
        let payload = match encoded {
            Ok(payload) => payload,
            Err(message) => {
                self.acct.refused();
                return Err(SubmitError::with_detail(
                    RejectReason::Serialization,
                    message,
                ));
            }
        };
        let spec = JobSpec {
            task,
            payload,
            timeout,
        };
        self.enqueue(spec, decode, quiet_full)
    }

    /// Queues an admitted job (`acct.admit()` already returned true): its task state, its sink, and
    /// the submit counts.
    fn enqueue<D: Decode>(
        &self,
        spec: JobSpec,
        decode: D,
        quiet_full: bool,
    ) -> Result<TaskHandle<D::Value>, SubmitError> {
        let core = Arc::new(TaskCore::with_job(&self.acct, ProcessJoin::new(self.spin)));
        let submitted_at = core.submitted_at();
        let mut sink = Sink::new(core.clone(), decode);
        if let Some(hook) = &self.exemplar {
            sink.exemplar = Pending::capture(hook, &self.acct.series);
        }
        match self.submit_job(spec, Box::new(sink)) {
            Ok(lent) => {
                if let Some(lent) = lent {
                    core.job.lend(lent);
                }
                self.acct.accepted(submitted_at);
                Ok(TaskHandle::new(core))
            }
            Err(rejected) => {
                // The refused sink is dropped as "ended": it never held a task.
                let mut sink = rejected.sink;
                sink.refused();
                let quiet = quiet_full && rejected.error.reason() == RejectReason::Full;
                crate::task::refusing(quiet, || self.acct.refused());
                Err(rejected.error)
            }
        }
    }

    /// The admission and end counts of this pool's tasks.
    pub(crate) fn accounting(&self) -> &Accounting {
        &self.acct
    }

    /// Queues an encoded job whose lifecycle goes to `sink`. On rejection the sink is handed back
    /// untouched, with the reason. A job sent straight to an idle worker comes back as a [`Lent`]
    /// if its joiner may read the reply itself.
    pub(crate) fn submit_job(
        &self,
        spec: JobSpec,
        sink: Box<dyn JobSink>,
    ) -> Result<Option<Lent>, Rejected> {
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
        let place = match &self.shared.room {
            None => None,
            Some(room) => match self.take_place(room) {
                Ok(place) => Some(place),
                Err(reason) => {
                    let error = SubmitError::new((), reason);
                    return Err(Rejected { error, sink });
                }
            },
        };
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
            let mut job = Job {
                spec,
                sink,
                attempts: 0,
                place,
            };
            if inner.queue.is_empty()
                && !inner.backlog
                && !inner.idle.is_empty()
                && size <= DIRECT_MAX
            {
                let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
                if let Some(frame) = self.direct_frame(&job, id) {
                    // Sent now: it holds no place in a bounded queue.
                    drop(job.place.take());
                    let link = inner.idle.pop().expect("checked above");
                    let timeout = job.spec.timeout.is_some() || self.task_timeout;
                    #[cfg(all(test, not(loom)))]
                    let hook = super::tests::direct_send_hook(&job.spec.task);
                    // Under the lock that took the link: the dispatcher, when it finds the link
                    // gone, finds the job.
                    let lent = link
                        .hand(job, id, !timeout)
                        .then(|| Lent::new(&self.shared, &link, id));
                    if lent.is_some() && !inner.timer_armed {
                        // Should no joiner read the reply, the dispatcher, which does not watch
                        // this worker's channel, takes the job over then.
                        inner.timer_armed = true;
                        self.shared.timer.arm(UNREAD_AFTER);
                    }
                    drop(inner);
                    #[cfg(all(test, not(loom)))]
                    hook(&link);
                    self.send_direct(&link, &frame, timeout);
                    return Ok(lent);
                }
            }
            inner.queue.push_back(job);
        }
        self.shared.wake.notify();
        Ok(None)
    }

    /// A place in the bounded queue `room`, as [`when_full`](ProcessPoolBuilder::when_full) says
    /// when there is none.
    fn take_place(&self, room: &Arc<Room>) -> Result<Place, RejectReason> {
        if room.try_take() {
            return Ok(Place(room.clone()));
        }
        let wait = match self.when_full {
            FullPolicy::Block => None,
            FullPolicy::BlockFor(timeout) => Some(timeout),
            _ => return Err(RejectReason::Full),
        };
        // The dispatcher (where a task's waker may run and submit) makes the
        // room: it must not wait for it.
        if thread::current().id() == self.dispatcher {
            return Err(RejectReason::Full);
        }
        room.wait_take(wait).map(|()| Place(room.clone()))
    }

    /// The capacity of the queue of tasks not yet sent to a worker, if it is bounded
    /// ([`ProcessPoolBuilder::queue_capacity`]).
    pub fn queue_capacity(&self) -> Option<usize> {
        self.shared.room.as_ref().map(|room| room.capacity())
    }

    /// The `Run` frame of `job` if it may go to an idle worker from this thread: small enough that
    /// the send cannot wait for the worker to read.
    fn direct_frame(&self, job: &Job, id: u64) -> Option<Vec<u8>> {
        let msg = ToWorker::Run {
            id,
            call: Call {
                task: Cow::Borrowed(&job.spec.task),
                payload: Blob(Cow::Borrowed(&job.spec.payload)),
            },
        };
        wire::encode_frame(&msg, self.max_frame).ok()
    }

    /// Sends the frame of a job handed to the idle worker of `link` (which this thread took out of
    /// [`Inner::idle`], so the dispatcher sends it nothing meanwhile): the job reaches the worker
    /// without a wake-up of the dispatcher thread, which adopts it when the worker reports, or dies.
    fn send_direct(&self, link: &Link, frame: &[u8], timeout: bool) {
        let sent = sys::send_all(link.sock.as_fd(), frame);
        let failed = sent.is_err();
        if let Err(e) = sent {
            link.send_failed(e);
        }
        // A timeout is enforced from the send on, by the dispatcher, which must hear of the job at
        // once; so must it of a failed send.
        if failed || timeout {
            self.shared.wake.notify();
        }
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

    /// `Started` frames read from the channels of the workers alive.
    #[cfg(all(test, not(loom)))]
    pub(super) fn started_frames(&self) -> u64 {
        self.shared
            .lock()
            .links
            .iter()
            .map(|l| l.started_frames.load(Ordering::Relaxed))
            .sum()
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
    /// waits for the running ones, then stops and reaps the workers. Tasks already sent behind a
    /// worker's current one (see the [module docs](super)) run.
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
        // Submits waiting for room give up now rather than queue behind the stop.
        if let Some(room) = &self.shared.room {
            room.close(RejectReason::Shutdown);
        }
        self.shared.wake.notify();
        // Holding the lock while joining makes a concurrent caller wait for the end too.
        let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = thread.take() {
            let _ = t.join();
        }
        self.capacity.release();
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

//! Build, submit and task errors.

use std::error::Error;
use std::fmt;

/// A pool or exporter could not be built from the options given.
///
/// Returned by every `build()`, of every pool, the exporter and the
/// Pushgateway client; the message says which option was wrong.
///
/// ```
/// use executor_exporter::ThreadPoolExecutor;
///
/// let err = ThreadPoolExecutor::builder().max_workers(0).build().unwrap_err();
/// assert_eq!(err.to_string(), "max_workers must be greater than 0");
/// ```
#[derive(Debug)]
pub struct BuildError {
    kind: BuildErrorKind,
}

#[derive(Debug)]
pub(crate) enum BuildErrorKind {
    ZeroWorkers,
    ZeroBound(&'static str),
    /// A thread name or name prefix (the option's name, the value) holding
    /// a NUL byte.
    ThreadName(&'static str, String),
    /// A `queue_capacity` or `when_full` that cannot be used; the message
    /// says why and what to set instead.
    Queue(String),
    /// An empty `exporter_id` or `executor_type`.
    EmptyLabel(&'static str),
    Buckets(String),
    /// A native histogram option that cannot be used; the message says
    /// which and what to set instead.
    NativeHistograms(String),
    Namespace(String),
    IncompatibleSeries(String),
    Registry(prometheus::Error),
    /// A family of this name is already in the registry, registered by
    /// another collector; `fix` says how to get out of the clash.
    FamilyTaken {
        family: String,
        fix: &'static str,
        error: prometheus::Error,
    },
    /// The wrapped pool could not be built (for example, rayon's builder failed).
    #[cfg(feature = "rayon")]
    Pool(Box<dyn Error + Send + Sync>),
    /// A Pushgateway option is invalid (URL, job name or grouping label).
    #[cfg(feature = "push")]
    Push(String),
    /// An option outside its allowed range, or one that cannot be used
    /// (an initializer input that cannot be encoded); the message says which.
    #[cfg(target_os = "linux")]
    Invalid(String),
    /// Something the pool needs from the system could not be made: `what`
    /// says what was being done.
    #[cfg(target_os = "linux")]
    Resource {
        what: &'static str,
        error: std::io::Error,
    },
    /// A process pool built in a worker process that never called
    /// `run_if_worker`: the message says how to fix the program.
    #[cfg(target_os = "linux")]
    ForgottenHook(String),
}

impl BuildError {
    pub(crate) fn new(kind: BuildErrorKind) -> BuildError {
        BuildError { kind }
    }

    /// True when the error is about the histogram buckets, classic or
    /// native.
    pub fn is_buckets(&self) -> bool {
        matches!(
            self.kind,
            BuildErrorKind::Buckets(_) | BuildErrorKind::NativeHistograms(_)
        )
    }

    /// True when the error comes from registering the metric families
    /// (a family of the same name with other labels, type or help already exists).
    pub fn is_registry(&self) -> bool {
        matches!(
            self.kind,
            BuildErrorKind::Registry(_)
                | BuildErrorKind::FamilyTaken { .. }
                | BuildErrorKind::IncompatibleSeries(_)
        )
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BuildErrorKind::ZeroWorkers => f.write_str("max_workers must be greater than 0"),
            BuildErrorKind::ZeroBound(what) => write!(f, "{what} must be greater than 0"),
            BuildErrorKind::EmptyLabel(what) => write!(
                f,
                "{what} must not be empty (Prometheus treats an empty label as absent)"
            ),
            BuildErrorKind::ThreadName(option, name) => write!(
                f,
                "{option} {name:?} holds a NUL byte, which thread names cannot hold"
            ),
            BuildErrorKind::Queue(why) => f.write_str(why),
            BuildErrorKind::Buckets(why) => write!(f, "invalid histogram buckets: {why}"),
            BuildErrorKind::NativeHistograms(why) => {
                write!(f, "invalid native histogram option: {why}")
            }
            BuildErrorKind::Namespace(why) => write!(f, "invalid metric namespace: {why}"),
            BuildErrorKind::IncompatibleSeries(why) => {
                write!(f, "incompatible with the series already registered: {why}")
            }
            BuildErrorKind::Registry(e) => write!(f, "could not register the metric families: {e}"),
            BuildErrorKind::FamilyTaken { family, fix, .. } => write!(
                f,
                "could not register the metric family {family:?}: the registry already holds \
                 a metric of that name, registered by something else (your own metric, or \
                 another version of executor-exporter); {fix}"
            ),
            #[cfg(feature = "rayon")]
            BuildErrorKind::Pool(e) => write!(f, "could not build the pool: {e}"),
            #[cfg(feature = "push")]
            BuildErrorKind::Push(why) => write!(f, "invalid Pushgateway option: {why}"),
            #[cfg(target_os = "linux")]
            BuildErrorKind::Invalid(why) => write!(f, "invalid process pool option: {why}"),
            #[cfg(target_os = "linux")]
            BuildErrorKind::Resource { what, error } => {
                write!(
                    f,
                    "could not build the process pool: cannot {what}: {error}"
                )
            }
            #[cfg(target_os = "linux")]
            BuildErrorKind::ForgottenHook(message) => f.write_str(message),
        }
    }
}

impl Error for BuildError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.kind {
            BuildErrorKind::Registry(e) | BuildErrorKind::FamilyTaken { error: e, .. } => Some(e),
            #[cfg(feature = "rayon")]
            BuildErrorKind::Pool(e) => Some(&**e),
            #[cfg(target_os = "linux")]
            BuildErrorKind::Resource { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A submit was refused; the task is handed back unrun.
///
/// ```
/// use executor_exporter::{RejectReason, ThreadPoolExecutor};
///
/// let pool = ThreadPoolExecutor::builder()
///     .registry(prometheus::Registry::new())
///     .build()
///     .unwrap();
/// pool.shutdown();
/// let err = pool.submit(|| 1 + 1).unwrap_err();
/// assert_eq!(err.reason(), RejectReason::Shutdown);
/// let task = err.into_inner();
/// assert_eq!(task(), 2);
/// ```
///
/// Every pool refuses with this one type. A thread pool hands the closure
/// back; a process pool, whose task's input was only borrowed, hands back
/// nothing (`SubmitError<()>`, the default), and says more in
/// [`detail`](Self::detail): why the pool is broken, or what could not be
/// encoded.
pub struct SubmitError<F = ()> {
    task: F,
    reason: RejectReason,
    detail: Option<String>,
}

impl<F> SubmitError<F> {
    pub(crate) fn new(task: F, reason: RejectReason) -> SubmitError<F> {
        SubmitError {
            task,
            reason,
            detail: None,
        }
    }

    /// Why the submit was refused.
    pub fn reason(&self) -> RejectReason {
        self.reason
    }

    /// More about the refusal, where the pool knows more than the reason:
    /// why it is broken, what could not be encoded.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// Gives the task back.
    pub fn into_inner(self) -> F {
        self.task
    }

    /// The same refusal of the task `f` makes of this one.
    pub(crate) fn map<G>(self, f: impl FnOnce(F) -> G) -> SubmitError<G> {
        SubmitError {
            task: f(self.task),
            reason: self.reason,
            detail: self.detail,
        }
    }
}

impl SubmitError {
    /// A refusal with nothing to hand back, and `detail` saying more.
    #[cfg(target_os = "linux")]
    pub(crate) fn with_detail(reason: RejectReason, detail: impl Into<String>) -> SubmitError {
        SubmitError {
            task: (),
            reason,
            detail: Some(detail.into()),
        }
    }
}

impl<F> fmt::Debug for SubmitError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitError")
            .field("reason", &self.reason)
            .field("detail", &self.detail)
            .finish_non_exhaustive()
    }
}

impl<F> fmt::Display for SubmitError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot submit the task: {}", self.reason)?;
        match &self.detail {
            Some(detail) => write!(f, ": {detail}"),
            None => Ok(()),
        }
    }
}

impl<F> Error for SubmitError<F> {}

/// Why a task produced no value.
///
/// ```
/// use executor_exporter::{prometheus::Registry, TaskError, ThreadPoolExecutor};
///
/// let pool = ThreadPoolExecutor::builder().registry(Registry::new()).build()?;
/// let handle = pool.submit(|| -> u32 { panic!("no such file") })?;
/// assert_eq!(
///     handle.join(),
///     Err(TaskError::Panicked { message: "no such file".to_owned() })
/// );
/// let handle = pool.submit_fallible(|| "x".parse::<u32>())?;
/// assert!(handle.join()?.is_err()); // an `Err` is the task's own value, counted as failed
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked; `message` is the panic payload when it was a string.
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The task was cancelled before it started, and never ran.
    Cancelled,
    /// The executor could not run the task and never will run anything
    /// (for example, the worker initializer panicked).
    Broken {
        /// What broke the executor.
        reason: String,
    },
    /// The executor refused the task (used by `map`, which submits for you).
    Rejected(RejectReason),
    /// The task failed for a reason other than its own code: its worker
    /// process died, it timed out, its data could not be serialized, the
    /// worker does not know it, or the pool was killed. `message` names the
    /// worker's pid and exit code or signal where there is one.
    Failed {
        /// The metric reason label this failure was counted under.
        reason: FailureReason,
        /// What happened.
        message: String,
    },
    /// The result was not ready within the time given to `join_timeout`.
    /// The task itself goes on.
    TimedOut,
    /// The handle, awaited as a future, has returned the result already:
    /// there is nothing left to join or poll.
    AlreadyTaken,
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Panicked { message } => write!(f, "task panicked: {message}"),
            TaskError::Cancelled => f.write_str("task was cancelled before it started"),
            TaskError::Broken { reason } => write!(f, "executor is broken: {reason}"),
            TaskError::Rejected(reason) => write!(f, "task rejected: {reason}"),
            TaskError::Failed { message, .. } => f.write_str(message),
            TaskError::TimedOut => f.write_str("timed out waiting for the task"),
            TaskError::AlreadyTaken => {
                f.write_str("the task's result was already returned by polling its handle")
            }
        }
    }
}

impl Error for TaskError {}

/// The text of a panic payload, for [`TaskError::Panicked`].
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic payload is not a string".to_owned()
    }
}

/// Why a task failed: the `reason` label of `task_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureReason {
    /// The task panicked.
    Panic,
    /// The task returned `Err` (through `submit_fallible` or `map_fallible`).
    Error,
    /// The executor could not run the task (it is broken).
    Broken,
    /// The worker process running the task died.
    WorkerDied,
    /// The task ran past its timeout and its worker was killed.
    Timeout,
    /// The task's input or output could not be serialized.
    Serialization,
    /// The worker does not know the task's name.
    UnknownTask,
    /// The worker sent something unreadable and was replaced.
    Protocol,
    /// The pool was killed while the task was queued or running.
    Killed,
}

impl FailureReason {
    /// Every reason, in label order.
    pub const ALL: [FailureReason; 9] = [
        FailureReason::Panic,
        FailureReason::Error,
        FailureReason::Broken,
        FailureReason::WorkerDied,
        FailureReason::Timeout,
        FailureReason::Serialization,
        FailureReason::UnknownTask,
        FailureReason::Protocol,
        FailureReason::Killed,
    ];

    /// The reasons a task run by a thread, rather than a worker process, can
    /// fail with: what [`InstrumentedExecutorProxy`](crate::InstrumentedExecutorProxy)
    /// (and so [`ThreadPoolExecutor`](crate::ThreadPoolExecutor)) records.
    pub(crate) const IN_PROCESS: [FailureReason; 3] = [
        FailureReason::Panic,
        FailureReason::Error,
        FailureReason::Broken,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Panic => "panic",
            FailureReason::Error => "error",
            FailureReason::Broken => "broken",
            FailureReason::WorkerDied => "worker_died",
            FailureReason::Timeout => "timeout",
            FailureReason::Serialization => "serialization",
            FailureReason::UnknownTask => "unknown_task",
            FailureReason::Protocol => "protocol",
            FailureReason::Killed => "killed",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an executor refused a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The executor was shut down and accepts no new work.
    Shutdown,
    /// The executor's queue is full.
    Full,
    /// The executor can no longer run tasks (for example, its worker
    /// initializer failed).
    Broken,
    /// No worker could be started to run the task: the system refused a new
    /// thread (a process or cgroup thread limit, memory). Nothing was
    /// queued; the executor stays usable and a later submit tries again.
    NoWorker,
    /// The task's input could not be encoded, or is larger than the maximum
    /// frame size (process pools). Nothing was sent; the pool stays usable.
    Serialization,
    /// An argument of the submit is invalid (a zero timeout, say); the
    /// error's detail names it.
    Invalid,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::Shutdown => "the executor is shut down",
            RejectReason::Full => "the executor's queue is full",
            RejectReason::Broken => "the executor is broken and cannot run tasks",
            RejectReason::NoWorker => "no worker thread could be started to run the task",
            RejectReason::Serialization => {
                "the task's input could not be encoded, or is over the maximum frame size"
            }
            RejectReason::Invalid => "an argument of the submit is invalid",
        })
    }
}

//! What the pool reports about each job and each worker: the seam to the crate's accounting.

use std::borrow::Cow;
use std::fmt;
use std::process::ExitStatus;
use std::time::Duration;

use crate::clock::Clock;

/// How a worker process ended; its `Display` text is what a failure's message says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerExit {
    /// It exited with this code (`std::process::exit`, or returned from `main`).
    Code(i32),
    /// It was killed by this signal (SIGKILL from outside or from a timeout, SIGABRT from `abort`, SIGSEGV,
    /// ...).
    Signal {
        /// The signal number.
        signal: i32,
        /// Whether a core dump was written.
        core_dumped: bool,
    },
    /// The exit status could not be collected (something else in the process reaped the worker).
    Unknown,
}

impl WorkerExit {
    pub(crate) fn from_status(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => WorkerExit::Code(code),
            (None, Some(signal)) => WorkerExit::Signal {
                signal,
                core_dumped: status.core_dumped(),
            },
            // Neither code nor signal only happens for stopped/continued states, which `wait` never
            // returns without WUNTRACED; report it as an unusual code rather than panic.
            (None, None) => WorkerExit::Unknown,
        }
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WorkerExit::Code(code) => write!(f, "exit code {code}"),
            WorkerExit::Signal {
                signal,
                core_dumped,
            } => {
                write!(f, "signal {signal}")?;
                if let Some(name) = signal_name(signal) {
                    write!(f, " ({name})")?;
                }
                if core_dumped {
                    f.write_str(", core dumped")?;
                }
                Ok(())
            }
            WorkerExit::Unknown => f.write_str("exit status unknown"),
        }
    }
}

/// Why a job did not produce a result, as the dispatcher reports it. The sink turns it into the
/// crate's [`TaskError`](crate::TaskError) and [`FailureReason`](crate::FailureReason); its
/// `Display` text is the message the user sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobFailure {
    /// The task returned `Err`: the encoded error and its `Display` text.
    Error {
        /// The postcard encoding of the task's error value.
        payload: Vec<u8>,
        /// The error's `Display` text, from the worker.
        message: String,
    },
    /// The task panicked in the worker; the worker survived.
    Panic {
        /// The panic message.
        message: String,
    },
    /// The worker has no task of this name; the task never ran.
    UnknownTask {
        /// The requested name.
        name: String,
    },
    /// An input, output or error could not be encoded or decoded.
    Serialization {
        /// What failed.
        message: String,
    },
    /// The worker process died while running the task (abort, exit, signal).
    WorkerDied {
        /// The worker's process id.
        pid: u32,
        /// How it ended.
        exit: WorkerExit,
    },
    /// The task exceeded its timeout; its worker was killed and replaced.
    Timeout {
        /// The worker's process id.
        pid: u32,
        /// The timeout that expired.
        limit: Duration,
    },
    /// The worker sent a frame the pool could not read (corrupt, oversized, out of order); the worker was
    /// killed and replaced.
    Protocol {
        /// The worker's process id.
        pid: u32,
        /// What was wrong.
        message: String,
    },
    /// The pool was killed ([`ProcessPool::kill`](super::ProcessPool::kill)) before the task finished.
    Killed,
    /// The task was cancelled before it was sent to a worker
    /// ([`ProcessPool::shutdown_now`](super::ProcessPool::shutdown_now), or its handle).
    Cancelled,
    /// The pool is broken: workers cannot be started. The message says why.
    Broken {
        /// Why workers cannot start.
        message: String,
    },
}

impl fmt::Display for JobFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobFailure::Error { message, .. } => write!(f, "task failed: {message}"),
            JobFailure::Panic { message } => write!(f, "task panicked: {message}"),
            JobFailure::UnknownTask { name } => write!(
                f,
                "no task named `{name}` is registered in the worker (register it in the WorkerRegistry \
                 passed to run_if_worker)"
            ),
            JobFailure::Serialization { message } => write!(f, "serialization failed: {message}"),
            JobFailure::WorkerDied { pid, exit } => write!(
                f,
                "worker process {pid} terminated abruptly while running the task ({exit})"
            ),
            JobFailure::Timeout { pid, limit } => write!(
                f,
                "task timed out after {limit:?}; worker process {pid} was killed"
            ),
            JobFailure::Protocol { pid, message } => {
                write!(f, "protocol error from worker process {pid}: {message}")
            }
            JobFailure::Killed => f.write_str("the process pool was killed"),
            JobFailure::Cancelled => f.write_str("the task was cancelled before it started"),
            JobFailure::Broken { message } => write!(f, "the process pool is broken: {message}"),
        }
    }
}

impl std::error::Error for JobFailure {}

/// The end of a job that started: the encoded output, or why there is none.
pub(crate) type JobOutcome = Result<Vec<u8>, JobFailure>;

/// What the pool needs to run a job: the task name, its encoded input, its timeout.
#[derive(Debug, Clone)]
pub(crate) struct JobSpec {
    pub(crate) task: Cow<'static, str>,
    pub(crate) payload: Vec<u8>,
    pub(crate) timeout: Option<Duration>,
}

/// The lifecycle of one job, as the pool reports it. The crate's task accounting implements this.
///
/// Calls happen on the pool's dispatcher thread, so they must be quick and must not block. Per job the
/// pool makes, in order: any number of `is_cancelled` checks while queued; at most one `started`; then
/// exactly one terminal call — `finished` if `started` was called and returned `true`, else
/// `failed_unstarted` — unless the owner cancelled the job (`is_cancelled` or `started` said so), in
/// which case the pool drops the sink with no further call: the cancellation was the terminal event.
pub(crate) trait JobSink: Send + 'static {
    /// Polled before the job is sent to a worker: `true` drops the job (its owner cancelled it).
    fn is_cancelled(&self) -> bool {
        false
    }

    /// The worker acknowledged the start of the task, which it began `ago`: the metric's start time
    /// (wait = submit → now − `ago`). Returns `false` if the owner cancelled the job between dispatch
    /// and acknowledgement; the task then runs to its end in the worker but its outcome is discarded.
    fn started(&mut self, ago: std::time::Duration) -> bool;

    /// The started task ended, `ended_ago` before this call (as its worker saw; zero: now). Its
    /// duration runs from `started` to then.
    fn finished(self: Box<Self>, outcome: JobOutcome, ended_ago: std::time::Duration);

    /// The job ends without having started: unknown task, pool broken, cancelled by `shutdown_now`,
    /// pool killed, or its worker died before acknowledging it on every attempt.
    fn failed_unstarted(self: Box<Self>, failure: JobFailure);

    /// The pool refused the job at submit; the sink is handed back and will
    /// be dropped by its owner without any other call.
    fn refused(&mut self) {}

    /// When the job's task was submitted, if it has one (the queued age).
    fn submitted_at(&self) -> Option<Clock> {
        None
    }

    /// When [`started`](Self::started) started the task, if it did and it
    /// has not ended (the running age).
    fn started_at(&self) -> Option<Clock> {
        None
    }
}

/// Why a worker left the pool and will be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartReason {
    /// The process died (crash, abort, exit, external kill), idle or busy.
    Died(WorkerExit),
    /// A task timed out and the pool killed the worker.
    Timeout,
    /// The worker reached `max_tasks_per_child` and retired.
    Recycled,
    /// The worker broke the protocol and the pool killed it.
    Protocol,
}

/// Worker lifecycle events, for metrics. Called on the dispatcher thread; must be quick.
pub(crate) trait PoolObserver: Send + Sync + 'static {
    /// A worker finished its start-up (the initializer ran) and is ready for tasks.
    fn worker_started(&self, _pid: u32) {}
    /// A worker left for a reason other than shutdown; a replacement starts when there is work.
    fn worker_restarted(&self, _pid: u32, _reason: RestartReason) {}
    /// A worker reported by `worker_started` is gone: reaped, whatever ended it (crash, kill, retirement,
    /// shutdown).
    fn worker_exited(&self, _pid: u32) {}
    /// A worker could not be started (spawn error, initializer failure, exit before the handshake).
    fn worker_start_failed(&self, _message: &str) {}
}

//! A minimal typed handle over the job lifecycle, backed by a channel. The crate's `TaskHandle` replaces
//! it once the process pool is wired to the metrics; it also serves as the reference `JobSink`.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::job::{JobFailure, JobOutcome, JobSink};
use super::task::ProcessTask;

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const CANCELLED: u8 = 2;

/// The end of a job as the sink saw it.
enum Terminal {
    Finished(JobOutcome),
    Unstarted(JobFailure),
}

/// The sink side of a [`ProcessHandle`].
pub(crate) struct ChannelSink {
    state: Arc<AtomicU8>,
    tx: Sender<Terminal>,
}

impl JobSink for ChannelSink {
    fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::Acquire) == CANCELLED
    }

    fn started(&mut self) -> bool {
        self.state
            .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn finished(self: Box<Self>, outcome: JobOutcome) {
        let _ = self.tx.send(Terminal::Finished(outcome));
    }

    fn failed_unstarted(self: Box<Self>, failure: JobFailure) {
        let _ = self.tx.send(Terminal::Unstarted(failure));
    }
}

/// A new sink and the handle that reads it.
pub(crate) fn channel<T: ProcessTask>() -> (ChannelSink, ProcessHandle<T>) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let state = Arc::new(AtomicU8::new(QUEUED));
    let sink = ChannelSink {
        state: Arc::clone(&state),
        tx,
    };
    let handle = ProcessHandle {
        rx,
        state,
        _task: PhantomData,
    };
    (sink, handle)
}

/// Why a process-pool task gave no output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError<E> {
    /// The task ran and returned this error.
    Failed(E),
    /// The task did not complete: panic, crash, timeout, cancellation, broken pool, ...
    Pool(JobFailure),
}

impl<E> TaskError<E> {
    /// The metric reason label of this failure (`error` for [`TaskError::Failed`]).
    pub fn reason(&self) -> &'static str {
        match self {
            TaskError::Failed(_) => "error",
            TaskError::Pool(f) => f.reason(),
        }
    }

    /// The pool-level failure, if it is one.
    pub fn failure(&self) -> Option<&JobFailure> {
        match self {
            TaskError::Failed(_) => None,
            TaskError::Pool(f) => Some(f),
        }
    }
}

impl<E: fmt::Display> fmt::Display for TaskError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Failed(e) => write!(f, "task failed: {e}"),
            TaskError::Pool(failure) => failure.fmt(f),
        }
    }
}

impl<E: fmt::Display + fmt::Debug> std::error::Error for TaskError<E> {}

/// The result of a [`ProcessTask`] call.
pub type TaskResult<T> = Result<<T as ProcessTask>::Output, TaskError<<T as ProcessTask>::Error>>;

/// The caller's side of a submitted task: wait for it, or cancel it before it is sent to a worker.
pub struct ProcessHandle<T: ProcessTask> {
    rx: Receiver<Terminal>,
    state: Arc<AtomicU8>,
    _task: PhantomData<fn() -> T>,
}

impl<T: ProcessTask> fmt::Debug for ProcessHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessHandle")
            .field("task", &T::NAME)
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T: ProcessTask> ProcessHandle<T> {
    /// Waits for the task to end and decodes its output or error.
    pub fn join(self) -> TaskResult<T> {
        if self.state.load(Ordering::Acquire) == CANCELLED {
            return Err(TaskError::Pool(JobFailure::Cancelled));
        }
        match self.rx.recv() {
            Ok(t) => decode::<T>(t),
            // The pool drops a sink without a terminal call only when it was cancelled.
            Err(_) => Err(TaskError::Pool(JobFailure::Cancelled)),
        }
    }

    /// Like [`join`](Self::join), waiting at most `timeout`; on timeout the handle is given back.
    pub fn join_timeout(self, timeout: Duration) -> Result<TaskResult<T>, Self> {
        if self.state.load(Ordering::Acquire) == CANCELLED {
            return Ok(Err(TaskError::Pool(JobFailure::Cancelled)));
        }
        match self.rx.recv_timeout(timeout) {
            Ok(t) => Ok(decode::<T>(t)),
            Err(RecvTimeoutError::Timeout) => Err(self),
            Err(RecvTimeoutError::Disconnected) => Ok(Err(TaskError::Pool(JobFailure::Cancelled))),
        }
    }

    /// Cancels the task if no worker has acknowledged it yet; returns whether it is cancelled. A task
    /// already sent but not yet acknowledged may still run; its outcome is then discarded.
    pub fn cancel(&self) -> bool {
        match self
            .state
            .compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(current) => current == CANCELLED,
        }
    }

    /// Whether the task ended (or was cancelled): [`join`](Self::join) would not block.
    pub fn is_finished(&self) -> bool {
        self.state.load(Ordering::Acquire) == CANCELLED || !self.rx.is_empty()
    }
}

fn decode<T: ProcessTask>(terminal: Terminal) -> TaskResult<T> {
    let failure = match terminal {
        Terminal::Finished(Ok(bytes)) => {
            return postcard::from_bytes(&bytes).map_err(|e| {
                TaskError::Pool(JobFailure::Serialization {
                    message: format!("cannot decode the output of task `{}`: {e}", T::NAME),
                })
            })
        }
        Terminal::Finished(Err(f)) | Terminal::Unstarted(f) => f,
    };
    match failure {
        JobFailure::Error { payload, message } => match postcard::from_bytes(&payload) {
            Ok(e) => Err(TaskError::Failed(e)),
            Err(e) => Err(TaskError::Pool(JobFailure::Serialization {
                message: format!(
                    "cannot decode the error of task `{}` ({message}): {e}",
                    T::NAME
                ),
            })),
        },
        other => Err(TaskError::Pool(other)),
    }
}

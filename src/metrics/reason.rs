//! [`FailureReason`]: the `reason` label of `task_failures_total`, the one vocabulary of why a task
//! failed, shared by every pool.

use std::fmt;

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

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

//! [`Snapshot`]: one exporter's counts as plain numbers, read from the same
//! shards a scrape reads, for tests and for checking an executor's accounting.

use std::fmt;
use std::ops::Sub;

use super::series::Reading;
use crate::error::FailureReason;

/// The counts of one exporter's series at one instant, as a scrape would
/// read them: [`ExecutorExporter::snapshot`](super::ExecutorExporter::snapshot).
///
/// Counters are `u64`; gauges (`queued`, `running`, `workers`,
/// `max_workers`) are `i64`, so the difference of two snapshots
/// ([`Sub`]: "what did this workload do") can show a gauge going down.
///
/// ```
/// use executor_exporter::{prometheus::Registry, FailureReason, ThreadPoolExecutor};
///
/// let pool = ThreadPoolExecutor::builder().registry(Registry::new()).build()?;
/// let before = pool.exporter().snapshot();
/// pool.submit(|| 1)?.join()?;
/// let _ = pool.submit(|| -> u32 { panic!("boom") })?.join();
/// pool.join(); // nothing in flight: the invariant is exact
/// let did = pool.exporter().snapshot() - before;
/// assert_eq!((did.submitted, did.completed, did.failed), (2, 1, 1));
/// assert_eq!(did.failures(FailureReason::Panic), 1);
/// did.check_invariant()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Snapshot {
    /// Tasks the executor accepted (`submitted_tasks_total`).
    pub submitted: u64,
    /// Submits refused (`rejected_tasks_total`).
    pub rejected: u64,
    /// Accepted and not yet started (`queued_tasks`).
    pub queued: i64,
    /// Started and not yet ended (`running_tasks`).
    pub running: i64,
    /// Ended without a failure (`tasks_duration_seconds_count{result="completed"}`).
    pub completed: u64,
    /// Ended as failed, started or not (`tasks_duration_seconds_count{result="failed"}`).
    pub failed: u64,
    /// Cancelled before they started (`cancelled_tasks_total`).
    pub cancelled: u64,
    /// The `max_workers` of the live pools of this id (`max_workers`).
    pub max_workers: i64,
    /// Workers alive (`workers`).
    pub workers: i64,
    /// Workers that finished starting (`initialized_workers_total`).
    pub initialized_workers: u64,
    /// Workers replaced (`worker_restarts_total`).
    pub worker_restarts: u64,
    /// Failures by reason, indexed like [`FailureReason::ALL`].
    by_reason: [u64; FailureReason::ALL.len()],
}

impl Snapshot {
    pub(super) fn from_reading(r: &Reading<'_>) -> Snapshot {
        let count = |m: &prometheus::proto::Metric| m.get_histogram().get_sample_count();
        Snapshot {
            submitted: r.submitted,
            rejected: r.rejected,
            queued: r.queued,
            running: r.running,
            completed: count(&r.completed),
            failed: count(&r.failed),
            cancelled: r.cancelled,
            max_workers: r.max_workers,
            workers: r.workers,
            initialized_workers: r.initialized_workers,
            worker_restarts: r.restarts,
            by_reason: r.by_reason,
        }
    }

    /// Tasks failed with `reason` (`task_failures_total{reason}`).
    pub fn failures(&self, reason: FailureReason) -> u64 {
        self.by_reason[reason.index()]
    }

    /// Checks `submitted = queued + running + completed + failed + cancelled`
    /// and that the failures by reason add up to `failed`.
    ///
    /// Exact whenever no submit is between its hand-over to the executor and
    /// its count (a task is counted as submitted once `execute` returns, so
    /// a worker may start it first): after `join()` or `shutdown()`, say, or
    /// for the difference of two such snapshots.
    pub fn check_invariant(&self) -> Result<(), InvariantError> {
        let ended = i128::from(self.completed) + i128::from(self.failed);
        let accounted =
            i128::from(self.queued) + i128::from(self.running) + ended + i128::from(self.cancelled);
        let by_reason: u64 = self.by_reason.iter().sum();
        if accounted != i128::from(self.submitted) || by_reason != self.failed {
            return Err(InvariantError {
                snapshot: Box::new(self.clone()),
            });
        }
        Ok(())
    }
}

/// What a workload did between two snapshots: counters subtract (never
/// below zero), gauges show their change.
impl Sub for Snapshot {
    type Output = Snapshot;

    fn sub(self, before: Snapshot) -> Snapshot {
        let mut by_reason = self.by_reason;
        for (now, then) in by_reason.iter_mut().zip(before.by_reason) {
            *now = now.saturating_sub(then);
        }
        Snapshot {
            submitted: self.submitted.saturating_sub(before.submitted),
            rejected: self.rejected.saturating_sub(before.rejected),
            queued: self.queued - before.queued,
            running: self.running - before.running,
            completed: self.completed.saturating_sub(before.completed),
            failed: self.failed.saturating_sub(before.failed),
            cancelled: self.cancelled.saturating_sub(before.cancelled),
            max_workers: self.max_workers - before.max_workers,
            workers: self.workers - before.workers,
            initialized_workers: self
                .initialized_workers
                .saturating_sub(before.initialized_workers),
            worker_restarts: self.worker_restarts.saturating_sub(before.worker_restarts),
            by_reason,
        }
    }
}

/// The counts of a [`Snapshot`] do not add up; the message names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvariantError {
    snapshot: Box<Snapshot>,
}

impl InvariantError {
    /// The snapshot whose counts do not add up.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
}

impl fmt::Display for InvariantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.snapshot;
        let reasons: Vec<String> = FailureReason::ALL
            .iter()
            .filter(|r| s.failures(**r) != 0)
            .map(|r| format!("{r} {}", s.failures(*r)))
            .collect();
        write!(
            f,
            "the task counts do not add up: submitted {} != queued {} + running {} + completed {} \
             + failed {} + cancelled {}; failures by reason [{}]",
            s.submitted,
            s.queued,
            s.running,
            s.completed,
            s.failed,
            s.cancelled,
            reasons.join(", ")
        )
    }
}

impl std::error::Error for InvariantError {}

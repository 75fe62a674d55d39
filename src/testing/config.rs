//! [`CheckConfig`]: what a check runs, and what the executor supports.

use std::time::Duration;

/// What [`check_executor_with`](crate::testing::check_executor_with) runs, and what the executor supports.
///
/// ```
/// use std::time::Duration;
/// use executor_exporter::testing::CheckConfig;
///
/// // A pool with a bounded queue (it may refuse while open), no `shutdown_now`
/// // in its workloads, checked quickly.
/// let config = CheckConfig::default()
///     .cases(16)
///     .timeout(Duration::from_secs(5))
///     .may_reject(true)
///     .shutdown_now(false);
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub(super) cases: u32,
    pub(super) timeout: Duration,
    pub(super) max_ops: usize,
    pub(super) max_sleep: Duration,
    pub(super) shutdown_now: bool,
    pub(super) shutdown_midway: bool,
    pub(super) executor_shutdown: bool,
    pub(super) concurrent: bool,
    pub(super) may_reject: bool,
    pub(super) seed: Option<u64>,
    pub(super) max_shrink_time: Duration,
}

impl Default for CheckConfig {
    /// 64 cases of up to 24 operations, tasks sleeping up to 5 ms, a 10 s
    /// timeout per case, every operation, no refusal before shutdown, and
    /// up to 30 s of shrinking.
    fn default() -> CheckConfig {
        CheckConfig {
            cases: 64,
            timeout: Duration::from_secs(10),
            max_ops: 24,
            max_sleep: Duration::from_millis(5),
            shutdown_now: true,
            shutdown_midway: true,
            executor_shutdown: true,
            concurrent: true,
            may_reject: false,
            seed: None,
            max_shrink_time: Duration::from_secs(30),
        }
    }
}

/// The most operations [`CheckConfig::max_ops`] takes.
pub(super) const MAX_OPS: usize = 10_000;

impl CheckConfig {
    /// The options that would make a check meaningless or unrunnable, named
    /// with the fix.
    pub(super) fn mistake(&self) -> Option<String> {
        if self.cases == 0 {
            return Some(
                "cases(0) runs no workload, so every executor would pass: give at least 1".into(),
            );
        }
        if self.timeout.is_zero() {
            return Some(
                "timeout(0) fails every case before it starts: give the time one case may take (the default is 10 s)"
                    .into(),
            );
        }
        if self.max_ops > MAX_OPS {
            return Some(format!(
                "max_ops({}) is more than a workload can hold: give at most {MAX_OPS}",
                self.max_ops
            ));
        }
        None
    }

    /// How many random workloads to run (default 64).
    pub fn cases(mut self, cases: u32) -> Self {
        self.cases = cases;
        self
    }

    /// How long one case may take, shutdown included, before it fails as a
    /// hang (default 10 s). A hang leaves the case's executor and its
    /// threads behind (nothing can stop them), and shrinking it takes a
    /// timeout per step: keep it short in tests.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The most operations before the closing shutdown (default 24, at most
    /// 10,000); a workload may have a few more after a shutdown part-way.
    pub fn max_ops(mut self, max_ops: usize) -> Self {
        self.max_ops = max_ops;
        self
    }

    /// The longest a [`TaskKind::Sleep`](crate::testing::TaskKind::Sleep) task sleeps, to whole milliseconds
    /// up to 255 (default 5 ms); zero leaves sleeping tasks out.
    pub fn max_sleep(mut self, max_sleep: Duration) -> Self {
        self.max_sleep = max_sleep;
        self
    }

    /// Whether workloads use [`Op::ShutdownNow`](crate::testing::Op::ShutdownNow) (default true).
    pub fn shutdown_now(mut self, yes: bool) -> Self {
        self.shutdown_now = yes;
        self
    }

    /// Whether workloads may shut the proxy down part-way, then submit
    /// more, which must be refused (default true).
    pub fn shutdown_midway(mut self, yes: bool) -> Self {
        self.shutdown_midway = yes;
        self
    }

    /// Whether workloads use [`Op::ExecutorShutdown`](crate::testing::Op::ExecutorShutdown), the executor's own
    /// [`Executor::shutdown`](crate::Executor::shutdown) called part-way (default true).
    pub fn executor_shutdown(mut self, yes: bool) -> Self {
        self.executor_shutdown = yes;
        self
    }

    /// Whether workloads use [`Op::Concurrent`](crate::testing::Op::Concurrent), submits from several
    /// threads at once (default true).
    pub fn concurrent(mut self, yes: bool) -> Self {
        self.concurrent = yes;
        self
    }

    /// Whether the executor may refuse a task before it is shut down (a
    /// bounded queue that is full, say). By default it may not: an executor
    /// that never refuses is checked for that too.
    pub fn may_reject(mut self, yes: bool) -> Self {
        self.may_reject = yes;
        self
    }

    /// The seed of the random workloads: a failure prints its seed, and
    /// this replays the same workloads. By default, `PROPTEST_RNG_SEED` if
    /// set, else a new one each run.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// How long shrinking a failure may take (default 30 s); when it runs
    /// out, the smallest failing workload found so far is reported.
    pub fn max_shrink_time(mut self, max_shrink_time: Duration) -> Self {
        self.max_shrink_time = max_shrink_time;
        self
    }
}

//! Property tests for the task accounting of your own [`Executor`] (feature
//! `testing`).
//!
//! [`check_executor`] runs random workloads — submits that succeed, panic,
//! return `Err` or sleep, handle-less spawns, cancels, maps, submits from
//! several threads at once, the executor's own shutdown, and the proxy's
//! `shutdown` or `shutdown_now`, also part-way — through an
//! [`InstrumentedExecutorProxy`](crate::InstrumentedExecutorProxy) over a
//! fresh executor per case (each with a registry of its own), and checks
//! that:
//!
//! - every handle gives exactly one outcome, the one its task calls for,
//!   and every task starts at most once;
//! - no task is cancelled that the workload did not cancel (with `cancel()`
//!   or `shutdown_now`): an executor that drops a task it accepted loses
//!   work, even though the proxy counts it as cancelled;
//! - the [`Snapshot`](crate::Snapshot) equals the tally of what the handles,
//!   map results and spawned tasks reported: submitted, rejected, completed,
//!   failed by reason, cancelled;
//! - tasks submitted after a shutdown are rejected, and nothing is left
//!   queued or running once a shutdown returns;
//! - no case hangs: one that does not finish within the timeout fails,
//!   naming where it was stuck (its executor's threads are left behind).
//!
//! A failing case is shrunk to the smallest workload that still fails, and
//! the panic prints it as a list of operations with what went wrong.
//!
//! ```
//! use std::sync::mpsc::{channel, Sender};
//! use std::sync::Mutex;
//! use std::thread::JoinHandle;
//!
//! use executor_exporter::testing::check_executor;
//! use executor_exporter::{Executor, RejectReason, Rejected, Task};
//!
//! /// One worker thread and an unbounded queue.
//! struct OneThread {
//!     queue: Mutex<Option<Sender<Task>>>,
//!     worker: Mutex<Option<JoinHandle<()>>>,
//! }
//!
//! impl OneThread {
//!     fn new() -> OneThread {
//!         let (queue, tasks) = channel::<Task>();
//!         let worker = std::thread::spawn(move || {
//!             for task in tasks {
//!                 task.run();
//!             }
//!         });
//!         OneThread {
//!             queue: Mutex::new(Some(queue)),
//!             worker: Mutex::new(Some(worker)),
//!         }
//!     }
//! }
//!
//! impl Executor for OneThread {
//!     fn execute(&self, task: Task) -> Result<(), Rejected> {
//!         match &*self.queue.lock().unwrap() {
//!             Some(queue) => queue
//!                 .send(task)
//!                 .map_err(|e| Rejected::new(e.0, RejectReason::Broken)),
//!             None => Err(Rejected::new(task, RejectReason::Shutdown)),
//!         }
//!     }
//!
//!     /// Refuses new tasks, runs the queued ones, then joins the worker.
//!     fn shutdown(&self) {
//!         self.queue.lock().unwrap().take();
//!         if let Some(worker) = self.worker.lock().unwrap().take() {
//!             let _ = worker.join();
//!         }
//!     }
//! }
//!
//! // In your tests: #[test] fn one_thread_counts_every_task() { ... }
//! fn main() {
//!     check_executor(OneThread::new);
//! }
//! ```
//!
//! [`CheckConfig`] sets the number of cases, the timeout and what the
//! executor supports; [`try_check_executor`] returns the failure instead of
//! panicking. [`Workload::strategy`] gives the workloads to your own
//! proptest properties.

mod case;
mod config;
mod workload;

use std::cell::RefCell;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

pub use self::config::CheckConfig;
pub use self::workload::{workload, Op, TaskKind, Workload};
use crate::error::panic_message;
use crate::executor::Executor;
/// The `proptest` crate the strategies are built with, so that your own
/// properties over [`Workload::strategy`] use the same version.
pub use proptest;

/// How many times a workload runs during shrinking before it counts as
/// passing.
const RUNS_WHILE_SHRINKING: usize = 3;

/// Checks the task accounting of the executors `make` builds, with
/// [`CheckConfig::default`]; panics with the smallest failing workload and
/// what went wrong.
///
/// `make` is called once per case: every case runs on a fresh executor.
/// See the [module documentation](self) for what is checked.
pub fn check_executor<E, M>(make: M)
where
    M: Fn() -> E,
    E: Executor + Send + Sync + 'static,
{
    check_executor_with(&CheckConfig::default(), make)
}

/// [`check_executor`] with the cases, timeout and operations of `config`.
pub fn check_executor_with<E, M>(config: &CheckConfig, make: M)
where
    M: Fn() -> E,
    E: Executor + Send + Sync + 'static,
{
    if let Err(failure) = try_check_executor(config, make) {
        panic!("{failure}");
    }
}

/// [`check_executor_with`], returning the failure instead of panicking.
///
/// ```
/// use executor_exporter::testing::{try_check_executor, CheckConfig};
/// use executor_exporter::{Executor, Rejected, Task};
///
/// /// Accepts every task and forgets it: never runs it, never drops it.
/// struct Forgetful;
///
/// impl Executor for Forgetful {
///     fn execute(&self, task: Task) -> Result<(), Rejected> {
///         std::mem::forget(task);
///         Ok(())
///     }
/// }
///
/// let config = CheckConfig::default()
///     .cases(8)
///     .max_ops(4)
///     .timeout(std::time::Duration::from_millis(200));
/// let failure = try_check_executor(&config, || Forgetful).unwrap_err();
/// // Shrunk to a few operations: at best one task, then the shutdown that
/// // waits for it (each candidate costs its timeout, so a loaded machine may
/// // stop shrinking one or two operations earlier).
/// assert!(failure.workload().len() <= 3, "{failure}");
/// assert!(failure.to_string().contains("did not return within"));
/// ```
pub fn try_check_executor<E, M>(config: &CheckConfig, make: M) -> Result<(), CheckError>
where
    M: Fn() -> E,
    E: Executor + Send + Sync + 'static,
{
    config_mistake(config)?;
    quiet_planned_panics();
    let defaults = Config::default();
    let seed = config.seed.unwrap_or(match defaults.rng_seed {
        RngSeed::Fixed(seed) => seed,
        RngSeed::Random => random_seed(),
    });
    let runner_config = Config {
        cases: config.cases,
        max_shrink_time: u32::try_from(config.max_shrink_time.as_millis())
            .unwrap_or(u32::MAX)
            .max(1),
        // Bounded by `max_shrink_time` instead: a bug that shows after a
        // hundred tasks takes about that many steps per task.
        max_shrink_iters: 1_000_000,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        source_file: None,
        test_name: None,
        ..defaults
    };
    let mut runner = TestRunner::new(runner_config);
    // The problems of the last failing case: shrinking ends on the smallest.
    let last_failure: RefCell<Option<(Workload, Vec<String>)>> = RefCell::new(None);
    let result = runner.run(&Workload::strategy(config), |workload| {
        let mut problems = run_watched(config, &workload, make());
        // Once a case failed, a workload passes only if it passes a few
        // times: a failure that depends on timing would otherwise stop the
        // shrinking at its first lucky pass.
        let shrinking = last_failure.borrow().is_some();
        for _ in 1..if shrinking { RUNS_WHILE_SHRINKING } else { 1 } {
            if !problems.is_empty() {
                break;
            }
            problems = run_watched(config, &workload, make());
        }
        if problems.is_empty() {
            return Ok(());
        }
        let reason = problems.join("; ");
        *last_failure.borrow_mut() = Some((workload, problems));
        Err(TestCaseError::fail(reason))
    });
    match result {
        Ok(()) => Ok(()),
        Err(TestError::Fail(reason, workload)) => {
            let problems = match last_failure.into_inner() {
                Some((last, problems)) if last == workload => problems,
                _ => vec![reason.message().to_owned()],
            };
            Err(CheckError {
                workload,
                problems,
                seed: Some(seed),
                config: false,
            })
        }
        Err(TestError::Abort(reason)) => Err(CheckError {
            workload: Workload::default(),
            problems: vec![format!("the check was aborted: {reason}")],
            seed: Some(seed),
            config: false,
        }),
    }
}

/// Runs one given workload against `executor`, with the timeout and
/// options of `config`: to replay a failure, or to check a workload of
/// your own.
///
/// ```
/// use executor_exporter::testing::{check_workload, CheckConfig, Op, TaskKind, Workload};
/// use executor_exporter::ThreadPool;
///
/// let workload = Workload::new(vec![
///     Op::Submit(TaskKind::Sleep(2)),
///     Op::Submit(TaskKind::Panic),
///     Op::Cancel(1),
///     Op::ShutdownNow,
/// ]);
/// let pool = ThreadPool::new(1).unwrap();
/// check_workload(&CheckConfig::default(), &workload, pool).unwrap();
/// ```
pub fn check_workload<E>(
    config: &CheckConfig,
    workload: &Workload,
    executor: E,
) -> Result<(), CheckError>
where
    E: Executor + Send + Sync + 'static,
{
    config_mistake(config)?;
    quiet_planned_panics();
    let problems = run_watched(config, workload, executor);
    if problems.is_empty() {
        return Ok(());
    }
    Err(CheckError {
        workload: workload.clone(),
        problems,
        seed: None,
        config: false,
    })
}

/// The check cannot run with `config`: an error naming the option to change.
fn config_mistake(config: &CheckConfig) -> Result<(), CheckError> {
    match config.mistake() {
        None => Ok(()),
        Some(problem) => Err(CheckError {
            workload: Workload::default(),
            problems: vec![problem],
            seed: None,
            config: true,
        }),
    }
}

/// Runs one case on a thread of its own, and gives up on it a while after
/// its timeout: a case waits for the executor within its timeout itself,
/// so this catches an `execute`, `shutdown` or drop of the executor that
/// never returns.
fn run_watched<E>(config: &CheckConfig, workload: &Workload, executor: E) -> Vec<String>
where
    E: Executor + Send + Sync + 'static,
{
    let progress = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let (case_config, case_workload, case_progress) =
        (config.clone(), workload.clone(), progress.clone());
    let started = std::thread::Builder::new()
        .name("executor-check-case".to_owned())
        .spawn(move || {
            let problems = std::panic::catch_unwind(AssertUnwindSafe(|| {
                case::run(&case_config, &case_workload, executor, &case_progress)
            }));
            let _ = tx.send(problems);
        });
    if let Err(e) = started {
        return vec![format!("could not start the case's thread: {e}")];
    }
    let grace = (config.timeout / 2).max(Duration::from_secs(1));
    let received = match config.timeout.checked_add(grace) {
        Some(limit) => rx.recv_timeout(limit),
        None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
    };
    let at = || {
        let i = progress.load(Ordering::SeqCst);
        match workload.ops().get(i) {
            Some(op) => format!("op {i} ({op})"),
            None if i == workload.len() => "the closing shutdown".to_owned(),
            None => "the drop of the proxy and its executor".to_owned(),
        }
    };
    match received {
        Ok(Ok(problems)) => problems,
        Ok(Err(payload)) => vec![format!(
            "the case panicked in {}: {}",
            at(),
            panic_message(&*payload)
        )],
        Err(_) => vec![format!(
            "the case did not finish within {:?}: it is stuck in {} (an `execute`, \
             `shutdown` or drop of the executor that never returns?); its thread is left behind",
            config.timeout + grace,
            at()
        )],
    }
}

/// A seed for the workloads when none is given.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

/// The workload's tasks panic on purpose, many times per check: a panic
/// hook, set once, keeps those quiet and hands every other panic to the
/// hook that was there before.
fn quiet_planned_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&case::PLANNED_PANIC) {
                previous(info);
            }
        }));
    });
}

/// An executor failed the check: the smallest failing workload found, and
/// what went wrong with it.
///
/// Its `Display` is what [`check_executor`] panics with.
#[derive(Clone)]
pub struct CheckError {
    workload: Workload,
    problems: Vec<String>,
    seed: Option<u64>,
    /// The check did not run: its [`CheckConfig`] is a mistake.
    config: bool,
}

impl CheckError {
    /// The smallest failing workload found (the one given to
    /// [`check_workload`]).
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// What went wrong, one sentence each: an outcome, a count of the
    /// snapshot against the workload's tally, or a hang.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The seed of the failing run ([`CheckConfig::seed`] replays it);
    /// `None` from [`check_workload`].
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// True when nothing ran because the [`CheckConfig`] is a mistake
    /// (`cases(0)`, a zero timeout, `max_ops` over 10,000): the problem
    /// names the option to change.
    pub fn is_config(&self) -> bool {
        self.config
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.config {
            return write!(f, "the check did not run: {}", self.problems.join("; "));
        }
        let what = if self.seed.is_some() {
            "smallest failing workload"
        } else {
            "workload"
        };
        let (ops, tasks) = (self.workload.len(), self.workload.tasks());
        writeln!(
            f,
            "the executor failed the check; {what} ({ops} operation{}, {tasks} task{}):",
            plural(ops),
            plural(tasks)
        )?;
        writeln!(f, "    {}", self.workload)?;
        f.write_str("what went wrong:")?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        if let Some(seed) = self.seed {
            write!(
                f,
                "\nreplay: CheckConfig::seed({seed}) with the same options"
            )?;
        }
        Ok(())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

impl fmt::Debug for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for CheckError {}

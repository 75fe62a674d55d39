//! The testing kit (`executor_exporter::testing`): the crate's own pools
//! pass `check_executor`, and executors that lose tasks are caught, with a
//! shrunk workload of a few operations.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use executor_exporter::testing::{
    check_executor_with, check_workload, try_check_executor, CheckConfig, CheckError, Op, TaskKind,
    Workload,
};
use executor_exporter::{Executor, RejectReason, Rejected, Task, ThreadPool};

/// Few cases, a fixed seed: fast, and the same workloads on every run.
fn quick() -> CheckConfig {
    CheckConfig::default().cases(24).seed(23)
}

#[test]
fn the_thread_pool_passes() {
    check_executor_with(&quick(), || ThreadPool::new(2).unwrap());
}

#[test]
fn a_one_worker_thread_pool_passes() {
    check_executor_with(&quick(), || ThreadPool::new(1).unwrap());
}

#[cfg(feature = "rayon")]
#[test]
fn a_rayon_pool_passes() {
    check_executor_with(&quick(), || {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
    });
}

/// Runs every task on the thread that submits it.
struct Inline;

impl Executor for Inline {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        task.run();
        Ok(())
    }
}

#[test]
fn an_inline_executor_passes() {
    check_executor_with(&quick(), || Inline);
}

/// Asserts the check failed, on a workload of at most `max_ops`
/// operations, with a problem that says `expected`.
fn assert_caught(result: Result<(), CheckError>, max_ops: usize, expected: &str) {
    let failure = result.expect_err("the broken executor passed the check");
    assert!(
        failure.workload().len() <= max_ops,
        "the workload was not shrunk to {max_ops} operations:\n{failure}"
    );
    assert!(
        failure.problems().iter().any(|p| p.contains(expected)),
        "no problem says {expected:?}:\n{failure}"
    );
}

/// (a) Drops every third task it accepts, without running it.
struct DropsEveryThird {
    accepted: AtomicUsize,
    pool: ThreadPool,
}

impl Executor for DropsEveryThird {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        if self.accepted.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
            drop(task);
            return Ok(());
        }
        self.pool.execute(task)
    }

    fn shutdown(&self) {
        Executor::shutdown(&self.pool)
    }
}

#[test]
fn an_executor_that_drops_accepted_tasks_is_caught() {
    let result = try_check_executor(&quick(), || DropsEveryThird {
        accepted: AtomicUsize::new(0),
        pool: ThreadPool::new(2).unwrap(),
    });
    // Three tasks (the third is dropped), then the shutdown.
    assert_caught(result, 4, "dropped a task it had accepted");
}

/// (b) Runs its first two tasks, then accepts tasks and never runs them
/// (nor drops them): the shutdown that waits for them would wait forever.
struct StallsAfterTwo {
    accepted: AtomicUsize,
    pool: ThreadPool,
    stalled: Mutex<Vec<Task>>,
}

impl Executor for StallsAfterTwo {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        if self.accepted.fetch_add(1, Ordering::SeqCst) < 2 {
            return self.pool.execute(task);
        }
        self.stalled.lock().unwrap().push(task);
        Ok(())
    }
}

#[test]
fn an_executor_that_stops_running_tasks_is_caught_without_hanging() {
    // Each failing case waits out its timeout, shrinking included: short
    // workloads and a short timeout keep that to a few seconds.
    let config = quick()
        .max_ops(6)
        .max_sleep(Duration::from_millis(1))
        .timeout(Duration::from_millis(100));
    let result = try_check_executor(&config, || StallsAfterTwo {
        accepted: AtomicUsize::new(0),
        pool: ThreadPool::new(1).unwrap(),
        stalled: Mutex::new(Vec::new()),
    });
    assert_caught(result, 4, "did not return within");
}

/// (c) One worker polling its queue every millisecond, which takes a task
/// only once it has waited [`HOLD`]; its shutdown throws the queue away
/// instead of running it.
struct DiscardsQueueOnShutdown {
    shared: Arc<Mutex<Queue>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// How long a task waits in [`DiscardsQueueOnShutdown`]'s queue. The bug
/// shows only for tasks still queued at its shutdown: a worker that took
/// tasks at once would, on a loaded machine, often have run them all before
/// the check's shutdown (which starts a thread) reached the executor, and
/// the check could pass by luck.
const HOLD: Duration = Duration::from_millis(30);

#[derive(Default)]
struct Queue {
    tasks: VecDeque<(std::time::Instant, Task)>,
    stopped: bool,
}

impl DiscardsQueueOnShutdown {
    fn new() -> DiscardsQueueOnShutdown {
        let shared = Arc::new(Mutex::new(Queue::default()));
        let queue = shared.clone();
        let worker = std::thread::spawn(move || loop {
            let mut q = queue.lock().unwrap();
            if q.stopped {
                return;
            }
            let ready = q.tasks.front().is_some_and(|(at, _)| at.elapsed() >= HOLD);
            let task = if ready { q.tasks.pop_front() } else { None };
            drop(q);
            match task {
                Some((_, task)) => task.run(),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        });
        DiscardsQueueOnShutdown {
            shared,
            worker: Mutex::new(Some(worker)),
        }
    }
}

impl Executor for DiscardsQueueOnShutdown {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        let mut q = self.shared.lock().unwrap();
        if q.stopped {
            return Err(Rejected::new(task, RejectReason::Shutdown));
        }
        q.tasks.push_back((std::time::Instant::now(), task));
        Ok(())
    }

    fn shutdown(&self) {
        let discarded = {
            let mut q = self.shared.lock().unwrap();
            q.stopped = true;
            std::mem::take(&mut q.tasks)
        };
        drop(discarded);
        if let Some(worker) = self.worker.lock().unwrap().take() {
            let _ = worker.join();
        }
    }
}

#[test]
fn an_executor_that_discards_its_queue_on_shutdown_is_caught() {
    let result = try_check_executor(&quick(), DiscardsQueueOnShutdown::new);
    // A task still queued, the executor's shutdown, the proxy's: three. The
    // bug shows only for tasks still queued when the executor shuts down, so
    // on a loaded machine a candidate without them may pass by luck and the
    // shrinker keeps one or two more.
    assert_caught(result, 6, "the executor dropped a task it had accepted");
}

/// The failure names the workload as a list of operations and says what
/// went wrong in words, the snapshot's counts against the workload's.
#[test]
fn a_failure_reads_as_a_list_of_operations_and_the_counts_that_differ() {
    let workload = Workload::new(vec![
        Op::Submit(TaskKind::Ok),
        Op::Spawn(TaskKind::Ok),
        Op::Submit(TaskKind::Ok),
        Op::Shutdown,
    ]);
    let executor = DropsEveryThird {
        accepted: AtomicUsize::new(0),
        pool: ThreadPool::new(1).unwrap(),
    };
    let failure = check_workload(&CheckConfig::default(), &workload, executor).unwrap_err();
    let text = failure.to_string();
    assert!(
        text.contains("[Submit(Ok), Spawn(Ok), Submit(Ok), Shutdown]"),
        "{text}"
    );
    assert!(
        text.contains(
            "task #1 (op 2: Submit(Ok)) was cancelled, but the workload never cancelled it"
        ),
        "{text}"
    );
    assert_eq!(failure.seed(), None);
}

/// A submit after `shutdown` is refused and counted as rejected; tasks a
/// `shutdown_now` cancels are not the executor's fault.
#[test]
fn shutdowns_part_way_are_checked() {
    let workload = Workload::new(vec![
        Op::Submit(TaskKind::Sleep(20)),
        Op::Submit(TaskKind::Ok),
        Op::Spawn(TaskKind::Ok),
        Op::ShutdownNow,
        Op::Submit(TaskKind::Ok),
        Op::Map(vec![TaskKind::Ok; 3]),
        Op::Shutdown,
    ]);
    check_workload(&quick(), &workload, ThreadPool::new(1).unwrap()).unwrap();
}

/// What the config leaves out, the strategy does not generate.
#[test]
fn the_strategy_follows_the_config() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;

    let config = CheckConfig::default()
        .max_ops(12)
        .shutdown_now(false)
        .concurrent(false)
        .executor_shutdown(false);
    let strategy = Workload::strategy(&config);
    let mut runner = TestRunner::deterministic();
    for _ in 0..200 {
        let workload = strategy.new_tree(&mut runner).unwrap().current();
        assert_eq!(workload.ops().last(), Some(&Op::Shutdown), "{workload}");
        assert!(workload.len() <= 12 + 5, "{workload}");
        for op in workload.ops() {
            assert!(
                !matches!(
                    op,
                    Op::ShutdownNow | Op::Concurrent(_) | Op::ExecutorShutdown
                ),
                "{workload}"
            );
        }
    }
}

/// Refuses every other task as if its queue were full.
struct RefusesEveryOther {
    submits: AtomicUsize,
    pool: ThreadPool,
}

impl Executor for RefusesEveryOther {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        if self.submits.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
            return Err(Rejected::new(task, RejectReason::Full));
        }
        self.pool.execute(task)
    }

    fn shutdown(&self) {
        Executor::shutdown(&self.pool)
    }
}

/// A refusal before shutdown is a failure unless the config allows it;
/// allowed, the refused tasks are counted as rejected like any other.
#[test]
fn refusals_before_shutdown_fail_unless_allowed() {
    let make = || RefusesEveryOther {
        submits: AtomicUsize::new(0),
        pool: ThreadPool::new(2).unwrap(),
    };
    let result = try_check_executor(&quick(), make);
    assert_caught(result, 3, "refused a task before any shutdown");
    check_executor_with(&quick().may_reject(true), make);
}

/// Blocks forever in `execute`.
struct Stuck;

impl Executor for Stuck {
    fn execute(&self, _task: Task) -> Result<(), Rejected> {
        loop {
            std::thread::park();
        }
    }
}

/// A call into the executor that never returns fails the case (the
/// watchdog names the operation) instead of hanging the test.
#[test]
fn an_execute_that_never_returns_fails_the_case() {
    let workload = Workload::new(vec![Op::Submit(TaskKind::Ok), Op::Shutdown]);
    let config = CheckConfig::default().timeout(Duration::from_millis(100));
    let failure = check_workload(&config, &workload, Stuck).unwrap_err();
    let text = failure.to_string();
    assert!(
        text.contains("did not finish within") && text.contains("op 0 (Submit(Ok))"),
        "{text}"
    );
}

/// Panics in `execute` while holding its lock, poisoning it; its `shutdown`
/// takes the lock with `unwrap`, as the module's example does.
#[derive(Default)]
struct PanicsHoldingItsLock {
    queue: Mutex<Vec<Task>>,
}

impl Executor for PanicsHoldingItsLock {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        let _queue = self.queue.lock().unwrap();
        drop(task);
        panic!("execute fails while holding its lock");
    }

    fn shutdown(&self) {
        self.queue.lock().unwrap().clear();
    }
}

/// A panic out of `execute` fails the case, named, instead of taking the
/// test binary down (the executor's own shutdown would panic again while
/// the first panic unwinds).
#[test]
fn an_execute_that_panics_fails_the_case_without_aborting() {
    let workload = Workload::new(vec![Op::Submit(TaskKind::Ok), Op::Shutdown]);
    let failure = check_workload(&quick(), &workload, PanicsHoldingItsLock::default()).unwrap_err();
    let text = failure.to_string();
    assert!(
        text.contains("op 0 (Submit(Ok))") && text.contains("execute fails while holding its lock"),
        "{text}"
    );
}

/// Options that would make the check pass vacuously, fail every case, or
/// not fit in memory are refused before anything runs, naming the option.
#[test]
fn a_config_that_checks_nothing_is_refused_naming_the_option() {
    for (config, option) in [
        (CheckConfig::default().cases(0), "cases(0)"),
        (CheckConfig::default().timeout(Duration::ZERO), "timeout(0)"),
        (CheckConfig::default().max_ops(usize::MAX), "max_ops("),
    ] {
        let err = try_check_executor(&config, || ThreadPool::new(1).unwrap()).unwrap_err();
        assert!(err.is_config(), "{err}");
        assert!(err.to_string().contains(option), "{err}");
        let workload = Workload::new(vec![Op::Submit(TaskKind::Ok)]);
        let err = check_workload(&config, &workload, ThreadPool::new(1).unwrap()).unwrap_err();
        assert!(err.is_config() && err.to_string().contains(option), "{err}");
    }
    let fine = CheckConfig::default().cases(1).max_ops(10_000);
    let workload = Workload::new(vec![Op::Submit(TaskKind::Ok)]);
    check_workload(&fine, &workload, ThreadPool::new(1).unwrap()).unwrap();
}

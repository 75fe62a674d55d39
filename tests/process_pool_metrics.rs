//! The instrumented process pool: every way a task can end, and the metrics
//! of each, read back from a registry's text exposition. The invariant
//! submitted = queued + running + completed + failed + cancelled is checked
//! after each scenario.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::{counts, scrape, Exposition};
use executor_exporter::process_pool::{run_if_worker, ProcessTask, SubmitError, WorkerRegistry};
use executor_exporter::prometheus::Registry;
use executor_exporter::{FailureReason, ProcessPoolExecutor, TaskError};

const WATCHDOG: Duration = Duration::from_secs(60);

macro_rules! task {
    ($ty:ident, $name:literal, $in:ty => $out:ty, |$arg:pat_param| $body:expr) => {
        struct $ty;
        impl ProcessTask for $ty {
            const NAME: &'static str = $name;
            type Input = $in;
            type Output = $out;
            type Error = String;
            fn run($arg: $in) -> Result<$out, String> {
                $body
            }
        }
    };
}

task!(Square, "square", u64 => u64, |x| Ok(x * x));
task!(Pid, "pid", () => u32, |()| Ok(std::process::id()));
task!(Fail, "fail", u64 => u64, |x| Err(format!("{x} is odd")));
task!(Panic, "panic", () => u64, |()| panic!("worker-side panic"));
task!(Abort, "abort", () => u64, |()| std::process::abort());
task!(Exit, "exit", i32 => u64, |code| std::process::exit(code));
task!(SleepMs, "sleep_ms", u64 => u64, |ms| {
    std::thread::sleep(Duration::from_millis(ms));
    Ok(ms)
});
task!(SelfKill, "self_kill", () => u64, |()| {
    // SAFETY: kill(2) on our own pid with a valid signal number.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(10));
    Ok(0)
});
task!(SetMarker, "set_marker", String => (), |value| {
    std::env::set_var("EXPORTER_TEST_MARKER", value);
    Ok(())
});
task!(ReadMarker, "read_marker", () => String, |()| {
    Ok(std::env::var("EXPORTER_TEST_MARKER").unwrap_or_default())
});
task!(FailInit, "fail_init", () => (), |()| Err("no database".to_owned()));
// Known to the parent only: the workers' registry does not have it.
task!(Unregistered, "unregistered", () => (), |()| Ok(()));

/// An input whose `Serialize` always fails.
struct Unencodable;
impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be encoded",
        ))
    }
}
impl<'de> serde::Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unencodable)
    }
}
task!(TakesUnencodable, "takes_unencodable", Unencodable => (), |_| Ok(()));

fn worker_registry() -> WorkerRegistry {
    WorkerRegistry::new()
        .register::<Square>()
        .register::<Pid>()
        .register::<Fail>()
        .register::<Panic>()
        .register::<Abort>()
        .register::<Exit>()
        .register::<SleepMs>()
        .register::<SelfKill>()
        .register::<SetMarker>()
        .register::<ReadMarker>()
        .register::<FailInit>()
        .register::<TakesUnencodable>()
}

/// This test binary is its own worker program.
#[test]
fn worker_entry() {
    run_if_worker(&worker_registry());
}

fn pool(registry: &Registry, id: &str, workers: usize) -> ProcessPoolExecutor {
    ProcessPoolExecutor::builder()
        .max_workers(workers)
        .worker_test_entry("worker_entry")
        .exporter_id(id)
        .registry(registry.clone())
        .build()
        .unwrap()
}

fn reason(exp: &Exposition, id: &str, r: FailureReason) -> f64 {
    exp.value(
        "executor_task_failures_total",
        &[("executor", id), ("reason", r.as_str())],
    )
}

fn join<T: Send + 'static>(h: executor_exporter::TaskHandle<T>) -> Result<T, TaskError> {
    common::watchdog(WATCHDOG.as_secs(), move || h.join())
}

fn failed_with(r: Result<Result<u64, String>, TaskError>, want: FailureReason) -> String {
    match r {
        Err(TaskError::Failed { reason, message }) if reason == want => message,
        other => panic!("expected a {want} failure, got {other:?}"),
    }
}

#[test]
fn every_failure_reason_is_exposed_at_zero_when_the_pool_is_built() {
    let registry = Registry::new();
    let _p = pool(&registry, "fresh", 2);
    let exp = scrape(&registry);
    for r in FailureReason::ALL {
        assert_eq!(reason(&exp, "fresh", r), 0.0, "{r}");
    }
}

#[test]
fn results_in_order_panic_and_err_are_counted() {
    let registry = Registry::new();
    let p = pool(&registry, "basic", 2);
    let squares: Vec<u64> = p
        .map::<Square, _>(0..20u64)
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(squares, (0..20u64).map(|x| x * x).collect::<Vec<_>>());
    assert_eq!(
        join(p.submit::<Fail>(&3).unwrap()),
        Ok(Err("3 is odd".to_owned()))
    );
    match join(p.submit::<Panic>(&()).unwrap()) {
        Err(TaskError::Panicked { message }) => assert_eq!(message, "worker-side panic"),
        other => panic!("{other:?}"),
    }
    // The worker survived its panic: still usable.
    assert_eq!(join(p.submit::<Square>(&9).unwrap()), Ok(Ok(81)));
    p.join();
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "basic");
    c.assert_invariant();
    assert_eq!((c.submitted, c.completed, c.failed), (23.0, 21.0, 2.0));
    assert_eq!(reason(&exp, "basic", FailureReason::Error), 1.0);
    assert_eq!(reason(&exp, "basic", FailureReason::Panic), 1.0);
    let l = [("executor", "basic"), ("executor_type", "process_pool")];
    assert_eq!(exp.value("executor_max_workers_total", &l), 2.0);
    let started = exp.value("executor_initialized_workers_total", &l);
    assert!((1.0..=2.0).contains(&started), "{started}");
    assert_eq!(exp.value("executor_worker_restarts_total", &l), 0.0);
}

#[test]
fn pp_1_crashes_fail_only_their_task_and_workers_are_replaced() {
    let registry = Registry::new();
    let p = pool(&registry, "crashes", 2);
    let killed = failed_with(
        join(p.submit::<SelfKill>(&()).unwrap()),
        FailureReason::WorkerDied,
    );
    assert!(
        killed.contains("SIGKILL") && killed.contains("worker process"),
        "{killed}"
    );
    let aborted = failed_with(
        join(p.submit::<Abort>(&()).unwrap()),
        FailureReason::WorkerDied,
    );
    assert!(aborted.contains("SIGABRT"), "{aborted}");
    let exited = failed_with(
        join(p.submit::<Exit>(&3).unwrap()),
        FailureReason::WorkerDied,
    );
    assert!(exited.contains('3'), "{exited}");
    // The pool goes on.
    assert_eq!(join(p.submit::<Square>(&4).unwrap()), Ok(Ok(16)));
    p.join();
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "crashes");
    c.assert_invariant();
    assert_eq!((c.submitted, c.completed, c.failed), (4.0, 1.0, 3.0));
    assert_eq!(reason(&exp, "crashes", FailureReason::WorkerDied), 3.0);
    assert_eq!(
        exp.value("executor_worker_restarts_total", &[("executor", "crashes")]),
        3.0
    );
}

#[test]
fn idle_worker_death_loses_no_task() {
    let registry = Registry::new();
    let p = pool(&registry, "idle-death", 1);
    assert_eq!(join(p.submit::<Square>(&2).unwrap()), Ok(Ok(4)));
    for pid in p.worker_pids() {
        // SAFETY: kill(2) on a worker process this pool started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let results: Vec<_> = (0..5u64).map(|i| p.submit::<Square>(&i).unwrap()).collect();
    for (i, h) in results.into_iter().enumerate() {
        assert_eq!(join(h), Ok(Ok((i * i) as u64)));
    }
    p.join();
    let c = counts(&scrape(&registry), "executor", "idle-death");
    c.assert_invariant();
    assert_eq!((c.submitted, c.completed, c.failed), (6.0, 6.0, 0.0));
}

#[test]
fn timeout_kills_and_replaces_the_worker() {
    let registry = Registry::new();
    let p = pool(&registry, "timeout", 1);
    let h = p
        .submit_with_timeout::<SleepMs>(&30_000, Duration::from_millis(200))
        .unwrap();
    let msg = failed_with(join(h), FailureReason::Timeout);
    assert!(msg.contains("timed out"), "{msg}");
    assert_eq!(join(p.submit::<SleepMs>(&1).unwrap()), Ok(Ok(1)));
    p.join();
    let exp = scrape(&registry);
    counts(&exp, "executor", "timeout").assert_invariant();
    assert_eq!(reason(&exp, "timeout", FailureReason::Timeout), 1.0);
    assert_eq!(
        exp.value("executor_worker_restarts_total", &[("executor", "timeout")]),
        1.0
    );
}

#[test]
fn pp_3_max_tasks_per_child_recycles_workers() {
    let registry = Registry::new();
    let p = ProcessPoolExecutor::builder()
        .max_workers(1)
        .max_tasks_per_child(3)
        .worker_test_entry("worker_entry")
        .exporter_id("recycle")
        .registry(registry.clone())
        .build()
        .unwrap();
    let pids: Vec<u32> = (0..4)
        .map(|_| join(p.submit::<Pid>(&()).unwrap()).unwrap().unwrap())
        .collect();
    assert_eq!(pids[0], pids[1]);
    assert_eq!(pids[1], pids[2]);
    assert_ne!(pids[2], pids[3]);
    p.join();
    let exp = scrape(&registry);
    assert_eq!(
        exp.value("executor_worker_restarts_total", &[("executor", "recycle")]),
        1.0
    );
    assert_eq!(
        exp.value(
            "executor_initialized_workers_total",
            &[("executor", "recycle")]
        ),
        2.0
    );
}

#[test]
fn init_1_initializer_runs_in_each_worker() {
    let registry = Registry::new();
    let p = ProcessPoolExecutor::builder()
        .max_workers(2)
        .initializer::<SetMarker>(&"ready".to_owned())
        .worker_test_entry("worker_entry")
        .exporter_id("init")
        .registry(registry.clone())
        .build()
        .unwrap();
    let all: Vec<String> = p
        .map::<ReadMarker, _>(std::iter::repeat_n((), 8))
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert!(all.iter().all(|v| v == "ready"), "{all:?}");
}

#[test]
fn init_2_failing_initializer_breaks_the_pool_and_fails_fast() {
    let registry = Registry::new();
    let p = ProcessPoolExecutor::builder()
        .max_workers(2)
        .initializer::<FailInit>(&())
        .worker_test_entry("worker_entry")
        .exporter_id("broken")
        .registry(registry.clone())
        .build()
        .unwrap();
    let h = p.submit::<Square>(&1).unwrap();
    match join(h) {
        Err(TaskError::Broken { reason }) => assert!(reason.contains("no database"), "{reason}"),
        other => panic!("expected Broken, got {other:?}"),
    }
    match p.submit::<Square>(&2) {
        Err(SubmitError::Broken(msg)) => assert!(msg.contains("no database"), "{msg}"),
        other => panic!("expected a refused submit, got {other:?}"),
    }
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "broken");
    c.assert_invariant();
    assert_eq!((c.submitted, c.rejected, c.failed), (1.0, 1.0, 1.0));
    assert_eq!(reason(&exp, "broken", FailureReason::Broken), 1.0);
    assert_eq!(
        exp.value(
            "executor_initialized_workers_total",
            &[("executor", "broken")]
        ),
        0.0
    );
}

#[test]
fn unknown_task_and_unencodable_args_fail_only_that_task() {
    let registry = Registry::new();
    let p = pool(&registry, "bad-input", 1);
    match join(p.submit::<Unregistered>(&()).unwrap()) {
        Err(TaskError::Failed { reason, message }) => {
            assert_eq!(reason, FailureReason::UnknownTask);
            assert!(message.contains("unregistered"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match p.submit::<TakesUnencodable>(&Unencodable) {
        Err(SubmitError::Serialization(msg)) => assert!(msg.contains("takes_unencodable"), "{msg}"),
        other => panic!(
            "expected a serialization error, got {:?}",
            other.map(|_| ())
        ),
    }
    assert_eq!(join(p.submit::<Square>(&5).unwrap()), Ok(Ok(25)));
    p.join();
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "bad-input");
    c.assert_invariant();
    assert_eq!(
        (c.submitted, c.rejected, c.completed, c.failed),
        (2.0, 1.0, 1.0, 1.0)
    );
    assert_eq!(reason(&exp, "bad-input", FailureReason::UnknownTask), 1.0);
}

#[test]
fn shut_1_submit_after_shutdown_and_shutdown_now_cancels_queued() {
    let registry = Registry::new();
    let p = pool(&registry, "shut", 1);
    let running = p.submit::<SleepMs>(&300).unwrap();
    let queued: Vec<_> = (0..6u64).map(|i| p.submit::<Square>(&i).unwrap()).collect();
    // Wait until the first task runs in its worker.
    common::eventually(60, "the first task to start", || {
        running.state() == executor_exporter::TaskState::Running
    });
    let p = common::watchdog(60, move || {
        p.shutdown_now();
        p
    });
    assert_eq!(join(running), Ok(Ok(300)));
    for h in queued {
        assert_eq!(join(h), Err(TaskError::Cancelled));
    }
    assert!(matches!(p.submit::<Square>(&1), Err(SubmitError::Shutdown)));
    p.shutdown(); // idempotent
    let c = counts(&scrape(&registry), "executor", "shut");
    c.assert_invariant();
    assert_eq!(
        (c.submitted, c.completed, c.cancelled, c.rejected),
        (7.0, 1.0, 6.0, 1.0)
    );
}

#[test]
fn pp_6_kill_fails_running_tasks() {
    let registry = Registry::new();
    let p = pool(&registry, "kill", 2);
    let long: Vec<_> = (0..2)
        .map(|_| p.submit::<SleepMs>(&30_000).unwrap())
        .collect();
    common::eventually(60, "both tasks to start", || {
        long.iter()
            .all(|h| h.state() == executor_exporter::TaskState::Running)
    });
    let pids = p.worker_pids();
    let p = common::watchdog(60, move || {
        p.kill();
        p
    });
    for h in long {
        let msg = failed_with(join(h), FailureReason::Killed);
        assert!(msg.contains("killed"), "{msg}");
    }
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} reaped"
        );
    }
    let exp = scrape(&registry);
    counts(&exp, "executor", "kill").assert_invariant();
    assert_eq!(reason(&exp, "kill", FailureReason::Killed), 2.0);
    drop(p);
}

//! The instrumented process pool: every way a task can end, and the metrics
//! of each, read back from a registry's text exposition. The invariant
//! submitted = queued + running + completed + failed + cancelled is checked
//! after each scenario.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::{counts, scrape, Exposition};
use executor_exporter::process_pool::{run_if_worker, ProcessTask, WorkerRegistry};
use executor_exporter::prometheus::Registry;
use executor_exporter::RejectReason;
use executor_exporter::{
    ExemplarLabels, FailureReason, OpenMetricsEncoder, ProcessPoolExecutor, TaskError,
};

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

/// An output whose `Deserialize` panics. Outputs are decoded in the parent, on the pool's dispatcher
/// thread, so this is user code panicking there.
struct PanicsOnDecode;
impl serde::Serialize for PanicsOnDecode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}
impl<'de> serde::Deserialize<'de> for PanicsOnDecode {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("this output refuses to be decoded")
    }
}
task!(DecodePanics, "decode_panics", () => PanicsOnDecode, |()| Ok(PanicsOnDecode));

// Forks a child that sleeps 30 s holding a copy of the worker's channel, writes the child's pid to the
// file named by the input, then makes the worker exit with code 3.
task!(ForkThenExit, "fork_then_exit", String => u64, |pid_file| {
    // SAFETY: fork(2); the child only sleeps and exits (async-signal-safe calls).
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: sleep(3) and _exit(2) are async-signal-safe.
        unsafe {
            libc::sleep(30);
            libc::_exit(0);
        }
    }
    std::fs::write(&pid_file, child.to_string()).map_err(|e| e.to_string())?;
    std::process::exit(3)
});

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
        .register::<DecodePanics>()
        .register::<ForkThenExit>()
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
    assert_eq!(exp.value("executor_max_workers", &l), 2.0);
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
        Err(e) if e.reason() == RejectReason::Broken => {
            let msg = e.detail().unwrap_or_default();
            assert!(msg.contains("no database"), "{msg}")
        }
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
        Err(e) if e.reason() == RejectReason::Serialization => {
            let msg = e.detail().unwrap_or_default();
            assert!(msg.contains("takes_unencodable"), "{msg}")
        }
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
    assert!(matches!(p.submit::<Square>(&1), Err(e) if e.reason() == RejectReason::Shutdown));
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

/// A task sent straight to an idle worker whose handle is held but not joined, or dropped, is
/// still read and counted by the pool when it ends, not when (or if) someone joins it.
#[test]
fn tasks_whose_handles_are_held_or_dropped_are_counted_when_they_end() {
    let registry = Registry::new();
    let p = pool(&registry, "unjoined", 1);
    // A warm, idle worker: the next submits go straight to it.
    assert_eq!(join(p.submit::<Square>(&2).unwrap()), Ok(Ok(4)));
    let completed = || counts(&scrape(&registry), "executor", "unjoined").completed;
    let counted_within = |n: f64| {
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while completed() < n {
            assert!(
                std::time::Instant::now() < until,
                "{} of {n} tasks counted after 2 s",
                completed()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let held = p.submit::<Square>(&3).unwrap();
    counted_within(2.0);
    drop(p.submit::<Square>(&4).unwrap());
    counted_within(3.0);
    assert_eq!(join(held), Ok(Ok(9)));
    p.join();
    let c = counts(&scrape(&registry), "executor", "unjoined");
    c.assert_invariant();
    assert_eq!((c.submitted, c.completed), (3.0, 3.0));
}

/// Joins with a bound shorter than the watchdog: these tests hung (or waited out a grandchild) before
/// their fixes, and should fail quickly rather than wait a minute.
fn join_within<T>(h: &mut executor_exporter::TaskHandle<T>, secs: u64) -> Result<T, TaskError> {
    match h.join_timeout(Duration::from_secs(secs)) {
        Err(TaskError::TimedOut) => panic!("the task did not end within {secs} s"),
        other => other,
    }
}

#[test]
fn output_whose_decoding_panics_fails_that_task_and_the_pool_carries_on() {
    // The whole scenario under a watchdog: a pool whose task is never finished cannot be dropped.
    common::watchdog(30, output_whose_decoding_panics);
}

fn output_whose_decoding_panics() {
    let registry = Registry::new();
    let p = pool(&registry, "decode-panic", 2);
    let mut other = p.submit::<SleepMs>(&1_000).unwrap();
    let mut h = p.submit::<DecodePanics>(&()).unwrap();
    match join_within(&mut h, 10) {
        Err(TaskError::Failed { reason, message }) => {
            assert_eq!(reason, FailureReason::Serialization);
            assert!(
                message.contains("this output refuses to be decoded"),
                "{message}"
            );
        }
        other => panic!("expected a serialization failure, got {:?}", other.is_ok()),
    }
    // The task on the other worker was not killed, and the pool takes new work.
    assert_eq!(join_within(&mut other, 10), Ok(Ok(1_000)));
    assert_eq!(join(p.submit::<Square>(&3).unwrap()), Ok(Ok(9)));
    common::watchdog(20, move || drop(p));
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "decode-panic");
    c.assert_invariant();
    assert_eq!((c.submitted, c.completed, c.failed), (3.0, 2.0, 1.0));
    assert_eq!(
        reason(&exp, "decode-panic", FailureReason::Serialization),
        1.0
    );
    assert_eq!(reason(&exp, "decode-panic", FailureReason::Killed), 0.0);
}

#[test]
fn a_panicking_waker_does_not_take_down_the_pool() {
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};

    struct PanickingWaker;
    impl Wake for PanickingWaker {
        fn wake(self: Arc<Self>) {
            panic!("this waker panics");
        }
    }

    let registry = Registry::new();
    let p = pool(&registry, "waker-panic", 2);
    let mut other = p.submit::<SleepMs>(&1_000).unwrap();
    let mut h = p.submit::<SleepMs>(&100).unwrap();
    let waker = Waker::from(Arc::new(PanickingWaker));
    let polled = std::pin::Pin::new(&mut h).poll(&mut Context::from_waker(&waker));
    assert!(polled.is_pending(), "polled before the task could end");
    // The dispatcher wakes the panicking waker when the task ends.
    assert!(
        h.wait_timeout(Duration::from_secs(10)),
        "the task did not end"
    );
    assert_eq!(join_within(&mut other, 10), Ok(Ok(1_000)));
    assert_eq!(join(p.submit::<Square>(&5).unwrap()), Ok(Ok(25)));
    common::watchdog(20, move || drop(p));
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "waker-panic");
    c.assert_invariant();
    assert_eq!((c.submitted, c.completed, c.failed), (3.0, 3.0, 0.0));
    assert_eq!(reason(&exp, "waker-panic", FailureReason::Killed), 0.0);
}

/// Whether `pid` is gone or a zombie (it exited); zombies mean nobody reaped it.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(") ").next()?.chars().next()
}

#[test]
fn a_worker_that_exits_while_its_fork_holds_the_channel_fails_its_task_at_once() {
    let registry = Registry::new();
    let p = pool(&registry, "forking", 1);
    let pid_file = std::env::temp_dir().join(format!("ee-fork-{}", std::process::id()));
    let _ = std::fs::remove_file(&pid_file);
    let started = std::time::Instant::now();
    let mut h = p
        .submit::<ForkThenExit>(&pid_file.display().to_string())
        .unwrap();
    let worker = p.worker_pids();
    let result = join_within(&mut h, 25);
    let took = started.elapsed();
    let grandchild: Option<i32> = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let _ = std::fs::remove_file(&pid_file);
    let kill_grandchild = || {
        if let Some(pid) = grandchild {
            // SAFETY: kill(2) on the process the task forked (it is not ours to wait for).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    };
    let message = match result {
        Err(TaskError::Failed {
            reason: FailureReason::WorkerDied,
            message,
        }) => message,
        other => {
            kill_grandchild();
            panic!("expected a worker_died failure, got {:?}", other.is_ok());
        }
    };
    assert!(grandchild.is_some(), "the task did not fork");
    // The grandchild is still alive and holds the channel: the exit was seen from the process itself.
    assert!(
        proc_state(grandchild.unwrap() as u32).is_some_and(|s| s != 'Z'),
        "the grandchild should still be running"
    );
    assert!(message.contains("exit code 3"), "{message}");
    assert!(took < Duration::from_secs(5), "noticed after {took:?}");
    for pid in worker {
        assert_eq!(proc_state(pid), None, "worker {pid} was not reaped");
    }
    // The pool goes on, and shutting it down does not wait for the grandchild.
    assert_eq!(join(p.submit::<Square>(&6).unwrap()), Ok(Ok(36)));
    let shutdown = std::time::Instant::now();
    common::watchdog(20, move || drop(p));
    let shutdown = shutdown.elapsed();
    kill_grandchild();
    assert!(
        shutdown < Duration::from_secs(5),
        "shutdown took {shutdown:?}"
    );
    let c = counts(&scrape(&registry), "executor", "forking");
    c.assert_invariant();
    assert_eq!((c.submitted, c.completed, c.failed), (2.0, 1.0, 1.0));
}

#[test]
fn workers_counts_the_worker_processes_alive() {
    let registry = Registry::new();
    let l = [("executor", "procs"), ("executor_type", "process_pool")];
    let value = |name| scrape(&registry).value(name, &l);
    let p = pool(&registry, "procs", 2);
    assert_eq!(value("executor_max_workers"), 2.0);
    let gate_ms = 300;
    let both: Vec<_> = (0..2)
        .map(|_| p.submit::<SleepMs>(&gate_ms).unwrap())
        .collect();
    for h in both {
        assert_eq!(join(h), Ok(Ok(gate_ms)));
    }
    assert_eq!(p.workers(), 2);
    assert_eq!(value("executor_workers"), 2.0);
    let victim = p.worker_pids()[0];
    // SAFETY: kill(2) on a worker process this pool started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    common::eventually(10, "the killed worker to be counted out", || {
        value("executor_workers") == 1.0
    });
    assert!(!p.worker_pids().contains(&victim));
    assert_eq!(p.workers(), 1);
    // Two tasks at once need two workers again: the replacement starts.
    let both: Vec<_> = (0..2)
        .map(|_| p.submit::<SleepMs>(&gate_ms).unwrap())
        .collect();
    for h in both {
        assert_eq!(join(h), Ok(Ok(gate_ms)));
    }
    assert_eq!(value("executor_workers"), 2.0);
    assert_eq!(value("executor_worker_restarts_total"), 1.0);
    drop(p);
    assert_eq!(value("executor_workers"), 0.0);
    assert_eq!(value("executor_max_workers"), 0.0);
}

/// The process pool knows its queue and its workers: with its one worker
/// busy and a task queued behind it, both ages are at least the time each
/// task has been seen running or waiting, and both are 0 once they end.
#[test]
fn the_ages_of_the_running_and_the_queued_task() {
    let registry = Registry::new();
    let pool = pool(&registry, "ages", 1);
    let age = |exp: &Exposition, family: &str| exp.value(family, &[("executor", "ages")]);
    let running = pool.submit::<SleepMs>(&1_500).unwrap();
    common::eventually(30, "the sleep running", || {
        counts(&scrape(&registry), "executor", "ages").running == 1.0
    });
    let seen_running = std::time::Instant::now();
    let before_submit = std::time::Instant::now();
    let queued = pool.submit::<Square>(&3).unwrap();
    let submitted = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(400));
    let (ran_for, waited_for, waited_at_most) = (
        seen_running.elapsed().as_secs_f64(),
        submitted.elapsed().as_secs_f64(),
        before_submit.elapsed().as_secs_f64(),
    );
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "ages");
    assert_eq!((c.running, c.queued), (1.0, 1.0));
    let running_age = age(&exp, "executor_oldest_running_task_seconds");
    let queued_age = age(&exp, "executor_oldest_queued_task_seconds");
    assert!(running_age >= ran_for, "{running_age} < {ran_for}");
    assert!(queued_age >= waited_for, "{queued_age} < {waited_for}");
    // Its own queue: the queued task's own age, not a bound (generous slack).
    assert!(
        queued_age <= waited_at_most + 0.25,
        "{queued_age} > {waited_at_most}"
    );
    assert_eq!(join(running).unwrap(), Ok(1_500));
    assert_eq!(join(queued).unwrap(), Ok(9));
    let exp = scrape(&registry);
    assert_eq!(age(&exp, "executor_oldest_running_task_seconds"), 0.0);
    assert_eq!(age(&exp, "executor_oldest_queued_task_seconds"), 0.0);
}

/// A process task's exemplars are recorded by the parent: the labels the
/// exporter's hook gave at submit, on the bucket of the wait and of the
/// duration the parent measured, failed tasks' under `result="failed"`.
#[test]
fn exemplars_are_recorded_on_the_parent_side() {
    let registry = Registry::new();
    let p = ProcessPoolExecutor::builder()
        .max_workers(1)
        .worker_test_entry("worker_entry")
        .exporter_id("exemplars")
        .registry(registry.clone())
        .exemplar(|| ExemplarLabels::new([("trace_id", "process")]))
        .build()
        .unwrap();
    assert_eq!(join(p.submit::<SleepMs>(&20).unwrap()), Ok(Ok(20)));
    assert_eq!(
        join(p.submit::<Fail>(&3).unwrap()),
        Ok(Err("3 is odd".to_owned()))
    );
    let mut out = Vec::new();
    OpenMetricsEncoder::new()
        .encode_with_exemplars(&registry.gather(), &registry, &mut out)
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    // (le, the exemplar's value) of the bucket lines of `series` with one.
    let exemplars = |series: &str| -> Vec<(f64, f64)> {
        text.lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| {
                let (sample, value) = l.split_once(r#" # {trace_id="process"} "#)?;
                let le = sample.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, value.split(' ').next()?.parse().ok()?))
            })
            .collect()
    };
    let labels = r#"{executor="exemplars",executor_type="process_pool""#;
    let waits = exemplars(&format!("executor_task_wait_seconds_bucket{labels}"));
    assert!(!waits.is_empty(), "{text}");
    let completed = exemplars(&format!(
        "executor_tasks_duration_seconds_bucket{labels},result=\"completed\""
    ));
    assert!(
        matches!(completed[..], [(le, value)] if (0.02..=le).contains(&value)),
        "{completed:?}"
    );
    let failed = exemplars(&format!(
        "executor_tasks_duration_seconds_bucket{labels},result=\"failed\""
    ));
    assert_eq!(failed.len(), 1, "{text}");
}

/// Tasks whose reports the pool reads late (its dispatcher thread was held up by another task's
/// waker) are timed as they ran in the worker: one handed to an idle worker and not joined (its
/// start is on the worker's board), and one with a timeout (its start comes as a message).
#[test]
fn a_tasks_wait_and_duration_are_its_workers_however_late_its_reports_are_read() {
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};

    /// Run on the dispatcher thread when its task ends: holds that thread up.
    struct SlowWaker;
    impl Wake for SlowWaker {
        fn wake(self: Arc<Self>) {
            std::thread::sleep(Duration::from_millis(600));
        }
    }
    let sums = |registry: &Registry| {
        let exp = scrape(registry);
        let l = [("executor", "read-late")];
        (
            exp.sum("executor_tasks_duration_seconds_sum", &l),
            exp.sum("executor_task_wait_seconds_sum", &l),
        )
    };

    let registry = Registry::new();
    let p = pool(&registry, "read-late", 2);
    // Two warm workers, idle.
    let warm = [
        p.submit::<SleepMs>(&20).unwrap(),
        p.submit::<SleepMs>(&20).unwrap(),
    ];
    for h in warm {
        assert_eq!(join(h), Ok(Ok(20)));
    }
    let (ran_before, waited_before) = sums(&registry);
    let mut slow = p.submit::<SleepMs>(&1).unwrap();
    let waker = Waker::from(Arc::new(SlowWaker));
    let polled = std::pin::Pin::new(&mut slow).poll(&mut Context::from_waker(&waker));
    assert!(polled.is_pending(), "polled before the task could end");
    // The dispatcher is in the slow waker now, for about half a second.
    std::thread::sleep(Duration::from_millis(100));
    let unjoined = p.submit::<SleepMs>(&1).unwrap();
    let timed = p
        .submit_with_timeout::<SleepMs>(&1, Duration::from_secs(10))
        .unwrap();
    std::thread::sleep(Duration::from_millis(900));
    let c = counts(&scrape(&registry), "executor", "read-late");
    assert_eq!(
        c.completed, 5.0,
        "the pool read the unjoined tasks' replies"
    );
    for h in [slow, unjoined, timed] {
        assert_eq!(join(h), Ok(Ok(1)));
    }
    let (ran, waited) = sums(&registry);
    // Each task ran about 1 ms; the last two ended about 500 ms before the pool read their reports.
    assert!(
        ran - ran_before < 0.25,
        "three 1 ms tasks took {} s in all",
        ran - ran_before
    );
    // The last two went straight to idle workers, not through the held-up dispatcher.
    assert!(
        waited - waited_before < 0.25,
        "three tasks sent to idle workers waited {} s in all",
        waited - waited_before
    );
    p.join();
}

//! Behaviour tests of the plain process pool, named after the rows of `shared/spec/behaviours.md`.
//!
//! The test binary is its own worker: `worker_entry` calls the hook, and every pool is built with
//! `worker_test_entry("worker_entry")`, so workers run `<this binary> worker_entry --exact ...`.
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashSet;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use executor_exporter::process_pool::{
    run_if_worker, ProcessPool, ProcessPoolBuilder, ProcessTask, WorkerRegistry,
};
use executor_exporter::{FailureReason, TaskError, TaskHandle};
use executor_exporter::{RejectReason, SubmitError};
use serde::{Deserialize, Serialize};

/// Every blocking wait in these tests gives up after this long: a hang fails, it does not block CI.
const WATCHDOG: Duration = Duration::from_secs(60);

/// Aborts the whole test binary if the test holding it runs longer than twice the watchdog.
#[must_use]
fn test_watchdog(name: &'static str) -> impl Drop {
    common::abort_if_hung(name, WATCHDOG * 2)
}

fn registry() -> WorkerRegistry {
    WorkerRegistry::new()
        .register::<Square>()
        .register::<Pid>()
        .register::<Fail>()
        .register::<Panic>()
        .register::<Abort>()
        .register::<Exit>()
        .register::<SelfKill>()
        .register::<SleepMs>()
        .register::<Echo>()
        .register::<Zeros>()
        .register::<SetInit>()
        .register::<ReadInit>()
        .register::<FailInit>()
        .register::<BadOutput>()
        .register::<UndecodableOutput>()
        .register::<WriteGarbage>()
        .register::<BadArgs>()
        .register::<PanickyArgs>()
}

/// The worker entry: a no-op when the harness runs it as a test, the worker loop when a pool starts
/// this binary as `worker_entry --exact`.
#[test]
fn worker_entry() {
    run_if_worker(&registry());
}

fn pool(max_workers: usize) -> ProcessPoolBuilder {
    ProcessPool::builder()
        .max_workers(max_workers)
        .worker_test_entry("worker_entry")
}

/// How a task gave no output: its own error, or the pool's reason.
#[derive(Debug, PartialEq)]
enum NoOutput<E> {
    Task(E),
    Pool(TaskError),
}

/// The task's output, or why there is none; a task still running after the watchdog fails the test.
fn wait<O, E>(mut h: TaskHandle<Result<O, E>>) -> Result<O, NoOutput<E>> {
    match h.join_timeout(WATCHDOG) {
        Ok(result) => result.map_err(NoOutput::Task),
        Err(TaskError::TimedOut) => panic!("a task did not end within {WATCHDOG:?}"),
        Err(e) => Err(NoOutput::Pool(e)),
    }
}

/// Why the pool gave the task no result (the task did not return at all).
fn failure<O: std::fmt::Debug, E: std::fmt::Debug>(h: TaskHandle<Result<O, E>>) -> TaskError {
    match wait(h) {
        Err(NoOutput::Pool(e)) => e,
        other => panic!("expected a pool failure, got {other:?}"),
    }
}

/// The metric reason a failure was counted under, and its message.
fn failed(e: &TaskError) -> (FailureReason, &str) {
    match e {
        TaskError::Failed { reason, message } => (*reason, message),
        other => panic!("expected TaskError::Failed, got {other:?}"),
    }
}

/// The worker's pid a failure message names ("worker process <pid> ...").
fn pid_in(message: &str) -> u32 {
    let (_, rest) = message
        .split_once("worker process ")
        .unwrap_or_else(|| panic!("no worker pid in {message:?}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no worker pid in {message:?}"))
}

/// Runs `f` on another thread and fails the test if it does not return within the watchdog.
fn within_watchdog<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(WATCHDOG)
        .unwrap_or_else(|_| panic!("{what} did not finish within {WATCHDOG:?}"))
}

fn is_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A zombie still has a /proc entry: once reaped, it is gone.
fn assert_reaped(pids: impl IntoIterator<Item = u32>) {
    for pid in pids {
        assert!(!is_alive(pid), "worker {pid} is still alive or a zombie");
    }
}

// ---- tasks ----

struct Square;
impl ProcessTask for Square {
    const NAME: &'static str = "square";
    type Input = u64;
    type Output = u64;
    type Error = String;
    fn run(x: u64) -> Result<u64, String> {
        Ok(x * x)
    }
}

struct Pid;
impl ProcessTask for Pid {
    const NAME: &'static str = "pid";
    type Input = ();
    type Output = u32;
    type Error = String;
    fn run((): ()) -> Result<u32, String> {
        Ok(std::process::id())
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum MyError {
    TooBig(u64),
}
impl std::fmt::Display for MyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MyError::TooBig(n) => write!(f, "{n} is too big"),
        }
    }
}

struct Fail;
impl ProcessTask for Fail {
    const NAME: &'static str = "fail";
    type Input = u64;
    type Output = ();
    type Error = MyError;
    fn run(n: u64) -> Result<(), MyError> {
        Err(MyError::TooBig(n))
    }
}

struct Panic;
impl ProcessTask for Panic {
    const NAME: &'static str = "panic";
    type Input = String;
    type Output = ();
    type Error = String;
    fn run(msg: String) -> Result<(), String> {
        panic!("{msg}")
    }
}

struct Abort;
impl ProcessTask for Abort {
    const NAME: &'static str = "abort";
    type Input = Vec<u8>;
    type Output = ();
    type Error = String;
    fn run(_: Vec<u8>) -> Result<(), String> {
        std::process::abort()
    }
}

struct Exit;
impl ProcessTask for Exit {
    const NAME: &'static str = "exit";
    type Input = i32;
    type Output = ();
    type Error = String;
    fn run(code: i32) -> Result<(), String> {
        std::process::exit(code)
    }
}

struct SelfKill;
impl ProcessTask for SelfKill {
    const NAME: &'static str = "self_kill";
    type Input = ();
    type Output = ();
    type Error = String;
    fn run((): ()) -> Result<(), String> {
        // SAFETY: kill(2) on our own pid with a valid signal number.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        unreachable!("SIGKILL cannot be caught")
    }
}

struct SleepMs;
impl ProcessTask for SleepMs {
    const NAME: &'static str = "sleep_ms";
    type Input = u64;
    type Output = u32;
    type Error = String;
    fn run(ms: u64) -> Result<u32, String> {
        thread::sleep(Duration::from_millis(ms));
        Ok(std::process::id())
    }
}

struct Echo;
impl ProcessTask for Echo {
    const NAME: &'static str = "echo";
    type Input = Vec<u8>;
    type Output = Vec<u8>;
    type Error = String;
    fn run(v: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(v)
    }
}

struct Zeros;
impl ProcessTask for Zeros {
    const NAME: &'static str = "zeros";
    type Input = usize;
    type Output = Vec<u8>;
    type Error = String;
    fn run(n: usize) -> Result<Vec<u8>, String> {
        Ok(vec![0; n])
    }
}

static INIT: OnceLock<String> = OnceLock::new();

struct SetInit;
impl ProcessTask for SetInit {
    const NAME: &'static str = "set_init";
    type Input = String;
    type Output = ();
    type Error = String;
    fn run(v: String) -> Result<(), String> {
        INIT.set(v).map_err(|_| "initialized twice".to_owned())
    }
}

struct ReadInit;
impl ProcessTask for ReadInit {
    const NAME: &'static str = "read_init";
    type Input = ();
    type Output = (u32, Option<String>);
    type Error = String;
    fn run((): ()) -> Result<(u32, Option<String>), String> {
        Ok((std::process::id(), INIT.get().cloned()))
    }
}

struct FailInit;
impl ProcessTask for FailInit {
    const NAME: &'static str = "fail_init";
    type Input = ();
    type Output = ();
    type Error = String;
    fn run((): ()) -> Result<(), String> {
        Err("database unreachable".into())
    }
}

/// Never serializes: its `Serialize` always fails.
#[derive(Debug)]
struct Unserializable;
impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be serialized",
        ))
    }
}
impl<'de> Deserialize<'de> for Unserializable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| Unserializable)
    }
}

struct BadArgs;
impl ProcessTask for BadArgs {
    const NAME: &'static str = "bad_args";
    type Input = Unserializable;
    type Output = ();
    type Error = String;
    fn run(_: Unserializable) -> Result<(), String> {
        Ok(())
    }
}

/// A `Serialize` that panics, as one that unwraps inside may.
struct Panicky;
impl Serialize for Panicky {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("this value panics when serialized")
    }
}
impl<'de> Deserialize<'de> for Panicky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| Panicky)
    }
}

struct PanickyArgs;
impl ProcessTask for PanickyArgs {
    const NAME: &'static str = "panicky_args";
    type Input = Panicky;
    type Output = ();
    type Error = String;
    fn run(_: Panicky) -> Result<(), String> {
        Ok(())
    }
}

struct BadOutput;
impl ProcessTask for BadOutput {
    const NAME: &'static str = "bad_output";
    type Input = ();
    type Output = Unserializable;
    type Error = String;
    fn run((): ()) -> Result<Unserializable, String> {
        Ok(Unserializable)
    }
}

/// Encodes fine in the worker; its `Deserialize` always fails in the caller.
struct Undecodable;
impl Serialize for Undecodable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(7)
    }
}
impl<'de> Deserialize<'de> for Undecodable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("this value refuses to be decoded"))
    }
}

struct UndecodableOutput;
impl ProcessTask for UndecodableOutput {
    const NAME: &'static str = "undecodable_output";
    type Input = ();
    type Output = Undecodable;
    type Error = String;
    fn run((): ()) -> Result<Undecodable, String> {
        Ok(Undecodable)
    }
}

/// Writes a frame header announcing 4 GiB on the channel, as a corrupted worker would.
struct WriteGarbage;
impl ProcessTask for WriteGarbage {
    const NAME: &'static str = "write_garbage";
    type Input = ();
    type Output = ();
    type Error = String;
    fn run((): ()) -> Result<(), String> {
        let junk = [0xffu8; 16];
        // SAFETY: writes 16 bytes from a valid buffer to descriptor 3 (the worker channel).
        unsafe { libc::write(3, junk.as_ptr().cast(), junk.len()) };
        thread::sleep(Duration::from_secs(30));
        Ok(())
    }
}

/// Registered nowhere.
struct Unregistered;
impl ProcessTask for Unregistered {
    const NAME: &'static str = "unregistered";
    type Input = ();
    type Output = ();
    type Error = String;
    fn run((): ()) -> Result<(), String> {
        Ok(())
    }
}

// ---- results, errors, panics ----

#[test]
fn exc_1_results_in_order() {
    let _watchdog = test_watchdog("exc_1_results_in_order");
    let pool = pool(2).build().unwrap();
    let handles: Vec<_> = (0..50u64)
        .map(|i| pool.submit::<Square>(&i).unwrap())
        .collect();
    let results: Vec<u64> = handles.into_iter().map(|h| wait(h).unwrap()).collect();
    assert_eq!(results, (0..50u64).map(|i| i * i).collect::<Vec<_>>());
}

#[test]
fn exc_1_task_error_is_returned_unchanged_and_pool_survives() {
    let _watchdog = test_watchdog("exc_1_task_error_is_returned_unchanged_and_pool_survives");
    let pool = pool(1).build().unwrap();
    match wait(pool.submit::<Fail>(&42).unwrap()) {
        Err(NoOutput::Task(e)) => assert_eq!(e, MyError::TooBig(42)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(wait(pool.submit::<Square>(&3).unwrap()).unwrap(), 9);
}

#[test]
fn exc_2_panic_message_is_returned_and_worker_stays() {
    let _watchdog = test_watchdog("exc_2_panic_message_is_returned_and_worker_stays");
    let pool = pool(1).build().unwrap();
    let before = wait(pool.submit::<Pid>(&()).unwrap()).unwrap();
    let f = failure(pool.submit::<Panic>(&"kaboom 17".to_owned()).unwrap());
    assert!(
        matches!(&f, TaskError::Panicked { message } if message == "kaboom 17"),
        "{f}"
    );
    assert!(f.to_string().contains("kaboom 17"));
    assert_eq!(
        wait(pool.submit::<Pid>(&()).unwrap()).unwrap(),
        before,
        "the worker survived"
    );
}

/// The plain pool and the instrumented one hand back the same values for the same events: the same
/// handle type, the same `TaskError` with the same reason, and the same message but for the pid.
#[test]
fn plain_and_instrumented_pools_report_the_same_failures() {
    let _watchdog = test_watchdog("plain_and_instrumented_pools_report_the_same_failures");
    let plain = pool(1).build().unwrap();
    let instrumented = executor_exporter::ProcessPoolExecutor::builder()
        .pool(pool(1))
        .registry(executor_exporter::prometheus::Registry::new())
        .build()
        .unwrap();
    let without_pid = |e: TaskError| match e {
        TaskError::Failed { reason, message } => {
            let pid = pid_in(&message).to_string();
            TaskError::Failed {
                reason,
                message: message.replace(&pid, "<pid>"),
            }
        }
        other => other,
    };
    let exited: [TaskHandle<Result<(), String>>; 2] = [
        plain.submit::<Exit>(&3).unwrap(),
        instrumented.submit::<Exit>(&3).unwrap(),
    ];
    let [a, b] = exited.map(|h| without_pid(failure(h)));
    assert_eq!(a, b);
    assert_eq!(failed(&a).0, FailureReason::WorkerDied, "{a}");
    let [a, b] = [
        plain.submit::<Panic>(&"boom".to_owned()).unwrap(),
        instrumented.submit::<Panic>(&"boom".to_owned()).unwrap(),
    ]
    .map(failure);
    assert_eq!(a, b);
    assert_eq!(
        a,
        TaskError::Panicked {
            message: "boom".into()
        }
    );
    let [a, b] = [
        plain.submit::<Unregistered>(&()).unwrap(),
        instrumented.submit::<Unregistered>(&()).unwrap(),
    ]
    .map(failure);
    assert_eq!(a, b);
    assert_eq!(failed(&a).0, FailureReason::UnknownTask, "{a}");
    let [a, b] = [
        wait(plain.submit::<Fail>(&7).unwrap()),
        wait(instrumented.submit::<Fail>(&7).unwrap()),
    ];
    assert_eq!(a, b);
    assert_eq!(a, Err(NoOutput::Task(MyError::TooBig(7))));
}

// ---- crashes ----

#[test]
fn pp_1_sigkill_mid_task_fails_only_that_task() {
    let _watchdog = test_watchdog("pp_1_sigkill_mid_task_fails_only_that_task");
    let pool = pool(2).build().unwrap();
    let slow = pool.submit::<SleepMs>(&300).unwrap();
    let killed = pool.submit::<SelfKill>(&()).unwrap();
    let f = failure(killed);
    let (reason, message) = failed(&f);
    assert_eq!(reason, FailureReason::WorkerDied, "{f}");
    assert!(message.contains("signal 9 (SIGKILL)"), "{f}");
    assert!(!message.contains("core dumped"), "{f}");
    assert_reaped([pid_in(message)]);
    assert!(wait(slow).is_ok(), "the other task is unaffected");
    let results: Vec<u64> = (0..10u64)
        .map(|i| pool.submit::<Square>(&i).unwrap())
        .map(|h| wait(h).unwrap())
        .collect();
    assert_eq!(results[9], 81, "the pool goes on");
}

/// The low-latency mode changes only how each side waits for the next message: results, the task's
/// errors, panics, a crash, a timeout and a joiner's own bound behave as in the default mode.
#[test]
fn spin_mode_keeps_results_failures_and_timeouts() {
    let _watchdog = test_watchdog("spin_mode_keeps_results_failures_and_timeouts");
    let pool = pool(1).spin(Duration::from_micros(200)).build().unwrap();
    for x in 0..300u64 {
        assert_eq!(wait(pool.submit::<Square>(&x).unwrap()), Ok(x * x));
    }
    let handles: Vec<_> = (0..300u64)
        .map(|x| pool.submit::<Square>(&x).unwrap())
        .collect();
    for (x, h) in handles.into_iter().enumerate() {
        assert_eq!(wait(h), Ok(x as u64 * x as u64));
    }
    assert_eq!(
        wait(pool.submit::<Fail>(&42).unwrap()),
        Err(NoOutput::Task(MyError::TooBig(42)))
    );
    let f = failure(pool.submit::<Panic>(&"spun".to_owned()).unwrap());
    assert!(
        matches!(&f, TaskError::Panicked { message } if message == "spun"),
        "{f}"
    );
    let f = failure(pool.submit::<SelfKill>(&()).unwrap());
    assert_eq!(failed(&f).0, FailureReason::WorkerDied, "{f}");
    let f = failure(
        pool.submit_with_timeout::<SleepMs>(&30_000, Duration::from_millis(200))
            .unwrap(),
    );
    assert_eq!(failed(&f).0, FailureReason::Timeout, "{f}");
    let mut slow = pool.submit::<SleepMs>(&300).unwrap();
    assert_eq!(slow.join_timeout(Duration::ZERO), Err(TaskError::TimedOut));
    assert!(wait(slow).is_ok());
    assert_eq!(wait(pool.submit::<Square>(&7).unwrap()), Ok(49));
}

/// Tiny tasks in batches (the dispatcher sends queued ones behind a worker's current task) while
/// another thread submits one at a time (sent to an idle worker from the submitting thread): each
/// worker still gets its jobs in the order the pool tracks them, so every task gets its own result.
#[test]
fn batched_and_one_at_a_time_submits_get_their_own_results() {
    let _watchdog = test_watchdog("batched_and_one_at_a_time_submits_get_their_own_results");
    let pool = std::sync::Arc::new(pool(2).build().unwrap());
    let p = pool.clone();
    let single = thread::spawn(move || {
        for x in 0..3000u64 {
            assert_eq!(wait(p.submit::<Square>(&x).unwrap()), Ok(x * x), "task {x}");
        }
    });
    for round in 0..30u64 {
        let handles: Vec<_> = (0..200u64)
            .map(|i| pool.submit::<Square>(&(round * 1000 + i)).unwrap())
            .collect();
        for (i, h) in (0..200u64).zip(handles) {
            let x = round * 1000 + i;
            assert_eq!(wait(h), Ok(x * x), "task {x}");
        }
    }
    single.join().unwrap();
}

#[test]
fn spin_longer_than_a_second_is_rejected() {
    let e = pool(1).spin(Duration::from_secs(2)).build().unwrap_err();
    assert!(e.to_string().contains("spin"), "{e}");
    assert!(pool(1).spin(Duration::from_secs(1)).build().is_ok());
}

#[test]
fn dl_3_abort_fails_the_task_with_sigabrt() {
    let _watchdog = test_watchdog("dl_3_abort_fails_the_task_with_sigabrt");
    let pool = pool(2).build().unwrap();
    let f = failure(pool.submit::<Abort>(&vec![]).unwrap());
    let (reason, message) = failed(&f);
    assert_eq!(reason, FailureReason::WorkerDied, "{f}");
    assert!(
        message.contains(&format!("signal {} (SIGABRT)", libc::SIGABRT)),
        "{f}"
    );
    assert_eq!(wait(pool.submit::<Square>(&4).unwrap()).unwrap(), 16);
}

#[test]
fn pp_2_exit_code_is_named() {
    let _watchdog = test_watchdog("pp_2_exit_code_is_named");
    let pool = pool(1).build().unwrap();
    let f = failure(pool.submit::<Exit>(&3).unwrap());
    assert_eq!(failed(&f).0, FailureReason::WorkerDied, "{f}");
    assert!(f.to_string().contains("exit code 3"), "{f}");
    assert_eq!(wait(pool.submit::<Square>(&5).unwrap()).unwrap(), 25);
}

#[test]
fn dl_9_crash_with_big_arguments_does_not_deadlock() {
    let _watchdog = test_watchdog("dl_9_crash_with_big_arguments_does_not_deadlock");
    let pool = pool(2).build().unwrap();
    let big = vec![0xa5u8; 1 << 20];
    let echoes: Vec<_> = (0..10)
        .map(|_| pool.submit::<Echo>(&big).unwrap())
        .collect();
    let crash = pool.submit::<Abort>(&big).unwrap();
    for h in echoes {
        assert_eq!(wait(h).unwrap().len(), 1 << 20);
    }
    assert_eq!(failed(&failure(crash)).0, FailureReason::WorkerDied);
}

#[test]
fn idle_worker_death_loses_no_task() {
    let _watchdog = test_watchdog("idle_worker_death_loses_no_task");
    let pool = pool(1).build().unwrap();
    let pid = wait(pool.submit::<Pid>(&()).unwrap()).unwrap();
    // SAFETY: kill(2) with a valid signal on a pid this test's pool owns.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    // Submit at once: the dispatcher may still see the worker as idle and send it the task; the task
    // was never acknowledged, so it is retried on a new worker.
    let handles: Vec<_> = (0..20u64)
        .map(|i| pool.submit::<Square>(&i).unwrap())
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(wait(h).unwrap(), (i * i) as u64);
    }
    let new_pid = wait(pool.submit::<Pid>(&()).unwrap()).unwrap();
    assert_ne!(new_pid, pid);
    assert_reaped([pid]);
}

#[test]
fn corrupt_frame_from_a_worker_fails_that_task_and_replaces_it() {
    let _watchdog = test_watchdog("corrupt_frame_from_a_worker_fails_that_task_and_replaces_it");
    let pool = pool(1).build().unwrap();
    let f = failure(pool.submit::<WriteGarbage>(&()).unwrap());
    let (reason, message) = failed(&f);
    assert_eq!(reason, FailureReason::Protocol, "{f}");
    assert!(
        message.contains("exceeds the maximum frame size"),
        "{message}"
    );
    assert_reaped([pid_in(message)]);
    assert_eq!(wait(pool.submit::<Square>(&6).unwrap()).unwrap(), 36);
}

// ---- serialization ----

#[test]
fn dl_1_arguments_that_fail_to_serialize_fail_in_the_caller() {
    let _watchdog = test_watchdog("dl_1_arguments_that_fail_to_serialize_fail_in_the_caller");
    let pool = pool(1).build().unwrap();
    match pool.submit::<BadArgs>(&Unserializable) {
        // postcard reports a generic serialization error; the message names the task.
        Err(e) if e.reason() == RejectReason::Serialization => {
            let msg = e.detail().unwrap_or_default();
            assert!(msg.contains("bad_args"), "{msg}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(wait(pool.submit::<Square>(&7).unwrap()).unwrap(), 49);
}

/// An input whose `Serialize` panics is refused like one that fails, and leaves nothing in flight:
/// the pool still shuts down (before, the admitted task was never ended, and dropping the pool
/// waited for it for ever).
#[test]
fn arguments_whose_serialize_panics_are_refused_and_leave_nothing_in_flight() {
    let _watchdog =
        test_watchdog("arguments_whose_serialize_panics_are_refused_and_leave_nothing_in_flight");
    let pool = pool(1).build().unwrap();
    match pool.submit::<PanickyArgs>(&Panicky) {
        Err(e) if e.reason() == RejectReason::Serialization => {
            let msg = e.detail().unwrap_or_default();
            assert!(
                msg.contains("panicky_args") && msg.contains("this value panics when serialized"),
                "{msg}"
            )
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(wait(pool.submit::<Square>(&9).unwrap()).unwrap(), 81);
    let (done, ended) = std::sync::mpsc::channel();
    thread::spawn(move || {
        drop(pool);
        let _ = done.send(());
    });
    ended
        .recv_timeout(Duration::from_secs(10))
        .expect("the pool shuts down: nothing is left in flight");
}

#[test]
fn dl_5_output_that_fails_to_serialize_in_the_worker() {
    let _watchdog = test_watchdog("dl_5_output_that_fails_to_serialize_in_the_worker");
    let pool = pool(1).build().unwrap();
    let f = failure(pool.submit::<BadOutput>(&()).unwrap());
    assert_eq!(failed(&f).0, FailureReason::Serialization, "{f}");
    assert_eq!(wait(pool.submit::<Square>(&8).unwrap()).unwrap(), 64);
}

#[test]
fn dl_6_result_that_fails_to_decode_in_the_caller() {
    let _watchdog = test_watchdog("dl_6_result_that_fails_to_decode_in_the_caller");
    let pool = pool(1).build().unwrap();
    let f = match wait(pool.submit::<UndecodableOutput>(&()).unwrap()) {
        Err(NoOutput::Pool(f)) => f,
        Err(other) => panic!("unexpected {other:?}"),
        Ok(_) => panic!("decoding cannot succeed"),
    };
    assert_eq!(failed(&f).0, FailureReason::Serialization, "{f}");
    assert_eq!(wait(pool.submit::<Square>(&9).unwrap()).unwrap(), 81);
}

#[test]
fn oversized_input_is_rejected_at_submit() {
    let _watchdog = test_watchdog("oversized_input_is_rejected_at_submit");
    let pool = pool(1).max_frame_size(64 << 10).build().unwrap();
    let err = pool.submit::<Echo>(&vec![0u8; 100 << 10]).unwrap_err();
    assert_eq!(err.reason(), RejectReason::Serialization, "{err}");
    let big_result = failure(pool.submit::<Zeros>(&(100 << 10)).unwrap());
    assert_eq!(
        failed(&big_result).0,
        FailureReason::Serialization,
        "{big_result}"
    );
    assert!(
        big_result.to_string().contains("maximum frame size"),
        "{big_result}"
    );
    assert_eq!(
        wait(pool.submit::<Echo>(&vec![2u8; 1000]).unwrap())
            .unwrap()
            .len(),
        1000
    );
}

#[test]
fn unknown_task_fails_only_that_task() {
    let _watchdog = test_watchdog("unknown_task_fails_only_that_task");
    let pool = pool(1).build().unwrap();
    let f = failure(pool.submit::<Unregistered>(&()).unwrap());
    let (reason, message) = failed(&f);
    assert_eq!(reason, FailureReason::UnknownTask, "{f}");
    assert!(message.contains("no task named `unregistered`"), "{f}");
    assert_eq!(wait(pool.submit::<Square>(&10).unwrap()).unwrap(), 100);
}

// ---- timeouts and recycling ----

#[test]
fn task_timeout_kills_and_replaces_the_worker() {
    let _watchdog = test_watchdog("task_timeout_kills_and_replaces_the_worker");
    let pool = pool(1).build().unwrap();
    let first = wait(pool.submit::<Pid>(&()).unwrap()).unwrap();
    let t0 = Instant::now();
    let f = failure(
        pool.submit_with_timeout::<SleepMs>(&30_000, Duration::from_millis(300))
            .unwrap(),
    );
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
    let (reason, message) = failed(&f);
    assert_eq!(reason, FailureReason::Timeout, "{f}");
    assert_eq!(pid_in(message), first, "{f}");
    assert!(message.contains("timed out after 300ms"), "{f}");
    assert_reaped([first]);
    let second = wait(pool.submit::<Pid>(&()).unwrap()).unwrap();
    assert_ne!(second, first, "a fresh worker replaced the killed one");
}

/// Limits too long for an `Instant` to hold (`Duration::MAX`) mean "no
/// limit". They used to overflow in the dispatcher thread, which failed the
/// task and broke the pool for every later submit.
#[test]
fn limits_too_long_for_an_instant_mean_no_limit() {
    let _watchdog = test_watchdog("limits_too_long_for_an_instant_mean_no_limit");
    let pool = pool(1)
        .task_timeout(Duration::MAX)
        .start_timeout(Duration::MAX)
        .shutdown_grace(Duration::MAX)
        .build()
        .unwrap();
    assert_eq!(wait(pool.submit::<Square>(&3).unwrap()), Ok(9));
    assert_eq!(
        wait(
            pool.submit_with_timeout::<Square>(&4, Duration::MAX)
                .unwrap()
        ),
        Ok(16)
    );
    assert_eq!(wait(pool.submit::<Square>(&5).unwrap()), Ok(25));
    let pids = pool.worker_pids();
    // The longest grace: the shutdown waits for the worker to exit, which it
    // does as soon as it is told to.
    drop(pool);
    assert_reaped(pids);
}

#[test]
fn pool_wide_timeout_applies_to_every_task() {
    let _watchdog = test_watchdog("pool_wide_timeout_applies_to_every_task");
    let pool = pool(2)
        .task_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(wait(pool.submit::<SleepMs>(&1).unwrap()).is_ok());
    assert_eq!(
        failed(&failure(pool.submit::<SleepMs>(&30_000).unwrap())).0,
        FailureReason::Timeout
    );
}

#[test]
fn pp_3_max_tasks_per_child_recycles() {
    let _watchdog = test_watchdog("pp_3_max_tasks_per_child_recycles");
    let pool = pool(1).max_tasks_per_child(3).build().unwrap();
    let pids: Vec<u32> = (0..7)
        .map(|_| wait(pool.submit::<Pid>(&()).unwrap()).unwrap())
        .collect();
    assert_eq!(pids[0], pids[1]);
    assert_eq!(pids[1], pids[2]);
    assert_ne!(pids[2], pids[3]);
    assert_eq!(pids[3], pids[5]);
    assert_ne!(pids[5], pids[6]);
    assert!(
        pool.workers() <= 1,
        "never more than one process: {:?}",
        pool.worker_pids()
    );
    pool.shutdown();
    assert_reaped(pids);
}

#[test]
fn pp_4_max_tasks_backlog_finishes_in_order() {
    let _watchdog = test_watchdog("pp_4_max_tasks_backlog_finishes_in_order");
    let pool = pool(3).max_tasks_per_child(1).build().unwrap();
    let handles: Vec<_> = (0..12u64)
        .map(|i| pool.submit::<Square>(&i).unwrap())
        .collect();
    within_watchdog("shutdown", move || pool.shutdown());
    let results: Vec<u64> = handles.into_iter().map(|h| wait(h).unwrap()).collect();
    assert_eq!(results, (0..12u64).map(|i| i * i).collect::<Vec<_>>());
}

// ---- start-up ----

#[test]
fn lazy_1_idle_worker_is_reused() {
    let _watchdog = test_watchdog("lazy_1_idle_worker_is_reused");
    let pool = pool(4).build().unwrap();
    let pids: HashSet<u32> = (0..3)
        .map(|_| wait(pool.submit::<Pid>(&()).unwrap()).unwrap())
        .collect();
    assert_eq!(pids.len(), 1);
    assert_eq!(pool.workers(), 1);
}

#[test]
fn lazy_3_workers_start_on_demand() {
    let _watchdog = test_watchdog("lazy_3_workers_start_on_demand");
    let pool = pool(5).build().unwrap();
    assert_eq!(pool.workers(), 0, "no worker before the first task");
    let handles: Vec<_> = (0..3)
        .map(|_| pool.submit::<SleepMs>(&400).unwrap())
        .collect();
    let pids: HashSet<u32> = handles.into_iter().map(|h| wait(h).unwrap()).collect();
    assert_eq!(pids.len(), 3);
    assert_eq!(pool.workers(), 3);
    pool.shutdown();
    assert_eq!(pool.workers(), 0);
    assert_reaped(pids);
}

#[test]
fn lazy_2_saturation_never_exceeds_max_workers() {
    let _watchdog = test_watchdog("lazy_2_saturation_never_exceeds_max_workers");
    let pool = pool(2).build().unwrap();
    let handles: Vec<_> = (0..12)
        .map(|_| pool.submit::<SleepMs>(&30).unwrap())
        .collect();
    let mut seen = HashSet::new();
    for h in handles {
        assert!(pool.workers() <= 2);
        seen.insert(wait(h).unwrap());
    }
    assert!(seen.len() <= 2, "{seen:?}");
}

#[test]
fn init_1_initializer_runs_in_each_worker() {
    let _watchdog = test_watchdog("init_1_initializer_runs_in_each_worker");
    let pool = pool(2)
        .initializer::<SetInit>(&"warm cache".to_owned())
        .build()
        .unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| pool.submit::<ReadInit>(&()).unwrap())
        .collect();
    for h in handles {
        let (_, value) = wait(h).unwrap();
        assert_eq!(value.as_deref(), Some("warm cache"));
    }
}

#[test]
fn init_2_failing_initializer_breaks_the_pool_fast() {
    let _watchdog = test_watchdog("init_2_failing_initializer_breaks_the_pool_fast");
    let pool = pool(2).initializer::<FailInit>(&()).build().unwrap();
    let t0 = Instant::now();
    let queued: Vec<_> = (0..5).map(|_| pool.submit::<Square>(&1).unwrap()).collect();
    for h in queued {
        let f = failure(h);
        assert!(
            matches!(&f, TaskError::Broken { reason } if reason.contains("database unreachable")),
            "{f}"
        );
    }
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "failing took {:?}",
        t0.elapsed()
    );
    assert!(pool.is_broken());
    match pool.submit::<Square>(&1) {
        Err(e) if e.reason() == RejectReason::Broken => {
            let msg = e.detail().unwrap_or_default();
            assert!(msg.contains("initializer failed"), "{msg}")
        }
        other => panic!("unexpected {other:?}"),
    }
    within_watchdog("shutdown of a broken pool", move || drop(pool));
}

#[test]
fn pp_5_binary_not_prepared_as_worker_breaks_the_pool() {
    let _watchdog = test_watchdog("pp_5_binary_not_prepared_as_worker_breaks_the_pool");
    // The test named here does not exist, so the re-executed harness runs nothing and exits.
    let pool = ProcessPool::builder()
        .max_workers(1)
        .worker_test_entry("no_such_test")
        .build()
        .unwrap();
    let f = failure(pool.submit::<Square>(&2).unwrap());
    assert!(
        matches!(&f, TaskError::Broken { reason } if reason.contains("run_if_worker")),
        "{f}"
    );
    assert!(matches!(
        pool.submit::<Square>(&2),
        Err(e) if e.reason() == RejectReason::Broken
    ));
}

#[test]
fn pp_5_unstartable_program_breaks_the_pool() {
    let _watchdog = test_watchdog("pp_5_unstartable_program_breaks_the_pool");
    let pool = ProcessPool::builder()
        .max_workers(1)
        .worker_program("/nonexistent/worker")
        .build()
        .unwrap();
    let f = failure(pool.submit::<Square>(&2).unwrap());
    assert!(
        matches!(&f, TaskError::Broken { reason } if reason.contains("/nonexistent/worker")),
        "{f}"
    );
}

#[test]
fn pp_5_worker_that_never_reads_its_channel_breaks_the_pool() {
    let _watchdog = test_watchdog("pp_5_worker_that_never_reads_its_channel_breaks_the_pool");
    // `sleep` ignores descriptor 3: the 1 MiB handshake cannot be delivered, and the send must not hang.
    let pool = ProcessPool::builder()
        .max_workers(1)
        .worker_program("/bin/sleep")
        .worker_args(["60"])
        .initializer::<Echo>(&vec![0u8; 1 << 20])
        .start_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let f = failure(pool.submit::<Square>(&2).unwrap());
    assert!(
        matches!(&f, TaskError::Broken { reason } if reason.contains("did not read")),
        "{f}"
    );
    within_watchdog("drop", move || drop(pool));
}

#[test]
fn cfg_1_and_cfg_3_invalid_options_are_rejected() {
    let _watchdog = test_watchdog("cfg_1_and_cfg_3_invalid_options_are_rejected");
    assert!(ProcessPool::builder().max_workers(0).build().is_err());
    assert!(ProcessPool::builder()
        .max_tasks_per_child(0)
        .build()
        .is_err());
    assert!(ProcessPool::builder().max_frame_size(10).build().is_err());
    assert!(ProcessPool::builder()
        .max_start_failures(0)
        .build()
        .is_err());
    assert!(ProcessPool::builder()
        .initializer::<BadArgs>(&Unserializable)
        .build()
        .is_err());
}

/// Both process-pool builders return the crate's one `BuildError`, with the same words as every other
/// pool for the same mistake.
#[test]
fn both_builders_return_the_crates_build_error_with_the_same_words() {
    let _watchdog =
        test_watchdog("both_builders_return_the_crates_build_error_with_the_same_words");
    let plain: executor_exporter::BuildError =
        ProcessPool::builder().max_workers(0).build().unwrap_err();
    let instrumented = executor_exporter::ProcessPoolExecutor::builder()
        .max_workers(0)
        .registry(executor_exporter::prometheus::Registry::new())
        .build()
        .unwrap_err();
    assert_eq!(plain.to_string(), "max_workers must be greater than 0");
    assert_eq!(instrumented.to_string(), plain.to_string());
    let err = ProcessPool::builder()
        .max_tasks_per_child(0)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "max_tasks_per_child must be greater than 0"
    );
    let err = ProcessPool::builder()
        .max_frame_size(10)
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("max_frame_size must be between"),
        "{err}"
    );
    // A dispatcher thread's name with a NUL byte: refused, not a panic from std's thread builder.
    let err = ProcessPool::builder()
        .thread_name("pool\0a")
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "thread_name \"pool\\0a\" holds a NUL byte, which thread names cannot hold"
    );
}

#[test]
fn cfg_2_default_max_workers_is_the_cpu_count() {
    let _watchdog = test_watchdog("cfg_2_default_max_workers_is_the_cpu_count");
    let pool = ProcessPool::new().unwrap();
    assert_eq!(pool.max_workers(), num_cpus::get());
}

// ---- shutdown, cancel, kill ----

#[test]
fn shut_1_submit_after_shutdown_is_rejected() {
    let _watchdog = test_watchdog("shut_1_submit_after_shutdown_is_rejected");
    let pool = pool(1).build().unwrap();
    assert_eq!(wait(pool.submit::<Square>(&2).unwrap()).unwrap(), 4);
    pool.shutdown();
    pool.shutdown();
    assert!(matches!(
        pool.submit::<Square>(&2),
        Err(e) if e.reason() == RejectReason::Shutdown
    ));
    assert_eq!(pool.workers(), 0);
}

#[test]
fn shut_2_shutdown_waits_for_queued_work() {
    let _watchdog = test_watchdog("shut_2_shutdown_waits_for_queued_work");
    let pool = pool(2).build().unwrap();
    let handles: Vec<_> = (0..50u64)
        .map(|i| pool.submit::<Square>(&i).unwrap())
        .collect();
    within_watchdog("shutdown", move || pool.shutdown());
    for (i, h) in handles.into_iter().enumerate() {
        assert!(h.is_finished());
        assert_eq!(wait(h).unwrap(), (i * i) as u64);
    }
}

#[test]
fn shut_3_drop_waits_for_submitted_work_and_reaps_workers() {
    let _watchdog = test_watchdog("shut_3_drop_waits_for_submitted_work_and_reaps_workers");
    let pool = pool(2).build().unwrap();
    let handles: Vec<_> = (0..6)
        .map(|_| pool.submit::<SleepMs>(&50).unwrap())
        .collect();
    within_watchdog("drop", move || drop(pool));
    let pids: HashSet<u32> = handles.into_iter().map(|h| wait(h).unwrap()).collect();
    assert_reaped(pids);
}

#[test]
fn shut_5_shutdown_now_cancels_queued_tasks() {
    let _watchdog = test_watchdog("shut_5_shutdown_now_cancels_queued_tasks");
    let pool = pool(1).build().unwrap();
    wait(pool.submit::<Pid>(&()).unwrap()).unwrap();
    let running = pool.submit::<SleepMs>(&500).unwrap();
    thread::sleep(Duration::from_millis(150));
    let queued: Vec<_> = (0..10)
        .map(|_| pool.submit::<SleepMs>(&10).unwrap())
        .collect();
    let pool = std::sync::Arc::new(pool);
    let p = std::sync::Arc::clone(&pool);
    within_watchdog("shutdown_now", move || p.shutdown_now());
    assert!(wait(running).is_ok(), "the running task is never cancelled");
    for h in queued {
        assert_eq!(failure(h), TaskError::Cancelled);
    }
    assert!(matches!(
        pool.submit::<Pid>(&()),
        Err(e) if e.reason() == RejectReason::Shutdown
    ));
}

#[test]
fn fut_2_cancel_queued_but_not_running() {
    let _watchdog = test_watchdog("fut_2_cancel_queued_but_not_running");
    let pool = pool(1).build().unwrap();
    wait(pool.submit::<Pid>(&()).unwrap()).unwrap();
    let running = pool.submit::<SleepMs>(&400).unwrap();
    thread::sleep(Duration::from_millis(150));
    let queued = pool.submit::<SleepMs>(&1).unwrap();
    assert!(queued.cancel());
    assert!(queued.cancel(), "cancelling twice is still true");
    assert!(queued.is_finished());
    assert!(!running.cancel(), "a running task cannot be cancelled");
    assert_eq!(failure(queued), TaskError::Cancelled);
    assert!(wait(running).is_ok());
    assert_eq!(wait(pool.submit::<Square>(&11).unwrap()).unwrap(), 121);
}

#[test]
fn pp_6_kill_fails_running_tasks_and_reaps_workers() {
    let _watchdog = test_watchdog("pp_6_kill_fails_running_tasks_and_reaps_workers");
    let pool = pool(2).build().unwrap();
    let running: Vec<_> = (0..2)
        .map(|_| pool.submit::<SleepMs>(&30_000).unwrap())
        .collect();
    let queued = pool.submit::<SleepMs>(&1).unwrap();
    let deadline = Instant::now() + WATCHDOG;
    while pool.workers() < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(200));
    let pids = pool.worker_pids();
    let t0 = Instant::now();
    pool.kill();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "kill took {:?}",
        t0.elapsed()
    );
    let killed = |h| {
        let f = failure(h);
        assert_eq!(
            failed(&f),
            (FailureReason::Killed, "the process pool was killed")
        );
    };
    for h in running {
        killed(h);
    }
    killed(queued);
    assert_reaped(pids);
    assert!(matches!(
        pool.submit::<Pid>(&()),
        Err(e) if e.reason() == RejectReason::Shutdown
    ));
    pool.kill();
    pool.shutdown();
}

#[test]
fn pp_6_kill_without_workers_does_nothing() {
    let _watchdog = test_watchdog("pp_6_kill_without_workers_does_nothing");
    let pool = pool(2).build().unwrap();
    pool.kill();
    assert_eq!(pool.workers(), 0);
}

#[test]
fn dl_7_crash_during_shutdown_still_returns() {
    let _watchdog = test_watchdog("dl_7_crash_during_shutdown_still_returns");
    let pool = pool(2).build().unwrap();
    let crash = pool.submit::<SleepMs>(&100).unwrap();
    let abort = pool.submit::<Abort>(&vec![]).unwrap();
    within_watchdog("shutdown", move || pool.shutdown());
    assert!(wait(crash).is_ok());
    assert_eq!(failed(&failure(abort)).0, FailureReason::WorkerDied);
}

// ---- workers die with their parent ----

/// Runs only when re-executed by `workers_die_with_the_pool_process`: a pool owner that reports its
/// worker's pid, then waits to be killed.
#[test]
fn pool_owner_entry() {
    if std::env::var_os("PP_TEST_POOL_OWNER").is_none() {
        return;
    }
    let pool = pool(1).build().unwrap();
    let pid = wait(pool.submit::<Pid>(&()).unwrap()).unwrap();
    println!("WORKER_PID={pid}");
    thread::sleep(WATCHDOG);
}

#[test]
fn workers_die_with_the_pool_process() {
    let _watchdog = test_watchdog("workers_die_with_the_pool_process");
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut owner = Command::new(std::env::current_exe().unwrap())
        .args([
            "pool_owner_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PP_TEST_POOL_OWNER", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = owner.stdout.take().unwrap();
    let worker = within_watchdog("the pool owner's report", move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("WORKER_PID=")
                    .map(|p| p.parse::<u32>().unwrap())
            })
            .expect("the owner printed its worker's pid")
    });
    assert!(is_alive(worker));
    owner.kill().unwrap(); // SIGKILL: the owner gets no chance to clean up
    owner.wait().unwrap();
    // PR_SET_PDEATHSIG kills the worker; whoever inherits it reaps it (or it lingers as a zombie).
    let deadline = Instant::now() + WATCHDOG;
    loop {
        let state = std::fs::read_to_string(format!("/proc/{worker}/stat"))
            .ok()
            .and_then(|s| s.rfind(')').and_then(|i| s[i + 2..].chars().next()));
        match state {
            None | Some('Z') | Some('X') => break,
            Some(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Some(s) => panic!("worker {worker} still alive (state {s}) after its parent died"),
        }
    }
}

// ---- stress ----

#[test]
fn stress_cancel_races_with_dispatch() {
    let _watchdog = test_watchdog("stress_cancel_races_with_dispatch");
    let pool = pool(2).build().unwrap();
    let handles: Vec<_> = (0..600u64)
        .map(|i| pool.submit::<Square>(&i).unwrap())
        .collect();
    let mut cancelled = 0;
    let mut outcomes = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        let was_cancelled = i % 2 == 1 && h.cancel();
        cancelled += usize::from(was_cancelled);
        outcomes.push((i as u64, was_cancelled, h));
    }
    for (i, was_cancelled, h) in outcomes {
        match wait(h) {
            Ok(v) => {
                assert!(!was_cancelled, "task {i} ran after a successful cancel");
                assert_eq!(v, i * i);
            }
            Err(NoOutput::Pool(TaskError::Cancelled)) => assert!(was_cancelled, "task {i}"),
            Err(e) => panic!("task {i}: {e:?}"),
        }
    }
    assert!(cancelled > 0, "some cancels won the race");
    within_watchdog("shutdown", move || pool.shutdown());
}

#[test]
fn pool_and_handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ProcessPool>();
    check::<TaskHandle<Result<u64, String>>>();
    check::<WorkerRegistry>();
    check::<SubmitError>();
}

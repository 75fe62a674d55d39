//! Loom models of the task state machine ([`TaskCore`]) and of the executor's
//! accounting ([`Accounting`]): every interleaving of the racing calls, up to
//! `LOOM_MAX_PREEMPTIONS` preemptions, ends each task exactly once, counts it
//! once, and wakes whoever waits. Run by `.ci/loom.sh`:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
//!     cargo test --release --no-default-features --lib loom_tests
//! ```
//!
//! A lost wake-up shows up as a loom deadlock, a double end as a failed
//! assertion on the outcome or on the counts read back from the registry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Mutex;
use loom::thread;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::error::FailureReason;
use crate::error::TaskError;
use crate::executor::{Executor, Rejected, Task};
use crate::metrics::ExecutorExporter;
use crate::proxy::InstrumentedExecutorProxy;
use crate::task::{Accounting, TaskCore, TaskHandle};

type Core = Arc<TaskCore<u32>>;

/// An exporter on its own registry and the accounting of one executor.
fn setup() -> (ExecutorExporter, Arc<Accounting>) {
    let exporter = ExecutorExporter::builder()
        .exporter_id("loom")
        .registry(Registry::new())
        .build()
        .expect("the exporter builds");
    let acct = Arc::new(Accounting::new(exporter.series().clone()));
    (exporter, acct)
}

/// What the instrumented proxy does for an admitted task it hands over.
fn submit_admitted(acct: &Arc<Accounting>) -> (Core, TaskHandle<u32>) {
    let core = Arc::new(TaskCore::new(acct));
    acct.accepted(core.submitted_at());
    (core.clone(), TaskHandle::new(core))
}

fn submit(acct: &Arc<Accounting>) -> (Core, TaskHandle<u32>) {
    assert!(acct.admit(), "the executor is open");
    submit_admitted(acct)
}

/// What a worker does with a task (`Job::run`): true if it ran.
fn run(core: &Core, value: u32) -> bool {
    match core.start(std::time::Duration::ZERO) {
        Some(started) => {
            core.finish_reported(
                crate::clock::Clock::now().nanos_since(started),
                Ok(value),
                None,
            );
            true
        }
        None => false,
    }
}

/// The series' counts, read back from the text exposition.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    submitted: f64,
    queued: f64,
    running: f64,
    cancelled: f64,
    completed: f64,
    failed: f64,
}

fn counts(exporter: &ExecutorExporter) -> Counts {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&exporter.registry().gather(), &mut buf)
        .expect("the registry encodes");
    let text = String::from_utf8(buf).expect("UTF-8");
    let value = |name: &str, label: &str| -> f64 {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(label))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    Counts {
        submitted: value("executor_submitted_tasks_total", ""),
        queued: value("executor_queued_tasks", ""),
        running: value("executor_running_tasks", ""),
        cancelled: value("executor_cancelled_tasks_total", ""),
        completed: value(
            "executor_tasks_duration_seconds_count",
            "result=\"completed\"",
        ),
        failed: value("executor_tasks_duration_seconds_count", "result=\"failed\""),
    }
}

fn one_task(completed: bool, cancelled: bool, failed: bool) -> Counts {
    Counts {
        submitted: 1.0,
        completed: f64::from(u8::from(completed)),
        cancelled: f64::from(u8::from(cancelled)),
        failed: f64::from(u8::from(failed)),
        ..Counts::default()
    }
}

#[test]
fn cancel_racing_start_has_one_winner() {
    loom::model(|| {
        let (exporter, acct) = setup();
        let (core, handle) = submit(&acct);
        let worker = thread::spawn(move || run(&core, 7));
        let cancelled = handle.cancel();
        let ran = worker.join().unwrap();
        assert!(ran != cancelled, "ran: {ran}, cancelled: {cancelled}");
        let result = handle.join();
        if ran {
            assert_eq!(result, Ok(7));
        } else {
            assert_eq!(result, Err(TaskError::Cancelled));
        }
        assert_eq!(acct.in_flight(), 0);
        assert_eq!(counts(&exporter), one_task(ran, cancelled, false));
    });
}

#[test]
fn cancel_start_and_fail_unstarted_have_one_winner() {
    loom::model(|| {
        let (exporter, acct) = setup();
        let (core, handle) = submit(&acct);
        let c = core.clone();
        let worker = thread::spawn(move || run(&c, 7));
        let abandoner = thread::spawn(move || {
            core.fail_unstarted(
                TaskError::Broken {
                    reason: "gone".into(),
                },
                FailureReason::Broken,
            )
        });
        let cancelled = handle.cancel();
        let ran = worker.join().unwrap();
        let abandoned = abandoner.join().unwrap();
        assert_eq!(
            u8::from(ran) + u8::from(cancelled) + u8::from(abandoned),
            1,
            "ran: {ran}, cancelled: {cancelled}, abandoned: {abandoned}"
        );
        let result = handle.join();
        match result {
            Ok(7) => assert!(ran),
            Err(TaskError::Cancelled) => assert!(cancelled),
            Err(TaskError::Broken { .. }) => assert!(abandoned),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(acct.in_flight(), 0);
        assert_eq!(counts(&exporter), one_task(ran, cancelled, abandoned));
    });
}

#[test]
fn join_racing_completion_is_woken() {
    loom::model(|| {
        let (exporter, acct) = setup();
        let (core, handle) = submit(&acct);
        let worker = thread::spawn(move || run(&core, 7));
        // A lost wake-up leaves this join blocked: loom reports a deadlock.
        assert_eq!(handle.join(), Ok(7));
        assert!(worker.join().unwrap());
        assert_eq!(counts(&exporter), one_task(true, false, false));
    });
}

#[test]
fn two_waiters_racing_completion_are_both_woken() {
    loom::model(|| {
        let (_exporter, acct) = setup();
        let (core, handle) = submit(&acct);
        let handle = Arc::new(handle);
        let worker = thread::spawn(move || run(&core, 7));
        let h = handle.clone();
        // Loom's `wait_timeout` never times out: this waits like `join`.
        let waiter = thread::spawn(move || h.wait_timeout(Duration::from_secs(3600)));
        assert!(handle.wait_timeout(Duration::from_secs(3600)));
        assert!(waiter.join().unwrap());
        assert!(worker.join().unwrap());
        let handle = Arc::try_unwrap(handle).expect("the only handle left");
        assert_eq!(handle.join(), Ok(7));
    });
}

struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn poll_racing_completion_is_woken() {
    loom::model(|| {
        let (_exporter, acct) = setup();
        let (core, mut handle) = submit(&acct);
        let worker = thread::spawn(move || run(&core, 7));
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let first = Pin::new(&mut handle).poll(&mut cx);
        assert!(worker.join().unwrap());
        match first {
            Poll::Ready(result) => assert_eq!(result, Ok(7)),
            Poll::Pending => {
                assert!(flag.0.load(Ordering::SeqCst), "pending and never woken");
                let second = Pin::new(&mut handle).poll(&mut cx);
                assert_eq!(second, Poll::Ready(Ok(7)));
            }
        }
    });
}

#[test]
fn shutdown_racing_the_last_task_end_returns() {
    loom::model(|| {
        let (exporter, acct) = setup();
        let (core, handle) = submit(&acct);
        let worker = thread::spawn(move || run(&core, 7));
        // `InstrumentedExecutorProxy::shutdown`: a lost wake-up deadlocks.
        acct.close();
        acct.wait_idle();
        assert!(handle.is_finished());
        assert_eq!(acct.in_flight(), 0);
        assert!(worker.join().unwrap());
        assert_eq!(handle.join(), Ok(7));
        assert_eq!(counts(&exporter), one_task(true, false, false));
    });
}

#[test]
fn wait_idle_racing_an_end_and_a_new_submit_returns() {
    loom::model(|| {
        let (exporter, acct) = setup();
        let (core, handle) = submit(&acct);
        let worker = thread::spawn(move || run(&core, 7));
        // Another thread submits and runs a second task while `wait_idle`
        // waits: the end that makes the executor idle may be followed by
        // an admission before it checks, and a later end must wake the
        // waiter then. A lost wake-up deadlocks.
        let a = acct.clone();
        let submitter = thread::spawn(move || {
            let (core, handle) = submit(&a);
            assert!(run(&core, 8));
            handle
        });
        acct.wait_idle();
        assert!(handle.is_finished());
        assert!(worker.join().unwrap());
        let second = submitter.join().unwrap();
        assert_eq!(handle.join(), Ok(7));
        assert_eq!(second.join(), Ok(8));
        assert_eq!(acct.in_flight(), 0);
        assert_eq!(counts(&exporter).completed, 2.0);
    });
}

#[test]
fn wait_idle_racing_two_ends_on_two_stripes_returns() {
    loom::model(|| {
        let (exporter, acct) = setup();
        let (first, h1) = submit(&acct);
        let (second, h2) = submit(&acct);
        // Two workers count their ends on two stripes of the end count:
        // whichever ends last must see the other's end and wake the
        // waiter. A lost wake-up deadlocks.
        let w1 = thread::spawn(move || run(&first, 1));
        let w2 = thread::spawn(move || run(&second, 2));
        acct.wait_idle();
        assert!(h1.is_finished() && h2.is_finished());
        assert_eq!(acct.in_flight(), 0);
        assert!(w1.join().unwrap() && w2.join().unwrap());
        assert_eq!((h1.join(), h2.join()), (Ok(1), Ok(2)));
        assert_eq!(counts(&exporter).completed, 2.0);
    });
}

#[test]
fn dropping_the_last_owner_waits_for_the_task_in_flight() {
    loom::model(|| {
        let (exporter, acct) = setup();
        let (core, handle) = submit(&acct);
        let worker = thread::spawn(move || run(&core, 7));
        // The last owner lets go with no shutdown: the task still points at
        // the accounting, so the drop waits for it to end.
        drop(acct);
        assert!(handle.is_finished());
        assert!(worker.join().unwrap());
        assert_eq!(handle.join(), Ok(7));
        assert_eq!(counts(&exporter), one_task(true, false, false));
    });
}

#[test]
fn shutdown_racing_submit_waits_for_what_it_admitted() {
    loom::model(|| {
        let (exporter, acct) = setup();
        let admitted: Arc<Mutex<Option<Core>>> = Arc::new(Mutex::new(None));
        let (a, slot) = (acct.clone(), admitted.clone());
        let submitter = thread::spawn(move || {
            if !a.admit() {
                a.refused_unadmitted();
                return None;
            }
            let (core, handle) = submit_admitted(&a);
            *slot.lock().unwrap() = Some(core.clone());
            assert!(run(&core, 7));
            Some(handle)
        });
        acct.close();
        acct.wait_idle();
        // Whatever was admitted before the close has ended by now.
        if let Some(core) = admitted.lock().unwrap().as_ref() {
            let handle = TaskHandle::new(core.clone());
            assert!(
                handle.is_finished(),
                "wait_idle returned before its task ended"
            );
        }
        assert!(!acct.admit(), "closed");
        let handle = submitter.join().unwrap();
        let c = counts(&exporter);
        match handle {
            Some(h) => {
                assert_eq!(h.join(), Ok(7));
                assert_eq!(c, one_task(true, false, false));
            }
            None => assert_eq!(c, Counts::default()),
        }
        assert_eq!(acct.in_flight(), 0);
    });
}

#[test]
fn shutdown_now_racing_start_ends_the_task_once() {
    loom::model(|| {
        let (exporter, acct) = setup();
        let (core, handle) = submit(&acct);
        let worker = thread::spawn(move || run(&core, 7));
        // `InstrumentedExecutorProxy::shutdown_now`.
        acct.close();
        acct.cancel_pending();
        acct.wait_idle();
        assert!(handle.is_finished());
        let ran = worker.join().unwrap();
        let result = handle.join();
        if ran {
            assert_eq!(result, Ok(7));
        } else {
            assert_eq!(result, Err(TaskError::Cancelled));
        }
        assert_eq!(acct.in_flight(), 0);
        assert_eq!(counts(&exporter), one_task(ran, !ran, false));
    });
}

#[test]
fn shutdown_now_racing_two_tasks_ending_returns() {
    loom::model(|| {
        let (exporter, acct) = setup();
        let (a, ha) = submit(&acct);
        let (b, hb) = submit(&acct);
        let wa = thread::spawn(move || run(&a, 1));
        let wb = thread::spawn(move || run(&b, 2));
        acct.close();
        acct.cancel_pending();
        acct.wait_idle();
        assert!(ha.is_finished() && hb.is_finished());
        let ran = u8::from(wa.join().unwrap()) + u8::from(wb.join().unwrap());
        let c = counts(&exporter);
        assert_eq!(c.submitted, 2.0);
        assert_eq!(c.completed, f64::from(ran));
        assert_eq!(c.cancelled, f64::from(2 - ran));
        assert_eq!((c.queued, c.running, c.failed), (0.0, 0.0, 0.0));
    });
}

/// Keeps the one task it is given, for a model to hand to a worker.
#[derive(Default)]
struct Capture(std::sync::Mutex<Option<Task>>);

impl Executor for Capture {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        *self.0.lock().unwrap() = Some(task);
        Ok(())
    }
}

/// Counts the closure's runs and drops.
#[derive(Default)]
struct Tally {
    runs: std::sync::atomic::AtomicUsize,
    drops: std::sync::atomic::AtomicUsize,
}

struct DropMark(Arc<Tally>);

impl Drop for DropMark {
    fn drop(&mut self) {
        self.0.drops.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn joiner_take_racing_worker_start_and_cancel_has_one_winner() {
    loom::model(|| {
        let exporter = ExecutorExporter::builder()
            .exporter_id("loom")
            .registry(Registry::new())
            .build()
            .expect("the exporter builds");
        let proxy = InstrumentedExecutorProxy::new(Capture::default(), exporter, None);
        let tally = Arc::new(Tally::default());
        let mark = DropMark(tally.clone());
        let handle = proxy
            .submit(move || {
                mark.0.runs.fetch_add(1, Ordering::SeqCst);
                7u32
            })
            .expect("the proxy is open");
        let task = proxy.inner().0.lock().unwrap().take().expect("handed over");
        // The worker pops the task; a joiner (one of the executor's own
        // threads) takes it out of the queue to run it; the handle cancels.
        let worker = thread::spawn(move || task.run());
        let handle = Arc::new(handle);
        let h = handle.clone();
        let joiner = thread::spawn(move || h.help());
        let cancelled = handle.cancel();
        worker.join().unwrap();
        let helped = joiner.join().unwrap();
        let runs = tally.runs.load(Ordering::SeqCst);
        assert_eq!(
            runs + usize::from(cancelled),
            1,
            "runs: {runs}, cancelled: {cancelled}, helped: {helped}"
        );
        assert!(!(helped && cancelled), "the joiner and the cancel both won");
        assert_eq!(
            tally.drops.load(Ordering::SeqCst),
            1,
            "the closure is dropped once"
        );
        let handle = Arc::try_unwrap(handle).expect("the only handle left");
        if cancelled {
            assert_eq!(handle.join(), Err(TaskError::Cancelled));
        } else {
            assert_eq!(handle.join(), Ok(7));
        }
        let c = counts(proxy.exporter());
        assert_eq!(c, one_task(!cancelled, cancelled, false));
        drop(proxy);
    });
}

#[test]
fn joiner_take_racing_worker_start_and_shutdown_now_ends_the_task_once() {
    loom::model(|| {
        let exporter = ExecutorExporter::builder()
            .exporter_id("loom")
            .registry(Registry::new())
            .build()
            .expect("the exporter builds");
        let proxy = Arc::new(InstrumentedExecutorProxy::new(
            Capture::default(),
            exporter,
            None,
        ));
        let tally = Arc::new(Tally::default());
        let mark = DropMark(tally.clone());
        let handle = proxy
            .submit(move || {
                mark.0.runs.fetch_add(1, Ordering::SeqCst);
                7u32
            })
            .expect("the proxy is open");
        let task = proxy.inner().0.lock().unwrap().take().expect("handed over");
        let worker = thread::spawn(move || task.run());
        let handle = Arc::new(handle);
        let h = handle.clone();
        let joiner = thread::spawn(move || h.help());
        // Waits until the task has ended, whoever ends it.
        proxy.shutdown_now();
        worker.join().unwrap();
        joiner.join().unwrap();
        let runs = tally.runs.load(Ordering::SeqCst);
        assert!(runs <= 1);
        assert_eq!(
            tally.drops.load(Ordering::SeqCst),
            1,
            "the closure is dropped once"
        );
        let handle = Arc::try_unwrap(handle).expect("the only handle left");
        let result = handle.join();
        if runs == 1 {
            assert_eq!(result, Ok(7));
        } else {
            assert_eq!(result, Err(TaskError::Cancelled));
        }
        let c = counts(proxy.exporter());
        assert_eq!(c, one_task(runs == 1, runs == 0, false));
    });
}

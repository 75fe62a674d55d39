use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::*;

#[test]
fn workers_stop_when_the_pool_is_dropped() {
    let pool = ThreadPool::new(3).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    for _ in 0..3 {
        let tx = tx.clone();
        pool.execute(Task::new(move || tx.send(()).unwrap()))
            .unwrap();
    }
    for _ in 0..3 {
        rx.recv().unwrap();
    }
    let shared = pool.shared.clone();
    drop(pool);
    assert!(lock(&shared.handles).is_empty(), "every thread was joined");
    assert!(shared.receiver.is_empty(), "nothing is left queued");
}

#[test]
fn a_plain_task_that_panics_does_not_kill_its_worker() {
    let pool = ThreadPool::new(1).unwrap();
    pool.execute(Task::new(|| panic!("plain panic"))).unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    pool.execute(Task::new(move || {
        d.fetch_add(1, Ordering::SeqCst);
    }))
    .unwrap();
    pool.shutdown();
    assert_eq!(done.load(Ordering::SeqCst), 1);
    assert_eq!(pool.workers(), 1);
}

#[test]
fn shutdown_from_inside_a_task_does_not_deadlock() {
    let pool = Arc::new(ThreadPool::new(1).unwrap());
    let p = pool.clone();
    let (tx, rx) = crossbeam_channel::bounded(1);
    pool.execute(Task::new(move || {
        p.shutdown();
        tx.send(()).unwrap();
    }))
    .unwrap();
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("the task finished its own pool's shutdown");
}

/// Makes the calling thread's next worker starts fail, as a system out of
/// threads would.
pub(super) mod spawn_fault {
    use std::cell::RefCell;
    use std::io;

    type Fault = Box<dyn FnMut() -> io::Result<()>>;

    thread_local! {
        static FAULT: RefCell<Option<Fault>> = const { RefCell::new(None) };
    }

    /// `fault` decides each start on this thread until [`clear`] is called.
    pub(crate) fn set(fault: impl FnMut() -> io::Result<()> + 'static) {
        FAULT.with(|f| *f.borrow_mut() = Some(Box::new(fault)));
    }

    pub(crate) fn clear() {
        FAULT.with(|f| *f.borrow_mut() = None);
    }

    /// Called by `spawn_worker` in place of the start's first step.
    pub(crate) fn inject() -> io::Result<()> {
        let fault = FAULT.with(|f| f.borrow_mut().take());
        let Some(mut fault) = fault else {
            return Ok(());
        };
        let result = fault();
        FAULT.with(|f| {
            f.borrow_mut().get_or_insert(fault);
        });
        result
    }

    pub(crate) fn refused() -> io::Error {
        io::Error::new(
            io::ErrorKind::WouldBlock,
            "Resource temporarily unavailable",
        )
    }
}

/// Keeps the tasks it is given, to hand them to a pool by other means.
#[derive(Default)]
struct Capture(Mutex<Vec<Task>>);

impl Executor for Capture {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        lock(&self.0).push(task);
        Ok(())
    }
}

type CaptureProxy = crate::InstrumentedExecutorProxy<Arc<Capture>>;

/// Drops the proxy at the end of a test that passed. A failed test leaks it:
/// its drop would wait for a task that did not end.
struct KeepUnlessPassed(Option<CaptureProxy>);

impl Drop for KeepUnlessPassed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.0.take());
        }
    }
}

/// A task with a handle: submitted through a proxy over a [`Capture`], so
/// the task can be given to the pool under test directly.
fn task_with_handle() -> (Task, crate::TaskHandle<u32>, KeepUnlessPassed) {
    let capture = Arc::new(Capture::default());
    let exporter = crate::ExecutorExporter::builder()
        .registry(prometheus::Registry::new())
        .build()
        .unwrap();
    let proxy = crate::InstrumentedExecutorProxy::new(capture.clone(), exporter, None);
    let handle = proxy.submit(|| 7).unwrap();
    let task = lock(&capture.0).pop().unwrap();
    (task, handle, KeepUnlessPassed(Some(proxy)))
}

/// Why the task ended unrun; fails if it did not end within a minute.
fn broken_reason(mut handle: crate::TaskHandle<u32>) -> String {
    match handle.join_timeout(std::time::Duration::from_secs(60)) {
        Err(crate::TaskError::Broken { reason }) => reason,
        other => panic!("expected the task to be abandoned, got {other:?}"),
    }
}

#[test]
fn a_worker_that_cannot_start_hands_the_task_back_and_the_next_submit_retries() {
    let pool = ThreadPool::new(1).unwrap();
    let mut failures = 1;
    spawn_fault::set(move || {
        if failures > 0 {
            failures -= 1;
            return Err(spawn_fault::refused());
        }
        Ok(())
    });
    let (tx, rx) = crossbeam_channel::unbounded();
    let t = tx.clone();
    let rejected = pool
        .execute(Task::new(move || t.send("first").unwrap()))
        .expect_err("no worker could start");
    assert_eq!(rejected.reason(), RejectReason::NoWorker);
    assert_eq!(pool.workers(), 0);
    assert_eq!(pool.broken_reason(), None);
    // The task came back whole: the caller can still run it.
    rejected.into_task().run();
    assert_eq!(rx.try_recv(), Ok("first"));

    pool.execute(Task::new(move || tx.send("second").unwrap()))
        .expect("the start succeeds this time");
    spawn_fault::clear();
    let got = rx.recv_timeout(std::time::Duration::from_secs(60));
    assert_eq!(got, Ok("second"));
    assert_eq!(pool.workers(), 1);
}

#[test]
fn tasks_queued_for_a_worker_that_failed_to_start_are_abandoned() {
    let pool = Arc::new(ThreadPool::new(1).unwrap());
    let (queued, handle, _proxy) = task_with_handle();
    let mut queued = Some(queued);
    let p = pool.clone();
    spawn_fault::set(move || {
        if let Some(task) = queued.take() {
            // While the only worker slot is taken by the start under way,
            // another submit sees the pool full and queues its task for it.
            p.execute(task).expect("queued behind the starting worker");
            return Err(spawn_fault::refused());
        }
        Ok(())
    });
    let rejected = pool
        .execute(Task::new(|| {}))
        .expect_err("no worker could start");
    assert_eq!(rejected.reason(), RejectReason::NoWorker);
    // The queued task was given up with the error, not left waiting for a
    // worker that never comes.
    let reason = broken_reason(handle);
    assert!(
        reason.contains("no worker thread could be started"),
        "{reason}"
    );
    assert!(
        reason.contains("Resource temporarily unavailable"),
        "{reason}"
    );

    let (tx, rx) = crossbeam_channel::unbounded();
    pool.execute(Task::new(move || tx.send("ran").unwrap()))
        .expect("a later submit starts the worker");
    spawn_fault::clear();
    let got = rx.recv_timeout(std::time::Duration::from_secs(60));
    assert_eq!(got, Ok("ran"));
}

#[test]
fn a_task_left_without_a_worker_is_abandoned_at_shutdown() {
    let pool = ThreadPool::new(1).unwrap();
    // A task in the queue with no worker slot claimed: what a submit that
    // raced past the failed start's drain leaves.
    let (task, handle, _proxy) = task_with_handle();
    pool.shared.sender.send(Message::Run(task)).unwrap();
    pool.shutdown();
    let reason = broken_reason(handle);
    assert!(
        reason.contains("no worker thread could be started"),
        "{reason}"
    );
}

//! A user's executor that wraps each task in one of its own before passing
//! it on (to set something up around it, say) cannot hand back the very
//! task it was given when the executor beneath refuses: it has only its own
//! wrapper. The proxy over it still gets its task back, as the wrapper is
//! dropped, and refuses the submit as usual, closure and all; an executor
//! that hands back some other task and keeps the proxy's has it counted as
//! accepted, since it will run or drop it later. Nothing panics, and every
//! task is counted once.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{counts, scrape};
use executor_exporter::prometheus::Registry;
use executor_exporter::{
    Executor, ExecutorExporter, InstrumentedExecutorProxy, RejectReason, Rejected, Task, TaskError,
};

/// Runs each task inside a task of its own, which counts the runs, on the
/// executor beneath: the usual way to write such a wrapper.
struct Wrapping<E> {
    inner: E,
    wrapped: Arc<AtomicUsize>,
}

impl<E> Wrapping<E> {
    fn new(inner: E) -> Wrapping<E> {
        Wrapping {
            inner,
            wrapped: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl<E: Executor> Executor for Wrapping<E> {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        let wrapped = self.wrapped.clone();
        self.inner.execute(Task::new(move || {
            wrapped.fetch_add(1, Ordering::SeqCst);
            task.run();
        }))
    }
}

/// Refuses every task, as a full pool does.
struct Full;

impl Executor for Full {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        Err(Rejected::new(task, RejectReason::Full))
    }
}

/// Keeps every task it is given for later, and refuses with a task of its
/// own in its place: it breaks the trait's contract the other way.
#[derive(Default)]
struct Hoarding {
    kept: Mutex<Vec<Task>>,
}

impl Executor for Hoarding {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        self.kept.lock().unwrap().push(task);
        Err(Rejected::new(Task::new(|| {}), RejectReason::Full))
    }
}

fn exporter(registry: &Registry, id: &str) -> ExecutorExporter {
    ExecutorExporter::builder()
        .exporter_id(id)
        .registry(registry.clone())
        .build()
        .unwrap()
}

#[test]
fn a_wrapped_task_refused_beneath_comes_back_to_submit_and_spawn() {
    let registry = Registry::new();
    let proxy = InstrumentedExecutorProxy::new(Wrapping::new(Full), exporter(&registry, "w"), None);

    let err = proxy.submit(|| 7).unwrap_err();
    assert_eq!(err.reason(), RejectReason::Full);
    assert_eq!((err.into_inner())(), 7, "submit's closure is handed back");

    let flag = Arc::new(AtomicUsize::new(0));
    let f = flag.clone();
    let err = proxy
        .spawn(move || {
            f.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap_err();
    assert_eq!(err.reason(), RejectReason::Full);
    (err.into_inner())();
    assert_eq!(
        flag.load(Ordering::SeqCst),
        1,
        "spawn's closure is handed back"
    );

    let err = proxy.submit_fallible(|| "x".parse::<u32>()).unwrap_err();
    assert!((err.into_inner())().is_err());

    let c = counts(&scrape(&registry), "executor", "w");
    assert_eq!((c.submitted, c.rejected, c.cancelled), (0.0, 3.0, 0.0));
    c.assert_invariant();
}

#[test]
fn a_wrapped_task_refused_beneath_comes_back_to_execute_as_itself() {
    let registry = Registry::new();
    let proxy = InstrumentedExecutorProxy::new(Wrapping::new(Full), exporter(&registry, "w"), None);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let drop_in: &dyn Executor = &proxy;
    let rejected = drop_in
        .execute(Task::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap_err();
    assert_eq!(rejected.reason(), RejectReason::Full);
    rejected.into_task().run();
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "the caller's own task came back"
    );
    assert_eq!(proxy.inner().wrapped.load(Ordering::SeqCst), 0);

    let c = counts(&scrape(&registry), "executor", "w");
    assert_eq!((c.submitted, c.rejected, c.completed), (0.0, 1.0, 0.0));
    c.assert_invariant();
}

/// Proxy over a wrapper over a proxy over a full executor: each proxy
/// counts the refusal once, and the outer submit gets its closure back.
#[test]
fn a_wrapper_between_two_proxies_hands_back_to_both() {
    let registry = Registry::new();
    let inner = InstrumentedExecutorProxy::new(Full, exporter(&registry, "inner"), None);
    let outer =
        InstrumentedExecutorProxy::new(Wrapping::new(inner), exporter(&registry, "outer"), None);
    let err = outer.submit(|| "back").unwrap_err();
    assert_eq!((err.into_inner())(), "back");
    let err = outer.spawn(|| {}).unwrap_err();
    assert_eq!(err.reason(), RejectReason::Full);

    let exposition = scrape(&registry);
    for id in ["inner", "outer"] {
        let c = counts(&exposition, "executor", id);
        assert_eq!((c.submitted, c.rejected), (0.0, 2.0), "{id}");
        c.assert_invariant();
    }
}

/// An executor that keeps the task and refuses with another one: the task
/// is in flight, so the submit succeeds, and the task ends when the
/// executor runs it or drops it.
#[test]
fn a_task_kept_by_an_executor_that_refuses_with_another_is_accepted() {
    let registry = Registry::new();
    let proxy = InstrumentedExecutorProxy::new(Hoarding::default(), exporter(&registry, "h"), None);
    let ran = proxy.submit(|| 5).expect("the task is in flight");
    let dropped = proxy.submit(|| 6).expect("the task is in flight");
    let drop_in: &dyn Executor = &proxy;
    drop_in.execute(Task::new(|| {})).expect("in flight");

    let c = counts(&scrape(&registry), "executor", "h");
    assert_eq!((c.submitted, c.rejected, c.queued), (3.0, 0.0, 3.0));
    c.assert_invariant();

    let mut kept = std::mem::take(&mut *proxy.inner().kept.lock().unwrap());
    assert_eq!(kept.len(), 3);
    let second = kept.remove(1);
    for task in kept {
        task.run();
    }
    drop(second);
    assert_eq!(ran.join(), Ok(5));
    assert_eq!(dropped.join(), Err(TaskError::Cancelled));

    let c = counts(&scrape(&registry), "executor", "h");
    assert_eq!(
        (c.submitted, c.queued, c.completed, c.cancelled),
        (3.0, 0.0, 2.0, 1.0)
    );
    c.assert_invariant();
}

/// Keeps the newest task and hands back the oldest in its place, as a
/// drop-oldest queue of one does: the oldest was accepted earlier, so
/// handing it back drops it (cancelled), and the newest is accepted.
#[derive(Default)]
struct DropOldest {
    queue: Mutex<Option<Task>>,
}

impl Executor for DropOldest {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        match self.queue.lock().unwrap().replace(task) {
            None => Ok(()),
            Some(oldest) => Err(Rejected::new(oldest, RejectReason::Full)),
        }
    }
}

#[test]
fn a_task_handed_back_in_place_of_a_newer_one_is_cancelled_and_the_newer_accepted() {
    let registry = Registry::new();
    let proxy =
        InstrumentedExecutorProxy::new(DropOldest::default(), exporter(&registry, "d"), None);
    let first = proxy.submit(|| 1).unwrap();
    let second = proxy.submit(|| 2).expect("the newer task is kept");
    assert_eq!(first.join(), Err(TaskError::Cancelled));
    proxy.spawn(|| {}).expect("kept in place of the second");
    let drop_in: &dyn Executor = &proxy;
    drop_in
        .execute(Task::new(|| {}))
        .expect("kept in place of the third");
    let last = proxy.inner().queue.lock().unwrap().take().unwrap();
    last.run();
    assert_eq!(second.join(), Err(TaskError::Cancelled));

    let c = counts(&scrape(&registry), "executor", "d");
    assert_eq!(
        (c.submitted, c.rejected, c.cancelled, c.completed),
        (4.0, 0.0, 3.0, 1.0)
    );
    c.assert_invariant();
}

/// Dropping the task an executor handed back may panic (a capture of the
/// wrapper's): the panic reaches the caller, and the proxy's task inside
/// ends cancelled, counted as submitted, so the counts still add up.
#[test]
fn a_wrapper_whose_drop_panics_leaves_the_counts_whole() {
    struct Bomb;
    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("the wrapper's capture panics on drop");
        }
    }
    struct Booby<E>(E);
    impl<E: Executor> Executor for Booby<E> {
        fn execute(&self, task: Task) -> Result<(), Rejected> {
            let bomb = Bomb;
            self.0.execute(Task::new(move || {
                let _bomb = &bomb;
                task.run();
            }))
        }
    }

    let registry = Registry::new();
    let proxy = InstrumentedExecutorProxy::new(Booby(Full), exporter(&registry, "b"), None);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        proxy.spawn(move || {
            r.fetch_add(1, Ordering::SeqCst);
        })
    }));
    assert!(outcome.is_err(), "the drop's panic reaches the caller");
    assert_eq!(ran.load(Ordering::SeqCst), 0);

    let c = counts(&scrape(&registry), "executor", "b");
    assert_eq!((c.submitted, c.rejected, c.cancelled), (1.0, 0.0, 1.0));
    c.assert_invariant();
}

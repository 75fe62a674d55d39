//! Every metric, read back from a real registry's text exposition.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{counts, scrape, Gate};
use executor_exporter::prometheus::{self, IntCounter, Opts, Registry};
use executor_exporter::{
    Executor, ExecutorExporter, InstrumentedExecutorProxy, RejectReason, Rejected, Task, TaskError,
    ThreadPoolExecutor, DEFAULT_BUCKETS,
};

fn pool(registry: &Registry, id: &str, workers: usize) -> ThreadPoolExecutor {
    ThreadPoolExecutor::builder()
        .max_workers(workers)
        .exporter_id(id)
        .registry(registry.clone())
        .build()
        .unwrap()
}

/// An exporter with id `id` on `registry`, for a proxy over some executor.
fn exporter(registry: &Registry, id: &str) -> ExecutorExporter {
    ExecutorExporter::builder()
        .exporter_id(id)
        .registry(registry.clone())
        .build()
        .unwrap()
}

const FAMILIES: &[(&str, &str)] = &[
    ("executor_max_workers", "gauge"),
    ("executor_workers", "gauge"),
    ("executor_initialized_workers_total", "counter"),
    ("executor_submitted_tasks_total", "counter"),
    ("executor_rejected_tasks_total", "counter"),
    ("executor_queued_tasks", "gauge"),
    ("executor_running_tasks", "gauge"),
    ("executor_cancelled_tasks_total", "counter"),
    ("executor_task_wait_seconds", "histogram"),
    ("executor_tasks_duration_seconds", "histogram"),
    ("executor_task_failures_total", "counter"),
    ("executor_worker_restarts_total", "counter"),
    ("executor_oldest_running_task_seconds", "gauge"),
    ("executor_oldest_queued_task_seconds", "gauge"),
];

#[test]
fn every_series_exists_at_zero_when_the_pool_is_built() {
    let registry = Registry::new();
    let _pool = pool(&registry, "fresh", 3);
    let exp = scrape(&registry);
    for (name, ty) in FAMILIES {
        assert_eq!(
            exp.types.get(*name).map(String::as_str),
            Some(*ty),
            "{name}"
        );
        assert!(!exp.helps.get(*name).unwrap().is_empty(), "{name} has help");
    }
    let l = [("executor", "fresh"), ("executor_type", "thread_pool")];
    assert_eq!(exp.value("executor_max_workers", &l), 3.0);
    for name in [
        "executor_workers",
        "executor_initialized_workers_total",
        "executor_submitted_tasks_total",
        "executor_rejected_tasks_total",
        "executor_queued_tasks",
        "executor_running_tasks",
        "executor_cancelled_tasks_total",
        "executor_worker_restarts_total",
        "executor_task_wait_seconds_count",
    ] {
        assert_eq!(exp.value(name, &l), 0.0, "{name}");
    }
    for result in ["completed", "failed"] {
        assert_eq!(
            exp.value(
                "executor_tasks_duration_seconds_count",
                &[("executor", "fresh"), ("result", result)]
            ),
            0.0
        );
    }
    // The reasons a thread pool can fail a task with, at zero; not those of
    // worker processes (`timeout`, `worker_died`, ...), which cannot happen.
    let reasons: Vec<&str> = exp
        .matching("executor_task_failures_total", &[("executor", "fresh")])
        .map(|s| {
            assert_eq!(s.value, 0.0, "{:?}", s.labels);
            s.labels["reason"].as_str()
        })
        .collect();
    assert_eq!(reasons, ["broken", "error", "panic"]);
    // Default buckets: microseconds to minutes.
    let bounds: Vec<f64> = exp
        .matching(
            "executor_task_wait_seconds_bucket",
            &[("executor", "fresh")],
        )
        .map(|s| s.labels["le"].parse::<f64>().unwrap())
        .collect();
    assert_eq!(bounds.len(), DEFAULT_BUCKETS.len() + 1);
    assert_eq!(bounds[0], 0.000_001);
    assert!(bounds[bounds.len() - 2] >= 60.0);
}

#[test]
fn a_mixed_workload_is_counted_exactly() {
    let registry = Registry::new();
    let pool = pool(&registry, "mixed", 2);
    let mut handles = Vec::new();
    for i in 0..30u32 {
        handles.push(
            pool.submit_fallible(move || if i % 3 == 0 { Err("bad") } else { Ok(i) })
                .unwrap(),
        );
    }
    let panics: Vec<_> = (0..4)
        .map(|_| pool.submit(|| -> u32 { panic!("kaput") }).unwrap())
        .collect();
    let errs = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(Result::is_err)
        .count();
    assert_eq!(errs, 10);
    for p in panics {
        assert_eq!(
            p.join(),
            Err(TaskError::Panicked {
                message: "kaput".into()
            })
        );
    }
    pool.join();
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "mixed");
    assert_eq!(c.submitted, 34.0);
    assert_eq!(c.completed, 20.0);
    assert_eq!(c.failed, 14.0);
    assert_eq!(c.wait_count, 34.0);
    assert_eq!(
        (c.queued, c.running, c.cancelled, c.rejected),
        (0.0, 0.0, 0.0, 0.0)
    );
    c.assert_invariant();
    let l = |r| [("executor", "mixed"), ("reason", r)];
    assert_eq!(exp.value("executor_task_failures_total", &l("error")), 10.0);
    assert_eq!(exp.value("executor_task_failures_total", &l("panic")), 4.0);
    let started = exp.value(
        "executor_initialized_workers_total",
        &[("executor", "mixed")],
    );
    assert!((1.0..=2.0).contains(&started), "workers started: {started}");
}

#[test]
fn queued_and_running_gauges_follow_the_tasks() {
    let registry = Registry::new();
    let pool = pool(&registry, "gauges", 2);
    let gate = Gate::new();
    let started = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let (gate, started) = (gate.clone(), started.clone());
            pool.submit(move || {
                started.fetch_add(1, Ordering::SeqCst);
                gate.wait()
            })
            .unwrap()
        })
        .collect();
    common::eventually(30, "two tasks running", || {
        started.load(Ordering::SeqCst) == 2
    });
    let c = counts(&scrape(&registry), "executor", "gauges");
    assert_eq!((c.submitted, c.running, c.queued), (5.0, 2.0, 3.0));
    c.assert_invariant();
    // Cancel one queued task: it never runs.
    assert!(handles[4].cancel());
    let c = counts(&scrape(&registry), "executor", "gauges");
    assert_eq!((c.queued, c.cancelled), (2.0, 1.0));
    c.assert_invariant();
    gate.open();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.join();
        if i == 4 {
            assert_eq!(r, Err(TaskError::Cancelled));
        } else {
            assert_eq!(r, Ok(()));
        }
    }
    pool.join();
    assert_eq!(started.load(Ordering::SeqCst), 4);
    let c = counts(&scrape(&registry), "executor", "gauges");
    assert_eq!(
        (c.running, c.queued, c.completed, c.cancelled),
        (0.0, 0.0, 4.0, 1.0)
    );
    c.assert_invariant();
}

/// Spawns on a shut-down executor: refused as shut down, and the closure
/// comes back (the test runs it).
fn spawn_is_refused_and_handed_back<E: Executor>(proxy: &InstrumentedExecutorProxy<E>) {
    let flag = Arc::new(AtomicUsize::new(0));
    let f = flag.clone();
    let err = proxy
        .spawn(move || {
            f.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap_err();
    assert_eq!(err.reason(), RejectReason::Shutdown);
    (err.into_inner())();
    assert_eq!(flag.load(Ordering::SeqCst), 1, "the closure is handed back");
}

#[test]
fn spawned_tasks_are_counted_like_submitted_ones() {
    let registry = Registry::new();
    let pool = pool(&registry, "spawned", 2);
    let ran = Arc::new(AtomicUsize::new(0));
    for i in 0..20u32 {
        let ran = ran.clone();
        pool.spawn(move || {
            if i % 5 == 0 {
                panic!("spawned {i} fails");
            }
            ran.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    pool.join();
    assert_eq!(ran.load(Ordering::SeqCst), 16);
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "spawned");
    assert_eq!(
        (c.submitted, c.completed, c.failed, c.wait_count),
        (20.0, 16.0, 4.0, 20.0)
    );
    assert_eq!(
        (c.queued, c.running, c.cancelled, c.rejected),
        (0.0, 0.0, 0.0, 0.0)
    );
    c.assert_invariant();
    let panics = [("executor", "spawned"), ("reason", "panic")];
    assert_eq!(exp.value("executor_task_failures_total", &panics), 4.0);

    pool.shutdown();
    spawn_is_refused_and_handed_back(&pool);
    let c = counts(&scrape(&registry), "executor", "spawned");
    assert_eq!((c.submitted, c.rejected), (20.0, 1.0));
    c.assert_invariant();
}

/// Keeps the tasks it is given, to run them whenever the test says.
struct Stash(Arc<std::sync::Mutex<Vec<Task>>>);

impl Executor for Stash {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        self.0.lock().unwrap().push(task);
        Ok(())
    }
}

#[test]
fn a_task_cancelled_before_its_executor_ran_it_stays_cancelled_after_the_proxy_is_gone() {
    let registry = Registry::new();
    let exporter = exporter(&registry, "stash");
    let stash = Arc::new(std::sync::Mutex::new(Vec::new()));
    let proxy = InstrumentedExecutorProxy::new(Stash(stash.clone()), exporter, Some(1));
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let handle = proxy
        .submit(move || {
            r.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    assert!(handle.cancel());
    // The task has ended, so dropping the proxy does not wait; the
    // executor still holds the task and runs it afterwards: it must not
    // run, nor count again, nor reach the proxy's freed bookkeeping.
    drop(proxy);
    for task in stash.lock().unwrap().drain(..) {
        task.run();
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(handle.join(), Err(TaskError::Cancelled));
    let c = counts(&scrape(&registry), "executor", "stash");
    assert_eq!((c.submitted, c.cancelled, c.completed), (1.0, 1.0, 0.0));
    c.assert_invariant();
}

#[test]
fn a_proxy_over_a_shut_down_proxy_refuses_and_hands_the_closure_back() {
    let registry = Registry::new();
    let inner = pool(&registry, "inner", 1);
    let outer = InstrumentedExecutorProxy::new(inner, exporter(&registry, "outer"), None);
    assert_eq!(outer.submit(|| 1).unwrap().join(), Ok(1));
    outer.inner().shutdown();
    let err = outer.submit(|| 2).unwrap_err();
    assert_eq!(err.reason(), RejectReason::Shutdown);
    assert_eq!((err.into_inner())(), 2);
    // A spawned task (no handle) comes back the same way.
    spawn_is_refused_and_handed_back(&outer);
    let exp = scrape(&registry);
    for id in ["outer", "inner"] {
        let c = counts(&exp, "executor", id);
        assert_eq!(
            (c.submitted, c.rejected, c.completed),
            (1.0, 2.0, 1.0),
            "{id}"
        );
        c.assert_invariant();
    }
}

/// A spawned task has no handle: it ends exactly once however its executor
/// ends it (runs it, it panics, abandons it, drops it), and its closure and
/// what it captured are gone once `join` returns.
#[test]
fn spawned_tasks_end_once_however_the_executor_ends_them() {
    let registry = Registry::new();
    let proxy =
        InstrumentedExecutorProxy::new(Held::default(), exporter(&registry, "held_spawn"), None);
    let captured = Arc::new(());
    let ran = Arc::new(AtomicUsize::new(0));
    for i in 0..4 {
        let (captured, ran) = (captured.clone(), ran.clone());
        proxy
            .spawn(move || {
                let _captured = &captured;
                if i == 1 {
                    panic!("spawned task {i} fails");
                }
                ran.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
    }
    let c = counts(&scrape(&registry), "executor", "held_spawn");
    assert_eq!((c.submitted, c.queued, c.running), (4.0, 4.0, 0.0));

    proxy.inner().take().run();
    proxy.inner().take().run(); // panics; caught and counted
    proxy.inner().take().abandon("the executor broke");
    drop(proxy.inner().take());
    proxy.join();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(Arc::strong_count(&captured), 1, "every closure is dropped");
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "held_spawn");
    assert_eq!(
        (
            c.submitted,
            c.queued,
            c.running,
            c.completed,
            c.failed,
            c.cancelled,
            c.wait_count
        ),
        (4.0, 0.0, 0.0, 1.0, 2.0, 1.0, 2.0),
        "{c:?}"
    );
    for reason in ["panic", "broken"] {
        let labels = [("executor", "held_spawn"), ("reason", reason)];
        assert_eq!(
            exp.value("executor_task_failures_total", &labels),
            1.0,
            "{reason}"
        );
    }
    c.assert_invariant();
}

/// The drop-in path: a `Task` given to the proxy through `&dyn Executor`
/// carries the proxy's bookkeeping in its own slot, and ends exactly once
/// however the executor ends it, as a spawned task does.
#[test]
fn executed_tasks_end_once_however_the_executor_ends_them() {
    let registry = Registry::new();
    let proxy =
        InstrumentedExecutorProxy::new(Held::default(), exporter(&registry, "held_exec"), None);
    let as_executor: &dyn Executor = &proxy;
    let captured = Arc::new(());
    let ran = Arc::new(AtomicUsize::new(0));
    for i in 0..4 {
        let (captured, ran) = (captured.clone(), ran.clone());
        as_executor
            .execute(Task::new(move || {
                let _captured = &captured;
                if i == 1 {
                    panic!("executed task {i} fails");
                }
                ran.fetch_add(1, Ordering::SeqCst);
            }))
            .unwrap();
    }
    proxy.inner().take().run();
    proxy.inner().take().run(); // panics; caught and counted
    proxy.inner().take().abandon("the executor broke");
    drop(proxy.inner().take());
    proxy.join();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(Arc::strong_count(&captured), 1, "every closure is dropped");
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "held_exec");
    assert_eq!(
        (
            c.submitted,
            c.completed,
            c.failed,
            c.cancelled,
            c.wait_count
        ),
        (4.0, 1.0, 2.0, 1.0, 2.0),
        "{c:?}"
    );
    for reason in ["panic", "broken"] {
        let labels = [("executor", "held_exec"), ("reason", reason)];
        assert_eq!(exp.value("executor_task_failures_total", &labels), 1.0);
    }
    c.assert_invariant();
}

/// A `Task` executed through a proxy over another proxy is counted by
/// each, and a refused one comes back as the very task given: running it
/// runs the caller's closure, and counts nothing more.
#[test]
fn a_task_executed_through_two_proxies_is_counted_by_each_and_handed_back_as_itself() {
    let registry = Registry::new();
    let inner = pool(&registry, "inner_exec", 1);
    let outer = InstrumentedExecutorProxy::new(inner, exporter(&registry, "outer_exec"), None);
    let as_executor: &dyn Executor = &outer;
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    as_executor
        .execute(Task::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();
    outer.join();
    assert_eq!(ran.load(Ordering::SeqCst), 1);

    outer.inner().shutdown();
    let r = ran.clone();
    let rejected = as_executor
        .execute(Task::new(move || {
            r.fetch_add(10, Ordering::SeqCst);
        }))
        .unwrap_err();
    assert_eq!(rejected.reason(), RejectReason::Shutdown);
    rejected.into_task().run();
    assert_eq!(
        ran.load(Ordering::SeqCst),
        11,
        "the caller's own task came back"
    );
    let exp = scrape(&registry);
    for id in ["outer_exec", "inner_exec"] {
        let c = counts(&exp, "executor", id);
        assert_eq!(
            (c.submitted, c.rejected, c.completed, c.cancelled),
            (1.0, 1.0, 1.0, 0.0),
            "{id}"
        );
        c.assert_invariant();
    }
}

/// The same through two proxies over an executor that refuses every task:
/// the inner proxy's task wraps the outer one's, and the caller still gets
/// its own task back, counted as rejected by each proxy.
#[test]
fn a_task_refused_under_two_proxies_comes_back_as_itself() {
    struct Refuses;
    impl Executor for Refuses {
        fn execute(&self, task: Task) -> Result<(), Rejected> {
            Err(Rejected::new(task, RejectReason::Full))
        }
    }
    let registry = Registry::new();
    let inner =
        InstrumentedExecutorProxy::new(Refuses, exporter(&registry, "refusing_inner"), None);
    let outer = InstrumentedExecutorProxy::new(inner, exporter(&registry, "refusing_outer"), None);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let rejected = Executor::execute(
        &outer,
        Task::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .unwrap_err();
    assert_eq!(rejected.reason(), RejectReason::Full);
    rejected.into_task().run();
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "the caller's own task came back"
    );
    let exp = scrape(&registry);
    for id in ["refusing_outer", "refusing_inner"] {
        let c = counts(&exp, "executor", id);
        assert_eq!(
            (c.submitted, c.rejected, c.completed),
            (0.0, 1.0, 0.0),
            "{id}"
        );
        c.assert_invariant();
    }
}

#[test]
fn submit_after_shutdown_is_rejected_counted_and_handed_back() {
    let registry = Registry::new();
    let pool = pool(&registry, "closed", 1);
    pool.submit(|| ()).unwrap().join().unwrap();
    pool.shutdown();
    pool.shutdown(); // idempotent
    let err = pool.submit(|| 7).unwrap_err();
    assert_eq!(err.reason(), RejectReason::Shutdown);
    assert_eq!((err.into_inner())(), 7);
    let c = counts(&scrape(&registry), "executor", "closed");
    assert_eq!((c.submitted, c.rejected, c.completed), (1.0, 1.0, 1.0));
    c.assert_invariant();
}

#[test]
fn a_pool_whose_workers_cannot_start_hands_each_task_back() {
    common::watchdog(120, || {
        let registry = Registry::new();
        let pool = ThreadPoolExecutor::builder()
            .max_workers(2)
            // No system gives a thread a stack this large.
            .stack_size(usize::MAX / 2)
            .exporter_id("no_threads")
            .registry(registry.clone())
            .build()
            .unwrap();
        for attempt in 0..2 {
            let err = pool.submit(move || attempt).unwrap_err();
            // Not `Broken`: the next submit tries to start a worker again.
            assert_eq!(err.reason(), RejectReason::NoWorker);
            assert!(err.to_string().contains("no worker thread"), "{err}");
            assert_eq!((err.into_inner())(), attempt);
        }
        pool.join();
        let exp = scrape(&registry);
        let c = counts(&exp, "executor", "no_threads");
        assert_eq!((c.submitted, c.rejected, c.completed), (0.0, 2.0, 0.0));
        let labels = [("executor", "no_threads")];
        assert_eq!(
            exp.value("executor_initialized_workers_total", &labels),
            0.0
        );
        c.assert_invariant();
    });
}

#[test]
fn shutdown_now_cancels_queued_tasks_and_finishes_running_ones() {
    let registry = Registry::new();
    let pool = pool(&registry, "now", 1);
    let gate = Gate::new();
    let started = Arc::new(AtomicUsize::new(0));
    let running = {
        let (gate, started) = (gate.clone(), started.clone());
        pool.submit(move || {
            started.fetch_add(1, Ordering::SeqCst);
            gate.wait();
            "done"
        })
        .unwrap()
    };
    let ran = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (0..10)
        .map(|_| {
            let ran = ran.clone();
            pool.submit(move || ran.fetch_add(1, Ordering::SeqCst))
                .unwrap()
        })
        .collect();
    common::eventually(30, "the first task to start", || {
        started.load(Ordering::SeqCst) == 1
    });
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            gate.open()
        })
    };
    common::watchdog(60, {
        let pool = Arc::new(pool);
        let p = pool.clone();
        move || {
            p.shutdown_now();
            p.shutdown_now(); // idempotent
        }
    });
    opener.join().unwrap();
    assert_eq!(running.join(), Ok("done"));
    for h in queued {
        assert_eq!(h.join(), Err(TaskError::Cancelled));
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    let c = counts(&scrape(&registry), "executor", "now");
    assert_eq!((c.submitted, c.completed, c.cancelled), (11.0, 1.0, 10.0));
    c.assert_invariant();
}

#[test]
fn pools_sharing_an_id_are_combined_and_distinct_ids_are_separate() {
    let registry = Registry::new();
    let a1 = pool(&registry, "shared", 2);
    let a2 = pool(&registry, "shared", 3);
    let b = pool(&registry, "other", 4);
    a1.submit(|| ()).unwrap().join().unwrap();
    a2.submit(|| ()).unwrap().join().unwrap();
    b.submit(|| ()).unwrap().join().unwrap();
    let exp = scrape(&registry);
    assert_eq!(
        exp.value("executor_max_workers", &[("executor", "shared")]),
        5.0
    );
    assert_eq!(
        exp.value("executor_max_workers", &[("executor", "other")]),
        4.0
    );
    assert_eq!(
        exp.value("executor_submitted_tasks_total", &[("executor", "shared")]),
        2.0
    );
    assert_eq!(
        exp.value("executor_submitted_tasks_total", &[("executor", "other")]),
        1.0
    );
    // One family each, holding both ids.
    assert_eq!(
        exp.text
            .matches("# TYPE executor_submitted_tasks_total")
            .count(),
        1
    );
}

#[test]
fn separate_registries_keep_the_same_id_apart() {
    let r1 = Registry::new();
    let r2 = Registry::new();
    let p1 = pool(&r1, "same", 1);
    let _p2 = pool(&r2, "same", 1);
    p1.submit(|| ()).unwrap().join().unwrap();
    assert_eq!(
        scrape(&r1).value("executor_submitted_tasks_total", &[("executor", "same")]),
        1.0
    );
    assert_eq!(
        scrape(&r2).value("executor_submitted_tasks_total", &[("executor", "same")]),
        0.0
    );
}

#[test]
fn custom_namespace_and_registry_with_a_users_own_metric() {
    let registry = Registry::new();
    let mine = IntCounter::with_opts(Opts::new("app_requests_total", "Requests.")).unwrap();
    registry.register(Box::new(mine.clone())).unwrap();
    let pool = ThreadPoolExecutor::builder()
        .namespace("render")
        .exporter_id("ns")
        .registry(registry.clone())
        .build()
        .unwrap();
    pool.submit(|| ()).unwrap().join().unwrap();
    mine.inc();
    let exp = scrape(&registry);
    assert_eq!(
        exp.value("render_submitted_tasks_total", &[("executor", "ns")]),
        1.0
    );
    assert!(exp
        .try_value("executor_submitted_tasks_total", &[])
        .is_none());
    assert_eq!(exp.value("app_requests_total", &[]), 1.0);
    // The exporter hands back the registry it uses.
    assert!(scrape(pool.exporter().registry())
        .try_value("app_requests_total", &[])
        .is_some());
    assert_eq!(pool.exporter().namespace(), "render");
}

#[test]
fn explicit_and_exponential_buckets() {
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .exporter_id("buckets")
        .registry(registry.clone())
        .wait_buckets(vec![0.001, 0.01, 0.1])
        .duration_buckets_exponential(0.001, 1.0, 10.0)
        .build()
        .unwrap();
    assert_eq!(pool.exporter().wait_buckets(), &[0.001, 0.01, 0.1]);
    pool.submit(|| ()).unwrap().join().unwrap();
    let exp = scrape(&registry);
    let les = |name: &str| -> Vec<String> {
        exp.matching(name, &[("executor", "buckets")])
            .filter(|s| s.labels.get("result").is_none_or(|r| r == "completed"))
            .map(|s| s.labels["le"].clone())
            .collect()
    };
    assert_eq!(
        les("executor_task_wait_seconds_bucket"),
        ["0.001", "0.01", "0.1", "+Inf"]
    );
    assert_eq!(
        les("executor_tasks_duration_seconds_bucket"),
        ["0.001", "0.01", "0.1", "1", "+Inf"]
    );
}

#[test]
fn bad_buckets_are_build_errors() {
    let build = |b: executor_exporter::ExecutorExporterBuilder| {
        b.registry(Registry::new()).build().unwrap_err()
    };
    let cases = vec![
        ("empty", ExecutorExporter::builder().wait_buckets(vec![])),
        (
            "unsorted",
            ExecutorExporter::builder().wait_buckets(vec![0.1, 0.01]),
        ),
        (
            "duplicate",
            ExecutorExporter::builder().duration_buckets(vec![0.1, 0.1]),
        ),
        (
            "nan",
            ExecutorExporter::builder().wait_buckets(vec![0.1, f64::NAN]),
        ),
        (
            "negative",
            ExecutorExporter::builder().wait_buckets(vec![-1.0, 1.0]),
        ),
        (
            "infinite",
            ExecutorExporter::builder().wait_buckets(vec![1.0, f64::INFINITY]),
        ),
        (
            "factor 1",
            ExecutorExporter::builder().wait_buckets_exponential(0.1, 10.0, 1.0),
        ),
        (
            "factor 0.5",
            ExecutorExporter::builder().duration_buckets_exponential(0.1, 10.0, 0.5),
        ),
        (
            "min 0",
            ExecutorExporter::builder().wait_buckets_exponential(0.0, 10.0, 2.0),
        ),
        (
            "max < min",
            ExecutorExporter::builder().wait_buckets_exponential(1.0, 0.5, 2.0),
        ),
        (
            "both",
            ExecutorExporter::builder()
                .wait_buckets(vec![1.0])
                .wait_buckets_exponential(0.1, 1.0, 2.0),
        ),
        (
            "1001 bounds",
            ExecutorExporter::builder().duration_buckets((1..=1001).map(f64::from).collect()),
        ),
    ];
    for (what, builder) in cases {
        let err = build(builder);
        assert!(err.is_buckets(), "{what}: {err}");
        assert!(err.to_string().contains("bucket"), "{what}: {err}");
    }
}

#[test]
fn bad_namespace_and_zero_workers_are_build_errors() {
    for ns in ["", "9lives", "has-dash", "space bar", "colon:s"] {
        let err = ExecutorExporter::builder()
            .namespace(ns)
            .registry(Registry::new())
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("namespace"), "{ns:?}: {err}");
    }
    let registry = Registry::new();
    let err = ThreadPoolExecutor::builder()
        .max_workers(0)
        .registry(registry.clone())
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "max_workers must be greater than 0");
    // A pool that failed to build created no series.
    assert!(scrape(&registry).samples.is_empty());
}

#[test]
fn an_incompatible_family_already_registered_is_an_error_not_a_panic() {
    let registry = Registry::new();
    let clash =
        IntCounter::with_opts(Opts::new("executor_submitted_tasks_total", "Mine.")).unwrap();
    registry.register(Box::new(clash)).unwrap();
    let err = ExecutorExporter::builder()
        .registry(registry.clone())
        .build()
        .unwrap_err();
    assert!(err.is_registry(), "{err}");
    // Same id and type with other buckets in the same registry: refused.
    let registry = Registry::new();
    let _first = ExecutorExporter::builder()
        .exporter_id("x")
        .registry(registry.clone())
        .build()
        .unwrap();
    let err = ExecutorExporter::builder()
        .exporter_id("x")
        .registry(registry.clone())
        .wait_buckets(vec![1.0])
        .build()
        .unwrap_err();
    assert!(err.is_registry(), "{err}");
}

#[test]
fn label_values_needing_escapes_round_trip_and_never_collide() {
    let registry = Registry::new();
    let nasty = "quote\" backslash\\ newline\n emoji 🦀";
    let a = ExecutorExporter::builder()
        .exporter_id(nasty)
        .executor_type("t")
        .registry(registry.clone())
        .build()
        .unwrap();
    // Joined naively, ("a", "bc") and ("ab", "c") are the same string.
    let x = ExecutorExporter::builder()
        .exporter_id("a")
        .executor_type("bc")
        .registry(registry.clone())
        .build()
        .unwrap();
    let y = ExecutorExporter::builder()
        .exporter_id("ab")
        .executor_type("c")
        .registry(registry.clone())
        .build()
        .unwrap();
    a.add_max_workers(1);
    x.add_max_workers(2);
    y.add_max_workers(3);
    let exp = scrape(&registry);
    let v = |id, ty| {
        exp.value(
            "executor_max_workers",
            &[("executor", id), ("executor_type", ty)],
        )
    };
    assert_eq!(v(nasty, "t"), 1.0);
    assert_eq!(v("a", "bc"), 2.0);
    assert_eq!(v("ab", "c"), 3.0);
}

#[test]
fn custom_exporter_recording_methods() {
    let registry = Registry::new();
    let exporter = ExecutorExporter::builder()
        .exporter_id("by-hand")
        .registry(registry.clone())
        .build()
        .unwrap();
    exporter.add_max_workers(8);
    exporter.worker_started();
    exporter.worker_started();
    exporter.worker_restarted();
    let exp = scrape(&registry);
    let l = [("executor", "by-hand"), ("executor_type", "custom")];
    assert_eq!(exp.value("executor_max_workers", &l), 8.0);
    assert_eq!(exp.value("executor_initialized_workers_total", &l), 2.0);
    assert_eq!(exp.value("executor_worker_restarts_total", &l), 1.0);
}

#[test]
fn default_registry_and_default_id() {
    let pool = ThreadPoolExecutor::new(1).unwrap();
    pool.submit(|| ()).unwrap().join().unwrap();
    pool.join();
    let exp = scrape(prometheus::default_registry());
    assert!(exp.value("executor_submitted_tasks_total", &[("executor", "default")]) >= 1.0);
}

#[test]
fn wait_is_observed_per_task_and_duration_has_the_sleep() {
    let registry = Registry::new();
    let pool = pool(&registry, "timing", 1);
    pool.submit(|| std::thread::sleep(std::time::Duration::from_millis(20)))
        .unwrap()
        .join()
        .unwrap();
    let exp = scrape(&registry);
    let sum = exp.value(
        "executor_tasks_duration_seconds_sum",
        &[("executor", "timing"), ("result", "completed")],
    );
    assert!(sum >= 0.020, "duration sum {sum}");
    assert_eq!(
        exp.value(
            "executor_task_wait_seconds_count",
            &[("executor", "timing")]
        ),
        1.0
    );
}

/// How many tasks of exporter `id` waited, and how many ran, longer than
/// 0.1 s (a default bucket bound), from the histograms' counts.
fn over_100ms(registry: &Registry, id: &str) -> (f64, f64) {
    let exp = scrape(registry);
    let over = |name: &str| {
        let all = exp.sum(&format!("{name}_count"), &[("executor", id)]);
        all - exp.sum(
            &format!("{name}_bucket"),
            &[("executor", id), ("le", "0.1")],
        )
    };
    (
        over("executor_task_wait_seconds"),
        over("executor_tasks_duration_seconds"),
    )
}

/// A task's wait and duration are its own, wherever it runs. Here a task
/// run inside another one (by a join on the only worker) waited behind the
/// outer task and ran for no time at all. (A worker that took a queued
/// task's start from the end of its previous task, to save a clock read
/// under a backlog, would give it the outer task's run.)
#[test]
fn a_task_joined_inside_another_on_a_worker_has_its_own_wait_and_duration() {
    let registry = Registry::new();
    let pool = pool(&registry, "nested_chain", 1);
    let gate = Gate::new();
    let open = gate.clone();
    // Holds the only worker while the others queue.
    pool.spawn(move || open.wait()).unwrap();
    pool.spawn(|| ()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<executor_exporter::TaskHandle<()>>();
    pool.spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        rx.recv().unwrap().join().unwrap();
    })
    .unwrap();
    tx.send(pool.submit(|| ()).unwrap()).unwrap();
    gate.open();
    pool.join();
    assert_eq!(
        counts(&scrape(&registry), "executor", "nested_chain").completed,
        4.0
    );
    // The joined task waited the outer task's 200 ms; only the outer one ran that long.
    assert_eq!(over_100ms(&registry, "nested_chain"), (1.0, 1.0));
}

/// Nor does a counted task's duration include an uncounted one that ran
/// just before it on the same worker (a proxy over a plain pool that also
/// runs plain tasks).
#[test]
fn an_uncounted_task_between_two_counted_ones_is_not_in_either_duration() {
    let registry = Registry::new();
    let plain = Arc::new(executor_exporter::ThreadPool::new(1).unwrap());
    let proxy = InstrumentedExecutorProxy::new(
        plain.clone(),
        exporter(&registry, "uncounted_between"),
        None,
    );
    let gate = Gate::new();
    let open = gate.clone();
    plain.execute(Task::new(move || open.wait())).unwrap();
    proxy.spawn(|| ()).unwrap();
    plain
        .execute(Task::new(|| {
            std::thread::sleep(std::time::Duration::from_millis(200))
        }))
        .unwrap();
    proxy.spawn(|| ()).unwrap();
    gate.open();
    proxy.join();
    assert_eq!(
        counts(&scrape(&registry), "executor", "uncounted_between").completed,
        2.0
    );
    // The second waited behind the plain task; neither ran for long.
    assert_eq!(over_100ms(&registry, "uncounted_between"), (1.0, 0.0));
}

/// Nor the drop of a cancelled task's closure, which the worker makes
/// when it takes that task from the queue.
#[test]
fn a_cancelled_tasks_drop_between_two_counted_ones_is_not_in_either_duration() {
    struct SlowDrop;
    impl Drop for SlowDrop {
        fn drop(&mut self) {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    let registry = Registry::new();
    let pool = pool(&registry, "cancelled_between", 1);
    let gate = Gate::new();
    let open = gate.clone();
    pool.spawn(move || open.wait()).unwrap();
    pool.spawn(|| ()).unwrap();
    let slow = SlowDrop;
    let cancelled = pool.submit(move || drop(slow)).unwrap();
    assert!(cancelled.cancel());
    pool.spawn(|| ()).unwrap();
    gate.open();
    pool.join();
    let c = counts(&scrape(&registry), "executor", "cancelled_between");
    assert_eq!((c.completed, c.cancelled), (3.0, 1.0));
    // The last task waited behind the drop; no task ran for long.
    assert_eq!(over_100ms(&registry, "cancelled_between"), (1.0, 0.0));
}

/// An executor that only holds its tasks: the test runs, abandons or drops
/// each one itself.
#[derive(Default)]
struct Held(std::sync::Mutex<std::collections::VecDeque<executor_exporter::Task>>);

impl executor_exporter::Executor for Held {
    fn execute(&self, task: executor_exporter::Task) -> Result<(), Rejected> {
        self.0.lock().unwrap().push_back(task);
        Ok(())
    }
}

impl Held {
    fn take(&self) -> executor_exporter::Task {
        self.0.lock().unwrap().pop_front().unwrap()
    }
}

/// Reads, when dropped, how many tasks of exporter `probe` had ended as
/// cancelled or failed by then.
struct Probe {
    registry: Registry,
    seen: Arc<std::sync::Mutex<Vec<f64>>>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let c = counts(&scrape(&self.registry), "executor", "probe");
        self.seen.lock().unwrap().push(c.cancelled + c.failed);
    }
}

/// A task its executor drops or abandons ends after its closure (and what
/// the closure captured) is dropped, so whoever `join`s sees the captures
/// gone; with or without a handle.
#[test]
fn a_task_the_executor_drops_or_abandons_ends_after_its_closure_is_dropped() {
    let registry = Registry::new();
    let proxy = executor_exporter::InstrumentedExecutorProxy::new(
        Held::default(),
        exporter(&registry, "probe"),
        None,
    );
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let probe = || Probe {
        registry: registry.clone(),
        seen: seen.clone(),
    };
    let p = probe();
    let dropped = proxy.submit(move || drop(p)).unwrap();
    let p = probe();
    let abandoned = proxy.submit(move || drop(p)).unwrap();
    let p = probe();
    proxy.spawn(move || drop(p)).unwrap();
    let p = probe();
    proxy.spawn(move || drop(p)).unwrap();
    for i in 0..4 {
        let task = proxy.inner().take();
        if i % 2 == 0 {
            drop(task);
        } else {
            task.abandon("the executor broke");
        }
    }
    assert_eq!(*seen.lock().unwrap(), [0.0, 1.0, 2.0, 3.0]);
    assert_eq!(dropped.join(), Err(TaskError::Cancelled));
    assert!(matches!(abandoned.join(), Err(TaskError::Broken { .. })));
    let c = counts(&scrape(&registry), "executor", "probe");
    assert_eq!((c.submitted, c.cancelled, c.failed), (4.0, 2.0, 2.0));
    c.assert_invariant();
}

/// A reason whose conversion to a `String` panics.
struct PanickingReason;

impl From<PanickingReason> for String {
    fn from(_: PanickingReason) -> String {
        panic!("no reason")
    }
}

/// `Task::abandon` whose reason panics on conversion still ends the task
/// (cancelled, by the task's drop), so `join` does not wait forever.
#[test]
fn abandoning_with_a_panicking_reason_still_ends_the_task() {
    let registry = Registry::new();
    let proxy = executor_exporter::InstrumentedExecutorProxy::new(
        Held::default(),
        exporter(&registry, "bad_reason"),
        None,
    );
    proxy.spawn(|| ()).unwrap();
    let task = proxy.inner().take();
    let abandoned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        task.abandon(PanickingReason)
    }));
    assert!(abandoned.is_err());
    common::watchdog(60, move || proxy.join());
    let c = counts(&scrape(&registry), "executor", "bad_reason");
    assert_eq!((c.submitted, c.cancelled), (1.0, 1.0));
    c.assert_invariant();
}

/// An executor whose `execute` panics, after doing nothing with the task or
/// after running it.
struct PanicsInExecute {
    run_first: bool,
}

impl Executor for PanicsInExecute {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        if self.run_first {
            task.run();
        }
        panic!("execute is broken")
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// A panic in the executor's `execute` reaches the caller of `submit` and
/// `spawn`, and the task is counted once: the executor took it, so it is
/// submitted, and it ends as whatever the executor did with it (dropped
/// while unwinding: cancelled; run first: completed). Dropping the proxy
/// then returns.
#[test]
fn a_panic_in_execute_reaches_the_caller_and_the_task_is_counted_once() {
    for run_first in [false, true] {
        let registry = Registry::new();
        let id = if run_first {
            "ran_then_panicked"
        } else {
            "panicked"
        };
        let proxy = InstrumentedExecutorProxy::new(
            PanicsInExecute { run_first },
            exporter(&registry, id),
            None,
        );
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let submitted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            proxy.submit(move || r.fetch_add(1, Ordering::SeqCst))
        }));
        assert_eq!(panic_text(submitted.unwrap_err()), "execute is broken");
        let r = ran.clone();
        let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            proxy.spawn(move || {
                r.fetch_add(1, Ordering::SeqCst);
            })
        }));
        assert_eq!(panic_text(spawned.unwrap_err()), "execute is broken");
        let c = counts(&scrape(&registry), "executor", id);
        c.assert_invariant();
        let (completed, cancelled) = if run_first { (2.0, 0.0) } else { (0.0, 2.0) };
        assert_eq!(ran.load(Ordering::SeqCst), completed as usize);
        assert_eq!(
            (c.submitted, c.rejected, c.completed, c.cancelled, c.failed),
            (2.0, 0.0, completed, cancelled, 0.0),
            "{id}: {c:?}"
        );
        assert_eq!((c.queued, c.running), (0.0, 0.0), "{id}");
        common::watchdog(10, move || drop(proxy));
    }
}

/// The gauges are derived from the counts at scrape time: exact while tasks
/// are queued, running, cancelled or failed without starting, and 0 at the
/// end.
#[test]
fn derived_gauges_are_exact_through_every_way_a_task_ends() {
    let registry = Registry::new();
    let exporter = ExecutorExporter::builder()
        .exporter_id("held")
        .registry(registry.clone())
        .build()
        .unwrap();
    let proxy = executor_exporter::InstrumentedExecutorProxy::new(Held::default(), exporter, None);
    let gate = Gate::new();
    let started = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (gate, started) = (gate.clone(), started.clone());
            proxy
                .submit(move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    gate.wait()
                })
                .unwrap()
        })
        .collect();
    let c = counts(&scrape(&registry), "executor", "held");
    assert_eq!((c.submitted, c.queued, c.running), (8.0, 8.0, 0.0));

    // Two run on threads of their own, behind the gate.
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let task = proxy.inner().take();
            std::thread::spawn(move || task.run())
        })
        .collect();
    common::eventually(30, "two tasks running", || {
        started.load(Ordering::SeqCst) == 2
    });
    // One fails without starting, one is dropped by the executor, one is
    // cancelled through its handle while still queued.
    proxy.inner().take().abandon("the executor broke");
    drop(proxy.inner().take());
    assert!(handles[7].cancel());
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "held");
    assert_eq!(
        (c.running, c.queued, c.cancelled, c.failed, c.wait_count),
        (2.0, 3.0, 2.0, 1.0, 2.0),
        "{c:?}"
    );
    let broken = [("executor", "held"), ("reason", "broken")];
    assert_eq!(exp.value("executor_task_failures_total", &broken), 1.0);
    c.assert_invariant();

    gate.open();
    while let Some(task) = proxy.inner().0.lock().unwrap().pop_front() {
        task.run();
    }
    for w in workers {
        w.join().unwrap();
    }
    for (i, h) in handles.into_iter().enumerate() {
        match i {
            2 => assert!(matches!(h.join(), Err(TaskError::Broken { .. }))),
            3 | 7 => assert_eq!(h.join(), Err(TaskError::Cancelled)),
            _ => assert_eq!(h.join(), Ok(())),
        }
    }
    proxy.join();
    let c = counts(&scrape(&registry), "executor", "held");
    assert_eq!(
        (
            c.submitted,
            c.queued,
            c.running,
            c.completed,
            c.failed,
            c.cancelled
        ),
        (8.0, 0.0, 0.0, 5.0, 1.0, 2.0),
        "{c:?}"
    );
    assert_eq!(c.wait_count, 5.0);
    c.assert_invariant();
}

/// Scrapes while two threads submit, cancel and join tasks that complete,
/// panic or fail: the derived gauges never go below zero (the collector
/// debug-asserts it for `running_tasks` before clamping), and once every
/// task has ended they are exactly 0 with every count exact.
#[test]
fn gauges_stay_sound_under_concurrent_scrapes() {
    let registry = Registry::new();
    let pool = Arc::new(pool(&registry, "racing", 2));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let (registry, done) = (registry.clone(), done.clone());
        std::thread::spawn(move || {
            let mut scrapes = 0;
            while !done.load(Ordering::SeqCst) {
                let c = counts(&scrape(&registry), "executor", "racing");
                assert!(c.queued >= 0.0 && c.running >= 0.0, "{c:?}");
                scrapes += 1;
            }
            scrapes
        })
    };
    let submitters: Vec<_> = (0..2u64)
        .map(|s| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let (mut completed, mut failed, mut cancelled) = (0u64, 0u64, 0u64);
                for i in 0..4_000u64 {
                    let h = pool
                        .submit_fallible(move || match (i + s) % 7 {
                            0 => Err("no"),
                            _ => Ok(std::hint::black_box(i)),
                        })
                        .unwrap();
                    if i % 5 == 0 && h.cancel() {
                        cancelled += 1;
                        continue;
                    }
                    match h.join() {
                        Ok(Ok(_)) => completed += 1,
                        Ok(Err(_)) => failed += 1,
                        Err(e) => panic!("{e:?}"),
                    }
                }
                (completed, failed, cancelled)
            })
        })
        .collect();
    let (mut completed, mut failed, mut cancelled) = (0, 0, 0);
    for s in submitters {
        let (c, f, x) = s.join().unwrap();
        (completed, failed, cancelled) = (completed + c, failed + f, cancelled + x);
    }
    pool.join();
    done.store(true, Ordering::SeqCst);
    assert!(scraper.join().unwrap() > 0);
    let c = counts(&scrape(&registry), "executor", "racing");
    assert_eq!(
        (c.submitted, c.queued, c.running, c.cancelled),
        (8_000.0, 0.0, 0.0, cancelled as f64),
        "{c:?}"
    );
    assert_eq!((c.completed, c.failed), (completed as f64, failed as f64));
    assert_eq!(c.wait_count, (completed + failed) as f64);
    c.assert_invariant();
}

#[test]
fn max_workers_is_the_capacity_of_the_live_pools_with_the_id() {
    let registry = Registry::new();
    let l = [("executor", "dup"), ("executor_type", "thread_pool")];
    let max = |registry: &Registry| scrape(registry).value("executor_max_workers", &l);
    let four = pool(&registry, "dup", 4);
    let two = pool(&registry, "dup", 2);
    assert_eq!(max(&registry), 6.0);
    drop(four);
    drop(two);
    assert_eq!(max(&registry), 0.0);
    let again = pool(&registry, "dup", 4);
    assert_eq!(max(&registry), 4.0);
    // Shut down but not dropped: the capacity is gone, and only once.
    again.shutdown();
    assert_eq!(max(&registry), 0.0);
    again.shutdown();
    drop(again);
    assert_eq!(max(&registry), 0.0);
}

#[test]
fn max_workers_of_a_proxy_goes_when_the_proxy_goes() {
    let registry = Registry::new();
    let l = [("executor", "wrapped")];
    let proxy = InstrumentedExecutorProxy::new(
        executor_exporter::ThreadPool::new(3).unwrap(),
        exporter(&registry, "wrapped"),
        Some(5),
    );
    assert_eq!(scrape(&registry).value("executor_max_workers", &l), 5.0);
    drop(proxy);
    assert_eq!(scrape(&registry).value("executor_max_workers", &l), 0.0);
    // By hand, for an executor the crate does not wrap.
    let by_hand = exporter(&registry, "wrapped");
    by_hand.add_max_workers(8);
    by_hand.remove_max_workers(8);
    assert_eq!(scrape(&registry).value("executor_max_workers", &l), 0.0);
}

#[test]
fn workers_counts_the_threads_alive() {
    let registry = Registry::new();
    let l = [("executor", "alive"), ("executor_type", "thread_pool")];
    let workers = |registry: &Registry| scrape(registry).value("executor_workers", &l);
    let p = pool(&registry, "alive", 4);
    assert_eq!(workers(&registry), 0.0);
    let gate = Gate::new();
    let running = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let (gate, running) = (gate.clone(), running.clone());
            p.submit(move || {
                running.fetch_add(1, Ordering::SeqCst);
                gate.wait();
            })
            .unwrap()
        })
        .collect();
    common::eventually(10, "3 tasks running", || {
        running.load(Ordering::SeqCst) == 3
    });
    assert_eq!(workers(&registry), 3.0);
    assert_eq!(
        scrape(&registry).value("executor_running_tasks", &l),
        3.0,
        "idle workers = workers - running = 0"
    );
    gate.open();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(workers(&registry), 3.0, "idle threads stay alive");
    drop(p);
    assert_eq!(workers(&registry), 0.0);
}

#[test]
fn custom_exporter_reports_its_workers() {
    let registry = Registry::new();
    let e = exporter(&registry, "custom-workers");
    e.worker_started();
    e.worker_started();
    e.worker_stopped();
    let exp = scrape(&registry);
    let l = [("executor", "custom-workers")];
    assert_eq!(exp.value("executor_workers", &l), 1.0);
    assert_eq!(exp.value("executor_initialized_workers_total", &l), 2.0);
}

/// `snapshot()` reads what a scrape reads: under four concurrent submitters
/// (completions, panics, `Err`s, cancels) its counters never go back, and
/// once the pool is idle every family of the exposition equals the
/// snapshot's number and the invariant holds.
#[test]
fn snapshot_agrees_with_the_exposition_under_concurrent_load() {
    use executor_exporter::FailureReason;

    let registry = Registry::new();
    let pool = Arc::new(pool(&registry, "snap", 3));
    let before = pool.snapshot();
    let submitters: Vec<_> = (0..4u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for i in 0..400u64 {
                    match (i + t) % 4 {
                        0 => drop(pool.submit(move || i)),
                        1 => drop(pool.submit(move || {
                            assert!(i % 8 != 1, "task {i} panics");
                            i
                        })),
                        2 => {
                            drop(pool.submit_fallible(
                                move || if i % 3 == 0 { Err("odd") } else { Ok(i) },
                            ))
                        }
                        _ => {
                            if let Ok(h) = pool.submit(move || i) {
                                h.cancel();
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let mut last = pool.snapshot();
    while !submitters.iter().all(|t| t.is_finished()) {
        let now = pool.snapshot();
        for (a, b) in [
            (now.submitted, last.submitted),
            (now.completed, last.completed),
            (now.failed, last.failed),
            (now.cancelled, last.cancelled),
        ] {
            assert!(a >= b, "a counter went back: {last:?} then {now:?}");
        }
        last = now;
    }
    for t in submitters {
        t.join().unwrap();
    }
    pool.join();
    let snap = pool.snapshot();
    snap.check_invariant().unwrap();
    let did = snap.clone() - before;
    assert_eq!(did.submitted, 1600);
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "snap");
    let l = [("executor", "snap")];
    let as_f64 = |n: u64| n as f64;
    assert_eq!(c.submitted, as_f64(snap.submitted));
    assert_eq!(c.rejected, as_f64(snap.rejected));
    assert_eq!(c.queued, snap.queued as f64);
    assert_eq!(c.running, snap.running as f64);
    assert_eq!(c.completed, as_f64(snap.completed));
    assert_eq!(c.failed, as_f64(snap.failed));
    assert_eq!(c.cancelled, as_f64(snap.cancelled));
    for r in FailureReason::ALL {
        let scraped = exp.sum(
            "executor_task_failures_total",
            &[("executor", "snap"), ("reason", r.as_str())],
        );
        assert_eq!(scraped, as_f64(snap.failures(r)), "{r}");
    }
    assert_eq!(
        exp.value("executor_max_workers", &l),
        snap.max_workers as f64
    );
    assert_eq!(exp.value("executor_workers", &l), snap.workers as f64);
    assert_eq!(
        exp.value("executor_initialized_workers_total", &l),
        as_f64(snap.initialized_workers)
    );
    assert_eq!(
        exp.value("executor_worker_restarts_total", &l),
        as_f64(snap.worker_restarts)
    );
    assert!(snap.failures(FailureReason::Panic) > 0 && snap.failures(FailureReason::Error) > 0);
}

/// An invariant that does not hold is an error naming the numbers.
#[test]
fn a_snapshot_whose_counts_do_not_add_up_names_them() {
    let registry = Registry::new();
    let p = pool(&registry, "counts", 1);
    p.submit(|| 1).unwrap().join().unwrap();
    p.join();
    let mut snap = p.snapshot();
    snap.check_invariant().unwrap();
    // A task the executor lost: submitted, never ended.
    snap.submitted += 1;
    let err = snap.check_invariant().unwrap_err();
    assert_eq!(err.snapshot().submitted, 2);
    assert_eq!(
        err.to_string(),
        "the task counts do not add up: submitted 2 != queued 0 + running 0 + completed 1 \
         + failed 0 + cancelled 0; failures by reason []"
    );
    // The difference of two snapshots shows a gauge going down.
    let idle = p.snapshot();
    drop(p);
    let gone = ExecutorExporter::builder()
        .exporter_id("counts")
        .registry(registry.clone())
        .executor_type("thread_pool")
        .build()
        .unwrap()
        .snapshot();
    assert_eq!((gone - idle).max_workers, -1);
}

fn age(registry: &Registry, id: &str, family: &str) -> f64 {
    scrape(registry).value(family, &[("executor", id)])
}

const RUNNING_AGE: &str = "executor_oldest_running_task_seconds";
const QUEUED_AGE: &str = "executor_oldest_queued_task_seconds";

/// A task blocked on a gate: while it blocks, the running age is at least
/// the time since it was seen started; tasks queued behind it (one
/// worker) show a queued age of at least their wait; once all have ended,
/// both ages are 0.
#[test]
fn the_ages_of_a_blocked_task_and_of_the_tasks_queued_behind_it() {
    let registry = Registry::new();
    let pool = pool(&registry, "ages", 1);
    assert_eq!(age(&registry, "ages", RUNNING_AGE), 0.0);
    assert_eq!(age(&registry, "ages", QUEUED_AGE), 0.0);
    let gate = Gate::new();
    let started = Arc::new(AtomicUsize::new(0));
    let blocked = {
        let (gate, started) = (gate.clone(), started.clone());
        pool.submit(move || {
            started.fetch_add(1, Ordering::SeqCst);
            gate.wait()
        })
        .unwrap()
    };
    common::eventually(30, "the task running", || {
        started.load(Ordering::SeqCst) == 1
    });
    let seen_running = std::time::Instant::now();
    let queued: Vec<_> = (0..2).map(|i| pool.submit(move || i).unwrap()).collect();
    let submitted = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (ran_for, waited_for) = (
        seen_running.elapsed().as_secs_f64(),
        submitted.elapsed().as_secs_f64(),
    );
    let exp = scrape(&registry);
    // Opened before asserting: a failed assert must not leave the pool's
    // drop waiting for the blocked task.
    gate.open();
    let running_age = exp.value(RUNNING_AGE, &[("executor", "ages")]);
    let queued_age = exp.value(QUEUED_AGE, &[("executor", "ages")]);
    assert!(running_age >= ran_for, "{running_age} < {ran_for}");
    assert!(queued_age >= waited_for, "{queued_age} < {waited_for}");
    // Sane values, not a clock read as garbage (generous: no timing target).
    assert!(running_age < ran_for + 60.0, "{running_age}");
    blocked.join().unwrap();
    for (i, h) in queued.into_iter().enumerate() {
        assert_eq!(h.join(), Ok(i));
    }
    pool.join();
    assert_eq!(age(&registry, "ages", RUNNING_AGE), 0.0);
    assert_eq!(age(&registry, "ages", QUEUED_AGE), 0.0);
}

/// Workers busy with a long task, and a task submitted long after it: the
/// queued age is the waiting task's own, not the time since the long task
/// was submitted (which a bound read from the starts would give).
#[test]
fn the_queued_age_is_the_waiting_tasks_own_not_the_time_since_the_last_start() {
    let registry = Registry::new();
    let pool = pool(&registry, "late", 1);
    let gate = Gate::new();
    let started = Arc::new(AtomicUsize::new(0));
    let blocked = {
        let (gate, started) = (gate.clone(), started.clone());
        pool.submit(move || {
            started.fetch_add(1, Ordering::SeqCst);
            gate.wait()
        })
        .unwrap()
    };
    common::eventually(30, "the task running", || {
        started.load(Ordering::SeqCst) == 1
    });
    std::thread::sleep(std::time::Duration::from_millis(400));
    let before_submit = std::time::Instant::now();
    let late = pool.submit(|| 7).unwrap();
    let after_submit = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let exp = scrape(&registry);
    let (at_least, at_most) = (
        after_submit.elapsed().as_secs_f64(),
        before_submit.elapsed().as_secs_f64(),
    );
    gate.open();
    let queued_age = exp.value(QUEUED_AGE, &[("executor", "late")]);
    // 10 ms of slack each way for the clock's calibration against `Instant`.
    assert!(queued_age + 0.01 >= at_least, "{queued_age} < {at_least}");
    assert!(queued_age <= at_most + 0.01, "{queued_age} > {at_most}");
    blocked.join().unwrap();
    assert_eq!(late.join(), Ok(7));
    pool.join();
    assert_eq!(age(&registry, "late", QUEUED_AGE), 0.0);
}

/// A task that runs another task of the same executor on its own thread
/// (it joins a task queued behind it on the pool's only worker, or its
/// executor runs tasks inline) is still seen running once the inner task
/// has ended.
#[test]
fn a_task_that_ran_another_inline_still_shows_its_age() {
    /// Runs each task on the caller.
    struct Inline;
    impl Executor for Inline {
        fn execute(&self, task: Task) -> Result<(), Rejected> {
            task.run();
            Ok(())
        }
    }
    let registry = Registry::new();
    let pool = Arc::new(pool(&registry, "nested", 1));
    let inline = Arc::new(InstrumentedExecutorProxy::new(
        Inline,
        exporter(&registry, "inline"),
        None,
    ));
    let gate = Gate::new();
    let inner_done = Arc::new(AtomicUsize::new(0));
    let outer = {
        let (pool2, gate, inner_done) = (pool.clone(), gate.clone(), inner_done.clone());
        pool.submit(move || {
            // Queued behind this task on the only worker: the join runs it here.
            assert_eq!(pool2.submit(|| 7).unwrap().join(), Ok(7));
            inner_done.fetch_add(1, Ordering::SeqCst);
            gate.wait();
        })
        .unwrap()
    };
    let inline_outer = {
        let (inline2, gate, inner_done) = (inline.clone(), gate.clone(), inner_done.clone());
        std::thread::spawn(move || {
            inline2
                .spawn({
                    let inline3 = inline2.clone();
                    move || {
                        inline3.spawn(|| {}).unwrap();
                        inner_done.fetch_add(1, Ordering::SeqCst);
                        gate.wait();
                    }
                })
                .unwrap();
        })
    };
    common::eventually(30, "both inner tasks ended", || {
        inner_done.load(Ordering::SeqCst) == 2
    });
    let seen = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let at_least = seen.elapsed().as_secs_f64();
    let exp = scrape(&registry);
    // Opened before asserting, as above.
    gate.open();
    for id in ["nested", "inline"] {
        let running_age = exp.try_value(RUNNING_AGE, &[("executor", id)]);
        assert!(
            running_age.is_some_and(|a| a >= at_least),
            "{id}: {running_age:?} < {at_least}"
        );
    }
    outer.join().unwrap();
    inline_outer.join().unwrap();
    pool.join();
    for id in ["nested", "inline"] {
        assert_eq!(age(&registry, id, RUNNING_AGE), 0.0, "{id}");
        assert_eq!(age(&registry, id, QUEUED_AGE), 0.0, "{id}");
    }
}

/// A custom executor that keeps its own queue: the proxy cannot look into
/// it, so the queued age is bounded from the starts (documented): at least
/// the oldest waiting task's age, exact once the queue drains (0). The
/// running age is the proxy's own, exact.
#[test]
fn a_custom_executors_queue_age_is_read_from_the_submits() {
    #[derive(Clone, Default)]
    struct Held(Arc<std::sync::Mutex<Vec<Task>>>);
    impl Executor for Held {
        fn execute(&self, task: Task) -> Result<(), Rejected> {
            self.0.lock().unwrap().push(task);
            Ok(())
        }
    }
    let registry = Registry::new();
    let held = Held::default();
    let proxy = InstrumentedExecutorProxy::new(held.clone(), exporter(&registry, "held"), None);
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let ran = ran.clone();
        proxy
            .spawn(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
    }
    let submitted = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let waited_for = submitted.elapsed().as_secs_f64();
    let exp = scrape(&registry);
    let (queued_age, running_age) = (
        exp.try_value(QUEUED_AGE, &[("executor", "held")]),
        exp.try_value(RUNNING_AGE, &[("executor", "held")]),
    );
    // Run them before asserting: a failed assert must not leave the proxy's
    // drop waiting for tasks nobody runs.
    let tasks = std::mem::take(&mut *held.0.lock().unwrap());
    for task in tasks {
        task.run();
    }
    let queued_age = queued_age.expect("a queued age");
    assert!(queued_age >= waited_for, "{queued_age} < {waited_for}");
    assert_eq!(running_age, Some(0.0));
    assert_eq!(ran.load(Ordering::SeqCst), 3);
    assert_eq!(age(&registry, "held", QUEUED_AGE), 0.0);
    assert_eq!(age(&registry, "held", RUNNING_AGE), 0.0);
}

/// A scrape made as a thread exits (a last push from a thread-local's destructor, say), after the
/// crate's own thread-locals on that thread are gone, still reads every series. Thread-locals are
/// destroyed in the reverse order of their first use, so the guard, used first, goes last.
#[test]
fn a_scrape_from_a_thread_locals_destructor_at_thread_exit_reads_the_series() {
    struct ScrapeOnExit(std::cell::RefCell<Option<(Registry, std::sync::mpsc::Sender<f64>)>>);
    impl Drop for ScrapeOnExit {
        fn drop(&mut self) {
            if let Some((registry, sent)) = self.0.borrow_mut().take() {
                let _ = sent.send(counts(&scrape(&registry), "executor", "at_exit").submitted);
            }
        }
    }
    thread_local! {
        static ON_EXIT: ScrapeOnExit = const { ScrapeOnExit(std::cell::RefCell::new(None)) };
    }
    let registry = Registry::new();
    let pool = pool(&registry, "at_exit", 1);
    pool.submit(|| ()).unwrap().join().unwrap();
    let (sent, got) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        ON_EXIT.with(|guard| *guard.0.borrow_mut() = Some((registry.clone(), sent)));
        // A scrape now, on this thread: the crate's thread-locals are used after the guard.
        scrape(&registry);
    });
    assert!(thread.join().is_ok(), "the thread exits without a panic");
    assert_eq!(got.recv().unwrap(), 1.0);
}

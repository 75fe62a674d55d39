//! rayon support: `rayon::ThreadPool` as an `Executor`, and `RayonExecutor`
//! (worker start-up counted, user start handler kept). Every value is read
//! back from the text exposition.
#![cfg(feature = "rayon")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{counts, eventually, scrape, watchdog, Gate};
use executor_exporter::prometheus::Registry;
use executor_exporter::{ExecutorExporter, InstrumentedExecutorProxy, RayonExecutor, TaskError};
use rayon::prelude::*;

fn rayon_pool(registry: &Registry, id: &str, threads: usize) -> RayonExecutor {
    RayonExecutor::builder(rayon::ThreadPoolBuilder::new().num_threads(threads))
        .exporter_id(id)
        .registry(registry.clone())
        .build()
        .unwrap()
}

#[test]
fn smoke_builder_counts_every_worker_and_reports_rayon() {
    let registry = Registry::new();
    let pool = rayon_pool(&registry, "smoke", 3);
    // A broadcast runs once on every worker, after its start handler.
    pool.inner().broadcast(|_| ());
    let exp = scrape(&registry);
    let l = [("executor", "smoke"), ("executor_type", "rayon")];
    assert_eq!(exp.value("executor_max_workers", &l), 3.0);
    assert_eq!(exp.value("executor_initialized_workers_total", &l), 3.0);
    assert_eq!(exp.value("executor_submitted_tasks_total", &l), 0.0);
    assert_eq!(pool.current_num_threads(), 3);
    assert_eq!(pool.max_workers(), Some(3));
}

#[test]
fn user_start_handler_runs_once_per_worker_before_the_count() {
    let registry = Registry::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let pool = RayonExecutor::builder(rayon::ThreadPoolBuilder::new().num_threads(4))
        .start_handler(move |index| log.lock().unwrap().push(index))
        .exporter_id("handler")
        .registry(registry.clone())
        .build()
        .unwrap();
    pool.inner().broadcast(|_| ());
    let mut indices = seen.lock().unwrap().clone();
    indices.sort_unstable();
    assert_eq!(indices, [0, 1, 2, 3]);
    let exp = scrape(&registry);
    assert_eq!(
        exp.value(
            "executor_initialized_workers_total",
            &[("executor", "handler")]
        ),
        4.0
    );
}

#[test]
fn rayon_thread_pool_is_an_executor_behind_a_proxy() {
    let registry = Registry::new();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let exporter = ExecutorExporter::builder()
        .exporter_id("wrapped")
        .executor_type("rayon")
        .registry(registry.clone())
        .build()
        .unwrap();
    let proxy = InstrumentedExecutorProxy::new(pool, exporter, None);
    let results: Vec<u32> = proxy
        .map(|x: u32| x + 1, 0..10)
        .map(Result::unwrap)
        .collect();
    assert_eq!(results, (1..=10).collect::<Vec<_>>());
    proxy.join();
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "wrapped");
    assert_eq!(c.submitted, 10.0);
    assert_eq!(c.completed, 10.0);
    assert_eq!(c.wait_count, 10.0);
    c.assert_invariant();
    assert_eq!(
        exp.value("executor_max_workers", &[("executor", "wrapped")]),
        2.0
    );
    // An existing pool's workers have already started: not counted.
    assert_eq!(
        exp.value(
            "executor_initialized_workers_total",
            &[("executor", "wrapped")]
        ),
        0.0
    );
}

#[test]
fn a_proxy_built_from_a_builder_takes_the_executors_own_type() {
    let registry = Registry::new();
    let pool = || {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
    };
    let builder = |id: &str| {
        ExecutorExporter::builder()
            .exporter_id(id)
            .registry(registry.clone())
    };
    let unset = InstrumentedExecutorProxy::from_builder(pool(), builder("unset"), None).unwrap();
    let set = InstrumentedExecutorProxy::from_builder(
        pool(),
        builder("set").executor_type("render"),
        None,
    )
    .unwrap();
    for proxy in [&unset, &set] {
        assert_eq!(proxy.submit(|| 1).unwrap().join(), Ok(1));
    }
    let exp = scrape(&registry);
    for (id, ty) in [("unset", "rayon"), ("set", "render")] {
        let labels = [("executor", id), ("executor_type", ty)];
        assert_eq!(
            exp.value("executor_submitted_tasks_total", &labels),
            1.0,
            "{id}"
        );
    }
}

#[test]
fn queued_and_running_tasks_are_seen_while_workers_are_busy() {
    let registry = Registry::new();
    let pool = rayon_pool(&registry, "busy", 2);
    let gate = Gate::new();
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let gate = gate.clone();
            pool.submit(move || gate.wait()).unwrap()
        })
        .collect();
    eventually(10, "two running, three queued", || {
        let c = counts(&scrape(&registry), "executor", "busy");
        c.running == 2.0 && c.queued == 3.0
    });
    let c = counts(&scrape(&registry), "executor", "busy");
    assert_eq!(c.submitted, 5.0);
    c.assert_invariant();
    gate.open();
    for handle in handles {
        assert_eq!(handle.join(), Ok(()));
    }
    pool.join();
    let c = counts(&scrape(&registry), "executor", "busy");
    assert_eq!((c.completed, c.running, c.queued), (5.0, 0.0, 0.0));
    assert_eq!(c.wait_count, 5.0);
    c.assert_invariant();
}

#[test]
fn par_iter_inside_a_task_is_one_task() {
    let registry = Registry::new();
    let pool = rayon_pool(&registry, "nested", 2);
    let sum = pool
        .submit(|| (1..=10_000u64).into_par_iter().map(|x| x % 7).sum::<u64>())
        .unwrap();
    assert_eq!(sum.join(), Ok((1..=10_000u64).map(|x| x % 7).sum()));
    pool.join();
    let c = counts(&scrape(&registry), "executor", "nested");
    assert_eq!((c.submitted, c.completed), (1.0, 1.0));
}

#[test]
fn install_is_not_seen() {
    let registry = Registry::new();
    let pool = rayon_pool(&registry, "install", 2);
    let total: u64 = pool.install(|| (0..1000u64).into_par_iter().sum());
    assert_eq!(total, 499_500);
    let c = counts(&scrape(&registry), "executor", "install");
    assert_eq!(c.submitted, 0.0);
    assert_eq!(c.wait_count, 0.0);
}

#[test]
fn spawn_counts_panics_and_errors_without_aborting() {
    let registry = Registry::new();
    let pool = rayon_pool(&registry, "spawned", 2);
    let ran = Arc::new(AtomicUsize::new(0));
    for i in 0..6 {
        let ran = ran.clone();
        pool.spawn(move || {
            ran.fetch_add(1, Ordering::SeqCst);
            if i % 3 == 0 {
                panic!("task {i} fails");
            }
        });
    }
    let failed = pool.submit_fallible(|| "x".parse::<u8>()).unwrap();
    assert!(failed.join().unwrap().is_err());
    let boom = pool.submit(|| -> u8 { panic!("boom") }).unwrap();
    assert!(matches!(boom.join(), Err(TaskError::Panicked { message }) if message == "boom"));
    pool.join();
    assert_eq!(ran.load(Ordering::SeqCst), 6);
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "spawned");
    assert_eq!((c.submitted, c.completed, c.failed), (8.0, 4.0, 4.0));
    let reason = |r: &str| {
        exp.value(
            "executor_task_failures_total",
            &[("executor", "spawned"), ("reason", r)],
        )
    };
    assert_eq!(reason("panic"), 3.0);
    assert_eq!(reason("error"), 1.0);
    c.assert_invariant();
}

#[test]
fn spawn_after_shutdown_panics_and_counts_a_rejection() {
    let registry = Registry::new();
    let pool = rayon_pool(&registry, "closed", 1);
    pool.shutdown();
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.spawn(|| ())));
    assert!(refused.is_err());
    let c = counts(&scrape(&registry), "executor", "closed");
    assert_eq!((c.submitted, c.rejected), (0.0, 1.0));
}

#[test]
fn a_rayon_build_error_creates_no_series() {
    let registry = Registry::new();
    // No thread can have a stack this large.
    let err = RayonExecutor::builder(
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .stack_size(usize::MAX / 2),
    )
    .exporter_id("never")
    .registry(registry.clone())
    .build()
    .unwrap_err();
    assert!(
        err.to_string().contains("could not build the pool"),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());
    assert!(registry.gather().is_empty(), "{:?}", registry.gather());
}

#[test]
fn an_exporter_error_is_reported() {
    let err = RayonExecutor::builder(rayon::ThreadPoolBuilder::new().num_threads(1))
        .exporter(
            ExecutorExporter::builder()
                .registry(Registry::new())
                .namespace("not ok"),
        )
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("namespace"), "{err}");
}

#[test]
fn dropping_waits_for_accepted_tasks() {
    let registry = Registry::new();
    let done = Arc::new(AtomicUsize::new(0));
    let pool = rayon_pool(&registry, "drop", 2);
    for _ in 0..20 {
        let done = done.clone();
        pool.spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(1));
            done.fetch_add(1, Ordering::SeqCst);
        });
    }
    watchdog(30, move || drop(pool));
    assert_eq!(done.load(Ordering::SeqCst), 20);
    let c = counts(&scrape(&registry), "executor", "drop");
    assert_eq!(c.completed, 20.0);
}

#[test]
fn workers_is_the_number_of_rayon_threads_alive() {
    let registry = Registry::new();
    let l = [("executor", "threads"), ("executor_type", "rayon")];
    let value = |name| scrape(&registry).value(name, &l);
    let pool = rayon_pool(&registry, "threads", 3);
    pool.inner().broadcast(|_| ());
    assert_eq!(value("executor_workers"), 3.0);
    assert_eq!(value("executor_max_workers"), 3.0);
    drop(pool);
    assert_eq!(value("executor_max_workers"), 0.0);
    // rayon lets its threads end on their own once the pool is dropped.
    eventually(10, "rayon threads to exit", || {
        value("executor_workers") == 0.0
    });
}

/// On rayon, a task blocked on its one thread shows its running age, and
/// the task spawned behind it its own queued age (rayon's queue for tasks
/// from outside the pool is first in, first out); both read 0 once done.
#[test]
fn a_blocked_rayon_task_and_the_one_behind_it_show_their_ages() {
    let registry = Registry::new();
    let l = [("executor", "ages"), ("executor_type", "rayon")];
    let pool = rayon_pool(&registry, "ages", 1);
    let gate = Gate::new();
    let started = Arc::new(AtomicUsize::new(0));
    let blocked_at = std::time::Instant::now();
    {
        let (gate, started) = (gate.clone(), started.clone());
        pool.spawn(move || {
            started.fetch_add(1, Ordering::SeqCst);
            gate.wait()
        });
    }
    eventually(30, "the task running", || {
        started.load(Ordering::SeqCst) == 1
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    let behind_at = std::time::Instant::now();
    pool.spawn(|| ());
    std::thread::sleep(std::time::Duration::from_millis(100));
    let exp = scrape(&registry);
    let (running_for, waiting_for) = (blocked_at.elapsed(), behind_at.elapsed());
    gate.open();
    let running = exp.value("executor_oldest_running_task_seconds", &l);
    let queued = exp.value("executor_oldest_queued_task_seconds", &l);
    // 10 ms of slack for the clock's calibration against `Instant`.
    assert!(
        running <= running_for.as_secs_f64() + 0.01 && running >= 0.29,
        "{running}"
    );
    assert!(
        queued <= waiting_for.as_secs_f64() + 0.01 && queued >= 0.09,
        "{queued}"
    );
    pool.join();
    let exp = scrape(&registry);
    assert_eq!(exp.value("executor_oldest_running_task_seconds", &l), 0.0);
    assert_eq!(exp.value("executor_oldest_queued_task_seconds", &l), 0.0);
}

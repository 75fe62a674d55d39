//! Feature `tokio`: a real multi-thread tokio runtime's blocking pool,
//! instrumented, read back through the public registry.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{counts, scrape};
use executor_exporter::prometheus::Registry;
use executor_exporter::{
    ExecutorExporter, InstrumentedExecutorProxy, RejectReason, TaskError, TokioBlocking,
    TokioBlockingExecutor,
};

/// A multi-thread runtime whose blocking pool has `threads` threads.
fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(threads)
        .build()
        .unwrap()
}

fn blocking(rt: &tokio::runtime::Runtime, registry: &Registry, id: &str) -> TokioBlockingExecutor {
    TokioBlockingExecutor::builder(rt.handle().clone())
        .max_blocking_threads(1)
        .exporter_id(id)
        .registry(registry.clone())
        .build()
        .unwrap()
}

/// With the only blocking thread busy, a second task waits in tokio's
/// queue: counted as queued while it waits, and its wait (at least the
/// 100 ms the first task held the thread after it was queued) recorded.
#[test]
fn a_task_waiting_for_the_saturated_blocking_pool_is_queued_and_its_wait_recorded() {
    let _hang = common::abort_if_hung("saturated", Duration::from_secs(60));
    let rt = runtime(1);
    let registry = Registry::new();
    let pool = blocking(&rt, &registry, "tokio_saturated");
    let (started, is_started) = mpsc::channel();
    let (release, wait) = mpsc::channel::<()>();
    let first = pool.spawn_blocking(move || {
        started.send(()).unwrap();
        wait.recv().unwrap();
        1
    });
    is_started.recv_timeout(Duration::from_secs(30)).unwrap();
    let second = pool.spawn_blocking(|| 2);
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "tokio_saturated");
    assert_eq!((c.submitted, c.running, c.queued), (2.0, 1.0, 1.0), "{c:?}");
    let labels = [("executor", "tokio_saturated")];
    assert_eq!(exp.value("executor_max_workers", &labels), 1.0);
    std::thread::sleep(Duration::from_millis(100));
    release.send(()).unwrap();
    let results = rt.block_on(async { (first.await, second.await) });
    assert_eq!(results, (Ok(1), Ok(2)));
    pool.join();

    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "tokio_saturated");
    assert_eq!((c.submitted, c.completed, c.wait_count), (2.0, 2.0, 2.0));
    c.assert_invariant();
    let waited = exp.value("executor_task_wait_seconds_sum", &labels);
    assert!(
        waited >= 0.1,
        "the queued task's wait is recorded: {waited} s in all"
    );
}

/// The drop-in: awaited inside async code on the runtime, a panic counts as
/// failed with reason `panic` and comes back as the handle's error.
#[test]
fn spawn_blocking_awaited_in_async_code_counts_panics_as_failed() {
    let _hang = common::abort_if_hung("panics", Duration::from_secs(60));
    let rt = runtime(2);
    let registry = Registry::new();
    let pool = blocking(&rt, &registry, "tokio_panics");
    let (ok, boom) = rt.block_on(async {
        let ok = pool.spawn_blocking(|| "fine").await;
        let boom = pool
            .spawn_blocking(|| -> u32 { panic!("blocking work failed") })
            .await;
        (ok, boom)
    });
    assert_eq!(ok, Ok("fine"));
    match boom {
        Err(TaskError::Panicked { message }) => assert!(message.contains("blocking work failed")),
        other => panic!("expected the panic, got {other:?}"),
    }
    pool.join();
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "tokio_panics");
    assert_eq!((c.submitted, c.completed, c.failed), (2.0, 1.0, 1.0));
    c.assert_invariant();
    let labels = [("executor", "tokio_panics"), ("reason", "panic")];
    assert_eq!(exp.value("executor_task_failures_total", &labels), 1.0);
}

/// `TokioBlocking` behind a plain proxy: tasks given after the runtime has
/// shut down are dropped by tokio unrun and counted as cancelled, and tasks
/// given after the proxy's shutdown are refused; the counts still add up.
#[test]
fn tasks_the_runtime_or_the_proxy_cannot_run_are_counted_cancelled_or_rejected() {
    let _hang = common::abort_if_hung("shut_down", Duration::from_secs(60));
    let rt = runtime(1);
    let registry = Registry::new();
    let exporter = ExecutorExporter::builder()
        .exporter_id("tokio_shut_down")
        .registry(registry.clone())
        .build()
        .unwrap();
    let proxy =
        InstrumentedExecutorProxy::new(TokioBlocking::new(rt.handle().clone()), exporter, Some(1));
    assert_eq!(proxy.submit(|| 1).unwrap().join(), Ok(1));
    rt.shutdown_background();
    assert_eq!(
        proxy.submit(|| 2).unwrap().join(),
        Err(TaskError::Cancelled)
    );
    proxy.spawn(|| ()).unwrap();
    proxy.join();
    proxy.shutdown();
    assert_eq!(
        proxy.submit(|| 3).unwrap_err().reason(),
        RejectReason::Shutdown
    );

    let c = counts(&scrape(&registry), "executor", "tokio_shut_down");
    assert_eq!(
        (c.submitted, c.completed, c.cancelled, c.rejected),
        (3.0, 1.0, 2.0, 1.0),
        "{c:?}"
    );
    c.assert_invariant();
}

/// A refused `spawn_blocking` resolves to the refusal, as tokio's handle
/// resolves to an error once its runtime is gone.
#[test]
fn spawn_blocking_after_shutdown_resolves_to_rejected() {
    let rt = runtime(1);
    let registry = Registry::new();
    let pool = blocking(&rt, &registry, "tokio_refused");
    pool.shutdown();
    let handle = pool.spawn_blocking(|| 1);
    assert!(handle.is_finished());
    assert!(!handle.cancel());
    let result = rt.block_on(handle);
    assert_eq!(result, Err(TaskError::Rejected(RejectReason::Shutdown)));
    let c = counts(&scrape(&registry), "executor", "tokio_refused");
    assert_eq!((c.submitted, c.rejected), (0.0, 1.0));
    c.assert_invariant();
}

//! The thread-pool rows of `shared/spec/behaviours.md`, each test named by its ID.

mod common;

use std::collections::HashSet;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::{counts, eventually, scrape, watchdog, Gate};
use executor_exporter::prometheus::Registry;
use executor_exporter::{
    Executor, ExecutorExporter, InstrumentedExecutorProxy, RejectReason, Task, TaskError,
    TaskState, ThreadPool, ThreadPoolExecutor,
};

fn pool_in(registry: &Registry, workers: usize) -> ThreadPoolExecutor {
    ThreadPoolExecutor::builder()
        .max_workers(workers)
        .registry(registry.clone())
        .build()
        .unwrap()
}

fn pool(workers: usize) -> ThreadPoolExecutor {
    pool_in(&Registry::new(), workers)
}

#[test]
fn cfg_1_zero_max_workers_is_rejected() {
    assert!(ThreadPool::new(0).is_err());
    assert!(ThreadPoolExecutor::builder()
        .max_workers(0)
        .registry(Registry::new())
        .build()
        .is_err());
}

/// A NUL byte in a thread name would make the first submit panic (and the
/// pool's drop wait for that submit forever): it is refused at build.
#[test]
fn a_thread_name_prefix_with_a_nul_byte_is_a_build_error() {
    let err = ThreadPool::builder()
        .thread_name_prefix("img\0")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("NUL byte"), "{err}");
    let err = ThreadPoolExecutor::builder()
        .thread_name_prefix("img\0")
        .registry(Registry::new())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("NUL byte"), "{err}");
    let ok = ThreadPool::builder()
        .thread_name_prefix("img ✓")
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    ok.execute(Task::new(move || {
        tx.send(std::thread::current().name().map(str::to_owned))
            .unwrap()
    }))
    .unwrap();
    assert_eq!(rx.recv().unwrap().as_deref(), Some("img ✓-0"));
}

/// A task that holds the last `Arc` of its own pool drops it as it ends,
/// inside the pool: the drop cannot wait for that task (it did, forever).
/// The task, those queued beside it, and their counts all complete.
#[test]
fn a_pool_dropped_inside_its_own_task_does_not_wait_for_that_task() {
    watchdog(60, || {
        let registry = Registry::new();
        let pool = Arc::new(
            ThreadPoolExecutor::builder()
                .max_workers(2)
                .exporter_id("self-dropped")
                .registry(registry.clone())
                .build()
                .unwrap(),
        );
        let gate = Gate::new();
        let (held, open) = (pool.clone(), gate.clone());
        let last = pool
            .submit(move || {
                open.wait();
                drop(held);
                7
            })
            .unwrap();
        let others: Vec<_> = (0..4).map(|i| pool.submit(move || i).unwrap()).collect();
        drop(pool);
        gate.open();
        assert_eq!(last.join(), Ok(7));
        for (i, h) in others.into_iter().enumerate() {
            assert_eq!(h.join(), Ok(i));
        }
        eventually(20, "all five tasks counted as completed", || {
            let c = counts(&scrape(&registry), "executor", "self-dropped");
            c.completed == 5.0 && c.submitted == 5.0 && c.running == 0.0
        });
    });
}

/// The same through a proxy wrapping the pool (a task of the outer proxy is
/// a task of the inner one too, on the same thread).
#[test]
fn a_proxy_over_a_pool_dropped_inside_its_own_task_does_not_wait_for_it() {
    watchdog(60, || {
        let registry = Registry::new();
        let exporter = ExecutorExporter::builder()
            .exporter_id("outer")
            .registry(registry.clone())
            .build()
            .unwrap();
        let proxy = Arc::new(InstrumentedExecutorProxy::new(
            pool_in(&registry, 1),
            exporter,
            None,
        ));
        let held = proxy.clone();
        let h = proxy
            .submit(move || {
                std::thread::sleep(Duration::from_millis(20));
                drop(held);
                1
            })
            .unwrap();
        let queued = proxy.submit(|| 2).unwrap();
        drop(proxy);
        assert_eq!(h.join(), Ok(1));
        assert_eq!(queued.join(), Ok(2));
    });
}

/// Runs each task on the caller's thread.
struct Inline;

impl Executor for Inline {
    fn execute(&self, task: Task) -> Result<(), executor_exporter::Rejected> {
        task.run();
        Ok(())
    }
}

/// A task of executor A that runs a task of executor B inline (on the same
/// thread), where B's task shuts A down: A's task is not the innermost one
/// on that thread, and A must still not wait for it.
#[test]
fn shutdown_inside_a_task_run_inline_by_another_executors_task_returns() {
    watchdog(60, || {
        let registry = Registry::new();
        let exporter = |id: &str| {
            ExecutorExporter::builder()
                .exporter_id(id)
                .registry(registry.clone())
                .build()
                .unwrap()
        };
        // A thread per task: no thread of its own for the proxy to recognise.
        let a = Arc::new(InstrumentedExecutorProxy::new(
            ThreadPerTask {
                spawned: AtomicUsize::new(0),
            },
            exporter("a"),
            None,
        ));
        let b = Arc::new(InstrumentedExecutorProxy::new(Inline, exporter("b"), None));
        let inner_a = a.clone();
        let h = a
            .submit(move || {
                let a = inner_a.clone();
                b.submit(move || {
                    a.shutdown();
                    a.is_shutdown()
                })
                .unwrap()
                .join()
            })
            .unwrap();
        assert_eq!(h.join(), Ok(Ok(true)));
        assert!(a.submit(|| ()).is_err());
    });
}

/// `join()` inside one of the pool's own tasks cannot wait for every task (the caller is one of
/// them, and on a one-worker pool the tasks queued behind it need its thread): it returns at once,
/// as `shutdown` there does, instead of waiting for ever. From outside it still waits for all.
#[test]
fn join_inside_a_task_of_the_pool_returns_instead_of_waiting_for_itself() {
    watchdog(60, || {
        let pool = Arc::new(self::pool(1));
        let inner = pool.clone();
        let queued_ran = Arc::new(AtomicUsize::new(0));
        let h = pool
            .submit(move || {
                inner.join();
                7
            })
            .unwrap();
        let ran = queued_ran.clone();
        pool.spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            ran.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        assert_eq!(h.join(), Ok(7));
        pool.join();
        assert_eq!(queued_ran.load(Ordering::SeqCst), 1, "join outside waited");
    });
}

/// `join()` on one of a pool's workers, but not inside one of that pool's tasks (a task of another
/// proxy over the same pool), waits: the other worker runs what it waits for.
#[test]
fn join_on_a_shared_pools_worker_outside_the_proxys_tasks_waits() {
    watchdog(60, || {
        let registry = Registry::new();
        let shared = Arc::new(ThreadPool::new(2).unwrap());
        let exporter = |id: &str| {
            ExecutorExporter::builder()
                .exporter_id(id)
                .registry(registry.clone())
                .build()
                .unwrap()
        };
        let a = InstrumentedExecutorProxy::new(shared.clone(), exporter("a"), None);
        let b = Arc::new(InstrumentedExecutorProxy::new(shared, exporter("b"), None));
        let finished = Arc::new(AtomicUsize::new(0));
        let (b2, done) = (b.clone(), finished.clone());
        let h = a
            .submit(move || {
                let done2 = done.clone();
                b2.spawn(move || {
                    std::thread::sleep(Duration::from_millis(100));
                    done2.fetch_add(1, Ordering::SeqCst);
                })
                .unwrap();
                b2.join();
                done.load(Ordering::SeqCst)
            })
            .unwrap();
        assert_eq!(h.join(), Ok(1), "b's join waited for b's task");
    });
}

/// The last `Arc` of a one-worker pool can also go on that worker after a
/// task has ended: in the result nobody joined, or in a closure cancelled
/// before it ran. Waiting there for the task still queued would wait for the
/// only thread that can run it.
#[test]
fn a_pool_dropped_on_its_only_worker_by_a_result_or_a_cancelled_closure_does_not_wait() {
    watchdog(60, || {
        // By a result whose handle was dropped.
        let pool = Arc::new(self::pool(1));
        let gate = Gate::new();
        let (held, open) = (pool.clone(), gate.clone());
        drop(
            pool.submit(move || {
                open.wait();
                held
            })
            .unwrap(),
        );
        let queued = pool.submit(|| 3).unwrap();
        drop(pool);
        gate.open();
        assert_eq!(queued.join(), Ok(3));

        // By a cancelled closure, dropped when the worker reaches it.
        let pool = Arc::new(self::pool(1));
        let gate = Gate::new();
        let open = gate.clone();
        let first = pool.submit(move || open.wait()).unwrap();
        let held = pool.clone();
        let cancelled = pool.submit(move || drop(held)).unwrap();
        let queued = pool.submit(|| 4).unwrap();
        assert!(cancelled.cancel());
        drop(pool);
        gate.open();
        assert_eq!(first.join(), Ok(()));
        assert_eq!(cancelled.join(), Err(TaskError::Cancelled));
        assert_eq!(queued.join(), Ok(4));
    });
}

/// `shutdown` called by one of the pool's own tasks stops the pool without
/// waiting for that task; later submits are refused.
#[test]
fn shutdown_inside_its_own_task_returns() {
    watchdog(60, || {
        let pool = Arc::new(pool(2));
        let inner = pool.clone();
        let h = pool
            .submit(move || {
                inner.shutdown();
                inner.is_shutdown()
            })
            .unwrap();
        assert_eq!(h.join(), Ok(true));
        assert!(pool.submit(|| ()).is_err());
    });
}

#[test]
fn cfg_2_default_max_workers_is_the_cpus_available() {
    let p = ThreadPoolExecutor::builder()
        .registry(Registry::new())
        .build()
        .unwrap();
    assert_eq!(p.max_workers(), Some(num_cpus()));
    assert_eq!(
        ThreadPool::builder().build().unwrap().max_workers(),
        num_cpus()
    );
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
fn lazy_1_idle_worker_is_reused() {
    let p = pool(5);
    let mut threads = HashSet::new();
    for _ in 0..3 {
        let id = p
            .submit(|| std::thread::current().id())
            .unwrap()
            .join()
            .unwrap();
        threads.insert(id);
    }
    assert_eq!(p.workers(), 1);
    assert_eq!(threads.len(), 1);
}

#[test]
fn lazy_2_saturation_starts_exactly_max_workers() {
    let registry = Registry::new();
    let p = pool_in(&registry, 4);
    let gate = Gate::new();
    let handles: Vec<_> = (0..60)
        .map(|_| {
            let gate = gate.clone();
            p.submit(move || gate.wait()).unwrap()
        })
        .collect();
    eventually(30, "4 workers", || p.workers() == 4);
    assert_eq!(p.workers(), 4);
    gate.open();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(p.workers(), 4);
    // A worker counts as initialized once its start-up ran on its own thread.
    eventually(30, "4 initialized workers", || {
        scrape(&registry).value("executor_initialized_workers_total", &[]) == 4.0
    });
}

#[test]
fn lazy_3_three_blocking_tasks_start_three_workers_and_all_exit_on_shutdown() {
    let p = pool(5);
    let gate = Gate::new();
    let seen = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let (gate, seen) = (gate.clone(), seen.clone());
            p.submit(move || {
                seen.fetch_add(1, Ordering::SeqCst);
                gate.wait()
            })
            .unwrap()
        })
        .collect();
    eventually(30, "3 tasks started", || seen.load(Ordering::SeqCst) == 3);
    assert_eq!(p.workers(), 3);
    gate.open();
    for h in handles {
        h.join().unwrap();
    }
    watchdog(60, move || p.shutdown());
}

#[test]
fn lazy_4_threads_are_named_prefix_dash_index() {
    let p = ThreadPoolExecutor::builder()
        .max_workers(5)
        .thread_name_prefix("Pool")
        .registry(Registry::new())
        .build()
        .unwrap();
    let name = p
        .submit(|| std::thread::current().name().unwrap().to_owned())
        .unwrap()
        .join()
        .unwrap();
    assert!(
        name.starts_with("Pool-") && name[5..].parse::<usize>().unwrap() < 5,
        "{name}"
    );
    // The default prefix is unique per pool.
    let name_of = |p: &ThreadPoolExecutor| {
        p.submit(|| std::thread::current().name().unwrap().to_owned())
            .unwrap()
            .join()
            .unwrap()
    };
    assert_ne!(name_of(&pool(1)), name_of(&pool(1)));
}

#[test]
fn exc_1_result_or_error_and_the_pool_stays_usable() {
    let p = pool(2);
    assert_eq!(p.submit(|| 3 * 4).unwrap().join(), Ok(12));
    let err = p.submit(|| -> i32 { panic!("boom {}", 7) }).unwrap().join();
    assert_eq!(
        err,
        Err(TaskError::Panicked {
            message: "boom 7".into()
        })
    );
    assert!(err.unwrap_err().to_string().contains("boom 7"));
    let e = p
        .submit_fallible(|| "nope".parse::<i32>())
        .unwrap()
        .join()
        .unwrap();
    assert!(e.is_err());
    assert_eq!(p.submit(|| 1).unwrap().join(), Ok(1));
}

#[test]
fn map_1_results_in_input_order() {
    let p = pool(3);
    let out: Vec<u64> = p
        .map(
            |x: u64| {
                std::thread::sleep(Duration::from_micros((10 - x % 10) * 100));
                x * x
            },
            0..40,
        )
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, (0..40).map(|x| x * x).collect::<Vec<_>>());
}

#[test]
fn map_2_iteration_carries_on_past_a_failed_item() {
    let registry = Registry::new();
    let p = pool_in(&registry, 2);
    let out: Vec<_> = p
        .map(|x: i32| if x == 2 { panic!("two") } else { x }, 0..4)
        .collect();
    assert_eq!(out.len(), 4);
    assert_eq!(out[0], Ok(0));
    assert_eq!(out[1], Ok(1));
    assert!(matches!(out[2], Err(TaskError::Panicked { .. })));
    assert_eq!(out[3], Ok(3));
    // Every item is its own task, with its own count (the reference counted
    // one per iterable).
    p.join();
    let c = counts(&scrape(&registry), "executor", "default");
    assert_eq!((c.submitted, c.completed, c.failed), (4.0, 3.0, 1.0));
}

#[test]
fn map_fallible_counts_errs_as_failed() {
    let registry = Registry::new();
    let p = pool_in(&registry, 2);
    let out: Vec<_> = p
        .map_fallible(|x: u8| if x % 2 == 0 { Ok(x) } else { Err(x) }, 0..6)
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, [Ok(0), Err(1), Ok(2), Err(3), Ok(4), Err(5)]);
    p.join();
    let exp = scrape(&registry);
    assert_eq!(
        exp.value("executor_task_failures_total", &[("reason", "error")]),
        3.0
    );
}

#[test]
fn map_5_dropping_the_iterator_cancels_waiting_items() {
    let registry = Registry::new();
    let p = pool_in(&registry, 1);
    let gate = Gate::new();
    let ran = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    {
        let (gate, ran, s) = (gate.clone(), ran.clone(), started.clone());
        let it = p
            .map_in_flight(
                move |x: usize| {
                    if x == 0 {
                        s.fetch_add(1, Ordering::SeqCst);
                        gate.wait();
                    }
                    ran.fetch_add(1, Ordering::SeqCst);
                },
                0..100,
                10,
            )
            .unwrap();
        eventually(30, "the first item to start", || {
            started.load(Ordering::SeqCst) == 1
        });
        drop(it); // 10 in flight: 1 running (blocked), 9 queued
    }
    gate.open();
    p.join();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    let c = counts(&scrape(&registry), "executor", "default");
    assert_eq!((c.submitted, c.completed, c.cancelled), (10.0, 1.0, 9.0));
    c.assert_invariant();
}

#[test]
fn map_7_unconsumed_map_then_shutdown_does_not_deadlock() {
    let p = Arc::new(pool(2));
    let q = p.clone();
    watchdog(60, move || {
        let it = q.map(|x: u32| x + 1, 0..3);
        std::mem::forget(it); // never consumed, never dropped
        q.shutdown();
    });
}

#[test]
fn map_9_in_flight_bound_is_validated_and_results_are_equal() {
    let p = pool(2);
    assert!(p.map_in_flight(|x: u8| x, 0..3, 0).is_err());
    let expected: Vec<u32> = (0..20).map(|x| x * 3).collect();
    // `usize::MAX`: no bound worth the name, not an allocation of that size.
    for n in [1, 2, 20, 40, usize::MAX] {
        let got: Vec<u32> = p
            .map_in_flight(|x: u32| x * 3, 0..20, n)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, expected, "in_flight {n}");
    }
}

#[test]
fn map_10_input_is_read_lazily_and_endless_input_works() {
    let p = pool(2);
    let read = Arc::new(AtomicUsize::new(0));
    let r = read.clone();
    let endless = (0..).inspect(move |_| {
        r.fetch_add(1, Ordering::SeqCst);
    });
    let it = p.map_in_flight(|x: u64| x.to_string(), endless, 2).unwrap();
    assert_eq!(
        read.load(Ordering::SeqCst),
        2,
        "only the in-flight bound is read"
    );
    let first: Vec<_> = it.take(3).map(Result::unwrap).collect();
    assert_eq!(first, ["0", "1", "2"]);
    let empty: Vec<_> = p.map(|x: u8| x, std::iter::empty()).collect();
    assert!(empty.is_empty());
}

#[test]
fn shut_1_submit_after_shutdown_is_refused_and_shutdown_twice_is_harmless() {
    let p = pool(1);
    p.shutdown();
    p.shutdown();
    assert!(p.is_shutdown());
    let err = p.submit(|| ()).unwrap_err();
    assert_eq!(err.reason(), RejectReason::Shutdown);
    let err = p.execute(Task::new(|| ())).unwrap_err();
    assert_eq!(err.reason(), RejectReason::Shutdown);
}

#[test]
fn shut_2_shutdown_runs_every_queued_task() {
    let p = pool(2);
    let handles: Vec<_> = (0..50)
        .map(|i| {
            p.submit(move || {
                std::thread::sleep(Duration::from_millis(1));
                i
            })
            .unwrap()
        })
        .collect();
    let p = watchdog(60, move || {
        p.shutdown();
        p
    });
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join(), Ok(i));
    }
    assert!(p.is_shutdown());
}

#[test]
fn shut_3_drop_waits_for_submitted_work() {
    let done = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = {
        let p = pool(2);
        (0..20)
            .map(|_| {
                let done = done.clone();
                p.submit(move || {
                    std::thread::sleep(Duration::from_millis(2));
                    done.fetch_add(1, Ordering::SeqCst)
                })
                .unwrap()
            })
            .collect()
        // dropped here
    };
    assert_eq!(done.load(Ordering::SeqCst), 20);
    assert!(handles.iter().all(|h| h.is_finished()));
}

#[test]
fn shut_5_shutdown_now_cancels_pending_and_never_running_tasks() {
    let p = Arc::new(pool(5));
    let started = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let started = started.clone();
            p.submit(move || {
                started.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100))
            })
            .unwrap()
        })
        .collect();
    // On a loaded machine no worker may have taken a task yet; then every
    // task is rightly cancelled, and the running ones this test is about are
    // not there.
    eventually(30, "a task to start", || started.load(Ordering::SeqCst) > 0);
    let q = p.clone();
    watchdog(60, move || q.shutdown_now());
    let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
    let cancelled = results
        .iter()
        .filter(|r| **r == Err(TaskError::Cancelled))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(cancelled > 20, "cancelled {cancelled}");
    assert!(ok >= 1);
    assert_eq!(
        cancelled + ok,
        50,
        "every uncancelled task finished without error"
    );
}

#[test]
fn shut_7_task_cancelled_right_before_shutdown_does_not_hang_it() {
    let p = Arc::new(pool(1));
    let gate = Gate::new();
    let g = gate.clone();
    let first = p.submit(move || g.wait()).unwrap();
    let second = p.submit(|| ()).unwrap();
    assert!(second.cancel());
    gate.open();
    let q = p.clone();
    watchdog(5, move || q.shutdown());
    assert_eq!(first.join(), Ok(()));
    assert_eq!(second.join(), Err(TaskError::Cancelled));
}

/// SHUT-8: run in a child process (this test binary again) whose `main`
/// ends while a task runs: drop must still let it finish.
#[test]
fn shut_8_process_exit_while_a_task_runs_still_finishes_it() {
    if std::env::var_os("SHUT_8_CHILD").is_some() {
        let p = pool(1);
        p.submit(|| {
            std::thread::sleep(Duration::from_millis(100));
            println!("apple");
        })
        .unwrap();
        return; // the pool is dropped here, before the task ends
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "shut_8_process_exit_while_a_task_runs_still_finishes_it",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SHUT_8_CHILD", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("apple"));
}

#[test]
fn fut_1_and_2_states_and_cancel() {
    let p = pool(1);
    let gate = Gate::new();
    let g = gate.clone();
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let running = p
        .submit(move || {
            s.fetch_add(1, Ordering::SeqCst);
            g.wait()
        })
        .unwrap();
    let pending = p.submit(|| ()).unwrap();
    eventually(30, "the first task to start", || {
        started.load(Ordering::SeqCst) == 1
    });
    assert_eq!(running.state(), TaskState::Running);
    assert_eq!(pending.state(), TaskState::Pending);
    assert!(!pending.is_finished());
    assert!(!running.cancel(), "a running task is not cancelled");
    assert_eq!(running.state(), TaskState::Running);
    assert!(pending.cancel());
    assert!(pending.cancel(), "cancelling twice still says cancelled");
    assert_eq!(pending.state(), TaskState::Cancelled);
    assert!(pending.is_finished());
    gate.open();
    assert!(running.wait_timeout(Duration::from_secs(30)));
    assert_eq!(running.state(), TaskState::Finished);
    assert!(!running.cancel(), "a finished task is not cancelled");
    assert_eq!(running.join(), Ok(()));
    assert_eq!(pending.join(), Err(TaskError::Cancelled));
}

#[test]
fn fut_3_join_timeout_zero_for_each_state() {
    let p = pool(1);
    let gate = Gate::new();
    let g = gate.clone();
    let mut running = p.submit(move || g.wait()).unwrap();
    let mut pending = p.submit(|| 5).unwrap();
    let mut cancelled = p.submit(|| 6).unwrap();
    assert!(cancelled.cancel());
    assert_eq!(
        cancelled.join_timeout(Duration::ZERO),
        Err(TaskError::Cancelled)
    );
    assert!(!pending.wait_timeout(Duration::ZERO));
    assert!(!running.wait_timeout(Duration::ZERO));
    assert_eq!(
        running.join_timeout(Duration::ZERO),
        Err(TaskError::TimedOut)
    );
    assert_eq!(
        pending.join_timeout(Duration::ZERO),
        Err(TaskError::TimedOut)
    );
    gate.open();
    // The handles that timed out are still usable.
    assert_eq!(running.join_timeout(Duration::from_secs(30)), Ok(()));
    assert!(pending.wait_timeout(Duration::from_secs(30)));
    assert_eq!(pending.join_timeout(Duration::ZERO), Ok(5));
    assert_eq!(
        pending.join_timeout(Duration::ZERO),
        Err(TaskError::AlreadyTaken)
    );
    assert_eq!(pending.join(), Err(TaskError::AlreadyTaken));
    let mut failed = p.submit(|| -> u8 { panic!("x") }).unwrap();
    assert!(failed.wait_timeout(Duration::from_secs(30)));
    assert!(matches!(
        failed.join_timeout(Duration::ZERO),
        Err(TaskError::Panicked { .. })
    ));
}

#[test]
fn fut_4_a_blocked_waiter_wakes_on_finish_and_on_cancel() {
    let p = pool(1);
    let gate = Gate::new();
    let g = gate.clone();
    let first = p.submit(move || g.wait()).unwrap();
    let second = Arc::new(p.submit(|| 1).unwrap());
    let s = second.clone();
    let waiter = std::thread::spawn(move || s.wait_timeout(Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(20));
    assert!(second.cancel());
    assert!(waiter.join().unwrap(), "the waiter woke on cancel");
    let waiter = std::thread::spawn(move || first.join());
    gate.open();
    assert_eq!(waiter.join().unwrap(), Ok(()));
}

#[test]
fn init_1_initializer_runs_in_each_worker_before_its_first_task() {
    thread_local!(static READY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    let inits = Arc::new(AtomicUsize::new(0));
    let i = inits.clone();
    let registry = Registry::new();
    let p = ThreadPoolExecutor::builder()
        .max_workers(2)
        .registry(registry.clone())
        .initializer(move || {
            i.fetch_add(1, Ordering::SeqCst);
            READY.with(|r| r.set(true));
        })
        .build()
        .unwrap();
    let all_ready = p
        .map(
            |_: u32| {
                std::thread::sleep(Duration::from_millis(5));
                READY.with(|r| r.get())
            },
            0..20,
        )
        .all(|r| r == Ok(true));
    assert!(all_ready);
    assert_eq!(inits.load(Ordering::SeqCst), p.workers());
    let exp = scrape(&registry);
    assert_eq!(
        exp.value("executor_initialized_workers_total", &[]),
        p.workers() as f64
    );
}

#[test]
fn init_2_failing_initializer_breaks_the_pool() {
    let registry = Registry::new();
    let p = ThreadPoolExecutor::builder()
        .max_workers(2)
        .registry(registry.clone())
        .initializer(|| panic!("no database"))
        .build()
        .unwrap();
    let first = p
        .submit(|| 1)
        .unwrap_or_else(|_| panic!("the first submit is accepted"));
    let r = watchdog(30, move || first.join());
    match r {
        Err(TaskError::Broken { reason }) => assert!(reason.contains("no database"), "{reason}"),
        other => panic!("expected Broken, got {other:?}"),
    }
    eventually(30, "later submits to be refused", || {
        p.submit(|| 2).is_err()
    });
    let err = p.submit(|| 3).unwrap_err();
    assert_eq!(err.reason(), RejectReason::Broken);
    assert_eq!(
        p.inner().broken_reason().map(|r| r.contains("no database")),
        Some(true)
    );
    p.join();
    let exp = scrape(&registry);
    assert_eq!(
        exp.value("executor_task_failures_total", &[("reason", "broken")]),
        1.0
    );
    assert_eq!(exp.value("executor_initialized_workers_total", &[]), 0.0);
    let c = counts(&exp, "executor", "default");
    assert!(c.rejected >= 1.0);
    c.assert_invariant();
}

/// A minimal executor: every task on its own thread.
struct ThreadPerTask {
    spawned: AtomicUsize,
}

impl Executor for ThreadPerTask {
    fn execute(&self, task: Task) -> Result<(), executor_exporter::Rejected> {
        self.spawned.fetch_add(1, Ordering::SeqCst);
        std::thread::spawn(move || task.run());
        Ok(())
    }
}

/// An executor that refuses everything, and one that drops everything.
struct Refuses;
impl Executor for Refuses {
    fn execute(&self, task: Task) -> Result<(), executor_exporter::Rejected> {
        Err(executor_exporter::Rejected::new(task, RejectReason::Full))
    }
}
struct Drops;
impl Executor for Drops {
    fn execute(&self, task: Task) -> Result<(), executor_exporter::Rejected> {
        drop(task);
        Ok(())
    }
}

fn exporter(registry: &Registry, id: &str) -> executor_exporter::ExecutorExporter {
    executor_exporter::ExecutorExporter::builder()
        .exporter_id(id)
        .executor_type("mine")
        .registry(registry.clone())
        .build()
        .unwrap()
}

#[test]
fn a_user_defined_executor_in_the_proxy() {
    use executor_exporter::InstrumentedExecutorProxy;
    let registry = Registry::new();
    let proxy = InstrumentedExecutorProxy::new(
        ThreadPerTask {
            spawned: AtomicUsize::new(0),
        },
        exporter(&registry, "tpt"),
        Some(8),
    );
    let out: Vec<_> = proxy.map(|x: u8| x + 1, 0..5).map(Result::unwrap).collect();
    assert_eq!(out, [1, 2, 3, 4, 5]);
    assert_eq!(proxy.submit(|| "hi").unwrap().join(), Ok("hi"));
    proxy.join();
    assert_eq!(proxy.inner().spawned.load(Ordering::SeqCst), 6);
    let exp = scrape(&registry);
    let l = [("executor", "tpt"), ("executor_type", "mine")];
    assert_eq!(exp.value("executor_max_workers", &l), 8.0);
    let c = counts(&exp, "executor", "tpt");
    assert_eq!((c.submitted, c.completed), (6.0, 6.0));

    // Refused: counted as rejected, the closure comes back.
    let refusing = InstrumentedExecutorProxy::new(Refuses, exporter(&registry, "refuses"), None);
    let err = refusing.submit(|| 9).unwrap_err();
    assert_eq!(err.reason(), RejectReason::Full);
    assert_eq!((err.into_inner())(), 9);
    // Dropped without running: counted as cancelled, never lost.
    let dropping = InstrumentedExecutorProxy::new(Drops, exporter(&registry, "drops"), None);
    assert_eq!(
        dropping.submit(|| 1).unwrap().join(),
        Err(TaskError::Cancelled)
    );
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "refuses");
    assert_eq!((c.submitted, c.rejected, c.queued), (0.0, 1.0, 0.0));
    let c = counts(&exp, "executor", "drops");
    assert_eq!((c.submitted, c.cancelled, c.queued), (1.0, 1.0, 0.0));
    c.assert_invariant();
}

/// Keeps the tasks handed to it, for the test to run; says it is a worker
/// thread, so that a `shutdown_now` on the proxy returns without waiting
/// for them.
#[derive(Default)]
struct Keeps(Mutex<Vec<Task>>);

impl Executor for Keeps {
    fn execute(&self, task: Task) -> Result<(), executor_exporter::Rejected> {
        self.0.lock().unwrap().push(task);
        Ok(())
    }

    fn is_worker_thread(&self) -> bool {
        true
    }
}

fn kept(proxy: &InstrumentedExecutorProxy<Keeps>) -> Vec<Task> {
    std::mem::take(&mut *proxy.inner().0.lock().unwrap())
}

/// Tasks whose handles are dropped before they run (one handle polled
/// first, one cancelling first) are counted once each, as with a handle:
/// completed, failed (a panic, an `Err`), cancelled; their closures, their
/// values and the waker the polled handle stored are all dropped.
#[test]
fn tasks_whose_handles_are_gone_when_they_run_are_counted_once_and_dropped() {
    let registry = Registry::new();
    let proxy = InstrumentedExecutorProxy::new(Keeps::default(), exporter(&registry, "gone"), None);
    let held = Arc::new(());
    let h = held.clone();
    drop(proxy.submit(move || h).unwrap());
    let h = held.clone();
    drop(
        proxy
            .submit(move || {
                let _h = h;
                panic!("a task nobody joins panics");
            })
            .unwrap(),
    );
    drop(proxy.submit_fallible(|| Err::<(), _>("no")).unwrap());
    let h = held.clone();
    let cancelled = proxy.submit(move || drop(h)).unwrap();
    assert!(cancelled.cancel());
    drop(cancelled);
    let waker = Arc::new(ThreadWaker(std::thread::current()));
    let mut polled = proxy.submit(|| 3).unwrap();
    let w = Waker::from(waker.clone());
    let mut cx = Context::from_waker(&w);
    assert!(Pin::new(&mut polled).poll(&mut cx).is_pending());
    drop((polled, w));
    assert_eq!(Arc::strong_count(&waker), 2, "the handle stored its waker");
    for task in kept(&proxy) {
        task.run();
    }
    proxy.join();
    assert_eq!(Arc::strong_count(&held), 1, "closures and values dropped");
    assert_eq!(Arc::strong_count(&waker), 1, "the stored waker dropped");
    let c = counts(&scrape(&registry), "executor", "gone");
    assert_eq!(
        (c.submitted, c.completed, c.failed, c.cancelled),
        (5.0, 2.0, 2.0, 1.0),
        "{c:?}"
    );
    assert_eq!((c.queued, c.running, c.wait_count), (0.0, 0.0, 4.0));
    c.assert_invariant();
}

/// A task whose handle is gone, picked up after a `shutdown_now`, does not
/// run: it is counted as cancelled and its closure dropped.
#[test]
fn a_task_whose_handle_is_gone_is_cancelled_by_shutdown_now() {
    let registry = Registry::new();
    let proxy =
        InstrumentedExecutorProxy::new(Keeps::default(), exporter(&registry, "gone_now"), None);
    let held = Arc::new(());
    let h = held.clone();
    drop(proxy.submit(move || drop(h)).unwrap());
    proxy.shutdown_now();
    let tasks = kept(&proxy);
    assert_eq!(tasks.len(), 1);
    for task in tasks {
        task.run();
    }
    proxy.join();
    assert_eq!(Arc::strong_count(&held), 1, "the closure dropped");
    let c = counts(&scrape(&registry), "executor", "gone_now");
    assert_eq!(
        (c.submitted, c.completed, c.failed, c.cancelled),
        (1.0, 0.0, 0.0, 1.0),
        "{c:?}"
    );
    c.assert_invariant();
}

#[test]
fn the_instrumented_pool_is_itself_an_executor() {
    let registry = Registry::new();
    let p = pool_in(&registry, 2);
    let (tx, rx) = std::sync::mpsc::channel();
    fn run_on(e: &dyn Executor, tx: std::sync::mpsc::Sender<u8>) {
        e.execute(Task::new(move || tx.send(1).unwrap())).unwrap();
    }
    run_on(&*p, tx.clone());
    run_on(&p, tx);
    assert_eq!(rx.recv().unwrap() + rx.recv().unwrap(), 2);
    p.join();
    let c = counts(&scrape(&registry), "executor", "default");
    assert_eq!((c.submitted, c.completed), (2.0, 2.0));
}

struct ThreadWaker(std::thread::Thread);
impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Drives a future to completion on this thread, with no runtime.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

#[test]
fn a_task_handle_is_a_future() {
    let p = pool(2);
    let polls = Arc::new(Mutex::new(0));
    let gate = Gate::new();
    let g = gate.clone();
    let h = p
        .submit(move || {
            g.wait();
            "awaited"
        })
        .unwrap();
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        gate.open();
    });
    let out = watchdog(30, move || {
        *polls.lock().unwrap() += 1;
        block_on(async move { h.await.map(str::len) })
    });
    opener.join().unwrap();
    assert_eq!(out, Ok("awaited".len()));
}

#[test]
fn a_handle_whose_result_was_polled_out_says_so_instead_of_blocking() {
    let p = pool(1);
    let mut h = p.submit(|| 5).unwrap();
    assert!(h.wait_timeout(Duration::from_secs(30)), "watchdog");
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(Pin::new(&mut h).poll(&mut cx), Poll::Ready(Ok(5)));
    assert_eq!(
        Pin::new(&mut h).poll(&mut cx),
        Poll::Ready(Err(TaskError::AlreadyTaken))
    );
    assert_eq!(h.join(), Err(TaskError::AlreadyTaken));
}

/// A pool of one worker, shared with its own tasks.
fn one_worker(registry: &Registry, id: &str) -> Arc<ThreadPoolExecutor> {
    Arc::new(
        ThreadPoolExecutor::builder()
            .max_workers(1)
            .exporter_id(id)
            .registry(registry.clone())
            .build()
            .unwrap(),
    )
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or_default().to_owned()
}

/// Every task of exporter `id` completed, each counted once with its wait.
fn all_completed(registry: &Registry, id: &str, tasks: f64) {
    let c = counts(&scrape(registry), "executor", id);
    assert_eq!(
        (c.submitted, c.completed, c.wait_count),
        (tasks, tasks, tasks),
        "{c:?}"
    );
    assert_eq!(
        (c.queued, c.running, c.cancelled, c.failed),
        (0.0, 0.0, 0.0, 0.0)
    );
    c.assert_invariant();
}

/// The only worker runs a task that submits another and joins it: no other
/// worker will ever start that one, so the joining worker runs it itself,
/// counted like any task. The pool then shuts down.
#[test]
fn a_task_joining_a_task_it_submitted_to_its_own_saturated_pool_runs_it() {
    let registry = Registry::new();
    let p = one_worker(&registry, "joins_own");
    let p2 = p.clone();
    let q = p.clone();
    let joined = watchdog(10, move || {
        let out = q
            .submit(move || p2.submit(|| 7).unwrap().join())
            .unwrap()
            .join();
        q.join();
        out
    });
    assert_eq!(joined, Ok(Ok(7)));
    all_completed(&registry, "joins_own", 2.0);
    watchdog(10, move || p.shutdown());
}

/// `join_timeout` and `wait_timeout` on the pool's own worker run the
/// queued task there too (the timeout only bounds a wait for another
/// thread's run).
#[test]
fn join_timeout_and_wait_timeout_on_the_pools_own_worker_run_the_task() {
    let registry = Registry::new();
    let p = one_worker(&registry, "joins_own_timeout");
    let p2 = p.clone();
    let q = p.clone();
    let (worker, by_join_timeout, waited, by_wait_timeout) = watchdog(10, move || {
        let out = q
            .submit(move || {
                let mut a = p2.submit(thread_name).unwrap();
                let a = a.join_timeout(Duration::from_secs(60));
                let b = p2.submit(thread_name).unwrap();
                let waited = b.wait_timeout(Duration::from_secs(60));
                (thread_name(), a, waited, b.join())
            })
            .unwrap()
            .join()
            .unwrap();
        q.join();
        out
    });
    assert_eq!(by_join_timeout.as_ref(), Ok(&worker));
    assert!(waited);
    assert_eq!(by_wait_timeout.as_ref(), Ok(&worker));
    all_completed(&registry, "joins_own_timeout", 3.0);
    watchdog(10, move || p.shutdown());
}

/// A task run by its joiner may itself submit and join: two levels deep on
/// a one-worker pool.
#[test]
fn a_task_run_by_its_joiner_can_submit_and_join_in_turn() {
    let registry = Registry::new();
    let p = one_worker(&registry, "joins_nested");
    let (p2, p3) = (p.clone(), p.clone());
    let q = p.clone();
    let joined = watchdog(10, move || {
        let out = q
            .submit(move || {
                p2.submit(move || p3.submit(|| 7).unwrap().join())
                    .unwrap()
                    .join()
            })
            .unwrap()
            .join();
        q.join();
        out
    });
    assert_eq!(joined, Ok(Ok(Ok(7))));
    all_completed(&registry, "joins_nested", 3.0);
    watchdog(10, move || p.shutdown());
}

/// A join from a thread that runs none of the pool's tasks (the test's
/// own, or another pool's worker) waits for the pool's worker as before.
#[test]
fn a_join_from_a_thread_that_is_not_the_pools_worker_waits_for_the_worker() {
    let registry = Registry::new();
    let p = one_worker(&registry, "joined_outside");
    let gate = Gate::new();
    let g = gate.clone();
    let blocker = p
        .submit(move || {
            g.wait();
            thread_name()
        })
        .unwrap();
    let mut queued = p.submit(thread_name).unwrap();
    assert_eq!(
        queued.join_timeout(Duration::from_millis(50)),
        Err(TaskError::TimedOut)
    );
    assert!(!queued.wait_timeout(Duration::from_millis(10)));
    let other = pool(1);
    let (from_other_pool, mut queued) = other
        .submit(move || (queued.join_timeout(Duration::from_millis(50)), queued))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(from_other_pool, Err(TaskError::TimedOut));
    assert_eq!(queued.state(), TaskState::Pending);
    gate.open();
    let worker = blocker.join().unwrap();
    assert_eq!(queued.join_timeout(Duration::from_secs(30)), Ok(worker));
    p.join();
    all_completed(&registry, "joined_outside", 2.0);
}

/// Runs tasks in order on one thread of its own: a user's executor.
struct OneThread(Mutex<std::sync::mpsc::Sender<Task>>);

impl OneThread {
    fn new() -> OneThread {
        let (tx, rx) = std::sync::mpsc::channel::<Task>();
        std::thread::spawn(move || rx.into_iter().for_each(Task::run));
        OneThread(Mutex::new(tx))
    }
}

impl Executor for OneThread {
    fn execute(&self, task: Task) -> Result<(), executor_exporter::Rejected> {
        self.0
            .lock()
            .unwrap()
            .send(task)
            .map_err(|e| executor_exporter::Rejected::new(e.0, RejectReason::Shutdown))
    }
}

/// The proxy over any executor: a task that submits to its own proxy and
/// joins runs the joined task itself when that one has not started.
#[test]
fn a_task_joining_a_task_of_its_own_proxy_over_a_one_thread_executor_runs_it() {
    let registry = Registry::new();
    let proxy = Arc::new(InstrumentedExecutorProxy::new(
        OneThread::new(),
        exporter(&registry, "one_thread"),
        None,
    ));
    let (p, q) = (proxy.clone(), proxy.clone());
    let joined = watchdog(10, move || {
        let out = q
            .submit(move || p.submit(|| 7).unwrap().join())
            .unwrap()
            .join();
        q.join();
        out
    });
    assert_eq!(joined, Ok(Ok(7)));
    all_completed(&registry, "one_thread", 2.0);
    watchdog(10, move || drop(proxy));
}

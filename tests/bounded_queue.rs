//! Bounded queues of the thread pool: a full queue refuses (and counts) the
//! submit, or blocks it, or runs the task on the caller, as the pool's
//! `FullPolicy` says; `executor_queue_capacity` shows the capacity of the
//! live bounded pools. Every value is read back from the registry's text
//! exposition.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{scrape, watchdog, Gate};
use executor_exporter::prometheus::Registry;
use executor_exporter::{
    Executor, FullPolicy, RejectReason, Task, TaskError, ThreadPool, ThreadPoolExecutor,
};

const CAPACITY: &str = "executor_queue_capacity";

/// A one-worker pool with a queue of `capacity`, recording under `id`.
fn bounded(
    registry: &Registry,
    id: &str,
    capacity: usize,
    policy: FullPolicy,
) -> ThreadPoolExecutor {
    ThreadPoolExecutor::builder()
        .max_workers(1)
        .queue_capacity(capacity)
        .when_full(policy)
        .exporter_id(id)
        .registry(registry.clone())
        .build()
        .unwrap()
}

/// Occupies the pool's one worker until `gate` opens; returns once the
/// task runs (it has left the queue).
fn occupy(pool: &ThreadPoolExecutor, gate: &Gate) -> executor_exporter::TaskHandle<()> {
    let (started, running) = mpsc::channel();
    let gate = gate.clone();
    let handle = pool
        .submit(move || {
            started.send(()).unwrap();
            gate.wait();
        })
        .unwrap();
    running.recv_timeout(Duration::from_secs(10)).unwrap();
    handle
}

fn value(registry: &Registry, name: &str, id: &str) -> Option<f64> {
    scrape(registry).try_value(name, &[("executor", id)])
}

#[test]
fn a_full_queue_refuses_the_submit_hands_the_closure_back_and_counts_it() {
    let registry = Registry::new();
    let pool = bounded(&registry, "full", 2, FullPolicy::Reject);
    let gate = Gate::new();
    let running = occupy(&pool, &gate);
    let queued: Vec<_> = (0..2).map(|i| pool.submit(move || i).unwrap()).collect();

    let refused = pool.submit(|| 42).unwrap_err();
    assert_eq!(refused.reason(), RejectReason::Full);
    assert_eq!(refused.into_inner()(), 42, "the closure comes back");
    assert_eq!(pool.spawn(|| ()).unwrap_err().reason(), RejectReason::Full);

    let exp = scrape(&registry);
    let l = [("executor", "full")];
    assert_eq!(exp.value("executor_rejected_tasks_total", &l), 2.0);
    assert_eq!(exp.value("executor_queued_tasks", &l), 2.0);
    assert_eq!(exp.value(CAPACITY, &l), 2.0);

    gate.open();
    running.join().unwrap();
    for (i, h) in queued.into_iter().enumerate() {
        assert_eq!(h.join(), Ok(i));
    }
    // Room again once the worker took the queued tasks.
    assert_eq!(pool.submit(|| 7).unwrap().join(), Ok(7));
}

#[test]
fn block_waits_for_room_then_succeeds() {
    let registry = Registry::new();
    let pool = Arc::new(bounded(&registry, "block", 1, FullPolicy::Block));
    let gate = Gate::new();
    let running = occupy(&pool, &gate);
    let first = pool.submit(|| 1).unwrap();

    let (submitted, done) = mpsc::channel();
    let submitter = {
        let pool = pool.clone();
        thread::spawn(move || {
            let handle = pool.submit(|| 2);
            submitted.send(()).unwrap();
            handle.map(|h| h.join()).map_err(|e| e.reason())
        })
    };
    // The submit waits while the queue is full...
    assert!(
        done.recv_timeout(Duration::from_millis(100)).is_err(),
        "a blocking submit into a full queue returned"
    );
    // ...and goes through once the worker takes the queued task.
    gate.open();
    done.recv_timeout(Duration::from_secs(10))
        .expect("the blocked submit went through once there was room");
    assert_eq!(submitter.join().unwrap(), Ok(Ok(2)));
    assert_eq!(running.join(), Ok(()));
    assert_eq!(first.join(), Ok(1));
    assert_eq!(
        value(&registry, "executor_rejected_tasks_total", "block"),
        Some(0.0)
    );
}

#[test]
fn block_for_times_out_as_full() {
    let registry = Registry::new();
    let timeout = Duration::from_millis(50);
    let pool = bounded(&registry, "block-for", 1, FullPolicy::BlockFor(timeout));
    let gate = Gate::new();
    let _running = occupy(&pool, &gate);
    let _queued = pool.submit(|| ()).unwrap();

    let start = Instant::now();
    let refused = pool.submit(|| 3).unwrap_err();
    assert!(start.elapsed() >= timeout, "gave up before the timeout");
    assert_eq!(refused.reason(), RejectReason::Full);
    assert_eq!(refused.into_inner()(), 3);
    assert_eq!(
        value(&registry, "executor_rejected_tasks_total", "block-for"),
        Some(1.0)
    );
    gate.open();
}

#[test]
fn caller_runs_runs_the_task_on_the_submitting_thread() {
    let registry = Registry::new();
    let pool = bounded(&registry, "caller", 1, FullPolicy::CallerRuns);
    let gate = Gate::new();
    let running = occupy(&pool, &gate);
    let queued = pool.submit(|| ()).unwrap();

    let me = thread::current().id();
    let handle = pool.submit(move || thread::current().id()).unwrap();
    assert!(
        handle.is_finished(),
        "the task ran before the submit returned"
    );
    assert_eq!(handle.join(), Ok(me));
    let panicked = pool.submit(|| -> u8 { panic!("inline") }).unwrap();
    assert!(matches!(panicked.join(), Err(TaskError::Panicked { .. })));

    let exp = scrape(&registry);
    let l = [("executor", "caller")];
    assert_eq!(exp.value("executor_rejected_tasks_total", &l), 0.0);
    assert_eq!(exp.value("executor_submitted_tasks_total", &l), 4.0);
    assert_eq!(
        exp.value(
            "executor_tasks_duration_seconds_count",
            &[("executor", "caller"), ("result", "completed")]
        ),
        1.0
    );
    gate.open();
    assert_eq!(running.join(), Ok(()));
    assert_eq!(queued.join(), Ok(()));
}

#[test]
fn the_plain_pool_caller_runs_and_catches_the_panic() {
    let pool = ThreadPool::builder()
        .max_workers(1)
        .queue_capacity(1)
        .when_full(FullPolicy::CallerRuns)
        .build()
        .unwrap();
    let gate = Gate::new();
    let (started, running) = mpsc::channel();
    let g = gate.clone();
    pool.execute(Task::new(move || {
        started.send(()).unwrap();
        g.wait();
    }))
    .unwrap();
    running.recv_timeout(Duration::from_secs(10)).unwrap();
    pool.execute(Task::new(|| ())).unwrap();
    let (tx, rx) = mpsc::channel();
    pool.execute(Task::new(move || tx.send(thread::current().id()).unwrap()))
        .unwrap();
    assert_eq!(rx.try_recv(), Ok(thread::current().id()));
    pool.execute(Task::new(|| panic!("caught like a worker's")))
        .unwrap();
    gate.open();
}

/// A task that submits into its own full pool with `Block` is refused at
/// once instead of waiting for room that only its own worker could make.
#[test]
fn a_worker_blocking_on_its_own_full_queue_is_refused_instead_of_waiting_for_itself() {
    let registry = Registry::new();
    let pool = Arc::new(bounded(&registry, "self", 1, FullPolicy::Block));
    let inner = pool.clone();
    let outer = pool
        .submit(move || {
            // This worker is the pool's only one; the queue takes one task.
            let _queued = inner.submit(|| ()).unwrap();
            inner.submit(|| ()).map(drop).map_err(|e| e.reason())
        })
        .unwrap();
    let refused = watchdog(10, move || outer.join());
    assert_eq!(refused, Ok(Err(RejectReason::Full)));
}

#[test]
fn shutdown_wakes_blocked_submitters_and_refuses_them() {
    let registry = Registry::new();
    let pool = Arc::new(bounded(&registry, "wake", 1, FullPolicy::Block));
    let gate = Gate::new();
    let _running = occupy(&pool, &gate);
    let _queued = pool.submit(|| ()).unwrap();
    let blocked: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            thread::spawn(move || pool.submit(|| ()).map(drop).map_err(|e| e.reason()))
        })
        .collect();
    thread::sleep(Duration::from_millis(50));
    let closer = {
        let pool = pool.clone();
        thread::spawn(move || pool.shutdown())
    };
    // The submitters wake and are refused while the pool still waits for
    // its running task.
    for submitter in blocked {
        let refused = watchdog(10, move || submitter.join().unwrap());
        assert_eq!(refused, Err(RejectReason::Shutdown));
    }
    gate.open();
    watchdog(10, move || closer.join().unwrap());
    assert_eq!(
        value(&registry, "executor_rejected_tasks_total", "wake"),
        Some(2.0)
    );
}

#[test]
fn queue_capacity_gauge_sums_the_live_bounded_pools_and_is_absent_without_one() {
    let registry = Registry::new();
    let unbounded = ThreadPoolExecutor::builder()
        .exporter_id("cap")
        .registry(registry.clone())
        .build()
        .unwrap();
    assert_eq!(
        value(&registry, CAPACITY, "cap"),
        None,
        "unbounded: no sample"
    );
    let a = bounded(&registry, "cap", 8, FullPolicy::Reject);
    let b = bounded(&registry, "cap", 4, FullPolicy::Block);
    assert_eq!(value(&registry, CAPACITY, "cap"), Some(12.0));
    assert_eq!(
        (a.queue_capacity(), unbounded.queue_capacity()),
        (Some(8), None)
    );
    a.shutdown();
    assert_eq!(value(&registry, CAPACITY, "cap"), Some(4.0));
    drop(b);
    assert_eq!(
        value(&registry, CAPACITY, "cap"),
        None,
        "gone with the pools"
    );
    drop(a);
    assert_eq!(value(&registry, CAPACITY, "cap"), None);
    assert!(value(&registry, "executor_max_workers", "cap").is_some());
}

#[test]
fn zero_capacity_and_a_policy_without_a_capacity_are_build_errors() {
    let err = ThreadPool::builder().queue_capacity(0).build().unwrap_err();
    assert!(err.to_string().contains("leave it unset"), "{err}");
    let err = ThreadPoolExecutor::builder()
        .when_full(FullPolicy::Block)
        .registry(Registry::new())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("needs queue_capacity"), "{err}");
    let err = ThreadPool::builder()
        .queue_capacity(1)
        .when_full(FullPolicy::BlockFor(Duration::ZERO))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("FullPolicy::Reject"), "{err}");
}

/// The process pool's bounded queue: tasks accepted and not yet sent to a
/// worker process.
#[cfg(target_os = "linux")]
mod process {
    use super::*;
    use executor_exporter::process_pool::{run_if_worker, ProcessTask, WorkerRegistry};
    use executor_exporter::{ProcessPoolExecutor, TaskState};

    struct SleepMs;
    impl ProcessTask for SleepMs {
        const NAME: &'static str = "sleep_ms";
        type Input = u64;
        type Output = u64;
        type Error = String;
        fn run(ms: u64) -> Result<u64, String> {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(ms)
        }
    }

    /// This test binary is its own worker program.
    #[test]
    fn worker_entry() {
        run_if_worker(&WorkerRegistry::new().register::<SleepMs>());
    }

    fn pool(registry: &Registry, id: &str, policy: FullPolicy) -> ProcessPoolExecutor {
        ProcessPoolExecutor::builder()
            .max_workers(1)
            .queue_capacity(1)
            .when_full(policy)
            .worker_test_entry("process::worker_entry")
            .exporter_id(id)
            .registry(registry.clone())
            .build()
            .unwrap()
    }

    /// Submits a task that keeps the one worker busy for `ms` and waits
    /// until the worker has it (it has left the queue).
    fn occupy(
        pool: &ProcessPoolExecutor,
        ms: u64,
    ) -> executor_exporter::TaskHandle<Result<u64, String>> {
        let running = pool.submit::<SleepMs>(&ms).unwrap();
        common::eventually(30, "the worker to start the task", || {
            running.state() != TaskState::Pending
        });
        running
    }

    /// As for the thread pool: an input that finds the queue full waits
    /// for room, and no input is lost or counted as rejected.
    #[test]
    fn a_process_pool_map_over_a_full_queue_waits_for_room() {
        let registry = Registry::new();
        let pool = pool(&registry, "proc-map", FullPolicy::Reject);
        let inputs: Vec<u64> = (0..12).map(|i| i % 3).collect();
        let got: Vec<_> = watchdog(60, {
            let inputs = inputs.clone();
            move || pool.map::<SleepMs, _>(inputs).collect::<Vec<_>>()
        });
        let want: Vec<_> = inputs.iter().map(|&ms| Ok(Ok(ms))).collect();
        assert_eq!(got, want);
        let l = [("executor", "proc-map")];
        let exp = scrape(&registry);
        assert_eq!(exp.value("executor_submitted_tasks_total", &l), 12.0);
        assert_eq!(exp.value("executor_rejected_tasks_total", &l), 0.0);
    }

    /// The same for `map_chunked`: a chunk that finds the queue full waits.
    #[test]
    fn a_process_pool_chunked_map_over_a_full_queue_waits_for_room() {
        let registry = Registry::new();
        let pool = pool(&registry, "proc-chunks", FullPolicy::Reject);
        let inputs: Vec<u64> = (0..24).map(|i| i % 3).collect();
        let got: Vec<_> = watchdog(60, {
            let inputs = inputs.clone();
            move || {
                pool.map_chunked::<SleepMs, _>(inputs, 2)
                    .unwrap()
                    .collect::<Vec<_>>()
            }
        });
        let want: Vec<_> = inputs.iter().map(|&ms| Ok(Ok(ms))).collect();
        assert_eq!(got, want);
        let l = [("executor", "proc-chunks")];
        let exp = scrape(&registry);
        assert_eq!(exp.value("executor_submitted_tasks_total", &l), 12.0);
        assert_eq!(exp.value("executor_rejected_tasks_total", &l), 0.0);
    }

    #[test]
    fn a_full_process_pool_queue_refuses_the_submit_and_counts_it() {
        let registry = Registry::new();
        let pool = pool(&registry, "proc-full", FullPolicy::Reject);
        assert_eq!(pool.queue_capacity(), Some(1));
        let running = occupy(&pool, 600);
        let queued = pool.submit::<SleepMs>(&0).unwrap();
        let refused = pool.submit::<SleepMs>(&0).unwrap_err();
        assert_eq!(refused.reason(), RejectReason::Full);

        let exp = scrape(&registry);
        let l = [("executor", "proc-full")];
        assert_eq!(exp.value("executor_rejected_tasks_total", &l), 1.0);
        assert_eq!(exp.value("executor_queued_tasks", &l), 1.0);
        assert_eq!(exp.value(CAPACITY, &l), 1.0);
        assert_eq!(watchdog(30, move || running.join()), Ok(Ok(600)));
        assert_eq!(watchdog(30, move || queued.join()), Ok(Ok(0)));
        drop(pool);
        assert_eq!(value(&registry, CAPACITY, "proc-full"), None);
    }

    #[test]
    fn a_process_pool_submit_blocked_on_a_full_queue_times_out_or_is_woken_by_shutdown() {
        let registry = Registry::new();
        let timeout = Duration::from_millis(50);
        let pool = Arc::new(pool(&registry, "proc-block", FullPolicy::BlockFor(timeout)));
        let _running = occupy(&pool, 800);
        let _queued = pool.submit::<SleepMs>(&0).unwrap();
        let start = Instant::now();
        let refused = pool.submit::<SleepMs>(&0).unwrap_err();
        assert!(start.elapsed() >= timeout, "gave up before the timeout");
        assert_eq!(refused.reason(), RejectReason::Full);

        let blocked = Arc::new(self::pool(&registry, "proc-wake", FullPolicy::Block));
        let running = occupy(&blocked, 800);
        let _queued = blocked.submit::<SleepMs>(&0).unwrap();
        let submitter = {
            let blocked = blocked.clone();
            thread::spawn(move || {
                blocked
                    .submit::<SleepMs>(&0)
                    .map(drop)
                    .map_err(|e| e.reason())
            })
        };
        thread::sleep(Duration::from_millis(50));
        let closer = {
            let blocked = blocked.clone();
            thread::spawn(move || blocked.shutdown())
        };
        let refused = watchdog(30, move || submitter.join().unwrap());
        assert_eq!(refused, Err(RejectReason::Shutdown));
        // Woken by the shutdown, not by the room the worker makes when it
        // is done with the running task.
        assert!(!running.is_finished(), "the submit waited for room");
        watchdog(30, move || closer.join().unwrap());
    }

    #[test]
    fn caller_runs_is_a_build_error_for_a_process_pool() {
        let err = ProcessPoolExecutor::builder()
            .queue_capacity(1)
            .when_full(FullPolicy::CallerRuns)
            .worker_test_entry("process::worker_entry")
            .registry(Registry::new())
            .build()
            .unwrap_err();
        assert!(
            err.to_string().contains("use Reject, Block or BlockFor"),
            "{err}"
        );
    }
}

/// `map` over a pool whose full queue refuses: an input that finds the
/// queue full waits for room (a task of the map ending, or another's) and
/// is submitted then, so every input gets its result, in order. Refusals
/// are not counted: nothing was handed over while the queue was full.
#[test]
fn map_over_a_full_queue_waits_for_room_and_loses_no_input() {
    let registry = Registry::new();
    let pool = Arc::new(bounded(&registry, "map_full", 1, FullPolicy::Reject));
    let results: Vec<_> = watchdog(60, {
        let pool = Arc::clone(&pool);
        move || {
            let mut all = Vec::new();
            for in_flight in [1, 2, 8] {
                let got: Vec<_> = pool
                    .map_in_flight(|x: u32| x * 2, 0..20, in_flight)
                    .unwrap()
                    .collect();
                all.push(got);
            }
            all.push(pool.map(|x: u32| x + 1, 0..20).collect());
            all
        }
    });
    for got in &results[..3] {
        assert_eq!(got, &(0..20).map(|x| Ok(x * 2)).collect::<Vec<_>>());
    }
    assert_eq!(results[3], (0..20).map(|x| Ok(x + 1)).collect::<Vec<_>>());
    pool.join();
    let exp = scrape(&registry);
    let c = common::counts(&exp, "executor", "map_full");
    assert_eq!((c.submitted, c.completed, c.rejected), (80.0, 80.0, 0.0));
    c.assert_invariant();
}

/// `usize::MAX` (no bound, in effect) as a queue capacity or a worker
/// count, summed over pools sharing a series, never wraps the gauges
/// negative: each pool counts at most 2^40.
#[test]
fn capacities_and_worker_counts_of_usize_max_sum_without_wrapping() {
    let registry = Registry::new();
    let build = |workers: usize, capacity: usize| {
        ThreadPoolExecutor::builder()
            .max_workers(workers)
            .queue_capacity(capacity)
            .exporter_id("huge")
            .registry(registry.clone())
            .build()
            .unwrap()
    };
    let pools = [build(usize::MAX, usize::MAX), build(4, usize::MAX)];
    let most = (1u64 << 40) as f64;
    assert_eq!(value(&registry, CAPACITY, "huge"), Some(2.0 * most));
    assert_eq!(
        value(&registry, "executor_max_workers", "huge"),
        Some(most + 4.0)
    );
    drop(pools);
    assert_eq!(value(&registry, "executor_max_workers", "huge"), Some(0.0));
}

/// A task mapping over its own pool, whose queue is full: waiting for room
/// could wait for the very worker running the map, so each item that finds
/// the queue full is refused (counted) and the map goes on with the next:
/// every item has a result, and nothing hangs.
#[test]
fn map_inside_a_task_of_its_own_full_pool_refuses_items_instead_of_hanging() {
    for policy in [FullPolicy::Reject, FullPolicy::Block] {
        let registry = Registry::new();
        let pool = Arc::new(bounded(&registry, "own", 1, policy));
        let (tx, rx) = mpsc::channel();
        let mapper = Arc::clone(&pool);
        pool.spawn(move || {
            let results: Vec<_> = mapper.map(|x: u32| x, 0..4).collect();
            tx.send(results).unwrap();
        })
        .unwrap();
        let results = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the map inside the pool's own task returned");
        assert_eq!(results.len(), 4, "{results:?}");
        let refused = results
            .iter()
            .enumerate()
            .filter(|(i, r)| match r {
                Ok(x) => {
                    assert_eq!(*x as usize, *i);
                    false
                }
                Err(e) => {
                    assert_eq!(*e, TaskError::Rejected(RejectReason::Full));
                    true
                }
            })
            .count();
        pool.join();
        let c = common::counts(&scrape(&registry), "executor", "own");
        assert_eq!(c.rejected, refused as f64, "{policy:?}");
        c.assert_invariant();
    }
}

/// Only a map's own items are refused quietly: a task that a map's item
/// runs on the submitting thread (`CallerRuns`) and that submits to a full
/// pool of its own is refused and counted as usual.
#[test]
fn a_submit_made_inside_a_maps_submit_is_counted_when_refused() {
    let registry = Registry::new();
    let other = bounded(&registry, "other", 1, FullPolicy::Reject);
    let gate = Gate::new();
    let _running = occupy(&other, &gate);
    let _queued = other.submit(|| ()).unwrap();
    let other = Arc::new(other);
    let caller = bounded(&registry, "caller", 1, FullPolicy::CallerRuns);
    let caller_gate = Gate::new();
    let _busy = occupy(&caller, &caller_gate);
    let _waiting = caller.submit(|| ()).unwrap();
    let o = Arc::clone(&other);
    let results: Vec<_> = caller
        .map_in_flight(move |_: u32| o.submit(|| ()).is_err(), 0..1, 1)
        .unwrap()
        .collect();
    assert_eq!(
        results,
        [Ok(true)],
        "the item ran on the caller and was refused"
    );
    let exp = scrape(&registry);
    assert_eq!(common::counts(&exp, "executor", "other").rejected, 1.0);
    gate.open();
    caller_gate.open();
}

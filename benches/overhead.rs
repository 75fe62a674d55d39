//! Instrumentation overhead: the same tasks through the plain [`ThreadPool`]
//! (execute + a completion latch) and through [`ThreadPoolExecutor`] (`spawn`
//! then `join()`, the same fire-and-forget shape; `submit` then `join()`; or
//! each handle's `join`), for empty, ~1 us and ~10 us tasks, from one
//! submitter and from two at once. For empty tasks, also the plain pool
//! with the instrumentation's three clock reads added and nothing else
//! (`thread_pool_clocked`): the best ratio possible on the host.
//!
//! One criterion iteration is one task: a sample submits `iters` tasks and
//! waits for them all, so the reported time (the slope over samples of
//! growing size) is the cost per task with the waits' fixed cost removed.

mod common;

use std::time::{Duration, Instant};

use common::{clocked, share, spin, Latch, SIZES, WORKERS};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use executor_exporter::{Executor, Task, TaskHandle, ThreadPool, ThreadPoolExecutor};

static LATCH: Latch = Latch::new();

/// Runs `submit(n)` on `submitters` threads at once (the calling thread is
/// one of them), each with its share of `iters`.
fn from_submitters(iters: u64, submitters: u64, submit: impl Fn(u64) + Sync) {
    std::thread::scope(|s| {
        for i in 1..submitters {
            let submit = &submit;
            s.spawn(move || submit(share(iters, submitters, i)));
        }
        submit(share(iters, submitters, 0));
    });
}

fn plain(pool: &ThreadPool, iters: u64, submitters: u64, nanos: u64) -> Duration {
    plain_with(pool, iters, submitters, move || {
        move || {
            spin(nanos);
            LATCH.count_down();
        }
    })
}

/// [`plain`] with the instrumentation's three clock reads per task and
/// nothing else of it (see [`clocked`]): the ceiling of the
/// instrumented / plain ratio on this host, measured beside it.
fn plain_clocked(pool: &ThreadPool, iters: u64, submitters: u64, nanos: u64) -> Duration {
    plain_with(pool, iters, submitters, move || {
        clocked(move || {
            spin(nanos);
            LATCH.count_down();
        })
    })
}

/// Executes `iters` tasks made by `task` on the plain pool and waits for
/// them with the latch (each task counts it down).
fn plain_with<T: FnOnce() + Send + 'static>(
    pool: &ThreadPool,
    iters: u64,
    submitters: u64,
    task: impl Fn() -> T + Sync,
) -> Duration {
    LATCH.reset(iters as usize);
    let start = Instant::now();
    from_submitters(iters, submitters, |n| {
        for _ in 0..n {
            pool.execute(Task::new(task())).unwrap();
        }
    });
    LATCH.wait();
    start.elapsed()
}

/// Submits with `submit_one` (`spawn`, or `submit` with the handle
/// dropped), then waits with the pool's `join()`.
fn instrumented(
    pool: &ThreadPoolExecutor,
    iters: u64,
    submitters: u64,
    submit_one: impl Fn(&ThreadPoolExecutor) + Sync,
) -> Duration {
    let start = Instant::now();
    from_submitters(iters, submitters, |n| {
        for _ in 0..n {
            submit_one(pool);
        }
    });
    pool.join();
    start.elapsed()
}

fn instrumented_handles(
    pool: &ThreadPoolExecutor,
    iters: u64,
    submitters: u64,
    nanos: u64,
) -> Duration {
    let start = Instant::now();
    from_submitters(iters, submitters, |n| {
        let handles: Vec<TaskHandle<()>> = (0..n)
            .map(|_| pool.submit(move || spin(nanos)).unwrap())
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    start.elapsed()
}

fn overhead(c: &mut Criterion) {
    let plain_pool = ThreadPool::new(WORKERS).unwrap();
    let registry = prometheus::Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .max_workers(WORKERS)
        .exporter_id("bench")
        .registry(registry)
        .build()
        .unwrap();
    for submitters in [1u64, 2] {
        for (size, nanos) in SIZES {
            let mut g = c.benchmark_group(format!("overhead_{size}_{submitters}sub"));
            g.throughput(Throughput::Elements(1));
            g.bench_function("thread_pool", |b| {
                b.iter_custom(|iters| plain(&plain_pool, iters, submitters, nanos))
            });
            if nanos == 0 {
                g.bench_function("thread_pool_clocked", |b| {
                    b.iter_custom(|iters| plain_clocked(&plain_pool, iters, submitters, nanos))
                });
            }
            g.bench_function("executor_spawn", |b| {
                b.iter_custom(|iters| {
                    instrumented(&pool, iters, submitters, |p| {
                        p.spawn(move || spin(nanos)).unwrap()
                    })
                })
            });
            g.bench_function("executor_join", |b| {
                b.iter_custom(|iters| {
                    instrumented(&pool, iters, submitters, |p| {
                        drop(p.submit(move || spin(nanos)).unwrap())
                    })
                })
            });
            g.bench_function("executor_handles", |b| {
                b.iter_custom(|iters| instrumented_handles(&pool, iters, submitters, nanos))
            });
            g.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = overhead
}
criterion_main!(benches);

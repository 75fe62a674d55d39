//! The drop-in path: code written for a plain pool hands it `Task`s through
//! `&dyn Executor`, and keeps doing so when the pool becomes an instrumented
//! one. Side by side, on empty tasks (where the per-task cost shows most),
//! two workers, one submitter, each task counting a latch down:
//!
//! - `drop_in_empty`: the plain [`ThreadPool`] (`plain`, the baseline), the
//!   same pool given tasks that make the instrumentation's three clock reads
//!   and nothing else of it (`plain_clocked`: the best an instrumented pool
//!   that times every task can do on this host), [`ThreadPoolExecutor`]
//!   given the same `Task`s (`executor_execute`), and its own `spawn`
//!   (`executor_spawn`);
//! - `user_pool_empty`: a user's crossbeam-channel pool (`plain`, the
//!   baseline), the same pool given tasks that make the three clock reads
//!   alone (`plain_clocked`, its ceiling), and an
//!   [`InstrumentedExecutorProxy`] over it given the same `Task`s
//!   (`proxy_execute`).
//!
//! One criterion iteration is one task (see `overhead.rs`). Ratios come from
//! `benches/plot/rounds.py`, which alternates the variants:
//!
//! ```text
//! python3 benches/plot/rounds.py 15 drop_in '' plain
//! ```
//!
//! `EE_BENCH_PLACEMENT=across` pins the submitting thread to CPU 0 and every
//! pool's workers to CPU 1, `shared` all of them to CPU 0 (see
//! `common::placement`); unset, nothing is pinned.

mod common;

use std::time::{Duration, Instant};

use common::{clocked, ChannelPool, Latch, WORKERS};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use executor_exporter::{
    Executor, ExecutorExporter, InstrumentedExecutorProxy, Task, ThreadPool, ThreadPoolExecutor,
};

static LATCH: Latch = Latch::new();

/// `iters` tasks through `executor.execute`, then the latch.
fn executed(executor: &dyn Executor, iters: u64) -> Duration {
    LATCH.reset(iters as usize);
    let start = Instant::now();
    for _ in 0..iters {
        executor.execute(Task::new(|| LATCH.count_down())).unwrap();
    }
    LATCH.wait();
    start.elapsed()
}

/// [`executed`] with tasks that make the instrumentation's three clock reads
/// and nothing else of it.
fn executed_clocked(executor: &dyn Executor, iters: u64) -> Duration {
    LATCH.reset(iters as usize);
    let start = Instant::now();
    for _ in 0..iters {
        executor
            .execute(Task::new(clocked(|| LATCH.count_down())))
            .unwrap();
    }
    LATCH.wait();
    start.elapsed()
}

fn drop_in(c: &mut Criterion) {
    let plain = ThreadPool::new(WORKERS).unwrap();
    let executor = ThreadPoolExecutor::builder()
        .max_workers(WORKERS)
        .exporter_id("drop_in")
        .registry(prometheus::Registry::new())
        .build()
        .unwrap();
    let user_pool = ChannelPool::new(WORKERS);
    let exporter = ExecutorExporter::builder()
        .exporter_id("user_pool")
        .registry(prometheus::Registry::new())
        .build()
        .unwrap();
    let proxy = InstrumentedExecutorProxy::new(ChannelPool::new(WORKERS), exporter, None);
    #[cfg(target_os = "linux")]
    for pool in [&plain as &dyn Executor, &executor, &user_pool, &proxy] {
        common::place(|job| pool.execute(Task::new(job)).unwrap());
    }

    let mut g = c.benchmark_group("drop_in_empty");
    g.throughput(Throughput::Elements(1));
    g.bench_function("plain", |b| b.iter_custom(|iters| executed(&plain, iters)));
    g.bench_function("plain_clocked", |b| {
        b.iter_custom(|iters| executed_clocked(&plain, iters))
    });
    g.bench_function("executor_execute", |b| {
        b.iter_custom(|iters| executed(&executor, iters))
    });
    g.bench_function("executor_spawn", |b| {
        b.iter_custom(|iters| {
            LATCH.reset(iters as usize);
            let start = Instant::now();
            for _ in 0..iters {
                executor.spawn(|| LATCH.count_down()).unwrap();
            }
            LATCH.wait();
            start.elapsed()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("user_pool_empty");
    g.throughput(Throughput::Elements(1));
    g.bench_function("plain", |b| {
        b.iter_custom(|iters| executed(&user_pool, iters))
    });
    g.bench_function("plain_clocked", |b| {
        b.iter_custom(|iters| executed_clocked(&user_pool, iters))
    });
    g.bench_function("proxy_execute", |b| {
        b.iter_custom(|iters| executed(&proxy, iters))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = drop_in
}
criterion_main!(benches);

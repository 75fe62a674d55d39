//! The pools users would pick instead, on the same tasks: the `threadpool`
//! crate (`execute` + `join`), `rayon::ThreadPool::spawn` (+ a latch),
//! `std::thread::scope` spawning threads per batch, our plain `ThreadPool`
//! and `ThreadPoolExecutor` (`spawn` + `join`, the same shape as the
//! `threadpool` crate's; and `submit` + `join` with the handle dropped), and
//! our proxy over rayon (`spawn` + `join`) beside bare rayon, and, for empty
//! tasks, beside bare rayon with the proxy's three clock reads added
//! (`rayon_clocked`, the proxy's ceiling). For empty tasks also
//! `handle_floor`: our plain pool given tasks that each make the three clock
//! reads and share one allocation with the submitter (an `Arc` the task
//! writes and the submitter drops, as a dropped handle's shared state is):
//! the least any `submit` that returns a handle and times its task can cost
//! over our pool, so `threadpool_crate` / `handle_floor` is the ceiling of
//! `executor_submit` / `threadpool_crate`.
//! Every pool has two workers; one thread submits. `EE_BENCH_PLACEMENT`
//! pins them as in `drop_in.rs` (`thread_scope`'s threads, spawned per
//! batch, run where the submitting thread may).
//!
//! One criterion iteration is one task (see `overhead.rs`).

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{clocked, rayon_pool, spin, Latch, SIZES, WORKERS};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use executor_exporter::{
    Executor, ExecutorExporter, InstrumentedExecutorProxy, Task, ThreadPool, ThreadPoolExecutor,
};

static LATCH: Latch = Latch::new();

/// Tasks run per `std::thread::scope`: each batch spawns `WORKERS` threads
/// that share it.
const SCOPE_BATCH: u64 = 1024;

fn timed(iters: u64, submit: impl Fn()) -> Duration {
    LATCH.reset(iters as usize);
    let start = Instant::now();
    for _ in 0..iters {
        submit();
    }
    LATCH.wait();
    start.elapsed()
}

/// `iters` tasks through an instrumented executor, then its `join()`.
fn then_join<E: Executor>(
    proxy: &InstrumentedExecutorProxy<E>,
    iters: u64,
    submit_one: impl Fn(&InstrumentedExecutorProxy<E>),
) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        submit_one(proxy);
    }
    proxy.join();
    start.elapsed()
}

fn scoped(iters: u64, nanos: u64) -> Duration {
    let start = Instant::now();
    let mut left = iters;
    while left > 0 {
        let batch = left.min(SCOPE_BATCH);
        left -= batch;
        std::thread::scope(|s| {
            for i in 0..WORKERS as u64 {
                let n = common::share(batch, WORKERS as u64, i);
                s.spawn(move || {
                    for _ in 0..n {
                        spin(black_box(nanos));
                    }
                });
            }
        });
    }
    start.elapsed()
}

fn pools(c: &mut Criterion) {
    let threadpool_crate = threadpool::ThreadPool::new(WORKERS);
    let rayon_bare = rayon_pool(WORKERS);
    let plain = ThreadPool::new(WORKERS).unwrap();
    let registry = prometheus::Registry::new();
    let executor = ThreadPoolExecutor::builder()
        .max_workers(WORKERS)
        .exporter_id("pools")
        .registry(registry.clone())
        .build()
        .unwrap();
    let rayon_exporter = ExecutorExporter::builder()
        .exporter_id("pools_rayon")
        .executor_type("rayon")
        .registry(registry)
        .build()
        .unwrap();
    // The crate's own `Executor` for rayon (feature `rayon`), as users get it.
    let rayon_proxy = InstrumentedExecutorProxy::new(rayon_pool(WORKERS), rayon_exporter, None);
    #[cfg(target_os = "linux")]
    {
        common::place(|job| threadpool_crate.execute(job));
        common::place(|job| rayon_bare.spawn(job));
        common::place(|job| plain.execute(Task::new(job)).unwrap());
        common::place(|job| executor.spawn(job).unwrap());
        common::place(|job| rayon_proxy.spawn(job).unwrap());
    }

    for (size, nanos) in SIZES {
        let mut g = c.benchmark_group(format!("pools_{size}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("threadpool_crate", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    threadpool_crate.execute(move || spin(nanos));
                }
                threadpool_crate.join();
                start.elapsed()
            })
        });
        g.bench_function("rayon_spawn", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    rayon_bare.spawn(move || {
                        spin(nanos);
                        LATCH.count_down();
                    })
                })
            })
        });
        if nanos == 0 {
            // Bare rayon with the proxy's three clock reads and nothing else
            // of it: the best a proxy over rayon can do on this host.
            g.bench_function("rayon_clocked", |b| {
                b.iter_custom(|iters| {
                    timed(iters, || {
                        rayon_bare.spawn(clocked(move || {
                            spin(nanos);
                            LATCH.count_down();
                        }))
                    })
                })
            });
        }
        g.bench_function("thread_scope", |b| {
            b.iter_custom(|iters| scoped(iters, nanos))
        });
        g.bench_function("thread_pool", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    plain
                        .execute(Task::new(move || {
                            spin(nanos);
                            LATCH.count_down();
                        }))
                        .unwrap()
                })
            })
        });
        if nanos == 0 {
            g.bench_function("handle_floor", |b| {
                b.iter_custom(|iters| {
                    timed(iters, || {
                        let shared = Arc::new(AtomicU64::new(0));
                        let written = Arc::clone(&shared);
                        plain
                            .execute(Task::new(clocked(move || {
                                spin(nanos);
                                written.store(1, Ordering::Release);
                                LATCH.count_down();
                            })))
                            .unwrap();
                        drop(black_box(shared));
                    })
                })
            });
        }
        g.bench_function("executor", |b| {
            b.iter_custom(|iters| {
                then_join(&executor, iters, |p| p.spawn(move || spin(nanos)).unwrap())
            })
        });
        g.bench_function("executor_submit", |b| {
            b.iter_custom(|iters| {
                then_join(&executor, iters, |p| {
                    drop(p.submit(move || spin(nanos)).unwrap())
                })
            })
        });
        g.bench_function("rayon_proxy", |b| {
            b.iter_custom(|iters| {
                then_join(&rayon_proxy, iters, |p| {
                    p.spawn(move || spin(nanos)).unwrap()
                })
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = pools
}
criterion_main!(benches);

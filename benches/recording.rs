//! Recording cost per task, measured through the public surface:
//!
//! - `bare`: an inline executor (runs the task on the calling thread) given
//!   a boxed closure; no instrumentation at all;
//! - `proxy_spawn`: `InstrumentedExecutorProxy` over the same inline
//!   executor, `spawn` (no handle). The difference from `bare` is the full
//!   instrumentation cost of a fire-and-forget task: three clock reads,
//!   counters, two histogram observations, the in-flight count `join()`
//!   waits on, and the wrapper that counts a task dropped unrun;
//! - `proxy_drop` / `proxy_join`: the same with `submit`, then drop (or
//!   join) the handle: also the task's state word and its handle (an
//!   `Arc`'d slot the result is published to);
//! - `clock_reads`: three reads of the clock the instrumentation uses (the
//!   process-wide `quanta::Clock`, raw), nothing else: the part of
//!   `proxy_spawn` no design can skip while every task gets its own wait and
//!   duration, measured in the same run so the two compare.
//!
//! Each runs on 1 thread, then on 2 threads recording into the same exporter
//! at once (the figure is the wall time per task per thread).

mod common;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::Inline;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use executor_exporter::{Executor, ExecutorExporter, InstrumentedExecutorProxy, Task};

/// Runs `work(iters)` on `threads` threads started together; the wall time
/// from the start signal until all are done.
fn on_threads(threads: usize, iters: u64, work: impl Fn(u64) + Sync) -> Duration {
    if threads == 1 {
        let start = Instant::now();
        work(iters);
        return start.elapsed();
    }
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                barrier.wait();
                work(iters);
            });
        }
        barrier.wait();
        let start = Instant::now();
        // Leaving the scope joins the threads.
        start
    })
    .elapsed()
}

fn recording(c: &mut Criterion) {
    let registry = prometheus::Registry::new();
    let exporter = ExecutorExporter::builder()
        .exporter_id("recording")
        .registry(registry)
        .build()
        .unwrap();
    let proxy = InstrumentedExecutorProxy::new(Inline, exporter, None);
    // The crate reads one process-wide clock; `quanta` shares its
    // calibration, so this one reads the same source the same way.
    let clock = quanta::Clock::new();
    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!("recording_{threads}thread"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("bare", |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, |n| {
                    for i in 0..n {
                        Inline
                            .execute(Task::new(move || {
                                black_box(i);
                            }))
                            .unwrap();
                    }
                })
            })
        });
        g.bench_function("proxy_spawn", |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, |n| {
                    for i in 0..n {
                        proxy
                            .spawn(move || {
                                black_box(i);
                            })
                            .unwrap();
                    }
                })
            })
        });
        g.bench_function("proxy_drop", |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, |n| {
                    for i in 0..n {
                        drop(proxy.submit(move || black_box(i)).unwrap());
                    }
                })
            })
        });
        g.bench_function("proxy_join", |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, |n| {
                    for i in 0..n {
                        black_box(proxy.submit(move || black_box(i)).unwrap().join().unwrap());
                    }
                })
            })
        });
        g.bench_function("clock_reads", |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, |n| {
                    for _ in 0..n {
                        black_box(clock.raw());
                        black_box(clock.raw());
                        black_box(clock.raw());
                    }
                })
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = recording
}
criterion_main!(benches);

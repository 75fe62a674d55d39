//! The process pool against `procspawn`'s pool, on the same tiny task
//! (`x * x` on a `u64`):
//!
//! - `process_pool_roundtrip`: one worker, submit one task and join it, one
//!   at a time (one criterion iteration is one round trip);
//! - `process_pool_throughput`: two workers, tasks submitted in batches of
//!   [`BATCH`] and then all joined (one iteration is one task; criterion's
//!   slope over samples of growing size removes each sample's fixed cost).
//!
//! Pools: our plain `ProcessPool` (task states recorded into a series
//! registered nowhere), `ProcessPoolExecutor` (the same pool, its series
//! registered), and `procspawn::Pool`; in the throughput group also
//! `ProcessPoolExecutor::map_chunked` with chunks of [`CHUNK`] inputs.
//!
//! The bench binary is its own worker program for both pools, so `main` is
//! written by hand instead of `criterion_main!`: `run_if_worker` and
//! `procspawn::init` run first (a worker never returns from them), before
//! criterion parses its arguments (`--bench`, filters).

mod common;

#[cfg(target_os = "linux")]
mod linux {
    use std::hint::black_box;
    use std::time::{Duration, Instant};

    use criterion::{Criterion, Throughput};
    use executor_exporter::process_pool::{
        run_if_worker, ProcessPool, ProcessPoolExecutor, ProcessTask, WorkerRegistry,
    };

    use super::common::{self, WORKERS};

    /// Tasks in flight at once in the throughput group. procspawn holds
    /// about three file descriptors per queued task, so the batch stays well
    /// under the descriptor limit.
    pub const BATCH: u64 = 512;

    /// Inputs per chunk for `map_chunked`.
    pub const CHUNK: usize = 32;

    fn square(x: u64) -> u64 {
        x.wrapping_mul(x)
    }

    /// The tiny task, for our pools.
    pub struct Square;
    impl ProcessTask for Square {
        const NAME: &'static str = "square";
        type Input = u64;
        type Output = u64;
        type Error = String;
        fn run(x: u64) -> Result<u64, String> {
            Ok(square(x))
        }
    }

    /// Serves as a worker if this process was started as one; returns at once
    /// otherwise.
    pub fn workers() {
        run_if_worker(&WorkerRegistry::new().register::<Square>());
        procspawn::init();
    }

    fn plain(workers: usize) -> ProcessPool {
        ProcessPool::builder().max_workers(workers).build().unwrap()
    }

    fn executor(workers: usize, id: &str) -> ProcessPoolExecutor {
        ProcessPoolExecutor::builder()
            .max_workers(workers)
            .exporter_id(id)
            .registry(prometheus::Registry::new())
            .build()
            .unwrap()
    }

    fn procspawn_pool(workers: usize) -> procspawn::Pool {
        procspawn::Pool::new(workers).unwrap()
    }

    /// Runs `iters` tasks in batches of at most `BATCH`: `batch(first, n)`
    /// submits `n` tasks and joins them all.
    fn batched(iters: u64, mut batch: impl FnMut(u64, u64)) -> Duration {
        let start = Instant::now();
        let mut done = 0;
        while done < iters {
            let n = (iters - done).min(BATCH);
            batch(done, n);
            done += n;
        }
        start.elapsed()
    }

    pub fn roundtrip(c: &mut Criterion) {
        let plain = plain(1);
        let executor = executor(1, "bench-roundtrip");
        let spawn = procspawn_pool(1);
        let mut g = c.benchmark_group("process_pool_roundtrip");
        g.throughput(Throughput::Elements(1));
        let mut x = 0u64;
        g.bench_function("process_pool", |b| {
            b.iter(|| {
                x += 1;
                let h = plain.submit::<Square>(black_box(&x)).unwrap();
                black_box(h.join().unwrap().unwrap())
            })
        });
        g.bench_function("executor", |b| {
            b.iter(|| {
                x += 1;
                let h = executor.submit::<Square>(black_box(&x)).unwrap();
                black_box(h.join().unwrap().unwrap())
            })
        });
        g.bench_function("procspawn", |b| {
            b.iter(|| {
                x += 1;
                let h = spawn.spawn(black_box(x), square);
                black_box(h.join().unwrap())
            })
        });
        g.finish();
        executor.shutdown();
        spawn.shutdown();
    }

    pub fn throughput(c: &mut Criterion) {
        let plain = plain(WORKERS);
        let executor = executor(WORKERS, "bench-throughput");
        let spawn = procspawn_pool(WORKERS);
        let mut g = c.benchmark_group("process_pool_throughput");
        g.throughput(Throughput::Elements(1));
        g.bench_function("process_pool", |b| {
            b.iter_custom(|iters| {
                batched(iters, |first, n| {
                    let handles: Vec<_> = (first..first + n)
                        .map(|x| plain.submit::<Square>(&x).unwrap())
                        .collect();
                    for h in handles {
                        black_box(h.join().unwrap().unwrap());
                    }
                })
            })
        });
        g.bench_function("executor", |b| {
            b.iter_custom(|iters| {
                batched(iters, |first, n| {
                    let handles: Vec<_> = (first..first + n)
                        .map(|x| executor.submit::<Square>(&x).unwrap())
                        .collect();
                    for h in handles {
                        black_box(h.join().unwrap().unwrap());
                    }
                })
            })
        });
        g.bench_function(format!("executor_chunked_{CHUNK}"), |b| {
            b.iter_custom(|iters| {
                batched(iters, |first, n| {
                    for r in executor
                        .map_chunked::<Square, _>(first..first + n, CHUNK)
                        .unwrap()
                    {
                        black_box(r.unwrap().unwrap());
                    }
                })
            })
        });
        g.bench_function("procspawn", |b| {
            b.iter_custom(|iters| {
                batched(iters, |first, n| {
                    let handles: Vec<_> =
                        (first..first + n).map(|x| spawn.spawn(x, square)).collect();
                    for h in handles {
                        black_box(h.join().unwrap());
                    }
                })
            })
        });
        g.finish();
        executor.shutdown();
        spawn.shutdown();
    }

    pub fn run() {
        let mut c = common::criterion().configure_from_args();
        roundtrip(&mut c);
        throughput(&mut c);
        c.final_summary();
    }
}

#[cfg(target_os = "linux")]
fn main() {
    // First, before criterion reads the arguments: a worker of either pool
    // never returns from here.
    linux::workers();
    linux::run();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("the process pool is Linux only");
}

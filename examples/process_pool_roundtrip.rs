//! Measures the plain process pool: round trip of a tiny task on one worker, throughput with two
//! workers, worker start-up, and how fast a killed worker is noticed. A measurement, not a benchmark
//! with assertions; run it in release mode:
//!
//! ```text
//! cargo run --release --example process_pool_roundtrip
//! ```
//!
//! It is also the smallest complete program using the pool: the `run_if_worker` call at the top of
//! `main` is what turns the re-executed binary into a worker.

#[cfg(target_os = "linux")]
fn main() {
    use std::time::{Duration, Instant};

    use executor_exporter::process_pool::{
        run_if_worker, ProcessPool, ProcessTask, WorkerRegistry,
    };
    use executor_exporter::{FailureReason, TaskError};

    struct Tiny;
    impl ProcessTask for Tiny {
        const NAME: &'static str = "tiny";
        type Input = u64;
        type Output = u64;
        type Error = String;
        fn run(x: u64) -> Result<u64, String> {
            Ok(x.wrapping_mul(x))
        }
    }

    struct Die;
    impl ProcessTask for Die {
        const NAME: &'static str = "die";
        type Input = ();
        type Output = ();
        type Error = String;
        fn run((): ()) -> Result<(), String> {
            std::process::abort()
        }
    }

    run_if_worker(&WorkerRegistry::new().register::<Tiny>().register::<Die>());

    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }

    // Start-up: first task on a fresh pool includes spawn + exec + handshake.
    let mut starts = Vec::new();
    for _ in 0..20 {
        let pool = ProcessPool::builder().max_workers(1).build().unwrap();
        let t = Instant::now();
        pool.submit::<Tiny>(&1).unwrap().join().unwrap().unwrap();
        starts.push(t.elapsed());
    }
    starts.sort();

    // Round trip: submit → join, one at a time, one warm worker.
    let pool = ProcessPool::builder().max_workers(1).build().unwrap();
    for i in 0..1000 {
        pool.submit::<Tiny>(&i).unwrap().join().unwrap().unwrap();
    }
    let n = 20_000;
    let mut rtt = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        pool.submit::<Tiny>(&i).unwrap().join().unwrap().unwrap();
        rtt.push(t.elapsed());
    }
    rtt.sort();

    // Crash detection: a task that aborts, submit → error.
    let mut crash = Vec::new();
    for _ in 0..20 {
        pool.submit::<Tiny>(&0).unwrap().join().unwrap().unwrap(); // a warm worker
        let t = Instant::now();
        let err = pool.submit::<Die>(&()).unwrap().join().unwrap_err();
        crash.push(t.elapsed());
        assert!(
            matches!(
                err,
                TaskError::Failed {
                    reason: FailureReason::WorkerDied,
                    ..
                }
            ),
            "{err}"
        );
    }
    crash.sort();
    drop(pool);

    // Throughput: many tasks queued at once on two workers.
    let pool = ProcessPool::builder().max_workers(2).build().unwrap();
    for i in 0..1000 {
        pool.submit::<Tiny>(&i).unwrap().join().unwrap().unwrap();
    }
    let total = 100_000u64;
    let t = Instant::now();
    let handles: Vec<_> = (0..total)
        .map(|i| pool.submit::<Tiny>(&i).unwrap())
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let elapsed = t.elapsed();
    drop(pool);

    println!("cpus: {}", num_cpus::get());
    println!(
        "worker start (first task on a new pool): median {:?}, p90 {:?}",
        percentile(&starts, 0.5),
        percentile(&starts, 0.9)
    );
    println!(
        "round trip, tiny task, 1 worker ({n} calls): median {:?}, p90 {:?}, p99 {:?}",
        percentile(&rtt, 0.5),
        percentile(&rtt, 0.9),
        percentile(&rtt, 0.99)
    );
    println!(
        "abort detected and reported: median {:?}, p90 {:?}",
        percentile(&crash, 0.5),
        percentile(&crash, 0.9)
    );
    println!(
        "throughput, 2 workers, {total} tiny tasks queued at once: {:.0} tasks/s ({:.1} us/task)",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / total as f64
    );
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("the process pool is Linux only");
}

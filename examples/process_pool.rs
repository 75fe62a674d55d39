//! A CPU-bound workload on `ProcessPoolExecutor`: counting primes in ranges,
//! in two worker processes. One task kills its own worker (SIGKILL) and one
//! runs past its timeout; both fail alone, their workers are replaced, and
//! the pool goes on. At the end, a summary of the metrics read back from the
//! registry. Serves nothing; exits by itself in a few seconds.
//!
//! ```text
//! cargo run --release --example process_pool
//! ```
//!
//! The first line of `main`, `run_if_worker`, is what makes this work: the
//! pool's workers are this same binary re-executed, and that call turns them
//! into workers (it returns at once in the normal process).

#[cfg(target_os = "linux")]
mod app {
    /// A counter's value. The `prometheus` crate's proto types differ with its
    /// `protobuf` feature (this crate's feature of the same name turns it on).
    fn counter_value(m: &executor_exporter::prometheus::proto::Metric) -> f64 {
        #[cfg(feature = "protobuf")]
        return m.get_counter().value();
        #[cfg(not(feature = "protobuf"))]
        return m.get_counter().get_value();
    }

    use std::time::{Duration, Instant};

    use executor_exporter::process_pool::{ProcessTask, WorkerRegistry};
    use executor_exporter::prometheus::proto::{Metric, MetricFamily};
    use executor_exporter::prometheus::Registry;
    use executor_exporter::{ProcessPoolExecutor, TaskError};

    /// Counts the primes in `[start, end)`, by trial division: plain CPU work.
    pub struct CountPrimes;
    impl ProcessTask for CountPrimes {
        const NAME: &'static str = "count_primes";
        type Input = (u64, u64);
        type Output = u64;
        type Error = String;
        fn run((start, end): (u64, u64)) -> Result<u64, String> {
            if start > end {
                return Err(format!("empty range {start}..{end}"));
            }
            Ok((start..end).filter(|&n| is_prime(n)).count() as u64)
        }
    }

    fn is_prime(n: u64) -> bool {
        if n < 4 {
            return n >= 2;
        }
        if n % 2 == 0 {
            return false;
        }
        let mut d = 3;
        while d * d <= n {
            if n % d == 0 {
                return false;
            }
            d += 2;
        }
        true
    }

    /// Kills its own worker process, as a crash in native code would.
    pub struct Crash;
    impl ProcessTask for Crash {
        const NAME: &'static str = "crash";
        type Input = ();
        type Output = ();
        type Error = String;
        fn run((): ()) -> Result<(), String> {
            // SAFETY: kill(2) on this process with a valid signal number.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            std::thread::sleep(Duration::from_secs(60));
            Ok(())
        }
    }

    /// What the workers can run; `main` hands it to `run_if_worker` first.
    pub fn registry() -> WorkerRegistry {
        WorkerRegistry::new()
            .register::<CountPrimes>()
            .register::<Crash>()
    }

    /// Ranges of `STEP` numbers below `LIMIT`.
    const LIMIT: u64 = 2_000_000;
    const STEP: u64 = 100_000;

    fn ended<T: std::fmt::Debug, E: std::fmt::Debug>(
        r: &Result<Result<T, E>, TaskError>,
    ) -> String {
        match r {
            Ok(Ok(v)) => format!("completed: {v:?}"),
            Ok(Err(e)) => format!("returned Err: {e:?}"),
            Err(TaskError::Failed { reason, message }) => format!("failed ({reason}): {message}"),
            Err(e) => format!("failed: {e}"),
        }
    }

    pub fn run() {
        let registry = Registry::new();
        let pool = ProcessPoolExecutor::builder()
            .max_workers(2)
            .exporter_id("primes")
            .registry(registry.clone())
            .build()
            .expect("a process pool");
        let started = Instant::now();

        // 1. The workload: 20 ranges, sent 4 per round trip (each chunk is
        //    one task in the metrics).
        let ranges: Vec<(u64, u64)> = (0..LIMIT / STEP)
            .map(|i| (i * STEP, (i + 1) * STEP))
            .collect();
        let mut total = 0;
        for (range, result) in ranges.iter().zip(
            pool.map_chunked::<CountPrimes, _>(ranges.clone(), 4)
                .unwrap(),
        ) {
            let count = result.expect("ran").expect("a valid range");
            if range.0 == 0 {
                println!("primes in {:?}: {count}", range.0..range.1);
            }
            total += count;
        }
        println!(
            "primes below {LIMIT}: {total} ({} ranges in chunks of 4, {:?})",
            ranges.len(),
            started.elapsed()
        );
        assert_eq!(total, 148_933, "pi(2 * 10^6)");

        // 2. A task that kills its worker: only that task fails, with the
        //    worker's pid and signal; the worker is replaced.
        let pids = pool.worker_pids();
        let crash = pool.submit::<Crash>(&()).unwrap().join();
        println!("crash task {}", ended(&crash));

        // 3. A task past its timeout: its worker is killed and replaced.
        let slow = pool
            .submit_with_timeout::<CountPrimes>(&(0, u64::MAX / 2), Duration::from_millis(300))
            .unwrap()
            .join();
        println!("slow task {}", ended(&slow));

        // 4. The pool goes on, with new workers where the old ones died.
        let after = pool.submit::<CountPrimes>(&(0, 100)).unwrap().join();
        println!("a task after both {}", ended(&after));
        println!(
            "worker pids before: {pids:?}, now: {:?}",
            pool.worker_pids()
        );

        pool.join();
        summary(&registry.gather(), "primes");
        pool.shutdown();
        println!("done in {:?}", started.elapsed());
    }

    /// Prints the counts of executor `id` from gathered metric families.
    fn summary(families: &[MetricFamily], id: &str) {
        let label = |m: &Metric, name: &str| -> String {
            m.get_label()
                .iter()
                .find(|l| l.name() == name)
                .map(|l| l.value().to_owned())
                .unwrap_or_default()
        };
        let ours = |f: &MetricFamily| -> Vec<Metric> {
            f.get_metric()
                .iter()
                .filter(|m| label(m, "executor") == id)
                .cloned()
                .collect()
        };
        let series = |name: &str| -> Vec<Metric> {
            families
                .iter()
                .find(|f| f.name() == name)
                .map(ours)
                .unwrap_or_default()
        };
        let counter = |name: &str| -> f64 { series(name).iter().map(counter_value).sum() };
        println!("\nmetrics of executor {id:?} (executor_type=\"process_pool\"):");
        println!(
            "  submitted            {}",
            counter("executor_submitted_tasks_total")
        );
        for m in series("executor_tasks_duration_seconds") {
            println!(
                "  {:<20} {}",
                label(&m, "result"),
                m.get_histogram().get_sample_count()
            );
        }
        for m in series("executor_task_failures_total") {
            let v = counter_value(&m);
            if v > 0.0 {
                println!("    reason {:<13} {v}", label(&m, "reason"));
            }
        }
        println!(
            "  worker restarts      {}",
            counter("executor_worker_restarts_total")
        );
        println!(
            "  initialized workers  {}",
            counter("executor_initialized_workers_total")
        );
    }
}

#[cfg(target_os = "linux")]
fn main() {
    // First thing in `main`: in a worker process this serves tasks and never
    // returns; in this process it returns at once.
    executor_exporter::process_pool::run_if_worker(&app::registry());
    app::run();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("the process pool is Linux only");
}

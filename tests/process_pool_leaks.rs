//! Resource hygiene of the process pool: no zombie workers and no descriptor growth over thousands of
//! tasks, crashes, timeouts and recycled workers. Its own test binary with a single test, so no other
//! test opens descriptors or starts processes while it counts them.
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use executor_exporter::process_pool::{run_if_worker, ProcessPool, ProcessTask, WorkerRegistry};
use executor_exporter::{FailureReason, TaskError, TaskHandle};

const WATCHDOG: Duration = Duration::from_secs(60);

/// Aborts the whole test binary if the test holding it runs longer than twice the watchdog.
#[must_use]
fn test_watchdog(name: &'static str) -> impl Drop {
    common::abort_if_hung(name, WATCHDOG * 2)
}

struct Pid;
impl ProcessTask for Pid {
    const NAME: &'static str = "pid";
    type Input = u64;
    type Output = u32;
    type Error = String;
    fn run(ms: u64) -> Result<u32, String> {
        std::thread::sleep(Duration::from_millis(ms));
        Ok(std::process::id())
    }
}

struct Crash;
impl ProcessTask for Crash {
    const NAME: &'static str = "crash";
    type Input = ();
    type Output = ();
    type Error = String;
    fn run((): ()) -> Result<(), String> {
        std::process::abort()
    }
}

#[test]
fn worker_entry() {
    run_if_worker(&WorkerRegistry::new().register::<Pid>().register::<Crash>());
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Children of this process in any state, zombies included (they keep their /proc entry until reaped).
fn children() -> Vec<(u32, char)> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may contain spaces, so split after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut fields = rest.split(' ');
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if fields.next() == Some(&me) {
            out.push((pid, state));
        }
    }
    out
}

/// The task's result, failing the test if it does not come within the watchdog.
fn join<T: Send + 'static>(mut h: TaskHandle<T>) -> Result<T, TaskError> {
    match h.join_timeout(WATCHDOG) {
        Err(TaskError::TimedOut) => panic!("a task did not end within {WATCHDOG:?}"),
        other => other,
    }
}

#[test]
fn no_zombies_and_no_fd_growth_over_10_000_tasks() {
    let _watchdog = test_watchdog("no_zombies_and_no_fd_growth_over_10_000_tasks");
    let before = open_fds();
    assert!(children().is_empty(), "{:?}", children());
    let mut all_pids = HashSet::new();
    for round in 0..2 {
        let pool = ProcessPool::builder()
            .max_workers(2)
            .max_tasks_per_child(1000)
            .worker_test_entry("worker_entry")
            .build()
            .unwrap();
        let handles: Vec<_> = (0..5000).map(|_| pool.submit::<Pid>(&0).unwrap()).collect();
        for h in handles {
            all_pids.insert(join(h).unwrap().unwrap());
        }
        for _ in 0..3 {
            let h = pool.submit::<Crash>(&()).unwrap();
            assert!(matches!(
                join(h),
                Err(TaskError::Failed {
                    reason: FailureReason::WorkerDied,
                    ..
                })
            ));
        }
        let t = pool
            .submit_with_timeout::<Pid>(&30_000, Duration::from_millis(100))
            .unwrap();
        assert!(matches!(
            join(t),
            Err(TaskError::Failed {
                reason: FailureReason::Timeout,
                ..
            })
        ));
        if round == 1 {
            pool.kill();
        }
        drop(pool);
        assert!(children().is_empty(), "round {round}: {:?}", children());
    }
    assert!(
        all_pids.len() >= 8,
        "recycling started new workers: {}",
        all_pids.len()
    );
    let after = open_fds();
    assert_eq!(before, after, "descriptors before and after");
}

//! A program that forgets `run_if_worker`: every worker re-enters its `main`. Before the fix each one
//! built a pool of its own and started more workers (a process storm); now building a pool in a worker
//! is a `BuildError`, and the pool that started it breaks at once with the same words.
//!
//! This binary (`harness = false`) is both the careless program (with `CARELESS_PROGRAM` set: the
//! variable is inherited by its workers, which re-enter `main` the same way) and the test, which runs
//! the program in a process group of its own, counts the group's processes, and kills the whole group
//! if they ever exceed a small bound, so a regression cannot flood the machine.
#![cfg(target_os = "linux")]

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use executor_exporter::process_pool::{ProcessPoolExecutor, ProcessTask};
use executor_exporter::prometheus::{Registry, TextEncoder};

const CARELESS: &str = "CARELESS_PROGRAM";
const MAX_WORKERS: usize = 2;
/// The program, its workers, and one more for a worker caught between fork and exit.
const BOUND: usize = 1 + MAX_WORKERS + 1;

struct Square;
impl ProcessTask for Square {
    const NAME: &'static str = "square";
    type Input = u64;
    type Output = u64;
    type Error = String;
    fn run(x: u64) -> Result<u64, String> {
        Ok(x * x)
    }
}

fn main() {
    if std::env::var_os(CARELESS).is_some() {
        careless_program();
    }
    let name = "a_program_without_run_if_worker_breaks_its_pool_fast_and_starts_no_storm";
    println!("\nrunning 1 test");
    match std::panic::catch_unwind(forgotten_hook_breaks_the_pool_without_a_storm) {
        Ok(()) => println!("test {name} ... ok\n\ntest result: ok. 1 passed; 0 failed\n"),
        Err(_) => {
            println!("test {name} ... FAILED\n\ntest result: FAILED. 0 passed; 1 failed\n");
            std::process::exit(101);
        }
    }
}

/// What a new user writes: a pool and a submit, and no `run_if_worker` line.
fn careless_program() -> ! {
    let registry = Registry::new();
    let pool = ProcessPoolExecutor::builder()
        .max_workers(MAX_WORKERS)
        .exporter_id("careless")
        .registry(registry.clone())
        .build();
    let pool = match pool {
        Ok(pool) => pool,
        Err(e) => {
            // A worker: it must not start workers of its own.
            println!("BUILD ERROR: {e}");
            std::process::exit(3);
        }
    };
    let handles: Vec<_> = (0..4u64).map(|x| pool.submit::<Square>(&x)).collect();
    for h in handles {
        match h {
            Ok(h) => println!("JOIN: {:?}", h.join()),
            Err(e) => println!("SUBMIT: {e}"),
        }
    }
    drop(pool);
    let text = TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_default();
    for line in text.lines() {
        if line.starts_with("executor_task_failures_total") && line.contains("reason=\"broken\"") {
            println!("METRIC: {line}");
        }
    }
    std::process::exit(0);
}

/// Pids of the processes in process group `pgid`.
fn group(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the command name: state, ppid, pgrp.
            let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split(' ').collect();
            fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
        })
        .collect()
}

fn kill_group(pgid: u32) {
    // SAFETY: kill(2) on the process group this test created for the careless program.
    unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
}

fn forgotten_hook_breaks_the_pool_without_a_storm() {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .env(CARELESS, "1")
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the careless program");
    let pgid = child.id();
    let started = Instant::now();
    let mut most = 0;
    let status = loop {
        let alive = group(pgid).len();
        most = most.max(alive);
        if alive > BOUND {
            kill_group(pgid);
            let _ = child.wait();
            panic!("process storm: {alive} processes in the program's group (bound {BOUND})");
        }
        if let Some(status) = child.try_wait().expect("wait for the careless program") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            kill_group(pgid);
            let _ = child.wait();
            panic!("the careless program gave no result within 20 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = started.elapsed();
    let out = std::io::read_to_string(child.stdout.take().expect("piped stdout")).unwrap();
    // No worker is left behind once the program has exited.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !group(pgid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = group(pgid);
    kill_group(pgid);
    println!("careless program: {status}, {took:?}, at most {most} processes\n{out}");
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let joins: Vec<&str> = out.lines().filter(|l| l.starts_with("JOIN: ")).collect();
    assert_eq!(joins.len(), 4, "{out}");
    for join in joins {
        assert!(
            join.contains("Broken")
                && join.contains("did not call `run_if_worker`")
                && join.contains("as the first line of `main`"),
            "{join}"
        );
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("METRIC: ") && l.ends_with(" 4")),
        "the four tasks are counted as failed with reason broken: {out}"
    );
}

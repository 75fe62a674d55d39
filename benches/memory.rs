//! Memory per queued task, and peak RSS, with 1,000,000 empty tasks queued
//! behind a single blocked worker (200,000 with `BENCH_QUICK=1`).
//!
//! Not a criterion bench: each variant runs in a fresh child process (this
//! same binary, re-run with `MEMORY_VARIANT` set) so that memory freed by
//! one variant cannot hide the next one's growth. A child reads VmRSS from
//! /proc/self/status before and after queueing, and VmHWM (peak RSS) at the
//! end. The closure captures one `u64`, so 8 bytes per task are the
//! closure's own; the rest is what the pool adds.
//!
//! Results are printed and written to `target/memory.json` (under
//! `CARGO_TARGET_DIR` when set) for `benches/plot/report.py`.

mod common;

use std::hint::black_box;
use std::process::Command;
use std::sync::mpsc;

use common::{proc_status_bytes, quick, Latch};
use executor_exporter::{Executor, Task, TaskHandle, ThreadPool, ThreadPoolExecutor};

const VARIANTS: [&str; 5] = [
    "thread_pool",
    "executor_spawn",
    "executor_drop_handles",
    "executor_keep_handles",
    "threadpool_crate",
];

/// What each queued closure captures.
const CLOSURE_BYTES: u64 = std::mem::size_of::<u64>() as u64;

static LATCH: Latch = Latch::new();

fn tasks() -> u64 {
    if quick() {
        200_000
    } else {
        1_000_000
    }
}

fn rss() -> u64 {
    proc_status_bytes("VmRSS:").expect("VmRSS in /proc/self/status")
}

/// Occupies the single worker until the returned sender is dropped or sent to.
fn blocker() -> (
    impl FnOnce() + Send + 'static,
    mpsc::Sender<()>,
    mpsc::Receiver<()>,
) {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let task = move || {
        started_tx.send(()).unwrap();
        let _ = release_rx.recv();
    };
    (task, release_tx, started_rx)
}

/// Runs one variant in this process; returns (RSS growth, peak RSS) in bytes.
fn child(variant: &str, n: u64) -> (u64, u64) {
    let (block, release, started) = blocker();
    let (before, after);
    match variant {
        "thread_pool" => {
            let pool = ThreadPool::new(1).unwrap();
            pool.execute(Task::new(block)).unwrap();
            started.recv().unwrap();
            LATCH.reset(n as usize);
            before = rss();
            for i in 0..n {
                pool.execute(Task::new(move || {
                    black_box(i);
                    LATCH.count_down();
                }))
                .unwrap();
            }
            after = rss();
            release.send(()).unwrap();
            LATCH.wait();
        }
        "executor_spawn" => {
            let pool = ThreadPoolExecutor::builder()
                .max_workers(1)
                .registry(prometheus::Registry::new())
                .build()
                .unwrap();
            pool.spawn(block).unwrap();
            started.recv().unwrap();
            before = rss();
            for i in 0..n {
                pool.spawn(move || {
                    black_box(i);
                })
                .unwrap();
            }
            after = rss();
            release.send(()).unwrap();
            pool.join();
        }
        "executor_drop_handles" | "executor_keep_handles" => {
            let keep = variant == "executor_keep_handles";
            let pool = ThreadPoolExecutor::builder()
                .max_workers(1)
                .registry(prometheus::Registry::new())
                .build()
                .unwrap();
            drop(pool.submit(block).unwrap());
            started.recv().unwrap();
            let mut handles: Vec<TaskHandle<()>> = Vec::new();
            before = rss();
            for i in 0..n {
                let h = pool
                    .submit(move || {
                        black_box(i);
                    })
                    .unwrap();
                if keep {
                    handles.push(h);
                }
            }
            after = rss();
            release.send(()).unwrap();
            pool.join();
            drop(handles);
        }
        "threadpool_crate" => {
            let pool = threadpool::ThreadPool::new(1);
            pool.execute(block);
            started.recv().unwrap();
            before = rss();
            for i in 0..n {
                pool.execute(move || {
                    black_box(i);
                });
            }
            after = rss();
            release.send(()).unwrap();
            pool.join();
        }
        other => panic!("unknown variant {other}"),
    }
    let peak = proc_status_bytes("VmHWM:").expect("VmHWM in /proc/self/status");
    (after.saturating_sub(before), peak)
}

fn main() {
    let n = tasks();
    if let Ok(variant) = std::env::var("MEMORY_VARIANT") {
        let (grown, peak) = child(&variant, n);
        println!("{grown} {peak}");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut json = Vec::new();
    println!(
        "memory: {n} empty tasks queued behind one blocked worker (closure: {CLOSURE_BYTES} bytes)"
    );
    for variant in VARIANTS {
        let out = Command::new(&exe)
            .env("MEMORY_VARIANT", variant)
            .output()
            .expect("run the memory child");
        assert!(
            out.status.success(),
            "{variant}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut it = text.split_whitespace().map(|v| v.parse::<u64>().unwrap());
        let (grown, peak) = (it.next().unwrap(), it.next().unwrap());
        let per_task = grown as f64 / n as f64;
        let beyond = per_task - CLOSURE_BYTES as f64;
        println!(
            "memory/{variant:<22} {per_task:8.1} bytes/task ({beyond:6.1} beyond the closure), peak RSS {:7.1} MiB",
            peak as f64 / (1024.0 * 1024.0)
        );
        json.push(format!(
            "  \"{variant}\": {{\"tasks\": {n}, \"bytes_per_task\": {per_task:.1}, \"beyond_closure\": {beyond:.1}, \"peak_rss_bytes\": {peak}}}"
        ));
    }
    let dir = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").to_owned());
    let path = std::path::Path::new(&dir).join("memory.json");
    std::fs::write(&path, format!("{{\n{}\n}}\n", json.join(",\n"))).unwrap();
}

//! Instructions per task, for callgrind: the host's speed drifts by more than
//! some targets are about, instruction counts do not.
//!
//! Not criterion: each variant is a loop of `n` tasks in its own
//! `#[inline(never)]` function, so `valgrind --tool=callgrind
//! --toggle-collect='instructions::loop_*'` counts that loop alone, and the
//! difference between runs of `n` and `2n` tasks, divided by `n`, is the
//! count per task without the first task's one-time costs (a thread's shard).
//! `benches/plot/instructions.py` does that for every variant:
//!
//! - `bare`: an inline executor given a boxed closure;
//! - `clock_reads`: three reads of the process-wide clock (`quanta`, raw);
//! - `proxy_spawn`: `InstrumentedExecutorProxy::spawn` over the inline
//!   executor, the whole fire-and-forget path;
//! - `proxy_execute`: the drop-in path, a [`Task`] handed to the same proxy
//!   through `&dyn Executor` (what code written for a plain pool calls).
//!
//! `cargo bench` runs every variant for a few thousand tasks (so the loops
//! build and run); `instructions VARIANT N` runs one.

mod common;

use std::hint::black_box;

use common::Inline;
use executor_exporter::{Executor, ExecutorExporter, InstrumentedExecutorProxy, Task};

const VARIANTS: [&str; 4] = ["bare", "clock_reads", "proxy_spawn", "proxy_execute"];

#[inline(never)]
fn loop_bare(n: u64) {
    for i in 0..n {
        Inline
            .execute(Task::new(move || {
                black_box(i);
            }))
            .unwrap();
    }
}

#[inline(never)]
fn loop_clock_reads(clock: &quanta::Clock, n: u64) {
    for _ in 0..n {
        black_box(clock.raw());
        black_box(clock.raw());
        black_box(clock.raw());
    }
}

#[inline(never)]
fn loop_proxy_spawn(proxy: &InstrumentedExecutorProxy<Inline>, n: u64) {
    for i in 0..n {
        proxy
            .spawn(move || {
                black_box(i);
            })
            .unwrap();
    }
}

#[inline(never)]
fn loop_proxy_execute(proxy: &dyn Executor, n: u64) {
    for i in 0..n {
        proxy
            .execute(Task::new(move || {
                black_box(i);
            }))
            .unwrap();
    }
}

fn run(variant: &str, n: u64) {
    let exporter = ExecutorExporter::builder()
        .exporter_id("instructions")
        .registry(prometheus::Registry::new())
        .build()
        .unwrap();
    let proxy = InstrumentedExecutorProxy::new(Inline, exporter, None);
    // The crate reads one process-wide clock; `quanta` shares its
    // calibration, so this one reads the same source the same way.
    let clock = quanta::Clock::new();
    match variant {
        "bare" => loop_bare(n),
        "clock_reads" => loop_clock_reads(&clock, n),
        "proxy_spawn" => loop_proxy_spawn(&proxy, n),
        "proxy_execute" => loop_proxy_execute(black_box(&proxy), n),
        other => panic!("unknown variant {other:?}; one of {VARIANTS:?}"),
    }
}

fn main() {
    // `cargo bench` passes `--bench` (and maybe a filter): run them all.
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [variant, n] if !variant.starts_with('-') => {
            run(variant, n.parse().expect("N: a number of tasks"));
        }
        _ => {
            for variant in VARIANTS {
                run(variant, 5_000);
            }
            println!(
                "instructions: {} ran; for counts: python3 benches/plot/instructions.py",
                VARIANTS.join(", ")
            );
        }
    }
}

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
//!   through `&dyn Executor` (what code written for a plain pool calls);
//! - `proxy_submit`: `submit` with its handle dropped at once, the path that
//!   shares a task's state with a handle (one allocation per task);
//! - `proxy_submit_dropped`: the same, over an executor that keeps the task
//!   until the handle is dropped, then runs it: a pool's usual order, where
//!   the worker picks the task up after the submitter let its handle go;
//! - `proxy_spawn_native`: `proxy_spawn` with native histograms (schema 3)
//!   kept beside the classic ones;
//! - with feature `tracing`, `proxy_spawn_in_span` and `proxy_execute_in_span`:
//!   the same two inside a span of tracing-subscriber's registry, so that
//!   each task is wrapped in the span and runs in it; `proxy_spawn_outside_span`,
//!   under that subscriber outside any span; `span_only`, what the span
//!   alone costs without a pool (the current span looked up, entered,
//!   exited and released);
//! - `proxy_spawn_exemplar` and `proxy_execute_exemplar`: the same two paths
//!   through a proxy whose exporter has an exemplar hook, which hands out a
//!   clone of one prebuilt label set (the crate's cost, not that of building
//!   labels): the hook's call, the labels carried with the task, and two
//!   exemplars recorded (wall-clock time included).
//!
//! `cargo bench` runs every variant for a few thousand tasks (so the loops
//! build and run); `instructions VARIANT N` runs one.

mod common;

use std::hint::black_box;

use common::Inline;
use executor_exporter::{
    Executor, ExecutorExporter, ExemplarLabels, InstrumentedExecutorProxy, Task,
};

const VARIANTS: [&str; 9] = [
    "bare",
    "clock_reads",
    "proxy_spawn",
    "proxy_execute",
    "proxy_submit",
    "proxy_submit_dropped",
    "proxy_spawn_exemplar",
    "proxy_execute_exemplar",
    "proxy_spawn_native",
];
#[cfg(feature = "tracing")]
const IN_SPAN: [&str; 4] = [
    "proxy_spawn_in_span",
    "proxy_execute_in_span",
    "proxy_spawn_outside_span",
    "span_only",
];
#[cfg(not(feature = "tracing"))]
const IN_SPAN: [&str; 0] = [];

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

#[inline(never)]
fn loop_proxy_submit(proxy: &InstrumentedExecutorProxy<Inline>, n: u64) {
    for i in 0..n {
        drop(
            proxy
                .submit(move || {
                    black_box(i);
                })
                .unwrap(),
        );
    }
}

thread_local! {
    static KEPT: std::cell::Cell<Option<Task>> = const { std::cell::Cell::new(None) };
}

/// Keeps the one task handed to it (in a thread-local slot) for the caller
/// to run later.
struct Deferred;

impl Executor for Deferred {
    fn execute(&self, task: Task) -> Result<(), executor_exporter::Rejected> {
        KEPT.set(Some(task));
        Ok(())
    }
}

#[inline(never)]
fn loop_proxy_submit_dropped(proxy: &InstrumentedExecutorProxy<Deferred>, n: u64) {
    for i in 0..n {
        drop(
            proxy
                .submit(move || {
                    black_box(i);
                })
                .unwrap(),
        );
        if let Some(task) = KEPT.take() {
            task.run();
        }
    }
}

fn run(variant: &str, n: u64) {
    if variant == "proxy_submit_dropped" {
        let exporter = ExecutorExporter::builder()
            .exporter_id("instructions")
            .registry(prometheus::Registry::new());
        let proxy = InstrumentedExecutorProxy::new(Deferred, exporter.build().unwrap(), None);
        return loop_proxy_submit_dropped(&proxy, n);
    }
    let mut exporter = ExecutorExporter::builder()
        .exporter_id("instructions")
        .registry(prometheus::Registry::new());
    if variant.ends_with("_exemplar") {
        let labels = ExemplarLabels::new([("trace_id", "4bf92f3577b34da6")]).unwrap();
        exporter = exporter.exemplar(move || Some(labels.clone()));
    }
    if variant == "proxy_spawn_native" {
        exporter = exporter.native_histograms(3);
    }
    let proxy = InstrumentedExecutorProxy::new(Inline, exporter.build().unwrap(), None);
    // The crate reads one process-wide clock; `quanta` shares its
    // calibration, so this one reads the same source the same way.
    let clock = quanta::Clock::new();
    match variant {
        "bare" => loop_bare(n),
        "clock_reads" => loop_clock_reads(&clock, n),
        "proxy_spawn" | "proxy_spawn_native" => loop_proxy_spawn(&proxy, n),
        "proxy_execute" => loop_proxy_execute(black_box(&proxy), n),
        "proxy_submit" => loop_proxy_submit(&proxy, n),
        "proxy_spawn_exemplar" => loop_proxy_spawn(&proxy, n),
        "proxy_execute_exemplar" => loop_proxy_execute(black_box(&proxy), n),
        #[cfg(feature = "tracing")]
        "proxy_spawn_in_span" => in_span(|| loop_proxy_spawn(&proxy, n)),
        #[cfg(feature = "tracing")]
        "proxy_execute_in_span" => in_span(|| loop_proxy_execute(black_box(&proxy), n)),
        #[cfg(feature = "tracing")]
        "proxy_spawn_outside_span" => {
            tracing::subscriber::with_default(tracing_subscriber::registry(), || {
                loop_proxy_spawn(&proxy, n)
            })
        }
        #[cfg(feature = "tracing")]
        "span_only" => in_span(|| loop_span_only(n)),
        other => panic!("unknown variant {other:?}; one of {VARIANTS:?} {IN_SPAN:?}"),
    }
}

#[cfg(feature = "tracing")]
#[inline(never)]
fn loop_span_only(n: u64) {
    for i in 0..n {
        let span = tracing::Span::current();
        let _entered = span.enter();
        black_box(i);
    }
}

/// Runs `f` inside a span of a registry subscriber (this thread's default:
/// the inline executor runs each task here).
#[cfg(feature = "tracing")]
fn in_span(f: impl FnOnce()) {
    tracing::subscriber::with_default(tracing_subscriber::registry(), || {
        tracing::info_span!("request").in_scope(f);
    });
}

fn main() {
    // `cargo bench` passes `--bench` (and maybe a filter): run them all.
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [variant, n] if !variant.starts_with('-') => {
            run(variant, n.parse().expect("N: a number of tasks"));
        }
        _ => {
            for variant in VARIANTS.iter().chain(&IN_SPAN) {
                run(variant, 5_000);
            }
            let ran: Vec<&str> = VARIANTS.iter().chain(&IN_SPAN).copied().collect();
            println!(
                "instructions: {} ran; for counts: python3 benches/plot/instructions.py",
                ran.join(", ")
            );
        }
    }
}

//! Property: whatever the sequence of submits (that succeed, panic, return
//! `Err` or sleep), handle-less spawns, cancels, maps and shutdowns, every
//! task ends exactly once and the exposed metrics equal the tally of what
//! the handles report (and, for spawned tasks, of what their bodies did).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{counts, scrape};
use executor_exporter::prometheus::Registry;
use executor_exporter::{TaskError, TaskHandle, ThreadPoolExecutor};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Ok,
    Panic,
    Err,
    Sleep(u16),
}

#[derive(Debug, Clone)]
enum Op {
    Submit(Kind),
    Spawn(Kind),
    Cancel(usize),
    Map(Vec<Kind>),
    Join,
    Shutdown,
    ShutdownNow,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => Just(Kind::Ok),
        1 => Just(Kind::Panic),
        1 => Just(Kind::Err),
        3 => (0u16..400).prop_map(Kind::Sleep),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => kind().prop_map(Op::Submit),
        4 => kind().prop_map(Op::Spawn),
        4 => any::<usize>().prop_map(Op::Cancel),
        2 => prop::collection::vec(kind(), 0..8).prop_map(Op::Map),
        1 => Just(Op::Join),
        1 => Just(Op::Shutdown),
        1 => Just(Op::ShutdownNow),
    ]
}

/// Runs a task of the given kind; `Err` tasks go through `submit_fallible`.
fn body(kind: Kind) -> Result<u32, String> {
    match kind {
        Kind::Ok => Ok(1),
        Kind::Panic => panic!("planned panic"),
        Kind::Err => Err("planned error".into()),
        Kind::Sleep(us) => {
            std::thread::sleep(Duration::from_micros(us as u64));
            Ok(2)
        }
    }
}

type Output = Result<u32, String>;
type Outcome = Result<Output, TaskError>;

#[derive(Default, Debug, PartialEq)]
struct Tally {
    submitted: u64,
    rejected: u64,
    completed: u64,
    failed_panic: u64,
    failed_error: u64,
    cancelled: u64,
}

impl Tally {
    fn record(
        &mut self,
        kind: Kind,
        outcome: Result<Result<u32, String>, TaskError>,
        was_cancelled: bool,
    ) {
        match outcome {
            Ok(Ok(_)) => {
                assert!(
                    matches!(kind, Kind::Ok | Kind::Sleep(_)),
                    "{kind:?} completed"
                );
                assert!(!was_cancelled, "a cancelled task ran");
                self.completed += 1;
            }
            Ok(Err(_)) => {
                assert!(matches!(kind, Kind::Err));
                assert!(!was_cancelled, "a cancelled task ran");
                self.failed_error += 1;
            }
            Err(TaskError::Panicked { message }) => {
                assert!(matches!(kind, Kind::Panic));
                assert_eq!(message, "planned panic");
                assert!(!was_cancelled, "a cancelled task ran");
                self.failed_panic += 1;
            }
            Err(TaskError::Cancelled) => self.cancelled += 1,
            Err(other) => panic!("unexpected outcome {other:?}"),
        }
    }
}

fn run(workers: usize, ops: Vec<Op>) {
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .max_workers(workers)
        .exporter_id("prop")
        .registry(registry.clone())
        .build()
        .unwrap();
    let mut tally = Tally::default();
    // (kind, handle, cancel() said true)
    let mut live: Vec<(Kind, TaskHandle<Output>, bool)> = Vec::new();
    let mut done: Vec<(Kind, Outcome, bool)> = Vec::new();
    // Spawned tasks have no handle: their bodies count what they did (a
    // spawned task's `Err` value is not a failure), and the accepted ones
    // that never ran were cancelled by a `shutdown_now`.
    let spawned_ok = Arc::new(AtomicU64::new(0));
    let spawned_panic = Arc::new(AtomicU64::new(0));
    let mut spawned = 0u64;
    for op in ops {
        match op {
            Op::Spawn(kind) => {
                let (ok, panicked) = (spawned_ok.clone(), spawned_panic.clone());
                let accepted = pool.spawn(move || {
                    if let Kind::Panic = kind {
                        panicked.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = body(kind);
                    ok.fetch_add(1, Ordering::SeqCst);
                });
                match accepted {
                    Ok(()) => {
                        tally.submitted += 1;
                        spawned += 1;
                    }
                    Err(_) => tally.rejected += 1,
                }
            }
            Op::Submit(kind) => match pool.submit_fallible(move || body(kind)) {
                Ok(h) => {
                    tally.submitted += 1;
                    live.push((kind, h, false));
                }
                Err(_) => tally.rejected += 1,
            },
            Op::Cancel(i) if !live.is_empty() => {
                let i = i % live.len();
                let entry = &mut live[i];
                let said = entry.1.cancel();
                entry.2 |= said;
                if said {
                    assert!(entry.1.is_finished());
                }
            }
            Op::Cancel(_) => {}
            Op::Map(kinds) => {
                let n = kinds.len();
                let results: Vec<_> = pool
                    .map_fallible(move |i: usize| body(kinds[i]), 0..n)
                    .collect();
                // `map` over a shut-down pool refuses its first item and stops.
                for r in results {
                    match r {
                        Err(TaskError::Rejected(_)) => tally.rejected += 1,
                        other => {
                            tally.submitted += 1;
                            // Item kinds are checked through the outcome type only.
                            match other {
                                Ok(Ok(_)) => tally.completed += 1,
                                Ok(Err(_)) => tally.failed_error += 1,
                                Err(TaskError::Panicked { .. }) => tally.failed_panic += 1,
                                o => panic!("unexpected map outcome {o:?}"),
                            }
                        }
                    }
                }
            }
            Op::Join => pool.join(),
            Op::Shutdown => pool.shutdown(),
            Op::ShutdownNow => pool.shutdown_now(),
        }
        // Mid-run, the invariant holds only with nothing in flight; the
        // counters never exceed what was submitted.
        let c = counts(&scrape(&registry), "executor", "prop");
        assert!(
            c.completed + c.failed + c.cancelled <= c.submitted + 0.5,
            "{c:?}"
        );
    }
    for (kind, h, said) in live {
        let outcome = common::watchdog(60, move || h.join());
        if said {
            assert_eq!(outcome, Err(TaskError::Cancelled), "cancel() said true");
        }
        done.push((kind, outcome, said));
    }
    for (kind, outcome, said) in done {
        tally.record(kind, outcome, said);
    }
    pool.join();
    let (ok, panicked) = (
        spawned_ok.load(Ordering::SeqCst),
        spawned_panic.load(Ordering::SeqCst),
    );
    tally.completed += ok;
    tally.failed_panic += panicked;
    tally.cancelled += spawned - ok - panicked;
    let exp = scrape(&registry);
    let c = counts(&exp, "executor", "prop");
    c.assert_invariant();
    assert_eq!(c.submitted, tally.submitted as f64, "submitted {tally:?}");
    assert_eq!(c.rejected, tally.rejected as f64, "rejected {tally:?}");
    assert_eq!(c.completed, tally.completed as f64, "completed {tally:?}");
    assert_eq!(
        c.failed,
        (tally.failed_panic + tally.failed_error) as f64,
        "failed {tally:?}"
    );
    assert_eq!(c.cancelled, tally.cancelled as f64, "cancelled {tally:?}");
    assert_eq!((c.queued, c.running), (0.0, 0.0));
    assert_eq!(
        c.wait_count,
        (tally.completed + tally.failed_panic + tally.failed_error) as f64
    );
    let reason = |r| {
        exp.value(
            "executor_task_failures_total",
            &[("executor", "prop"), ("reason", r)],
        )
    };
    assert_eq!(reason("panic"), tally.failed_panic as f64);
    assert_eq!(reason("error"), tally.failed_error as f64);
}

/// Planned panics would flood the output; other panics still print.
fn quiet_planned_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&"planned panic") {
                hook(info);
            }
        }));
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_task_is_counted_exactly_once(
        workers in 1usize..4,
        ops in prop::collection::vec(op(), 1..40),
    ) {
        quiet_planned_panics();
        run(workers, ops);
    }
}

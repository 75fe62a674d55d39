//! `ProcessPoolExecutor::map_chunked`: the same results as `map`, one per
//! input and in order, for any chunk size; a panicking or failing item fails
//! alone; one chunk is one task in the metrics, read back from a registry.
#![cfg(target_os = "linux")]

mod common;

use std::cell::Cell;
use std::time::Duration;

use common::{counts, scrape, Exposition};
use executor_exporter::process_pool::{run_if_worker, ProcessTask, WorkerRegistry};
use executor_exporter::prometheus::Registry;
use executor_exporter::{FailureReason, ProcessPoolExecutor, TaskError};

const WATCHDOG: u64 = 60;

/// An input that fails to encode in the caller when it is `Bad`, and panics encoding when it is
/// `Panics`.
#[derive(Debug, Clone, Copy)]
enum Item {
    Num(u64),
    Bad,
    Panics,
}

impl serde::Serialize for Item {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Item::Num(n) => s.serialize_u64(*n),
            Item::Bad => Err(serde::ser::Error::custom(
                "this input refuses to be encoded",
            )),
            Item::Panics => panic!("this input panics when encoded"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Item {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <u64 as serde::Deserialize>::deserialize(d).map(Item::Num)
    }
}

/// Doubles its input; 13 panics; 11 and anything ending in 7 return `Err`.
struct Check;
impl ProcessTask for Check {
    const NAME: &'static str = "check";
    type Input = Item;
    type Output = u64;
    type Error = String;
    fn run(item: Item) -> Result<u64, String> {
        let Item::Num(x) = item else {
            unreachable!("a Bad item never leaves the caller")
        };
        match x {
            13 => panic!("item 13 panicked"),
            11 => Err("11 is refused".to_owned()),
            x if x % 10 == 7 => Err(format!("{x} ends in 7")),
            x => Ok(x * 2),
        }
    }
}

/// SIGKILLs its worker on 4, else returns its input.
struct KillOn4;
impl ProcessTask for KillOn4 {
    const NAME: &'static str = "kill_on_4";
    type Input = u64;
    type Output = u64;
    type Error = String;
    fn run(x: u64) -> Result<u64, String> {
        if x == 4 {
            // SAFETY: kill(2) on our own pid with a valid signal number.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            std::thread::sleep(Duration::from_secs(10));
        }
        Ok(x)
    }
}

struct SleepMs;
impl ProcessTask for SleepMs {
    const NAME: &'static str = "sleep_ms";
    type Input = u64;
    type Output = u64;
    type Error = String;
    fn run(ms: u64) -> Result<u64, String> {
        std::thread::sleep(Duration::from_millis(ms));
        Ok(ms)
    }
}

/// Known to the parent only: the workers' registry does not have it.
struct Unregistered;
impl ProcessTask for Unregistered {
    const NAME: &'static str = "unregistered";
    type Input = u64;
    type Output = u64;
    type Error = String;
    fn run(x: u64) -> Result<u64, String> {
        Ok(x)
    }
}

fn worker_registry() -> WorkerRegistry {
    WorkerRegistry::new()
        .register::<Check>()
        .register::<KillOn4>()
        .register::<SleepMs>()
}

/// This test binary is its own worker program.
#[test]
fn worker_entry() {
    run_if_worker(&worker_registry());
}

fn pool(registry: &Registry, id: &str, workers: usize) -> ProcessPoolExecutor {
    ProcessPoolExecutor::builder()
        .max_workers(workers)
        .worker_test_entry("worker_entry")
        .exporter_id(id)
        .registry(registry.clone())
        .build()
        .unwrap()
}

fn reason(exp: &Exposition, id: &str, r: FailureReason) -> f64 {
    exp.value(
        "executor_task_failures_total",
        &[("executor", id), ("reason", r.as_str())],
    )
}

type CheckResult = Result<Result<u64, String>, TaskError>;

fn inputs(n: u64) -> Vec<Item> {
    // Item 5 cannot be encoded: it fails alone, in the caller.
    (0..n)
        .map(|x| if x == 5 { Item::Bad } else { Item::Num(x) })
        .collect()
}

#[test]
fn chunked_results_equal_map_for_every_chunk_size() {
    common::watchdog(WATCHDOG, || {
        let n = 20u64;
        let registry = Registry::new();
        let p = pool(&registry, "chunks", 2);
        let expected: Vec<CheckResult> = p.map::<Check, _>(inputs(n)).collect();
        assert_eq!(expected.len(), n as usize);
        assert_eq!(expected[2], Ok(Ok(4)));
        assert!(
            matches!(
                &expected[5],
                Err(TaskError::Failed {
                    reason: FailureReason::Serialization,
                    ..
                })
            ),
            "{:?}",
            expected[5]
        );
        assert_eq!(expected[11], Ok(Err("11 is refused".to_owned())));
        assert_eq!(
            expected[13],
            Err(TaskError::Panicked {
                message: "item 13 panicked".to_owned()
            })
        );
        // `usize::MAX`: all inputs in one chunk, not an allocation of that size.
        for chunk_size in [1, 3, 7, n as usize, 2 * n as usize, usize::MAX] {
            let got: Vec<CheckResult> = p
                .map_chunked::<Check, _>(inputs(n), chunk_size)
                .unwrap()
                .collect();
            assert_eq!(got, expected, "chunk size {chunk_size}");
        }
        p.join();
        let exp = scrape(&registry);
        let c = counts(&exp, "executor", "chunks");
        c.assert_invariant();
        // map: 19 tasks sent and 1 refused; map_chunked: ceil(20 / k) chunks
        // for k = 1, 3, 7, 20, 40, usize::MAX, and 1 input refused each time.
        let chunks = 20.0 + 7.0 + 3.0 + 1.0 + 1.0 + 1.0;
        assert_eq!(c.submitted, 19.0 + chunks - 1.0, "{c:?}");
        assert_eq!(c.rejected, 7.0, "{c:?}");
        assert_eq!(c.wait_count, c.submitted);
    });
}

#[test]
fn one_chunk_is_one_task_in_the_metrics() {
    common::watchdog(WATCHDOG, || {
        let registry = Registry::new();
        let p = pool(&registry, "per-chunk", 2);
        let got: Vec<CheckResult> = p
            .map_chunked::<Check, _>((0..30).map(Item::Num), 5)
            .unwrap()
            .collect();
        for (x, r) in got.iter().enumerate() {
            let want: CheckResult = match x {
                13 => Err(TaskError::Panicked {
                    message: "item 13 panicked".to_owned(),
                }),
                11 => Ok(Err("11 is refused".to_owned())),
                x if x % 10 == 7 => Ok(Err(format!("{x} ends in 7"))),
                x => Ok(Ok(x as u64 * 2)),
            };
            assert_eq!(*r, want, "item {x}");
        }
        p.join();
        let exp = scrape(&registry);
        let c = counts(&exp, "executor", "per-chunk");
        c.assert_invariant();
        // Chunks: [0-4] completed, [5-9] error (7), [10-14] panic (13, over
        // the error of 11), [15-19] error (17), [20-24] completed, [25-29]
        // error (27).
        assert_eq!(
            (c.submitted, c.completed, c.failed, c.wait_count),
            (6.0, 2.0, 4.0, 6.0)
        );
        assert_eq!(reason(&exp, "per-chunk", FailureReason::Panic), 1.0);
        assert_eq!(reason(&exp, "per-chunk", FailureReason::Error), 3.0);
        assert_eq!(
            exp.value(
                "executor_worker_restarts_total",
                &[("executor", "per-chunk")]
            ),
            0.0,
            "a panicking item does not take its worker down"
        );
    });
}

/// An input whose `Serialize` panics fails alone, with `serialization`, in `map_chunked` as in
/// `map`; the items beside it run.
#[test]
fn an_input_whose_serialize_panics_fails_alone() {
    common::watchdog(WATCHDOG, || {
        let registry = Registry::new();
        let p = pool(&registry, "panicky", 1);
        let items = vec![Item::Num(1), Item::Panics, Item::Num(3)];
        let mapped: Vec<CheckResult> = p.map::<Check, _>(items.clone()).collect();
        let chunked: Vec<CheckResult> = p.map_chunked::<Check, _>(items, 2).unwrap().collect();
        for got in [&mapped, &chunked] {
            assert_eq!(got[0], Ok(Ok(2)));
            assert_eq!(got[2], Ok(Ok(6)));
            match &got[1] {
                Err(TaskError::Failed {
                    reason: FailureReason::Serialization,
                    message,
                }) => assert!(message.contains("panics when encoded"), "{message}"),
                other => panic!("{other:?}"),
            }
        }
        p.join();
        let c = counts(&scrape(&registry), "executor", "panicky");
        c.assert_invariant();
        assert_eq!(c.rejected, 2.0, "{c:?}");
    });
}

#[test]
fn chunk_size_zero_is_an_error() {
    let registry = Registry::new();
    let p = pool(&registry, "zero", 1);
    let err = p.map_chunked::<Check, _>(inputs(3), 0).unwrap_err();
    assert!(err.to_string().contains("chunk_size"), "{err}");
    let c = counts(&scrape(&registry), "executor", "zero");
    assert_eq!((c.submitted, c.rejected), (0.0, 0.0));
}

#[test]
fn a_crash_fails_its_chunk_only() {
    common::watchdog(WATCHDOG, || {
        let registry = Registry::new();
        let p = pool(&registry, "crash", 2);
        let got: Vec<_> = p.map_chunked::<KillOn4, _>(0..9u64, 3).unwrap().collect();
        for (x, r) in got.into_iter().enumerate() {
            if (3..6).contains(&x) {
                match r {
                    Err(TaskError::Failed {
                        reason: FailureReason::WorkerDied,
                        message,
                    }) => assert!(message.contains("SIGKILL"), "{message}"),
                    other => panic!("item {x}: {other:?}"),
                }
            } else {
                assert_eq!(r, Ok(Ok(x as u64)), "item {x}");
            }
        }
        p.join();
        let exp = scrape(&registry);
        let c = counts(&exp, "executor", "crash");
        c.assert_invariant();
        assert_eq!((c.submitted, c.completed, c.failed), (3.0, 2.0, 1.0));
        assert_eq!(reason(&exp, "crash", FailureReason::WorkerDied), 1.0);
        assert_eq!(
            exp.value("executor_worker_restarts_total", &[("executor", "crash")]),
            1.0
        );
    });
}

#[test]
fn unknown_task_names_the_task_not_the_chunk() {
    common::watchdog(WATCHDOG, || {
        let registry = Registry::new();
        let p = pool(&registry, "unknown", 1);
        let got: Vec<_> = p
            .map_chunked::<Unregistered, _>(0..4u64, 2)
            .unwrap()
            .collect();
        assert_eq!(got.len(), 4);
        for r in got {
            match r {
                Err(TaskError::Failed {
                    reason: FailureReason::UnknownTask,
                    message,
                }) => assert!(
                    message.contains("`unregistered`") && !message.contains('\0'),
                    "{message:?}"
                ),
                other => panic!("{other:?}"),
            }
        }
        p.join();
        let exp = scrape(&registry);
        counts(&exp, "executor", "unknown").assert_invariant();
        assert_eq!(reason(&exp, "unknown", FailureReason::UnknownTask), 2.0);
    });
}

#[test]
fn lazy_bounded_and_dropping_cancels_unsent_chunks() {
    common::watchdog(WATCHDOG, || {
        let registry = Registry::new();
        let p = pool(&registry, "lazy", 1);
        let read = Cell::new(0u32);
        let it = p
            .map_chunked::<SleepMs, _>(
                std::iter::repeat_n(300u64, 100).inspect(|_| read.set(read.get() + 1)),
                2,
            )
            .unwrap();
        // One worker: at most 2 chunks in flight, so 4 inputs read so far.
        assert_eq!(read.get(), 4);
        drop(it);
        p.join();
        let c = counts(&scrape(&registry), "executor", "lazy");
        c.assert_invariant();
        assert_eq!(c.submitted, 2.0);
        // The second chunk was queued behind the first: never sent, cancelled.
        assert!(c.cancelled >= 1.0, "{c:?}");
    });
}

//! Stress: many tasks from several submitting threads into several pools that
//! share one registry, with random panics, `Err`s, cancels and `shutdown_now`s
//! (a pool shut down is replaced by a new one with a new `executor` id).
//! Afterwards every handle has given exactly one outcome and, for every pool,
//! the exposed metrics equal the tally of those outcomes exactly.
//!
//! `STRESS_SCALE` sets the number of tasks (default 1,000,000; CI may lower
//! it); `STRESS_SEED` replays a run.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{counts, scrape, Counts};
use executor_exporter::prometheus::Registry;
use executor_exporter::{TaskError, TaskHandle, ThreadPoolExecutor};

const SUBMITTERS: u64 = 4;
const POOLS: usize = 3;
const BATCH: u64 = 256;
/// A watchdog on every join: far beyond any task's time, it only catches a
/// task that never ends.
const JOIN_WATCHDOG: Duration = Duration::from_secs(120);
/// The panic message of the planned panics, silenced in the panic hook.
const PLANNED: &str = "stress: planned panic";

fn scale() -> u64 {
    std::env::var("STRESS_SCALE")
        .ok()
        .map(|s| s.parse().expect("STRESS_SCALE is a number of tasks"))
        .unwrap_or(1_000_000)
}

/// xorshift64*: deterministic per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the handles and submits of one pool reported.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Tally {
    submitted: u64,
    rejected: u64,
    completed: u64,
    panicked: u64,
    errored: u64,
    cancelled: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.submitted += o.submitted;
        self.rejected += o.rejected;
        self.completed += o.completed;
        self.panicked += o.panicked;
        self.errored += o.errored;
        self.cancelled += o.cancelled;
    }
}

struct Slot {
    pool: Arc<ThreadPoolExecutor>,
    id: String,
}

struct Pools {
    registry: Registry,
    slots: Vec<Mutex<Slot>>,
    generation: std::sync::atomic::AtomicUsize,
}

impl Pools {
    fn new_pool(&self, k: usize) -> Slot {
        let gen = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("stress-{k}-g{gen}");
        let pool = ThreadPoolExecutor::builder()
            .max_workers(2)
            .exporter_id(id.clone())
            .registry(self.registry.clone())
            .build()
            .expect("the pool builds");
        Slot {
            pool: Arc::new(pool),
            id,
        }
    }

    fn get(&self, k: usize) -> (Arc<ThreadPoolExecutor>, String) {
        let slot = self.slots[k].lock().unwrap();
        (slot.pool.clone(), slot.id.clone())
    }

    /// `shutdown_now` on pool `k`, then a new pool in its place. Submits that
    /// still hold the old one are refused from now on.
    fn shutdown_now_and_replace(&self, k: usize) {
        let (old, _) = self.get(k);
        common::watchdog(120, move || old.shutdown_now());
        let new = self.new_pool(k);
        *self.slots[k].lock().unwrap() = new;
    }
}

enum Pending {
    Plain(TaskHandle<u64>, u64),
    Fallible(TaskHandle<Result<u64, String>>, u64),
}

fn join_watched<T>(mut h: TaskHandle<T>) -> Result<T, TaskError> {
    match h.join_timeout(JOIN_WATCHDOG) {
        Err(TaskError::TimedOut) => panic!("watchdog: a task did not end in {JOIN_WATCHDOG:?}"),
        other => other,
    }
}

/// Joins one handle and counts its one outcome; checks the value is the task's.
fn settle(p: Pending, t: &mut Tally) {
    match p {
        Pending::Plain(h, want) => match join_watched(h) {
            Ok(v) => {
                assert_eq!(v, want, "a task's value reached another handle");
                t.completed += 1;
            }
            Err(TaskError::Panicked { message }) => {
                assert_eq!(message, PLANNED);
                t.panicked += 1;
            }
            Err(TaskError::Cancelled) => t.cancelled += 1,
            other => panic!("unexpected outcome {other:?}"),
        },
        Pending::Fallible(h, want) => match join_watched(h) {
            Ok(Err(e)) => {
                assert_eq!(e, format!("error {want}"));
                t.errored += 1;
            }
            Err(TaskError::Cancelled) => t.cancelled += 1,
            other => panic!("unexpected outcome {other:?}"),
        },
    }
}

fn submitter(pools: Arc<Pools>, seed: u64, tasks: u64, first: u64) -> BTreeMap<String, Tally> {
    let mut rng = Rng(seed | 1);
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let mut n = first;
    let end = first + tasks;
    while n < end {
        let k = rng.below(POOLS as u64) as usize;
        let (pool, id) = pools.get(k);
        let mut t = Tally::default();
        let mut batch = Vec::with_capacity(BATCH as usize);
        let mut to_cancel = Vec::new();
        for _ in 0..BATCH.min(end - n) {
            let i = n;
            n += 1;
            let roll = rng.below(100);
            let submitted = match roll {
                0..=4 => pool
                    .submit(move || -> u64 { std::panic::panic_any(PLANNED) })
                    .map(|h| Pending::Plain(h, i))
                    .map_err(|_| i),
                5..=9 => pool
                    .submit_fallible(move || Err::<u64, String>(format!("error {i}")))
                    .map(|h| Pending::Fallible(h, i))
                    .map_err(|e| {
                        assert_eq!(e.into_inner()(), Err(format!("error {i}")));
                        i
                    }),
                _ => pool
                    .submit(move || {
                        // A little work, so queues build up and cancels win.
                        std::hint::black_box((0..i % 64).sum::<u64>());
                        i
                    })
                    .map(|h| Pending::Plain(h, i))
                    .map_err(|e| {
                        // A refused submit hands the very task back.
                        assert_eq!(e.into_inner()(), i);
                        i
                    }),
            };
            match submitted {
                Ok(p) => {
                    t.submitted += 1;
                    if roll >= 85 {
                        to_cancel.push(batch.len());
                    }
                    batch.push(p);
                }
                Err(_) => t.rejected += 1,
            }
        }
        for &j in &to_cancel {
            match &batch[j] {
                Pending::Plain(h, _) => h.cancel(),
                Pending::Fallible(h, _) => h.cancel(),
            };
        }
        if rng.below(150) == 0 {
            let victim = rng.below(POOLS as u64) as usize;
            pools.shutdown_now_and_replace(victim);
        }
        for p in batch {
            settle(p, &mut t);
        }
        tallies.entry(id).or_default().add(&t);
        drop(pool);
    }
    tallies
}

#[test]
fn stress_every_task_ends_once_and_metrics_match() {
    let total = scale();
    let seed = std::env::var("STRESS_SEED")
        .ok()
        .map(|s| s.parse().expect("STRESS_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("stress: {total} tasks, STRESS_SEED={seed}");
    // The planned panics are many: keep them off stderr, report the others.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&PLANNED) {
            default_hook(info);
        }
    }));

    let registry = Registry::new();
    let mut pools = Pools {
        registry: registry.clone(),
        slots: Vec::new(),
        generation: Default::default(),
    };
    pools.slots = (0..POOLS).map(|k| Mutex::new(pools.new_pool(k))).collect();
    let pools = Arc::new(pools);

    let started = Instant::now();
    let per_thread = total / SUBMITTERS;
    let threads: Vec<_> = (0..SUBMITTERS)
        .map(|s| {
            let pools = pools.clone();
            let tasks = if s == SUBMITTERS - 1 {
                total - per_thread * (SUBMITTERS - 1)
            } else {
                per_thread
            };
            std::thread::spawn(move || {
                submitter(
                    pools,
                    seed.wrapping_add(s * 0x9E37_79B9),
                    tasks,
                    s * per_thread,
                )
            })
        })
        .collect();
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    for t in threads {
        for (id, tally) in t.join().expect("a submitter failed") {
            tallies.entry(id).or_default().add(&tally);
        }
    }
    // Shut the last generation down (under a watchdog), then read back.
    let pools = common::watchdog(120, move || {
        for k in 0..POOLS {
            pools.get(k).0.shutdown();
        }
        pools
    });
    let elapsed = started.elapsed();
    let exp = scrape(&registry);

    let mut all = Tally::default();
    for (id, t) in &tallies {
        all.add(t);
        let c = counts(&exp, "executor", id);
        c.assert_invariant();
        let want = Counts {
            submitted: t.submitted as f64,
            rejected: t.rejected as f64,
            queued: 0.0,
            running: 0.0,
            cancelled: t.cancelled as f64,
            completed: t.completed as f64,
            failed: (t.panicked + t.errored) as f64,
            wait_count: (t.completed + t.panicked + t.errored) as f64,
        };
        assert_eq!(c, want, "pool {id}: metrics {c:?} != tally {t:?}");
        for (reason, n) in [("panic", t.panicked), ("error", t.errored)] {
            let got = exp.sum(
                "executor_task_failures_total",
                &[("executor", id), ("reason", reason)],
            );
            assert_eq!(got, n as f64, "pool {id}: failures reason={reason}");
        }
    }
    let outcomes = all.completed + all.panicked + all.errored + all.cancelled;
    assert_eq!(
        all.submitted, outcomes,
        "every accepted task has one outcome"
    );
    assert_eq!(
        all.submitted + all.rejected,
        total,
        "every submit is accounted"
    );
    let generations = pools.generation.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("stress: {total} tasks in {elapsed:.1?} over {generations} pools: {all:?}");
    // Every kind of outcome happened, so none of the checks above was vacuous.
    assert!(all.completed > 0 && all.panicked > 0 && all.errored > 0 && all.cancelled > 0);
}

/// Two shutdowns of one plain pool at once: the one that finds the handles
/// already taken must not drain the stops the other sent to its workers
/// (it did, and the first shutdown then waited forever for its workers).
#[test]
fn concurrent_shutdowns_both_return() {
    use executor_exporter::{Executor, Task, ThreadPool};
    for _ in 0..20 {
        let pool = Arc::new(ThreadPool::new(2).unwrap());
        let gate = common::Gate::new();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        for _ in 0..2 {
            let (gate, tx) = (gate.clone(), started_tx.clone());
            pool.execute(Task::new(move || {
                tx.send(()).unwrap();
                gate.wait();
            }))
            .unwrap();
        }
        // Both workers are busy, so the stops stay in the channel.
        for _ in 0..2 {
            started_rx
                .recv_timeout(JOIN_WATCHDOG)
                .expect("both tasks start");
        }
        // Either may take the handles; the other keeps shutting down while
        // the first's stops sit in the channel (the window is microseconds
        // wide; 20 ms of retries is not a timing assertion).
        let until = Instant::now() + Duration::from_millis(20);
        let shutters: Vec<_> = (0..2)
            .map(|_| {
                let p = pool.clone();
                std::thread::spawn(move || {
                    p.shutdown();
                    while Instant::now() < until {
                        p.shutdown();
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(30));
        gate.open();
        common::watchdog(60, move || {
            for s in shutters {
                s.join().unwrap();
            }
        });
    }
}

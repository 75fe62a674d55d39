//! Helpers shared by the benches: the criterion configuration (full or quick),
//! busy tasks, a completion latch and small executors used as baselines.

#![allow(dead_code)] // each bench uses its own subset

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use criterion::Criterion;
use executor_exporter::{Executor, Rejected, Task};

/// Workers in every pool: one per core of the 2-core machine the targets are
/// set for.
pub const WORKERS: usize = 2;

/// True when `BENCH_QUICK=1` (or `2`): every bench then takes well under a
/// second, so CI can run them all to keep them from rotting, and
/// `benches/plot/rounds.py` can alternate them.
pub fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1" || v == "2")
}

/// True when `BENCH_QUICK=2`: windows too short for any figure, for CI, which
/// only checks that every bench builds and runs.
pub fn smoke() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|v| v == "2")
}

/// Two variants compared on equal terms, in the order to run them: as given,
/// or reversed in the odd rounds of `benches/plot/rounds.py` (it sets
/// `EE_BENCH_ROUND`), so that neither always runs first.
pub fn in_round_order<T>(mut pair: [T; 2]) -> [T; 2] {
    let odd = std::env::var("EE_BENCH_ROUND")
        .ok()
        .and_then(|r| r.parse::<u64>().ok())
        .is_some_and(|r| r % 2 == 1);
    if odd {
        pair.reverse();
    }
    pair
}

/// The criterion configuration: the defaults for full runs, short windows and
/// few samples in quick mode, shorter still in smoke mode.
pub fn criterion() -> Criterion {
    let c = Criterion::default();
    if smoke() {
        c.warm_up_time(Duration::from_millis(20))
            .measurement_time(Duration::from_millis(50))
            .sample_size(10)
            .without_plots()
    } else if quick() {
        c.warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_millis(400))
            .sample_size(10)
            .without_plots()
    } else {
        c.warm_up_time(Duration::from_secs(2))
            .measurement_time(Duration::from_secs(4))
            .sample_size(50)
    }
}

/// Task sizes measured: empty, ~1 us and ~10 us of busy work, in ns.
pub const SIZES: [(&str, u64); 3] = [("empty", 0), ("1us", 1_000), ("10us", 10_000)];

/// Busy work for `nanos` ns, spinning on the clock (never sleeping, so the
/// core stays busy as with real CPU-bound work).
#[inline]
pub fn spin(nanos: u64) {
    if nanos == 0 {
        return;
    }
    let start = Instant::now();
    let d = Duration::from_nanos(nanos);
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// The clock the crate reads: raw reads of a process-wide `quanta::Clock`
/// (`quanta` shares one calibration between its clocks).
#[inline]
pub fn clock() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// `f` with the three clock reads an instrumented task makes and nothing
/// else of the instrumentation: the submit time, read here (by the
/// submitter), and the start and end times, read around `f` by whoever runs
/// it. A plain pool given such tasks shows what the instrumentation would
/// cost if its clock reads were all it did: the best ratio any design that
/// gives each task its own wait and duration can reach on this host.
#[inline]
pub fn clocked(f: impl FnOnce() + Send + 'static) -> impl FnOnce() + Send + 'static {
    let submitted = clock().raw();
    move || {
        let started = clock().raw();
        f();
        let ended = clock().raw();
        black_box((started.wrapping_sub(submitted), ended.wrapping_sub(started)));
    }
}

/// Counts tasks down to zero and wakes one waiter then. Each task pays one
/// atomic decrement; only the last one takes the lock.
pub struct Latch {
    left: AtomicUsize,
    done: Mutex<bool>,
    cv: Condvar,
}

impl Latch {
    pub const fn new() -> Latch {
        Latch {
            left: AtomicUsize::new(0),
            done: Mutex::new(false),
            cv: Condvar::new(),
        }
    }

    /// Arms the latch for `n` tasks; call before submitting them.
    pub fn reset(&self, n: usize) {
        *self.done.lock().unwrap() = n == 0;
        self.left.store(n, Ordering::SeqCst);
    }

    #[inline]
    pub fn count_down(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.done.lock().unwrap() = true;
            self.cv.notify_all();
        }
    }

    pub fn wait(&self) {
        let mut done = self.done.lock().unwrap();
        while !*done {
            done = self.cv.wait(done).unwrap();
        }
    }
}

/// Runs each task on the calling thread: an executor with no cost of its
/// own, so a proxy over it shows the instrumentation alone.
#[derive(Debug, Clone, Copy)]
pub struct Inline;

impl Executor for Inline {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        task.run();
        Ok(())
    }
}

pub fn rayon_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
}

/// Splits `n` tasks between `submitters` threads: how many the `i`th submits.
pub fn share(n: u64, submitters: u64, i: u64) -> u64 {
    n / submitters + u64::from(i < n % submitters)
}

/// Reads a line like `VmRSS:  1234 kB` of /proc/self/status, in bytes.
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A user's own pool, as a service might have written it before adopting
/// the crate: `threads` workers reading one crossbeam channel of [`Task`]s.
/// Dropping it closes the channel and joins the workers.
pub struct ChannelPool {
    sender: Option<crossbeam_channel::Sender<Task>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl ChannelPool {
    pub fn new(threads: usize) -> ChannelPool {
        let (sender, receiver) = crossbeam_channel::unbounded::<Task>();
        let workers = (0..threads)
            .map(|_| {
                let receiver = receiver.clone();
                std::thread::spawn(move || {
                    for task in receiver {
                        task.run();
                    }
                })
            })
            .collect();
        ChannelPool {
            sender: Some(sender),
            workers,
        }
    }
}

impl Executor for ChannelPool {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        let sender = self.sender.as_ref().expect("open until dropped");
        sender
            .send(task)
            .map_err(|e| Rejected::new(e.into_inner(), executor_exporter::RejectReason::Shutdown))
    }

    fn max_workers(&self) -> Option<usize> {
        Some(self.workers.len())
    }
}

impl Drop for ChannelPool {
    fn drop(&mut self) {
        self.sender = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Where `EE_BENCH_PLACEMENT` puts a bench's threads, as (the submitting
/// thread's CPU, the workers' CPU): `across`, the submitter on CPU 0 and
/// every worker on CPU 1; `shared`, all of them on CPU 0; unset, `None`:
/// wherever the scheduler puts them. On a virtual machine whose idle vCPUs
/// halt, where a waking worker runs decides whether a wake-up costs a
/// context switch or a vCPU's return from the hypervisor, and the scheduler
/// picks one or the other per launch.
#[cfg(target_os = "linux")]
pub fn placement() -> Option<(usize, usize)> {
    match std::env::var("EE_BENCH_PLACEMENT").as_deref() {
        Ok("across") => Some((0, 1)),
        Ok("shared") => Some((0, 0)),
        Ok(other) => panic!("EE_BENCH_PLACEMENT={other}: use `across` or `shared`"),
        Err(_) => None,
    }
}

/// Lets the calling thread run on `cpu` only (where it exists).
#[cfg(target_os = "linux")]
pub fn pin_this_thread(cpu: usize) {
    set_affinity(0, cpu..cpu + 1);
}

/// Lets process or thread `pid` (0: the calling thread) run on `cpus` only
/// (those below CPU_SETSIZE).
#[cfg(target_os = "linux")]
pub fn set_affinity(pid: libc::pid_t, cpus: std::ops::Range<usize>) {
    // SAFETY: `set` is a zeroed `cpu_set_t` that CPU_SET writes within (for
    // CPUs below CPU_SETSIZE), and sched_setaffinity(2) only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus.take_while(|&cpu| cpu < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        let _ = libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Places the calling thread and the [`WORKERS`] workers of one pool as
/// [`placement`] says; does nothing when it is unset. `run` hands a job to
/// the pool: each of the `WORKERS` jobs pins the worker running it, then
/// waits until all of them run, so that each worker takes one.
#[cfg(target_os = "linux")]
pub fn place(run: impl Fn(Box<dyn FnOnce() + Send>)) {
    let Some((submitter, workers)) = placement() else {
        return;
    };
    pin_this_thread(submitter);
    let all_pinned = std::sync::Arc::new(std::sync::Barrier::new(WORKERS + 1));
    for _ in 0..WORKERS {
        let all_pinned = all_pinned.clone();
        run(Box::new(move || {
            pin_this_thread(workers);
            all_pinned.wait();
        }));
    }
    all_pinned.wait();
}

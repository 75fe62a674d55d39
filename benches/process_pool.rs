//! The process pool against `procspawn`'s pool, on the same tiny task
//! (`x * x` on a `u64`):
//!
//! - `process_pool_roundtrip`: one worker, submit one task and join it, one
//!   at a time (one criterion iteration is one round trip); beside the pools,
//!   `raw_pingpong`, the floor of any blocking round trip between two
//!   processes: 16 bytes over a socket pair to a forked child that echoes
//!   them, and back;
//! - `process_pool_throughput`: two workers, tasks submitted in batches of
//!   [`BATCH`] and then all joined (one iteration is one task; criterion's
//!   slope over samples of growing size removes each sample's fixed cost).
//!
//! Pools: our plain `ProcessPool` (task states recorded into a series
//! registered nowhere), `ProcessPoolExecutor` (the same pool, its series
//! registered), and `procspawn::Pool`; in the throughput group also
//! `ProcessPoolExecutor::map_chunked` with chunks of [`CHUNK`] inputs. In
//! both groups, `executor_spin` is the executor in its low-latency mode
//! (`.spin(SPIN)`), and the `_hogs` variants run the executor in either mode
//! while [`WORKERS`] threads of this process keep every CPU busy. The
//! `_after_idle` variants pause [`IDLE`] (not timed) before each round trip,
//! as a request path does between requests.
//!
//! Where the processes of `process_pool_roundtrip` run is the scheduler's
//! choice, and on a virtual machine it decides the figures: a round trip
//! across two vCPUs wakes a halted vCPU twice, one on a shared vCPU does not.
//! `EE_BENCH_PLACEMENT=across` pins the bench's thread to CPU 0 and the
//! ping-pong child and our pools' workers to CPU 1; `shared` pins them all to
//! CPU 0. Unset, nothing is pinned (`procspawn`'s workers never are).
//!
//! The bench binary is its own worker program for both pools, so `main` is
//! written by hand instead of `criterion_main!`: `run_if_worker` and
//! `procspawn::init` run first (a worker never returns from them), before
//! criterion parses its arguments (`--bench`, filters).

mod common;

#[cfg(target_os = "linux")]
mod linux {
    use std::hint::black_box;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use criterion::{Criterion, Throughput};
    use executor_exporter::process_pool::{
        run_if_worker, ProcessPool, ProcessPoolExecutor, ProcessTask, WorkerRegistry,
    };

    use super::common::{self, WORKERS};

    /// One pool's round trip: submit a task on an input, join it, its output.
    type RoundTrip<'a> = Box<dyn FnMut(u64) -> u64 + 'a>;

    /// Tasks in flight at once in the throughput group. procspawn holds
    /// about three file descriptors per queued task, so the batch stays well
    /// under the descriptor limit.
    pub const BATCH: u64 = 512;

    /// Inputs per chunk for `map_chunked`.
    pub const CHUNK: usize = 32;

    fn square(x: u64) -> u64 {
        x.wrapping_mul(x)
    }

    /// The tiny task, for our pools.
    pub struct Square;
    impl ProcessTask for Square {
        const NAME: &'static str = "square";
        type Input = u64;
        type Output = u64;
        type Error = String;
        fn run(x: u64) -> Result<u64, String> {
            Ok(square(x))
        }
    }

    /// Serves as a worker if this process was started as one; returns at once
    /// otherwise.
    pub fn workers() {
        run_if_worker(&WorkerRegistry::new().register::<Square>());
        procspawn::init();
    }

    fn plain(workers: usize) -> ProcessPool {
        ProcessPool::builder().max_workers(workers).build().unwrap()
    }

    /// The pause before each round trip of the `_after_idle` variants.
    pub const IDLE: Duration = Duration::from_millis(1);

    /// How long each side spins in the `_spin` variants.
    pub const SPIN: Duration = Duration::from_micros(50);

    fn executor(workers: usize, id: &str) -> ProcessPoolExecutor {
        executor_spinning(workers, id, Duration::ZERO)
    }

    fn executor_spinning(workers: usize, id: &str, spin: Duration) -> ProcessPoolExecutor {
        ProcessPoolExecutor::builder()
            .max_workers(workers)
            .spin(spin)
            .exporter_id(id)
            .registry(prometheus::Registry::new())
            .build()
            .unwrap()
    }

    fn procspawn_pool(workers: usize) -> procspawn::Pool {
        procspawn::Pool::new(workers).unwrap()
    }

    /// Threads that keep every CPU busy until dropped: the `_hogs` variants
    /// measure a pool on a machine with no idle CPU. Hog `i` is pinned to
    /// CPU `i`: left to the scheduler, two hogs sometimes share one CPU and
    /// leave the other idle, a different machine from one bench window to
    /// the next.
    pub struct Hogs {
        stop: Arc<AtomicBool>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl Hogs {
        pub fn start(n: usize) -> Hogs {
            let stop = Arc::new(AtomicBool::new(false));
            let threads = (0..n)
                .map(|cpu| {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        common::pin_this_thread(cpu);
                        while !stop.load(Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    })
                })
                .collect();
            Hogs { stop, threads }
        }
    }

    impl Drop for Hogs {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    /// Pins this thread and `peers` (processes) as `EE_BENCH_PLACEMENT` says (see the module doc).
    fn place(peers: &[u32]) {
        let Some((this, peer_cpu)) = common::placement() else {
            return;
        };
        common::pin_this_thread(this);
        for &pid in peers {
            common::set_affinity(pid as libc::pid_t, peer_cpu..peer_cpu + 1);
        }
    }

    /// Runs `iters` tasks in batches of at most `BATCH`: `batch(first, n)`
    /// submits `n` tasks and joins them all.
    fn batched(iters: u64, mut batch: impl FnMut(u64, u64)) -> Duration {
        let start = Instant::now();
        let mut done = 0;
        while done < iters {
            let n = (iters - done).min(BATCH);
            batch(done, n);
            done += n;
        }
        start.elapsed()
    }

    /// A forked child echoing 16-byte messages over a socket pair: the floor
    /// of a blocking round trip between two processes on this host, without
    /// any pool in the way.
    pub struct PingPong {
        sock: OwnedFd,
        child: libc::pid_t,
    }

    impl PingPong {
        /// Forks the echoing child. Called before any pool exists, but the
        /// child makes only async-signal-safe calls (no allocation, no lock)
        /// in case a thread exists already.
        pub fn start() -> PingPong {
            let mut fds = [-1; 2];
            // SAFETY: `fds` is a writable array of two ints.
            let r = unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                    0,
                    fds.as_mut_ptr(),
                )
            };
            assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
            // SAFETY: fork(2); the child below only calls close, prctl, recv,
            // send and _exit, all async-signal-safe.
            let child = unsafe { libc::fork() };
            assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
            if child == 0 {
                // SAFETY: plain system calls on descriptors this process owns
                // and on a buffer on this stack; never returns.
                unsafe {
                    libc::close(fds[0]);
                    libc::prctl(
                        libc::PR_SET_PDEATHSIG,
                        libc::SIGKILL as libc::c_ulong,
                        0,
                        0,
                        0,
                    );
                    let mut buf = [0u8; MSG];
                    while recv_msg(fds[1], &mut buf) && send_msg(fds[1], &buf) {}
                    libc::_exit(0);
                }
            }
            // SAFETY: closes the child's end in the parent; owns ours.
            unsafe {
                libc::close(fds[1]);
                PingPong {
                    sock: OwnedFd::from_raw_fd(fds[0]),
                    child,
                }
            }
        }

        /// Sends 16 bytes and waits for them to come back.
        pub fn round_trip(&self, x: u64) -> u64 {
            let mut buf = [0u8; MSG];
            buf[..8].copy_from_slice(&x.to_le_bytes());
            let fd = self.sock.as_raw_fd();
            assert!(
                send_msg(fd, &buf) && recv_msg(fd, &mut buf),
                "the echo child is gone"
            );
            u64::from_le_bytes(buf[..8].try_into().unwrap())
        }
    }

    impl Drop for PingPong {
        fn drop(&mut self) {
            // SAFETY: shutting our end down gives the child end of stream, so
            // it exits; then it is reaped.
            unsafe {
                libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RDWR);
                libc::waitpid(self.child, std::ptr::null_mut(), 0);
            }
        }
    }

    /// The ping-pong's message size.
    const MSG: usize = 16;

    /// Sends all of `buf`; false on an error.
    fn send_msg(fd: i32, buf: &[u8; MSG]) -> bool {
        let mut done = 0;
        while done < MSG {
            // SAFETY: sends from a valid buffer of `MSG - done` bytes.
            let n = unsafe {
                libc::send(
                    fd,
                    buf[done..].as_ptr().cast(),
                    MSG - done,
                    libc::MSG_NOSIGNAL,
                )
            };
            if n <= 0 {
                return false;
            }
            done += n as usize;
        }
        true
    }

    /// Fills `buf`; false on end of stream or an error.
    fn recv_msg(fd: i32, buf: &mut [u8; MSG]) -> bool {
        let mut done = 0;
        while done < MSG {
            // SAFETY: receives into a valid buffer of `MSG - done` bytes.
            let n = unsafe { libc::recv(fd, buf[done..].as_mut_ptr().cast(), MSG - done, 0) };
            if n <= 0 {
                return false;
            }
            done += n as usize;
        }
        true
    }

    pub fn roundtrip(c: &mut Criterion) {
        // First, while this process has no thread of its own yet.
        let pingpong = PingPong::start();
        let plain = plain(1);
        let executor = executor(1, "bench-roundtrip");
        let spinning = executor_spinning(1, "bench-roundtrip-spin", SPIN);
        let spawn = procspawn_pool(1);
        // One task each first, so that every worker is up and its pid known.
        plain.submit::<Square>(&1).unwrap().join().unwrap().unwrap();
        for pool in [&executor, &spinning] {
            pool.submit::<Square>(&1).unwrap().join().unwrap().unwrap();
        }
        let peers: Vec<u32> = std::iter::once(pingpong.child as u32)
            .chain(plain.worker_pids())
            .chain(executor.worker_pids())
            .chain(spinning.worker_pids())
            .collect();
        place(&peers);
        let mut g = c.benchmark_group("process_pool_roundtrip");
        g.throughput(Throughput::Elements(1));
        let mut x = 0u64;
        g.bench_function("raw_pingpong", |b| {
            b.iter(|| {
                x += 1;
                black_box(pingpong.round_trip(black_box(x)))
            })
        });
        // The two pools run the same code; each goes first in every other round.
        let pools: [(&str, RoundTrip); 2] = [
            (
                "process_pool",
                Box::new(|x| plain.submit::<Square>(&x).unwrap().join().unwrap().unwrap()),
            ),
            (
                "executor",
                Box::new(|x| {
                    executor
                        .submit::<Square>(&x)
                        .unwrap()
                        .join()
                        .unwrap()
                        .unwrap()
                }),
            ),
        ];
        let mut pools = common::in_round_order(pools);
        for (name, round_trip) in &mut pools {
            g.bench_function(*name, |b| {
                b.iter(|| {
                    x += 1;
                    black_box(round_trip(black_box(x)))
                })
            });
        }
        drop(pools);
        g.bench_function("procspawn", |b| {
            b.iter(|| {
                x += 1;
                let h = spawn.spawn(black_box(x), square);
                black_box(h.join().unwrap())
            })
        });
        let mut one = |pool: &ProcessPoolExecutor| {
            x += 1;
            let h = pool.submit::<Square>(black_box(&x)).unwrap();
            black_box(h.join().unwrap().unwrap())
        };
        g.bench_function("executor_spin", |b| b.iter(|| one(&spinning)));
        // A request path with pauses: each round trip comes after `IDLE` of nothing (not timed), so
        // the CPUs have gone idle and the caches cooled, as between one request and the next.
        let after_idle = |b: &mut criterion::Bencher, round_trip: &mut dyn FnMut()| {
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                for _ in 0..iters {
                    std::thread::sleep(IDLE);
                    let start = Instant::now();
                    round_trip();
                    took += start.elapsed();
                }
                took
            })
        };
        g.bench_function("raw_pingpong_after_idle", |b| {
            after_idle(b, &mut || {
                black_box(pingpong.round_trip(black_box(7)));
            })
        });
        g.bench_function("executor_after_idle", |b| {
            after_idle(b, &mut || {
                one(&executor);
            })
        });
        // Each mode under hogs of its own, started just before it, so that neither meets the hogs
        // later into their run than the other.
        // Either mode goes first in every other round.
        let modes = [
            ("executor_hogs", &executor),
            ("executor_spin_hogs", &spinning),
        ];
        for (name, pool) in common::in_round_order(modes) {
            let _hogs = Hogs::start(WORKERS);
            g.bench_function(name, |b| b.iter(|| one(pool)));
        }
        g.finish();
        executor.shutdown();
        spinning.shutdown();
        spawn.shutdown();
        drop(pingpong);
        // The throughput group runs on every CPU.
        common::set_affinity(0, 0..libc::CPU_SETSIZE as usize);
    }

    pub fn throughput(c: &mut Criterion) {
        let plain = plain(WORKERS);
        let executor = executor(WORKERS, "bench-throughput");
        let spinning = executor_spinning(WORKERS, "bench-throughput-spin", SPIN);
        let spawn = procspawn_pool(WORKERS);
        let mut g = c.benchmark_group("process_pool_throughput");
        g.throughput(Throughput::Elements(1));
        g.bench_function("process_pool", |b| {
            b.iter_custom(|iters| {
                batched(iters, |first, n| {
                    let handles: Vec<_> = (first..first + n)
                        .map(|x| plain.submit::<Square>(&x).unwrap())
                        .collect();
                    for h in handles {
                        black_box(h.join().unwrap().unwrap());
                    }
                })
            })
        });
        g.bench_function("executor", |b| {
            b.iter_custom(|iters| {
                batched(iters, |first, n| {
                    let handles: Vec<_> = (first..first + n)
                        .map(|x| executor.submit::<Square>(&x).unwrap())
                        .collect();
                    for h in handles {
                        black_box(h.join().unwrap().unwrap());
                    }
                })
            })
        });
        let batch = |pool: &ProcessPoolExecutor, iters: u64| {
            batched(iters, |first, n| {
                let handles: Vec<_> = (first..first + n)
                    .map(|x| pool.submit::<Square>(&x).unwrap())
                    .collect();
                for h in handles {
                    black_box(h.join().unwrap().unwrap());
                }
            })
        };
        g.bench_function("executor_spin", |b| {
            b.iter_custom(|iters| batch(&spinning, iters))
        });
        let modes = [
            ("executor_hogs", &executor),
            ("executor_spin_hogs", &spinning),
        ];
        for (name, pool) in common::in_round_order(modes) {
            let _hogs = Hogs::start(WORKERS);
            g.bench_function(name, |b| b.iter_custom(|iters| batch(pool, iters)));
        }
        g.bench_function(format!("executor_chunked_{CHUNK}"), |b| {
            b.iter_custom(|iters| {
                batched(iters, |first, n| {
                    for r in executor
                        .map_chunked::<Square, _>(first..first + n, CHUNK)
                        .unwrap()
                    {
                        black_box(r.unwrap().unwrap());
                    }
                })
            })
        });
        g.bench_function("procspawn", |b| {
            b.iter_custom(|iters| {
                batched(iters, |first, n| {
                    let handles: Vec<_> =
                        (first..first + n).map(|x| spawn.spawn(x, square)).collect();
                    for h in handles {
                        black_box(h.join().unwrap());
                    }
                })
            })
        });
        g.finish();
        executor.shutdown();
        spinning.shutdown();
        spawn.shutdown();
    }

    pub fn run() {
        let mut c = common::criterion().configure_from_args();
        roundtrip(&mut c);
        throughput(&mut c);
        c.final_summary();
    }
}

#[cfg(target_os = "linux")]
fn main() {
    // First, before criterion reads the arguments: a worker of either pool
    // never returns from here.
    linux::workers();
    linux::run();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("the process pool is Linux only");
}

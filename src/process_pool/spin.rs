//! Bounded spinning before parking, for the opt-in low-latency mode
//! ([`ProcessPoolBuilder::spin`](super::ProcessPoolBuilder::spin)).
//!
//! On a virtual machine, waking a thread or process whose CPU went idle costs
//! tens of microseconds (the idle vCPU halted and the hypervisor must run it
//! again); a round trip to a worker is several such wake-ups. A side that
//! polls for a short while before it blocks catches the next message without
//! one. Spinning only pays while each spinner has a CPU to itself: when the
//! CPUs are oversubscribed (other processes compete for them), a spinner
//! takes CPU time from the very thread it waits for, so each spinner watches
//! for signs of that and stops spinning for a while when it sees them.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A pause between two looks of a spinner longer than this means it lost its
/// CPU (preempted, or its vCPU descheduled): the CPUs are oversubscribed.
const PREEMPTED: Duration = Duration::from_micros(50);
/// After a preemption, how long waits block at once: the time the spinner
/// lost its CPU for, times that time over this unit, within the bounds
/// below. A long loss is both the surer sign of a CPU-bound competitor (it
/// ran a whole time slice) and the costlier (milliseconds, against the
/// microseconds a spin saves); and spinning between preemptions spends the
/// CPU time that would have won the spinner a prompt wake-up. So on a loaded
/// machine spins must be rare, not merely fewer: preemptions then cost about
/// `QUIET_UNIT / lost` of the time (a 4 ms loss: a second without spinning),
/// while a brief pause (the pool's own threads sharing a CPU for a moment, a
/// vCPU descheduled on an idle machine) costs a millisecond of spinning.
const QUIET_UNIT: Duration = Duration::from_micros(10);
const FIRST_QUIET: Duration = Duration::from_millis(1);
const MAX_QUIET: Duration = Duration::from_secs(1);

/// How often a process looks at how many threads the machine has ready to
/// run (see [`cpus_all_taken`]).
const LOOK_AT_LOAD_EVERY: Duration = Duration::from_millis(10);

/// Whether the machine has more threads ready to run than CPUs: then every
/// CPU is taken, and a spinner would spin on a CPU another thread is
/// waiting for (a CPU-bound process, or the very thread the spinner waits
/// on), and lose the scheduler's prompt wake-up it earns by blocking. Before
/// it can be preempted (what [`SpinState::spin`] watches for) it has cost
/// that other thread its time. Read from the kernel's count of runnable
/// threads (the fourth field of `/proc/loadavg`, which counts the reader
/// too) at most every [`LOOK_AT_LOAD_EVERY`] per process; false where it
/// cannot be read.
fn cpus_all_taken() -> bool {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    static NEXT_LOOK: AtomicU64 = AtomicU64::new(0);
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let epoch = *EPOCH.get_or_init(Instant::now);
    let now = epoch.elapsed().as_nanos() as u64;
    if now < NEXT_LOOK.load(Ordering::Relaxed) {
        return TAKEN.load(Ordering::Relaxed);
    }
    NEXT_LOOK.store(
        now.saturating_add(LOOK_AT_LOAD_EVERY.as_nanos() as u64),
        Ordering::Relaxed,
    );
    let taken = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| runnable_threads(&text))
        .is_some_and(|runnable| runnable > cpus());
    TAKEN.store(taken, Ordering::Relaxed);
    taken
}

/// The runnable threads in `/proc/loadavg`'s text (`0.52 0.58 0.59 3/467 12345`: 3).
fn runnable_threads(loadavg: &str) -> Option<usize> {
    loadavg
        .split_whitespace()
        .nth(3)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// The machine's online CPUs: the count `/proc/loadavg`'s runnable threads
/// compete for (a process confined to fewer, by its affinity or a cgroup's
/// quota, would otherwise read other processes' threads as its own load and
/// never spin on a large machine).
fn cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| {
        // SAFETY: sysconf(3) reads a system value and has no other effect.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        usize::try_from(online)
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

/// One spinner's memory of how its recent spins went.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SpinState {
    /// Until when waits block at once.
    quiet_until: Option<Instant>,
}

impl SpinState {
    const NEW: SpinState = SpinState { quiet_until: None };

    /// Calls `ready` until it returns true (then true), for at most `limit`,
    /// giving the CPU away between calls so a thread that shares it (the one
    /// this one waits for) runs. False when the caller should block: the
    /// bound passed, spinning is off (`limit` zero), backing off after a
    /// preemption, or every CPU is taken ([`cpus_all_taken`]).
    pub(crate) fn spin(&mut self, limit: Duration, ready: impl FnMut() -> bool) -> bool {
        self.spin_unless(limit, ready, cpus_all_taken)
    }

    /// [`spin`](Self::spin), with `taken` telling whether every CPU is.
    fn spin_unless(
        &mut self,
        limit: Duration,
        mut ready: impl FnMut() -> bool,
        taken: impl FnOnce() -> bool,
    ) -> bool {
        if limit.is_zero() {
            return false;
        }
        if let Some(until) = self.quiet_until {
            if Instant::now() < until {
                return false;
            }
            self.quiet_until = None;
        }
        if taken() {
            return false;
        }
        if ready() {
            return true;
        }
        let start = Instant::now();
        let mut last = start;
        loop {
            std::thread::yield_now();
            let done = ready();
            let now = Instant::now();
            let lost = now.duration_since(last);
            if lost > PREEMPTED {
                let quiet = lost
                    .saturating_mul(quiet_factor(lost))
                    .clamp(FIRST_QUIET, MAX_QUIET);
                self.quiet_until = now.checked_add(quiet);
                return done;
            }
            if done || now.duration_since(start) >= limit {
                return done;
            }
            last = now;
        }
    }
}

/// `lost` over [`QUIET_UNIT`], saturated.
fn quiet_factor(lost: Duration) -> u32 {
    u32::try_from(lost.as_nanos() / QUIET_UNIT.as_nanos()).unwrap_or(u32::MAX)
}

thread_local! {
    /// The spinning memory of a thread joining process tasks.
    static JOINER: Cell<SpinState> = const { Cell::new(SpinState::NEW) };
}

/// Spins this joining thread, with its memory of how its recent spins went,
/// until `ready` (then true) or for at most `limit`: see [`SpinState::spin`].
pub(crate) fn joiner_spin(limit: Duration, ready: impl FnMut() -> bool) -> bool {
    JOINER.with(|state| {
        let mut s = state.get();
        let done = s.spin(limit, ready);
        state.set(s);
        done
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SpinState {
        /// [`spin`](SpinState::spin) as on a machine with a CPU to spare,
        /// whatever else runs beside the test.
        fn spin_idle(&mut self, limit: Duration, ready: impl FnMut() -> bool) -> bool {
            self.spin_unless(limit, ready, || false)
        }
    }

    #[test]
    fn the_runnable_threads_are_the_fourth_field_of_loadavg() {
        assert_eq!(runnable_threads("0.52 0.58 0.59 3/467 12345\n"), Some(3));
        assert_eq!(runnable_threads("0.52 0.58 0.59"), None);
        assert_eq!(runnable_threads("0.52 0.58 0.59 x/467 1"), None);
        if let Ok(text) = std::fs::read_to_string("/proc/loadavg") {
            // This thread is running while it reads.
            assert!(runnable_threads(&text).is_some_and(|n| n >= 1), "{text}");
        }
    }

    /// With a CPU-bound thread on every CPU, a spinner blocks at once
    /// instead of taking a CPU one of them needs.
    #[test]
    fn nothing_spins_while_every_cpu_is_taken() {
        if std::fs::read_to_string("/proc/loadavg").is_err() {
            return;
        }
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let hogs: Vec<_> = (0..cpus())
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        // Past the cached look from before the hogs started.
        std::thread::sleep(LOOK_AT_LOAD_EVERY * 2);
        let mut looks = 0;
        let mut s = SpinState::default();
        for _ in 0..20 {
            s.spin(Duration::from_secs(1), || {
                looks += 1;
                false
            });
        }
        stop.store(true, Ordering::Relaxed);
        for hog in hogs {
            hog.join().unwrap();
        }
        assert_eq!(looks, 0, "spun while {} hogs ran", cpus());
    }

    #[test]
    fn spin_stops_when_ready_and_at_the_bound() {
        let mut s = SpinState::default();
        assert!(!s.spin_idle(Duration::ZERO, || panic!("zero turns spinning off")));
        let mut calls = 0;
        assert!(s.spin_idle(Duration::from_secs(5), || {
            calls += 1;
            true
        }));
        assert_eq!(calls, 1, "ready at the first look");
        // Never ready: gives up at the bound (or sooner, if preempted).
        assert!(!s.spin_idle(Duration::from_micros(200), || false));
    }

    #[test]
    fn a_preempted_spin_backs_off_for_a_time_not_a_count_of_waits() {
        let mut s = SpinState::default();
        let lost = PREEMPTED * 3;
        let before = Instant::now();
        // A look that takes longer than a preemption's pause.
        assert!(!s.spin_idle(Duration::from_secs(5), || {
            std::thread::sleep(lost);
            false
        }));
        // However many waits follow, they block at once for a while (this thread may itself be preempted past
        // that on a loaded machine: a look is then right).
        let quiet = before + lost * 10;
        let (mut blocked, mut early) = (0, 0);
        for _ in 0..1000 {
            let mut looked = false;
            let spun = s.spin_idle(Duration::from_secs(5), || {
                looked = true;
                true
            });
            if !looked {
                assert!(!spun);
                blocked += 1;
            } else if Instant::now() < quiet {
                early += 1;
            }
        }
        assert_eq!(
            early,
            0,
            "spun again within {:?} of the preemption",
            lost * 10
        );
        assert!(blocked > 0, "backing off");
        // And then it spins again.
        let give_up = Instant::now() + Duration::from_secs(5);
        while !s.spin_idle(Duration::from_secs(5), || true) {
            assert!(Instant::now() < give_up, "never spins again");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

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
use std::time::{Duration, Instant};

/// A pause between two looks of a spinner longer than this means it lost its
/// CPU (preempted, or its vCPU descheduled): the CPUs are oversubscribed.
const PREEMPTED: Duration = Duration::from_micros(50);
/// After a preemption, waits that skip spinning: doubled on each preemption
/// from the first, up to the maximum, halved by each spin that gave the CPU
/// away and got it back at once (a look that succeeds at once says nothing
/// about the CPUs).
const FIRST_PENALTY: u32 = 64;
const MAX_PENALTY: u32 = 8192;

/// One spinner's memory of how its recent spins went.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SpinState {
    /// Waits left that block at once.
    skip: u32,
    /// The next preemption's `skip`.
    penalty: u32,
}

impl SpinState {
    /// Calls `ready` until it returns true (then true), for at most `limit`,
    /// giving the CPU away between calls so a thread that shares it (the one
    /// this one waits for) runs. False when the caller should block: the
    /// bound passed, spinning is off (`limit` zero), or backing off after a
    /// preemption.
    pub(crate) fn spin(&mut self, limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
        if limit.is_zero() {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
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
            if now.duration_since(last) > PREEMPTED {
                self.penalty = (self.penalty * 2).clamp(FIRST_PENALTY, MAX_PENALTY);
                self.skip = self.penalty;
                return done;
            }
            if done || now.duration_since(start) >= limit {
                self.penalty /= 2;
                return done;
            }
            last = now;
        }
    }
}

thread_local! {
    /// The spinning memory of a thread joining process tasks.
    static JOINER: Cell<SpinState> = const { Cell::new(SpinState { skip: 0, penalty: 0 }) };
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

    #[test]
    fn spin_stops_when_ready_and_at_the_bound() {
        let mut s = SpinState::default();
        assert!(!s.spin(Duration::ZERO, || panic!("zero turns spinning off")));
        let mut calls = 0;
        assert!(s.spin(Duration::from_secs(5), || {
            calls += 1;
            true
        }));
        assert_eq!(calls, 1, "ready at the first look");
        // Never ready: gives up at the bound (or sooner, if preempted).
        assert!(!s.spin(Duration::from_micros(200), || false));
    }

    #[test]
    fn a_preempted_spin_backs_off() {
        let mut s = SpinState::default();
        // A look that takes longer than a preemption's pause.
        assert!(!s.spin(Duration::from_secs(5), || {
            std::thread::sleep(PREEMPTED * 3);
            false
        }));
        for _ in 0..FIRST_PENALTY {
            assert!(!s.spin(Duration::from_secs(5), || true), "backing off");
        }
        assert!(s.spin(Duration::from_secs(5), || true), "spinning again");
    }
}

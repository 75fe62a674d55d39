//! [`Clock`]: the clock of task timings.
//!
//! A raw read of one process-wide [`quanta::Clock`] (the TSC where the CPU
//! has a stable one, the OS clock otherwise), scaled to nanoseconds only when
//! a duration is taken. Against `quanta::Instant::now` this skips a
//! thread-local look-up (for quanta's mock clocks, unused here) and a scaling
//! per read.

use std::sync::OnceLock;

/// Inlined: where the crate reads the clock, the set-up check is an atomic
/// load, not a call.
#[inline]
fn source() -> &'static quanta::Clock {
    static SOURCE: OnceLock<quanta::Clock> = OnceLock::new();
    // Calibrates on first use (once per process, shared with every
    // `quanta::Clock`): `ExecutorExporterBuilder::build` pays it.
    SOURCE.get_or_init(quanta::Clock::new)
}

/// A point in time, in the raw units of the process-wide clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clock(u64);

impl Clock {
    #[inline]
    pub(crate) fn now() -> Clock {
        Clock(source().raw())
    }

    /// The raw reading: what a scrape-time slot stores (never 0 for a real
    /// reading, so 0 can mean "none").
    #[inline]
    pub(crate) fn raw(self) -> u64 {
        self.0
    }

    /// A reading stored with [`raw`](Self::raw).
    #[inline]
    pub(crate) fn from_raw(raw: u64) -> Clock {
        Clock(raw)
    }

    /// The time from `earlier` to `self` in whole nanoseconds; zero if
    /// `earlier` is later. What the histograms record, without a round trip
    /// through [`std::time::Duration`] (a division and a multiplication per task).
    #[inline]
    pub(crate) fn nanos_since(self, earlier: Clock) -> u64 {
        source().delta_as_nanos(earlier.0, self.0)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_agree_with_the_os_clock() {
        // Each clock read is bracketed by OS clock reads, so a preemption
        // anywhere widens the bounds instead of failing the test.
        let t0 = std::time::Instant::now();
        let start = Clock::now();
        let t1 = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let t2 = std::time::Instant::now();
        let end = Clock::now();
        let t3 = std::time::Instant::now();
        let d = Duration::from_nanos(end.nanos_since(start));
        // 1 ms of slack for the calibration's scaling error.
        let slack = Duration::from_millis(1);
        assert!(d + slack >= t2 - t1, "{d:?} shorter than {:?}", t2 - t1);
        assert!(d <= t3 - t0 + slack, "{d:?} longer than {:?}", t3 - t0);
        assert_eq!(start.nanos_since(end), 0);
    }
}

//! [`Clock`]: the clock of task timings.
//!
//! A raw read of one process-wide [`quanta::Clock`] (the TSC where the CPU
//! has a stable one, the OS clock otherwise), scaled to nanoseconds only when
//! a duration is taken. Against `quanta::Instant::now` this skips a
//! thread-local look-up (for quanta's mock clocks, unused here) and a scaling
//! per read.
//!
//! On x86-64, once that clock is known to read the TSC, a task's reads are the
//! `rdtsc` instruction itself and its durations one multiplication: neither
//! goes through the clock's set-up check and its choice of source, which cost
//! more instructions than the read (three reads and two durations per task).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

/// [`MODE`] before the clock is set up.
const UNKNOWN: u8 = 0;
/// [`MODE`] when quanta reads the TSC: reads and durations skip quanta.
const TSC: u8 = 1;
/// [`MODE`] otherwise: every read and duration goes through quanta.
const QUANTA: u8 = 2;

/// How task timings read the clock: [`UNKNOWN`], [`TSC`] or [`QUANTA`].
static MODE: AtomicU8 = AtomicU8::new(UNKNOWN);
/// In [`TSC`] mode, the nanoseconds of 2^[`SHIFT`] ticks: a duration is
/// `ticks * NANOS_PER_2_SHIFT >> SHIFT`, quanta's own calibration to within
/// a part in 2^40 (stored before [`MODE`] becomes [`TSC`]).
static NANOS_PER_2_SHIFT: AtomicU64 = AtomicU64::new(0);
const SHIFT: u32 = 40;

/// Inlined: where the crate reads the clock, the set-up check is an atomic
/// load, not a call.
#[inline]
fn source() -> &'static quanta::Clock {
    static SOURCE: OnceLock<quanta::Clock> = OnceLock::new();
    // Calibrates on first use (once per process, shared with every
    // `quanta::Clock`): `ExecutorExporterBuilder::build` pays it.
    SOURCE.get_or_init(|| {
        let clock = quanta::Clock::new();
        if reads_the_tsc(&clock) {
            NANOS_PER_2_SHIFT.store(clock.delta_as_nanos(0, 1 << SHIFT), Ordering::Relaxed);
            MODE.store(TSC, Ordering::Release);
        } else {
            MODE.store(QUANTA, Ordering::Release);
        }
        clock
    })
}

/// Whether `clock`'s raw reads are the TSC's: three reads, each between two
/// `rdtsc`s close together. The OS clock's nanoseconds never fall there,
/// and a preemption between the reads only sends the crate to the slower,
/// always correct path.
#[cfg(target_arch = "x86_64")]
fn reads_the_tsc(clock: &quanta::Clock) -> bool {
    (0..3).all(|_| {
        let before = rdtsc();
        let raw = clock.raw();
        let after = rdtsc();
        before <= raw && raw <= after && after - before < 1_000_000
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn reads_the_tsc(_: &quanta::Clock) -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` exists on every x86-64 CPU and reads a counter only.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn rdtsc() -> u64 {
    unreachable!("TSC mode is only set on x86-64")
}

/// A read through quanta: before set-up, and where the clock is not the TSC.
#[cold]
#[inline(never)]
fn raw_slow() -> u64 {
    source().raw()
}

/// A point in time, in the raw units of the process-wide clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clock(u64);

impl Clock {
    #[inline]
    pub(crate) fn now() -> Clock {
        if MODE.load(Ordering::Relaxed) == TSC {
            Clock(rdtsc())
        } else {
            Clock(raw_slow())
        }
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

    /// The reading `ago` before `self`, but not before `not_before`.
    pub(crate) fn earlier_by(self, ago: std::time::Duration, not_before: Clock) -> Clock {
        let nanos = ago.as_nanos().min(u128::from(u64::MAX)) as u64;
        if self.nanos_since(not_before) <= nanos {
            return not_before;
        }
        let per = if MODE.load(Ordering::Acquire) == TSC {
            NANOS_PER_2_SHIFT.load(Ordering::Relaxed)
        } else {
            source().delta_as_nanos(0, 1 << SHIFT)
        };
        let ticks = (u128::from(nanos) << SHIFT) / u128::from(per.max(1));
        Clock(
            self.0
                .saturating_sub(ticks.min(u128::from(u64::MAX)) as u64),
        )
    }

    /// The time from `earlier` to `self` in whole nanoseconds; zero if
    /// `earlier` is later. What the histograms record, without a round trip
    /// through [`std::time::Duration`] (a division and a multiplication per task).
    #[inline]
    pub(crate) fn nanos_since(self, earlier: Clock) -> u64 {
        if MODE.load(Ordering::Acquire) == TSC {
            if self.0 <= earlier.0 {
                return 0;
            }
            let ticks = u128::from(self.0 - earlier.0);
            let nanos = ticks * u128::from(NANOS_PER_2_SHIFT.load(Ordering::Relaxed));
            (nanos >> SHIFT) as u64
        } else {
            source().delta_as_nanos(earlier.0, self.0)
        }
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

    #[test]
    fn a_reading_dated_back_is_that_far_back_but_never_before_its_bound() {
        let bound = Clock::now();
        std::thread::sleep(Duration::from_millis(5));
        let now = Clock::now();
        let back = now.earlier_by(Duration::from_millis(2), bound);
        // Within a nanosecond of rounding each way.
        assert!(
            now.nanos_since(back).abs_diff(2_000_000) <= 2,
            "{}",
            now.nanos_since(back)
        );
        assert_eq!(now.earlier_by(Duration::from_secs(1), bound), bound);
        assert_eq!(now.earlier_by(Duration::ZERO, bound), now);
    }

    #[test]
    fn durations_agree_with_quantas_scaling() {
        let start = Clock::now();
        let clock = source();
        for ticks in [
            0u64,
            1,
            7,
            1_000,
            123_456_789,
            1 << 33,
            1 << 45,
            u64::MAX / 4,
        ] {
            let end = Clock::from_raw(start.raw().wrapping_add(ticks));
            if end.raw() <= start.raw() {
                continue;
            }
            let ours = end.nanos_since(start);
            let quantas = clock.delta_as_nanos(start.raw(), end.raw());
            // Within one part in 2^30 (plus a nanosecond of rounding).
            let slack = quantas >> 30;
            assert!(
                ours.abs_diff(quantas) <= slack + 1,
                "{ticks} ticks: {ours} ns against quanta's {quantas}"
            );
        }
    }

    #[test]
    fn the_fast_path_is_taken_where_quanta_reads_the_tsc() {
        let _ = source();
        let mode = MODE.load(Ordering::Acquire);
        assert_ne!(mode, UNKNOWN);
        if cfg!(target_arch = "x86_64") && quanta_reads_the_tsc() {
            assert_eq!(
                mode, TSC,
                "quanta reads the TSC, but reads still go through it"
            );
        }
    }

    /// Whether quanta picked the TSC, by its own detection's rule: an
    /// invariant TSC and `rdtscp` (CPUID leaves 0x8000_0007 and 0x8000_0001).
    fn quanta_reads_the_tsc() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::__cpuid;
            // SAFETY: CPUID exists on every x86-64 CPU; extended leaves past
            // the maximum one read as zeros. (`__cpuid` is a safe function
            // on newer compilers, an unsafe one on the crate's oldest.)
            #[allow(unused_unsafe)]
            let (max, apm, ext) = unsafe {
                (
                    __cpuid(0x8000_0000).eax,
                    __cpuid(0x8000_0007).edx,
                    __cpuid(0x8000_0001).edx,
                )
            };
            max >= 0x8000_0007 && apm & (1 << 8) != 0 && ext & (1 << 27) != 0
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

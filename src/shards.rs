//! Per-thread shards of the hot counters and histograms of one series.
//!
//! Every thread that records into a series picks one of [`SHARDS`] cache-line
//! aligned shards (by a per-thread index), so two threads recording at the
//! same time touch different cache lines. Only relaxed atomic adds happen on
//! the hot path; the collector sums the shards at scrape time.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;

/// Shards per series: enough for the threads of a small machine to rarely
/// share one, few enough to keep a scrape cheap.
pub(crate) const SHARDS: usize = 8;

/// The shard the current thread records into.
pub(crate) fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        let mut i = index.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            index.set(i);
        }
        i
    })
}

/// A histogram's shard: a count per bucket (not cumulative; the last is the
/// `+Inf` bucket) and the sum in nanoseconds.
#[derive(Debug)]
pub(crate) struct Buckets {
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Buckets {
    pub(crate) fn new(bounds: usize) -> Buckets {
        Buckets {
            counts: (0..=bounds).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Counts `d` in the first bucket whose bound (in nanoseconds) is at
    /// least `d`, as Prometheus' `le` buckets do.
    #[inline]
    pub(crate) fn observe(&self, bounds_nanos: &[u64], d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = bounds_nanos.partition_point(|&b| b < nanos);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Adds this shard into `counts` and `sum_nanos`.
    pub(crate) fn add_to(&self, counts: &mut [u64], sum_nanos: &mut u128) {
        for (total, c) in counts.iter_mut().zip(self.counts.iter()) {
            *total += c.load(Ordering::Relaxed);
        }
        *sum_nanos += u128::from(self.sum_nanos.load(Ordering::Relaxed));
    }
}

/// One shard of a series' task counts.
#[derive(Debug)]
pub(crate) struct Shard {
    pub(crate) submitted: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) queued: AtomicI64,
    pub(crate) running: AtomicI64,
    pub(crate) failures: [AtomicU64; crate::FailureReason::ALL.len()],
    pub(crate) wait: Buckets,
    pub(crate) completed: Buckets,
    pub(crate) failed: Buckets,
}

impl Shard {
    fn new(wait_bounds: usize, duration_bounds: usize) -> Shard {
        Shard {
            submitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            queued: AtomicI64::new(0),
            running: AtomicI64::new(0),
            failures: Default::default(),
            wait: Buckets::new(wait_bounds),
            completed: Buckets::new(duration_bounds),
            failed: Buckets::new(duration_bounds),
        }
    }
}

/// The shards of one series.
#[derive(Debug)]
pub(crate) struct Shards {
    shards: Box<[CachePadded<Shard>]>,
}

impl Shards {
    pub(crate) fn new(wait_bounds: usize, duration_bounds: usize) -> Shards {
        Shards {
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(Shard::new(wait_bounds, duration_bounds)))
                .collect(),
        }
    }

    /// The current thread's shard.
    #[inline]
    pub(crate) fn local(&self) -> &Shard {
        &self.shards[shard_index()]
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Shard> {
        self.shards.iter().map(|s| &**s)
    }

    pub(crate) fn sum_u64(&self, field: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }

    pub(crate) fn sum_i64(&self, field: impl Fn(&Shard) -> &AtomicI64) -> i64 {
        self.iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .fold(0i64, i64::wrapping_add)
    }
}

/// Bucket bounds in seconds, as whole nanoseconds (rounded up, so a duration
/// equal to a bound lands in that bound's bucket).
pub(crate) fn bounds_in_nanos(bounds: &[f64]) -> Box<[u64]> {
    bounds
        .iter()
        .map(|b| (b * 1e9).ceil().min(u64::MAX as f64) as u64)
        .collect()
}

//! Per-thread shards of the hot counters and histograms of one series.
//!
//! Every thread that records into a series claims a shard of its own, so
//! recording is a plain load and store on an atomic (no locked
//! read-modify-write) on a cache line no other thread writes. The collector
//! sums every shard at scrape time.
//!
//! The crate-internal API:
//!
//! - [`Shards::with_local`] runs a closure on the current thread's shard;
//!   inside it, [`Shard::add`] and [`Shard::observe`] record.
//! - [`Shards::for_each`] visits every shard ever claimed (at scrape time).
//!
//! How a thread finds its shard: a thread-local cache maps a series' id
//! (unique for the life of the process, never an address that could be
//! reused) to the shard, with a fast path for the series used last. The cache
//! holds each shard through an [`Arc`], so a shard outlives its series safely;
//! entries of series that are gone are dropped when the cache next grows.
//! When the thread exits, the cache's destructor releases its shards (an
//! owner flag) and a later thread reuses them, so short-lived threads do not
//! grow a series without bound. A released shard keeps its counts and is
//! still summed: nothing is ever lost.
//!
//! Without the cache (while the thread's thread-locals are being destroyed)
//! a thread records into the series' one shared shard, with atomic
//! `fetch_add`s.
//!
//! Memory ordering: each record is a `Release` store (or a `Release`
//! `fetch_add` on the shared shard), and the collector reads with `Acquire`
//! loads. So when a scrape sees an event, it also sees everything that
//! happened before it, on any thread: the collector reads the events a task
//! goes through later before those it goes through earlier, and derived
//! counts (tasks started minus tasks ended) never go negative.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_utils::CachePadded;

use super::native::{Layout, NativeBuckets, NativeTotals};

/// Adds `n` to `counter`: a plain load and store when the calling thread is
/// the shard's only writer, an atomic add otherwise.
#[inline(always)]
fn add(exclusive: bool, counter: &AtomicU64, n: u64) {
    if exclusive {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Release,
        );
    } else {
        counter.fetch_add(n, Ordering::Release);
    }
}

/// A histogram's shard: a count per bucket (not cumulative; the last is the
/// `+Inf` bucket), the sum in nanoseconds, and the native histogram's
/// counts when the series keeps one.
#[derive(Debug)]
pub(crate) struct Buckets {
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
    native: Option<NativeBuckets>,
}

impl Buckets {
    fn new(bounds: usize, native: Option<Layout>) -> Buckets {
        Buckets {
            counts: (0..=bounds).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            native: native.map(NativeBuckets::new),
        }
    }

    /// Adds this shard's native counts into `totals`, if it keeps them.
    pub(crate) fn add_native_to(&self, totals: &mut NativeTotals) {
        if let Some(native) = &self.native {
            native.add_to(totals);
        }
    }

    /// Adds this shard into `counts` and `sum_nanos`.
    pub(crate) fn add_to(&self, counts: &mut [u64], sum_nanos: &mut u128) {
        for (total, c) in counts.iter_mut().zip(self.counts.iter()) {
            *total = total.wrapping_add(c.load(Ordering::Acquire));
        }
        *sum_nanos += u128::from(self.sum_nanos.load(Ordering::Acquire));
    }
}

/// One shard of a series' task counts. Only the thread holding it writes to
/// it (except the shared shard, which takes atomic adds), through
/// [`Shard::add`] and [`Shard::observe`]; anyone may read it.
#[derive(Debug)]
pub(crate) struct Shard {
    /// Held by a live thread (always true for the shared shard).
    owned: AtomicBool,
    /// False for the shared shard: its writers use atomic adds.
    exclusive: bool,
    /// Exclusive, and its histograms keep no native counts: an
    /// observation takes [`observe`](Self::observe)'s one fast path, tested
    /// by this one flag.
    plain: bool,
    pub(crate) submitted: AtomicU64,
    /// The submit times (raw) of this thread's last [`SUBMIT_RING`] accepted
    /// tasks, the one counted `n`th in `submitted` at `n % SUBMIT_RING`:
    /// the queued age is read from them at scrape time.
    submits: [AtomicU64; SUBMIT_RING],
    pub(crate) rejected: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    /// Failed without starting (also observed into `failed`).
    pub(crate) failed_unstarted: AtomicU64,
    pub(crate) failures: [AtomicU64; crate::error::FailureReason::ALL.len()],
    pub(crate) wait: Buckets,
    /// The start (a raw clock reading) of the outermost task this shard's
    /// thread is running, 0 when it runs none: the running age is read
    /// from it at scrape time. Only the thread writes it; on the shared
    /// shard, threads race and a task may go unseen (never stuck: see
    /// [`Shard::leave_run`]).
    pub(crate) running_since: AtomicU64,
    /// The submit time (raw) of the last task this thread started at the
    /// outermost level, 0 before the first.
    pub(crate) started_submit: AtomicU64,
    pub(crate) completed: Buckets,
    pub(crate) failed: Buckets,
}

impl Shard {
    fn new(
        wait_bounds: usize,
        duration_bounds: usize,
        native: Option<Layout>,
        exclusive: bool,
    ) -> Shard {
        Shard {
            owned: AtomicBool::new(true),
            exclusive,
            plain: exclusive && native.is_none(),
            submitted: AtomicU64::new(0),
            submits: std::array::from_fn(|_| AtomicU64::new(0)),
            rejected: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            failed_unstarted: AtomicU64::new(0),
            failures: Default::default(),
            wait: Buckets::new(wait_bounds, native),
            running_since: AtomicU64::new(0),
            started_submit: AtomicU64::new(0),
            completed: Buckets::new(duration_bounds, native),
            failed: Buckets::new(duration_bounds, native),
        }
    }

    /// Adds `n` to `counter`, one of this shard's fields. Only call it inside
    /// [`Shards::with_local`], on the shard given there.
    #[inline]
    pub(crate) fn add(&self, counter: &AtomicU64, n: u64) {
        add(self.exclusive, counter, n);
    }

    /// Counts a duration of `nanos` into `buckets` (one of this shard's
    /// histograms), in the first bucket whose bound is at least `nanos`, as
    /// Prometheus' `le` buckets do, and in its native bucket if `buckets`
    /// keeps native counts. The classic bucket is counted last, so a scrape
    /// that sees the observation also sees what this thread recorded before,
    /// its native count included.
    #[inline]
    pub(crate) fn observe(&self, buckets: &Buckets, bounds: &BucketBounds, nanos: u64) {
        if !self.plain {
            return self.observe_any(buckets, bounds, nanos);
        }
        add(true, &buckets.sum_nanos, nanos);
        if let Some(count) = buckets.counts.get(bounds.bucket(nanos)) {
            add(true, count, 1);
        }
    }

    /// [`observe`](Self::observe) on the shared shard, or with native
    /// counts. Out of line: the default, a thread's own shard without
    /// native counts, pays only the test of [`plain`](Self::plain) (which
    /// stands in for the test of `exclusive` it would make anyway).
    #[inline(never)]
    fn observe_any(&self, buckets: &Buckets, bounds: &BucketBounds, nanos: u64) {
        add(self.exclusive, &buckets.sum_nanos, nanos);
        if let Some(native) = &buckets.native {
            add(self.exclusive, native.counter(nanos), 1);
        }
        if let Some(count) = buckets.counts.get(bounds.bucket(nanos)) {
            add(self.exclusive, count, 1);
        }
    }
}

impl Shard {
    /// A task submitted at `submitted` (a raw clock reading) was accepted
    /// by its executor: counted, and its submit time kept in the ring. One
    /// store more than the count alone, on this thread's own shard.
    #[inline]
    pub(crate) fn accepted(&self, submitted: u64) {
        if self.exclusive {
            let n = self.submitted.load(Ordering::Relaxed);
            self.submits[ring_slot(n)].store(submitted, Ordering::Relaxed);
            self.submitted.store(n.wrapping_add(1), Ordering::Release);
        } else {
            // Threads race on the shared shard: a slot may hold a
            // neighbour's time, which only moves a queued age by the
            // gap between two submits.
            let n = self.submitted.fetch_add(1, Ordering::Release);
            self.submits[ring_slot(n)].store(submitted, Ordering::Relaxed);
        }
    }

    /// Adds this shard's kept submit times (its last `min(submitted,
    /// SUBMIT_RING)`) to `out`.
    pub(crate) fn recent_submits(&self, out: &mut Vec<u64>) {
        let n = self.submitted.load(Ordering::Acquire);
        let kept = n.min(SUBMIT_RING as u64);
        for i in n - kept..n {
            let t = self.submits[ring_slot(i)].load(Ordering::Relaxed);
            if t != 0 {
                out.push(t);
            }
        }
    }

    /// A task submitted at `submitted` starts on this thread at `now` (raw
    /// clock readings): the thread counts as running since `now`, unless
    /// it already runs a task of this series (this one runs inline inside
    /// it, and the outer one is the older). Returns the start the task
    /// must give [`leave_run`](Self::leave_run): `now`, or in the nested
    /// case a reading that differs from the outer task's start, so that
    /// the inner task's end cannot take the outer one's mark.
    ///
    /// Plain loads and stores: one more load and two stores beside the
    /// wait's observation, on the same shard.
    #[inline]
    pub(crate) fn enter_run(&self, now: u64, submitted: u64) -> u64 {
        let outer = self.running_since.load(Ordering::Relaxed);
        if outer != 0 {
            return nested_start(outer, now);
        }
        self.running_since.store(now, Ordering::Relaxed);
        self.started_submit.store(submitted, Ordering::Relaxed);
        now
    }

    /// The task [`enter_run`](Self::enter_run) returned `started` for
    /// ended: the thread runs none any more, unless this was a nested one.
    ///
    /// Never leaves a mark behind, even on the shared shard where threads
    /// race: a thread's end reads the slot after its own store, so the last
    /// start stored is always read and cleared by its own task's end.
    #[inline]
    pub(crate) fn leave_run(&self, started: u64) {
        if self.running_since.load(Ordering::Relaxed) == started {
            self.running_since.store(0, Ordering::Relaxed);
        }
    }
}

/// The start of a task run inside another task of the same series on the
/// same thread (a joiner running a queued task, an inline executor). Two
/// reads of a coarse clock can be equal: the inner start is then moved one
/// tick on, which no duration can notice.
#[cold]
#[inline(never)]
fn nested_start(outer: u64, now: u64) -> u64 {
    if outer == now {
        now.wrapping_add(1)
    } else {
        now
    }
}

type Slot = Arc<CachePadded<Shard>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The list is only ever pushed to: a panic cannot leave it half written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shards of one series: the shared one, then one per thread that has
/// recorded into it (live or released).
#[derive(Debug)]
pub(crate) struct Shards {
    /// Keys the thread-local caches: unique for the life of the process.
    id: u64,
    wait_bounds: usize,
    duration_bounds: usize,
    native: Option<Layout>,
    shared: Slot,
    /// Every shard, the shared one first; only ever grows.
    all: Mutex<Vec<Slot>>,
}

impl Shards {
    /// Shards of histograms with this many bounds, keeping native counts
    /// of `native`'s schema if given.
    pub(crate) fn new(
        wait_bounds: usize,
        duration_bounds: usize,
        native: Option<Layout>,
    ) -> Shards {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let shared = Arc::new(CachePadded::new(Shard::new(
            wait_bounds,
            duration_bounds,
            native,
            false,
        )));
        Shards {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            wait_bounds,
            duration_bounds,
            native,
            all: Mutex::new(vec![shared.clone()]),
            shared,
        }
    }

    /// Runs `f` on the current thread's shard, claiming one the first time
    /// this thread records into this series. Never panics and never loses a
    /// record: without the thread-local cache, `f` runs on the shared shard.
    #[inline]
    pub(crate) fn with_local<R>(&self, f: impl Fn(&Shard) -> R) -> R {
        let found = LOCAL.try_with(|local| {
            if local.last_id.get() != self.id {
                return None;
            }
            // SAFETY: `last_id` (never 0 for a series) and `last` are set
            // together, to a shard held by an entry of this thread's cache,
            // which keeps it until the entry is dropped; `with_cached`
            // resets `last_id` before it drops any entry, and `f` (the
            // crate's recording code) does not reach this cache.
            Some(f(unsafe { &*local.last.get() }))
        });
        match found {
            Ok(Some(r)) => r,
            Ok(None) => self.with_cached(f),
            Err(_) => f(&self.shared),
        }
    }

    /// The slow path of [`with_local`](Self::with_local): finds this
    /// series' shard in the thread's cache, or claims one and caches it;
    /// makes it the last used; and runs `f` on it.
    #[cold]
    #[inline(never)]
    fn with_cached<R>(&self, f: impl Fn(&Shard) -> R) -> R {
        let found = LOCAL.try_with(|local| {
            let mut entries = local.entries.try_borrow_mut().ok()?;
            let shard = match entries.iter().find(|e| e.id == self.id) {
                Some(entry) => entry.shard.clone(),
                None => {
                    local.last_id.set(0);
                    local.last.set(std::ptr::null());
                    // Only the shards of series that are gone have no other
                    // owner: no one will read them again.
                    entries.retain(|e| Arc::strong_count(&e.shard) > 1);
                    let shard = self.claim();
                    entries.push(Entry {
                        id: self.id,
                        shard: shard.clone(),
                    });
                    shard
                }
            };
            drop(entries);
            let r = f(&shard);
            // The entry pushed or found above holds the shard.
            local.last.set(&**shard as *const Shard);
            local.last_id.set(self.id);
            Some(r)
        });
        match found {
            Ok(Some(r)) => r,
            _ => f(&self.shared),
        }
    }

    /// A shard no live thread holds, marked as held: a released one if
    /// there is one, else a new one.
    fn claim(&self) -> Slot {
        let mut all = lock(&self.all);
        for shard in all.iter() {
            // Acquire: the previous owner's records happen before ours.
            if shard
                .owned
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return shard.clone();
            }
        }
        let shard = Arc::new(CachePadded::new(Shard::new(
            self.wait_bounds,
            self.duration_bounds,
            self.native,
            true,
        )));
        all.push(shard.clone());
        shard
    }

    /// Runs `f` on every shard, held or released.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Shard)) {
        for shard in lock(&self.all).iter() {
            f(shard);
        }
    }

    /// The sum of one counter over every shard.
    pub(crate) fn sum(&self, field: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        let mut total = 0u64;
        self.for_each(|s| total = total.wrapping_add(field(s).load(Ordering::Acquire)));
        total
    }
}

/// One series' shard in a thread's cache.
struct Entry {
    id: u64,
    shard: Slot,
}

/// A thread's shards, one per series it has recorded into.
struct Local {
    /// The id of the series recorded into last (0, no series, when none).
    last_id: Cell<u64>,
    /// That series' shard, held by its entry in `entries`: a plain pointer,
    /// so the fast path is two loads and no reference count or take-and-put.
    last: Cell<*const Shard>,
    entries: RefCell<Vec<Entry>>,
}

impl Drop for Local {
    /// The thread is exiting: its shards, counts kept, go to later threads.
    fn drop(&mut self) {
        for entry in self.entries.get_mut().iter() {
            // Release: our records happen before the next owner's.
            entry.shard.owned.store(false, Ordering::Release);
        }
    }
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            last_id: Cell::new(0),
            last: Cell::new(std::ptr::null()),
            entries: RefCell::new(Vec::new()),
        }
    };
}

/// How many submit times each shard keeps: a queue holding up to this many
/// tasks has its oldest task's age read exactly (see `Series::ages`).
pub(crate) const SUBMIT_RING: usize = 64;

#[inline]
fn ring_slot(n: u64) -> usize {
    (n % SUBMIT_RING as u64) as usize
}

/// Up to this many bounds, a duration's bucket is found by a linear scan.
const SCAN_BOUNDS: usize = 32;

/// A histogram's bucket bounds in whole nanoseconds.
#[derive(Debug)]
pub(crate) struct BucketBounds {
    nanos: Box<[u64]>,
}

impl BucketBounds {
    /// The bucket of a duration of `nanos`: the first whose bound is at
    /// least `nanos`, or the `+Inf` bucket (index `len`).
    ///
    /// A linear scan with a branch per bound passed, not a branchless binary
    /// search: the branches are predicted when durations keep landing in the
    /// same buckets, so the address of the bucket's count is known before
    /// the duration is, and the CPU does not wait for the clock read (a slow,
    /// microcoded instruction) to find out where to store. With the binary
    /// search the bundle bench took 20 ns more per task.
    #[inline]
    pub(crate) fn bucket(&self, nanos: u64) -> usize {
        if self.nanos.len() <= SCAN_BOUNDS {
            self.nanos
                .iter()
                .position(|&b| b >= nanos)
                .unwrap_or(self.nanos.len())
        } else {
            self.nanos.partition_point(|&b| b < nanos)
        }
    }
}

/// Bucket bounds in seconds, as whole nanoseconds (rounded up, so a duration
/// equal to a bound lands in that bound's bucket).
pub(crate) fn bounds_in_nanos(bounds: &[f64]) -> BucketBounds {
    BucketBounds {
        nanos: bounds
            .iter()
            .map(|b| (b * 1e9).ceil().min(u64::MAX as f64) as u64)
            .collect(),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn shards() -> Shards {
        Shards::new(3, 3, None)
    }

    fn shard_count(shards: &Shards) -> usize {
        let mut n = 0;
        shards.for_each(|_| n += 1);
        n
    }

    #[test]
    fn an_exited_threads_shard_is_reused_with_its_counts() {
        let shards = Arc::new(shards());
        let record = |n: u64| {
            let shards = shards.clone();
            std::thread::spawn(move || {
                for _ in 0..n {
                    shards.with_local(|s| s.add(&s.submitted, 1));
                }
            })
            .join()
            .unwrap();
        };
        record(5);
        // The shared shard and the first thread's.
        assert_eq!(shard_count(&shards), 2);
        let mut released = 0;
        shards.for_each(|s| released += usize::from(!s.owned.load(Ordering::Acquire)));
        assert_eq!(released, 1, "the exited thread released its shard");
        record(3);
        assert_eq!(shard_count(&shards), 2, "the second thread reused it");
        assert_eq!(shards.sum(|s| &s.submitted), 8);
    }

    #[test]
    fn many_short_lived_threads_all_land_exactly() {
        let shards = Arc::new(shards());
        let bounds = Arc::new(bounds_in_nanos(&[10e-9, 100e-9, 1000e-9]));
        let concurrent = 4;
        for _ in 0..16 {
            let threads: Vec<_> = (0..concurrent)
                .map(|_| {
                    let (shards, bounds) = (shards.clone(), bounds.clone());
                    std::thread::spawn(move || {
                        for i in 0..1000u64 {
                            shards.with_local(|s| {
                                s.add(&s.submitted, 1);
                                s.observe(&s.wait, &bounds, i);
                            });
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        }
        assert_eq!(shards.sum(|s| &s.submitted), 64_000);
        let (mut counts, mut sum) = ([0u64; 4], 0u128);
        shards.for_each(|s| s.wait.add_to(&mut counts, &mut sum));
        let mut expected = [0u64; 4];
        for i in 0..1000 {
            expected[bounds.nanos.partition_point(|&b| b < i)] += 64;
        }
        assert_eq!(counts, expected);
        assert_eq!(expected[0], 64 * (bounds.nanos[0] + 1));
        assert_eq!(sum, 64 * (0..1000u128).sum::<u128>());
        assert!(
            shard_count(&shards) <= 1 + concurrent,
            "released shards are reused: {}",
            shard_count(&shards)
        );
    }

    #[test]
    fn each_series_has_its_own_shard_and_dead_series_are_forgotten() {
        let a = shards();
        let b = shards();
        for _ in 0..3 {
            a.with_local(|s| s.add(&s.cancelled, 1));
            b.with_local(|s| s.add(&s.cancelled, 2));
        }
        assert_eq!((a.sum(|s| &s.cancelled), b.sum(|s| &s.cancelled)), (3, 6));
        let cached = || LOCAL.with(|l| l.entries.borrow().iter().map(|e| e.id).collect::<Vec<_>>());
        let (a_id, b_id) = (a.id, b.id);
        assert!(cached().contains(&a_id) && cached().contains(&b_id));
        drop(a);
        drop(b);
        let c = shards();
        c.with_local(|s| s.add(&s.cancelled, 1));
        let ids = cached();
        assert!(!ids.contains(&a_id) && !ids.contains(&b_id), "{ids:?}");
        assert!(ids.contains(&c.id));
        assert_eq!(c.sum(|s| &s.cancelled), 1);
    }

    #[test]
    fn records_from_thread_local_destructors_are_not_lost() {
        struct RecordOnDrop(Arc<Shards>);
        impl Drop for RecordOnDrop {
            fn drop(&mut self) {
                self.0.with_local(|s| s.add(&s.rejected, 1));
            }
        }
        thread_local! {
            static LATE: RefCell<Option<RecordOnDrop>> = const { RefCell::new(None) };
        }
        let shards = Arc::new(shards());
        for i in 0..8 {
            let shards = shards.clone();
            std::thread::spawn(move || {
                // Both orders of the two thread-locals' first use, so both
                // orders of their destructors (the platform decides which).
                let late = || LATE.with(|l| *l.borrow_mut() = Some(RecordOnDrop(shards.clone())));
                if i % 2 == 0 {
                    late();
                }
                shards.with_local(|s| s.add(&s.rejected, 1));
                if i % 2 == 1 {
                    late();
                }
            })
            .join()
            .unwrap();
        }
        assert_eq!(shards.sum(|s| &s.rejected), 16);
    }

    #[test]
    fn buckets_are_found_as_a_plain_search_finds_them() {
        let many: Vec<f64> = (1..=100).map(|i| f64::from(i) * 1e-3).collect();
        let cases: &[&[f64]] = &[
            crate::metrics::DEFAULT_BUCKETS,
            &[],
            &[0.0],
            &[0.0, 1e-9, 2e-9, 3e-9, 4e-9, 1e-6],
            &[0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 1e9, 1e12],
            &many,
        ];
        for bounds in cases {
            let b = bounds_in_nanos(bounds);
            let mut probes = vec![0, 1, 2, 3, u64::MAX - 1, u64::MAX];
            for &n in b.nanos.iter() {
                probes.extend([n.saturating_sub(1), n, n.saturating_add(1)]);
            }
            for n in probes {
                let plain = b.nanos.partition_point(|&x| x < n);
                assert_eq!(b.bucket(n), plain, "{n} ns in {bounds:?}");
            }
        }
    }
}

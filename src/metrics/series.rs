//! [`Series`]: the counts of one (`exporter_id`, `executor_type`) pair, every recording call a pool
//! makes, and how one scrape reads them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use prometheus::core::Metric as _;
use prometheus::proto;
use prometheus::{Histogram, HistogramOpts};

use super::exemplars::ExemplarCell;
use super::native::{Layout, NativeHistogram, NativeTotals};
use super::shards::{bounds_in_nanos, BucketBounds, Buckets, Shard, Shards, SUBMIT_RING};
use crate::clock::Clock;
use crate::error::FailureReason;
use crate::sync::lock;

/// The series of one (`exporter_id`, `executor_type`) pair. Task counts and
/// the two histograms live in per-thread [`Shards`]; worker counts, which
/// change rarely, are plain atomics. The collector reads them at scrape time.
pub(crate) struct Series {
    pub(super) id: String,
    pub(super) ty: String,
    /// The `max_workers` of the live pools recording here: added when a
    /// pool is built, taken off again by its [`Capacity`].
    max_workers: AtomicI64,
    /// The queue capacities of the live pools with a bounded queue, and
    /// how many such pools there are (no sample while there is none).
    queue_capacity: AtomicI64,
    bounded_queues: AtomicI64,
    /// Workers started and not yet exited.
    workers: AtomicI64,
    initialized_workers: AtomicU64,
    restarts: AtomicU64,
    shards: Shards,
    pub(super) wait_bounds: Vec<f64>,
    pub(super) duration_bounds: Vec<f64>,
    pub(super) wait_nanos: BucketBounds,
    pub(super) duration_nanos: BucketBounds,
    /// The latest exemplar per bucket, once an exporter with an exemplar
    /// hook records here (`exemplars.rs`).
    pub(super) exemplars: ExemplarCell,
    /// The schema of the native histograms kept beside the wait and
    /// duration histograms, if any.
    pub(super) native: Option<Layout>,
    /// Whether the classic buckets are exposed (they are always counted:
    /// the task gauges are derived from their counts).
    pub(super) classic: bool,
    /// `step_duration_seconds`, one histogram per step name.
    steps: Mutex<BTreeMap<String, Histogram>>,
    /// The [`FailureReason`]s (a bit per index) the executors using this
    /// series can fail a task with: their `task_failures_total` series are
    /// exposed from the start, at zero. Another reason's series appears only
    /// once it counts a failure, which none of them records.
    reasons: AtomicU16,
    /// The label pairs of every sample but the steps', built once.
    labels: SeriesLabels,
    /// Pools that keep their own queue and record their tasks' starts off
    /// the threads that run them (process pools): they report their ages.
    age_sources: Mutex<Vec<Weak<dyn AgeSource>>>,
    /// When the series was made: no task recording here was submitted
    /// before it.
    created: Clock,
}

/// A pool that knows its oldest running and oldest queued task itself (it
/// sees its queue), read at scrape time: see [`Series::add_age_source`].
pub(crate) trait AgeSource: Send + Sync {
    /// The start of the longest-running task, if one runs.
    fn oldest_running(&self) -> Option<Clock>;
    /// The submit time of the oldest task waiting to start, if one waits.
    fn oldest_queued(&self) -> Option<Clock>;
}

/// Every count of one series as one scrape read it, with the labels of its
/// samples: what the catalogue's samplers turn into samples.
pub(crate) struct Reading<'a> {
    /// `executor`, `executor_type`.
    pub(crate) labels: &'a [proto::LabelPair],
    pub(crate) max_workers: i64,
    /// The sum of the live bounded queues' capacities; `None` with none.
    pub(crate) queue_capacity: Option<i64>,
    pub(crate) workers: i64,
    pub(crate) initialized_workers: u64,
    pub(crate) restarts: u64,
    pub(crate) submitted: u64,
    pub(crate) rejected: u64,
    pub(crate) cancelled: u64,
    pub(crate) queued: i64,
    pub(crate) running: i64,
    /// Seconds since the start of the longest-running task; 0 if none runs.
    pub(crate) oldest_running: f64,
    /// Seconds since the submit of the oldest task waiting; 0 if none waits.
    pub(crate) oldest_queued: f64,
    /// The wait histogram, labelled.
    pub(crate) wait: proto::Metric,
    /// The duration histogram of completed tasks, labelled `result="completed"`.
    pub(crate) completed: proto::Metric,
    /// ... of failed ones, `result="failed"`.
    pub(crate) failed: proto::Metric,
    /// Failures by reason, with their labels: the reasons expected or seen.
    pub(crate) failures: Vec<(u64, &'a [proto::LabelPair])>,
    /// The native histograms of the series, if it keeps them: the
    /// catalogue name of the family, the labels of the sample and the
    /// buckets.
    pub(crate) natives: Vec<(&'static str, &'a [proto::LabelPair], NativeHistogram)>,
    /// Failures by reason, every reason, indexed like [`FailureReason::ALL`].
    pub(crate) by_reason: [u64; FailureReason::ALL.len()],
    /// One histogram per step, labelled.
    pub(crate) steps: Vec<proto::Metric>,
}

/// The label pairs of one series' samples, built when the series is created
/// so that a scrape only clones them.
struct SeriesLabels {
    /// `executor`, `executor_type`.
    plain: Vec<proto::LabelPair>,
    /// ... and `result="completed"`.
    completed: Vec<proto::LabelPair>,
    /// ... and `result="failed"`.
    failed: Vec<proto::LabelPair>,
    /// ... and `reason`, one per [`FailureReason`], sorted by the label value
    /// (the order `Registry::gather` sorts samples in, so its sort finds the
    /// family already sorted), each with the reason's index.
    failures: Vec<(usize, Vec<proto::LabelPair>)>,
}

fn label_pair(name: &str, value: &str) -> proto::LabelPair {
    let mut pair = proto::LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

impl SeriesLabels {
    pub(super) fn new(id: &str, ty: &str) -> SeriesLabels {
        let plain = vec![label_pair("executor", id), label_pair("executor_type", ty)];
        let with = |name: &str, value: &str| {
            let mut labels = Vec::with_capacity(plain.len() + 1);
            labels.extend_from_slice(&plain);
            labels.push(label_pair(name, value));
            labels
        };
        let mut reasons = FailureReason::ALL;
        reasons.sort_unstable_by_key(|r| r.as_str());
        SeriesLabels {
            completed: with("result", "completed"),
            failed: with("result", "failed"),
            failures: reasons
                .iter()
                .map(|r| (r.index(), with("reason", r.as_str())))
                .collect(),
            plain,
        }
    }
}

impl fmt::Debug for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Series")
            .field("exporter_id", &self.id)
            .field("executor_type", &self.ty)
            .finish_non_exhaustive()
    }
}

fn histogram(bounds: &[f64]) -> Histogram {
    // The name and help are never exposed: the collector writes its own.
    Histogram::with_opts(HistogramOpts::new("h", "h").buckets(bounds.to_vec()))
        .expect("bounds are validated before a histogram is built")
}

/// The most one pool adds to a summed gauge (its workers, its queue's
/// capacity): 2^40, about a trillion. Larger values stand for "no bound"
/// (`usize::MAX`); capped, the sums over up to 2^22 pools never wrap.
const MOST_PER_POOL: u64 = 1 << 40;

/// A worker count or a capacity as a summed gauge's increment.
fn clamp(n: u64) -> i64 {
    n.min(MOST_PER_POOL) as i64
}

impl Series {
    pub(super) fn new(
        id: &str,
        ty: &str,
        wait_bounds: Vec<f64>,
        duration_bounds: Vec<f64>,
        native: Option<i8>,
        classic: bool,
    ) -> Series {
        let native = native.map(Layout::new);
        Series {
            id: id.to_owned(),
            ty: ty.to_owned(),
            max_workers: AtomicI64::new(0),
            queue_capacity: AtomicI64::new(0),
            bounded_queues: AtomicI64::new(0),
            workers: AtomicI64::new(0),
            initialized_workers: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            shards: Shards::new(wait_bounds.len(), duration_bounds.len(), native),
            wait_nanos: bounds_in_nanos(&wait_bounds),
            duration_nanos: bounds_in_nanos(&duration_bounds),
            native,
            classic,
            wait_bounds,
            duration_bounds,
            exemplars: ExemplarCell::new(),
            steps: Mutex::new(BTreeMap::new()),
            labels: SeriesLabels::new(id, ty),
            reasons: AtomicU16::new(0),
            age_sources: Mutex::new(Vec::new()),
            created: Clock::now(),
        }
    }

    /// `source` reports the ages of its tasks while it lives (it records
    /// them with [`started`](Self::started) and
    /// [`finished`](Self::finished), which mark no thread as running). The
    /// queued age of a series with a live source is the sources' alone.
    pub(crate) fn add_age_source(&self, source: Weak<dyn AgeSource>) {
        let mut sources = lock(&self.age_sources);
        sources.retain(|s| s.strong_count() > 0);
        sources.push(source);
    }

    /// An executor that can fail tasks for these `reasons` records into this
    /// series: expose their failure counts, at zero until a task fails.
    pub(crate) fn expect_failures(&self, reasons: &[FailureReason]) {
        let bits = reasons.iter().fold(0, |bits, r| bits | 1 << r.index());
        self.reasons.fetch_or(bits, Ordering::Relaxed);
    }

    pub(crate) fn add_max_workers(&self, n: u64) {
        self.max_workers.fetch_add(clamp(n), Ordering::Relaxed);
    }

    pub(crate) fn remove_max_workers(&self, n: u64) {
        self.max_workers.fetch_sub(clamp(n), Ordering::Relaxed);
    }

    /// A pool with a queue of `capacity` places records here.
    pub(crate) fn add_queue(&self, capacity: u64) {
        // The capacity first: a scrape that sees the pool sees its places.
        self.queue_capacity
            .fetch_add(clamp(capacity), Ordering::Relaxed);
        self.bounded_queues.fetch_add(1, Ordering::Release);
    }

    /// A pool counted by [`add_queue`](Self::add_queue) stopped.
    pub(crate) fn remove_queue(&self, capacity: u64) {
        self.bounded_queues.fetch_sub(1, Ordering::Release);
        self.queue_capacity
            .fetch_sub(clamp(capacity), Ordering::Relaxed);
    }

    /// A worker finished starting: it is counted as initialized, and alive
    /// until [`worker_stopped`](Self::worker_stopped).
    pub(crate) fn worker_started(&self) {
        self.initialized_workers.fetch_add(1, Ordering::Relaxed);
        self.workers.fetch_add(1, Ordering::Relaxed);
    }

    /// A worker counted by [`worker_started`](Self::worker_started) exited.
    pub(crate) fn worker_stopped(&self) {
        self.workers.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn worker_restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// The executor took the task submitted at `submitted` (see
    /// `Accounting::accepted`).
    #[inline]
    pub(crate) fn accepted(&self, submitted: Clock) {
        self.shards.with_local(|s| s.accepted(submitted.raw()));
    }

    /// A submit was refused.
    pub(crate) fn rejected(&self) {
        self.shards.with_local(|s| s.add(&s.rejected, 1));
    }

    /// A task started after waiting `wait` nanoseconds: the wait
    /// histogram's count is the number of tasks started.
    #[inline]
    pub(crate) fn started(&self, wait: u64) {
        self.shards
            .with_local(|s| s.observe(&s.wait, &self.wait_nanos, wait));
    }

    /// A task submitted at `submitted` starts at `now` on this thread,
    /// which runs it until [`finished_run`](Self::finished_run): its wait
    /// is recorded as [`started`](Self::started) records it, and the
    /// thread's shard marks it running (the running age). Returns the start
    /// to give `finished_run` (see [`Shard::enter_run`]).
    #[inline]
    pub(crate) fn started_run(&self, submitted: Clock, now: Clock) -> Clock {
        let wait = now.nanos_since(submitted);
        self.shards.with_local(|s| {
            // Before the observation: a scrape that sees the start sees the mark.
            let start = s.enter_run(now.raw(), submitted.raw());
            s.observe(&s.wait, &self.wait_nanos, wait);
            Clock::from_raw(start)
        })
    }

    /// A started task ended after running `duration` nanoseconds.
    #[inline]
    pub(crate) fn finished(&self, duration: u64, failure: Option<FailureReason>) {
        self.shards
            .with_local(|s| self.observe_end(s, duration, failure));
    }

    /// The task [`started_run`](Self::started_run) returned `started` for
    /// ended on this thread at `now`.
    #[inline]
    pub(crate) fn finished_run(&self, started: Clock, now: Clock, failure: Option<FailureReason>) {
        let duration = now.nanos_since(started);
        self.shards.with_local(|s| {
            // Before the observation, as the start's mark.
            s.leave_run(started.raw());
            self.observe_end(s, duration, failure);
        });
    }

    #[inline(always)]
    fn observe_end(&self, s: &Shard, duration: u64, failure: Option<FailureReason>) {
        match failure {
            None => s.observe(&s.completed, &self.duration_nanos, duration),
            Some(reason) => {
                s.add(&s.failures[reason.index()], 1);
                s.observe(&s.failed, &self.duration_nanos, duration);
            }
        }
    }

    /// The two ages at `now`: the running one from the threads' marks and
    /// the sources; the queued one from the sources if there are any, else
    /// bounded from the starts (see the README's "Stuck work").
    fn ages(&self, queued: i128, now: Clock) -> (f64, f64) {
        let mut running_since = u64::MAX;
        let mut started_submit = 0u64;
        self.shards.for_each(|s| {
            let since = s.running_since.load(Ordering::Acquire);
            if since != 0 {
                running_since = running_since.min(since);
            }
            started_submit = started_submit.max(s.started_submit.load(Ordering::Acquire));
        });
        let mut queued_since = None::<u64>;
        let mut any_source = false;
        for source in lock(&self.age_sources).iter().filter_map(Weak::upgrade) {
            any_source = true;
            if let Some(c) = source.oldest_running() {
                running_since = running_since.min(c.raw());
            }
            if let Some(c) = source.oldest_queued() {
                queued_since = Some(queued_since.map_or(c.raw(), |q| q.min(c.raw())));
            }
        }
        if !any_source && queued > 0 {
            queued_since = Some(self.oldest_queued_from_submits(queued, started_submit));
        }
        let age = |since: u64| now.nanos_since(Clock::from_raw(since)) as f64 / 1e9;
        let running = if running_since == u64::MAX {
            0.0
        } else {
            age(running_since)
        };
        (running, queued_since.map_or(0.0, age))
    }

    /// The submit time of the oldest of the `queued` tasks waiting in a
    /// queue the proxy cannot read (a thread pool's channel, rayon's, a
    /// wrapped executor's), for a first-in-first-out queue: the tasks
    /// waiting are the last `queued` accepted, so the oldest of them is
    /// the `queued`th newest submit. Exact while `queued` is at most
    /// [`SUBMIT_RING`]: every thread keeps its last that many submit times,
    /// so each thread's waiting tasks are among them. Beyond, an upper bound
    /// of the age: the oldest waiting task was submitted after every task
    /// that has started (`started_submit`).
    fn oldest_queued_from_submits(&self, queued: i128, started_submit: u64) -> u64 {
        let bound = started_submit.max(self.created.raw());
        let Ok(queued) = usize::try_from(queued) else {
            return bound;
        };
        if queued > SUBMIT_RING {
            return bound;
        }
        let mut submits = Vec::new();
        self.shards.for_each(|s| s.recent_submits(&mut submits));
        if submits.len() < queued {
            return bound;
        }
        // The `queued`th newest.
        let (_, oldest, _) = submits.select_nth_unstable_by(queued - 1, |a, b| b.cmp(a));
        *oldest
    }

    pub(crate) fn cancelled(&self) {
        self.shards.with_local(|s| s.add(&s.cancelled, 1));
    }

    /// A queued task that will never start fails (duration 0).
    pub(crate) fn failed_unstarted(&self, reason: FailureReason) {
        self.shards.with_local(|s| {
            // Before the observation: a scrape that sees the observation
            // sees this too, so it never counts the task as ended after a
            // start.
            s.add(&s.failed_unstarted, 1);
            s.add(&s.failures[reason.index()], 1);
            s.observe(&s.failed, &self.duration_nanos, 0);
        });
    }

    fn step_histogram(&self, h: &Histogram, step: &str) -> proto::Metric {
        let mut labels = Vec::with_capacity(self.labels.plain.len() + 1);
        labels.extend_from_slice(&self.labels.plain);
        labels.push(label_pair("step", step));
        let mut m = h.metric();
        m.set_label(labels);
        m
    }

    /// Sums one histogram over the shards into a sample, and its native
    /// counts if the series keeps them. The classic counts are read first:
    /// a shard counts an observation's native bucket before its classic
    /// one, so the native histogram holds every observation the classic
    /// one does (its count, at least the classic count, is the one the
    /// protobuf exposition gives both).
    fn sharded_histogram(
        &self,
        bounds: &[f64],
        which: impl Fn(&Shard) -> &Buckets,
        labels: &[proto::LabelPair],
    ) -> (proto::Metric, Option<NativeHistogram>) {
        let mut counts = vec![0u64; bounds.len() + 1];
        let mut sum_nanos = 0u128;
        self.shards
            .for_each(|shard| which(shard).add_to(&mut counts, &mut sum_nanos));
        let native = self.native.map(|layout| {
            let mut totals = NativeTotals::new(layout);
            self.shards
                .for_each(|shard| which(shard).add_native_to(&mut totals));
            totals.histogram()
        });
        let mut cumulative = 0u64;
        let buckets = bounds
            .iter()
            .zip(&counts)
            .map(|(bound, count)| {
                cumulative += count;
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        let mut h = proto::Histogram::default();
        h.set_sample_count(cumulative + counts[bounds.len()]);
        h.set_sample_sum(sum_nanos as f64 / 1e9);
        if self.classic {
            h.set_bucket(buckets);
        }
        let mut m = proto::Metric::default();
        m.set_label(labels.to_vec());
        m.set_histogram(h);
        (m, native)
    }

    /// Reads every count of this series once, for one scrape: the
    /// catalogue's samplers turn the reading into samples.
    pub(crate) fn read(&self) -> Reading<'_> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let shards = &self.shards;
        // The gauges are derived from counts, read in the reverse order of a
        // task's life (ended, failed without starting, started, cancelled,
        // submitted): every count is read with `Acquire` and written with
        // `Release`, so an event seen implies the task's earlier events are
        // seen by the later reads, and `running_tasks` never goes negative.
        // `queued_tasks` is clamped at zero: a task is counted as submitted
        // only once the executor has taken it, so its start may come first.
        let (completed, completed_native) = self.sharded_histogram(
            &self.duration_bounds,
            |s| &s.completed,
            &self.labels.completed,
        );
        let (failed, failed_native) =
            self.sharded_histogram(&self.duration_bounds, |s| &s.failed, &self.labels.failed);
        let by_reason: [u64; FailureReason::ALL.len()] =
            FailureReason::ALL.map(|r| shards.sum(|s| &s.failures[r.index()]));
        let failed_unstarted = shards.sum(|s| &s.failed_unstarted);
        let (wait, wait_native) =
            self.sharded_histogram(&self.wait_bounds, |s| &s.wait, &self.labels.plain);
        let natives = [
            ("task_wait_seconds", &self.labels.plain, wait_native),
            (
                "tasks_duration_seconds",
                &self.labels.completed,
                completed_native,
            ),
            ("tasks_duration_seconds", &self.labels.failed, failed_native),
        ]
        .into_iter()
        .filter_map(|(family, labels, native)| Some((family, labels.as_slice(), native?)))
        .collect();
        let cancelled = shards.sum(|s| &s.cancelled);
        let submitted = shards.sum(|s| &s.submitted);
        let rejected = shards.sum(|s| &s.rejected);
        let count = |m: &proto::Metric| i128::from(m.get_histogram().get_sample_count());
        let ended = count(&completed) + count(&failed) - i128::from(failed_unstarted);
        let started = count(&wait);
        let running = started - ended;
        let queued =
            i128::from(submitted) - started - i128::from(cancelled) - i128::from(failed_unstarted);
        debug_assert!(running >= 0, "running_tasks read as {running}");
        // After the counts: a start or an end they show has its mark seen.
        let (oldest_running, oldest_queued) = self.ages(queued, Clock::now());
        let gauge = |n: i128| i64::try_from(n.max(0)).unwrap_or(i64::MAX);
        let expected = self.reasons.load(Ordering::Relaxed);
        let failures = self
            .labels
            .failures
            .iter()
            .filter(|(reason, _)| expected & 1 << reason != 0 || by_reason[*reason] != 0)
            .map(|(reason, labels)| (by_reason[*reason], labels.as_slice()))
            .collect();
        let steps = lock(&self.steps)
            .iter()
            .map(|(name, h)| self.step_histogram(h, name))
            .collect();
        Reading {
            labels: &self.labels.plain,
            max_workers: self.max_workers.load(Ordering::Relaxed),
            queue_capacity: (self.bounded_queues.load(Ordering::Acquire) > 0)
                .then(|| self.queue_capacity.load(Ordering::Relaxed)),
            workers: self.workers.load(Ordering::Relaxed),
            initialized_workers: load(&self.initialized_workers),
            restarts: load(&self.restarts),
            submitted,
            rejected,
            cancelled,
            queued: gauge(queued),
            running: gauge(running),
            oldest_running,
            oldest_queued,
            wait,
            completed,
            failed,
            natives,
            failures,
            by_reason,
            steps,
        }
    }

    /// The histogram of step `name`, created at zero the first time.
    pub(super) fn step(&self, name: &str) -> Histogram {
        let mut steps = lock(&self.steps);
        if let Some(h) = steps.get(name) {
            return h.clone();
        }
        let h = histogram(&self.duration_bounds);
        steps.insert(name.to_owned(), h.clone());
        h
    }
}

/// The `max_workers` one pool added to its series, taken off exactly once:
/// by [`release`](Capacity::release) when the pool shuts down, or when this
/// is dropped with the pool. The same for a bounded queue's capacity.
pub(crate) struct Capacity {
    series: Arc<Series>,
    /// What is still counted; 0 once released.
    n: AtomicU64,
    /// The queue's capacity still counted; 0 for an unbounded queue or once
    /// released.
    queue: AtomicU64,
}

impl Capacity {
    /// Adds `n` to the series' `max_workers`.
    pub(crate) fn register(series: Arc<Series>, n: u64) -> Capacity {
        series.add_max_workers(n);
        Capacity {
            series,
            n: AtomicU64::new(n),
            queue: AtomicU64::new(0),
        }
    }

    /// Adds a bounded queue's capacity to the series' `queue_capacity`;
    /// `None` (an unbounded queue) adds nothing.
    pub(crate) fn with_queue(self, capacity: Option<usize>) -> Capacity {
        if let Some(capacity) = capacity.filter(|&c| c > 0) {
            self.series.add_queue(capacity as u64);
            self.queue.store(capacity as u64, Ordering::Relaxed);
        }
        self
    }

    /// Takes the pool's workers off `max_workers` and its queue off
    /// `queue_capacity`; idempotent.
    pub(crate) fn release(&self) {
        let n = self.n.swap(0, Ordering::AcqRel);
        if n > 0 {
            self.series.remove_max_workers(n);
        }
        let queue = self.queue.swap(0, Ordering::AcqRel);
        if queue > 0 {
            self.series.remove_queue(queue);
        }
    }
}

impl fmt::Debug for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Capacity")
            .field(&self.n.load(Ordering::Relaxed))
            .finish()
    }
}

impl Drop for Capacity {
    fn drop(&mut self) {
        self.release();
    }
}

//! [`ExecutorExporter`]: the metric families, their labels and buckets, and the
//! registry they live in.
//!
//! Every family is declared once, in [`METRICS`]. Series for one
//! (`exporter_id`, `executor_type`) pair are created once, when the first
//! exporter for that pair is built, and shared by every exporter with the same
//! pair in the same registry: that is how pools with one id are combined.
//! All series of one namespace in one registry are exposed by a single
//! collector, so label values are kept apart exactly (never joined into one
//! hash key) and the hot path touches only atomics.

mod registry_map;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc, Metric as _};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Histogram, HistogramOpts, Registry};

use crate::error::{BuildError, BuildErrorKind};
use crate::shards::{bounds_in_nanos, BucketBounds, Buckets, Shard, Shards};
pub(crate) use registry_map::RegistryMap;

/// Metric type of a family in [`METRICS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family: its name after the namespace, type, extra label, unit and help.
#[derive(Debug)]
pub(crate) struct MetricDef {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) extra_label: Option<&'static str>,
    pub(crate) help: &'static str,
}

/// Index of each family in [`METRICS`].
mod idx {
    pub(super) const MAX_WORKERS: usize = 0;
    pub(super) const INITIALIZED_WORKERS: usize = 1;
    pub(super) const SUBMITTED: usize = 2;
    pub(super) const REJECTED: usize = 3;
    pub(super) const QUEUED: usize = 4;
    pub(super) const RUNNING: usize = 5;
    pub(super) const CANCELLED: usize = 6;
    pub(super) const WAIT: usize = 7;
    pub(super) const DURATION: usize = 8;
    pub(super) const FAILURES: usize = 9;
    pub(super) const RESTARTS: usize = 10;
    pub(super) const STEP: usize = 11;
}

/// Every family the exporter exposes, declared once. The full name is
/// `{namespace}_{name}`; every series also carries `executor` and `executor_type`.
pub(crate) const METRICS: &[MetricDef] = &[
    MetricDef {
        name: "max_workers_total",
        kind: Kind::Counter,
        extra_label: None,
        help: "Maximum number of workers, added up over every pool built with this exporter id.",
    },
    MetricDef {
        name: "initialized_workers_total",
        kind: Kind::Counter,
        extra_label: None,
        help: "Workers that finished starting (initializer included).",
    },
    MetricDef {
        name: "submitted_tasks_total",
        kind: Kind::Counter,
        extra_label: None,
        help: "Tasks accepted by the executor (rejected submits are not counted).",
    },
    MetricDef {
        name: "rejected_tasks_total",
        kind: Kind::Counter,
        extra_label: None,
        help: "Submits refused by the executor (shut down, full or broken).",
    },
    MetricDef {
        name: "queued_tasks",
        kind: Kind::Gauge,
        extra_label: None,
        help: "Tasks accepted and not yet started.",
    },
    MetricDef {
        name: "running_tasks",
        kind: Kind::Gauge,
        extra_label: None,
        help: "Tasks started and not yet finished.",
    },
    MetricDef {
        name: "cancelled_tasks_total",
        kind: Kind::Counter,
        extra_label: None,
        help: "Tasks cancelled before they started; they never ran.",
    },
    MetricDef {
        name: "task_wait_seconds",
        kind: Kind::Histogram,
        extra_label: None,
        help: "Time from submit to the start of the task, in seconds.",
    },
    MetricDef {
        name: "tasks_duration_seconds",
        kind: Kind::Histogram,
        extra_label: Some("result"),
        help: "Time from the start to the end of the task, in seconds, by result (completed or failed).",
    },
    MetricDef {
        name: "task_failures_total",
        kind: Kind::Counter,
        extra_label: Some("reason"),
        help: "Failed tasks by reason (panic, error, broken, worker_died, timeout, serialization, unknown_task, protocol, killed).",
    },
    MetricDef {
        name: "worker_restarts_total",
        kind: Kind::Counter,
        extra_label: None,
        help: "Workers that left after a crash, a timeout or reaching their task limit (each is replaced when there is work).",
    },
    // Has series only once a step is created with `ExecutorExporter::step`.
    MetricDef {
        name: "step_duration_seconds",
        kind: Kind::Histogram,
        extra_label: Some("step"),
        help: "Time spent in a named step inside tasks, in seconds.",
    },
];

/// Why a task failed: the `reason` label of `task_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureReason {
    /// The task panicked.
    Panic,
    /// The task returned `Err` (through `submit_fallible` or `map_fallible`).
    Error,
    /// The executor could not run the task (it is broken).
    Broken,
    /// The worker process running the task died.
    WorkerDied,
    /// The task ran past its timeout and its worker was killed.
    Timeout,
    /// The task's input or output could not be serialized.
    Serialization,
    /// The worker does not know the task's name.
    UnknownTask,
    /// The worker sent something unreadable and was replaced.
    Protocol,
    /// The pool was killed while the task was queued or running.
    Killed,
}

impl FailureReason {
    /// Every reason, in label order.
    pub const ALL: [FailureReason; 9] = [
        FailureReason::Panic,
        FailureReason::Error,
        FailureReason::Broken,
        FailureReason::WorkerDied,
        FailureReason::Timeout,
        FailureReason::Serialization,
        FailureReason::UnknownTask,
        FailureReason::Protocol,
        FailureReason::Killed,
    ];

    /// The reasons a task run by a thread, rather than a worker process, can
    /// fail with: what [`InstrumentedExecutorProxy`](crate::InstrumentedExecutorProxy)
    /// (and so [`ThreadPoolExecutor`](crate::ThreadPoolExecutor)) records.
    pub(crate) const IN_PROCESS: [FailureReason; 3] = [
        FailureReason::Panic,
        FailureReason::Error,
        FailureReason::Broken,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Panic => "panic",
            FailureReason::Error => "error",
            FailureReason::Broken => "broken",
            FailureReason::WorkerDied => "worker_died",
            FailureReason::Timeout => "timeout",
            FailureReason::Serialization => "serialization",
            FailureReason::UnknownTask => "unknown_task",
            FailureReason::Protocol => "protocol",
            FailureReason::Killed => "killed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The default bucket bounds of both histograms, in seconds: 1 µs to 5 min,
/// in steps of 1, 2.5 and 5 per decade. Thread-pool waits are often a few
/// microseconds; batch tasks can take minutes.
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    60.0,
    120.0,
    300.0,
];

/// The series of one (`exporter_id`, `executor_type`) pair. Task counts and
/// the two histograms live in per-thread [`Shards`]; worker counts, which
/// change rarely, are plain atomics. The collector reads them at scrape time.
pub(crate) struct Series {
    id: String,
    ty: String,
    max_workers: AtomicU64,
    initialized_workers: AtomicU64,
    restarts: AtomicU64,
    shards: Shards,
    wait_bounds: Vec<f64>,
    duration_bounds: Vec<f64>,
    wait_nanos: BucketBounds,
    duration_nanos: BucketBounds,
    /// `step_duration_seconds`, one histogram per step name.
    steps: Mutex<BTreeMap<String, Histogram>>,
    /// The [`FailureReason`]s (a bit per index) the executors using this
    /// series can fail a task with: their `task_failures_total` series are
    /// exposed from the start, at zero. Another reason's series appears only
    /// once it counts a failure, which none of them records.
    reasons: AtomicU16,
    /// The label pairs of every sample but the steps', built once.
    labels: SeriesLabels,
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
    fn new(id: &str, ty: &str) -> SeriesLabels {
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

impl Series {
    fn new(id: &str, ty: &str, wait_bounds: Vec<f64>, duration_bounds: Vec<f64>) -> Series {
        Series {
            id: id.to_owned(),
            ty: ty.to_owned(),
            max_workers: AtomicU64::new(0),
            initialized_workers: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            shards: Shards::new(wait_bounds.len(), duration_bounds.len()),
            wait_nanos: bounds_in_nanos(&wait_bounds),
            duration_nanos: bounds_in_nanos(&duration_bounds),
            wait_bounds,
            duration_bounds,
            steps: Mutex::new(BTreeMap::new()),
            labels: SeriesLabels::new(id, ty),
            reasons: AtomicU16::new(0),
        }
    }

    /// An executor that can fail tasks for these `reasons` records into this
    /// series: expose their failure counts, at zero until a task fails.
    pub(crate) fn expect_failures(&self, reasons: &[FailureReason]) {
        let bits = reasons.iter().fold(0, |bits, r| bits | 1 << r.index());
        self.reasons.fetch_or(bits, Ordering::Relaxed);
    }

    pub(crate) fn add_max_workers(&self, n: u64) {
        self.max_workers.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn worker_started(&self) {
        self.initialized_workers.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn worker_restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// A submit is being attempted. Nothing to record: `queued_tasks` is
    /// derived at scrape time from the tasks accepted ([`Series::accepted`]).
    #[inline]
    pub(crate) fn enqueue(&self) {}

    /// The executor took the task: it counts as submitted, and as queued
    /// until it starts, is cancelled or fails without starting.
    ///
    /// Called once `execute` has returned, so a worker may start the task
    /// first: a scrape in between sees the start and not the submit, and
    /// `queued_tasks` is clamped at zero.
    #[inline]
    pub(crate) fn accepted(&self) {
        self.shards.with_local(|s| s.add(&s.submitted, 1));
    }

    pub(crate) fn rejected(&self) {
        self.shards.with_local(|s| s.add(&s.rejected, 1));
    }

    /// Counts a submit refused before anything was queued.
    pub(crate) fn rejected_unqueued(&self) {
        self.shards.with_local(|s| s.add(&s.rejected, 1));
    }

    /// A task started after waiting `wait` nanoseconds: the wait
    /// histogram's count is the number of tasks started.
    #[inline]
    pub(crate) fn started(&self, wait: u64) {
        self.shards
            .with_local(|s| s.observe(&s.wait, &self.wait_nanos, wait));
    }

    /// A started task ended after running `duration` nanoseconds.
    #[inline]
    pub(crate) fn finished(&self, duration: u64, failure: Option<FailureReason>) {
        self.shards.with_local(|s| match failure {
            None => s.observe(&s.completed, &self.duration_nanos, duration),
            Some(reason) => {
                s.add(&s.failures[reason.index()], 1);
                s.observe(&s.failed, &self.duration_nanos, duration);
            }
        });
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

    fn counter(value: u64, labels: &[proto::LabelPair]) -> proto::Metric {
        let mut counter = proto::Counter::default();
        counter.set_value(value as f64);
        let mut m = proto::Metric::default();
        m.set_label(labels.to_vec());
        m.set_counter(counter);
        m
    }

    fn gauge(value: i64, labels: &[proto::LabelPair]) -> proto::Metric {
        let mut gauge = proto::Gauge::default();
        gauge.set_value(value as f64);
        let mut m = proto::Metric::default();
        m.set_label(labels.to_vec());
        m.set_gauge(gauge);
        m
    }

    fn step_histogram(&self, h: &Histogram, step: &str) -> proto::Metric {
        let mut labels = Vec::with_capacity(self.labels.plain.len() + 1);
        labels.extend_from_slice(&self.labels.plain);
        labels.push(label_pair("step", step));
        let mut m = h.metric();
        m.set_label(labels);
        m
    }

    /// Sums one histogram over the shards into a sample.
    fn sharded_histogram(
        &self,
        bounds: &[f64],
        which: impl Fn(&Shard) -> &Buckets,
        labels: &[proto::LabelPair],
    ) -> proto::Metric {
        let mut counts = vec![0u64; bounds.len() + 1];
        let mut sum_nanos = 0u128;
        self.shards
            .for_each(|shard| which(shard).add_to(&mut counts, &mut sum_nanos));
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
        h.set_bucket(buckets);
        let mut m = proto::Metric::default();
        m.set_label(labels.to_vec());
        m.set_histogram(h);
        m
    }

    /// Appends this series' samples to `families` (indexed like [`METRICS`]).
    fn collect_into(&self, families: &mut [Vec<proto::Metric>]) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let shards = &self.shards;
        // The gauges are derived from counts, read in the reverse order of a
        // task's life (ended, failed without starting, started, cancelled,
        // submitted): every count is read with `Acquire` and written with
        // `Release`, so an event seen implies the task's earlier events are
        // seen by the later reads, and `running_tasks` never goes negative.
        // `queued_tasks` is clamped at zero: a task is counted as submitted
        // only once the executor has taken it, so its start may come first.
        let completed = self.sharded_histogram(
            &self.duration_bounds,
            |s| &s.completed,
            &self.labels.completed,
        );
        let failed =
            self.sharded_histogram(&self.duration_bounds, |s| &s.failed, &self.labels.failed);
        let failures: Vec<u64> = FailureReason::ALL
            .iter()
            .map(|r| shards.sum(|s| &s.failures[r.index()]))
            .collect();
        let failed_unstarted = shards.sum(|s| &s.failed_unstarted);
        let wait = self.sharded_histogram(&self.wait_bounds, |s| &s.wait, &self.labels.plain);
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
        let gauge = |n: i128| i64::try_from(n.max(0)).unwrap_or(i64::MAX);
        let (queued, running) = (gauge(queued), gauge(running));
        let plain = &self.labels.plain;
        families[idx::MAX_WORKERS].push(Self::counter(load(&self.max_workers), plain));
        families[idx::INITIALIZED_WORKERS]
            .push(Self::counter(load(&self.initialized_workers), plain));
        families[idx::QUEUED].push(Self::gauge(queued, plain));
        families[idx::RUNNING].push(Self::gauge(running, plain));
        families[idx::CANCELLED].push(Self::counter(cancelled, plain));
        families[idx::SUBMITTED].push(Self::counter(submitted, plain));
        families[idx::REJECTED].push(Self::counter(rejected, plain));
        families[idx::RESTARTS].push(Self::counter(load(&self.restarts), plain));
        families[idx::WAIT].push(wait);
        families[idx::DURATION].push(completed);
        families[idx::DURATION].push(failed);
        let expected = self.reasons.load(Ordering::Relaxed);
        for (reason, labels) in &self.labels.failures {
            if expected & 1 << reason != 0 || failures[*reason] != 0 {
                families[idx::FAILURES].push(Self::counter(failures[*reason], labels));
            }
        }
        for (name, h) in lock(&self.steps).iter() {
            families[idx::STEP].push(self.step_histogram(h, name));
        }
    }

    /// The histogram of step `name`, created at zero the first time.
    fn step(&self, name: &str) -> Histogram {
        let mut steps = lock(&self.steps);
        if let Some(h) = steps.get(name) {
            return h.clone();
        }
        let h = histogram(&self.duration_bounds);
        steps.insert(name.to_owned(), h.clone());
        h
    }
}

/// All series of one namespace in one registry, and the collector exposing them.
struct Families {
    namespace: String,
    descs: Vec<Desc>,
    /// `{namespace}_{name}` of each family in [`METRICS`].
    names: Vec<String>,
    series: Mutex<BTreeMap<(String, String), Arc<Series>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half
    // written (every critical section is a single insert or read).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Families {
    /// The families of `namespace`; `marker` tells their registry they are there.
    fn new(namespace: &str, marker: Desc) -> Result<Families, BuildError> {
        let names: Vec<String> = METRICS
            .iter()
            .map(|def| format!("{namespace}_{}", def.name))
            .collect();
        let mut descs = Vec::with_capacity(METRICS.len() + 1);
        for (def, name) in METRICS.iter().zip(&names) {
            let mut labels = vec!["executor".to_owned(), "executor_type".to_owned()];
            labels.extend(def.extra_label.map(str::to_owned));
            let desc = Desc::new(
                name.clone(),
                def.help.to_owned(),
                labels,
                Default::default(),
            )
            .map_err(|e| BuildError::new(BuildErrorKind::Registry(e)))?;
            descs.push(desc);
        }
        descs.push(marker);
        Ok(Families {
            namespace: namespace.to_owned(),
            descs,
            names,
            series: Mutex::new(BTreeMap::new()),
        })
    }
}

/// How many samples one series usually adds to family `i` of [`METRICS`]
/// (failures: the reasons of a thread pool; steps: none until a step is
/// made). A capacity hint: a family's vector grows past it if need be.
fn samples_per_series(i: usize) -> usize {
    match i {
        idx::DURATION => 2,
        idx::FAILURES => FailureReason::IN_PROCESS.len(),
        idx::STEP => 0,
        _ => 1,
    }
}

impl Collector for Families {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let all = lock(&self.series);
        let mut samples: Vec<Vec<proto::Metric>> = (0..METRICS.len())
            .map(|i| Vec::with_capacity(all.len() * samples_per_series(i)))
            .collect();
        for series in all.values() {
            series.collect_into(&mut samples);
        }
        drop(all);
        METRICS
            .iter()
            .zip(&self.names)
            .zip(samples)
            // `Registry::gather` drops families without samples anyway.
            .filter(|(_, metrics)| !metrics.is_empty())
            .map(|((def, name), metrics)| {
                let mut family = MetricFamily::default();
                family.set_name(name.clone());
                family.set_help(def.help.to_owned());
                family.set_field_type(match def.kind {
                    Kind::Counter => MetricType::COUNTER,
                    Kind::Gauge => MetricType::GAUGE,
                    Kind::Histogram => MetricType::HISTOGRAM,
                });
                family.set_metric(metrics);
                family
            })
            .collect()
    }
}

/// The families of every namespace in every registry alive.
static FAMILIES: RegistryMap<Families> = RegistryMap::new(
    "executor_exporter_collector_marker",
    "collector",
    "give this exporter (or pool) another namespace with `.namespace(..)` on its builder, \
     or rename or unregister the other metric",
);

/// Finds (or creates and registers) the families of `namespace` in `registry`.
fn families_for(registry: &Registry, namespace: &str) -> Result<Arc<Families>, BuildError> {
    FAMILIES.find_or_register(
        registry,
        |families| families.namespace == namespace,
        |marker| Families::new(namespace, marker),
    )
}

/// How a histogram's buckets are chosen.
#[derive(Debug, Clone, PartialEq)]
enum BucketSpec {
    Explicit(Vec<f64>),
    Exponential { min: f64, max: f64, factor: f64 },
}

fn resolve_buckets(
    explicit: &Option<Vec<f64>>,
    exponential: &Option<(f64, f64, f64)>,
    which: &str,
) -> Result<Vec<f64>, BuildError> {
    let err = |why: String| BuildError::new(BuildErrorKind::Buckets(format!("{which}: {why}")));
    let spec = match (explicit, exponential) {
        (Some(_), Some(_)) => {
            return Err(err(
                "both an explicit list and exponential buckets were given; choose one".into(),
            ))
        }
        (Some(list), None) => BucketSpec::Explicit(list.clone()),
        (None, Some((min, max, factor))) => BucketSpec::Exponential {
            min: *min,
            max: *max,
            factor: *factor,
        },
        (None, None) => return Ok(DEFAULT_BUCKETS.to_vec()),
    };
    let bounds = match spec {
        BucketSpec::Explicit(list) => list,
        BucketSpec::Exponential { min, max, factor } => {
            if !(min.is_finite() && max.is_finite() && factor.is_finite()) {
                return Err(err("min, max and factor must be finite numbers".into()));
            }
            if min <= 0.0 {
                return Err(err(format!("min must be greater than 0, got {min}")));
            }
            if factor <= 1.0 {
                return Err(err(format!("factor must be greater than 1, got {factor}")));
            }
            if max < min {
                return Err(err(format!(
                    "max ({max}) must not be less than min ({min})"
                )));
            }
            let mut bounds = Vec::new();
            let mut bound = min;
            // `bound / max`, not `max * (1 + e)`: the latter is +Inf for a
            // `max` near `f64::MAX`, and the loop would never reach it.
            while bound.is_finite() && bound / max <= 1.0 + 1e-9 && bounds.len() < 1000 {
                bounds.push(bound);
                bound *= factor;
            }
            if bounds.len() >= 1000 {
                return Err(err("more than 1000 buckets; raise the factor".into()));
            }
            bounds
        }
    };
    if bounds.is_empty() {
        return Err(err("the list is empty".into()));
    }
    for (i, b) in bounds.iter().enumerate() {
        if !b.is_finite() {
            return Err(err(format!(
                "bound {b} is not a finite number (+Inf is always added)"
            )));
        }
        if *b < 0.0 {
            return Err(err(format!(
                "bound {b} is negative; times are never negative"
            )));
        }
        if i > 0 && bounds[i - 1] >= *b {
            return Err(err(format!(
                "bounds must be strictly increasing ({} then {b})",
                bounds[i - 1]
            )));
        }
    }
    Ok(bounds)
}

fn validate_namespace(namespace: &str) -> Result<(), BuildError> {
    let err = |why: String| BuildError::new(BuildErrorKind::Namespace(why));
    let mut chars = namespace.chars();
    match chars.next() {
        None => return Err(err("it is empty".into())),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return Err(err(format!(
                "{namespace:?} must start with a letter or '_'"
            )))
        }
        _ => {}
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
        return Err(err(format!(
            "{namespace:?} contains {c:?}; use letters, digits and '_'"
        )));
    }
    Ok(())
}

/// Owns the metric series of one (`exporter_id`, `executor_type`) pair in one
/// registry, and records into them.
///
/// Cloning is cheap and clones share the series. Exporters built with the same
/// id, type and namespace in the same registry share one set of series, so
/// their pools are combined; different ids are separate series of the same
/// families.
///
/// ```
/// use executor_exporter::ExecutorExporter;
/// use prometheus::{Encoder, Registry, TextEncoder};
///
/// let registry = Registry::new();
/// let exporter = ExecutorExporter::builder()
///     .exporter_id("ingest")
///     .executor_type("my_pool")
///     .registry(registry.clone())
///     .build()
///     .unwrap();
/// // A custom executor reports what it does:
/// exporter.add_max_workers(4);
/// exporter.worker_started();
///
/// let mut text = Vec::new();
/// TextEncoder::new().encode(&registry.gather(), &mut text).unwrap();
/// let text = String::from_utf8(text).unwrap();
/// assert!(text.contains(
///     r#"executor_initialized_workers_total{executor="ingest",executor_type="my_pool"} 1"#
/// ));
/// ```
#[derive(Clone)]
pub struct ExecutorExporter {
    series: Arc<Series>,
    registry: Registry,
    namespace: Arc<str>,
}

impl fmt::Debug for ExecutorExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecutorExporter")
            .field("exporter_id", &self.series.id)
            .field("executor_type", &self.series.ty)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl ExecutorExporter {
    /// Starts building an exporter.
    pub fn builder() -> ExecutorExporterBuilder {
        ExecutorExporterBuilder::default()
    }

    pub(crate) fn series(&self) -> &Arc<Series> {
        &self.series
    }

    /// The `executor` label value.
    pub fn exporter_id(&self) -> &str {
        &self.series.id
    }

    /// The `executor_type` label value.
    pub fn executor_type(&self) -> &str {
        &self.series.ty
    }

    /// The metric namespace (the prefix of every family name).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The registry the families are registered in; register your own metrics
    /// there to serve them from the same `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The bucket bounds of the wait histogram, in seconds.
    pub fn wait_buckets(&self) -> &[f64] {
        &self.series.wait_bounds
    }

    /// The bucket bounds of the duration histogram, in seconds.
    pub fn duration_buckets(&self) -> &[f64] {
        &self.series.duration_bounds
    }

    /// Records one task's metric bundle exactly as the pools' hot path does
    /// (three clock reads, the submit, start and end counts, a wait and a
    /// duration observation), for the recording benchmark. Not part of the
    /// API.
    #[doc(hidden)]
    pub fn __record_task_bundle(&self) {
        use crate::handle::Clock;
        let submitted = Clock::now();
        self.series.enqueue();
        self.series.accepted();
        let started = Clock::now();
        self.series.started(started.nanos_since(submitted));
        let ended = Clock::now();
        self.series.finished(ended.nanos_since(started), None);
    }

    /// Adds `n` to `max_workers_total`: call once per pool built.
    pub fn add_max_workers(&self, n: usize) {
        self.series.add_max_workers(n as u64);
    }

    /// Counts one worker that finished starting (`initialized_workers_total`).
    pub fn worker_started(&self) {
        self.series.worker_started();
    }

    /// Counts one worker replaced after a crash, timeout or task limit
    /// (`worker_restarts_total`).
    pub fn worker_restarted(&self) {
        self.series.worker_restarted();
    }

    /// A handle timing step `name` into `step_duration_seconds{step=name}`,
    /// with this exporter's `executor` and `executor_type` labels and its
    /// duration buckets.
    ///
    /// The series is created at zero by the first call for a name and shared
    /// by later ones; until then the family has no series and does not
    /// appear in the exposition. Resolve a step once, outside the hot path,
    /// and clone it into tasks: recording is then a clock read and one
    /// histogram observation, with no lookup. Every name is a series: use a
    /// few fixed names, never per-item values.
    ///
    /// ```
    /// use executor_exporter::ThreadPoolExecutor;
    ///
    /// let registry = prometheus::Registry::new();
    /// let pool = ThreadPoolExecutor::builder()
    ///     .exporter_id("ingest")
    ///     .registry(registry.clone())
    ///     .build()
    ///     .unwrap();
    /// let decode = pool.exporter().step("decode");
    /// let store = pool.exporter().step("store");
    /// pool.submit(move || {
    ///     let rows = decode.time(|| vec![1, 2, 3]);
    ///     let _timer = store.start(); // observed when dropped
    ///     rows.len()
    /// })
    /// .unwrap()
    /// .join()
    /// .unwrap();
    ///
    /// let families = registry.gather();
    /// let steps = families
    ///     .iter()
    ///     .find(|f| f.name() == "executor_step_duration_seconds")
    ///     .unwrap();
    /// assert_eq!(steps.get_metric().len(), 2);
    /// assert_eq!(steps.get_metric()[0].get_histogram().get_sample_count(), 1);
    /// ```
    pub fn step(&self, name: &str) -> Step {
        Step {
            histogram: self.series.step(name),
        }
    }
}

/// Times one named step inside tasks into `step_duration_seconds`; made by
/// [`ExecutorExporter::step`].
///
/// The series is resolved when the handle is made, so timing never looks it
/// up. Cloning is cheap (a reference count) and clones record into the same
/// series; it is `Send` and `Sync`, so clone it into the tasks that use it.
#[derive(Clone)]
pub struct Step {
    histogram: Histogram,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("count", &self.histogram.get_sample_count())
            .finish_non_exhaustive()
    }
}

impl Step {
    /// Runs `f` and records how long it took, also when it panics.
    pub fn time<R>(&self, f: impl FnOnce() -> R) -> R {
        let _timer = self.start();
        f()
    }

    /// Starts timing; the time is recorded when the returned timer is dropped
    /// (at the end of the scope, or during unwinding), or by
    /// [`StepTimer::stop`].
    pub fn start(&self) -> StepTimer<'_> {
        StepTimer {
            histogram: &self.histogram,
            start: Instant::now(),
            armed: true,
        }
    }

    /// Records a duration measured some other way.
    pub fn observe(&self, duration: Duration) {
        self.histogram.observe(duration.as_secs_f64());
    }
}

/// A running measurement of a [`Step`]: records the time since
/// [`Step::start`] when dropped.
///
/// ```
/// use executor_exporter::ExecutorExporter;
///
/// let exporter = ExecutorExporter::builder()
///     .registry(prometheus::Registry::new())
///     .build()
///     .unwrap();
/// let parse = exporter.step("parse");
/// {
///     let _timer = parse.start();
///     // ... the step's work ...
/// } // recorded here
/// let timer = parse.start();
/// let took = timer.stop(); // recorded, and returned
/// parse.start().discard(); // not recorded
/// # let _ = took;
/// ```
#[must_use = "the step is timed until this is dropped; `let _ = step.start()` drops it at once"]
pub struct StepTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
    armed: bool,
}

impl fmt::Debug for StepTimer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepTimer")
            .field("elapsed", &self.start.elapsed())
            .finish_non_exhaustive()
    }
}

impl StepTimer<'_> {
    /// Records the time so far and returns it.
    pub fn stop(mut self) -> Duration {
        self.armed = false;
        let elapsed = self.start.elapsed();
        self.histogram.observe(elapsed.as_secs_f64());
        elapsed
    }

    /// Ends the measurement without recording it (for example when the step
    /// did not really happen).
    pub fn discard(mut self) {
        self.armed = false;
    }
}

impl Drop for StepTimer<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.histogram.observe(self.start.elapsed().as_secs_f64());
        }
    }
}

/// Options of an [`ExecutorExporter`]; every setter takes and returns the
/// builder, and [`build`](ExecutorExporterBuilder::build) checks them all.
#[derive(Debug, Clone, Default)]
pub struct ExecutorExporterBuilder {
    exporter_id: Option<String>,
    executor_type: Option<String>,
    registry: Option<Registry>,
    namespace: Option<String>,
    wait_explicit: Option<Vec<f64>>,
    wait_exponential: Option<(f64, f64, f64)>,
    duration_explicit: Option<Vec<f64>>,
    duration_exponential: Option<(f64, f64, f64)>,
}

impl ExecutorExporterBuilder {
    /// The `executor` label (default `"default"`). Pools with the same id are
    /// combined. Any UTF-8 is accepted and escaped in the exposition.
    pub fn exporter_id(mut self, id: impl Into<String>) -> Self {
        self.exporter_id = Some(id.into());
        self
    }

    /// The `executor_type` label (default: the pool's own, e.g. `thread_pool`;
    /// `custom` for an exporter built alone).
    pub fn executor_type(mut self, ty: impl Into<String>) -> Self {
        self.executor_type = Some(ty.into());
        self
    }

    pub(crate) fn executor_type_or(mut self, ty: &str) -> Self {
        if self.executor_type.is_none() {
            self.executor_type = Some(ty.to_owned());
        }
        self
    }

    /// The registry to register the families in (default:
    /// [`prometheus::default_registry`]).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The prefix of every family name (default `executor`): letters, digits
    /// and `_`, not starting with a digit.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Explicit bucket bounds of the wait histogram, in seconds (strictly
    /// increasing, finite, not negative).
    pub fn wait_buckets(mut self, bounds: Vec<f64>) -> Self {
        self.wait_explicit = Some(bounds);
        self
    }

    /// Exponential bucket bounds of the wait histogram: `min`, `min*factor`,
    /// ... up to `max` (`min > 0`, `factor > 1`).
    pub fn wait_buckets_exponential(mut self, min: f64, max: f64, factor: f64) -> Self {
        self.wait_exponential = Some((min, max, factor));
        self
    }

    /// Explicit bucket bounds of the duration histogram, in seconds.
    pub fn duration_buckets(mut self, bounds: Vec<f64>) -> Self {
        self.duration_explicit = Some(bounds);
        self
    }

    /// Exponential bucket bounds of the duration histogram.
    pub fn duration_buckets_exponential(mut self, min: f64, max: f64, factor: f64) -> Self {
        self.duration_exponential = Some((min, max, factor));
        self
    }

    /// Checks the options, registers the families (once per registry and
    /// namespace) and resolves this exporter's series.
    ///
    /// Errors: bad buckets or namespace; a family of the same name with other
    /// labels or help already in the registry; an existing series with the
    /// same id and type but other buckets.
    pub fn build(self) -> Result<ExecutorExporter, BuildError> {
        // The task clock calibrates itself on first use; pay that here, not
        // in the first task's submit.
        let _ = crate::handle::Clock::now();
        let namespace = self.namespace.unwrap_or_else(|| "executor".to_owned());
        validate_namespace(&namespace)?;
        let wait = resolve_buckets(&self.wait_explicit, &self.wait_exponential, "wait buckets")?;
        let duration = resolve_buckets(
            &self.duration_explicit,
            &self.duration_exponential,
            "duration buckets",
        )?;
        let registry = self
            .registry
            .unwrap_or_else(|| prometheus::default_registry().clone());
        let id = self.exporter_id.unwrap_or_else(|| "default".to_owned());
        let ty = self.executor_type.unwrap_or_else(|| "custom".to_owned());
        for (label, value) in [("exporter_id", &id), ("executor_type", &ty)] {
            if value.is_empty() {
                return Err(BuildError::new(BuildErrorKind::EmptyLabel(label)));
            }
        }

        let families = families_for(&registry, &namespace)?;
        let mut all = lock(&families.series);
        let series = match all.get(&(id.clone(), ty.clone())) {
            Some(existing) => {
                if existing.wait_bounds != wait || existing.duration_bounds != duration {
                    return Err(BuildError::new(BuildErrorKind::IncompatibleSeries(format!(
                        "exporter id {id:?} with type {ty:?} already exists in this registry with other buckets"
                    ))));
                }
                existing.clone()
            }
            None => {
                let series = Arc::new(Series::new(&id, &ty, wait, duration));
                all.insert((id, ty), series.clone());
                series
            }
        };
        drop(all);
        Ok(ExecutorExporter {
            series,
            registry,
            namespace: namespace.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The failure reasons of `exporter_id`'s series in `registry`, with
    /// their counts, read from the text exposition.
    fn failures(registry: &Registry, exporter_id: &str) -> Vec<(String, String)> {
        let mut buf = Vec::new();
        prometheus::Encoder::encode(&crate::TextEncoder::new(), &registry.gather(), &mut buf)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let prefix = format!(r#"executor_task_failures_total{{executor="{exporter_id}","#);
        text.lines()
            .filter_map(|line| line.strip_prefix(&prefix))
            .map(|rest| {
                let (labels, value) = rest.split_once("} ").unwrap();
                let reason = labels.split_once("reason=\"").unwrap().1;
                (reason.trim_end_matches('"').to_owned(), value.to_owned())
            })
            .collect()
    }

    /// Reasons no executor of a series said it can fail with stay out of the
    /// exposition until one counts a failure, and then appear with it.
    #[test]
    fn failure_reasons_are_exposed_once_expected_or_counted() {
        let registry = Registry::new();
        let exporter = ExecutorExporter::builder()
            .exporter_id("reasons")
            .registry(registry.clone())
            .build()
            .unwrap();
        assert_eq!(failures(&registry, "reasons"), []);
        exporter
            .series()
            .expect_failures(&FailureReason::IN_PROCESS);
        let zero = |r: &str| (r.to_owned(), "0".to_owned());
        assert_eq!(
            failures(&registry, "reasons"),
            [zero("broken"), zero("error"), zero("panic")]
        );
        exporter.series().failed_unstarted(FailureReason::Timeout);
        assert_eq!(
            failures(&registry, "reasons"),
            [
                zero("broken"),
                zero("error"),
                zero("panic"),
                ("timeout".to_owned(), "1".to_owned())
            ]
        );
    }

    /// Each registry's collector is forgotten once the registry and its
    /// exporters are gone (it was kept for the life of the process, and
    /// every later build probed it).
    #[test]
    fn collectors_of_dropped_registries_are_forgotten() {
        // A namespace of its own: other tests build exporters concurrently.
        const NS: &str = "forgotten_collectors_test";
        let live = || FAMILIES.live().iter().filter(|f| f.namespace == NS).count();
        let entries = || FAMILIES.len();
        let kept = Registry::new();
        let build = |registry: &Registry, id: &str| {
            ExecutorExporter::builder()
                .namespace(NS)
                .exporter_id(id)
                .registry(registry.clone())
                .build()
                .unwrap()
        };
        let _kept = build(&kept, "kept");
        for i in 0..200 {
            let registry = Registry::new();
            let exporter = build(&registry, &format!("batch-{i}"));
            drop((registry, exporter));
        }
        assert_eq!(live(), 1, "only the kept registry's collector is alive");
        // The next build prunes the dead entries; fewer than 200 remain even
        // with other tests' live collectors in the list.
        let _again = build(&kept, "kept-too");
        assert_eq!(live(), 1, "the kept registry's collector is found again");
        assert!(entries() < 100, "{} entries kept", entries());
    }

    #[test]
    fn exponential_buckets_up_to_the_largest_float_are_valid() {
        let b = resolve_buckets(&None, &Some((1.0, f64::MAX, 10.0)), "w").unwrap();
        assert_eq!(b.len(), 309, "1, 10, ... 1e308");
        assert!(b.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn empty_label_values_are_build_errors() {
        for builder in [
            ExecutorExporter::builder().exporter_id(""),
            ExecutorExporter::builder().executor_type(""),
        ] {
            let err = builder.registry(Registry::new()).build().unwrap_err();
            assert!(err.to_string().contains("must not be empty"), "{err}");
        }
    }

    #[test]
    fn exponential_buckets_include_both_ends() {
        let b = resolve_buckets(&None, &Some((0.001, 1.0, 10.0)), "w").unwrap();
        assert_eq!(b.len(), 4);
        assert!((b[3] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn default_buckets_are_valid_and_span_microseconds_to_minutes() {
        let b = resolve_buckets(&Some(DEFAULT_BUCKETS.to_vec()), &None, "w").unwrap();
        assert_eq!(b[0], 1e-6);
        assert!(*b.last().unwrap() >= 60.0);
    }

    #[test]
    fn metrics_table_names_are_unique_and_counters_end_in_total() {
        let mut names: Vec<_> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        for m in METRICS {
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
        }
    }
}

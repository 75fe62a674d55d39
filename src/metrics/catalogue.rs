//! The catalogue: every metric family, declared once. An entry gives the
//! family's name (after the namespace), type, extra label, help, and its
//! sampler: how one reading of a series becomes that family's samples. The
//! collector, the descriptors registered with the registry, and the tests
//! that hold the README and the dashboard to the exposition all walk this
//! one table. Adding a metric is an entry here and the call that records it.

use prometheus::proto;

use super::series::Reading;

/// Metric type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family.
pub(crate) struct Family {
    /// The name after the namespace: `{namespace}_{name}`.
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    /// The label beside `executor` and `executor_type`, if any.
    pub(crate) extra_label: Option<&'static str>,
    pub(crate) help: &'static str,
    /// How many samples one series usually adds (a capacity hint).
    pub(crate) per_series: usize,
    /// Appends one series' samples of this family (taking what it needs out
    /// of the reading: each family reads its own parts).
    pub(crate) samples: fn(&mut Reading<'_>, &mut Vec<proto::Metric>),
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("extra_label", &self.extra_label)
            .finish_non_exhaustive()
    }
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

fn seconds(value: f64, labels: &[proto::LabelPair]) -> proto::Metric {
    let mut gauge = proto::Gauge::default();
    gauge.set_value(value);
    let mut m = proto::Metric::default();
    m.set_label(labels.to_vec());
    m.set_gauge(gauge);
    m
}

/// Every family the exporter exposes. Every series also carries `executor`
/// and `executor_type`.
pub(crate) const CATALOGUE: &[Family] = &[
    Family {
        name: "max_workers",
        kind: Kind::Gauge,
        extra_label: None,
        help: "Maximum number of workers of the live pools with this exporter id (a pool's leave when it shuts down).",
        per_series: 1,
        samples: |r, out| out.push(gauge(r.max_workers, r.labels)),
    },
    Family {
        name: "workers",
        kind: Kind::Gauge,
        extra_label: None,
        help: "Worker threads or processes alive now (started and not exited).",
        per_series: 1,
        samples: |r, out| out.push(gauge(r.workers, r.labels)),
    },
    Family {
        name: "initialized_workers_total",
        kind: Kind::Counter,
        extra_label: None,
        help: "Workers that finished starting (initializer included).",
        per_series: 1,
        samples: |r, out| out.push(counter(r.initialized_workers, r.labels)),
    },
    Family {
        name: "submitted_tasks_total",
        kind: Kind::Counter,
        extra_label: None,
        help: "Tasks accepted by the executor (rejected submits are not counted).",
        per_series: 1,
        samples: |r, out| out.push(counter(r.submitted, r.labels)),
    },
    Family {
        name: "rejected_tasks_total",
        kind: Kind::Counter,
        extra_label: None,
        help: "Submits refused by the executor (shut down, full or broken).",
        per_series: 1,
        samples: |r, out| out.push(counter(r.rejected, r.labels)),
    },
    Family {
        name: "queued_tasks",
        kind: Kind::Gauge,
        extra_label: None,
        help: "Tasks accepted and not yet started.",
        per_series: 1,
        samples: |r, out| out.push(gauge(r.queued, r.labels)),
    },
    Family {
        name: "running_tasks",
        kind: Kind::Gauge,
        extra_label: None,
        help: "Tasks started and not yet finished.",
        per_series: 1,
        samples: |r, out| out.push(gauge(r.running, r.labels)),
    },
    Family {
        name: "cancelled_tasks_total",
        kind: Kind::Counter,
        extra_label: None,
        help: "Tasks cancelled before they started; they never ran.",
        per_series: 1,
        samples: |r, out| out.push(counter(r.cancelled, r.labels)),
    },
    Family {
        name: "task_wait_seconds",
        kind: Kind::Histogram,
        extra_label: None,
        help: "Time from submit to the start of the task, in seconds.",
        per_series: 1,
        samples: |r, out| out.push(std::mem::take(&mut r.wait)),
    },
    Family {
        name: "tasks_duration_seconds",
        kind: Kind::Histogram,
        extra_label: Some("result"),
        help: "Time from the start to the end of the task, in seconds, by result (completed or failed).",
        per_series: 2,
        samples: |r, out| {
            out.push(std::mem::take(&mut r.completed));
            out.push(std::mem::take(&mut r.failed));
        },
    },
    Family {
        name: "task_failures_total",
        kind: Kind::Counter,
        extra_label: Some("reason"),
        help: "Failed tasks by reason (panic, error, broken, worker_died, timeout, serialization, unknown_task, protocol, killed).",
        // The reasons a thread pool can fail a task with.
        per_series: 3,
        samples: |r, out| {
            out.extend(r.failures.iter().map(|(n, labels)| counter(*n, labels)));
        },
    },
    Family {
        name: "worker_restarts_total",
        kind: Kind::Counter,
        extra_label: None,
        help: "Workers that left after a crash, a timeout or reaching their task limit (each is replaced when there is work).",
        per_series: 1,
        samples: |r, out| out.push(counter(r.restarts, r.labels)),
    },
    // Has series only once a step is created with `ExecutorExporter::step`.
    Family {
        name: "step_duration_seconds",
        kind: Kind::Histogram,
        extra_label: Some("step"),
        help: "Time spent in a named step inside tasks, in seconds.",
        per_series: 0,
        samples: |r, out| out.append(&mut r.steps),
    },
    // No sample while no live pool of the id has a bounded queue.
    Family {
        name: "queue_capacity",
        kind: Kind::Gauge,
        extra_label: None,
        help: "Capacity of the bounded queues of the live pools with this exporter id (absent when every queue is unbounded).",
        per_series: 1,
        samples: |r, out| out.extend(r.queue_capacity.map(|c| gauge(c, r.labels))),
    },
    Family {
        name: "oldest_running_task_seconds",
        kind: Kind::Gauge,
        extra_label: None,
        help: "Age of the longest-running task now, in seconds (0 when none runs).",
        per_series: 1,
        samples: |r, out| out.push(seconds(r.oldest_running, r.labels)),
    },
    Family {
        name: "oldest_queued_task_seconds",
        kind: Kind::Gauge,
        extra_label: None,
        help: "Age of the oldest task waiting to start, in seconds (0 when none waits).",
        per_series: 1,
        samples: |r, out| out.push(seconds(r.oldest_queued, r.labels)),
    },
];

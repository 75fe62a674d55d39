//! The catalogue: every metric family, declared once (name, type, extra label, help).

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
pub(super) mod idx {
    pub(crate) const MAX_WORKERS: usize = 0;
    pub(crate) const INITIALIZED_WORKERS: usize = 1;
    pub(crate) const SUBMITTED: usize = 2;
    pub(crate) const REJECTED: usize = 3;
    pub(crate) const QUEUED: usize = 4;
    pub(crate) const RUNNING: usize = 5;
    pub(crate) const CANCELLED: usize = 6;
    pub(crate) const WAIT: usize = 7;
    pub(crate) const DURATION: usize = 8;
    pub(crate) const FAILURES: usize = 9;
    pub(crate) const RESTARTS: usize = 10;
    pub(crate) const STEP: usize = 11;
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

//! Prometheus metrics for thread pools and process pools.
//!
//! Services run CPU-bound and blocking work on pools, and operators need to
//! see them: how long tasks wait before they start, how many run, how long
//! they take and how many fail. This crate gives that with one line:
//!
//! - [`ThreadPoolExecutor`]: a drop-in thread pool, instrumented out of the box;
//! - [`InstrumentedExecutorProxy`]: wraps *any* [`Executor`] (the plain
//!   [`ThreadPool`], rayon with the `rayon` feature, or your own pool) and
//!   instruments it the same way;
//! - [`ExecutorExporter`]: the metric families, labelled by `executor` (the
//!   exporter id) and `executor_type`, in a `prometheus` registry of your
//!   choice;
//! - [`MetricsServer`] (feature `http`, on by default): `GET /metrics` in one line,
//!   as OpenMetrics to scrapers that ask for it (Prometheus does), text to
//!   the others (with the `protobuf` feature, also the protobuf exposition
//!   for scrapers that prefer it, with the native histograms of the pools
//!   built with [`native_histograms`](ExecutorExporterBuilder::native_histograms)).
//! - [`TextEncoder`]: the text exposition, the same bytes as
//!   `prometheus::TextEncoder` at a fraction of its cost, for your own handler;
//!   [`OpenMetricsEncoder`]: the same series as OpenMetrics text.
//! - `PrometheusClientCollector` (feature `prometheus-client`): the families
//!   in a `prometheus-client` registry, for services that use that crate.
//! - [`testing`] (feature `testing`): property tests of the task accounting
//!   of your own executor behind the proxy.
//! - `TokioBlockingExecutor` (feature `tokio`): a tokio runtime's blocking
//!   pool, instrumented, with a drop-in for `tokio::task::spawn_blocking`.
//!
//! # Quickstart
//!
//! ```
//! use executor_exporter::{ThreadPoolExecutor, TaskError};
//!
//! let registry = prometheus::Registry::new();
//! let pool = ThreadPoolExecutor::builder()
//!     .max_workers(4)
//!     .exporter_id("images")
//!     .registry(registry.clone())
//!     .build()?;
//!
//! let ok = pool.submit(|| 2 + 2)?;
//! let boom = pool.submit(|| -> u32 { panic!("corrupt input") })?;
//! assert_eq!(ok.join(), Ok(4));
//! assert!(matches!(boom.join(), Err(TaskError::Panicked { .. })));
//! pool.shutdown();
//!
//! // Serve it: executor_exporter::MetricsServer::start("127.0.0.1:9100", registry)?;
//! let text = {
//!     use prometheus::Encoder;
//!     let mut buf = Vec::new();
//!     prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf)?;
//!     String::from_utf8(buf)?
//! };
//! assert!(text.contains(
//!     r#"executor_task_failures_total{executor="images",executor_type="thread_pool",reason="panic"} 1"#
//! ));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Metrics
//!
//! With the default namespace `executor`; every series carries
//! `executor` and `executor_type` labels.
//!
//! | name | type | extra label | meaning |
//! |---|---|---|---|
//! | `executor_max_workers` | gauge | | sum of `max_workers` of the live pools with this id (down when a pool shuts down) |
//! | `executor_workers` | gauge | | worker threads/processes alive now (started and not exited) |
//! | `executor_initialized_workers_total` | counter | | workers that finished starting |
//! | `executor_submitted_tasks_total` | counter | | tasks accepted |
//! | `executor_rejected_tasks_total` | counter | | submits refused |
//! | `executor_queued_tasks` | gauge | | accepted, not yet started |
//! | `executor_running_tasks` | gauge | | started, not finished |
//! | `executor_cancelled_tasks_total` | counter | | cancelled before they started |
//! | `executor_task_wait_seconds` | histogram | | submit to start |
//! | `executor_tasks_duration_seconds` | histogram | `result` | start to end, `completed` or `failed` |
//! | `executor_task_failures_total` | counter | `reason` | why tasks failed (the reasons the pool can produce) |
//! | `executor_worker_restarts_total` | counter | | workers that left after a crash, timeout or task limit (process pools) |
//! | `executor_step_duration_seconds` | histogram | `step` | steps timed with [`ExecutorExporter::step`] |
//! | `executor_queue_capacity` | gauge | | capacity of the live pools' bounded queues (no sample for unbounded ones) |
//! | `executor_oldest_running_task_seconds` | gauge | | age of the longest-running task now (0 when none runs) |
//! | `executor_oldest_queued_task_seconds` | gauge | | age of the oldest task waiting to start (0 when none waits; where the queue is the wrapped executor's, exact for a first-in-first-out queue of up to 64 tasks, an upper bound beyond) |
//!
//! Whenever no task is in flight, `submitted = queued + running + completed +
//! failed + cancelled`, where completed and failed are the duration
//! histogram's counts. Every task is counted exactly once, whichever way it
//! ends: a panic, an `Err` from [`submit_fallible`](InstrumentedExecutorProxy::submit_fallible),
//! a cancel, a `shutdown_now`, or an executor that drops it.
//!
//! Histograms default to [`DEFAULT_BUCKETS`] (1 µs to 5 min).
//!
//! # Tracing (feature `tracing`)
//!
//! A task runs inside the [`tracing`](https://docs.rs/tracing) span that was
//! current when it was submitted, so what it logs belongs to the request
//! that caused it, on whichever worker runs it: every task of a
//! [`ThreadPoolExecutor`], a `RayonExecutor` or any
//! [`InstrumentedExecutorProxy`] (`submit`, `submit_fallible`, `spawn`, the
//! items of `map` (in the span current when `map` was called), and a
//! [`Task`] given to [`Executor::execute`]). The task holds the span until
//! its body returns, and a body that panics leaves it. A process pool's
//! task runs in another process, which spans cannot follow: there, the
//! submitter's span is held until the task has ended, so it stays open for
//! the round trip, and is entered while this process handles the task's
//! start, result and output decoding. The crate creates no spans of its
//! own. Worker threads see the global default subscriber (what `init()`
//! sets), as for any thread.
//!
//! Off by default, and nothing of it is compiled in then. On, a task
//! submitted with no subscriber set costs one atomic load more; outside any
//! span, the look-up of the current span; inside one, its capture, its
//! entry and exit on the worker, and (the closure no longer fitting the
//! task's inline room) one allocation.
//!
//! ```
//! # #[cfg(feature = "tracing")] {
//! use executor_exporter::ThreadPoolExecutor;
//!
//! // Spans are a subscriber's: pool threads see the global default.
//! tracing::subscriber::set_global_default(tracing_subscriber::registry())?;
//! let pool = ThreadPoolExecutor::builder()
//!     .registry(prometheus::Registry::new())
//!     .build()?;
//! let request = tracing::info_span!("request", id = 7);
//! let handle = request.in_scope(|| pool.submit(|| tracing::Span::current().id()))?;
//! // The task ran in the request's span, on a worker.
//! assert_eq!(handle.join()?, request.id());
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

//! # Exemplars
//!
//! A hook on any pool's builder (or [`ExecutorExporterBuilder::exemplar`]),
//! called at each submit on the submitting thread, gives the labels of that
//! task's exemplars ([`ExemplarLabels`], typically the trace id of the
//! request being handled). The wait and duration histograms keep, per
//! bucket, the latest observation that had labels, with its value and
//! wall-clock time, and the OpenMetrics exposition writes it on the
//! bucket's line ([`MetricsServer`] built with `.openmetrics(true)`, or
//! [`OpenMetricsEncoder::encode_with_exemplars`]), where Prometheus with
//! `--enable-feature=exemplar-storage` stores it. Process pools record them
//! in the parent. Without a hook a task costs the same instructions as
//! before; with one, the hook's own cost and a few hundred instructions.
//!
//! ```
//! use executor_exporter::{ExemplarLabels, OpenMetricsEncoder, ThreadPoolExecutor};
//!
//! let registry = prometheus::Registry::new();
//! let pool = ThreadPoolExecutor::builder()
//!     .registry(registry.clone())
//!     // Read the submitting request's trace id here (a thread-local, a span).
//!     .exemplar(|| ExemplarLabels::new([("trace_id", "4bf92f3577b34da6")]))
//!     .build()?;
//! pool.submit(|| 2 + 2)?.join()?;
//!
//! let mut out = Vec::new();
//! OpenMetricsEncoder::new().encode_with_exemplars(&registry.gather(), &registry, &mut out)?;
//! let text = String::from_utf8(out)?;
//! assert!(text.lines().any(|l| l.starts_with("executor_tasks_duration_seconds_bucket")
//!     && l.contains(r#" # {trace_id="4bf92f3577b34da6"} "#)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

mod bounded;
mod clock;
mod error;
mod executor;
mod export;
#[cfg(all(test, loom))]
mod loom_tests;
mod metrics;
#[cfg(target_os = "linux")]
pub mod process_pool;
mod proxy;
#[cfg(feature = "rayon")]
#[path = "rayon.rs"]
mod rayon_support;
mod sync;
mod task;
#[cfg(feature = "testing")]
pub mod testing;
mod thread_pool;
#[cfg(feature = "tokio")]
mod tokio_blocking;
#[cfg(feature = "tracing")]
mod trace;

pub use bounded::FullPolicy;
pub use error::{BuildError, FailureReason, RejectReason, SubmitError, TaskError};
pub use executor::{Executor, Rejected, Task};
#[cfg(feature = "http")]
pub use export::{MetricsServer, MetricsServerBuilder};
pub use export::{OpenMetricsEncoder, TextEncoder};
#[cfg(feature = "push")]
pub use export::{
    PushError, PushGateway, PushGatewayBuilder, DEFAULT_PUSH_TIMEOUT, PUSH_FAILURES_METRIC,
};
#[cfg(feature = "prometheus-client")]
pub use metrics::PrometheusClientCollector;
pub use metrics::{
    ExecutorExporter, ExecutorExporterBuilder, ExemplarLabels, InvariantError, Snapshot,
    DEFAULT_BUCKETS,
};
pub use metrics::{Step, StepTimer};
#[cfg(target_os = "linux")]
pub use process_pool::{ProcessPoolExecutor, ProcessPoolExecutorBuilder};
pub use proxy::{InstrumentedExecutorProxy, Map};
#[cfg(feature = "rayon")]
pub use rayon_support::{RayonExecutor, RayonExecutorBuilder};
pub use task::{TaskHandle, TaskState};
pub use thread_pool::{
    ThreadPool, ThreadPoolBuilder, ThreadPoolExecutor, ThreadPoolExecutorBuilder,
};
#[cfg(feature = "tokio")]
pub use tokio_blocking::{
    BlockingHandle, TokioBlocking, TokioBlockingExecutor, TokioBlockingExecutorBuilder,
};

/// The `prometheus` crate this one is built on, so your types match ours.
pub use prometheus;

/// The `prometheus-client` crate [`PrometheusClientCollector`] registers
/// into (feature `prometheus-client`), so your registry's type matches ours.
#[cfg(feature = "prometheus-client")]
pub use prometheus_client;

/// The README's and the guides' Rust examples, compiled as doctests (run where they need no server, port
/// or worker process), so none drifts from the API.
#[cfg(all(
    doctest,
    feature = "http",
    feature = "push",
    feature = "rayon",
    feature = "testing",
    target_os = "linux"
))]
mod doc_examples {
    #[doc = include_str!("../README.md")]
    struct Readme;
    #[doc = include_str!("../docs/process-pool.md")]
    struct ProcessPoolGuide;
    #[doc = include_str!("../docs/migrate-from-threadpool.md")]
    struct MigrateFromThreadpool;
}

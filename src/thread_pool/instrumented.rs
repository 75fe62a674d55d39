//! [`ThreadPoolExecutor`]: the drop-in instrumented thread pool.

use std::fmt;

use super::plain::{ThreadPool, ThreadPoolBuilder};
use crate::error::BuildError;
use crate::metrics::ExecutorExporterBuilder;
use crate::proxy::InstrumentedExecutorProxy;

/// A thread pool that is instrumented out of the box: a [`ThreadPool`] inside
/// an [`InstrumentedExecutorProxy`], with `executor_type="thread_pool"`.
///
/// It dereferences to the proxy, so `submit`, `submit_fallible`, `map`,
/// `join`, `shutdown`, `shutdown_now` and `exporter` are all there. It also
/// implements [`Executor`](crate::Executor), so it can stand wherever a plain pool stood.
/// Dropping it waits for every accepted task and joins the threads.
///
/// ```
/// use executor_exporter::ThreadPoolExecutor;
///
/// let registry = prometheus::Registry::new();
/// let pool = ThreadPoolExecutor::builder()
///     .max_workers(4)
///     .exporter_id("thumbnails")
///     .registry(registry.clone())
///     .build()
///     .unwrap();
/// let squares: Vec<u64> = pool.map(|x: u64| x * x, 0..5).map(Result::unwrap).collect();
/// assert_eq!(squares, [0, 1, 4, 9, 16]);
/// pool.shutdown();
///
/// // What Prometheus would scrape:
/// let text = prometheus::TextEncoder::new()
///     .encode_to_string(&registry.gather())
///     .unwrap();
/// assert!(text.contains(
///     r#"executor_submitted_tasks_total{executor="thumbnails",executor_type="thread_pool"} 5"#
/// ));
/// ```
pub struct ThreadPoolExecutor {
    proxy: InstrumentedExecutorProxy<ThreadPool>,
}

impl fmt::Debug for ThreadPoolExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPoolExecutor")
            .field("pool", self.proxy.inner())
            .field("exporter", self.proxy.exporter())
            .finish()
    }
}

impl ThreadPoolExecutor {
    /// An instrumented pool of at most `max_workers` threads, recording into
    /// the default registry with exporter id `"default"`.
    pub fn new(max_workers: usize) -> Result<ThreadPoolExecutor, BuildError> {
        ThreadPoolExecutor::builder()
            .max_workers(max_workers)
            .build()
    }

    /// Starts building a pool: the pool's options and the exporter's together.
    pub fn builder() -> ThreadPoolExecutorBuilder {
        ThreadPoolExecutorBuilder::default()
    }

    /// Threads started so far.
    pub fn workers(&self) -> usize {
        self.proxy.inner().workers()
    }

    /// The capacity of the queue, if it is bounded.
    pub fn queue_capacity(&self) -> Option<usize> {
        self.proxy.inner().queue_capacity()
    }
}

crate::proxy::instrumented_pool!(ThreadPoolExecutor, ThreadPool);

/// Options of a [`ThreadPoolExecutor`]: the pool's (see [`ThreadPoolBuilder`])
/// and the exporter's (see [`ExecutorExporterBuilder`]).
///
/// ```
/// use executor_exporter::{prometheus::Registry, ThreadPoolExecutor};
///
/// let pool = ThreadPoolExecutor::builder()
///     .max_workers(4)
///     .thread_name_prefix("resize")
///     .exporter_id("thumbnails")
///     .registry(Registry::new())
///     .build()?;
/// assert_eq!(pool.submit(|| 2 + 2)?.join()?, 4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct ThreadPoolExecutorBuilder {
    pool: ThreadPoolBuilder,
    exporter: ExecutorExporterBuilder,
}

impl ThreadPoolExecutorBuilder {
    /// See [`ThreadPoolBuilder::max_workers`].
    pub fn max_workers(mut self, n: usize) -> Self {
        self.pool = self.pool.max_workers(n);
        self
    }

    /// See [`ThreadPoolBuilder::thread_name_prefix`].
    pub fn thread_name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.pool = self.pool.thread_name_prefix(prefix);
        self
    }

    /// See [`ThreadPoolBuilder::stack_size`].
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.pool = self.pool.stack_size(bytes);
        self
    }

    /// See [`ThreadPoolBuilder::queue_capacity`]. The capacity is exposed
    /// as the `queue_capacity` gauge while the pool lives, and a submit
    /// refused because the queue is full is counted in
    /// `rejected_tasks_total`.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.pool = self.pool.queue_capacity(n);
        self
    }

    /// See [`ThreadPoolBuilder::when_full`]. A task run by the caller
    /// ([`FullPolicy::CallerRuns`](crate::FullPolicy::CallerRuns)) is counted
    /// as any other, with a wait of about nothing.
    pub fn when_full(mut self, policy: crate::bounded::FullPolicy) -> Self {
        self.pool = self.pool.when_full(policy);
        self
    }

    /// See [`ThreadPoolBuilder::initializer`].
    pub fn initializer<F>(mut self, f: F) -> Self
    where
        F: Fn() + Send + Sync + 'static,
    {
        self.pool = self.pool.initializer(f);
        self
    }

    crate::metrics::exporter_options!("thread_pool");

    /// Builds the exporter (registering its families) and the pool; every
    /// series exists, at zero, when this returns (of the failure reasons,
    /// those a thread pool can produce: `panic`, `error`, `broken`).
    pub fn build(self) -> Result<ThreadPoolExecutor, BuildError> {
        // Check the pool's options first, so a bad pool never creates series.
        self.pool.check()?;
        let exporter = self.exporter.executor_type_or("thread_pool").build()?;
        let (started, stopped) = (exporter.clone(), exporter.clone());
        let pool = self
            .pool
            .on_worker_start(move || started.worker_started())
            .on_worker_exit(move || stopped.worker_stopped())
            .build()?;
        let max_workers = pool.max_workers();
        Ok(ThreadPoolExecutor {
            proxy: InstrumentedExecutorProxy::new(pool, exporter, Some(max_workers)),
        })
    }
}

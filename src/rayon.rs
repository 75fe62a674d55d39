//! rayon support (feature `rayon`): [`rayon::ThreadPool`] as an [`Executor`],
//! and [`RayonExecutor`], an instrumented rayon pool built from a
//! [`rayon::ThreadPoolBuilder`].

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::error::{BuildError, BuildErrorKind};
use crate::executor::{sealed::Unboxed, Executor, Rejected, Task};
use crate::metrics::{ExecutorExporter, ExecutorExporterBuilder};
use crate::proxy::InstrumentedExecutorProxy;

/// The `executor_type` label of rayon pools.
const EXECUTOR_TYPE: &str = "rayon";

/// A rayon pool runs a [`Task`] with [`rayon::ThreadPool::spawn`].
///
/// `max_workers` is [`current_num_threads`](rayon::ThreadPool::current_num_threads)
/// and `executor_type` is `rayon`. rayon cannot refuse a task, and has no
/// shutdown: [`Executor::shutdown`] does nothing, and dropping the pool lets
/// its threads end once their work is done.
///
/// A plain task that panics goes to the pool's `panic_handler`, or aborts the
/// process when there is none (rayon's rule); tasks submitted through an
/// [`InstrumentedExecutorProxy`] catch their own panics and never get there.
///
/// ```
/// use executor_exporter::{ExecutorExporter, InstrumentedExecutorProxy};
///
/// let registry = prometheus::Registry::new();
/// let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
/// let exporter = ExecutorExporter::builder()
///    .exporter_id("existing")
///    .executor_type("rayon")
///    .registry(registry)
///    .build()
///    .unwrap();
/// let proxy = InstrumentedExecutorProxy::new(pool, exporter, None);
/// assert_eq!(proxy.max_workers(), Some(2));
/// assert_eq!(proxy.submit(|| 6 * 7).unwrap().join(), Ok(42));
/// ```
impl Executor for rayon::ThreadPool {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        self.spawn(move || task.run());
        Ok(())
    }

    /// rayon's `spawn` allocates for the closure it is given: the proxy's
    /// task goes in unboxed, so a spawned task is one allocation, as with
    /// bare rayon.
    fn execute_unboxed<U: Unboxed>(&self, task: U) -> Result<(), Rejected> {
        self.spawn(move || task.run());
        Ok(())
    }

    fn max_workers(&self) -> Option<usize> {
        Some(self.current_num_threads())
    }

    fn executor_type(&self) -> &str {
        EXECUTOR_TYPE
    }

    fn is_worker_thread(&self) -> bool {
        self.current_thread_index().is_some()
    }
}

/// A rayon pool behind an [`InstrumentedExecutorProxy`], with its workers'
/// start-up counted and `executor_type="rayon"`.
///
/// It dereferences to the proxy (`submit`, `submit_fallible`, `map`, `join`,
/// `shutdown`, `exporter`, `inner` for the rayon pool itself), and has rayon's
/// own [`spawn`](Self::spawn), [`install`](Self::install) and
/// [`current_num_threads`](Self::current_num_threads), so code written for a
/// `rayon::ThreadPool` keeps compiling.
///
/// # What is measured, and what is not
///
/// rayon has no queue-depth or job hooks of its own; the metrics come from the
/// [`InstrumentedExecutorProxy`] in front of the pool, so they cover exactly
/// the work that goes *through the proxy*:
///
/// - **Seen**: every task given to [`RayonExecutor::spawn`], `submit`,
///   `submit_fallible`, `map`, `map_fallible` or [`Executor::execute`]: it is
///   counted as submitted, queued until a rayon worker picks it up (the wait),
///   running, then completed or failed (the duration).
/// - **Part of a task**: parallel work a task starts itself, such as a
///   `par_iter` or `rayon::join` inside the task, runs on the pool's threads
///   and is part of that one task's duration. While it runs, other workers
///   help with it, yet `running_tasks` counts one task, so busy threads can
///   exceed `running_tasks`. A worker blocked in such a call may also run
///   another queued task in the meantime (rayon's work stealing), whose time
///   is then included in the first task's duration too.
/// - **Not seen**: work given to the pool directly, around the proxy:
///   [`RayonExecutor::install`], `inner().scope(..)`, `inner().spawn(..)`,
///   `inner().join(..)`, and anything run on rayon's global pool
///   (`rayon::spawn`, a `par_iter` outside any task).
///
/// Workers (`initialized_workers_total`, `workers`) are counted only for
/// pools built by [`RayonExecutorBuilder`], which installs rayon's
/// `start_handler` and `exit_handler`. A pool that already exists can still
/// be wrapped with [`InstrumentedExecutorProxy::new`], since
/// `rayon::ThreadPool` implements [`Executor`]; its workers have started
/// already and are not counted (`workers` stays 0 for it).
///
/// rayon does not join its threads when the pool is dropped: `workers` goes
/// down as each thread actually exits, shortly after the drop, while
/// `max_workers` goes down at the drop (or at `shutdown`).
///
/// Dropping it waits for every task accepted through it (like the other
/// instrumented executors), then drops the rayon pool.
///
/// ```
/// use executor_exporter::RayonExecutor;
/// use rayon::prelude::*;
///
/// let registry = prometheus::Registry::new();
/// let pool = RayonExecutor::builder(rayon::ThreadPoolBuilder::new().num_threads(2))
///    .exporter_id("render")
///    .registry(registry.clone())
///    .build()
///    .unwrap();
/// // The par_iter is part of this one task's duration.
/// let sum = pool.submit(|| (1..=100u64).into_par_iter().sum::<u64>()).unwrap();
/// assert_eq!(sum.join(), Ok(5050));
/// pool.join();
///
/// let text = prometheus::TextEncoder::new()
///    .encode_to_string(&registry.gather())
///    .unwrap();
/// assert!(text.contains(
///    r#"executor_submitted_tasks_total{executor="render",executor_type="rayon"} 1"#
/// ));
/// ```
pub struct RayonExecutor {
    proxy: InstrumentedExecutorProxy<rayon::ThreadPool>,
}

impl fmt::Debug for RayonExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RayonExecutor")
            .field("threads", &self.proxy.inner().current_num_threads())
            .field("exporter", self.proxy.exporter())
            .finish()
    }
}

impl RayonExecutor {
    /// Builds an instrumented pool from `pool`, recording into the default
    /// registry with exporter id `"default"`: the one-line change from
    /// `pool.build()`.
    ///
    /// A `start_handler` or `exit_handler` set on `pool` is replaced: give
    /// it to [`RayonExecutorBuilder::start_handler`] or
    /// [`RayonExecutorBuilder::exit_handler`] instead.
    ///
    /// ```no_run
    /// use executor_exporter::RayonExecutor;
    ///
    /// // Was: let pool = rayon::ThreadPoolBuilder::new().num_threads(8).build()?;
    /// let pool = RayonExecutor::new(rayon::ThreadPoolBuilder::new().num_threads(8))?;
    /// pool.spawn(|| println!("hello from a counted task"));
    /// # Ok::<(), executor_exporter::BuildError>(())
    /// ```
    pub fn new(pool: rayon::ThreadPoolBuilder) -> Result<RayonExecutor, BuildError> {
        RayonExecutor::builder(pool).build()
    }

    /// Starts building an instrumented pool from rayon's builder, with the
    /// pool's options already set on it.
    pub fn builder(pool: rayon::ThreadPoolBuilder) -> RayonExecutorBuilder {
        RayonExecutorBuilder {
            pool,
            start_handler: None,
            exit_handler: None,
            exporter: ExecutorExporter::builder(),
        }
    }

    /// Runs `f` on the pool, like [`rayon::ThreadPool::spawn`], counted as one
    /// task. A panic in `f` is caught and counted as failed with reason
    /// `panic` (the panic message is printed by the panic hook as usual); it
    /// does not reach rayon's `panic_handler`. Use `submit` to get the result.
    ///
    /// # Panics
    ///
    /// If the executor was shut down with `shutdown`: the task would never
    /// run (it is counted as rejected). Where a submit may come after the
    /// shutdown, call the proxy's own `spawn`, which hands the closure back
    /// in an error instead:
    ///
    /// ```
    /// use executor_exporter::{RayonExecutor, RejectReason};
    ///
    /// let pool = RayonExecutor::builder(rayon::ThreadPoolBuilder::new().num_threads(1))
    ///     .registry(prometheus::Registry::new())
    ///     .build()
    ///     .unwrap();
    /// pool.shutdown();
    /// let refused = (*pool).spawn(|| ()).unwrap_err();
    /// assert_eq!(refused.reason(), RejectReason::Shutdown);
    /// ```
    pub fn spawn<F>(&self, f: F)
    where
        F: FnOnce() + Send + 'static,
    {
        if let Err(err) = self.proxy.spawn(f) {
            panic!("RayonExecutor::spawn: {err}");
        }
    }

    /// Runs `op` within the pool, like [`rayon::ThreadPool::install`].
    ///
    /// Not measured: `op` does not go through the proxy (it is not queued
    /// behind other tasks; it runs with the caller waiting for it).
    pub fn install<OP, R>(&self, op: OP) -> R
    where
        OP: FnOnce() -> R + Send,
        R: Send,
    {
        self.proxy.inner().install(op)
    }

    /// The number of threads of the pool.
    pub fn current_num_threads(&self) -> usize {
        self.proxy.inner().current_num_threads()
    }
}

crate::proxy::instrumented_pool!(RayonExecutor, rayon::ThreadPool);

type ThreadHandler = Arc<dyn Fn(usize) + Send + Sync>;

/// Options of a [`RayonExecutor`]: rayon's own builder, a start handler of
/// yours, and the exporter's options.
///
/// rayon's builder has a single `start_handler` and `exit_handler` and no
/// way to read them back, so this builder installs its own, which run yours
/// (given to [`start_handler`](Self::start_handler) and
/// [`exit_handler`](Self::exit_handler)) and count the worker in and out.
/// Handlers set directly on the rayon builder are replaced.
///
/// ```
/// use executor_exporter::{prometheus::Registry, RayonExecutor};
///
/// let pool = RayonExecutor::builder(rayon::ThreadPoolBuilder::new().num_threads(2))
///     .exporter_id("crunch")
///     .registry(Registry::new())
///     .build()?;
/// assert_eq!(pool.submit(|| 6 * 7)?.join()?, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RayonExecutorBuilder {
    pool: rayon::ThreadPoolBuilder,
    start_handler: Option<ThreadHandler>,
    exit_handler: Option<ThreadHandler>,
    exporter: ExecutorExporterBuilder,
}

impl fmt::Debug for RayonExecutorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RayonExecutorBuilder")
            .field("pool", &self.pool)
            .field("start_handler", &self.start_handler.is_some())
            .field("exit_handler", &self.exit_handler.is_some())
            .field("exporter", &self.exporter)
            .finish()
    }
}

impl RayonExecutorBuilder {
    /// Runs `handler(thread_index)` in each worker as it starts, before the
    /// worker is counted in `initialized_workers_total`. Use this instead of
    /// rayon's `ThreadPoolBuilder::start_handler`, which this builder
    /// replaces.
    ///
    /// ```
    /// use executor_exporter::RayonExecutor;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let started = Arc::new(AtomicUsize::new(0));
    /// let seen = started.clone();
    /// let pool = RayonExecutor::builder(rayon::ThreadPoolBuilder::new().num_threads(3))
    ///     .start_handler(move |_index| {
    ///         seen.fetch_add(1, Ordering::SeqCst);
    ///     })
    ///     .registry(prometheus::Registry::new())
    ///     .build()
    ///     .unwrap();
    /// // Every worker has started once a broadcast reached all of them.
    /// pool.inner().broadcast(|_| ());
    /// assert_eq!(started.load(Ordering::SeqCst), 3);
    /// ```
    pub fn start_handler<F>(mut self, handler: F) -> Self
    where
        F: Fn(usize) + Send + Sync + 'static,
    {
        self.start_handler = Some(Arc::new(handler));
        self
    }

    /// Runs `handler(thread_index)` in each worker as it exits, after the
    /// worker is counted out of `workers`. Use this instead of rayon's
    /// `ThreadPoolBuilder::exit_handler`, which this builder replaces.
    pub fn exit_handler<F>(mut self, handler: F) -> Self
    where
        F: Fn(usize) + Send + Sync + 'static,
    {
        self.exit_handler = Some(Arc::new(handler));
        self
    }

    crate::metrics::exporter_options!("rayon");

    /// Builds the rayon pool (its threads start at once), then the exporter.
    ///
    /// Errors: rayon could not build the pool (no series are created then),
    /// or the exporter's options are invalid (the pool is dropped).
    pub fn build(self) -> Result<RayonExecutor, BuildError> {
        // Workers start inside `build`, before the exporter exists: count
        // them here and hand the count over once it does.
        let starts = Arc::new(StartCounter(Mutex::new(Starts::Pending {
            started: 0,
            stopped: 0,
        })));
        let (counter, exits) = (starts.clone(), starts.clone());
        let (user_start, user_exit) = (self.start_handler, self.exit_handler);
        let pool = self
            .pool
            .start_handler(move |index| {
                if let Some(handler) = &user_start {
                    handler(index);
                }
                counter.worker_started();
            })
            .exit_handler(move |index| {
                // Counted out first: the thread is leaving whatever the
                // user's handler does.
                exits.worker_stopped();
                if let Some(handler) = &user_exit {
                    handler(index);
                }
            })
            .build()
            .map_err(|e| BuildError::new(BuildErrorKind::Pool(Box::new(e))))?;
        let exporter = self.exporter.executor_type_or(EXECUTOR_TYPE).build()?;
        starts.ready(exporter.clone());
        Ok(RayonExecutor {
            proxy: InstrumentedExecutorProxy::new(pool, exporter, None),
        })
    }
}

/// Counts workers that started and exited, before and after the exporter
/// exists.
struct StartCounter(Mutex<Starts>);

enum Starts {
    Pending { started: u64, stopped: u64 },
    Ready(ExecutorExporter),
}

impl StartCounter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Starts> {
        // Nothing can panic while the lock is held.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn worker_started(&self) {
        match &mut *self.lock() {
            Starts::Pending { started, .. } => *started += 1,
            Starts::Ready(exporter) => exporter.worker_started(),
        }
    }

    fn worker_stopped(&self) {
        match &mut *self.lock() {
            Starts::Pending { stopped, .. } => *stopped += 1,
            Starts::Ready(exporter) => exporter.worker_stopped(),
        }
    }

    fn ready(&self, exporter: ExecutorExporter) {
        let mut state = self.lock();
        if let Starts::Pending { started, stopped } = *state {
            for _ in 0..started {
                exporter.worker_started();
            }
            for _ in 0..stopped {
                exporter.worker_stopped();
            }
        }
        *state = Starts::Ready(exporter);
    }
}

//! tokio support (feature `tokio`): a runtime's blocking pool as an
//! [`Executor`] ([`TokioBlocking`]), and [`TokioBlockingExecutor`], that
//! pool instrumented, with a drop-in for `tokio::task::spawn_blocking`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::Handle;

use crate::error::{BuildError, RejectReason, TaskError};
use crate::executor::{sealed::Unboxed, Executor, Rejected, Task};
use crate::metrics::ExecutorExporterBuilder;
use crate::proxy::InstrumentedExecutorProxy;
use crate::task::{TaskHandle, TaskState};

/// The `executor_type` label of tokio's blocking pools.
const EXECUTOR_TYPE: &str = "tokio_blocking";

/// A tokio runtime's blocking pool as an [`Executor`]: each task goes to
/// [`Handle::spawn_blocking`].
///
/// Behind an [`InstrumentedExecutorProxy`] it gives the blocking pool's
/// metrics: the wait (submit to the start on a blocking thread, which
/// includes starting a thread when none is idle, and queueing when
/// `max_blocking_threads` are busy), running tasks, duration, and failures.
/// tokio does not tell its `max_blocking_threads`: give it to the proxy
/// (tokio's default is 512). `executor_type` is `tokio_blocking`.
///
/// The pool cannot refuse a task. A task given to a runtime that has shut
/// down is dropped by tokio without running, and counted as cancelled.
/// [`Executor::shutdown`] does nothing: the runtime is the caller's.
///
/// ```
/// use executor_exporter::{ExecutorExporter, InstrumentedExecutorProxy, TokioBlocking};
///
/// let runtime = tokio::runtime::Builder::new_multi_thread()
///     .max_blocking_threads(8)
///     .build()?;
/// let exporter = ExecutorExporter::builder()
///     .exporter_id("blocking")
///     .executor_type("tokio_blocking")
///     .registry(prometheus::Registry::new())
///     .build()?;
/// let blocking = InstrumentedExecutorProxy::new(
///     TokioBlocking::new(runtime.handle().clone()),
///     exporter,
///     Some(8),
/// );
/// // The handle is a future: awaited, it gives the task's value.
/// let answer = runtime.block_on(blocking.submit(|| 6 * 7)?);
/// assert_eq!(answer, Ok(42));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct TokioBlocking {
    handle: Handle,
}

impl TokioBlocking {
    /// The blocking pool of the runtime `handle` belongs to
    /// ([`Handle::current`] inside a runtime).
    ///
    /// ```
    /// use executor_exporter::{Executor, Task, TokioBlocking};
    ///
    /// let runtime = tokio::runtime::Runtime::new()?;
    /// let pool = TokioBlocking::new(runtime.handle().clone());
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// pool.execute(Task::new(move || tx.send(42).unwrap())).unwrap();
    /// assert_eq!(rx.recv()?, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(handle: Handle) -> TokioBlocking {
        TokioBlocking { handle }
    }

    /// The runtime's handle.
    ///
    /// ```
    /// use executor_exporter::TokioBlocking;
    ///
    /// let runtime = tokio::runtime::Runtime::new()?;
    /// let pool = TokioBlocking::new(runtime.handle().clone());
    /// assert_eq!(pool.handle().id(), runtime.handle().id());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Executor for TokioBlocking {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        // The join handle is dropped: the task reports through its own.
        drop(self.handle.spawn_blocking(move || task.run()));
        Ok(())
    }

    /// tokio's `spawn_blocking` allocates a task cell for the closure it is
    /// given: the proxy's task goes in unboxed, as with rayon.
    fn execute_unboxed<U: Unboxed>(&self, task: U) -> Result<(), Rejected> {
        drop(self.handle.spawn_blocking(move || task.run()));
        Ok(())
    }

    fn executor_type(&self) -> &str {
        EXECUTOR_TYPE
    }
}

/// A tokio runtime's blocking pool behind an [`InstrumentedExecutorProxy`],
/// with `executor_type="tokio_blocking"`, and
/// [`spawn_blocking`](Self::spawn_blocking), the drop-in for
/// `tokio::task::spawn_blocking`.
///
/// It dereferences to the proxy (`submit`, `spawn`, `join`, `exporter`,
/// `inner` for the [`TokioBlocking`] itself). What is measured is the work
/// given through it; `tokio::task::spawn_blocking` calls elsewhere, and
/// tokio's own use of the pool (`tokio::fs`, name lookups), share the
/// threads but are not counted.
///
/// Dropping it waits for every task accepted through it, as the other
/// instrumented executors do, so drop it where blocking is allowed (after
/// `block_on`, or on a blocking thread), or keep it for the life of the
/// runtime.
///
/// ```
/// use executor_exporter::TokioBlockingExecutor;
///
/// let runtime = tokio::runtime::Builder::new_multi_thread()
///     .max_blocking_threads(16)
///     .build()?;
/// let registry = prometheus::Registry::new();
/// let blocking = TokioBlockingExecutor::builder(runtime.handle().clone())
///     .max_blocking_threads(16)
///     .exporter_id("files")
///     .registry(registry.clone())
///     .build()?;
/// // Was: tokio::task::spawn_blocking(|| std::fs::metadata("/")).await
/// let is_dir = runtime.block_on(async {
///     blocking.spawn_blocking(|| std::fs::metadata("/").map(|m| m.is_dir())).await
/// });
/// assert!(matches!(is_dir, Ok(Ok(true))));
///
/// let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather())?;
/// assert!(text.contains(
///     r#"executor_submitted_tasks_total{executor="files",executor_type="tokio_blocking"} 1"#
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TokioBlockingExecutor {
    proxy: InstrumentedExecutorProxy<TokioBlocking>,
}

impl fmt::Debug for TokioBlockingExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioBlockingExecutor")
            .field("max_blocking_threads", &self.proxy.max_workers())
            .field("exporter", self.proxy.exporter())
            .finish()
    }
}

impl TokioBlockingExecutor {
    /// Starts building an instrumented blocking pool of the runtime
    /// `handle` belongs to.
    ///
    /// ```
    /// use executor_exporter::TokioBlockingExecutor;
    ///
    /// let runtime = tokio::runtime::Runtime::new()?;
    /// let blocking = TokioBlockingExecutor::builder(runtime.handle().clone())
    ///     .registry(prometheus::Registry::new())
    ///     .build()?;
    /// assert_eq!(blocking.exporter().executor_type(), "tokio_blocking");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder(handle: Handle) -> TokioBlockingExecutorBuilder {
        TokioBlockingExecutorBuilder {
            handle,
            max_blocking_threads: None,
            exporter: ExecutorExporterBuilder::default(),
        }
    }

    /// Runs `f` on the runtime's blocking pool, like
    /// `tokio::task::spawn_blocking`, counted as one task; await the handle
    /// for its value. A panic in `f` is caught, counted as failed with
    /// reason `panic`, and the handle gives [`TaskError::Panicked`] where
    /// tokio's would give a `JoinError`.
    ///
    /// After [`shutdown`](InstrumentedExecutorProxy::shutdown), the task is
    /// refused (counted as rejected) and the handle gives
    /// [`TaskError::Rejected`], as tokio's gives a cancelled `JoinError` once
    /// its runtime has shut down.
    ///
    /// ```
    /// use executor_exporter::{TaskError, TokioBlockingExecutor};
    ///
    /// let runtime = tokio::runtime::Runtime::new()?;
    /// let blocking = TokioBlockingExecutor::builder(runtime.handle().clone())
    ///     .registry(prometheus::Registry::new())
    ///     .build()?;
    /// runtime.block_on(async {
    ///     assert_eq!(blocking.spawn_blocking(|| 6 * 7).await, Ok(42));
    ///     let boom = blocking.spawn_blocking(|| -> u32 { panic!("bad input") }).await;
    ///     assert!(matches!(boom, Err(TaskError::Panicked { .. })));
    /// });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn_blocking<F, R>(&self, f: F) -> BlockingHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        BlockingHandle {
            inner: self.proxy.submit(f).map_err(|e| Some(e.reason())),
        }
    }
}

crate::proxy::instrumented_pool!(TokioBlockingExecutor, TokioBlocking);

/// Options of a [`TokioBlockingExecutor`]: the runtime's
/// `max_blocking_threads`, and the exporter's options.
///
/// ```
/// use executor_exporter::{prometheus::Registry, TokioBlockingExecutor};
///
/// let runtime = tokio::runtime::Builder::new_multi_thread()
///     .max_blocking_threads(4)
///     .build()?;
/// let blocking = TokioBlockingExecutor::builder(runtime.handle().clone())
///     .max_blocking_threads(4)
///     .exporter_id("db")
///     .registry(Registry::new())
///     .build()?;
/// assert_eq!(blocking.max_workers(), Some(4));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TokioBlockingExecutorBuilder {
    handle: Handle,
    max_blocking_threads: Option<usize>,
    exporter: ExecutorExporterBuilder,
}

impl fmt::Debug for TokioBlockingExecutorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioBlockingExecutorBuilder")
            .field("max_blocking_threads", &self.max_blocking_threads)
            .field("exporter", &self.exporter)
            .finish_non_exhaustive()
    }
}

impl TokioBlockingExecutorBuilder {
    /// The runtime's `max_blocking_threads`, as given to tokio's
    /// `runtime::Builder` (tokio's default is 512; it cannot be read back
    /// from a runtime): the pool's `max_workers` gauge. Unset, the gauge has
    /// nothing of this pool.
    ///
    /// ```
    /// use executor_exporter::TokioBlockingExecutor;
    ///
    /// let runtime = tokio::runtime::Runtime::new()?;
    /// let blocking = TokioBlockingExecutor::builder(runtime.handle().clone())
    ///     .max_blocking_threads(512)
    ///     .registry(prometheus::Registry::new())
    ///     .build()?;
    /// assert_eq!(blocking.max_workers(), Some(512));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn max_blocking_threads(mut self, n: usize) -> Self {
        self.max_blocking_threads = Some(n);
        self
    }

    crate::metrics::exporter_options!("tokio_blocking");

    /// Builds the exporter (registering its families); every series exists,
    /// at zero, when this returns.
    pub fn build(self) -> Result<TokioBlockingExecutor, BuildError> {
        let exporter = self.exporter.executor_type_or(EXECUTOR_TYPE).build()?;
        Ok(TokioBlockingExecutor {
            proxy: InstrumentedExecutorProxy::new(
                TokioBlocking::new(self.handle),
                exporter,
                self.max_blocking_threads,
            ),
        })
    }
}

/// What [`TokioBlockingExecutor::spawn_blocking`] returns: await it for
/// the task's value, like tokio's `JoinHandle`.
///
/// Dropping it does not cancel the task (as with tokio's); it runs, is
/// counted, and its value is dropped.
///
/// ```
/// use executor_exporter::TokioBlockingExecutor;
///
/// let runtime = tokio::runtime::Runtime::new()?;
/// let blocking = TokioBlockingExecutor::builder(runtime.handle().clone())
///     .registry(prometheus::Registry::new())
///     .build()?;
/// let handle = blocking.spawn_blocking(|| "done");
/// assert_eq!(runtime.block_on(handle), Ok("done"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "the task runs anyway; await the handle for its value"]
pub struct BlockingHandle<T> {
    /// The task's handle, or why it was refused (`None` once that was
    /// returned).
    inner: Result<TaskHandle<T>, Option<RejectReason>>,
}

impl<T> fmt::Debug for BlockingHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Ok(handle) => handle.fmt(f),
            Err(reason) => f
                .debug_struct("BlockingHandle")
                .field("rejected", reason)
                .finish(),
        }
    }
}

impl<T> BlockingHandle<T> {
    /// Cancels the task if it has not started, like tokio's `abort` of a
    /// blocking task: it then never runs, the handle gives
    /// [`TaskError::Cancelled`], and it is counted as cancelled. True if the
    /// task is cancelled (now or before); false if it has started, ended, or
    /// was refused.
    ///
    /// ```
    /// use executor_exporter::{TaskError, TokioBlockingExecutor};
    ///
    /// let runtime = tokio::runtime::Builder::new_multi_thread()
    ///     .max_blocking_threads(1)
    ///     .build()?;
    /// let blocking = TokioBlockingExecutor::builder(runtime.handle().clone())
    ///     .registry(prometheus::Registry::new())
    ///     .build()?;
    /// let (release, wait) = std::sync::mpsc::channel::<()>();
    /// let busy = blocking.spawn_blocking(move || wait.recv());
    /// // The only blocking thread is busy: this one waits in tokio's queue.
    /// let queued = blocking.spawn_blocking(|| 42);
    /// assert!(queued.cancel());
    /// release.send(())?;
    /// assert!(runtime.block_on(busy).is_ok());
    /// assert_eq!(runtime.block_on(queued), Err(TaskError::Cancelled));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel(&self) -> bool {
        self.inner.as_ref().is_ok_and(TaskHandle::cancel)
    }

    /// True once the task has ended (finished, cancelled or refused).
    ///
    /// ```
    /// use executor_exporter::TokioBlockingExecutor;
    ///
    /// let runtime = tokio::runtime::Runtime::new()?;
    /// let blocking = TokioBlockingExecutor::builder(runtime.handle().clone())
    ///     .registry(prometheus::Registry::new())
    ///     .build()?;
    /// let handle = blocking.spawn_blocking(|| 1);
    /// blocking.join();
    /// assert!(handle.is_finished());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_finished(&self) -> bool {
        self.inner.as_ref().map_or(true, TaskHandle::is_finished)
    }

    /// Where the task is in its life; a refused task is
    /// [`TaskState::Finished`] (with its error).
    ///
    /// ```
    /// use executor_exporter::{TaskState, TokioBlockingExecutor};
    ///
    /// let runtime = tokio::runtime::Runtime::new()?;
    /// let blocking = TokioBlockingExecutor::builder(runtime.handle().clone())
    ///     .registry(prometheus::Registry::new())
    ///     .build()?;
    /// let handle = blocking.spawn_blocking(|| 1);
    /// blocking.join();
    /// assert_eq!(handle.state(), TaskState::Finished);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn state(&self) -> TaskState {
        self.inner
            .as_ref()
            .map_or(TaskState::Finished, TaskHandle::state)
    }

    /// The task's [`TaskHandle`], to wait for it without a runtime
    /// ([`TaskHandle::join`]); `None` if it was refused.
    ///
    /// ```
    /// use executor_exporter::TokioBlockingExecutor;
    ///
    /// let runtime = tokio::runtime::Runtime::new()?;
    /// let blocking = TokioBlockingExecutor::builder(runtime.handle().clone())
    ///     .registry(prometheus::Registry::new())
    ///     .build()?;
    /// let handle = blocking.spawn_blocking(|| 6 * 7).into_task_handle();
    /// assert_eq!(handle.map(|h| h.join()), Some(Ok(42)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_task_handle(self) -> Option<TaskHandle<T>> {
        self.inner.ok()
    }
}

/// Resolves to the task's value, or why there is none: a panic
/// ([`TaskError::Panicked`]), a cancel, or a refusal
/// ([`TaskError::Rejected`]). Polled again after it resolved, it resolves to
/// [`TaskError::AlreadyTaken`].
impl<T> Future for BlockingHandle<T> {
    type Output = Result<T, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().inner {
            Ok(handle) => Pin::new(handle).poll(cx),
            Err(reason) => Poll::Ready(Err(match reason.take() {
                Some(reason) => TaskError::Rejected(reason),
                None => TaskError::AlreadyTaken,
            })),
        }
    }
}

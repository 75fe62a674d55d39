//! [`TaskHandle`]: the submitter's side of one task.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::core::{Help, TaskCore, CANCELLED, DONE, QUEUED, READY, RUNNING, TAKEN};
use crate::error::TaskError;
use crate::sync::Arc;

/// Where a task is in its life, as seen by [`TaskHandle::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskState {
    /// Accepted, not started.
    Pending,
    /// Started, not finished.
    Running,
    /// Finished, with a value or an error.
    Finished,
    /// Cancelled before it started; it never ran.
    Cancelled,
}

/// The submitter's side of one task: wait for its result, cancel it, or
/// `.await` it.
///
/// Dropping the handle does not cancel the task; it runs and is counted as
/// usual, and its result is discarded.
///
/// ```
/// use executor_exporter::ThreadPoolExecutor;
///
/// let pool = ThreadPoolExecutor::builder()
///     .max_workers(2)
///     .registry(prometheus::Registry::new())
///     .build()
///     .unwrap();
/// let handle = pool.submit(|| 6 * 7).unwrap();
/// assert_eq!(handle.join(), Ok(42));
/// ```
pub struct TaskHandle<T> {
    core: Arc<TaskCore<T, dyn Help<T>>>,
}

impl<T> fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("state", &self.state())
            .finish()
    }
}

impl<T> TaskHandle<T> {
    pub(crate) fn new<J: Help<T> + 'static>(core: Arc<TaskCore<T, J>>) -> TaskHandle<T> {
        TaskHandle { core }
    }

    /// The key of this handle's task.
    pub(crate) fn key(&self) -> super::TaskKey {
        super::TaskKey::of_core(Arc::as_ptr(&self.core))
    }

    /// Runs the task on this thread if this call takes it out of the queue,
    /// whatever thread this is (the loom models' joiner, which no task marks
    /// as a worker).
    #[cfg(all(test, loom))]
    pub(crate) fn help(&self) -> bool {
        self.core.job.help(&self.core)
    }

    /// Waits for the task and returns its value, or why there is none
    /// ([`TaskError::AlreadyTaken`] if the handle, polled as a future, has
    /// returned it already).
    ///
    /// Called inside a task of the same executor (on one of its workers,
    /// say) for a task that has not started, it runs that task on this
    /// thread instead of waiting: on a pool whose workers are all busy,
    /// waiting there for a worker to start it could wait forever. The task
    /// is taken out of the queue (no worker runs it later) and counted like
    /// any task, its wait ending now. Tasks it submits and joins in turn
    /// run the same way. Elsewhere `join` waits, and so it does for a task
    /// that has started, and for tasks of a process pool.
    ///
    /// ```
    /// use executor_exporter::ThreadPoolExecutor;
    /// use std::sync::Arc;
    ///
    /// let pool = Arc::new(
    ///     ThreadPoolExecutor::builder()
    ///         .max_workers(1)
    ///         .registry(prometheus::Registry::new())
    ///         .build()
    ///         .unwrap(),
    /// );
    /// let p = pool.clone();
    /// // The only worker runs the outer task, and its `join` runs the inner one.
    /// let outer = pool.submit(move || p.submit(|| 6 * 7).unwrap().join()).unwrap();
    /// assert_eq!(outer.join(), Ok(Ok(42)));
    /// ```
    pub fn join(self) -> Result<T, TaskError> {
        if self.core.wait_ready(None) & TAKEN != 0 {
            return Err(TaskError::AlreadyTaken);
        }
        self.core.take_result()
    }

    /// Waits up to `timeout` for the task to end; true if it has ended.
    /// Can be called any number of times.
    ///
    /// Inside a task of the same executor, a task that has not started runs
    /// on this thread first, as with [`join`](Self::join), however long it
    /// takes: the timeout bounds only a wait for another thread's run.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        // A timeout too large for an `Instant` waits without a deadline.
        let deadline = Instant::now().checked_add(timeout);
        self.core.wait_ready(deadline) & READY != 0
    }

    /// Waits up to `timeout` and returns the task's value, or
    /// [`TaskError::TimedOut`] if it has not ended by then: the task goes on
    /// and the handle stays usable, to wait again or [`join`](Self::join).
    /// Once the value was returned, later calls give
    /// [`TaskError::AlreadyTaken`].
    ///
    /// Inside a task of the same executor, a task that has not started runs
    /// on this thread first, as with [`join`](Self::join), however long it
    /// takes: the timeout bounds only a wait for another thread's run.
    ///
    /// ```
    /// use executor_exporter::{TaskError, ThreadPoolExecutor};
    /// use std::time::Duration;
    ///
    /// let pool = ThreadPoolExecutor::builder()
    ///     .max_workers(1)
    ///     .registry(prometheus::Registry::new())
    ///     .build()
    ///     .unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel::<()>();
    /// let mut handle = pool.submit(move || rx.recv().map(|()| 42)).unwrap();
    /// assert_eq!(handle.join_timeout(Duration::ZERO), Err(TaskError::TimedOut));
    /// tx.send(()).unwrap();
    /// assert_eq!(handle.join_timeout(Duration::from_secs(60)), Ok(Ok(42)));
    /// assert_eq!(handle.join_timeout(Duration::ZERO), Err(TaskError::AlreadyTaken));
    /// ```
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<T, TaskError> {
        // A timeout too large for an `Instant` waits without a deadline.
        let deadline = Instant::now().checked_add(timeout);
        let state = self.core.wait_ready(deadline);
        if state & READY == 0 {
            return Err(TaskError::TimedOut);
        }
        if state & TAKEN != 0 {
            return Err(TaskError::AlreadyTaken);
        }
        self.core.take_result()
    }

    /// Cancels the task if it has not started: it then never runs, its
    /// `join` gives [`TaskError::Cancelled`] and it is counted as cancelled.
    /// True if the task is cancelled (now or before); false if it has
    /// started or finished.
    pub fn cancel(&self) -> bool {
        self.core.cancel() || self.core.phase() == CANCELLED
    }

    /// True once the task has ended (finished or cancelled).
    pub fn is_finished(&self) -> bool {
        matches!(self.core.phase(), DONE | CANCELLED)
    }

    /// Where the task is in its life.
    pub fn state(&self) -> TaskState {
        match self.core.phase() {
            QUEUED => TaskState::Pending,
            RUNNING => TaskState::Running,
            CANCELLED => TaskState::Cancelled,
            _ => TaskState::Finished,
        }
    }
}

/// Resolves to the task's result, like [`TaskHandle::join`], without blocking
/// a thread and without depending on any async runtime (nor running the task
/// itself). Polled again after it resolved, it resolves to
/// [`TaskError::AlreadyTaken`].
impl<T> Future for TaskHandle<T> {
    type Output = Result<T, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let polled = self.core.poll_result(cx);
        if polled.is_pending() {
            self.core.job.let_go();
        }
        polled
    }
}

/// Leaves the task to its executor: a handle dropped unjoined does not
/// cancel it.
impl<T> Drop for TaskHandle<T> {
    fn drop(&mut self) {
        self.core.job.let_go();
    }
}

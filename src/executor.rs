//! The [`Executor`] trait every pool implements, and the [`Task`] it runs.

use std::any::Any;
use std::cell::UnsafeCell;
use std::fmt;
use std::mem::ManuallyDrop;
use std::sync::Arc;

use smallbox::space::S4;
use smallbox::{smallbox, SmallBox};

/// A unit of work handed to an [`Executor`]: an owned `FnOnce() + Send + 'static`, stored inline
/// when small (four words), boxed otherwise.
///
/// An executor either runs a task ([`Task::run`]), gives it back ([`Rejected`]),
/// or drops it. Dropping a task that came from an instrumented proxy counts it as
/// cancelled, so an executor that discards work on shutdown never leaves a task
/// unaccounted for. An executor that can no longer run anything (for example,
/// its workers cannot start) should call [`Task::abandon`] instead, so that the
/// submitter sees why.
///
/// ```
/// use executor_exporter::Task;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
///
/// let ran = Arc::new(AtomicBool::new(false));
/// let flag = ran.clone();
/// let task = Task::new(move || flag.store(true, Ordering::SeqCst));
/// task.run();
/// assert!(ran.load(Ordering::SeqCst));
/// ```
pub struct Task {
    /// What the task runs, inline when it fits in four words (a task of
    /// [`spawn`](crate::InstrumentedExecutorProxy::spawn) with a closure of
    /// up to two words, a [`Task::new`] closure of up to four, or the `Arc`
    /// of a submitted task's shared state), boxed otherwise: a small task
    /// handed to a queue allocates nothing beyond the queue's own slot.
    /// Taken out exactly once, by `run`, `abandon`, `reject` or the drop.
    inner: ManuallyDrop<Inner>,
}

// Nothing pins what a task holds (it is moved in and out by value), so a
// `Task` is `Unpin` whatever its contents, as when it held an `Arc`.
impl Unpin for Task {}

/// A task's contents: room for four words inline.
type Inner = SmallBox<dyn Runnable, S4>;

/// What a task's closure is kept in.
///
/// The [`Task`] that holds it (inline, boxed, or through the `Arc` of a
/// submitted task) calls exactly one of `run`, `abandon`, `discard` or
/// `reject`, once (unless the task is leaked, which leaks the closure too).
/// It owns the closure inside, except that a submitted task's closure may
/// be taken first by a thread joining its handle, which runs it (the
/// task's state word decides; see the proxy's `Job`).
pub(crate) trait Runnable: Send + Sync + 'static {
    /// Runs the task; `body_done` is called once the task's own code has
    /// returned (or did not run), before its result becomes visible to
    /// anyone waiting. Pools use it to mark the worker idle first, so that a
    /// submit made right after a `join` reuses this worker.
    fn run(&self, body_done: &dyn Fn());
    /// The executor cannot run the task: it fails as broken.
    fn abandon(&self, reason: String);
    /// The task is dropped without running: it counts as cancelled.
    fn discard(&self);
    /// The executor refused the task: it counts as rejected, and its
    /// closure comes back out (`None` if the task is not the crate's proxy's,
    /// or has ended already).
    fn reject(&self) -> Option<Box<dyn Any + Send>>;
}

/// A task whose state is shared (a submitted task's handle sees it too): the
/// [`Task`] holds one reference.
impl<R: Runnable> Runnable for Arc<R> {
    fn run(&self, body_done: &dyn Fn()) {
        (**self).run(body_done)
    }
    fn abandon(&self, reason: String) {
        (**self).abandon(reason)
    }
    fn discard(&self) {
        (**self).discard()
    }
    fn reject(&self) -> Option<Box<dyn Any + Send>> {
        (**self).reject()
    }
}

/// Holds a closure that is taken out exactly once, by its one owner: the
/// [`Task`] that holds it, or for a submitted task whichever of that task
/// and a thread joining its handle the task's state word made the owner.
pub(crate) struct Once<F>(UnsafeCell<ManuallyDrop<F>>);

// SAFETY: the closure is only reached through `Once::take`, whose contract
// gives one caller, once (the closure's one owner). Sharing a `Once` never
// gives two threads access to `F`; moving `F` to the thread that takes it
// needs only `F: Send`.
unsafe impl<F: Send> Sync for Once<F> {}

impl<F> Once<F> {
    pub(crate) fn new(f: F) -> Once<F> {
        Once(UnsafeCell::new(ManuallyDrop::new(f)))
    }

    /// Takes the closure out.
    ///
    /// # Safety
    ///
    /// Called at most once per `Once`, and never while another thread may
    /// call it: by the closure's one owner (the [`Runnable`] methods of the
    /// owning task, or a joiner that took a submitted task out of its
    /// queue).
    pub(crate) unsafe fn take(&self) -> F {
        // SAFETY: the caller guarantees exclusive, single use, so the value
        // is still there and nothing else reads it.
        unsafe { ManuallyDrop::take(&mut *self.0.get()) }
    }
}

/// The sealed side of [`Executor::execute_unboxed`].
pub(crate) mod sealed {
    /// A task of the crate's own proxy before it is put in a [`Task`]: an
    /// executor whose own `spawn` takes closures (rayon's) can run it
    /// directly; a task too large for a `Task`'s inline room then costs
    /// that executor's one allocation instead of two. Only this crate
    /// implements it.
    ///
    /// [`Task`]: super::Task
    pub trait Unboxed: Send + 'static {
        /// Runs the task on the current thread (it catches its own panics,
        /// and those of dropping a closure it does not run). Dropping it
        /// unrun counts it as cancelled, as for a [`Task`].
        ///
        /// [`Task`]: super::Task
        fn run(self);
        /// The same task as a [`Task`](super::Task).
        fn into_task(self) -> super::Task;
    }
}

/// A plain closure: what [`Task::new`] wraps.
struct Plain<F>(Once<F>);

impl<F: FnOnce() + Send + 'static> Runnable for Plain<F> {
    fn run(&self, body_done: &dyn Fn()) {
        // SAFETY: `Runnable`'s contract: the owning task calls one method once.
        let f = unsafe { self.0.take() };
        f();
        body_done();
    }
    fn abandon(&self, _reason: String) {
        // SAFETY: as in `run`.
        drop(unsafe { self.0.take() });
    }
    fn discard(&self) {
        // SAFETY: as in `run`.
        drop(unsafe { self.0.take() });
    }
    fn reject(&self) -> Option<Box<dyn Any + Send>> {
        // SAFETY: as in `run`.
        drop(unsafe { self.0.take() });
        None
    }
}

impl Task {
    /// Wraps a closure as a task.
    pub fn new<F>(f: F) -> Task
    where
        F: FnOnce() + Send + 'static,
    {
        Task::from_runnable(Plain(Once::new(f)))
    }

    /// A task that runs `job`, kept inline if it fits.
    pub(crate) fn from_runnable<R: Runnable>(job: R) -> Task {
        Task {
            inner: ManuallyDrop::new(smallbox!(job)),
        }
    }

    /// Takes the contents out; the task's `Drop` (the cancel) does not run.
    fn into_inner(self) -> Inner {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so the contents
        // are moved out exactly once.
        unsafe { ManuallyDrop::take(&mut this.inner) }
    }

    /// A refused task built by the crate's proxy: counted as rejected, with
    /// its closure; `None` for any other task (which is then dropped unrun).
    pub(crate) fn reject(self) -> Option<Box<dyn Any + Send>> {
        self.into_inner().reject()
    }

    /// Runs the task on the current thread.
    ///
    /// A task submitted through an instrumented executor catches its own panics
    /// (they are counted and reported to whoever joins it); a plain task's panic
    /// propagates to the caller.
    pub fn run(self) {
        self.run_then(&|| {})
    }

    pub(crate) fn run_then(self, body_done: &dyn Fn()) {
        self.into_inner().run(body_done)
    }

    /// Gives the task up without running it because the executor is broken
    /// and will never be able to run it.
    ///
    /// An instrumented task then fails with [`TaskError::Broken`](crate::TaskError::Broken)
    /// carrying `reason`, and is counted as failed with reason `broken`. Use
    /// plain `drop` for work that is discarded on purpose (it counts as
    /// cancelled).
    pub fn abandon(self, reason: impl Into<String>) {
        // First: should the conversion panic, the task is still whole and
        // its drop cancels it.
        let reason = reason.into();
        self.into_inner().abandon(reason)
    }
}

impl Drop for Task {
    /// A task dropped without running counts as cancelled, so no task can
    /// vanish from the counts.
    fn drop(&mut self) {
        // SAFETY: `drop` runs once, and the other ways out (`into_inner`)
        // do not run it.
        let inner = unsafe { ManuallyDrop::take(&mut self.inner) };
        inner.discard();
    }
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task").finish_non_exhaustive()
    }
}

/// Why an executor refused a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The executor was shut down and accepts no new work.
    Shutdown,
    /// The executor's queue is full.
    Full,
    /// The executor can no longer run tasks (for example, its worker
    /// initializer failed).
    Broken,
    /// No worker could be started to run the task: the system refused a new
    /// thread (a process or cgroup thread limit, memory). Nothing was
    /// queued; the executor stays usable and a later submit tries again.
    NoWorker,
    /// The task's input could not be encoded, or is larger than the maximum
    /// frame size (process pools). Nothing was sent; the pool stays usable.
    Serialization,
    /// An argument of the submit is invalid (a zero timeout, say); the
    /// error's detail names it.
    Invalid,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::Shutdown => "the executor is shut down",
            RejectReason::Full => "the executor's queue is full",
            RejectReason::Broken => "the executor is broken and cannot run tasks",
            RejectReason::NoWorker => "no worker thread could be started to run the task",
            RejectReason::Serialization => {
                "the task's input could not be encoded, or is over the maximum frame size"
            }
            RejectReason::Invalid => "an argument of the submit is invalid",
        })
    }
}

/// A task an [`Executor`] refused, handed back to the caller with the reason.
pub struct Rejected {
    task: Task,
    reason: RejectReason,
}

impl Rejected {
    /// Wraps a refused task with the reason it was refused.
    pub fn new(task: Task, reason: RejectReason) -> Rejected {
        Rejected { task, reason }
    }

    /// Why the task was refused.
    pub fn reason(&self) -> RejectReason {
        self.reason
    }

    /// Gives the task back.
    pub fn into_task(self) -> Task {
        self.task
    }
}

impl fmt::Debug for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task rejected: {}", self.reason)
    }
}

impl std::error::Error for Rejected {}

/// Anything that can run a [`Task`] on some thread.
///
/// Implementing it takes one method; the others have defaults. Wrap any
/// executor in an [`InstrumentedExecutorProxy`](crate::InstrumentedExecutorProxy)
/// to get its metrics.
///
/// ```
/// use executor_exporter::{Executor, Rejected, Task};
///
/// /// Runs every task on a fresh thread.
/// struct ThreadPerTask;
///
/// impl Executor for ThreadPerTask {
///     fn execute(&self, task: Task) -> Result<(), Rejected> {
///         std::thread::spawn(move || task.run());
///         Ok(())
///     }
/// }
///
/// let (tx, rx) = std::sync::mpsc::channel();
/// ThreadPerTask.execute(Task::new(move || tx.send(42).unwrap())).unwrap();
/// assert_eq!(rx.recv().unwrap(), 42);
/// ```
pub trait Executor {
    /// Runs `task` at some point, or hands it back in [`Rejected`].
    fn execute(&self, task: Task) -> Result<(), Rejected>;

    /// The most tasks this executor runs at once, if it knows.
    fn max_workers(&self) -> Option<usize> {
        None
    }

    /// The capacity of this executor's queue (tasks accepted and not yet
    /// started), if it is bounded. An
    /// [`InstrumentedExecutorProxy`](crate::InstrumentedExecutorProxy)
    /// adds it to the `queue_capacity` gauge while it lives. The default,
    /// `None`, is an unbounded queue (the gauge has no sample for it).
    fn queue_capacity(&self) -> Option<usize> {
        None
    }

    /// The `executor_type` label of this executor's metrics when none is
    /// configured ([`InstrumentedExecutorProxy::from_builder`](crate::InstrumentedExecutorProxy::from_builder)
    /// uses it; an exporter built on its own defaults to `custom`).
    fn executor_type(&self) -> &str {
        "custom"
    }

    /// Stops accepting tasks, waits for accepted ones to finish and releases
    /// the workers. Must be idempotent. The default does nothing.
    fn shutdown(&self) {}

    /// Stops accepting tasks, without waiting for anything: the first step
    /// of [`shutdown`](Self::shutdown), which must still be called. A submit
    /// blocked waiting for room in a full queue wakes and is refused with
    /// [`RejectReason::Shutdown`]; accepted tasks still run. An
    /// [`InstrumentedExecutorProxy`](crate::InstrumentedExecutorProxy) calls
    /// it as its shutdown begins, before it waits for the tasks. Must be
    /// idempotent. The default does nothing.
    fn close(&self) {}

    /// True when the calling thread is one of this executor's workers. An
    /// [`InstrumentedExecutorProxy`](crate::InstrumentedExecutorProxy)
    /// dropped or shut down on such a thread (say, by the result of a task
    /// holding the last handle) does not wait for its tasks there: the tasks
    /// still queued may need that very thread. The default, false, suits
    /// executors whose workers never drop the proxy.
    fn is_worker_thread(&self) -> bool {
        false
    }

    /// Runs a task of the crate's instrumented proxy before it is put in a
    /// [`Task`].
    ///
    /// Not for use outside the crate (its argument's trait is sealed): the
    /// default puts it in a `Task` and calls [`execute`](Self::execute);
    /// the executors built into the crate whose own `spawn` allocates
    /// anyway (rayon's pool) run it from that one allocation. (`Arc<E>` and
    /// `&E` take the default: they cannot forward it for an unsized `E`.)
    #[doc(hidden)]
    fn execute_unboxed<U: sealed::Unboxed>(&self, task: U) -> Result<(), Rejected>
    where
        Self: Sized,
    {
        self.execute(task.into_task())
    }
}

/// `Executor` for a pointer to one: every method is the pointee's.
macro_rules! forward_executor {
    ($($ptr:ty),*) => {$(
        impl<E: Executor + ?Sized> Executor for $ptr {
            fn execute(&self, task: Task) -> Result<(), Rejected> {
                (**self).execute(task)
            }
            fn max_workers(&self) -> Option<usize> {
                (**self).max_workers()
            }
            fn queue_capacity(&self) -> Option<usize> {
                (**self).queue_capacity()
            }
            fn executor_type(&self) -> &str {
                (**self).executor_type()
            }
            fn shutdown(&self) {
                (**self).shutdown()
            }
            fn close(&self) {
                (**self).close()
            }
            fn is_worker_thread(&self) -> bool {
                (**self).is_worker_thread()
            }
        }
    )*};
}

forward_executor!(std::sync::Arc<E>, &E);

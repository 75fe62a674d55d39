//! The [`Executor`] trait every pool implements, and the [`Task`] it runs.

use std::any::{Any, TypeId};
use std::cell::{Cell, UnsafeCell};
use std::fmt;
use std::mem::ManuallyDrop;

use smallbox::space::S4;
use smallbox::{smallbox, SmallBox};

use crate::error::RejectReason;
use crate::task::{TaskKey, Ticket};

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
    /// What the task runs, inline when it fits in four words (a closure of
    /// up to four words, given to [`Task::new`] or to the proxy's
    /// [`spawn`](crate::InstrumentedExecutorProxy::spawn), or the `Arc` of a
    /// submitted task's shared state), boxed otherwise: a small task handed
    /// to a queue allocates nothing beyond the queue's own slot. Taken out
    /// exactly once, by `run`, `abandon`, `reject` or the drop.
    inner: ManuallyDrop<Inner>,
    /// The life of a task without a handle (`spawn`, or a `Task` given to
    /// an instrumented proxy's [`Executor::execute`]), beside its closure
    /// rather than around it: the proxy's bookkeeping never moves the
    /// closure into a new allocation. Ended exactly once, with `inner`.
    ticket: Option<Ticket>,
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
    /// closure comes back out (`None` if the task has ended already).
    fn reject(&self) -> Option<Box<dyn Any + Send>>;
    /// The key of the admitted task this is, for one that carries it here
    /// rather than in a ticket (a submitted task's shared state).
    fn key(&self) -> Option<TaskKey> {
        None
    }
    /// The type of the body inside, where it is a plain closure or body.
    fn body_type(&self) -> Option<TypeId> {
        None
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

/// What a task runs: the user's closure, or (feature `tracing`) that
/// closure inside the submitter's span. The crate's tasks hold a `Body`
/// rather than a closure so that a refused one hands back the very value
/// it was given, which a closure around it could not.
pub(crate) trait Body<T>: Send + 'static {
    /// True for the body of a `map`'s item: refused because the queue is
    /// full, the task is not counted as rejected, as the map submits the
    /// item again.
    const QUIET_WHEN_FULL: bool = false;

    /// Runs the body on this thread.
    fn call(self) -> T;
}

impl<T, F: FnOnce() -> T + Send + 'static> Body<T> for F {
    #[inline(always)]
    fn call(self) -> T {
        self()
    }
}

/// A task wrapped in another one (by an instrumented proxy whose ticket
/// cannot go in the task's own slot): a refused one comes back as itself.
impl Body<()> for Task {
    #[inline]
    fn call(self) {
        self.run()
    }
}

/// A plain closure: what [`Task::new`] wraps.
struct Plain<F>(Once<F>);

impl<F: Body<()>> Runnable for Plain<F> {
    fn run(&self, body_done: &dyn Fn()) {
        // SAFETY: `Runnable`'s contract: the owning task calls one method once.
        let f = unsafe { self.0.take() };
        f.call();
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
        Some(Box::new(unsafe { self.0.take() }))
    }
    fn body_type(&self) -> Option<TypeId> {
        Some(TypeId::of::<F>())
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
            ticket: None,
        }
    }

    /// A task without a handle: `f` run under `ticket`, which ends it.
    pub(crate) fn detached<F: Body<()>>(f: F, ticket: Ticket) -> Task {
        Task {
            inner: ManuallyDrop::new(smallbox!(Plain(Once::new(f)))),
            ticket: Some(ticket),
        }
    }

    /// Gives this task `ticket` to end it with, unless it has one already
    /// (it came from another instrumented proxy's `spawn` or `execute`):
    /// then `ticket` comes back. In place, so the task is not moved.
    #[inline]
    pub(crate) fn attach(&mut self, ticket: Ticket) -> Option<Ticket> {
        if self.ticket.is_some() {
            return Some(ticket);
        }
        self.ticket = Some(ticket);
        None
    }

    /// Takes the ticket off the task, which is then as it was before
    /// [`attach`](Self::attach).
    pub(crate) fn detach_ticket(mut self) -> (Task, Option<Ticket>) {
        let ticket = self.ticket.take();
        (self, ticket)
    }

    /// Takes the contents out; the task's `Drop` (the cancel) does not run.
    fn into_parts(self) -> (Inner, Option<Ticket>) {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so the contents
        // are moved out exactly once.
        unsafe {
            (
                ManuallyDrop::take(&mut this.inner),
                std::ptr::read(&this.ticket),
            )
        }
    }

    /// True if this is the admitted task `wanted` names: its key, through
    /// its ticket or its contents' own (a submitted task's), and where given
    /// the type of its body.
    pub(crate) fn is(&self, wanted: Wanted) -> bool {
        let (key, body) = wanted;
        let keyed =
            self.ticket.as_ref().is_some_and(|t| t.key() == key) || self.inner.key() == Some(key);
        keyed && body.is_none_or(|body| self.inner.body_type() == Some(body))
    }

    /// A refused task built by the crate's proxy: counted as rejected, with
    /// its closure; `None` for any other task (which is then dropped unrun).
    pub(crate) fn reject(self) -> Option<Box<dyn Any + Send>> {
        let (inner, ticket) = self.into_parts();
        if let Some(ticket) = ticket {
            ticket.refuse();
        }
        inner.reject()
    }

    /// Runs the task on the current thread.
    ///
    /// A task submitted through an instrumented executor catches its own panics
    /// (they are counted and reported to whoever joins it); a plain task's panic
    /// propagates to the caller.
    pub fn run(self) {
        self.run_then(&|| {})
    }

    #[inline]
    pub(crate) fn run_then(self, body_done: &dyn Fn()) {
        match self.into_parts() {
            (inner, None) => inner.run(body_done),
            (inner, Some(ticket)) => {
                let contents = Contents(ManuallyDrop::new(inner));
                ticket.run(move || contents.run(), body_done)
            }
        }
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
        let (inner, ticket) = self.into_parts();
        let _end = ticket.map(Ticket::fail_broken_on_drop);
        inner.abandon(reason)
    }
}

impl Drop for Task {
    /// A task dropped without running counts as cancelled, so no task can
    /// vanish from the counts.
    fn drop(&mut self) {
        // SAFETY: `drop` runs once, and the other ways out (`into_parts`)
        // do not run it.
        let inner = unsafe { ManuallyDrop::take(&mut self.inner) };
        let ticket = self.ticket.take();
        let task = Task {
            inner: ManuallyDrop::new(inner),
            ticket,
        };
        if let Some(task) = rescued(task) {
            let (inner, ticket) = task.into_parts();
            let _end = ticket.map(Ticket::cancel_on_drop);
            inner.discard();
        }
    }
}

/// What [`rescue`] looks for: a task's key, and the type of its body where
/// the key alone may be shared (see [`TaskKey`]).
pub(crate) type Wanted = (TaskKey, Option<TypeId>);

thread_local! {
    /// The task [`rescue`] looks for on this thread while it drops another
    /// task, and where it is put once found.
    static RESCUE: (Cell<Option<Wanted>>, Cell<Option<Task>>) =
        const { (Cell::new(None), Cell::new(None)) };
}

/// Gets the admitted task `key` back out of `other`, a task an executor
/// handed back in its place: an executor that wraps each task in one of
/// its own before passing it on has only its wrapper to hand back when the
/// executor beneath refuses. `other` is dropped; if the task is inside it
/// (dropped with it, on this thread), it is kept whole instead of being
/// cancelled, and returned. `None` if it was not there: the executor kept
/// it, ran it, or dropped it elsewhere, and it ends (or has ended) there.
pub(crate) fn rescue(other: Task, wanted: Wanted) -> Option<Task> {
    /// What an enclosing rescue on this thread was looking for (a drop may
    /// itself submit, and be refused), put back when this one ends, also
    /// when a drop panics.
    struct Enclosing(Option<(Option<Wanted>, Option<Task>)>);
    impl Enclosing {
        /// Puts it back, and returns what this rescue found.
        fn put_back(&mut self) -> Option<Task> {
            let (wanted, found) = self.0.take()?;
            RESCUE
                .try_with(|rescue| {
                    rescue.0.set(wanted);
                    rescue.1.replace(found)
                })
                .ok()
                .flatten()
        }
    }
    impl Drop for Enclosing {
        fn drop(&mut self) {
            drop(self.put_back());
        }
    }
    let Ok(mut enclosing) = RESCUE.try_with(|(looked_for, found)| {
        Enclosing(Some((looked_for.replace(Some(wanted)), found.take())))
    }) else {
        // The thread is exiting: the task is dropped (cancelled) with `other`.
        drop(other);
        return None;
    };
    drop(other);
    enclosing.put_back()
}

/// A task being dropped: kept (`None` returned) if a [`rescue`] on this
/// thread is looking for it, else handed back to be cancelled.
#[cold]
fn rescued(task: Task) -> Option<Task> {
    let Ok(Some(wanted)) = RESCUE.try_with(|(wanted, _)| wanted.get()) else {
        return Some(task);
    };
    if !task.is(wanted) {
        return Some(task);
    }
    RESCUE.with(|(wanted, found)| {
        // Found once: a second task with the same key is dropped as usual.
        wanted.set(None);
        found.set(Some(task));
    });
    None
}

/// A task's contents without its ticket, while the ticket runs them:
/// dropped unrun (a `shutdown_now` cancel), they are discarded as a task's
/// are.
struct Contents(ManuallyDrop<Inner>);

impl Contents {
    #[inline]
    fn run(self) {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so the contents
        // are moved out exactly once.
        unsafe { ManuallyDrop::take(&mut this.0) }.run(&|| {})
    }
}

impl Drop for Contents {
    fn drop(&mut self) {
        // SAFETY: `drop` runs once, and `run` does not run it.
        unsafe { ManuallyDrop::take(&mut self.0) }.discard();
    }
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task").finish_non_exhaustive()
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
    ///
    /// An executor that wraps each task in one of its own before passing it
    /// on (`Task::new(move || { setup(); task.run() })`) hands back its
    /// wrapper when the executor beneath refuses. An
    /// [`InstrumentedExecutorProxy`](crate::InstrumentedExecutorProxy) above
    /// it drops that wrapper and takes its own task back as it is dropped,
    /// so the refusal reaches the caller as usual. A task handed back in
    /// place of one the executor kept counts as accepted: the kept one ends
    /// when the executor runs or drops it.
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

#[cfg(all(test, not(loom), target_pointer_width = "64"))]
mod layout {
    use super::*;

    /// Four words of captures: the most a closure may hold and stay inline.
    fn four_words() -> impl FnOnce() + Send + 'static {
        let words = [1u64, 2, 3, 4];
        move || {
            std::hint::black_box(words);
        }
    }

    /// A closure of up to four words is stored inline, given to
    /// `Task::new` or spawned through a proxy (whose ticket has its own
    /// slot), so handing it to a queue allocates nothing; a `Task` is eight
    /// words.
    #[test]
    fn a_closure_of_four_words_is_stored_inline() {
        assert_eq!(std::mem::size_of::<Task>(), 64);
        let task = Task::new(four_words());
        assert!(!task.inner.is_heap(), "a four-word Task::new spills");
        drop(task);

        let exporter = crate::metrics::ExecutorExporter::builder()
            .registry(prometheus::Registry::new())
            .build()
            .unwrap();
        let acct = crate::sync::Arc::new(crate::task::Accounting::new(exporter.series().clone()));
        assert!(acct.admit());
        let task = Task::detached(four_words(), Ticket::new(&acct));
        assert!(!task.inner.is_heap(), "a four-word spawned task spills");
        task.run();
    }

    fn type_of<T: 'static>(_: &T) -> TypeId {
        TypeId::of::<T>()
    }

    /// Two tasks without a handle of one executor submitted at the same
    /// clock tick share a key; the type of the body tells them apart where
    /// they differ, so a rescue never takes a body of another type.
    #[test]
    fn a_task_is_its_key_and_where_keys_repeat_its_bodys_type() {
        let exporter = crate::metrics::ExecutorExporter::builder()
            .registry(prometheus::Registry::new())
            .build()
            .unwrap();
        let acct = crate::sync::Arc::new(crate::task::Accounting::new(exporter.series().clone()));
        assert!(acct.admit() && acct.admit());
        let tick = crate::clock::Clock::now();
        let spawned = || {};
        let spawned_type = type_of(&spawned);
        let other = move || {
            std::hint::black_box(1u8);
        };
        let other_type = type_of(&other);
        let first = Task::detached(spawned, Ticket::at(&acct, tick));
        let second = Task::detached(other, Ticket::at(&acct, tick));
        let key = first.ticket.as_ref().unwrap().key();
        assert_eq!(second.ticket.as_ref().unwrap().key(), key, "the same tick");
        assert!(first.is((key, Some(spawned_type))));
        assert!(
            second.is((key, None)),
            "the key alone cannot tell them apart"
        );
        assert!(!second.is((key, Some(spawned_type))));
        assert!(second.is((key, Some(other_type))));
        first.run();
        second.run();
    }
}

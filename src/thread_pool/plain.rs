//! [`ThreadPool`]: the plain, uninstrumented thread pool.
//!
//! Workers start lazily: a submit starts a new worker only while no worker is
//! idle and fewer than `max_workers` exist, so a pool that runs one task at a
//! time keeps one thread. Tasks wait in one unbounded FIFO channel.
//!
//! With a queue capacity, a submit first takes a place in the pool's [`Room`]
//! and the worker that receives the task gives it back: the channel itself
//! stays unbounded, so a worker's stop message never waits for room (a task
//! that shuts its own full pool down would otherwise wait for itself).
//!
//! A worker that cannot start (the system refuses a thread) costs nothing
//! while another worker runs: the task waits for that one. With no worker at
//! all, the submit hands its task back ([`RejectReason::NoWorker`]) and the
//! next submit tries again.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender};
use crossbeam_utils::CachePadded;

use crate::bounded::{check_queue, FullPolicy, Room};
use crate::error::RejectReason;
use crate::error::{panic_message, BuildError, BuildErrorKind};
use crate::executor::{Executor, Rejected, Task};

#[cfg(test)]
mod tests;

type Hook = Arc<dyn Fn() + Send + Sync + 'static>;

enum Message {
    Run(Task),
    Stop,
}

struct Shared {
    max_workers: usize,
    prefix: String,
    stack_size: Option<usize>,
    initializer: Option<Hook>,
    on_worker_start: Option<Hook>,
    on_worker_exit: Option<Hook>,
    sender: Sender<Message>,
    receiver: Receiver<Message>,
    /// The places of a bounded queue; `None` for an unbounded one.
    room: Option<Room>,
    when_full: FullPolicy,
    /// Workers started (a slot is claimed before the thread is spawned).
    /// Changes only while the pool grows, so it stays in every core's cache.
    workers: AtomicUsize,
    /// Idle credits: a worker adds one when it finishes a task, a submit
    /// takes one instead of starting a new worker. Only while the pool can
    /// still grow: once every worker has started there is no choice to make,
    /// and neither side touches it. Written by workers, so on its own line.
    idle: CachePadded<AtomicUsize>,
    /// Submits between their closed check and their send. Written by
    /// submitters only, so on a line the workers' writes do not touch.
    submitting: CachePadded<AtomicUsize>,
    closed: AtomicBool,
    broken: OnceLock<String>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    /// Every worker has started: a submit has no worker to start, and the
    /// idle credits are not kept.
    fn is_full(&self) -> bool {
        self.workers.load(Ordering::SeqCst) >= self.max_workers
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A plain thread pool: runs [`Task`]s on up to `max_workers` threads that
/// start on demand, and counts nothing.
///
/// Wrap it in an [`InstrumentedExecutorProxy`](crate::InstrumentedExecutorProxy)
/// (or use [`ThreadPoolExecutor`](crate::ThreadPoolExecutor), which does) to
/// get metrics. Dropping the pool waits for every accepted task and joins its
/// threads.
///
/// ```
/// use executor_exporter::{Executor, Task, ThreadPool};
///
/// let pool = ThreadPool::builder().max_workers(2).thread_name_prefix("io").build().unwrap();
/// let (tx, rx) = std::sync::mpsc::channel();
/// pool.execute(Task::new(move || {
///     tx.send(std::thread::current().name().unwrap().to_owned()).unwrap();
/// }))
/// .unwrap();
/// assert_eq!(rx.recv().unwrap(), "io-0");
/// ```
pub struct ThreadPool {
    shared: Arc<Shared>,
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPool")
            .field("max_workers", &self.shared.max_workers)
            .field("workers", &self.workers())
            .field("prefix", &self.shared.prefix)
            .field("queue_capacity", &self.queue_capacity())
            .finish_non_exhaustive()
    }
}

/// Options of a [`ThreadPool`]; [`build`](ThreadPoolBuilder::build) checks them.
#[derive(Default)]
pub struct ThreadPoolBuilder {
    max_workers: Option<usize>,
    prefix: Option<String>,
    stack_size: Option<usize>,
    initializer: Option<Hook>,
    on_worker_start: Option<Hook>,
    on_worker_exit: Option<Hook>,
    queue_capacity: Option<usize>,
    when_full: Option<FullPolicy>,
}

impl fmt::Debug for ThreadPoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPoolBuilder")
            .field("max_workers", &self.max_workers)
            .field("thread_name_prefix", &self.prefix)
            .field("stack_size", &self.stack_size)
            .field("initializer", &self.initializer.is_some())
            .field("queue_capacity", &self.queue_capacity)
            .field("when_full", &self.when_full)
            .finish_non_exhaustive()
    }
}

fn next_pool_number() -> usize {
    static POOLS: AtomicUsize = AtomicUsize::new(0);
    POOLS.fetch_add(1, Ordering::Relaxed)
}

impl ThreadPoolBuilder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most threads the pool starts (default: the number of CPUs this
    /// process may use). 0 is an error at [`build`](Self::build).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n);
        self
    }

    /// Threads are named `{prefix}-{i}` for `i` in `0..max_workers` (default
    /// prefix: `pool{n}`, unique per pool in the process). A prefix holding a
    /// NUL byte is an error at [`build`](Self::build): thread names cannot
    /// hold one.
    pub fn thread_name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The stack size of each worker thread, in bytes (default: the standard
    /// library's). A size the system cannot give makes each submit that finds
    /// no worker fail with [`RejectReason::NoWorker`].
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// Runs in each worker before its first task. If it panics, the pool is
    /// broken: queued tasks are abandoned with the panic message and every
    /// later submit is rejected with [`RejectReason::Broken`].
    pub fn initializer<F>(mut self, f: F) -> Self
    where
        F: Fn() + Send + Sync + 'static,
    {
        self.initializer = Some(Arc::new(f));
        self
    }

    /// Runs in each worker after its initializer succeeded: the hook to count
    /// started workers (see
    /// [`ExecutorExporter::worker_started`](crate::ExecutorExporter::worker_started)).
    pub fn on_worker_start<F>(mut self, f: F) -> Self
    where
        F: Fn() + Send + Sync + 'static,
    {
        self.on_worker_start = Some(Arc::new(f));
        self
    }

    /// Runs in each worker whose initializer succeeded, as its thread exits
    /// (at shutdown, or if the worker unwinds): the hook to count workers
    /// alive (see
    /// [`ExecutorExporter::worker_stopped`](crate::ExecutorExporter::worker_stopped)).
    /// A panic in it is caught.
    pub fn on_worker_exit<F>(mut self, f: F) -> Self
    where
        F: Fn() + Send + Sync + 'static,
    {
        self.on_worker_exit = Some(Arc::new(f));
        self
    }

    /// Bounds the queue to `n` tasks: tasks accepted and not yet taken by a
    /// worker (a running task takes no place). A submit that finds the
    /// queue full does what [`when_full`](Self::when_full) says: by default
    /// it is refused with [`RejectReason::Full`], the task handed back.
    /// Default: unbounded. 0 is an error at [`build`](Self::build): for a
    /// hand-off with no queue at all, use a capacity of 1.
    ///
    /// A task handed to an idle worker, or to a worker the submit starts,
    /// still passes through the queue: it holds its place until that worker
    /// takes it, a moment later.
    ///
    /// ```
    /// use executor_exporter::{Executor, RejectReason, Task, ThreadPool};
    ///
    /// let pool = ThreadPool::builder().max_workers(1).queue_capacity(1).build()?;
    /// let (started, running) = std::sync::mpsc::channel();
    /// let (release, gate) = std::sync::mpsc::channel::<()>();
    /// pool.execute(Task::new(move || {
    ///     started.send(()).unwrap();
    ///     let _ = gate.recv();
    /// }))?;
    /// running.recv()?; // the worker runs it: the queue is empty
    /// pool.execute(Task::new(|| ()))?; // takes the one place
    /// let refused = pool.execute(Task::new(|| ())).unwrap_err();
    /// assert_eq!(refused.reason(), RejectReason::Full);
    /// release.send(())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = Some(n);
        self
    }

    /// What a submit does when the bounded queue is full (default:
    /// [`FullPolicy::Reject`]); see [`FullPolicy`]. Needs a
    /// [`queue_capacity`](Self::queue_capacity): without one,
    /// [`build`](Self::build) fails.
    ///
    /// With [`FullPolicy::CallerRuns`] the task runs on the submitting
    /// thread; a panic in it is caught there, as a worker would catch it.
    pub fn when_full(mut self, policy: FullPolicy) -> Self {
        self.when_full = Some(policy);
        self
    }

    pub(crate) fn check(&self) -> Result<(), BuildError> {
        check_queue(self.queue_capacity, self.when_full)?;
        if self.max_workers == Some(0) {
            return Err(BuildError::new(BuildErrorKind::ZeroWorkers));
        }
        if self.stack_size == Some(0) {
            return Err(BuildError::new(BuildErrorKind::ZeroBound("stack_size")));
        }
        if let Some(prefix) = self.prefix.as_ref().filter(|p| p.contains('\0')) {
            return Err(BuildError::new(BuildErrorKind::ThreadName(
                "thread_name_prefix",
                prefix.clone(),
            )));
        }
        Ok(())
    }

    /// Checks the options and builds the pool. No thread starts until the
    /// first task is submitted.
    pub fn build(self) -> Result<ThreadPool, BuildError> {
        self.check()?;
        let max_workers = self.max_workers.unwrap_or_else(|| num_cpus::get().max(1));
        let (sender, receiver) = crossbeam_channel::unbounded();
        let prefix = self
            .prefix
            .unwrap_or_else(|| format!("pool{}", next_pool_number()));
        Ok(ThreadPool {
            shared: Arc::new(Shared {
                max_workers,
                prefix,
                stack_size: self.stack_size,
                initializer: self.initializer,
                on_worker_start: self.on_worker_start,
                on_worker_exit: self.on_worker_exit,
                sender,
                receiver,
                room: self.queue_capacity.map(Room::new),
                when_full: self.when_full.unwrap_or_default(),
                workers: AtomicUsize::new(0),
                idle: CachePadded::new(AtomicUsize::new(0)),
                submitting: CachePadded::new(AtomicUsize::new(0)),
                closed: AtomicBool::new(false),
                broken: OnceLock::new(),
                handles: Mutex::new(Vec::new()),
            }),
        })
    }
}

impl ThreadPool {
    /// A pool of at most `max_workers` threads, with the other defaults.
    pub fn new(max_workers: usize) -> Result<ThreadPool, BuildError> {
        ThreadPoolBuilder::new().max_workers(max_workers).build()
    }

    /// Starts building a pool.
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder::new()
    }

    /// The most threads this pool starts.
    pub fn max_workers(&self) -> usize {
        self.shared.max_workers
    }

    /// The capacity of the queue, if it is bounded
    /// ([`ThreadPoolBuilder::queue_capacity`]).
    pub fn queue_capacity(&self) -> Option<usize> {
        self.shared.room.as_ref().map(Room::capacity)
    }

    /// Threads started so far (they live until shutdown).
    pub fn workers(&self) -> usize {
        self.shared.workers.load(Ordering::SeqCst)
    }

    /// Why the pool is broken, if it is.
    pub fn broken_reason(&self) -> Option<&str> {
        self.shared.broken.get().map(String::as_str)
    }

    /// Stops accepting tasks, runs every accepted one, and joins the threads.
    /// Idempotent; also what `Drop` does.
    pub fn shutdown(&self) {
        let shared = &self.shared;
        // Submits waiting for room give up, so the wait below ends.
        self.close();
        // A submit that passed its closed check before the store above is
        // still about to send; let it, so its task is queued before the stops.
        while shared.submitting.load(Ordering::SeqCst) > 0 {
            thread::yield_now();
        }
        let handles = std::mem::take(&mut *lock(&shared.handles));
        let taken = handles.len();
        for _ in &handles {
            let _ = shared.sender.send(Message::Stop);
        }
        let current = thread::current().id();
        let mut all_joined = true;
        for handle in handles {
            // A task that shuts its own pool down cannot join its own thread.
            if handle.thread().id() != current {
                let _ = handle.join();
            } else {
                all_joined = false;
            }
        }
        // A concurrent shutdown took the handles and is joining them: the
        // stops it sent are still in the channel, for its workers. Draining
        // here would take them, and that shutdown would wait forever.
        if !all_joined || (taken == 0 && shared.workers.load(Ordering::SeqCst) > 0) {
            return;
        }
        // No worker is left to run what remains (only possible if threads
        // failed to start): give it up rather than lose it silently.
        abandon_queued(
            shared,
            shared.broken.get().map_or(NO_WORKER, String::as_str),
        );
    }

    /// Stops accepting tasks, without waiting: submits waiting for room in
    /// a full queue are refused with [`RejectReason::Shutdown`]; the
    /// accepted tasks still run. [`shutdown`](Self::shutdown) does this
    /// first.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(room) = &self.shared.room {
            room.close(RejectReason::Shutdown);
        }
    }

    /// Starts worker `index`, whose slot in `workers` the caller claimed;
    /// gives the slot back if the thread cannot start.
    fn spawn_worker(&self, index: usize) -> std::io::Result<()> {
        let shared = &self.shared;
        let mut builder = thread::Builder::new().name(format!("{}-{}", shared.prefix, index));
        if let Some(size) = shared.stack_size {
            builder = builder.stack_size(size);
        }
        let worker_shared = shared.clone();
        #[cfg(test)]
        let allowed = tests::spawn_fault::inject();
        #[cfg(not(test))]
        let allowed = Ok(());
        let mut handles = lock(&shared.handles);
        match allowed.and_then(|()| builder.spawn(move || worker_loop(&worker_shared))) {
            Ok(handle) => {
                handles.push(handle);
                Ok(())
            }
            Err(e) => {
                shared.workers.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }
}

/// Why a task queued when no worker could start ends unrun.
const NO_WORKER: &str = "no worker thread could be started";

/// A worker could not start and none is left: fails the tasks queued by
/// submits that counted on it (they saw every worker slot taken, this one
/// included). They were accepted, so they end as abandoned with the error
/// rather than wait for a worker. One sent so late that this drain misses
/// it is not lost either: the next submit starts a worker for it, or
/// `shutdown` abandons it.
fn abandon_stranded(shared: &Shared, error: &std::io::Error) {
    abandon_queued(shared, &format!("{NO_WORKER}: {error}"));
}

/// Takes every task out of the queue and abandons it with `reason`.
fn abandon_queued(shared: &Shared, reason: &str) {
    while let Ok(message) = shared.receiver.try_recv() {
        if let Message::Run(task) = message {
            if let Some(room) = &shared.room {
                room.release();
            }
            task.abandon(reason);
        }
    }
}

fn break_pool(shared: &Shared, reason: String) {
    let _ = shared.broken.set(reason);
    let reason = shared.broken.get().cloned().unwrap_or_default();
    if let Some(room) = &shared.room {
        room.close(RejectReason::Broken);
    }
    // Submits that passed their broken check are about to send: wait for them
    // so their tasks are drained below, not stranded.
    while shared.submitting.load(Ordering::SeqCst) > 0 {
        thread::yield_now();
    }
    abandon_queued(shared, &reason);
}

thread_local! {
    /// The pool whose worker this thread is, if it is one.
    static WORKER_OF: std::cell::Cell<*const Shared> =
        const { std::cell::Cell::new(std::ptr::null()) };
}

fn worker_loop(shared: &Shared) {
    let _ = WORKER_OF.try_with(|w| w.set(shared as *const Shared));
    if let Some(init) = &shared.initializer {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| init())) {
            let message = panic_message(&*payload);
            eprintln!(
                "executor-exporter: worker initializer panicked, the pool is broken: {message}"
            );
            break_pool(
                shared,
                format!("the worker initializer panicked: {message}"),
            );
            return;
        }
    }
    if let Some(hook) = &shared.on_worker_start {
        let _ = catch_unwind(AssertUnwindSafe(|| hook()));
    }
    // A guard, so the exit is reported however the loop ends.
    let _exit = shared.on_worker_exit.as_deref().map(OnExit);
    match &shared.room {
        None => run_tasks(shared, || ()),
        Some(room) => run_tasks(shared, || room.release()),
    }
}

/// Runs what the channel brings until a stop; `taken` is called as each
/// task leaves the queue (a closure, so an unbounded pool's loop has no
/// branch for it).
#[inline(always)]
fn run_tasks(shared: &Shared, taken: impl Fn()) {
    while let Ok(message) = shared.receiver.recv() {
        match message {
            Message::Run(task) => {
                taken();
                // The idle credit is given as soon as the task's code is done,
                // before its result is published (see `Runnable::run`).
                let credited = std::cell::Cell::new(false);
                let mark_idle = || {
                    if !credited.replace(true) && !shared.is_full() {
                        shared.idle.fetch_add(1, Ordering::SeqCst);
                    }
                };
                // An instrumented task catches its own panics; a plain one's
                // panic must not take the worker down with it.
                let _ = catch_unwind(AssertUnwindSafe(|| task.run_then(&mark_idle)));
                mark_idle();
            }
            Message::Stop => return,
        }
    }
}

/// Runs a worker's exit hook when dropped.
struct OnExit<'a>(&'a (dyn Fn() + Send + Sync));

impl Drop for OnExit<'_> {
    fn drop(&mut self) {
        let _ = catch_unwind(AssertUnwindSafe(|| (self.0)()));
    }
}

/// Runs a task on the thread that submitted it (caller-runs), catching its
/// panic as a worker would.
fn run_here(task: Task) {
    let _ = catch_unwind(AssertUnwindSafe(|| task.run()));
}

/// One submit in progress, counted in `submitting` until dropped.
struct Submitting<'a>(&'a AtomicUsize);

impl Drop for Submitting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Executor for ThreadPool {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        let shared = &self.shared;
        shared.submitting.fetch_add(1, Ordering::SeqCst);
        // Released however this returns, so `shutdown` never waits for a
        // submit that unwound.
        let _submitting = Submitting(&shared.submitting);
        let refuse = if shared.broken.get().is_some() {
            Some(RejectReason::Broken)
        } else if shared.closed.load(Ordering::SeqCst) {
            Some(RejectReason::Shutdown)
        } else {
            None
        };
        if let Some(reason) = refuse {
            return Err(Rejected::new(task, reason));
        }
        if let Some(room) = &shared.room {
            if !room.try_take() {
                return self.queue_full(task, _submitting);
            }
        }
        self.hand_over(task)
    }

    fn max_workers(&self) -> Option<usize> {
        Some(self.shared.max_workers)
    }

    fn queue_capacity(&self) -> Option<usize> {
        ThreadPool::queue_capacity(self)
    }

    fn executor_type(&self) -> &str {
        "thread_pool"
    }

    fn is_worker_thread(&self) -> bool {
        let me = &*self.shared as *const Shared;
        WORKER_OF
            .try_with(|w| std::ptr::eq(w.get(), me))
            .unwrap_or(false)
    }

    fn shutdown(&self) {
        ThreadPool::shutdown(self)
    }

    fn close(&self) {
        ThreadPool::close(self)
    }
}

impl ThreadPool {
    /// A submit found the bounded queue full: what `when_full` says.
    /// `submitting` is the submit's mark, which shutdown waits on.
    #[cold]
    #[inline(never)]
    fn queue_full(&self, task: Task, submitting: Submitting<'_>) -> Result<(), Rejected> {
        let Some(room) = &self.shared.room else {
            return Err(Rejected::new(task, RejectReason::Full));
        };
        let wait = match self.shared.when_full {
            FullPolicy::Block => None,
            FullPolicy::BlockFor(timeout) => Some(timeout),
            FullPolicy::CallerRuns => {
                // Not a submit in progress any more: a shutdown must not
                // wait for this task (which may shut the pool down itself).
                drop(submitting);
                run_here(task);
                return Ok(());
            }
            _ => return Err(Rejected::new(task, RejectReason::Full)),
        };
        // A worker waiting for room in its own queue could wait for itself
        // (and every worker doing so would wait forever).
        if Executor::is_worker_thread(self) {
            return Err(Rejected::new(task, RejectReason::Full));
        }
        match room.wait_take(wait) {
            Ok(()) => self.hand_over(task),
            Err(reason) => Err(Rejected::new(task, reason)),
        }
    }

    /// Sends an admitted task (its place taken, if the queue is bounded).
    #[inline(always)]
    fn hand_over(&self, task: Task) -> Result<(), Rejected> {
        let shared = &self.shared;
        // Reuse an idle worker if there is one; otherwise start one if
        // allowed, before the task is sent, so that a task no worker can run
        // goes back to its caller.
        let claimed_idle = shared.is_full()
            || shared
                .idle
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if !claimed_idle {
            if let Ok(index) =
                shared
                    .workers
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                        (n < shared.max_workers).then_some(n + 1)
                    })
            {
                if let Err(e) = self.spawn_worker(index) {
                    // Another worker, started or starting, runs the task;
                    // with none, nobody would.
                    if shared.workers.load(Ordering::SeqCst) == 0 {
                        if let Some(room) = &shared.room {
                            room.release();
                        }
                        abandon_stranded(shared, &e);
                        return Err(Rejected::new(task, RejectReason::NoWorker));
                    }
                }
            }
        }
        // The channel is unbounded and the pool holds a receiver: send
        // cannot fail.
        let _ = shared.sender.send(Message::Run(task));
        Ok(())
    }
}

impl Drop for ThreadPool {
    /// Waits for every accepted task, then joins the threads.
    fn drop(&mut self) {
        self.shutdown();
    }
}

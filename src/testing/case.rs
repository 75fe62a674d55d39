//! Runs one [`Workload`] against one executor behind a proxy, and says what
//! went wrong.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use prometheus::Registry;

use super::config::CheckConfig;
use super::workload::{Op, TaskKind, Workload};
use crate::error::panic_message;
use crate::{
    Executor, ExecutorExporter, FailureReason, InstrumentedExecutorProxy, RejectReason, TaskError,
    TaskHandle, TaskState,
};

/// The payload of the panics the workload's tasks raise on purpose (the
/// kit's panic hook keeps them quiet).
pub(super) const PLANNED_PANIC: &str = "executor_exporter::testing: a planned panic";
const PLANNED_ERROR: &str = "executor_exporter::testing: a planned error";

/// What a task of the workload returns.
type Output = Result<u32, &'static str>;
type Proxy<E> = InstrumentedExecutorProxy<E>;

/// Runs `workload` against `executor` and returns what went wrong (nothing
/// when the executor passed). `progress` is kept at the index of the
/// operation running, `ops.len()` for the closing shutdown and checks, and
/// `ops.len() + 1` for the proxy's drop, so a watchdog can say where a case
/// that never returns is stuck.
pub(super) fn run<E>(
    config: &CheckConfig,
    workload: &Workload,
    executor: E,
    progress: &AtomicUsize,
) -> Vec<String>
where
    E: Executor + Send + Sync + 'static,
{
    let builder = ExecutorExporter::builder()
        .exporter_id("check")
        .registry(Registry::new());
    let proxy = match InstrumentedExecutorProxy::from_builder(executor, builder, None) {
        Ok(proxy) => Arc::new(proxy),
        Err(e) => return vec![format!("could not build the exporter: {e}")],
    };
    let mut case = Case {
        config,
        ops: workload.ops(),
        proxy: &proxy,
        deadline: Instant::now().checked_add(config.timeout),
        tracked: Vec::new(),
        spawns: Arc::new(SpawnCounts::default()),
        spawned: 0,
        tally: Tally::default(),
        problems: Vec::new(),
        closed: false,
        executor_shut: false,
        shutdown_now_at: None,
    };
    // A panic out of the executor (its `execute`, on this thread) fails the
    // case like a hang: the proxy's drop would call into the executor
    // again, whose `shutdown` may panic anew while this panic unwinds (a
    // lock the first one poisoned), which aborts the process.
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| case.run(progress))).unwrap_or_else(
        |payload| {
            let at = progress.load(Ordering::SeqCst);
            let name = case.name((at < case.ops.len()).then_some(at));
            let why = format!("the case panicked in {name}: {}", panic_message(&*payload));
            crate::task::drop_quietly(payload);
            Err(Fatal(why))
        },
    );
    match ran {
        Ok(()) => {
            case.finish();
            let problems = std::mem::take(&mut case.problems);
            drop(case);
            progress.store(workload.len() + 1, Ordering::SeqCst);
            // Every task has ended: the drop shuts nothing down that waits.
            drop(proxy);
            problems
        }
        Err(Fatal(why)) => {
            let mut problems = std::mem::take(&mut case.problems);
            problems.push(why);
            drop(case);
            // Tasks the executor still holds point into the proxy's
            // bookkeeping, and its drop would wait for them: it is left
            // behind with whatever thread is stuck in it.
            std::mem::forget(proxy);
            problems
        }
    }
}

/// A task of the workload that has a handle.
struct Tracked {
    /// How the task is named in a problem: `task #3 (op 2: Submit(Ok))`,
    /// numbered as [`Op::Cancel`] counts.
    name: String,
    /// The operation that submitted it.
    op: usize,
    kind: TaskKind,
    handle: TaskHandle<Output>,
    /// How many times its body started.
    runs: Arc<AtomicU32>,
    /// The workload's `cancel()` cancelled it.
    cancelled: bool,
}

/// What the bodies of spawned tasks did (they have no handle to ask).
#[derive(Default)]
struct SpawnCounts {
    completed: AtomicU64,
    panicked: AtomicU64,
}

/// The counts the workload expects, from what its handles, map results and
/// spawned bodies reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    submitted: u64,
    rejected: u64,
    completed: u64,
    panic: u64,
    error: u64,
    broken: u64,
    cancelled: u64,
}

/// The case cannot go on: a wait ran out, or a thread could not start.
struct Fatal(String);

struct Case<'a, E: Executor> {
    config: &'a CheckConfig,
    ops: &'a [Op],
    proxy: &'a Arc<Proxy<E>>,
    /// `None` when the timeout is too large for an `Instant`: no deadline.
    deadline: Option<Instant>,
    tracked: Vec<Tracked>,
    spawns: Arc<SpawnCounts>,
    /// Spawned tasks the executor accepted.
    spawned: u64,
    tally: Tally,
    problems: Vec<String>,
    /// The proxy was shut down: every submit from now on is refused.
    closed: bool,
    /// The wrapped executor's own shutdown ran: it may refuse tasks.
    executor_shut: bool,
    /// The first `ShutdownNow`, which may cancel the tasks before it.
    shutdown_now_at: Option<usize>,
}

impl<E: Executor + Send + Sync + 'static> Case<'_, E> {
    fn run(&mut self, progress: &AtomicUsize) -> Result<(), Fatal> {
        for (i, op) in self.ops.iter().enumerate() {
            progress.store(i, Ordering::SeqCst);
            self.op(i, op)?;
        }
        progress.store(self.ops.len(), Ordering::SeqCst);
        if !self.closed {
            self.shutdown(None, false)?;
        }
        self.join_all()
    }

    /// `op 2 (Submit(Ok))`; the closing shutdown for `None`.
    fn name(&self, op: Option<usize>) -> String {
        match op {
            Some(i) => format!("op {i} ({})", self.ops[i]),
            None => "the closing shutdown".to_owned(),
        }
    }

    fn op(&mut self, i: usize, op: &Op) -> Result<(), Fatal> {
        match op {
            Op::Submit(kind) => {
                let submitted = submit(self.proxy, *kind);
                self.submitted(i, *kind, submitted);
            }
            Op::Spawn(kind) => match spawn(self.proxy, *kind, &self.spawns) {
                Ok(()) => {
                    self.accepted(i);
                    self.spawned += 1;
                }
                Err(reason) => self.rejected(i, reason),
            },
            Op::Cancel(n) => {
                if !self.tracked.is_empty() {
                    let k = n % self.tracked.len();
                    let task = &mut self.tracked[k];
                    // A task the executor dropped is cancelled already, and
                    // `cancel()` says true for it too: that one is not ours.
                    let before = task.handle.state();
                    if task.handle.cancel() && before != TaskState::Cancelled {
                        task.cancelled = true;
                    }
                }
            }
            Op::Map(kinds) => self.map(i, kinds)?,
            Op::Concurrent(threads) => self.concurrent(i, threads)?,
            Op::Join => {
                let proxy = self.proxy.clone();
                self.wait(Some(i), move || proxy.join())?;
            }
            Op::ExecutorShutdown => {
                let proxy = self.proxy.clone();
                self.wait(Some(i), move || Executor::shutdown(proxy.inner()))?;
                self.executor_shut = true;
            }
            Op::Shutdown => self.shutdown(Some(i), false)?,
            Op::ShutdownNow => self.shutdown(Some(i), true)?,
        }
        Ok(())
    }

    fn submitted(&mut self, op: usize, kind: TaskKind, submitted: Submitted) {
        match submitted {
            Ok((handle, runs)) => {
                self.accepted(op);
                let name = format!("task #{} (op {op}: {})", self.tracked.len(), self.ops[op]);
                self.tracked.push(Tracked {
                    name,
                    op,
                    kind,
                    handle,
                    runs,
                    cancelled: false,
                });
            }
            Err(reason) => self.rejected(op, reason),
        }
    }

    fn accepted(&mut self, op: usize) {
        self.tally.submitted += 1;
        if self.closed {
            let name = self.name(Some(op));
            self.problems.push(format!(
                "{name}: a task was accepted after the proxy's shutdown"
            ));
        }
    }

    fn rejected(&mut self, op: usize, reason: RejectReason) {
        self.tally.rejected += 1;
        let name = self.name(Some(op));
        if self.closed {
            if reason != RejectReason::Shutdown {
                self.problems.push(format!(
                    "{name}: a task submitted after shutdown was refused because {reason}, \
                     not because the executor is shut down"
                ));
            }
        } else if !self.executor_shut && !self.config.may_reject {
            self.problems.push(format!(
                "{name}: the executor refused a task before any shutdown ({reason}); \
                 if it may (a bounded queue), say so with CheckConfig::may_reject(true)"
            ));
        }
    }

    fn map(&mut self, op: usize, kinds: &[TaskKind]) -> Result<(), Fatal> {
        let n = kinds.len();
        let kinds: Arc<[TaskKind]> = kinds.into();
        let runs: Arc<[AtomicU32]> = (0..n).map(|_| AtomicU32::new(0)).collect();
        let fallible = kinds.contains(&TaskKind::Err);
        let (proxy, k, r) = (self.proxy.clone(), kinds.clone(), runs.clone());
        let results: Vec<Result<Output, TaskError>> = self.wait(Some(op), move || {
            let body = move |j: usize| run_body(k[j], &r[j]);
            if fallible {
                proxy.map_fallible(body, 0..n).collect()
            } else {
                proxy.map(body, 0..n).collect()
            }
        })?;
        let mut refused = false;
        let yielded = results.len();
        for (j, result) in results.into_iter().enumerate() {
            match result {
                Err(TaskError::Rejected(reason)) => {
                    self.rejected(op, reason);
                    refused = true;
                }
                outcome => {
                    self.accepted(op);
                    let name = format!("item {j} of op {op} ({})", self.ops[op]);
                    let runs = runs[j].load(Ordering::SeqCst);
                    // A map reads every result: nothing of it is cancelled.
                    self.outcome(&name, kinds[j], runs, outcome, false, false);
                }
            }
        }
        if !refused && yielded != n {
            let name = self.name(Some(op));
            self.problems.push(format!(
                "{name}: the map yielded {yielded} results for {n} items"
            ));
        }
        Ok(())
    }

    fn concurrent(&mut self, op: usize, threads: &[Vec<TaskKind>]) -> Result<(), Fatal> {
        let proxy: &Proxy<E> = self.proxy;
        let submitted = std::thread::scope(|s| {
            let mut started = Vec::new();
            for kinds in threads {
                let thread = std::thread::Builder::new()
                    .name("executor-check-submitter".to_owned())
                    .spawn_scoped(s, move || {
                        kinds
                            .iter()
                            .map(|&kind| (kind, submit(proxy, kind)))
                            .collect::<Vec<_>>()
                    })
                    .map_err(|e| Fatal(format!("could not start a submitting thread: {e}")))?;
                started.push(thread);
            }
            let mut all = Vec::new();
            for thread in started {
                match thread.join() {
                    Ok(submitted) => all.extend(submitted),
                    // The executor's `execute` panicked: the case reports it.
                    Err(payload) => std::panic::resume_unwind(payload),
                }
            }
            Ok(all)
        })?;
        for (kind, result) in submitted {
            self.submitted(op, kind, result);
        }
        Ok(())
    }

    /// Shuts the proxy down (`op` is `None` for the closing shutdown); once
    /// it returns, every task must have ended.
    fn shutdown(&mut self, op: Option<usize>, now: bool) -> Result<(), Fatal> {
        let proxy = self.proxy.clone();
        self.wait(op, move || {
            if now {
                proxy.shutdown_now()
            } else {
                proxy.shutdown()
            }
        })?;
        self.closed = true;
        if now && self.shutdown_now_at.is_none() {
            self.shutdown_now_at = op;
        }
        let name = self.name(op);
        let s = self.proxy.snapshot();
        if s.queued != 0 || s.running != 0 {
            self.problems.push(format!(
                "after {name} returned, the snapshot shows {} queued and {} running: \
                 nothing should be left",
                s.queued, s.running
            ));
        }
        for task in &self.tracked {
            if !task.handle.is_finished() {
                self.problems.push(format!(
                    "after {name} returned, {} had not ended",
                    task.name
                ));
            }
        }
        Ok(())
    }

    /// Runs `f` (which may wait for the executor) on a thread of its own,
    /// and gives up at the case's deadline, leaving that thread behind.
    fn wait<T: Send + 'static>(
        &self,
        op: Option<usize>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Fatal> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("executor-check-wait".to_owned())
            .spawn(move || {
                let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
            })
            .map_err(|e| Fatal(format!("could not start a thread: {e}")))?;
        let received = match self.deadline {
            Some(deadline) => rx.recv_timeout(deadline.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(payload)) => Err(Fatal(format!(
                "{} panicked: {}",
                self.name(op),
                panic_message(&*payload)
            ))),
            Err(_) => Err(self.hang(&self.name(op))),
        }
    }

    /// The case ran out of time waiting for `what`.
    fn hang(&self, what: &str) -> Fatal {
        let s = self.proxy.snapshot();
        Fatal(format!(
            "{what} did not return within the case's timeout ({:?}); of the tasks the \
             executor accepted ({}), {} still queued and {} running: it stopped running \
             the tasks it accepted, or a shutdown waits for something that never comes \
             (the executor and its threads are left behind)",
            self.config.timeout, s.submitted, s.queued, s.running
        ))
    }

    /// Waits for every handle's outcome and checks it.
    fn join_all(&mut self) -> Result<(), Fatal> {
        for mut task in std::mem::take(&mut self.tracked) {
            let left = match self.deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            let outcome = match task.handle.join_timeout(left) {
                Err(TaskError::TimedOut) => {
                    return Err(self.hang(&format!("the join of {}", task.name)));
                }
                outcome => outcome,
            };
            let shutdown_now = self.shutdown_now_at.is_some_and(|at| at > task.op);
            let runs = task.runs.load(Ordering::SeqCst);
            self.outcome(
                &task.name,
                task.kind,
                runs,
                outcome,
                task.cancelled,
                shutdown_now,
            );
        }
        Ok(())
    }

    /// Counts one task's outcome and checks it against what the task was
    /// and what the workload did to it.
    fn outcome(
        &mut self,
        name: &str,
        kind: TaskKind,
        runs: u32,
        outcome: Result<Output, TaskError>,
        cancelled_by_workload: bool,
        shutdown_now: bool,
    ) {
        let mut ran = true;
        let expected = match &outcome {
            Ok(Ok(_)) => {
                self.tally.completed += 1;
                matches!(kind, TaskKind::Ok | TaskKind::Sleep(_))
            }
            Ok(Err(_)) => {
                self.tally.error += 1;
                kind == TaskKind::Err
            }
            Err(TaskError::Panicked { message }) => {
                self.tally.panic += 1;
                kind == TaskKind::Panic && message == PLANNED_PANIC
            }
            Err(TaskError::Cancelled) => {
                self.tally.cancelled += 1;
                ran = false;
                if !cancelled_by_workload && !shutdown_now {
                    self.problems.push(format!(
                        "{name} was cancelled, but the workload never cancelled it: the \
                         executor dropped a task it had accepted without running it"
                    ));
                }
                true
            }
            Err(TaskError::Broken { reason }) => {
                self.tally.broken += 1;
                ran = false;
                self.problems.push(format!(
                    "the executor abandoned {name} (Task::abandon: {reason}) instead of running it"
                ));
                true
            }
            Err(other) => {
                ran = false;
                self.problems
                    .push(format!("{name} ended with an unexpected outcome: {other}"));
                true
            }
        };
        if !expected {
            self.problems
                .push(format!("{name} is a {kind} task, but gave {outcome:?}"));
        }
        if ran && runs != 1 {
            self.problems.push(format!(
                "{name} gave a result, but its task started {runs} times"
            ));
        }
        if !ran && runs != 0 {
            self.problems.push(format!(
                "{name} gave {outcome:?}, but its task started {runs} time(s)"
            ));
        }
        if cancelled_by_workload && !matches!(outcome, Err(TaskError::Cancelled)) {
            self.problems.push(format!(
                "cancel() said {name} was cancelled, but it gave {outcome:?}"
            ));
        }
    }

    /// The spawned tasks' part of the tally, then the snapshot against it.
    fn finish(&mut self) {
        let completed = self.spawns.completed.load(Ordering::SeqCst);
        let panicked = self.spawns.panicked.load(Ordering::SeqCst);
        self.tally.completed += completed;
        self.tally.panic += panicked;
        match self.spawned.checked_sub(completed + panicked) {
            Some(unrun) => {
                self.tally.cancelled += unrun;
                if unrun > 0 && self.shutdown_now_at.is_none() {
                    self.problems.push(format!(
                        "{unrun} spawned task(s) that the executor accepted never ran, and no \
                         shutdown_now cancelled them: the executor dropped (or abandoned) them"
                    ));
                }
            }
            None => self.problems.push(format!(
                "spawned tasks ran {} times, but the executor accepted only {}",
                completed + panicked,
                self.spawned
            )),
        }
        let s = self.proxy.snapshot();
        let t = self.tally;
        let pairs = [
            ("submitted", s.submitted, t.submitted),
            ("rejected", s.rejected, t.rejected),
            ("completed", s.completed, t.completed),
            ("failed", s.failed, t.panic + t.error + t.broken),
            ("failed (panic)", s.failures(FailureReason::Panic), t.panic),
            ("failed (error)", s.failures(FailureReason::Error), t.error),
            (
                "failed (broken)",
                s.failures(FailureReason::Broken),
                t.broken,
            ),
            ("cancelled", s.cancelled, t.cancelled),
        ];
        for (what, snapshot, workload) in pairs {
            if snapshot != workload {
                self.problems.push(format!(
                    "{what}: the snapshot says {snapshot}, the workload's handles, map results \
                     and spawned tasks say {workload}"
                ));
            }
        }
        if s.queued != 0 || s.running != 0 {
            self.problems.push(format!(
                "after shutdown the snapshot shows {} queued and {} running",
                s.queued, s.running
            ));
        }
        if let Err(e) = s.check_invariant() {
            self.problems.push(e.to_string());
        }
    }
}

type Submitted = Result<(TaskHandle<Output>, Arc<AtomicU32>), RejectReason>;

/// Submits a task of `kind`; `Err` tasks go through `submit_fallible`.
fn submit<E: Executor>(proxy: &Proxy<E>, kind: TaskKind) -> Submitted {
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let handle = match kind {
        TaskKind::Err => proxy
            .submit_fallible(move || run_body(kind, &r))
            .map_err(|e| e.reason()),
        _ => proxy
            .submit(move || run_body(kind, &r))
            .map_err(|e| e.reason()),
    };
    handle.map(|h| (h, runs))
}

/// Spawns a task of `kind` without a handle; its body reports what it did.
fn spawn<E: Executor>(
    proxy: &Proxy<E>,
    kind: TaskKind,
    counts: &Arc<SpawnCounts>,
) -> Result<(), RejectReason> {
    let counts = counts.clone();
    proxy
        .spawn(move || {
            if kind == TaskKind::Panic {
                counts.panicked.fetch_add(1, Ordering::SeqCst);
                std::panic::panic_any(PLANNED_PANIC);
            }
            if let TaskKind::Sleep(ms) = kind {
                std::thread::sleep(Duration::from_millis(u64::from(ms)));
            }
            counts.completed.fetch_add(1, Ordering::SeqCst);
        })
        .map_err(|e| e.reason())
}

/// The body of a task with a handle or of a map item.
fn run_body(kind: TaskKind, runs: &AtomicU32) -> Output {
    runs.fetch_add(1, Ordering::SeqCst);
    match kind {
        TaskKind::Ok => Ok(0),
        TaskKind::Panic => std::panic::panic_any(PLANNED_PANIC),
        TaskKind::Err => Err(PLANNED_ERROR),
        TaskKind::Sleep(ms) => {
            std::thread::sleep(Duration::from_millis(u64::from(ms)));
            Ok(u32::from(ms))
        }
    }
}

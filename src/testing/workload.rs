//! [`Workload`]: the operations a check runs, and the proptest strategy that
//! generates them.

use std::fmt;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Union};

use super::config::CheckConfig;

/// What a task of a workload does when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskKind {
    /// Returns a value: counted as completed.
    Ok,
    /// Panics: counted as failed with reason `panic`.
    Panic,
    /// Returns `Err` through [`submit_fallible`](crate::InstrumentedExecutorProxy::submit_fallible)
    /// or [`map_fallible`](crate::InstrumentedExecutorProxy::map_fallible): counted as failed with
    /// reason `error` (a spawned task has no result, so there it completes).
    Err,
    /// Sleeps this many milliseconds, then returns a value: counted as
    /// completed.
    Sleep(u8),
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskKind::Ok => f.write_str("Ok"),
            TaskKind::Panic => f.write_str("Panic"),
            TaskKind::Err => f.write_str("Err"),
            TaskKind::Sleep(ms) => write!(f, "Sleep({ms}ms)"),
        }
    }
}

/// One operation of a [`Workload`], done through an
/// [`InstrumentedExecutorProxy`](crate::InstrumentedExecutorProxy) over the
/// executor under test.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Submits a task and keeps its [`TaskHandle`](crate::TaskHandle)
    /// (`submit`, or `submit_fallible` for [`TaskKind::Err`]).
    Submit(TaskKind),
    /// Spawns a task without a handle (`spawn`).
    Spawn(TaskKind),
    /// Cancels the task of handle `i` modulo the handles made so far (in
    /// the order of the submits); nothing when there are none.
    Cancel(usize),
    /// Maps over these items, each item its own task, and reads every result.
    Map(Vec<TaskKind>),
    /// Submits from a few threads at once, one list of tasks per thread.
    Concurrent(Vec<Vec<TaskKind>>),
    /// Waits until every accepted task has ended (`join`).
    Join,
    /// Shuts the wrapped executor down through [`Executor::shutdown`](crate::Executor::shutdown),
    /// as code holding the bare executor does: the tasks it accepted must
    /// still run; it may refuse later ones.
    ExecutorShutdown,
    /// Shuts the proxy down (`shutdown`): accepted tasks finish, later
    /// submits are refused.
    Shutdown,
    /// Shuts the proxy down cancelling the tasks that have not started
    /// (`shutdown_now`).
    ShutdownNow,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Submit(kind) => write!(f, "Submit({kind})"),
            Op::Spawn(kind) => write!(f, "Spawn({kind})"),
            Op::Cancel(i) => write!(f, "Cancel({i})"),
            Op::Map(kinds) => {
                f.write_str("Map(")?;
                write_list(f, kinds)?;
                f.write_str(")")
            }
            Op::Concurrent(threads) => {
                f.write_str("Concurrent([")?;
                for (i, kinds) in threads.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write_list(f, kinds)?;
                }
                f.write_str("])")
            }
            Op::Join => f.write_str("Join"),
            Op::ExecutorShutdown => f.write_str("ExecutorShutdown"),
            Op::Shutdown => f.write_str("Shutdown"),
            Op::ShutdownNow => f.write_str("ShutdownNow"),
        }
    }
}

/// Writes `[a, b, c]`, a run of three or more equal items as `a × n`, so a
/// long workload stays readable.
fn write_list<T: fmt::Display + PartialEq>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    f.write_str("[")?;
    let mut i = 0;
    while i < items.len() {
        let run = items[i..].iter().take_while(|x| **x == items[i]).count();
        if i > 0 {
            f.write_str(", ")?;
        }
        if run >= 3 {
            write!(f, "{} × {run}", items[i])?;
            i += run;
        } else {
            write!(f, "{}", items[i])?;
            i += 1;
        }
    }
    f.write_str("]")
}

/// A list of operations run in order against one fresh executor; the
/// generated ones end with [`Op::Shutdown`] or [`Op::ShutdownNow`] (a
/// workload that does not end with either gets a `shutdown` when it is run).
///
/// It prints as a list, runs of equal operations shortened:
///
/// ```
/// use executor_exporter::testing::{Op, TaskKind, Workload};
///
/// let workload = Workload::new(vec![
///     Op::Submit(TaskKind::Ok),
///     Op::Spawn(TaskKind::Ok),
///     Op::Submit(TaskKind::Panic),
///     Op::Cancel(0),
///     Op::Map(vec![TaskKind::Ok; 5]),
///     Op::Shutdown,
/// ]);
/// assert_eq!(
///     workload.to_string(),
///     "[Submit(Ok), Spawn(Ok), Submit(Panic), Cancel(0), Map([Ok × 5]), Shutdown]"
/// );
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Workload {
    ops: Vec<Op>,
}

impl Workload {
    /// A workload of these operations.
    pub fn new(ops: Vec<Op>) -> Workload {
        Workload { ops }
    }

    /// The operations, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// How many operations it has.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when it has no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// How many tasks it submits, spawns and maps, whether or not they are
    /// accepted.
    pub fn tasks(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Submit(_) | Op::Spawn(_) => 1,
                Op::Map(kinds) => kinds.len(),
                Op::Concurrent(threads) => threads.iter().map(Vec::len).sum(),
                _ => 0,
            })
            .sum()
    }

    /// The proptest strategy of the workloads `config` asks for: up to its
    /// `max_ops` operations, sometimes a shutdown part-way (followed by a
    /// few operations that must be refused), then a shutdown. It shrinks
    /// towards fewer operations and simpler tasks.
    ///
    /// ```
    /// use executor_exporter::testing::{CheckConfig, Op, Workload};
    /// use proptest::strategy::{Strategy, ValueTree};
    /// use proptest::test_runner::TestRunner;
    ///
    /// let config = CheckConfig::default().max_ops(10).shutdown_now(false);
    /// let mut runner = TestRunner::deterministic();
    /// let workload = Workload::strategy(&config)
    ///     .new_tree(&mut runner)
    ///     .unwrap()
    ///     .current();
    /// assert_eq!(workload.ops().last(), Some(&Op::Shutdown));
    /// assert!(!workload.ops().contains(&Op::ShutdownNow));
    /// ```
    pub fn strategy(config: &CheckConfig) -> BoxedStrategy<Workload> {
        let max_sleep = u8::try_from(config.max_sleep.as_millis()).unwrap_or(u8::MAX);
        let op = body_op(config, max_sleep);
        let mut mids = Vec::new();
        if config.shutdown_midway {
            mids.push(Op::Shutdown);
            if config.shutdown_now {
                mids.push(Op::ShutdownNow);
            }
        }
        if config.executor_shutdown {
            mids.push(Op::ExecutorShutdown);
        }
        let mid = if mids.is_empty() {
            Just(None).boxed()
        } else {
            proptest::option::weighted(
                0.3,
                (proptest::sample::select(mids), vec(op.clone(), 0..=3)),
            )
            .boxed()
        };
        let end = if config.shutdown_now {
            prop_oneof![3 => Just(Op::Shutdown), 1 => Just(Op::ShutdownNow)].boxed()
        } else {
            Just(Op::Shutdown).boxed()
        };
        (vec(op, 0..=config.max_ops), mid, end)
            .prop_map(|(mut ops, mid, end)| {
                if let Some((mid, tail)) = mid {
                    ops.push(mid);
                    ops.extend(tail);
                }
                ops.push(end);
                Workload { ops }
            })
            .boxed()
    }
}

/// The workloads of [`CheckConfig::default`]: [`Workload::strategy`].
pub fn workload() -> BoxedStrategy<Workload> {
    Workload::strategy(&CheckConfig::default())
}

/// The tasks of a workload; the first alternative is where shrinking goes.
fn kind(max_sleep: u8, with_err: bool) -> BoxedStrategy<TaskKind> {
    let mut kinds = vec![
        (4, Just(TaskKind::Ok).boxed()),
        (1, Just(TaskKind::Panic).boxed()),
    ];
    if with_err {
        kinds.push((1, Just(TaskKind::Err).boxed()));
    }
    if max_sleep > 0 {
        kinds.push((2, (0..=max_sleep).prop_map(TaskKind::Sleep).boxed()));
    }
    Union::new_weighted(kinds).boxed()
}

/// The operations before any shutdown.
fn body_op(config: &CheckConfig, max_sleep: u8) -> BoxedStrategy<Op> {
    let task = kind(max_sleep, true);
    let mut ops = vec![
        (10, task.clone().prop_map(Op::Submit).boxed()),
        (4, kind(max_sleep, false).prop_map(Op::Spawn).boxed()),
        (4, (0usize..8).prop_map(Op::Cancel).boxed()),
        (2, vec(task.clone(), 0..=8).prop_map(Op::Map).boxed()),
        (1, Just(Op::Join).boxed()),
    ];
    if config.concurrent {
        ops.push((
            1,
            vec(vec(task, 1..=4), 2..=3)
                .prop_map(Op::Concurrent)
                .boxed(),
        ));
    }
    Union::new_weighted(ops).boxed()
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_list(f, &self.ops)
    }
}

/// The same list as `Display`: a failing workload reads the same in an
/// assertion message.
impl fmt::Debug for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

//! How the pool's reports of a job become its task's state: the one path by which a process task's
//! life reaches its [`TaskHandle`](crate::TaskHandle) and the metrics, for every process pool.
//!
//! Wait is submit to the task's start in the worker; duration is that start to the task's end there
//! (both the worker's clock readings, sent in its reports or held by its start board).

use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::job::{JobFailure, JobOutcome, JobSink, PoolObserver, RestartReason};
use super::join::ProcessJoin;
use super::task::ProcessTask;
use super::wire::WireOutcome;
use crate::clock::Clock;
use crate::error::FailureReason;
use crate::error::{panic_message, TaskError};
use crate::metrics::Pending;
use crate::metrics::Series;
use crate::task::TaskCore;

/// What a process task's handle yields: the task's own `Result`, whose `Err`
/// is counted as failed with reason `error`.
pub type ProcessOutput<T> = Result<<T as ProcessTask>::Output, <T as ProcessTask>::Error>;

/// Worker start-ups, exits and replacements, counted in the pool's series.
pub(crate) struct SeriesObserver(pub(crate) Arc<Series>);

impl PoolObserver for SeriesObserver {
    fn worker_started(&self, _pid: u32) {
        self.0.worker_started();
    }

    fn worker_restarted(&self, _pid: u32, _reason: RestartReason) {
        self.0.worker_restarted();
    }

    fn worker_exited(&self, _pid: u32) {
        self.0.worker_stopped();
    }
}

fn classify(failure: JobFailure) -> (TaskError, FailureReason) {
    let reason = match &failure {
        JobFailure::Panic { message } => {
            return (
                TaskError::Panicked {
                    message: message.clone(),
                },
                FailureReason::Panic,
            )
        }
        JobFailure::Broken { message } => {
            return (
                TaskError::Broken {
                    reason: message.clone(),
                },
                FailureReason::Broken,
            )
        }
        JobFailure::Error { .. } => FailureReason::Error,
        JobFailure::UnknownTask { .. } => FailureReason::UnknownTask,
        JobFailure::Serialization { .. } => FailureReason::Serialization,
        JobFailure::WorkerDied { .. } => FailureReason::WorkerDied,
        JobFailure::Timeout { .. } => FailureReason::Timeout,
        JobFailure::Protocol { .. } => FailureReason::Protocol,
        JobFailure::Killed => FailureReason::Killed,
        JobFailure::Cancelled => return (TaskError::Cancelled, FailureReason::Broken),
    };
    (
        TaskError::Failed {
            reason,
            message: failure.to_string(),
        },
        reason,
    )
}

/// What one item of a task yields: the task's own `Result`, or why there is none.
pub(crate) type ItemResult<T> = Result<ProcessOutput<T>, TaskError>;

/// What a chunk's handle yields: one result per item sent, in order.
pub(crate) type ChunkValue<T> = Vec<ItemResult<T>>;

/// Turns the outcome of one run of `T` (a task, or one item of a chunk) into
/// its result and the failure reason it counts under (`None`: completed).
///
/// Runs on the pool's dispatcher thread, and `Deserialize` is the user's
/// code: a panic there fails this one result with reason `serialization`
/// (the panic's message in the error) instead of unwinding the dispatcher.
fn decode_item<T: ProcessTask>(outcome: JobOutcome) -> (ItemResult<T>, Option<FailureReason>) {
    fn decode<V: DeserializeOwned>(what: &str, name: &str, bytes: &[u8]) -> Result<V, JobFailure> {
        let message = match catch_unwind(AssertUnwindSafe(|| postcard::from_bytes::<V>(bytes))) {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => format!("cannot decode the {what} of task `{name}`: {e}"),
            Err(panic) => format!(
                "decoding the {what} of task `{name}` panicked: {}",
                panic_message(&*panic)
            ),
        };
        Err(JobFailure::Serialization { message })
    }
    let failure = match outcome {
        Ok(bytes) => match decode::<T::Output>("output", T::NAME, &bytes) {
            Ok(value) => return (Ok(Ok(value)), None),
            Err(failure) => failure,
        },
        Err(JobFailure::Error { payload, .. }) => {
            match decode::<T::Error>("error", T::NAME, &payload) {
                Ok(error) => return (Ok(Err(error)), Some(FailureReason::Error)),
                Err(failure) => failure,
            }
        }
        Err(failure) => failure,
    };
    let (error, reason) = classify(failure);
    (Err(error), Some(reason))
}

/// How a job's reports become its handle's value: one task, or a chunk.
pub(crate) trait Decode: Send + 'static {
    type Value: Send + 'static;
    /// The value of a job that ended (a started job's outcome) and the
    /// failure reason it counts under.
    fn decode(
        &self,
        outcome: JobOutcome,
    ) -> (Result<Self::Value, TaskError>, Option<FailureReason>);
    /// A failure the pool reports, as the user should see it.
    fn failure(&self, failure: JobFailure) -> JobFailure {
        failure
    }
}

/// One task of type `T`.
pub(crate) struct One<T>(PhantomData<fn() -> T>);

impl<T> One<T> {
    pub(crate) fn new() -> Self {
        One(PhantomData)
    }
}

impl<T> Decode for One<T>
where
    T: ProcessTask,
    T::Output: Send,
    T::Error: Send,
{
    type Value = ProcessOutput<T>;

    fn decode(
        &self,
        outcome: JobOutcome,
    ) -> (Result<Self::Value, TaskError>, Option<FailureReason>) {
        decode_item::<T>(outcome)
    }
}

/// A chunk of `items` inputs of `T`, sent as one job under the derived chunk
/// name. Its reason: `panic` if an item panicked, else `serialization` if an
/// item's data could not be encoded or decoded, else `error` if an item
/// returned `Err`, else none (completed).
pub(crate) struct Chunk<T> {
    items: usize,
    _task: PhantomData<fn() -> T>,
}

impl<T> Chunk<T> {
    pub(crate) fn new(items: usize) -> Self {
        Chunk {
            items,
            _task: PhantomData,
        }
    }
}

impl<T> Decode for Chunk<T>
where
    T: ProcessTask,
    T::Output: Send,
    T::Error: Send,
{
    type Value = ChunkValue<T>;

    fn decode(
        &self,
        outcome: JobOutcome,
    ) -> (Result<Self::Value, TaskError>, Option<FailureReason>) {
        let outcomes = match outcome {
            Ok(bytes) => match postcard::from_bytes::<Vec<WireOutcome>>(&bytes) {
                Ok(outcomes) if outcomes.len() == self.items => outcomes,
                Ok(outcomes) => {
                    return fail(JobFailure::Serialization {
                        message: format!(
                            "a chunk of {} inputs of task `{}` came back with {} results",
                            self.items,
                            T::NAME,
                            outcomes.len()
                        ),
                    })
                }
                Err(e) => {
                    return fail(JobFailure::Serialization {
                        message: format!(
                            "cannot decode the results of a chunk of task `{}`: {e}",
                            T::NAME
                        ),
                    })
                }
            },
            Err(failure) => return fail(self.failure(failure)),
        };
        let mut worst: Option<FailureReason> = None;
        let results = outcomes
            .into_iter()
            .map(|outcome| {
                let (result, reason) = decode_item::<T>(outcome.into_job_outcome());
                if rank(reason) > rank(worst) {
                    worst = reason;
                }
                result
            })
            .collect();
        (Ok(results), worst)
    }

    /// The chunk's derived name is an implementation detail: an unknown chunk
    /// is reported under the task's own name.
    fn failure(&self, failure: JobFailure) -> JobFailure {
        match failure {
            JobFailure::UnknownTask { .. } => JobFailure::UnknownTask {
                name: T::NAME.to_owned(),
            },
            other => other,
        }
    }
}

/// Which item failure decides a chunk's reason: `panic` over
/// `serialization` over `error` (the only reasons an item alone can have).
fn rank(reason: Option<FailureReason>) -> u8 {
    match reason {
        None => 0,
        Some(FailureReason::Error) => 1,
        Some(FailureReason::Panic) => 3,
        Some(_) => 2,
    }
}

fn fail<V>(failure: JobFailure) -> (Result<V, TaskError>, Option<FailureReason>) {
    let (error, reason) = classify(failure);
    (Err(error), Some(reason))
}

/// One job's link to its task state: the pool's reports move the task.
pub(crate) struct Sink<D: Decode> {
    core: Arc<TaskCore<D::Value, ProcessJoin>>,
    decode: D,
    started: Option<Clock>,
    ended: bool,
    /// The submitter's span (feature `tracing`): held until the task ends,
    /// so it stays open for the round trip, and entered while the pool
    /// handles this task's reports (decoding its output runs the user's
    /// `Deserialize`).
    #[cfg(feature = "tracing")]
    span: tracing::Span,
    /// The exemplar labels the exporter's hook gave at submit: the parent
    /// records the wait's exemplar at the start report, the duration's at
    /// the end.
    pub(crate) exemplar: Option<Pending>,
}

impl<D: Decode> Sink<D> {
    pub(crate) fn new(core: Arc<TaskCore<D::Value, ProcessJoin>>, decode: D) -> Self {
        Sink {
            core,
            decode,
            started: None,
            ended: false,
            #[cfg(feature = "tracing")]
            span: tracing::Span::current(),
            exemplar: None,
        }
    }
}

impl<D: Decode> JobSink for Sink<D> {
    fn is_cancelled(&self) -> bool {
        self.core.is_cancelled()
    }

    fn started(&mut self, ago: std::time::Duration) -> bool {
        #[cfg(feature = "tracing")]
        let _entered = self.span.enter();
        self.started = self.core.start(ago);
        if let (Some(started), Some(exemplar)) = (self.started, &self.exemplar) {
            exemplar.waited(started.nanos_since(self.core.submitted_at()));
        }
        self.started.is_some()
    }

    fn finished(mut self: Box<Self>, outcome: JobOutcome, ended_ago: std::time::Duration) {
        #[cfg(feature = "tracing")]
        let _entered = std::mem::replace(&mut self.span, tracing::Span::none()).entered();
        self.ended = true;
        let Some(started) = self.started else { return };
        let ran = Clock::now()
            .nanos_since(started)
            .saturating_sub(ended_ago.as_nanos().min(u128::from(u64::MAX)) as u64);
        let (result, reason) = self.decode.decode(outcome);
        if let Some(exemplar) = &self.exemplar {
            exemplar.ran(ran, reason.is_some());
        }
        self.core.finish_reported(ran, result, reason);
    }

    fn refused(&mut self) {
        self.ended = true;
    }

    fn submitted_at(&self) -> Option<Clock> {
        Some(self.core.submitted_at())
    }

    fn started_at(&self) -> Option<Clock> {
        self.started.filter(|_| !self.ended)
    }

    fn failed_unstarted(mut self: Box<Self>, failure: JobFailure) {
        #[cfg(feature = "tracing")]
        let _entered = std::mem::replace(&mut self.span, tracing::Span::none()).entered();
        self.ended = true;
        if failure == JobFailure::Cancelled {
            self.core.cancel();
            return;
        }
        let (error, reason) = classify(self.decode.failure(failure));
        self.core.fail_unstarted(error, reason);
    }
}

impl<D: Decode> Drop for Sink<D> {
    /// A job the pool drops without a terminal report was cancelled by its
    /// owner (the cancel already counted it); anything else would be a lost
    /// task, so it is ended here rather than left uncounted.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        match self.started {
            None => {
                self.core.cancel();
            }
            Some(started) => self.core.finish_reported(
                Clock::now().nanos_since(started),
                Err(TaskError::Failed {
                    reason: FailureReason::WorkerDied,
                    message: "the pool lost track of the task".to_owned(),
                }),
                Some(FailureReason::WorkerDied),
            ),
        }
    }
}

//! [`Ordered`]: the engine of every `map`: one task per input, submitted
//! lazily with at most `in_flight` submitted and not yet yielded, results
//! yielded in input order, the unstarted ones cancelled when dropped. An
//! input that finds the executor's queue full waits for room.

use std::cell::Cell;
use std::collections::VecDeque;
use std::time::Duration;

use super::handle::TaskHandle;
use crate::error::{RejectReason, TaskError};

/// A submit of `map` that did not hand its input over.
pub(crate) enum Refused<In> {
    /// No room now (the executor's queue is full): the input back, to be
    /// submitted again once there may be room. Not counted as rejected.
    Full(In),
    /// This input's result.
    Failed(TaskError),
}

/// How a `map` submits one input: to a proxy, a process pool, ...
pub(crate) trait SubmitOne<In> {
    /// What the task yields.
    type Value;
    /// Submits the task for `input`.
    fn submit_one(&mut self, input: In) -> Result<TaskHandle<Self::Value>, Refused<In>>;
}

impl<In, S: SubmitOne<In> + ?Sized> SubmitOne<In> for Box<S> {
    type Value = S::Value;

    fn submit_one(&mut self, input: In) -> Result<TaskHandle<Self::Value>, Refused<In>> {
        (**self).submit_one(input)
    }
}

thread_local! {
    /// Set while a task of a `map` is refused because the queue is full
    /// ([`refusing`]): it is not counted as rejected.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `refuse`, which ends a task its executor refused: if `quiet` (the
/// task is a `map`'s item refused because the queue is full, which the map
/// submits again), without counting it as rejected. `refuse` runs only the
/// crate's own bookkeeping, never user code.
pub(crate) fn refusing<R>(quiet: bool, refuse: impl FnOnce() -> R) -> R {
    if !quiet {
        return refuse();
    }
    /// Clears the flag, also when `refuse` panics.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            let _ = QUIET.try_with(|q| q.set(false));
        }
    }
    let _ = QUIET.try_with(|q| q.set(true));
    let _clear = Clear;
    refuse()
}

/// False while a refusal is quiet ([`refusing`]).
pub(crate) fn counts_refusal() -> bool {
    !QUIET.try_with(Cell::get).unwrap_or(false)
}

/// Results of one task per input of `I`, submitted through `S`, in input
/// order.
pub(crate) struct Ordered<I: Iterator, S, V> {
    inputs: Option<I>,
    submit: S,
    pending: VecDeque<Result<TaskHandle<V>, TaskError>>,
    in_flight: usize,
    /// The next input, which found the executor's queue full.
    waiting: Option<I::Item>,
}

/// How a `map` whose next input found the queue full waits before it tries
/// again, when none of its own tasks is pending to wait for: sleeps from
/// 20 µs, doubling up to 1 ms.
pub(crate) struct RoomWait(Duration);

impl RoomWait {
    pub(crate) fn new() -> RoomWait {
        RoomWait(Duration::from_micros(20))
    }

    /// Sleeps for the next pause.
    pub(crate) fn sleep(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(Duration::from_millis(1));
    }
}

/// The most results an [`Ordered`] makes room for up front; it grows past
/// that as pending results need.
const PENDING_ROOM: usize = 64;

impl<I, S, V> Ordered<I, S, V>
where
    I: Iterator,
    S: SubmitOne<I::Item, Value = V>,
{
    /// Submits the first `in_flight` inputs at once, so work starts when the
    /// `map` is made.
    pub(crate) fn new(inputs: I, in_flight: usize, submit: S) -> Self {
        let mut ordered = Ordered {
            inputs: Some(inputs),
            submit,
            // A bound is not a size: `usize::MAX` means "no bound".
            pending: VecDeque::with_capacity(in_flight.min(PENDING_ROOM)),
            in_flight,
            waiting: None,
        };
        ordered.fill();
        ordered
    }

    /// Submits inputs until `in_flight` are pending, the inputs end, or the
    /// executor's queue is full (the input then waits in `waiting`). A
    /// refused submit (shut down, broken) is that input's result, and no
    /// later input is read: each would be refused too.
    fn fill(&mut self) {
        while self.pending.len() < self.in_flight {
            let input = match self.waiting.take() {
                Some(input) => input,
                None => match self.inputs.as_mut().and_then(Iterator::next) {
                    Some(input) => input,
                    None => {
                        self.inputs = None;
                        return;
                    }
                },
            };
            match self.submit.submit_one(input) {
                Ok(handle) => self.pending.push_back(Ok(handle)),
                Err(Refused::Full(input)) => {
                    self.waiting = Some(input);
                    return;
                }
                Err(Refused::Failed(error)) => {
                    // Refused for good: every later input would be too. (A
                    // full queue that cannot be waited for refuses this
                    // input alone.)
                    let for_good = match &error {
                        TaskError::Rejected(reason) => *reason != RejectReason::Full,
                        TaskError::Broken { .. } => true,
                        _ => false,
                    };
                    if for_good {
                        self.inputs = None;
                    }
                    self.pending.push_back(Err(error));
                }
            }
        }
    }

    /// The next result in input order, waiting for it.
    pub(crate) fn next(&mut self) -> Option<Result<V, TaskError>> {
        let mut room = RoomWait::new();
        loop {
            if let Some(next) = self.pending.pop_front() {
                if self.waiting.is_none() {
                    self.fill();
                    return Some(next.and_then(TaskHandle::join));
                }
                // The queue was full: once this task has ended there may be
                // room for the input waiting.
                let result = next.and_then(TaskHandle::join);
                self.fill();
                return Some(result);
            }
            // Nothing of ours pending: the queue is full of others' tasks.
            self.waiting.as_ref()?;
            room.sleep();
            self.fill();
        }
    }

    pub(crate) fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.pending.len() + usize::from(self.waiting.is_some());
        match &self.inputs {
            None => (n, Some(n)),
            Some(inputs) => {
                let (lo, hi) = inputs.size_hint();
                (n.saturating_add(lo), hi.and_then(|h| h.checked_add(n)))
            }
        }
    }
}

impl<I: Iterator, S, V> Ordered<I, S, V> {
    /// Submitted and not yet yielded.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(crate) fn inputs_exhausted(&self) -> bool {
        self.inputs.is_none() && self.waiting.is_none()
    }
}

impl<I: Iterator, S, V> Drop for Ordered<I, S, V> {
    fn drop(&mut self) {
        for handle in self.pending.drain(..).flatten() {
            handle.cancel();
        }
    }
}

//! [`Ordered`]: the engine of every `map`: one task per input, submitted
//! lazily with at most `in_flight` submitted and not yet yielded, results
//! yielded in input order, the unstarted ones cancelled when dropped.

use std::collections::VecDeque;

use super::handle::TaskHandle;
use crate::error::TaskError;

/// How a `map` submits one input: to a proxy, a process pool, ...
pub(crate) trait SubmitOne<In> {
    /// What the task yields.
    type Value;
    /// Submits the task for `input`; an `Err` is that input's result.
    fn submit_one(&mut self, input: In) -> Result<TaskHandle<Self::Value>, TaskError>;
}

impl<In, S: SubmitOne<In> + ?Sized> SubmitOne<In> for Box<S> {
    type Value = S::Value;

    fn submit_one(&mut self, input: In) -> Result<TaskHandle<Self::Value>, TaskError> {
        (**self).submit_one(input)
    }
}

/// Results of one task per input of `I`, submitted through `S`, in input
/// order.
pub(crate) struct Ordered<I, S, V> {
    inputs: Option<I>,
    submit: S,
    pending: VecDeque<Result<TaskHandle<V>, TaskError>>,
    in_flight: usize,
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
        };
        ordered.fill();
        ordered
    }

    /// Submits inputs until `in_flight` are pending or the inputs end. A
    /// refused submit (shut down, broken) is that input's result, and no
    /// later input is read: each would be refused too.
    fn fill(&mut self) {
        while self.pending.len() < self.in_flight {
            let Some(input) = self.inputs.as_mut().and_then(Iterator::next) else {
                self.inputs = None;
                return;
            };
            let handle = self.submit.submit_one(input);
            if matches!(
                handle,
                Err(TaskError::Rejected(_) | TaskError::Broken { .. })
            ) {
                self.inputs = None;
            }
            self.pending.push_back(handle);
        }
    }

    /// The next result in input order, waiting for it.
    pub(crate) fn next(&mut self) -> Option<Result<V, TaskError>> {
        let next = self.pending.pop_front()?;
        self.fill();
        Some(next.and_then(TaskHandle::join))
    }

    pub(crate) fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.pending.len();
        match &self.inputs {
            None => (n, Some(n)),
            Some(inputs) => {
                let (lo, hi) = inputs.size_hint();
                (n.saturating_add(lo), hi.and_then(|h| h.checked_add(n)))
            }
        }
    }
}

impl<I, S, V> Ordered<I, S, V> {
    /// Submitted and not yet yielded.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(crate) fn inputs_exhausted(&self) -> bool {
        self.inputs.is_none()
    }
}

impl<I, S, V> Drop for Ordered<I, S, V> {
    fn drop(&mut self) {
        for handle in self.pending.drain(..).flatten() {
            handle.cancel();
        }
    }
}

//! Exemplars through the proxy: a task submitted to an executor whose
//! exporter has an exemplar hook carries the labels the hook gave at submit,
//! in a body around the caller's ([`WithExemplar`]), which records the wait
//! as the body begins and the duration as it returns or unwinds.
//!
//! Only submits of such an executor build it (see
//! `Accounting::admit_flags`); the others hand their body over as it was.

use std::any::Any;

use super::job::{Classify, NeverFails};
use crate::clock::Clock;
use crate::executor::{Body, Task};
use crate::metrics::Pending;

/// A task's body and its exemplar labels; `C` says which values fail it
/// (the duration's exemplar goes to `result="failed"` then, as the
/// observation does).
pub(crate) struct WithExemplar<F, C> {
    body: F,
    classify: C,
    pending: Pending,
}

impl<F, C> WithExemplar<F, C> {
    #[inline]
    pub(crate) fn new(body: F, classify: C, pending: Pending) -> WithExemplar<F, C> {
        WithExemplar {
            body,
            classify,
            pending,
        }
    }

    /// The body, as it was given (a refused task hands it back).
    pub(crate) fn into_inner(self) -> F {
        self.body
    }
}

/// Records the duration of a body that unwinds (a panic fails its task).
struct Unwinding<'a> {
    pending: &'a Pending,
    start: Clock,
}

impl Drop for Unwinding<'_> {
    fn drop(&mut self) {
        self.pending.ran(Clock::now().nanos_since(self.start), true);
    }
}

impl<T, F: Body<T>, C: Classify<T>> Body<T> for WithExemplar<F, C> {
    const QUIET_WHEN_FULL: bool = F::QUIET_WHEN_FULL;

    fn call(self) -> T {
        let WithExemplar {
            body,
            classify,
            pending,
        } = self;
        // The task's own start and end are read by its ticket or core just
        // around this body, a few instructions away: these readings give
        // the same values within nanoseconds, and each exemplar is kept in
        // the bucket of its own value.
        let start = Clock::now();
        pending.waited(start.nanos_since(pending.submitted()));
        let unwinding = Unwinding {
            pending: &pending,
            start,
        };
        let value = body.call();
        std::mem::forget(unwinding);
        pending.ran(Clock::now().nanos_since(start), classify.failed(&value));
        value
    }
}

/// A [`Task`] given to the proxy's `execute` with exemplar labels is
/// wrapped, as a body of its own.
impl WithExemplar<Task, NeverFails> {
    /// The task the caller gave, out of a task the proxy made for it.
    pub(crate) fn unwrap_task(task: Box<dyn Any + Send>) -> Result<Task, Box<dyn Any + Send>> {
        let task = match task.downcast::<WithExemplar<Task, NeverFails>>() {
            Ok(wrapped) => return Ok(wrapped.into_inner()),
            Err(other) => other,
        };
        #[cfg(feature = "tracing")]
        let task = match task.downcast::<WithExemplar<crate::trace::InSpan<Task>, NeverFails>>() {
            Ok(wrapped) => return Ok(wrapped.into_inner().into_inner()),
            Err(other) => other,
        };
        Err(task)
    }
}

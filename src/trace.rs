//! Spans that follow tasks (feature `tracing`): a task's body runs inside
//! the span that was current on the thread that submitted it, so what the
//! body logs belongs to the request that caused it.
//!
//! A body is wrapped only when there is a span to enter: with no subscriber,
//! or outside any span, it is handed over as it was, and costs only the
//! look-up of the current span.

use tracing::level_filters::LevelFilter;
use tracing::Span;

use crate::executor::{Body, Task};

/// A task's body and the span it runs in.
pub(crate) struct InSpan<F> {
    span: Span,
    body: F,
}

impl<F> InSpan<F> {
    /// `body`, to run inside `span`.
    #[inline]
    pub(crate) fn new(span: Span, body: F) -> InSpan<F> {
        InSpan { span, body }
    }

    /// The body, as it was given (a refused task hands it back).
    pub(crate) fn into_inner(self) -> F {
        self.body
    }
}

/// The span current on this thread, if there is one to enter.
#[inline]
pub(crate) fn current() -> Option<Span> {
    // No subscriber wants anything (none is set): no span can be entered,
    // and one load says so, where the look-up below takes dozens of
    // instructions.
    if LevelFilter::current() == LevelFilter::OFF {
        return None;
    }
    let span = Span::current();
    (!span.is_none()).then_some(span)
}

impl<T, F: Body<T>> Body<T> for InSpan<F> {
    const QUIET_WHEN_FULL: bool = F::QUIET_WHEN_FULL;

    #[inline]
    fn call(self) -> T {
        let InSpan { span, body } = self;
        // Exited also when the body unwinds; the span itself is released
        // once the body has returned, before the task's end is published.
        let _entered = span.enter();
        body.call()
    }
}

/// A [`Task`] given to an instrumented proxy's `execute` inside a span is
/// wrapped in it, as a body of its own.
impl InSpan<Task> {
    /// The task the caller gave, out of a task the proxy made for it.
    pub(crate) fn unwrap_task(task: Box<dyn std::any::Any + Send>) -> Option<Task> {
        task.downcast::<InSpan<Task>>().ok().map(|t| t.into_inner())
    }
}

//! The drop-in path: a [`Task`] given to the proxy through
//! [`Executor::execute`], counted like a spawned one, and handed back as
//! itself when the executor refuses it.

use std::any::TypeId;

#[cfg(feature = "tracing")]
use crate::trace::InSpan;

use super::exemplar::WithExemplar;
use super::job::NeverFails;
use super::{AcceptedIfUnwinding, InstrumentedExecutorProxy};
use crate::clock::Clock;
use crate::error::RejectReason;
use crate::executor::{Body, Executor, Rejected, Task};
use crate::task::{TaskKey, Ticket, CLOSED};

impl<E: Executor> Executor for InstrumentedExecutorProxy<E> {
    /// Counted like [`spawn`](InstrumentedExecutorProxy::spawn), and as
    /// cheap: the proxy's bookkeeping goes into the task's own slot for it,
    /// so the closure is not moved into a new allocation. A refused task
    /// goes back as itself, so a proxy wrapping this one gets its own task
    /// back.
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        let flags = self.acct.admit_flags();
        if flags != 0 {
            return self.execute_flagged(task, flags);
        }
        self.execute_admitted(task)
    }

    fn max_workers(&self) -> Option<usize> {
        self.max_workers
    }

    fn queue_capacity(&self) -> Option<usize> {
        self.inner.queue_capacity()
    }

    fn executor_type(&self) -> &str {
        self.exporter.executor_type()
    }

    fn shutdown(&self) {
        InstrumentedExecutorProxy::shutdown(self)
    }

    fn close(&self) {
        self.acct.close();
        self.inner.close();
    }

    fn is_worker_thread(&self) -> bool {
        self.inner.is_worker_thread()
    }
}

impl<E: Executor> InstrumentedExecutorProxy<E> {
    /// [`submit_flagged`](Self::submit_flagged) for a [`Task`] given to
    /// [`Executor::execute`]: with exemplar labels, the task goes (with any
    /// ticket it has) inside a task of this proxy's that carries them.
    #[cold]
    #[inline(never)]
    fn execute_flagged(&self, task: Task, flags: u32) -> Result<(), Rejected> {
        if flags & CLOSED != 0 {
            self.acct.ended();
            self.acct.refused_unadmitted();
            return Err(Rejected::new(task, RejectReason::Shutdown));
        }
        let Some(pending) = self.pending_exemplar() else {
            return self.execute_admitted(task);
        };
        let ticket = Ticket::new(&self.acct);
        #[cfg(feature = "tracing")]
        if let Some(span) = crate::trace::current() {
            let body = WithExemplar::new(InSpan::new(span, task), NeverFails, pending);
            return self.hand_over_wrapped(body, ticket);
        }
        self.hand_over_wrapped(WithExemplar::new(task, NeverFails, pending), ticket)
    }

    /// The rest of [`Executor::execute`], for an admitted task.
    #[inline(always)]
    fn execute_admitted(&self, task: Task) -> Result<(), Rejected> {
        // The task goes, with any ticket it has, inside a task of this
        // proxy's when it must run in the current span.
        #[cfg(feature = "tracing")]
        if let Some(span) = crate::trace::current() {
            let ticket = Ticket::new(&self.acct);
            return self.hand_over_wrapped(InSpan::new(span, task), ticket);
        }
        let ticket = Ticket::new(&self.acct);
        let submitted_at = ticket.submitted_at();
        let mut task = task;
        match task.attach(ticket) {
            None => self.hand_over(task, None, submitted_at),
            // A task of another instrumented proxy (this proxy wraps one,
            // or is wrapped by one): it keeps its own ticket, inside a task
            // that carries this proxy's.
            Some(ticket) => self.hand_over_wrapped(task, ticket),
        }
    }

    /// Hands a task of this proxy's whose body `B` holds the caller's task
    /// to the executor, with `ticket`.
    fn hand_over_wrapped<B: Body<()>>(&self, body: B, ticket: Ticket) -> Result<(), Rejected> {
        let submitted_at = ticket.submitted_at();
        let task = Task::detached(body, ticket);
        self.hand_over(task, Some(TypeId::of::<B>()), submitted_at)
    }

    /// Hands an admitted task of [`Executor::execute`], with this proxy's
    /// ticket, to the executor; `wrapper` is the type of its body when the
    /// caller's task is that body ([`hand_over_wrapped`](Self::hand_over_wrapped)).
    #[inline(always)]
    fn hand_over(
        &self,
        task: Task,
        wrapper: Option<TypeId>,
        submitted_at: Clock,
    ) -> Result<(), Rejected> {
        let accepted_if_unwinding = AcceptedIfUnwinding(&self.acct, submitted_at);
        let outcome = self.inner.execute(task);
        std::mem::forget(accepted_if_unwinding);
        match outcome {
            Ok(()) => {
                self.acct.accepted(submitted_at);
                Ok(())
            }
            Err(rejected) => self.refused(rejected, wrapper, submitted_at),
        }
    }

    /// A task of [`Executor::execute`] the executor refused: counted as
    /// rejected, and handed back as the task the caller gave (unless the
    /// executor kept it: see [`own_task`](Self::own_task)).
    #[cold]
    fn refused(
        &self,
        rejected: Rejected,
        wrapper: Option<TypeId>,
        submitted_at: Clock,
    ) -> Result<(), Rejected> {
        let reason = rejected.reason();
        let wanted = (TaskKey::of_ticket(&self.acct, submitted_at), wrapper);
        let Some(task) = self.own_task(rejected.into_task(), submitted_at, wanted) else {
            return Ok(());
        };
        let (task, ticket) = task.detach_ticket();
        if let Some(ticket) = ticket {
            ticket.refuse();
        }
        if wrapper.is_none() {
            return Err(Rejected::new(task, reason));
        }
        // The caller's task is the body of the one this proxy made.
        let caller = match task.reject().map(|f| f.downcast::<Task>()) {
            Some(Ok(task)) => Some(*task),
            Some(Err(f)) => unwrap_task(f),
            None => None,
        };
        match caller {
            Some(task) => Err(Rejected::new(task, reason)),
            // Found by its ticket and the type of its body, one of the
            // wrappers `unwrap_task` takes apart.
            None => unreachable!("a task made by execute holds the caller's task until it ends"),
        }
    }
}

/// The caller's task out of the body of a task the proxy made for it (in
/// a span, with exemplar labels, or both).
fn unwrap_task(body: Box<dyn std::any::Any + Send>) -> Option<Task> {
    let body = match WithExemplar::unwrap_task(body) {
        Ok(task) => return Some(task),
        Err(body) => body,
    };
    #[cfg(feature = "tracing")]
    return InSpan::unwrap_task(body);
    #[cfg(not(feature = "tracing"))]
    {
        drop(body);
        None
    }
}

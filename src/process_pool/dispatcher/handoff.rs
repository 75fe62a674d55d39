//! The hand-off: a submitting thread that finds a worker idle and nothing
//! queued sends the job itself, through the worker's [`Link`]; the
//! dispatcher adopts the job when the worker reports, or dies.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::{send_failure, Dispatcher, Job, WState};

/// A worker's channel, shared with the submitting threads that may send it a job directly.
pub(in crate::process_pool) struct Link {
    pub(in crate::process_pool) sock: OwnedFd,
    /// A job a submitting thread sent on this channel, until the dispatcher adopts it.
    handed: Mutex<Option<Handed>>,
    /// A submitting thread's send on this channel failed: the worker is gone, or stopped reading.
    send_error: Mutex<Option<io::Error>>,
}

/// A job sent to a worker by the submitting thread.
struct Handed {
    job: Job,
    id: u64,
    sent_at: Instant,
}

impl Link {
    pub(super) fn new(sock: OwnedFd) -> Link {
        Link {
            sock,
            handed: Mutex::new(None),
            send_error: Mutex::new(None),
        }
    }

    /// Whether a job handed over here waits for the dispatcher to adopt it.
    #[cfg(all(test, not(loom)))]
    pub(in crate::process_pool) fn is_handed(&self) -> bool {
        self.handed().is_some()
    }

    fn handed(&self) -> MutexGuard<'_, Option<Handed>> {
        self.handed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `job`, about to be sent as `Run` frame `id` by a submitting thread that took this
    /// link out of [`Inner::idle`], under the same lock.
    pub(in crate::process_pool) fn hand(&self, job: Job, id: u64) {
        *self.handed() = Some(Handed {
            job,
            id,
            sent_at: Instant::now(),
        });
    }

    /// A submitting thread's send failed: the dispatcher fails the worker (and retries its job).
    pub(in crate::process_pool) fn send_failed(&self, error: io::Error) {
        *self
            .send_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
    }
}

impl Dispatcher {
    /// Takes idle worker `i` back from [`Inner::idle`] before this thread sends it a job. False if a
    /// submitting thread took it first: its job is then adopted, and the worker is busy.
    pub(super) fn claim(&mut self, i: usize) -> bool {
        let w = &mut self.workers[i];
        if !w.published {
            return true;
        }
        w.published = false;
        let taken = {
            let mut inner = self.shared.lock();
            match inner.idle.iter().position(|l| Arc::ptr_eq(l, &w.link)) {
                Some(at) => {
                    inner.idle.swap_remove(at);
                    false
                }
                None => true,
            }
        };
        if taken {
            w.published = true;
            self.adopt(i);
        }
        !taken
    }

    /// Lists the idle workers in [`Inner::idle`], for submitters to send jobs to directly.
    pub(super) fn publish_idle(&mut self) {
        let mut fresh = self
            .workers
            .iter_mut()
            .filter(|w| w.dead.is_none() && !w.published && matches!(w.state, WState::Idle))
            .peekable();
        if fresh.peek().is_none() {
            return;
        }
        let mut inner = self.shared.lock();
        for w in fresh {
            w.published = true;
            inner.idle.push(Arc::clone(&w.link));
        }
    }

    /// Takes the job a submitting thread handed to worker `i`, if any: the worker is then busy with
    /// it, its timeout counted from the send.
    pub(super) fn adopt(&mut self, i: usize) {
        let w = &mut self.workers[i];
        let failed = w
            .link
            .send_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let (Some(e), None) = (failed, &w.dead) {
            w.dead = Some(send_failure(&e));
        }
        if !w.published || !matches!(w.state, WState::Idle) {
            return;
        }
        let Some(handed) = w.link.handed().take() else {
            return;
        };
        w.published = false;
        let limit = handed.job.spec.timeout.or(self.cfg.task_timeout);
        w.deadline = limit.and_then(|l| handed.sent_at.checked_add(l));
        w.sent_at = Some(handed.sent_at);
        w.handed = true;
        w.state = WState::Busy {
            job: handed.job,
            id: handed.id,
            started: false,
            discard: false,
            limit,
        };
    }

    /// Empties [`Inner::idle`] before the workers go: the links hold their channels open. Every job
    /// handed over must have been adopted already.
    pub(super) fn unpublish_all(&mut self) {
        self.shared.lock().idle.clear();
        for w in &mut self.workers {
            w.published = false;
        }
    }

    /// [`adopt`](Self::adopt) for every worker.
    pub(super) fn adopt_all(&mut self) {
        for i in 0..self.workers.len() {
            self.adopt(i);
        }
    }
}

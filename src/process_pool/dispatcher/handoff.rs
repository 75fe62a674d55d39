//! The fast paths of sending: a submitting thread that finds a worker idle
//! and nothing queued sends the job itself, through the worker's [`Link`]
//! (the dispatcher adopts the job when the worker reports, or dies); and
//! while jobs wait, short ones are sent behind a busy worker's current one.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::{send_failure, Ahead, Dispatcher, Handed, Job, Link, WState, PIPELINE_DEPTH};
use crate::process_pool::sys;

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

    /// Sends queued jobs behind the current one of busy workers whose tasks are short, while jobs
    /// wait that no idle or new worker can take.
    pub(super) fn pipeline(&mut self) {
        loop {
            let mut sent = false;
            for i in 0..self.workers.len() {
                while self.queue.front().is_some_and(|j| j.sink.is_cancelled()) {
                    self.queue.pop_front();
                }
                if self.queue.is_empty() {
                    return;
                }
                let w = &self.workers[i];
                let allowance = self.cfg.max_tasks_per_child.map_or(u64::MAX, |n| {
                    n.saturating_sub(w.tasks_done + 1 + w.ahead.len() as u64)
                });
                let fits = w.dead.is_none()
                    && matches!(w.state, WState::Busy { .. })
                    && w.ahead.len() + 1 < PIPELINE_DEPTH
                    && allowance > 0
                    && w.last_run.is_some_and(|d| d < self.cfg.pipeline_below)
                    && w.sent_at
                        .is_some_and(|at| at.elapsed() < self.cfg.pipeline_below)
                    && (!w.handed || matches!(w.state, WState::Busy { started: true, .. }));
                if !fits {
                    continue;
                }
                let job = self.queue.pop_front().expect("queue is not empty");
                let Some((job, id, frame)) = self.encode_run(job) else {
                    continue;
                };
                let w = &mut self.workers[i];
                if let Err(e) = sys::send_all(w.link.sock.as_fd(), &frame) {
                    w.dead = Some(send_failure(&e));
                }
                w.ahead.push_back(Ahead { job, id });
                sent = true;
            }
            if !sent {
                return;
            }
        }
    }
}

//! The fast paths of sending: a submitting thread that finds a worker idle
//! and nothing queued sends the job itself, through the worker's [`Link`]
//! (the dispatcher adopts the job when the worker reports, or dies); and
//! while jobs wait, short ones are sent behind a busy worker's current one.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::{send_failure, Ahead, Channel, Dispatcher, Handed, Job, Link, WState, PIPELINE_DEPTH};
use crate::process_pool::board::{StartBoard, LOOK_EVERY};
use crate::process_pool::sys;
use crate::process_pool::wire::FrameReader;

impl Link {
    /// The link of a worker's channel `sock`; `lendable`: a joiner may read the reply to a job
    /// handed over here (it needs `pidfd` to see the worker die).
    pub(super) fn new(
        sock: OwnedFd,
        pidfd: Option<OwnedFd>,
        board: Option<StartBoard>,
        lendable: bool,
        max_frame: usize,
    ) -> Link {
        let lendable = lendable && pidfd.is_some();
        // A joiner's wait in a receive ends with this timeout at the latest, so that it looks at
        // the board, the worker's pidfd and its bound (`Lent::read`); without it, it waits in `poll`.
        let waits_in_recv = lendable && sys::set_recv_timeout(sock.as_fd(), LOOK_EVERY).is_ok();
        Link {
            sock,
            lendable,
            waits_in_recv,
            pidfd,
            board,
            channel: Mutex::new(Channel {
                handed: None,
                reader: None,
                frames: FrameReader::new(max_frame),
            }),
            send_error: Mutex::new(None),
            #[cfg(all(test, not(loom)))]
            started_frames: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether a job handed over here waits for the dispatcher to adopt it.
    #[cfg(all(test, not(loom)))]
    pub(in crate::process_pool) fn is_handed(&self) -> bool {
        self.channel().handed.is_some()
    }

    pub(super) fn channel(&self) -> MutexGuard<'_, Channel> {
        self.channel.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `job`, about to be sent as `Run` frame `id` by a submitting thread that took this
    /// link out of [`Inner::idle`], under the same lock. `lend`: the job has no timeout. True if
    /// its joiner may read the reply ([`Lent`](super::lend::Lent)); the dispatcher does not watch
    /// the channel then, so the caller sets [`Shared::timer`] if it is not set. Such a job is quiet
    /// where the worker has a board: its start is recorded there, and the reply the joiner waits for
    /// is the only frame.
    pub(in crate::process_pool) fn hand(&self, job: Job, id: u64, lend: bool) -> bool {
        let lendable = lend && self.lendable;
        let quiet = lendable && self.board.is_some();
        if let (true, Some(board)) = (quiet, &self.board) {
            board.make_quiet(id);
        }
        self.channel().handed = Some(Handed {
            job,
            id,
            sent_at: Instant::now(),
            lendable,
            started: false,
            discard: false,
            started_at: None,
            quiet,
        });
        lendable
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
    /// submitting thread took it first: its job is then adopted (the worker is busy), or left to
    /// the joiner reading its reply (the worker is lent).
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
                // Unlisted with no job handed over and no joiner reading it, under the lock a
                // joiner lists it under: one that ended its job after this thread took it back
                // (the pool stops) did not list it again. It is free.
                None => {
                    let channel = w.link.channel();
                    channel.handed.is_some() || channel.reader.is_some()
                }
            }
        };
        if taken {
            w.published = true;
            self.adopt(i, false);
        }
        !taken
    }

    /// Tells submitters and joiners whether this thread holds jobs it has not sent.
    pub(super) fn publish_backlog(&mut self) {
        let backlog = !self.queue.is_empty();
        if backlog != self.backlog {
            self.backlog = backlog;
            let mut inner = self.shared.lock();
            inner.backlog = backlog;
            // A joiner that listed its worker idle again after this thread found the worker lent,
            // and before the backlog was set, did not wake this thread: it wakes now, to send the
            // worker a job rather than sleep with both.
            if backlog && !inner.idle.is_empty() {
                self.shared.wake.notify();
            }
        }
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
    /// it, its timeout counted from the send. A job whose joiner reads the reply is left to it
    /// (the worker is `lent`) unless `force`: the worker died or the pool stops. True if it took
    /// a job.
    pub(super) fn adopt(&mut self, i: usize, force: bool) -> bool {
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
            return false;
        }
        let handed = {
            let mut channel = w.link.channel();
            if channel.reader.is_some() && !force {
                w.lent = true;
                return false;
            }
            // Its joiner, if any, sees the job gone and waits for this thread's report.
            channel.reader = None;
            channel.handed.take()
        };
        let handed = handed.map(|mut handed| {
            handed.look(w.link.board.as_ref());
            handed
        });
        w.lent = false;
        let Some(handed) = handed else {
            return false;
        };
        w.published = false;
        let limit = handed.job.spec.timeout.or(self.cfg.task_timeout);
        w.deadline = limit.and_then(|l| handed.sent_at.checked_add(l));
        w.sent_at = Some(handed.sent_at);
        w.started_at = handed.started_at;
        w.handed = true;
        w.state = WState::Busy {
            job: handed.job,
            id: handed.id,
            started: handed.started,
            discard: handed.discard,
            limit,
            quiet: handed.quiet,
        };
        true
    }

    /// Empties [`Inner::idle`] before the workers go: the links hold their channels open. Every job
    /// handed over must have been adopted already.
    pub(super) fn unpublish_all(&mut self) {
        self.shared.lock().idle.clear();
        for w in &mut self.workers {
            w.published = false;
        }
    }

    /// [`adopt`](Self::adopt) for every worker; a job taken from a joiner that read part of the
    /// reply has the rest handled at once, its channel then being quiet.
    pub(super) fn adopt_all(&mut self, force: bool) {
        for i in 0..self.workers.len() {
            if self.adopt(i, force) && self.workers[i].dead.is_none() {
                self.read_worker(i);
            }
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
                #[cfg(all(test, not(loom)))]
                crate::process_pool::tests::pipeline_hook(&job.spec.task, w.pid);
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

//! A worker's life seen from the dispatcher: started (and replaced), and
//! buried when it dies, is retired or the pool stops.

use std::collections::VecDeque;
use std::mem;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{send_failure, Death, Dispatcher, Link, WState, Worker, MAX_ATTEMPTS};
use crate::error::RejectReason;
use crate::process_pool::board::StartBoard;
use crate::process_pool::job::{JobFailure, RestartReason};
use crate::process_pool::reap::{after, kill_and_reap, reap_after_eof, wait_until};
use crate::process_pool::sys;
use crate::process_pool::wire::{self, ToWorker};
use crate::process_pool::worker::{CHANNEL_FD, ENV_BOARD, ENV_MAX_FRAME, ENV_SPIN, ENV_WORKER};

impl Dispatcher {
    pub(super) fn spawn(&mut self) {
        match self.start_worker() {
            Ok(w) => {
                let refused = w.dead.is_some();
                self.workers.push(w);
                // A worker gone before its hello may have said why (a program without
                // `run_if_worker` does), better than the refused hello.
                if refused {
                    self.read_last_reports(self.workers.len() - 1);
                }
                self.publish_pids();
            }
            Err(msg) => self.start_failed(msg, false),
        }
    }

    pub(super) fn start_worker(&self) -> Result<Worker, String> {
        let (ours, theirs) =
            sys::socketpair().map_err(|e| format!("cannot create a socket pair: {e}"))?;
        // The dispatcher writes with blocking sends; a worker that stops reading (a program that is not a
        // worker, a wedged process) must not stall it forever: a send stuck this long fails the worker.
        sys::set_send_timeout(ours.as_fd(), self.cfg.start_timeout)
            .map_err(|e| format!("cannot set a send timeout: {e}"))?;
        let mut cmd = Command::new(&self.cfg.program);
        if let Some(arg0) = &self.cfg.arg0 {
            cmd.arg0(arg0);
        }
        cmd.args(&self.cfg.args)
            .env(ENV_WORKER, CHANNEL_FD.to_string())
            .env(ENV_MAX_FRAME, self.cfg.max_frame.to_string())
            .env(ENV_SPIN, self.cfg.spin.as_nanos().to_string())
            .stdin(Stdio::null());
        // Without a board (no memfd here), the worker sends every `Started` frame.
        let board = StartBoard::create().ok();
        let keep = board.as_ref().map(|(_, fd)| fd.as_raw_fd());
        if let Some(fd) = keep {
            cmd.env(ENV_BOARD, fd.to_string());
        }
        let channel = theirs.as_raw_fd();
        let parent = sys::getpid();
        // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe calls
        // are allowed: `child_after_fork` makes only such calls (dup2, fcntl, prctl, getppid, _exit) and
        // allocates nothing; it captures two integers. `channel` is open in the parent across the spawn.
        // Descriptor 3 cannot be the spawn's internal error pipe: the socket pair, created just before,
        // took the lowest free descriptors, so 3 is in use (by it or by something older) during the spawn.
        unsafe {
            cmd.pre_exec(move || sys::child_after_fork(channel, CHANNEL_FD, keep, parent));
        }
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot start worker program {}: {e}",
                self.cfg.program.display()
            )
        })?;
        drop(theirs);
        let board = board.map(|(board, _fd)| board);
        let pid = child.id();
        let pidfd = sys::pidfd_open(pid).ok();
        #[cfg(all(test, not(loom)))]
        crate::process_pool::tests::before_hello_hook(&self.cfg.args, pid);
        // A worker that dies at once makes this fail; its end of stream then reports the start failure.
        let dead = sys::send_all(ours.as_fd(), &self.cfg.hello)
            .err()
            .map(|e| send_failure(&e));
        // A joiner reads the worker's reply in the dispatcher's stead only without a task count to
        // keep (this thread counts the tasks a worker ran). In spin mode too: a spinning joiner
        // catches the reply itself, where a spinning dispatcher would take a CPU from the worker
        // to pass it on.
        let lendable = self.cfg.max_tasks_per_child.is_none();
        Ok(Worker {
            child,
            pid,
            link: Arc::new(Link::new(ours, pidfd, board, lendable, self.cfg.max_frame)),
            published: false,
            lent: false,
            ahead: VecDeque::new(),
            sent_at: None,
            started_at: None,
            last_run: None,
            handed: false,
            state: WState::Starting,
            deadline: after(self.cfg.start_timeout),
            tasks_done: 0,
            dead,
            counted: None,
        })
    }

    /// A worker failed to start. `certain`: every start would fail the same way (the program does not
    /// call `run_if_worker`), so the pool breaks now instead of after `max_start_failures`.
    pub(super) fn start_failed(&mut self, message: String, certain: bool) {
        self.cfg.observer.worker_start_failed(&message);
        self.start_failures += 1;
        // Back off 25 ms, 50 ms, ... up to 1 s, so a transient failure (EMFILE, EAGAIN) can clear.
        let backoff = Duration::from_millis(25 << self.start_failures.min(6)) / 2;
        self.next_start = Some(Instant::now() + backoff.min(Duration::from_secs(1)));
        if (certain || self.start_failures >= self.cfg.max_start_failures) && self.broken.is_none()
        {
            let message = if certain {
                message
            } else {
                format!(
                    "{} worker processes in a row failed to start; the last one: {message}",
                    self.start_failures
                )
            };
            self.shared.lock().broken = Some(message.clone());
            if let Some(room) = &self.shared.room {
                room.close(RejectReason::Broken);
            }
            self.broken = Some(message.clone());
            self.fail_queued(|| JobFailure::Broken {
                message: message.clone(),
            });
        }
    }

    pub(super) fn bury(&mut self, mut w: Worker) {
        let death = w.dead.take().expect("only dead workers are buried");
        let exit = match death {
            Death::Eof | Death::Exited | Death::SendFailed => reap_after_eof(&mut w.child),
            _ => kill_and_reap(&mut w.child),
        };
        let pid = w.pid;
        drop(w.link);
        // Sent behind the task it ran, never started: sent again, ahead of the queue, without
        // counting an attempt (they did not meet the death). Before the current job's own retry,
        // which then goes first.
        for ahead in w.ahead.drain(..).rev() {
            self.queue.push_front(ahead.job);
        }
        let reason = match death {
            Death::Timeout => RestartReason::Timeout,
            Death::Protocol(_) => RestartReason::Protocol,
            _ => RestartReason::Died(exit),
        };
        match w.state {
            WState::Starting => {
                let certain = matches!(death, Death::HookMissing(_));
                let message = match death {
                    Death::InitFailed(m) | Death::HookMissing(m) => {
                        format!("worker process {pid}: {m}")
                    }
                    Death::StartTimeout => format!(
                        "worker process {pid} did not complete its handshake within {:?}",
                        self.cfg.start_timeout
                    ),
                    Death::Protocol(m) => {
                        format!("worker process {pid} broke the handshake: {m}")
                    }
                    Death::Stalled => format!(
                        "worker process {pid} did not read its channel for {:?}; does the program \
                         call `run_if_worker` first thing in `main`?",
                        self.cfg.start_timeout
                    ),
                    _ => format!(
                        "worker process {pid} ended before its handshake ({exit}); does the program \
                         call `run_if_worker` first thing in `main` (under `cargo test`: is \
                         `worker_test_entry` set to a test that calls it)?"
                    ),
                };
                self.start_failed(message, certain);
            }
            WState::Idle => self.cfg.observer.worker_restarted(pid, reason),
            WState::Retiring => {}
            WState::Busy {
                mut job,
                started,
                discard,
                limit,
                ..
            } => {
                self.cfg.observer.worker_restarted(pid, reason);
                let failure = match death {
                    Death::Timeout => JobFailure::Timeout {
                        pid,
                        limit: limit.unwrap_or_default(),
                    },
                    Death::Protocol(message) => JobFailure::Protocol { pid, message },
                    _ => JobFailure::WorkerDied { pid, exit },
                };
                // Died or stalled before acknowledging: it never ran the task.
                let never_ran = !started && matches!(failure, JobFailure::WorkerDied { .. });
                if started {
                    if !discard {
                        job.finished(Err(failure));
                    }
                } else if never_ran && job.attempts + 1 < MAX_ATTEMPTS {
                    // It never acknowledged the start, so it provably did not run: try again.
                    job.attempts += 1;
                    self.queue.push_front(job);
                } else {
                    job.failed_unstarted(failure);
                }
            }
        }
    }

    /// Graceful end: asks every worker to exit, waits up to the grace period, kills the rest.
    pub(super) fn stop_workers(&mut self) {
        self.unpublish_all();
        if let Ok(frame) = wire::encode_frame(&ToWorker::Shutdown, self.cfg.max_frame) {
            for w in &self.workers {
                if !matches!(w.state, WState::Retiring) {
                    let _ = sys::send_all(w.link.sock.as_fd(), &frame);
                }
            }
        }
        let deadline = after(self.cfg.shutdown_grace);
        for mut w in mem::take(&mut self.workers) {
            wait_until(&mut w.child, deadline);
        }
        self.publish_pids();
    }

    /// Kills and reaps every worker; running and queued jobs fail with `Killed`.
    pub(super) fn kill_all(&mut self) {
        self.adopt_all(true);
        for i in 0..self.workers.len() {
            self.look(i);
        }
        self.unpublish_all();
        for w in &mut self.workers {
            let _ = w.child.kill();
        }
        for mut w in mem::take(&mut self.workers) {
            let _ = w.child.wait();
            for ahead in w.ahead.drain(..) {
                ahead.job.failed_unstarted(JobFailure::Killed);
            }
            if let WState::Busy {
                job,
                started,
                discard,
                ..
            } = w.state
            {
                if !started {
                    job.failed_unstarted(JobFailure::Killed);
                } else if !discard {
                    job.finished(Err(JobFailure::Killed));
                }
            }
        }
        self.publish_pids();
        self.fail_queued(|| JobFailure::Killed);
    }
}

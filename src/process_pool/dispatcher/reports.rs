//! A worker's reports, read from its channel by the dispatcher: the
//! handshake, and the start and end of each job it holds.

use std::io;
use std::mem;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use super::{deliver, record_start, Counted, Death, Dispatcher, WState};
use crate::process_pool::job::RestartReason;
use crate::process_pool::reap::after;
use crate::process_pool::sys;
use crate::process_pool::wire::{self, FromWorker, ToWorker, PROTOCOL_VERSION};

impl Dispatcher {
    /// Reads what worker `i` sent and handles every whole message; nothing while a joiner reads its
    /// channel.
    pub(super) fn read_worker(&mut self, i: usize) {
        let mut eof = false;
        let mut messages = Vec::new();
        let mut broken = None;
        {
            let link = Arc::clone(&self.workers[i].link);
            let mut channel = link.channel();
            if channel.reader.is_some() {
                return;
            }
            // Whole messages are taken out before each receive, so the buffer grows only for a
            // frame larger than itself. They are handled out of the lock: handling takes the
            // pool's lock, which comes first.
            loop {
                loop {
                    match channel.frames.next_message::<FromWorker>() {
                        Ok(Some(msg)) => messages.push(msg),
                        Ok(None) => break,
                        Err(e) => {
                            broken = Some(e);
                            break;
                        }
                    }
                }
                if broken.is_some() {
                    break;
                }
                match channel.frames.recv(link.sock.as_fd(), sys::Wait::No) {
                    Ok((0, _)) => {
                        eof = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
        }
        for msg in messages {
            if self.workers[i].dead.is_some() {
                return;
            }
            self.on_message(i, msg);
        }
        if self.workers[i].dead.is_some() {
            return;
        }
        if let Some(e) = broken {
            self.workers[i].dead = Some(Death::Protocol(e.to_string()));
        } else if eof {
            self.workers[i].dead = Some(Death::Eof);
        }
    }

    /// [`read_worker`](Self::read_worker) for worker `i`, already found dead: what it wrote before
    /// it went is in the channel ahead of the end of stream, and is handled (a reply ends its job as
    /// it ended; a start failure names its cause). The death found first stays, unless the channel
    /// tells more.
    pub(super) fn read_last_reports(&mut self, i: usize) {
        let death = self.workers[i].dead.take();
        self.read_worker(i);
        if let Some(death) = death {
            self.workers[i].dead.get_or_insert(death);
        }
    }

    pub(super) fn on_message(&mut self, i: usize, msg: FromWorker) {
        // An idle worker reports only on a job a submitter handed it.
        self.adopt(i, false);
        // Before its end is handled: a quiet job that ended started.
        self.look(i);
        let w = &mut self.workers[i];
        let pid = w.pid;
        match (&mut w.state, msg) {
            (WState::Starting, FromWorker::Ready { version }) if version == PROTOCOL_VERSION => {
                w.state = WState::Idle;
                w.deadline = None;
                self.start_failures = 0;
                self.cfg.observer.worker_started(pid);
                w.counted = Some(Counted {
                    observer: Arc::clone(&self.cfg.observer),
                    pid,
                });
            }
            (WState::Starting, FromWorker::InitFailed(msg)) => {
                w.dead = Some(Death::InitFailed(msg));
            }
            (WState::Starting, FromWorker::HookMissing(msg)) => {
                w.dead = Some(Death::HookMissing(msg));
            }
            (
                WState::Busy {
                    job,
                    id,
                    started,
                    discard,
                    ..
                },
                FromWorker::Started { id: got, at },
            ) if *id == got && !*started => {
                #[cfg(all(test, not(loom)))]
                w.link
                    .started_frames
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                record_start(job, sys::nanos_ago(at), started, discard, &mut w.started_at);
            }
            (
                WState::Busy { id, .. },
                FromWorker::Finished {
                    id: got,
                    outcome,
                    ended_at,
                },
            ) if *id == got => {
                let WState::Busy {
                    job,
                    started,
                    discard,
                    ..
                } = mem::replace(&mut w.state, WState::Idle)
                else {
                    unreachable!("matched Busy above")
                };
                w.deadline = None;
                w.tasks_done += 1;
                // As the worker ran it, however late its reports were read.
                let ended_ago = sys::nanos_ago(ended_at);
                w.last_run = w
                    .started_at
                    .take()
                    .map(|at| at.elapsed().saturating_sub(ended_ago));
                if let Some(next) = w.ahead.pop_front() {
                    let limit = next.job.spec.timeout.or(self.cfg.task_timeout);
                    // Its clock starts now: it waited behind the one that just ended.
                    w.deadline = limit.and_then(after);
                    w.sent_at = Some(Instant::now());
                    w.handed = false;
                    w.state = WState::Busy {
                        job: next.job,
                        id: next.id,
                        started: false,
                        discard: false,
                        limit,
                        quiet: false,
                    };
                } else if self
                    .cfg
                    .max_tasks_per_child
                    .is_some_and(|n| w.tasks_done >= n)
                {
                    if let Ok(frame) = wire::encode_frame(&ToWorker::Shutdown, self.cfg.max_frame) {
                        let _ = sys::send_all(w.link.sock.as_fd(), &frame);
                    }
                    w.state = WState::Retiring;
                    w.deadline = after(self.cfg.shutdown_grace);
                    self.cfg
                        .observer
                        .worker_restarted(pid, RestartReason::Recycled);
                }
                if matches!(w.state, WState::Idle) && w.dead.is_none() && self.queue.is_empty() {
                    // Listed before the result is delivered: the joiner's next submit, often
                    // right after it, can then go to this worker directly.
                    w.published = true;
                    self.shared.lock().idle.push(Arc::clone(&w.link));
                }
                deliver(job, started, discard, outcome, ended_at);
            }
            (state, msg) => {
                let message = format!("unexpected message {msg:?} while {}", state.name());
                w.dead = Some(Death::Protocol(message));
            }
        }
    }
}

//! The dispatcher: the one thread that owns a process pool's workers. It
//! starts them, sends them jobs, reads their reports, sees them die (their
//! channel's end or their pidfd), reaps and replaces them, and hands every
//! job's end to its sink.

mod ages;
mod handoff;
mod lend;
mod lifecycle;
mod reports;

pub(super) use lend::{Lent, LEND_FOR, UNREAD_AFTER};

use std::borrow::Cow;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::board::{StartBoard, LOOK_EVERY};
use super::job::{JobFailure, JobOutcome, JobSink, JobSpec, PoolObserver};
use super::reap::after;
use super::spin::SpinState;
use super::sys;
use super::wire::{self, Blob, Call, FrameReader, ToWorker, WireOutcome};
use crate::bounded::Room;
use crate::error::RejectReason;

/// The most jobs a worker holds at once when it pipelines: the one it runs and those sent behind it.
const PIPELINE_DEPTH: usize = 4;
/// A worker whose last task ran shorter than this, and whose current one was sent less than this
/// ago, gets jobs sent behind the current one: its next frame is then waiting when it finishes,
/// instead of a round trip through this thread. Longer tasks gain nothing from it, and a job sent
/// behind one is bound to that worker (a worker freed sooner cannot take it, and `shutdown_now` no
/// longer cancels it), so only tasks that look short get jobs behind them.
pub(super) const PIPELINE_BELOW: Duration = Duration::from_micros(100);
/// How often a job is sent again after its worker died before acknowledging it.
const MAX_ATTEMPTS: u32 = 3;
/// Where pidfds are unavailable (kernels before 5.3, a seccomp filter), how often busy or starting
/// workers are checked for an exit that their channel does not show (a forked child holds it open).
const EXIT_CHECK: Duration = Duration::from_millis(250);

/// Lifecycle of the pool; ordered so a stop request only ever escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Mode {
    Running,
    Shutdown,
    ShutdownNow,
    Kill,
    Terminated,
}

pub(super) struct Shared {
    pub(super) inner: Mutex<Inner>,
    pub(super) wake: sys::EventFd,
    /// The places of a bounded queue; `None` for an unbounded one.
    pub(super) room: Option<Arc<Room>>,
    /// What the dispatcher holds, as of its last look: see [`Ages`].
    pub(super) ages: Ages,
    /// The id of the next `Run` frame, whichever thread sends it.
    pub(super) next_id: AtomicU64,
    /// Wakes the dispatcher a while after a job was handed to a worker whose channel it does not
    /// watch, in case no joiner reads the reply: see [`Inner::timer_armed`].
    pub(super) timer: sys::TimerFd,
    /// How long a joiner reads its worker's reply itself ([`LEND_FOR`]).
    pub(super) lend_for: Duration,
}

/// The oldest task the dispatcher holds, as raw clock readings (0: none),
/// published by the dispatcher thread each time its loop takes submissions
/// or is about to sleep: the start of the longest-running task, and the
/// submit time of the oldest task it holds unstarted (in its queue, or sent
/// to a worker that has not acknowledged it). Submissions it has not taken
/// yet are in [`Inner::queue`], which a scrape reads itself.
#[derive(Default)]
pub(super) struct Ages {
    running: AtomicU64,
    queued: AtomicU64,
}

/// A worker's channel, shared with the submitting threads that may send it a job directly, and
/// with the thread joining such a job, which may read the reply itself (see [`lend`]).
pub(super) struct Link {
    pub(super) sock: OwnedFd,
    /// Readable once the process exits; `None` where pidfds are unavailable (then polled by `try_wait`).
    pub(super) pidfd: Option<OwnedFd>,
    /// Where the worker records the start of a quiet job; `None` where it cannot be shared.
    pub(super) board: Option<StartBoard>,
    /// Whether the joiner of a job handed over here may read its reply; if so, the dispatcher does
    /// not watch the channel while the worker is listed idle.
    lendable: bool,
    /// Whether a joiner reading this channel waits in a receive (`SO_RCVTIMEO` is set, to
    /// [`LOOK_EVERY`]) rather than in `poll`: see [`sys::wait_for_data`].
    waits_in_recv: bool,
    /// The channel's reading side and the job handed over, if any.
    channel: Mutex<Channel>,
    /// A submitting thread's send on this channel failed: the worker is gone, or stopped reading.
    send_error: Mutex<Option<io::Error>>,
    /// `Started` frames read from this channel.
    #[cfg(all(test, not(loom)))]
    pub(in crate::process_pool) started_frames: AtomicU64,
}

/// What is read from a worker's channel, by the dispatcher or by a joiner reading it in its
/// stead; every read and every move of the handed job happens under this lock, so a report is
/// handled once, by whoever holds the job then.
struct Channel {
    /// A job a submitting thread sent on this channel, until the dispatcher adopts it or its
    /// joiner ends it.
    handed: Option<Handed>,
    /// The id of the handed job whose joiner reads the channel now (or ended the job and has yet
    /// to list the worker idle): until it stops, the dispatcher neither watches the channel nor
    /// adopts the job nor sends the worker another, unless it must (the worker died, the pool
    /// stops), which makes the joiner stop.
    reader: Option<u64>,
    /// Bytes read from the channel and not handled yet.
    frames: FrameReader,
}

/// A job sent to a worker by the submitting thread.
struct Handed {
    job: Job,
    id: u64,
    sent_at: Instant,
    /// Its joiner may read the reply: the link is lendable and the job has no timeout (which the
    /// dispatcher enforces from the send on).
    lendable: bool,
    /// As in [`WState::Busy`], when its joiner read the worker's `Started`.
    started: bool,
    discard: bool,
    started_at: Option<Instant>,
    /// As in [`WState::Busy`].
    quiet: bool,
}

impl Handed {
    /// Takes a quiet job's start from the worker's board, if it started and that is not known yet.
    fn look(&mut self, board: Option<&StartBoard>) {
        if self.quiet {
            take_start(
                board,
                self.id,
                &mut self.job,
                &mut self.started,
                &mut self.discard,
                &mut self.started_at,
            );
        }
    }
}

/// Reads quiet job `id`'s start from `board` unless it is `started` already: the job's sink is told
/// when it started (`discard` if its owner cancelled it), and `started_at` is set to that instant.
/// Shared by a job handed over ([`Handed`]) and one the dispatcher holds ([`WState::Busy`]).
fn take_start(
    board: Option<&StartBoard>,
    id: u64,
    job: &mut Job,
    started: &mut bool,
    discard: &mut bool,
    started_at: &mut Option<Instant>,
) {
    if *started {
        return;
    }
    if let Some(ago) = board.and_then(|b| b.started(id)) {
        record_start(job, ago, started, discard, started_at);
    }
}

/// A job's task started `ago` before now, as its worker reported (on its board or in a `Started`
/// frame): the job's sink is told (`discard` if its owner cancelled it), and `started_at` is set to
/// that instant.
fn record_start(
    job: &mut Job,
    ago: Duration,
    started: &mut bool,
    discard: &mut bool,
    started_at: &mut Option<Instant>,
) {
    *started = true;
    *discard = !job.sink.started(ago);
    *started_at = Some(before_now(ago));
}

/// The instant `ago` before now (now, if that is before the clock's start).
fn before_now(ago: Duration) -> Instant {
    let now = Instant::now();
    now.checked_sub(ago).unwrap_or(now)
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // Sink and observer calls happen outside this lock, so a poisoned lock still holds valid state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(super) struct Inner {
    pub(super) mode: Mode,
    /// Submitted jobs the dispatcher has not taken yet.
    pub(super) queue: VecDeque<Job>,
    pub(super) broken: Option<String>,
    pub(super) pids: Vec<u32>,
    /// The channels of the workers alive, for a scrape to see the jobs handed over to them, which
    /// this thread holds only once it adopts them.
    pub(super) links: Vec<Arc<Link>>,
    /// Idle workers a submitting thread may send a job to itself, when nothing is queued ahead of
    /// it: the job then costs no wake-up of this thread. Whoever removes a link here owns the
    /// worker's next job: a submitter hands it over through [`Link::hand`], the dispatcher sends it.
    /// A joiner that read the reply of a job handed over lists the worker here again.
    pub(super) idle: Vec<Arc<Link>>,
    /// The dispatcher holds jobs it has not sent: submitters queue behind them rather than take an
    /// idle worker, and a joiner that lists a worker idle wakes the dispatcher.
    pub(super) backlog: bool,
    /// [`Shared::timer`] is set. A submitter that hands a lendable job sets it unless it is set
    /// already; the dispatcher, woken by it, clears it and adopts the jobs no joiner reads.
    pub(super) timer_armed: bool,
}

pub(super) struct Job {
    pub(super) spec: JobSpec,
    pub(super) sink: Box<dyn JobSink>,
    pub(super) attempts: u32,
    /// The job's place in a bounded queue, given back when the job is sent
    /// to a worker or ends unsent (a job sent again after its worker died
    /// takes no new place).
    pub(super) place: Option<Place>,
}

/// A place taken in a bounded queue, given back when dropped.
pub(super) struct Place(pub(super) Arc<Room>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Job {
    /// Reports the end of a started job. The report may run the user's code on this thread (the
    /// `Waker` of whoever `.await`s the task): a panic there is contained, so one task's waker cannot
    /// take down the dispatcher, and with it every other task.
    fn finished(self, outcome: JobOutcome) {
        self.ended(outcome, Duration::ZERO);
    }

    /// [`finished`](Self::finished), `ago` before now.
    fn ended(self, outcome: JobOutcome, ago: Duration) {
        let sink = self.sink;
        let _ = catch_unwind(AssertUnwindSafe(move || sink.finished(outcome, ago)));
    }

    /// Reports the end of a job that never started; contained as [`finished`](Self::finished) is.
    fn failed_unstarted(self, failure: JobFailure) {
        let sink = self.sink;
        let _ = catch_unwind(AssertUnwindSafe(move || sink.failed_unstarted(failure)));
    }
}

pub(super) struct Config {
    pub(super) max_workers: usize,
    pub(super) max_tasks_per_child: Option<u64>,
    pub(super) task_timeout: Option<Duration>,
    pub(super) start_timeout: Duration,
    pub(super) shutdown_grace: Duration,
    pub(super) max_start_failures: u32,
    pub(super) max_frame: usize,
    pub(super) program: PathBuf,
    pub(super) arg0: Option<OsString>,
    pub(super) args: Vec<OsString>,
    /// The `Hello` frame, the same for every worker.
    pub(super) hello: Vec<u8>,
    pub(super) observer: Arc<dyn PoolObserver>,
    /// How long this thread and the workers poll before they block (zero: they block at once).
    pub(super) spin: Duration,
    /// [`PIPELINE_BELOW`], or another bound in unit tests.
    pub(super) pipeline_below: Duration,
}

enum WState {
    /// Started, handshake not done.
    Starting,
    Idle,
    Busy {
        job: Job,
        id: u64,
        /// `Started` arrived.
        started: bool,
        /// The sink said the owner cancelled it: drop the outcome.
        discard: bool,
        limit: Option<Duration>,
        /// The worker records its start on its board ([`Link::board`]) without a `Started` frame.
        quiet: bool,
    },
    /// Sent `Shutdown` after `max_tasks_per_child`; waiting for it to exit.
    Retiring,
}

impl WState {
    fn name(&self) -> &'static str {
        match self {
            WState::Starting => "starting",
            WState::Idle => "idle",
            WState::Busy { started: false, .. } => "dispatched",
            WState::Busy { started: true, .. } => "running a task",
            WState::Retiring => "retiring",
        }
    }
}

/// Why a worker is being removed.
enum Death {
    /// Its channel reached end of stream (or failed): the process is gone or going.
    Eof,
    /// The process exited (seen through its pidfd), whoever still holds its channel.
    Exited,
    /// Sending to it failed (it is gone).
    SendFailed,
    /// A send to it made no progress for the stall bound: it stopped reading.
    Stalled,
    Protocol(String),
    InitFailed(String),
    /// The program does not call `run_if_worker`: no worker of it can ever start.
    HookMissing(String),
    StartTimeout,
    Timeout,
    RetireTimeout,
}

struct Worker {
    child: Child,
    pid: u32,
    link: Arc<Link>,
    /// Idle and listed in [`Inner::idle`] (or taken from there by a submitter since).
    published: bool,
    /// Published, and the job a submitter handed it is read by its joiner: it takes no job.
    lent: bool,
    state: WState,
    /// Start timeout, task timeout or retire grace, depending on the state.
    deadline: Option<Instant>,
    tasks_done: u64,
    dead: Option<Death>,
    /// Jobs sent behind the one it runs, in order; none has started.
    ahead: VecDeque<Ahead>,
    /// When its current job was sent (or, sent behind another, became current), when it started,
    /// and how long its last one ran.
    sent_at: Option<Instant>,
    started_at: Option<Instant>,
    last_run: Option<Duration>,
    /// Its current job was handed to it by a submitting thread, whose send may still be on its
    /// way: nothing may be sent behind it before the worker acknowledges it.
    handed: bool,
    /// Set once the handshake is done: reports the worker's exit when the worker is dropped, which
    /// every path that removes a worker does once it is reaped (or given up on).
    counted: Option<Counted>,
}

/// A job sent to a worker behind the one it runs.
struct Ahead {
    job: Job,
    id: u64,
}

/// A started worker, counted alive until this is dropped.
struct Counted {
    observer: Arc<dyn PoolObserver>,
    pid: u32,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.observer.worker_exited(self.pid);
    }
}

impl Worker {
    /// Whether the process has exited (it is then reaped; `Child` keeps its status for `bury`).
    fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

pub(super) struct Dispatcher {
    shared: Arc<Shared>,
    cfg: Config,
    workers: Vec<Worker>,
    /// Jobs taken from `Inner::queue`, in order, not yet sent.
    queue: VecDeque<Job>,
    /// Consecutive failed starts; reset by a successful handshake.
    start_failures: u32,
    broken: Option<String>,
    /// After a failed start, no new start before this instant (a short backoff).
    next_start: Option<Instant>,
    pollfds: Vec<libc::pollfd>,
    spin: SpinState,
    /// What [`Inner::backlog`] says.
    backlog: bool,
}

impl Dispatcher {
    /// The dispatcher of a new pool; [`run`](Self::run) it on its own thread.
    pub(super) fn new(shared: Arc<Shared>, cfg: Config) -> Dispatcher {
        Dispatcher {
            shared,
            cfg,
            workers: Vec::new(),
            queue: VecDeque::new(),
            start_failures: 0,
            broken: None,
            next_start: None,
            pollfds: Vec::new(),
            spin: SpinState::default(),
            backlog: false,
        }
    }

    pub(super) fn run(&mut self) {
        loop {
            let mode = self.take_submissions();
            // After the mode was read: a submitter hands jobs over only while the pool runs, so
            // once a stop is seen, every job handed over before it is adopted here, from its
            // joiner too.
            self.adopt_all(mode != Mode::Running);
            match mode {
                Mode::Kill | Mode::Terminated => {
                    self.kill_all();
                    break;
                }
                Mode::ShutdownNow => self.fail_queued(|| JobFailure::Cancelled),
                Mode::Running | Mode::Shutdown => {}
            }
            if let Some(msg) = &self.broken {
                let message = msg.clone();
                self.fail_queued(|| JobFailure::Broken {
                    message: message.clone(),
                });
            }
            self.dispatch();
            if self.sweep() {
                continue; // re-queued jobs or freed slots: dispatch again before sleeping
            }
            let busy = self
                .workers
                .iter()
                .any(|w| matches!(w.state, WState::Busy { .. }));
            if mode != Mode::Running && self.queue.is_empty() && !busy {
                self.stop_workers();
                break;
            }
            self.wait_for_events();
            self.sweep();
        }
        let leftover: Vec<Job> = {
            let mut inner = self.shared.lock();
            inner.mode = Mode::Terminated;
            inner.pids.clear();
            inner.links.clear();
            inner.queue.drain(..).collect()
        };
        for job in leftover.into_iter().chain(self.queue.drain(..)) {
            job.failed_unstarted(JobFailure::Cancelled);
        }
    }

    /// Moves new submissions into the local queue; returns the requested mode.
    fn take_submissions(&mut self) -> Mode {
        let mut inner = self.shared.lock();
        self.queue.extend(inner.queue.drain(..));
        // Under the lock: a scrape never misses the jobs being moved.
        self.publish_ages();
        inner.mode
    }

    fn publish_pids(&self) {
        let pids = self.workers.iter().map(|w| w.pid).collect();
        let links = self.workers.iter().map(|w| Arc::clone(&w.link)).collect();
        let mut inner = self.shared.lock();
        inner.pids = pids;
        inner.links = links;
    }

    fn fail_queued(&mut self, failure: impl Fn() -> JobFailure) {
        for job in self.queue.drain(..) {
            if !job.sink.is_cancelled() {
                job.failed_unstarted(failure());
            }
        }
    }

    /// Sends queued jobs to idle workers and starts workers for the rest, up to the maximum.
    fn dispatch(&mut self) {
        loop {
            while self.queue.front().is_some_and(|j| j.sink.is_cancelled()) {
                self.queue.pop_front();
            }
            if self.queue.is_empty() {
                break;
            }
            let Some(i) = self.workers.iter().position(|w| {
                w.dead.is_none() && !(w.published && w.lent) && matches!(w.state, WState::Idle)
            }) else {
                break;
            };
            if !self.claim(i) {
                continue; // a submitter sent it a job of its own meanwhile
            }
            let job = self.queue.pop_front().expect("queue is not empty");
            self.send_job(i, job);
        }
        if self.queue.is_empty() {
            self.publish_idle();
        }
        #[cfg(all(test, not(loom)))]
        if let Some(job) = self.queue.front() {
            super::tests::backlog_hook(&job.spec.task);
        }
        self.publish_backlog();
        if self.broken.is_some() {
            return;
        }
        if let Some(at) = self.next_start {
            if Instant::now() < at {
                return;
            }
            self.next_start = None;
        }
        let starting = self
            .workers
            .iter()
            .filter(|w| matches!(w.state, WState::Starting))
            .count();
        let mut wanted = self.queue.len().saturating_sub(starting);
        while wanted > 0
            && self.workers.len() < self.cfg.max_workers
            && self.broken.is_none()
            && self.next_start.is_none()
        {
            self.spawn();
            wanted -= 1;
        }
        if self.workers.len() >= self.cfg.max_workers {
            self.pipeline();
        }
    }

    /// A new frame id, and the `Run` frame of `job` under it; a job that cannot be encoded fails.
    /// The job leaves the bounded queue: its place is given back.
    fn encode_run(&self, mut job: Job) -> Option<(Job, u64, Vec<u8>)> {
        drop(job.place.take());
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = wire::encode_frame(
            &ToWorker::Run {
                id,
                call: Call {
                    task: Cow::Borrowed(&job.spec.task),
                    payload: Blob(Cow::Borrowed(&job.spec.payload)),
                },
            },
            self.cfg.max_frame,
        );
        match frame {
            Ok(frame) => Some((job, id, frame)),
            Err(message) => {
                job.failed_unstarted(JobFailure::Serialization { message });
                None
            }
        }
    }

    fn send_job(&mut self, i: usize, job: Job) {
        let Some((job, id, frame)) = self.encode_run(job) else {
            return;
        };
        let limit = job.spec.timeout.or(self.cfg.task_timeout);
        let w = &mut self.workers[i];
        w.deadline = limit.and_then(after);
        w.sent_at = Some(Instant::now());
        w.handed = false;
        if let Err(e) = sys::send_all(w.link.sock.as_fd(), &frame) {
            w.dead = Some(send_failure(&e));
        }
        w.state = WState::Busy {
            job,
            id,
            started: false,
            discard: false,
            limit,
            quiet: false,
        };
    }

    /// Takes the start of worker `i`'s quiet job from its board, if it started and that is not
    /// known yet.
    pub(super) fn look(&mut self, i: usize) {
        let w = &mut self.workers[i];
        let WState::Busy {
            job,
            id,
            started,
            discard,
            quiet: true,
            ..
        } = &mut w.state
        else {
            return;
        };
        take_start(
            w.link.board.as_ref(),
            *id,
            job,
            started,
            discard,
            &mut w.started_at,
        );
    }

    /// Whether a worker runs a quiet job whose start is not known yet.
    fn unseen_start(&self) -> bool {
        self.workers.iter().any(|w| {
            matches!(
                w.state,
                WState::Busy {
                    started: false,
                    quiet: true,
                    ..
                }
            )
        })
    }

    /// Sleeps until a submission, a worker message or exit, or the nearest deadline, and handles what
    /// happened.
    fn wait_for_events(&mut self) {
        self.publish_ages();
        let now = Instant::now();
        // A pending restart after a backoff is a deadline too, but only when there is work waiting.
        let restart = self.next_start.filter(|_| !self.queue.is_empty());
        let exit_check = self
            .workers
            .iter()
            .any(|w| w.dead.is_none() && w.link.pidfd.is_none())
            .then(|| now + EXIT_CHECK);
        let look = self.unseen_start().then(|| now + LOOK_EVERY);
        let timeout_ms = self
            .workers
            .iter()
            .filter_map(|w| w.deadline)
            .chain(restart)
            .chain(exit_check)
            .chain(look)
            .min()
            .map_or(-1, |d| {
                let ms = d.saturating_duration_since(now).as_micros().div_ceil(1000);
                ms.min(i32::MAX as u128) as i32
            });
        let mut pollfds = mem::take(&mut self.pollfds);
        pollfds.clear();
        for fd in [self.shared.wake.raw(), self.shared.timer.raw()] {
            pollfds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // Two entries a worker: its channel, then its pidfd (-1 entries are skipped by poll). The
        // channel of a lendable worker listed idle is not watched: it says nothing until it has a
        // job, and the reply to a job handed to it is read by its joiner, or else after the timer.
        for w in &self.workers {
            let live = |fd: Option<&OwnedFd>| match fd {
                Some(fd) if w.dead.is_none() => fd.as_raw_fd(),
                _ => -1,
            };
            let channel = (!(w.published && w.link.lendable)).then_some(&w.link.sock);
            for fd in [live(channel), live(w.link.pidfd.as_ref())] {
                pollfds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        // Polling without blocking first, within the nearest deadline: a spin that sees an event
        // leaves its results in `pollfds`, as the blocking poll would.
        let limit = match u64::try_from(timeout_ms) {
            Ok(ms) => self.cfg.spin.min(Duration::from_millis(ms)),
            Err(_) => self.cfg.spin,
        };
        let spun = self.spin.spin(
            limit,
            || matches!(sys::poll(&mut pollfds, 0), Ok(n) if n > 0),
        );
        let waited = if spun {
            Ok(1)
        } else {
            sys::poll(&mut pollfds, timeout_ms)
        };
        if let Err(e) = waited {
            // Only EFAULT/EINVAL/ENOMEM: back off instead of spinning.
            eprintln!("executor-exporter: process pool poll failed: {e}");
            thread::sleep(Duration::from_millis(10));
        }
        if pollfds[0].revents != 0 {
            self.shared.wake.drain();
        }
        if pollfds[1].revents != 0 {
            self.shared.timer.drain();
            // Cleared after the drain: a submitter that finds it set relies on this wake-up.
            self.shared.lock().timer_armed = false;
        }
        // Before any report of a worker is read: a report may be about a job handed to it.
        self.adopt_all(false);
        for i in 0..self.workers.len() {
            self.look(i);
            let (channel, pidfd) = (pollfds[2 + 2 * i].revents, pollfds[3 + 2 * i].revents);
            let exited = if self.workers[i].link.pidfd.is_some() {
                pidfd != 0
            } else {
                exit_check.is_some() && self.workers[i].has_exited()
            };
            if exited {
                // Its last reports are read here, its job taken back from a joiner reading them.
                self.adopt(i, true);
            }
            if channel != 0 || exited {
                // Whatever it wrote before it exited is in the channel already: read it first.
                self.read_worker(i);
            }
            let w = &mut self.workers[i];
            if exited && w.dead.is_none() {
                w.dead = Some(Death::Exited);
            }
        }
        self.pollfds = pollfds;

        let now = Instant::now();
        for w in &mut self.workers {
            if w.dead.is_some() || w.deadline.is_none_or(|d| d > now) {
                continue;
            }
            w.dead = Some(match w.state {
                WState::Starting => Death::StartTimeout,
                WState::Busy { .. } => Death::Timeout,
                WState::Retiring => Death::RetireTimeout,
                WState::Idle => continue,
            });
        }
    }

    /// Removes dead workers: reaps them, reports them, and fails or re-queues their jobs. Returns whether
    /// anything was removed.
    fn sweep(&mut self) -> bool {
        if self.workers.iter().all(|w| w.dead.is_none()) {
            return false;
        }
        for i in 0..self.workers.len() {
            if self.workers[i].dead.is_some() {
                // Out of `Inner::idle`, with any job a submitter handed it, from its joiner too:
                // that job is then retried or failed with the worker, as its board says it started.
                self.claim(i);
                self.adopt(i, true);
                self.look(i);
                // A worker a send found gone may have replied before it went.
                if matches!(self.workers[i].dead, Some(Death::SendFailed)) {
                    self.read_last_reports(i);
                }
            }
        }
        let (dead, alive): (Vec<Worker>, Vec<Worker>) = mem::take(&mut self.workers)
            .into_iter()
            .partition(|w| w.dead.is_some());
        self.workers = alive;
        self.publish_pids();
        for w in dead {
            self.bury(w);
        }
        true
    }
}

impl Drop for Dispatcher {
    /// Normally there is nothing left here. If the dispatcher panicked, this keeps the promises anyway:
    /// no worker outlives the pool, no job waits forever, later submits fail.
    fn drop(&mut self) {
        if !thread::panicking() {
            return;
        }
        let message = "internal error: the process pool's dispatcher thread panicked".to_owned();
        {
            let mut inner = self.shared.lock();
            inner.mode = Mode::Terminated;
            inner.broken = Some(message.clone());
            inner.pids.clear();
            inner.links.clear();
            self.queue.extend(inner.queue.drain(..));
        }
        if let Some(room) = &self.shared.room {
            room.close(RejectReason::Broken);
        }
        self.broken = Some(message);
        self.kill_all();
    }
}

fn send_failure(e: &io::Error) -> Death {
    if e.kind() == io::ErrorKind::WouldBlock {
        Death::Stalled
    } else {
        Death::SendFailed
    }
}

/// Hands the worker's report of a job to its sink.
fn deliver(mut job: Job, started: bool, discard: bool, outcome: WireOutcome, ended_at: u64) {
    if let WireOutcome::UnknownTask(name) = outcome {
        if !started {
            return job.failed_unstarted(JobFailure::UnknownTask { name });
        }
        return job.finished(Err(JobFailure::UnknownTask { name }));
    }
    // A `Finished` without `Started` is tolerated: the start and the end are reported together.
    if discard || (!started && !job.sink.started(sys::nanos_ago(ended_at))) {
        return;
    }
    // The end the worker saw: the duration does not grow with a late read of the reply.
    job.ended(outcome.into_job_outcome(), sys::nanos_ago(ended_at));
}

//! Unit tests of what the behaviour tests in `tests/` cannot reach: the crate-internal seams `JobSink`
//! and `PoolObserver` (`dispatch`), a joiner reading its worker's reply (`lending`), and the wire
//! format with the receives that read it (`frames`). This file holds what they share: the test-only
//! hooks the pool calls in test builds, the tasks, and a recording sink and observer.
//!
//! This test binary is its own worker: `worker_entry` below runs the hook, and pools here are built with
//! `worker_test_entry(ENTRY)`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use proptest::prelude::*;

use super::job::{
    JobFailure, JobOutcome, JobSink, JobSpec, PoolObserver, RestartReason, WorkerExit,
};
use super::wire::{
    self, Blob, Bytes, Call, FrameError, FrameReader, FromWorker, ToWorker, WireOutcome, HEADER_LEN,
};
use super::{run_if_worker, ProcessPool, ProcessPoolBuilder, ProcessTask, WorkerRegistry};

const ENTRY: &str = "process_pool::tests::worker_entry";
const WATCHDOG: Duration = Duration::from_secs(60);

/// Aborts the whole test binary if the test holding it runs longer than twice the watchdog: covers the
/// blocking waits no helper wraps (implicit drops and shutdowns at the end of a test).
#[must_use]
fn test_watchdog(name: &'static str) -> impl Drop {
    struct Guard(Option<crossbeam_channel::Sender<()>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.take();
        }
    }
    let (tx, rx) = crossbeam_channel::bounded::<()>(0);
    std::thread::spawn(move || {
        if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = rx.recv_timeout(WATCHDOG * 2) {
            eprintln!("test {name} hung for {:?}: aborting", WATCHDOG * 2);
            std::process::abort();
        }
    });
    Guard(Some(tx))
}

// ---- test-only worker hook ----

/// Task names starting with these prefixes make the worker die after receiving the task and before
/// acknowledging it: the only way to reach the retry path deterministically.
const DIE_ONCE: &str = "test:die_before_ack_once:";
const DIE_ALWAYS: &str = "test:die_before_ack_always:";
/// `test:late_send:<task>`: a submitting thread that hands `<task>` to an idle worker sends its frame
/// only after the dispatcher adopted the job (see [`direct_send_hook`]); the worker runs `<task>`.
const LATE_SEND: &str = "test:late_send:";
/// Set by [`direct_send_hook`] once a `LATE_SEND` job is handed over and its send held back.
static LATE_SEND_HELD: AtomicBool = AtomicBool::new(false);

/// `test:exit_after_reply:<task>`: the worker runs `<task>`, sends its reply, and exits.
const EXIT_AFTER_REPLY: &str = "test:exit_after_reply:";
/// `test:sent_behind_the_exit:<task>`: the dispatcher, about to send `<task>` behind a busy
/// worker's current one, first waits for that worker to exit (see [`pipeline_hook`]); the worker
/// that gets it runs `<task>`.
const SENT_BEHIND_THE_EXIT: &str = "test:sent_behind_the_exit:";
/// Set once [`pipeline_hook`] has held a `SENT_BEHIND_THE_EXIT` send back: it does so once per test
/// binary.
static SENT_BEHIND_THE_EXIT_HELD: AtomicBool = AtomicBool::new(false);

/// Whether the worker exits once it has replied to `task` (test builds only).
pub(super) fn exits_after_reply(task: &str) -> bool {
    task.starts_with(EXIT_AFTER_REPLY)
}

/// Called (test builds only) by the dispatcher just before it sends `task` behind the current job
/// of worker `pid`: for a `SENT_BEHIND_THE_EXIT` task, it waits until that worker has exited, so
/// the send fails with the worker's last reply unread in its channel.
pub(super) fn pipeline_hook(task: &str, pid: u32) {
    if !task.starts_with(SENT_BEHIND_THE_EXIT)
        || SENT_BEHIND_THE_EXIT_HELD.swap(true, Ordering::SeqCst)
    {
        return;
    }
    wait_for_exit(pid);
}

/// Waits until worker `pid`, a child of this process, has exited, leaving it for its `Child` to
/// reap.
fn wait_for_exit(pid: u32) {
    // SAFETY: an all-zero `siginfo_t` is valid, and waitid(2) on our own child with `WNOWAIT`
    // leaves it for its `Child` to reap.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        );
    }
}

/// Called (test builds only) by a submitting thread that handed a job to an idle worker, between
/// the hand-over and the send: for a `LATE_SEND` task, the returned hook holds the send back until
/// the dispatcher has adopted the job (it must be woken for that: the test submits more), so that
/// the dispatcher acts on the job before its frame is on the channel.
pub(super) fn direct_send_hook(task: &str) -> impl FnOnce(&super::dispatcher::Link) {
    let late = task.starts_with(LATE_SEND);
    move |link| {
        if !late {
            return;
        }
        LATE_SEND_HELD.store(true, Ordering::SeqCst);
        let until = std::time::Instant::now() + WATCHDOG;
        while link.is_handed() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_micros(100));
        }
        // Time for the dispatcher to act on what it adopted.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The entry of a worker whose program forgot `run_if_worker`: see [`careless_entry`].
const CARELESS_ENTRY: &str = "process_pool::tests::careless_entry";

/// Called (test builds only) by the dispatcher between a worker's start and its hello: a worker
/// of [`CARELESS_ENTRY`] is first let exit, as it may on a loaded machine, so the hello finds it
/// gone with its last words unread in the channel.
pub(super) fn before_hello_hook(args: &[std::ffi::OsString], pid: u32) {
    if !args.iter().any(|a| a == CARELESS_ENTRY) {
        return;
    }
    wait_for_exit(pid);
}

/// A task whose joiner, having read its end, waits before it lists the worker idle again: the
/// window in which the pool may stop and take the worker back.
const SLOW_RELIST: &str = "test:slow_relist:";

/// Called (test builds only) by a joiner that read its task's end, before it lists the worker idle.
pub(super) fn relist_hook(task: &str) {
    if task.starts_with(SLOW_RELIST) {
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A queued task that the dispatcher, finding no worker free for it, holds for a while before it
/// tells submitters and joiners it holds a backlog: the window in which a joiner may list its
/// worker idle again without seeing the backlog.
const SLOW_BACKLOG: &str = "test:slow_backlog:";
/// Set once [`backlog_hook`] has held a `SLOW_BACKLOG` task back: it does so once per test binary.
static SLOW_BACKLOG_HELD: AtomicBool = AtomicBool::new(false);

/// Called (test builds only) by the dispatcher with the first task it holds unsent, just before
/// it publishes its backlog.
pub(super) fn backlog_hook(task: &str) {
    if task.starts_with(SLOW_BACKLOG) && !SLOW_BACKLOG_HELD.swap(true, Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Called by the worker loop (test builds only) on every `Run`. `test:die_before_ack_once:<file>|<task>`
/// dies if `<file>` exists (removing it), else runs `<task>`; `..._always:<task>` always dies.
pub(super) fn before_ack_hook(call: Call<'_>) -> Call<'_> {
    if call.task.starts_with(DIE_ALWAYS) {
        std::process::exit(9);
    }
    if let Some(task) = [LATE_SEND, EXIT_AFTER_REPLY, SENT_BEHIND_THE_EXIT]
        .iter()
        .find_map(|prefix| call.task.strip_prefix(prefix))
    {
        return Call {
            task: task.to_owned().into(),
            payload: call.payload,
        };
    }
    if let Some(rest) = call.task.strip_prefix(DIE_ONCE) {
        let (file, task) = rest.split_once('|').expect("file|task");
        if std::fs::remove_file(file).is_ok() {
            std::process::exit(9);
        }
        return Call {
            task: task.to_owned().into(),
            payload: call.payload,
        };
    }
    call
}

// ---- tasks ----

struct Square;
impl ProcessTask for Square {
    const NAME: &'static str = "square";
    type Input = u64;
    type Output = u64;
    type Error = String;
    fn run(x: u64) -> Result<u64, String> {
        Ok(x * x)
    }
}

struct SleepMs;
impl ProcessTask for SleepMs {
    const NAME: &'static str = "sleep_ms";
    type Input = u64;
    type Output = ();
    type Error = String;
    fn run(ms: u64) -> Result<(), String> {
        std::thread::sleep(Duration::from_millis(ms));
        Ok(())
    }
}

struct SlowRelist;
impl ProcessTask for SlowRelist {
    const NAME: &'static str = "test:slow_relist:square";
    type Input = u64;
    type Output = u64;
    type Error = String;
    fn run(x: u64) -> Result<u64, String> {
        Ok(x * x)
    }
}

struct SlowBacklog;
impl ProcessTask for SlowBacklog {
    const NAME: &'static str = "test:slow_backlog:square";
    type Input = u64;
    type Output = u64;
    type Error = String;
    fn run(x: u64) -> Result<u64, String> {
        Ok(x * x)
    }
}

struct SelfKill;
impl ProcessTask for SelfKill {
    const NAME: &'static str = "self_kill";
    type Input = ();
    type Output = ();
    type Error = String;
    fn run((): ()) -> Result<(), String> {
        // SAFETY: kill(2) on our own pid with a valid signal.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        unreachable!()
    }
}

struct FailInit;
impl ProcessTask for FailInit {
    const NAME: &'static str = "fail_init";
    type Input = ();
    type Output = ();
    type Error = String;
    fn run((): ()) -> Result<(), String> {
        Err("no config".into())
    }
}

#[test]
fn worker_entry() {
    run_if_worker(
        &WorkerRegistry::new()
            .register::<Square>()
            .register::<SleepMs>()
            .register::<SelfKill>()
            .register::<SlowRelist>()
            .register::<SlowBacklog>()
            .register::<FailInit>(),
    );
}

/// A program that builds a pool where `run_if_worker` should have been: in a worker the build
/// fails and tells the pool that started it why, and the worker exits.
#[test]
fn careless_entry() {
    if super::is_worker_process() {
        let built = ProcessPool::builder().max_workers(1).build();
        std::process::exit(if built.is_err() { 3 } else { 0 });
    }
}

// ---- recording sink and observer ----

#[derive(Debug, PartialEq)]
enum Ev {
    Started,
    Finished(JobOutcome),
    Unstarted(JobFailure),
}

struct RecSink {
    tx: Sender<Ev>,
    accept_start: bool,
    cancelled: Arc<AtomicBool>,
}

impl JobSink for RecSink {
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
    fn started(&mut self, _ago: Duration) -> bool {
        let _ = self.tx.send(Ev::Started);
        self.accept_start
    }
    fn finished(self: Box<Self>, outcome: JobOutcome, _ended_ago: Duration) {
        let _ = self.tx.send(Ev::Finished(outcome));
    }
    fn failed_unstarted(self: Box<Self>, failure: JobFailure) {
        let _ = self.tx.send(Ev::Unstarted(failure));
    }
}

fn sink() -> (Box<RecSink>, Receiver<Ev>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let s = RecSink {
        tx,
        accept_start: true,
        cancelled: Arc::new(AtomicBool::new(false)),
    };
    (Box::new(s), rx)
}

/// Every event until the sink is gone (terminal call made, or dropped).
fn events(rx: &Receiver<Ev>) -> Vec<Ev> {
    let mut out = Vec::new();
    loop {
        match rx.recv_timeout(WATCHDOG) {
            Ok(ev) => out.push(ev),
            Err(RecvTimeoutError::Disconnected) => return out,
            Err(RecvTimeoutError::Timeout) => {
                panic!("sink still alive after {WATCHDOG:?}: {out:?}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Obs {
    Started(u32),
    Restarted(u32, RestartReason),
    StartFailed(String),
}

#[derive(Default)]
struct RecObserver(Mutex<Vec<Obs>>);

impl PoolObserver for RecObserver {
    fn worker_started(&self, pid: u32) {
        self.0.lock().unwrap().push(Obs::Started(pid));
    }
    fn worker_restarted(&self, pid: u32, reason: RestartReason) {
        self.0.lock().unwrap().push(Obs::Restarted(pid, reason));
    }
    fn worker_start_failed(&self, message: &str) {
        self.0
            .lock()
            .unwrap()
            .push(Obs::StartFailed(message.to_owned()));
    }
}

impl RecObserver {
    fn take(&self) -> Vec<Obs> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

fn observed(max_workers: usize) -> (ProcessPoolBuilder, Arc<RecObserver>) {
    let obs = Arc::new(RecObserver::default());
    let builder = ProcessPool::builder()
        .max_workers(max_workers)
        .worker_test_entry(ENTRY)
        .observer(obs.clone());
    (builder, obs)
}

fn spec<T: ProcessTask>(input: &T::Input) -> JobSpec {
    JobSpec {
        task: T::NAME.into(),
        payload: postcard::to_stdvec(input).unwrap(),
        timeout: None,
    }
}

fn enc(v: u64) -> Vec<u8> {
    postcard::to_stdvec(&v).unwrap()
}

mod dispatch;
mod frames;
mod lending;

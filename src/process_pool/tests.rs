//! Unit tests: the wire format (with property tests over arbitrary bytes) and the crate-internal seams,
//! `JobSink` and `PoolObserver`, which the behaviour tests in `tests/` cannot reach.
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

// ---- sink and observer ----

#[test]
fn sink_gets_started_then_exactly_one_finished() {
    let _watchdog = test_watchdog("sink_gets_started_then_exactly_one_finished");
    let (b, obs) = observed(1);
    let pool = b.build().unwrap();
    let (s, rx) = sink();
    pool.submit_job(spec::<Square>(&7), s).unwrap();
    assert_eq!(events(&rx), vec![Ev::Started, Ev::Finished(Ok(enc(49)))]);
    pool.shutdown();
    let o = obs.take();
    assert_eq!(o.len(), 1, "{o:?}");
    assert!(matches!(o[0], Obs::Started(_)));
}

/// A job a submitting thread hands to an idle worker is adopted by the dispatcher before its frame
/// is on the channel (the dispatcher was woken by the jobs submitted meanwhile). The dispatcher
/// must not send those jobs to the same worker behind it before the worker acknowledges it, or the
/// worker would run them first and its reports would not match what the dispatcher expects.
#[test]
fn jobs_are_not_sent_behind_a_handed_job_before_its_frame() {
    let _watchdog = test_watchdog("jobs_are_not_sent_behind_a_handed_job_before_its_frame");
    let pool = ProcessPool::builder()
        .max_workers(1)
        .worker_test_entry(ENTRY)
        .always_pipeline()
        .build()
        .unwrap();
    // A first task, so the worker has a run time behind it and is idle, listed for hand-overs.
    let (s, rx) = sink();
    pool.submit_job(spec::<Square>(&2), s).unwrap();
    assert_eq!(events(&rx), vec![Ev::Started, Ev::Finished(Ok(enc(4)))]);
    let pool = Arc::new(pool);
    let p = Arc::clone(&pool);
    let handed = std::thread::spawn(move || {
        let (s, rx) = sink();
        let mut job = spec::<Square>(&3);
        job.task = format!("{LATE_SEND}square").into();
        p.submit_job(job, s).unwrap();
        events(&rx)
    });
    let until = std::time::Instant::now() + WATCHDOG;
    while !LATE_SEND_HELD.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < until,
            "the job was not handed over"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
    let queued: Vec<_> = (4..7u64)
        .map(|x| {
            let (s, rx) = sink();
            pool.submit_job(spec::<Square>(&x), s).unwrap();
            (x, rx)
        })
        .collect();
    assert_eq!(
        handed.join().unwrap(),
        vec![Ev::Started, Ev::Finished(Ok(enc(9)))]
    );
    for (x, rx) in queued {
        assert_eq!(events(&rx), vec![Ev::Started, Ev::Finished(Ok(enc(x * x)))]);
    }
}

/// A pool of one worker that sends jobs behind its current one whenever they wait, with a first
/// task run (the worker has a run time behind it).
fn pipelining_pool() -> ProcessPool {
    let pool = ProcessPool::builder()
        .max_workers(1)
        .worker_test_entry(ENTRY)
        .always_pipeline()
        .build()
        .unwrap();
    let (s, rx) = sink();
    pool.submit_job(spec::<Square>(&2), s).unwrap();
    assert_eq!(events(&rx), vec![Ev::Started, Ev::Finished(Ok(enc(4)))]);
    pool
}

/// A worker that replied to its task and exited before the dispatcher read the reply, found gone by
/// a send of the next job behind it: the reply still counts (the task succeeded), and the job sent
/// behind it, which never started, is sent again.
#[test]
fn a_reply_sent_before_the_worker_went_counts_when_a_send_finds_it_gone() {
    let _watchdog =
        test_watchdog("a_reply_sent_before_the_worker_went_counts_when_a_send_finds_it_gone");
    let pool = pipelining_pool();
    // Busy long enough for the next job to be sent behind it; then it replies and exits.
    let (last, last_rx) = sink();
    let mut job = spec::<SleepMs>(&100);
    job.task = format!("{EXIT_AFTER_REPLY}sleep_ms").into();
    pool.submit_job(job, last).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let (behind, behind_rx) = sink();
    let mut job = spec::<Square>(&3);
    job.task = format!("{SENT_BEHIND_THE_EXIT}square").into();
    pool.submit_job(job, behind).unwrap();
    assert_eq!(
        events(&last_rx),
        vec![Ev::Started, Ev::Finished(Ok(Vec::new()))]
    );
    assert_eq!(
        events(&behind_rx),
        vec![Ev::Started, Ev::Finished(Ok(enc(9)))]
    );
    assert!(
        SENT_BEHIND_THE_EXIT_HELD.load(Ordering::SeqCst),
        "the send was not held back"
    );
}

/// Jobs sent behind a task whose worker dies never started: they are sent again (to the
/// replacement), without counting an attempt against them, and end once each; the dying task
/// alone fails. When the pool is killed instead, they fail as killed.
#[test]
fn jobs_sent_behind_a_dying_task_are_sent_again() {
    let _watchdog = test_watchdog("jobs_sent_behind_a_dying_task_are_sent_again");
    let pool = pipelining_pool();
    // The worker busy long enough for the queue to fill behind it, then dying.
    let (slow, slow_rx) = sink();
    pool.submit_job(spec::<SleepMs>(&100), slow).unwrap();
    let (dies, dies_rx) = sink();
    pool.submit_job(spec::<SelfKill>(&()), dies).unwrap();
    let behind: Vec<_> = (3..9u64)
        .map(|x| {
            let (s, rx) = sink();
            pool.submit_job(spec::<Square>(&x), s).unwrap();
            (x, rx)
        })
        .collect();
    assert_eq!(
        events(&slow_rx),
        vec![Ev::Started, Ev::Finished(Ok(Vec::new()))]
    );
    let died = events(&dies_rx);
    assert!(
        matches!(
            &died[..],
            [
                Ev::Started,
                Ev::Finished(Err(JobFailure::WorkerDied { .. }))
            ]
        ),
        "{died:?}"
    );
    for (x, rx) in behind {
        assert_eq!(events(&rx), vec![Ev::Started, Ev::Finished(Ok(enc(x * x)))]);
    }

    let (slow, slow_rx) = sink();
    pool.submit_job(spec::<SleepMs>(&5_000), slow).unwrap();
    let behind: Vec<_> = (0..3)
        .map(|_| {
            let (s, rx) = sink();
            pool.submit_job(spec::<Square>(&1), s).unwrap();
            rx
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    pool.kill();
    assert_eq!(
        events(&slow_rx),
        vec![Ev::Started, Ev::Finished(Err(JobFailure::Killed))]
    );
    for rx in behind {
        assert_eq!(events(&rx), vec![Ev::Unstarted(JobFailure::Killed)]);
    }
}

#[test]
fn unknown_task_is_failed_unstarted_without_start() {
    let _watchdog = test_watchdog("unknown_task_is_failed_unstarted_without_start");
    let pool = ProcessPool::builder()
        .max_workers(1)
        .worker_test_entry(ENTRY)
        .build()
        .unwrap();
    let (s, rx) = sink();
    let job = JobSpec {
        task: "nope".into(),
        payload: vec![],
        timeout: None,
    };
    pool.submit_job(job, s).unwrap();
    assert_eq!(
        events(&rx),
        vec![Ev::Unstarted(JobFailure::UnknownTask {
            name: "nope".into()
        })]
    );
}

#[test]
fn dl_2_worker_dying_before_ack_is_retried_on_another_worker() {
    let _watchdog = test_watchdog("dl_2_worker_dying_before_ack_is_retried_on_another_worker");
    let (b, obs) = observed(1);
    let pool = b.build().unwrap();
    let marker = std::env::temp_dir().join(format!("pp-die-once-{}", std::process::id()));
    std::fs::write(&marker, b"x").unwrap();
    let (s, rx) = sink();
    let mut job = spec::<Square>(&6);
    job.task = format!("{DIE_ONCE}{}|square", marker.display()).into();
    pool.submit_job(job, s).unwrap();
    assert_eq!(events(&rx), vec![Ev::Started, Ev::Finished(Ok(enc(36)))]);
    assert!(!marker.exists(), "the first worker took the die-once path");
    pool.shutdown();
    let o = obs.take();
    let started: Vec<_> = o.iter().filter(|e| matches!(e, Obs::Started(_))).collect();
    assert_eq!(started.len(), 2, "{o:?}");
    assert!(
        o.iter().any(|e| matches!(
            e,
            Obs::Restarted(_, RestartReason::Died(WorkerExit::Code(9)))
        )),
        "{o:?}"
    );
}

#[test]
fn dl_2_retries_are_bounded() {
    let _watchdog = test_watchdog("dl_2_retries_are_bounded");
    let pool = ProcessPool::builder()
        .max_workers(1)
        .worker_test_entry(ENTRY)
        .build()
        .unwrap();
    let (s, rx) = sink();
    let mut job = spec::<Square>(&6);
    job.task = format!("{DIE_ALWAYS}square").into();
    pool.submit_job(job, s).unwrap();
    let ev = events(&rx);
    assert!(
        matches!(
            &ev[..],
            [Ev::Unstarted(JobFailure::WorkerDied {
                exit: WorkerExit::Code(9),
                ..
            })]
        ),
        "{ev:?}"
    );
    assert!(
        !pool.is_broken(),
        "workers did start: the pool is not broken"
    );
}

#[test]
fn observer_sees_restarts_by_reason() {
    let _watchdog = test_watchdog("observer_sees_restarts_by_reason");
    let (b, obs) = observed(1);
    let pool = b.max_tasks_per_child(2).build().unwrap();
    let run = |job: JobSpec| {
        let (s, rx) = sink();
        pool.submit_job(job, s).unwrap();
        events(&rx)
    };
    run(spec::<Square>(&1));
    run(spec::<Square>(&2)); // second task: the worker retires
    let ev = run(spec::<SelfKill>(&()));
    assert!(
        matches!(
            &ev[..],
            [
                Ev::Started,
                Ev::Finished(Err(JobFailure::WorkerDied { .. }))
            ]
        ),
        "{ev:?}"
    );
    let mut slow = spec::<SleepMs>(&30_000);
    slow.timeout = Some(Duration::from_millis(200));
    let ev = run(slow);
    assert!(
        matches!(
            &ev[..],
            [Ev::Started, Ev::Finished(Err(JobFailure::Timeout { .. }))]
        ),
        "{ev:?}"
    );
    pool.shutdown();
    let reasons: Vec<RestartReason> = obs
        .take()
        .into_iter()
        .filter_map(|e| match e {
            Obs::Restarted(_, r) => Some(r),
            _ => None,
        })
        .collect();
    let sigkill = WorkerExit::Signal {
        signal: libc::SIGKILL,
        core_dumped: false,
    };
    assert_eq!(
        reasons,
        vec![
            RestartReason::Recycled,
            RestartReason::Died(sigkill),
            RestartReason::Timeout
        ]
    );
}

#[test]
fn cancelled_sink_is_dropped_without_any_call() {
    let _watchdog = test_watchdog("cancelled_sink_is_dropped_without_any_call");
    let pool = ProcessPool::builder()
        .max_workers(1)
        .worker_test_entry(ENTRY)
        .build()
        .unwrap();
    let (busy, busy_rx) = sink();
    pool.submit_job(spec::<SleepMs>(&300), busy).unwrap();
    let (s, rx) = sink();
    s.cancelled.store(true, Ordering::SeqCst);
    pool.submit_job(spec::<Square>(&3), s).unwrap();
    assert_eq!(events(&rx), vec![]);
    assert_eq!(
        events(&busy_rx),
        vec![
            Ev::Started,
            Ev::Finished(Ok(postcard::to_stdvec(&()).unwrap()))
        ]
    );
}

#[test]
fn start_refused_by_sink_discards_the_outcome() {
    let _watchdog = test_watchdog("start_refused_by_sink_discards_the_outcome");
    let pool = ProcessPool::builder()
        .max_workers(1)
        .worker_test_entry(ENTRY)
        .build()
        .unwrap();
    let (mut s, rx) = sink();
    s.accept_start = false;
    pool.submit_job(spec::<Square>(&3), s).unwrap();
    assert_eq!(events(&rx), vec![Ev::Started]);
    let (s, rx) = sink();
    pool.submit_job(spec::<Square>(&4), s).unwrap();
    assert_eq!(events(&rx), vec![Ev::Started, Ev::Finished(Ok(enc(16)))]);
}

#[test]
fn rejected_submit_hands_the_sink_back() {
    let _watchdog = test_watchdog("rejected_submit_hands_the_sink_back");
    let pool = ProcessPool::builder()
        .max_workers(1)
        .worker_test_entry(ENTRY)
        .build()
        .unwrap();
    pool.shutdown();
    let (s, rx) = sink();
    let rejected = pool.submit_job(spec::<Square>(&3), s).unwrap_err();
    assert_eq!(
        rejected.error.reason(),
        crate::error::RejectReason::Shutdown
    );
    rejected.sink.failed_unstarted(JobFailure::Cancelled);
    assert_eq!(events(&rx), vec![Ev::Unstarted(JobFailure::Cancelled)]);
}

#[test]
fn init_2_start_failures_are_observed_then_the_pool_breaks() {
    let _watchdog = test_watchdog("init_2_start_failures_are_observed_then_the_pool_breaks");
    let (b, obs) = observed(2);
    let pool = b
        .initializer::<FailInit>(&())
        .max_start_failures(2)
        .build()
        .unwrap();
    let (s, rx) = sink();
    pool.submit_job(spec::<Square>(&3), s).unwrap();
    let ev = events(&rx);
    assert!(
        matches!(&ev[..], [Ev::Unstarted(JobFailure::Broken { .. })]),
        "{ev:?}"
    );
    let o = obs.take();
    assert_eq!(o.len(), 2, "{o:?}");
    assert!(
        o.iter()
            .all(|e| matches!(e, Obs::StartFailed(m) if m.contains("no config"))),
        "{o:?}"
    );
}

/// A worker that forgot `run_if_worker` and is gone before the pool sends its hello still breaks
/// the pool at once, with its own words, not after several starts with a guess at the cause.
#[test]
fn a_forgotten_hook_breaks_the_pool_even_when_the_worker_is_gone_before_its_hello() {
    let _watchdog = test_watchdog(
        "a_forgotten_hook_breaks_the_pool_even_when_the_worker_is_gone_before_its_hello",
    );
    let (b, obs) = observed(1);
    let pool = b.worker_test_entry(CARELESS_ENTRY).build().unwrap();
    let (s, rx) = sink();
    pool.submit_job(spec::<Square>(&3), s).unwrap();
    let ev = events(&rx);
    assert!(
        matches!(&ev[..], [Ev::Unstarted(JobFailure::Broken { message })]
            if message.contains("did not call `run_if_worker`")),
        "{ev:?}"
    );
    let o = obs.take();
    assert!(matches!(&o[..], [Obs::StartFailed(_)]), "{o:?}");
}

// ---- a joiner reading its worker's reply ----

/// A pool of one worker whose joiners read their task's reply for the whole run, idle and listed
/// for hand-overs (a first task ran), so each task below goes straight to it and its joiner reads.
fn lending_pool() -> (Arc<ProcessPool>, Arc<RecObserver>) {
    let (b, obs) = observed(1);
    let pool = b.lend_for(WATCHDOG).build().unwrap();
    assert_eq!(pool.submit::<Square>(&3).unwrap().join(), Ok(Ok(9)));
    assert!(matches!(&obs.take()[..], [Obs::Started(_)]));
    (Arc::new(pool), obs)
}

/// Runs `f` on the pool `after` from now, on another thread: while the test's thread is joining.
fn later(
    pool: &Arc<ProcessPool>,
    after: Duration,
    f: impl FnOnce(&ProcessPool) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let p = Arc::clone(pool);
    std::thread::spawn(move || {
        std::thread::sleep(after);
        f(&p);
    })
}

/// `kill()` while the joiner reads the worker's channel: the dispatcher takes the job back from
/// it and fails it as killed, rather than leave it to a reader whose worker is gone.
#[test]
fn kill_while_the_joiner_reads_fails_the_task_as_killed() {
    let _watchdog = test_watchdog("kill_while_the_joiner_reads_fails_the_task_as_killed");
    let (pool, _obs) = lending_pool();
    let h = pool.submit::<SleepMs>(&60_000).unwrap();
    let killer = later(&pool, Duration::from_millis(200), ProcessPool::kill);
    let got = h.join();
    killer.join().unwrap();
    assert!(
        matches!(
            &got,
            Err(crate::TaskError::Failed {
                reason: crate::FailureReason::Killed,
                ..
            })
        ),
        "{got:?}"
    );
}

/// `shutdown_now()` while the joiner reads: the running task finishes with its result.
#[test]
fn shutdown_now_while_the_joiner_reads_lets_the_task_finish() {
    let _watchdog = test_watchdog("shutdown_now_while_the_joiner_reads_lets_the_task_finish");
    let (pool, _obs) = lending_pool();
    let h = pool.submit::<SleepMs>(&300).unwrap();
    let stopper = later(&pool, Duration::from_millis(100), ProcessPool::shutdown_now);
    assert_eq!(h.join(), Ok(Ok(())));
    stopper.join().unwrap();
}

/// A join that times out while reading leaves the job to the dispatcher, which delivers it; the
/// worker is not replaced and takes the next task.
#[test]
fn a_join_timing_out_while_reading_leaves_the_task_to_the_pool() {
    let _watchdog = test_watchdog("a_join_timing_out_while_reading_leaves_the_task_to_the_pool");
    let (pool, obs) = lending_pool();
    let mut h = pool.submit::<SleepMs>(&300).unwrap();
    assert_eq!(
        h.join_timeout(Duration::from_millis(50)),
        Err(crate::TaskError::TimedOut)
    );
    assert_eq!(h.join(), Ok(Ok(())));
    assert_eq!(pool.submit::<Square>(&4).unwrap().join(), Ok(Ok(16)));
    assert_eq!(obs.take(), vec![]);
}

/// The worker is SIGKILLed while its joiner reads: its task alone fails, as a death, and a
/// replacement takes the next one.
#[test]
fn a_worker_killed_while_its_joiner_reads_fails_only_that_task() {
    let _watchdog = test_watchdog("a_worker_killed_while_its_joiner_reads_fails_only_that_task");
    let (pool, obs) = lending_pool();
    let pid = pool.worker_pids()[0];
    let h = pool.submit::<SleepMs>(&60_000).unwrap();
    let killer = later(&pool, Duration::from_millis(200), move |_| {
        // SAFETY: kill(2) with a valid signal, on our own unreaped child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    });
    let got = h.join();
    killer.join().unwrap();
    assert!(
        matches!(
            &got,
            Err(crate::TaskError::Failed {
                reason: crate::FailureReason::WorkerDied,
                ..
            })
        ),
        "{got:?}"
    );
    assert_eq!(pool.submit::<Square>(&5).unwrap().join(), Ok(Ok(25)));
    let o = obs.take();
    assert!(
        matches!(&o[..], [Obs::Restarted(p, RestartReason::Died(_)), Obs::Started(_)] if *p == pid),
        "{o:?}"
    );
}

/// A graceful shutdown that takes the worker back from a joiner that has ended its task but not
/// yet listed the worker idle: the worker is free, and the tasks queued behind run on it.
#[test]
fn shutdown_between_a_joiners_end_and_its_relisting_runs_the_queued_tasks() {
    let _watchdog =
        test_watchdog("shutdown_between_a_joiners_end_and_its_relisting_runs_the_queued_tasks");
    let (pool, _obs) = lending_pool();
    let h = pool.submit::<SlowRelist>(&3).unwrap();
    let queued: Vec<_> = (4..6u64)
        .map(|x| (x, pool.submit::<Square>(&x).unwrap()))
        .collect();
    let stopper = later(&pool, Duration::from_millis(100), ProcessPool::shutdown);
    assert_eq!(h.join(), Ok(Ok(9)));
    for (x, h) in queued {
        assert_eq!(h.join(), Ok(Ok(x * x)));
    }
    stopper.join().unwrap();
}

/// A joiner lists its worker idle again while the dispatcher, which found the worker lent, is about
/// to publish the backlog of a task queued meanwhile: the joiner saw no backlog, so it did not wake
/// the dispatcher, which must still send the queued task to the worker rather than sleep with it.
#[test]
fn a_task_queued_while_the_joiner_relists_its_worker_runs() {
    let _watchdog = test_watchdog("a_task_queued_while_the_joiner_relists_its_worker_runs");
    let (pool, _obs) = lending_pool();
    let h = pool.submit::<SlowRelist>(&3).unwrap();
    // Queued while the joiner holds the worker (it has read the end and sleeps before relisting):
    // the dispatcher finds the worker lent, and holds the task past the relisting.
    let queued = later(&pool, Duration::from_millis(100), |p| {
        let mut h = p.submit::<SlowBacklog>(&4).unwrap();
        assert_eq!(h.join_timeout(Duration::from_secs(3)), Ok(Ok(16)));
    });
    assert_eq!(h.join(), Ok(Ok(9)));
    queued.join().unwrap();
}

/// A task whose joiner reads its worker's reply shows its age while it runs, though the dispatcher
/// has not seen it: a scrape reads the jobs handed to idle workers too.
#[test]
fn a_task_read_by_its_joiner_shows_its_running_age() {
    let _watchdog = test_watchdog("a_task_read_by_its_joiner_shows_its_running_age");
    let registry = prometheus::Registry::new();
    let pool = crate::ProcessPoolExecutor::builder()
        .pool(
            ProcessPool::builder()
                .max_workers(1)
                .worker_test_entry(ENTRY)
                .lend_for(WATCHDOG),
        )
        .exporter_id("lent-age")
        .registry(registry.clone())
        .build()
        .unwrap();
    // A first task, so the worker is idle and listed: the next one goes straight to it.
    assert_eq!(pool.submit::<Square>(&3).unwrap().join(), Ok(Ok(9)));
    let h = pool.submit::<SleepMs>(&600).unwrap();
    let running_age = move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut buf = Vec::new();
        prometheus::Encoder::encode(&crate::TextEncoder::new(), &registry.gather(), &mut buf)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("executor_oldest_running_task_seconds{"))
            .expect("the running age is exposed")
            .to_owned();
        line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap()
    };
    let scraper = std::thread::spawn(running_age);
    assert_eq!(h.join(), Ok(Ok(())));
    let age = scraper.join().unwrap();
    assert!(
        (0.1..60.0).contains(&age),
        "running age {age} s while it ran"
    );
}

/// The `_sum` of histogram `family` in `registry`'s exposition (the first series of it).
fn histogram_sum(registry: &prometheus::Registry, family: &str) -> f64 {
    let mut buf = Vec::new();
    prometheus::Encoder::encode(&crate::TextEncoder::new(), &registry.gather(), &mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let prefix = format!("{family}_sum{{");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in the exposition"));
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

/// A task sent straight to an idle worker, whose joiner reads the reply, costs the worker one frame,
/// the reply: its start is recorded on the worker's board, not sent. The wait and the duration stay
/// those of the task's run in the worker.
#[test]
fn a_task_read_by_its_joiner_costs_the_worker_one_frame() {
    let _watchdog = test_watchdog("a_task_read_by_its_joiner_costs_the_worker_one_frame");
    let registry = prometheus::Registry::new();
    let pool = crate::ProcessPoolExecutor::builder()
        .pool(
            ProcessPool::builder()
                .max_workers(1)
                .worker_test_entry(ENTRY),
        )
        .exporter_id("one-frame")
        .registry(registry.clone())
        .build()
        .unwrap();
    // A first task starts the worker (sent by the dispatcher, acknowledged by a frame).
    assert_eq!(pool.submit::<Square>(&2).unwrap().join(), Ok(Ok(4)));
    let before = pool.inner().started_frames();
    for x in 0..20u64 {
        assert_eq!(pool.submit::<Square>(&x).unwrap().join(), Ok(Ok(x * x)));
    }
    let wait_before = histogram_sum(&registry, "executor_task_wait_seconds");
    let run_before = histogram_sum(&registry, "executor_tasks_duration_seconds");
    assert_eq!(pool.submit::<SleepMs>(&300).unwrap().join(), Ok(Ok(())));
    let frames = pool.inner().started_frames() - before;
    assert_eq!(
        frames, 0,
        "{frames} Started frames for 21 tasks read by their joiner"
    );
    let waited = histogram_sum(&registry, "executor_task_wait_seconds") - wait_before;
    let ran = histogram_sum(&registry, "executor_tasks_duration_seconds") - run_before;
    assert!((0.3..60.0).contains(&ran), "a 300 ms task ran {ran} s");
    assert!(
        waited < 0.15,
        "a task sent to an idle worker waited {waited} s"
    );
}

// ---- wire format ----

fn sample_messages() -> (Vec<ToWorker<'static>>, Vec<FromWorker>) {
    let call = Call {
        task: "t".into(),
        payload: Blob(vec![1, 2, 3].into()),
    };
    let to = vec![
        ToWorker::Hello {
            version: 1,
            init: None,
        },
        ToWorker::Hello {
            version: 1,
            init: Some(call.clone()),
        },
        ToWorker::Run { id: u64::MAX, call },
        ToWorker::Shutdown,
    ];
    let from = vec![
        FromWorker::Ready { version: 1 },
        FromWorker::InitFailed("x".into()),
        FromWorker::Started { id: 7, at: 3 },
        FromWorker::Finished {
            id: 7,
            ended_at: 1000,
            outcome: WireOutcome::Ok(Bytes(vec![0; 300])),
        },
        FromWorker::Finished {
            id: 8,
            ended_at: 0,
            outcome: WireOutcome::Err {
                payload: Bytes(vec![9]),
                display: "e".into(),
            },
        },
        FromWorker::Finished {
            id: 9,
            ended_at: 3000,
            outcome: WireOutcome::Panicked("p".into()),
        },
        FromWorker::Finished {
            id: 9,
            ended_at: 0,
            outcome: WireOutcome::UnknownTask("u".into()),
        },
        FromWorker::Finished {
            id: 9,
            ended_at: 5000,
            outcome: WireOutcome::DecodeFailed("d".into()),
        },
        FromWorker::Finished {
            id: 9,
            ended_at: 0,
            outcome: WireOutcome::EncodeFailed("e".into()),
        },
    ];
    (to, from)
}

/// A large frame is received into a buffer of its own size, not one grown to twice that by a
/// receive asking for room past its end, and the buffer shrinks once the frame is taken out.
#[test]
fn a_large_frame_is_received_into_a_buffer_of_its_size() {
    use std::io::Write;
    use std::os::fd::AsFd;
    let _watchdog = test_watchdog("a_large_frame_is_received_into_a_buffer_of_its_size");
    let msg = FromWorker::Finished {
        id: 1,
        outcome: WireOutcome::Ok(Bytes(vec![5; 1 << 20])),
        ended_at: 1,
    };
    let frame = wire::encode_frame(&msg, 4 << 20).unwrap();
    let (mut tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
    let sent = frame.clone();
    let writer = std::thread::spawn(move || {
        tx.write_all(&sent).unwrap();
        tx // kept open: the reader finds nothing more, not the end of the stream
    });
    let mut r = FrameReader::new(4 << 20);
    let len = loop {
        if let Some(len) = r.whole_frame().unwrap() {
            break len;
        }
        // Blocking, as a worker receives.
        let (n, _) = r.recv(rx.as_fd(), super::sys::Wait::Yes).unwrap();
        assert!(n > 0, "end of stream before the frame");
    };
    let _tx = writer.join().unwrap();
    assert_eq!(len, frame.len());
    // A reader that looks for more behind the whole frame (nothing is there).
    assert!(r
        .recv(rx.as_fd(), super::sys::Wait::No)
        .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock));
    assert!(
        r.capacity() < frame.len() + (64 << 10),
        "a frame of {} bytes was received into {} bytes",
        frame.len(),
        r.capacity()
    );
    assert_eq!(r.decode::<FromWorker>(len).unwrap(), msg);
    r.consume(len);
    assert!(r.capacity() <= 64 << 10, "{} bytes kept", r.capacity());
}

/// The worker reads a request in place: the task's name and input borrow the received frame.
#[test]
fn a_request_is_decoded_without_copying_its_name_or_input() {
    let msg = ToWorker::Run {
        id: 5,
        call: Call {
            task: "square".into(),
            payload: Blob(vec![7; 100].into()),
        },
    };
    let frame = wire::encode_frame(&msg, 1 << 20).unwrap();
    let mut r = FrameReader::new(1 << 20);
    r.push(&frame);
    let len = r.whole_frame().unwrap().expect("a whole frame");
    let decoded: ToWorker<'_> = r.decode(len).unwrap();
    let ToWorker::Run { id: 5, call } = decoded else {
        panic!("decoded {decoded:?}")
    };
    assert!(matches!(call.task, std::borrow::Cow::Borrowed("square")));
    assert!(matches!(call.payload.0, std::borrow::Cow::Borrowed(b) if b == [7; 100]));
}

#[test]
fn every_message_round_trips() {
    let _watchdog = test_watchdog("every_message_round_trips");
    let (to, from) = sample_messages();
    for m in to {
        let f = wire::encode_frame(&m, 1 << 20).unwrap();
        assert_eq!(
            wire::decode_body::<ToWorker<'_>>(&f[HEADER_LEN..]).unwrap(),
            m
        );
    }
    for m in from {
        let f = wire::encode_frame(&m, 1 << 20).unwrap();
        assert_eq!(
            wire::decode_body::<FromWorker>(&f[HEADER_LEN..]).unwrap(),
            m
        );
    }
}

#[test]
fn oversized_frame_is_refused_from_its_header_alone() {
    let _watchdog = test_watchdog("oversized_frame_is_refused_from_its_header_alone");
    let mut r = FrameReader::new(1024);
    r.push(&u32::MAX.to_le_bytes());
    assert_eq!(
        r.next_message::<FromWorker>(),
        Err(FrameError::Oversized {
            len: u32::MAX as usize,
            max: 1024
        })
    );
    assert!(wire::encode_frame(&FromWorker::InitFailed("x".repeat(2000)), 1024).is_err());
}

#[test]
fn trailing_bytes_in_a_frame_are_corrupt() {
    let _watchdog = test_watchdog("trailing_bytes_in_a_frame_are_corrupt");
    let mut f = wire::encode_frame(&FromWorker::Started { id: 1, at: 1 }, 1024).unwrap();
    f.push(0);
    let len = (f.len() - HEADER_LEN) as u32;
    f[..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    let mut r = FrameReader::new(1024);
    r.push(&f);
    assert!(matches!(
        r.next_message::<FromWorker>(),
        Err(FrameError::Corrupt(_))
    ));
}

proptest! {
    /// Arbitrary bytes, fed in arbitrary pieces, never panic the reader: each step gives a message,
    /// "need more", or an error.
    #[test]
    fn reader_never_panics_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(1usize..512, 0..16),
        max in 0usize..8192,
    ) {
        let mut r = FrameReader::new(max);
        let mut rest = &bytes[..];
        for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let n = (*cut).min(rest.len());
            r.push(&rest[..n]);
            rest = &rest[n..];
            while let Ok(Some(_)) = r.next_message::<FromWorker>() {}
        }
    }

    /// Arbitrary frame bodies decode to a message or an error, for both directions.
    #[test]
    fn decoder_never_panics_on_arbitrary_bodies(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = wire::decode_body::<FromWorker>(&body);
        let _ = wire::decode_body::<ToWorker<'_>>(&body);
    }

    /// Valid frames split anywhere come out whole and in order; a truncated stream yields nothing extra.
    #[test]
    fn frames_survive_any_split(
        picks in proptest::collection::vec(0usize..9, 1..20),
        cuts in proptest::collection::vec(1usize..64, 0..40),
        truncate in 0usize..6, // the shortest frame is 6 bytes: cut into the last one only
    ) {
        let (_, all) = sample_messages();
        let msgs: Vec<FromWorker> = picks.iter().map(|&i| all[i].clone()).collect();
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend(wire::encode_frame(m, 4096).unwrap());
        }
        let complete = stream.len();
        stream.truncate(complete.saturating_sub(truncate));
        let mut r = FrameReader::new(4096);
        let mut got = Vec::new();
        let mut rest = &stream[..];
        for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let n = (*cut).min(rest.len());
            r.push(&rest[..n]);
            rest = &rest[n..];
            while let Some(m) = r.next_message::<FromWorker>().unwrap() {
                got.push(m);
            }
        }
        let expected = if truncate == 0 { msgs.len() } else { msgs.len() - 1 };
        prop_assert_eq!(&got[..], &msgs[..expected]);
    }

    /// A header announcing more than the maximum is refused before any body byte arrives.
    #[test]
    fn oversized_headers_are_refused(len in 1025u32.., max in 0usize..1025) {
        let mut r = FrameReader::new(max);
        r.push(&len.to_le_bytes());
        let refused = matches!(r.next_message::<FromWorker>(), Err(FrameError::Oversized { .. }));
        prop_assert!(refused);
    }
}

/// A joiner waits for its reply in a receive that consumes nothing and ends with the socket's
/// receive timeout: it sees data and the end of stream without taking them, and nothing past the
/// timeout.
#[test]
fn a_wait_for_data_ends_with_data_the_end_of_stream_or_the_receive_timeout() {
    use std::io::Write;
    use std::os::fd::AsFd;
    let _watchdog =
        test_watchdog("a_wait_for_data_ends_with_data_the_end_of_stream_or_the_receive_timeout");
    let (mut tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
    super::sys::set_recv_timeout(rx.as_fd(), Duration::from_millis(1)).unwrap();
    // Nothing comes: false once the timeout passes (a tick or so; bounded loosely for a busy machine).
    let started = std::time::Instant::now();
    assert!(!super::sys::wait_for_data(rx.as_fd()));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Data: true, and the data is still there for the reader.
    tx.write_all(b"abc").unwrap();
    assert!(super::sys::wait_for_data(rx.as_fd()));
    let mut r = FrameReader::new(1 << 10);
    assert_eq!(
        r.recv(rx.as_fd(), super::sys::Wait::No).unwrap().0,
        3,
        "the wait consumed what it saw"
    );
    // A wait blocked when data comes is woken by it.
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        tx.write_all(b"d").unwrap();
        tx
    });
    let mut woke = false;
    while !woke {
        woke = super::sys::wait_for_data(rx.as_fd());
    }
    drop(writer.join().unwrap());
    assert_eq!(r.recv(rx.as_fd(), super::sys::Wait::No).unwrap().0, 1);
    // The end of stream (the writer is gone): true, and the reader then reads it.
    assert!(super::sys::wait_for_data(rx.as_fd()));
    assert_eq!(r.recv(rx.as_fd(), super::sys::Wait::No).unwrap().0, 0);
}

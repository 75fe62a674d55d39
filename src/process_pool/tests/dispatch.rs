//! The seams the dispatcher reports through (`JobSink`, `PoolObserver`): each task's events, retries,
//! restarts, and jobs sent behind a busy worker's current one.

use super::*;

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

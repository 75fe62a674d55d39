//! A joiner reading its worker's reply itself: kills, shutdowns, timeouts and deaths while it reads,
//! its hand-back to the pool, and what its task records.

use super::*;

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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;

#[test]
fn workers_stop_when_the_pool_is_dropped() {
    let pool = ThreadPool::new(3).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    for _ in 0..3 {
        let tx = tx.clone();
        pool.execute(Task::new(move || tx.send(()).unwrap()))
            .unwrap();
    }
    for _ in 0..3 {
        rx.recv().unwrap();
    }
    let shared = pool.shared.clone();
    drop(pool);
    assert!(lock(&shared.handles).is_empty(), "every thread was joined");
    assert!(shared.receiver.is_empty(), "nothing is left queued");
}

#[test]
fn a_plain_task_that_panics_does_not_kill_its_worker() {
    let pool = ThreadPool::new(1).unwrap();
    pool.execute(Task::new(|| panic!("plain panic"))).unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    pool.execute(Task::new(move || {
        d.fetch_add(1, Ordering::SeqCst);
    }))
    .unwrap();
    pool.shutdown();
    assert_eq!(done.load(Ordering::SeqCst), 1);
    assert_eq!(pool.workers(), 1);
}

#[test]
fn shutdown_from_inside_a_task_does_not_deadlock() {
    let pool = Arc::new(ThreadPool::new(1).unwrap());
    let p = pool.clone();
    let (tx, rx) = crossbeam_channel::bounded(1);
    pool.execute(Task::new(move || {
        p.shutdown();
        tx.send(()).unwrap();
    }))
    .unwrap();
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("the task finished its own pool's shutdown");
}

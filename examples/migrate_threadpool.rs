//! A job runner written for the `threadpool` crate, moved to
//! `ThreadPoolExecutor`; see docs/migrate-from-threadpool.md for the diff.
//!
//! Run with `cargo run --example migrate_threadpool`.

use std::sync::mpsc::channel;

use executor_exporter::ThreadPoolExecutor;

fn main() {
    let n_workers = 4;
    let n_jobs = 8;
    let pool = ThreadPoolExecutor::new(n_workers).expect("n_workers is not 0");

    let (tx, rx) = channel();
    for i in 0..n_jobs {
        let tx = tx.clone();
        pool.spawn(move || {
            tx.send(i * i).expect("the receiver is still there");
        })
        .expect("the pool is not shut down");
    }
    pool.join();
    drop(tx);

    let total: u64 = rx.iter().sum();
    assert_eq!(total, 140);
    println!("sum of squares: {total}");
}

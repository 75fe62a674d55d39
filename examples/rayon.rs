//! An existing rayon pool made observable with a one-line change.
//!
//! The program below was written for a plain `rayon::ThreadPool`. The only
//! line that changed is the one building the pool:
//!
//! ```text
//! -    let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build()?;
//! +    let pool = RayonExecutor::new(rayon::ThreadPoolBuilder::new().num_threads(4))?;
//! ```
//!
//! Every `pool.spawn(..)` is now counted: submitted, wait, running, duration,
//! failures. The `par_iter` inside each task is part of that task's duration;
//! `pool.install(..)` is run as before and not measured.
//!
//! Run with `cargo run --example rayon --features rayon`.

use std::sync::mpsc;

use executor_exporter::prometheus::{self, Encoder, TextEncoder};
use executor_exporter::RayonExecutor;
use rayon::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = RayonExecutor::new(rayon::ThreadPoolBuilder::new().num_threads(4))?;

    // Unchanged code: spawn chunks of work, each splitting itself further.
    let (tx, rx) = mpsc::channel();
    for chunk in 0..16u64 {
        let tx = tx.clone();
        pool.spawn(move || {
            let sum: u64 = (chunk * 10_000..(chunk + 1) * 10_000)
                .into_par_iter()
                .map(|x| x % 1_000)
                .sum();
            tx.send(sum).expect("main is waiting for the results");
        });
    }
    drop(tx);
    let total: u64 = rx.iter().sum();
    let check: u64 = pool.install(|| (0..160_000u64).into_par_iter().map(|x| x % 1_000).sum());
    assert_eq!(total, check);
    println!("total: {total}");

    // Serving them is one more line, e.g. with the `http` feature:
    // executor_exporter::MetricsServer::start("127.0.0.1:9100", prometheus::default_registry().clone())?;
    pool.join();
    let mut text = Vec::new();
    TextEncoder::new().encode(&prometheus::default_registry().gather(), &mut text)?;
    for line in String::from_utf8(text)?.lines() {
        let wanted = ["_total{", "_tasks{", "_count{", "_sum{"];
        if line.starts_with("executor_") && wanted.iter().any(|w| line.contains(w)) {
            println!("{line}");
        }
    }
    Ok(())
}

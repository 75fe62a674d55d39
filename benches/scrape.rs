//! Scrape cost and its effect on a busy pool:
//!
//! - `scrape_encode/{1,10,100}`: `registry.gather()` plus the text encoding
//!   with that many exporters (distinct ids) in one registry, each with some
//!   recorded tasks so every histogram has counts;
//! - `scrape_throughput`: `ThreadPoolExecutor` throughput on empty tasks
//!   with no scraper, then with another thread scraping its registry at
//!   10 Hz (one criterion iteration is one task, see `overhead.rs`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Inline, WORKERS};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use executor_exporter::{ExecutorExporter, InstrumentedExecutorProxy, ThreadPoolExecutor};
use prometheus::{Encoder, Registry, TextEncoder};

fn encode(registry: &Registry, buf: &mut Vec<u8>) {
    buf.clear();
    TextEncoder::new().encode(&registry.gather(), buf).unwrap();
}

fn scrape_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("scrape_encode");
    for n in [1usize, 10, 100] {
        let registry = Registry::new();
        let proxies: Vec<_> = (0..n)
            .map(|i| {
                let exporter = ExecutorExporter::builder()
                    .exporter_id(format!("pool-{i}"))
                    .registry(registry.clone())
                    .build()
                    .unwrap();
                let proxy = InstrumentedExecutorProxy::new(Inline, exporter, Some(4));
                for k in 0..10u32 {
                    proxy.submit(move || k).unwrap().join().unwrap();
                }
                proxy
            })
            .collect();
        let mut buf = Vec::new();
        encode(&registry, &mut buf);
        eprintln!("scrape_encode/{n}: {} bytes of exposition", buf.len());
        g.bench_with_input(BenchmarkId::from_parameter(n), &registry, |b, registry| {
            b.iter(|| encode(registry, &mut buf))
        });
        drop(proxies);
    }
    g.finish();
}

fn scrape_throughput(c: &mut Criterion) {
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .max_workers(WORKERS)
        .exporter_id("scraped")
        .registry(registry.clone())
        .build()
        .unwrap();
    let run = |iters: u64| {
        let start = Instant::now();
        for _ in 0..iters {
            drop(pool.submit(|| ()).unwrap());
        }
        pool.join();
        start.elapsed()
    };
    let mut g = c.benchmark_group("scrape_throughput");
    g.throughput(Throughput::Elements(1));
    g.bench_function("no_scrape", |b| b.iter_custom(run));
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = Vec::new();
            let mut scrapes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                encode(&registry, &mut buf);
                scrapes += 1;
                // Sleep in short steps so the bench never waits long for us.
                let next = Instant::now() + Duration::from_millis(100);
                while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            eprintln!("scrape_throughput/scrape_10hz: {scrapes} scrapes");
        });
        g.bench_function("scrape_10hz", |b| b.iter_custom(run));
        stop.store(true, Ordering::Relaxed);
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = scrape_encode, scrape_throughput
}
criterion_main!(benches);

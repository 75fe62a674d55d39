//! Scrape cost and its effect on a busy pool:
//!
//! - `scrape_text/{1,10,100}`: `registry.gather()` plus the text encoding by
//!   this crate's [`TextEncoder`] (what `MetricsServer` serves), with that
//!   many exporters (distinct ids) in one registry, each with some recorded
//!   tasks so every histogram has counts;
//! - `scrape_encode/{1,10,100}`: the same with `prometheus::TextEncoder`, the
//!   baseline (same bytes);
//! - `scrape_gather/{1,10,100}`: `registry.gather()` alone, the part both
//!   encoders share;
//! - `scrape_protobuf/{1,10,100}`: the same in the protobuf exposition
//!   (feature `protobuf`);
//! - `scrape_buckets/{26,17,15,10}`: `scrape_text` with 100 exporters whose two
//!   histograms have that many bounds (26 is [`DEFAULT_BUCKETS`]; the others
//!   are alternatives spanning 1 µs to 5 min, for choosing the defaults);
//! - `scrape_throughput`: `ThreadPoolExecutor` throughput on empty tasks
//!   with no scraper, then with another thread scraping its registry at
//!   10 Hz (one criterion iteration is one task, see `overhead.rs`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Inline, WORKERS};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use executor_exporter::{
    ExecutorExporter, InstrumentedExecutorProxy, TextEncoder, ThreadPoolExecutor, DEFAULT_BUCKETS,
};
use prometheus::{Encoder, Registry};

/// `registry.gather()` encoded by `encoder` into `buf`.
fn encode(encoder: &impl Encoder, registry: &Registry, buf: &mut Vec<u8>) {
    buf.clear();
    encoder.encode(&registry.gather(), buf).unwrap();
}

/// A registry with `n` exporters (distinct ids), each with ten recorded tasks,
/// and the proxies that keep them alive.
fn exporters(n: usize, buckets: &[f64]) -> (Registry, Vec<InstrumentedExecutorProxy<Inline>>) {
    let registry = Registry::new();
    let proxies = (0..n)
        .map(|i| {
            let exporter = ExecutorExporter::builder()
                .exporter_id(format!("pool-{i}"))
                .registry(registry.clone())
                .wait_buckets(buckets.to_vec())
                .duration_buckets(buckets.to_vec())
                .build()
                .unwrap();
            let proxy = InstrumentedExecutorProxy::new(Inline, exporter, Some(4));
            for k in 0..10u32 {
                proxy.submit(move || k).unwrap().join().unwrap();
            }
            proxy
        })
        .collect();
    (registry, proxies)
}

/// Group `name`: the scrape of 1, 10 and 100 exporters with `encoder`.
fn scrape_with(c: &mut Criterion, name: &str, encoder: impl Encoder) {
    let mut g = c.benchmark_group(name);
    for n in [1usize, 10, 100] {
        let (registry, proxies) = exporters(n, DEFAULT_BUCKETS);
        let mut buf = Vec::new();
        encode(&encoder, &registry, &mut buf);
        eprintln!("{name}/{n}: {} bytes of exposition", buf.len());
        g.bench_with_input(BenchmarkId::from_parameter(n), &registry, |b, registry| {
            b.iter(|| encode(&encoder, registry, &mut buf))
        });
        drop(proxies);
    }
    g.finish();
}

fn scrape_text(c: &mut Criterion) {
    scrape_with(c, "scrape_text", TextEncoder::new());
}

fn scrape_encode(c: &mut Criterion) {
    scrape_with(c, "scrape_encode", prometheus::TextEncoder::new());
}

fn scrape_gather(c: &mut Criterion) {
    let mut g = c.benchmark_group("scrape_gather");
    for n in [1usize, 10, 100] {
        let (registry, proxies) = exporters(n, DEFAULT_BUCKETS);
        g.bench_with_input(BenchmarkId::from_parameter(n), &registry, |b, registry| {
            b.iter(|| registry.gather())
        });
        drop(proxies);
    }
    g.finish();
}

/// The same registries in the protobuf exposition (feature `protobuf`, which
/// `MetricsServer` serves to scrapers that prefer it).
#[cfg(feature = "protobuf")]
fn scrape_protobuf(c: &mut Criterion) {
    scrape_with(c, "scrape_protobuf", prometheus::ProtobufEncoder::new());
}

#[cfg(not(feature = "protobuf"))]
fn scrape_protobuf(_: &mut Criterion) {
    eprintln!(
        "scrape_protobuf: skipped, needs the `protobuf` feature (cargo bench --all-features)"
    );
}

/// Bucket schemes measured against the defaults, all from 1 µs to 5 min.
const BUCKET_SCHEMES: [(&str, &[f64]); 3] = [
    // 1 and 5 per decade.
    (
        "17",
        &[
            1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
            60.0, 300.0,
        ],
    ),
    // A factor of about 4.
    (
        "15",
        &[
            1e-6, 4e-6, 1.6e-5, 6.4e-5, 2.5e-4, 1e-3, 4e-3, 0.016, 0.064, 0.25, 1.0, 4.0, 16.0,
            60.0, 300.0,
        ],
    ),
    // 1 per decade.
    (
        "10",
        &[1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0, 300.0],
    ),
];

fn scrape_buckets(c: &mut Criterion) {
    let mut g = c.benchmark_group("scrape_buckets");
    let defaults = [("26", DEFAULT_BUCKETS)];
    for (name, buckets) in defaults.into_iter().chain(BUCKET_SCHEMES) {
        assert_eq!(name, buckets.len().to_string());
        let (registry, proxies) = exporters(100, buckets);
        let mut buf = Vec::new();
        encode(&TextEncoder::new(), &registry, &mut buf);
        eprintln!("scrape_buckets/{name}: {} bytes of exposition", buf.len());
        g.bench_with_input(
            BenchmarkId::from_parameter(name),
            &registry,
            |b, registry| b.iter(|| encode(&TextEncoder::new(), registry, &mut buf)),
        );
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
                encode(&TextEncoder::new(), &registry, &mut buf);
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
    targets = scrape_text, scrape_encode, scrape_gather, scrape_protobuf, scrape_buckets, scrape_throughput
}
criterion_main!(benches);

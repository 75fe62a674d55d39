//! Runs a mixed workload on an instrumented thread pool, serves its metrics at
//! `http://127.0.0.1:PORT/metrics`, and prints what happened, read back from
//! the metrics themselves.
//!
//! ```text
//! cargo run --example quickstart                    # run, print, exit
//! cargo run --example quickstart -- --keep-serving  # ... then keep serving /metrics
//! cargo run --example quickstart -- --port 9100 --serve-secs 30 --tasks 500 --id "api"
//! ```

use std::error::Error;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use executor_exporter::prometheus::proto::MetricFamily;
use executor_exporter::prometheus::Registry;
use executor_exporter::{MetricsServer, TaskError, ThreadPoolExecutor};

struct Args {
    port: u16,
    tasks: u64,
    workers: usize,
    id: String,
    serve: Option<Duration>, // None = forever
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        port: 9184,
        tasks: 300,
        workers: 4,
        id: "quickstart".to_owned(),
        serve: Some(Duration::ZERO),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--port" => {
                args.port = value("--port")?
                    .parse()
                    .map_err(|e| format!("--port: {e}"))?
            }
            "--tasks" => {
                args.tasks = value("--tasks")?
                    .parse()
                    .map_err(|e| format!("--tasks: {e}"))?
            }
            "--workers" => {
                args.workers = value("--workers")?
                    .parse()
                    .map_err(|e| format!("--workers: {e}"))?
            }
            "--id" => args.id = value("--id")?,
            "--serve-secs" => {
                let secs: u64 = value("--serve-secs")?
                    .parse()
                    .map_err(|e| format!("--serve-secs: {e}"))?;
                args.serve = Some(Duration::from_secs(secs));
            }
            "--keep-serving" => args.serve = None,
            "-h" | "--help" => {
                println!(
                    "usage: quickstart [--port N (0 = any free port)] [--tasks N] [--workers N] \
                     [--id EXPORTER_ID] [--serve-secs N | --keep-serving]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    // Panicking tasks are part of the demo: one line each instead of a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        eprintln!(
            "[{}] task panicked: {}",
            thread.name().unwrap_or("?"),
            info.payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("?")
        );
    }));
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .max_workers(args.workers)
        .exporter_id(args.id.clone())
        .thread_name_prefix("quickstart")
        .registry(registry.clone())
        .build()?;
    let server = MetricsServer::start(("127.0.0.1", args.port), registry.clone())?;
    let url = format!("http://{}/metrics", server.local_addr());
    println!("serving {url}");
    println!(
        "running {} tasks on {} workers: image resizes that sometimes panic, parses that sometimes fail",
        args.tasks, args.workers
    );

    let started = Instant::now();
    // Work that may panic: every 25th "image" is corrupt.
    let resizes: Vec<_> = (0..args.tasks / 2)
        .map(|i| {
            pool.submit(move || {
                std::thread::sleep(Duration::from_millis(1 + i % 7));
                if i % 25 == 24 {
                    panic!("image {i} is corrupt");
                }
                i * 2
            })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    // Work that returns Err: every 10th record does not parse.
    let parsed: Vec<Result<u64, String>> = pool
        .map_fallible(
            |i: u64| {
                std::thread::sleep(Duration::from_micros(300 + (i % 5) * 200));
                if i % 10 == 9 {
                    Err(format!("record {i}: bad checksum"))
                } else {
                    Ok(i)
                }
            },
            0..args.tasks - args.tasks / 2,
        )
        .map(|r| r.expect("a fallible task does not panic"))
        .collect();
    // A few queued tasks are cancelled before they start.
    let gate = std::sync::Arc::new(std::sync::Barrier::new(args.workers + 1));
    let blockers: Vec<_> = (0..args.workers)
        .map(|_| {
            let gate = gate.clone();
            pool.submit(move || {
                gate.wait();
            })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let doomed: Vec<_> = (0..3)
        .map(|_| pool.submit(|| ()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let cancelled = doomed.iter().filter(|h| h.cancel()).count();
    gate.wait();
    for b in blockers {
        b.join()?;
    }

    let mut panicked = 0;
    for handle in resizes {
        match handle.join() {
            Ok(_) => {}
            Err(TaskError::Panicked { .. }) => panicked += 1,
            Err(e) => return Err(e.into()),
        }
    }
    let errs = parsed.iter().filter(|r| r.is_err()).count();
    pool.join();
    println!(
        "done in {:.2?}: {panicked} panicked, {errs} returned Err, {cancelled} cancelled",
        started.elapsed()
    );

    // Read it back through HTTP, as Prometheus would, to show it is served.
    let body = fetch(&server)?;
    let lines = body.lines().filter(|l| !l.starts_with('#')).count();
    println!("GET {url}: {} bytes, {lines} samples", body.len());

    summary(&registry.gather(), &args.id);

    match args.serve {
        Some(d) if d.is_zero() => {}
        Some(d) => {
            println!("serving {url} for {} s more", d.as_secs());
            std::thread::sleep(d);
        }
        None => {
            println!("serving {url} until interrupted (Ctrl-C)");
            loop {
                std::thread::park();
            }
        }
    }
    Ok(())
}

fn fetch(server: &MetricsServer) -> Result<String, Box<dyn Error>> {
    let mut conn = TcpStream::connect(server.local_addr())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").ok_or("malformed HTTP reply")?;
    if !head.contains(" 200 ") {
        return Err(format!("unexpected reply: {head}").into());
    }
    Ok(body.to_owned())
}

/// Prints tasks by result and p50/p99 of wait and duration, computed from the
/// histogram buckets the way `histogram_quantile` does.
fn summary(families: &[MetricFamily], id: &str) {
    let family = |name: &str| families.iter().find(|f| f.name() == name);
    let ours = |m: &&executor_exporter::prometheus::proto::Metric| {
        m.get_label()
            .iter()
            .any(|l| l.name() == "executor" && l.value() == id)
    };
    let label = |m: &executor_exporter::prometheus::proto::Metric, name: &str| {
        m.get_label()
            .iter()
            .find(|l| l.name() == name)
            .map(|l| l.value().to_owned())
            .unwrap_or_default()
    };
    let counter = |name: &str| -> f64 {
        family(name)
            .map(|f| f.get_metric().iter().filter(ours).map(counter_value).sum())
            .unwrap_or(0.0)
    };
    println!("\nfrom the metrics (executor={id:?}):");
    println!("  submitted  {}", counter("executor_submitted_tasks_total"));
    if let Some(f) = family("executor_tasks_duration_seconds") {
        for m in f.get_metric().iter().filter(ours) {
            println!(
                "  {:<10} {}",
                label(m, "result"),
                m.get_histogram().get_sample_count()
            );
        }
    }
    println!("  cancelled  {}", counter("executor_cancelled_tasks_total"));
    if let Some(f) = family("executor_task_failures_total") {
        for m in f.get_metric().iter().filter(ours) {
            let v = counter_value(m);
            if v > 0.0 {
                println!("    failed because {:<8} {v}", label(m, "reason"));
            }
        }
    }
    for (title, name) in [
        ("wait", "executor_task_wait_seconds"),
        ("duration", "executor_tasks_duration_seconds"),
    ] {
        let Some(f) = family(name) else { continue };
        // Merge the series of this exporter (both results, for duration).
        let mut merged: Vec<(f64, u64)> = Vec::new();
        for m in f.get_metric().iter().filter(ours) {
            for (i, b) in m.get_histogram().get_bucket().iter().enumerate() {
                if merged.len() <= i {
                    merged.push((b.upper_bound(), 0));
                }
                merged[i].1 += b.cumulative_count();
            }
        }
        println!(
            "  {title:<9} p50 {}  p99 {}",
            fmt_quantile(quantile(0.5, &merged)),
            fmt_quantile(quantile(0.99, &merged))
        );
    }
    println!("  (quantiles are interpolated inside the bucket they fall in, as PromQL's histogram_quantile)");
}

/// The q-quantile of cumulative buckets, interpolated linearly inside the
/// bucket it falls in (as PromQL's `histogram_quantile`), with that bucket's
/// bounds.
fn quantile(q: f64, buckets: &[(f64, u64)]) -> Option<(f64, f64, f64)> {
    let total = buckets.last().map(|b| b.1)?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            let in_bucket = (count - lower.1) as f64;
            let frac = if in_bucket == 0.0 {
                1.0
            } else {
                (rank - lower.1 as f64) / in_bucket
            };
            return Some((lower.0 + (bound - lower.0) * frac, lower.0, bound));
        }
        lower = (bound, count);
    }
    Some((lower.0, lower.0, f64::INFINITY))
}

/// `estimate (bucket lower-upper)`: the estimate alone would suggest a precision
/// the buckets do not have (a p99 wait can read longer than the whole run).
fn fmt_quantile(q: Option<(f64, f64, f64)>) -> String {
    match q {
        None => "-".to_owned(),
        Some((estimate, lower, upper)) => format!(
            "{} (bucket {}-{})",
            fmt_secs(Some(estimate)),
            fmt_bound(lower),
            fmt_bound(upper)
        ),
    }
}

/// A bucket bound, as short as it reads in the bucket list (`250 ms`).
fn fmt_bound(s: f64) -> String {
    let short = |v: f64, unit: &str| format!("{} {unit}", (v * 1000.0).round() / 1000.0);
    match s {
        s if s.is_infinite() => "+Inf".to_owned(),
        s if s < 1e-3 => short(s * 1e6, "us"),
        s if s < 1.0 => short(s * 1e3, "ms"),
        s => short(s, "s"),
    }
}

fn fmt_secs(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(s) if s < 1e-3 => format!("{:.1} us", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.2} ms", s * 1e3),
        Some(s) => format!("{s:.2} s"),
    }
}

/// A counter's value. The `prometheus` crate's proto types differ with its
/// `protobuf` feature (this crate's feature of the same name turns it on).
fn counter_value(m: &executor_exporter::prometheus::proto::Metric) -> f64 {
    #[cfg(feature = "protobuf")]
    return m.get_counter().value();
    #[cfg(not(feature = "protobuf"))]
    return m.get_counter().get_value();
}

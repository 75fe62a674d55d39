//! Exemplars: from a slow bucket of the wait or duration histogram to the
//! trace of a request that landed there.
//!
//! Each simulated request below has a trace id, kept in a thread-local while
//! the request is handled (as a tracing layer or a middleware would keep
//! it), and hands work to a thread pool. The pool's exemplar hook reads that
//! id at submit, on the request's thread; the wait and duration histograms
//! keep, per bucket, the latest task's value with its trace id, and the
//! OpenMetrics exposition writes them on the bucket lines:
//!
//! ```text
//! executor_tasks_duration_seconds_bucket{executor="checkout",executor_type="thread_pool",result="completed",le="0.05"} 9 # {trace_id="7f3a0000000000c4"} 0.0412 1733000000.123
//! ```
//!
//! Prometheus (2.26 and later, started with `--enable-feature=exemplar-storage`)
//! stores them from an OpenMetrics scrape, and Grafana shows them as dots on
//! a latency panel, each linking to its trace.
//!
//! ```text
//! cargo run --example exemplars                              # run, print, exit
//! cargo run --example exemplars -- --port 9185 --keep-serving # ... then serve /metrics
//! ```

use std::cell::RefCell;
use std::error::Error;
use std::time::Duration;

use executor_exporter::prometheus::Registry;
use executor_exporter::{ExemplarLabels, MetricsServer, OpenMetricsEncoder, ThreadPoolExecutor};

thread_local! {
    /// The trace of the request this thread is handling, if any.
    static TRACE_ID: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Handles one request: its trace id is current on this thread while it
/// submits work.
fn handle(pool: &ThreadPoolExecutor, trace_id: u64, work: Duration) -> Result<(), Box<dyn Error>> {
    TRACE_ID.with(|t| *t.borrow_mut() = Some(format!("{trace_id:016x}")));
    let result = pool.submit(move || std::thread::sleep(work));
    TRACE_ID.with(|t| *t.borrow_mut() = None);
    result?.join()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut port = 0u16;
    let mut keep_serving = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().ok_or("--port needs a value")?.parse()?,
            "--keep-serving" => keep_serving = true,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }

    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .max_workers(2)
        .exporter_id("checkout")
        .registry(registry.clone())
        // Called at each submit, on the submitting thread. No trace, no
        // exemplar; an id OpenMetrics would refuse (over 128 characters
        // with its name) gives none either.
        .exemplar(|| {
            let id = TRACE_ID.with(|t| t.borrow().clone())?;
            ExemplarLabels::new([("trace_id", id)])
        })
        .build()?;

    // Mostly quick requests, every tenth a slow one.
    for request in 0..40u64 {
        let work = if request % 10 == 9 {
            40
        } else {
            2 + request % 3
        };
        handle(
            &pool,
            0x7f3a_0000_0000_0000 + request,
            Duration::from_millis(work),
        )?;
    }

    let mut out = Vec::new();
    OpenMetricsEncoder::new().encode_with_exemplars(&registry.gather(), &registry, &mut out)?;
    println!("Bucket lines with an exemplar:");
    for line in String::from_utf8(out)?
        .lines()
        .filter(|l| l.contains(" # {"))
    {
        println!("  {line}");
    }

    let server = MetricsServer::builder()
        .openmetrics(true)
        .start(("127.0.0.1", port), registry)?;
    println!(
        "\nServed as OpenMetrics at http://{}/metrics (to a scraper that asks for it, as Prometheus does).",
        server.local_addr()
    );
    if keep_serving {
        println!("Scrape it with `prometheus --enable-feature=exemplar-storage`; Ctrl-C to stop.");
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    Ok(())
}

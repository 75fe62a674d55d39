//! A thread pool whose wait and duration histograms are also native
//! histograms, served by `MetricsServer` in the protobuf exposition, which
//! Prometheus asks for when run with `--enable-feature=native-histograms`.
//!
//! ```text
//! cargo run --example native_histograms --features protobuf                    # run, print, exit
//! cargo run --example native_histograms --features protobuf -- --keep-serving  # ... then serve
//! ```
//!
//! Served on 127.0.0.1:9185; scrape it with this `prometheus.yml`:
//!
//! ```yaml
//! scrape_configs:
//!   - job_name: pools
//!     scrape_interval: 5s
//!     static_configs: [{ targets: ["127.0.0.1:9185"] }]
//! ```
//!
//! and `prometheus --enable-feature=native-histograms`, then query
//! `histogram_quantile(0.9, rate(executor_tasks_duration_seconds[1m]))`.

use std::error::Error;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use executor_exporter::prometheus::Registry;
use executor_exporter::{MetricsServer, ThreadPoolExecutor};

/// The `Accept` header Prometheus sends with native histograms enabled.
const PROTOBUF_FIRST: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,text/plain;version=0.0.4;q=0.5";

/// The body of `GET /metrics` with `accept`, and its content type.
fn scrape(server: &MetricsServer, accept: &str) -> Result<(String, Vec<u8>), Box<dyn Error>> {
    let mut conn = TcpStream::connect(server.local_addr())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "GET /metrics HTTP/1.0\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply)?;
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no response head")?;
    let head = String::from_utf8_lossy(&reply[..split]).to_lowercase();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or("?")
        .to_owned();
    Ok((content_type, reply[split + 4..].to_vec()))
}

fn main() -> Result<(), Box<dyn Error>> {
    let keep_serving = std::env::args().any(|a| a == "--keep-serving");
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .exporter_id("native_example")
        .max_workers(4)
        .registry(registry.clone())
        // 8 buckets per power of two, each 9% wide; classic buckets kept
        // for dashboards that read `_bucket` (`.classic_buckets(false)`
        // drops them).
        .native_histograms(3)
        .build()?;
    let server = MetricsServer::start("127.0.0.1:9185", registry)?;

    // Tasks of 0 to 19 ms.
    let handles: Vec<_> = (0..60u64)
        .map(|i| pool.submit(move || std::thread::sleep(Duration::from_millis(i % 20))))
        .collect::<Result<_, _>>()?;
    for handle in handles {
        handle.join()?;
    }

    let (proto_type, proto) = scrape(&server, PROTOBUF_FIRST)?;
    let (text_type, text) = scrape(&server, "text/plain")?;
    println!(
        "schema {:?}: served at http://{}/metrics",
        pool.exporter().native_histogram_schema(),
        server.local_addr()
    );
    println!(
        "  {proto_type}: {} bytes (native histograms and classic buckets)",
        proto.len()
    );
    println!("  {text_type}: {} bytes (classic buckets only)", text.len());
    if keep_serving {
        println!("serving until interrupted (Ctrl-C)");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    Ok(())
}

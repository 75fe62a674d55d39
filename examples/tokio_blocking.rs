//! A tokio service whose blocking work is measured: queue wait, running
//! tasks, duration and failures of the runtime's blocking pool, served on
//! `/metrics` (features `tokio` and `http`).
//!
//! The one change to the handlers is the spawn:
//!
//! ```text
//! -    tokio::task::spawn_blocking(move || checksum(&data)).await?
//! +    blocking.spawn_blocking(move || checksum(&data)).await?
//! ```
//!
//! Run with `cargo run --example tokio_blocking --features tokio,http`; it
//! runs 40 requests on a runtime of 4 blocking threads (so some wait for a
//! thread), serves `/metrics` on a free port of 127.0.0.1, fetches it once,
//! prints the blocking pool's lines and exits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use executor_exporter::prometheus::Registry;
use executor_exporter::{MetricsServer, TokioBlockingExecutor};

/// Blocking work: a CPU-bound checksum, slowed down as a disk read would be.
fn checksum(data: &[u8]) -> u64 {
    std::thread::sleep(Duration::from_millis(20));
    data.iter().map(|&b| u64::from(b)).sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()?;
    let registry = Registry::new();
    let blocking = Arc::new(
        TokioBlockingExecutor::builder(runtime.handle().clone())
            .max_blocking_threads(4)
            .exporter_id("checksums")
            .registry(registry.clone())
            .build()?,
    );
    let server = MetricsServer::start("127.0.0.1:0", registry)?;
    println!("serving http://{}/metrics", server.local_addr());

    let total = runtime.block_on(async {
        let requests: Vec<_> = (0..40u8)
            .map(|request| {
                let blocking = blocking.clone();
                tokio::spawn(async move {
                    let data = vec![request; 1024];
                    blocking.spawn_blocking(move || checksum(&data)).await
                })
            })
            .collect();
        let mut total = 0;
        for request in requests {
            total += request.await??;
        }
        Ok::<u64, Box<dyn std::error::Error>>(total)
    })?;
    println!("checksum of all requests: {total}");

    let mut conn = TcpStream::connect(server.local_addr())?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    for line in reply.lines() {
        let wanted = [
            "executor_submitted_tasks_total",
            "executor_task_wait_seconds_count",
            "executor_task_wait_seconds_sum",
            "executor_tasks_duration_seconds_count",
            "executor_max_workers",
        ];
        if wanted.iter().any(|name| line.starts_with(name)) {
            println!("{line}");
        }
    }
    Ok(())
}

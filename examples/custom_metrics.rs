//! Your own metrics next to the executor's, served from the same `/metrics`:
//! a counter of your own registered in `exporter().registry()`, and a step
//! timed inside the tasks.
//!
//! Run with `cargo run --example custom_metrics`; it serves on a free port
//! of 127.0.0.1, fetches its own `/metrics` once, prints the lines of both
//! and exits.

use std::io::{Read, Write};
use std::net::TcpStream;

use executor_exporter::prometheus::{IntCounter, Registry};
use executor_exporter::{MetricsServer, ThreadPoolExecutor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = ThreadPoolExecutor::builder()
        .max_workers(4)
        .exporter_id("orders")
        .registry(Registry::new())
        .build()?;

    // A metric of your own, in the registry the pool records into.
    let orders = IntCounter::new("shop_orders_processed_total", "Orders processed.")?;
    pool.exporter()
        .registry()
        .register(Box::new(orders.clone()))?;

    // A step inside the tasks: resolved once, cloned into each task.
    let validate = pool.exporter().step("validate");
    for order in 0..20u32 {
        let (orders, validate) = (orders.clone(), validate.clone());
        pool.submit(move || {
            let ok = validate.time(|| order % 7 != 0);
            if ok {
                orders.inc();
            }
        })?;
    }
    pool.join();

    // One server for everything in the registry.
    let server = MetricsServer::start("127.0.0.1:0", pool.exporter().registry().clone())?;
    println!("serving http://{}/metrics", server.local_addr());

    let mut conn = TcpStream::connect(server.local_addr())?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    for line in reply.lines() {
        let ours = line.starts_with("shop_orders_processed_total");
        let steps = line.starts_with("executor_step_duration_seconds_count");
        let tasks = line.starts_with("executor_submitted_tasks_total");
        if ours || steps || tasks {
            println!("{line}");
        }
    }
    Ok(())
}

//! A pool's metrics in a `prometheus-client` registry, beside the
//! application's own metrics, encoded as OpenMetrics.
//!
//! Run: `cargo run --example prometheus_client --features prometheus-client`
//! (prints the exposition; serve it from your HTTP handler the same way).

use executor_exporter::prometheus_client::encoding::text::encode;
use executor_exporter::prometheus_client::metrics::counter::Counter;
use executor_exporter::prometheus_client::registry::Registry;
use executor_exporter::ThreadPoolExecutor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The application's own metrics, in its `prometheus-client` registry.
    let mut registry = Registry::default();
    let requests = Counter::<u64>::default();
    registry.register("http_requests", "HTTP requests served", requests.clone());

    // The pool records into a `prometheus` registry of its own, which nothing
    // else uses: register its families into the application's registry once.
    let pool = ThreadPoolExecutor::builder()
        .max_workers(4)
        .exporter_id("thumbnails")
        .registry(executor_exporter::prometheus::Registry::new())
        .build()?;
    pool.exporter().register_into(&mut registry);

    for size in [64u32, 128, 256] {
        requests.inc();
        pool.submit(move || size * size)?.join()?;
    }
    let _ = pool.submit(|| -> u32 { panic!("corrupt image") })?.join();
    pool.join();

    let mut text = String::new();
    encode(&mut text, &registry)?;
    print!("{text}");
    Ok(())
}

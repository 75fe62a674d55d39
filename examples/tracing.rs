//! Logs of pool tasks that say which request they belong to (feature `tracing`).
//!
//! Each request handler below runs inside its own span and hands work to a
//! thread pool. With the feature on, every task runs inside the span that
//! was current when it was submitted, so the fmt subscriber prints the
//! task's log lines under their request, on whichever worker ran them:
//!
//! ```text
//! INFO request{id=1}: tracing: resizing width=640
//! INFO request{id=2}: tracing: resizing width=1280
//! ```
//!
//! Spans go to the subscriber set with `init()` (the global default), which
//! is the one pool threads see.
//!
//! Run with `cargo run --example tracing --features tracing`.

use executor_exporter::ThreadPoolExecutor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_thread_names(true)
        .with_ansi(false)
        .init();

    let pool = ThreadPoolExecutor::builder()
        .max_workers(2)
        .exporter_id("thumbnails")
        .build()?;

    for id in 1..=3u64 {
        let request = tracing::info_span!("request", id);
        let _entered = request.enter();
        tracing::info!("accepted");
        // Each task runs in this request's span, on a worker thread.
        let resized = pool.submit(move || {
            let width = 640 * id;
            tracing::info!(width, "resizing");
            width
        })?;
        // So do the items of a map, and tasks given with `spawn`.
        let sizes: Vec<u64> = pool
            .map(
                |factor: u64| {
                    tracing::info!(factor, "scaling");
                    factor * 100
                },
                1..=2,
            )
            .collect::<Result<_, _>>()?;
        pool.spawn(move || tracing::info!(?sizes, "spawned"))
            .map_err(|e| e.to_string())?;
        tracing::info!(width = resized.join()?, "done");
    }
    pool.join();
    Ok(())
}

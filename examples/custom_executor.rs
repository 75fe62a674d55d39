//! A pool of your own, made observable by wrapping it in the proxy.
//!
//! `ChannelPool` below stands for any executor you already have: implement
//! `Executor` (one method) and wrap it; nothing else changes.
//!
//! ```text
//! cargo run --example custom_executor
//! ```

use std::sync::Mutex;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use executor_exporter::prometheus::{Encoder, Registry, TextEncoder};
use executor_exporter::{
    Executor, ExecutorExporter, InstrumentedExecutorProxy, RejectReason, Rejected, Task,
};

/// A fixed-size pool with a bounded queue: a submit to a full queue is refused.
struct ChannelPool {
    sender: Mutex<Option<Sender<Task>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    size: usize,
}

impl ChannelPool {
    fn new(size: usize, queue: usize, exporter: ExecutorExporter) -> ChannelPool {
        let (sender, receiver): (Sender<Task>, Receiver<Task>) = crossbeam_channel::bounded(queue);
        let threads = (0..size)
            .map(|_| {
                let receiver = receiver.clone();
                let exporter = exporter.clone();
                std::thread::spawn(move || {
                    // Report each worker as it starts and as it exits, so
                    // `executor_workers` is the threads alive.
                    exporter.worker_started();
                    for task in receiver {
                        task.run();
                    }
                    exporter.worker_stopped();
                })
            })
            .collect();
        ChannelPool {
            sender: Mutex::new(Some(sender)),
            threads: Mutex::new(threads),
            size,
        }
    }
}

impl Executor for ChannelPool {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        let guard = self.sender.lock().unwrap();
        let Some(sender) = guard.as_ref() else {
            return Err(Rejected::new(task, RejectReason::Shutdown));
        };
        sender.try_send(task).map_err(|e| {
            let reason = if e.is_full() {
                RejectReason::Full
            } else {
                RejectReason::Shutdown
            };
            Rejected::new(e.into_inner(), reason)
        })
    }

    fn max_workers(&self) -> Option<usize> {
        Some(self.size)
    }

    fn shutdown(&self) {
        self.sender.lock().unwrap().take();
        for t in self.threads.lock().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::new();
    let exporter = ExecutorExporter::builder()
        .exporter_id("uploads")
        .executor_type("channel_pool")
        .registry(registry.clone())
        .build()?;
    let pool =
        InstrumentedExecutorProxy::new(ChannelPool::new(2, 4, exporter.clone()), exporter, None);

    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..20u64 {
        match pool.submit(move || {
            std::thread::sleep(std::time::Duration::from_millis(5));
            i
        }) {
            Ok(handle) => accepted.push(handle),
            Err(e) => {
                assert_eq!(e.reason(), RejectReason::Full);
                refused += 1;
            }
        }
    }
    let sum: u64 = accepted.into_iter().map(|h| h.join().unwrap()).sum();
    pool.shutdown();
    println!("accepted tasks summed to {sum}; {refused} submits refused by the full queue");

    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    for line in String::from_utf8(out)?.lines() {
        let sample = !line.starts_with('#') && !line.contains("_bucket");
        if sample && (line.contains("_total") || line.contains("_count") || line.contains("tasks{"))
        {
            println!("{line}");
        }
    }
    Ok(())
}

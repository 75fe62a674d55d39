//! A deliberately buggy executor, caught by the testing kit: it drops every
//! 100th task it accepts without running it. Behind the proxy nothing goes
//! missing from the metrics (a dropped task counts as cancelled), but work
//! is lost; `check_executor` finds it and shrinks the workload that shows it.
//!
//! ```text
//! cargo run --example buggy_executor --features testing
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use executor_exporter::testing::{try_check_executor, CheckConfig};
use executor_exporter::{Executor, RejectReason, Rejected, Task};

/// A fixed-size pool with a shared queue, and a bug.
struct LossyPool {
    queue: Mutex<Option<Sender<Task>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    accepted: AtomicU64,
}

impl LossyPool {
    fn new(size: usize) -> LossyPool {
        let (queue, tasks) = channel::<Task>();
        let tasks = Arc::new(Mutex::new(tasks));
        let workers = (0..size)
            .map(|_| {
                let tasks = tasks.clone();
                std::thread::spawn(move || work(&tasks))
            })
            .collect();
        LossyPool {
            queue: Mutex::new(Some(queue)),
            workers: Mutex::new(workers),
            accepted: AtomicU64::new(0),
        }
    }
}

/// Runs tasks until the queue is closed and empty.
fn work(tasks: &Mutex<Receiver<Task>>) {
    loop {
        let next = tasks.lock().unwrap().recv();
        match next {
            Ok(task) => task.run(),
            Err(_) => return,
        }
    }
}

impl Executor for LossyPool {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        let guard = self.queue.lock().unwrap();
        let Some(queue) = guard.as_ref() else {
            return Err(Rejected::new(task, RejectReason::Shutdown));
        };
        // The bug: every 100th task is accepted and never run.
        if self.accepted.fetch_add(1, Ordering::SeqCst) % 100 == 99 {
            drop(task);
            return Ok(());
        }
        queue
            .send(task)
            .map_err(|e| Rejected::new(e.0, RejectReason::Broken))
    }

    fn max_workers(&self) -> Option<usize> {
        Some(self.workers.lock().unwrap().len())
    }

    fn shutdown(&self) {
        self.queue.lock().unwrap().take();
        for worker in self.workers.lock().unwrap().drain(..) {
            let _ = worker.join();
        }
    }
}

fn main() {
    // The bug shows once a hundred tasks went through one pool: workloads
    // of up to 200 operations reach that.
    let config = CheckConfig::default()
        .max_ops(200)
        .max_sleep(std::time::Duration::ZERO);
    match try_check_executor(&config, || LossyPool::new(2)) {
        Ok(()) => {
            eprintln!("the lost tasks went unnoticed");
            std::process::exit(1);
        }
        Err(failure) => println!("{failure}"),
    }
}

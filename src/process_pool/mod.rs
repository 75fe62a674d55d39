//! A process pool: tasks run in worker processes, so a task that crashes, aborts or hangs takes down
//! only its worker, never the caller.
//!
//! Linux only (it relies on `/proc/self/exe`, `PR_SET_PDEATHSIG`, `eventfd` and `MSG_NOSIGNAL`).
//!
//! # Declaring tasks
//!
//! Closures cannot cross a process boundary, so a task is a type implementing [`ProcessTask`]: a stable
//! name, serde input/output/error types and a plain function. The worker side knows tasks through a
//! [`WorkerRegistry`] the program builds explicitly.
//!
//! # The `main` hook
//!
//! Workers are the running binary re-executed with a marker in the environment. The first line of `main`
//! must hand the registry to [`run_if_worker`], which turns such a process into a worker and returns at
//! once in the normal process:
//!
//! ```no_run
//! use executor_exporter::process_pool::{run_if_worker, ProcessPool, ProcessTask, WorkerRegistry};
//!
//! struct Square;
//! impl ProcessTask for Square {
//!     const NAME: &'static str = "square";
//!     type Input = u64;
//!     type Output = u64;
//!     type Error = String;
//!     fn run(x: u64) -> Result<u64, String> {
//!         Ok(x * x)
//!     }
//! }
//!
//! fn main() {
//!     run_if_worker(&WorkerRegistry::new().register::<Square>());
//!
//!     let pool = ProcessPool::builder().max_workers(2).build().unwrap();
//!     let handle = pool.submit::<Square>(&7).unwrap();
//!     assert_eq!(handle.join(), Ok(Ok(49)));
//! }
//! ```
//!
//! Under `cargo test` the test binary is re-executed: give it a test that calls the hook and point the
//! pool at it with [`ProcessPoolBuilder::worker_test_entry`] (see [`run_if_worker`]).
//!
//! # How it works
//!
//! Each worker gets one end of a Unix socket pair on descriptor 3 (stdout and stderr stay the user's).
//! Messages are length-prefixed postcard frames with a size limit checked before any allocation. After
//! the optional initializer, the worker says it is ready; per task it acknowledges the start, runs the
//! task (catching panics) and sends the outcome. One dispatcher thread owns the workers: it starts them
//! on demand, reuses idle ones, enforces timeouts by SIGKILL, recycles workers after
//! `max_tasks_per_child` tasks, reaps every process it started (no zombies) and closes every descriptor.
//! Workers die with the pool's process (`PR_SET_PDEATHSIG`).
//!
//! A task submitted while nothing is queued and a worker is idle skips that thread: the submitting thread
//! sends it to the worker itself (the dispatcher learns of it from the worker's report, or death), so a
//! round trip costs one wake-up less. Such a task's start is recorded by the worker on a few words of
//! memory it shares with the pool, not sent: the reply is the worker's only message, as in a plain
//! request and reply between two processes. While tasks wait and every worker is busy with tasks that run
//! shorter than 100 µs, the dispatcher sends up to three more behind a worker's current one, so the
//! worker finds its next task waiting. [`ProcessPoolBuilder::spin`] turns on a low-latency mode.
//!
//! A chunk of inputs ([`ProcessPoolExecutor::map_chunked`]) is one `Run` message under a name derived
//! from the task's (reserved: it starts with a NUL byte); the worker runs each input in turn, catching
//! each panic, and sends back one outcome per input.
//!
//! A worker that dies fails only the task it had acknowledged, with an error naming its pid and exit
//! code or signal; a task it had not acknowledged never ran and is sent again (up to 3 attempts). When
//! workers cannot start N times in a row the pool is *broken* and fails every queued and later task at
//! once.

mod board;
mod dispatcher;
mod instrumented;
mod job;
mod join;
mod pool;
mod reap;
mod sink;
mod spin;
mod sys;
mod task;
mod wire;
mod worker;

#[cfg(all(test, not(loom)))]
mod tests;

pub use instrumented::{
    ProcessChunkedMap, ProcessMap, ProcessPoolExecutor, ProcessPoolExecutorBuilder,
};
pub use pool::{ProcessPool, ProcessPoolBuilder};
pub use sink::ProcessOutput;
pub use task::{ProcessTask, WorkerRegistry};
pub use worker::{is_worker_process, run_if_worker};

//! Thread pools: [`ThreadPool`], the plain one (`plain.rs`), and
//! [`ThreadPoolExecutor`], the same pool behind the instrumented proxy
//! (`instrumented.rs`).

mod instrumented;
mod plain;

pub use instrumented::{ThreadPoolExecutor, ThreadPoolExecutorBuilder};
pub use plain::{ThreadPool, ThreadPoolBuilder};

//! Prometheus metrics for thread pools and process pools.
//!
//! TEMPORARY crate root of the `process-pool` branch: it only declares the process-pool module so the
//! branch builds on its own. It is replaced by the crate root of `main` at merge time, where the module
//! becomes `mod process_pool;` plus a `pub use` list.
#![deny(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

#[cfg(target_os = "linux")]
pub mod process_pool;

//! The synchronisation primitives of the task state machine: the standard
//! library's, or [`loom`](https://docs.rs/loom)'s when built with
//! `--cfg loom` so the models in `loom_tests` can explore every interleaving.
//!
//! `Arc` stays the standard library's in both builds: loom's cannot hold the
//! crate's `Arc<dyn Fn>` hooks nor the exporter's shared series, and the
//! models check the state word, the slot and the wake-ups, not reference
//! counts.

pub(crate) use std::sync::Arc;

#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};

pub(crate) mod atomic {
    pub(crate) use std::sync::atomic::Ordering;

    #[cfg(not(loom))]
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
}

/// Orders a store before a later load of another atomic, as `SeqCst`
/// accesses already do (the store-buffering, or Dekker, pattern of
/// `Accounting`: a submit's in-flight count against `closed`). Loom regards `SeqCst` accesses as `AcqRel` and would
/// report those pairs as races (loom's README, "Unsupported features"); it
/// does model `fence(SeqCst)`, so under loom this is one. Without loom it is
/// nothing: the accesses are `SeqCst` and the code is unchanged.
#[inline(always)]
pub(crate) fn seqcst_pair() {
    #[cfg(loom)]
    loom::sync::atomic::fence(atomic::Ordering::SeqCst);
}

/// Lets another thread run while spinning on an atomic.
pub(crate) fn yield_now() {
    #[cfg(not(loom))]
    std::thread::yield_now();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Locks a standard mutex, going on past a poisoned lock: every critical
/// section of the crate's own mutexes (registries of series, steps, shards,
/// pool state) leaves its data whole, and a panic in user code never runs
/// while one is held, so a poisoned lock still guards valid data.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

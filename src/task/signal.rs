//! The few process-wide mutex and condvar pairs that blocked joins and idle
//! waits sleep on.

use crate::sync::{Condvar, Mutex, MutexGuard};

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here only move an `Option` in or out: a panic cannot
    // leave them half done, so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where `wait_idle` and a task's `join` sleep, and what an end that they
/// wait for wakes: one of a few process-wide pairs, chosen by the address
/// of the accounting or task waited for. Static, so the task that ends last
/// never touches its accounting after the add that made it idle (the
/// waiter may then return and its owner free the accounting at once), and a
/// task needs no mutex and condvar of its own; a pair shared by two waits
/// only costs a spurious wake-up.
pub(super) struct WaitSignal {
    pub(super) lock: Mutex<()>,
    pub(super) cv: Condvar,
}

#[cfg(not(loom))]
const WAIT_SIGNALS: usize = 16;

#[cfg(not(loom))]
pub(super) fn wait_signal(addr: usize) -> &'static WaitSignal {
    #[allow(clippy::declare_interior_mutable_const)]
    const NEW: WaitSignal = WaitSignal {
        lock: Mutex::new(()),
        cv: Condvar::new(),
    };
    static SIGNALS: [WaitSignal; WAIT_SIGNALS] = [NEW; WAIT_SIGNALS];
    &SIGNALS[(addr >> 7) % WAIT_SIGNALS]
}

#[cfg(loom)]
pub(super) fn wait_signal(_addr: usize) -> &'static WaitSignal {
    // Loom's primitives must be created inside each model run.
    loom::lazy_static! {
        static ref SIGNAL: WaitSignal = WaitSignal {
            lock: Mutex::new(()),
            cv: Condvar::new(),
        };
    }
    &SIGNAL
}

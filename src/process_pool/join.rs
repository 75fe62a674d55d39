//! [`ProcessJoin`]: what a process task's joiner may do while it waits,
//! spin for the result or read its worker's reply itself.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::dispatcher::Lent;
use super::spin::joiner_spin;
use crate::task::{Help, TaskCore};

/// What a process task's core holds for its joiner: how long it may spin
/// for the result before it parks (zero: it parks at once, after the
/// handle's own short backoff), and the worker it may read the reply from
/// itself, if the task went straight to an idle worker.
pub(crate) struct ProcessJoin {
    spin: Duration,
    lent: Mutex<Option<Lent>>,
}

impl ProcessJoin {
    pub(crate) fn new(spin: Duration) -> ProcessJoin {
        ProcessJoin {
            spin,
            lent: Mutex::new(None),
        }
    }

    /// The task went straight to an idle worker: its first wait reads the reply.
    pub(crate) fn lend(&self, lent: Lent) {
        *self.lent() = Some(lent);
    }

    fn lent(&self) -> MutexGuard<'_, Option<Lent>> {
        self.lent.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A process task never runs on its joiner's thread; the joiner may spin, or
/// read its worker's reply.
impl<T> Help<T> for ProcessJoin {
    fn help(&self, _core: &TaskCore<T, dyn Help<T>>) -> bool {
        false
    }

    fn spin(&self, ready: &mut dyn FnMut() -> bool) -> bool {
        if self.spin.is_zero() {
            return false;
        }
        joiner_spin(self.spin, ready)
    }

    fn wait_here(&self, deadline: Option<Instant>) {
        let lent = self.lent().take();
        if let Some(lent) = lent {
            lent.read(deadline, self.spin);
        }
    }

    fn let_go(&self) {
        let lent = self.lent().take();
        if let Some(lent) = lent {
            lent.let_go();
        }
    }
}

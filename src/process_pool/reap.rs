//! Reaping worker processes: waiting for one to exit, with a deadline past
//! which it is killed, so no worker is ever left a zombie.

use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use super::job::WorkerExit;

/// How long a worker that closed its channel gets to become reapable before it is killed.
const EXIT_AFTER_EOF: Duration = Duration::from_secs(2);

/// Reaps a worker whose channel closed: it is exiting, so wait briefly, then kill it (it may have closed
/// the channel without exiting).
pub(super) fn reap_after_eof(child: &mut Child) -> WorkerExit {
    if let Some(exit) = wait_until(child, after(EXIT_AFTER_EOF)) {
        return exit;
    }
    kill_and_reap(child)
}

pub(super) fn kill_and_reap(child: &mut Child) -> WorkerExit {
    let _ = child.kill();
    match child.wait() {
        Ok(status) => WorkerExit::from_status(status),
        Err(_) => WorkerExit::Unknown,
    }
}

/// `now + d`, or `None` (no deadline) when `d` is too long for an `Instant`
/// to hold, such as `Duration::MAX` given as a timeout.
pub(super) fn after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// Waits for `child` to exit until `deadline` (`None`: for as long as it takes); past it, kills
/// and reaps it. Returns the exit if it ended by itself.
pub(super) fn wait_until(child: &mut Child, deadline: Option<Instant>) -> Option<WorkerExit> {
    let mut pause = Duration::from_micros(20);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(WorkerExit::from_status(status)),
            Ok(None) => {}
            Err(_) => return Some(WorkerExit::Unknown),
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            kill_and_reap(child);
            return None;
        }
        thread::sleep(deadline.map_or(pause, |d| pause.min(d - now)));
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

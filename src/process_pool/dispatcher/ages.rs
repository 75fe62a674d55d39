//! The ages a process pool reports ([`AgeSource`]): its tasks start and end
//! on the dispatcher thread, as the workers report them, so the dispatcher
//! publishes the oldest running and the oldest unstarted task it holds.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Dispatcher, Job, Shared, WState};

use crate::clock::Clock;
use crate::metrics::AgeSource;

/// The first job of `jobs` (oldest first) that is not cancelled.
fn oldest_live<'a>(jobs: impl IntoIterator<Item = &'a Job>) -> Option<Clock> {
    jobs.into_iter()
        .find(|j| !j.sink.is_cancelled())
        .and_then(|j| j.sink.submitted_at())
}

fn stored(raw: &AtomicU64) -> Option<Clock> {
    match raw.load(Ordering::Acquire) {
        0 => None,
        r => Some(Clock::from_raw(r)),
    }
}

fn store(raw: &AtomicU64, clock: Option<Clock>) {
    raw.store(clock.map_or(0, Clock::raw), Ordering::Release);
}

fn older(a: Option<Clock>, b: Option<Clock>) -> Option<Clock> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Clock::from_raw(a.raw().min(b.raw()))),
        (a, b) => a.or(b),
    }
}

impl Shared {
    /// The oldest running and the oldest unstarted of the jobs handed to
    /// idle workers that the dispatcher has not adopted (a joiner may be
    /// reading their reports).
    fn handed_ages(&self) -> (Option<Clock>, Option<Clock>) {
        let (mut running, mut queued) = (None, None);
        for link in &self.lock().links {
            let channel = link.channel();
            let Some(handed) = &channel.handed else {
                continue;
            };
            let sink = &handed.job.sink;
            if handed.started {
                running = older(running, sink.started_at());
            } else if !sink.is_cancelled() {
                queued = older(queued, sink.submitted_at());
            }
        }
        (running, queued)
    }
}

/// The process pool's tasks start and end on the dispatcher thread, as the
/// workers report them, or on the thread joining a task handed straight to
/// an idle worker: the pool reports their ages.
impl AgeSource for Shared {
    fn oldest_running(&self) -> Option<Clock> {
        older(stored(&self.ages.running), self.handed_ages().0)
    }

    fn oldest_queued(&self) -> Option<Clock> {
        let held = older(stored(&self.ages.queued), self.handed_ages().1);
        // Submitted after what the dispatcher holds: looked at only when it
        // holds nothing unstarted.
        held.or_else(|| oldest_live(&self.lock().queue))
    }
}

impl Dispatcher {
    /// Publishes the oldest running and oldest unstarted task it holds
    /// ([`Ages`]): a look at each worker and at the front of the queue
    /// (jobs a dead worker gave back are pushed there, each older than
    /// those behind them; so it looks past them to the first new one).
    pub(super) fn publish_ages(&self) {
        let mut running: Option<Clock> = None;
        let mut queued: Option<Clock> = None;
        for w in &self.workers {
            if let WState::Busy { job, started, .. } = &w.state {
                if *started {
                    running = older(running, job.sink.started_at());
                } else if !job.sink.is_cancelled() {
                    queued = older(queued, job.sink.submitted_at());
                }
            }
            // Sent behind the one it runs, in order: none has started.
            queued = older(queued, oldest_live(w.ahead.iter().map(|a| &a.job)));
        }
        for (i, job) in self.queue.iter().enumerate() {
            if job.attempts == 0 {
                queued = older(queued, oldest_live(self.queue.iter().skip(i)));
                break;
            }
            if !job.sink.is_cancelled() {
                queued = older(queued, job.sink.submitted_at());
            }
        }
        store(&self.shared.ages.running, running);
        store(&self.shared.ages.queued, queued);
    }
}

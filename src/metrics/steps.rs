//! [`Step`] and [`StepTimer`]: timing named steps inside tasks.

use std::fmt;
use std::time::{Duration, Instant};

use prometheus::Histogram;

/// Times one named step inside tasks into `step_duration_seconds`; made by
/// [`ExecutorExporter::step`](super::ExecutorExporter::step).
///
/// The series is resolved when the handle is made, so timing never looks it
/// up. Cloning is cheap (a reference count) and clones record into the same
/// series; it is `Send` and `Sync`, so clone it into the tasks that use it.
#[derive(Clone)]
pub struct Step {
    pub(super) histogram: Histogram,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("count", &self.histogram.get_sample_count())
            .finish_non_exhaustive()
    }
}

impl Step {
    /// Runs `f` and records how long it took, also when it panics.
    pub fn time<R>(&self, f: impl FnOnce() -> R) -> R {
        let _timer = self.start();
        f()
    }

    /// Starts timing; the time is recorded when the returned timer is dropped
    /// (at the end of the scope, or during unwinding), or by
    /// [`StepTimer::stop`].
    pub fn start(&self) -> StepTimer<'_> {
        StepTimer {
            histogram: &self.histogram,
            start: Instant::now(),
            armed: true,
        }
    }

    /// Records a duration measured some other way.
    pub fn observe(&self, duration: Duration) {
        self.histogram.observe(duration.as_secs_f64());
    }
}

/// A running measurement of a [`Step`]: records the time since
/// [`Step::start`] when dropped.
///
/// ```
/// use executor_exporter::ExecutorExporter;
///
/// let exporter = ExecutorExporter::builder()
///     .registry(prometheus::Registry::new())
///     .build()
///     .unwrap();
/// let parse = exporter.step("parse");
/// {
///     let _timer = parse.start();
///     // ... the step's work ...
/// } // recorded here
/// let timer = parse.start();
/// let took = timer.stop(); // recorded, and returned
/// parse.start().discard(); // not recorded
/// # let _ = took;
/// ```
#[must_use = "the step is timed until this is dropped; `let _ = step.start()` drops it at once"]
pub struct StepTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
    armed: bool,
}

impl fmt::Debug for StepTimer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepTimer")
            .field("elapsed", &self.start.elapsed())
            .finish_non_exhaustive()
    }
}

impl StepTimer<'_> {
    /// Records the time so far and returns it.
    pub fn stop(mut self) -> Duration {
        self.armed = false;
        let elapsed = self.start.elapsed();
        self.histogram.observe(elapsed.as_secs_f64());
        elapsed
    }

    /// Ends the measurement without recording it (for example when the step
    /// did not really happen).
    pub fn discard(mut self) {
        self.armed = false;
    }
}

impl Drop for StepTimer<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.histogram.observe(self.start.elapsed().as_secs_f64());
        }
    }
}

//! Exemplars of the wait and duration histograms, as data: the labels a hook
//! gives at submit ([`ExemplarLabels`]), the hook itself, and the latest
//! exemplar per bucket of each series (kept beside the series, only for
//! series an exporter with a hook records into). How they get there and out
//! again is `exemplar_io.rs`.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use crate::sync::lock;

/// The labels of an exemplar: what links one observation of the wait or
/// duration histogram to something outside the metrics, typically the trace
/// of the request that submitted the task (`trace_id="4bf92f3577b34da6"`).
///
/// Built by [`new`](Self::new) from name/value pairs, which it checks the
/// way OpenMetrics asks: at least one pair, every name a valid label name
/// (`[a-zA-Z_][a-zA-Z0-9_]*`) and no name twice, and at most
/// [`MAX_CHARS`](Self::MAX_CHARS) characters (UTF-8 code points) in all the
/// names and values together. A set that breaks a rule is not built: `new`
/// returns `None`, and the task it was for carries no exemplar. Cloning is
/// cheap (the pairs are shared).
///
/// ```
/// use executor_exporter::ExemplarLabels;
///
/// let labels = ExemplarLabels::new([("trace_id", "4bf92f3577b34da6")]).unwrap();
/// assert_eq!(labels.iter().collect::<Vec<_>>(), [("trace_id", "4bf92f3577b34da6")]);
///
/// // Too long for OpenMetrics, or not a label name: no exemplar.
/// assert!(ExemplarLabels::new([("trace_id", "x".repeat(200))]).is_none());
/// assert!(ExemplarLabels::new([("trace-id", "4bf9")]).is_none());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ExemplarLabels {
    /// One word: with the rest of a task's exemplar it fits beside a
    /// one-word closure in a task's inline room, so a spawned task with
    /// labels allocates nothing more for them.
    pairs: Arc<Vec<(Box<str>, Box<str>)>>,
}

impl ExemplarLabels {
    /// The most characters (UTF-8 code points) the names and values of one
    /// exemplar's labels may hold together, as OpenMetrics sets it.
    pub const MAX_CHARS: usize = 128;

    /// The labels `pairs` (name, value), in that order; `None` if they break
    /// a rule of the type's docs.
    pub fn new<I, K, V>(pairs: I) -> Option<ExemplarLabels>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut chars = 0usize;
        let mut out: Vec<(Box<str>, Box<str>)> = Vec::new();
        for (name, value) in pairs {
            let (name, value) = (name.into(), value.into());
            chars = chars
                .saturating_add(name.chars().count())
                .saturating_add(value.chars().count());
            if chars > Self::MAX_CHARS
                || !is_label_name(&name)
                || out.iter().any(|(n, _)| **n == *name)
            {
                return None;
            }
            out.push((name.into_boxed_str(), value.into_boxed_str()));
        }
        if out.is_empty() {
            return None;
        }
        Some(ExemplarLabels {
            pairs: Arc::new(out),
        })
    }

    /// The pairs (name, value), in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.pairs.iter().map(|(n, v)| (&**n, &**v))
    }
}

impl fmt::Debug for ExemplarLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The hook an exporter calls at each submit, on the submitting thread, for
/// the labels of that task's exemplars.
#[derive(Clone)]
pub(crate) struct ExemplarHook {
    labels: Arc<dyn Fn() -> Option<ExemplarLabels> + Send + Sync>,
    /// Set by the hook's first panic in this exporter: it is not called
    /// again there.
    panicked: Arc<AtomicBool>,
}

impl ExemplarHook {
    pub(crate) fn new<H>(hook: H) -> ExemplarHook
    where
        H: Fn() -> Option<ExemplarLabels> + Send + Sync + 'static,
    {
        ExemplarHook {
            labels: Arc::new(hook),
            panicked: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The same hook, for a new exporter: with its own record of a panic.
    pub(super) fn for_exporter(&self) -> ExemplarHook {
        ExemplarHook {
            labels: Arc::clone(&self.labels),
            panicked: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The labels for the task being submitted; `None` also when the hook
    /// panics: the submit goes on, the task without an exemplar. After its
    /// first panic the hook is not called again by this exporter (each call
    /// would print the panic, and may capture a backtrace, on the submit
    /// path).
    pub(super) fn call(&self) -> Option<ExemplarLabels> {
        if self.panicked.load(Ordering::Relaxed) {
            return None;
        }
        catch_unwind(AssertUnwindSafe(|| (self.labels)())).unwrap_or_else(|_| {
            if !self.panicked.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "executor-exporter: the exemplar hook panicked; this exporter does not call \
                     it again, and its tasks go without exemplars (return None where the hook has \
                     no labels instead)"
                );
            }
            None
        })
    }
}

impl fmt::Debug for ExemplarHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExemplarHook")
    }
}

/// One exemplar as kept: the observed value, its labels and when it was
/// observed.
#[derive(Clone, Debug)]
pub(crate) struct Exemplar {
    pub(crate) labels: ExemplarLabels,
    /// In seconds, as the histogram's bounds.
    pub(crate) value: f64,
    pub(crate) timestamp: SystemTime,
}

/// The latest exemplar of each bucket of one histogram (`+Inf` last).
pub(super) struct Slots(Box<[Mutex<Option<Exemplar>>]>);

impl Slots {
    fn new(buckets: usize) -> Slots {
        Slots((0..buckets).map(|_| Mutex::new(None)).collect())
    }

    /// Keeps `exemplar` in `bucket` unless another thread holds that bucket
    /// right now (a task never waits here: the other thread writes an
    /// exemplar as recent, or a scrape reads one).
    pub(super) fn record(&self, bucket: usize, exemplar: Exemplar) {
        let Some(slot) = self.0.get(bucket) else {
            return;
        };
        // The old exemplar is dropped after the lock is let go.
        let _old = match slot.try_lock() {
            Ok(mut guard) => guard.replace(exemplar),
            Err(_) => return,
        };
    }

    pub(super) fn read(&self) -> Vec<Option<Exemplar>> {
        self.0.iter().map(|slot| lock(slot).clone()).collect()
    }
}

/// Series that keep exemplars, in every registry: while there is none, an
/// encoder looks nothing up.
pub(super) static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The exemplars of one series: its wait histogram's, and its duration
/// histograms', by result.
pub(crate) struct SeriesExemplars {
    pub(super) wait: Slots,
    pub(super) completed: Slots,
    pub(super) failed: Slots,
}

impl SeriesExemplars {
    pub(super) fn new(wait_buckets: usize, duration_buckets: usize) -> SeriesExemplars {
        LIVE.fetch_add(1, Ordering::Relaxed);
        SeriesExemplars {
            wait: Slots::new(wait_buckets + 1),
            completed: Slots::new(duration_buckets + 1),
            failed: Slots::new(duration_buckets + 1),
        }
    }
}

impl Drop for SeriesExemplars {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The storage of a series' exemplars: made by the first exporter with a
/// hook that records there, so a series without one costs a pointer.
pub(crate) type ExemplarCell = OnceLock<SeriesExemplars>;

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked_as_openmetrics_asks() {
        assert!(ExemplarLabels::new([("trace_id", "abc")]).is_some());
        assert!(ExemplarLabels::new([("_a1", "")]).is_some());
        let none: [(&str, &str); 0] = [];
        assert!(ExemplarLabels::new(none).is_none(), "an empty set");
        assert!(ExemplarLabels::new([("1a", "x")]).is_none());
        assert!(ExemplarLabels::new([("", "x")]).is_none());
        assert!(ExemplarLabels::new([("a.b", "x")]).is_none());
        assert!(ExemplarLabels::new([("a", "x"), ("a", "y")]).is_none());
        // 128 characters in all is the most; characters, not bytes.
        let name = "trace_id";
        let fits = "é".repeat(ExemplarLabels::MAX_CHARS - name.len());
        assert!(ExemplarLabels::new([(name, fits.clone())]).is_some());
        assert!(ExemplarLabels::new([(name.to_owned(), fits + "x")]).is_none());
        assert!(ExemplarLabels::new([("a", "x".repeat(60)), ("b", "y".repeat(66))]).is_some());
        assert!(ExemplarLabels::new([("a", "x".repeat(60)), ("b", "y".repeat(67))]).is_none());
    }

    #[test]
    fn a_panicking_hook_gives_no_labels() {
        let hook = ExemplarHook::new(|| panic!("the hook's own bug"));
        assert!(hook.call().is_none());
    }

    #[test]
    fn a_held_bucket_is_skipped_not_waited_for() {
        let slots = Slots::new(1);
        let exemplar = |value| Exemplar {
            labels: ExemplarLabels::new([("a", "b")]).unwrap(),
            value,
            timestamp: SystemTime::now(),
        };
        let held = slots.0[0].lock().unwrap();
        slots.record(0, exemplar(1.0));
        drop(held);
        assert!(slots.read()[0].is_none());
        slots.record(0, exemplar(2.0));
        assert_eq!(slots.read()[0].as_ref().unwrap().value, 2.0);
    }
}

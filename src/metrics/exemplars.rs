//! Exemplars of the wait and duration histograms: the labels a hook gives at
//! submit ([`ExemplarLabels`]), the latest exemplar per bucket of each series
//! (kept beside the series, only for series an exporter with a hook records
//! into), and [`ExemplarSource`], through which an encoder finds them again
//! for the histograms it writes.
//!
//! `prometheus::proto` has no place for exemplars, so they do not travel
//! with the gathered families: an encoder that writes them asks the source
//! of the registry it encodes, per histogram sample, by family name and
//! labels, and per bucket by upper bound.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use prometheus::proto::LabelPair;
use prometheus::Registry;

use super::catalogue::CATALOGUE;
use super::collector::{Families, FAMILIES};
use super::series::Series;
use crate::clock::Clock;
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
pub(crate) struct ExemplarHook(Arc<dyn Fn() -> Option<ExemplarLabels> + Send + Sync>);

impl ExemplarHook {
    pub(crate) fn new<H>(hook: H) -> ExemplarHook
    where
        H: Fn() -> Option<ExemplarLabels> + Send + Sync + 'static,
    {
        ExemplarHook(Arc::new(hook))
    }

    /// The labels for the task being submitted; `None` also when the hook
    /// panics: the submit goes on, the task without an exemplar.
    fn call(&self) -> Option<ExemplarLabels> {
        catch_unwind(AssertUnwindSafe(|| (self.0)())).unwrap_or(None)
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
struct Slots(Box<[Mutex<Option<Exemplar>>]>);

impl Slots {
    fn new(buckets: usize) -> Slots {
        Slots((0..buckets).map(|_| Mutex::new(None)).collect())
    }

    /// Keeps `exemplar` in `bucket` unless another thread holds that bucket
    /// right now (a task never waits here: the other thread writes an
    /// exemplar as recent, or a scrape reads one).
    fn record(&self, bucket: usize, exemplar: Exemplar) {
        let Some(slot) = self.0.get(bucket) else {
            return;
        };
        // The old exemplar is dropped after the lock is let go.
        let _old = match slot.try_lock() {
            Ok(mut guard) => guard.replace(exemplar),
            Err(_) => return,
        };
    }

    fn read(&self) -> Vec<Option<Exemplar>> {
        self.0.iter().map(|slot| lock(slot).clone()).collect()
    }
}

/// Series that keep exemplars, in every registry: while there is none, an
/// encoder looks nothing up.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The exemplars of one series: its wait histogram's, and its duration
/// histograms', by result.
pub(crate) struct SeriesExemplars {
    wait: Slots,
    completed: Slots,
    failed: Slots,
}

impl SeriesExemplars {
    fn new(wait_buckets: usize, duration_buckets: usize) -> SeriesExemplars {
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

impl Series {
    /// An exporter with a hook records here: keep exemplars from now on.
    pub(crate) fn keep_exemplars(&self) {
        self.exemplars.get_or_init(|| {
            SeriesExemplars::new(self.wait_bounds.len(), self.duration_bounds.len())
        });
    }

    fn record_exemplar(
        &self,
        which: impl Fn(&SeriesExemplars) -> &Slots,
        bucket: usize,
        labels: &ExemplarLabels,
        nanos: u64,
    ) {
        if let Some(exemplars) = self.exemplars.get() {
            which(exemplars).record(
                bucket,
                Exemplar {
                    labels: labels.clone(),
                    value: nanos as f64 / 1e9,
                    timestamp: SystemTime::now(),
                },
            );
        }
    }
}

/// A task's exemplar labels, on their way with it from its submit to its
/// start (the wait's exemplar) and its end (the duration's).
pub(crate) struct Pending {
    series: Arc<Series>,
    labels: ExemplarLabels,
    submitted: Clock,
}

impl Pending {
    /// Asks `hook` for the labels of a task being submitted now, which
    /// records into `series`; `None` when it gives none.
    pub(crate) fn capture(hook: &ExemplarHook, series: &Arc<Series>) -> Option<Pending> {
        let labels = hook.call()?;
        Some(Pending {
            series: series.clone(),
            labels,
            submitted: Clock::now(),
        })
    }

    /// When the labels were taken: the task's submit.
    pub(crate) fn submitted(&self) -> Clock {
        self.submitted
    }

    /// The task started after waiting `nanos`.
    pub(crate) fn waited(&self, nanos: u64) {
        let series = &*self.series;
        let bucket = series.wait_nanos.bucket(nanos);
        series.record_exemplar(|e| &e.wait, bucket, &self.labels, nanos);
    }

    /// The task ended after running `nanos`, failed or not.
    pub(crate) fn ran(&self, nanos: u64, failed: bool) {
        let series = &*self.series;
        let bucket = series.duration_nanos.bucket(nanos);
        if failed {
            series.record_exemplar(|e| &e.failed, bucket, &self.labels, nanos);
        } else {
            series.record_exemplar(|e| &e.completed, bucket, &self.labels, nanos);
        }
    }
}

/// The exemplars of the histograms in one registry, found for an encoder:
/// take one per encoding with [`of`](Self::of), then ask
/// [`histogram`](Self::histogram) for each histogram sample written.
pub(crate) struct ExemplarSource {
    families: Vec<Arc<Families>>,
}

/// The exemplars of one histogram sample, by bucket.
pub(crate) struct HistogramExemplars {
    /// The histogram's bounds, without `+Inf`.
    bounds: Vec<f64>,
    /// One per bound, then the `+Inf` bucket's.
    slots: Vec<Option<Exemplar>>,
}

impl HistogramExemplars {
    /// The latest exemplar of the bucket whose upper bound is `upper_bound`
    /// (`f64::INFINITY` for `+Inf`): an observation above the bucket below
    /// and at most this bound (buckets are not cumulative here).
    pub(crate) fn bucket(&self, upper_bound: f64) -> Option<&Exemplar> {
        let index = if upper_bound == f64::INFINITY {
            self.bounds.len()
        } else {
            self.bounds.iter().position(|&b| b == upper_bound)?
        };
        self.slots.get(index)?.as_ref()
    }
}

impl ExemplarSource {
    /// The source of `registry`'s exemplars; `None` when no series keeps
    /// any (then an encoder has nothing to look up).
    pub(crate) fn of(registry: &Registry) -> Option<ExemplarSource> {
        if LIVE.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let families = FAMILIES.find_all(registry, |families| {
            lock(&families.series)
                .values()
                .any(|s| s.exemplars.get().is_some())
        });
        (!families.is_empty()).then_some(ExemplarSource { families })
    }

    /// The exemplars of the histogram sample of family `family` (its full
    /// name) with `labels`: a wait histogram or a duration histogram of the
    /// crate's; `None` for any other sample, or one without exemplars.
    pub(crate) fn histogram(
        &self,
        family: &str,
        labels: &[LabelPair],
    ) -> Option<HistogramExemplars> {
        let label = |name: &str| {
            labels
                .iter()
                .find(|pair| pair.name() == name)
                .map(|pair| pair.value())
        };
        for families in &self.families {
            let Some(which) = families.histogram_kind(family) else {
                continue;
            };
            let key = (
                label("executor")?.to_owned(),
                label("executor_type")?.to_owned(),
            );
            let series = lock(&families.series).get(&key)?.clone();
            let exemplars = series.exemplars.get()?;
            let (slots, bounds) = match (which, label("result")) {
                (HistogramKind::Wait, _) => (&exemplars.wait, &series.wait_bounds),
                (HistogramKind::Duration, Some("completed")) => {
                    (&exemplars.completed, &series.duration_bounds)
                }
                (HistogramKind::Duration, Some("failed")) => {
                    (&exemplars.failed, &series.duration_bounds)
                }
                (HistogramKind::Duration, _) => return None,
            };
            return Some(HistogramExemplars {
                bounds: bounds.clone(),
                slots: slots.read(),
            });
        }
        None
    }
}

/// The histograms that carry exemplars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HistogramKind {
    Wait,
    Duration,
}

impl Families {
    /// Which of this namespace's histograms with exemplars `family` (a full
    /// name) is, if one.
    fn histogram_kind(&self, family: &str) -> Option<HistogramKind> {
        let (def, _) = CATALOGUE
            .iter()
            .zip(&self.names)
            .find(|(_, name)| *name == family)?;
        match def.name {
            "task_wait_seconds" => Some(HistogramKind::Wait),
            "tasks_duration_seconds" => Some(HistogramKind::Duration),
            _ => None,
        }
    }
}

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

    /// Three words: with a one-word closure, a spawned task's body and its
    /// exemplar fill a task's inline room (four words) and no more.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_pending_exemplar_is_three_words() {
        assert_eq!(std::mem::size_of::<Pending>(), 24);
    }

    #[test]
    fn a_panicking_hook_gives_no_labels() {
        let hook = ExemplarHook::new(|| panic!("the hook's own bug"));
        assert!(hook.call().is_none());
    }

    #[test]
    fn a_bucket_keeps_its_latest_exemplar() {
        let series = Arc::new(Series::new(
            "s",
            "t",
            vec![0.001, 0.01],
            vec![0.1, 1.0],
            None,
            true,
        ));
        series.keep_exemplars();
        let hook = |id: &'static str| ExemplarHook::new(move || ExemplarLabels::new([("id", id)]));
        let first = Pending::capture(&hook("first"), &series).unwrap();
        let second = Pending::capture(&hook("second"), &series).unwrap();
        first.waited(5_000_000);
        second.waited(6_000_000);
        first.waited(500);
        second.ran(2_000_000_000, false);
        first.ran(50_000_000, true);
        let exemplars = series.exemplars.get().unwrap();
        let wait = exemplars.wait.read();
        let label = |e: &Option<Exemplar>| {
            e.as_ref()
                .map(|e| e.labels.iter().next().unwrap().1.to_owned())
        };
        assert_eq!(
            wait.iter().map(label).collect::<Vec<_>>(),
            [Some("first".to_owned()), Some("second".to_owned()), None]
        );
        assert_eq!(wait[1].as_ref().unwrap().value, 0.006);
        let completed = exemplars.completed.read();
        assert!(completed[0].is_none() && completed[1].is_none());
        assert_eq!(completed[2].as_ref().unwrap().value, 2.0);
        let failed = exemplars.failed.read();
        assert_eq!(label(&failed[0]).as_deref(), Some("first"));
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

//! Exemplars on their way: a task's labels taken at submit ([`Pending`]) and
//! recorded at its start and end into its series, and [`ExemplarSource`],
//! through which an encoder finds them again for the histograms it writes.
//!
//! `prometheus::proto` has no place for exemplars, so they do not travel
//! with the gathered families: an encoder that writes them asks the source
//! of the registry it encodes, per histogram sample, by family name and
//! labels, and per bucket by upper bound.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use prometheus::proto::LabelPair;
use prometheus::Registry;

use super::catalogue::CATALOGUE;
use super::collector::{Families, FAMILIES};
use super::exemplars::{Exemplar, ExemplarHook, ExemplarLabels, SeriesExemplars, Slots, LIVE};
use super::series::Series;
use crate::clock::Clock;
use crate::sync::lock;

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
        // Every namespace of the registry, not only those with exemplars: a family name is
        // matched to the namespace it belongs to before its exemplars are looked up.
        let families = FAMILIES.find_all(registry, |_| true);
        let any = families.iter().any(|families| {
            lock(&families.series)
                .values()
                .any(|s| s.exemplars.get().is_some())
        });
        any.then_some(ExemplarSource { families })
    }

    /// The exemplars of the histogram sample of family `family` (its full
    /// name as gathered, with the registry's prefix if it has one) with
    /// `labels`: a wait histogram or a duration histogram of the
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
        let key = (
            label("executor")?.to_owned(),
            label("executor_type")?.to_owned(),
        );
        // A registry may prefix every name (`Registry::new_custom`), so a
        // namespace's family is matched by its name at the end of `family`;
        // where two namespaces match (`executor_…` and `jobs_executor_…`
        // both end `myapp_jobs_executor_…`), the longer name is the closer
        // match, and a namespace without this series gives way to the next.
        // The first that holds the series answers, with or without
        // exemplars. (A prefix `myapp_jobs` over namespace `executor` and a
        // prefix `myapp` over `jobs_executor` give the same names: both in
        // one registry with the same executor id, the longer namespace wins.)
        let mut matches: Vec<_> = self
            .families
            .iter()
            .filter_map(|families| Some((families.histogram_kind(family)?, families)))
            .collect();
        matches.sort_by_key(|((_, name_len), _)| std::cmp::Reverse(*name_len));
        for ((which, _), families) in matches {
            let Some(series) = lock(&families.series).get(&key).cloned() else {
                continue;
            };
            // This namespace holds the series: its exemplars or none, never another's.
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
    /// name, perhaps with a registry's prefix before it) is, if one, and the
    /// length of the name it matched.
    fn histogram_kind(&self, family: &str) -> Option<(HistogramKind, usize)> {
        let (def, name) = CATALOGUE
            .iter()
            .zip(&self.names)
            .filter(|(_, name)| {
                family
                    .strip_suffix(name.as_str())
                    .is_some_and(|prefix| prefix.is_empty() || prefix.ends_with('_'))
            })
            .max_by_key(|(_, name)| name.len())?;
        let kind = match def.name {
            "task_wait_seconds" => HistogramKind::Wait,
            "tasks_duration_seconds" => HistogramKind::Duration,
            _ => return None,
        };
        Some((kind, name.len()))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Three words: with a one-word closure, a spawned task's body and its
    /// exemplar fill a task's inline room (four words) and no more.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_pending_exemplar_is_three_words() {
        assert_eq!(std::mem::size_of::<Pending>(), 24);
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
}

//! The collector: all series of one namespace in one registry, exposed as the catalogue's families.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::Registry;

use super::catalogue::{Kind, CATALOGUE};
use super::native::NativeHistogram;
use super::registry_map::RegistryMap;
use super::series::Series;
use crate::error::{BuildError, BuildErrorKind};
use crate::sync::lock;

/// All series of one namespace in one registry, and the collector exposing them.
pub(crate) struct Families {
    pub(super) namespace: String,
    descs: Vec<Desc>,
    /// `{namespace}_{name}` of each family in [`CATALOGUE`].
    pub(super) names: Vec<String>,
    pub(super) series: Mutex<BTreeMap<(String, String), Arc<Series>>>,
}

impl Families {
    /// The families of `namespace`; `marker` tells their registry they are there.
    fn new(namespace: &str, marker: Desc) -> Result<Families, BuildError> {
        let names: Vec<String> = CATALOGUE
            .iter()
            .map(|def| format!("{namespace}_{}", def.name))
            .collect();
        let mut descs = Vec::with_capacity(CATALOGUE.len() + 1);
        for (def, name) in CATALOGUE.iter().zip(&names) {
            let mut labels = vec!["executor".to_owned(), "executor_type".to_owned()];
            labels.extend(def.extra_label.map(str::to_owned));
            let desc = Desc::new(
                name.clone(),
                def.help.to_owned(),
                labels,
                Default::default(),
            )
            .map_err(|e| BuildError::new(BuildErrorKind::Registry(e)))?;
            descs.push(desc);
        }
        descs.push(marker);
        Ok(Families {
            namespace: namespace.to_owned(),
            descs,
            names,
            series: Mutex::new(BTreeMap::new()),
        })
    }
}

impl Collector for Families {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let all = lock(&self.series);
        // `try_with`: a scrape may run as the thread exits, after `CAPTURE` is gone (nothing is
        // captured then).
        let capturing = CAPTURE.try_with(|c| c.borrow().is_some()).unwrap_or(false);
        let mut samples: Vec<Vec<proto::Metric>> = CATALOGUE
            .iter()
            .map(|family| Vec::with_capacity(all.len() * family.per_series))
            .collect();
        for series in all.values() {
            let mut reading = series.read();
            for (family, out) in CATALOGUE.iter().zip(&mut samples) {
                (family.samples)(&mut reading, out);
            }
            if capturing && !reading.natives.is_empty() {
                let ns = &self.namespace;
                let _ = CAPTURE.try_with(|c| {
                    if let Some(extras) = c.borrow_mut().as_mut() {
                        for (family, labels, native) in reading.natives.drain(..) {
                            extras.insert(format!("{ns}_{family}"), labels, native);
                        }
                    }
                });
            }
        }
        drop(all);
        CATALOGUE
            .iter()
            .zip(&self.names)
            .zip(samples)
            // `Registry::gather` drops families without samples anyway.
            .filter(|(_, metrics)| !metrics.is_empty())
            .map(|((def, name), metrics)| {
                let mut family = MetricFamily::default();
                family.set_name(name.clone());
                family.set_help(def.help.to_owned());
                family.set_field_type(match def.kind {
                    Kind::Counter => MetricType::COUNTER,
                    Kind::Gauge => MetricType::GAUGE,
                    Kind::Histogram => MetricType::HISTOGRAM,
                });
                family.set_metric(metrics);
                family
            })
            .collect()
    }
}

/// The families of every namespace in every registry alive.
pub(super) static FAMILIES: RegistryMap<Families> = RegistryMap::new(
    "executor_exporter_collector_marker",
    "collector",
    "give this exporter (or pool) another namespace with `.namespace(..)` on its builder, \
     or rename or unregister the other metric",
);

/// Finds (or creates and registers) the families of `namespace` in `registry`.
pub(super) fn families_for(
    registry: &Registry,
    namespace: &str,
) -> Result<Arc<Families>, BuildError> {
    FAMILIES.find_or_register(
        registry,
        |families| families.namespace == namespace,
        |marker| Families::new(namespace, marker),
    )
}

/// What this crate's collectors know of their samples beyond what a
/// `prometheus` family can hold, gathered by [`with_extras`]: the native
/// histograms, by family name and label pairs.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    /// By [`sample_hash`]: a lookup hashes the sample's name and labels
    /// where they are, without building a key.
    native: HashMap<u64, Vec<Captured>>,
}

#[derive(Debug)]
struct Captured {
    family: String,
    labels: Vec<proto::LabelPair>,
    native: NativeHistogram,
}

// Read only by the encoders that carry native histograms.
#[cfg_attr(
    not(any(feature = "protobuf", feature = "prometheus-client")),
    allow(dead_code)
)]
impl Extras {
    fn insert(&mut self, family: String, labels: &[proto::LabelPair], native: NativeHistogram) {
        self.native
            .entry(sample_hash(&family, labels))
            .or_default()
            .push(Captured {
                family,
                labels: labels.to_vec(),
                native,
            });
    }

    /// The native histogram of the sample of family `family` with `labels`.
    pub(crate) fn native(
        &self,
        family: &str,
        labels: &[proto::LabelPair],
    ) -> Option<&NativeHistogram> {
        if self.native.is_empty() {
            return None;
        }
        let same = |a: &proto::LabelPair, b: &proto::LabelPair| {
            a.name() == b.name() && a.value() == b.value()
        };
        self.native
            .get(&sample_hash(family, labels))?
            .iter()
            .find(|c| {
                c.family == family
                    && c.labels.len() == labels.len()
                    && c.labels.iter().zip(labels).all(|(a, b)| same(a, b))
            })
            .map(|c| &c.native)
    }
}

/// FNV-1a over a sample's family name and label pairs, each string ended
/// by a byte no UTF-8 string holds.
fn sample_hash(family: &str, labels: &[proto::LabelPair]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |text: &str| {
        for &b in text.as_bytes().iter().chain(&[0xff]) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(family);
    for label in labels {
        eat(label.name());
        eat(label.value());
    }
    hash
}

thread_local! {
    /// Set while [`with_extras`] runs on this thread.
    static CAPTURE: RefCell<Option<Extras>> = const { RefCell::new(None) };
}

/// Runs `f` (a `Registry::gather`, or a collect of this crate's
/// collectors), and returns with its result the [`Extras`] of the samples
/// the crate's collectors produced in it. `Registry::gather` runs every
/// collector on the calling thread, so a thread-local carries them: the
/// samples and their extras come from the same reading of the counts.
#[cfg_attr(
    not(any(feature = "protobuf", feature = "prometheus-client")),
    allow(dead_code)
)]
pub(crate) fn with_extras<R>(f: impl FnOnce() -> R) -> (R, Extras) {
    // As the thread exits, `CAPTURE` may be gone: `f` then runs and nothing is captured.
    let outer = CAPTURE
        .try_with(|c| c.borrow_mut().replace(Extras::default()))
        .ok();
    let result = f();
    let extras = match outer {
        Some(outer) => CAPTURE
            .try_with(|c| std::mem::replace(&mut *c.borrow_mut(), outer))
            .ok()
            .flatten(),
        None => None,
    };
    (result, extras.unwrap_or_default())
}

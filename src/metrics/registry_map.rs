//! [`RegistryMap`]: the crate's collectors, one per registry (and key), found
//! again by the registry they are registered in, and forgotten with it.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::Registry;

use crate::error::{BuildError, BuildErrorKind};

/// Collectors of type `T` this process has registered, in any registry.
///
/// A [`Registry`] cannot be compared with another, so each collector carries
/// a marker desc of its own (`{marker_name}{{{marker_label}="<n>"}}`, never
/// exposed: it has no samples) and a registry is asked whether it holds that
/// marker. Entries are weak: a collector lives as long as its registry (or
/// whoever else holds the `Arc`) does, and its entry is dropped on the next
/// lookup after that, so the table follows the registries alive, not every
/// registry ever used.
pub(crate) struct RegistryMap<T> {
    marker_name: &'static str,
    marker_label: &'static str,
    /// How to get out of a name clash, for the error of [`Self::find_or_register`].
    fix: &'static str,
    inner: Mutex<Inner<T>>,
}

struct Inner<T> {
    /// Markers are never reused, even after their collector is gone.
    next_marker: u64,
    entries: Vec<Entry<T>>,
}

struct Entry<T> {
    marker: u64,
    value: Weak<T>,
}

impl<T> RegistryMap<T>
where
    T: Collector + 'static,
{
    /// An empty table whose collectors are marked with `marker_name` and
    /// `marker_label`; `fix` ends the error a name clash gets.
    pub(crate) const fn new(
        marker_name: &'static str,
        marker_label: &'static str,
        fix: &'static str,
    ) -> RegistryMap<T> {
        RegistryMap {
            marker_name,
            marker_label,
            fix,
            inner: Mutex::new(Inner {
                next_marker: 0,
                entries: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // Every critical section leaves the table whole (an insert, a retain
        // or reads), so a panic in one poisons nothing.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn marker_desc(&self, marker: u64) -> Desc {
        let mut labels = std::collections::HashMap::new();
        labels.insert(self.marker_label.to_owned(), marker.to_string());
        Desc::new(
            self.marker_name.to_owned(),
            "Identifies one executor-exporter collector; never exposed.".to_owned(),
            vec![],
            labels,
        )
        .expect("the marker's name and labels are valid")
    }

    /// The collector registered in `registry` for which `fits` holds, or else
    /// the one `make` builds, registered there now.
    ///
    /// `make` gets the marker desc, which the collector's `desc()` must list.
    /// The table stays locked throughout, so two builds on one registry never
    /// both register.
    pub(crate) fn find_or_register(
        &self,
        registry: &Registry,
        fits: impl Fn(&T) -> bool,
        make: impl FnOnce(Desc) -> Result<T, BuildError>,
    ) -> Result<Arc<T>, BuildError> {
        let mut inner = self.lock();
        inner.entries.retain(|e| e.value.strong_count() > 0);
        for entry in &inner.entries {
            let Some(value) = entry.value.upgrade() else {
                continue;
            };
            if fits(&value) && holds(registry, self.marker_desc(entry.marker)) {
                return Ok(value);
            }
        }
        let marker = inner.next_marker;
        inner.next_marker += 1;
        let marker_desc = self.marker_desc(marker);
        let value = Arc::new(make(marker_desc.clone())?);
        debug_assert!(value.desc().iter().any(|d| d.id == marker_desc.id));
        register(registry, Shared(value.clone()), self.fix)?;
        inner.entries.push(Entry {
            marker,
            value: Arc::downgrade(&value),
        });
        Ok(value)
    }

    /// The collectors registered in `registry` for which `wanted` holds
    /// (`wanted` first: only those are looked for in the registry). The
    /// table stays locked throughout, as in [`Self::find_or_register`], so
    /// no two look-ups probe one registry with one marker at once.
    pub(crate) fn find_all(&self, registry: &Registry, wanted: impl Fn(&T) -> bool) -> Vec<Arc<T>> {
        let inner = self.lock();
        inner
            .entries
            .iter()
            .filter_map(|e| Some((e.marker, e.value.upgrade()?)))
            .filter(|(marker, value)| wanted(value) && holds(registry, self.marker_desc(*marker)))
            .map(|(_, value)| value)
            .collect()
    }

    /// Entries kept, dead ones not yet pruned included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// The collectors alive, in any registry.
    #[cfg(test)]
    pub(crate) fn live(&self) -> Vec<Arc<T>> {
        let inner = self.lock();
        inner
            .entries
            .iter()
            .filter_map(|e| e.value.upgrade())
            .collect()
    }
}

/// The collector as registered: the registry owns one reference, the table
/// a weak one.
struct Shared<T>(Arc<T>);

impl<T: Collector> Collector for Shared<T> {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

/// A collector of one desc and no samples: registering it tells whether that
/// desc can be registered, and a scrape racing with it sees no change.
struct Probe(Desc);

impl Collector for Probe {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        Vec::new()
    }
}

/// Whether `registry` holds a collector with marker `desc`: registering the
/// marker alone fails with `AlreadyReg` exactly then. A probe that got in is
/// unregistered at once.
fn holds(registry: &Registry, desc: Desc) -> bool {
    match registry.register(Box::new(Probe(desc.clone()))) {
        Err(prometheus::Error::AlreadyReg) => true,
        Ok(()) => {
            let _ = registry.unregister(Box::new(Probe(desc)));
            false
        }
        Err(_) => false,
    }
}

/// Registers `collector`. When the registry refuses it, the error names the
/// first of its families that cannot be registered (prometheus's own error
/// often does not), and ends with `fix`.
fn register<C: Collector + 'static>(
    registry: &Registry,
    collector: C,
    fix: &'static str,
) -> Result<(), BuildError> {
    let descs: Vec<Desc> = collector.desc().into_iter().cloned().collect();
    let error = match registry.register(Box::new(collector)) {
        Ok(()) => return Ok(()),
        Err(error) => error,
    };
    // Probing in order stops at the clash: the descs before it were already
    // accepted by the failed registration, so the registry learns nothing new
    // about names from the probes.
    for desc in descs {
        match registry.register(Box::new(Probe(desc.clone()))) {
            Ok(()) => {
                let _ = registry.unregister(Box::new(Probe(desc)));
            }
            Err(_) => {
                return Err(BuildError::new(BuildErrorKind::FamilyTaken {
                    family: desc.fq_name,
                    fix,
                    error,
                }))
            }
        }
    }
    Err(BuildError::new(BuildErrorKind::Registry(error)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::IntCounter;

    /// A counter with a marker, like the crate's collectors.
    struct Marked {
        counter: IntCounter,
        descs: Vec<Desc>,
    }

    impl Collector for Marked {
        fn desc(&self) -> Vec<&Desc> {
            self.descs.iter().collect()
        }

        fn collect(&self) -> Vec<MetricFamily> {
            self.counter.collect()
        }
    }

    fn marked(marker: Desc) -> Result<Marked, BuildError> {
        let counter = IntCounter::new("registry_map_test_total", "Test.").unwrap();
        let mut descs: Vec<Desc> = counter.desc().into_iter().cloned().collect();
        descs.push(marker);
        Ok(Marked { counter, descs })
    }

    fn map() -> RegistryMap<Marked> {
        RegistryMap::new("registry_map_test_marker", "m", "rename it")
    }

    #[test]
    fn each_registry_gets_its_own_collector_and_finds_it_again() {
        let map = map();
        let (a, b) = (Registry::new(), Registry::new());
        let in_a = map.find_or_register(&a, |_| true, marked).unwrap();
        let in_b = map.find_or_register(&b, |_| true, marked).unwrap();
        assert!(!Arc::ptr_eq(&in_a, &in_b));
        let again = map.find_or_register(&a, |_| true, marked).unwrap();
        assert!(Arc::ptr_eq(&in_a, &again));
        let families = a.gather();
        assert_eq!(families.len(), 1, "the marker is never exposed");
        assert_eq!(families[0].name(), "registry_map_test_total");
    }

    #[test]
    fn entries_of_dropped_registries_are_pruned() {
        let map = map();
        let kept = Registry::new();
        let _kept = map.find_or_register(&kept, |_| true, marked).unwrap();
        for _ in 0..1000 {
            let registry = Registry::new();
            map.find_or_register(&registry, |_| true, marked).unwrap();
        }
        assert!(map.len() <= 2, "{} entries", map.len());
        assert_eq!(map.live().len(), 1);
    }
}

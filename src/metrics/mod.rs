//! The metrics, as data: the catalogue of families, the series and their
//! per-thread shards, the collector that exposes them, buckets and steps, and
//! [`ExecutorExporter`], the handle pools record through.
//!
//! Every family is declared once, in the catalogue (`catalogue.rs`). Series for one
//! (`exporter_id`, `executor_type`) pair are created once, when the first
//! exporter for that pair is built, and shared by every exporter with the same
//! pair in the same registry: that is how pools with one id are combined.
//! All series of one namespace in one registry are exposed by a single
//! collector, so label values are kept apart exactly (never joined into one
//! hash key) and the hot path touches only atomics.

//!
//! Nothing here knows about tasks or pools: `task/`-side code calls the
//! recording methods of [`Series`], and `export/` reads the registry.

mod buckets;
mod catalogue;
#[cfg(feature = "prometheus-client")]
mod client_collector;
mod collector;
mod exemplar_io;
mod exemplars;
mod exporter;
mod native;
mod registry_map;
mod series;
mod shards;
mod snapshot;
mod steps;
#[cfg(test)]
mod tests;

pub use buckets::DEFAULT_BUCKETS;
#[cfg(feature = "prometheus-client")]
pub use client_collector::PrometheusClientCollector;
#[cfg(feature = "protobuf")]
pub(crate) use collector::{with_extras, Extras};
pub(crate) use exemplar_io::{ExemplarSource, HistogramExemplars, Pending};
pub use exemplars::ExemplarLabels;
pub(crate) use exemplars::{Exemplar, ExemplarHook};
pub(crate) use exporter::exporter_options;
pub use exporter::{ExecutorExporter, ExecutorExporterBuilder};
#[cfg(feature = "protobuf")]
pub(crate) use native::NativeHistogram;
#[cfg(feature = "push")]
pub(crate) use registry_map::RegistryMap;
pub(crate) use series::{AgeSource, Capacity, Series};
pub use snapshot::{InvariantError, Snapshot};
pub use steps::{Step, StepTimer};

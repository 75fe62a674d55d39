//! [`PrometheusClientCollector`]: the catalogue's families in a
//! `prometheus-client` registry, read from the same series, by the same
//! samplers, as the `prometheus` collector.

use std::fmt;
use std::sync::Arc;

use prometheus::core::Collector as _;
use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel as _, EncodeLabelSet, LabelSetEncoder, MetricEncoder,
    NativeHistogram as ClientNative, NativeHistogramBuckets, NoLabelSet,
};
use prometheus_client::metrics::MetricType as ClientType;
use prometheus_client::registry::Registry as ClientRegistry;

use super::collector::{with_extras, Extras, Families};
use super::native::NativeHistogram;
// `value()` of counters and gauges in the plain data model of `prometheus`;
// inherent (and this import unused) in its protobuf model.
use super::exporter::ExecutorExporter;
#[allow(unused_imports)]
use crate::export::text::Value as _;

/// The exporter's metric families as a [`prometheus_client`] collector:
/// the same names, labels and values as in the exporter's `prometheus`
/// registry, encoded by `prometheus-client` (OpenMetrics text).
///
/// It exposes every series of the exporter's namespace in the exporter's
/// `prometheus` registry: this exporter's, and those of every other exporter
/// and pool built with that registry and namespace, combined as the
/// `prometheus` exposition combines them (pools sharing an id are one
/// series). So register one collector per `prometheus` registry and
/// namespace: a second one for the same pair would repeat every family.
/// Give the pools a registry of their own (`prometheus::Registry::new()`),
/// and nothing else of the `prometheus` crate is needed.
///
/// Counter families are named as OpenMetrics names them: the family
/// `executor_submitted_tasks` has the sample `executor_submitted_tasks_total`,
/// the series the `prometheus` path exposes. `prometheus-client` writes no
/// `_created` samples for counters or classic histograms, so there are none.
///
/// The native histograms of pools built with
/// [`native_histograms`](crate::ExecutorExporterBuilder::native_histograms)
/// are handed to `prometheus-client` beside the classic buckets: its
/// protobuf encoder (its feature `prometheus_protobuf`) writes them, and its
/// text encoder, like any text format, writes the classic buckets alone (with
/// `classic_buckets(false)`, each histogram's count, sum and `+Inf` bucket).
///
/// ```
/// use executor_exporter::{PrometheusClientCollector, ThreadPoolExecutor};
/// use prometheus_client::encoding::text::encode;
/// use prometheus_client::registry::Registry;
///
/// let pool = ThreadPoolExecutor::builder()
///     .exporter_id("images")
///     .registry(prometheus::Registry::new())
///     .build()?;
/// pool.submit(|| 2 + 2)?.join()?;
///
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(PrometheusClientCollector::new(pool.exporter())));
/// let mut text = String::new();
/// encode(&mut text, &registry)?;
/// assert!(text.contains("# TYPE executor_submitted_tasks counter\n"));
/// assert!(text.contains(
///     r#"executor_submitted_tasks_total{executor="images",executor_type="thread_pool"} 1"#
/// ));
/// assert!(text.ends_with("# EOF\n"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct PrometheusClientCollector {
    families: Arc<Families>,
}

impl fmt::Debug for PrometheusClientCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusClientCollector")
            .field("namespace", &self.families.namespace)
            .finish_non_exhaustive()
    }
}

impl PrometheusClientCollector {
    /// The collector of `exporter`'s namespace in its `prometheus` registry
    /// (see the type's docs for which series that covers).
    pub fn new(exporter: &ExecutorExporter) -> PrometheusClientCollector {
        PrometheusClientCollector {
            families: exporter.families().clone(),
        }
    }
}

impl ExecutorExporter {
    /// Registers a [`PrometheusClientCollector`] of this exporter in
    /// `registry`: every series of this exporter's namespace in its
    /// `prometheus` registry, this exporter's and its pool's included. Call
    /// it once per `prometheus` registry and namespace, not once per pool.
    ///
    /// ```
    /// use executor_exporter::ThreadPoolExecutor;
    /// use prometheus_client::registry::Registry;
    ///
    /// let pools = prometheus::Registry::new();
    /// let images = ThreadPoolExecutor::builder()
    ///     .exporter_id("images")
    ///     .registry(pools.clone())
    ///     .build()?;
    /// let _mail = ThreadPoolExecutor::builder()
    ///     .exporter_id("mail")
    ///     .registry(pools)
    ///     .build()?;
    ///
    /// let mut registry = Registry::default();
    /// images.exporter().register_into(&mut registry); // both pools
    /// let mut text = String::new();
    /// prometheus_client::encoding::text::encode(&mut text, &registry)?;
    /// assert!(text.contains(r#"executor_max_workers{executor="mail",executor_type="thread_pool"}"#));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_into(&self, registry: &mut ClientRegistry) {
        registry.register_collector(Box::new(PrometheusClientCollector::new(self)));
    }
}

impl Collector for PrometheusClientCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let (families, extras) = with_extras(|| self.families.collect());
        for family in families {
            encode_family(&family, &extras, &mut encoder)?;
        }
        Ok(())
    }
}

/// One family of the catalogue, as `prometheus-client` encodes it. The
/// catalogue has counters (named `..._total`), gauges and histograms only.
fn encode_family(
    family: &MetricFamily,
    extras: &Extras,
    encoder: &mut DescriptorEncoder<'_>,
) -> fmt::Result {
    let name = family.name();
    let (name, kind) = match family.get_field_type() {
        MetricType::COUNTER => (
            name.strip_suffix("_total").unwrap_or(name),
            ClientType::Counter,
        ),
        MetricType::GAUGE => (name, ClientType::Gauge),
        MetricType::HISTOGRAM => (name, ClientType::Histogram),
        MetricType::SUMMARY | MetricType::UNTYPED => return Ok(()),
    };
    let mut metrics = encoder.encode_descriptor(name, family.help(), None, kind)?;
    for m in family.get_metric() {
        let labels = Labels(m.get_label());
        let mut metric = metrics.encode_family(&labels)?;
        match kind {
            ClientType::Counter => counter(&mut metric, m)?,
            ClientType::Gauge => gauge(&mut metric, m)?,
            _ => histogram(&mut metric, m, extras.native(family.name(), m.get_label()))?,
        }
    }
    Ok(())
}

/// The counts are integers: written as such (`3`, not `3.0`).
fn as_count(value: f64) -> Option<u64> {
    let n = value as u64;
    (n as f64 == value && n <= 1 << 53).then_some(n)
}

fn counter(encoder: &mut MetricEncoder<'_>, m: &Metric) -> fmt::Result {
    let value = m.get_counter().value();
    match as_count(value) {
        Some(n) => encoder.encode_counter::<NoLabelSet, _, u64>(&n, None),
        None => encoder.encode_counter::<NoLabelSet, _, f64>(&value, None),
    }
}

fn gauge(encoder: &mut MetricEncoder<'_>, m: &Metric) -> fmt::Result {
    let value = m.get_gauge().value();
    let n = value as i64;
    if n as f64 == value && n.unsigned_abs() <= 1 << 53 {
        encoder.encode_gauge(&n)
    } else {
        encoder.encode_gauge(&value)
    }
}

/// `prometheus-client` takes each bucket's own count, `+Inf` included;
/// `prometheus` keeps them cumulative, `+Inf` left out. With a native
/// histogram, its count is the count (see `export::protobuf`).
fn histogram(
    encoder: &mut MetricEncoder<'_>,
    m: &Metric,
    native: Option<&NativeHistogram>,
) -> fmt::Result {
    let h = m.get_histogram();
    let mut buckets = Vec::with_capacity(h.get_bucket().len() + 1);
    let mut below = 0;
    for b in h.get_bucket() {
        let cumulative = b.cumulative_count();
        buckets.push((b.upper_bound(), cumulative.saturating_sub(below)));
        below = cumulative;
    }
    let count = native.map_or(h.get_sample_count(), |n| n.count);
    buckets.push((f64::INFINITY, count.saturating_sub(below)));
    let sum = h.get_sample_sum();
    let Some(native) = native else {
        return encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None);
    };
    let native = ClientNative {
        schema: native.schema.into(),
        zero_threshold: native.zero_threshold,
        zero_count: native.zero_count,
        negative: NativeHistogramBuckets {
            spans: &[],
            deltas: &[],
        },
        positive: NativeHistogramBuckets {
            spans: &native.spans,
            deltas: &native.deltas,
        },
        created: None,
    };
    encoder.encode_histogram_with_native::<NoLabelSet>(sum, count, &buckets, None, native)
}

/// A series' label pairs, encoded as they are.
struct Labels<'a>(&'a [LabelPair]);

impl EncodeLabelSet for Labels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        for pair in self.0 {
            (pair.name(), pair.value()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

//! The OpenMetrics text format (1.0.0), written from the same gathered
//! families as the text format, so that a scraper asking for OpenMetrics gets
//! the same series: the same sample names, labels and values.
//!
//! Where the two formats differ:
//! - a counter family is named without its `_total`, which stays on its
//!   sample (`# TYPE x counter` / `x_total 1`). A counter whose name does not
//!   end in `_total` (the `prometheus` crate allows it), or whose name without
//!   it is another family's, is typed `unknown` instead, so its sample keeps
//!   its name rather than gaining a `_total` it never had;
//! - `le` and `quantile` values are canonical numbers (`1.0`, not `1`), as
//!   OpenMetrics requires;
//! - infinities and NaN are `+Inf`, `-Inf`, `NaN`; timestamps are in seconds;
//! - `HELP` escapes `"` too; the exposition ends with `# EOF`.
//!
//! `prometheus::proto` carries no creation time, so no `_created` sample is
//! written (OpenMetrics makes it optional). Nor does it carry exemplars:
//! those of the crate's wait and duration histograms are looked up in the
//! registry being encoded, when there is one ([`ExemplarSource`]).

use std::collections::HashSet;
use std::io::{self, Write};

use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Registry};

// The trait gives counters and gauges `value()` in the plain data model; the
// protobuf model has it inherent, and the import is unused there.
#[allow(unused_imports)]
use super::text::Value as _;
use super::text::{escape, write_display, write_value};
use crate::metrics::{Exemplar, ExemplarSource, HistogramExemplars};

/// The content type of the OpenMetrics text format.
pub(crate) const OPENMETRICS_FORMAT: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes metric families in the OpenMetrics text format (1.0.0): the
/// series of the text format, named and valued as OpenMetrics asks.
///
/// It implements [`prometheus::Encoder`] over the families a
/// `prometheus::Registry` gathers, so it needs no other client library.
/// [`MetricsServer`](crate::MetricsServer) answers with it when the scraper
/// asks for `application/openmetrics-text` (Prometheus does by default).
///
/// A counter family `x_total` is written as family `x` with sample
/// `x_total`, as OpenMetrics names counters: Prometheus stores the same
/// series `x_total` from either format. A counter without the `_total`
/// suffix is typed `unknown`, keeping its sample's name. `le` and `quantile`
/// labels are canonical numbers (`le="1.0"`), which Prometheus before 3.0
/// stores as other series than the text format's `le="1"`. No `_created`
/// samples are written: the gathered families carry no creation time.
///
/// ```
/// use executor_exporter::{OpenMetricsEncoder, ThreadPoolExecutor};
/// use prometheus::Encoder;
///
/// let registry = prometheus::Registry::new();
/// let pool = ThreadPoolExecutor::builder()
///     .exporter_id("images")
///     .registry(registry.clone())
///     .build()?;
/// pool.submit(|| 2 + 2)?.join()?;
///
/// let mut out = Vec::new();
/// let encoder = OpenMetricsEncoder::new();
/// encoder.encode(&registry.gather(), &mut out)?;
/// let text = String::from_utf8(out)?;
/// assert!(text.contains("# TYPE executor_submitted_tasks counter\n"));
/// assert!(text.contains(
///     r#"executor_submitted_tasks_total{executor="images",executor_type="thread_pool"} 1"#
/// ));
/// assert!(text.ends_with("# EOF\n"));
/// assert_eq!(
///     encoder.format_type(),
///     "application/openmetrics-text; version=1.0.0; charset=utf-8"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenMetricsEncoder {
    _private: (),
}

impl OpenMetricsEncoder {
    /// An OpenMetrics encoder.
    pub fn new() -> OpenMetricsEncoder {
        OpenMetricsEncoder { _private: () }
    }

    /// Writes `families` as [`encode`](Encoder::encode) does, with the
    /// exemplars of the wait and duration histograms of the pools and
    /// exporters registered in `registry` (see
    /// [`ExecutorExporterBuilder::exemplar`](crate::ExecutorExporterBuilder::exemplar)):
    /// on a bucket's line, ` # {labels} value timestamp`, the latest
    /// observation of that bucket that had labels. Other families, and
    /// histograms whose series keep no exemplars, are written as `encode`
    /// writes them. [`MetricsServer`](crate::MetricsServer) built with
    /// `.openmetrics(true)` serves this.
    ///
    /// ```
    /// use executor_exporter::{ExemplarLabels, OpenMetricsEncoder, ThreadPoolExecutor};
    ///
    /// let registry = prometheus::Registry::new();
    /// let pool = ThreadPoolExecutor::builder()
    ///     .exporter_id("images")
    ///     .registry(registry.clone())
    ///     .exemplar(|| ExemplarLabels::new([("trace_id", "4bf92f3577b34da6")]))
    ///     .build()?;
    /// pool.submit(|| 2 + 2)?.join()?;
    ///
    /// let mut out = Vec::new();
    /// OpenMetricsEncoder::new().encode_with_exemplars(&registry.gather(), &registry, &mut out)?;
    /// let text = String::from_utf8(out)?;
    /// let bucket = text
    ///     .lines()
    ///     .find(|l| l.starts_with("executor_task_wait_seconds_bucket") && l.contains(" # "))
    ///     .unwrap();
    /// assert!(bucket.contains(r#" # {trace_id="4bf92f3577b34da6"} "#));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn encode_with_exemplars<W: Write>(
        &self,
        families: &[MetricFamily],
        registry: &Registry,
        writer: &mut W,
    ) -> prometheus::Result<()> {
        encode_families(families, ExemplarSource::of(registry).as_ref(), writer)
    }

    /// This encoder, writing the exemplars of `registry` as
    /// [`encode_with_exemplars`](Self::encode_with_exemplars) does.
    #[cfg(feature = "http")]
    pub(crate) fn with_exemplars_of(self, registry: &Registry) -> WithExemplars<'_> {
        WithExemplars(registry)
    }
}

/// [`OpenMetricsEncoder`] with the exemplars of a registry, as an [`Encoder`].
#[cfg(feature = "http")]
pub(crate) struct WithExemplars<'a>(&'a Registry);

#[cfg(feature = "http")]
impl Encoder for WithExemplars<'_> {
    fn encode<W: Write>(
        &self,
        families: &[MetricFamily],
        writer: &mut W,
    ) -> prometheus::Result<()> {
        OpenMetricsEncoder::new().encode_with_exemplars(families, self.0, writer)
    }

    fn format_type(&self) -> &str {
        OPENMETRICS_FORMAT
    }
}

impl Encoder for OpenMetricsEncoder {
    /// Writes the exposition of `families` to `writer`, ending with `# EOF`.
    ///
    /// Families without samples are left out. On an error (a family with no
    /// name, or of type `UNTYPED`, which the text encoder refuses too), `writer` has received the families before it, and no `# EOF`:
    /// a scraper rejects the truncated exposition instead of storing part of it.
    fn encode<W: Write>(
        &self,
        families: &[MetricFamily],
        writer: &mut W,
    ) -> prometheus::Result<()> {
        encode_families(families, None, writer)
    }

    fn format_type(&self) -> &str {
        OPENMETRICS_FORMAT
    }
}

fn encode_families<W: Write>(
    families: &[MetricFamily],
    exemplars: Option<&ExemplarSource>,
    writer: &mut W,
) -> prometheus::Result<()> {
    let names: HashSet<&str> = families.iter().map(|f| f.name()).collect();
    let mut labels = Vec::new();
    for family in families {
        write_family(family, &names, exemplars, &mut labels, writer)?;
    }
    writer.write_all(b"# EOF\n")?;
    Ok(())
}

/// The metric types written.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

/// How one family is written.
struct Naming<'a> {
    kind: Kind,
    /// The family's name in `# TYPE`.
    family: &'a str,
    /// What its counter samples add to it.
    suffix: &'static str,
    type_name: &'static str,
}

/// The OpenMetrics name and type of `family`; `names` are all the families'
/// names, which a counter's name without `_total` must not be.
fn naming<'a>(family: &'a MetricFamily, names: &HashSet<&str>) -> prometheus::Result<Naming<'a>> {
    let name = family.name();
    let plain = |kind, type_name| Naming {
        kind,
        family: name,
        suffix: "",
        type_name,
    };
    Ok(match family.get_field_type() {
        MetricType::COUNTER => match name.strip_suffix("_total") {
            Some(stem) if !stem.is_empty() && !names.contains(stem) => Naming {
                kind: Kind::Counter,
                family: stem,
                suffix: "_total",
                type_name: "counter",
            },
            _ => plain(Kind::Counter, "unknown"),
        },
        MetricType::GAUGE => plain(Kind::Gauge, "gauge"),
        MetricType::HISTOGRAM => plain(Kind::Histogram, "histogram"),
        MetricType::SUMMARY => plain(Kind::Summary, "summary"),
        // As the text encoder: the two data models of `prometheus` hold an
        // untyped value in shapes no one piece of code reads in both.
        MetricType::UNTYPED => {
            return Err(prometheus::Error::Msg(format!(
                "metric family {name}: the OpenMetrics encoder does not support UNTYPED metrics; \
                     give it a type (counter or gauge) in the collector that makes it"
            )))
        }
    })
}

fn write_family<W: Write>(
    family: &MetricFamily,
    names: &HashSet<&str>,
    exemplars: Option<&ExemplarSource>,
    labels: &mut Vec<u8>,
    out: &mut W,
) -> prometheus::Result<()> {
    if family.name().is_empty() {
        return Err(prometheus::Error::Msg(format!(
            "MetricFamily has no name: {family:?}"
        )));
    }
    let naming = naming(family, names)?;
    let metrics = family.get_metric();
    if metrics.is_empty() {
        return Ok(());
    }
    if !family.help().is_empty() {
        out.write_all(b"# HELP ")?;
        out.write_all(naming.family.as_bytes())?;
        out.write_all(b" ")?;
        escape(family.help(), true, out)?;
        out.write_all(b"\n")?;
    }
    out.write_all(b"# TYPE ")?;
    out.write_all(naming.family.as_bytes())?;
    out.write_all(b" ")?;
    out.write_all(naming.type_name.as_bytes())?;
    out.write_all(b"\n")?;

    let name = naming.family;
    let mut number = String::new();
    for m in metrics {
        set_labels(labels, m.get_label());
        let line = Line {
            labels,
            name,
            timestamp_ms: m.timestamp_ms(),
        };
        match naming.kind {
            Kind::Counter => line.write(out, naming.suffix, None, m.get_counter().value())?,
            Kind::Gauge => line.write(out, "", None, m.get_gauge().value())?,
            Kind::Histogram => {
                let exemplars = exemplars.and_then(|e| e.histogram(family.name(), m.get_label()));
                write_histogram(&line, m, exemplars.as_ref(), &mut number, out)?
            }
            Kind::Summary => {
                let s = m.get_summary();
                for q in s.get_quantile() {
                    canonical(&mut number, q.quantile());
                    line.write(out, "", Some(("quantile", &number)), q.value())?;
                }
                line.write(out, "_sum", None, s.sample_sum())?;
                line.write(out, "_count", None, s.sample_count() as f64)?;
            }
        }
    }
    Ok(())
}

fn write_histogram<W: Write>(
    line: &Line<'_>,
    m: &Metric,
    exemplars: Option<&HistogramExemplars>,
    number: &mut String,
    out: &mut W,
) -> io::Result<()> {
    let h = m.get_histogram();
    let exemplar = |bound: f64| exemplars.and_then(|e| e.bucket(bound));
    let mut inf_seen = false;
    for b in h.get_bucket() {
        let bound = b.upper_bound();
        inf_seen |= bound == f64::INFINITY;
        canonical(number, bound);
        line.write_with(
            out,
            "_bucket",
            Some(("le", number)),
            b.cumulative_count() as f64,
            exemplar(bound),
        )?;
    }
    if !inf_seen {
        line.write_with(
            out,
            "_bucket",
            Some(("le", "+Inf")),
            h.get_sample_count() as f64,
            exemplar(f64::INFINITY),
        )?;
    }
    line.write(out, "_sum", None, h.get_sample_sum())?;
    line.write(out, "_count", None, h.get_sample_count() as f64)
}

/// The parts every sample of one series shares.
struct Line<'a> {
    /// `{name="value",...` escaped, without the closing brace; empty when
    /// the series has no labels.
    labels: &'a [u8],
    name: &'a str,
    timestamp_ms: i64,
}

impl Line<'_> {
    /// `name{suffix}{labels[,extra]} value[ timestamp]`; `extra`'s value is
    /// a number, written as it is.
    fn write<W: Write>(
        &self,
        out: &mut W,
        suffix: &str,
        extra: Option<(&str, &str)>,
        value: f64,
    ) -> io::Result<()> {
        self.write_with(out, suffix, extra, value, None)
    }

    /// [`write`](Self::write), with `exemplar` after the value (and the
    /// timestamp) when there is one.
    fn write_with<W: Write>(
        &self,
        out: &mut W,
        suffix: &str,
        extra: Option<(&str, &str)>,
        value: f64,
        exemplar: Option<&Exemplar>,
    ) -> io::Result<()> {
        out.write_all(self.name.as_bytes())?;
        out.write_all(suffix.as_bytes())?;
        match (self.labels.is_empty(), extra) {
            (true, None) => {}
            (false, None) => {
                out.write_all(self.labels)?;
                out.write_all(b"}")?;
            }
            (empty, Some((label, text))) => {
                out.write_all(if empty { b"{" } else { self.labels })?;
                if !empty {
                    out.write_all(b",")?;
                }
                out.write_all(label.as_bytes())?;
                out.write_all(b"=\"")?;
                out.write_all(text.as_bytes())?;
                out.write_all(b"\"}")?;
            }
        }
        out.write_all(b" ")?;
        write_number(out, value)?;
        if self.timestamp_ms != 0 {
            // In seconds, exactly.
            let sign = if self.timestamp_ms < 0 { "-" } else { "" };
            let ms = self.timestamp_ms.unsigned_abs();
            write!(out, " {sign}{}.{:03}", ms / 1000, ms % 1000)?;
        }
        if let Some(exemplar) = exemplar {
            write_exemplar(out, exemplar)?;
        }
        out.write_all(b"\n")
    }
}

/// ` # {name="value",...} value timestamp`: the timestamp in seconds, to
/// the millisecond (what Prometheus keeps).
fn write_exemplar<W: Write>(out: &mut W, exemplar: &Exemplar) -> io::Result<()> {
    out.write_all(b" # ")?;
    for (i, (name, value)) in exemplar.labels.iter().enumerate() {
        out.write_all(if i == 0 { b"{" } else { b"," })?;
        out.write_all(name.as_bytes())?;
        out.write_all(b"=\"")?;
        escape(value, true, out)?;
        out.write_all(b"\"")?;
    }
    out.write_all(b"} ")?;
    write_number(out, exemplar.value)?;
    let ms = exemplar
        .timestamp
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    write!(out, " {}.{:03}", ms / 1000, ms % 1000)
}

/// Escapes `pairs` once for all the samples of their series.
fn set_labels(labels: &mut Vec<u8>, pairs: &[LabelPair]) {
    labels.clear();
    for (i, pair) in pairs.iter().enumerate() {
        labels.push(if i == 0 { b'{' } else { b',' });
        labels.extend_from_slice(pair.name().as_bytes());
        labels.extend_from_slice(b"=\"");
        // Writing to a `Vec` cannot fail.
        let _ = escape(pair.value(), true, labels);
        labels.push(b'"');
    }
}

/// A sample value: as the text format writes it, but with OpenMetrics'
/// spelling of the infinities and NaN.
fn write_number<W: Write>(out: &mut W, value: f64) -> io::Result<()> {
    if value.is_nan() {
        out.write_all(b"NaN")
    } else if value.is_infinite() {
        out.write_all(if value > 0.0 { b"+Inf" } else { b"-Inf" })
    } else {
        write_value(out, value)
    }
}

/// `value` as a canonical number into `text`: with a decimal point
/// (`1.0`, `0.25`), `+Inf`, `-Inf` or `NaN`.
fn canonical(text: &mut String, value: f64) {
    text.clear();
    if value.is_nan() {
        text.push_str("NaN");
    } else if value.is_infinite() {
        text.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        write_display(text, value);
        if !text.contains('.') {
            text.push_str(".0");
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

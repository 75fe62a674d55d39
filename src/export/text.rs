//! The text exposition format (0.0.4), written byte for byte as
//! `prometheus::TextEncoder` writes it, without its per-sample allocations.
//!
//! `prometheus::TextEncoder` formats every value and every bucket bound into a
//! fresh `String` and escapes every label again for each sample; a histogram
//! sample repeats its labels 29 times with the default buckets. Here a
//! series' labels are escaped once into a scratch buffer and copied per
//! sample, the bucket bounds are formatted once per run of histograms that
//! share them, and integral values (counts, which are most samples) go
//! through `itoa`. Floats that are not integers keep std's `Display`, the
//! formatting `prometheus::TextEncoder` uses, so the bytes are the same; the
//! tests compare the two on generated metric families.

use std::io::{self, Write};

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::Encoder;

/// The content type of the text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4";

/// Encodes metric families in the Prometheus text format (0.0.4): the same
/// bytes as [`prometheus::TextEncoder`], at a fraction of its cost.
///
/// It implements [`prometheus::Encoder`], so it drops in wherever
/// `prometheus::TextEncoder` is used. [`MetricsServer`](crate::MetricsServer)
/// and the Pushgateway client use it. Unlike `prometheus::TextEncoder`, a
/// family of type `UNTYPED` (which that encoder does not implement and panics
/// on) is refused with an error.
///
/// ```
/// use executor_exporter::{TextEncoder, ThreadPoolExecutor};
/// use prometheus::Encoder;
///
/// let registry = prometheus::Registry::new();
/// let pool = ThreadPoolExecutor::builder()
///     .exporter_id("images")
///     .registry(registry.clone())
///     .build()?;
/// pool.submit(|| 2 + 2)?.join()?;
///
/// let mut ours = Vec::new();
/// TextEncoder::new().encode(&registry.gather(), &mut ours)?;
/// let text = String::from_utf8(ours.clone())?;
/// assert!(text.contains(
///     r#"executor_submitted_tasks_total{executor="images",executor_type="thread_pool"} 1"#
/// ));
///
/// // Byte for byte what the `prometheus` crate's encoder writes.
/// let mut theirs = Vec::new();
/// prometheus::TextEncoder::new().encode(&registry.gather(), &mut theirs)?;
/// assert_eq!(ours, theirs);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct TextEncoder {
    _private: (),
}

impl TextEncoder {
    /// A text encoder.
    pub fn new() -> TextEncoder {
        TextEncoder { _private: () }
    }
}

impl Encoder for TextEncoder {
    /// Writes the exposition of `families` to `writer`.
    ///
    /// On an error (a family with no name, no samples, or of type
    /// `UNTYPED`), `writer` has received the families before the bad one, as
    /// with `prometheus::TextEncoder`.
    fn encode<W: Write>(
        &self,
        families: &[MetricFamily],
        writer: &mut W,
    ) -> prometheus::Result<()> {
        let mut state = State::default();
        for family in families {
            state.family(family, writer)?;
        }
        Ok(())
    }

    fn format_type(&self) -> &str {
        TEXT_FORMAT
    }
}

/// The metric types the text format has.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

/// Scratch space reused across the families of one encoding.
#[derive(Default)]
struct State {
    /// `{name="value",...` of the current series, escaped; empty when it has
    /// no labels. The closing brace is written per sample, after any `le`.
    labels: Vec<u8>,
    /// The start of each bucket's line in the current histogram.
    head: Vec<u8>,
    /// The bucket bounds of the last histogram, with their text and the
    /// `"} ` that follows it.
    bounds: Vec<(u64, String)>,
    /// Scratch for a summary's quantile.
    quantile: String,
}

impl State {
    fn family<W: Write>(&mut self, family: &MetricFamily, out: &mut W) -> prometheus::Result<()> {
        let name = family.name();
        let metrics = family.get_metric();
        // The checks and their messages are `prometheus::TextEncoder`'s.
        if metrics.is_empty() {
            return Err(prometheus::Error::Msg(format!(
                "MetricFamily has no metrics: {family:?}"
            )));
        }
        if name.is_empty() {
            return Err(prometheus::Error::Msg(format!(
                "MetricFamily has no name: {family:?}"
            )));
        }
        let (kind, type_name) = match family.get_field_type() {
            MetricType::COUNTER => (Kind::Counter, "counter"),
            MetricType::GAUGE => (Kind::Gauge, "gauge"),
            MetricType::HISTOGRAM => (Kind::Histogram, "histogram"),
            MetricType::SUMMARY => (Kind::Summary, "summary"),
            MetricType::UNTYPED => {
                return Err(prometheus::Error::Msg(format!(
                    "metric family {name}: the text encoder does not support UNTYPED metrics; \
                     give it a type (counter or gauge) in the collector that makes it"
                )))
            }
        };
        let help = family.help();
        if !help.is_empty() {
            out.write_all(b"# HELP ")?;
            out.write_all(name.as_bytes())?;
            out.write_all(b" ")?;
            escape(help, false, out)?;
            out.write_all(b"\n")?;
        }
        out.write_all(b"# TYPE ")?;
        out.write_all(name.as_bytes())?;
        out.write_all(b" ")?;
        out.write_all(type_name.as_bytes())?;
        out.write_all(b"\n")?;

        for m in metrics {
            self.set_labels(m.get_label());
            let timestamp_ms = m.timestamp_ms();
            let sample = |out: &mut W,
                          labels: &[u8],
                          suffix: &str,
                          extra: Option<(&str, &str)>,
                          value: f64| {
                write_sample(out, labels, name, suffix, extra, value, timestamp_ms)
            };
            match kind {
                Kind::Counter => {
                    let counter: &Counter = m.get_counter();
                    sample(out, &self.labels, "", None, counter.value())?;
                }
                Kind::Gauge => {
                    let gauge: &Gauge = m.get_gauge();
                    sample(out, &self.labels, "", None, gauge.value())?;
                }
                Kind::Histogram => self.histogram(out, name, m)?,
                Kind::Summary => {
                    let s = m.get_summary();
                    for q in s.get_quantile() {
                        self.quantile.clear();
                        write_display(&mut self.quantile, q.quantile());
                        let extra = Some(("quantile", self.quantile.as_str()));
                        sample(out, &self.labels, "", extra, q.value())?;
                    }
                    sample(out, &self.labels, "_sum", None, s.sample_sum())?;
                    sample(out, &self.labels, "_count", None, s.sample_count() as f64)?;
                }
            }
        }
        Ok(())
    }

    fn histogram<W: Write>(&mut self, out: &mut W, name: &str, m: &Metric) -> io::Result<()> {
        let h = m.get_histogram();
        let buckets = h.get_bucket();
        let timestamp_ms = m.timestamp_ms();
        // `name_bucket{labels,le="`, the same for every bucket of the series.
        self.head.clear();
        self.head.extend_from_slice(name.as_bytes());
        self.head.extend_from_slice(b"_bucket");
        if self.labels.is_empty() {
            self.head.push(b'{');
        } else {
            self.head.extend_from_slice(&self.labels);
            self.head.push(b',');
        }
        self.head.extend_from_slice(b"le=\"");
        // Histograms of one family nearly always share their bounds: format
        // each bound only when it differs from the last histogram's.
        if self.bounds.len() < buckets.len() {
            self.bounds.resize_with(buckets.len(), Default::default);
        }
        let mut inf_seen = false;
        for (b, (bits, text)) in buckets.iter().zip(&mut self.bounds) {
            let bound = b.upper_bound();
            if *bits != bound.to_bits() || text.is_empty() {
                *bits = bound.to_bits();
                text.clear();
                // `Display` of an `f64` never writes a character the text
                // format escapes, so the bound goes out as it is.
                write_display(text, bound);
                text.push_str("\"} ");
            }
            out.write_all(&self.head)?;
            out.write_all(text.as_bytes())?;
            write_count(out, b.cumulative_count())?;
            write_end(out, timestamp_ms)?;
            if bound.is_sign_positive() && bound.is_infinite() {
                inf_seen = true;
            }
        }
        if !inf_seen {
            out.write_all(&self.head)?;
            out.write_all(b"+Inf\"} ")?;
            write_count(out, h.get_sample_count())?;
            write_end(out, timestamp_ms)?;
        }
        let count = h.get_sample_count() as f64;
        write_sample(
            out,
            &self.labels,
            name,
            "_sum",
            None,
            h.get_sample_sum(),
            timestamp_ms,
        )?;
        write_sample(out, &self.labels, name, "_count", None, count, timestamp_ms)
    }

    /// Escapes `pairs` once for all the samples of their series.
    fn set_labels(&mut self, pairs: &[LabelPair]) {
        self.labels.clear();
        for (i, pair) in pairs.iter().enumerate() {
            self.labels.push(if i == 0 { b'{' } else { b',' });
            self.labels.extend_from_slice(pair.name().as_bytes());
            self.labels.extend_from_slice(b"=\"");
            // Writing to a `Vec` cannot fail.
            let _ = escape(pair.value(), true, &mut self.labels);
            self.labels.push(b'"');
        }
    }
}

/// One line: `name[suffix][{labels[,extra]}] value[ timestamp]`. `labels` is
/// the series' escaped labels without the closing brace; `extra`'s value is
/// written unescaped (callers pass formatted numbers).
fn write_sample<W: Write>(
    out: &mut W,
    labels: &[u8],
    name: &str,
    suffix: &str,
    extra: Option<(&str, &str)>,
    value: f64,
    timestamp_ms: i64,
) -> io::Result<()> {
    out.write_all(name.as_bytes())?;
    out.write_all(suffix.as_bytes())?;
    match (labels.is_empty(), extra) {
        (true, None) => {}
        (false, None) => {
            out.write_all(labels)?;
            out.write_all(b"}")?;
        }
        (empty, Some((label, text))) => {
            if empty {
                out.write_all(b"{")?;
            } else {
                out.write_all(labels)?;
                out.write_all(b",")?;
            }
            out.write_all(label.as_bytes())?;
            out.write_all(b"=\"")?;
            out.write_all(text.as_bytes())?;
            out.write_all(b"\"}")?;
        }
    }
    out.write_all(b" ")?;
    write_value(out, value)?;
    write_end(out, timestamp_ms)
}

/// The end of a sample's line: its timestamp, if any, and the newline.
fn write_end<W: Write>(out: &mut W, timestamp_ms: i64) -> io::Result<()> {
    if timestamp_ms != 0 {
        out.write_all(b" ")?;
        out.write_all(itoa::Buffer::new().format(timestamp_ms).as_bytes())?;
    }
    out.write_all(b"\n")
}

/// Writes `value` as `f64`'s `Display` does.
pub(super) fn write_value<W: Write>(out: &mut W, value: f64) -> io::Result<()> {
    // 2^53: every integer up to it is exact, so `Display`'s shortest
    // round-trip form is its plain digits, which `itoa` writes. Beyond it,
    // and for -0 (`Display` writes "-0"), fall back to `Display`.
    const EXACT: u64 = 1 << 53;
    // `as` saturates (NaN gives 0), and the round trip rejects every value
    // that is not an integer, NaN and the infinities included.
    let int = value as i64;
    if int as f64 == value && int.unsigned_abs() <= EXACT && !(int == 0 && value.is_sign_negative())
    {
        out.write_all(itoa::Buffer::new().format(int).as_bytes())
    } else {
        write!(out, "{value}")
    }
}

/// Writes a count as `prometheus::TextEncoder` does: converted to `f64`
/// first, so a count past 2^53 is written rounded, as that encoder would.
fn write_count<W: Write>(out: &mut W, count: u64) -> io::Result<()> {
    if count <= 1 << 53 {
        out.write_all(itoa::Buffer::new().format(count).as_bytes())
    } else {
        write_value(out, count as f64)
    }
}

pub(super) fn write_display(text: &mut String, value: f64) {
    use std::fmt::Write as _;
    // Writing to a `String` cannot fail.
    let _ = write!(text, "{value}");
}

/// Writes `value` with `\` and newlines escaped, and `"` too when `quote`.
pub(super) fn escape<W: Write>(value: &str, quote: bool, out: &mut W) -> io::Result<()> {
    let special = |b: u8| b == b'\\' || b == b'\n' || (quote && b == b'"');
    let mut rest = value.as_bytes();
    while let Some(i) = rest.iter().position(|&b| special(b)) {
        out.write_all(&rest[..i])?;
        out.write_all(match rest[i] {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            _ => b"\\\"",
        })?;
        rest = &rest[i + 1..];
    }
    out.write_all(rest)
}

/// The value of a counter or gauge, whichever data model `prometheus` was
/// built with: its plain model (feature `protobuf` off) names the accessor
/// `get_value`, its protobuf model `value`, and any crate in a build can turn
/// that feature on. Each trait supplies the name the model lacks by calling
/// the one it has; an inherent method wins over a trait's, so neither
/// recurses. Only one of the two is called in a given build. This is the
/// encoder's only difference between the models: the tests run it against
/// `prometheus::TextEncoder` in the protobuf model, and `.ci/run` builds the
/// crate in the plain one (`--no-default-features`).
pub(crate) trait Value {
    fn value(&self) -> f64;
}

/// See [`Value`].
pub(crate) trait GetValue {
    fn get_value(&self) -> f64;
}

macro_rules! value_either_way {
    ($($ty:ty),*) => {$(
        impl Value for $ty {
            fn value(&self) -> f64 {
                self.get_value()
            }
        }
        impl GetValue for $ty {
            fn get_value(&self) -> f64 {
                self.value()
            }
        }
    )*};
}

value_either_way!(Counter, Gauge);

// Both traits named once, so the one a build's model does not call is not
// dead code in that build.
const _: [fn(&Counter) -> f64; 2] = [<Counter as Value>::value, <Counter as GetValue>::get_value];

#[cfg(all(test, not(loom)))]
mod tests;

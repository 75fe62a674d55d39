//! The protobuf exposition: length-delimited `io.prometheus.client.MetricFamily`
//! messages, written here rather than by `prometheus`, whose messages have no
//! fields for native histograms.
//!
//! Every field a gathered family has set is written, and only those, so a
//! decoder reads back the same messages (unknown fields of other collectors'
//! messages are not carried). A histogram of this crate's collectors that
//! keeps a native histogram (see [`Extras`]) also gets its native fields:
//! schema, zero threshold and count, positive spans and deltas, with the
//! native count as the sample count. Its buckets carry their latest exemplar
//! (see [`ExemplarSource`]); one in the `+Inf` bucket, which the gathered
//! families leave implicit, is written on an explicit `+Inf` bucket.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, Quantile, Summary, Untyped,
};

use std::time::UNIX_EPOCH;

use crate::metrics::{Exemplar, ExemplarSource, Extras, HistogramExemplars, NativeHistogram};

/// The content type of the exposition.
pub(crate) const PROTOBUF_FORMAT: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

// Wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;

/// Appends `families` to `out`, each a `MetricFamily` message preceded by its
/// length, with the native histograms of `extras` and the bucket exemplars of
/// `exemplars`.
///
/// # Errors
///
/// A family without a name or without samples, which no scraper can use
/// (what a registry gathers has neither).
pub(crate) fn encode(
    families: &[MetricFamily],
    extras: &Extras,
    exemplars: Option<&ExemplarSource>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    for family in families {
        if family.name().is_empty() || family.metric.is_empty() {
            return Err(format!(
                "metric family {:?} has no name or no samples",
                family.name()
            ));
        }
        delimited(out, |out| metric_family(out, family, extras, exemplars));
    }
    Ok(())
}

fn metric_family(
    out: &mut Vec<u8>,
    f: &MetricFamily,
    extras: &Extras,
    exemplars: Option<&ExemplarSource>,
) {
    if let Some(name) = &f.name {
        string(out, 1, name);
    }
    if let Some(help) = &f.help {
        string(out, 2, help);
    }
    if let Some(ty) = f.type_ {
        // An enum is an int32: a negative one takes ten bytes.
        varint_field(out, 3, i64::from(ty.value()) as u64);
    }
    let name = f.name.as_deref().unwrap_or_default();
    for m in &f.metric {
        let (native, exemplars) = match m.histogram.is_some() {
            true => (
                extras.native(name, &m.label),
                exemplars.and_then(|source| source.histogram(name, &m.label)),
            ),
            false => (None, None),
        };
        message(out, 4, |out| metric(out, m, native, exemplars.as_ref()));
    }
}

fn metric(
    out: &mut Vec<u8>,
    m: &Metric,
    native: Option<&NativeHistogram>,
    exemplars: Option<&HistogramExemplars>,
) {
    for label in &m.label {
        message(out, 1, |out| label_pair(out, label));
    }
    if let Some(g) = m.gauge.as_ref() {
        message(out, 2, |out| value(out, g));
    }
    if let Some(c) = m.counter.as_ref() {
        message(out, 3, |out| value(out, c));
    }
    if let Some(s) = m.summary.as_ref() {
        message(out, 4, |out| summary(out, s));
    }
    if let Some(u) = m.untyped.as_ref() {
        message(out, 5, |out| value(out, u));
    }
    if let Some(ts) = m.timestamp_ms {
        varint_field(out, 6, ts as u64);
    }
    if let Some(h) = m.histogram.as_ref() {
        message(out, 7, |out| histogram(out, h, native, exemplars));
    }
}

fn label_pair(out: &mut Vec<u8>, l: &LabelPair) {
    if let Some(name) = &l.name {
        string(out, 1, name);
    }
    if let Some(value) = &l.value {
        string(out, 2, value);
    }
}

/// The messages of one optional `double value = 1`.
trait OneValue {
    fn get(&self) -> Option<f64>;
}

macro_rules! one_value {
    ($($ty:ty),*) => {$(
        impl OneValue for $ty {
            fn get(&self) -> Option<f64> {
                self.value
            }
        }
    )*};
}

one_value!(Gauge, Counter, Untyped);

fn value(out: &mut Vec<u8>, v: &impl OneValue) {
    if let Some(v) = v.get() {
        double(out, 1, v);
    }
}

fn summary(out: &mut Vec<u8>, s: &Summary) {
    if let Some(n) = s.sample_count {
        varint_field(out, 1, n);
    }
    if let Some(sum) = s.sample_sum {
        double(out, 2, sum);
    }
    for q in &s.quantile {
        message(out, 3, |out| quantile(out, q));
    }
}

fn quantile(out: &mut Vec<u8>, q: &Quantile) {
    if let Some(quantile) = q.quantile {
        double(out, 1, quantile);
    }
    if let Some(v) = q.value {
        double(out, 2, v);
    }
}

fn histogram(
    out: &mut Vec<u8>,
    h: &Histogram,
    native: Option<&NativeHistogram>,
    exemplars: Option<&HistogramExemplars>,
) {
    // Prometheus requires a native histogram's count to be its buckets'
    // total; it is at least the classic count (see `Series`), and the
    // classic buckets' `+Inf` is the count.
    match (native, h.sample_count) {
        (Some(native), _) => varint_field(out, 1, native.count),
        (None, Some(n)) => varint_field(out, 1, n),
        (None, None) => {}
    }
    if let Some(sum) = h.sample_sum {
        double(out, 2, sum);
    }
    let mut explicit_inf = false;
    for b in &h.bucket {
        let bound = b.upper_bound.unwrap_or(f64::NAN);
        explicit_inf |= bound == f64::INFINITY;
        let exemplar = exemplars.and_then(|e| e.bucket(bound));
        message(out, 3, |out| bucket(out, b, exemplar));
    }
    // The `+Inf` bucket is implicit (its count is the sample count) unless
    // an exemplar needs a place.
    if let (false, Some(inf), Some(count)) = (
        explicit_inf,
        exemplars.and_then(|e| e.bucket(f64::INFINITY)),
        h.sample_count,
    ) {
        message(out, 3, |out| {
            varint_field(out, 1, count);
            double(out, 2, f64::INFINITY);
            message(out, 3, |out| exemplar_of(out, inf));
        });
    }
    if let Some(native) = native {
        native_fields(out, native);
    }
}

fn bucket(out: &mut Vec<u8>, b: &Bucket, exemplar: Option<&Exemplar>) {
    if let Some(n) = b.cumulative_count {
        varint_field(out, 1, n);
    }
    if let Some(bound) = b.upper_bound {
        double(out, 2, bound);
    }
    if let Some(e) = exemplar {
        message(out, 3, |out| exemplar_of(out, e));
    }
}

fn exemplar_of(out: &mut Vec<u8>, e: &Exemplar) {
    let labels: Vec<(&str, &str)> = e.labels.iter().collect();
    // A time before the epoch (a clock set back) is left out rather than
    // written wrong.
    let timestamp = e
        .timestamp
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| Some((i64::try_from(d.as_secs()).ok()?, d.subsec_nanos() as i32)));
    exemplar(out, &labels, e.value, timestamp);
}

/// An exemplar message (`labels`, `value`, the timestamp as seconds and
/// nanoseconds since the epoch), as a bucket's field 3 holds it.
pub(crate) fn exemplar(
    out: &mut Vec<u8>,
    labels: &[(&str, &str)],
    value: f64,
    timestamp: Option<(i64, i32)>,
) {
    for (name, label) in labels {
        message(out, 1, |out| {
            string(out, 1, name);
            string(out, 2, label);
        });
    }
    double(out, 2, value);
    if let Some((seconds, nanos)) = timestamp {
        // A google.protobuf.Timestamp.
        message(out, 3, |out| {
            varint_field(out, 1, seconds as u64);
            varint_field(out, 2, i64::from(nanos) as u64);
        });
    }
}

fn native_fields(out: &mut Vec<u8>, h: &NativeHistogram) {
    // sint32 schema = 5
    key(out, 5, VARINT);
    varint(out, u64::from(zigzag32(i32::from(h.schema))));
    double(out, 6, h.zero_threshold);
    varint_field(out, 7, h.zero_count);
    for &(offset, length) in &h.spans {
        // BucketSpan positive_span = 12 { sint32 offset = 1; uint32 length = 2; }
        message(out, 12, |out| {
            key(out, 1, VARINT);
            varint(out, u64::from(zigzag32(offset)));
            varint_field(out, 2, u64::from(length));
        });
    }
    if !h.deltas.is_empty() {
        // sint64 positive_delta = 13, packed: decoders take either form.
        message(out, 13, |out| {
            for &d in &h.deltas {
                varint(out, zigzag64(d));
            }
        });
    }
}

fn zigzag32(n: i32) -> u32 {
    ((n << 1) ^ (n >> 31)) as u32
}

fn zigzag64(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from(field << 3 | wire));
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u32, n: u64) {
    key(out, field, VARINT);
    varint(out, n);
}

fn double(out: &mut Vec<u8>, field: u32, v: f64) {
    key(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    key(out, field, LEN);
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A length-delimited field: its key, then what `body` writes, preceded by
/// its length.
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, LEN);
    delimited(out, body);
}

/// What `body` writes, preceded by its length as a varint. The body is
/// written in place after one byte kept for the length, and moved along
/// when the length takes more: no buffer per message.
fn delimited(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.push(0);
    body(out);
    let len = out.len() - start - 1;
    let mut prefix = [0u8; 10];
    let mut used = 0;
    let mut n = len as u64;
    while n >= 0x80 {
        prefix[used] = n as u8 | 0x80;
        n >>= 7;
        used += 1;
    }
    prefix[used] = n as u8;
    used += 1;
    if used > 1 {
        out.resize(out.len() + used - 1, 0);
        out.copy_within(start + 1..start + 1 + len, start + used);
    }
    out[start..start + used].copy_from_slice(&prefix[..used]);
}

#[cfg(all(test, not(loom)))]
mod tests;

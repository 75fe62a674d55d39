//! The encoder against `prometheus::TextEncoder`, on generated families.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType, Quantile,
    Summary,
};
use prometheus::Encoder;
use proptest::prelude::*;

use super::TextEncoder;

/// What an encoder wrote, and how it ended (errors as text).
type Written = (String, Result<(), String>);

fn written(encoder: &impl Encoder, families: &[MetricFamily]) -> Written {
    let mut out = Vec::new();
    let result = encoder.encode(families, &mut out);
    let text = String::from_utf8(out).expect("the exposition is UTF-8");
    (text, result.map_err(|e| e.to_string()))
}

fn theirs(families: &[MetricFamily]) -> Written {
    written(&prometheus::TextEncoder::new(), families)
}

fn ours(families: &[MetricFamily]) -> Written {
    written(&TextEncoder::new(), families)
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

/// Values of every shape `Display` treats differently.
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        (0u64..1_000_000).prop_map(|n| n as f64),
        any::<i64>().prop_map(|n| n as f64),
        Just(9_007_199_254_740_992.0),
        Just(9_007_199_254_740_993.0),
        Just(-9_007_199_254_740_992.0),
        Just(1e21),
        Just(0.0),
        Just(-0.0),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MIN_POSITIVE),
        any::<f64>(),
        (-1e6f64..1e6),
        (0.0f64..1e-3),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_-]{0,8}",
        // Every character the format escapes, and some it does not.
        "[a\\\\\"\n\t{},=é😀]{0,8}",
    ]
}

fn labels() -> impl Strategy<Value = Vec<LabelPair>> {
    prop::collection::vec(("[a-z_]{1,6}", text()), 0..3)
        .prop_map(|pairs| pairs.iter().map(|(n, v)| label(n, v)).collect())
}

fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![3 => Just(0i64), 1 => any::<i64>()]
}

fn bounds() -> impl Strategy<Value = Vec<f64>> {
    prop_oneof![
        Just(crate::DEFAULT_BUCKETS.to_vec()),
        prop::collection::vec(value(), 0..6),
        prop::collection::vec(value(), 0..4).prop_map(|mut b| {
            b.push(f64::INFINITY);
            b
        }),
    ]
}

fn histogram() -> impl Strategy<Value = Histogram> {
    (
        bounds(),
        prop::collection::vec(any::<u64>(), 6),
        any::<u64>(),
        value(),
    )
        .prop_map(|(bounds, counts, count, sum)| {
            let mut h = Histogram::default();
            h.set_bucket(
                bounds
                    .iter()
                    .zip(counts.iter().cycle())
                    .map(|(bound, n)| {
                        let mut b = Bucket::default();
                        b.set_upper_bound(*bound);
                        b.set_cumulative_count(*n);
                        b
                    })
                    .collect(),
            );
            h.set_sample_count(count);
            h.set_sample_sum(sum);
            h
        })
}

fn summary() -> impl Strategy<Value = Summary> {
    (
        prop::collection::vec((value(), value()), 0..4),
        any::<u64>(),
        value(),
    )
        .prop_map(|(quantiles, count, sum)| {
            let mut s = Summary::default();
            s.set_quantile(
                quantiles
                    .iter()
                    .map(|(q, v)| {
                        let mut quantile = Quantile::default();
                        quantile.set_quantile(*q);
                        quantile.set_value(*v);
                        quantile
                    })
                    .collect(),
            );
            s.set_sample_count(count);
            s.set_sample_sum(sum);
            s
        })
}

fn metric(kind: MetricType) -> BoxedStrategy<Metric> {
    let base = (labels(), timestamp());
    let with = |base: (Vec<LabelPair>, i64)| {
        let mut m = Metric::default();
        m.set_label(base.0);
        m.set_timestamp_ms(base.1);
        m
    };
    match kind {
        MetricType::COUNTER => (base, value())
            .prop_map(move |(base, v)| {
                let mut m = with(base);
                let mut c = Counter::default();
                c.set_value(v);
                m.set_counter(c);
                m
            })
            .boxed(),
        MetricType::GAUGE => (base, value())
            .prop_map(move |(base, v)| {
                let mut m = with(base);
                let mut g = Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
                m
            })
            .boxed(),
        MetricType::HISTOGRAM => (base, histogram())
            .prop_map(move |(base, h)| {
                let mut m = with(base);
                m.set_histogram(h);
                m
            })
            .boxed(),
        _ => (base, summary())
            .prop_map(move |(base, s)| {
                let mut m = with(base);
                m.set_summary(s);
                m
            })
            .boxed(),
    }
}

fn family() -> impl Strategy<Value = MetricFamily> {
    prop_oneof![
        Just(MetricType::COUNTER),
        Just(MetricType::GAUGE),
        Just(MetricType::HISTOGRAM),
        Just(MetricType::SUMMARY),
    ]
    .prop_flat_map(|kind| {
        (
            "[a-z_:]{0,10}",
            text(),
            prop::collection::vec(metric(kind), 0..4),
        )
            .prop_map(move |(name, help, metrics)| {
                let mut family = MetricFamily::default();
                family.set_name(name);
                family.set_help(help);
                family.set_field_type(kind);
                family.set_metric(metrics);
                family
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Same bytes as `prometheus::TextEncoder`, and on an error (a family
    /// with no name or no samples) the same error after the same bytes.
    #[test]
    fn writes_what_the_prometheus_encoder_writes(
        families in prop::collection::vec(family(), 0..5),
    ) {
        prop_assert_eq!(ours(&families), theirs(&families));
    }
}

#[test]
fn an_error_keeps_the_families_before_it() {
    let mut good = MetricFamily::default();
    good.set_name("good".to_owned());
    good.set_field_type(MetricType::COUNTER);
    good.set_metric(vec![Metric::default()]);
    let mut empty = MetricFamily::default();
    empty.set_name("empty".to_owned());
    empty.set_field_type(MetricType::GAUGE);
    let families = [good, empty];

    let (text, result) = ours(&families);
    let err = result.expect_err("a family without samples is an error");
    assert!(err.contains("has no metrics"), "{err}");
    assert_eq!(text, "# TYPE good counter\ngood 0\n");
}

#[test]
fn untyped_families_are_an_error_not_a_panic() {
    let mut family = MetricFamily::default();
    family.set_name("legacy".to_owned());
    family.set_field_type(MetricType::UNTYPED);
    family.set_metric(vec![Metric::default()]);
    let (text, result) = ours(&[family]);
    let err = result.expect_err("UNTYPED is refused");
    assert_eq!(text, "");
    assert!(err.contains("legacy") && err.contains("UNTYPED"), "{err}");
}

/// Accepts `room` bytes, then fails every write.
struct Full {
    room: usize,
    taken: Vec<u8>,
}

impl std::io::Write for Full {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.room == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "full"));
        }
        let n = buf.len().min(self.room).min(7);
        self.taken.extend_from_slice(&buf[..n]);
        self.room -= n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_writer_is_an_error_after_a_prefix_of_the_text() {
    let registry = prometheus::Registry::new();
    let exporter = crate::ExecutorExporter::builder()
        .exporter_id("pool")
        .registry(registry.clone())
        .build()
        .unwrap();
    let families = registry.gather();
    let (whole, result) = ours(&families);
    result.unwrap();
    for room in [0, 1, 100, whole.len() / 2, whole.len() - 1] {
        let mut writer = Full {
            room,
            taken: Vec::new(),
        };
        let err = TextEncoder::new()
            .encode(&families, &mut writer)
            .expect_err("the writer fills up");
        assert!(matches!(err, prometheus::Error::Io(_)), "{err}");
        assert_eq!(writer.taken, whole.as_bytes()[..room], "room {room}");
    }
    // With room for all of it, a writer taking 7 bytes at a time gets it all.
    let mut writer = Full {
        room: whole.len(),
        taken: Vec::new(),
    };
    TextEncoder::new().encode(&families, &mut writer).unwrap();
    assert_eq!(writer.taken, whole.as_bytes());
    drop(exporter);
}

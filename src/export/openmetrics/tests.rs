//! The OpenMetrics encoder on hand-made families, byte for byte.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType, Quantile,
    Summary,
};
use prometheus::Encoder;

use super::OpenMetricsEncoder;

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn counter(value: f64, labels: &[LabelPair]) -> Metric {
    let mut c = Counter::default();
    c.set_value(value);
    let mut m = Metric::default();
    m.set_label(labels.to_vec());
    m.set_counter(c);
    m
}

fn gauge(value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::default();
    m.set_gauge(g);
    m
}

fn encode(families: &[MetricFamily]) -> (String, prometheus::Result<()>) {
    let mut out = Vec::new();
    let result = OpenMetricsEncoder::new().encode(families, &mut out);
    (String::from_utf8(out).unwrap(), result)
}

#[test]
fn counters_lose_total_in_their_family_name_only() {
    let families = [
        family(
            "jobs_total",
            "Jobs \"done\"\\\nby kind.",
            MetricType::COUNTER,
            vec![counter(3.0, &[label("kind", "a \"b\" \\ c\nd")])],
        ),
        // Not named as OpenMetrics names counters: kept as it is, untyped.
        family(
            "bare",
            "A counter.",
            MetricType::COUNTER,
            vec![counter(1.0, &[])],
        ),
        // `clash` is a gauge already: `clash_total` cannot be family `clash`.
        family("clash", "", MetricType::GAUGE, vec![gauge(2.0)]),
        family(
            "clash_total",
            "",
            MetricType::COUNTER,
            vec![counter(4.0, &[])],
        ),
        family("_total", "", MetricType::COUNTER, vec![counter(5.0, &[])]),
    ];
    let (text, result) = encode(&families);
    result.unwrap();
    assert_eq!(
        text,
        "# HELP jobs Jobs \\\"done\\\"\\\\\\nby kind.\n\
         # TYPE jobs counter\n\
         jobs_total{kind=\"a \\\"b\\\" \\\\ c\\nd\"} 3\n\
         # HELP bare A counter.\n\
         # TYPE bare unknown\n\
         bare 1\n\
         # TYPE clash gauge\n\
         clash 2\n\
         # TYPE clash_total unknown\n\
         clash_total 4\n\
         # TYPE _total unknown\n\
         _total 5\n\
         # EOF\n"
    );
}

#[test]
fn histograms_and_summaries_use_canonical_numbers_and_inf() {
    let mut h = Histogram::default();
    let bucket = |bound: f64, count: u64| {
        let mut b = Bucket::default();
        b.set_upper_bound(bound);
        b.set_cumulative_count(count);
        b
    };
    h.set_bucket(vec![bucket(0.005, 1), bucket(1.0, 2), bucket(300.0, 3)]);
    h.set_sample_count(4);
    h.set_sample_sum(400.25);
    let mut hm = Metric::default();
    hm.set_label(vec![label("pool", "p")]);
    hm.set_histogram(h);

    let mut s = Summary::default();
    let quantile = |q: f64, v: f64| {
        let mut x = Quantile::default();
        x.set_quantile(q);
        x.set_value(v);
        x
    };
    s.set_quantile(vec![quantile(0.5, 1.5), quantile(1.0, f64::NAN)]);
    s.set_sample_count(2);
    s.set_sample_sum(3.0);
    let mut sm = Metric::default();
    sm.set_summary(s);

    let mut later = gauge(f64::NEG_INFINITY);
    later.set_timestamp_ms(1_700_000_000_007);
    let mut g = gauge(f64::INFINITY);
    g.set_timestamp_ms(-1);

    let families = [
        family("wait_seconds", "Wait.", MetricType::HISTOGRAM, vec![hm]),
        family("latency", "", MetricType::SUMMARY, vec![sm]),
        family("level", "", MetricType::GAUGE, vec![later, g]),
        family("empty", "No samples: left out.", MetricType::GAUGE, vec![]),
    ];
    let (text, result) = encode(&families);
    result.unwrap();
    assert_eq!(
        text,
        "# HELP wait_seconds Wait.\n\
         # TYPE wait_seconds histogram\n\
         wait_seconds_bucket{pool=\"p\",le=\"0.005\"} 1\n\
         wait_seconds_bucket{pool=\"p\",le=\"1.0\"} 2\n\
         wait_seconds_bucket{pool=\"p\",le=\"300.0\"} 3\n\
         wait_seconds_bucket{pool=\"p\",le=\"+Inf\"} 4\n\
         wait_seconds_sum{pool=\"p\"} 400.25\n\
         wait_seconds_count{pool=\"p\"} 4\n\
         # TYPE latency summary\n\
         latency{quantile=\"0.5\"} 1.5\n\
         latency{quantile=\"1.0\"} NaN\n\
         latency_sum 3\n\
         latency_count 2\n\
         # TYPE level gauge\n\
         level -Inf 1700000000.007\n\
         level +Inf -0.001\n\
         # EOF\n"
    );
}

/// A family the encoder cannot write stops it before `# EOF`, so a scraper
/// refuses the exposition instead of storing part of it.
#[test]
fn an_error_leaves_out_the_eof() {
    let families = [
        family("ok", "", MetricType::GAUGE, vec![gauge(1.0)]),
        family("", "", MetricType::GAUGE, vec![gauge(1.0)]),
    ];
    let (text, result) = encode(&families);
    assert!(result.is_err());
    assert_eq!(text, "# TYPE ok gauge\nok 1\n");

    let untyped = family("legacy", "", MetricType::UNTYPED, vec![Metric::default()]);
    let (text, result) = encode(&[untyped]);
    let error = result.unwrap_err().to_string();
    assert!(
        error.contains("legacy") && error.contains("UNTYPED"),
        "{error}"
    );
    assert_eq!(text, "");
}

#[test]
fn an_exemplar_follows_its_bucket_value_escaped_with_a_millisecond_timestamp() {
    use std::time::{Duration, UNIX_EPOCH};

    let exemplar = crate::metrics::Exemplar {
        labels: crate::ExemplarLabels::new([("trace_id", "a\"b\\c\nd"), ("span", "7")]).unwrap(),
        value: 0.042,
        timestamp: UNIX_EPOCH + Duration::from_micros(1_733_000_000_123_456),
    };
    let mut out = Vec::new();
    super::write_exemplar(&mut out, &exemplar).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#" # {trace_id="a\"b\\c\nd",span="7"} 0.042 1733000000.123"#
    );
}

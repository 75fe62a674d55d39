//! The encoder against the `protobuf` crate's decoder (the messages of
//! `prometheus::proto`), and the native fields, which those messages lack,
//! read from their unknown fields.
use prometheus::proto::MetricType;
use prometheus::{Counter, Gauge, Opts, Registry};
use protobuf::{CodedInputStream, UnknownValueRef};

use super::*;
use crate::metrics::with_extras;
use crate::ThreadPoolExecutor;

fn decode(bytes: &[u8]) -> Vec<MetricFamily> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut out = Vec::new();
    while !input.eof().unwrap() {
        out.push(input.read_message::<MetricFamily>().unwrap());
    }
    out
}

fn encoded(families: &[MetricFamily], extras: &Extras) -> Vec<u8> {
    let mut out = Vec::new();
    encode(families, extras, None, &mut out).unwrap();
    out
}

/// Families of every kind, with fields set and unset, read back equal
/// (field presence included: proto2 tells a 0 apart from an absent value).
#[test]
fn every_family_decodes_to_what_was_encoded() {
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .exporter_id("a \"quoted\" ✓ id")
        .registry(registry.clone())
        .build()
        .unwrap();
    for k in 0..5 {
        pool.submit(move || k).unwrap().join().unwrap();
    }
    pool.exporter().step("parse").time(|| ());
    let gauge = Gauge::with_opts(Opts::new("negative_gauge", "Below zero.")).unwrap();
    gauge.set(-2.5);
    registry.register(Box::new(gauge)).unwrap();
    let counter = Counter::new("big_total", "A long help text. ".repeat(20)).unwrap();
    counter.inc_by(1e300);
    registry.register(Box::new(counter)).unwrap();
    let mut families = registry.gather();

    let mut summary = MetricFamily::default();
    summary.set_name("handmade".to_owned());
    summary.set_field_type(MetricType::SUMMARY);
    let mut s = Summary::default();
    s.set_sample_count(3);
    let mut q = Quantile::default();
    q.set_quantile(0.5);
    q.set_value(f64::NAN);
    s.set_quantile(vec![q, Quantile::default()]);
    let mut m = Metric::default();
    m.set_summary(s);
    m.set_timestamp_ms(-1_700_000_000_000);
    let untyped = Metric {
        untyped: protobuf::MessageField::some(Untyped::default()),
        ..Metric::default()
    };
    summary.set_metric(vec![m, untyped]);
    families.push(summary);

    let bytes = encoded(&families, &Extras::default());
    let decoded = decode(&bytes);
    // NaN != NaN: compare the NaN's bits apart.
    let nan = |f: &[MetricFamily]| {
        f.last().unwrap().get_metric()[0]
            .get_summary()
            .get_quantile()[0]
            .value()
    };
    assert!(nan(&decoded).is_nan());
    let strip = |mut f: Vec<MetricFamily>| {
        f.last_mut().unwrap().mut_metric()[0]
            .summary
            .mut_or_insert_default()
            .quantile[0]
            .value = Some(0.0);
        f
    };
    assert_eq!(strip(decoded), strip(families.clone()));
    // What `prometheus`'s own encoder writes reads back the same.
    let mut theirs = Vec::new();
    prometheus::Encoder::encode(&prometheus::ProtobufEncoder::new(), &families, &mut theirs)
        .unwrap();
    assert_eq!(strip(decode(&theirs)), strip(decode(&bytes)));
}

#[test]
fn a_family_without_samples_is_refused() {
    let mut family = MetricFamily::default();
    family.set_name("empty".to_owned());
    let err = encode(&[family], &Extras::default(), None, &mut Vec::new()).unwrap_err();
    assert!(err.contains("\"empty\""), "{err}");
}

/// A varint from the front of `bytes`.
fn read_varint(bytes: &mut &[u8]) -> u64 {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first().expect("a varint");
        *bytes = rest;
        n |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            break;
        }
    }
    n
}

fn unzigzag(n: u64) -> i64 {
    (n >> 1) as i64 ^ -((n & 1) as i64)
}

/// The native fields of a decoded histogram, as (schema, zero threshold,
/// zero count, spans, deltas).
type Native = (i64, f64, u64, Vec<(i64, u64)>, Vec<i64>);

fn native_of(h: &Histogram) -> Native {
    let (mut schema, mut threshold, mut zero) = (None, None, None);
    let (mut spans, mut deltas) = (Vec::new(), Vec::new());
    for (field, value) in h.special_fields.unknown_fields().iter() {
        match (field, value) {
            (5, UnknownValueRef::Varint(n)) => schema = Some(unzigzag(n)),
            (6, UnknownValueRef::Fixed64(bits)) => threshold = Some(f64::from_bits(bits)),
            (7, UnknownValueRef::Varint(n)) => zero = Some(n),
            (12, UnknownValueRef::LengthDelimited(mut span)) => {
                let (mut offset, mut length) = (0, 0);
                while !span.is_empty() {
                    match read_varint(&mut span) {
                        0x08 => offset = unzigzag(read_varint(&mut span)),
                        0x10 => length = read_varint(&mut span),
                        other => panic!("span key {other}"),
                    }
                }
                spans.push((offset, length));
            }
            (13, UnknownValueRef::LengthDelimited(mut packed)) => {
                while !packed.is_empty() {
                    deltas.push(unzigzag(read_varint(&mut packed)));
                }
            }
            (field, value) => panic!("unexpected field {field}: {value:?}"),
        }
    }
    (
        schema.unwrap(),
        threshold.unwrap(),
        zero.unwrap(),
        spans,
        deltas,
    )
}

/// Per bucket index, the count the spans and deltas give.
fn bucket_counts(spans: &[(i64, u64)], deltas: &[i64]) -> Vec<(i64, u64)> {
    let mut out = Vec::new();
    let (mut index, mut count, mut d) = (0i64, 0i64, deltas.iter());
    for (s, &(offset, length)) in spans.iter().enumerate() {
        index = if s == 0 { offset } else { index + offset };
        for _ in 0..length {
            count += d.next().unwrap();
            out.push((index, count as u64));
            index += 1;
        }
    }
    assert!(d.next().is_none(), "a delta per bucket");
    out
}

/// A pool with native histograms: its wait and duration samples carry
/// schema, zero threshold, zero count, spans and deltas as the proto
/// numbers them, the sample count is the buckets' total, and the classic
/// buckets stay beside them; other samples are untouched.
#[test]
fn native_histograms_are_written_with_their_fields() {
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .exporter_id("native")
        .registry(registry.clone())
        .native_histograms(3)
        .build()
        .unwrap();
    for k in 0..20u64 {
        pool.submit(move || std::thread::sleep(std::time::Duration::from_micros(k * 50)))
            .unwrap()
            .join()
            .unwrap();
    }
    // A failed task, for the `result="failed"` histogram.
    let _ = pool.submit_fallible(|| Err::<(), _>("no")).unwrap().join();
    let (families, extras) = with_extras(|| registry.gather());
    let decoded = decode(&encoded(&families, &extras));
    let mut natives = 0;
    for family in &decoded {
        for m in family.get_metric() {
            let h = m.get_histogram();
            if h.special_fields.unknown_fields().iter().next().is_none() {
                continue;
            }
            natives += 1;
            let (schema, threshold, zero, spans, deltas) = native_of(h);
            assert_eq!((schema, threshold), (3, 2f64.powi(-128)));
            let buckets = bucket_counts(&spans, &deltas);
            let total: u64 = zero + buckets.iter().map(|b| b.1).sum::<u64>();
            assert_eq!(h.get_sample_count(), total, "{}", family.name());
            assert_eq!(h.get_bucket().len(), crate::DEFAULT_BUCKETS.len());
            let expected = extras.native(family.name(), m.get_label()).unwrap();
            let expected: Vec<(i64, u64)> = expected
                .buckets()
                .into_iter()
                .map(|(i, n)| (i64::from(i), n))
                .collect();
            assert_eq!(buckets, expected);
        }
    }
    // The wait, the completed and the failed durations.
    assert_eq!(natives, 3);
    let wait = decoded
        .iter()
        .find(|f| f.name() == "executor_task_wait_seconds")
        .unwrap();
    assert_eq!(wait.get_metric()[0].get_histogram().get_sample_count(), 21);
}

/// An exemplar message as a bucket's field 3 carries it.
#[test]
fn an_exemplar_is_written_as_the_proto_defines_it() {
    let mut out = Vec::new();
    exemplar(
        &mut out,
        &[("trace_id", "ab")],
        0.5,
        Some((1_700_000_000, 7)),
    );
    let mut expected = vec![0x0a, 14, 0x0a, 8];
    expected.extend_from_slice(b"trace_id");
    expected.extend_from_slice(&[0x12, 2, b'a', b'b', 0x11]);
    expected.extend_from_slice(&0.5f64.to_le_bytes());
    expected.extend_from_slice(&[0x1a, 8, 0x08, 0x80, 0xe2, 0xcf, 0xaa, 0x06, 0x10, 7]);
    assert_eq!(out, expected);
}

/// The labels and value of an exemplar message.
fn exemplar_fields(mut bytes: &[u8]) -> (Vec<u8>, f64) {
    let (mut labels, mut value) = (Vec::new(), f64::NAN);
    while !bytes.is_empty() {
        let key = read_varint(&mut bytes);
        match (key >> 3, key & 7) {
            (2, 1) => {
                let (v, rest) = bytes.split_at(8);
                value = f64::from_le_bytes(v.try_into().unwrap());
                bytes = rest;
            }
            (field, 2) => {
                let len = read_varint(&mut bytes) as usize;
                let (body, rest) = bytes.split_at(len);
                if field == 1 {
                    labels.extend_from_slice(body);
                }
                bytes = rest;
            }
            other => panic!("unexpected field in an exemplar: {other:?}"),
        }
    }
    (labels, value)
}

/// A pool's exemplars reach its buckets in the exposition, each in the
/// bucket of its value, the `+Inf` one on a bucket of its own.
#[test]
fn bucket_exemplars_are_written_on_their_buckets() {
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .exporter_id("ex")
        .registry(registry.clone())
        // Every duration over 1 µs: in `+Inf`.
        .duration_buckets(vec![0.000_001])
        .exemplar(|| crate::ExemplarLabels::new([("trace_id", "4bf92f35")]))
        .build()
        .unwrap();
    pool.submit(|| std::thread::sleep(std::time::Duration::from_millis(2)))
        .unwrap()
        .join()
        .unwrap();
    let (families, extras) = with_extras(|| registry.gather());
    let source = ExemplarSource::of(&registry);
    assert!(source.is_some(), "a series with a hook keeps exemplars");
    let mut out = Vec::new();
    encode(&families, &extras, source.as_ref(), &mut out).unwrap();
    let mut found = Vec::new();
    for family in decode(&out) {
        for m in &family.metric {
            let Some(h) = m.histogram.as_ref() else {
                continue;
            };
            let mut below = 0.0;
            for b in &h.bucket {
                let bound = b.upper_bound();
                for (field, value) in b.special_fields.unknown_fields().iter() {
                    let (3, UnknownValueRef::LengthDelimited(bytes)) = (field, value) else {
                        panic!("unexpected field {field} in a bucket");
                    };
                    let (labels, v) = exemplar_fields(bytes);
                    assert!(labels.windows(8).any(|w| w == b"4bf92f35"), "{labels:?}");
                    assert!(below < v && v <= bound, "{v} in ({below}, {bound}]");
                    found.push((family.name().to_owned(), bound));
                }
                below = bound;
            }
            if let Some(last) = h.bucket.last().filter(|b| b.upper_bound() == f64::INFINITY) {
                assert_eq!(
                    last.cumulative_count(),
                    h.sample_count(),
                    "+Inf holds every sample"
                );
            }
        }
    }
    assert!(
        found.contains(&("executor_tasks_duration_seconds".to_owned(), f64::INFINITY)),
        "the 2 ms duration's exemplar on an explicit +Inf bucket: {found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(name, _)| name == "executor_task_wait_seconds"),
        "the wait's exemplar: {found:?}"
    );
}

#[test]
fn long_messages_get_their_length_in_several_bytes() {
    let mut out = Vec::new();
    delimited(&mut out, |out| out.extend(std::iter::repeat_n(7u8, 300)));
    assert_eq!(&out[..2], &[0xac, 0x02]);
    assert_eq!(out.len(), 302);
    assert!(out[2..].iter().all(|&b| b == 7));
}

/// Size and encode time of the protobuf exposition of 100 pools, classic
/// histograms against native ones (schema 3, classic buckets kept or not),
/// for the docs; run with
/// `cargo test --release --all-features --lib scrape_of_100_pools -- --ignored --nocapture`.
/// Each pool's wait and duration histograms hold 1000 durations spread
/// evenly on a log scale from 1 µs to 1 s (20 powers of two: 160 native
/// buckets at schema 3, the most exposed before the schema is lowered).
#[test]
#[ignore = "prints figures; run on demand"]
fn scrape_of_100_pools_classic_against_native() {
    use crate::ExecutorExporter;
    let variants: [(&str, Option<i8>, bool); 3] = [
        ("classic", None, true),
        ("native(3) + classic", Some(3), true),
        ("native(3) alone", Some(3), false),
    ];
    for (name, schema, classic) in variants {
        let registry = Registry::new();
        let exporters: Vec<ExecutorExporter> = (0..100)
            .map(|i| {
                let mut b = ExecutorExporter::builder()
                    .exporter_id(format!("pool-{i}"))
                    .registry(registry.clone());
                if let Some(schema) = schema {
                    b = b.native_histograms(schema).classic_buckets(classic);
                }
                b.build().unwrap()
            })
            .collect();
        for exporter in &exporters {
            for k in 0..1000u32 {
                let nanos = (1e3 * 1e6f64.powf(f64::from(k) / 999.0)) as u64;
                exporter.series().started(nanos);
                exporter.series().finished(nanos, None);
            }
        }
        let scrape = || {
            let (families, extras) = with_extras(|| registry.gather());
            encoded(&families, &extras)
        };
        let bytes = scrape();
        // The fastest of 100: the least disturbed by other work on the host.
        let per_scrape = (0..100)
            .map(|_| {
                let start = std::time::Instant::now();
                std::hint::black_box(scrape());
                start.elapsed()
            })
            .min()
            .unwrap_or_default();
        let decoded = decode(&bytes);
        let wait = decoded
            .iter()
            .find(|f| f.name() == "executor_task_wait_seconds")
            .unwrap();
        assert_eq!(wait.get_metric().len(), 100);
        assert_eq!(
            wait.get_metric()[0].get_histogram().get_sample_count(),
            1000
        );
        eprintln!(
            "{name}: {} bytes, {:.2} ms per scrape (gather and encode, fastest of 100)",
            bytes.len(),
            per_scrape.as_secs_f64() * 1e3
        );
    }
}

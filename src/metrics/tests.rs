//! Unit tests of the metrics: failure reasons, registry bookkeeping, buckets, the catalogue.
use prometheus::Registry;

use super::buckets::resolve_buckets;
use super::catalogue::{Kind, CATALOGUE};
use super::collector::FAMILIES;
use super::*;
use crate::error::FailureReason;

/// The failure reasons of `exporter_id`'s series in `registry`, with
/// their counts, read from the text exposition.
fn failures(registry: &Registry, exporter_id: &str) -> Vec<(String, String)> {
    let mut buf = Vec::new();
    prometheus::Encoder::encode(&crate::TextEncoder::new(), &registry.gather(), &mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let prefix = format!(r#"executor_task_failures_total{{executor="{exporter_id}","#);
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|rest| {
            let (labels, value) = rest.split_once("} ").unwrap();
            let reason = labels.split_once("reason=\"").unwrap().1;
            (reason.trim_end_matches('"').to_owned(), value.to_owned())
        })
        .collect()
}

/// Reasons no executor of a series said it can fail with stay out of the
/// exposition until one counts a failure, and then appear with it.
#[test]
fn failure_reasons_are_exposed_once_expected_or_counted() {
    let registry = Registry::new();
    let exporter = ExecutorExporter::builder()
        .exporter_id("reasons")
        .registry(registry.clone())
        .build()
        .unwrap();
    assert_eq!(failures(&registry, "reasons"), []);
    exporter
        .series()
        .expect_failures(&FailureReason::IN_PROCESS);
    let zero = |r: &str| (r.to_owned(), "0".to_owned());
    assert_eq!(
        failures(&registry, "reasons"),
        [zero("broken"), zero("error"), zero("panic")]
    );
    exporter.series().failed_unstarted(FailureReason::Timeout);
    assert_eq!(
        failures(&registry, "reasons"),
        [
            zero("broken"),
            zero("error"),
            zero("panic"),
            ("timeout".to_owned(), "1".to_owned())
        ]
    );
}

/// Each registry's collector is forgotten once the registry and its
/// exporters are gone (it was kept for the life of the process, and
/// every later build probed it).
#[test]
fn collectors_of_dropped_registries_are_forgotten() {
    // A namespace of its own: other tests build exporters concurrently.
    const NS: &str = "forgotten_collectors_test";
    let live = || FAMILIES.live().iter().filter(|f| f.namespace == NS).count();
    let entries = || FAMILIES.len();
    let kept = Registry::new();
    let build = |registry: &Registry, id: &str| {
        ExecutorExporter::builder()
            .namespace(NS)
            .exporter_id(id)
            .registry(registry.clone())
            .build()
            .unwrap()
    };
    let _kept = build(&kept, "kept");
    for i in 0..200 {
        let registry = Registry::new();
        let exporter = build(&registry, &format!("batch-{i}"));
        drop((registry, exporter));
    }
    assert_eq!(live(), 1, "only the kept registry's collector is alive");
    // The next build prunes the dead entries; fewer than 200 remain even
    // with other tests' live collectors in the list.
    let _again = build(&kept, "kept-too");
    assert_eq!(live(), 1, "the kept registry's collector is found again");
    assert!(entries() < 100, "{} entries kept", entries());
}

#[test]
fn exponential_buckets_up_to_the_largest_float_are_valid() {
    let b = resolve_buckets(&None, &Some((1.0, f64::MAX, 10.0)), "w").unwrap();
    assert_eq!(b.len(), 309, "1, 10, ... 1e308");
    assert!(b.iter().all(|x| x.is_finite()));
}

#[test]
fn empty_label_values_are_build_errors() {
    for builder in [
        ExecutorExporter::builder().exporter_id(""),
        ExecutorExporter::builder().executor_type(""),
    ] {
        let err = builder.registry(Registry::new()).build().unwrap_err();
        assert!(err.to_string().contains("must not be empty"), "{err}");
    }
}

#[test]
fn exponential_buckets_include_both_ends() {
    let b = resolve_buckets(&None, &Some((0.001, 1.0, 10.0)), "w").unwrap();
    assert_eq!(b.len(), 4);
    assert!((b[3] - 1.0).abs() < 1e-12);
}

#[test]
fn default_buckets_are_valid_and_span_microseconds_to_minutes() {
    let b = resolve_buckets(&Some(DEFAULT_BUCKETS.to_vec()), &None, "w").unwrap();
    assert_eq!(b[0], 1e-6);
    assert!(*b.last().unwrap() >= 60.0);
}

#[test]
fn metrics_table_names_are_unique_and_counters_end_in_total() {
    let mut names: Vec<_> = CATALOGUE.iter().map(|m| m.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), CATALOGUE.len());
    for m in CATALOGUE {
        assert_eq!(
            m.kind == Kind::Counter,
            m.name.ends_with("_total"),
            "{}",
            m.name
        );
    }
}

/// Rows `| `executor_name` | type | extra label | ... |` of a Markdown
/// table (also inside `//!` doc comments), as (name, type, extra label).
fn table_rows(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .map(|line| line.trim_start_matches("//!").trim())
        .filter_map(|line| {
            let cells: Vec<&str> = line.strip_prefix('|')?.split('|').map(str::trim).collect();
            let name = cells
                .first()?
                .strip_prefix("`executor_")?
                .strip_suffix('`')?;
            let kind = cells.get(1)?;
            let extra = cells.get(2)?.split('`').nth(1).unwrap_or("");
            Some((name.to_owned(), kind.to_string(), extra.to_owned()))
        })
        .collect()
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    }
}

/// The catalogue is the one declaration of the families: the exposition of a
/// real registry, the README's table and the crate docs' table all match it
/// (name, type, extra label, help), so none of them can drift.
#[test]
fn catalogue_matches_the_exposition_and_both_tables() {
    let registry = Registry::new();
    let exporter = ExecutorExporter::builder()
        .registry(registry.clone())
        .build()
        .unwrap();
    exporter.series().expect_failures(&FailureReason::ALL);
    let _step = exporter.step("decode");
    // `queue_capacity` has a sample only while a bounded queue is counted.
    let _queue = series::Capacity::register(exporter.series().clone(), 0).with_queue(Some(4));
    let gathered = registry.gather();
    let exposed: Vec<String> = gathered.iter().map(|f| f.name().to_owned()).collect();
    let expected: Vec<String> = CATALOGUE
        .iter()
        .map(|f| format!("executor_{}", f.name))
        .collect();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(exposed, sorted, "the exposition's families");
    for family in CATALOGUE {
        let name = format!("executor_{}", family.name);
        let got = gathered.iter().find(|f| f.name() == name).unwrap();
        assert_eq!(got.help(), family.help, "{name}");
        let kind = match got.get_field_type() {
            prometheus::proto::MetricType::COUNTER => Kind::Counter,
            prometheus::proto::MetricType::GAUGE => Kind::Gauge,
            _ => Kind::Histogram,
        };
        assert_eq!(kind, family.kind, "{name}");
        for sample in got.get_metric() {
            let labels: Vec<&str> = sample.get_label().iter().map(|l| l.name()).collect();
            let mut want = vec!["executor", "executor_type"];
            want.extend(family.extra_label);
            want.sort_unstable();
            let mut labels = labels;
            labels.sort_unstable();
            assert_eq!(labels, want, "{name}");
        }
    }
    let catalogue: Vec<(String, String, String)> = CATALOGUE
        .iter()
        .map(|f| {
            let extra = f.extra_label.unwrap_or("").to_owned();
            (f.name.to_owned(), kind_name(f.kind).to_owned(), extra)
        })
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for doc in ["README.md", "src/lib.rs"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        assert_eq!(table_rows(&text), catalogue, "the metrics table of {doc}");
    }
}

/// Native histogram options are checked at build, each error saying what
/// to set; a series is shared only with the same native options.
#[test]
fn native_histogram_options_are_checked() {
    let build = |b: ExecutorExporterBuilder| b.registry(Registry::new()).build();
    for schema in [-5, 9, i8::MIN, i8::MAX] {
        let err = build(ExecutorExporter::builder().native_histograms(schema)).unwrap_err();
        assert!(err.is_buckets(), "{err}");
        assert!(err.to_string().contains("from -4 to 8"), "{err}");
    }
    for schema in [-4, 0, 8] {
        let exporter = build(ExecutorExporter::builder().native_histograms(schema)).unwrap();
        assert_eq!(exporter.native_histogram_schema(), Some(schema));
        assert!(exporter.classic_buckets());
    }
    let err = build(ExecutorExporter::builder().classic_buckets(false)).unwrap_err();
    assert!(err.is_buckets(), "{err}");
    assert!(
        err.to_string().contains("native_histograms(schema)"),
        "{err}"
    );
    let plain = build(ExecutorExporter::builder()).unwrap();
    assert_eq!(plain.native_histogram_schema(), None);

    let registry = Registry::new();
    let with =
        |b: ExecutorExporterBuilder| b.exporter_id("shared").registry(registry.clone()).build();
    with(ExecutorExporter::builder().native_histograms(3)).unwrap();
    with(ExecutorExporter::builder().native_histograms(3)).unwrap();
    for other in [
        ExecutorExporter::builder(),
        ExecutorExporter::builder().native_histograms(4),
        ExecutorExporter::builder()
            .native_histograms(3)
            .classic_buckets(false),
    ] {
        let err = with(other).unwrap_err();
        assert!(err.is_registry(), "{err}");
        assert!(err.to_string().contains("native_histograms"), "{err}");
    }
}

//! Native histograms end to end: a pool with `native_histograms(3)` runs
//! tasks of known durations, `MetricsServer` serves them in its protobuf
//! exposition, and a real Prometheus (Debian package `prometheus`, run with
//! `--enable-feature=native-histograms`) stores them as native histograms:
//! `histogram_count`, `histogram_sum` and `histogram_quantile` over the raw
//! series and over a `rate` give what the program measured, the quantile
//! within the bucket (the schema's resolution) of the observation it
//! ranks. With exemplar storage on too, the bucket exemplars the protobuf
//! exposition carries come back through `query_exemplars`.
//!
//! Listens on 127.0.0.1 only, with deadlines; without Prometheus it prints
//! SKIPPED and passes, except in CI.
#![cfg(feature = "protobuf")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use executor_exporter::prometheus::Registry;
use executor_exporter::{ExemplarLabels, MetricsServer, ThreadPoolExecutor};
use support::{PrometheusConfig, PrometheusServer};

const SCHEMA: i8 = 3;
const TASKS: u64 = 21;

/// A single value of `promql`, once it is there.
fn value(prometheus: &PrometheusServer, promql: &str) -> f64 {
    let samples = prometheus
        .wait_for(promql, |s| s.len() == 1, Duration::from_secs(10))
        .unwrap_or_else(|err| panic!("{err}\n--- prometheus log ---\n{}", prometheus.log()));
    samples[0].value
}

/// The bounds `(lower, upper]` of the bucket of schema `SCHEMA` holding
/// `seconds`.
fn bucket_of(seconds: f64) -> (f64, f64) {
    let per_doubling = f64::from(1u32 << SCHEMA);
    let index = (seconds.log2() * per_doubling).ceil();
    (
        2f64.powf((index - 1.0) / per_doubling),
        2f64.powf(index / per_doubling),
    )
}

#[test]
fn prometheus_computes_quantiles_of_the_native_histograms() {
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .exporter_id("native")
        .max_workers(1)
        .registry(registry.clone())
        .native_histograms(SCHEMA)
        .exemplar(|| ExemplarLabels::new([("trace_id", "native-e2e")]))
        .build()
        .unwrap();
    let server = MetricsServer::start("127.0.0.1:0", registry).unwrap();
    let config = PrometheusConfig {
        feature_flags: vec![
            "native-histograms".to_owned(),
            "exemplar-storage".to_owned(),
        ],
        ..PrometheusConfig::scraping([server.local_addr().to_string()])
    };
    let Some(prometheus) = PrometheusServer::start(&config) else {
        return;
    };
    prometheus
        .wait_for_targets_up(Duration::from_secs(20))
        .unwrap_or_else(|err| panic!("{err}\n--- prometheus log ---\n{}", prometheus.log()));
    let selector = r#"executor="native",result="completed""#;
    let duration = format!("executor_tasks_duration_seconds{{{selector}}}");
    // Scraped once before the tasks, at zero: a rate has a start.
    assert_eq!(
        value(&prometheus, &format!("histogram_count({duration})")),
        0.0
    );

    // Durations of 1 to 21 ms, each as the task measured it.
    let measured = Arc::new(Mutex::new(Vec::new()));
    for ms in 1..=TASKS {
        let measured = measured.clone();
        pool.submit(move || {
            let start = Instant::now();
            std::thread::sleep(Duration::from_millis(ms));
            measured.lock().unwrap().push(start.elapsed().as_secs_f64());
        })
        .unwrap()
        .join()
        .unwrap();
    }
    let mut measured = measured.lock().unwrap().clone();
    measured.sort_by(f64::total_cmp);

    prometheus
        .wait_for(
            &format!("histogram_count({duration})"),
            |s| s.len() == 1 && s[0].value == TASKS as f64,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|err| panic!("{err}"));
    let sum = value(&prometheus, &format!("histogram_sum({duration})"));
    let expected: f64 = measured.iter().sum();
    // The pool's clock sees a task's whole run, a little more than the
    // task itself measures.
    assert!(
        sum >= expected && sum < expected + 0.01,
        "sum {sum}, measured {expected}"
    );

    // Rank 0.5 * 21 = 10.5: the 11th duration's bucket.
    let ranked = measured[TASKS as usize / 2];
    let (lower, upper) = bucket_of(ranked);
    for promql in [
        format!("histogram_quantile(0.5, {duration})"),
        format!("histogram_quantile(0.5, rate({duration}[1m]))"),
    ] {
        let median = value(&prometheus, &promql);
        assert!(
            median >= lower * 0.99 && median <= upper * 1.01,
            "{promql} = {median}: not in ({lower}, {upper}], the bucket of the \
             measured median {ranked} (durations {measured:?})"
        );
    }
    // The wait histogram is native too: one start per task.
    let wait = r#"executor_task_wait_seconds{executor="native"}"#;
    assert_eq!(
        value(&prometheus, &format!("histogram_count({wait})")),
        TASKS as f64
    );

    // The exemplars rode in the same protobuf scrapes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = prometheus
            .api(
                "/api/v1/query_exemplars",
                &[
                    ("query", duration.as_str()),
                    ("start", "0"),
                    ("end", "4102444800"),
                ],
            )
            .unwrap_or_else(|err| panic!("{err}"));
        let traces: Vec<&str> = answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|series| series["exemplars"].as_array().into_iter().flatten())
            .filter_map(|e| e["labels"]["trace_id"].as_str())
            .collect();
        if traces.contains(&"native-e2e") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no exemplar of {duration} after 10 s: {answer}\n--- prometheus log ---\n{}",
            prometheus.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

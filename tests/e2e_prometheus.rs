//! End to end with the real thing: a `ThreadPoolExecutor` runs a known
//! workload in this process, and a real Prometheus (Debian package
//! `prometheus`) scrapes it, from `MetricsServer` (as OpenMetrics, which
//! Prometheus asks for by default, or protobuf), from a `prometheus-client`
//! registry, or through a real Pushgateway (`prometheus-pushgateway`). Every
//! value is asserted through Prometheus's query API, and every dashboard
//! query and alert rule is evaluated against this live data. `promtool check
//! metrics` checks the served text exposition with label values that need
//! escaping, and promtool's OpenMetrics parser reads the OpenMetrics ones.
//!
//! Everything listens on 127.0.0.1 with ports chosen free, every wait has a
//! deadline, and the servers are stopped when each test ends. Without the
//! tools the tests print SKIPPED and pass, except in CI (env `CI` set), where
//! they fail.
#![cfg(feature = "http")]

mod common;
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::Gate;
use executor_exporter::prometheus::Registry;
use executor_exporter::{MetricsServer, TaskError, ThreadPoolExecutor};
use serde_json::Value;
use support::{require_tool, run_with_timeout, PrometheusConfig, PrometheusServer, TempDir};

/// Deadline for Prometheus to discover its targets and scrape them (it picks
/// static targets up about 5 s after start).
const TARGETS_UP: Duration = Duration::from_secs(20);

/// Deadline for a value to show up in Prometheus after the program set it
/// (a few scrape intervals).
const SCRAPED: Duration = Duration::from_secs(15);

/// An exporter id that needs escaping in the exposition and in PromQL.
const ID: &str = r#"img "thumbs" \ v2 ✓"#;

const WORKERS: usize = 3;
const COMPLETED_FIRST: usize = 12;
const COMPLETED_LATER: usize = 8;
const PANICS: usize = 3;
const ERRORS: usize = 4;
const CANCELS: usize = 2;
const REJECTS: usize = 2;

/// What the program did, as it counted it itself.
#[derive(Debug, Default)]
struct Done {
    submitted: usize,
    completed: usize,
    panics: usize,
    errors: usize,
    cancelled: usize,
    rejected: usize,
}

fn crate_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A PromQL string literal holding `value`.
fn promql_string(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn pool(registry: &Registry) -> ThreadPoolExecutor {
    ThreadPoolExecutor::builder()
        .max_workers(WORKERS)
        .exporter_id(ID)
        .registry(registry.clone())
        .build()
        .unwrap()
}

/// `n` tasks that complete, each taking about a millisecond.
fn complete(pool: &ThreadPoolExecutor, n: usize, done: &mut Done) {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            pool.submit(move || {
                std::thread::sleep(Duration::from_millis(1));
                i
            })
            .unwrap()
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.join(), Ok(i));
    }
    done.submitted += n;
    done.completed += n;
}

/// Panics, `Err`s, cancels (while every worker is held busy) and rejects.
fn fail_cancel_reject(pool: &ThreadPoolExecutor, done: &mut Done, reject: bool) {
    for i in 0..PANICS {
        let handle = pool
            .submit(move || -> u8 { panic!("e2e panic {i}") })
            .unwrap();
        assert!(matches!(handle.join(), Err(TaskError::Panicked { .. })));
    }
    for _ in 0..ERRORS {
        let handle = pool
            .submit_fallible(|| "not a number".parse::<u32>())
            .unwrap();
        assert!(handle.join().unwrap().is_err());
    }
    done.submitted += PANICS + ERRORS;
    done.panics += PANICS;
    done.errors += ERRORS;

    let gate = Gate::new();
    let busy: Vec<_> = (0..WORKERS)
        .map(|_| {
            let gate = gate.clone();
            pool.submit(move || gate.wait()).unwrap()
        })
        .collect();
    let queued: Vec<_> = (0..CANCELS).map(|_| pool.submit(|| ()).unwrap()).collect();
    for handle in &queued {
        assert!(handle.cancel(), "a queued task behind busy workers cancels");
    }
    gate.open();
    for handle in busy {
        assert_eq!(handle.join(), Ok(()));
    }
    for handle in queued {
        assert_eq!(handle.join(), Err(TaskError::Cancelled));
    }
    done.submitted += WORKERS + CANCELS;
    done.completed += WORKERS;
    done.cancelled += CANCELS;

    if reject {
        pool.shutdown();
        for _ in 0..REJECTS {
            assert!(pool.submit(|| ()).is_err());
        }
        done.rejected += REJECTS;
    }
}

/// The single value of `promql`, which must give exactly one series.
fn single(prometheus: &PrometheusServer, promql: &str) -> f64 {
    let samples = prometheus
        .query_vector(promql)
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(samples.len(), 1, "{promql}: {samples:?}");
    samples[0].value
}

/// Waits until `promql` gives one series equal to `expected`.
fn wait_value(prometheus: &PrometheusServer, promql: &str, expected: usize) {
    prometheus
        .wait_for(
            promql,
            |s| s.len() == 1 && s[0].value == expected as f64,
            SCRAPED,
        )
        .unwrap_or_else(|err| panic!("{err}\n--- prometheus log ---\n{}", prometheus.log()));
}

/// Asserts every count Prometheus holds for the executor selected by
/// `selector` (a PromQL label matcher list without braces).
fn assert_counts(prometheus: &PrometheusServer, selector: &str, done: &Done) {
    let alive = if done.rejected > 0 { 0 } else { WORKERS };
    let value =
        |metric: &str, extra: &str| single(prometheus, &format!("{metric}{{{selector}{extra}}}"));
    let expected = [
        ("executor_submitted_tasks_total", "", done.submitted),
        (
            "executor_tasks_duration_seconds_count",
            r#",result="completed""#,
            done.completed,
        ),
        (
            "executor_tasks_duration_seconds_count",
            r#",result="failed""#,
            done.panics + done.errors,
        ),
        (
            "executor_task_failures_total",
            r#",reason="panic""#,
            done.panics,
        ),
        (
            "executor_task_failures_total",
            r#",reason="error""#,
            done.errors,
        ),
        ("executor_cancelled_tasks_total", "", done.cancelled),
        ("executor_rejected_tasks_total", "", done.rejected),
        // Rejects come after `shutdown`: the pool's capacity and threads are gone.
        ("executor_max_workers", "", alive),
        ("executor_workers", "", alive),
        ("executor_initialized_workers_total", "", WORKERS),
        ("executor_queued_tasks", "", 0),
        ("executor_running_tasks", "", 0),
        (
            "executor_task_wait_seconds_count",
            "",
            done.submitted - done.cancelled,
        ),
    ];
    let mut wrong = Vec::new();
    for (metric, extra, want) in expected {
        let got = value(metric, extra);
        if got != want as f64 {
            wrong.push(format!(
                "{metric}{{{selector}{extra}}} = {got}, want {want}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "values in Prometheus:\n{}",
        wrong.join("\n")
    );
    // No other executor reports a failure reason: the others are 0.
    let total_failures = single(
        prometheus,
        &format!("sum(executor_task_failures_total{{{selector}}})"),
    );
    assert_eq!(total_failures, (done.panics + done.errors) as f64);
}

/// `histogram_quantile` over the wait and duration buckets gives a number.
fn assert_quantiles_finite(prometheus: &PrometheusServer, selector: &str) {
    for family in [
        "executor_task_wait_seconds",
        "executor_tasks_duration_seconds",
    ] {
        let promql = format!(
            "histogram_quantile(0.99, sum by (le) (rate({family}_bucket{{{selector}}}[1m])))"
        );
        let value = single(prometheus, &promql);
        assert!(value.is_finite(), "{promql} = {value}");
        assert!(value >= 0.0, "{promql} = {value}");
    }
}

/// `(panel title, expr)` of every query of the dashboard, with Grafana's
/// variables replaced the way Grafana would ("All" executors, 1m windows).
fn dashboard_queries() -> Vec<(String, String)> {
    fn walk(list: &Value, out: &mut Vec<(String, String)>) {
        for panel in list.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.to_owned(), expr.to_owned()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let text = std::fs::read_to_string(crate_path("dashboards/executor-exporter.json"))
        .expect("read the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    walk(&dashboard["panels"], &mut queries);
    for (_, expr) in &mut queries {
        for (variable, value) in [
            ("${executor}", ".*"),
            ("$executor", ".*"),
            ("${__rate_interval}", "1m"),
            ("$__rate_interval", "1m"),
            ("${__interval}", "1m"),
            ("$__interval", "1m"),
            ("${__range}", "5m"),
            ("$__range", "5m"),
        ] {
            *expr = expr.replace(variable, value);
        }
    }
    queries
}

/// Every dashboard query evaluates without error; most return data.
fn assert_dashboard_evaluates(prometheus: &PrometheusServer) {
    let queries = dashboard_queries();
    assert!(!queries.is_empty(), "no dashboard query found");
    let mut errors = Vec::new();
    let mut with_data = 0;
    for (title, expr) in &queries {
        match prometheus.query(expr) {
            Ok(answer) => {
                let result = &answer["data"]["result"];
                if result.as_array().is_some_and(|r| !r.is_empty()) {
                    with_data += 1;
                }
            }
            Err(err) => errors.push(format!("panel {title:?}: {err}")),
        }
    }
    assert!(
        errors.is_empty(),
        "dashboard queries failed:\n{}",
        errors.join("\n")
    );
    assert!(with_data > 0, "no dashboard query returned data");
    eprintln!(
        "dashboard: {} queries evaluated on live data, {with_data} with data",
        queries.len()
    );
}

/// Every alert rule has been evaluated on live data, with health `ok`.
fn assert_rules_evaluate(prometheus: &PrometheusServer) {
    let deadline = std::time::Instant::now() + SCRAPED;
    loop {
        let answer = prometheus.rules().unwrap_or_else(|err| panic!("{err}"));
        let rules: Vec<Value> = answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let bad: Vec<String> = rules
            .iter()
            .filter(|rule| rule["health"] != "ok")
            .map(|rule| format!("{}: {} {}", rule["name"], rule["health"], rule["lastError"]))
            .collect();
        if !rules.is_empty() && bad.is_empty() {
            for rule in &rules {
                let query = rule["query"].as_str().unwrap_or_default();
                prometheus
                    .query(query)
                    .unwrap_or_else(|err| panic!("{err}"));
            }
            eprintln!("alerts: {} rules evaluated on live data", rules.len());
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rules not all healthy: {bad:?} ({} loaded)",
            rules.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Prometheus asks for OpenMetrics first by default; a server with the
/// default options answers with the text format (checked by replaying the
/// `Accept` header Prometheus sent to a second target, and by the family
/// names Prometheus keeps as metadata, with `_total` when it parsed text);
/// every value, dashboard query and rule comes out right.
#[test]
fn scraped_values_equal_what_the_program_did() {
    let recorder = AcceptRecorder::start_empty();
    scrape_and_check(
        &[],
        std::slice::from_ref(&recorder.addr),
        Target::MetricsServer { openmetrics: false },
        |server, prometheus| {
            let accept = recorder.accept().expect("Prometheus scraped the recorder");
            assert!(
                accept.starts_with("application/openmetrics-text;version=1.0.0"),
                "Prometheus asked for {accept}"
            );
            assert_eq!(
                content_type_for(server, &accept),
                "text/plain; version=0.0.4; charset=utf-8",
                "answer to Accept: {accept}"
            );
            assert_parsed_as(prometheus, false);
        },
    );
}

/// A server built with `openmetrics(true)` answers Prometheus' default
/// `Accept` with OpenMetrics (the metadata family names lose `_total`), and
/// every value, dashboard query and rule comes out as with text.
#[test]
fn scraped_as_openmetrics_values_equal_what_the_program_did() {
    let recorder = AcceptRecorder::start_empty();
    scrape_and_check(
        &[],
        std::slice::from_ref(&recorder.addr),
        Target::MetricsServer { openmetrics: true },
        |server, prometheus| {
            let accept = recorder.accept().expect("Prometheus scraped the recorder");
            assert!(
                accept.starts_with("application/openmetrics-text;version=1.0.0"),
                "Prometheus asked for {accept}"
            );
            assert_eq!(
                content_type_for(server, &accept),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                "answer to Accept: {accept}"
            );
            assert_parsed_as(prometheus, true);
        },
    );
}

/// Prometheus keeps a counter's metadata under its family name: without
/// `_total` when it parsed OpenMetrics, with it when it parsed text.
fn assert_parsed_as(prometheus: &PrometheusServer, openmetrics: bool) {
    let family = if openmetrics {
        "executor_submitted_tasks"
    } else {
        "executor_submitted_tasks_total"
    };
    let metadata = prometheus
        .api("/api/v1/metadata", &[("metric", family)])
        .unwrap_or_else(|err| panic!("{err}"));
    let kinds: Vec<&str> = metadata["data"][family]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["type"].as_str())
        .collect();
    assert_eq!(kinds, ["counter"], "metadata: {metadata}");
}

/// The pool's families through `prometheus-client`: its registry encoded
/// by `prometheus-client`'s OpenMetrics encoder, served to a real
/// Prometheus, which stores every value the program produced.
#[cfg(feature = "prometheus-client")]
#[test]
fn scraped_from_prometheus_client_values_equal_what_the_program_did() {
    scrape_and_check(&[], &[], Target::PrometheusClient, |_, prometheus| {
        assert_parsed_as(prometheus, true)
    });
}

/// Prometheus with native histograms asks for the protobuf exposition first;
/// with the `protobuf` feature the server answers with it (checked by
/// replaying the `Accept` header Prometheus sent to a second target), and
/// every value, dashboard query and rule comes out as with text.
#[cfg(feature = "protobuf")]
#[test]
fn scraped_as_protobuf_values_equal_what_the_program_did() {
    let recorder = AcceptRecorder::start_empty();
    scrape_and_check(
        &["native-histograms"],
        std::slice::from_ref(&recorder.addr),
        Target::MetricsServer { openmetrics: false },
        |server, _| {
            let accept = recorder.accept().expect("Prometheus scraped the recorder");
            assert!(
                accept.starts_with("application/vnd.google.protobuf;"),
                "Prometheus asked for {accept}"
            );
            let content_type = content_type_for(server, &accept);
            assert_eq!(
            content_type,
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited",
            "answer to Accept: {accept}"
        );
        },
    );
}

/// What Prometheus scrapes the workload's registry through.
enum Target {
    /// `MetricsServer`, in the format Prometheus negotiates, OpenMetrics
    /// offered or not.
    MetricsServer { openmetrics: bool },
    /// A `prometheus-client` registry holding the pool's families, encoded
    /// by `prometheus-client` as OpenMetrics.
    #[cfg(feature = "prometheus-client")]
    PrometheusClient,
}

/// Runs the workload with Prometheus (given `feature_flags`) scraping
/// `target` and `extra_targets`, checks what it stored, then calls `then`
/// with a `MetricsServer` of the registry and Prometheus. Returns at once
/// when Prometheus is not installed (outside CI).
fn scrape_and_check(
    feature_flags: &[&str],
    extra_targets: &[String],
    target: Target,
    then: impl FnOnce(&MetricsServer, &PrometheusServer),
) {
    let registry = Registry::new();
    let pool = pool(&registry);
    let openmetrics = matches!(target, Target::MetricsServer { openmetrics: true });
    // The checks of the gauges' lives run once, in the text variant.
    let text_server = matches!(target, Target::MetricsServer { openmetrics: false });
    let server = MetricsServer::builder()
        .openmetrics(openmetrics)
        .start("127.0.0.1:0", registry.clone())
        .unwrap();
    let _client_target;
    let scraped = match target {
        Target::MetricsServer { .. } => server.local_addr().to_string(),
        #[cfg(feature = "prometheus-client")]
        Target::PrometheusClient => {
            let mut client = executor_exporter::prometheus_client::registry::Registry::default();
            // Every pool of the registry, those built later included.
            pool.exporter().register_into(&mut client);
            let client = std::sync::Arc::new(client);
            let served = AcceptRecorder::serving(move || {
                let mut text = String::new();
                executor_exporter::prometheus_client::encoding::text::encode(&mut text, &client)
                    .unwrap();
                (
                    "application/openmetrics-text; version=1.0.0; charset=utf-8".to_owned(),
                    text,
                )
            });
            let addr = served.addr.clone();
            _client_target = served;
            addr
        }
    };
    let mut targets = vec![scraped];
    targets.extend(extra_targets.iter().cloned());
    let config = PrometheusConfig {
        rule_files: vec![crate_path("alerts/executor-exporter.rules.yml")],
        feature_flags: feature_flags.iter().map(|f| f.to_string()).collect(),
        ..PrometheusConfig::scraping(targets)
    };
    let Some(prometheus) = PrometheusServer::start(&config) else {
        return;
    };
    prometheus
        .wait_for_targets_up(TARGETS_UP)
        .unwrap_or_else(|err| panic!("{err}\n--- prometheus log ---\n{}", prometheus.log()));

    let selector = format!("executor={}", promql_string(ID));
    let submitted = format!("executor_submitted_tasks_total{{{selector}}}");
    // The work is done in two rounds, each seen by a scrape, so that rates
    // over the histograms have an increase to work on.
    let mut done = Done::default();
    complete(&pool, COMPLETED_FIRST, &mut done);
    wait_value(&prometheus, &submitted, done.submitted);
    complete(&pool, COMPLETED_LATER, &mut done);
    fail_cancel_reject(&pool, &mut done, true);
    wait_value(&prometheus, &submitted, done.submitted);
    wait_value(
        &prometheus,
        &format!("executor_rejected_tasks_total{{{selector}}}"),
        done.rejected,
    );

    assert_counts(&prometheus, &selector, &done);
    // The label came through unchanged, escapes and all.
    let samples = prometheus.query_vector(&submitted).unwrap();
    assert_eq!(samples[0].label("executor"), ID);
    assert_eq!(samples[0].label("executor_type"), "thread_pool");
    assert_quantiles_finite(&prometheus, &selector);
    assert_dashboard_evaluates(&prometheus);
    assert_rules_evaluate(&prometheus);
    if feature_flags.is_empty() && text_server {
        assert_stuck_task_is_seen(&prometheus, &registry);
        assert_capacity_and_workers_are_live(&prometheus, &registry);
    }
    then(&server, &prometheus);
}

/// A task blocked for 3 s: a scrape during the block shows an oldest-running
/// age of at least 3 s, and once it has ended the age reads 0, through PromQL.
fn assert_stuck_task_is_seen(prometheus: &PrometheusServer, registry: &Registry) {
    // The workload's pool is shut down by now: a pool of its own.
    let pool = ThreadPoolExecutor::builder()
        .max_workers(1)
        .exporter_id("stuck")
        .registry(registry.clone())
        .build()
        .unwrap();
    let age = r#"executor_oldest_running_task_seconds{executor="stuck"}"#;
    let gate = Gate::new();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let submitted = std::time::Instant::now();
    let blocked = {
        let gate = gate.clone();
        pool.submit(move || {
            started_tx.send(()).unwrap();
            gate.wait()
        })
        .unwrap()
    };
    started_rx
        .recv_timeout(SCRAPED)
        .expect("the blocked task started");
    // The gate opens only once Prometheus has seen the age reach 3 s: the
    // task is blocked for at least that long.
    prometheus
        .wait_for(
            &format!("{age} >= 3"),
            |s| s.len() == 1,
            Duration::from_secs(3) + SCRAPED,
        )
        .unwrap_or_else(|err| panic!("{err}\n--- prometheus log ---\n{}", prometheus.log()));
    let seen = single(prometheus, &format!("max_over_time({age}[1m])"));
    assert!(
        seen <= submitted.elapsed().as_secs_f64(),
        "an age of {seen} s for a task submitted {:?} ago",
        submitted.elapsed()
    );
    gate.open();
    blocked.join().unwrap();
    pool.join();
    prometheus
        .wait_for(age, |s| s.len() == 1 && s[0].value == 0.0, SCRAPED)
        .unwrap_or_else(|err| panic!("{err}\n--- prometheus log ---\n{}", prometheus.log()));
}

/// Pools of 4 and 2 workers under one id, both dropped, then one of 4:
/// `executor_max_workers` reads 4 (the live pools' capacity, not the 10
/// ever built), `executor_workers` the 4 threads alive while 4 tasks hold
/// them, and both read 0 once the last pool is dropped, through PromQL.
fn assert_capacity_and_workers_are_live(prometheus: &PrometheusServer, registry: &Registry) {
    let build = |workers: usize| {
        ThreadPoolExecutor::builder()
            .max_workers(workers)
            .exporter_id("rebuilt")
            .registry(registry.clone())
            .build()
            .unwrap()
    };
    drop((build(4), build(2)));
    let pool = build(4);
    let gate = Gate::new();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let held: Vec<_> = (0..4)
        .map(|_| {
            let (gate, started_tx) = (gate.clone(), started_tx.clone());
            pool.submit(move || {
                started_tx.send(()).unwrap();
                gate.wait()
            })
            .unwrap()
        })
        .collect();
    for _ in 0..4 {
        started_rx.recv_timeout(SCRAPED).expect("the task started");
    }
    wait_value(prometheus, r#"executor_max_workers{executor="rebuilt"}"#, 4);
    wait_value(prometheus, r#"executor_workers{executor="rebuilt"}"#, 4);
    wait_value(
        prometheus,
        r#"executor_workers{executor="rebuilt"} - executor_running_tasks{executor="rebuilt"}"#,
        0,
    );
    gate.open();
    for handle in held {
        handle.join().unwrap();
    }
    drop(pool);
    wait_value(prometheus, r#"executor_max_workers{executor="rebuilt"}"#, 0);
    wait_value(prometheus, r#"executor_workers{executor="rebuilt"}"#, 0);
}

/// A scrape target on 127.0.0.1 that answers every scrape with what its
/// `answer` gives (content type and body) and records the request's `Accept`
/// header; it stops when dropped, after at most [`RECORDER_SCRAPES`] scrapes
/// or after 5 minutes.
struct AcceptRecorder {
    addr: String,
    seen: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const RECORDER_SCRAPES: usize = 300;

impl AcceptRecorder {
    /// A target answering with an empty text exposition.
    fn start_empty() -> AcceptRecorder {
        AcceptRecorder::serving(|| ("text/plain; version=0.0.4".to_owned(), String::new()))
    }

    fn serving(answer: impl Fn() -> (String, String) + Send + 'static) -> AcceptRecorder {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let record = seen.clone();
        let thread = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            let mut scrapes = 0;
            while !stopped.load(Ordering::Relaxed)
                && scrapes < RECORDER_SCRAPES
                && std::time::Instant::now() < deadline
            {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                scrapes += 1;
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(conn);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("accept") {
                            *record.lock().unwrap() = Some(value.trim().to_owned());
                        }
                    }
                    line.clear();
                }
                let (content_type, body) = answer();
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        AcceptRecorder {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn accept(&self) -> Option<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for AcceptRecorder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The `Content-Type` `server` answers a `GET /metrics` with `accept` with.
fn content_type_for(server: &MetricsServer, accept: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(server.local_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply).into_owned();
    reply
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no content type in {reply}"))
}

#[cfg(feature = "push")]
#[test]
fn pushed_values_reach_prometheus_through_the_gateway() {
    use executor_exporter::PushGateway;
    use support::Pushgateway;

    let Some(gateway) = Pushgateway::start() else {
        return;
    };
    let config = PrometheusConfig {
        honor_labels: true,
        ..PrometheusConfig::scraping([gateway.address()])
    };
    let Some(prometheus) = PrometheusServer::start(&config) else {
        return;
    };

    let registry = Registry::new();
    let pool = pool(&registry);
    let pusher = PushGateway::builder(gateway.url(), "e2e batch")
        .grouping_label("instance", "host/7")
        .registry(registry.clone())
        .env_proxy(false)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut done = Done::default();
    complete(&pool, COMPLETED_FIRST, &mut done);
    pusher.push().unwrap();
    prometheus
        .wait_for_targets_up(TARGETS_UP)
        .unwrap_or_else(|err| panic!("{err}\n--- prometheus log ---\n{}", prometheus.log()));

    let selector = format!(
        r#"job="e2e batch",instance="host/7",executor={}"#,
        promql_string(ID)
    );
    let submitted = format!("executor_submitted_tasks_total{{{selector}}}");
    wait_value(&prometheus, &submitted, done.submitted);
    complete(&pool, COMPLETED_LATER, &mut done);
    fail_cancel_reject(&pool, &mut done, true);
    // The batch ends: the final push happens on drop.
    drop(pusher);
    wait_value(&prometheus, &submitted, done.submitted);

    assert_counts(&prometheus, &selector, &done);
    assert_quantiles_finite(&prometheus, &selector);
    assert_eq!(
        single(
            &prometheus,
            r#"executor_exporter_push_failures_total{job="e2e batch",instance="host/7"}"#
        ),
        0.0
    );
}

/// `promtool check metrics` on the served exposition, with label values
/// that need escaping (quotes, backslash, newline, emoji).
#[test]
fn promtool_accepts_the_served_exposition() {
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .max_workers(2)
        .exporter_id("quote \" backslash \\ newline \n emoji 🦀")
        .registry(registry.clone())
        // Exemplars on the OpenMetrics bucket lines, escaped as labels are.
        .exemplar(|| {
            executor_exporter::ExemplarLabels::new([("trace_id", "quote \" backslash \\ 🦀")])
        })
        .build()
        .unwrap();
    let step = pool.exporter().step("parse \"csv\"\\\n🙂");
    for i in 0..10u32 {
        let step = step.clone();
        pool.submit(move || step.time(|| i)).unwrap();
    }
    pool.submit(|| panic!("promtool panic")).unwrap();
    pool.submit_fallible(|| Err::<(), _>("no")).unwrap();
    pool.join();

    let server = MetricsServer::builder()
        .openmetrics(true)
        .start("127.0.0.1:0", registry)
        .unwrap();
    let body = get_metrics(&server);
    assert!(
        body.contains(r#"executor="quote \" backslash \\ newline \n emoji 🦀""#),
        "{body}"
    );
    assert!(
        body.contains("executor_step_duration_seconds_bucket"),
        "{body}"
    );

    let dir = TempDir::new("promtool-metrics");
    let check = |text: &str| {
        let file = dir.path().join("metrics.txt");
        std::fs::write(&file, text).unwrap();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"exec "$0" check metrics < "$1""#)
            .arg(&promtool)
            .arg(&file);
        let output = run_with_timeout(&mut command, Duration::from_secs(30))
            .unwrap_or_else(|err| panic!("{err}"));
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), said)
    };
    // The check can fail: a counter without `_total` is refused.
    let (ok, said) =
        check("# HELP bad_counter A counter.\n# TYPE bad_counter counter\nbad_counter 1\n");
    assert!(!ok, "promtool accepted a bad counter: {said}");
    let (ok, said) = check(&body);
    assert!(
        ok,
        "promtool check metrics failed:\n{said}\n--- exposition ---\n{body}"
    );

    // `promtool check metrics` reads the text format only (an OpenMetrics
    // counter family `x` with sample `x_total` reads as an untyped `x_total`
    // without help, which it rejects). Prometheus's OpenMetrics parser is in
    // `promtool tsdb create-blocks-from openmetrics`, which reads every sample
    // into a block: the exposition served to an OpenMetrics scraper, and
    // `prometheus-client`'s, parse whole, one series per sample.
    let served = get_metrics_as(&server, "application/openmetrics-text;version=1.0.0");
    assert!(served.ends_with("# EOF\n"), "{served}");
    assert!(
        served.contains(r#" # {trace_id="quote \" backslash \\ 🦀"} "#),
        "{served}"
    );
    assert_openmetrics_parses(&promtool, &dir, &served);
    #[cfg(feature = "prometheus-client")]
    {
        let mut client = executor_exporter::prometheus_client::registry::Registry::default();
        pool.exporter().register_into(&mut client);
        let mut text = String::new();
        executor_exporter::prometheus_client::encoding::text::encode(&mut text, &client).unwrap();
        assert_openmetrics_parses(&promtool, &dir, &text);
    }
    // The parser refuses an exposition that does not end with `# EOF`.
    let (ok, _, _) = read_openmetrics(&promtool, &dir, served.trim_end_matches("# EOF\n"));
    assert!(!ok, "promtool read OpenMetrics without # EOF");
}

/// `promtool tsdb create-blocks-from openmetrics` on `exposition`, each
/// sample given a timestamp (it needs one): whether it succeeded, what it
/// said, and the number of samples given.
fn read_openmetrics(
    promtool: &std::path::Path,
    dir: &TempDir,
    exposition: &str,
) -> (bool, String, usize) {
    // The timestamp goes after the sample's value, before an exemplar (no
    // label value of these tests holds " # ").
    let stamped: String = exposition
        .lines()
        .map(
            |line| match (line.starts_with('#'), line.split_once(" # ")) {
                (true, _) => format!("{line}\n"),
                (false, Some((sample, exemplar))) => format!("{sample} 1700000000 # {exemplar}\n"),
                (false, None) => format!("{line} 1700000000\n"),
            },
        )
        .collect();
    let samples = exposition.lines().filter(|l| !l.starts_with('#')).count();
    let input = dir.path().join("metrics.om");
    let blocks = dir.path().join("blocks");
    let _ = std::fs::remove_dir_all(&blocks);
    std::fs::write(&input, stamped).unwrap();
    let mut command = Command::new(promtool);
    command
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&blocks);
    let output = run_with_timeout(&mut command, Duration::from_secs(30))
        .unwrap_or_else(|err| panic!("{err}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said, samples)
}

/// Asserts promtool's OpenMetrics parser reads `exposition` whole: one
/// block with a series for each of its samples.
fn assert_openmetrics_parses(promtool: &std::path::Path, dir: &TempDir, exposition: &str) {
    let (ok, said, samples) = read_openmetrics(promtool, dir, exposition);
    assert!(
        ok,
        "promtool refused the OpenMetrics:\n{said}\n---\n{exposition}"
    );
    // The block's row: ULID, min, max, duration, samples, chunks, series, size.
    let series: Vec<usize> = said
        .lines()
        .filter_map(|l| l.split_whitespace().nth(6)?.parse().ok())
        .collect();
    assert_eq!(series, [samples], "{said}");
}

fn get_metrics(server: &MetricsServer) -> String {
    get_metrics_as(server, "text/plain")
}

/// The body of a `GET /metrics` asking for `accept`.
fn get_metrics_as(server: &MetricsServer, accept: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(server.local_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    body.to_owned()
}

/// A bounded pool's capacity and queue fill as Prometheus stores them: the
/// capacity gauge, the fill ratio the dashboard's "Queue fill" panel draws
/// (queued / capacity), no capacity series for an unbounded pool, and the
/// capacity gone once the bounded pool is dropped.
#[test]
fn queue_capacity_and_fill_reach_prometheus() {
    const CAPACITY: usize = 4;
    const QUEUED: usize = 3;
    let registry = Registry::new();
    let bounded = ThreadPoolExecutor::builder()
        .max_workers(1)
        .queue_capacity(CAPACITY)
        .exporter_id("bounded")
        .registry(registry.clone())
        .build()
        .unwrap();
    let _unbounded = ThreadPoolExecutor::builder()
        .max_workers(1)
        .exporter_id("unbounded")
        .registry(registry.clone())
        .build()
        .unwrap();
    let server = MetricsServer::start("127.0.0.1:0", registry.clone()).unwrap();
    let config = PrometheusConfig {
        rule_files: vec![crate_path("alerts/executor-exporter.rules.yml")],
        ..PrometheusConfig::scraping([server.local_addr().to_string()])
    };
    let Some(prometheus) = PrometheusServer::start(&config) else {
        return;
    };
    prometheus
        .wait_for_targets_up(TARGETS_UP)
        .unwrap_or_else(|err| panic!("{err}\n--- prometheus log ---\n{}", prometheus.log()));

    // The one worker held busy, QUEUED tasks behind it, the queue not full.
    let gate = Gate::new();
    let (started, running) = std::sync::mpsc::channel();
    let held = {
        let gate = gate.clone();
        bounded
            .submit(move || {
                started.send(()).unwrap();
                gate.wait();
            })
            .unwrap()
    };
    running.recv_timeout(SCRAPED).unwrap();
    let queued: Vec<_> = (0..QUEUED)
        .map(|_| bounded.submit(|| ()).unwrap())
        .collect();

    wait_value(
        &prometheus,
        r#"executor_queue_capacity{executor="bounded"}"#,
        CAPACITY,
    );
    wait_value(
        &prometheus,
        r#"executor_queued_tasks{executor="bounded"}"#,
        QUEUED,
    );
    let fill = dashboard_queries()
        .into_iter()
        .find(|(title, _)| title == "Queue fill")
        .expect("the dashboard has a Queue fill panel")
        .1;
    let samples = prometheus.query_vector(&fill).unwrap();
    assert_eq!(
        samples.len(),
        1,
        "only the bounded pool has a fill: {samples:?}"
    );
    assert_eq!(samples[0].label("executor"), "bounded");
    assert_eq!(samples[0].value, QUEUED as f64 / CAPACITY as f64);
    let unbounded = prometheus
        .query_vector(r#"executor_queue_capacity{executor="unbounded"}"#)
        .unwrap();
    assert!(
        unbounded.is_empty(),
        "an unbounded pool has no capacity: {unbounded:?}"
    );
    assert_rules_evaluate(&prometheus);

    gate.open();
    assert_eq!(held.join(), Ok(()));
    for handle in queued {
        assert_eq!(handle.join(), Ok(()));
    }
    drop(bounded);
    prometheus
        .wait_for(
            r#"executor_queue_capacity{executor="bounded"}"#,
            |s| s.is_empty(),
            SCRAPED,
        )
        .unwrap_or_else(|err| panic!("the capacity outlived its pool: {err}"));
}

/// Exemplars end to end: a pool whose hook reads the submitting thread's
/// trace id, served by `MetricsServer` in OpenMetrics mode, scraped by a
/// Prometheus with exemplar storage, which returns through
/// `/api/v1/query_exemplars` each task's trace id on the bucket its value
/// falls in, with the time it was observed.
#[test]
fn exemplars_reach_prometheus() {
    use executor_exporter::ExemplarLabels;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static TRACE: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
    }
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .max_workers(2)
        .exporter_id("exemplars")
        .registry(registry.clone())
        .exemplar(|| ExemplarLabels::new([("trace_id", TRACE.get()?)]))
        .build()
        .unwrap();
    let server = MetricsServer::builder()
        .openmetrics(true)
        .start("127.0.0.1:0", registry)
        .unwrap();
    let config = PrometheusConfig {
        feature_flags: vec!["exemplar-storage".to_owned()],
        ..PrometheusConfig::scraping([server.local_addr().to_string()])
    };
    let Some(prometheus) = PrometheusServer::start(&config) else {
        return;
    };
    let since = now();
    // A wait bucket keeps its latest exemplar, so the two traced waits must
    // land in different buckets: the completed task waits behind the two
    // workers' 120 ms tasks (untraced), the failed one finds a worker idle.
    let busy: Vec<_> = (0..2)
        .map(|_| {
            pool.submit(|| std::thread::sleep(Duration::from_millis(120)))
                .unwrap()
        })
        .collect();
    TRACE.set(Some("e2e-completed"));
    pool.submit(|| std::thread::sleep(Duration::from_millis(30)))
        .unwrap()
        .join()
        .unwrap();
    for task in busy {
        task.join().unwrap();
    }
    TRACE.set(Some("e2e-failed"));
    let failed = pool
        .submit(|| -> u8 { panic!("e2e exemplar panic") })
        .unwrap();
    assert!(matches!(failed.join(), Err(TaskError::Panicked { .. })));
    TRACE.set(None);
    let until = now();

    prometheus
        .wait_for_targets_up(TARGETS_UP)
        .unwrap_or_else(|err| panic!("{err}\n--- prometheus log ---\n{}", prometheus.log()));
    // (family, result, trace id) of every exemplar Prometheus returns, with
    // its value and bucket, once the three expected are there.
    let query = r#"{__name__=~"executor_task_wait_seconds_bucket|executor_tasks_duration_seconds_bucket",executor="exemplars"}"#;
    let (start, end) = ((since - 60.0).to_string(), (until + 60.0).to_string());
    let deadline = std::time::Instant::now() + SCRAPED;
    let found = loop {
        let answer = prometheus
            .api(
                "/api/v1/query_exemplars",
                &[("query", query), ("start", &start), ("end", &end)],
            )
            .unwrap_or_else(|err| panic!("{err}"));
        let mut found = Vec::new();
        for series in answer["data"].as_array().into_iter().flatten() {
            let labels = &series["seriesLabels"];
            for exemplar in series["exemplars"].as_array().into_iter().flatten() {
                found.push((
                    labels["__name__"].as_str().unwrap_or("").to_owned(),
                    labels["result"].as_str().unwrap_or("").to_owned(),
                    exemplar["labels"]["trace_id"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    labels["le"].as_str().unwrap_or("").to_owned(),
                    exemplar["value"]
                        .as_str()
                        .unwrap_or("")
                        .parse::<f64>()
                        .unwrap_or(-1.0),
                    exemplar["timestamp"].as_f64().unwrap_or(0.0),
                ));
            }
        }
        let has = |name: &str, result: &str, trace: &str| {
            found
                .iter()
                .any(|f| f.0 == name && f.1 == result && f.2 == trace)
        };
        if has("executor_task_wait_seconds_bucket", "", "e2e-completed")
            && has("executor_task_wait_seconds_bucket", "", "e2e-failed")
            && has(
                "executor_tasks_duration_seconds_bucket",
                "completed",
                "e2e-completed",
            )
            && has(
                "executor_tasks_duration_seconds_bucket",
                "failed",
                "e2e-failed",
            )
        {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "exemplars in Prometheus after {SCRAPED:?}: {found:?}\n--- prometheus log ---\n{}",
            prometheus.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let buckets = executor_exporter::DEFAULT_BUCKETS;
    for (name, result, trace, le, value, timestamp) in &found {
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        let lower = buckets
            .iter()
            .rev()
            .find(|b| **b < le)
            .copied()
            .unwrap_or(f64::NEG_INFINITY);
        assert!(
            lower < *value && *value <= le,
            "{name} {result} {trace}: {value} not in ({lower}, {le}]"
        );
        // Kept to the millisecond.
        assert!(
            since - 0.001 <= *timestamp && *timestamp <= until + 0.001,
            "{name} {trace}: observed at {timestamp}, not in [{since}, {until}]"
        );
        if result == "completed" {
            assert!(*value >= 0.03, "{name} {trace}: {value}");
        }
    }
}

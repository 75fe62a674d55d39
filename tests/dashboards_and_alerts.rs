//! Checks the Grafana dashboard (`dashboards/`) and the Prometheus alerting
//! rules (`alerts/`) shipped with the crate:
//! - the dashboard keeps its variables and panels, and every query selects
//!   known metric families filtered by `$executor`;
//! - `promtool check rules` and `promtool test rules` pass;
//! - every dashboard query and every rule expression is evaluated by a real
//!   Prometheus without error.
//!
//! Tests needing promtool or prometheus print SKIPPED and pass when the tool
//! is missing, except in CI (env `CI` set), where they fail.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{require_tool, run_with_timeout, PrometheusConfig, PrometheusServer};

const DASHBOARD: &str = "dashboards/executor-exporter.json";
const RULES: &str = "alerts/executor-exporter.rules.yml";
const RULE_TESTS: &str = "alerts/executor-exporter.rules.test.yml";

const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// The metric families of the default namespace and whether each is a
/// histogram, read from a real registry's exposition (the crate's catalogue
/// declares them; nothing here repeats the list).
fn families() -> &'static [(String, bool)] {
    use executor_exporter::prometheus::{proto::MetricType, Registry};
    use executor_exporter::ThreadPoolExecutor;
    static FAMILIES: std::sync::OnceLock<Vec<(String, bool)>> = std::sync::OnceLock::new();
    FAMILIES.get_or_init(|| {
        let registry = Registry::new();
        // A pool exposes the failure family (its reasons at zero); the step
        // family has series once a step exists.
        let pool = ThreadPoolExecutor::builder()
            .registry(registry.clone())
            .build()
            .expect("a pool on a fresh registry");
        let _step = pool.exporter().step("any");
        // The queue capacity family has a sample while a bounded pool lives.
        let _bounded = ThreadPoolExecutor::builder()
            .queue_capacity(1)
            .registry(registry.clone())
            .build()
            .expect("a bounded pool on the same registry");
        let families: Vec<(String, bool)> = registry
            .gather()
            .iter()
            .map(|f| {
                (
                    f.name().to_owned(),
                    f.get_field_type() == MetricType::HISTOGRAM,
                )
            })
            .collect();
        assert!(
            families
                .iter()
                .any(|(name, _)| name == "executor_task_failures_total"),
            "the exposition lists the failure family: {families:?}"
        );
        families
    })
}

/// Label names that start like a metric name.
const LABELS_WITH_METRIC_PREFIX: &[&str] = &["executor_type"];

/// Panels the dashboard must keep.
const REQUIRED_PANELS: &[&str] = &[
    "Throughput",
    "Queue depth",
    "Workers: running, idle, alive, max",
    "Worker utilisation",
    "Task wait (p50/p95/p99)",
    "Task duration (p50/p95/p99)",
    "Failure ratio",
    "Failures by reason",
    "Rejected and cancelled tasks",
    "Worker restarts",
    "Queue fill",
    "Oldest running task age",
    "Oldest queued task age",
];

/// Alerts the rules file must keep.
const REQUIRED_ALERTS: &[&str] = &[
    "ExecutorTaskFailureRatioHigh",
    "ExecutorTaskWaitP99High",
    "ExecutorQueueGrowing",
    "ExecutorTasksRejected",
    "ExecutorSaturated",
    "ExecutorTaskTimeouts",
    "ExecutorQueueFull",
    "ExecutorTaskStuck",
    "ExecutorQueueStalled",
];

fn crate_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn dashboard() -> Value {
    let path = crate_path(DASHBOARD);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{DASHBOARD} is not JSON: {err}"))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// `(panel title, expr)` of every query target of every panel.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |target| {
                    target["expr"]
                        .as_str()
                        .map(|expr| (title.clone(), expr.to_owned()))
                })
        })
        .collect()
}

/// Replaces the Grafana variables the dashboard uses with what Grafana would
/// put there ("All" executors, a 1m rate window).
fn substitute_grafana_variables(expr: &str) -> String {
    let mut expr = expr.to_owned();
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
        expr = expr.replace(variable, value);
    }
    expr
}

/// Names in `expr` that start with `executor_` and are not label names: the
/// metric names it selects, each with the text of its `{...}` selector (empty
/// when it has none). String literals are skipped.
fn metric_selectors(expr: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            // `$name` is a Grafana variable, not a metric.
            let is_variable = start > 0 && chars[start - 1] == '$';
            let name: String = chars[start..i].iter().collect();
            if is_variable
                || !name.starts_with("executor_")
                || LABELS_WITH_METRIC_PREFIX.contains(&name.as_str())
            {
                continue;
            }
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let selector = if chars.get(j) == Some(&'{') {
                let end = (j..chars.len())
                    .find(|&k| chars[k] == '}')
                    .unwrap_or(chars.len());
                chars[j..end.min(chars.len() - 1) + 1].iter().collect()
            } else {
                String::new()
            };
            found.push((name, selector));
        } else {
            i += 1;
        }
    }
    found
}

/// Whether `name` is a series of one of the [`families`].
fn is_known_series(name: &str) -> bool {
    families().iter().any(|(family, histogram)| {
        name == family
            || (*histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(family)))
    })
}

/// Alert names in the rules file, read line by line (`- alert: Name`).
fn alert_names_in_rules_file() -> BTreeSet<String> {
    let text = std::fs::read_to_string(crate_path(RULES)).expect("read the rules file");
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("- alert:"))
        .map(|name| name.trim().to_owned())
        .collect()
}

/// The `expr:` values of the rules file: either on the `expr:` line, or a
/// block (`expr: |`) made of the following lines indented deeper.
fn rule_exprs_in_file() -> Vec<String> {
    let text = std::fs::read_to_string(crate_path(RULES)).expect("read the rules file");
    let indent = |line: &str| line.len() - line.trim_start().len();
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if !rest.starts_with('|') && !rest.starts_with('>') {
            exprs.push(rest.to_owned());
            continue;
        }
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|next| next.trim().is_empty() || indent(next) > indent(line))
            .map(|next| next.trim())
            .collect();
        exprs.push(block.join("\n").trim().to_owned());
    }
    exprs
}

fn run_promtool(args: &[&str]) {
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    let mut command = Command::new(&promtool);
    command.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    let output =
        run_with_timeout(&mut command, PROMTOOL_TIMEOUT).unwrap_or_else(|err| panic!("{err}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        output.status
    );
    eprintln!("promtool {}:\n{text}", args.join(" "));
}

#[test]
fn promtool_check_rules_passes() {
    run_promtool(&["check", "rules", RULES]);
}

#[test]
fn promtool_test_rules_passes() {
    run_promtool(&["test", "rules", RULE_TESTS]);
}

#[test]
fn dashboard_has_its_variables() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        dashboard["schemaVersion"]
    );
    assert_eq!(dashboard["uid"], "executor-exporter");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no templating variable {name:?}"))
    };

    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");

    let executor = variable("executor");
    assert_eq!(executor["type"], "query");
    assert_eq!(executor["multi"], true);
    assert_eq!(executor["includeAll"], true);
    assert_eq!(executor["datasource"]["uid"], "${datasource}");
    // The query is a string in older dashboards and an object in newer ones.
    let query = executor["query"]["query"]
        .as_str()
        .or(executor["query"].as_str())
        .expect("executor variable query");
    let compact: String = query.chars().filter(|c| !c.is_whitespace()).collect();
    assert_eq!(
        compact,
        "label_values(executor_submitted_tasks_total,executor)"
    );
}

#[test]
fn dashboard_has_its_panels() {
    let dashboard = dashboard();
    let panels = panels(&dashboard);
    let titles: BTreeSet<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for required in REQUIRED_PANELS {
        assert!(
            titles.contains(required),
            "no panel titled {required:?}; panels: {titles:?}"
        );
    }

    let mut ids = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title:?} has no id"));
        assert!(ids.insert(id), "panel id {id} used twice");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        assert!(
            matches!((x, w), (Some(x), Some(w)) if w >= 1 && x + w <= 24)
                && grid["h"].as_u64().is_some(),
            "panel {title:?}: bad gridPos {grid}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title:?} must use the datasource variable"
        );
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "panel {title:?}: target without expr: {target}"
            );
            assert!(
                ref_ids.insert(target["refId"].as_str().unwrap_or("")),
                "panel {title:?}: refId missing or used twice"
            );
        }
    }
}

#[test]
fn dashboard_queries_select_known_metrics_by_executor() {
    let dashboard = dashboard();
    let exprs = dashboard_exprs(&dashboard);
    assert!(
        exprs.len() >= REQUIRED_PANELS.len(),
        "only {} queries",
        exprs.len()
    );
    for (title, expr) in &exprs {
        let selectors = metric_selectors(expr);
        assert!(
            !selectors.is_empty(),
            "panel {title:?}: no executor metric in {expr}"
        );
        for (name, selector) in selectors {
            assert!(
                is_known_series(&name),
                "panel {title:?}: unknown metric {name} in {expr}"
            );
            assert!(
                selector.contains(r#"executor=~"$executor""#),
                "panel {title:?}: {name} is not filtered by executor=~\"$executor\" in {expr}"
            );
        }
        if expr.contains('[') {
            assert!(
                expr.contains("[$__rate_interval]"),
                "panel {title:?}: range selectors should use $__rate_interval: {expr}"
            );
        }
    }
}

#[test]
fn rules_select_known_metrics() {
    let names = alert_names_in_rules_file();
    for required in REQUIRED_ALERTS {
        assert!(
            names.contains(*required),
            "no alert {required}; alerts: {names:?}"
        );
    }
    let exprs = rule_exprs_in_file();
    assert_eq!(exprs.len(), names.len(), "one expr per alert: {exprs:#?}");
    for expr in &exprs {
        let selectors = metric_selectors(expr);
        assert!(!selectors.is_empty(), "no executor metric in {expr}");
        for (name, _) in selectors {
            assert!(
                is_known_series(&name),
                "{RULES}: unknown metric {name} in {expr}"
            );
        }
    }
}

#[test]
fn metric_selector_scan_finds_names_and_selectors() {
    let found = metric_selectors(
        r#"sum by (executor, executor_type) (rate(executor_tasks_duration_seconds_count{executor=~"$executor", result="failed"}[$__rate_interval])) / executor_running_tasks"#,
    );
    assert_eq!(
        found,
        vec![
            (
                "executor_tasks_duration_seconds_count".to_owned(),
                r#"{executor=~"$executor", result="failed"}"#.to_owned()
            ),
            ("executor_running_tasks".to_owned(), String::new()),
        ]
    );
    assert!(is_known_series("executor_task_wait_seconds_bucket"));
    assert!(!is_known_series("executor_task_wait_seconds_total"));
    assert!(!is_known_series("executor_running_tasks_count"));
}

#[test]
fn dashboard_queries_run_on_prometheus() {
    let Some(prometheus) = PrometheusServer::start(&PrometheusConfig::default()) else {
        return;
    };
    // The check must be able to fail: an unbalanced expression is refused.
    let refused = prometheus
        .query("sum(rate(executor_submitted_tasks_total[1m])")
        .expect_err("Prometheus accepted invalid PromQL");
    assert!(refused.contains("bad_data"), "{refused}");

    let exprs = dashboard_exprs(&dashboard());
    assert!(!exprs.is_empty());
    let mut failures = Vec::new();
    for (title, expr) in &exprs {
        let promql = substitute_grafana_variables(expr);
        if promql.contains('$') {
            failures.push(format!(
                "panel {title:?}: unknown Grafana variable in {expr}"
            ));
            continue;
        }
        match prometheus.query(&promql) {
            Ok(answer) => assert_eq!(answer["status"], "success"),
            Err(err) => failures.push(format!("panel {title:?}: {err}")),
        }
    }
    assert!(
        failures.is_empty(),
        "invalid dashboard queries:\n{}",
        failures.join("\n")
    );
    eprintln!("{} dashboard queries evaluated by Prometheus", exprs.len());
}

#[test]
fn rule_expressions_run_on_prometheus() {
    let config = PrometheusConfig {
        rule_files: vec![crate_path(RULES)],
        ..PrometheusConfig::default()
    };
    let Some(prometheus) = PrometheusServer::start(&config) else {
        return;
    };

    // Wait until every rule has been evaluated once; then each must be healthy.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rules = loop {
        let answer = prometheus.rules().unwrap_or_else(|err| panic!("{err}"));
        let rules: Vec<Value> = answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        if !rules.is_empty() && rules.iter().all(|rule| rule["health"] != "unknown") {
            break rules;
        }
        assert!(
            Instant::now() < deadline,
            "rules not evaluated in time: {answer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    let loaded: BTreeSet<String> = rules
        .iter()
        .filter_map(|rule| rule["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        loaded,
        alert_names_in_rules_file(),
        "rules loaded by Prometheus"
    );

    let mut failures = Vec::new();
    for rule in &rules {
        let name = rule["name"].as_str().unwrap_or("?");
        let query = rule["query"].as_str().unwrap_or_default();
        if rule["health"] != "ok" {
            failures.push(format!(
                "{name}: health {} ({})",
                rule["health"], rule["lastError"]
            ));
        }
        if let Err(err) = prometheus.query(query) {
            failures.push(format!("{name}: {err}"));
        }
        if rule["labels"]["severity"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            failures.push(format!("{name}: no severity label"));
        }
        for annotation in ["summary", "description"] {
            let text = rule["annotations"][annotation].as_str().unwrap_or_default();
            if !text.contains("$labels.executor") {
                failures.push(format!(
                    "{name}: {annotation} does not name the executor: {text:?}"
                ));
            }
        }
        if !query.contains("by (executor, executor_type") {
            failures.push(format!(
                "{name}: not aggregated by executor, executor_type: {query}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "bad alert rules:\n{}",
        failures.join("\n")
    );
    eprintln!(
        "{} alert rules loaded and evaluated by Prometheus",
        rules.len()
    );
}

//! Helpers for integration tests that need the Prometheus tools.
//!
//! Include with `mod support;` from a file in `tests/`. It provides:
//! - [`require_tool`]: find a binary on `PATH`. When it is missing, the test
//!   prints `SKIPPED: ...` and returns early on a developer machine, and
//!   panics in CI (env `CI` set and non-empty), so a broken CI image cannot
//!   pass by skipping.
//! - [`free_port`], [`TempDir`], [`run_with_timeout`].
//! - [`PrometheusServer`]: a throwaway Prometheus with a generated config,
//!   queried over its HTTP API.
//! - [`Pushgateway`]: a throwaway Pushgateway.
//!
//! Everything listens on and talks to 127.0.0.1 only, and every wait has a
//! deadline. Servers are killed and their temp dirs removed on drop; on Linux
//! they are also killed if the thread that started them dies (for instance
//! when the test harness is killed), so keep a server on the thread that
//! started it.

// Each test crate that includes this module uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a server may take to answer `/-/ready` after it is spawned.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadline of one HTTP request to a test server.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A port can be taken between [`free_port`] and the server's bind; spawning
/// again with a new port covers that race.
const SPAWN_ATTEMPTS: usize = 3;

/// Finds the executable `name` on `PATH`.
///
/// Returns `None` after printing `SKIPPED: <name> not installed` to stderr
/// when it is missing, so the caller can return early. Panics instead when
/// the environment variable `CI` is set and non-empty: CI must run the test.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    if let Some(path) = find_on_path(name) {
        return Some(path);
    }
    let package = debian_package(name);
    if std::env::var_os("CI").is_some_and(|value| !value.is_empty()) {
        panic!("{name} is required in CI: install the Debian package {package}");
    }
    // Straight to the process's stderr: the test harness captures
    // `eprintln!` of passing tests, and a skip must not go unnoticed.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {name} not installed (Debian package {package})"
    );
    None
}

fn debian_package(tool: &str) -> &str {
    match tool {
        "promtool" | "prometheus" => "prometheus",
        other => other,
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_executable = |path: &Path| {
        fs::metadata(path)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Another process can take it before the caller binds it; the servers below
/// retry with a new port when that happens.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// A directory under [`std::env::temp_dir`], removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a new, empty directory whose name holds `tag`, the process id
    /// and a per-process counter, so parallel tests never share one.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "executor-exporter-test-{}-{unique}-{tag}",
            std::process::id()
        ));
        // A leftover from an earlier process that had the same pid.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|err| panic!("create temp dir {}: {err}", path.display()));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Runs `command` to completion with stdin closed, collecting its output.
///
/// Kills it and returns an error holding the output so far when it runs
/// longer than `timeout`.
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> Result<Output, String> {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("spawn {shown}: {err}"))?;
    // Drain both pipes while waiting, so a chatty child cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = wait_with_deadline(&mut child, timeout);
    let timed_out = status.is_none();
    let status = match status {
        Some(status) => status,
        None => {
            let _ = child.kill();
            child
                .wait()
                .map_err(|err| format!("wait for {shown}: {err}"))?
        }
    };
    let output = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    if timed_out {
        return Err(format!(
            "{shown} did not finish within {timeout:?}; output so far:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(output)
}

fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// An HTTP client for the test servers: loopback only, so no proxy from the
/// environment; bounded; and a 4xx/5xx answer is returned, not an error, so
/// its body (Prometheus's error message) can be shown.
fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(HTTP_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into()
}

/// GETs `url` with the query parameters `params`; returns status and body.
fn http_get(
    agent: &ureq::Agent,
    url: &str,
    params: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let mut request = agent.get(url);
    for (key, value) in params {
        request = request.query(*key, *value);
    }
    let mut response = request.call().map_err(|err| format!("GET {url}: {err}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|err| format!("GET {url}: reading the body: {err}"))?;
    Ok((status, body))
}

/// A server process spawned from a test, listening on 127.0.0.1.
#[derive(Debug)]
struct Daemon {
    name: &'static str,
    child: Child,
    port: u16,
    log: PathBuf,
    agent: ureq::Agent,
}

impl Daemon {
    /// Spawns `program` with the arguments `args(port)` and waits until
    /// `GET ready_path` answers 200. Its stdout and stderr go to `log`.
    fn spawn(
        name: &'static str,
        program: &Path,
        args: impl Fn(u16) -> Vec<String>,
        log: PathBuf,
        ready_path: &str,
    ) -> Daemon {
        let agent = http_agent();
        for attempt in 1..=SPAWN_ATTEMPTS {
            let port = free_port();
            let log_file =
                File::create(&log).unwrap_or_else(|err| panic!("create {}: {err}", log.display()));
            let mut command = Command::new(program);
            command
                .args(args(port))
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("clone log file handle"))
                .stderr(log_file);
            kill_with_parent_thread(&mut command);
            let child = command
                .spawn()
                .unwrap_or_else(|err| panic!("spawn {}: {err}", program.display()));
            let mut daemon = Daemon {
                name,
                child,
                port,
                log: log.clone(),
                agent: agent.clone(),
            };
            match daemon.wait_ready(ready_path) {
                Ok(()) => return daemon,
                Err(err) => {
                    let log = daemon.log();
                    // Dropping the daemon kills it.
                    drop(daemon);
                    let port_taken = log.contains("address already in use");
                    if port_taken && attempt < SPAWN_ATTEMPTS {
                        continue;
                    }
                    panic!("{name} did not start: {err}\n--- {name} log ---\n{log}");
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn wait_ready(&mut self, ready_path: &str) -> Result<(), String> {
        let url = format!("{}{ready_path}", self.url());
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited with {status}"));
            }
            match http_get(&self.agent, &url, &[]) {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => last = format!("HTTP {status}: {body}"),
                Err(err) => last = err,
            }
            thread::sleep(POLL_INTERVAL);
        }
        Err(format!(
            "{url} not ready within {STARTUP_TIMEOUT:?} (last: {last})"
        ))
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str, params: &[(&str, &str)]) -> Result<(u16, String), String> {
        http_get(&self.agent, &format!("{}{path}", self.url()), params)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Has the spawned server killed by the kernel when the spawning thread ends,
/// so a killed test run leaves no server behind.
#[cfg(target_os = "linux")]
fn kill_with_parent_thread(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // the async-signal-safe calls prctl and getppid; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before prctl took effect: the signal would never come.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("test process already gone"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn kill_with_parent_thread(_command: &mut Command) {}

/// What [`PrometheusServer::start`] configures.
#[derive(Debug, Clone)]
pub struct PrometheusConfig {
    /// Scrape targets as `127.0.0.1:<port>`, all in one job named
    /// `executor-exporter`. May be empty.
    pub targets: Vec<String>,
    /// Path scraped on every target.
    pub metrics_path: String,
    /// Scrape interval, also the rule evaluation interval and scrape timeout.
    pub scrape_interval: Duration,
    /// Keep the `job` and `instance` labels of scraped series, as a
    /// Pushgateway target needs.
    pub honor_labels: bool,
    /// Rule files to load (relative paths are taken from the current
    /// directory, which `cargo test` sets to the crate root).
    pub rule_files: Vec<PathBuf>,
    /// Passed as `--enable-feature=<flag>` (`native-histograms` makes it ask
    /// for the protobuf exposition first).
    pub feature_flags: Vec<String>,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            targets: Vec::new(),
            metrics_path: "/metrics".to_owned(),
            scrape_interval: Duration::from_secs(1),
            honor_labels: false,
            rule_files: Vec::new(),
            feature_flags: Vec::new(),
        }
    }
}

impl PrometheusConfig {
    /// A config scraping `targets` every second, with no rule files.
    pub fn scraping<I, S>(targets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        PrometheusConfig {
            targets: targets.into_iter().map(Into::into).collect(),
            ..PrometheusConfig::default()
        }
    }

    /// The prometheus.yml text. JSON strings are valid YAML scalars, which
    /// takes care of quoting paths.
    fn to_yaml(&self) -> String {
        let quote = |text: &str| Value::from(text).to_string();
        let interval = format!("{}ms", self.scrape_interval.as_millis().max(1));
        let mut yaml = String::new();
        let _ = writeln!(yaml, "global:");
        let _ = writeln!(yaml, "  scrape_interval: {interval}");
        let _ = writeln!(yaml, "  scrape_timeout: {interval}");
        let _ = writeln!(yaml, "  evaluation_interval: {interval}");
        let _ = writeln!(yaml, "rule_files:");
        for file in &self.rule_files {
            let absolute = fs::canonicalize(file)
                .unwrap_or_else(|err| panic!("rule file {}: {err}", file.display()));
            let _ = writeln!(yaml, "  - {}", quote(&absolute.to_string_lossy()));
        }
        let _ = writeln!(yaml, "scrape_configs:");
        if !self.targets.is_empty() {
            let _ = writeln!(yaml, "  - job_name: executor-exporter");
            let _ = writeln!(yaml, "    honor_labels: {}", self.honor_labels);
            let _ = writeln!(yaml, "    metrics_path: {}", quote(&self.metrics_path));
            let _ = writeln!(yaml, "    static_configs:");
            let _ = writeln!(yaml, "      - targets:");
            for target in &self.targets {
                let _ = writeln!(yaml, "          - {}", quote(target));
            }
        }
        yaml
    }
}

/// One sample of an instant vector: its labels (with `__name__` when the
/// series has a name) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, or "" when it is absent (as in PromQL).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// A Prometheus server on 127.0.0.1 with its own config and storage in a
/// temp dir. Killed, and its temp dir removed, on drop.
#[derive(Debug)]
pub struct PrometheusServer {
    // Declared before `dir`: the process is killed before its files go.
    daemon: Daemon,
    dir: TempDir,
}

impl PrometheusServer {
    /// Starts `prometheus` with `config` and waits until it is ready.
    ///
    /// Returns `None` (after printing SKIPPED) when prometheus is not
    /// installed outside CI. Panics, with the server's log, when it does not
    /// become ready within [`STARTUP_TIMEOUT`] (a bad rule file, for one).
    pub fn start(config: &PrometheusConfig) -> Option<PrometheusServer> {
        for target in &config.targets {
            assert!(
                target.starts_with("127.0.0.1:"),
                "scrape target {target:?}: tests scrape 127.0.0.1 only"
            );
        }
        let program = require_tool("prometheus")?;
        let dir = TempDir::new("prometheus");
        let config_file = dir.path().join("prometheus.yml");
        let data = dir.path().join("data");
        fs::write(&config_file, config.to_yaml())
            .unwrap_or_else(|err| panic!("write {}: {err}", config_file.display()));
        let daemon = Daemon::spawn(
            "prometheus",
            &program,
            |port| {
                let mut args = vec![
                    format!("--config.file={}", config_file.display()),
                    format!("--storage.tsdb.path={}", data.display()),
                    format!("--web.listen-address=127.0.0.1:{port}"),
                ];
                args.extend(
                    config
                        .feature_flags
                        .iter()
                        .map(|flag| format!("--enable-feature={flag}")),
                );
                args
            },
            dir.path().join("prometheus.log"),
            "/-/ready",
        );
        Some(PrometheusServer { daemon, dir })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.daemon.url()
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.daemon.port
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// GETs an API path such as `/api/v1/rules` and returns the whole JSON
    /// answer when its `status` is `success`; otherwise an error with the
    /// HTTP status, `errorType` and `error`.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let (status, body) = self.daemon.get(path, params)?;
        let json: Value = serde_json::from_str(&body)
            .map_err(|err| format!("GET {path}: HTTP {status}, not JSON ({err}): {body}"))?;
        if json["status"] == "success" {
            Ok(json)
        } else {
            Err(format!(
                "GET {path}: HTTP {status}, {}: {}",
                json["errorType"].as_str().unwrap_or("?"),
                json["error"].as_str().unwrap_or(&body)
            ))
        }
    }

    /// Evaluates `promql` now (`/api/v1/query`) and returns the whole JSON
    /// answer (`status` is `success`; the result is under `data`). An invalid
    /// expression gives an error holding `bad_data` and the parser's message.
    pub fn query(&self, promql: &str) -> Result<Value, String> {
        self.api("/api/v1/query", &[("query", promql)])
            .map_err(|err| format!("{err}\n  query: {promql}"))
    }

    /// Evaluates `promql`, which must give an instant vector, into samples.
    pub fn query_vector(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let answer = self.query(promql)?;
        let data = &answer["data"];
        if data["resultType"] != "vector" {
            return Err(format!(
                "{promql}: result type {}, not vector",
                data["resultType"]
            ));
        }
        let series = data["result"].as_array().cloned().unwrap_or_default();
        series.iter().map(parse_sample).collect()
    }

    /// Polls `promql` until `pred` accepts its samples, and returns them.
    ///
    /// Fails at once on a query error (it would not go away), and after
    /// `timeout` with the last samples seen.
    pub fn wait_for(
        &self,
        promql: &str,
        pred: impl Fn(&[Sample]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Sample>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let samples = self.query_vector(promql)?;
            if pred(&samples) {
                return Ok(samples);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{promql}: condition not met within {timeout:?}; last result: {samples:?}"
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until every configured target has been scraped successfully.
    /// On timeout the error holds each target's health and last scrape error.
    /// Prometheus picks up its targets about 5 s after start: allow 15 s or so.
    pub fn wait_for_targets_up(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.api("/api/v1/targets", &[("state", "active")])?;
            let targets = answer["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !targets.is_empty() && targets.iter().all(|t| t["health"] == "up") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let report: Vec<String> = targets
                    .iter()
                    .map(|t| {
                        format!(
                            "{} is {} ({})",
                            t["scrapeUrl"].as_str().unwrap_or("?"),
                            t["health"].as_str().unwrap_or("?"),
                            t["lastError"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                if report.is_empty() {
                    // Static targets show up after the first discovery
                    // round, about 5 s after start.
                    return Err(format!("no active target within {timeout:?}"));
                }
                return Err(format!("targets not all up within {timeout:?}: {report:?}"));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The loaded rule groups (`/api/v1/rules`), whole JSON answer.
    pub fn rules(&self) -> Result<Value, String> {
        self.api("/api/v1/rules", &[])
    }

    /// The directory holding config, data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn parse_sample(series: &Value) -> Result<Sample, String> {
    let labels = series["metric"]
        .as_object()
        .ok_or_else(|| format!("sample without labels: {series}"))?
        .iter()
        .map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_owned()))
        .collect();
    // Values come as [unix time, "string"]; the string may be NaN or +Inf.
    let text = series["value"][1]
        .as_str()
        .ok_or_else(|| format!("sample without value: {series}"))?;
    let value = text
        .parse::<f64>()
        .map_err(|err| format!("sample value {text:?}: {err}"))?;
    Ok(Sample { labels, value })
}

/// A Pushgateway on 127.0.0.1, persisting into a temp dir. Killed, and its
/// temp dir removed, on drop.
#[derive(Debug)]
pub struct Pushgateway {
    // Declared before `dir`: the process is killed before its files go.
    daemon: Daemon,
    dir: TempDir,
}

impl Pushgateway {
    /// Starts `prometheus-pushgateway` and waits until it is ready.
    ///
    /// Returns `None` (after printing SKIPPED) when it is not installed
    /// outside CI; panics, with its log, when it does not become ready within
    /// [`STARTUP_TIMEOUT`].
    pub fn start() -> Option<Pushgateway> {
        let program = require_tool("prometheus-pushgateway")?;
        let dir = TempDir::new("pushgateway");
        // Debian's default persistence file is under /var/lib; keep ours private.
        let persistence = dir.path().join("pushgateway.data");
        let daemon = Daemon::spawn(
            "prometheus-pushgateway",
            &program,
            |port| {
                vec![
                    format!("--web.listen-address=127.0.0.1:{port}"),
                    format!("--persistence.file={}", persistence.display()),
                ]
            },
            dir.path().join("pushgateway.log"),
            "/-/ready",
        );
        Some(Pushgateway { daemon, dir })
    }

    /// `http://127.0.0.1:<port>`, the base URL to push to.
    pub fn url(&self) -> String {
        self.daemon.url()
    }

    /// `127.0.0.1:<port>`, the scrape target for [`PrometheusConfig`]
    /// (which should then set `honor_labels`).
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.daemon.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.daemon.port
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// Its `/metrics` page: what it would hand to Prometheus now.
    pub fn metrics(&self) -> Result<String, String> {
        match self.daemon.get("/metrics", &[])? {
            (200, body) => Ok(body),
            (status, body) => Err(format!("GET /metrics: HTTP {status}: {body}")),
        }
    }

    /// Polls `/metrics` until `pred` accepts it, and returns that text; fails
    /// after `timeout` with the last text seen.
    pub fn wait_for_metrics(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.metrics()?;
            if pred(&text) {
                return Ok(text);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "pushgateway /metrics: condition not met within {timeout:?}; last page:\n{text}"
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The directory holding its persistence file and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

//! [`PushGateway`] (feature `push`): pushes a registry to a Prometheus
//! Pushgateway, for batch jobs that may end before Prometheus scrapes them.

use std::fmt;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntCounter, Registry};

use super::text::TextEncoder;
use crate::error::{BuildError, BuildErrorKind};
use crate::metrics::RegistryMap;

/// Name of the counter of failed pushes, registered in the pushed registry.
pub const PUSH_FAILURES_METRIC: &str = "executor_exporter_push_failures_total";

const PUSH_FAILURES_HELP: &str =
    "Pushes to a Pushgateway that failed (transport error or non-2xx answer).";

/// Default deadline of one push, connection included.
pub const DEFAULT_PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Push timeouts from this long on mean no timeout.
const NO_TIMEOUT_FROM: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Longest part of a Pushgateway's error answer kept in a [`PushError`].
const MAX_BODY_IN_ERROR: usize = 512;

/// Pushes the text exposition of a registry to a Pushgateway group: `PUT
/// {url}/metrics/job/{job}/{label}/{value}...`, which replaces every metric
/// of that group.
///
/// - [`push`](Self::push) pushes now and returns what went wrong, if anything.
/// - With [`PushGatewayBuilder::push_every`], a background thread also pushes
///   periodically; its failures are logged to stderr.
/// - Dropping it stops that thread and makes a final push (unless turned off
///   with [`PushGatewayBuilder::push_on_drop`]); a failure is logged.
///
/// Every failed push (on demand, periodic or final) adds one to
/// [`PUSH_FAILURES_METRIC`] in the pushed registry, so the next successful
/// push tells the gateway how many were lost. Pushing happens on the calling
/// or background thread only, and reads the registry like a scrape does:
/// tasks are never failed or slowed by it. Each push is bounded by the
/// timeout ([`DEFAULT_PUSH_TIMEOUT`] unless set).
///
/// Only `http://` URLs are supported (the crate is built without TLS). A proxy
/// given in the environment (`http_proxy`, `NO_PROXY`) is used unless
/// [`PushGatewayBuilder::env_proxy`] turns that off.
///
/// ```no_run
/// use executor_exporter::{PushGateway, ThreadPoolExecutor};
///
/// let registry = prometheus::Registry::new();
/// let pusher = PushGateway::builder("http://pushgateway:9091", "nightly_import")
///     .grouping_label("instance", "db-7")
///     .registry(registry.clone())
///     .push_every(std::time::Duration::from_secs(15))
///     .build()?;
/// let pool = ThreadPoolExecutor::builder().registry(registry).build()?;
/// pool.submit(|| { /* import */ })?.join()?;
/// pool.shutdown();
/// pusher.push()?; // or leave it to the final push on drop
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PushGateway {
    target: Arc<Target>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    push_on_drop: bool,
}

impl fmt::Debug for PushGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushGateway")
            .field("url", &self.target.url)
            .field("periodic", &self.thread.is_some())
            .field("push_on_drop", &self.push_on_drop)
            .finish_non_exhaustive()
    }
}

/// Where and what to push; shared with the background thread.
struct Target {
    url: String,
    agent: ureq::Agent,
    registry: Registry,
    failures: IntCounter,
}

impl Target {
    fn push(&self) -> Result<(), PushError> {
        let result = self.try_push();
        if result.is_err() {
            self.failures.inc();
        }
        result
    }

    fn try_push(&self) -> Result<(), PushError> {
        let encoder = TextEncoder::new();
        let mut body = Vec::new();
        encoder
            .encode(&self.registry.gather(), &mut body)
            .map_err(|e| PushError::new(PushErrorKind::Encode(e)))?;
        let mut response = self
            .agent
            .put(&self.url)
            .header("Content-Type", encoder.format_type())
            .send(&body[..])
            .map_err(|e| PushError::new(PushErrorKind::Transport(e)))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        if response.status().is_redirection() {
            // Not followed: the client would repeat the push as a GET, which
            // a page may answer with 200 while nothing was pushed.
            let location = response
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .unwrap_or("")
                .to_owned();
            return Err(PushError::new(PushErrorKind::Redirect { status, location }));
        }
        let mut text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        if text.len() > MAX_BODY_IN_ERROR {
            let mut end = MAX_BODY_IN_ERROR;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        Err(PushError::new(PushErrorKind::Status {
            status,
            body: text.trim().to_owned(),
        }))
    }

    /// A push whose failure has nobody to be returned to.
    fn push_logged(&self, when: &str) {
        if let Err(err) = self.push() {
            eprintln!(
                "executor-exporter: {when} push to {} failed: {err}",
                self.url
            );
        }
    }
}

impl PushGateway {
    /// Starts building a pusher to the Pushgateway at `url` (such as
    /// `http://127.0.0.1:9091`) for job `job`.
    pub fn builder(url: impl Into<String>, job: impl Into<String>) -> PushGatewayBuilder {
        PushGatewayBuilder {
            url: url.into(),
            job: job.into(),
            labels: Vec::new(),
            registry: None,
            timeout: DEFAULT_PUSH_TIMEOUT,
            every: None,
            push_on_drop: true,
            env_proxy: true,
        }
    }

    /// Pushes the registry now, replacing the group's metrics on the gateway
    /// (HTTP `PUT`). A failure is returned, and counted in
    /// [`PUSH_FAILURES_METRIC`].
    pub fn push(&self) -> Result<(), PushError> {
        self.target.push()
    }

    /// The URL of the group pushed to, escaped as sent.
    ///
    /// ```
    /// use executor_exporter::PushGateway;
    ///
    /// let pusher = PushGateway::builder("http://127.0.0.1:9091/", "batch")
    ///     .grouping_label("path", "/var/data")
    ///     .grouping_label("shard", "")
    ///     .grouping_label("owner", "ana maría")
    ///     .registry(prometheus::Registry::new())
    ///     .push_on_drop(false)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(
    ///     pusher.group_url(),
    ///     "http://127.0.0.1:9091/metrics/job/batch/path@base64/L3Zhci9kYXRh/shard@base64/=/owner/ana%20mar%C3%ADa"
    /// );
    /// ```
    pub fn group_url(&self) -> &str {
        &self.target.url
    }
}

impl Drop for PushGateway {
    fn drop(&mut self) {
        // Closing the channel wakes the thread at once.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if self.push_on_drop {
            self.target.push_logged("final");
        }
    }
}

/// Options of a [`PushGateway`]; [`build`](Self::build) checks them all.
#[derive(Debug, Clone)]
pub struct PushGatewayBuilder {
    url: String,
    job: String,
    labels: Vec<(String, String)>,
    registry: Option<Registry>,
    timeout: Duration,
    every: Option<Duration>,
    push_on_drop: bool,
    env_proxy: bool,
}

impl PushGatewayBuilder {
    /// Adds a grouping label, after `job`, to the group's key. Names are
    /// Prometheus label names (not `job`, not starting with `__`, each once);
    /// values may be any UTF-8, empty or holding `/` included (sent in the
    /// Pushgateway's base64 form).
    pub fn grouping_label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((name.into(), value.into()));
        self
    }

    /// The registry to push (default: [`prometheus::default_registry`]).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Deadline of one push, from connecting to reading the answer (default
    /// [`DEFAULT_PUSH_TIMEOUT`]; must be more than 0; 100 years or more, such
    /// as `Duration::MAX`, means none).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Also pushes every `interval` from a background thread, the first time
    /// one `interval` after `build` (must be more than 0). Failures are
    /// counted and logged to stderr, never returned.
    pub fn push_every(mut self, interval: Duration) -> Self {
        self.every = Some(interval);
        self
    }

    /// Whether dropping the [`PushGateway`] makes a final push (default
    /// `true`).
    pub fn push_on_drop(mut self, yes: bool) -> Self {
        self.push_on_drop = yes;
        self
    }

    /// Whether to use a proxy given by the environment (`http_proxy`,
    /// `ALL_PROXY`, honouring `NO_PROXY`; default `true`).
    pub fn env_proxy(mut self, yes: bool) -> Self {
        self.env_proxy = yes;
        self
    }

    /// Checks the options, registers [`PUSH_FAILURES_METRIC`] in the registry
    /// (once per registry: pushers of one registry share it), and starts the
    /// periodic thread if asked. Nothing is pushed yet.
    pub fn build(self) -> Result<PushGateway, BuildError> {
        let err = |why: String| BuildError::new(BuildErrorKind::Push(why));
        let base = self.url.trim_end_matches('/');
        let Some(host) = base.strip_prefix("http://") else {
            return Err(err(format!(
                "URL {:?} must start with http:// (https is not built in)",
                self.url
            )));
        };
        if host.is_empty() || host.contains(['?', '#', ' ']) {
            return Err(err(format!("URL {:?} has no valid host", self.url)));
        }
        if self.job.is_empty() {
            return Err(err("the job name is empty".into()));
        }
        let mut url = format!("{base}/metrics/job{}", path_value(&self.job));
        for (i, (name, value)) in self.labels.iter().enumerate() {
            check_label_name(name).map_err(err)?;
            if self.labels[..i].iter().any(|(n, _)| n == name) {
                return Err(err(format!("grouping label {name:?} given twice")));
            }
            url.push('/');
            url.push_str(name);
            url.push_str(&path_value(value));
        }
        if self.timeout.is_zero() {
            return Err(err("the timeout must be more than 0".into()));
        }
        if self.every.is_some_and(|d| d.is_zero()) {
            return Err(err("the push interval must be more than 0".into()));
        }
        let registry = self
            .registry
            .unwrap_or_else(|| prometheus::default_registry().clone());
        let failures = failures_counter(&registry)?;
        // A deadline too far away for the HTTP client's clock arithmetic
        // (`Duration::MAX`) means no deadline.
        let timeout = (self.timeout < NO_TIMEOUT_FROM).then_some(self.timeout);
        let mut config = ureq::Agent::config_builder()
            .timeout_global(timeout)
            .http_status_as_error(false)
            .max_redirects(0);
        if !self.env_proxy {
            config = config.proxy(None);
        }
        let target = Arc::new(Target {
            url,
            agent: config.build().into(),
            registry,
            failures,
        });
        let (stop, thread) = match self.every {
            None => (None, None),
            Some(interval) => {
                let (stop, stopped) = mpsc::channel::<()>();
                let target = target.clone();
                let thread = thread::Builder::new()
                    .name("executor-exporter-push".into())
                    .spawn(move || {
                        // Ends when the PushGateway is dropped (the sender goes).
                        while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                            target.push_logged("periodic");
                        }
                    })
                    .map_err(|e| err(format!("cannot start the push thread: {e}")))?;
                (Some(stop), Some(thread))
            }
        };
        Ok(PushGateway {
            target,
            stop,
            thread,
            push_on_drop: self.push_on_drop,
        })
    }
}

/// A push that did not succeed: the gateway could not be reached in time
/// ([`is_transport`](Self::is_transport)), answered with an error status
/// ([`status`](Self::status), and its message in `Display`), or the registry
/// could not be encoded.
///
/// ```
/// use executor_exporter::PushGateway;
/// use std::time::Duration;
///
/// // A port nobody listens on.
/// let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
/// let pusher = PushGateway::builder(format!("http://127.0.0.1:{port}"), "offline")
///     .registry(prometheus::Registry::new())
///     .env_proxy(false)
///     .timeout(Duration::from_secs(2))
///     .push_on_drop(false)
///     .build()
///     .unwrap();
/// let err = pusher.push().unwrap_err();
/// assert!(err.is_transport());
/// assert_eq!(err.status(), None);
/// ```
#[derive(Debug)]
pub struct PushError {
    kind: PushErrorKind,
}

#[derive(Debug)]
enum PushErrorKind {
    Encode(prometheus::Error),
    Transport(ureq::Error),
    Status { status: u16, body: String },
    Redirect { status: u16, location: String },
}

impl PushError {
    fn new(kind: PushErrorKind) -> PushError {
        PushError { kind }
    }

    /// The HTTP status when the gateway answered with one other than 2xx
    /// (400 for metrics it refuses, for example; 3xx for a redirect, which
    /// a push does not follow).
    pub fn status(&self) -> Option<u16> {
        match self.kind {
            PushErrorKind::Status { status, .. } | PushErrorKind::Redirect { status, .. } => {
                Some(status)
            }
            _ => None,
        }
    }

    /// True when the gateway could not be reached or did not answer in time.
    pub fn is_transport(&self) -> bool {
        matches!(self.kind, PushErrorKind::Transport(_))
    }
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            PushErrorKind::Encode(e) => write!(f, "cannot encode the metrics: {e}"),
            PushErrorKind::Transport(e) => write!(f, "cannot reach the Pushgateway: {e}"),
            PushErrorKind::Status { status, body } => {
                write!(f, "the Pushgateway answered HTTP {status}: {body}")
            }
            PushErrorKind::Redirect { status, location } => write!(
                f,
                "the Pushgateway answered HTTP {status}, a redirect to {location:?}: a push is \
                 not redirected (it would be sent again as a GET); give the gateway's own \
                 address to PushGateway::builder"
            ),
        }
    }
}

impl std::error::Error for PushError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            PushErrorKind::Encode(e) => Some(e),
            PushErrorKind::Transport(e) => Some(e),
            PushErrorKind::Status { .. } | PushErrorKind::Redirect { .. } => None,
        }
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "grouping label name {name:?}: use letters, digits and '_', not starting with a digit"
        ));
    }
    if name.starts_with("__") {
        return Err(format!(
            "grouping label name {name:?}: names starting with '__' are reserved"
        ));
    }
    if name == "job" {
        return Err("grouping label \"job\": the job is given to PushGateway::builder".into());
    }
    Ok(())
}

/// One value of the group path, with its leading `/`: percent-encoded, or in
/// the `@base64` form (URL-safe alphabet) when it holds `/` or is empty, as
/// the Pushgateway's API asks, or is `.` or `..` (a path segment the
/// gateway's router would resolve, redirecting the push elsewhere).
fn path_value(value: &str) -> String {
    if value.is_empty() {
        // The API's spelling of the empty value.
        return "@base64/=".to_owned();
    }
    if value.contains('/') || value == "." || value == ".." {
        return format!("@base64/{}", base64_url(value.as_bytes()));
    }
    let mut out = String::from("/");
    for &byte in value.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Base64 with the URL-safe alphabet (RFC 4648 §5), padded.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The failures counter of one registry, with the marker that tells which
/// registry it is registered in.
struct FailuresCollector {
    counter: IntCounter,
    descs: Vec<Desc>,
}

impl Collector for FailuresCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.counter.collect()
    }
}

/// The failures counter of every registry alive that has had a pusher.
static FAILURES: RegistryMap<FailuresCollector> = RegistryMap::new(
    "executor_exporter_push_marker",
    "pusher",
    "rename or unregister the other metric, or push a registry of its own",
);

/// The failures counter of `registry`, registered the first time.
fn failures_counter(registry: &Registry) -> Result<IntCounter, BuildError> {
    let collector = FAILURES.find_or_register(
        registry,
        |_| true,
        |marker| {
            let counter = IntCounter::new(PUSH_FAILURES_METRIC, PUSH_FAILURES_HELP)
                .map_err(|e| BuildError::new(BuildErrorKind::Registry(e)))?;
            let mut descs: Vec<Desc> = counter.desc().into_iter().cloned().collect();
            descs.push(marker);
            Ok(FailuresCollector { counter, descs })
        },
    )?;
    Ok(collector.counter.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of failures counters follows the registries alive: a
    /// thousand short-lived registries, each with a pusher, leave nothing in
    /// it, and the one kept is still found.
    #[test]
    fn counters_of_dropped_registries_are_forgotten() {
        let kept = Registry::new();
        let counter = failures_counter(&kept).unwrap();
        for _ in 0..1000 {
            let registry = Registry::new();
            let pusher = PushGateway::builder("http://127.0.0.1:9", "batch")
                .registry(registry)
                .push_on_drop(false)
                .build()
                .unwrap();
            drop(pusher);
        }
        // Other tests' registries may be alive too, but not a thousand.
        assert!(FAILURES.len() < 100, "{} entries kept", FAILURES.len());
        counter.inc();
        assert_eq!(failures_counter(&kept).unwrap().get(), 1, "found again");
    }

    #[test]
    fn base64_url_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_url(plain.as_bytes()), encoded, "{plain:?}");
        }
        // The URL-safe alphabet: '-' and '_' instead of '+' and '/'.
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8=");
    }

    #[test]
    fn path_values_are_escaped() {
        assert_eq!(path_value("plain-1.2_x~"), "/plain-1.2_x~");
        assert_eq!(path_value("a b%c"), "/a%20b%25c");
        assert_eq!(path_value("é"), "/%C3%A9");
        assert_eq!(path_value(""), "@base64/=");
        assert_eq!(path_value("a/b"), "@base64/YS9i");
        assert_eq!(path_value(".."), "@base64/Li4=");
        assert_eq!(path_value("."), "@base64/Lg==");
        assert_eq!(path_value("..."), "/...");
    }

    #[test]
    fn bad_options_are_refused() {
        let build = |b: PushGatewayBuilder| b.registry(Registry::new()).push_on_drop(false).build();
        let ok = || PushGateway::builder("http://127.0.0.1:9", "job");
        assert!(build(ok()).is_ok());
        for bad in [
            PushGateway::builder("https://example.com", "job"),
            PushGateway::builder("127.0.0.1:9091", "job"),
            PushGateway::builder("http://", "job"),
            PushGateway::builder("http://127.0.0.1:9", ""),
            ok().grouping_label("job", "x"),
            ok().grouping_label("__x", "x"),
            ok().grouping_label("1x", "x"),
            ok().grouping_label("", "x"),
            ok().grouping_label("a", "1").grouping_label("a", "2"),
            ok().timeout(Duration::ZERO),
            ok().push_every(Duration::ZERO),
        ] {
            let shown = format!("{bad:?}");
            let err = build(bad).expect_err(&shown);
            assert!(
                err.to_string().starts_with("invalid Pushgateway option"),
                "{err}"
            );
        }
    }

    #[test]
    fn pushers_of_one_registry_share_the_failures_counter() {
        let registry = Registry::new();
        let a = failures_counter(&registry).unwrap();
        let b = failures_counter(&registry).unwrap();
        a.inc();
        assert_eq!(b.get(), 1);
        let other = failures_counter(&Registry::new()).unwrap();
        assert_eq!(other.get(), 0);
        let families = registry.gather();
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].name(), PUSH_FAILURES_METRIC);
    }
}

//! [`MetricsServer`]: serves `GET /metrics` for a registry on its own thread.
//!
//! hyper parses HTTP (malformed requests get a 400 from it) on a
//! single-threaded tokio runtime that the server thread owns, so users need no
//! async runtime. Connections are bounded in number and in time, so stalled
//! or slow clients cannot exhaust the process.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE, VARY};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::proto::MetricFamily;
#[cfg(feature = "protobuf")]
use prometheus::ProtobufEncoder;
use prometheus::{Encoder, Registry};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

use crate::TextEncoder;

/// Connections served at once; more are closed as soon as they are accepted.
const MAX_CONNECTIONS: usize = 256;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer than this, however it behaves.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves the text exposition (format 0.0.4) of a registry at `/metrics`.
///
/// With the `protobuf` feature it answers with the protobuf exposition
/// (length-delimited `io.prometheus.client.MetricFamily` messages) instead
/// when the request's `Accept` header ranks that above the text format, as
/// Prometheus does with native histograms enabled or with `PrometheusProto`
/// first in its `scrape_protocols`; every other scraper gets text.
///
/// It binds exactly the address given; bind `127.0.0.1` unless Prometheus
/// scrapes from another host, and then restrict who can reach the port: the
/// endpoint has no authentication. `GET` and `HEAD /metrics` answer 200; other
/// paths 404; other methods 405; malformed requests 400. At most 256
/// connections are served at once, headers must arrive within 10 s, and no
/// connection lasts more than 60 s. It stops, and frees the port, when dropped.
///
/// ```
/// use executor_exporter::MetricsServer;
/// use std::io::{Read, Write};
///
/// let registry = prometheus::Registry::new();
/// let server = MetricsServer::start("127.0.0.1:0", registry).unwrap();
/// let mut conn = std::net::TcpStream::connect(server.local_addr()).unwrap();
/// conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
/// let mut reply = String::new();
/// conn.read_to_string(&mut reply).unwrap();
/// assert!(reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"));
/// ```
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Binds `addr` and serves `registry` until dropped. Port 0 picks a free
    /// port; [`local_addr`](Self::local_addr) tells which.
    pub fn start(addr: impl ToSocketAddrs, registry: Registry) -> io::Result<MetricsServer> {
        let listener = StdListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let thread = thread::Builder::new()
            .name("metrics-http".to_owned())
            .spawn(move || {
                let registry = Arc::new(registry);
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => {
                            let _ = ready_tx.send(Ok(()));
                            l
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    tokio::spawn(accept_loop(listener, registry));
                    // Runs until the server is dropped; dropping the runtime
                    // afterwards cancels every connection and closes the port.
                    let _ = stopped.await;
                });
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("the metrics server thread exited"))??;
        Ok(MetricsServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn accept_loop(listener: TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or a connection reset before
                // accept: back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(respond(&req, &registry)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    match (req.uri().path(), req.method()) {
        ("/metrics", &Method::GET | &Method::HEAD) => {
            let families = registry.gather();
            let encoded = match Format::negotiate(req.headers().get_all(ACCEPT).iter()) {
                Format::Text => encode(TextEncoder::new(), TEXT_CONTENT_TYPE, &families),
                #[cfg(feature = "protobuf")]
                Format::Protobuf => {
                    let encoder = ProtobufEncoder::new();
                    let content_type = encoder.format_type().to_owned();
                    encode(encoder, &content_type, &families)
                }
            };
            let mut response = encoded.unwrap_or_else(|e| {
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot encode metrics: {e}\n"),
                )
            });
            if cfg!(feature = "protobuf") {
                // The answer depends on `Accept` (the other format may
                // encode where this one failed): caches must not mix them.
                response
                    .headers_mut()
                    .insert(VARY, HeaderValue::from_static("Accept"));
            }
            response
        }
        ("/metrics", _) => {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        ),
    }
}

/// The content type of the text exposition.
const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn encode(
    encoder: impl Encoder,
    content_type: &str,
    families: &[MetricFamily],
) -> prometheus::Result<Response<Full<Bytes>>> {
    let mut body = Vec::new();
    encoder.encode(families, &mut body)?;
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let content_type = HeaderValue::from_str(content_type)
        .map_err(|e| prometheus::Error::Msg(format!("content type {content_type:?}: {e}")))?;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    Ok(response)
}

/// An exposition format the server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// The text format 0.0.4, which every scraper accepts.
    Text,
    /// Length-delimited `io.prometheus.client.MetricFamily` messages.
    #[cfg(feature = "protobuf")]
    Protobuf,
}

impl Format {
    /// Always text without the `protobuf` feature.
    #[cfg(not(feature = "protobuf"))]
    fn negotiate<'a>(_accept: impl Iterator<Item = &'a HeaderValue>) -> Format {
        Format::Text
    }

    /// Protobuf when the `Accept` headers weigh it above the text format,
    /// text otherwise, including when they are missing or unreadable (text is
    /// what every scraper reads). Each format takes the `q` of the most
    /// specific range that matches it (`text/plain`, then `text/*`, then
    /// `*/*`; the delimited `MetricFamily` protobuf type, then
    /// `application/*`, then `*/*`), as HTTP asks; a tie goes to text.
    /// Ranges that do not parse, or whose `q` is not a number from 0 to 1,
    /// are ignored.
    #[cfg(feature = "protobuf")]
    fn negotiate<'a>(accept: impl Iterator<Item = &'a HeaderValue>) -> Format {
        #[derive(Default)]
        struct Weights {
            protobuf: Option<f32>,
            application: Option<f32>,
            text_plain: Option<f32>,
            text: Option<f32>,
            any: Option<f32>,
        }
        let keep = |slot: &mut Option<f32>, q: f32| *slot = Some(slot.map_or(q, |w| w.max(q)));
        let mut w = Weights::default();
        for value in accept.filter_map(|v| v.to_str().ok()) {
            for range in media_ranges(value) {
                let Ok(range) = range.trim().parse::<mime::Mime>() else {
                    continue;
                };
                let q = match range.get_param("q") {
                    None => 1.0,
                    Some(q) => match q.as_str().parse::<f32>() {
                        Ok(q) if (0.0..=1.0).contains(&q) => q,
                        _ => continue,
                    },
                };
                let param = |name: &str| range.get_param(name).map(|v| v.as_str().to_owned());
                let (ty, sub) = (range.type_(), range.subtype());
                if ty == mime::APPLICATION
                    && sub == "vnd.google.protobuf"
                    && param("proto").as_deref() == Some("io.prometheus.client.MetricFamily")
                    && param("encoding").as_deref() == Some("delimited")
                {
                    keep(&mut w.protobuf, q);
                } else if ty == mime::APPLICATION && sub == mime::STAR {
                    keep(&mut w.application, q);
                } else if ty == mime::TEXT && sub == mime::PLAIN {
                    keep(&mut w.text_plain, q);
                } else if ty == mime::TEXT && sub == mime::STAR {
                    keep(&mut w.text, q);
                } else if ty == mime::STAR && sub == mime::STAR {
                    keep(&mut w.any, q);
                }
            }
        }
        let protobuf = w.protobuf.or(w.application).or(w.any).unwrap_or(0.0);
        let text = w.text_plain.or(w.text).or(w.any).unwrap_or(0.0);
        if protobuf > text {
            Format::Protobuf
        } else {
            Format::Text
        }
    }
}

/// The comma-separated media ranges of an `Accept` value; a comma inside a
/// quoted parameter value (`;p="a,b"`) does not separate ranges.
#[cfg(feature = "protobuf")]
fn media_ranges(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(all(test, feature = "protobuf"))]
mod tests {
    use super::*;

    /// The `Accept` headers Prometheus 2.42 sends: by default, and with
    /// `--enable-feature=native-histograms` (captured from a real scrape).
    const PROMETHEUS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    const PROMETHEUS_NATIVE: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    const PROTO: &str =
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

    fn negotiate(accept: &str) -> Format {
        Format::negotiate(std::iter::once(&HeaderValue::from_str(accept).unwrap()))
    }

    #[test]
    fn a_comma_in_a_quoted_parameter_does_not_split_a_range() {
        assert_eq!(
            media_ranges(r#"text/plain;p="a,b\",c";q=1, */*"#).collect::<Vec<_>>(),
            [r#"text/plain;p="a,b\",c";q=1"#, " */*"]
        );
        // Text, weighed 1 in a range with a quoted comma, wins over
        // protobuf's 0.5 (with the range split, text would weigh nothing).
        assert_eq!(
            negotiate(&format!(r#"text/plain;x="a,b";q=1, {PROTO};q=0.5"#)),
            Format::Text
        );
        assert_eq!(
            negotiate(&format!(r#"text/plain;x="a,b";q=0.2, {PROTO};q=0.5"#)),
            Format::Protobuf
        );
    }

    #[test]
    fn prometheus_gets_protobuf_only_when_it_ranks_it_first() {
        assert_eq!(negotiate(PROMETHEUS), Format::Text);
        assert_eq!(negotiate(PROMETHEUS_NATIVE), Format::Protobuf);
        assert_eq!(negotiate(PROTO), Format::Protobuf);
        assert_eq!(
            negotiate(&format!("{PROTO};q=0.3, */*;q=0.1")),
            Format::Protobuf
        );
        // The most specific range sets a format's weight: text/plain's 0.1,
        // not */*'s 1.
        assert_eq!(
            negotiate(&format!("{PROTO};q=0.5, text/plain;q=0.1, */*")),
            Format::Protobuf
        );
        assert_eq!(
            negotiate("application/*;q=0.9, text/*;q=0.2"),
            Format::Protobuf
        );
    }

    /// Several `Accept` header lines count as one list.
    #[test]
    fn every_accept_line_counts() {
        let lines = [
            HeaderValue::from_static("text/plain;q=0.2"),
            HeaderValue::from_static(PROTO),
        ];
        assert_eq!(Format::negotiate(lines.iter()), Format::Protobuf);
    }

    #[test]
    fn anything_else_gets_text() {
        assert_eq!(Format::negotiate(std::iter::empty()), Format::Text);
        for accept in [
            "",
            "*/*",
            "text/plain",
            "garbage, ;;, =",
            // Ranked below, or level with, text.
            &format!("{PROTO};q=0.5, text/plain;q=0.5"),
            &format!("{PROTO};q=0.5, text/*;q=0.9"),
            &format!("{PROTO};q=0.2, */*;q=0.3"),
            // Refused, or with a `q` that is no weight.
            &format!("{PROTO};q=0"),
            &format!("{PROTO};q=2, text/plain;q=0.1"),
            &format!("{PROTO};q=high, text/plain;q=0.1"),
            // Not the delimited MetricFamily stream.
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily",
            "application/vnd.google.protobuf;proto=other.Message;encoding=delimited",
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text",
        ] {
            assert_eq!(negotiate(accept), Format::Text, "Accept: {accept}");
        }
    }
}

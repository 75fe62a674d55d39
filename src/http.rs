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
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

/// Connections served at once; more are closed as soon as they are accepted.
const MAX_CONNECTIONS: usize = 256;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer than this, however it behaves.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves the text exposition (format 0.0.4) of a registry at `/metrics`.
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
            let encoder = TextEncoder::new();
            let mut body = Vec::new();
            match encoder.encode(&registry.gather(), &mut body) {
                Ok(()) => {
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    response.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    response
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot encode metrics: {e}\n"),
                ),
            }
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

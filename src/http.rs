//! [`MetricsServer`]: serves `GET /metrics` for a registry on its own thread.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use prometheus::{Encoder, Registry, TextEncoder};
use tiny_http::{Header, Method, Request, Response, Server};

/// Threads answering requests. Scrapes are short; two let one slow client not
/// hold up Prometheus.
const HANDLER_THREADS: usize = 2;

/// Serves the text exposition (format 0.0.4) of a registry at `/metrics`.
///
/// It binds exactly the address given; bind `127.0.0.1` unless Prometheus
/// scrapes from another host, and then put it behind your network policy:
/// the endpoint has no authentication. `GET` and `HEAD /metrics` answer 200;
/// other paths 404; other methods 405. It stops (and frees the port) when
/// dropped.
///
/// ```
/// use executor_exporter::MetricsServer;
/// use std::io::{Read, Write};
///
/// let registry = prometheus::Registry::new();
/// let server = MetricsServer::start("127.0.0.1:0", registry).unwrap();
/// let mut conn = std::net::TcpStream::connect(server.local_addr()).unwrap();
/// conn.write_all(b"GET /nope HTTP/1.0\r\n\r\n").unwrap();
/// let mut reply = String::new();
/// conn.read_to_string(&mut reply).unwrap();
/// assert!(reply.starts_with("HTTP/1.1 404") || reply.starts_with("HTTP/1.0 404"));
/// ```
pub struct MetricsServer {
    server: Arc<Server>,
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
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
        let server = Server::http(addr).map_err(io::Error::other)?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("the server is not bound to an IP address"))?;
        let server = Arc::new(server);
        let mut threads = Vec::with_capacity(HANDLER_THREADS);
        for i in 0..HANDLER_THREADS {
            let server = server.clone();
            let registry = registry.clone();
            threads.push(
                thread::Builder::new()
                    .name(format!("metrics-http-{i}"))
                    .spawn(move || serve(&server, &registry))?,
            );
        }
        Ok(MetricsServer {
            server,
            addr,
            threads,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

fn serve(server: &Server, registry: &Registry) {
    // `recv` fails once the server is unblocked on drop.
    while let Ok(request) = server.recv() {
        respond(request, registry);
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}

fn respond(request: Request, registry: &Registry) {
    let path = request.url().split('?').next().unwrap_or("");
    let method = request.method().clone();
    // A client that went away is its own problem: errors writing the
    // response are ignored.
    let _ = match (path, &method) {
        ("/metrics", Method::Get | Method::Head) => {
            let encoder = TextEncoder::new();
            let mut body = Vec::new();
            match encoder.encode(&registry.gather(), &mut body) {
                Ok(()) => request.respond(
                    Response::from_data(body)
                        .with_header(header("Content-Type", encoder.format_type())),
                ),
                Err(e) => request.respond(
                    Response::from_string(format!("cannot encode metrics: {e}\n"))
                        .with_status_code(500),
                ),
            }
        }
        ("/metrics", _) => request.respond(
            Response::from_string("method not allowed\n")
                .with_status_code(405)
                .with_header(header("Allow", "GET, HEAD")),
        ),
        _ => request
            .respond(Response::from_string("not found; try /metrics\n").with_status_code(404)),
    };
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        for _ in &self.threads {
            self.server.unblock();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

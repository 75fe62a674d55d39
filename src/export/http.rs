//! [`MetricsServer`]: serves `GET /metrics` for a registry on its own thread.
//!
//! hyper parses HTTP (malformed requests get a 400 from it) on a
//! single-threaded tokio runtime that the server thread owns, so users need no
//! async runtime. Connections are bounded in number and in time, so stalled
//! or slow clients cannot exhaust the process.

mod accept;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::{pin, Pin};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE, VARY};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use self::accept::Format;
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, Registry};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, Notify};

use super::openmetrics::{OpenMetricsEncoder, OPENMETRICS_FORMAT};
use super::text::TextEncoder;

/// Connections held at once. At the limit a new connection closes another
/// (see [`Admission`]) instead of being refused.
const MAX_CONNECTIONS: usize = 256;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer than this, however it behaves.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections the kernel completes and queues for the server to accept
/// (capped by the system, `net.core.somaxconn` on Linux).
const ACCEPT_QUEUE: u32 = 4096;
/// Bytes a connection buffers: a request head longer than this is refused
/// with 431. Scrapers send well under 1 KiB; this bounds what stalled clients
/// make the server hold to `MAX_CONNECTIONS` times this.
const MAX_BUFFER: usize = 16 * 1024;

/// Serves the exposition of a registry at `/metrics`, in the format the
/// scraper asks for.
///
/// Built with [`openmetrics(true)`](MetricsServerBuilder::openmetrics), a
/// scraper whose `Accept` header ranks `application/openmetrics-text`
/// (version 1.0.0) above the text format gets OpenMetrics, written by
/// [`OpenMetricsEncoder`](crate::OpenMetricsEncoder) from the same gathered
/// families (Prometheus asks for it first by default). With the `protobuf` feature,
/// one that ranks the protobuf exposition (length-delimited
/// `io.prometheus.client.MetricFamily` messages) highest gets that, as
/// Prometheus does with native histograms enabled or with `PrometheusProto`
/// first in its `scrape_protocols`. Every other scraper (no `Accept`, `*/*`)
/// gets the text format 0.0.4. The answer carries `Vary: Accept`.
///
/// It binds exactly the address given; bind `127.0.0.1` unless Prometheus
/// scrapes from another host, and then restrict who can reach the port: the
/// endpoint has no authentication. `GET` and `HEAD /metrics` answer 200; other
/// paths 404; other methods 405; malformed requests 400, request heads over
/// 16 KiB 431. Headers must arrive within 10 s, and no connection lasts more
/// than 60 s. At most 256 connections are held at once; with that many open,
/// a new connection closes the one that has waited longest for a request (a
/// client stalled before the end of its headers, or idle between requests),
/// so stalled clients, even ones that reconnect as fast as they can, cannot
/// shut out a scraper. It stops, and frees the port, when dropped (unless a
/// collector of the registry is stuck in a scrape: see its `Drop`).
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
///
/// Keep the server in a variable for as long as it should serve (`let _ =`
/// drops it at once, as a statement does). The compiler warns of a server
/// dropped unused:
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// fn main() -> std::io::Result<()> {
///     executor_exporter::MetricsServer::start("127.0.0.1:0", prometheus::Registry::new())?;
///     Ok(())
/// }
/// ```
#[must_use = "dropping a MetricsServer stops it: keep it in a variable \
              (`let _server = MetricsServer::start(..)?;`) for as long as it should serve"]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected once the server's thread has dropped its runtime (and
    /// so freed the port).
    stopped: mpsc::Receiver<()>,
}

/// How long dropping a [`MetricsServer`] waits for its thread: a scrape in
/// progress is cancelled at once, unless a collector of the registry is
/// stuck (it runs on the server's thread, and cannot be interrupted).
const STOP_WAIT: Duration = Duration::from_secs(1);

impl fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Binds `addr` and serves `registry` until dropped, with the default
    /// options (see [`builder`](Self::builder)). Port 0 picks a free port;
    /// [`local_addr`](Self::local_addr) tells which.
    ///
    /// # Errors
    ///
    /// When `addr` does not resolve or cannot be bound. The error keeps the
    /// [`io::ErrorKind`] of the cause (`AddrInUse` for a port another socket
    /// listens on) and its message names the address.
    pub fn start(addr: impl ToSocketAddrs, registry: Registry) -> io::Result<MetricsServer> {
        MetricsServer::builder().start(addr, registry)
    }

    /// Options of a server: whether it serves OpenMetrics.
    ///
    /// ```
    /// use executor_exporter::MetricsServer;
    ///
    /// let server = MetricsServer::builder()
    ///     .openmetrics(true)
    ///     .start("127.0.0.1:0", prometheus::Registry::new())
    ///     .unwrap();
    /// # drop(server);
    /// ```
    pub fn builder() -> MetricsServerBuilder {
        MetricsServerBuilder::default()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Options of a [`MetricsServer`]; [`start`](Self::start) binds and serves.
#[derive(Debug, Clone, Default)]
pub struct MetricsServerBuilder {
    openmetrics: bool,
}

impl MetricsServerBuilder {
    /// Serve OpenMetrics text (1.0.0) to a scraper that asks for it above
    /// the text format (default: off, text for every such scraper).
    ///
    /// Prometheus asks for OpenMetrics first by default. Before Prometheus
    /// 3.0 it then stores the buckets of whole-number bounds under
    /// OpenMetrics' label values (`le="1.0"`, where text gives `le="1"`):
    /// turned on for a server Prometheus 2 already scrapes, those buckets
    /// become new series, and a query or rule that names `le="1"` stops
    /// matching. Turn it on for a new deployment, under Prometheus 3, or to
    /// get what only OpenMetrics carries.
    pub fn openmetrics(mut self, on: bool) -> Self {
        self.openmetrics = on;
        self
    }

    /// Binds `addr` and serves `registry` until dropped. Port 0 picks a free
    /// port; [`MetricsServer::local_addr`] tells which.
    ///
    /// # Errors
    ///
    /// As [`MetricsServer::start`].
    pub fn start(self, addr: impl ToSocketAddrs, registry: Registry) -> io::Result<MetricsServer> {
        let openmetrics = self.openmetrics;
        let runtime = ServerRuntime(Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()?,
        ));
        // The listener registers with the runtime it is created in.
        let listener = {
            let _runtime = runtime.get().enter();
            bind(addr)?
        };
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let (done, thread_stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("metrics-http".to_owned())
            .spawn(move || {
                // Dropped last, after the runtime: the port is free by then.
                let _done = done;
                let registry = Arc::new(registry);
                let runtime = runtime.into_inner();
                runtime.block_on(async move {
                    tokio::spawn(accept_loop(listener, registry, openmetrics));
                    // Runs until the server is dropped; dropping the runtime
                    // afterwards cancels every connection and closes the port.
                    let _ = stopped.await;
                });
            })?;
        Ok(MetricsServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
            stopped: thread_stopped,
        })
    }
}

/// The server's runtime until its thread runs it. `start` may be called on a thread that runs an
/// async runtime of its own (a service's `#[tokio::main]`), where dropping a runtime the usual way
/// panics; so if `start` fails after building it, the runtime is let go without blocking.
struct ServerRuntime(Option<tokio::runtime::Runtime>);

impl ServerRuntime {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0
            .as_ref()
            .expect("present until taken by `into_inner`")
    }

    /// The runtime, to run and drop on the server's own thread.
    fn into_inner(mut self) -> tokio::runtime::Runtime {
        self.0.take().expect("present until taken by `into_inner`")
    }
}

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Binds the first address `addr` resolves to that can be bound; on failure,
/// the error names the address and says what to do. Must run inside the
/// server's runtime.
fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
    let addrs = addr.to_socket_addrs().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot resolve the address to serve metrics on: {e}"),
        )
    })?;
    let mut failed = None;
    for addr in addrs {
        match listen(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => failed = Some(bind_error(addr, &e)),
        }
    }
    Err(failed.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address to serve metrics on resolves to no address",
        )
    }))
}

/// Listens on `addr` as `std::net::TcpListener::bind` does, with a longer
/// accept queue: a burst of connections faster than the server accepts
/// them (a client reconnecting in a loop) then waits in the queue instead
/// of having its handshake dropped, which would delay a scraper caught in
/// the burst by the second it takes TCP to retry.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As std does: a port left in TIME_WAIT by the previous run can be
    // bound again. (On Windows the option would let another socket take
    // the port, so std leaves it unset there.)
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_QUEUE)
}

/// The error of binding `addr`, naming it and saying what to do, of the
/// same kind (callers match on `AddrInUse`).
fn bind_error(addr: SocketAddr, e: &io::Error) -> io::Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => {
            "; another process listens there: stop it, or pick another port (0 picks a free one)"
        }
        io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            "; ports below 1024 need privileges: pick a port from 1024 up"
        }
        io::ErrorKind::AddrNotAvailable => {
            "; no network interface here has that address: bind 127.0.0.1, or 0.0.0.0 for all"
        }
        _ => "",
    };
    io::Error::new(
        e.kind(),
        format!("cannot serve metrics on {addr}: {e}{hint}"),
    )
}

/// Which connections are open, and which to close when a new one needs room.
///
/// Open connections are kept in an eviction order: first those waiting for
/// a request (for its headers, or idle between requests), then those
/// answering one, each group by when it entered it, oldest first. At the
/// limit, a new connection closes the first in that order instead of being
/// refused. A client that stalls before finishing its headers goes first,
/// even one that reconnects as fast as it can: a scraper's connection is the
/// newest when accepted and read as soon as it is, and its turn would come
/// only after `MAX_CONNECTIONS` more connections. An answer being written is
/// cut only when every open connection is being answered, and then the one
/// answered longest first (a client that does not read its answer).
#[derive(Default)]
struct Admission {
    table: Mutex<Table>,
    /// Notified each time a connection closes.
    closed: Notify,
}

#[derive(Default)]
struct Table {
    /// Connections open, including one asked to close that has not yet.
    open: usize,
    next_ticket: u64,
    /// The open connections not asked to close, keyed by whether they are
    /// answering a request and a ticket issued when they entered that state;
    /// notifying one closes it.
    order: BTreeMap<(bool, u64), Arc<Notify>>,
}

impl Table {
    /// Files `evict` last among the connections answering or not.
    fn file(&mut self, answering: bool, evict: Arc<Notify>) -> (bool, u64) {
        let key = (answering, self.next_ticket);
        self.next_ticket += 1;
        self.order.insert(key, evict);
        key
    }
}

impl Admission {
    /// Waits until a connection may be admitted, asking the first connection
    /// in the eviction order to close if all places are taken, and returns
    /// the new connection's place.
    async fn admit(self: &Arc<Self>) -> Arc<Slot> {
        let mut evicted = false;
        loop {
            {
                let mut table = lock(&self.table);
                if table.open < MAX_CONNECTIONS {
                    table.open += 1;
                    let evict = Arc::new(Notify::new());
                    let key = table.file(false, evict.clone());
                    return Arc::new(Slot {
                        admission: self.clone(),
                        evict,
                        state: Mutex::new(SlotState {
                            key: Some(key),
                            unsent: 0,
                        }),
                    });
                }
                if !evicted {
                    if let Some((_, first)) = table.order.pop_first() {
                        first.notify_one();
                        evicted = true;
                    }
                }
            }
            // Waiting for the evicted connection to release its descriptor
            // keeps the server at `MAX_CONNECTIONS` connections and the one
            // in hand, and lets the connections accepted before this one be
            // read before more are accepted. A close since the check left a
            // permit, so this does not miss it.
            self.closed.notified().await;
        }
    }
}

/// One admitted connection's place in [`Admission`], shared by its task, its
/// socket and its answers; dropping it frees the place.
struct Slot {
    admission: Arc<Admission>,
    /// Notified to close the connection.
    evict: Arc<Notify>,
    /// Locked only with the table locked, after it.
    state: Mutex<SlotState>,
}

struct SlotState {
    /// The place in `Table::order`; `None` once asked to close. A key no
    /// longer in the table means the same.
    key: Option<(bool, u64)>,
    /// Answers hyper has not yet taken whole into its write buffer.
    unsent: usize,
}

impl Slot {
    /// A request's headers arrived: the connection is answering.
    fn answering(&self) {
        let mut table = lock(&self.admission.table);
        let mut state = lock(&self.state);
        state.unsent += 1;
        self.refile(&mut table, &mut state, true);
    }

    /// Hyper has taken a whole answer (or dropped it).
    fn answer_taken(&self) {
        let _table = lock(&self.admission.table);
        let mut state = lock(&self.state);
        state.unsent = state.unsent.saturating_sub(1);
    }

    /// Hyper flushed the socket, which it does only once everything it
    /// buffered is written: with every answer taken, the answers are sent.
    fn flushed(&self) {
        let mut table = lock(&self.admission.table);
        let mut state = lock(&self.state);
        if state.unsent == 0 {
            self.refile(&mut table, &mut state, false);
        }
    }

    fn refile(&self, table: &mut Table, state: &mut SlotState, answering: bool) {
        let Some(key) = state.key else { return };
        if key.0 == answering {
            return;
        }
        // Not in the table: asked to close, so no longer filed.
        state.key = table
            .order
            .remove(&key)
            .map(|evict| table.file(answering, evict));
    }

    /// Runs `conn` until it ends or the connection is asked to close.
    async fn serve<F: Future>(&self, conn: F) {
        let evicted = self.evict.notified();
        let mut evicted = pin!(evicted);
        let mut conn = pin!(conn);
        poll_fn(|cx| {
            if evicted.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            conn.as_mut().poll(cx).map(drop)
        })
        .await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = lock(&self.admission.table);
        if let Some(key) = lock(&self.state).key.take() {
            table.order.remove(&key);
        }
        table.open -= 1;
        drop(table);
        self.admission.closed.notify_one();
    }
}

/// Locks `mutex`, also after a panic elsewhere: the tables are consistent
/// at every step, so there is nothing to recover.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection's socket, telling its [`Slot`] when a flush completes.
struct Watched {
    io: TokioIo<TcpStream>,
    slot: Arc<Slot>,
}

impl hyper::rt::Read for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            this.slot.flushed();
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A response body that tells its connection's [`Slot`] when hyper has
/// taken all of it (it drops the body then).
struct Answer {
    body: Full<Bytes>,
    slot: Arc<Slot>,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.slot.answer_taken();
    }
}

async fn accept_loop(listener: TcpListener, registry: Arc<Registry>, openmetrics: bool) {
    let admission = Arc::new(Admission::default());
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
        let slot = admission.admit().await;
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn({
                let slot = slot.clone();
                move |req| {
                    slot.answering();
                    let response = respond(&req, &registry, openmetrics).map(|body| Answer {
                        body,
                        slot: slot.clone(),
                    });
                    async move { Ok::<_, Infallible>(response) }
                }
            });
            let io = Watched {
                io: TokioIo::new(stream),
                slot: slot.clone(),
            };
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_BUFFER)
                .serve_connection(io, service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, slot.serve(conn)).await;
        });
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

fn respond(
    req: &Request<Incoming>,
    registry: &Registry,
    openmetrics: bool,
) -> Response<Full<Bytes>> {
    match (req.uri().path(), req.method()) {
        ("/metrics", &Method::GET | &Method::HEAD) => {
            let accept = req.headers().get_all(ACCEPT).iter();
            let encoded = match Format::negotiate(accept, openmetrics) {
                Format::Text => encode(TextEncoder::new(), TEXT_CONTENT_TYPE, &registry.gather()),
                Format::OpenMetrics => encode(
                    OpenMetricsEncoder::new().with_exemplars_of(registry),
                    OPENMETRICS_FORMAT,
                    &registry.gather(),
                ),
                #[cfg(feature = "protobuf")]
                Format::Protobuf => protobuf(registry),
            };
            let mut response = encoded.unwrap_or_else(|e| {
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot encode metrics: {e}\n"),
                )
            });
            // The answer depends on `Accept` (another format may encode
            // where this one failed): caches must not mix them.
            response
                .headers_mut()
                .insert(VARY, HeaderValue::from_static("Accept"));
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

/// The protobuf exposition of `registry`, with the native histograms of
/// the pools that keep them.
#[cfg(feature = "protobuf")]
fn protobuf(registry: &Registry) -> prometheus::Result<Response<Full<Bytes>>> {
    use super::protobuf::{encode, PROTOBUF_FORMAT};
    let (families, extras) = crate::metrics::with_extras(|| registry.gather());
    let mut body = Vec::new();
    let exemplars = crate::metrics::ExemplarSource::of(registry);
    encode(&families, &extras, exemplars.as_ref(), &mut body).map_err(prometheus::Error::Msg)?;
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROTOBUF_FORMAT));
    Ok(response)
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

impl Drop for MetricsServer {
    /// Stops the server: connections are closed and the port is free when
    /// `drop` returns. A scrape stuck in a collector of the registry that
    /// does not return (it holds the server's one thread) is waited for
    /// one second; the server's thread is then left to end, and free the
    /// port, once that collector returns.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(thread) = self.thread.take() else {
            return;
        };
        match self.stopped.recv_timeout(STOP_WAIT) {
            Err(mpsc::RecvTimeoutError::Timeout) => drop(thread),
            _ => {
                let _ = thread.join();
            }
        }
    }
}

//! The `/metrics` server, probed over real loopback sockets.

mod common;
mod support;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use executor_exporter::prometheus::Registry;
use executor_exporter::{MetricsServer, ThreadPoolExecutor};

fn request(server: &MetricsServer, raw: &[u8]) -> String {
    let mut conn = TcpStream::connect(server.local_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(raw).unwrap();
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

fn status(reply: &str) -> &str {
    reply.split(' ').nth(1).unwrap_or("")
}

fn served() -> (MetricsServer, ThreadPoolExecutor) {
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .exporter_id("http")
        .registry(registry.clone())
        .build()
        .unwrap();
    pool.submit(|| ()).unwrap().join().unwrap();
    (MetricsServer::start("127.0.0.1:0", registry).unwrap(), pool)
}

#[test]
fn get_and_head_metrics_404_405_and_400() {
    let (server, _pool) = served();
    let get = request(
        &server,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&get), "200", "{get}");
    assert!(
        get.contains("content-type: text/plain; version=0.0.4"),
        "{get}"
    );
    assert!(get.contains(
        r#"executor_submitted_tasks_total{executor="http",executor_type="thread_pool"} 1"#
    ));
    let with_query = request(&server, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
    assert_eq!(status(&with_query), "200");
    let head = request(
        &server,
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&head), "200", "{head}");
    assert!(!head.contains("executor_submitted"), "HEAD has no body");
    let missing = request(&server, b"GET /nope HTTP/1.0\r\n\r\n");
    assert_eq!(status(&missing), "404");
    let post = request(
        &server,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&post), "405", "{post}");
    assert!(post.contains("allow: GET, HEAD"), "{post}");
    let garbage = request(&server, b"\x01\x02 not http at all\r\n\r\n");
    assert_eq!(status(&garbage), "400", "{garbage:?}");
    // Still serving after all that.
    assert_eq!(
        status(&request(&server, b"GET /metrics HTTP/1.0\r\n\r\n")),
        "200"
    );
}

#[test]
fn stalled_clients_do_not_stop_scrapes_and_resources_are_bounded() {
    let (server, _pool) = served();
    // 100 clients that connect and never send anything.
    let stalled: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(server.local_addr()).unwrap())
        .collect();
    // One that sends half a request and stops.
    let mut half = TcpStream::connect(server.local_addr()).unwrap();
    half.write_all(b"GET /metr").unwrap();
    let reply = request(&server, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(
        status(&reply),
        "200",
        "a scrape is served beside stalled clients"
    );
    // The half request is dropped by the server within the header timeout.
    half.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    let _ = half.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(55),
        "the stalled request was cut off"
    );
    drop(stalled);
    assert_eq!(
        status(&request(&server, b"GET /metrics HTTP/1.0\r\n\r\n")),
        "200"
    );
}

/// Connections the server holds at once, as `MetricsServer`'s docs say.
const SERVER_LIMIT: usize = 256;
/// How long a scrape may take beside stalled clients (issue 17).
const SCRAPE_BOUND: Duration = Duration::from_secs(2);
/// The head of a request that never ends: what a slowloris client sends.
const STALLED_HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n";

/// Held by the tests that load the machine (thousands of connections, wrk),
/// so that one's load does not eat into another's time bound.
fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lifts the soft descriptor limit to the hard one: a thousand client
/// sockets and the server's side of them pass the usual soft limit of 1,024.
fn raise_fd_limit(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given, nothing else.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= needed,
        "this test needs {needed} descriptors; the hard limit is {}",
        limit.rlim_cur
    );
}

/// Opens a connection that sends the start of a request and no more.
fn stall(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    conn.write_all(STALLED_HEAD)?;
    Ok(conn)
}

/// One scrape as Prometheus makes it: the status line and how long it took,
/// or what went wrong.
fn timed_scrape(addr: SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    let reply = (|| {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.set_write_timeout(Some(Duration::from_secs(10)))?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply)?;
        std::io::Result::Ok(String::from_utf8_lossy(&reply).into_owned())
    })();
    let took = started.elapsed();
    match reply {
        Ok(reply) if status(&reply) == "200" && took < SCRAPE_BOUND => Ok(took),
        Ok(reply) => Err(format!(
            "answered {:?} after {took:?}",
            reply.lines().next().unwrap_or("nothing")
        )),
        Err(e) => Err(format!("{e} after {took:?}")),
    }
}

/// Descriptors of this process that are the server's end of a connection on
/// `port`: connected sockets whose local port is `port` (a client's socket
/// has it as its peer's port), the listener excluded. Counts only the
/// server's, whatever else the test process has open.
fn server_sockets(port: u16) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| fd.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&fd| {
            let port_of = |get: unsafe extern "C" fn(i32, *mut libc::sockaddr, *mut u32) -> i32| {
                // SAFETY: `get` writes at most `len` bytes into `addr`.
                // Descriptors closed since the listing fail with EBADF.
                unsafe {
                    let mut addr: libc::sockaddr_in = std::mem::zeroed();
                    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                    let ok = get(fd, (&raw mut addr).cast(), &mut len) == 0
                        && i32::from(addr.sin_family) == libc::AF_INET;
                    ok.then(|| u16::from_be(addr.sin_port))
                }
            };
            port_of(libc::getsockname) == Some(port) && port_of(libc::getpeername).is_some()
        })
        .count()
}

/// The resident memory of this process.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// Connections that stay stalled while scrapes run: 300, then 1,000. Every
/// scrape is answered 200 within 2 s, and the server never holds more than
/// its limit of connections, nor any once the clients are gone.
#[test]
fn scrapes_get_through_hundreds_of_held_stalled_connections() {
    let _heavy = heavy();
    raise_fd_limit(2_000);
    let (server, _pool) = served();
    let addr = server.local_addr();
    let mut stalled = Vec::new();
    for held in [300, 1_000] {
        while stalled.len() < held {
            stalled.push(stall(addr).unwrap_or_else(|e| panic!("stall {}: {e}", stalled.len())));
        }
        for i in 0..20 {
            if let Err(e) = timed_scrape(addr) {
                panic!("scrape {i} beside {held} stalled connections: {e}");
            }
        }
        let open = server_sockets(addr.port());
        assert!(
            open <= SERVER_LIMIT + 2,
            "the server holds {open} connections beside {held} stalled ones"
        );
    }
    drop(stalled);
    assert_server_lets_go(addr.port());
}

/// The server closes every connection within 5 s once its clients are gone.
fn assert_server_lets_go(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while server_sockets(port) > 0 {
        assert!(
            Instant::now() < deadline,
            "the server still holds {} connections 5 s after its clients left",
            server_sockets(port)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An attacker that opens stalled connections as fast as it can, dropping
/// its oldest to keep `ring` open, while scrapes run back to back.
fn scrapes_get_through_an_attacker_reopening(ring: usize, attack: Duration) {
    let (server, _pool) = served();
    let addr = server.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    // Stops the attacker also when an assertion below fails.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop = Stop(stop.clone());
    let attacker = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut open = VecDeque::with_capacity(ring + 1);
            let mut opened = 0u64;
            let until = Instant::now() + attack;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                if let Ok(conn) = stall(addr) {
                    opened += 1;
                    open.push_back(conn);
                }
                if open.len() > ring {
                    open.pop_front();
                }
            }
            opened
        }
    });
    let mut scrapes = 0;
    let mut most_open = 0;
    let mut slowest = Duration::ZERO;
    while !attacker.is_finished() {
        match timed_scrape(addr) {
            Ok(took) => slowest = slowest.max(took),
            Err(e) => {
                panic!("scrape {scrapes} while an attacker reopens {ring} stalled connections: {e}")
            }
        }
        scrapes += 1;
        // A listing of descriptors is not atomic: while the attacker
        // churns, a connection closed after being counted and its successor
        // accepted before being counted both count. The least of three
        // listings is seldom off by much.
        let open = (0..3).map(|_| server_sockets(addr.port())).min().unwrap();
        most_open = most_open.max(open);
        std::thread::sleep(Duration::from_millis(5));
    }
    let opened = attacker.join().unwrap();
    eprintln!(
        "{scrapes} scrapes, the slowest in {slowest:?}, while the attacker opened {opened} \
         connections (ring of {ring}); the server held at most {most_open}"
    );
    assert!(
        opened > 2 * ring as u64,
        "the attacker reopened its connections ({opened} opened)"
    );
    assert!(scrapes >= 5, "only {scrapes} scrapes ran");
    assert!(
        most_open <= SERVER_LIMIT + 64,
        "the server held {most_open} connections"
    );
    assert_server_lets_go(addr.port());
}

/// Set in the child process that runs [`ALONE_TEST`] by itself.
const ALONE: &str = "EXECUTOR_EXPORTER_TEST_ALONE";
/// The test whose memory check must not see the tests running beside it.
const ALONE_TEST: &str = "scrapes_get_through_an_attacker_reopening_stalled_connections";

/// Also checks that memory stays bounded: tens of thousands of connections
/// come and go, and what the process holds afterwards grows by no more than
/// the server's connections at their fullest could hold.
///
/// The check reads the resident memory of the whole process, which the other
/// tests of this binary, running beside it, move by up to 100 MB on a loaded
/// machine: so it runs in a child process of this test binary, alone.
#[test]
fn scrapes_get_through_an_attacker_reopening_stalled_connections() {
    let _heavy = heavy();
    if std::env::var_os(ALONE).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([ALONE_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(ALONE, "1")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success() && stdout.contains("test result: ok. 1 passed"),
            "the test alone in a child process: {}\n{stdout}\n{stderr}",
            out.status
        );
        eprint!("{stderr}");
        return;
    }
    raise_fd_limit(2_000);
    let before = resident_bytes();
    scrapes_get_through_an_attacker_reopening(300, Duration::from_secs(2));
    scrapes_get_through_an_attacker_reopening(1_000, Duration::from_secs(2));
    let grown = resident_bytes().saturating_sub(before);
    eprintln!("resident memory grew by {} KiB", grown >> 10);
    assert!(grown < 64 << 20, "resident memory grew by {grown} bytes");
}

/// An answer being written is not cut to make room: a scrape of an exposition
/// larger than the socket buffers hold, read only after 1,000 stalled
/// connections have come in (each closing an older one), arrives whole.
#[test]
fn an_answer_being_written_is_not_cut_to_admit_stalled_clients() {
    let _heavy = heavy();
    raise_fd_limit(2_000);
    let registry = Registry::new();
    // 6 MiB of help text: more than the kernel buffers while unread.
    let help = "x".repeat(6 << 20);
    let big = executor_exporter::prometheus::Gauge::new("big", help.clone()).unwrap();
    registry.register(Box::new(big)).unwrap();
    let server = MetricsServer::start("127.0.0.1:0", registry).unwrap();
    let addr = server.local_addr();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = vec![0; 4096];
    let n = slow.read(&mut reply).unwrap();
    reply.truncate(n);
    let stalled: Vec<TcpStream> = (0..1_000).map(|_| stall(addr).unwrap()).collect();
    // Accepted after every stalled connection: all of them have been seen.
    timed_scrape(addr).unwrap();
    slow.read_to_end(&mut reply).unwrap();
    let reply = String::from_utf8(reply).unwrap();
    assert_eq!(status(&reply), "200", "{:.200}", reply);
    assert!(
        reply.ends_with(&format!("# HELP big {help}\n# TYPE big gauge\nbig 0\n")),
        "the answer was cut: {} bytes arrived",
        reply.len()
    );
    drop(stalled);
}

/// A request head longer than 16 KiB is refused with 431: a connection
/// buffers no more than that, whatever its client sends.
#[test]
fn a_request_head_over_16_kib_is_refused_with_431() {
    let (server, _pool) = served();
    let long = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\nConnection: close\r\n\r\n",
        "p".repeat(32 << 10)
    );
    let reply = request(&server, long.as_bytes());
    assert_eq!(status(&reply), "431", "{reply:.200}");
    let usual = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\nConnection: close\r\n\r\n",
        "p".repeat(4 << 10)
    );
    assert_eq!(status(&request(&server, usual.as_bytes())), "200");
}

#[test]
fn a_port_in_use_is_an_error_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = MetricsServer::start(addr, Registry::new()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    // `main` returning the error prints its Debug form; users read either.
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(shown.contains(&addr.to_string()), "{shown}");
        assert!(shown.contains("another port"), "{shown}");
    }
}

/// The same from inside an async runtime (a service's `#[tokio::main]`): the error comes back; the
/// server's own runtime, already built, is let go without blocking instead of panicking there.
#[test]
fn a_port_in_use_is_an_error_inside_an_async_runtime_too() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = runtime
        .block_on(async { MetricsServer::start(addr, Registry::new()) })
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    // And a server started there serves.
    let server = runtime
        .block_on(async { MetricsServer::start("127.0.0.1:0", Registry::new()) })
        .unwrap();
    assert_eq!(
        status(&request(
            &server,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        )),
        "200"
    );
}

#[test]
fn binds_only_the_address_given_and_frees_it_on_drop() {
    let (server, _pool) = served();
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback());
    drop(server);
    assert!(
        TcpStream::connect(addr).is_err(),
        "the port is closed after drop"
    );
    assert!(MetricsServer::start("127.0.0.1:0", Registry::new()).is_ok());
    let taken = MetricsServer::start("127.0.0.1:0", Registry::new()).unwrap();
    let err = MetricsServer::start(taken.local_addr(), Registry::new()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

/// Load from a second process (wrk, bounded to 3 s and 50 connections).
#[test]
fn keeps_answering_under_load_from_wrk() {
    let _heavy = heavy();
    let Some(wrk) = support::require_tool("wrk") else {
        return;
    };
    let (server, pool) = served();
    let url = format!("http://{}/metrics", server.local_addr());
    // The pool keeps working while it is scraped.
    let worker = std::thread::spawn(move || {
        let mut n = 0u64;
        let until = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < until {
            pool.submit(|| ()).unwrap().join().unwrap();
            n += 1;
        }
        n
    });
    let out = support::run_with_timeout(
        std::process::Command::new(wrk).args(["-t1", "-c50", "-d3s", "--latency", &url]),
        Duration::from_secs(30),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let requests: u64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in")
                .map(|(n, _)| n.trim().parse().ok())
        })
        .flatten()
        .unwrap_or_else(|| panic!("no request count in wrk output:\n{text}"));
    assert!(requests > 100, "{text}");
    assert!(!text.contains("Non-2xx"), "every answer was 200:\n{text}");
    let tasks = worker.join().unwrap();
    assert!(tasks > 0);
    eprintln!("wrk: {requests} scrapes in 3 s while the pool ran {tasks} tasks");
    assert_eq!(
        status(&request(&server, b"GET /metrics HTTP/1.0\r\n\r\n")),
        "200"
    );
}

/// A collector whose family the text format has no type for.
#[derive(Clone)]
struct Untyped(executor_exporter::prometheus::core::Desc);

impl executor_exporter::prometheus::core::Collector for Untyped {
    fn desc(&self) -> Vec<&executor_exporter::prometheus::core::Desc> {
        vec![&self.0]
    }

    fn collect(&self) -> Vec<executor_exporter::prometheus::proto::MetricFamily> {
        use executor_exporter::prometheus::proto::{Metric, MetricFamily, MetricType};
        let mut family = MetricFamily::default();
        family.set_name("legacy_untyped".to_owned());
        family.set_help("An untyped metric.".to_owned());
        family.set_field_type(MetricType::UNTYPED);
        family.set_metric(vec![Metric::default()]);
        vec![family]
    }
}

#[test]
fn a_family_the_text_format_cannot_encode_is_a_500_not_a_dropped_connection() {
    let registry = Registry::new();
    let server = MetricsServer::start("127.0.0.1:0", registry.clone()).unwrap();
    let desc = executor_exporter::prometheus::core::Desc::new(
        "legacy_untyped".to_owned(),
        "An untyped metric.".to_owned(),
        vec![],
        Default::default(),
    )
    .unwrap();
    registry.register(Box::new(Untyped(desc.clone()))).unwrap();
    let get = request(
        &server,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&get), "500", "{get}");
    assert!(
        get.contains("legacy_untyped") && get.contains("UNTYPED"),
        "{get}"
    );
    assert!(get.contains("vary: Accept"), "{get}");
    registry.unregister(Box::new(Untyped(desc))).unwrap();
    let get = request(&server, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status(&get), "200", "{get}");
}

/// With the `protobuf` feature, a scraper that ranks the protobuf format
/// first (Prometheus with native histograms sends this `Accept`) gets the
/// length-delimited `MetricFamily` stream, and it holds exactly what the
/// registry gathers; the text format stays the answer to everything else.
#[cfg(feature = "protobuf")]
#[test]
fn serves_protobuf_to_a_scraper_that_prefers_it() {
    use executor_exporter::prometheus::proto::MetricFamily;
    use protobuf::CodedInputStream;

    const NATIVE_HISTOGRAMS_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .exporter_id("proto")
        .registry(registry.clone())
        .build()
        .unwrap();
    for k in 0..3 {
        pool.submit(move || k).unwrap().join().unwrap();
    }
    let server = MetricsServer::start("127.0.0.1:0", registry.clone()).unwrap();

    let raw = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {NATIVE_HISTOGRAMS_ACCEPT}\r\nConnection: close\r\n\r\n"
    );
    let mut conn = TcpStream::connect(server.local_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(raw.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply);
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&reply[..split]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/vnd.google.protobuf; proto=io.prometheus.client.metricfamily; encoding=delimited"),
        "{head}"
    );
    assert!(head.contains("vary: accept"), "{head}");

    let mut body = CodedInputStream::from_bytes(&reply[split + 4..]);
    let mut served = Vec::new();
    while !body.eof().unwrap() {
        served.push(body.read_message::<MetricFamily>().unwrap());
    }
    assert_eq!(served, registry.gather());
    let submitted = served
        .iter()
        .find(|f| f.name() == "executor_submitted_tasks_total")
        .expect("the submitted family");
    assert_eq!(submitted.get_metric()[0].get_counter().value(), 3.0);

    // A scraper that does not rank protobuf first still gets text.
    let text = request(
        &server,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\nConnection: close\r\n\r\n",
    );
    assert!(
        text.contains("content-type: text/plain; version=0.0.4"),
        "{text}"
    );
    assert!(text.contains(
        r#"executor_submitted_tasks_total{executor="proto",executor_type="thread_pool"} 3"#
    ));
}

/// A scraper that asks for OpenMetrics first (Prometheus does by default:
/// this is the `Accept` it sends) gets it, with every sample of the text
/// format, and `# EOF`; one that does not ask gets text, as before.
#[test]
fn serves_openmetrics_to_a_scraper_that_asks_for_it() {
    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .exporter_id("om \"quoted\" \\ \n ✓")
        .registry(registry.clone())
        .build()
        .unwrap();
    let step = pool.exporter().step("parse");
    for k in 0..3 {
        let step = step.clone();
        pool.submit(move || step.time(|| k))
            .unwrap()
            .join()
            .unwrap();
    }
    let _ = pool.submit(|| -> u8 { panic!("om panic") }).unwrap().join();
    pool.join();
    let server = MetricsServer::builder()
        .openmetrics(true)
        .start("127.0.0.1:0", registry.clone())
        .unwrap();

    let reply = request(
        &server,
        format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {PROMETHEUS_ACCEPT}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP answer");
    assert_eq!(status(head), "200", "{head}");
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("vary: Accept"), "{head}");
    assert!(
        body.contains("# TYPE executor_submitted_tasks counter\n"),
        "{body}"
    );
    common::parse(body).assert_same_as_text(&common::scrape(&registry));

    let text = request(
        &server,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nConnection: close\r\n\r\n",
    );
    assert!(
        text.contains("content-type: text/plain; version=0.0.4"),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "{text}");

    // A server with the default options gives the same scraper text: a
    // deployment Prometheus 2 already scrapes keeps its `le="1"` series.
    let default_server = MetricsServer::start("127.0.0.1:0", registry.clone()).unwrap();
    let reply = request(
        &default_server,
        format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {PROMETHEUS_ACCEPT}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert!(
        reply.contains("content-type: text/plain; version=0.0.4"),
        "{reply}"
    );
}

/// A collector of the registry that does not return (stuck on a lock, say)
/// holds the server's one thread: dropping the server still returns, and
/// the thread ends, freeing the port, once the collector returns.
#[test]
fn dropping_the_server_returns_while_a_collector_is_stuck() {
    use executor_exporter::prometheus::core::{Collector, Desc};
    use executor_exporter::prometheus::proto::MetricFamily;
    use std::sync::mpsc;

    struct Stuck {
        desc: Desc,
        entered: mpsc::SyncSender<()>,
        release: Mutex<mpsc::Receiver<()>>,
    }
    impl Collector for Stuck {
        fn desc(&self) -> Vec<&Desc> {
            vec![&self.desc]
        }
        fn collect(&self) -> Vec<MetricFamily> {
            let _ = self.entered.try_send(());
            let _ = self.release.lock().unwrap().recv();
            Vec::new()
        }
    }

    let (entered, in_collector) = mpsc::sync_channel(1);
    let (release, released) = mpsc::channel();
    let registry = Registry::new();
    let desc = Desc::new(
        "stuck".into(),
        "Never done.".into(),
        vec![],
        Default::default(),
    )
    .unwrap();
    registry
        .register(Box::new(Stuck {
            desc,
            entered,
            release: Mutex::new(released),
        }))
        .unwrap();
    let server = MetricsServer::start("127.0.0.1:0", registry).unwrap();
    let addr = server.local_addr();
    let scrape = std::thread::spawn(move || {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut reply = Vec::new();
        let _ = conn.read_to_end(&mut reply);
    });
    in_collector
        .recv_timeout(Duration::from_secs(20))
        .expect("the scrape reached the collector");
    common::watchdog(30, move || drop(server));
    release.send(()).unwrap();
    scrape.join().unwrap();
    common::eventually(20, "the port is freed", || {
        TcpStream::connect(addr).is_err()
    });
}
